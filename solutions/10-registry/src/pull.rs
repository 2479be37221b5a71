//! `pull`: from a reference to an image in the store.
//!
//! 1. `GET /v2/` (log in if the registry says 401);
//! 2. the manifest for the tag; if it is an index (one manifest per
//!    platform), the manifest for linux on this machine's CPU;
//! 3. the config blob it names (what to run, and the layers' diff_ids);
//! 4. every layer the store does not have yet, checked while it streams
//!    in: the compressed bytes against the blob's digest and size, the
//!    unpacked tar against the config's diff_id;
//! 5. the image record, then the tag: only a complete image is ever named.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Read};
use std::sync::atomic::{AtomicI32, Ordering::SeqCst};
use std::time::Instant;

use crate::reference::Reference;
use crate::registry::{Client, Options};
use crate::store::{self, Image, Layer};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// What we ask for, in `Accept`: an index first, so that we pick the platform ourselves.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
const CONFIG_TYPES: [&str; 2] =
    ["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// The platform we run images for, in OCI's words.
pub const ARCH: &str = if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" };

/// How a layer is compressed, from its media type.
#[derive(Clone, Copy, Debug)]
enum Compression {
    None,
    Gzip,
}

fn compression(media_type: &str) -> Result<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        t if t.ends_with("+zstd") => {
            bail!("refused: a zstd-compressed layer ({t}); this step unpacks gzip and plain tar only")
        }
        t if t.contains("foreign") || t.contains("nondistributable") => {
            bail!(
                "refused: a foreign layer ({t}) must be fetched from elsewhere, which this step does not do"
            )
        }
        t => bail!("refused: layers of type {t:?} are not tars (tar and tar+gzip are)"),
    }
}

/// The image `reference` names: from the store, or pulled if it is not there yet (as `docker run` does).
pub fn find_or_pull(reference: &Reference, options: &Options, quiet: bool) -> Result<Image> {
    if let Some(image) = store::find(reference)? {
        return Ok(image);
    }
    pull_as(reference, options, quiet, true)
}

// ANCHOR: pull
/// `pull REF`: the image into the store, layer by layer, each checked.
pub fn pull(reference: &Reference, options: &Options, quiet: bool) -> Result<Image> {
    pull_as(reference, options, quiet, false)
}

