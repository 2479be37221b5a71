//! The user namespace: root inside, an unprivileged user outside.
//!
//! Inside, the container's ids 0..SIZE are the host's START..START+SIZE. Its
//! root has every capability, but only over what its namespaces own; to the
//! host it is plain uid START, which owns nothing and may do nothing special.

use crate::overlay;
use anyhow::{bail, Context, Result};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Pid, Uid};
use std::os::unix::fs::{lchown, symlink, MetadataExt};
use std::path::{Path, PathBuf};

/// Where the per-mapping copies of root filesystems are kept (a cache).
const CACHE: &str = crate::paths::USERNS_CACHE;

/// Container ids 0..size are host ids start..start+size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mapping {
    pub start: u32,
    pub size: u32,
}

/// Docker's userns-remap default: 65536 ids from 100000.
pub const DEFAULT: Mapping = Mapping { start: 100000, size: 65536 };

/// Parses `--userns-remap START[:SIZE]`.
pub fn parse_mapping(text: &str) -> Result<Mapping> {
    let (start, size) = text.split_once(':').unwrap_or((text, "65536"));
    let number = |s: &str| s.parse::<u32>().ok();
    let (Some(start), Some(size)) = (number(start), number(size)) else {
        bail!("invalid --userns-remap {text:?}: expected START[:SIZE], like 100000:65536");
    };
    if start == 0 || size == 0 || start.checked_add(size).is_none() {
        bail!("invalid --userns-remap {text:?}: START and SIZE must be above 0, START+SIZE below 2^32");
    }
    Ok(Mapping { start, size })
}

// ANCHOR: write_maps
/// Parent: write the child's maps. Only possible once the child exists, and
/// it must happen before the child goes on (it waits on the sync pipe).
pub fn write_maps(child: Pid, mapping: Mapping) -> Result<()> {
    // One line "INSIDE OUTSIDE COUNT". As host root we may also map groups
    // without writing "deny" to /proc/PID/setgroups, so `setgroups` still works inside.
    let line = format!("0 {} {}\n", mapping.start, mapping.size);
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{child}/{file}");
        std::fs::write(&path, &line).with_context(|| format!("write {path}"))?;
    }
    Ok(())
}
// ANCHOR_END: write_maps

// ANCHOR: become_root
/// Child: become uid and gid 0 of the new namespace (START on the host).
pub fn become_root() -> Result<()> {
    setgroups(&[]).context("drop the host's supplementary groups")?;
    let (gid, uid) = (Gid::from_raw(0), Uid::from_raw(0));
    setresgid(gid, gid, gid).context("setresgid 0")?;
    setresuid(uid, uid, uid).context("setresuid 0")
}
// ANCHOR_END: become_root

/// Host side: the rootfs's files belong to host root, which is nobody inside.
/// Like Docker's userns-remap, use a copy owned by the mapped ids, made once
/// per rootfs and mapping (and again when the rootfs directory changes).
pub fn mapped_rootfs(rootfs: &Path, mapping: Mapping) -> Result<PathBuf> {
    // A store's layer is named by a short link (store.rs): copy what it points to.
    let rootfs = &rootfs.canonicalize().context("find the rootfs")?;
    let source = rootfs.symlink_metadata().context("stat the rootfs")?;
    let stamp = format!(
        "{} {} {}\n",
        source.dev(),
        source.ino(),
        source.mtime_nsec() + source.mtime() * 1_000_000_000
    );
    let name = rootfs.to_string_lossy().trim_start_matches('/').replace('/', "_");
    let dir = Path::new(CACHE).join(format!("{}-{}", mapping.start, mapping.size));
    let (copy, stamp_file) = (dir.join(&name), dir.join(format!("{name}.stamp")));
    if copy.is_dir() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(copy);
    }
    // Build next to it and rename into place, so a half-made copy never runs.
    let fresh = dir.join(format!("{name}.new-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&fresh);
    copy_shifted(rootfs, &fresh, mapping)
        .with_context(|| format!("copy the rootfs to {}", fresh.display()))?;
    if copy.exists() {
        let old = dir.join(format!("{name}.old-{}", std::process::id()));
        std::fs::rename(&copy, &old)?;
        let _ = std::fs::remove_dir_all(&old);
    }
    if std::fs::rename(&fresh, &copy).is_err() {
        let _ = std::fs::remove_dir_all(&fresh); // another container made it first
    }
    std::fs::write(&stamp_file, stamp)?;
    Ok(copy)
}

/// Copies a tree, moving each owner id into the mapped range.
fn copy_shifted(from: &Path, to: &Path, mapping: Mapping) -> Result<()> {
    let meta = from.symlink_metadata()?;
    let kind = meta.file_type();
    if kind.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_shifted(&entry.path(), &to.join(entry.file_name()), mapping)?;
        }
        if overlay::is_opaque(from) {
            overlay::set_opaque(to)?;
        }
    } else if kind.is_symlink() {
        symlink(std::fs::read_link(from)?, to)?;
    } else if kind.is_file() {
        std::fs::copy(from, to)?;
    } else if overlay::is_whiteout(&meta) {
        // An image layer's deletions must survive the copy.
        overlay::make_whiteout(to)?;
    } else {
        return Ok(()); // device nodes and fifos: /dev is made fresh at run time
    }
    let shift = |id: u32| if id < mapping.size { mapping.start + id } else { 65534 };
    lchown(to, Some(shift(meta.uid())), Some(shift(meta.gid())))?;
    if !kind.is_symlink() {
        // chown clears set-uid bits: set the mode afterwards.
        std::fs::set_permissions(to, meta.permissions())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_and_size() {
        assert_eq!(parse_mapping("200000").unwrap(), Mapping { start: 200000, size: 65536 });
        assert_eq!(parse_mapping("100000:1000").unwrap(), Mapping { start: 100000, size: 1000 });
    }

    #[test]
    fn refuses_bad_mappings() {
        for text in ["", "abc", "0", "100000:0", "-5", "4294967295:2", "1:2:3", "100000:", ":5"] {
            assert!(parse_mapping(text).is_err(), "{text:?}");
        }
    }
}
