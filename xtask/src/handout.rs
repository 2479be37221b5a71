//! The `handout` task: the copy of the workshop that students get.
//!
//! It is the repository without `solutions/`. Deleting that folder by hand
//! is not enough: the workspace's `members` names `solutions/*`, and cargo
//! refuses a workspace whose member is missing. So the copy gets a Cargo.toml
//! without that member, and a Cargo.lock without the solutions' packages.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{command_line, display_path, output, run as run_cmd, target_dir, workspace_root};

/// The member that the handout leaves out, as Cargo.toml spells it.
const SOLUTIONS_MEMBER: &str = "\"solutions/*\"";

/// The `handout` task.
pub fn run(dir: &Path) -> Result<()> {
    let files = write(dir)?;
    println!("wrote {files} files to {} (the workshop without solutions/)", dir.display());
    println!("students grade their work there with: cargo xtask grade");
    Ok(())
}

/// Writes the student copy into `dir` (which must not exist, or be empty);
/// returns how many files it has.
pub fn write(dir: &Path) -> Result<usize> {
    if dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(false) {
        bail!("{} is not empty: give a new directory", dir.display());
    }
    let root = workspace_root();
    let dir = std::path::absolute(dir)?;
    if dir.starts_with(&root) && !dir.starts_with(target_dir()) {
        bail!("{} is inside the workspace: cargo would take it for part of it; use a directory outside (or in target/)", dir.display());
    }
    let files = handed_out(&files_of(&root)?);
    for file in &files {
        let (from, to) = (root.join(file), dir.join(file));
        std::fs::create_dir_all(to.parent().unwrap())?;
        // fs::copy keeps the permissions, so scripts stay executable.
        std::fs::copy(&from, &to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    }
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)?;
    std::fs::write(&manifest, without_solutions(&text)?)?;
    // Cargo would drop the solutions' packages from Cargo.lock itself, but
    // only once it resolves the workspace, which may want the network.
    let lock = dir.join("Cargo.lock");
    if lock.is_file() {
        let text = std::fs::read_to_string(&lock)?;
        std::fs::write(&lock, lock_without_solutions(&text))?;
    }
    Ok(files.len())
}

/// The workspace's files: what git tracks or would track (not what it
/// ignores, like target/), or, outside a git checkout, every file but target/.
fn files_of(root: &Path) -> Result<Vec<PathBuf>> {
    if root.join(".git").exists() {
        let mut git = Command::new("git");
        git.current_dir(root).args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"]);
        if let Ok(list) = output(&mut git) {
            let files = list.split('\0').filter(|f| !f.is_empty()).map(PathBuf::from);
            // A file deleted but not yet committed is still listed: skip it.
            return Ok(files.filter(|f| root.join(f).is_file()).collect());
        }
    }
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            if path == Path::new("target") || path == Path::new(".git") {
                continue;
            }
            match entry.file_type()?.is_dir() {
                true => pending.push(path),
                false => files.push(path),
            }
        }
    }
    Ok(files)
}

/// The files that a student gets: all but solutions/.
fn handed_out(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut kept: Vec<PathBuf> = files.iter().filter(|f| !f.starts_with("solutions")).cloned().collect();
    kept.sort();
    kept
}

/// The workspace manifest without the solutions' member.
fn without_solutions(manifest: &str) -> Result<String> {
    let mut found = false;
    let lines: Vec<String> = manifest
        .lines()
        .map(|line| {
            if !line.trim_start().starts_with("members") || !line.contains(SOLUTIONS_MEMBER) {
                return line.to_string();
            }
            found = true;
            line.replace(&format!("{SOLUTIONS_MEMBER}, "), "").replace(&format!(", {SOLUTIONS_MEMBER}"), "")
        })
        .collect();
    if !found {
        bail!("Cargo.toml has no `members = [...]` line with {SOLUTIONS_MEMBER}: update handout.rs");
    }
    Ok(lines.join("\n") + "\n")
}

/// Cargo.lock without the `[[package]]` entries of the solutions (nothing depends on them).
fn lock_without_solutions(lock: &str) -> String {
    let mut blocks = lock.split("\n[[package]]\n");
    let mut kept = vec![blocks.next().unwrap_or_default().to_string()];
    kept.extend(blocks.filter(|b| !b.starts_with("name = \"solution-")).map(str::to_string));
    kept.join("\n[[package]]\n")
}

