//! The `test` task: everything the project checks, tier by tier, then a summary.
//! A failed tier does not stop the others; the exit code is non-zero if any tier
//! failed or could not run (nothing is skipped silently).

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::{
    artifacts, as_root, cargo, command_line, is_root, print_table, rootfs, run as run_cmd, setup,
    sudo_available, target_dir, workspace_root,
};

/// How a tier ended.
enum Outcome {
    Passed,
    Failed(String),
    /// The tier could not even start (no root, a tier it needs failed): the reason.
    CouldNotRun(String),
}

impl From<Result<()>> for Outcome {
    fn from(result: Result<()>) -> Self {
        match result {
            Ok(()) => Outcome::Passed,
            Err(err) => Outcome::Failed(format!("{err:#}")),
        }
    }
}

/// One tier of checks. `args` are the extra arguments of `cargo xtask test`.
pub struct Tier {
    pub name: &'static str,
    /// Tiers that, when they run first and do not pass, make this one COULD NOT RUN.
    pub needs: &'static [&'static str],
    run: fn(args: &[String]) -> Outcome,
}

/// The tiers, in the order they run. Add one line per new tier (and its function).
#[rustfmt::skip]
pub const TIERS: &[Tier] = &[
    Tier { name: "setup",       needs: &[],        run: tier_setup },
    Tier { name: "lint",        needs: &[],        run: tier_lint },
    Tier { name: "unit",        needs: &[],        run: tier_unit },
    Tier { name: "integration", needs: &["setup"], run: tier_integration },
    Tier { name: "vm",          needs: &["setup"], run: tier_vm },
    Tier { name: "exercises",   needs: &["setup"], run: tier_exercises },
    Tier { name: "book",        needs: &["setup"], run: tier_book },
    Tier { name: "bench",       needs: &["setup"], run: tier_bench },
];

/// The tier that receives the extra arguments.
const ARGS_TIER: &str = "integration";

pub fn run(selected: &[String], args: &[String]) -> Result<()> {
    let names: Vec<&str> = TIERS.iter().map(|t| t.name).collect();
    for name in selected {
        if !names.contains(&name.as_str()) {
            bail!("unknown tier {name:?}; the tiers are: {}", names.join(", "));
        }
    }
    // Test names alone (`cargo xtask test -- 03-mnt::mnt`) mean: just those integration tests.
    let selected: Vec<String> = match (selected.is_empty(), args.is_empty()) {
        (true, false) => vec!["setup".into(), ARGS_TIER.into()],
        _ => selected.to_vec(),
    };
    let chosen: Vec<&Tier> =
        TIERS.iter().filter(|t| selected.is_empty() || selected.iter().any(|s| s == t.name)).collect();
    if !args.is_empty() && !chosen.iter().any(|t| t.name == ARGS_TIER) {
        bail!("extra arguments ({}) are for the {ARGS_TIER} tier, which is not selected", args.join(" "));
    }

    let mut results: Vec<(&str, Outcome, f64)> = Vec::new();
    for tier in chosen {
        println!("\n==> tier: {}", tier.name);
        let start = Instant::now();
        let failed_need = tier.needs.iter().find(|need| {
            results.iter().any(|(name, outcome, _)| name == *need && !matches!(outcome, Outcome::Passed))
        });
        let outcome = match failed_need {
            Some(need) => Outcome::CouldNotRun(format!("the {need} tier did not pass")),
            None => (tier.run)(args),
        };
        match &outcome {
            Outcome::Passed => println!("==> tier {}: passed", tier.name),
            Outcome::Failed(why) => println!("==> tier {}: FAILED: {why}", tier.name),
            Outcome::CouldNotRun(why) => println!("==> tier {}: COULD NOT RUN: {why}", tier.name),
        }
        results.push((tier.name, outcome, start.elapsed().as_secs_f64()));
    }

    println!("\nsummary:");
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(name, outcome, seconds)| {
            let result = match outcome {
                Outcome::Passed => "passed",
                Outcome::Failed(_) => "FAILED",
                Outcome::CouldNotRun(_) => "COULD NOT RUN",
            };
            vec![name.to_string(), result.to_string(), format!("{seconds:.1}")]
        })
        .collect();
    print_table(&["tier", "result", "seconds"], &rows);

    let not_passed: Vec<&str> = results
        .iter()
        .filter(|(_, outcome, _)| !matches!(outcome, Outcome::Passed))
        .map(|(name, _, _)| *name)
        .collect();
    if !not_passed.is_empty() {
        println!();
        for (name, outcome, _) in &results {
            match outcome {
                Outcome::Passed => {}
                Outcome::Failed(why) => println!("{name}: failed: {why}"),
                Outcome::CouldNotRun(why) => println!("{name}: could not run: {why}"),
            }
        }
        bail!("tiers that did not pass: {}", not_passed.join(", "));
    }
    Ok(())
}

