//! Step 07: image layers, a writable container layer, copy-on-write.

use super::{store, TempPath};
use crate::{Check, Ctx, Probe, Run};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(7, "overlay::the_rootfs_is_never_written", the_rootfs_is_never_written),
        Check::new(7, "overlay::an_image_shows_its_layers_merged", an_image_shows_its_layers_merged),
        Check::new(7, "overlay::copy_on_write_leaves_every_layer_untouched", copy_on_write),
        Check::new(7, "overlay::a_hundred_layers_start", a_hundred_layers_start).plain_only(),
        Check::new(7, "overlay::rm_and_ls_manage_kept_layers", rm_and_ls_manage_kept_layers).plain_only(),
        Check::new(7, "overlay::only_a_setup_failure_loses_the_layer", only_a_setup_failure_loses_the_layer)
            .plain_only(),
        Check::new(7, "errors::crafted_tars_are_refused_and_touch_nothing", crafted_tars_are_refused)
            .plain_only()
            .escape(),
        Check::new(7, "errors::bad_images_are_125_in_one_line", bad_images_are_125).plain_only(),
    ]
}

/// One entry of a layer tar; `Raw` writes its name bytes as they are, so
/// absolute paths and `..` (which the tar crate refuses to write) get in.
pub(super) enum Entry<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
}

pub(super) fn write_tar(path: &Path, entries: &[Entry]) -> Result<()> {
    let mut builder = tar::Builder::new(std::fs::File::create(path)?);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (name, kind, data, link) = match entry {
            Entry::File(name, text) => (*name, tar::EntryType::Regular, text.as_bytes(), None),
            Entry::Dir(name) => (*name, tar::EntryType::Directory, &b""[..], None),
            Entry::Symlink(name, to) => (*name, tar::EntryType::Symlink, &b""[..], Some(*to)),
            Entry::HardLink(name, to) => (*name, tar::EntryType::Link, &b""[..], Some(*to)),
            Entry::CharDevice(name) => (*name, tar::EntryType::Char, &b""[..], None),
        };
        header.set_entry_type(kind);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        header.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        let raw = &mut header.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(to) = link {
            raw.linkname[..to.len()].copy_from_slice(to.as_bytes());
        }
        header.set_cksum();
        builder.append(&header, data)?;
    }
    builder.finish()?;
    Ok(())
}

/// An image made by a check; removed (with `image rm`) when dropped.
struct TestImage<'a> {
    ctx: &'a Ctx,
    name: String,
}

impl<'a> TestImage<'a> {
    /// Imports the workshop rootfs as the base layer, then `layers` (tar files).
    fn import(ctx: &'a Ctx, label: &str, layers: &[PathBuf]) -> Result<TestImage<'a>> {
        let name = format!("test-{label}-{}", std::process::id());
        let mut run = Run::raw(&ctx.step.bin).args(["image", "import", &name]).arg(&ctx.workshop.rootfs);
        run = run.args(layers);
        run.output()?.expect_status(0).context("image import")?;
        Ok(TestImage { ctx, name })
    }
}

impl Drop for TestImage<'_> {
    fn drop(&mut self) {
        let _ = Run::raw(&self.ctx.step.bin).args(["image", "rm", &self.name]).output();
    }
}

/// The app layer of the chapter: adds, changes and deletes (whiteouts).
pub(super) fn app_layer(dir: &Path) -> Result<PathBuf> {
    let tar = dir.join("app.tar");
    write_tar(
        &tar,
        &[
            Entry::Dir("app/"),
            Entry::File("app/hello.txt", "hello from the app layer\n"),
            Entry::File("etc/workshop-release", "workshop rootfs, changed by the app layer\n"),
            Entry::File("etc/.wh.hostname", ""),
            Entry::Dir("home/"),
            Entry::File("home/.wh..wh..opq", ""),
            Entry::File("home/app-user", "only this is in /home now\n"),
        ],
    )?;
    Ok(tar)
}

/// `BIN run --image NAME` with the variant's flags (not --rootfs: they conflict).
fn on_image(ctx: &Ctx, image: &str) -> Run {
    let run = ctx.bare().args(["--image", image]);
    if ctx.userns {
        run.arg("--userns")
    } else {
        run
    }
}

fn probe_image(ctx: &Ctx, image: &str, actions: &[&str]) -> Result<Probe> {
    let outcome = on_image(ctx, image).cmd(["/bin/probe"]).args(actions).output()?;
    outcome.expect_status(0)?;
    Probe::parse(&outcome)
}

