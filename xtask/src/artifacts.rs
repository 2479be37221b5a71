//! Building things: the step binaries, the static probe, the harness test executable.
//! Also the `build` task, which builds the first two and prints where they are.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::{
    cargo, command_line, display_path, is_static, output, run as run_cmd, target_dir, workspace_root,
};

/// One chapter of the workshop: `steps/NN-name`, binary `NN-name`.
#[derive(Debug, Clone)]
pub struct Step {
    /// "03-mnt"
    pub name: String,
    /// 3
    pub number: u32,
    /// `<target>/debug/03-mnt`
    pub bin: PathBuf,
}

/// The `build` task.
pub fn run() -> Result<()> {
    let steps = build_steps()?;
    let probe = build_probe()?;
    println!();
    println!("step binaries (run them with sudo):");
    for step in &steps {
        println!("  {}", display_path(&step.bin));
    }
    println!("static probe:");
    println!("  {}", display_path(&probe));
    Ok(())
}

/// Every `steps/NN-name` directory, sorted; the last one is the newest step.
pub fn steps() -> Result<Vec<Step>> {
    let dir = workspace_root().join("steps");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("could not list {}", dir.display()))?;
    let mut steps = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(number) = step_number(&name) {
            let bin = target_dir().join("debug").join(&name);
            steps.push(Step { name, number, bin });
        }
    }
    steps.sort_by(|a, b| a.name.cmp(&b.name));
    if steps.is_empty() {
        bail!("no steps found in {}", dir.display());
    }
    Ok(steps)
}

/// "03-mnt" -> Some(3); names that do not start with a number and a dash -> None.
pub fn step_number(name: &str) -> Option<u32> {
    let (number, rest) = name.split_once('-')?;
    if rest.is_empty() {
        return None;
    }
    number.parse().ok()
}

/// Build all step binaries (as the invoking user) and return them. Only the steps'
/// packages: a learner's first `demo` need not wait for the exercises and solutions.
pub fn build_steps() -> Result<Vec<Step>> {
    let steps = steps()?;
    let mut build = cargo();
    build.args(["build", "--bins"]);
    for step in &steps {
        build.args(["-p", &format!("step-{}", step.name)]);
    }
    run_cmd(&mut build)?;
    for step in &steps {
        if !step.bin.is_file() {
            bail!(
                "built the workspace but {} is missing (the crate in steps/{} must have a binary named {:?})",
                step.bin.display(),
                step.name,
                step.name
            );
        }
    }
    Ok(steps)
}

/// Step binaries and a static probe built elsewhere (`demo --prebuilt DIR`, in the
/// VM tier's systemd guest, which has no cargo): `DIR/NN-name` and `DIR/probe`.
pub fn prebuilt(dir: &Path) -> Result<(Vec<Step>, PathBuf)> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?;
    let mut steps = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(number) = step_number(&name).filter(|_| entry.path().is_file()) {
            steps.push(Step { name, number, bin: entry.path() });
        }
    }
    steps.sort_by(|a, b| a.name.cmp(&b.name));
    let probe = dir.join("probe");
    if steps.is_empty() || !probe.is_file() {
        bail!("{} must hold the step binaries (01-uts, ...) and the static probe", dir.display());
    }
    check_static(&probe)?;
    Ok((steps, probe))
}

/// The host's target triple, e.g. "x86_64-unknown-linux-gnu".
pub fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let text = output(std::process::Command::new(rustc).arg("-vV"))?;
    parse_host_triple(&text).context("`rustc -vV` printed no \"host: ...\" line")
}

pub fn parse_host_triple(rustc_vv: &str) -> Option<String> {
    rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("host:"))
        .map(|triple| triple.trim().to_string())
        .filter(|triple| !triple.is_empty())
}

/// Cargo's per-target RUSTFLAGS variable: x86_64-unknown-linux-gnu ->
/// CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS.
pub fn rustflags_var(triple: &str) -> String {
    let triple: String = triple
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("CARGO_TARGET_{triple}_RUSTFLAGS")
}

