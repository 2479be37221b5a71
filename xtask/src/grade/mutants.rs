//! Mutants: planted wrong solutions that the grader must catch.
//!
//! `solutions/NN-name/mutants/NAME.mutant` is the solution with one common
//! mistake a learner makes, as a few find/replace edits of its marked
//! regions. The `exercises` tier builds each one (a scratch copy of the
//! solution, never the solution itself) and grades it with the exercise's
//! own checks: it must lose points, and the first failure must say what is
//! wrong in the words the mutant expects. The format (see TEACHING.md):
//!
//! ```text
//! mistake: the mistake, in words
//! expect: what the first failure says; and this too
//! when: cgroup v1        (optional: only on such a machine; or cgroup v2)
//! # any comment lines
//! --- src/rootfs.rs
//! <<<
//!     the exact lines of the solution to find (once, inside a marked region)
//! ===
//!     what to put there instead (may be empty)
//! >>>
//! ```
//!
//! More `<<<` ... `>>>` blocks may follow, and more `--- FILE` lines.
//! solutions/ is not in the student handout (this file is: no mutant's text
//! belongs here), and `exercises::compared_files`
//! only compares Cargo.toml and src/, so the mutants stay out of sight.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::exercises::{self, Crate};

/// One planted mistake.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutant {
    /// "03-mnt": the exercise.
    pub exercise: String,
    /// "tmp-without-nosuid-nodev": the file's stem.
    pub name: String,
    /// The mistake, in words.
    pub mistake: String,
    /// What the first failure's message must say (each, ignoring case).
    pub expect: Vec<String>,
    /// Where it applies: None everywhere, or "cgroup v1" / "cgroup v2" (a
    /// mistake in code that only one cgroup version runs).
    pub when: Option<String>,
    pub edits: Vec<Edit>,
}

/// Replace `find` (once) by `replace` in `file` (relative to the crate).
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    pub file: PathBuf,
    pub find: String,
    pub replace: String,
}

impl Mutant {
    /// The scratch crate's package: `mutant-03-mnt-tmp-without-nosuid-nodev`.
    pub fn package(&self) -> String {
        format!("mutant-{}-{}", self.exercise, self.name)
    }

    /// Its binary: `03-mnt-mutant-tmp-without-nosuid-nodev`.
    pub fn binary(&self) -> String {
        format!("{}-mutant-{}", self.exercise, self.name)
    }

    /// "03-mnt/tmp-without-nosuid-nodev".
    pub fn label(&self) -> String {
        format!("{}/{}", self.exercise, self.name)
    }

    /// Whether its mistake is reached on this machine (see `when`).
    pub fn applies_here(&self) -> bool {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        match self.when.as_deref() {
            Some("cgroup v1") => !v2,
            Some("cgroup v2") => v2,
            _ => true,
        }
    }
}

/// The values `when:` takes.
const WHEN: [&str; 2] = ["cgroup v1", "cgroup v2"];

/// Parses a `.mutant` file's text.
pub fn parse(exercise: &str, name: &str, text: &str) -> Result<Mutant> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let header = |line: Option<(usize, &str)>, key: &str| -> Result<String> {
        match line.and_then(|(_, l)| l.strip_prefix(key)) {
            Some(value) if !value.trim().is_empty() => Ok(value.trim().to_string()),
            _ => bail!("line {}: expected `{key} ...`", line.map_or(0, |(n, _)| n)),
        }
    };
    let mistake = header(lines.next(), "mistake:")?;
    let expect = header(lines.next(), "expect:")?;
    let expect = expect.split(';').map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).collect();
    let (mut file, mut edits, mut when) = (None::<PathBuf>, Vec::new(), None);
    while let Some((number, line)) = lines.next() {
        if let Some(value) = line.strip_prefix("when:") {
            if !(edits.is_empty() && file.is_none() && when.is_none() && WHEN.contains(&value.trim())) {
                bail!("line {number}: `when:` comes once, before the edits, and is one of {WHEN:?}");
            }
            when = Some(value.trim().to_string());
        } else if let Some(path) = line.strip_prefix("--- ") {
            file = Some(PathBuf::from(path.trim()));
        } else if line == "<<<" {
            let Some(file) = file.clone() else { bail!("line {number}: `<<<` before any `--- FILE` line") };
            let (mut find, mut replace, mut in_replace) = (Vec::new(), Vec::new(), false);
            loop {
                match lines.next() {
                    None => bail!("line {number}: this `<<<` is never closed by `>>>`"),
                    Some((_, "===")) if !in_replace => in_replace = true,
                    Some((n, "===")) => bail!("line {n}: a second `===` in the block of line {number}"),
                    Some((n, ">>>")) if !in_replace => bail!("line {n}: `>>>` before `===`"),
                    Some((_, ">>>")) => break,
                    Some((_, text)) if in_replace => replace.push(text),
                    Some((_, text)) => find.push(text),
                }
            }
            if find.is_empty() {
                bail!("line {number}: nothing to find");
            }
            let joined = |lines: Vec<&str>| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
            edits.push(Edit { file, find: joined(find), replace: joined(replace) });
        } else if !(line.trim().is_empty() || line.starts_with('#')) {
            bail!("line {number}: expected `--- FILE`, `<<<`, a `#` comment or nothing, not {line:?}");
        }
    }
    if edits.is_empty() {
        bail!("no `<<<` ... `===` ... `>>>` edit");
    }
    Ok(Mutant { exercise: exercise.to_string(), name: name.to_string(), mistake, expect, when, edits })
}