fn tier_setup(_args: &[String]) -> Outcome {
    setup::run().into()
}

/// The book: generated diffs, includes, mdbook build and links, every console command
/// run as root and compared, the rendered pages in headless Chromium (see xtask/src/book.rs).
fn tier_book(_args: &[String]) -> Outcome {
    crate::book::tier().into()
}

/// The benchmark's quick mode: every step, runc and the floor measured a few
/// times (the numbers are printed, not judged: speed is measured, not asserted).
fn tier_bench(_args: &[String]) -> Outcome {
    crate::bench::run(true, false).into()
}

/// The exercises fail as shipped, their solutions pass, the student handout builds
/// (see xtask/src/grade.rs). A student copy has no solutions to check against.
fn tier_exercises(_args: &[String]) -> Outcome {
    if crate::exercises::list(crate::exercises::Kind::Solution).is_ok_and(|s| s.is_empty()) {
        return Outcome::CouldNotRun(
            "no solutions/ here (a student copy?): grade with `cargo xtask grade`".into(),
        );
    }
    if !is_root() && !sudo_available() {
        return Outcome::CouldNotRun("grading runs containers: it needs root, and there is no sudo".into());
    }
    crate::grade::self_check().into()
}

fn tier_lint(_args: &[String]) -> Outcome {
    // Run both, so one round shows every problem.
    let fmt = run_cmd(cargo().args(["fmt", "--all", "--check"]));
    let clippy = run_cmd(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]));
    // And the classroom workflow that the handout ships (actionlint, runners).
    let workflow = crate::classroom::lint();
    let failures: Vec<String> =
        [fmt, clippy, workflow].into_iter().filter_map(Result::err).map(|e| format!("{e:#}")).collect();
    match failures.is_empty() {
        true => Outcome::Passed,
        false => Outcome::Failed(failures.join("; ")),
    }
}

fn tier_unit(_args: &[String]) -> Outcome {
    // The harness's integration target needs root; its library's own unit tests do not.
    let outcome: Outcome = run_cmd(cargo().args(["test", "--workspace", "--exclude", "harness"])).into();
    match outcome {
        Outcome::Passed => run_cmd(cargo().args(["test", "-p", "harness", "--lib"])).into(),
        failed => failed,
    }
}

/// The integration tests in a VM: a stock Debian kernel under qemu, pure cgroup v2
/// (see xtask/src/vm.rs; `cargo xtask vm-test` runs it alone, with filters).
fn tier_vm(_args: &[String]) -> Outcome {
    crate::vm::run(&crate::vm::Options::default()).into()
}

/// Build everything as the invoking user, then run the harness as root.
fn tier_integration(args: &[String]) -> Outcome {
    let cmd = match harness_command(args) {
        Ok(cmd) => cmd,
        Err(err) => return Outcome::Failed(format!("{err:#}")),
    };
    if !is_root() && !sudo_available() {
        return Outcome::CouldNotRun(format!(
            "the integration tests need root and there is no sudo; run as root: {}",
            command_line(&cmd)
        ));
    }
    as_root(cmd).and_then(|mut cmd| run_cmd(&mut cmd)).into()
}

/// The harness executable with the environment of the contract (see harness/).
fn harness_command(args: &[String]) -> Result<Command> {
    artifacts::build_steps()?;
    let probe = artifacts::build_probe()?;
    let rootfs = rootfs::prepare(&probe)?;
    let harness = artifacts::build_harness()?;

    let mut cmd = Command::new(harness);
    cmd.current_dir(workspace_root())
        .env("WORKSHOP_ROOT", workspace_root())
        .env("WORKSHOP_BIN_DIR", target_dir().join("debug"))
        .env("WORKSHOP_PROBE", &probe)
        .env("WORKSHOP_ROOTFS", &rootfs)
        .args(args);
    // The registry of step 10's checks, unpacked by the setup tier (the harness has a fallback).
    if let Some((var, registry)) = setup::unpacked("docker-registry") {
        cmd.env(var, registry);
    }
    // The one check that pulls from Docker Hub runs only when asked (sudo would drop it).
    if let Some(online) = std::env::var_os("WORKSHOP_ONLINE") {
        cmd.env("WORKSHOP_ONLINE", online);
    }
    // A whole run counts what it tried, for the book's reliability page.
    let figures = crate::book::figures::json_path();
    let _ = std::fs::remove_file(&figures);
    if args.is_empty() {
        std::fs::create_dir_all(figures.parent().unwrap())?;
        cmd.env("WORKSHOP_FIGURES", &figures);
    }
    Ok(cmd)
}