/// Path -> (mode, owner, size, content hash) of every entry below `dir`.
fn fingerprint(dir: &Path) -> Result<BTreeMap<PathBuf, String>> {
    let mut seen = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let meta = at.symlink_metadata()?;
        let content = if meta.is_file() {
            let bytes = std::fs::read(&at)?;
            bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
        } else {
            meta.rdev()
        };
        let key = at.strip_prefix(dir)?.to_path_buf();
        seen.insert(
            key,
            format!("{:o} {}:{} {} {content:x}", meta.mode(), meta.uid(), meta.gid(), meta.len()),
        );
        if meta.is_dir() {
            stack
                .extend(std::fs::read_dir(&at)?.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>()?);
        }
    }
    Ok(seen)
}

fn the_rootfs_is_never_written(ctx: &Ctx) -> Result<()> {
    let before = fingerprint(&ctx.workshop.rootfs)?;
    let script =
        "echo new > /newfile && echo more >> /etc/workshop-release && rm /etc/hostname && mkdir /tmp/d";
    ctx.run().cmd(["sh", "-c", script]).output()?.expect_status(0)?;
    ensure!(fingerprint(&ctx.workshop.rootfs)? == before, "the container changed the rootfs below it");
    Ok(())
}

fn an_image_shows_its_layers_merged(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("app-layer");
    std::fs::create_dir(&dir.0)?;
    let image = TestImage::import(ctx, "merged", &[app_layer(&dir.0)?])?;
    expect_merged(ctx, &image.name)
}

/// A container on `image` (the rootfs, then `app_layer`) sees the layers merged.
pub(super) fn expect_merged(ctx: &Ctx, image: &str) -> Result<()> {
    let reads = ["--read", "/app/hello.txt", "--read", "/etc/workshop-release", "--stat", "/etc/hostname"];
    let seen = probe_image(
        ctx,
        image,
        &[&reads[..], &["--stat", "/home/app-user", "--stat", "/etc/passwd"]].concat(),
    )?;
    ensure!(
        seen.action(0)?.expect_ok()? == "hello from the app layer\n",
        "the app layer's new file is missing"
    );
    let release = seen.action(1)?.expect_ok()?.clone();
    ensure!(
        release == "workshop rootfs, changed by the app layer\n",
        "/etc/workshop-release is {release}: the top layer should win"
    );
    seen.action(2)?.expect_errno(libc::ENOENT).context("the whiteout should hide /etc/hostname")?;
    seen.action(3)?.expect_ok()?;
    seen.action(4)?.expect_ok().context("the base layer's /etc/passwd should show through")?;
    let entries = seen.strs("root_entries")?;
    ensure!(entries.contains(&"app".to_string()), "/ lacks the app layer's /app: {entries:?}");
    Ok(())
}

fn copy_on_write(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("cow-layer");
    std::fs::create_dir(&dir.0)?;
    let image = TestImage::import(ctx, "cow", &[app_layer(&dir.0)?])?;
    let layers = store::layer_dirs(ctx, &image.name)?;
    let fingerprints = || layers.iter().map(|dir| fingerprint(dir)).collect::<Result<Vec<_>>>();
    let before = fingerprints()?;
    let name = format!("cow-{}", std::process::id());
    let script = "echo added > /added && echo more >> /app/hello.txt && rm /etc/passwd";
    let run = Run::raw(&ctx.step.bin).args(["run", "--name", &name, "--image", &image.name]);
    let run = if ctx.userns { run.arg("--userns") } else { run };
    let outcome = run.cmd(["sh", "-c", script]).output();
    let diff = Run::raw(&ctx.step.bin).args(["diff", &name]).output();
    let removed = Run::raw(&ctx.step.bin).args(["rm", &name]).output();
    outcome?.expect_status(0)?;
    removed?.expect_status(0)?;
    ensure!(fingerprints()? == before, "a container's writes changed the image's layers");
    let diff = diff?;
    let mut changes: Vec<&str> = diff.stdout.lines().collect();
    changes.sort();
    let expected = ["A /added", "C /app", "C /app/hello.txt", "C /etc", "D /etc/passwd"];
    ensure!(changes == expected, "`diff` shows {changes:?}, expected {expected:?}");
    Ok(())
}

fn a_hundred_layers_start(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("layers");
    std::fs::create_dir(&dir.0)?;
    let mut layers = Vec::new();
    for n in 1..100 {
        let tar = dir.0.join(format!("{n}.tar"));
        let name = format!("layers/{n}");
        write_tar(&tar, &[Entry::Dir("layers/"), Entry::File(&name, "a layer\n")])?;
        layers.push(tar);
    }
    let image = TestImage::import(ctx, "hundred", &layers)?;
    let seen = probe_image(ctx, &image.name, &["--read", "/layers/1", "--read", "/layers/99"])?;
    seen.action(0)?.expect_ok()?;
    seen.action(1)?.expect_ok()?;
    Ok(())
}

