//! Exercise 10: check what you pull. The step's own integrity checks are the
//! holes: `fetch_layer` streams a layer blob through gunzip into the tar
//! extractor, and must then read it to its end and refuse it unless its size
//! and digest are the descriptor's; `manifest_for_us` must pick linux on this
//! CPU from an index (a variant tolerated), or refuse naming what it offers.
//!
//! Every check starts its own registry (`crate::registry`) with the test images
//! (`crate::images`), and opens with a pull that must work. What a check needs
//! beyond them (a blob with bytes after its gzip stream, a manifest that lies
//! about a size, indexes in other orders) it plants in the registry's storage,
//! under its true digest, and pulls by that digest. A blob it spoils is put
//! back before the check ends.

use super::{Exercise, Graded};
use crate::images::{self, Platform, TestImages};
use crate::registry::Fixture;
use crate::{Ctx, Outcome, Run};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

const N: u8 = 10;

pub fn exercise() -> Exercise {
    Exercise {
        number: N,
        name: "10-registry",
        title: "check what you pull (blob size and digest, the platform from an index)",
        checks: vec![
            Graded::new(N, "integrity::a_good_pull_works_and_runs", 2, a_good_pull_works),
            Graded::new(N, "integrity::a_changed_blob_is_refused_and_leaves_nothing", 2, a_changed_blob),
            Graded::new(N, "integrity::the_digest_is_of_every_byte_of_the_blob", 1, every_byte),
            Graded::new(N, "integrity::a_blob_of_the_wrong_size_is_refused", 2, the_wrong_size),
            Graded::new(N, "integrity::an_index_gives_this_machines_image", 2, this_machines_image),
            Graded::new(N, "errors::integrity::no_image_for_this_machine_is_refused", 1, no_platform_match),
        ],
        // Every pull of a layer goes through fetch_layer, and every index through
        // manifest_for_us: the step's checks that pull fail until both are written.
        needs_the_holes: &[
            "registry::pulls_and_runs_by_tag_and_by_digest",
            "registry::run_pulls_a_missing_image",
            "registry::a_shared_base_layer_is_stored_once",
            "registry::the_image_config_takes_effect",
            "registry::two_pulls_at_once_unpack_the_layer_once",
            "registry::basic_auth_needs_the_password",
            "registry::token_auth_gives_what_the_token_allows",
            "registry::online::pulls_alpine_from_docker_hub",
            "errors::registry::tampered_blobs_are_refused_and_leave_nothing",
            "errors::registry::bad_layers_and_manifests_are_refused",
            "errors::registry::a_lost_registry_fails_the_pull_cleanly",
            "errors::registry::no_platform_match_is_refused",
            "errors::registry::malformed_references_are_125_in_one_line",
        ],
    }
}

/// A pull of the test images takes well under a second; a hang is a failure.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the exercise's checks add to the step checks' registry fixture: blobs
/// and manifests planted straight into its storage.
impl Fixture {
    /// Puts `bytes` in the registry's storage as a blob of repository
    /// workshop/NAME (a manifest, or a layer), as a push would; its digest.
    fn plant(&self, name: &str, bytes: &[u8], manifest: bool) -> Result<String> {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        let data = self.registry.blob_file(&digest);
        std::fs::create_dir_all(data.parent().context("a blob's file has a directory")?)?;
        std::fs::write(&data, bytes)?;
        let repo =
            self.registry.storage().join("docker/registry/v2/repositories").join(TestImages::repo(name));
        let kind = if manifest { "_manifests/revisions" } else { "_layers" };
        let link = repo.join(kind).join("sha256").join(&digest["sha256:".len()..]);
        std::fs::create_dir_all(&link)?;
        std::fs::write(link.join("link"), &digest)?;
        Ok(digest)
    }

    /// Plants a manifest for workshop/NAME; its `repo@digest`.
    fn plant_manifest(&self, name: &str, manifest: &Value) -> Result<String> {
        let digest = self.plant(name, manifest.to_string().as_bytes(), true)?;
        Ok(self.by_digest(name, &digest))
    }
}

/// A blob's file in the registry, spoiled for a while: put back on drop.
struct Spoiled {
    file: PathBuf,
    original: Vec<u8>,
}

impl Spoiled {
    fn new(file: &Path, spoil: impl FnOnce(&mut Vec<u8>)) -> Result<Spoiled> {
        let original =
            std::fs::read(file).with_context(|| format!("the registry's blob {}", file.display()))?;
        let mut spoiled = original.clone();
        spoil(&mut spoiled);
        std::fs::write(file, &spoiled)?;
        Ok(Spoiled { file: file.to_path_buf(), original })
    }
}