/// `cargo` that links what it builds for `--target <triple>` statically (crt-static).
/// Pass the same `--target`: the flag then applies to it only, so build scripts and
/// proc macros (built for the host) stay dynamic, which they must be.
pub fn cargo_static(triple: &str) -> std::process::Command {
    let mut cmd = cargo();
    cmd.env(rustflags_var(triple), "-C target-feature=+crt-static");
    cmd
}

/// Where the static probe ends up: `<target>/<triple>/release/probe`.
pub fn probe_path(triple: &str) -> PathBuf {
    target_dir().join(triple).join("release").join("probe")
}

/// Build the probe as a static binary (it must run inside any rootfs) and check it.
pub fn build_probe() -> Result<PathBuf> {
    let triple = host_triple()?;
    run_cmd(cargo_static(&triple).args(["build", "-p", "probe", "--release", "--target", &triple]))?;
    let probe = probe_path(&triple);
    check_static(&probe)?;
    Ok(probe)
}

fn check_static(probe: &Path) -> Result<()> {
    if !probe.is_file() {
        bail!("the probe build finished but {} is missing", probe.display());
    }
    if !is_static(probe)? {
        let mut hint = String::new();
        if std::env::var_os("RUSTFLAGS").is_some() {
            hint = " ($RUSTFLAGS is set, and it overrides the per-target flags: unset it)".into();
        }
        bail!("{} is dynamically linked; it must be static to run inside the rootfs{hint}", probe.display());
    }
    Ok(())
}

/// Build the integration tests (test target `steps` of crate `harness`) without
/// running them, and return the path of the test executable.
pub fn build_harness() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["test", "-p", "harness", "--test", "steps", "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        // stdout carries the JSON for us; progress and compiler errors stay visible.
        .stderr(Stdio::inherit());
    eprintln!("$ {}", command_line(&cmd));
    let stdout = output(&mut cmd)
        .context("could not build the integration tests (test target `steps` of crate `harness`)")?;
    match test_executable(&stdout, "steps") {
        Some(exe) => Ok(exe),
        None => bail!("cargo built the harness but reported no executable for test target `steps`"),
    }
}

/// Find the executable of a test target in cargo's JSON messages (one per line).
pub fn test_executable(cargo_json: &str, target_name: &str) -> Option<PathBuf> {
    cargo_json.lines().find_map(|line| {
        let message: serde_json::Value = serde_json::from_str(line).ok()?;
        if message["reason"] != "compiler-artifact" || message["target"]["name"] != target_name {
            return None;
        }
        message["executable"].as_str().map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_triple_from_rustc_vv() {
        let text = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\n\
                    host: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n";
        assert_eq!(parse_host_triple(text).as_deref(), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(parse_host_triple("rustc 1.0\nbinary: rustc\n"), None);
    }

    #[test]
    fn triple_to_env_var() {
        assert_eq!(
            rustflags_var("x86_64-unknown-linux-gnu"),
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS"
        );
        assert_eq!(rustflags_var("thumbv7em-none-eabihf"), "CARGO_TARGET_THUMBV7EM_NONE_EABIHF_RUSTFLAGS");
        assert_eq!(
            rustflags_var("x86_64-unknown-linux-gnu.json"),
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_JSON_RUSTFLAGS"
        );
    }

    #[test]
    fn step_numbers() {
        assert_eq!(step_number("03-mnt"), Some(3));
        assert_eq!(step_number("10-cgroups"), Some(10));
        assert_eq!(step_number("README.md"), None);
        assert_eq!(step_number("03-"), None);
        assert_eq!(step_number("x-mnt"), None);
    }

    #[test]
    fn finds_test_executable_in_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"harness","kind":["lib"]},"executable":null}
{"reason":"compiler-message","message":{}}
{"reason":"compiler-artifact","target":{"name":"steps","kind":["test"]},"profile":{"test":true},"executable":"/w/target/debug/deps/steps-0123abcd"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executable(json, "steps"),
            Some(PathBuf::from("/w/target/debug/deps/steps-0123abcd"))
        );
        assert_eq!(test_executable(json, "other"), None);
        // A fresh build of a library has no executable.
        assert_eq!(test_executable(json, "harness"), None);
        assert_eq!(test_executable("not json\n", "steps"), None);
    }
}