/// The mutants of a solution, sorted by name; [] without a mutants/ folder.
pub fn list(solution: &Crate) -> Result<Vec<Mutant>> {
    let dir = solution.dir.join("mutants");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut mutants = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".mutant"))
        else {
            bail!("{}: only NAME.mutant files belong in {}", path.display(), dir.display());
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        mutants.push(parse(&solution.name, name, &text).with_context(|| format!("{}", path.display()))?);
    }
    mutants.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(mutants)
}

/// `text` with `edit` applied: its `find` must occur exactly once, inside a marked region.
pub fn apply(text: &str, edit: &Edit) -> Result<String> {
    let found: Vec<usize> = text.match_indices(&edit.find).map(|(at, _)| at).collect();
    let &[at] = found.as_slice() else {
        bail!(
            "{}: the text to find occurs {} times, not once (has the solution changed?):\n{}",
            edit.file.display(),
            found.len(),
            edit.find
        );
    };
    if !(at == 0 || text[..at].ends_with('\n')) {
        bail!("{}: the text to find starts in the middle of a line: give whole lines", edit.file.display());
    }
    let first = text[..at].lines().count() + 1;
    let last = first + edit.find.lines().count() - 1;
    let regions = exercises::regions(text)?;
    if !regions.iter().any(|r| r.begin < first && last < r.end) {
        bail!(
            "{}: lines {first} to {last} are not inside a marked region: a mutant changes only what the learner writes",
            edit.file.display()
        );
    }
    Ok(format!("{}{}{}", &text[..at], edit.replace, &text[at + edit.find.len()..]))
}

/// Writes the scratch workspace `dir`: one crate per mutant (the solution's
/// Cargo.toml and src/, the edits applied, renamed), its own `[workspace]`,
/// and the workspace's Cargo.lock so that it builds with the same versions.
/// A file that is already there as it should be is left alone (cargo then
/// need not build that mutant again); whatever else is there is removed.
pub fn prepare(dir: &Path, solutions: &[Crate], mutants: &[Mutant]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let keep: Vec<String> = mutants.iter().map(|m| m.package()).collect();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kept = keep.contains(&name) && entry.file_type()?.is_dir();
        if !kept && !["Cargo.toml", "Cargo.lock"].contains(&name.as_str()) {
            remove(&entry.path())?;
        }
    }
    let mut members = Vec::new();
    for mutant in mutants {
        let solution = solutions.iter().find(|s| s.name == mutant.exercise).context("its solution")?;
        let krate = dir.join(mutant.package());
        let files = exercises::compared_files(&solution.dir)?;
        if krate.is_dir() {
            for file in exercises::compared_files(&krate)?.iter().filter(|f| !files.contains(f)) {
                remove(&krate.join(file))?;
            }
        }
        for file in files {
            let mut text = std::fs::read_to_string(solution.dir.join(&file))?;
            if file == Path::new("Cargo.toml") {
                text = text
                    .replace(&format!("\"{}\"", solution.package()), &format!("\"{}\"", mutant.package()))
                    .replace(&format!("\"{}-solution\"", solution.name), &format!("\"{}\"", mutant.binary()));
            }
            for edit in mutant.edits.iter().filter(|e| e.file == file) {
                text = apply(&text, edit).with_context(|| format!("mutant {}", mutant.label()))?;
            }
            write_if_changed(&krate.join(&file), &text)?;
        }
        for edit in &mutant.edits {
            if !krate.join(&edit.file).is_file() {
                bail!("mutant {}: the solution has no {}", mutant.label(), edit.file.display());
            }
        }
        members.push(format!("{:?}", mutant.package()));
    }
    let manifest = format!(
        "# Written by `cargo xtask test --tier exercises`: the mutants of solutions/*/mutants.\n\
         [workspace]\nresolver = \"2\"\nmembers = [{}]\n",
        members.join(", ")
    );
    write_if_changed(&dir.join("Cargo.toml"), &manifest)?;
    std::fs::copy(crate::workspace_root().join("Cargo.lock"), dir.join("Cargo.lock"))
        .context("copy Cargo.lock")?;
    Ok(())
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().context("a file has a parent")?)?;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn remove(path: &Path) -> Result<()> {
    let removed = match path.is_dir() {
        true => std::fs::remove_dir_all(path),
        false => std::fs::remove_file(path),
    };
    removed.with_context(|| format!("remove {}", path.display()))
}

