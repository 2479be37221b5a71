//! The image store: layers kept once, by content, and shared by every image that uses them.
//!
//! ```text
//! /var/lib/workshop/store/
//!   lock                        pulls and runs hold it shared, `image rm`'s sweep exclusively
//!   layers/HEX/                 one unpacked layer; HEX is its diff_id (the SHA-256 of its tar)
//!   l/SHORT -> ../layers/HEX    short names, so that 100 layers fit in overlay's mount options
//!   images/ID.json              an image: its config and its layers, bottom first
//!   tags/REGISTRY/REPO/TAG      the image ID a tag names (a pull by digest: @sha256:HEX)
//!   tmp/                        what is being unpacked; nothing of it is ever used
//! ```
//! A layer's name is the digest of its content, so two images that start from
//! the same base find its directory already there and keep one copy.

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::reference::Reference;

pub const STORE: &str = crate::paths::STORE;

/// One layer of an image: the blob it came from (compressed, as the registry
/// names it; none for a local import) and the digest of its uncompressed tar.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Layer {
    pub digest: Option<String>,
    pub diff_id: String,
}

/// An image: its ID is the digest of its config, as in Docker.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Image {
    pub id: String,
    /// The manifest it was pulled with (`RepoDigests`), if it came from a registry.
    pub manifest_digest: Option<String>,
    /// The image config: what to run (`config.Cmd`...) and the layers' diff_ids.
    pub config: serde_json::Value,
    pub layers: Vec<Layer>,
}

fn dir(sub: &str) -> PathBuf {
    Path::new(STORE).join(sub)
}

/// The hex part of a `sha256:` digest, checked, so it is safe as a file name.
pub fn hex(digest: &str) -> Result<&str> {
    crate::reference::check_digest(digest).map_err(|why| anyhow::anyhow!("digest {digest:?}: {why}"))?;
    Ok(&digest[7..])
}

// ANCHOR: lock
/// The store's lock. Pulls, imports and runs take it shared, so they go on
/// side by side; `image rm` takes it exclusively while it sweeps, so that it
/// never removes a layer that a pull has unpacked but not yet recorded.
pub fn lock(exclusive: bool) -> Result<Flock<File>> {
    std::fs::create_dir_all(STORE).with_context(|| format!("mkdir {STORE}"))?;
    let file =
        File::options().create(true).append(true).open(dir("lock")).context("open the store's lock")?;
    let how = if exclusive { FlockArg::LockExclusive } else { FlockArg::LockShared };
    Flock::lock(file, how).map_err(|(_, errno)| errno).context("lock the store")
}
// ANCHOR_END: lock

/// The directory of a layer, by its diff_id, under its short name (see `add_layer`).
pub fn layer_dir(diff_id: &str) -> Result<PathBuf> {
    let hex = hex(diff_id)?;
    Ok(dir("l").join(&hex[..16]))
}

/// Whether the store has this layer already (then a pull need not download it).
pub fn has_layer(diff_id: &str) -> bool {
    hex(diff_id).is_ok_and(|hex| dir("layers").join(hex).is_dir())
}

// ANCHOR: add_layer
/// Unpacks a layer once, whoever else wants it at the same moment.
///
/// A lock file per digest makes the others wait; the winner unpacks into
/// `tmp/`, renames the result into `layers/` (a rename is atomic: a layer is
/// there whole or not at all) and then deletes the lock file. A waiter that
/// wakes up finds the layer there, or, if the winner failed, unpacks it itself.
/// `fill` returns the diff_id it really saw, which must be the one it promised.
pub fn add_layer(diff_id: &str, fill: impl FnOnce(&Path) -> Result<String>) -> Result<PathBuf> {
    let hex = hex(diff_id)?;
    for sub in ["layers", "l", "tmp"] {
        std::fs::create_dir_all(dir(sub)).with_context(|| format!("mkdir {}", dir(sub).display()))?;
    }
    let _claim = claim(hex)?;
    let (done, partial) = (dir("layers").join(hex), dir("tmp").join(format!("{hex}.partial")));
    if !done.is_dir() {
        // What a process that died here left behind is never used: start over.
        remove_dir(&partial)?;
        std::fs::create_dir(&partial)?;
        let seen = fill(&partial);
        let checked = seen.and_then(|seen| match seen == diff_id {
            true => Ok(()),
            false => bail!("refused: the layer's content is {seen}, but the image says {diff_id}"),
        });
        if let Err(err) = checked.and_then(|()| Ok(std::fs::rename(&partial, &done)?)) {
            let _ = remove_dir(&partial);
            return Err(err);
        }
    }
    // Docker's overlay2 driver does the same: a short link to each layer.
    let link = layer_dir(diff_id)?;
    if !link.exists() {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new("../layers").join(hex), &link)?;
    }
    Ok(link)
}

