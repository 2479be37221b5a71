//! Images: an ordered stack of read-only layers.
//!
//! The store keeps each image as numbered layer directories, bottom first:
//! `/var/lib/workshop/images/NAME/00`, `01`, ... A layer comes from a
//! directory or a tar file (.tar or .tar.gz). Tars use the OCI (Docker)
//! whiteout convention, `.wh.NAME` deletes NAME and `.wh..wh..opq` hides a
//! directory's lower contents; import turns them into overlayfs's own marks.

use crate::overlay;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

pub const STORE: &str = crate::paths::IMAGES;

/// The image's layer directories, bottom first.
pub fn layers(name: &str) -> Result<Vec<PathBuf>> {
    let dir = image_dir(name)?;
    let mut layers: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("no image {name:?} (import one with `image import {name} LAYER...`)"))?
        .map(|e| Ok(e?.path()))
        .collect::<Result<_>>()?;
    layers.sort();
    if layers.is_empty() {
        bail!("image {name:?} has no layers");
    }
    Ok(layers)
}

fn image_dir(name: &str) -> Result<PathBuf> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid || name.starts_with('.') {
        bail!("invalid image name {name:?}: use letters, digits, '-', '_' and '.'");
    }
    Ok(Path::new(STORE).join(name))
}

// ANCHOR: import
/// `image import NAME LAYER...`: all layers, or nothing (built aside, then renamed into place).
pub fn import(name: &str, sources: &[PathBuf]) -> Result<()> {
    let dir = image_dir(name)?;
    if dir.exists() {
        bail!("image {name} exists already (remove it with `image rm {name}`)");
    }
    let building = Path::new(STORE).join(format!(".{name}.{}", std::process::id()));
    let result = (|| {
        std::fs::create_dir_all(&building).with_context(|| format!("mkdir {}", building.display()))?;
        for (n, source) in sources.iter().enumerate() {
            let layer = building.join(format!("{n:02}"));
            std::fs::create_dir(&layer)?;
            // Only a directory or a regular file: a fifo would block, a device is no layer.
            let imported = if source.is_dir() {
                copy_layer(source, &layer)
            } else if source.is_file() {
                extract_tar(source, &layer)
            } else {
                Err(anyhow::anyhow!("not a directory or a tar file"))
            };
            imported.with_context(|| format!("layer {}", source.display()))?;
        }
        std::fs::rename(&building, &dir).context("put the image in place")
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    result
}
// ANCHOR_END: import

/// `image ls`: name and number of layers.
pub fn list() -> Vec<(String, usize)> {
    let mut images: Vec<(String, usize)> = std::fs::read_dir(STORE)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .map(|name| {
            let count = layers(&name).map_or(0, |l| l.len());
            (name, count)
        })
        .collect();
    images.sort();
    images
}

/// `image rm NAME`.
pub fn remove(name: &str) -> Result<()> {
    let dir = image_dir(name)?;
    if !dir.exists() {
        bail!("no image {name:?}");
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))
}

// ANCHOR: extract_tar
/// Unpacks a tar layer into `layer`, refusing every entry that could write
/// outside it: nothing outside `layer` is ever touched.
fn extract_tar(file: &Path, layer: &Path) -> Result<()> {
    let mut reader = std::io::BufReader::new(std::fs::File::open(file).context("open")?);
    let gzip = {
        use std::io::BufRead;
        reader.fill_buf()?.starts_with(&[0x1f, 0x8b])
    };
    let reader: Box<dyn Read> =
        if gzip { Box::new(flate2::read::GzDecoder::new(reader)) } else { Box::new(reader) };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().context("read the tar")? {
        let mut entry = entry.context("read the tar")?;
        // ANCHOR: tar_whiteouts
        let raw = entry.path().context("entry name")?.into_owned();
        let Some(relative) = checked_relative(&raw)? else { continue };
        let target = layer.join(&relative);
        refuse_symlinked_parents(layer, &relative, &raw)?;

        let name = relative.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let parent = target.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&parent)?;
        if name == ".wh..wh..opq" {
            overlay::set_opaque(&parent)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_existing(&parent.join(hidden))?;
            overlay::make_whiteout(&parent.join(hidden))?;
            continue;
        }
        // ANCHOR_END: tar_whiteouts
        let header = entry.header().clone();
        let kind = header.entry_type();
        // Replace what an earlier entry left there; a directory may stay, a symlink may not
        // (chmod on it would change whatever it points to).
        let is_symlink = target.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink());
        if !kind.is_dir() || is_symlink {
            remove_existing(&target)?;
        }
        // ANCHOR: tar_kinds
        match kind {
            tar::EntryType::Directory => std::fs::create_dir_all(&target)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut out = std::fs::File::create(&target)?;
                std::io::copy(&mut entry, &mut out)?;
            }
            tar::EntryType::Symlink => {
                // A symlink's target is only data here; we never write through one (see above).
                symlink(entry.link_name()?.context("symlink without a target")?, &target)?;
            }
            tar::EntryType::Link => {
                let to = entry.link_name()?.context("hard link without a target")?.into_owned();
                let to = checked_relative(&to)?
                    .with_context(|| format!("refused: {} links to the layer root", raw.display()))?;
                refuse_symlinked_parents(layer, &to, &raw)?;
                std::fs::hard_link(layer.join(&to), &target)?;
                continue; // a hard link shares its target's owner and mode
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                bail!("refused: {} is a device node, and a layer may not carry devices", raw.display())
            }
            other => bail!("refused: {} is a {other:?} entry, which layers do not use", raw.display()),
        }
        // ANCHOR_END: tar_kinds
        let (uid, gid) = (header.uid()? as u32, header.gid()? as u32);
        lchown(&target, Some(uid), Some(gid))?;
        if !kind.is_symlink() {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(header.mode()? & 0o7777))?;
        }
    }
    Ok(())
}
// ANCHOR_END: extract_tar

