//! The `grade` and `hint` tasks, and the `exercises` tier's self-check.
//!
//! Grading builds the exercises as the invoking user, then runs the grader
//! (test target `grade` of the harness) as root. The grader knows the checks
//! and their points and prints a JSON report; this side saves it, shows it as
//! a table and fails unless everything passed.

mod mutants;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::exercises::{self, Crate, Kind};
use crate::{
    artifacts, as_root, cargo, command_line, display_path, handout, output, print_table, rootfs,
    run as run_cmd, target_dir, workspace_root,
};

/// A grader run: its report, and the exercises that did not build.
pub struct Graded {
    pub report: Value,
    pub not_built: Vec<String>,
}

/// The `grade` task.
pub fn run(wanted: &[String], kind: Kind, report: Option<PathBuf>, watch: bool) -> Result<()> {
    let report = report.unwrap_or_else(|| target_dir().join("grade/report.json"));
    if !watch {
        return grade_and_show(wanted, kind, &report);
    }
    let crates = exercises::select(kind, wanted)?;
    loop {
        if let Err(err) = grade_and_show(wanted, kind, &report) {
            println!("\n{err:#}");
        }
        let dirs: Vec<String> = crates.iter().map(|c| display_path(&c.dir)).collect();
        println!("\nwatching {} for changes (Ctrl-C to stop)", dirs.join(", "));
        wait_for_change(&crates);
    }
}

fn grade_and_show(wanted: &[String], kind: Kind, report_path: &Path) -> Result<()> {
    let graded = grade(kind, wanted)?;
    if let Some(dir) = report_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&graded.report)?;
    std::fs::write(report_path, text + "\n").with_context(|| format!("write {}", report_path.display()))?;
    let classroom_dir = report_path.parent().unwrap_or(Path::new(".")).join("classroom");
    std::fs::create_dir_all(&classroom_dir)?;
    for exercise in exercise_results(&graded.report) {
        let name = exercise["exercise"].as_str().unwrap_or("unknown");
        let path = classroom_dir.join(format!("{name}.json"));
        let text = serde_json::to_string(&classroom(exercise))?;
        std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    println!();
    show(&graded.report);
    println!("\nreport: {}", display_path(report_path));
    println!("for GitHub Classroom's reporter: {}/NN-name.json", display_path(&classroom_dir));
    if graded.report["status"] != "pass" {
        let failed = exercise_results(&graded.report).filter(|e| e["status"] != "pass").count();
        bail!(
            "{failed} {}(s) did not pass; see above for what was expected and what was seen",
            kind.as_str()
        );
    }
    Ok(())
}

/// The report's exercises.
fn exercise_results(report: &Value) -> impl Iterator<Item = &Value> {
    report["exercises"].as_array().into_iter().flatten()
}

/// The table: one row per exercise, with its first failure; then that failure's first line in full.
fn show(report: &Value) {
    let mut failures = Vec::new();
    let rows: Vec<Vec<String>> = exercise_results(report)
        .map(|e| {
            let name = e["exercise"].as_str().unwrap_or("?").to_string();
            let tests = e["tests"].as_array().cloned().unwrap_or_default();
            let first = tests.iter().find(|t| t["status"] != "pass");
            let failure = first.map_or(String::new(), |t| {
                let message = t["message"].as_str().unwrap_or("").lines().next().unwrap_or("");
                let line = format!("{}: {message}", t["name"].as_str().unwrap_or("?"));
                failures.push(format!("{name}: {line}"));
                shorten(&line, 80)
            });
            let passed = tests.iter().filter(|t| t["status"] == "pass").count();
            let result = match e["status"] == "pass" {
                true => format!("passed ({passed} tests)"),
                false => format!("FAILED ({passed}/{} tests passed)", tests.len()),
            };
            vec![name, format!("{}/{}", e["score"], e["max_score"]), result, failure]
        })
        .collect();
    print_table(&["exercise", "points", "result", "first failure"], &rows);
    println!("total: {}/{} points", report["score"], report["max_score"]);
    if !failures.is_empty() {
        println!("\nfirst failures:\n{}", failures.join("\n"));
    }
}