/// The lock of one digest; unlocked and deleted when dropped.
struct Claim {
    path: PathBuf,
    _lock: Flock<File>,
}

fn claim(hex: &str) -> Result<Claim> {
    let path = dir("tmp").join(format!("{hex}.lock"));
    loop {
        let file = File::options().create(true).append(true).open(&path)?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno)?;
        // The one who held it before us may have deleted it: then lock the new one.
        let same = path.metadata().is_ok_and(|m| m.ino() == lock.metadata().map_or(0, |l| l.ino()));
        if same {
            return Ok(Claim { path, _lock: lock });
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path); // while we still hold the lock
    }
}
// ANCHOR_END: add_layer

/// Writes a small file whole or not at all: aside, then renamed into place.
fn write_atomically(path: &Path, content: &[u8]) -> Result<()> {
    let parent = path.parent().context("a path without a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("mkdir {}", parent.display()))?;
    let aside = dir("tmp").join(format!("write.{}", std::process::id()));
    std::fs::create_dir_all(dir("tmp"))?;
    std::fs::write(&aside, content)?;
    std::fs::rename(&aside, path).with_context(|| format!("write {}", path.display()))
}

/// Records an image (its layers must be in the store) and points `reference` at it.
pub fn save(image: &Image, reference: &Reference) -> Result<()> {
    for layer in &image.layers {
        if !has_layer(&layer.diff_id) {
            bail!("layer {} is not in the store", layer.diff_id);
        }
    }
    let record = serde_json::to_vec_pretty(image)?;
    write_atomically(&dir("images").join(format!("{}.json", hex(&image.id)?)), &record)?;
    write_atomically(&tag_file(reference)?, image.id.as_bytes())
}

/// `tags/REGISTRY/REPOSITORY/TAG`: the reference's parts are checked, so no `..` can occur.
fn tag_file(reference: &Reference) -> Result<PathBuf> {
    let repo = dir("tags").join(&reference.registry).join(&reference.repository);
    Ok(match (&reference.digest, &reference.tag) {
        (Some(digest), _) => repo.join(format!("@{digest}")),
        (None, Some(tag)) => repo.join(tag),
        (None, None) => repo.join("latest"),
    })
}

/// The image `reference` names in the store, if there is one.
pub fn find(reference: &Reference) -> Result<Option<Image>> {
    let Ok(id) = std::fs::read_to_string(tag_file(reference)?) else { return Ok(None) };
    read_image(id.trim()).map(Some)
}

fn read_image(id: &str) -> Result<Image> {
    let path = dir("images").join(format!("{}.json", hex(id)?));
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let image: Image =
        serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
    // A record that names another image (edited by hand, say) is damaged too.
    if image.id != id {
        bail!("{} is damaged: it names image {:?}", path.display(), image.id);
    }
    Ok(image)
}

/// The image's layer directories, bottom first (for `overlay::mount_root`).
pub fn layer_dirs(image: &Image) -> Result<Vec<PathBuf>> {
    if image.layers.is_empty() {
        bail!("image {} has no layers", image.id);
    }
    image.layers.iter().map(|layer| layer_dir(&layer.diff_id)).collect()
}

/// Every tag in the store and the image it names, sorted by reference.
pub fn tags() -> Vec<(Reference, Image)> {
    let mut found = Vec::new();
    let root = dir("tags");
    let mut stack = vec![root.clone()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(relative) = path.strip_prefix(&root) else { continue };
            let text = relative.to_string_lossy();
            let Some((name, last)) = text.rsplit_once('/') else { continue };
            let spelled = match last.strip_prefix('@') {
                Some(digest) => format!("{name}@{digest}"),
                None => format!("{name}:{last}"),
            };
            let id = std::fs::read_to_string(&path).unwrap_or_default();
            if let (Ok(reference), Ok(image)) = (Reference::parse(&spelled), read_image(id.trim())) {
                found.push((reference, image));
            }
        }
    }
    found.sort_by_key(|(reference, _)| reference.to_string());
    found
}

