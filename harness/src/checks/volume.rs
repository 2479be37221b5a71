//! Step 08: volumes bypass the union filesystem and outlive the container.

use super::TempPath;
use crate::{Check, Ctx, Run};
use anyhow::{ensure, Context, Result};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::paths::VOLUMES;

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(8, "volume::a_bind_volume_shares_a_host_directory_at_once", bind_volume_shares_at_once),
        Check::new(8, "volume::a_named_volume_outlives_its_container", named_volume_outlives_its_container),
        Check::new(8, "volume::read_only_volumes_refuse_writes", read_only_volumes_refuse_writes).escape(),
        Check::new(8, "volume::a_symlinked_target_is_refused", a_symlinked_target_is_refused)
            .plain_only()
            .escape(),
        Check::new(8, "errors::bad_volume_specs_are_125_in_one_line", bad_volume_specs_are_125).plain_only(),
    ]
}

/// A host directory for a check; under --userns it belongs to the container's
/// root as the host sees it (uid 100000), or that root could not write to it.
fn host_dir(ctx: &Ctx, label: &str) -> Result<TempPath> {
    let dir = TempPath::new(label);
    std::fs::create_dir(&dir.0)?;
    if ctx.userns {
        std::os::unix::fs::chown(&dir.0, Some(100000), Some(100000))?;
    }
    Ok(dir)
}

/// A named volume for a check, removed with `volume rm` when dropped.
struct TestVolume<'a>(&'a Ctx, String);

impl Drop for TestVolume<'_> {
    fn drop(&mut self) {
        let _ = Run::raw(&self.0.step.bin).args(["volume", "rm", &self.1]).output();
    }
}

fn bind_volume_shares_at_once(ctx: &Ctx) -> Result<()> {
    let dir = host_dir(ctx, "bind")?;
    std::fs::write(dir.0.join("from-host"), "hello from the host\n")?;
    let spec = format!("{}:/data", dir.0.display());
    let script = "cat /data/from-host && echo written > /data/from-container && sleep 30";
    let running = ctx.run().args(["-v", &spec]).cmd(["sh", "-c", script]).spawn()?;
    let container = running.container_pid()?;
    // "At once": the file is on the host while the container still runs.
    let written = dir.0.join("from-container");
    let until = Instant::now() + Duration::from_secs(10);
    while !written.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let owner = written.metadata().map(|m| m.uid());
    // SAFETY: kill(2) on the container process this check started.
    unsafe { libc::kill(container, libc::SIGKILL) };
    let outcome = running.wait()?;
    ensure!(
        outcome.stdout.contains("hello from the host"),
        "the container did not see the host's file\n{}",
        outcome.transcript()
    );
    let owner = owner.context("the container's write never reached the host directory")?;
    let expected = if ctx.userns { 100000 } else { 0 };
    ensure!(
        owner == expected,
        "the file the container wrote belongs to uid {owner} on the host, not {expected}"
    );
    Ok(())
}

fn named_volume_outlives_its_container(ctx: &Ctx) -> Result<()> {
    let volume =
        TestVolume(ctx, format!("test-{}{}", std::process::id(), if ctx.userns { "-u" } else { "" }));
    let spec = format!("{}:/keep", volume.1);
    ctx.run().args(["-v", &spec]).cmd(["sh", "-c", "echo kept > /keep/note"]).output()?.expect_status(0)?;
    ensure!(
        Path::new(VOLUMES).join(&volume.1).join("note").exists(),
        "the named volume's data is not in {VOLUMES}"
    );
    let seen = ctx.probe(&["-v", &spec], &["--read", "/keep/note"])?;
    ensure!(seen.action(0)?.expect_ok()? == "kept\n", "a second container does not see the first one's data");
    let listed = Run::raw(&ctx.step.bin).args(["volume", "ls"]).output()?;
    ensure!(listed.stdout.lines().any(|l| l == volume.1), "`volume ls` does not list {}", volume.1);
    Ok(())
}

fn read_only_volumes_refuse_writes(ctx: &Ctx) -> Result<()> {
    let dir = host_dir(ctx, "ro")?;
    let volume = TestVolume(ctx, format!("ro-{}{}", std::process::id(), if ctx.userns { "-u" } else { "" }));
    let bind = format!("{}:/ro:ro", dir.0.display());
    let named = format!("{}:/named:ro", volume.1);
    let seen = ctx.probe(
        &["-v", &bind, "-v", &named],
        &["--write", "/ro/x", "--write", "/named/x", "--write", "/tmp/x"],
    )?;
    seen.action(0)?.expect_errno(libc::EROFS).context("a write to a :ro bind volume")?;
    seen.action(1)?.expect_errno(libc::EROFS).context("a write to a :ro named volume")?;
    seen.action(2)?.expect_ok().context("control: /tmp stays writable")?;
    ensure!(!dir.0.join("x").exists(), "the read-only volume's host directory was written");
    Ok(())
}

fn a_symlinked_target_is_refused(ctx: &Ctx) -> Result<()> {
    // A rootfs whose /data is a symlink out of it: a volume on /data/x must
    // not be mounted (nor its directory made) wherever the link points.
    let rootfs = TempPath::new("symlinked-target");
    let outside = TempPath::new("target-outside");
    std::fs::create_dir(&outside.0)?;
    Run::raw("cp").arg("-a").arg(&ctx.workshop.rootfs).arg(&rootfs.0).output()?.expect_status(0)?;
    std::os::unix::fs::symlink(&outside.0, rootfs.0.join("data"))?;
    std::os::unix::fs::symlink("../../../../../../..", rootfs.0.join("up"))?;
    let vol = host_dir(ctx, "vol")?;
    for target in ["/data/x", "/up/tmp/x"] {
        let spec = format!("{}:{target}", vol.0.display());
        let outcome = ctx.bare().arg("--rootfs").arg(&rootfs.0).args(["-v", &spec]).cmd(["true"]).output()?;
        outcome.expect_status(125)?.expect_one_error_line(&["symlink"])?;
    }
    ensure!(std::fs::read_dir(&outside.0)?.next().is_none(), "something was made where the symlink points");
    Ok(())
}

fn bad_volume_specs_are_125(ctx: &Ctx) -> Result<()> {
    let missing = format!("/nonexistent-{}:/x", std::process::id());
    let cases = [
        "relative/dir:/x",
        "./dir:/x",
        "",
        "/tmp",
        "/tmp:relative",
        "/tmp:/",
        "/tmp:/a/../b",
        "/tmp:/x:rx",
        &missing,
    ];
    for spec in cases {
        crate::figures::add(crate::figures::INPUTS, 1);
        let outcome = ctx.run().args(["-v", spec]).cmd(["true"]).output()?;
        outcome.expect_status(125)?.expect_one_error_line(&[]).with_context(|| format!("-v {spec:?}"))?;
    }
    crate::figures::add(crate::figures::INPUTS, 1);
    let none = Run::raw(&ctx.step.bin).args(["volume", "rm", "no-such-volume"]).output()?;
    none.expect_status(125)?.expect_one_error_line(&["no-such-volume"])?;
    Ok(())
}
