//! Step 10: pulling images from a registry into a content-addressed store.
//!
//! Every check starts its own registry (Debian's docker-registry, see
//! `crate::registry`) in the test sandbox, pushes the test images it needs with
//! skopeo (`crate::images`), and removes what it pulled. Every refusal is exit
//! 125 with one line on stderr and nothing new in the store; every check opens
//! with the positive case, so a refusal is never a runtime that cannot pull at all.

use super::overlay::{write_tar, Entry};
use super::store::{self, Contents};
use super::TempPath;
use crate::images::{self, Layout, Platform};
use crate::registry::{Auth, Fixture, Options, Push, MIRROR_VAR};
use crate::{Check, Ctx, Outcome, Probe, Run, Skipped};
use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const STEP: u8 = 10;
/// A pull of the test images takes well under a second; a hang is a failure.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);
/// A refusal that needs no download comes back at once.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(15);

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(
            STEP,
            "registry::pulls_and_runs_by_tag_and_by_digest",
            pulls_and_runs_by_tag_and_by_digest,
        ),
        Check::new(STEP, "registry::run_pulls_a_missing_image", run_pulls_a_missing_image).plain_only(),
        Check::new(STEP, "registry::a_shared_base_layer_is_stored_once", a_shared_layer_is_stored_once)
            .plain_only(),
        Check::new(STEP, "registry::the_image_config_takes_effect", the_image_config_takes_effect),
        Check::new(STEP, "registry::two_pulls_at_once_unpack_the_layer_once", two_pulls_at_once).plain_only(),
        Check::new(STEP, "registry::basic_auth_needs_the_password", basic_auth_needs_the_password)
            .plain_only(),
        Check::new(STEP, "registry::token_auth_gives_what_the_token_allows", token_auth).plain_only(),
        Check::new(STEP, "errors::registry::tampered_blobs_are_refused_and_leave_nothing", tampered_blobs)
            .plain_only(),
        Check::new(STEP, "errors::registry::bad_layers_and_manifests_are_refused", bad_layers_and_manifests)
            .plain_only()
            .escape(),
        Check::new(STEP, "errors::registry::a_lost_registry_fails_the_pull_cleanly", a_lost_registry)
            .plain_only(),
        Check::new(STEP, "errors::registry::no_platform_match_is_refused", no_platform_match).plain_only(),
        Check::new(STEP, "errors::registry::malformed_references_are_125_in_one_line", malformed_references)
            .plain_only(),
        Check::new(STEP, "registry::online::pulls_alpine_from_docker_hub", pulls_alpine_from_docker_hub)
            .plain_only(),
    ]
}

/// `BIN pull REF`.
fn pull(ctx: &Ctx, reference: &str) -> Run {
    Run::raw(&ctx.step.bin).args(["pull", reference]).timeout(PULL_TIMEOUT)
}

/// `BIN pull -q REF` for a pull that must fail: no progress, so its one line is the error.
fn pull_quietly(ctx: &Ctx, reference: &str) -> Run {
    Run::raw(&ctx.step.bin).args(["pull", "-q", reference]).timeout(PULL_TIMEOUT)
}

/// `BIN run --rm --image REF --net none` with the variant's flags (COMMAND optional).
fn on_image(ctx: &Ctx, reference: &str) -> Run {
    let run = ctx.bare().args(["--image", reference, "--net", "none"]).timeout(PULL_TIMEOUT);
    if ctx.userns {
        run.arg("--userns")
    } else {
        run
    }
}

fn probe_on(ctx: &Ctx, reference: &str, actions: &[&str]) -> Result<Probe> {
    let outcome = on_image(ctx, reference).cmd(["/bin/probe"]).args(actions).output()?;
    Probe::parse(outcome.expect_status(0)?)
}

/// What `cat FILE` prints in a container on `reference`.
fn cat(ctx: &Ctx, reference: &str, file: &str) -> Result<String> {
    Ok(on_image(ctx, reference).cmd(["cat", file]).output()?.expect_status(0)?.stdout.clone())
}

/// The images a check pulled: `image rm` of each on drop, whatever happened.
struct Pulled<'a> {
    ctx: &'a Ctx,
    references: Vec<String>,
}

