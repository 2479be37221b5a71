//! Exercise 07: `commit ID NAME` makes a new image of a finished container:
//! the layers it ran on, and one more with its changes (a tar with OCI
//! whiteouts, imported as `image import` does).

use super::{Exercise, Graded, Kept};
use crate::{Ctx, Probe, Run};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::paths::{CONTAINERS, IMAGES};

pub fn exercise() -> Exercise {
    Exercise {
        number: 7,
        name: "07-overlay",
        title: "commit a container (commit ID NAME)",
        checks: vec![
            Graded::new(7, "commit::a_new_image_holds_the_changes", 4, a_new_image_holds_the_changes),
            Graded::new(7, "commit::deletions_survive_a_second_commit", 2, deletions_survive_a_second_commit),
            Graded::new(7, "commit::the_container_and_its_image_stay_as_they_were", 2, originals_stay),
            Graded::new(7, "errors::bad_commits_are_125_in_one_line", 2, bad_commits_are_125),
        ],
        needs_the_holes: &[],
    }
}

/// An image of this check's own, removed with `image rm` when dropped.
struct Image<'a> {
    ctx: &'a Ctx,
    name: String,
}

impl<'a> Image<'a> {
    fn new(ctx: &'a Ctx, label: &str) -> Image<'a> {
        Image { ctx, name: format!("{label}-{}", std::process::id()) }
    }
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        let _ = Run::raw(&self.ctx.step.bin).args(["image", "rm", &self.name]).output();
    }
}

/// Runs `script` in a kept container (on `image`, or on the workshop rootfs).
fn make_changes(container: &Kept, image: Option<&str>, script: &str) -> Result<()> {
    let outcome = container.run(image).cmd(["sh", "-c", script]).output()?;
    outcome.expect_status(0).with_context(|| format!("a container that runs `{script}`"))?;
    Ok(())
}

/// `BIN commit ID NAME`, which must work.
fn commit(ctx: &Ctx, id: &str, image: &str) -> Result<()> {
    let outcome = Run::raw(&ctx.step.bin).args(["commit", id, image]).output()?;
    outcome.expect_status(0).with_context(|| format!("`commit {id} {image}` of a finished container"))?;
    Ok(())
}

/// How many layers `image ls` says the image has.
fn layer_count(ctx: &Ctx, image: &str) -> Result<String> {
    let listed = Run::raw(&ctx.step.bin).args(["image", "ls"]).output()?;
    let line = listed.stdout.lines().find(|l| l.split('\t').next() == Some(image));
    let line = line.with_context(|| format!("`image ls` does not list {image}\n{}", listed.transcript()))?;
    Ok(line.split('\t').nth(1).unwrap_or_default().to_string())
}

/// The probe in a fresh container (--rm) on `image`.
fn probe_image(ctx: &Ctx, image: &str, actions: &[&str]) -> Result<Probe> {
    let run = ctx.bare().args(["--net", "none", "--image", image]).cmd(["/bin/probe"]).args(actions);
    let outcome = run.output()?;
    Probe::parse(outcome.expect_status(0)?)
}

fn a_new_image_holds_the_changes(ctx: &Ctx) -> Result<()> {
    let container = Kept::new(ctx, "commit-changes");
    let image = Image::new(ctx, "committed");
    make_changes(
        &container,
        None,
        "echo added > /added && echo changed >> /etc/workshop-release && rm /etc/hostname \
         && ln -s /etc/passwd /link",
    )?;
    commit(ctx, &container.name, &image.name)?;
    let layers = layer_count(ctx, &image.name)?;
    ensure!(
        layers == "2 layers",
        "the committed image has {layers}: it should be the container's one layer (the rootfs) plus one with its changes"
    );
    let seen = probe_image(
        ctx,
        &image.name,
        &[
            "--read",
            "/added",
            "--read",
            "/etc/workshop-release",
            "--stat",
            "/etc/hostname",
            "--stat",
            "/link",
        ],
    )?;
    let added =
        seen.action(0)?.expect_ok().context("the container added /added: the new image should have it")?;
    ensure!(added == "added\n", "/added in the new image reads {added}, not \"added\\n\"");
    let release = seen.action(1)?.expect_ok()?.as_str().unwrap_or_default().to_string();
    let original = std::fs::read_to_string(ctx.workshop.rootfs.join("etc/workshop-release"))?;
    ensure!(
        release == original.clone() + "changed\n",
        "the container appended a line to /etc/workshop-release; in the new image it reads {release:?}"
    );
    seen.action(2)?.expect_errno(libc::ENOENT).context(
        "the container deleted /etc/hostname: in the new image it must stay deleted (a .wh.hostname whiteout in the tar)",
    )?;
    let link =
        seen.action(3)?.expect_ok().context("the container made /link: the new image should have it")?;
    ensure!(
        link["kind"] == "symlink",
        "the container made /link a symlink to /etc/passwd; in the new image /link is a {}, not a symlink: \
         a tar entry of a followed symlink holds the file it points to, read on the host (the host's \
         /etc/passwd!). Write symlinks as symlinks (follow_symlinks(false))",
        link["kind"]
    );
    Ok(())
}