// ANCHOR: checks
/// The entry's path inside the layer: absolute paths and `..` are refused.
/// None for the layer's root itself (`./`).
fn checked_relative(path: &Path) -> Result<Option<PathBuf>> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                bail!("refused: {} is an absolute path", path.display())
            }
            Component::ParentDir => bail!("refused: {} climbs out of the layer with '..'", path.display()),
        }
    }
    Ok((!relative.as_os_str().is_empty()).then_some(relative))
}

/// An earlier entry may have planted a symlink (`etc -> /etc`); writing
/// `etc/passwd` through it would change the host. Refuse instead.
fn refuse_symlinked_parents(layer: &Path, relative: &Path, raw: &Path) -> Result<()> {
    let mut at = layer.to_path_buf();
    for part in relative.parent().into_iter().flat_map(Path::components) {
        at.push(part);
        if at.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            bail!("refused: {} would be written through the symlink {}", raw.display(), at.display());
        }
    }
    Ok(())
}
// ANCHOR_END: checks

fn remove_existing(path: &Path) -> Result<()> {
    match path.symlink_metadata() {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    Ok(())
}

/// Copies a directory layer, turning `.wh.` files into overlayfs whiteouts.
fn copy_layer(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
        let meta = source.symlink_metadata()?;
        let target = to.join(&name);
        if name == ".wh..wh..opq" {
            overlay::set_opaque(to)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            overlay::make_whiteout(&to.join(hidden))?;
            continue;
        }
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::create_dir(&target)?;
            copy_layer(&source, &target)?;
            if overlay::is_opaque(&source) {
                overlay::set_opaque(&target)?;
            }
        } else if kind.is_symlink() {
            symlink(std::fs::read_link(&source)?, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &target)?;
        } else if overlay::is_whiteout(&meta) {
            overlay::make_whiteout(&target)?;
            continue;
        } else {
            bail!("refused: {} is a device node or socket, and a layer may not carry one", source.display());
        }
        lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
        if !kind.is_symlink() {
            std::fs::set_permissions(&target, meta.permissions())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::checked_relative;
    use std::path::Path;

    #[test]
    fn entry_paths() {
        assert_eq!(checked_relative(Path::new("./etc/passwd")).unwrap().unwrap(), Path::new("etc/passwd"));
        assert_eq!(checked_relative(Path::new("./")).unwrap(), None);
        assert!(checked_relative(Path::new("/etc/passwd")).is_err());
        assert!(checked_relative(Path::new("a/../../etc")).is_err());
        assert!(checked_relative(Path::new("..")).is_err());
    }
}
