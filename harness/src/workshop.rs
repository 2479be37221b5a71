//! Where things are: the workspace, the step binaries, the probe, the rootfs.
//!
//! `cargo xtask test` passes them in WORKSHOP_* variables; the defaults are
//! what `cargo xtask build` and `cargo xtask rootfs` produce.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Workshop {
    pub root: PathBuf,
    pub bin_dir: PathBuf,
    /// The static probe on the host (steps 01 and 02 run it from here).
    pub probe: PathBuf,
    pub rootfs: PathBuf,
}

/// One step binary, like `03-mnt` with number 3.
#[derive(Clone, Debug)]
pub struct Step {
    pub number: u8,
    pub name: String,
    pub bin: PathBuf,
}

impl Workshop {
    pub fn from_env() -> Result<Workshop> {
        let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
        let root = var("WORKSHOP_ROOT").unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        let root = root.canonicalize().context("the workspace root")?;
        let target = var("CARGO_TARGET_DIR").unwrap_or_else(|| root.join("target"));
        let workshop = Workshop {
            bin_dir: var("WORKSHOP_BIN_DIR").unwrap_or_else(|| target.join("debug")),
            probe: var("WORKSHOP_PROBE").unwrap_or_else(|| static_probe(&target)),
            rootfs: var("WORKSHOP_ROOTFS").unwrap_or_else(|| target.join("rootfs")),
            root,
        };
        for (what, path) in [("probe", &workshop.probe), ("rootfs", &workshop.rootfs)] {
            if !path.exists() {
                bail!(
                    "no {what} at {}: run the tests with `cargo xtask test`, which builds it",
                    path.display()
                );
            }
        }
        Ok(workshop)
    }

    /// The steps in `steps/`, each with its binary (which must be built).
    pub fn steps(&self) -> Result<Vec<Step>> {
        let mut steps = Vec::new();
        for entry in std::fs::read_dir(self.root.join("steps")).context("read steps/")? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let Some(number) = name.get(..2).and_then(|n| n.parse().ok()) else {
                continue;
            };
            let bin = self.bin_dir.join(&name);
            if !bin.exists() {
                bail!("{} is not built: run the tests with `cargo xtask test`", bin.display());
            }
            steps.push(Step { number, name, bin });
        }
        steps.sort_by_key(|s| s.number);
        Ok(steps)
    }
}

/// `cargo xtask build` puts the static probe in target/<host triple>/release.
fn static_probe(target: &Path) -> PathBuf {
    let triples = std::fs::read_dir(target).into_iter().flatten().flatten();
    triples
        .map(|entry| entry.path().join("release/probe"))
        .find(|probe| probe.exists())
        .unwrap_or_else(|| target.join("<host triple>/release/probe"))
}