fn deletions_survive_a_second_commit(ctx: &Ctx) -> Result<()> {
    let (first, second) = (Kept::new(ctx, "commit-first"), Kept::new(ctx, "commit-second"));
    let (base, image) = (Image::new(ctx, "commit-base"), Image::new(ctx, "commit-again"));
    make_changes(&first, None, "mkdir -p /data/sub && echo a > /data/a && echo b > /data/sub/b")?;
    commit(ctx, &first.name, &base.name)?;
    // /data is deleted and made again: overlayfs makes it an opaque directory.
    let script = "rm -rf /data && mkdir /data && echo c > /data/c && rm /etc/passwd";
    make_changes(&second, Some(&base.name), script)?;
    commit(ctx, &second.name, &image.name)?;
    let layers = layer_count(ctx, &image.name)?;
    ensure!(layers == "3 layers", "an image committed from a 2-layer image has {layers}, not 3 layers");
    let actions = ["--stat", "/data/a", "--stat", "/data/sub", "--read", "/data/c", "--stat", "/etc/passwd"];
    let seen = probe_image(ctx, &image.name, &actions)?;
    for (n, path) in [(0, "/data/a"), (1, "/data/sub")] {
        seen.action(n)?.expect_errno(libc::ENOENT).with_context(|| {
            format!(
                "the second container removed /data and made it again: {path}, from the layer below, must be \
                 hidden (the directory is opaque: .wh..wh..opq in the tar)"
            )
        })?;
    }
    let c = seen.action(2)?.expect_ok().context("the second container's /data/c")?;
    ensure!(c == "c\n", "/data/c reads {c}");
    seen.action(3)?.expect_errno(libc::ENOENT).context("the second container deleted /etc/passwd")?;
    Ok(())
}

/// Path -> (mode, owner, size, content hash) of every entry below `dir`.
fn fingerprint(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut seen = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let meta = at.symlink_metadata()?;
        let content = match meta.is_file() {
            true => std::fs::read(&at)?
                .iter()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)),
            false => meta.rdev(),
        };
        let key = at.strip_prefix(dir)?.to_string_lossy().into_owned();
        seen.insert(
            key,
            format!("{:o} {}:{} {} {content:x}", meta.mode(), meta.uid(), meta.gid(), meta.len()),
        );
        if meta.is_dir() {
            for entry in std::fs::read_dir(&at)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(seen)
}

