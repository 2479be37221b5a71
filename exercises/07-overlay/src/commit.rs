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
    todo!("commit::finished_layers({id:?}): check the container, and read its layers")
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
    todo!("commit::write_layer({upper:?}, {tar:?}): write the layer as a tar with OCI whiteouts")
    // END EXERCISE
}