/// One exercise of the report in the input shape of GitHub Classroom's
/// `autograding-grading-reporter` (what `autograding-command-grader` puts,
/// base64-encoded, in its `result` output). The reporter sends Classroom the
/// sum of the tests' `score`s, but its summaries count passed tests
/// (passed / tests x max_score): so each point is one test here, worth 1
/// (`NAME (2/4)`), and the step checks, worth no points, are left out,
/// unless one failed: then one more test, worth 0, fails and says which.
fn classroom(exercise: &Value) -> Value {
    let all = exercise["tests"].as_array().cloned().unwrap_or_default();
    let command = format!("cargo xtask grade {}", exercise["exercise"].as_str().unwrap_or("?"));
    let first_line = |t: &Value| t["message"].as_str().unwrap_or("").lines().next().unwrap_or("").to_string();
    let mut tests = Vec::new();
    for test in all.iter().filter(|t| t["kind"] == "exercise") {
        let name = test["name"].as_str().unwrap_or("?");
        let points = test["max_score"].as_u64().unwrap_or(0).max(1);
        let passed = test["status"] == "pass";
        for point in 1..=points {
            let label = match points {
                1 => name.to_string(),
                _ => format!("{name} ({point}/{points})"),
            };
            let message = match (passed, point) {
                (true, _) => String::new(),
                (false, 1) => test["message"].as_str().unwrap_or("").to_string(),
                (false, _) => format!("the same failure as {name} (1/{points})"),
            };
            let millis = if point == 1 { test["seconds"].as_f64().unwrap_or(0.0) * 1000.0 } else { 0.0 };
            tests.push(serde_json::json!({
                "name": label,
                "status": if passed { "pass" } else { "fail" },
                "score": if passed && test["max_score"].as_u64().unwrap_or(0) > 0 { 1 } else { 0 },
                "message": message,
                "test_code": command,
                "filename": "",
                "line_no": 0,
                "duration": millis.round() as u64,
            }));
        }
    }
    let steps: Vec<&Value> = all.iter().filter(|t| t["kind"] == "step").collect();
    let failed: Vec<&&Value> = steps.iter().filter(|t| t["status"] != "pass").collect();
    if let Some(first) = failed.first() {
        let names: Vec<&str> = failed.iter().map(|t| t["name"].as_str().unwrap_or("?")).collect();
        tests.push(serde_json::json!({
            "name": format!("the step still works ({} of its {} checks failed; no points, but the exercise fails)", failed.len(), steps.len()),
            "status": "fail",
            "score": 0,
            "message": format!("{}: {}\nfailed: {}", names[0], first_line(first), names.join(", ")),
            "test_code": command,
            "filename": "",
            "line_no": 0,
            "duration": 0,
        }));
    }
    serde_json::json!({
        "version": 1,
        "status": if exercise["status"] == "pass" { "pass" } else { "fail" },
        "max_score": exercise["max_score"],
        "tests": tests,
    })
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Builds what grading needs, runs the grader as root, and returns its report.
/// An exercise that does not build is still in the report, with no points.
/// Each exercise is graded with every check of its step, as a learner's is.
pub fn grade(kind: Kind, wanted: &[String]) -> Result<Graded> {
    grade_with(kind, wanted, StepChecks::All, None)
}

/// Which checks of its step each exercise must pass too: the grader's
/// `--step-checks` (see harness/src/exercises/grade.rs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepChecks {
    /// All of them, with their --userns variants: a learner's grade.
    All,
    /// All of them, without the --userns variants.
    Plain,
    /// Those its step introduced, without --userns.
    Introduced,
}

impl StepChecks {
    fn as_str(self) -> &'static str {
        match self {
            StepChecks::All => "all",
            StepChecks::Plain => "plain",
            StepChecks::Introduced => "introduced",
        }
    }
}

