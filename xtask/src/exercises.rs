//! The exercises and their solutions on disk, and the marked regions that
//! are all that may differ between the two.
//!
//! `exercises/NN-name` is step NN's crate plus the exercise: the flag wired,
//! and the code the learner writes left as `todo!()` inside regions marked
//!
//! ```text
//! // EXERCISE: what to write here
//! ...
//! // END EXERCISE
//! ```
//!
//! `solutions/NN-name` is the same crate with the regions filled in. Apart
//! from the package and binary names in Cargo.toml, the two must be the same
//! text once the inside of every region is cut out (the marker lines stay).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{artifacts::step_number, workspace_root};

/// The line that opens a region (followed by what to write there).
pub const BEGIN: &str = "// EXERCISE:";
/// The line that closes it.
pub const END: &str = "// END EXERCISE";

/// Which of the two copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exercise,
    Solution,
}

impl Kind {
    /// "exercise" or "solution": the package prefix and the binary suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exercise => "exercise",
            Kind::Solution => "solution",
        }
    }

    /// The folder that holds them: `exercises/` or `solutions/`.
    pub fn dir(self) -> PathBuf {
        workspace_root().join(format!("{}s", self.as_str()))
    }
}

/// One exercise (or solution) crate.
#[derive(Clone, Debug)]
pub struct Crate {
    pub kind: Kind,
    /// "01-uts": the step it extends.
    pub name: String,
    pub number: u32,
    pub dir: PathBuf,
}

impl Crate {
    /// The package: `exercise-01-uts`.
    pub fn package(&self) -> String {
        format!("{}-{}", self.kind.as_str(), self.name)
    }
}

/// The crates in `exercises/` or `solutions/`, in order; [] if the folder is missing.
pub fn list(kind: Kind) -> Result<Vec<Crate>> {
    let dir = kind.dir();
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let (true, Some(number)) = (entry.file_type()?.is_dir(), step_number(&name)) {
            crates.push(Crate { kind, name, number, dir: entry.path() });
        }
    }
    crates.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(crates)
}

/// The crates named by `wanted` ("01", "1" or "01-uts"), all of them if it is empty.
pub fn select(kind: Kind, wanted: &[String]) -> Result<Vec<Crate>> {
    let all = list(kind)?;
    if all.is_empty() {
        match kind {
            Kind::Solution => {
                bail!("there is no solutions/ folder here (a student copy, made by `cargo xtask handout`?)")
            }
            Kind::Exercise => bail!("there is no exercises/ folder here"),
        }
    }
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    let matches = |c: &Crate, w: &str| w == c.name || w.parse::<u32>().ok() == Some(c.number);
    for w in wanted {
        if !all.iter().any(|c| matches(c, w)) {
            bail!("no {} {w:?}; there are: {}", kind.as_str(), names.join(", "));
        }
    }
    Ok(all.into_iter().filter(|c| wanted.is_empty() || wanted.iter().any(|w| matches(c, w))).collect())
}

/// One marked region: the line numbers (1-based) of its markers, and what is inside.
#[derive(Debug, PartialEq)]
pub struct Region {
    pub begin: usize,
    pub end: usize,
    pub inside: String,
}

fn marker(line: &str) -> Option<&'static str> {
    let line = line.trim();
    if line.starts_with(BEGIN) {
        Some(BEGIN)
    } else if line == END {
        Some(END)
    } else {
        None
    }
}

/// The regions of a file; an error for a marker without its partner.
pub fn regions(text: &str) -> Result<Vec<Region>> {
    let mut regions = Vec::new();
    let mut open: Option<(usize, Vec<&str>)> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        match (marker(line), open.take()) {
            (Some(BEGIN), None) => open = Some((number, Vec::new())),
            (Some(BEGIN), Some((begin, _))) => {
                bail!("line {number}: `{BEGIN}` inside the region opened on line {begin}")
            }
            (Some(_), None) => bail!("line {number}: `{END}` without a `{BEGIN}` before it"),
            (Some(_), Some((begin, inside))) => {
                regions.push(Region { begin, end: number, inside: inside.join("\n") })
            }
            (None, Some((begin, mut inside))) => {
                inside.push(line);
                open = Some((begin, inside));
            }
            (None, None) => {}
        }
    }
    if let Some((begin, _)) = open {
        bail!("line {begin}: `{BEGIN}` is never closed by `{END}`");
    }
    Ok(regions)
}

/// The text with the inside of every region cut out (the marker lines stay).
pub fn outside_regions(text: &str) -> Result<Vec<String>> {
    let regions = regions(text)?;
    let inside = |n: usize| regions.iter().any(|r| r.begin < n && n < r.end);
    let lines = text.lines().enumerate().filter(|(i, _)| !inside(i + 1));
    Ok(lines.map(|(_, line)| line.to_string()).collect())
}