/// A cargo command for another workspace, with a target directory of its own.
fn cargo_in(dir: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dir).env("CARGO_TARGET_DIR", target_dir().join("handout-check/target"));
    cmd
}

/// The tier's check: a fresh handout has no solutions anywhere, and the
/// whole workspace builds in it, with its tidied Cargo.lock as it is (--locked).
pub fn check() -> Result<()> {
    let dir = target_dir().join("handout-check/workshop");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    write(&dir)?;
    println!("wrote the handout to {}", display_path(&dir));
    if dir.join("solutions").exists() {
        bail!("the handout has a solutions/ folder");
    }
    let mut metadata = cargo_in(&dir);
    metadata.args(["metadata", "--offline", "--format-version", "1", "--no-deps"]);
    let json: serde_json::Value = serde_json::from_str(&output(&mut metadata)?)?;
    let packages = json["packages"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    if let Some(name) = names.iter().find(|n| n.starts_with("solution-")) {
        bail!("the handout's workspace still has the package {name}");
    }
    if !names.iter().any(|n| n.starts_with("exercise-")) {
        bail!("the handout's workspace has no exercises");
    }
    let lock = std::fs::read_to_string(dir.join("Cargo.lock"))?;
    if lock.contains("\"solution-") {
        bail!("the handout's Cargo.lock still lists the solutions");
    }
    run_cmd(cargo_in(&dir).args(["check", "--workspace", "--all-targets", "--locked"]))
        .context("the handout does not build")?;
    // And a student can grade there: exercise 01, as shipped, fails with a report.
    let report = dir.join("report.json");
    let mut grade = cargo_in(&dir);
    grade.args(["run", "--quiet", "--locked", "-p", "xtask", "--", "grade", "01", "--report"]).arg(&report);
    eprintln!("$ (in the handout) {}", command_line(&grade));
    let out = grade.output().context("run `cargo xtask grade 01` in the handout")?;
    let report: Option<serde_json::Value> =
        std::fs::read_to_string(&report).ok().and_then(|text| serde_json::from_str(&text).ok());
    let exercise = report.as_ref().map(|r| &r["exercises"][0]);
    let as_expected = exercise.is_some_and(|e| e["exercise"] == "01-uts" && e["score"] == 0);
    if out.status.success() || !as_expected {
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = said.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "`cargo xtask grade 01` in the handout should fail exercise 01-uts with 0 points and a report; \
             it ended with {}:\n{}",
            out.status,
            tail.join("\n")
        );
    }
    println!("grading in the handout works: exercise 01-uts, as shipped, scores 0");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_solutions_member_goes() {
        let manifest = "[workspace]\nmembers = [\"steps/*\", \"exercises/*\", \"solutions/*\", \"probe\"]\n";
        let fixed = without_solutions(manifest).unwrap();
        assert_eq!(fixed, "[workspace]\nmembers = [\"steps/*\", \"exercises/*\", \"probe\"]\n");
        let last = "members = [\"a\", \"solutions/*\"]\n";
        assert_eq!(without_solutions(last).unwrap(), "members = [\"a\"]\n");
        assert!(without_solutions("members = [\"a\"]\n").is_err());
    }

    #[test]
    fn the_lock_loses_the_solutions() {
        let lock = "version = 4\n\n[[package]]\nname = \"anyhow\"\nversion = \"1\"\n\n\
                    [[package]]\nname = \"solution-01-uts\"\nversion = \"0.1.0\"\n\n\
                    [[package]]\nname = \"step-01-uts\"\nversion = \"0.1.0\"\n";
        let expected = "version = 4\n\n[[package]]\nname = \"anyhow\"\nversion = \"1\"\n\n\
                        [[package]]\nname = \"step-01-uts\"\nversion = \"0.1.0\"\n";
        assert_eq!(lock_without_solutions(lock), expected);
    }

    #[test]
    fn solutions_are_left_out() {
        let files: Vec<PathBuf> =
            ["Cargo.toml", "solutions/01-uts/src/main.rs", "exercises/01-uts/src/main.rs", "TEACHING.md"]
                .iter()
                .map(PathBuf::from)
                .collect();
        let kept = handed_out(&files);
        assert_eq!(kept, ["Cargo.toml", "TEACHING.md", "exercises/01-uts/src/main.rs"].map(PathBuf::from));
    }
}