/// `grade`, with a choice of the step's checks.
/// `log`: write the grader's progress to this file instead of the terminal.
pub fn grade_with(
    kind: Kind,
    wanted: &[String],
    step_checks: StepChecks,
    log: Option<&Path>,
) -> Result<Graded> {
    let crates = exercises::select(kind, wanted)?;
    let mut not_built = Vec::new();
    for krate in &crates {
        if let Err(err) = run_cmd(cargo().args(["build", "-p", &krate.package()])) {
            println!("{} does not build, it will get no points: {err:#}", display_path(&krate.dir));
            not_built.push(krate.name.clone());
        }
    }
    let grader = Grader::build()?;
    let mut args: Vec<String> = Vec::new();
    if kind == Kind::Solution {
        args.push("--solutions".into());
    }
    if step_checks != StepChecks::All {
        args.extend(["--step-checks".into(), step_checks.as_str().into()]);
    }
    args.extend(crates.iter().map(|c| c.name.clone()));
    for name in &not_built {
        args.extend(["--not-built".into(), name.clone()]);
    }
    let report = grader.run(&args, log)?;
    Ok(Graded { report, not_built })
}

/// The grader, built, with the probe and the rootfs it needs.
struct Grader {
    grader: PathBuf,
    probe: PathBuf,
    rootfs: PathBuf,
}

impl Grader {
    /// Builds the probe, the workshop rootfs and the grader.
    fn build() -> Result<Grader> {
        let probe = artifacts::build_probe()?;
        let rootfs = rootfs::prepare(&probe)?;
        Ok(Grader { grader: build_grader()?, probe, rootfs })
    }

    /// Runs the grader as root with `args`; returns its report.
    /// `log`: write its progress to this file instead of the terminal.
    fn run(&self, args: &[String], log: Option<&Path>) -> Result<Value> {
        let mut cmd = Command::new(&self.grader);
        cmd.current_dir(workspace_root())
            .env("WORKSHOP_ROOT", workspace_root())
            .env("WORKSHOP_BIN_DIR", target_dir().join("debug"))
            .env("WORKSHOP_PROBE", &self.probe)
            .env("WORKSHOP_ROOTFS", &self.rootfs)
            // A todo!() that panics says where it is; a backtrace would only bury that.
            .env("RUST_BACKTRACE", "0")
            .args(args);
        let mut cmd = as_root(cmd)?;
        // The progress goes straight to the terminal (or the log); the report is the last line on stdout.
        let progress = match log {
            Some(path) => {
                std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
                Stdio::from(file.with_context(|| format!("open {}", path.display()))?)
            }
            None => Stdio::inherit(),
        };
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(progress);
        eprintln!("$ {}", command_line(&cmd));
        let out = cmd.output().with_context(|| format!("could not start `{}`", command_line(&cmd)))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        match line.map(serde_json::from_str) {
            Some(Ok(report)) => Ok(report),
            _ => bail!("the grader ({}) gave no report; it ended with {}", command_line(&cmd), out.status),
        }
    }
}

/// Builds the grader (test target `grade` of the harness) and returns its path.
fn build_grader() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "harness",
        "--test",
        "grade",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .stderr(Stdio::inherit());
    eprintln!("$ {}", command_line(&cmd));
    let stdout =
        output(&mut cmd).context("could not build the grader (test target `grade` of crate `harness`)")?;
    artifacts::test_executable(&stdout, "grade")
        .context("cargo built the harness but reported no executable for test target `grade`")
}

