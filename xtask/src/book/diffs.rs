//! "What changed since the previous step": one generated markdown file per step
//! (`book/src/generated/NN-name.md`), made from the code with `diff -u`, never by hand.
//! A chapter includes it with `{{#include generated/NN-name.md}}`.
//!
//! The files are committed, so that a plain `mdbook serve book` works; the book tier
//! fails when one is stale, and `cargo xtask book` rewrites them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::book_dir;
use crate::{artifacts, workspace_root};

/// Files in the same directory that other tasks write: the benchmark's
/// (`cargo xtask bench --publish`) and the reliability figures (`figures.rs`).
const OTHER_GENERATED: [&str; 4] = ["bench.md", "bench-intro.md", "bench.svg", "reliability.md"];

fn generated_dir() -> PathBuf {
    book_dir().join("src").join("generated")
}

/// Every generated file as it should be: (file name, contents).
fn expected() -> Result<Vec<(String, String)>> {
    let steps = artifacts::steps()?;
    let mut files = Vec::new();
    for pair in steps.windows(2) {
        let (old, new) = (&pair[0].name, &pair[1].name);
        files.push((format!("{new}.md"), render(old, new)?));
    }
    Ok(files)
}

/// What `stale` finds: every file as it should be, which of them differ, which are left over.
struct Stale {
    wanted: Vec<(String, String)>,
    changed: Vec<String>,
    extra: Vec<PathBuf>,
}

/// The generated files that are missing, different, or left over from a removed step.
fn stale() -> Result<Stale> {
    let wanted = expected()?;
    let dir = generated_dir();
    let mut changed = Vec::new();
    for (name, text) in &wanted {
        if std::fs::read_to_string(dir.join(name)).ok().as_deref() != Some(text.as_str()) {
            changed.push(name.clone());
        }
    }
    let mut extra = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if !wanted.iter().any(|(n, _)| *n == name) && !OTHER_GENERATED.contains(&name.as_str()) {
                extra.push(path);
            }
        }
    }
    Ok(Stale { wanted, changed, extra })
}

/// The tier: fail if any generated file is stale.
pub fn check() -> Result<()> {
    let Stale { changed, extra, .. } = stale()?;
    let mut problems: Vec<String> =
        changed.iter().map(|n| format!("book/src/generated/{n} is out of date")).collect();
    problems.extend(extra.iter().map(|p| format!("{} belongs to no step", p.display())));
    if !problems.is_empty() {
        bail!("{}; run `cargo xtask book` and commit book/src/generated", problems.join("; "));
    }
    Ok(())
}

/// The task: (re)write the generated files; returns how many there are.
pub fn write() -> Result<usize> {
    let Stale { wanted, changed, extra } = stale()?;
    let dir = generated_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    for (name, text) in &wanted {
        if changed.contains(name) {
            std::fs::write(dir.join(name), text).with_context(|| format!("write {name}"))?;
            println!("book: regenerated book/src/generated/{name}");
        }
    }
    for path in extra {
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        println!("book: removed {}", path.display());
    }
    Ok(wanted.len())
}

/// Cargo.toml and everything under src/, relative to the step folder, sorted.
fn step_files(step: &str) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push(path.strip_prefix(root)?.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
    let root = workspace_root().join("steps").join(step);
    let mut files = vec!["Cargo.toml".to_string()];
    walk(&root, &root.join("src"), &mut files)?;
    files.sort();
    Ok(files)
}

