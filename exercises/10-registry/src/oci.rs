//! OCI image layouts: the directory that image tools write for an image
//! (`skopeo copy docker://alpine oci:DIR`, `docker buildx build --output type=oci`).
//!
//! `DIR/index.json` names a manifest, the manifest names the layers, bottom
//! first. Every file it names is a blob, `DIR/blobs/sha256/HEX`, whose name
//! is the SHA-256 of its content: we check each one before we use it.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Layers we can unpack: plain and gzipped tars (OCI's names, and Docker's for the gzipped one).
const LAYER_TYPES: [&str; 3] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
use crate::pull::ARCH;

// ANCHOR: layers
/// The layer tars of the image in the OCI layout `dir`, bottom first, each
/// checked, and its config (what to run: `Cmd`, `Env`...).
pub fn read(dir: &Path) -> Result<(Vec<PathBuf>, Value)> {
    let context = || format!("OCI layout {}", dir.display());
    let layout = read_json(&dir.join("oci-layout")).with_context(context)?;
    if layout["imageLayoutVersion"] != "1.0.0" {
        bail!("{}: imageLayoutVersion {} is not 1.0.0", context(), layout["imageLayoutVersion"]);
    }
    let index = read_json(&dir.join("index.json")).with_context(context)?;
    let manifest = manifest_for_us(dir, &index, 0).with_context(context)?;
    let listed = manifest["layers"].as_array().filter(|l| !l.is_empty());
    let listed = listed.with_context(|| format!("{}: the manifest lists no layers", context()))?;
    let mut layers = Vec::new();
    for layer in listed {
        let kind = layer["mediaType"].as_str().unwrap_or("(none)");
        if !LAYER_TYPES.contains(&kind) {
            bail!("{}: layers of type {kind} are not supported (tar and tar+gzip are)", context());
        }
        layers.push(blob(dir, layer).with_context(context)?);
    }
    let config = read_json(&blob(dir, &manifest["config"]).with_context(context)?).with_context(context)?;
    Ok((layers, config))
}
// ANCHOR_END: layers

/// Follows an index to the one manifest for linux/ARCH (an index may list
/// one per platform, or point to another index: two levels are enough).
fn manifest_for_us(dir: &Path, index: &Value, depth: u32) -> Result<Value> {
    let listed = index["manifests"].as_array().context("index.json lists no manifests")?;
    let platform = |m: &&Value| {
        let p = &m["platform"];
        p.is_null() || (p["os"] == "linux" && p["architecture"] == ARCH)
    };
    let ours: Vec<&Value> = listed.iter().filter(platform).collect();
    let [descriptor] = ours[..] else {
        bail!("the index lists {} images for linux/{ARCH}; import needs exactly one", ours.len());
    };
    let content = read_json(&blob(dir, descriptor)?)?;
    match descriptor["mediaType"].as_str() {
        Some(INDEX) if depth < 2 => manifest_for_us(dir, &content, depth + 1),
        Some(INDEX) => bail!("indexes nested too deep"),
        _ => Ok(content),
    }
}

// ANCHOR: blob
/// The file a descriptor names, once its content matches its digest.
fn blob(dir: &Path, descriptor: &Value) -> Result<PathBuf> {
    let digest = descriptor["digest"].as_str().context("a descriptor without a digest")?;
    // The digest becomes a file name: only lowercase hex, so it cannot climb out of blobs/.
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .with_context(|| format!("refused: digest {digest:?} is not sha256: and 64 hex digits"))?;
    let path = dir.join("blobs/sha256").join(hex);
    // A regular file only: a symlink to /dev/zero would be hashed forever.
    if !path.symlink_metadata().is_ok_and(|m| m.is_file()) {
        bail!("blob {digest}: {} is missing or not a regular file", path.display());
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(&path)?, &mut hasher)
        .with_context(|| format!("read blob {digest}"))?;
    if format!("{:x}", hasher.finalize()) != hex {
        bail!("refused: blob {digest} does not match its digest (damaged or changed)");
    }
    Ok(path)
}
// ANCHOR_END: blob

/// Reads a small JSON file (an index, a manifest, `oci-layout`).
fn read_json(path: &Path) -> Result<Value> {
    let mut text = String::new();
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // 4 MiB is plenty for a manifest, and bounds what a strange file can make us read.
    file.take(4 << 20).read_to_string(&mut text).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}