impl<'a> Pulled<'a> {
    fn new(ctx: &'a Ctx) -> Pulled<'a> {
        Pulled { ctx, references: vec![] }
    }

    /// Notes `reference` for removal; the run (a pull, a run --image) is the caller's.
    fn note(&mut self, reference: &str) {
        self.references.push(reference.to_string());
    }

    /// `pull REF`, which must work and print the canonical reference last.
    fn pull(&mut self, reference: &str) -> Result<Outcome> {
        self.note(reference);
        let outcome = pull(self.ctx, reference).output()?;
        outcome.expect_status(0)?;
        let last = outcome.stdout.lines().last().unwrap_or_default();
        ensure!(
            last == reference,
            "`{}`: the last line on stdout is {last:?}, not the canonical reference {reference:?}",
            outcome.command
        );
        Ok(outcome)
    }

    /// `image rm` of one of them, which must work.
    fn remove(&mut self, reference: &str) -> Result<()> {
        self.references.retain(|r| r != reference);
        let outcome = Run::raw(&self.ctx.step.bin).args(["image", "rm", reference]).output()?;
        outcome.expect_status(0).map(|_| ())
    }

    /// `image rm` of all, which must work.
    fn remove_all(&mut self) -> Result<()> {
        for reference in self.references.clone() {
            self.remove(&reference)?;
        }
        Ok(())
    }
}

impl Drop for Pulled<'_> {
    fn drop(&mut self) {
        for reference in &self.references {
            let _ = Run::raw(&self.ctx.step.bin).args(["image", "rm", reference]).output();
        }
    }
}

/// Fails unless the store holds nothing that it did not hold `before` (a sweep
/// may also have removed what no image used, a failed run's leftovers).
fn expect_store_as(ctx: &Ctx, before: &Contents, after_what: &str) -> Result<()> {
    let added = store::contents(ctx).added_since(before);
    ensure!(added.is_empty(), "after {after_what}, the store still holds {added:?}");
    Ok(())
}

/// A refused pull (or run): 125, one line that says each of `words`, nothing new in the store.
fn expect_refused(ctx: &Ctx, run: Run, words: &[&str], what: &str) -> Result<()> {
    crate::figures::add(crate::figures::INPUTS, 1);
    let before = store::contents(ctx);
    let outcome = run.output()?;
    outcome.expect_status(125).with_context(|| format!("{what} must be refused"))?;
    outcome.expect_one_error_line(words).with_context(|| what.to_string())?;
    store::expect_nothing_new(ctx, &before, what)
}

fn pulls_and_runs_by_tag_and_by_digest(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE, images::MULTI_PLATFORM])?;
    let before = store::contents(ctx);
    let mut pulled = Pulled::new(ctx);
    let tag = fixture.tag(images::EXAMPLE);
    pulled.pull(&tag)?;
    ensure!(store::has_image(ctx, &tag), "after `pull {tag}`, the store has no tag for it");
    let seen = probe_on(ctx, &tag, &["--read", "/etc/workshop-release", "--stat", "/bin/busybox"])?;
    ensure!(
        seen.action(0)?.expect_ok()? == "workshop rootfs\n",
        "the image's /etc/workshop-release is wrong"
    );
    seen.action(1)?.expect_ok().context("the image's /bin/busybox")?;
    let listed = Run::raw(&ctx.step.bin).args(["image", "ls"]).output()?;
    let line = listed.expect_status(0)?.stdout.lines().find(|l| l.split('\t').next() == Some(&tag));
    let line = line.with_context(|| format!("`image ls` does not list {tag}\n{}", listed.transcript()))?;
    let id = &fixture.images.example.config["sha256:".len()..][..12];
    ensure!(
        line.contains(id) && line.contains("1 layers"),
        "`image ls` lists {line:?}: expected id {id}, 1 layers"
    );

    let digest = fixture.images.example.digest();
    let by_digest = fixture.by_digest(images::EXAMPLE, digest);
    pulled.pull(&by_digest)?;
    let text = cat(ctx, &by_digest, "/etc/workshop-release")?;
    ensure!(text == "workshop rootfs\n", "by digest, /etc/workshop-release is {text:?}");
    let inspected = store::inspect(ctx, &by_digest)?;
    let digests = inspected["RepoDigests"].to_string();
    ensure!(digests.contains(digest), "`image inspect {by_digest}`: RepoDigests {digests} lack {digest}");

    // An index: this machine's entry is example's manifest, layers already here.
    let layers = store::contents(ctx).layers();
    let multi = fixture.tag(images::MULTI_PLATFORM);
    pulled.pull(&multi)?;
    let id = store::inspect(ctx, &multi)?["Id"].as_str().map(str::to_string);
    ensure!(
        id.as_deref() == Some(&fixture.images.example.config),
        "`{multi}` on {}: image {id:?}, expected example's {}",
        Platform::host().name(),
        fixture.images.example.config
    );
    ensure!(store::contents(ctx).layers() == layers, "pulling an index of example unpacked a layer again");
    ensure!(
        cat(ctx, &multi, "/etc/workshop-release")? == "workshop rootfs\n",
        "the index's image runs wrong"
    );
    pulled.remove_all()?;
    expect_store_as(ctx, &before, "`image rm` of every image it pulled")
}

