//! Exercise 07: `commit ID NAME` makes an image of a finished container.
//!
//! A container run without `--rm` keeps its layer: `upper` in its directory
//! holds everything it changed, as overlayfs wrote it: new and changed files
//! in full, a deleted file as a whiteout (a 0/0 character device), and a
//! directory that was deleted and made again as an opaque directory (the
//! xattr trusted.overlay.opaque = y), which hides everything below it.
//! `docker commit` turns that layer into one more image layer, on top of the
//! layers the container stood on.
//!
//! Image layers travel as tar files, and a tar cannot carry overlayfs's
//! marks (a device node is refused by every importer, ours too, and xattrs
//! are often lost). So the OCI image format writes them as plain empty files:
//! `.wh.NAME` deletes NAME, and `.wh..wh..opq` inside a directory hides what
//! the layers below have there. `image import` (image.rs) reads exactly this
//! convention back into overlayfs's marks: commit writes the container's
//! layer as such a tar and imports it with the layers below.
//! Manual: the OCI image spec, "Image Layer Filesystem Changeset" (whiteouts).

use crate::{image, overlay};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
// EXERCISE: the imports your code needs.
use anyhow::bail;
use std::os::unix::fs::MetadataExt;
// END EXERCISE

/// `commit ID NAME`: a new image NAME, made of the layers container ID
/// stood on, bottom first, and one more layer on top with what it changed.
/// The container and its image stay as they were.
pub fn commit(id: &str, name: &str) -> Result<()> {
    let (upper, lowers) = finished_layers(id)?;
    let tar = Path::new(overlay::CONTAINERS).join(id).join("commit.tar");
    let result = write_layer(&upper, &tar)
        .with_context(|| format!("write container {id}'s layer as a tar"))
        .and_then(|()| image::import(name, &[lowers, vec![tar.clone()]].concat()));
    let _ = std::fs::remove_file(&tar);
    result
}

/// The layers of finished container `id`: its own (`upper`), and those it
/// stood on, bottom first (the `lowers` file that `overlay::mount_root`
/// wrote, one path a line). `id` comes from the command line: refuse, with
/// an error that names it, an id that is no kept container (see `ls`, and
/// refuse `..` and `/` in it), a container that is still running
/// (`crate::state::is_live`), and one that ran with `--userns`: its layer
/// belongs to the mapped ids (its `upper` is not owned by 0), and so would
/// every file of the new image.
///
/// Book: chapter 07, "Exercise: commit a container".
fn finished_layers(id: &str) -> Result<(PathBuf, Vec<PathBuf>)> {
    // EXERCISE: check the container, then read its `lowers` file.
    let dir = Path::new(overlay::CONTAINERS).join(id);
    let plain = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let lowers = std::fs::read_to_string(dir.join("lowers"));
    let (true, Ok(lowers)) = (plain, lowers) else {
        bail!("no container {id:?} (see `ls`)");
    };
    if crate::state::is_live(id) {
        bail!("container {id} is still running: commit it once it has ended");
    }
    let upper = dir.join("upper");
    let owner = upper.metadata().with_context(|| format!("container {id} has no layer"))?.uid();
    if owner != 0 {
        bail!("container {id} ran with --userns: its files belong to uid {owner} and up, not to root");
    }
    Ok((upper, lowers.lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect()))
    // END EXERCISE
}

/// Writes the container's layer `upper` as a tar file at `tar`, paths
/// relative to it (`etc/passwd`), each file with its owner and mode, in the
/// OCI convention: a whiteout (`overlay::is_whiteout`) becomes an empty
/// file `.wh.NAME` beside where NAME was, and an opaque directory
/// (`overlay::is_opaque`) gets an empty file `.wh..wh..opq` inside it, as
/// well as its own entry. Symlinks stay symlinks (`follow_symlinks(false)`).
/// The `tar` crate writes the entries: `Builder::append_dir`,
/// `append_path_with_name` (files, symlinks), and `append_data` with a
/// `Header` of your own for the empty marker files.
///
/// Book: chapter 07, "Exercise: commit a container".
fn write_layer(upper: &Path, tar: &Path) -> Result<()> {
    // EXERCISE: walk `upper` and write each entry, whiteouts and opaque directories as markers.
    fn marker(builder: &mut tar::Builder<std::fs::File>, path: &Path) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(0);
        header.set_mode(0o644);
        header.set_mtime(0);
        builder
            .append_data(&mut header, path, std::io::empty())
            .with_context(|| format!("{}", path.display()))
    }
    fn add(builder: &mut tar::Builder<std::fs::File>, dir: &Path, at: &Path) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let (source, name) = (entry.path(), at.join(entry.file_name()));
            let meta = source.symlink_metadata()?;
            if overlay::is_whiteout(&meta) {
                let hidden = format!(".wh.{}", entry.file_name().to_string_lossy());
                marker(builder, &at.join(hidden))?;
            } else if meta.is_dir() {
                builder.append_dir(&name, &source)?;
                if overlay::is_opaque(&source) {
                    marker(builder, &name.join(".wh..wh..opq"))?;
                }
                add(builder, &source, &name)?;
            } else {
                builder
                    .append_path_with_name(&source, &name)
                    .with_context(|| format!("{}", name.display()))?;
            }
        }
        Ok(())
    }
    let mut builder = tar::Builder::new(std::fs::File::create(tar)?);
    builder.follow_symlinks(false);
    add(&mut builder, upper, Path::new(""))?;
    builder.into_inner()?.sync_all()?;
    Ok(())
    // END EXERCISE
}
