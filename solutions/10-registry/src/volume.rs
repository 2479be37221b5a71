//! Volumes: directories that bypass the union filesystem.
//!
//! `-v /host/dir:/path` shows a host directory inside the container (a bind
//! mount); `-v NAME:/path` a named volume kept in /var/lib/workshop/volumes,
//! made on first use. Either way, what the container writes there lands on
//! the host at once and outlives the container. `:ro` makes it read-only.

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use std::path::{Component, Path, PathBuf};

pub const STORE: &str = crate::paths::VOLUMES;

#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// An absolute host directory.
    Host(PathBuf),
    /// A named volume in the store.
    Named(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    pub source: Source,
    /// Where it appears inside the container (absolute, no `..`).
    pub target: PathBuf,
    pub read_only: bool,
}

// ANCHOR: parse
/// Parses `-v SRC:DST[:ro|:rw]`.
pub fn parse(spec: &str) -> Result<Volume> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts[..] {
        [source, target] => (source, target, "rw"),
        [source, target, mode] => (source, target, mode),
        _ => bail!("expected SRC:DST or SRC:DST:ro, like /srv/data:/data or data:/data:ro"),
    };
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        _ => bail!("the mode must be ro or rw, not {mode:?}"),
    };
    let source = if source.starts_with('/') {
        Source::Host(PathBuf::from(source))
    } else if !source.is_empty()
        && source.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !source.starts_with('.')
    {
        Source::Named(source.to_string())
    } else {
        bail!(
            "{source:?} is neither an absolute host path nor a volume name (letters, digits, '_', '.', '-')"
        );
    };
    let target = PathBuf::from(target);
    let climbs = target.components().any(|c| c == Component::ParentDir);
    if !target.is_absolute() || climbs || target == Path::new("/") {
        bail!("the target {:?} must be an absolute path below / without '..'", target.display());
    }
    Ok(Volume { source, target, read_only })
}
// ANCHOR_END: parse

/// A volume ready to mount: the host directory and where it goes.
#[derive(Clone, Debug)]
pub struct Mount {
    source: PathBuf,
    target: PathBuf,
    read_only: bool,
}

// ANCHOR: prepare
/// Host side, before clone: check host directories, make named volumes.
/// `owner` is the container's root as the host sees it (not 0 under --userns).
pub fn prepare(volumes: &[Volume], owner: u32) -> Result<Vec<Mount>> {
    let mut mounts = Vec::new();
    for volume in volumes {
        let path = match &volume.source {
            Source::Host(path) => {
                if !path.is_dir() {
                    bail!("volume source {}: no such directory on the host", path.display());
                }
                path.clone()
            }
            Source::Named(name) => {
                let path = Path::new(STORE).join(name);
                if !path.exists() {
                    std::fs::create_dir_all(&path).with_context(|| format!("create volume {name}"))?;
                    // A new volume belongs to the container's root, so it can write there.
                    std::os::unix::fs::chown(&path, Some(owner), Some(owner))?;
                }
                path
            }
        };
        mounts.push(Mount { source: path, target: volume.target.clone(), read_only: volume.read_only });
    }
    crate::process::fault("volumes")?;
    Ok(mounts)
}
// ANCHOR_END: prepare

// ANCHOR: mount_all
/// Child side, after the mount tree is private and before pivot_root: bind
/// each source onto its target below `root`.
pub fn mount_all(root: &Path, mounts: &[Mount]) -> Result<()> {
    for volume in mounts {
        let (source, target) = (&volume.source, make_target(root, &volume.target)?);
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(Some(source), &target, None::<&str>, bind, None::<&str>)
            .with_context(|| format!("bind {} on {}", source.display(), volume.target.display()))?;
        if volume.read_only {
            // A bind mount is made read-only by remounting it; the flags it
            // already has (nosuid, ...) must be repeated or the kernel refuses.
            let kept = statvfs(&target)?.flags();
            let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
            for (has, flag) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            ] {
                if kept.contains(has) {
                    flags |= flag;
                }
            }
            mount(None::<&str>, &target, None::<&str>, flags, None::<&str>)
                .with_context(|| format!("make {} read-only", volume.target.display()))?;
        }
    }
    Ok(())
}
// ANCHOR_END: mount_all

// ANCHOR: make_target
/// Creates the target's directories inside the root, one by one, refusing
/// a symlink on the way: the image's `/data -> /etc` must not make us mount
/// over the wrong place (nor, before pivot_root, over the host's).
fn make_target(root: &Path, target: &Path) -> Result<PathBuf> {
    let mut at = root.to_path_buf();
    for part in target.components().filter(|c| matches!(c, Component::Normal(_))) {
        at.push(part);
        match at.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => {
                bail!(
                    "volume target {}: {} is a symlink in the image, refused",
                    target.display(),
                    part.as_os_str().to_string_lossy()
                )
            }
            Ok(meta) if !meta.is_dir() => {
                bail!("volume target {}: not a directory in the image", target.display())
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir(&at)
                .with_context(|| format!("mkdir {} in the container", target.display()))?,
        }
    }
    Ok(at)
}
// ANCHOR_END: make_target

/// `volume ls`.
pub fn list() -> Vec<String> {
    let entries = std::fs::read_dir(STORE).into_iter().flatten().flatten();
    let mut names: Vec<String> = entries.map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// `volume rm NAME`.
pub fn remove(name: &str) -> Result<()> {
    let Ok(Volume { source: Source::Named(name), .. }) = parse(&format!("{name}:/x")) else {
        bail!("invalid volume name {name:?}");
    };
    let path = Path::new(STORE).join(&name);
    if !path.exists() {
        bail!("no volume {name:?} (see `volume ls`)");
    }
    std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let bind = parse("/srv/data:/data").unwrap();
        assert_eq!(
            bind,
            Volume { source: Source::Host("/srv/data".into()), target: "/data".into(), read_only: false }
        );
        let named = parse("cache:/var/cache:ro").unwrap();
        assert_eq!(
            named,
            Volume { source: Source::Named("cache".into()), target: "/var/cache".into(), read_only: true }
        );
        assert!(!parse("/a:/b:rw").unwrap().read_only);
    }

    #[test]
    fn refuses_bad_specs() {
        for spec in [
            "",
            "/a",
            "/a:",
            ":/b",
            "rel/dir:/b",
            "./dir:/b",
            "../x:/b",
            "/a:b",
            "/a:/",
            "/a:/b/../c",
            "/a:/b:rx",
            "/a:/b:ro:x",
            "na me:/b",
            ".hidden:/b",
        ] {
            assert!(parse(spec).is_err(), "{spec:?}");
        }
    }
}