/// Every file of a crate that is compared: Cargo.toml and all of src/, relative paths, sorted.
pub fn compared_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![PathBuf::from("Cargo.toml")];
    let mut pending = vec![PathBuf::from("src")];
    while let Some(rel) = pending.pop() {
        let entries =
            std::fs::read_dir(dir.join(&rel)).with_context(|| format!("list {}", dir.join(&rel).display()));
        for entry in entries? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What differs between an exercise and its solution outside the marked
/// regions, in plain words; empty when they match. Also checks that the
/// exercise leaves something to do (a `todo!()` in a region) and the
/// solution does not.
pub fn differences(exercise: &Crate, solution: &Crate) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let (ex_files, sol_files) = (compared_files(&exercise.dir)?, compared_files(&solution.dir)?);
    for file in sol_files.iter().filter(|f| !ex_files.contains(f)) {
        problems.push(format!("{} has {}, the exercise does not", solution.name, file.display()));
    }
    let mut todos = 0;
    for file in &ex_files {
        let show = |kind: Kind| format!("{}s/{}/{}", kind.as_str(), exercise.name, file.display());
        if !sol_files.contains(file) {
            problems.push(format!("{} has no counterpart in solutions/", show(Kind::Exercise)));
            continue;
        }
        let read = |dir: &Path| {
            std::fs::read_to_string(dir.join(file))
                .with_context(|| format!("read {}", dir.join(file).display()))
        };
        let (mut ex_text, sol_text) = (read(&exercise.dir)?, read(&solution.dir)?);
        if file == Path::new("Cargo.toml") {
            // The names differ, and only they: exercise-01-uts / 01-uts-exercise.
            ex_text = ex_text.replace(&exercise.package(), &solution.package());
            let (ex_bin, sol_bin) =
                (format!("{}-exercise", exercise.name), format!("{}-solution", exercise.name));
            ex_text = ex_text.replace(&ex_bin, &sol_bin);
        }
        let ex_regions = regions(&ex_text).with_context(|| show(Kind::Exercise))?;
        let sol_regions = regions(&sol_text).with_context(|| show(Kind::Solution))?;
        todos += ex_regions.iter().filter(|r| r.inside.contains("todo!(")).count();
        if let Some(region) = sol_regions.iter().find(|r| r.inside.contains("todo!(")) {
            problems.push(format!(
                "{}:{}: the solution still has a todo!()",
                show(Kind::Solution),
                region.begin
            ));
        }
        if ex_regions.len() != sol_regions.len() {
            problems.push(format!(
                "{} has {} marked regions, its solution {}",
                show(Kind::Exercise),
                ex_regions.len(),
                sol_regions.len()
            ));
            continue;
        }
        let (ex_out, sol_out) = (outside_regions(&ex_text)?, outside_regions(&sol_text)?);
        if let Some(line) = first_difference(&ex_out, &sol_out) {
            problems.push(format!(
                "{} and its solution differ outside the marked regions, at this line (regions cut out):\n  exercise: {}\n  solution: {}",
                show(Kind::Exercise),
                ex_out.get(line).map_or("(end of file)", |l| l.as_str()),
                sol_out.get(line).map_or("(end of file)", |l| l.as_str()),
            ));
        }
    }
    if todos == 0 {
        problems.push(format!(
            "exercises/{} has no todo!() inside a marked region: nothing to do",
            exercise.name
        ));
    }
    Ok(problems)
}

fn first_difference(a: &[String], b: &[String]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
}

/// The hints beside an exercise (its HINTS.md), one per `## ` heading.
pub fn hints(exercise: &Crate) -> Result<Vec<String>> {
    let path = exercise.dir.join("HINTS.md");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    Ok(split_hints(&text))
}

/// `## Heading` sections of a markdown text, each with its heading.
pub fn split_hints(text: &str) -> Vec<String> {
    let mut hints: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("## ") {
            hints.push(String::new());
        }
        if let Some(hint) = hints.last_mut() {
            hint.push_str(line);
            hint.push('\n');
        }
    }
    hints.iter().map(|h| h.trim_end().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXERCISE: &str =
        "fn a() {}\n// EXERCISE: write b\nfn b() { todo!() }\n// END EXERCISE\nfn c() {}\n";
    const SOLUTION: &str =
        "fn a() {}\n// EXERCISE: write b\nfn b() {\n    42;\n}\n// END EXERCISE\nfn c() {}\n";

    #[test]
    fn regions_are_found_and_cut() {
        let found = regions(SOLUTION).unwrap();
        assert_eq!(found, [Region { begin: 2, end: 6, inside: "fn b() {\n    42;\n}".into() }]);
        assert_eq!(outside_regions(EXERCISE).unwrap(), outside_regions(SOLUTION).unwrap());
        assert_eq!(
            outside_regions(SOLUTION).unwrap(),
            ["fn a() {}", "// EXERCISE: write b", "// END EXERCISE", "fn c() {}"]
        );
    }

    #[test]
    fn indented_markers_count() {
        let text = "fn b() {\n    // EXERCISE: x\n    todo!()\n    // END EXERCISE\n}\n";
        assert_eq!(regions(text).unwrap().len(), 1);
    }

    #[test]
    fn unbalanced_markers_are_errors() {
        assert!(regions("// EXERCISE: a\n").is_err());
        assert!(regions("// END EXERCISE\n").is_err());
        assert!(regions("// EXERCISE: a\n// EXERCISE: b\n// END EXERCISE\n").is_err());
    }

    #[test]
    fn a_change_outside_a_region_is_found() {
        let changed = SOLUTION.replace("fn c() {}", "fn c() { 1; }");
        let (a, b) = (outside_regions(EXERCISE).unwrap(), outside_regions(&changed).unwrap());
        assert_eq!(first_difference(&a, &b), Some(3));
    }

    #[test]
    fn hints_split_on_level_two_headings() {
        let text = "# Hints\n\nintro\n\n## Hint 1\n\nfirst\n\n## Hint 2\nsecond\n";
        assert_eq!(split_hints(text), ["## Hint 1\n\nfirst", "## Hint 2\nsecond"]);
    }
}
