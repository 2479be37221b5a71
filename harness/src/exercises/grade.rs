//! The grader: runs each exercise's binary as the step it extends, with the
//! exercise's own checks, and reports what passed as JSON.
//!
//! `grade [--solutions] [--step-checks all|plain|introduced|none] [NN | NN-name ...]
//! [--not-built NN-name ...] [--binary PATH] [--fail-fast]` grades `NN-name-exercise` (or, with
//! --solutions, `NN-name-solution`) from WORKSHOP_BIN_DIR, every exercise when
//! none is named; one that did not build scores nothing. `--binary PATH`
//! grades that binary instead (one exercise named: the `exercises` tier's
//! mutants). `--step-checks` says which checks of the step run beside the
//! exercise's own (see `StepChecks`): a learner's grade runs them all; the
//! `exercises` tier, fewer. Progress goes to stderr as the tests run;
//! the report is the last line on stdout: one JSON object, described in
//! TEACHING.md. `cargo xtask grade` builds everything, runs this as root,
//! saves the report and prints it as a table.

use super::{all, Exercise};
use crate::{checks, leaks, sandbox, suite, Check, Ctx, Step, Workshop};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::Instant;

/// Which binaries are graded: the learners' exercises or the solutions.
#[derive(Clone, Copy, PartialEq)]
enum Graded {
    Exercise,
    Solution,
}

impl Graded {
    fn as_str(self) -> &'static str {
        match self {
            Graded::Exercise => "exercise",
            Graded::Solution => "solution",
        }
    }
}

/// Which checks of its step an exercise must also pass (they carry no points).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepChecks {
    /// Every check that applies to the step, and their `--userns` variants:
    /// what `cargo xtask test` runs against the step itself.
    All,
    /// The same checks without their `--userns` variants.
    Plain,
    /// Only the checks the step itself introduced, without `--userns`: a
    /// quick sign that the exercise did not break the step. Those that need
    /// the exercise done (`Exercise::needs_the_holes`) are left out: this is
    /// how the self-check runs the shipped skeletons.
    Introduced,
    /// None: only the exercise's own checks (the mutants of the self-check,
    /// which only have to fail one of them).
    None,
}

impl StepChecks {
    fn parse(text: &str) -> Result<StepChecks> {
        match text {
            "all" => Ok(StepChecks::All),
            "plain" => Ok(StepChecks::Plain),
            "introduced" => Ok(StepChecks::Introduced),
            "none" => Ok(StepChecks::None),
            _ => bail!("--step-checks is all, plain, introduced or none, not {text:?}"),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            StepChecks::All => "all",
            StepChecks::Plain => "plain",
            StepChecks::Introduced => "introduced",
            StepChecks::None => "none",
        }
    }
}

/// One test of an exercise: one of its own checks, or a check of its step.
struct Test {
    name: String,
    /// "exercise" (its own checks) or "step" (the step must keep working).
    kind: &'static str,
    points: u32,
    ctx: Ctx,
    run: fn(&Ctx) -> Result<()>,
}

pub fn main() -> ! {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Args { graded, exercises, not_built, step_checks, binary, fail_fast } = parse_args(&args)
        .unwrap_or_else(|err| {
            eprintln!("grade: {err:#}");
            std::process::exit(2);
        });
    let built = |e: &&Exercise| !not_built.iter().any(|n| n == e.name);
    let (steps, workshop) =
        suite::setup(|ws| exercises.iter().filter(built).map(|e| target(ws, e, graded, &binary)).collect());
    leaks::adopt_orphans();
    if let Err(err) = sandbox::start() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
    let mut steps = steps.iter();
    let results: Vec<Value> = exercises
        .iter()
        .map(|exercise| match built(&exercise) {
            true => {
                let step = steps.next().expect("one step per built exercise");
                grade(exercise, step, &workshop, step_checks, fail_fast)
            }
            false => unbuilt(exercise, graded),
        })
        .collect();
    sandbox::stop();

    let score: u64 = results.iter().filter_map(|r| r["score"].as_u64()).sum();
    let max_score: u64 = results.iter().filter_map(|r| r["max_score"].as_u64()).sum();
    let passed = results.iter().all(|r| r["status"] == "pass");
    let report = json!({
        "version": 1,
        "graded": graded.as_str(),
        "step_checks": step_checks.as_str(),
        "status": if passed { "pass" } else { "fail" },
        "score": score,
        "max_score": max_score,
        "exercises": results,
    });
    eprintln!("\ngrade: {score}/{max_score} points; {}", if passed { "all passed" } else { "FAILED" });
    println!("{report}");
    std::process::exit(if passed { 0 } else { 1 })
}

