//! The `rootfs` task: build the workshop's root filesystem, offline.
//!
//! By default it is busybox (from the host's static busybox) plus the static probe
//! and a few files in /etc; `--from FILE` imports a tarball instead (an Alpine
//! minirootfs, a `docker export`). A stamp file records the inputs, so a second run
//! with the same inputs does nothing. The new tree is built in a temp directory next
//! to the destination and renamed into place: a half-built rootfs never exists.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};

use crate::{artifacts, display_path, mountinfo, output, run as run_cmd, setup, target_dir};

/// Bump this whenever the contents of the rootfs change, so old ones get rebuilt.
const FORMAT: u32 = 1;

/// The stamp lives inside the rootfs (hidden from a plain `ls /`), so it is swapped in
/// together with the tree it describes.
const STAMP: &str = ".workshop-rootfs-stamp";

/// Directories every rootfs gets (if missing), with their modes.
const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("etc", 0o755),
    ("proc", 0o755),
    ("sys", 0o755),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("home", 0o755),
    ("mnt", 0o755),
    ("run", 0o755),
    ("var", 0o755),
    ("var/tmp", 0o1777),
];

/// Files of the busybox rootfs: (path, contents).
const ETC_FILES: &[(&str, &str)] = &[
    ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
    ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ("etc/hostname", "workshop\n"),
    ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
];

const RELEASE: (&str, &str) = ("etc/workshop-release", "workshop rootfs\n");

/// What the rootfs is made from.
enum Source {
    Busybox(PathBuf),
    Tarball(PathBuf),
}

/// The `rootfs` task.
pub fn run(from: Option<PathBuf>, out: Option<PathBuf>) -> Result<()> {
    let out = absolute(out.unwrap_or_else(default_path))?;
    let probe = artifacts::build_probe()?;
    ensure(&out, from.as_deref(), &probe)?;
    // The first step with a rootfs is 03-mnt; later steps take the same options.
    let steps = artifacts::steps()?;
    let bin = match steps.last() {
        Some(step) if step.number >= 3 => display_path(&step.bin),
        _ => display_path(&target_dir().join("debug/03-mnt")),
    };
    println!("try it: sudo {bin} run --rootfs {} -- /bin/sh", out.display());
    if out != default_path() {
        println!("(or set WORKSHOP_ROOTFS={} for the steps and the tests)", out.display());
    }
    Ok(())
}

/// `<target>/rootfs`: where the steps look by default.
pub fn default_path() -> PathBuf {
    target_dir().join("rootfs")
}

/// Has `cargo xtask rootfs` built a rootfs at this path?
pub fn is_built(path: &Path) -> bool {
    path.join(STAMP).is_file()
}

/// The rootfs for `demo` and `test`: `$WORKSHOP_ROOTFS` as it is if set, else the
/// default one, built or refreshed (with this static probe).
pub fn prepare(probe: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WORKSHOP_ROOTFS").filter(|p| !p.is_empty()) {
        let path = absolute(PathBuf::from(path))?;
        if !path.join("bin/sh").exists() && !path.join("bin/sh").is_symlink() {
            bail!("WORKSHOP_ROOTFS={} has no bin/sh; is it a rootfs?", path.display());
        }
        println!("using WORKSHOP_ROOTFS={}", path.display());
        return Ok(path);
    }
    let path = default_path();
    ensure(&path, None, probe)?;
    Ok(path)
}

/// Build the rootfs at `out` unless its stamp says it is up to date.
pub fn ensure(out: &Path, from: Option<&Path>, probe: &Path) -> Result<()> {
    let source = match from {
        Some(tarball) => {
            let tarball = absolute(tarball.to_path_buf())?;
            if !tarball.is_file() {
                bail!("--from {}: no such file", tarball.display());
            }
            Source::Tarball(tarball)
        }
        None => Source::Busybox(setup::require_static_busybox()?),
    };

    let (label, input) = match &source {
        Source::Busybox(path) => ("busybox", path),
        Source::Tarball(path) => ("tarball", path),
    };
    let wanted = stamp_text(&[describe(label, input)?, describe("probe", probe)?]);
    let current = fs::read_to_string(out.join(STAMP)).ok();
    if up_to_date(current.as_deref(), &wanted) {
        println!("rootfs up to date: {}", out.display());
        return Ok(());
    }

    build(out, &source, probe, &wanted)?;
    println!("rootfs built: {}", out.display());
    Ok(())
}

/// One input of the rootfs, as recorded in the stamp.
#[derive(Debug, Clone, PartialEq)]
struct Input {
    label: &'static str,
    path: PathBuf,
    size: u64,
    mtime_ns: u128,
}