impl Drop for Spoiled {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.file, &self.original);
    }
}

/// `BIN pull -q REF`: no progress, so a refusal's one line is its error.
fn pull(ctx: &Ctx, reference: &str) -> Run {
    Run::raw(&ctx.step.bin).args(["pull", "-q", reference]).timeout(PULL_TIMEOUT)
}

/// The images a check pulled: `image rm` of each on drop, whatever happened,
/// and `cleanup` (a pull that panicked leaves its half-unpacked layer in tmp/).
struct Pulled<'a> {
    ctx: &'a Ctx,
    references: Vec<String>,
}

impl<'a> Pulled<'a> {
    fn new(ctx: &'a Ctx) -> Pulled<'a> {
        Pulled { ctx, references: vec![] }
    }

    /// `pull REF`, which must work (`what` says what it pulls), then
    /// `cat /etc/workshop-release` in a container on it, which must say
    /// "workshop rootfs" (the test images' base layer).
    fn pull_and_run(&mut self, reference: &str, what: &str) -> Result<()> {
        self.references.push(reference.to_string());
        let outcome = pull(self.ctx, reference).output()?;
        if outcome.status != 0 {
            bail!("{what} should be pulled, but: {}\n{}", first_line(&outcome), outcome.transcript());
        }
        let run = self.ctx.bare().args(["--image", reference, "--net", "none"]).timeout(PULL_TIMEOUT);
        let outcome = run.cmd(["cat", "/etc/workshop-release"]).output()?;
        if outcome.status != 0 || outcome.stdout != "workshop rootfs\n" {
            bail!(
                "{what} was pulled, but a container on it does not run the test image (cat \
                 /etc/workshop-release: {:?})\n{}",
                outcome.stdout,
                outcome.transcript()
            );
        }
        Ok(())
    }

    /// `image rm` of all, which must work.
    fn remove_all(&mut self) -> Result<()> {
        for reference in std::mem::take(&mut self.references) {
            Run::raw(&self.ctx.step.bin).args(["image", "rm", &reference]).output()?.expect_status(0)?;
        }
        Ok(())
    }
}

impl Drop for Pulled<'_> {
    fn drop(&mut self) {
        for reference in &self.references {
            let _ = Run::raw(&self.ctx.step.bin).args(["image", "rm", reference]).output();
        }
        let _ = Run::raw(&self.ctx.step.bin).arg("cleanup").output();
    }
}

fn first_line(outcome: &Outcome) -> String {
    let line = outcome.stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    format!("exit status {}, {line}", outcome.status)
}

/// What the store holds: every path below /var/lib/workshop/store, but its lock files.
fn store_contents() -> BTreeSet<PathBuf> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![PathBuf::from(crate::paths::STORE)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "lock") || path.file_name().is_some_and(|n| n == "lock")
            {
                continue;
            }
            // A layer's files are the layer: its directory is enough.
            let is_layer = dir.ends_with("layers");
            if entry.file_type().is_ok_and(|t| t.is_dir()) && !is_layer {
                stack.push(path.clone());
            }
            seen.insert(path);
        }
    }
    seen
}

/// Fails unless the store holds nothing it did not hold `before`.
fn expect_nothing_new(before: &BTreeSet<PathBuf>, after_what: &str) -> Result<()> {
    let added: Vec<_> = store_contents().difference(before).cloned().collect();
    ensure!(added.is_empty(), "after {after_what}, the store holds what it did not before: {added:?}");
    Ok(())
}

/// A pull that must be refused: 125, one line with each of `words`, nothing
/// new in the store. `what` says what it pulls, `why` what the refusal is for.
fn expect_refused(ctx: &Ctx, reference: &str, words: &[&str], what: &str, why: &str) -> Result<()> {
    let before = store_contents();
    let outcome = pull(ctx, reference).output()?;
    let _ = Run::raw(&ctx.step.bin).args(["image", "rm", reference]).output();
    match outcome.status {
        0 => bail!("{what} was pulled: it must be refused ({why})\n{}", outcome.transcript()),
        125 => {}
        _ => bail!(
            "{what} must be refused with status 125 ({why}), but: {}\n{}",
            first_line(&outcome),
            outcome.transcript()
        ),
    }
    outcome
        .expect_one_error_line(words)
        .with_context(|| format!("{what} must be refused in one line that names {words:?}"))?;
    expect_nothing_new(&before, &format!("the refused pull of {what}"))
}

/// The 12 hex digits Docker shows for a digest.
fn short(digest: &str) -> &str {
    &digest["sha256:".len()..][..12]
}

