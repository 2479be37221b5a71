//! The test images of step 10's checks, written as one OCI image layout that
//! `Registry::push` copies into a registry with skopeo:
//!
//! - `example`: the workshop's test rootfs (busybox and the probe) as one gzip layer;
//! - `shares-base`: the same base layer blob and one small layer on top;
//! - `configured`: example's layer, with a config that sets Entrypoint, Cmd, Env,
//!   WorkingDir, User and ExposedPorts;
//! - `multi-platform`: an index of example (this machine's platform) and two images
//!   for other platforms; `other-platform-only`: an index with just one of those.
//!
//! Built once per rootfs content and kept under the target directory
//! (`test-images/KEY`, KEY a hash of the rootfs layer), so a test run reuses them.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Changes when what `build` writes changes (a new image, another config): a new cache key.
const VERSION: &str = "registry-test-images-2";

/// The config of `configured` (what the image config checks expect).
pub const CONFIGURED_ENTRYPOINT: &str = "/bin/probe";
pub const CONFIGURED_CMD: [&str; 2] = ["--read", "/etc/workshop-release"];
pub const CONFIGURED_ENV: [&str; 3] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "GREETING=hello from the image",
    "MODE=image",
];
pub const CONFIGURED_WORKDIR: &str = "/etc";
/// A user of the rootfs' /etc/passwd, by name: the runtime must look it up (65534:65534).
pub const CONFIGURED_USER: &str = "nobody";
pub const CONFIGURED_UID: i64 = 65534;
pub const CONFIGURED_PORT: &str = "8080/tcp";
/// The file that only shares-base's top layer has.
pub const EXTRA_FILE: &str = "/shared/extra.txt";
pub const EXTRA_TEXT: &str = "only in shares-base\n";

/// One layer: its blob (gzip) and its diff_id (the SHA-256 of the tar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

impl Layer {
    /// The diff_id's hex: the name of the layer's directory in step 10's store.
    pub fn hex(&self) -> &str {
        self.diff_id.trim_start_matches("sha256:")
    }
}

/// One image in a layout: its manifest's descriptor, its config's digest, its layers.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Value,
    pub config: String,
    pub layers: Vec<Layer>,
}

impl Image {
    pub fn digest(&self) -> &str {
        self.manifest["digest"].as_str().unwrap_or_default()
    }
}

/// An OS/architecture pair as Go (and OCI) spell it: amd64, arm64, arm + v7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Platform {
    pub architecture: &'static str,
    pub variant: Option<&'static str>,
}

impl Platform {
    /// This machine's (what a runtime here must choose from an index).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform { architecture, variant }
    }

    /// Two platforms that are not this machine's.
    pub fn others() -> [Platform; 2] {
        let candidates = [
            Platform { architecture: "arm64", variant: None },
            Platform { architecture: "arm", variant: Some("v7") },
            Platform { architecture: "amd64", variant: None },
        ];
        let mut others = candidates.into_iter().filter(|p| *p != Platform::host());
        [others.next().unwrap(), others.next().unwrap()]
    }

    fn json(&self) -> Value {
        let mut platform = json!({ "architecture": self.architecture, "os": "linux" });
        if let Some(variant) = self.variant {
            platform["variant"] = variant.into();
        }
        platform
    }

    /// `linux/arm/v7`, as Docker writes it.
    pub fn name(&self) -> String {
        match self.variant {
            Some(variant) => format!("linux/{}/{variant}", self.architecture),
            None => format!("linux/{}", self.architecture),
        }
    }
}

/// Writes an OCI image layout: blobs named by their SHA-256, index.json with one
/// entry per tag (`org.opencontainers.image.ref.name`, what skopeo's `oci:DIR:TAG` finds).
pub struct Layout {
    pub dir: PathBuf,
    tags: Vec<Value>,
}