fn describe(label: &'static str, path: &Path) -> Result<Input> {
    let meta = fs::metadata(path).with_context(|| format!("could not stat {}", path.display()))?;
    let mtime_ns = meta.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Ok(Input { label, path: path.to_path_buf(), size: meta.len(), mtime_ns })
}

fn stamp_text(inputs: &[Input]) -> String {
    let mut text = format!("workshop rootfs format {FORMAT}\n");
    for input in inputs {
        text.push_str(&format!(
            "{} {} size={} mtime_ns={}\n",
            input.label,
            input.path.display(),
            input.size,
            input.mtime_ns
        ));
    }
    text
}

fn up_to_date(current_stamp: Option<&str>, wanted_stamp: &str) -> bool {
    current_stamp == Some(wanted_stamp)
}

fn build(out: &Path, source: &Source, probe: &Path, stamp: &str) -> Result<()> {
    let parent = out.parent().context("the rootfs cannot be /")?;
    let name = out.file_name().context("the rootfs path has no name")?.to_string_lossy();
    fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.tmp"));
    let old = parent.join(format!(".{name}.old"));

    if out.symlink_metadata().is_ok() {
        check_replaceable(out)?;
        check_no_mounts(out)?;
    }
    remove_tree(&tmp)?;
    remove_tree(&old)?;

    fs::create_dir(&tmp).with_context(|| format!("could not create {}", tmp.display()))?;
    if let Err(err) = fill(&tmp, source, probe, stamp) {
        // Best effort: do not leave a half-built tree behind (the error matters more).
        let _ = remove_tree(&tmp);
        return Err(err);
    }

    // Swap the new tree in.
    if out.symlink_metadata().is_ok() {
        fs::rename(out, &old)
            .with_context(|| format!("could not move the old rootfs {} aside", out.display()))?;
    }
    fs::rename(&tmp, out)
        .with_context(|| format!("could not rename {} to {}", tmp.display(), out.display()))?;
    remove_tree(&old)
}

/// Everything that goes into a new rootfs, in the (empty) directory `root`.
fn fill(root: &Path, source: &Source, probe: &Path, stamp: &str) -> Result<()> {
    set_mode(root, 0o755)?;
    match source {
        Source::Busybox(busybox) => fill_from_busybox(root, busybox)?,
        Source::Tarball(tarball) => {
            run_cmd(Command::new("tar").arg("-xf").arg(tarball).arg("-C").arg(root).arg("--numeric-owner"))?
        }
    }
    add_workshop_files(root, probe)?;
    write_file(root, STAMP, stamp, 0o644)
}

/// The busybox rootfs: /bin/busybox, a link per applet, and the files in /etc.
fn fill_from_busybox(root: &Path, busybox: &Path) -> Result<()> {
    for (dir, mode) in DIRS {
        make_dir(root, dir, *mode)?;
    }
    let installed = root.join("bin/busybox");
    fs::copy(busybox, &installed)
        .with_context(|| format!("could not copy {} into the rootfs", busybox.display()))?;
    set_mode(&installed, 0o755)?;

    let list = output(Command::new(busybox).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet == "bin/busybox" || !is_plain_relative(applet) {
            continue;
        }
        let link = root.join(applet);
        if link.symlink_metadata().is_ok() {
            continue; // listed twice
        }
        if let Some(dir) = link.parent() {
            fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
        }
        symlink(link_target(applet), &link)
            .with_context(|| format!("could not create the link {}", link.display()))?;
    }

    for (path, contents) in ETC_FILES {
        write_file(root, path, contents, 0o644)?;
    }
    Ok(())
}

/// What every rootfs gets on top: the probe, /etc/workshop-release, the usual empty dirs.
fn add_workshop_files(root: &Path, probe: &Path) -> Result<()> {
    for (dir, mode) in DIRS {
        if root.join(dir).symlink_metadata().is_err() {
            make_dir(root, dir, *mode)?;
        }
    }
    let probe_in_root = inside(root, "bin/probe")?;
    fs::copy(probe, &probe_in_root)
        .with_context(|| format!("could not copy {} into the rootfs", probe.display()))?;
    set_mode(&probe_in_root, 0o755)?;
    write_file(root, RELEASE.0, RELEASE.1, 0o644)
}

/// The relative symlink target for an applet: "bin/sh" -> "busybox",
/// "usr/bin/awk" -> "../../bin/busybox", "linuxrc" -> "bin/busybox".
fn link_target(applet: &str) -> String {
    let dirs: Vec<&str> = applet.split('/').filter(|c| !c.is_empty()).collect();
    let dirs = &dirs[..dirs.len().saturating_sub(1)];
    if dirs == ["bin"] {
        "busybox".to_string()
    } else {
        format!("{}bin/busybox", "../".repeat(dirs.len()))
    }
}