fn run_pulls_a_missing_image(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE])?;
    let before = store::contents(ctx);
    let mut pulled = Pulled::new(ctx);
    let tag = fixture.tag(images::EXAMPLE);
    ensure!(!store::has_image(ctx, &tag), "{tag} is in the store before the check pulled it");
    pulled.note(&tag);
    let outcome = on_image(ctx, &tag).cmd(["cat", "/etc/workshop-release"]).output()?;
    ensure!(outcome.expect_status(0)?.stdout == "workshop rootfs\n", "{}", outcome.transcript());
    ensure!(store::has_image(ctx, &tag), "`run --image {tag}` ran it, but left no tag in the store");
    // The second run finds it: no pull, not even a registry (stopped below).
    let mut fixture = fixture;
    fixture.registry.stop_process();
    let again = on_image(ctx, &tag).cmd(["cat", "/etc/workshop-release"]).output()?;
    again.expect_status(0).context("a local image must run without its registry")?;

    // A docker.io reference comes from the mirror: `workshop/example` is docker.io/workshop/example.
    let mirror = Fixture::new(ctx, &[images::EXAMPLE])?;
    let short = "workshop/example";
    pulled.note(short);
    let outcome =
        on_image(ctx, short).env(MIRROR_VAR, mirror.registry.url()).cmd(["cat", "/etc/workshop-release"]);
    let outcome = outcome.output()?;
    ensure!(outcome.expect_status(0)?.stdout == "workshop rootfs\n", "{}", outcome.transcript());
    ensure!(store::has_image(ctx, short), "`run --image {short}` left no docker.io/{short}:latest tag");
    pulled.remove_all()?;
    expect_store_as(ctx, &before, "`image rm` of both")?;

    // A tag the registry does not have: refused, nothing pulled.
    let missing = format!("{}/workshop/no-such-image:latest", mirror.registry.host());
    let run = on_image(ctx, &missing).cmd(["true"]);
    expect_run_refused(ctx, run, &[&missing], "`run --image` of a tag the registry lacks")
}

/// A refused `run --image` that tried to pull: 125, and its last line on stderr the
/// one error, with each of `words` (before it, as Docker does, may come its
/// progress: "Unable to find image 'REF' locally"); nothing new in the store.
fn expect_run_refused(ctx: &Ctx, run: Run, words: &[&str], what: &str) -> Result<()> {
    crate::figures::add(crate::figures::INPUTS, 1);
    let before = store::contents(ctx);
    let outcome = run.output()?;
    outcome.expect_status(125).with_context(|| format!("{what} must be refused"))?;
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    let errors = lines.iter().filter(|l| l.contains("error")).count();
    let last = lines.last().copied().unwrap_or_default();
    if errors != 1 || !last.contains("error") || !words.iter().all(|w| last.contains(w)) {
        bail!("{what}: expected one error line, last on stderr, with {words:?}\n{}", outcome.transcript());
    }
    store::expect_nothing_new(ctx, &before, what)
}

fn a_shared_layer_is_stored_once(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE, images::SHARES_BASE])?;
    let (base, extra) = (fixture.images.base(), fixture.images.extra());
    let layer_dir = |hex: &str| Path::new(crate::paths::STORE).join("layers").join(hex);
    let before = store::contents(ctx);
    let new_layers = |since: &Contents| -> Vec<String> {
        let mut layers = store::contents(ctx).layers();
        layers.retain(|l| !since.layers().contains(l));
        layers
    };
    let expected = |hexes: &[&str], since: &Contents| -> Vec<String> {
        let dirs = hexes.iter().map(|h| layer_dir(h).to_string_lossy().into_owned());
        dirs.filter(|d| !since.layers().contains(d)).collect()
    };
    let mut pulled = Pulled::new(ctx);
    let (example, shares) = (fixture.tag(images::EXAMPLE), fixture.tag(images::SHARES_BASE));
    pulled.pull(&example)?;
    ensure!(
        new_layers(&before) == expected(&[base.hex()], &before),
        "pulling example added the layers {:?}, expected {:?} (its one layer, by diff_id)",
        new_layers(&before),
        expected(&[base.hex()], &before)
    );
    let after_example = store::contents(ctx);
    let bytes = du(&layer_dir(base.hex()));
    pulled.pull(&shares)?;
    ensure!(
        new_layers(&after_example) == expected(&[extra.hex()], &after_example),
        "pulling shares-base added {:?}: expected only its top layer {} (the base is there)",
        new_layers(&after_example),
        extra.hex()
    );
    ensure!(du(&layer_dir(base.hex())) == bytes, "pulling shares-base changed the shared layer's files");
    ensure!(cat(ctx, &shares, images::EXTRA_FILE)? == images::EXTRA_TEXT, "shares-base lacks its top layer");
    let listed = Run::raw(&ctx.step.bin).args(["image", "ls"]).output()?;
    for reference in [&example, &shares] {
        let line = listed.stdout.lines().find(|l| l.split('\t').next() == Some(reference.as_str()));
        let line = line.with_context(|| format!("`image ls` lacks {reference}\n{}", listed.transcript()))?;
        ensure!(
            line.trim_end().ends_with("shared"),
            "`image ls`: {line:?} should say its base layer is shared"
        );
    }

    // Untagging one keeps the layer the other uses; untagging both removes all they added.
    pulled.remove(&example)?;
    ensure!(layer_dir(base.hex()).is_dir(), "`image rm` of example removed the base layer shares-base uses");
    let text = cat(ctx, &shares, "/etc/workshop-release")?;
    ensure!(text == "workshop rootfs\n", "after `image rm` of example, shares-base shows {text:?}");
    pulled.remove(&shares)?;
    expect_store_as(ctx, &before, "`image rm` of example and shares-base")
}

