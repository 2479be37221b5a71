//! Exercise 08: `--tmpfs PATH[:size=N]` mounts a fresh tmpfs at PATH inside
//! the container: in memory, capped at N bytes, gone with the container.

use super::{Exercise, Graded, Kept};
use crate::checks::TempPath;
use crate::{Ctx, Run};
use anyhow::{bail, ensure, Context, Result};

pub fn exercise() -> Exercise {
    Exercise {
        number: 8,
        name: "08-volumes",
        title: "a tmpfs mount (--tmpfs PATH[:size=N])",
        checks: vec![
            Graded::new(8, "tmpfs::a_fresh_tmpfs_at_path", 4, a_fresh_tmpfs_at_path),
            Graded::new(8, "tmpfs::size_caps_it", 2, size_caps_it),
            Graded::new(8, "tmpfs::gone_with_the_container", 2, gone_with_the_container),
            Graded::new(8, "errors::bad_tmpfs_specs_are_125_in_one_line", 2, bad_tmpfs_specs_are_125),
        ],
        needs_the_holes: &[],
    }
}

fn a_fresh_tmpfs_at_path(ctx: &Ctx) -> Result<()> {
    // Control: without --tmpfs, /scratch is the writable layer's, not a mount.
    let seen = ctx.probe(&[], &[])?;
    ensure!(seen.mount("/scratch").is_err(), "control: without --tmpfs something is mounted on /scratch");
    let flags = ["--tmpfs", "/scratch", "--tmpfs", "/deep/er/path"];
    let actions =
        ["--write", "/scratch/x", "--read", "/scratch/x", "--write", "/deep/er/path/y", "--stat", "/scratch"];
    let seen = ctx.probe(&flags, &actions)?;
    for path in ["/scratch", "/deep/er/path"] {
        let mount = seen.mount(path).with_context(|| format!("with --tmpfs {path}"))?;
        ensure!(
            mount.fstype == "tmpfs",
            "with --tmpfs {path}, {path} is a {} mount, not tmpfs",
            mount.fstype
        );
        for option in ["nosuid", "nodev", "noexec"] {
            ensure!(
                mount.options.split(',').any(|o| o == option),
                "with --tmpfs {path}, mount it {option}, as Docker does; its options are {}",
                mount.options
            );
        }
    }
    seen.action(0)?.expect_ok().context("with --tmpfs /scratch, /scratch must be writable")?;
    let read = seen.action(1)?.expect_ok()?.clone();
    ensure!(read == "probe\n", "/scratch/x reads {read}, not what was written");
    seen.action(2)?.expect_ok().context("with --tmpfs /deep/er/path, the missing directories are made")?;
    let mode = seen.action(3)?.expect_ok()?["mode"].clone();
    ensure!(mode == "1777", "the tmpfs at /scratch has mode {mode}, not 1777 (anyone may write, like /tmp)");
    Ok(())
}

fn size_caps_it(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&["--tmpfs", "/scratch:size=1m"], &[])?;
    let mounts = seen.0["mounts"].as_array().cloned().unwrap_or_default();
    let scratch = mounts.iter().rev().find(|m| m["mount_point"] == "/scratch");
    let scratch = scratch.context("with --tmpfs /scratch:size=1m, nothing is mounted on /scratch")?;
    let options = scratch["super_options"].as_str().unwrap_or_default();
    ensure!(
        options.split(',').any(|o| o == "size=1024k"),
        "with --tmpfs /scratch:size=1m the tmpfs should be 1 MiB (size=1024k); its options are {options}"
    );
    let script = "dd if=/dev/zero of=/scratch/a bs=1k count=512 2>/dev/null && echo fits; \
                  dd if=/dev/zero of=/scratch/b bs=1k count=1024 2>/dev/null || echo full";
    let outcome = ctx.run().args(["--tmpfs", "/scratch:size=1m"]).cmd(["sh", "-c", script]).output()?;
    outcome.expect_status(0)?;
    ensure!(
        outcome.stdout == "fits\nfull\n",
        "with --tmpfs /scratch:size=1m, 512 KiB should fit and 1 MiB more should not (ENOSPC)\n{}",
        outcome.transcript()
    );
    Ok(())
}

fn gone_with_the_container(ctx: &Ctx) -> Result<()> {
    let container = Kept::new(ctx, "tmpfs-kept");
    let script = "echo x > /scratch/x && mkdir /scratch/d && echo layer > /in-layer";
    let run = container.run(None).args(["--tmpfs", "/scratch"]);
    run.cmd(["sh", "-c", script])
        .output()?
        .expect_status(0)
        .context("--tmpfs /scratch in a kept container")?;
    let diff = Run::raw(&ctx.step.bin).args(["diff", &container.name]).output()?;
    diff.expect_status(0)?;
    ensure!(
        diff.stdout.lines().any(|l| l == "A /in-layer"),
        "control: `diff` should list /in-layer, which the container wrote to its layer\n{}",
        diff.transcript()
    );
    if let Some(line) = diff.stdout.lines().find(|l| l.contains("/scratch/")) {
        bail!("what the container wrote to its tmpfs landed in its layer: `diff` shows {line:?}");
    }
    let seen = ctx.probe(&["--tmpfs", "/scratch"], &["--stat", "/scratch/x"])?;
    seen.action(0)?
        .expect_errno(libc::ENOENT)
        .context("a second container's tmpfs at /scratch must be empty")?;
    // In a user namespace too: the container's root may mount a tmpfs and write there.
    let seen = ctx.probe(&["--userns", "--tmpfs", "/scratch"], &["--write", "/scratch/x"])?;
    seen.action(0)?.expect_ok().context("with --userns --tmpfs /scratch, /scratch must be writable")?;
    Ok(())
}

fn bad_tmpfs_specs_are_125(ctx: &Ctx) -> Result<()> {
    for spec in ["scratch", "/", "/a/../b", "/x:", "/x:size=", "/x:size=abc", "/x:size=0", "/x:mode=1777", ""]
    {
        let outcome = ctx.run().arg(format!("--tmpfs={spec}")).cmd(["true"]).output()?;
        if outcome.status == 0 {
            bail!(
                "--tmpfs {spec:?} should be refused (status 125), but COMMAND ran\n{}",
                outcome.transcript()
            );
        }
        outcome
            .expect_status(125)?
            .expect_one_error_line(&["--tmpfs"])
            .with_context(|| format!("--tmpfs {spec:?} should be refused in one line that names --tmpfs"))?;
    }
    // A rootfs whose /data is a symlink out of it: no tmpfs there, nothing made where it points.
    let rootfs = TempPath::new("tmpfs-symlinked");
    let outside = TempPath::new("tmpfs-outside");
    std::fs::create_dir(&outside.0)?;
    Run::raw("cp").arg("-a").arg(&ctx.workshop.rootfs).arg(&rootfs.0).output()?.expect_status(0)?;
    std::os::unix::fs::symlink(&outside.0, rootfs.0.join("data"))?;
    let outcome = ctx
        .bare()
        .arg("--rootfs")
        .arg(&rootfs.0)
        .args(["--net", "none", "--tmpfs", "/data/x"])
        .cmd(["true"])
        .output()?;
    outcome
        .expect_status(125)?
        .expect_one_error_line(&["symlink"])
        .context("--tmpfs /data/x where the image's /data is a symlink: refused, like a volume's target")?;
    ensure!(std::fs::read_dir(&outside.0)?.next().is_none(), "something was made where the symlink points");
    Ok(())
}