fn originals_stay(ctx: &Ctx) -> Result<()> {
    let (base, image) = (Image::new(ctx, "commit-original"), Image::new(ctx, "commit-copy"));
    let import = Run::raw(&ctx.step.bin).args(["image", "import", &base.name]).arg(&ctx.workshop.rootfs);
    import.output()?.expect_status(0).context("image import")?;
    let container = Kept::new(ctx, "commit-original");
    make_changes(&container, Some(&base.name), "echo x > /x && rm /etc/hostname")?;
    let diff = |id: &str| Run::raw(&ctx.step.bin).args(["diff", id]).output();
    let (image_before, diff_before) =
        (fingerprint(&Path::new(IMAGES).join(&base.name))?, diff(&container.name)?);
    let layer = Path::new(CONTAINERS).join(&container.name);
    let layer_before = fingerprint(&layer)?;
    commit(ctx, &container.name, &image.name)?;
    ensure!(
        fingerprint(&Path::new(IMAGES).join(&base.name))? == image_before,
        "`commit` changed the image the container ran on"
    );
    ensure!(
        fingerprint(&layer)? == layer_before,
        "`commit` changed, or left files in, the container's directory {}",
        layer.display()
    );
    let diff_after = diff(&container.name)?;
    ensure!(
        diff_after.stdout == diff_before.stdout,
        "after `commit`, `diff` of the container shows {:?}, not {:?} as before",
        diff_after.stdout,
        diff_before.stdout
    );
    let seen = probe_image(ctx, &base.name, &["--stat", "/x", "--stat", "/etc/hostname"])?;
    seen.action(0)?
        .expect_errno(libc::ENOENT)
        .context("a container of the original image must not see /x")?;
    seen.action(1)?.expect_ok().context("a container of the original image still has /etc/hostname")?;
    Ok(())
}

/// `BIN commit ID NAME`, which must be refused in one line that names `word`.
fn refused(ctx: &Ctx, id: &str, image: &str, word: &str, why: &str) -> Result<()> {
    let outcome = Run::raw(&ctx.step.bin).args(["commit", id, image]).output()?;
    outcome
        .expect_status(125)?
        .expect_one_error_line(&[word])
        .with_context(|| format!("`commit {id} {image}`: {why}, an error in one line that names {word:?}"))?;
    Ok(())
}

fn bad_commits_are_125(ctx: &Ctx) -> Result<()> {
    let (container, existing) = (Kept::new(ctx, "commit-bad"), Image::new(ctx, "commit-existing"));
    let import = Run::raw(&ctx.step.bin).args(["image", "import", &existing.name]).arg(&ctx.workshop.rootfs);
    import.output()?.expect_status(0).context("image import")?;
    make_changes(&container, None, "echo x > /x")?;
    let fresh = format!("commit-new-{}", std::process::id());
    refused(ctx, "no-such-container", &fresh, "no-such-container", "there is no such container")?;
    refused(ctx, "../images", &fresh, "../images", "an id is no path")?;
    refused(ctx, &container.name, "../evil", "../evil", "an image name is no path")?;
    refused(ctx, &container.name, &existing.name, &existing.name, "that image exists already")?;
    ensure!(
        layer_count(ctx, &existing.name)? == "1 layers",
        "a refused commit changed the image it would replace"
    );
    ensure!(!Path::new(IMAGES).join(&fresh).exists(), "a refused commit left the image {fresh}");

    // A container that ran with --userns: its files belong to the mapped ids.
    let mapped = Kept::new(ctx, "commit-userns");
    let outcome = mapped.run(None).arg("--userns").cmd(["sh", "-c", "echo x > /x"]).output()?;
    outcome.expect_status(0).context("a kept container that runs with --userns")?;
    let outcome = Run::raw(&ctx.step.bin).args(["commit", &mapped.name, &fresh]).output()?;
    if outcome.status == 0 {
        let _ = Run::raw(&ctx.step.bin).args(["image", "rm", &fresh]).output();
        bail!(
            "`commit` of a container that ran with --userns should be refused: its files belong to the \
             mapped ids (100000 and up), and so would every file of the new image"
        );
    }
    outcome
        .expect_status(125)?
        .expect_one_error_line(&[&mapped.name])
        .context("`commit` of a container that ran with --userns: an error in one line that names it")?;

    // A running container: its layer is still changing.
    let running = Kept::new(ctx, "commit-running");
    let (sleeping, pid1) = super::started(running.run(None).cmd(["sleep", "30"]).spawn()?)?;
    let outcome = Run::raw(&ctx.step.bin).args(["commit", &running.name, &fresh]).output();
    super::kill_container(sleeping, pid1)?;
    let outcome = outcome?;
    if outcome.status == 0 {
        let _ = Run::raw(&ctx.step.bin).args(["image", "rm", &fresh]).output();
        bail!("`commit` of a running container should be refused: its layer is still changing");
    }
    outcome
        .expect_status(125)?
        .expect_one_error_line(&[&running.name])
        .context("`commit` of a running container: an error in one line that names it")?;
    Ok(())
}