/// The bytes of the files below `dir` (0 if it is gone).
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn the_image_config_takes_effect(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE, images::CONFIGURED])?;
    let mut pulled = Pulled::new(ctx);
    let (example, configured) = (fixture.tag(images::EXAMPLE), fixture.tag(images::CONFIGURED));
    pulled.pull(&example)?;
    pulled.pull(&configured)?;
    // Control: example's config sets no user, directory or GREETING.
    let plain = probe_on(ctx, &example, &[])?;
    ensure!(plain.int("uid")? == 0 && plain.str("cwd")? == "/", "example runs as uid 0 in /: {:?}", plain.0);
    ensure!(plain.env("GREETING").is_none(), "example has no GREETING in its config");

    // No COMMAND: Entrypoint + Cmd (the probe reading a file), as the image's user, in its directory.
    let outcome = on_image(ctx, &configured).output()?;
    let seen = Probe::parse(outcome.expect_status(0)?)?;
    let action = seen.action(0).context("the image's Cmd (--read /etc/workshop-release) did not run")?;
    ensure!(
        action.name() == "read /etc/workshop-release",
        "the probe ran {}, not the image's Cmd",
        action.name()
    );
    ensure!(action.expect_ok()? == "workshop rootfs\n", "the image's Cmd read the wrong file");
    let ids = (seen.int("uid")?, seen.int("gid")?);
    let expected = (images::CONFIGURED_UID, images::CONFIGURED_UID);
    ensure!(
        ids == expected,
        "User {:?} runs as uid:gid {ids:?}, expected {expected:?}",
        images::CONFIGURED_USER
    );
    ensure!(seen.str("cwd")? == images::CONFIGURED_WORKDIR, "WorkingDir: the cwd is {}", seen.str("cwd")?);
    for pair in images::CONFIGURED_ENV {
        let (key, value) = pair.split_once('=').unwrap_or_default();
        ensure!(seen.env(key) == Some(value), "Env: {key} is {:?}, the image says {value:?}", seen.env(key));
    }

    // A COMMAND replaces Cmd, not Entrypoint; -e merges over the image's Env.
    let run = on_image(ctx, &configured).args(["-e", "MODE=flag", "-e", "EXTRA=1"]);
    let seen = Probe::parse(run.cmd(["--stat", "/etc/passwd"]).output()?.expect_status(0)?)?;
    let action = seen.action(0)?;
    ensure!(
        action.name() == "stat /etc/passwd",
        "COMMAND should replace Cmd: the probe ran {}",
        action.name()
    );
    ensure!(seen.action(1).is_err(), "the image's Cmd ran after COMMAND: {:?}", seen.0["actions"]);
    ensure!(
        (seen.env("MODE"), seen.env("EXTRA"), seen.env("GREETING"))
            == (Some("flag"), Some("1"), Some("hello from the image")),
        "-e MODE=flag -e EXTRA=1 over the image's Env gives {:?}",
        seen.0["env"]
    );

    let config = store::inspect(ctx, &configured)?["Config"].clone();
    ensure!(config["Entrypoint"] == json!([images::CONFIGURED_ENTRYPOINT]), "inspect: Entrypoint {}", config);
    ensure!(config["Cmd"] == json!(images::CONFIGURED_CMD), "inspect: Cmd in {config}");
    ensure!(config["WorkingDir"] == images::CONFIGURED_WORKDIR, "inspect: WorkingDir in {config}");
    ensure!(config["User"] == images::CONFIGURED_USER, "inspect: User in {config}");
    ensure!(
        config["ExposedPorts"].get(images::CONFIGURED_PORT).is_some(),
        "inspect: ExposedPorts in {config}"
    );
    pulled.remove_all()
}