fn rm_and_ls_manage_kept_layers(ctx: &Ctx) -> Result<()> {
    let name = format!("kept-{}", std::process::id());
    let run = Run::raw(&ctx.step.bin).args(["run", "--name", &name, "--rootfs"]).arg(&ctx.workshop.rootfs);
    run.cmd(["true"]).output()?.expect_status(0)?;
    let listed = Run::raw(&ctx.step.bin).arg("ls").output()?;
    let removed = Run::raw(&ctx.step.bin).args(["rm", &name]).output()?;
    ensure!(listed.stdout.lines().any(|l| l.trim() == name), "`ls` does not list the kept container {name}");
    removed.expect_status(0)?;
    let again = Run::raw(&ctx.step.bin).args(["rm", &name]).output()?;
    again.expect_status(125)?.expect_one_error_line(&[&name])?;
    Ok(())
}

/// The child reports a failed setup on its error pipe; a COMMAND that exits
/// 125 by itself is no runtime failure, and its layer is kept like any other.
fn only_a_setup_failure_loses_the_layer(ctx: &Ctx) -> Result<()> {
    let name = format!("exits125-{}", std::process::id());
    let run = Run::raw(&ctx.step.bin).args(["run", "--name", &name, "--rootfs"]).arg(&ctx.workshop.rootfs);
    let outcome = run.clone().cmd(["sh", "-c", "echo kept > /kept; exit 125"]).output()?;
    let listed = Run::raw(&ctx.step.bin).arg("ls").output()?;
    let removed = Run::raw(&ctx.step.bin).args(["rm", &name]).output()?;
    outcome.expect_status(125)?;
    ensure!(
        outcome.stderr.trim().is_empty(),
        "COMMAND's own 125 got a runtime error: {}",
        outcome.stderr.trim()
    );
    ensure!(
        listed.stdout.lines().any(|l| l.trim() == name),
        "the layer of a COMMAND that exited 125 was not kept"
    );
    removed.expect_status(0)?;
    // A failure inside the child's setup (its mounts) is the runtime's: one line, no layer.
    let failed = run.wrapped(["env", "WORKSHOP_FAULT=mounts"]).cmd(["true"]).output()?;
    failed.expect_status(125)?.expect_one_error_line(&["injected fault at stage mounts"])?;
    let listed = Run::raw(&ctx.step.bin).arg("ls").output()?;
    ensure!(
        !listed.stdout.lines().any(|l| l.trim() == name),
        "a container whose setup failed kept its layer"
    );
    Ok(())
}

fn crafted_tars_are_refused(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("crafted");
    std::fs::create_dir(&dir.0)?;
    let outside = TempPath::new("outside");
    std::fs::create_dir(&outside.0)?;
    let target = outside.0.to_string_lossy().into_owned();
    let evil_abs = format!("{target}/absolute");
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("absolute path", vec![Entry::File(&evil_abs, "x")]),
        ("climbs out with ..", vec![Entry::File("../../../../../../../../tmp/escaped-by-dotdot", "x")]),
        (
            "writes through a planted symlink",
            vec![Entry::Symlink("escape", &target), Entry::File("escape/planted", "x")],
        ),
        ("hard link out of the layer", vec![Entry::HardLink("passwd", "../../../../../../../etc/passwd")]),
        ("device node", vec![Entry::CharDevice("dev/sda")]),
    ];
    for (what, entries) in cases {
        let before = store::contents(ctx);
        let tar = dir.0.join("crafted.tar");
        write_tar(&tar, &entries)?;
        let name = format!("crafted-{}", std::process::id());
        let outcome = Run::raw(&ctx.step.bin).args(["image", "import", &name]).arg(&tar).output()?;
        outcome.expect_status(125).with_context(|| format!("a tar whose entry {what} must be refused"))?;
        outcome.expect_one_error_line(&["refused"])?;
        let left: Vec<_> = std::fs::read_dir(&outside.0)?.collect();
        ensure!(left.is_empty(), "a tar whose entry {what} wrote outside its layer");
        ensure!(!Path::new("/tmp/escaped-by-dotdot").exists(), "a tar climbed out with ..");
        ensure!(!store::has_image(ctx, &name), "a refused import ({what}) left the image {name}");
        store::expect_nothing_new(ctx, &before, &format!("a refused import ({what})"))?;
    }
    Ok(())
}

fn bad_images_are_125(ctx: &Ctx) -> Result<()> {
    crate::figures::add(crate::figures::INPUTS, 2);
    let outcome = ctx.bare().args(["--image", "no-such-image"]).cmd(["true"]).output()?;
    outcome.expect_status(125)?.expect_one_error_line(&["no-such-image"])?;
    let bad_name = Run::raw(&ctx.step.bin).args(["image", "import", "../evil", "/nonexistent"]).output()?;
    bad_name.expect_status(125)?.expect_one_error_line(&[store::invalid_name(ctx)])?;
    Ok(())
}