/// The markdown for one step: a table of changed files, then the diff.
fn render(old: &str, new: &str) -> Result<String> {
    let (old_files, new_files) = (step_files(old)?, step_files(new)?);
    let mut all: Vec<&String> = old_files.iter().chain(&new_files).collect();
    all.sort();
    all.dedup();

    let mut table = String::new();
    let mut diff = String::new();
    for file in all {
        let old_path = old_files.contains(file).then(|| format!("steps/{old}/{file}"));
        let new_path = new_files.contains(file).then(|| format!("steps/{new}/{file}"));
        let text = match (&old_path, &new_path) {
            // Every step renames its package: only what else changed is news.
            (Some(old_path), Some(new_path)) if file == "Cargo.toml" => {
                let old_text = std::fs::read_to_string(workspace_root().join(old_path))
                    .with_context(|| format!("read {old_path}"))?;
                unified_diff_renamed(old_path, &old_text.replace(old, new), new_path)?
            }
            _ => unified_diff(old_path.as_deref(), new_path.as_deref())?,
        };
        if text.is_empty() {
            continue;
        }
        let added = text.lines().filter(|l| l.starts_with('+') && !l.starts_with("+++")).count();
        let removed = text.lines().filter(|l| l.starts_with('-') && !l.starts_with("---")).count();
        let change = match (&old_path, &new_path) {
            (None, _) => format!("new, {added} lines"),
            (_, None) => format!("removed, {removed} lines"),
            _ => format!("{added} lines added, {removed} removed"),
        };
        table.push_str(&format!("| `{file}` | {change} |\n"));
        diff.push_str(&text);
    }
    // A fence longer than any run of backticks in the code.
    let longest = diff.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    // The diff is long: folded, so that the chapter's exercise stays in sight.
    Ok(format!(
        "<!-- Generated by `cargo xtask book` from steps/{old} and steps/{new}: do not edit. -->\n\n\
         `diff -ru steps/{old} steps/{new}` shows the same changes (and the package's new \
         name in `Cargo.toml`, left out here).\n\n\
         | file in steps/{new} | change |\n|---|---|\n{table}\n\
         <details>\n<summary>The whole diff</summary>\n\n\
         {fence}diff\n{diff}{fence}\n\n</details>\n"
    ))
}

/// `diff -u` of a text (an old file as if it had the new step's name) and a file.
fn unified_diff_renamed(old_label: &str, old_text: &str, new: &str) -> Result<String> {
    use std::io::Write;
    let mut cmd = Command::new("diff");
    cmd.arg("-u").current_dir(workspace_root());
    cmd.args(["--label", old_label, "--label", new, "-", new]);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("could not run `diff` (diffutils)")?;
    child.stdin.take().context("diff's stdin")?.write_all(old_text.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.code() == Some(2) || out.status.code().is_none() {
        bail!("diff {old_label:?} {new:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `diff -u` of two files (None: the file does not exist on that side), with stable labels.
fn unified_diff(old: Option<&str>, new: Option<&str>) -> Result<String> {
    let root = workspace_root();
    let mut cmd = Command::new("diff");
    cmd.arg("-u").current_dir(&root);
    cmd.args(["--label", old.unwrap_or("/dev/null"), "--label", new.unwrap_or("/dev/null")]);
    cmd.arg(old.unwrap_or("/dev/null")).arg(new.unwrap_or("/dev/null"));
    let out = cmd.output().context("could not run `diff` (diffutils)")?;
    // diff: 0 = same, 1 = different, 2 = trouble.
    if out.status.code() == Some(2) || out.status.code().is_none() {
        bail!("diff {old:?} {new:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_diff_of_two_real_steps() {
        let text = render("01-uts", "02-pid").unwrap();
        assert!(text.starts_with("<!-- Generated by `cargo xtask book` from steps/01-uts and steps/02-pid"));
        assert!(text.contains("| `src/pid.rs` | new, "));
        assert!(text.contains("\n--- /dev/null\n+++ steps/02-pid/src/pid.rs\n"));
        assert!(text.contains("\n+    let flags = CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID;\n"));
        // Files that did not change are not listed.
        assert!(!text.contains("`src/uts.rs`"));
        assert!(text.trim_end().ends_with("```\n\n</details>"));
        // The package's rename is no news: Cargo.toml is left out.
        assert!(!text.contains("| `Cargo.toml` |"));
        // A new dependency is: 07 adds tar.
        let text = render("06-cgroups", "07-overlay").unwrap();
        assert!(text.contains("| `Cargo.toml` | "));
        assert!(text.contains("\n+tar = "));
        assert!(!text.contains("-name = "));
    }
}
