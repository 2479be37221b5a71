//! Images from local files: `image import` into the store (see store.rs).
//!
//! A layer comes from a directory or a tar file (.tar or .tar.gz). Tars use
//! the OCI (Docker) whiteout convention, `.wh.NAME` deletes NAME and
//! `.wh..wh..opq` hides a directory's lower contents; unpacking turns them
//! into overlayfs's own marks. Pulled layers (pull.rs) are unpacked by the
//! same `extract`, from the registry's stream.

use crate::overlay;
use crate::reference::Reference;
use crate::store::{self, Image, Layer};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

// ANCHOR: import
/// `image import NAME LAYER...`: each layer into the store (once, by its
/// digest), then the image. All or nothing: if one layer fails, the layers
/// this import brought into the store go again.
/// `config` is an OCI layout's config (its `Cmd`, `Env`...), if it has one.
pub fn import(name: &Reference, sources: &[PathBuf], config: Option<&serde_json::Value>) -> Result<()> {
    let _store = store::lock(false)?;
    if store::find(name)?.is_some() {
        bail!("image {} exists already (remove it with `image rm {}`)", name.familiar(), name.familiar());
    }
    let (mut layers, mut brought) = (Vec::new(), Vec::new());
    for source in sources {
        match add_layer(source, &mut brought) {
            Ok(diff_id) => layers.push(Layer { digest: None, diff_id }),
            Err(err) => {
                brought.iter().for_each(|diff_id| store::remove_layer(diff_id));
                return Err(err.context(format!("layer {}", source.display())));
            }
        }
    }
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let config = serde_json::json!({
        "architecture": crate::pull::ARCH,
        "os": "linux",
        "config": config.map_or(serde_json::json!({}), |c| c["config"].clone()),
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    // As in Docker, an image's ID is the digest of its config.
    let id = format!("sha256:{}", crate::registry::sha256_hex(&serde_json::to_vec(&config)?));
    store::save(&Image { id, manifest_digest: None, config, layers }, name)
}

/// One source's layer into the store; its diff_id goes into `brought` if the store did not have it.
fn add_layer(source: &Path, brought: &mut Vec<String>) -> Result<String> {
    // Only a directory or a regular file: a fifo would block, a device is no layer.
    let digest = if source.is_dir() {
        dir_digest(source)?
    } else if source.is_file() {
        tar_digest(source)? // read twice: once for the digest, once to unpack
    } else {
        bail!("not a directory or a tar file")
    };
    if !store::has_layer(&digest) {
        brought.push(digest.clone());
    }
    match source.is_dir() {
        true => store::add_layer(&digest, |layer| copy_layer(source, layer).map(|()| digest.clone()))?,
        false => store::add_layer(&digest, |layer| extract_file(source, layer))?,
    };
    Ok(digest)
}
// ANCHOR_END: import

/// `image ls`: one line per name, with what its layers take and what of that it shares.
pub fn list() {
    let tags = store::tags();
    for (reference, image) in &tags {
        let (mut size, mut shared) = (0, 0);
        for layer in &image.layers {
            let bytes = store::layer_size(&layer.diff_id);
            size += bytes;
            let others = tags.iter().filter(|(_, other)| other.id != image.id);
            if others.flat_map(|(_, other)| &other.layers).any(|l| l.diff_id == layer.diff_id) {
                shared += bytes;
            }
        }
        let shared =
            if shared > 0 { format!("{} shared", crate::pull::human_size(shared)) } else { "-".into() };
        let id = image.id.strip_prefix("sha256:").unwrap_or(&image.id);
        let (familiar, count) = (reference.familiar(), image.layers.len());
        println!("{familiar}\t{}\t{count} layers\t{}\t{shared}", &id[..12], crate::pull::human_size(size));
    }
}

/// `image inspect REF`: what `docker image inspect` shows, as far as the store knows it.
pub fn inspect(reference: &Reference) -> Result<()> {
    let image =
        store::find(reference)?.with_context(|| format!("no such image: {}", reference.familiar()))?;
    let tags = store::tags();
    let names = tags.iter().filter(|(_, other)| other.id == image.id).map(|(r, _)| r);
    let (digests, tagged): (Vec<&Reference>, Vec<&Reference>) = names.partition(|r| r.digest.is_some());
    let repo_digests: Vec<String> = match &image.manifest_digest {
        Some(digest) => tagged
            .iter()
            .chain(&digests)
            .map(|r| format!("{}/{}@{digest}", r.registry, r.repository))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        None => Vec::new(),
    };
    // overlayfs lists the top layer first.
    let dirs: Vec<String> =
        store::layer_dirs(&image)?.iter().rev().map(|d| d.display().to_string()).collect();
    let size: u64 = image.layers.iter().map(|l| store::layer_size(&l.diff_id)).sum();
    let shown = serde_json::json!([{
        "Id": image.id,
        "RepoTags": tagged.iter().map(|r| r.familiar()).collect::<Vec<_>>(),
        "RepoDigests": repo_digests,
        "Architecture": image.config["architecture"],
        "Os": image.config["os"],
        "Config": image.config["config"],
        "RootFS": image.config["rootfs"],
        "Size": size,
        "GraphDriver": { "Name": "overlay", "Data": { "LowerDir": dirs.join(":") } },
    }]);
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}

/// The diff_id of a tar file: the SHA-256 of its bytes, uncompressed.
fn tar_digest(file: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut open_tar(file)?, &mut hasher).context("read")?;
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

/// A directory has no tar, so its digest covers what a tar would carry:
/// each entry's path, kind, owner, mode and content, in a fixed order.
fn dir_digest(dir: &Path) -> Result<String> {
    fn walk(root: &Path, at: &Path, hasher: &mut Sha256) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(at)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let meta = path.symlink_metadata()?;
            let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
            hasher.update(format!(
                "{relative}\0{:o} {} {} {}\0",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.rdev()
            ));
            if meta.file_type().is_symlink() {
                hasher.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
            } else if meta.is_file() {
                std::io::copy(&mut std::fs::File::open(&path)?, hasher)?;
            } else if meta.is_dir() {
                hasher.update([overlay::is_opaque(&path) as u8]);
                walk(root, &path, hasher)?;
            }
        }
        Ok(())
    }
    let mut hasher = Sha256::new();
    walk(dir, dir, &mut hasher)?;
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

fn open_tar(file: &Path) -> Result<Box<dyn Read>> {
    let mut reader = std::io::BufReader::new(std::fs::File::open(file).context("open")?);
    let gzip = {
        use std::io::BufRead;
        reader.fill_buf()?.starts_with(&[0x1f, 0x8b])
    };
    Ok(if gzip { Box::new(flate2::read::GzDecoder::new(reader)) } else { Box::new(reader) })
}

/// Unpacks a tar file into `layer`; returns the digest of what it unpacked.
fn extract_file(file: &Path, layer: &Path) -> Result<String> {
    let mut hashing = crate::pull::Hashing::new(open_tar(file)?, None);
    extract(&mut hashing, layer)?;
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    Ok(hashing.digest())
}

// ANCHOR: extract_tar
/// Unpacks a tar stream into `layer`, refusing every entry that could write
/// outside it: nothing outside `layer` is ever touched.
pub fn extract(reader: &mut dyn Read, layer: &Path) -> Result<()> {
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