impl Layout {
    pub fn create(dir: &Path) -> Result<Layout> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#)?;
        Ok(Layout { dir: dir.to_path_buf(), tags: vec![] })
    }

    /// Stores `bytes` as a blob; its descriptor (with `media`).
    pub fn blob(&self, media: &str, bytes: &[u8]) -> Result<Value> {
        let hex = format!("{:x}", Sha256::digest(bytes));
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), bytes)?;
        Ok(json!({ "mediaType": media, "digest": format!("sha256:{hex}"), "size": bytes.len() }))
    }

    /// The file that holds a blob.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }

    /// A layer from an uncompressed tar: gzipped, stored, with its diff_id.
    pub fn layer(&self, tar: &[u8]) -> Result<Layer> {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(tar)?;
        let blob = self.blob(OCI_LAYER_GZIP, &gzip.finish()?)?;
        Ok(Layer {
            digest: blob["digest"].as_str().unwrap_or_default().to_string(),
            diff_id: format!("sha256:{:x}", Sha256::digest(tar)),
            size: blob["size"].as_u64().unwrap_or_default(),
        })
    }

    /// An image: a config (`config` as its "config" object, the diff_ids of `layers`)
    /// and a manifest. `diff_ids` replaces the true ones (for a check that lies).
    pub fn image(&self, layers: &[Layer], platform: Platform, config: Value) -> Result<Image> {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let mut full = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": platform.architecture,
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        if let Some(variant) = platform.variant {
            full["variant"] = variant.into();
        }
        self.image_with_config(layers, &full)
    }

    /// An image whose config is `config`, as it is.
    pub fn image_with_config(&self, layers: &[Layer], config: &Value) -> Result<Image> {
        let config_blob = self.blob(OCI_CONFIG, config.to_string().as_bytes())?;
        let layer_blobs: Vec<Value> = layers
            .iter()
            .map(|l| json!({ "mediaType": OCI_LAYER_GZIP, "digest": l.digest, "size": l.size }))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_blob,
            "layers": layer_blobs,
        });
        Ok(Image {
            manifest: self.blob(OCI_MANIFEST, manifest.to_string().as_bytes())?,
            config: config_blob["digest"].as_str().unwrap_or_default().to_string(),
            layers: layers.to_vec(),
        })
    }

    /// An index of images, each for its platform; its descriptor.
    pub fn index(&self, images: &[(&Image, Platform)]) -> Result<Value> {
        let manifests: Vec<Value> = images
            .iter()
            .map(|(image, platform)| {
                let mut entry = image.manifest.clone();
                entry["platform"] = platform.json();
                entry
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        self.blob(OCI_INDEX, index.to_string().as_bytes())
    }

    /// Names a manifest or index `tag` in index.json (written by `save`).
    pub fn tag(&mut self, tag: &str, descriptor: &Value) {
        let mut entry = descriptor.clone();
        entry["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        self.tags.push(entry);
    }

    pub fn save(&self) -> Result<()> {
        let index = json!({ "schemaVersion": 2, "manifests": self.tags });
        Ok(std::fs::write(self.dir.join("index.json"), index.to_string())?)
    }
}

/// The images every registry check may push, and where they are.
#[derive(Clone, Debug)]
pub struct TestImages {
    pub layout: PathBuf,
    pub example: Image,
    pub shares_base: Image,
    pub configured: Image,
    /// Digest of the index of example and the two other platforms' images.
    pub multi_platform: String,
    /// Digest of the index with only one other platform's image.
    pub other_platform_only: String,
}

/// The tags (in the layout) and repositories (in a registry) of the test images.
pub const EXAMPLE: &str = "example";
pub const SHARES_BASE: &str = "shares-base";
pub const CONFIGURED: &str = "configured";
pub const MULTI_PLATFORM: &str = "multi-platform";
pub const OTHER_PLATFORM_ONLY: &str = "other-platform-only";

/// How each test image goes into a registry (shares-base as a Docker schema 2
/// manifest: both manifest formats get pulled, over the same blobs).
pub const PUSHES: [(&str, crate::registry::Push); 5] = [
    (EXAMPLE, crate::registry::Push::Image),
    (SHARES_BASE, crate::registry::Push::AsDocker),
    (CONFIGURED, crate::registry::Push::Image),
    (MULTI_PLATFORM, crate::registry::Push::Index),
    (OTHER_PLATFORM_ONLY, crate::registry::Push::Index),
];

impl TestImages {
    /// The test images for `rootfs`: built once per process, kept under target/.
    pub fn get(rootfs: &Path) -> Result<&'static TestImages> {
        static BUILT: std::sync::OnceLock<TestImages> = std::sync::OnceLock::new();
        if let Some(images) = BUILT.get() {
            return Ok(images);
        }
        let images = build(rootfs, &crate::registry::target_dir().join("test-images"))?;
        Ok(BUILT.get_or_init(|| images))
    }

    /// `workshop/NAME`: the repository a test image is pushed to.
    pub fn repo(name: &str) -> String {
        format!("workshop/{name}")
    }

    /// Pushes the test image `name` to `registry` as `workshop/NAME:latest`; its manifest digest there.
    pub fn push(&self, registry: &crate::registry::Registry, name: &str) -> Result<String> {
        let (_, how) =
            PUSHES.iter().find(|(n, _)| *n == name).with_context(|| format!("no test image {name}"))?;
        registry.push(&self.layout, name, &format!("{}:latest", TestImages::repo(name)), *how)
    }

    /// Pushes them all.
    pub fn push_all(&self, registry: &crate::registry::Registry) -> Result<()> {
        PUSHES.iter().try_for_each(|(name, _)| self.push(registry, name).map(|_| ()))
    }

    /// The file of a blob in the layout.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        self.layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
    }

    /// The base layer (the rootfs), shared by example, shares-base and configured.
    pub fn base(&self) -> &Layer {
        &self.example.layers[0]
    }

    /// shares-base's own top layer.
    pub fn extra(&self) -> &Layer {
        &self.shares_base.layers[1]
    }
}