/// The bytes a layer takes on disk (its files' sizes).
pub fn layer_size(diff_id: &str) -> u64 {
    fn walk(path: &Path) -> u64 {
        let Ok(meta) = path.symlink_metadata() else { return 0 };
        if !meta.is_dir() {
            return meta.len();
        }
        std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| walk(&e.path())).sum()
    }
    hex(diff_id).map_or(0, |hex| walk(&dir("layers").join(hex)))
}

// ANCHOR: remove
/// `image rm REF`: removes the tag, then sweeps, as a mark-and-sweep garbage
/// collector does: mark every layer that a tagged image or a container (kept
/// or running) uses, and delete the rest. Nothing counts references, so no
/// count can go wrong when a process dies half-way: the next sweep fixes it.
pub fn remove(reference: &Reference) -> Result<()> {
    let _lock = lock(true)?;
    let tag = tag_file(reference)?;
    if !tag.is_file() {
        bail!("no image {}", reference.familiar());
    }
    std::fs::remove_file(&tag).with_context(|| format!("remove {}", tag.display()))?;
    // Empty directories of the tag's repository go too.
    let mut parent = tag.parent();
    while let Some(at) = parent.filter(|p| *p != dir("tags")) {
        if std::fs::remove_dir(at).is_err() {
            break;
        }
        parent = at.parent();
    }
    sweep()
}

fn sweep() -> Result<()> {
    let tagged: Vec<Image> = tags().into_iter().map(|(_, image)| image).collect();
    let mut used: Vec<String> = tagged.iter().flat_map(|i| &i.layers).map(|l| l.diff_id.clone()).collect();
    // A container's `lowers` file lists the layers it stands on, as short links.
    for id in crate::overlay::list() {
        let lowers = Path::new(crate::paths::CONTAINERS).join(id).join("lowers");
        for lower in std::fs::read_to_string(lowers).unwrap_or_default().lines() {
            if let Ok(target) = std::fs::read_link(lower) {
                used.push(format!("sha256:{}", target.file_name().unwrap_or_default().to_string_lossy()));
            }
        }
    }
    let ids: Vec<String> = tagged.iter().map(|i| i.id.clone()).collect();
    for entry in std::fs::read_dir(dir("images")).into_iter().flatten().flatten() {
        let id = format!("sha256:{}", entry.file_name().to_string_lossy().trim_end_matches(".json"));
        if !ids.contains(&id) {
            std::fs::remove_file(entry.path())?;
        }
    }
    for entry in std::fs::read_dir(dir("layers")).into_iter().flatten().flatten() {
        let diff_id = format!("sha256:{}", entry.file_name().to_string_lossy());
        if !used.contains(&diff_id) {
            std::fs::remove_file(layer_dir(&diff_id)?).ok();
            remove_dir(&entry.path())?;
        }
    }
    Ok(())
}
// ANCHOR_END: remove

/// Takes a layer out of the store again (an import that failed half-way).
pub fn remove_layer(diff_id: &str) {
    if let (Ok(hex), Ok(link)) = (hex(diff_id), layer_dir(diff_id)) {
        let _ = std::fs::remove_file(link);
        let _ = remove_dir(&dir("layers").join(hex));
    }
}

/// `cleanup`: what killed pulls left in `tmp/` (a lock no one holds is a dead one).
pub fn remove_stale() {
    for entry in std::fs::read_dir(dir("tmp")).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(hex) = name.strip_suffix(".lock") {
            let Ok(file) = File::open(entry.path()) else { continue };
            if let Ok(_held) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                let _ = remove_dir(&dir("tmp").join(format!("{hex}.partial")));
                let _ = std::fs::remove_file(entry.path());
            }
        } else if name.ends_with(".partial") {
            let hex = name.trim_end_matches(".partial");
            if !dir("tmp").join(format!("{hex}.lock")).exists() {
                let _ = remove_dir(&entry.path());
            }
        } else if let Some(pid) = name.strip_prefix("write.") {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
}