fn two_pulls_at_once(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE])?;
    let before = store::contents(ctx);
    let mut pulled = Pulled::new(ctx);
    let tag = fixture.tag(images::EXAMPLE);
    pulled.note(&tag);
    let (first, second) = (pull(ctx, &tag).spawn()?, pull(ctx, &tag).spawn()?);
    let (first, second) = (first.wait()?, second.wait()?);
    first.expect_status(0)?;
    second.expect_status(0)?;
    let base = Path::new(crate::paths::STORE).join("layers").join(fixture.images.base().hex());
    let added = store::contents(ctx).added_since(&before);
    let layers: Vec<&String> = added.iter().filter(|p| Path::new(p).parent() == base.parent()).collect();
    let expected = if before.layers().contains(&base.to_string_lossy().into_owned()) { 0 } else { 1 };
    ensure!(layers.len() == expected, "two pulls of one image at once added the layers {layers:?}");
    let tmp = Path::new(crate::paths::STORE).join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).into_iter().flatten().flatten().map(|e| e.path()).collect();
    ensure!(left.is_empty(), "two pulls at once left {left:?} in tmp/");
    ensure!(
        cat(ctx, &tag, "/etc/workshop-release")? == "workshop rootfs\n",
        "the image pulled twice runs wrong"
    );
    pulled.remove_all()?;
    expect_store_as(ctx, &before, "`image rm`")
}

fn basic_auth_needs_the_password(ctx: &Ctx) -> Result<()> {
    let (user, password) = ("workshop", "correct horse");
    let options = Options { auth: Auth::Basic { user: user.into(), password: password.into() }, port: None };
    let fixture = Fixture::with(ctx, &[images::EXAMPLE], options)?;
    let tag = fixture.tag(images::EXAMPLE);
    let with_password = |password: &str| {
        pull(ctx, &tag).args(["--username", user, "--password-stdin"]).stdin(format!("{password}\n"))
    };
    let mut pulled = Pulled::new(ctx);
    pulled.note(&tag);
    with_password(password).output()?.expect_status(0).context("a pull with the right password")?;
    pulled.remove_all()?;
    // Either way, the error names the registry that said no.
    let host = fixture.registry.host();
    expect_refused(
        ctx,
        pull_quietly(ctx, &tag),
        &[&host],
        "a pull without credentials from a registry with auth",
    )?;
    let wrong = with_password("wrong horse").arg("-q");
    expect_refused(ctx, wrong, &[&host], "a pull with a wrong password")
}

/// Docker Hub's scheme: Bearer tokens from a token server, anonymous ones for
/// public repositories, with the password for a private one.
fn token_auth(ctx: &Ctx) -> Result<()> {
    let (user, password) = ("workshop", "correct horse");
    let options = Options { auth: Auth::Token { user: user.into(), password: password.into() }, port: None };
    let fixture = Fixture::with(ctx, &[images::EXAMPLE], options)?;
    let private = format!("{}example", crate::token::PRIVATE);
    fixture.registry.push(
        &fixture.images.layout,
        images::EXAMPLE,
        &format!("{private}:latest"),
        Push::Image,
    )?;
    let (public, private) =
        (fixture.tag(images::EXAMPLE), format!("{}:latest", fixture.registry.repo(&private)));
    let before = store::contents(ctx);
    let mut pulled = Pulled::new(ctx);
    pulled.pull(&public).context("an anonymous pull of a public repository (an anonymous token)")?;
    pulled.note(&private);
    let with_password = |password: &str| {
        pull(ctx, &private)
            .args(["-q", "--username", user, "--password-stdin"])
            .stdin(format!("{password}\n"))
    };
    let outcome = with_password(password).output()?;
    outcome.expect_status(0).context("a pull of a private repository with the password")?;
    ensure!(
        cat(ctx, &private, "/etc/workshop-release")? == "workshop rootfs\n",
        "the private image runs wrong"
    );
    pulled.remove_all()?;
    expect_store_as(ctx, &before, "`image rm` of both")?;
    let host = fixture.registry.host();
    expect_refused(ctx, pull_quietly(ctx, &private), &[&host], "an anonymous pull of a private repository")?;
    expect_refused(ctx, with_password("wrong horse"), &[&host], "a pull with a wrong password")
}