/// Blocks until a file of one of `crates` (Cargo.toml, src/) changes.
fn wait_for_change(crates: &[Crate]) {
    let stamp = || -> Vec<(PathBuf, Option<SystemTime>)> {
        let files = crates.iter().flat_map(|c| {
            let files = exercises::compared_files(&c.dir).unwrap_or_default();
            files.into_iter().map(|f| c.dir.join(f)).collect::<Vec<_>>()
        });
        files.map(|f| (f.clone(), f.metadata().and_then(|m| m.modified()).ok())).collect()
    };
    let before = stamp();
    while stamp() == before {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The `hint` task: the hints of an exercise, one at a time (or all).
pub fn hint(exercise: &str, number: Option<usize>, all: bool) -> Result<()> {
    let krate = exercises::select(Kind::Exercise, &[exercise.to_string()])?.remove(0);
    let hints = exercises::hints(&krate)?;
    if hints.is_empty() {
        bail!("{} has no hints (`## ` sections)", display_path(&krate.dir.join("HINTS.md")));
    }
    if all {
        println!("{}", hints.join("\n\n"));
        return Ok(());
    }
    let n = number.unwrap_or(1);
    let Some(text) = n.checked_sub(1).and_then(|i| hints.get(i)) else {
        bail!("exercise {} has hints 1 to {}", krate.name, hints.len());
    };
    println!("{text}\n");
    match n < hints.len() {
        true => {
            println!("(hint {n} of {}; the next one: cargo xtask hint {} {})", hints.len(), krate.name, n + 1)
        }
        false => println!("(hint {n} of {}: the last one)", hints.len()),
    }
    Ok(())
}

/// The `exercises` tier: every exercise matches its solution outside the
/// marked regions and has its README.md and hints; every exercise, as
/// shipped, builds and fails each of its graded checks (fast, with the
/// todo!() named) while still passing the checks its step introduced; every
/// solution passes its own checks and every check of its step; and the
/// student handout builds without solutions/.
///
/// To keep the tier to a few minutes, the step checks run without their
/// `--userns` variants, and the shipped exercises only run the checks their
/// step introduced (`SHIPPED_STEP_CHECKS`, `SOLVED_STEP_CHECKS`): the
/// integration tier runs all of them against the steps, and a learner's
/// `cargo xtask grade` runs all of them against the exercise.
pub fn self_check() -> Result<()> {
    let (exercises, solutions) = (exercises::list(Kind::Exercise)?, exercises::list(Kind::Solution)?);
    if exercises.is_empty() {
        bail!("no exercises in {}", display_path(&Kind::Exercise.dir()));
    }
    let mut problems = Vec::new();
    for solution in solutions.iter().filter(|s| !exercises.iter().any(|e| e.name == s.name)) {
        problems.push(format!("solutions/{} has no exercise", solution.name));
    }
    for exercise in &exercises {
        match solutions.iter().find(|s| s.name == exercise.name) {
            Some(solution) => problems.extend(exercises::differences(exercise, solution)?),
            None => problems.push(format!("exercises/{} has no solution", exercise.name)),
        }
        for file in ["README.md", "HINTS.md"] {
            if !exercise.dir.join(file).is_file() {
                problems.push(format!("exercises/{} has no {file}", exercise.name));
            }
        }
        if exercise.dir.join("HINTS.md").is_file() && exercises::hints(exercise)?.is_empty() {
            problems.push(format!("exercises/{}/HINTS.md has no `## ` hint", exercise.name));
        }
    }

    println!(
        "\n--> the exercises as shipped: each must fail its own checks, and pass the checks its step \
         introduced (without --userns; `cargo xtask grade` runs every check of the step)"
    );
    // Their failures are expected and long (a todo!() each): they go to a log, not the terminal.
    let log = target_dir().join("grade/self-check-exercises.log");
    let _ = std::fs::remove_file(&log);
    println!("(the grader's output: {})", display_path(&log));
    let shipped = grade_with(Kind::Exercise, &[], SHIPPED_STEP_CHECKS, Some(&log))?;
    save(&shipped.report, "exercises")?;
    problems.extend(check_shipped(&shipped, &exercises));
    println!(
        "\n--> the solutions: each must pass its own checks and every check of its step, without \
         their --userns variants (`cargo xtask grade --solutions` runs those too)"
    );
    let solved = grade_with(Kind::Solution, &[], SOLVED_STEP_CHECKS, None)?;
    save(&solved.report, "solutions")?;
    problems.extend(check_solved(&solved, &solutions));
    println!(
        "\n--> the mutants: planted wrong solutions (solutions/*/mutants/*.mutant), each graded with its \
         exercise's own checks; each must lose points, with a first failure in the words it expects"
    );
    problems.extend(check_mutants(&solutions)?);
    println!("\n--> the student handout: no solutions/, and it builds");
    if let Err(err) = handout::check() {
        problems.push(format!("the handout: {err:#}"));
    }

    if !problems.is_empty() {
        bail!("{} problem(s):\n{}", problems.len(), problems.join("\n"));
    }
    println!(
        "\nexercises: {} exercise(s) fail as shipped, their solutions pass (step checks without \
         --userns), the handout builds",
        exercises.len()
    );
    Ok(())
}

/// How many mutants each solution must have at least.
const MIN_MUTANTS: usize = 3;

/// Builds every mutant in a scratch workspace (target/mutants/crates, with
/// one shared target directory, target/mutants/target, so that only the
/// mutated crates compile, and only those that changed since the last run),
/// grades each with its exercise's own checks (stopping at the first
/// failure), and returns the mutants that were not caught, or not in the
/// words they expect, or did not build. The binaries are removed before the
/// build (a stale one would hide a mutant that no longer builds) and after
/// grading.
fn check_mutants(solutions: &[Crate]) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut all = Vec::new();
    for solution in solutions {
        let found = mutants::list(solution)?;
        if found.len() < MIN_MUTANTS {
            problems.push(format!(
                "solutions/{}/mutants has {} mutant(s): plant at least {MIN_MUTANTS} (see TEACHING.md)",
                solution.name,
                found.len()
            ));
        }
        all.extend(found);
    }
    if all.is_empty() {
        return Ok(problems);
    }
    let dir = target_dir().join("mutants");
    let (crates, build_dir, log) = (dir.join("crates"), dir.join("target"), dir.join("mutants.log"));
    mutants::prepare(&crates, solutions, &all)?;
    let binary = |m: &mutants::Mutant| build_dir.join("debug").join(m.binary());
    for mutant in &all {
        let _ = std::fs::remove_file(binary(mutant));
    }
    let _ = std::fs::remove_file(&log);
    println!("(the build's and the grader's output: {})", display_path(&log));
    let mut build = cargo();
    build.args(["build", "--keep-going", "--manifest-path"]).arg(crates.join("Cargo.toml"));
    build.arg("--target-dir").arg(&build_dir);
    // Each mutant is built once and run a few times: no incremental state,
    // no debug info (they would make the cache 2 GB instead of under 1).
    build.env("CARGO_INCREMENTAL", "0").env("CARGO_PROFILE_DEV_DEBUG", "0");
    let file = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    build.stdout(Stdio::from(file.try_clone()?)).stderr(Stdio::from(file));
    eprintln!("$ {}", command_line(&build));
    let built = build.status().context("could not start cargo")?;
    if !built.success() {
        println!("(some mutants did not build: {})", display_path(&log));
    }
    let grader = Grader::build()?;
    let mut rows = Vec::new();
    for mutant in &all {
        if !mutant.applies_here() {
            let _ = std::fs::remove_file(binary(mutant));
            rows.push(format!(
                "  {} ({}): skipped, only on a machine with {}",
                mutant.label(),
                mutant.mistake,
                mutant.when.as_deref().unwrap_or("?")
            ));
            continue;
        }
        let bin = binary(mutant);
        if !bin.exists() {
            problems.push(format!(
                "mutant {} does not build: a mutant is a plausible mistake that compiles (see {})",
                mutant.label(),
                display_path(&log)
            ));
            continue;
        }
        let args = ["--solutions", "--step-checks", "none", "--fail-fast", "--binary"];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend([bin.display().to_string(), mutant.exercise.clone()]);
        let report = grader.run(&args, Some(&log))?;
        let Some(entry) = exercise_results(&report).next() else {
            bail!("the grader's report of mutant {} has no exercise", mutant.label());
        };
        let first = entry["tests"].as_array().into_iter().flatten().find(|t| t["status"] != "pass");
        let seen = first.map_or("(nothing failed)".to_string(), |t| {
            let message = t["message"].as_str().unwrap_or("").lines().next().unwrap_or("");
            format!("{}: {message}", t["name"].as_str().unwrap_or("?"))
        });
        rows.push(format!(
            "  {} ({}): {}/{}\n      {seen}",
            mutant.label(),
            mutant.mistake,
            entry["score"],
            entry["max_score"]
        ));
        problems.extend(mutants::verdict(mutant, entry));
        let _ = std::fs::remove_file(&bin);
    }
    println!("\nthe mutants, each with its first failure as a learner sees it:\n{}", rows.join("\n"));
    Ok(problems)
}

/// The step checks that the self-check runs beside the shipped exercises' own.
const SHIPPED_STEP_CHECKS: StepChecks = StepChecks::Introduced;
/// The step checks that the self-check runs beside the solutions' own.
const SOLVED_STEP_CHECKS: StepChecks = StepChecks::Plain;

fn save(report: &Value, name: &str) -> Result<()> {
    let path = target_dir().join(format!("grade/self-check-{name}.json"));
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, serde_json::to_string_pretty(report)? + "\n")?;
    println!("(report: {})", display_path(&path));
    Ok(())
}