fn pull_as(reference: &Reference, options: &Options, quiet: bool, for_run: bool) -> Result<Image> {
    let _store = store::lock(false)?;
    let mut client = Client::new(reference, options)?;
    let what = reference.familiar();
    client.ping().with_context(|| format!("pull {what}"))?;
    if for_run && !quiet {
        eprintln!("Unable to find image '{what}' locally");
    }
    let (manifest, manifest_digest) =
        manifest_for_us(&mut client, reference.tag_or_digest(), 0).with_context(|| format!("pull {what}"))?;

    let config = &manifest["config"];
    let config_type = config["mediaType"].as_str().unwrap_or_default();
    if !CONFIG_TYPES.contains(&config_type) {
        bail!("refused: {what} is not a container image (its config is {config_type:?})");
    }
    let (config_digest, config_size) = descriptor(config)?;
    let config: Value = serde_json::from_slice(&client.small_blob(&config_digest, config_size)?)
        .context("the image config is not JSON")?;
    if config["os"] != "linux" || config["architecture"] != ARCH {
        bail!(
            "refused: {what} is for {}/{}, and this machine runs linux/{ARCH}",
            config["os"],
            config["architecture"]
        );
    }
    let listed = manifest["layers"].as_array().filter(|layers| !layers.is_empty());
    let listed = listed.with_context(|| format!("refused: the manifest of {what} lists no layers"))?;
    let diff_ids: Vec<&str> =
        config["rootfs"]["diff_ids"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if diff_ids.len() != listed.len() {
        bail!("refused: the config of {what} names {} layers, its manifest {}", diff_ids.len(), listed.len());
    }

    let progress = Progress::new(quiet, reference);
    let mut layers = Vec::new();
    for (descriptor, diff_id) in listed.iter().zip(diff_ids) {
        let (digest, size) = self::descriptor(descriptor)?;
        let kind = compression(descriptor["mediaType"].as_str().unwrap_or_default())?;
        store::hex(diff_id).context("the config names a layer badly")?;
        if store::has_layer(diff_id) {
            progress.line(&digest, "Already exists");
        } else {
            let started = Instant::now();
            let bar = progress.bar(&digest, size);
            store::add_layer(diff_id, |dir| fetch_layer(&mut client, &digest, size, kind, dir, bar.as_ref()))
                .with_context(|| format!("layer {digest}"))?;
            progress.done(&digest, bar, size, started);
        }
        layers.push(Layer { digest: Some(digest), diff_id: diff_id.to_string() });
    }
    let image = Image { id: config_digest, manifest_digest: Some(manifest_digest.clone()), config, layers };
    store::save(&image, reference)?;
    if !quiet {
        eprintln!("Digest: {manifest_digest}");
        eprintln!("Status: Downloaded newer image for {what}");
    }
    Ok(image)
}
// ANCHOR_END: pull

// ANCHOR: platform
/// Follows an index to the manifest for linux on this CPU (an index may point
/// to another index: two levels are enough), with its digest. From an index:
/// the entry whose platform is linux/ARCH, or else linux/ARCH/VARIANT (any
/// variant); none, and the pull is refused in one line that names what the
/// index offers (`linux/arm64, linux/arm/v7`).
///
/// Book: chapter 10, "Exercise: check what you pull".
fn manifest_for_us(client: &mut Client, tag_or_digest: &str, depth: u32) -> Result<(Value, String)> {
    let (body, header_type, digest) = client.manifest(tag_or_digest)?;
    let manifest: Value = serde_json::from_slice(&body).context("the manifest is not JSON")?;
    // The Content-Type says what it is; the document's own mediaType if that is missing.
    let media_type = match header_type.as_str() {
        "" | "application/json" | "application/octet-stream" => {
            manifest["mediaType"].as_str().unwrap_or_default()
        }
        given => given,
    }
    .to_string();
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Ok((manifest, digest)),
        OCI_INDEX | DOCKER_LIST if depth < 2 => {
            let listed = manifest["manifests"].as_array().context("an index that lists no manifests")?;
            // EXERCISE: the entry for linux/ARCH (any variant), or refuse naming what it offers; follow it.
            let platform = |m: &Value| {
                let p = &m["platform"];
                format!("{}/{}", p["os"].as_str().unwrap_or("?"), p["architecture"].as_str().unwrap_or("?"))
                    + &p["variant"].as_str().map(|v| format!("/{v}")).unwrap_or_default()
            };
            let ours = listed
                .iter()
                .find(|m| platform(m) == format!("linux/{ARCH}"))
                .or_else(|| listed.iter().find(|m| platform(m).starts_with(&format!("linux/{ARCH}/"))));
            let Some(ours) = ours else {
                let offered: Vec<String> = listed.iter().map(platform).collect();
                bail!("refused: no image for linux/{ARCH} here (the index offers {})", offered.join(", "));
            };
            let (digest, _) = descriptor(ours)?;
            manifest_for_us(client, &digest, depth + 1)
            // END EXERCISE
        }
        OCI_INDEX | DOCKER_LIST => bail!("refused: indexes nested too deep"),
        other => bail!("refused: a manifest of type {other:?} (OCI and Docker schema 2 manifests are read)"),
    }
}
// ANCHOR_END: platform

/// A descriptor's digest (checked, so it is safe in a path) and size.
fn descriptor(descriptor: &Value) -> Result<(String, u64)> {
    let digest = descriptor["digest"].as_str().context("a descriptor without a digest")?;
    store::hex(digest)?;
    let size = descriptor["size"].as_u64().context("a descriptor without a size")?;
    Ok((digest.to_string(), size))
}

// ANCHOR: fetch_layer
/// Streams one layer blob into `dir`: registry -> digest check -> gunzip ->
/// diff_id check -> tar. Both checks see every byte; only when both match
/// does the layer leave `tmp/` (see `store::add_layer`). Returns the diff_id seen.
///
/// The digest is of every byte of the blob, not of what gunzip needed: read
/// `compressed` to its end before comparing. Then its byte count must be
/// `size` and its digest `digest`, or the layer is refused (in one line that
/// names the blob): the diff_id alone cannot tell a changed blob that
/// unpacks to the same tar, nor a manifest that lies about the size.
///
/// Book: chapter 10, "Exercise: check what you pull".
fn fetch_layer(
    client: &mut Client,
    digest: &str,
    size: u64,
    kind: Compression,
    dir: &std::path::Path,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<String> {
    // One byte more than promised is enough to know that it is too long.
    let mut compressed = Hashing::new(client.blob(digest)?.take(size + 1), bar.cloned());
    let diff_id = {
        let unpacked: Box<dyn Read + '_> = match kind {
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(&mut compressed)),
            Compression::None => Box::new(&mut compressed),
        };
        let mut tar = Hashing::new(unpacked, None);
        crate::image::extract(&mut tar, dir)?;
        std::io::copy(&mut tar, &mut std::io::sink())?; // the tar's padding counts too
        tar.digest()
    };
    // EXERCISE: read the blob to its end, then refuse it unless its size and digest are the descriptor's.
    std::io::copy(&mut compressed, &mut std::io::sink())?;
    if compressed.count != size || compressed.digest() != digest {
        let seen = compressed.count;
        bail!("refused: blob {digest} does not match its digest and size ({seen} of {size} bytes; damaged, truncated or changed)");
    }
    Ok(diff_id)
    // END EXERCISE
}
// ANCHOR_END: fetch_layer