fn tampered_blobs(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE])?;
    let images = fixture.images;
    let tag = fixture.tag(images::EXAMPLE);
    let before = store::contents(ctx);
    let mut pulled = Pulled::new(ctx);
    pulled.pull(&tag)?;
    pulled.remove_all()?;
    expect_store_as(ctx, &before, "the control pull and its `image rm`")?;

    let layer = fixture.registry.blob_file(&images.base().digest);
    let config = fixture.registry.blob_file(&images.example.config);
    let manifest = fixture.registry.blob_file(images.example.digest());
    // Another valid gzip tar: only the digest tells it from the real layer.
    let impostor = std::fs::read(images.blob_file(&images.extra().digest))?;
    let by_digest = fixture.by_digest(images::EXAMPLE, images.example.digest());
    type Spoil = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, &Path, &str, Spoil)> = vec![
        ("a layer with one byte changed", &layer, &tag, Box::new(|b: &mut Vec<u8>| flip(b))),
        ("a layer cut to half its size", &layer, &tag, Box::new(|b: &mut Vec<u8>| b.truncate(b.len() / 2))),
        (
            "a layer replaced by another valid one",
            &layer,
            &tag,
            Box::new(move |b: &mut Vec<u8>| *b = impostor.clone()),
        ),
        ("a config with a space added", &config, &tag, Box::new(|b: &mut Vec<u8>| b.push(b' '))),
        (
            "a manifest with a space added, pulled by digest",
            &manifest,
            &by_digest,
            Box::new(|b: &mut Vec<u8>| b.push(b' ')),
        ),
    ];
    // The error names the blob it refused (a manifest: by the digest it should have).
    let short = |digest: &str| digest["sha256:".len()..][..12].to_string();
    let (layer_word, config_word) = (short(&images.base().digest), short(&images.example.config));
    for (what, file, reference, spoil) in cases {
        let word = match file {
            f if f == layer.as_path() => layer_word.as_str(),
            f if f == config.as_path() => config_word.as_str(),
            _ => "digest",
        };
        let original =
            std::fs::read(file).with_context(|| format!("the registry's blob {}", file.display()))?;
        let mut spoiled = original.clone();
        spoil(&mut spoiled);
        std::fs::write(file, &spoiled)?;
        let refused =
            expect_refused(ctx, pull_quietly(ctx, reference), &[word], &format!("a pull of {what}"));
        std::fs::write(file, &original)?;
        refused?;
    }
    Ok(())
}

/// Changes one byte in the middle.
fn flip(bytes: &mut [u8]) {
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
}

fn bad_layers_and_manifests(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::EXAMPLE])?;
    let mut pulled = Pulled::new(ctx);
    pulled.pull(&fixture.tag(images::EXAMPLE))?;
    pulled.remove_all()?;

    let dir = TempPath::new("bad-registry-images");
    std::fs::create_dir(&dir.0)?;
    let outside = TempPath::new("outside");
    std::fs::create_dir(&outside.0)?;
    let absolute = format!("{}/absolute", outside.0.display());
    let dotdot = "../../../../../../../../../tmp/escaped-by-a-pulled-layer";
    let tar = |entries: &[Entry]| -> Result<Vec<u8>> {
        let file = dir.0.join("crafted.tar");
        write_tar(&file, entries)?;
        Ok(std::fs::read(&file)?)
    };
    let good = images::files_tar(&[("/hello.txt", "hello\n")])?;
    // (what, a word its error says, layer tars, the diff_ids the config claims: None for the true ones)
    type Case<'a> = (&'a str, &'a str, Vec<Vec<u8>>, Option<Vec<String>>);
    let cases: Vec<Case> = vec![
        ("a manifest that lists no layers", "no layers", vec![], None),
        ("a layer with ../ in a path", "refused", vec![tar(&[Entry::File(dotdot, "x")])?], None),
        ("a layer with an absolute path", "refused", vec![tar(&[Entry::File(&absolute, "x")])?], None),
        (
            "a layer that writes through its own symlink",
            "refused",
            vec![tar(&[
                Entry::Symlink("escape", &outside.0.to_string_lossy()),
                Entry::File("escape/planted", "x"),
            ])?],
            None,
        ),
        ("a layer that is no tar", "tar", vec![b"not a tar archive; ".repeat(64)], None),
        (
            "a config whose diff_id is not its layer's",
            "refused",
            vec![good.clone()],
            Some(vec![format!("sha256:{}", "0".repeat(64))]),
        ),
    ];
    let layout_dir = dir.0.join("layout");
    let mut layout = Layout::create(&layout_dir)?;
    let mut tags = Vec::new();
    for (n, (what, word, tars, diff_ids)) in cases.iter().enumerate() {
        let layers = tars.iter().map(|t| layout.layer(t)).collect::<Result<Vec<_>>>()?;
        let config = json!({ "Cmd": ["/bin/sh"] });
        let image = match diff_ids {
            None => layout.image(&layers, Platform::host(), config)?,
            Some(ids) => {
                let full = json!({
                    "architecture": Platform::host().architecture, "os": "linux", "config": config,
                    "rootfs": { "type": "layers", "diff_ids": ids },
                });
                layout.image_with_config(&layers, &full)?
            }
        };
        let tag = format!("bad-{n}");
        layout.tag(&tag, &image.manifest);
        tags.push((tag, *what, *word));
    }
    layout.save()?;
    for (tag, what, word) in tags {
        fixture.registry.push(&layout_dir, &tag, &format!("workshop/{tag}:latest"), Push::Image)?;
        let reference = format!("{}:latest", fixture.registry.repo(&format!("workshop/{tag}")));
        expect_refused(ctx, pull_quietly(ctx, &reference), &[word], &format!("a pull of {what}"))?;
        let left: Vec<_> = std::fs::read_dir(&outside.0)?.collect();
        ensure!(left.is_empty(), "a pulled layer ({what}) wrote outside its directory");
        ensure!(!Path::new("/tmp/escaped-by-a-pulled-layer").exists(), "a pulled layer climbed out with ..");
    }
    Ok(())
}