/// Pulls example by tag and removes it: the control of every check.
fn control(ctx: &Ctx, fixture: &Fixture) -> Result<BTreeSet<PathBuf>> {
    let before = store_contents();
    let mut pulled = Pulled::new(ctx);
    pulled.pull_and_run(&fixture.tag(images::EXAMPLE), "control: the test image example, intact,")?;
    pulled.remove_all()?;
    expect_nothing_new(&before, "the control pull and its `image rm`")?;
    Ok(before)
}

fn a_good_pull_works(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE])?;
    let before = store_contents();
    let mut pulled = Pulled::new(ctx);
    let tag = fixture.tag(images::EXAMPLE);
    pulled.pull_and_run(&tag, &format!("{tag} (intact)"))?;
    let by_digest = fixture.by_digest(images::EXAMPLE, fixture.images.example.digest());
    pulled.pull_and_run(&by_digest, &format!("{by_digest} (intact)"))?;
    pulled.remove_all()?;
    expect_nothing_new(&before, "`image rm` of what it pulled")
}

fn a_changed_blob(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE])?;
    control(ctx, &fixture)?;
    let layer = &fixture.images.base().digest;
    let file = fixture.registry.blob_file(layer);
    let tag = fixture.tag(images::EXAMPLE);
    // Byte 4 of a gzip stream is its MTIME: gunzip does not care, and the tar
    // inside, so its diff_id, is the same. Only the blob's digest tells.
    let spoiled = Spoiled::new(&file, |b| b[4] ^= 0x5a)?;
    expect_refused(
        ctx,
        &tag,
        &[short(layer)],
        "a layer blob with one byte of its gzip header changed (it unpacks to the same tar)",
        "its digest is not the manifest's: compare the digest of what you read with the descriptor's",
    )?;
    drop(spoiled);
    let spoiled = Spoiled::new(&file, |b| {
        let middle = b.len() / 2;
        b[middle] ^= 0x55;
    })?;
    expect_refused(ctx, &tag, &[short(layer)], "a layer blob with one byte changed", "its digest")?;
    drop(spoiled);
    Ok(())
}

/// Example's manifest with its one layer's descriptor replaced by `layer`.
fn example_with_layer(fixture: &Fixture, layer: Value) -> Result<Value> {
    let bytes = std::fs::read(fixture.images.blob_file(fixture.images.example.digest()))?;
    let mut manifest: Value = serde_json::from_slice(&bytes)?;
    manifest["layers"] = json!([layer]);
    Ok(manifest)
}

fn every_byte(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE])?;
    let before = control(ctx, &fixture)?;
    // The base layer with 64 KiB after its gzip stream, counted by its digest
    // and size: a good blob, which gunzip stops reading before its end.
    let mut blob = std::fs::read(fixture.images.blob_file(&fixture.images.base().digest))?;
    blob.extend(vec![0u8; 64 << 10]);
    let digest = fixture.plant(images::EXAMPLE, &blob, false)?;
    let layer = json!({ "mediaType": images::OCI_LAYER_GZIP, "digest": digest, "size": blob.len() });
    let reference = fixture.plant_manifest(images::EXAMPLE, &example_with_layer(&fixture, layer)?)?;
    let mut pulled = Pulled::new(ctx);
    pulled
        .pull_and_run(
            &reference,
            "an image whose layer blob has 64 KiB after its gzip stream (counted in its digest and size)",
        )
        .context(
            "the digest is of every byte of the blob, not of what gunzip read: read it to its end, then compare",
        )?;
    pulled.remove_all()?;
    expect_nothing_new(&before, "`image rm` of it")
}

fn the_wrong_size(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE])?;
    control(ctx, &fixture)?;
    let base = fixture.images.base();
    let file = fixture.registry.blob_file(&base.digest);
    let tag = fixture.tag(images::EXAMPLE);
    let spoiled = Spoiled::new(&file, |b| b.truncate(b.len() / 2))?;
    expect_refused(ctx, &tag, &[short(&base.digest)], "a layer blob cut to half its size", "too short")?;
    drop(spoiled);
    let spoiled = Spoiled::new(&file, |b| b.extend([0u8; 1000]))?;
    expect_refused(
        ctx,
        &tag,
        &[short(&base.digest)],
        "a layer blob with 1000 bytes added after its gzip stream (it unpacks to the same tar)",
        "it is longer than the manifest says: read it to its end, and count",
    )?;
    drop(spoiled);
    // The blob is intact and its digest right; the manifest says it is longer.
    let claimed = base.size + 1000;
    let layer = json!({ "mediaType": images::OCI_LAYER_GZIP, "digest": base.digest, "size": claimed });
    let reference = fixture.plant_manifest(images::EXAMPLE, &example_with_layer(&fixture, layer)?)?;
    expect_refused(
        ctx,
        &reference,
        &[short(&base.digest)],
        &format!(
            "a manifest that claims {claimed} bytes for a layer blob of {} (its digest right)",
            base.size
        ),
        "the blob has fewer bytes than the manifest says: compare the size too, not only the digest",
    )
}