/// What a mutant's grade says about it: None when it was caught as it
/// should be, else the problem. `first` is its first failed test.
pub fn verdict(mutant: &Mutant, entry: &serde_json::Value) -> Option<String> {
    let tests = entry["tests"].as_array().cloned().unwrap_or_default();
    let Some(first) = tests.iter().find(|t| t["status"] != "pass") else {
        return Some(format!(
            "mutant {} ({}) scores {}/{}: no check catches it",
            mutant.label(),
            mutant.mistake,
            entry["score"],
            entry["max_score"]
        ));
    };
    let message = first["message"].as_str().unwrap_or("").to_lowercase();
    let missing: Vec<&String> =
        mutant.expect.iter().filter(|w| !message.contains(&w.to_lowercase())).collect();
    match missing.is_empty() {
        true => None,
        false => Some(format!(
            "mutant {} ({}) fails {}, but its message does not say {}: {}",
            mutant.label(),
            mutant.mistake,
            first["name"].as_str().unwrap_or("?"),
            missing.iter().map(|w| format!("{w:?}")).collect::<Vec<_>>().join(", "),
            first["message"].as_str().unwrap_or("").lines().next().unwrap_or("")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MUTANT: &str = "mistake: forgets the flag\nexpect: flag; Namespace\n# a comment\n\
        --- src/a.rs\n<<<\n    yes();\n===\n    no();\n>>>\n<<<\n    two();\n===\n>>>\n";

    #[test]
    fn a_mutant_file_is_parsed() {
        let mutant = parse("01-uts", "no-flag", MUTANT).unwrap();
        assert_eq!(mutant.mistake, "forgets the flag");
        assert_eq!(mutant.expect, ["flag", "Namespace"]);
        assert_eq!(
            mutant.edits,
            [
                Edit { file: "src/a.rs".into(), find: "    yes();\n".into(), replace: "    no();\n".into() },
                Edit { file: "src/a.rs".into(), find: "    two();\n".into(), replace: String::new() },
            ]
        );
        assert_eq!(mutant.package(), "mutant-01-uts-no-flag");
        assert_eq!(mutant.when, None);
        assert!(mutant.applies_here());
        let v1 = parse("06-cgroups", "m", &MUTANT.replace("# a comment", "when: cgroup v1")).unwrap();
        assert_eq!(v1.when.as_deref(), Some("cgroup v1"));
        assert_eq!(mutant.binary(), "01-uts-mutant-no-flag");
    }

    #[test]
    fn bad_mutant_files_are_refused() {
        for text in [
            "",
            "mistake: x\n",
            "expect: x\nmistake: y\n",
            "mistake: x\nexpect: y\n",
            "mistake: x\nexpect: y\n<<<\na\n===\nb\n>>>\n",
            "mistake: x\nexpect: y\n--- f\n<<<\na\n===\nb\n",
            "mistake: x\nexpect: y\n--- f\n<<<\n===\nb\n>>>\n",
            "mistake: x\nexpect: y\n--- f\nstray\n",
            "mistake: x\nexpect: y\nwhen: on Tuesdays\n--- f\n<<<\na\n===\n>>>\n",
            "mistake: x\nexpect: y\n--- f\n<<<\na\n===\n>>>\nwhen: cgroup v1\n",
        ] {
            assert!(parse("01-uts", "m", text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn edits_apply_once_inside_a_region() {
        let text = "fn a() { yes(); }\n// EXERCISE: b\n    yes();\n// END EXERCISE\n";
        let edit = |find: &str| Edit { file: "f".into(), find: find.into(), replace: "    no();\n".into() };
        assert_eq!(
            apply(text, &edit("    yes();\n")).unwrap(),
            "fn a() { yes(); }\n// EXERCISE: b\n    no();\n// END EXERCISE\n"
        );
        assert!(apply(text, &edit("fn a() { yes(); }\n")).is_err(), "outside the region");
        assert!(apply(text, &edit("yes();")).is_err(), "found twice");
        assert!(apply(text, &edit("maybe();\n")).is_err(), "not found");
        assert!(apply(text, &edit("es();\n")).is_err(), "not a whole line");
    }

    #[test]
    fn the_scratch_workspace_holds_each_mutant_renamed() {
        let root = std::env::temp_dir().join(format!("xtask-mutants-test-{}", std::process::id()));
        let solution = Crate {
            kind: crate::exercises::Kind::Solution,
            name: "01-uts".into(),
            number: 1,
            dir: root.join("solutions/01-uts"),
        };
        std::fs::create_dir_all(solution.dir.join("src")).unwrap();
        let manifest = "[package]\nname = \"solution-01-uts\"\n\n[[bin]]\nname = \"01-uts-solution\"\n";
        std::fs::write(solution.dir.join("Cargo.toml"), manifest).unwrap();
        let code = "fn main() {\n    // EXERCISE: x\n    yes();\n    // END EXERCISE\n}\n";
        std::fs::write(solution.dir.join("src/main.rs"), code).unwrap();
        let text = "mistake: m\nexpect: e\n--- src/main.rs\n<<<\n    yes();\n===\n    no();\n>>>\n";
        let mutant = parse("01-uts", "no", text).unwrap();
        let scratch = root.join("scratch");
        std::fs::create_dir_all(scratch.join("mutant-01-uts-gone/src")).unwrap();
        prepare(&scratch, std::slice::from_ref(&solution), std::slice::from_ref(&mutant)).unwrap();
        let krate = scratch.join("mutant-01-uts-no");
        let read = |p: &str| std::fs::read_to_string(krate.join(p)).unwrap();
        assert_eq!(
            read("Cargo.toml"),
            manifest
                .replace("solution-01-uts", "mutant-01-uts-no")
                .replace("01-uts-solution", "01-uts-mutant-no")
        );
        assert_eq!(read("src/main.rs"), code.replace("yes", "no"));
        assert!(!scratch.join("mutant-01-uts-gone").exists(), "a mutant that is gone is removed");
        let workspace = std::fs::read_to_string(scratch.join("Cargo.toml")).unwrap();
        assert!(workspace.contains("[workspace]") && workspace.contains("members = [\"mutant-01-uts-no\"]"));
        assert!(scratch.join("Cargo.lock").is_file());
        // Again: what is already right is not written (cargo would build it again).
        let modified = || std::fs::metadata(krate.join("src/main.rs")).unwrap().modified().unwrap();
        let before = modified();
        std::thread::sleep(std::time::Duration::from_millis(20));
        prepare(&scratch, std::slice::from_ref(&solution), std::slice::from_ref(&mutant)).unwrap();
        assert_eq!(modified(), before);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_mutant_must_fail_with_its_words() {
        let mutant = parse("01-uts", "no-flag", MUTANT).unwrap();
        let entry = |status: &str, message: &str| {
            serde_json::json!({"score": 3, "max_score": 10, "tests": [
                {"name": "a", "status": "pass", "message": ""},
                {"name": "b", "status": status, "message": message},
            ]})
        };
        assert_eq!(verdict(&mutant, &entry("fail", "no FLAG in the namespace")), None);
        assert!(verdict(&mutant, &entry("fail", "no flag")).unwrap().contains("\"Namespace\""));
        assert!(verdict(&mutant, &entry("pass", "")).unwrap().contains("no check catches it"));
    }
}