/// Each report entry for `crates`, or a problem for each one that is missing.
fn entries<'a>(graded: &'a Graded, crates: &[Crate], problems: &mut Vec<String>) -> Vec<(String, &'a Value)> {
    let mut found = Vec::new();
    for krate in crates {
        if graded.not_built.contains(&krate.name) {
            problems.push(format!("{} does not build", display_path(&krate.dir)));
        }
        match exercise_results(&graded.report).find(|e| e["exercise"] == krate.name.as_str()) {
            Some(entry) => found.push((krate.name.clone(), entry)),
            None => problems.push(format!(
                "{} was not graded: add its checks to harness/src/exercises/ (and `all()` there)",
                display_path(&krate.dir)
            )),
        }
    }
    found
}

/// The shipped exercises: no points, every own check failed quickly and
/// clearly, every step check passed.
fn check_shipped(graded: &Graded, exercises: &[Crate]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, entry) in entries(graded, exercises, &mut problems) {
        let tests = entry["tests"].as_array().cloned().unwrap_or_default();
        let mut todo_seen = false;
        for test in &tests {
            let label = format!("exercise {name}, test {}", test["name"].as_str().unwrap_or("?"));
            let passed = test["status"] == "pass";
            match test["kind"].as_str() {
                Some("exercise") if passed => {
                    problems.push(format!("{label}: passes as shipped (the test is vacuous)"))
                }
                Some("exercise") => {
                    todo_seen |= test["message"].as_str().unwrap_or("").starts_with("not done yet");
                    if test["seconds"].as_f64().unwrap_or(0.0) > 15.0 {
                        problems
                            .push(format!("{label}: took {}s to fail as shipped (a hang?)", test["seconds"]));
                    }
                }
                _ if !passed => problems.push(format!(
                    "{label}: the shipped skeleton breaks the step: {}",
                    test["message"].as_str().unwrap_or("").lines().next().unwrap_or("")
                )),
                _ => {}
            }
        }
        if entry["score"] != 0 {
            problems.push(format!("exercise {name} scores {} points as shipped", entry["score"]));
        }
        if !todo_seen {
            problems.push(format!(
                "exercise {name}: no failure says \"not done yet\" (the todo!() was not named)"
            ));
        }
    }
    problems
}