/// What the command line asks for.
struct Args {
    graded: Graded,
    exercises: Vec<Exercise>,
    /// Names of exercises whose binary did not build.
    not_built: Vec<String>,
    step_checks: StepChecks,
    /// The binary to grade instead of the exercise's (one exercise only).
    binary: Option<std::path::PathBuf>,
    /// Stop at the first failed test; the rest fail as "not run".
    fail_fast: bool,
}

/// `[--solutions] [NN | NN-name ...] [--not-built NN-name ...]` -> what to grade.
fn parse_args(args: &[String]) -> Result<Args> {
    let usage = "usage: grade [--solutions] [--step-checks all|plain|introduced|none] [NN | NN-name ...] [--not-built NN-name ...] [--binary PATH] [--fail-fast]";
    let mut graded = Graded::Exercise;
    let mut step_checks = StepChecks::All;
    let mut wanted = Vec::new();
    let mut not_built = Vec::new();
    let mut binary = None;
    let mut fail_fast = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--solutions" => graded = Graded::Solution,
            "--not-built" => not_built.push(args.next().context(usage)?.as_str()),
            "--step-checks" => step_checks = StepChecks::parse(args.next().context(usage)?)?,
            "--fail-fast" => fail_fast = true,
            "--binary" => binary = Some(std::path::PathBuf::from(args.next().context(usage)?)),
            flag if flag.starts_with('-') => bail!("unknown flag {flag}; {usage}"),
            name => wanted.push(name),
        }
    }
    let exercises = all();
    let names: Vec<&str> = exercises.iter().map(|e| e.name).collect();
    for name in wanted.iter().chain(&not_built) {
        if !exercises.iter().any(|e| matches(e, name)) {
            bail!("no exercise {name:?}; the exercises are {}", names.join(", "));
        }
    }
    let not_built = exercises.iter().filter(|e| not_built.iter().any(|n| matches(e, n)));
    let not_built = not_built.map(|e| e.name.to_string()).collect();
    if binary.is_some() && wanted.len() != 1 {
        bail!("--binary grades one exercise: name it; {usage}");
    }
    let chosen = exercises.into_iter().filter(|e| wanted.is_empty() || wanted.iter().any(|w| matches(e, w)));
    Ok(Args { graded, exercises: chosen.collect(), not_built, step_checks, binary, fail_fast })
}

/// "01", "1" and "01-uts" all name exercise 01-uts.
fn matches(exercise: &Exercise, name: &str) -> bool {
    name == exercise.name || name.parse::<u8>().ok() == Some(exercise.number)
}

/// The binary under test (`binary`, or the exercise's), registered as the step it extends.
fn target(
    workshop: &Workshop,
    exercise: &Exercise,
    graded: Graded,
    binary: &Option<std::path::PathBuf>,
) -> Result<Step> {
    let name = format!("{}-{}", exercise.name, graded.as_str());
    let bin = binary.clone().unwrap_or_else(|| workshop.bin_dir.join(&name));
    if !bin.exists() {
        bail!("{} is not built: grade with `cargo xtask grade`, which builds it", bin.display());
    }
    Ok(Step { number: exercise.number, name, bin })
}