fn a_lost_registry(ctx: &Ctx) -> Result<()> {
    let mut fixture = Fixture::new(ctx, &[images::EXAMPLE])?;
    let tag = fixture.tag(images::EXAMPLE);
    let mut pulled = Pulled::new(ctx);
    pulled.pull(&tag)?;
    pulled.remove_all()?;

    // A registry that dies in the middle of a layer: a stand-in that serves the
    // manifest and config, then half of the layer, and hangs up.
    let images = fixture.images;
    let cut = CutOff::start(&images.layout, &images.example, &images.base().digest)?;
    let reference = format!("127.0.0.1:{}/workshop/example:latest", cut.port);
    let layer = &images.base().digest["sha256:".len()..][..12];
    expect_refused(ctx, pull_quietly(ctx, &reference), &[layer], "a pull whose registry hung up mid-layer")?;
    ensure!(cut.served_half(), "the stand-in registry was never asked for the layer");
    drop(cut);

    fixture.registry.stop_process();
    let host = fixture.registry.host();
    expect_refused(ctx, pull_quietly(ctx, &tag), &[&host], "a pull from a registry that stopped")?;
    // docker.io goes to the mirror, a closed port in every test: no test reaches the internet.
    let docker_hub = pull_quietly(ctx, "alpine").timeout(REFUSAL_TIMEOUT);
    let mirror = crate::registry::NO_MIRROR;
    expect_refused(ctx, docker_hub, &[mirror], "a pull of docker.io's alpine through a mirror that is down")
}