/// The entries of the multi-platform test index: (this machine's, another CPU's).
fn index_entries(fixture: &Fixture) -> Result<(Value, Value)> {
    let bytes = std::fs::read(fixture.images.blob_file(&fixture.images.multi_platform))?;
    let index: Value = serde_json::from_slice(&bytes)?;
    let entries = index["manifests"].as_array().context("the multi-platform index lists no manifests")?;
    let ours = entries.iter().find(|e| e["digest"] == fixture.images.example.digest());
    let other = Platform::others()[0].architecture;
    let theirs = entries.iter().find(|e| e["platform"]["architecture"] == other);
    match (ours, theirs) {
        (Some(ours), Some(theirs)) => Ok((ours.clone(), theirs.clone())),
        _ => bail!("the multi-platform test index lacks this machine's or {other}'s entry: {index}"),
    }
}

/// An index of `entries`, planted in workshop/multi-platform; its `repo@digest`.
fn plant_index(fixture: &Fixture, entries: &[Value]) -> Result<String> {
    let index = json!({ "schemaVersion": 2, "mediaType": images::OCI_INDEX, "manifests": entries });
    fixture.plant_manifest(images::MULTI_PLATFORM, &index)
}

/// `entry` with its platform set to `platform` (os, architecture, variant).
fn on(entry: &Value, os: &str, architecture: &str, variant: Option<&str>) -> Value {
    let mut entry = entry.clone();
    entry["platform"] = json!({ "os": os, "architecture": architecture });
    if let Some(variant) = variant {
        entry["platform"]["variant"] = variant.into();
    }
    entry
}

fn this_machines_image(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE, images::MULTI_PLATFORM])?;
    let before = store_contents();
    let (host, other) = (Platform::host(), Platform::others()[0]);
    let mut pulled = Pulled::new(ctx);
    let tag = fixture.tag(images::MULTI_PLATFORM);
    pulled.pull_and_run(&tag, &format!("the test index multi-platform ({} first)", host.name()))?;
    let (ours, theirs) = index_entries(&fixture)?;
    let arch = host.architecture;
    let cases = [
        (
            vec![theirs.clone(), ours.clone()],
            format!(
                "an index whose first entry is for another CPU ({}), its second {}",
                other.name(),
                host.name()
            ),
        ),
        (
            vec![on(&theirs, "windows", arch, host.variant), ours.clone()],
            format!(
                "an index whose first entry is for another OS (windows/{arch}, an image that is not \
                 linux's), its second {}",
                host.name()
            ),
        ),
        (
            vec![theirs.clone(), on(&ours, "linux", arch, Some("v9"))],
            format!("an index that offers this CPU only with a variant (linux/{arch}/v9)"),
        ),
    ];
    for (entries, what) in cases {
        let reference = plant_index(&fixture, &entries)?;
        pulled
            .pull_and_run(&reference, &what)
            .with_context(|| format!("from an index, pull the entry for {} (any variant)", host.name()))?;
    }
    pulled.remove_all()?;
    expect_nothing_new(&before, "`image rm` of what it pulled")
}

fn no_platform_match(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE, images::MULTI_PLATFORM, images::OTHER_PLATFORM_ONLY])?;
    let before = store_contents();
    let mut pulled = Pulled::new(ctx);
    pulled.pull_and_run(&fixture.tag(images::MULTI_PLATFORM), "control: the test index multi-platform")?;
    pulled.remove_all()?;
    expect_nothing_new(&before, "the control pull and its `image rm`")?;
    let (host, [first, second]) = (Platform::host(), Platform::others());
    let why = "no entry is for this machine: refuse, and say what the index offers";
    let only = fixture.tag(images::OTHER_PLATFORM_ONLY);
    let what = format!("an index with only {} on {}", first.name(), host.name());
    expect_refused(ctx, &only, &[&host.name(), &first.name()], &what, why)?;
    let (ours, theirs) = index_entries(&fixture)?;
    let entries = [
        theirs,
        on(&ours, "windows", host.architecture, host.variant),
        on(&ours, "linux", second.architecture, second.variant),
    ];
    let reference = plant_index(&fixture, &entries)?;
    let windows = format!("windows/{}", host.architecture);
    let what = format!("an index of {}, {windows} and {} on {}", first.name(), second.name(), host.name());
    expect_refused(ctx, &reference, &[&host.name(), &first.name(), &windows, &second.name()], &what, why)
}