/// The exercise's own checks first (they carry the points), then the checks
/// of its step that `step_checks` asks for (all: as `suite::run` would run
/// them against that step).
fn tests(exercise: &Exercise, step: &Step, workshop: &Workshop, step_checks: StepChecks) -> Vec<Test> {
    let ctx = |userns| Ctx { step: step.clone(), workshop: workshop.clone(), userns };
    let mut tests: Vec<Test> = exercise
        .checks
        .iter()
        .map(|g| Test {
            name: g.check.name.to_string(),
            kind: "exercise",
            points: g.points,
            ctx: ctx(false),
            run: g.check.run,
        })
        .collect();
    let applies = |c: &Check| match step_checks {
        StepChecks::None => false,
        StepChecks::Introduced => c.since == step.number && !exercise.needs_the_holes.contains(&c.name),
        StepChecks::All | StepChecks::Plain => (c.since..=c.until).contains(&step.number),
    };
    for check in checks::all().into_iter().filter(applies) {
        for userns in [false, true] {
            if userns && (step.number < suite::USERNS_SINCE || !check.with_userns) {
                continue;
            }
            if userns && step_checks != StepChecks::All {
                continue;
            }
            let name = format!("{}{}", check.name, if userns { " (--userns)" } else { "" });
            tests.push(Test { name, kind: "step", points: 0, ctx: ctx(userns), run: check.run });
        }
    }
    tests
}

/// Runs one exercise's tests; returns its part of the report.
fn grade(
    exercise: &Exercise,
    step: &Step,
    workshop: &Workshop,
    step_checks: StepChecks,
    fail_fast: bool,
) -> Value {
    eprintln!("\n==> {} ({}): {}", exercise.name, step.bin.display(), exercise.title);
    let mut results: Vec<Value> = Vec::new();
    for test in tests(exercise, step, workshop, step_checks) {
        if fail_fast && results.iter().any(|r| r["status"] != "pass") {
            results.push(json!({
                "name": test.name, "kind": test.kind, "status": "fail", "score": 0,
                "max_score": test.points, "message": "not run (--fail-fast: an earlier test failed)",
                "seconds": 0.0,
            }));
            continue;
        }
        eprint!("test {}::{} ... ", step.name, test.name);
        let start = Instant::now();
        let outcome = suite::guarded(&test.ctx, test.run);
        let seconds = (start.elapsed().as_secs_f64() * 100.0).round() / 100.0;
        let message = match &outcome {
            Ok(()) => {
                eprintln!("ok");
                String::new()
            }
            Err(failed) => {
                let message = explain(failed.message().unwrap_or("failed"));
                eprintln!("FAILED\n{}", indent(&message));
                message
            }
        };
        let passed = outcome.is_ok();
        results.push(json!({
            "name": test.name,
            "kind": test.kind,
            "status": if passed { "pass" } else { "fail" },
            "score": if passed { test.points } else { 0 },
            "max_score": test.points,
            "message": message,
            "seconds": seconds,
        }));
    }
    let score: u64 = results.iter().filter_map(|t| t["score"].as_u64()).sum();
    let passed = results.iter().all(|t| t["status"] == "pass");
    json!({
        "version": 1,
        "exercise": exercise.name,
        "title": exercise.title,
        "binary": step.bin,
        "status": if passed { "pass" } else { "fail" },
        "score": score,
        "max_score": exercise.points(),
        "tests": results,
    })
}

/// The report of an exercise that did not build: every check failed, no points.
fn unbuilt(exercise: &Exercise, graded: Graded) -> Value {
    let package = format!("{}-{}", graded.as_str(), exercise.name);
    let message = format!(
        "{}s/{} does not build: `cargo build -p {package}` shows why",
        graded.as_str(),
        exercise.name
    );
    eprintln!("\n==> {}: {message}", exercise.name);
    let tests: Vec<Value> = exercise
        .checks
        .iter()
        .map(|g| {
            json!({"name": g.check.name, "kind": "exercise", "status": "fail", "score": 0,
                   "max_score": g.points, "message": message, "seconds": 0.0})
        })
        .collect();
    json!({
        "version": 1,
        "exercise": exercise.name,
        "title": exercise.title,
        "binary": null,
        "status": "fail",
        "score": 0,
        "max_score": exercise.points(),
        "tests": tests,
    })
}