/// The solutions: everything passes.
fn check_solved(graded: &Graded, solutions: &[Crate]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, entry) in entries(graded, solutions, &mut problems) {
        for test in entry["tests"].as_array().into_iter().flatten().filter(|t| t["status"] != "pass") {
            let message = test["message"].as_str().unwrap_or("").lines().next().unwrap_or("");
            problems
                .push(format!("solution {name} fails {}: {message}", test["name"].as_str().unwrap_or("?")));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reporter's three sums (src/aggregate-results.js, console-results.js,
    /// notify-classroom.js): passed/tests x max_score, passed/tests x 100, and
    /// the sum of the scores.
    fn reporter_sums(result: &Value) -> (f64, f64, u64) {
        let tests = result["tests"].as_array().unwrap();
        let passed = tests.iter().filter(|t| t["status"] == "pass").count() as f64;
        let max = result["max_score"].as_u64().unwrap() as f64;
        let scores = tests.iter().map(|t| t["score"].as_u64().unwrap()).sum();
        (passed / tests.len() as f64 * max, passed / tests.len() as f64 * 100.0, scores)
    }

    fn exercise(own: &[(u64, bool)], steps: &[bool]) -> Value {
        let mut tests: Vec<Value> = own
            .iter()
            .enumerate()
            .map(|(i, &(points, passed))| {
                serde_json::json!({"name": format!("own{i}"), "kind": "exercise",
                    "status": if passed { "pass" } else { "fail" }, "score": if passed { points } else { 0 },
                    "max_score": points, "message": if passed { "" } else { "wrong\nmore" }, "seconds": 0.5})
            })
            .collect();
        for (i, &passed) in steps.iter().enumerate() {
            tests.push(serde_json::json!({"name": format!("step{i}"), "kind": "step",
                "status": if passed { "pass" } else { "fail" }, "score": 0, "max_score": 0,
                "message": if passed { "" } else { "broken" }, "seconds": 0.1}));
        }
        let score: u64 = own.iter().filter(|o| o.1).map(|o| o.0).sum();
        let passed = own.iter().all(|o| o.1) && steps.iter().all(|&s| s);
        serde_json::json!({"exercise": "03-mnt", "status": if passed { "pass" } else { "fail" },
            "score": score, "max_score": own.iter().map(|o| o.0).sum::<u64>(), "tests": tests})
    }

    #[test]
    fn the_reporter_gets_the_points_right() {
        // One failed 4-point check, 32 step checks passed: 6/10 everywhere, not 9.72.
        let result = classroom(&exercise(&[(4, false), (3, true), (2, true), (1, true)], &[true; 32]));
        assert_eq!(result["status"], "fail");
        assert_eq!(result["max_score"], 10);
        assert_eq!(result["tests"].as_array().unwrap().len(), 10);
        assert_eq!(reporter_sums(&result), (6.0, 60.0, 6));
        let tests = result["tests"].as_array().unwrap();
        assert_eq!(tests[0]["name"], "own0 (1/4)");
        assert_eq!(tests[0]["message"], "wrong\nmore");
        assert_eq!(tests[1]["message"], "the same failure as own0 (1/4)");
        assert_eq!(tests[9]["name"], "own3");
        for key in ["name", "status", "score", "message", "test_code", "filename", "line_no", "duration"] {
            assert!(tests.iter().all(|t| !t[key].is_null()), "{key}");
        }

        let all = classroom(&exercise(&[(4, true), (6, true)], &[true; 5]));
        assert_eq!((all["status"].as_str(), reporter_sums(&all)), (Some("pass"), (10.0, 100.0, 10)));

        // A broken step: the points stay, one more test fails the exercise.
        let broken = classroom(&exercise(&[(10, true)], &[true, false, false]));
        assert_eq!(broken["status"], "fail");
        let tests = broken["tests"].as_array().unwrap();
        assert_eq!(tests.len(), 11);
        assert_eq!(reporter_sums(&broken).2, 10);
        assert!(tests[10]["name"].as_str().unwrap().contains("2 of its 3 checks failed"));
        assert_eq!(tests[10]["message"], "step1: broken\nfailed: step1, step2");
    }

    #[test]
    fn long_failures_are_shortened() {
        assert_eq!(shorten("abcdef", 3), "abc...");
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("héllo wörld", 4), "héll...");
    }
}
