//! Step 07: importing an OCI image layout (`image import NAME --oci DIR`).

use super::overlay::{app_layer, expect_merged};
use super::{store, TempPath};
use crate::{Check, Ctx, Run};
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(7, "oci::an_oci_layout_imports_as_an_image", an_oci_layout_imports).plain_only(),
        Check::new(7, "errors::bad_oci_layouts_are_refused_and_leave_no_image", bad_oci_layouts_are_refused)
            .plain_only()
            .escape(),
    ]
}

/// Writes an OCI image layout to `dir`: each layer file (with its media type)
/// as a blob named by its SHA-256, a config, a manifest, index.json, oci-layout.
fn write_layout(dir: &Path, layers: &[(&str, &Path)]) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let blob = |media: &str, bytes: &[u8]| -> Result<Value> {
        let hex = format!("{:x}", Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes)?;
        Ok(json!({ "mediaType": media, "digest": format!("sha256:{hex}"), "size": bytes.len() }))
    };
    let layers =
        layers.iter().map(|(media, file)| blob(media, &std::fs::read(file)?)).collect::<Result<Vec<_>>>()?;
    let config = r#"{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}"#;
    let config = blob("application/vnd.oci.image.config.v1+json", config.as_bytes())?;
    let manifest = json!({ "schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers });
    let manifest = blob(MANIFEST, manifest.to_string().as_bytes())?;
    std::fs::write(
        dir.join("index.json"),
        json!({ "schemaVersion": 2, "manifests": [manifest] }).to_string(),
    )?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#)?;
    Ok(())
}

/// The workshop rootfs as one tar (symlinks stored as symlinks).
fn rootfs_tar(ctx: &Ctx, tar: &Path) -> Result<()> {
    let mut builder = tar::Builder::new(std::fs::File::create(tar)?);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", &ctx.workshop.rootfs)?;
    builder.finish()?;
    Ok(())
}

fn import(ctx: &Ctx, name: &str, layout: &Path) -> Result<crate::Outcome> {
    Run::raw(&ctx.step.bin).args(["image", "import", name, "--oci"]).arg(layout).output()
}

fn an_oci_layout_imports(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("oci");
    std::fs::create_dir(&dir.0)?;
    let base = dir.0.join("base.tar");
    rootfs_tar(ctx, &base)?;
    let layout = dir.0.join("layout");
    write_layout(&layout, &[(TAR, &base), (TAR, &app_layer(&dir.0)?)])?;
    let name = format!("test-oci-{}", std::process::id());
    let before = store::contents(ctx);
    let outcome = import(ctx, &name, &layout)?;
    let result = outcome.expect_status(0).map(|_| ()).and_then(|()| expect_merged(ctx, &name));
    // Remove it whatever happened; a failed import's own error is the one to report.
    let _ = Run::raw(&ctx.step.bin).args(["image", "rm", &name]).output();
    result?;
    ensure!(!store::has_image(ctx, &name), "`image rm {name}` left the image behind");
    let left = store::contents(ctx).added_since(&before);
    ensure!(left.is_empty(), "`image rm {name}` left its layers behind: {left:?}");
    Ok(())
}

fn bad_oci_layouts_are_refused(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("bad-oci");
    std::fs::create_dir(&dir.0)?;
    let layer = app_layer(&dir.0)?;
    let layer_hex = format!("{:x}", Sha256::digest(std::fs::read(&layer)?));
    // (what is wrong, the layer's media type or "" for no layer, how to spoil the layout, a word the error must say)
    type Spoil = fn(&Path, &str) -> Result<()>;
    let cases: [(&str, &str, Spoil, &str); 6] = [
        (
            "a layer changed after it was hashed",
            TAR,
            |l, hex| append(&l.join("blobs/sha256").join(hex)),
            "digest",
        ),
        (
            "a digest that climbs out of blobs/",
            TAR,
            |l, _| point_index_at(l, "sha256:../../../../../etc/passwd"),
            "digest",
        ),
        ("a blob that is a symlink", TAR, |l, hex| symlink_blob(l, hex), "regular file"),
        ("a zstd layer", "application/vnd.oci.image.layer.v1.tar+zstd", |_, _| Ok(()), "not supported"),
        ("no index.json", TAR, |l, _| Ok(std::fs::remove_file(l.join("index.json"))?), "index.json"),
        ("a manifest without layers", "", |_, _| Ok(()), "no layers"),
    ];
    for (n, (what, media, spoil, word)) in cases.into_iter().enumerate() {
        let layout = dir.0.join(format!("layout-{n}"));
        let layers: &[(&str, &Path)] = if media.is_empty() { &[] } else { &[(media, &layer)] };
        write_layout(&layout, layers)?;
        spoil(&layout, &layer_hex)?;
        let name = format!("bad-oci-{}", std::process::id());
        let before = store::contents(ctx);
        let outcome = import(ctx, &name, &layout)?;
        crate::figures::add(crate::figures::INPUTS, 1);
        outcome.expect_status(125).with_context(|| format!("an OCI layout with {what} must be refused"))?;
        outcome.expect_one_error_line(&[word]).with_context(|| format!("an OCI layout with {what}"))?;
        ensure!(!store::has_image(ctx, &name), "a refused OCI import ({what}) left the image {name}");
        store::expect_nothing_new(ctx, &before, &format!("a refused OCI import ({what})"))?;
    }
    Ok(())
}

fn append(blob: &Path) -> Result<()> {
    use std::io::Write;
    Ok(std::fs::OpenOptions::new().append(true).open(blob)?.write_all(b"x")?)
}

fn point_index_at(layout: &Path, digest: &str) -> Result<()> {
    let path = layout.join("index.json");
    let mut index: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    index["manifests"][0]["digest"] = digest.into();
    Ok(std::fs::write(path, index.to_string())?)
}

fn symlink_blob(layout: &Path, hex: &str) -> Result<()> {
    let blob = layout.join("blobs/sha256").join(hex);
    std::fs::remove_file(&blob)?;
    Ok(std::os::unix::fs::symlink("/dev/zero", blob)?)
}