/// Says in plain words when the binary hit a `todo!()` (the exercise is not
/// done yet), and drops the backtraces a panic prints, which only bury that.
pub fn explain(message: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    let mut in_backtrace = false;
    for line in message.lines() {
        if line.trim_start().starts_with("stack backtrace:") {
            in_backtrace = true;
            continue;
        }
        if in_backtrace && (line.starts_with(' ') || line.starts_with('\t')) {
            continue;
        }
        in_backtrace = false;
        lines.push(line);
    }
    let tidy = lines.join("\n");
    let todo = lines.iter().position(|l| l.starts_with("not yet implemented"));
    match todo {
        Some(at) => {
            let place = lines[..at]
                .iter()
                .rev()
                .find_map(|l| l.split_once("panicked at ").map(|(_, p)| p.trim_end_matches(':')))
                .map(|p| format!(" at {p}"))
                .unwrap_or_default();
            let what = lines[at].trim_start_matches("not yet implemented").trim_start_matches(": ");
            format!("not done yet: todo!(){place}: {what}\n{tidy}")
        }
        None => tidy,
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_todo_is_explained_and_backtraces_dropped() {
        let message = "`bin run --init -- true`: expected exit status 0, got 125\n--- stdout:\n--- stderr:\n\
            \nthread 'main' (1) panicked at exercises/02-pid/src/init.rs:43:5:\n\
            not yet implemented: init::start([\"true\"]): fork\n\
            stack backtrace:\n   0: 0x1 - std::backtrace\n        at /rustc/x.rs:1:1\n\
            02-pid-exercise: error: the container's setup panicked (message above); a todo!() there means \
            that part is not written yet\n---";
        let explained = explain(message);
        let first = explained.lines().next().unwrap();
        assert_eq!(
            first,
            "not done yet: todo!() at exercises/02-pid/src/init.rs:43:5: init::start([\"true\"]): fork"
        );
        assert!(!explained.contains("std::backtrace"));
        assert!(explained.contains("the container's setup panicked"));
    }

    #[test]
    fn other_failures_are_left_alone() {
        assert_eq!(
            explain("inside, the hostname is \"x\", not box-1"),
            "inside, the hostname is \"x\", not box-1"
        );
    }

    #[test]
    fn exercises_are_named_by_number_or_name() {
        let args = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let chosen = args(&["--solutions", "1", "03-mnt", "--not-built", "03"]).unwrap();
        assert!(chosen.graded == Graded::Solution);
        assert_eq!(chosen.exercises.iter().map(|e| e.name).collect::<Vec<_>>(), ["01-uts", "03-mnt"]);
        assert_eq!(chosen.not_built, ["03-mnt"]);
        assert_eq!(args(&[]).unwrap().exercises.len(), all().len());
        assert!(args(&["99"]).is_err());
        assert!(args(&["--frobnicate"]).is_err());
        assert!(args(&["--not-built"]).is_err());
        assert!(args(&["--step-checks", "plain"]).unwrap().step_checks == StepChecks::Plain);
        assert!(args(&[]).unwrap().step_checks == StepChecks::All);
        assert!(args(&["--step-checks", "some"]).is_err());
        assert!(args(&["--step-checks", "none"]).unwrap().step_checks == StepChecks::None);
        let one = args(&["--solutions", "03", "--binary", "/tmp/x"]).unwrap();
        assert_eq!(one.binary.as_deref(), Some(std::path::Path::new("/tmp/x")));
        assert!(args(&["--binary", "/tmp/x"]).is_err());
        assert!(args(&["01", "02", "--binary", "/tmp/x"]).is_err());
        assert!(args(&["--fail-fast"]).unwrap().fail_fast);
        assert!(!args(&[]).unwrap().fail_fast);
    }
}
