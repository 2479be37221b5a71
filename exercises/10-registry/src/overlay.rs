//! The union filesystem: the image's read-only layers, and a writable layer
//! of the container's own on top (overlayfs).
//!
//! Reading a file finds the topmost layer that has it. Writing one copies it
//! up into the container's layer first (copy-on-write), so the image never
//! changes. Deleting one leaves a "whiteout" in the container's layer (a 0/0
//! character device) that hides the file below; an "opaque" directory hides
//! everything below it.

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One directory per container: its layer (`upper`), overlayfs's scratch
/// space (`work`), the mounted root (`merged`), and the layers it stands on.
pub const CONTAINERS: &str = crate::paths::CONTAINERS;

/// A container's mounted root; dropping it unmounts it, and with `--rm`
/// also removes the container's layer.
pub struct Rootfs {
    dir: PathBuf,
    mounted: bool,
    keep: bool,
}

// ANCHOR: mount_root
/// Host side, before clone: make the container's layer and mount the overlay.
/// `owner` is the container's root as the host sees it (not 0 under --userns).
pub fn mount_root(id: &str, lowers: &[PathBuf], keep: bool, owner: u32) -> Result<Rootfs> {
    let dir = Path::new(CONTAINERS).join(id);
    if dir.exists() {
        bail!("container {id} exists already (remove it with `rm {id}`)");
    }
    // Kept only once the container has run (see `keep`).
    let mut root = Rootfs { dir: dir.clone(), mounted: false, keep: false };
    for sub in ["upper", "work", "merged"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("mkdir {}", dir.join(sub).display()))?;
    }
    // The merged root directory takes its owner from the container's layer.
    std::os::unix::fs::chown(dir.join("upper"), Some(owner), Some(owner))?;
    if !keep {
        std::fs::write(dir.join("remove-when-done"), "")?; // for `cleanup`, if we are killed
    }
    let listed: Vec<String> = lowers.iter().map(|l| l.to_string_lossy().into_owned()).collect();
    std::fs::write(dir.join("lowers"), listed.join("\n") + "\n")?;

    // ANCHOR: overlay_options
    // overlayfs lists the top layer first. All its options must fit in one
    // page (4096 bytes on most machines): with many layers, name them relative
    // to their common directory and mount from there.
    let common =
        lowers.first().and_then(|l| l.parent()).filter(|p| lowers.iter().all(|l| l.parent() == Some(*p)));
    let names: Vec<String> = lowers
        .iter()
        .rev()
        .map(|l| match common {
            Some(_) => l.file_name().unwrap_or_default().to_string_lossy().into_owned(),
            None => l.to_string_lossy().into_owned(),
        })
        .collect();
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        names.join(":"),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    if !keep {
        // A layer that is thrown away need not reach the disk: without this,
        // unmounting waits for a sync of the whole upper filesystem (~40 ms).
        data.push_str(",volatile");
    }
    // The working directory is the whole process's: a daemon with threads
    // (step 11) must mount from a forked helper, or hand overlayfs fd paths.
    let here = std::env::current_dir().ok();
    if let Some(common) = common {
        std::env::set_current_dir(common).with_context(|| format!("chdir {}", common.display()))?;
    }
    let mounted =
        mount(Some("overlay"), &dir.join("merged"), Some("overlay"), MsFlags::empty(), Some(data.as_str()));
    if let Some(here) = here {
        let _ = std::env::set_current_dir(here);
    }
    mounted.with_context(|| {
        format!("mount the overlay ({} layers) on {}/merged", lowers.len(), dir.display())
    })?;
    // ANCHOR_END: overlay_options
    root.mounted = true;
    crate::process::fault("overlay")?;
    Ok(root)
}
// ANCHOR_END: mount_root

impl Rootfs {
    pub fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }

    /// Keep the container's layer for `diff` and `rm` (without --rm): only
    /// once it has run, so that a container that never started leaves nothing.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

