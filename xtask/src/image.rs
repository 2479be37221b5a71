//! The `image` task: the example layered image of chapter 07.
//!
//! A base layer (the workshop rootfs plus /etc/motd) and an app layer that
//! adds a file (/app/hello.txt), changes one of the base (/etc/workshop-release)
//! and deletes one (/etc/motd, with an OCI whiteout `.wh.motd`), so the
//! chapter can show all three cases. Both are plain tars, imported as the
//! image "example" with `image import` into both kinds of store: the one of
//! steps 07-09 (an image is numbered layer directories) and step 10's (layers
//! by digest), each by the newest step that has it.

use crate::artifacts::{self, Step};
use crate::{as_root, display_path, rootfs, run as run_cmd, target_dir};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const NAME: &str = "example";

/// Imports the example image with `step` unless it is there already.
pub fn ensure(step: &Step, rootfs: &Path) -> Result<()> {
    match imported(step).exists() {
        true => Ok(()),
        false => import(step, rootfs),
    }
}

/// The file that says `step`'s store has the example: 07-09 keep images by
/// name, step 10 on names them by tag in its content-addressed store.
fn imported(step: &Step) -> PathBuf {
    match step.number {
        10.. => Path::new(crate::paths::STORE).join("tags/docker.io/library").join(NAME).join("latest"),
        _ => Path::new(crate::paths::IMAGES).join(NAME),
    }
}

/// The steps that import the example: the newest of 07-09, and the newest from 10 on.
pub fn importers(steps: &[Step]) -> Vec<&Step> {
    let newest_in =
        |range: std::ops::RangeInclusive<u32>| steps.iter().rev().find(|s| range.contains(&s.number));
    [newest_in(7..=9), newest_in(10..=u32::MAX)].into_iter().flatten().collect()
}

/// The `image` task.
pub fn run() -> Result<()> {
    let steps = artifacts::build_steps()?;
    let probe = artifacts::build_probe()?;
    let rootfs = rootfs::prepare(&probe)?;
    let importers = importers(&steps);
    if importers.is_empty() {
        bail!("images need step 07 (overlay) or later");
    }
    importers.into_iter().try_for_each(|step| import(step, &rootfs))
}

/// Writes the layers from `rootfs` and imports them with `step` (07 or later).
fn import(step: &Step, rootfs: &Path) -> Result<()> {
    let [base, app] = write_layers(rootfs)?;

    // Replace an older example image, then import the new one (as root).
    let mut remove = Command::new(&step.bin);
    remove.args(["image", "rm", NAME]).stderr(std::process::Stdio::null());
    let _ = as_root(remove)?.status();
    let mut import = Command::new(&step.bin);
    import.args(["image", "import", NAME]).arg(&base).arg(&app);
    run_cmd(&mut as_root(import)?).context("import the example image")?;
    println!("image {NAME:?}: {} and {}", display_path(&base), display_path(&app));
    println!("try: sudo {} run --rm --image {NAME} -- sh -c 'cat /app/hello.txt /etc/workshop-release; ls /etc/motd'", display_path(&step.bin));
    Ok(())
}

/// Writes the two layers as tars, `target/image/base.tar` and `app.tar`, from
/// `rootfs` (the book's tests import them too, into a store of their own).
pub fn write_layers(rootfs: &Path) -> Result<[PathBuf; 2]> {
    let dir = target_dir().join("image");
    let _ = std::fs::remove_dir_all(&dir);
    let (base, app) = (dir.join("base"), dir.join("app"));
    std::fs::create_dir_all(&app)?;

    // The base layer: the rootfs and one file the app layer will delete.
    run_cmd(Command::new("cp").arg("-a").arg(rootfs).arg(&base))?;
    std::fs::write(base.join("etc/motd"), "Welcome to the workshop's example image (base layer).\n")?;
    // The app layer: a new file, a changed file, a deleted file.
    std::fs::create_dir_all(app.join("app"))?;
    std::fs::create_dir_all(app.join("etc"))?;
    std::fs::write(app.join("app/hello.txt"), "Hello from the app layer.\n")?;
    std::fs::write(app.join("etc/workshop-release"), "workshop rootfs, as changed by the app layer\n")?;
    std::fs::write(app.join("etc/.wh.motd"), "")?;
    for layer in ["base", "app"] {
        let tar = dir.join(format!("{layer}.tar"));
        let mut cmd = Command::new("tar");
        cmd.args(["--owner=0", "--group=0", "--numeric-owner", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(dir.join(layer));
        run_cmd(cmd.arg("."))?;
    }
    Ok([dir.join("base.tar"), dir.join("app.tar")])
}