/// The rootfs as one uncompressed tar: names relative (`./bin/sh`), symlinks kept,
/// owners and times left out (the same rootfs gives the same bytes).
pub fn rootfs_tar(rootfs: &Path) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_dir_all(".", rootfs).with_context(|| format!("tar {}", rootfs.display()))?;
    Ok(builder.into_inner()?)
}

/// A tar of small files: (path, content), directories made as needed.
pub fn files_tar(files: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for (path, content) in files {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for depth in 1..parts.len() {
            let dir = parts[..depth].join("/") + "/";
            if !dirs.contains(&dir) {
                let mut header = header(0o755, 0);
                header.set_entry_type(tar::EntryType::Directory);
                builder.append_data(&mut header, &dir, std::io::empty())?;
                dirs.push(dir);
            }
        }
        let mut header = header(0o644, content.len() as u64);
        builder.append_data(&mut header, path.trim_start_matches('/'), content.as_bytes())?;
    }
    Ok(builder.into_inner()?)
}

/// A tar header with every numeric field set (root's, time 0): a zeroed field is no number.
fn header(mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// Builds the test images into `cache/KEY` unless they are there.
fn build(rootfs: &Path, cache: &Path) -> Result<TestImages> {
    let base_tar = rootfs_tar(rootfs)?;
    let key = {
        let mut hash = Sha256::new();
        hash.update(VERSION);
        hash.update(&base_tar);
        format!("{:x}", hash.finalize())[..16].to_string()
    };
    let dir = cache.join(&key);
    if let Ok(images) = load(&dir) {
        return Ok(images);
    }
    let partial = cache.join(format!("{key}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    write_images(&partial, &base_tar)
        .with_context(|| format!("write the test images in {}", partial.display()))?;
    give_to_owner_of(cache.parent().unwrap_or(cache), cache)?;
    if std::fs::rename(&partial, &dir).is_err() {
        // Another process was faster: its images are the same.
        let _ = std::fs::remove_dir_all(&partial);
    }
    // Older keys (a rebuilt rootfs) are of no use any more.
    for entry in std::fs::read_dir(cache)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != key && !name.contains(".partial-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    load(&dir)
}

fn write_images(dir: &Path, base_tar: &[u8]) -> Result<()> {
    let mut layout = Layout::create(dir)?;
    let host = Platform::host();
    let path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let base = layout.layer(base_tar)?;
    let example =
        layout.image(std::slice::from_ref(&base), host, json!({ "Env": [path], "Cmd": ["/bin/sh"] }))?;
    let extra_tar = files_tar(&[(EXTRA_FILE, EXTRA_TEXT), ("/etc/shares-base-release", "shares-base\n")])?;
    let extra = layout.layer(&extra_tar)?;
    let shares_base =
        layout.image(&[base.clone(), extra], host, json!({ "Env": [path], "Cmd": ["/bin/sh"] }))?;
    let configured = layout.image(
        &[base],
        host,
        json!({
            "User": CONFIGURED_USER,
            "Env": CONFIGURED_ENV,
            "Entrypoint": [CONFIGURED_ENTRYPOINT],
            "Cmd": CONFIGURED_CMD,
            "WorkingDir": CONFIGURED_WORKDIR,
            "ExposedPorts": { CONFIGURED_PORT: {} },
            "Labels": { "org.opencontainers.image.title": "workshop test image: configured" },
        }),
    )?;
    let [first, second] = Platform::others();
    let foreign = |platform: Platform| -> Result<Image> {
        let tar = files_tar(&[("/etc/platform", &format!("{}\n", platform.name()))])?;
        let layer = layout.layer(&tar)?;
        layout.image(&[layer], platform, json!({ "Cmd": ["/bin/sh"] }))
    };
    let (first_image, second_image) = (foreign(first)?, foreign(second)?);
    let multi = layout.index(&[(&example, host), (&first_image, first), (&second_image, second)])?;
    let other_only = layout.index(&[(&first_image, first)])?;
    for (tag, descriptor) in [
        (EXAMPLE, &example.manifest),
        (SHARES_BASE, &shares_base.manifest),
        (CONFIGURED, &configured.manifest),
        (MULTI_PLATFORM, &multi),
        (OTHER_PLATFORM_ONLY, &other_only),
    ] {
        layout.tag(tag, descriptor);
    }
    layout.save()?;
    let images = TestImages {
        layout: PathBuf::new(),
        example,
        shares_base,
        configured,
        multi_platform: multi["digest"].as_str().unwrap_or_default().into(),
        other_platform_only: other_only["digest"].as_str().unwrap_or_default().into(),
    };
    // Last: its presence says the layout is complete.
    std::fs::write(dir.join("test-images.json"), to_json(&images).to_string())?;
    Ok(())
}

fn to_json(images: &TestImages) -> Value {
    let image = |image: &Image| {
        let layers: Vec<Value> = image
            .layers
            .iter()
            .map(|l| json!({ "digest": l.digest, "diff_id": l.diff_id, "size": l.size }))
            .collect();
        json!({ "manifest": image.manifest, "config": image.config, "layers": layers })
    };
    json!({
        "example": image(&images.example),
        "shares_base": image(&images.shares_base),
        "configured": image(&images.configured),
        "multi_platform": images.multi_platform,
        "other_platform_only": images.other_platform_only,
    })
}

fn load(dir: &Path) -> Result<TestImages> {
    let text = std::fs::read_to_string(dir.join("test-images.json"))?;
    let json: Value = serde_json::from_str(&text)?;
    let text = |v: &Value| v.as_str().map(str::to_string).context("test-images.json: not a string");
    let image = |v: &Value| -> Result<Image> {
        let layers = v["layers"].as_array().context("test-images.json: no layers")?;
        Ok(Image {
            manifest: v["manifest"].clone(),
            config: text(&v["config"])?,
            layers: layers
                .iter()
                .map(|l| {
                    Ok(Layer {
                        digest: text(&l["digest"])?,
                        diff_id: text(&l["diff_id"])?,
                        size: l["size"].as_u64().context("test-images.json: no size")?,
                    })
                })
                .collect::<Result<_>>()?,
        })
    };
    let images = TestImages {
        layout: dir.to_path_buf(),
        example: image(&json["example"])?,
        shares_base: image(&json["shares_base"])?,
        configured: image(&json["configured"])?,
        multi_platform: text(&json["multi_platform"])?,
        other_platform_only: text(&json["other_platform_only"])?,
    };
    if !images.layout.join("index.json").is_file() {
        bail!("{}: no index.json", dir.display());
    }
    Ok(images)
}

/// The harness runs as root; the target directory is the user's: what we write
/// there is theirs too (`cargo clean` must be able to remove it).
fn give_to_owner_of(owner: &Path, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let meta = std::fs::metadata(owner)?;
    let (uid, gid) = (meta.uid(), meta.gid());
    let mut stack = vec![path.to_path_buf()];
    while let Some(at) = stack.pop() {
        std::os::unix::fs::lchown(&at, Some(uid), Some(gid))?;
        if at.symlink_metadata()?.is_dir() {
            stack.extend(std::fs::read_dir(&at)?.flatten().map(|e| e.path()));
        }
    }
    Ok(())
}