fn is_plain_relative(path: &str) -> bool {
    Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

/// `root/rel`, refusing paths that a symlink from an imported tarball would lead out of
/// the rootfs (e.g. an absolute link `bin -> /usr/bin` would point at the host's).
/// A symlink at `rel` itself is removed, so writing there creates a plain file.
fn inside(root: &Path, rel: &str) -> Result<PathBuf> {
    let path = root.join(rel);
    let parent = path.parent().context("no parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("could not create {}", parent.display()))?;
    let real_root = root.canonicalize()?;
    let real_parent = parent.canonicalize()?;
    if !real_parent.starts_with(&real_root) {
        bail!(
            "{} leads out of the rootfs (to {}); refusing to write there",
            parent.display(),
            real_parent.display()
        );
    }
    if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(&path)?;
    }
    Ok(path)
}

fn write_file(root: &Path, rel: &str, contents: &str, mode: u32) -> Result<()> {
    let path = inside(root, rel)?;
    fs::write(&path, contents).with_context(|| format!("could not write {}", path.display()))?;
    set_mode(&path, mode)
}

fn make_dir(root: &Path, rel: &str, mode: u32) -> Result<()> {
    let path = inside(root, rel)?;
    if !path.is_dir() {
        fs::create_dir(&path).with_context(|| format!("could not create {}", path.display()))?;
    }
    set_mode(&path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("could not chmod {:o} {}", mode, path.display()))
}

/// Only replace what we built ourselves (or an empty directory).
fn check_replaceable(out: &Path) -> Result<()> {
    if !out.is_dir() {
        bail!("{} exists and is not a directory; refusing to replace it", out.display());
    }
    let empty = fs::read_dir(out)?.next().is_none();
    if !empty && !out.join(STAMP).is_file() {
        bail!(
            "{} exists but was not made by `cargo xtask rootfs` (no {STAMP} in it); \
             remove it or choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// `rm -rf`, but never through a mount: a forgotten bind mount in an old rootfs would
/// otherwise take the host's files with it.
fn remove_tree(path: &Path) -> Result<()> {
    if path.symlink_metadata().is_err() {
        return Ok(());
    }
    check_no_mounts(path)?;
    fs::remove_dir_all(path).with_context(|| {
        format!("could not remove {} (made by root? then: sudo rm -rf {})", path.display(), path.display())
    })
}

fn check_no_mounts(path: &Path) -> Result<()> {
    let real = path.canonicalize()?;
    let mounts: Vec<String> = mountinfo::read()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|point| Path::new(point).starts_with(&real))
        .collect();
    if let Some(first) = mounts.first() {
        bail!(
            "{} still has mounts in it ({}); unmount them first: umount -R {first}",
            path.display(),
            mounts.join(", ")
        );
    }
    Ok(())
}

fn absolute(path: PathBuf) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(label: &'static str, size: u64, mtime_ns: u128) -> Input {
        Input { label, path: PathBuf::from("/bin/busybox"), size, mtime_ns }
    }

    #[test]
    fn stamp_detects_changed_inputs() {
        let wanted = stamp_text(&[input("busybox", 10, 5), input("probe", 20, 6)]);
        assert!(up_to_date(Some(&wanted), &wanted));
        assert!(!up_to_date(None, &wanted));

        let newer_probe = stamp_text(&[input("busybox", 10, 5), input("probe", 20, 7)]);
        assert!(!up_to_date(Some(&newer_probe), &wanted));
        let bigger_busybox = stamp_text(&[input("busybox", 11, 5), input("probe", 20, 6)]);
        assert!(!up_to_date(Some(&bigger_busybox), &wanted));
        let from_tarball = stamp_text(&[input("tarball", 10, 5), input("probe", 20, 6)]);
        assert!(!up_to_date(Some(&from_tarball), &wanted));
    }

    #[test]
    fn stamp_has_the_format_version() {
        let text = stamp_text(&[input("busybox", 1, 2)]);
        assert!(text.starts_with(&format!("workshop rootfs format {FORMAT}\n")));
        let older = text.replace(&format!("format {FORMAT}"), "format 0");
        assert!(!up_to_date(Some(&older), &text));
    }

    #[test]
    fn applet_links_are_relative() {
        assert_eq!(link_target("bin/sh"), "busybox");
        assert_eq!(link_target("sbin/ifconfig"), "../bin/busybox");
        assert_eq!(link_target("usr/bin/awk"), "../../bin/busybox");
        assert_eq!(link_target("linuxrc"), "bin/busybox");
    }

    #[test]
    fn applet_paths_must_stay_inside() {
        assert!(is_plain_relative("usr/bin/awk"));
        assert!(!is_plain_relative("/bin/sh"));
        assert!(!is_plain_relative("../etc/passwd"));
    }
}