/// Set by SIGINT or SIGTERM during a pull: the download stops at its next
/// read, and what it unpacked is removed on the way out.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn interrupt(signal: libc::c_int) {
    INTERRUPTED.store(signal, SeqCst);
}

/// The signal that stopped the pull, if one did (the exit status is then 128 + it).
pub fn interrupted() -> Option<i32> {
    Some(INTERRUPTED.load(SeqCst)).filter(|&signal| signal != 0)
}

/// For `pull`: Ctrl-C ends the pull cleanly instead of killing us mid-layer.
pub fn stop_on_signals() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(interrupt), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: `interrupt` only stores to an atomic.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("install a {signal} handler"))?;
    }
    Ok(())
}

/// A reader that hashes and counts what passes through it.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R, bar: Option<indicatif::ProgressBar>) -> Self {
        Hashing { inner, hasher: Sha256::new(), count: 0, bar }
    }

    pub fn digest(&self) -> String {
        format!("sha256:{:x}", self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if interrupted().is_some() {
            return Err(std::io::Error::other("interrupted by a signal"));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}

/// What the user sees: a bar per layer on a terminal, a line per layer otherwise, nothing with -q.
struct Progress {
    quiet: bool,
    bars: Option<indicatif::MultiProgress>,
}

impl Progress {
    fn new(quiet: bool, reference: &Reference) -> Progress {
        if !quiet {
            eprintln!("{}: Pulling from {}", reference.tag_or_digest(), reference.repository);
        }
        let terminal = !quiet && std::io::stderr().is_terminal();
        Progress { quiet, bars: terminal.then(indicatif::MultiProgress::new) }
    }

    fn line(&self, digest: &str, what: &str) {
        if !self.quiet {
            eprintln!("{}: {what}", short(digest));
        }
    }

    fn bar(&self, digest: &str, size: u64) -> Option<indicatif::ProgressBar> {
        let style = indicatif::ProgressStyle::with_template(
            "{prefix}: {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("a valid template");
        let bar = indicatif::ProgressBar::new(size).with_style(style).with_prefix(short(digest).to_string());
        self.bars.as_ref().map(|bars| bars.add(bar))
    }

    fn done(&self, digest: &str, bar: Option<indicatif::ProgressBar>, size: u64, started: Instant) {
        match bar {
            Some(bar) => bar.finish(),
            None => {
                let seconds = started.elapsed().as_secs_f64().max(0.001);
                let rate = human_size((size as f64 / seconds) as u64);
                self.line(digest, &format!("Pull complete ({}, {rate}/s)", human_size(size)));
            }
        }
    }
}

/// The 12 hex digits Docker shows for a digest.
fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Sizes as Docker prints them: 1000-based, like `4.2MB`.
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        // Three significant digits, no trailing zeros.
        let digits = if value >= 100.0 {
            0
        } else if value >= 10.0 {
            1
        } else {
            2
        };
        let text = format!("{value:.digits$}");
        let text = if digits > 0 { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
        format!("{text}{}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_dockers() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(4_200_000), "4.2MB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(123_456_789), "123MB");
    }

    #[test]
    fn layer_types() {
        assert!(matches!(compression("application/vnd.oci.image.layer.v1.tar+gzip"), Ok(Compression::Gzip)));
        assert!(matches!(compression("application/vnd.oci.image.layer.v1.tar"), Ok(Compression::None)));
        let zstd = compression("application/vnd.oci.image.layer.v1.tar+zstd").unwrap_err().to_string();
        assert!(zstd.contains("zstd"));
        assert!(compression("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip").is_err());
    }
}