// ANCHOR: drop
impl Drop for Rootfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount2(&self.merged(), MntFlags::MNT_DETACH);
        }
        if self.keep {
            // Only the container's layer (and what it stood on) is worth keeping.
            let _ = std::fs::remove_dir_all(self.dir.join("work"));
            let _ = std::fs::remove_dir(self.merged());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
// ANCHOR_END: drop

/// Unmounts the roots of containers whose runtime is gone (killed, say), and
/// removes their layers if they were run with --rm.
pub fn remove_stale() {
    for id in list() {
        let dir = Path::new(CONTAINERS).join(&id);
        if crate::state::is_live(&id) {
            continue;
        }
        let _ = umount2(&dir.join("merged"), MntFlags::MNT_DETACH);
        if dir.join("remove-when-done").exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Whether `id` can name a container: one path component, not `.` or `..`.
fn is_id(id: &str) -> bool {
    !id.is_empty() && !id.contains('/') && !id.starts_with('.')
}

// ANCHOR: diff
/// `diff ID`: what the container changed, like `docker diff`: A added, C changed, D deleted.
pub fn diff(id: &str) -> Result<Vec<String>> {
    if !is_id(id) {
        bail!("no container {id:?} (see `ls`)");
    }
    let dir = Path::new(CONTAINERS).join(id);
    let lowers = std::fs::read_to_string(dir.join("lowers")).with_context(|| format!("no container {id}"))?;
    let lowers: Vec<PathBuf> = lowers.lines().map(PathBuf::from).collect();
    let mut changes = Vec::new();
    walk_changes(&dir.join("upper"), Path::new("/"), &lowers, &mut changes)?;
    Ok(changes)
}

fn walk_changes(upper: &Path, at: &Path, lowers: &[PathBuf], changes: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(upper)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = at.join(entry.file_name());
        let meta = entry.path().symlink_metadata()?;
        let below = lowers.iter().any(|l| l.join(path.strip_prefix("/").unwrap()).symlink_metadata().is_ok());
        let mark = if is_whiteout(&meta) {
            'D'
        } else if below {
            'C'
        } else {
            'A'
        };
        changes.push(format!("{mark} {}", path.display()));
        if meta.is_dir() {
            walk_changes(&entry.path(), &path, lowers, changes)?;
        }
    }
    Ok(())
}
// ANCHOR_END: diff

/// `ls`: the containers whose layer was kept.
pub fn list() -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(CONTAINERS)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// `rm ID`: removes a finished container's layer.
pub fn remove(id: &str) -> Result<()> {
    let dir = Path::new(CONTAINERS).join(id);
    if !is_id(id) || !dir.join("lowers").exists() {
        bail!("no container {id:?} (see `ls`)");
    }
    // While it runs, its merged root is a mount point: another device than its directory.
    let device = |p: PathBuf| p.metadata().map(|m| m.dev()).ok();
    if device(dir.join("merged")).is_some() && device(dir.join("merged")) != device(dir.clone()) {
        bail!("container {id} is still running");
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))
}

// ANCHOR: whiteouts
/// overlayfs's whiteout: a character device with device number 0/0.
pub fn make_whiteout(path: &Path) -> Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
        .with_context(|| format!("whiteout {}", path.display()))
}

pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

const OPAQUE: &str = "trusted.overlay.opaque";

/// Marks a directory opaque: nothing of the layers below shows through it.
pub fn set_opaque(dir: &Path) -> Result<()> {
    xattr::set(dir, OPAQUE, b"y").with_context(|| format!("mark {} opaque", dir.display()))
}

pub fn is_opaque(dir: &Path) -> bool {
    xattr::get(dir, OPAQUE).is_some_and(|v| v == b"y")
}
// ANCHOR_END: whiteouts

/// Extended attributes, which std does not cover.
mod xattr {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn c_path(path: &Path) -> std::io::Result<CString> {
        CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput.into())
    }

    pub fn set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
        let (path, name) = (c_path(path)?, CString::new(name).unwrap());
        // SAFETY: valid C strings and a buffer of the length we pass.
        let done =
            unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if done == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    pub fn get(path: &Path, name: &str) -> Option<Vec<u8>> {
        let (path, name) = (c_path(path).ok()?, CString::new(name).unwrap());
        let mut value = [0u8; 16];
        // SAFETY: valid C strings and a buffer of the length we pass.
        let len =
            unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        (len >= 0).then(|| value[..len as usize].to_vec())
    }
}