/// A registry stand-in that serves one image and cuts its layer short (a registry
/// that dies mid-pull, at a known moment).
struct CutOff {
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CutOff {
    fn start(layout: &Path, image: &images::Image, layer: &str) -> Result<CutOff> {
        let blob = |digest: &str| {
            std::fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:")))
        };
        let manifest = (image.digest().to_string(), blob(image.digest())?);
        let config = (image.config.clone(), blob(&image.config)?);
        let layer = (layer.to_string(), blob(layer)?);
        let listener = crate::sandbox::in_netns(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))??;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (stop_flag, served_flag) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).map(|n| n == 1).unwrap_or(false)
                {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let (status, media, body, cut) = if path == "/v2/" {
                    ("200 OK", "application/json", &b"{}"[..], false)
                } else if path.ends_with("/manifests/latest") || path.ends_with(&manifest.0) {
                    ("200 OK", images::OCI_MANIFEST, &manifest.1[..], false)
                } else if path.ends_with(&config.0) {
                    ("200 OK", "application/octet-stream", &config.1[..], false)
                } else if path.ends_with(&layer.0) {
                    ("200 OK", "application/octet-stream", &layer.1[..], true)
                } else {
                    (
                        "404 Not Found",
                        "application/json",
                        &b"{\"errors\":[{\"code\":\"NOT_FOUND\"}]}"[..],
                        false,
                    )
                };
                let digest = if path.contains("/manifests/") { manifest.0.as_str() } else { "" };
                let header = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {media}\r\nContent-Length: {}\r\n\
                     Docker-Distribution-Api-Version: registry/2.0\r\n{}Connection: close\r\n\r\n",
                    body.len(),
                    if digest.is_empty() {
                        String::new()
                    } else {
                        format!("Docker-Content-Digest: {digest}\r\n")
                    },
                );
                let _ = stream.write_all(header.as_bytes());
                if method != "HEAD" {
                    let sent = if cut { &body[..body.len() / 2] } else { body };
                    let _ = stream.write_all(sent);
                    if cut {
                        served_flag.store(true, Ordering::SeqCst);
                    }
                }
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        });
        Ok(CutOff { port, stop, served, thread: Some(thread) })
    }

    fn served_half(&self) -> bool {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for CutOff {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn no_platform_match(ctx: &Ctx) -> Result<()> {
    let fixture = Fixture::new(ctx, &[images::MULTI_PLATFORM, images::OTHER_PLATFORM_ONLY])?;
    let mut pulled = Pulled::new(ctx);
    pulled.pull(&fixture.tag(images::MULTI_PLATFORM))?;
    pulled.remove_all()?;
    let only = fixture.tag(images::OTHER_PLATFORM_ONLY);
    let host = Platform::host();
    let what = format!("a pull of an index with only {} on {}", Platform::others()[0].name(), host.name());
    expect_refused(ctx, pull_quietly(ctx, &only), &[&host.name()], &what)
}

fn malformed_references(ctx: &Ctx) -> Result<()> {
    // The control: a well-formed reference with a host, a port, a path and a tag.
    let fixture = Fixture::new(ctx, &[images::EXAMPLE])?;
    let mut pulled = Pulled::new(ctx);
    pulled.pull(&fixture.tag(images::EXAMPLE))?;
    pulled.remove_all()?;
    let long_name = "a".repeat(256);
    let long_tag = format!("alpine:{}", "t".repeat(129));
    let short_digest = format!("alpine@sha256:{}", "a".repeat(63));
    let bad_hex = format!("alpine@sha256:{}", "g".repeat(64));
    let other_algorithm = format!("alpine@md5:{}", "a".repeat(32));
    let upper_digest = format!("alpine@sha256:{}", "A".repeat(64));
    let references = [
        "",
        "Alpine",
        "workshop/Example",
        "a b",
        "a\nb",
        "alpine:",
        ":latest",
        "alpine:a:b",
        "alpine:-tag",
        "alpine@",
        &short_digest,
        &bad_hex,
        &other_algorithm,
        &upper_digest,
        "/alpine",
        "alpine/",
        "a//b",
        "a..b",
        "a__b__",
        "127.0.0.1:5000/",
        "http://127.0.0.1:5000/alpine",
        &long_name,
        &long_tag,
    ];
    let mut failures = Vec::new();
    for reference in references {
        for run in [
            Run::raw(&ctx.step.bin).args(["pull", "-q", "--", reference]).timeout(REFUSAL_TIMEOUT),
            ctx.bare()
                .args(["--net", "none"])
                .arg(format!("--image={reference}"))
                .cmd(["true"])
                .timeout(REFUSAL_TIMEOUT),
        ] {
            // Docker's word for it: "invalid reference format".
            let what = format!("the reference {reference:?}");
            if let Err(err) = expect_refused(ctx, run, &["invalid reference"], &what) {
                failures.push(format!("{err:#}"));
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} malformed references were not refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

fn pulls_alpine_from_docker_hub(ctx: &Ctx) -> Result<()> {
    if std::env::var("WORKSHOP_ONLINE").as_deref() != Ok("1") {
        return Err(Skipped(
            "pulls alpine from Docker Hub, over the internet (set WORKSHOP_ONLINE=1)".into(),
        )
        .into());
    }
    let mut pulled = Pulled::new(ctx);
    pulled.note("alpine");
    // Straight from registry-1.docker.io: no mirror, and the machine's own network.
    let outcome =
        pull(ctx, "alpine").env_remove(MIRROR_VAR).on_host_network().timeout(Duration::from_secs(300));
    let outcome = outcome.output()?;
    outcome.expect_status(0)?;
    let last = outcome.stdout.lines().last().unwrap_or_default();
    ensure!(
        last.ends_with("alpine:latest"),
        "`pull alpine` printed {last:?} last, expected its canonical name"
    );
    let release = cat(ctx, "alpine", "/etc/alpine-release")?;
    let version: Vec<&str> = release.trim().split('.').collect();
    if version.len() < 2 || !version.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())) {
        bail!("alpine's /etc/alpine-release is {release:?}");
    }
    pulled.remove_all()
}
