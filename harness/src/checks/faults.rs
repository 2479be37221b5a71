//! Faults: a runtime that fails at any stage, is interrupted, or is killed
//! outright leaves nothing behind (after `cleanup`, for a killed one); and
//! many containers, one after another or at once, leak nothing and never
//! share an id, an address or a layer.
//!
//! Failures are injected with the runtimes' test-only switch
//! `WORKSHOP_FAULT=STAGE` (see `process::fault` from step 05 on), which makes
//! the stage fail right after it made what it owns: the worst moment.

use super::TempPath;
use crate::figures::{self, FAULTS, SOAK};
use crate::{leaks, Check, Ctx, Run, Running};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(
            5,
            "faults::a_failure_at_each_stage_leaves_nothing",
            a_failure_at_each_stage_leaves_nothing,
        ),
        Check::new(
            6,
            "faults::sigint_or_sigterm_to_the_runtime_tears_down_all",
            sigterm_tears_everything_down,
        ),
        Check::new(6, "faults::a_killed_runtime_leaves_nothing_after_cleanup", killed_runtime_then_cleanup),
        Check::new(8, "faults::soak_200_in_a_row_then_20_at_once", soak).plain_only(),
    ]
}

/// The stages that can be made to fail, with the step that introduced each,
/// in the order a run goes through them.
const STAGES: [(&str, u8); 7] = [
    ("record", 6),
    ("cgroup", 6),
    ("network", 5),
    ("overlay", 7),
    ("volumes", 8),
    ("veth", 5),
    ("mounts", 5),
];

/// A run that makes everything the step can make: a lease, a veth and the
/// bridge, a memory-limited cgroup, an overlay root (kept without `--rm`) and
/// a volume from a host directory.
fn full_run(ctx: &Ctx, rm: bool, volume: &Path) -> Run {
    let mut run = Run::raw(&ctx.step.bin).arg("run").arg("--rootfs").arg(&ctx.workshop.rootfs);
    if ctx.userns {
        run = run.arg("--userns");
    }
    if ctx.step.number >= 6 {
        run = run.args(["--memory", "64m"]);
    }
    if ctx.step.number >= 7 && rm {
        run = run.arg("--rm");
    }
    if ctx.step.number >= 8 {
        run = run.arg("-v").arg(format!("{}:/data", volume.display()));
    }
    run
}

/// The ways a run can go, for steps with kept layers: with and without `--rm`.
fn rm_variants(ctx: &Ctx) -> Vec<bool> {
    if ctx.step.number >= 7 {
        vec![true, false]
    } else {
        vec![true]
    }
}

use crate::paths::CONTAINERS;

fn volume_dir() -> Result<TempPath> {
    let dir = TempPath::new("fault-volume");
    std::fs::create_dir_all(&dir.0)?;
    Ok(dir)
}

/// Leaks since `before`, as an error naming `what`; reclaimed so the next case starts clean.
fn nothing_left(before: &leaks::Snapshot, what: &str) -> Result<()> {
    let leaked = leaks::settled_since(before);
    leaks::reclaim(&leaked);
    if !leaked.is_empty() {
        let list: Vec<String> = leaked.iter().map(ToString::to_string).collect();
        bail!("{what} left behind:\n  {}", list.join("\n  "));
    }
    Ok(())
}

fn a_failure_at_each_stage_leaves_nothing(ctx: &Ctx) -> Result<()> {
    let volume = volume_dir()?;
    for (stage, since) in STAGES.iter().filter(|(_, since)| *since <= ctx.step.number) {
        for rm in rm_variants(ctx) {
            let before = leaks::snapshot();
            let run = full_run(ctx, rm, &volume.0).cmd(["true"]);
            let outcome = run.wrapped(["env", &format!("WORKSHOP_FAULT={stage}")]).output()?;
            let what = format!(
                "a fault at stage {stage:?} (step {since:02} on{})",
                if rm { "" } else { ", no --rm" }
            );
            outcome
                .expect_status(125)
                .and_then(|o| o.expect_one_error_line(&[&format!("injected fault at stage {stage}")]))
                .with_context(|| what.clone())?;
            nothing_left(&before, &what)?;
            figures::add(FAULTS, 1);
        }
    }
    Ok(())
}

/// Waits until the container runs COMMAND, then sends `signal` to the runtime.
fn start_then_signal(run: &Run, signal: i32) -> Result<(Running, i32)> {
    let running = run.spawn()?;
    let container = running.container_pid()?;
    running.signal(signal)?;
    Ok((running, container))
}

fn sigterm_tears_everything_down(ctx: &Ctx) -> Result<()> {
    let volume = volume_dir()?;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        for rm in rm_variants(ctx) {
            let before = leaks::snapshot();
            // A PID 1 gets only the signals it handles, so this one traps them,
            // and says when it does (in its own /dev, a tmpfs).
            let script =
                format!("trap 'exit {}' INT TERM; touch /dev/trapped; sleep 30 & wait", 128 + signal);
            let running = full_run(ctx, rm, &volume.0).cmd(["/bin/sh", "-c", &script]).spawn()?;
            let trapped = format!("/proc/{}/root/dev/trapped", running.container_pid()?);
            for _ in 0..1000 {
                if Path::new(&trapped).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            running.signal(signal)?;
            let outcome = running.wait()?;
            let what =
                format!("signal {signal} to the runtime{}", if rm { "" } else { " (no --rm), then `rm`" });
            outcome.expect_status(128 + signal).with_context(|| what.clone())?;
            if !rm {
                remove_kept_layers(ctx)?;
            }
            nothing_left(&before, &what)?;
            figures::add(FAULTS, 1);
        }
    }
    Ok(())
}

fn killed_runtime_then_cleanup(ctx: &Ctx) -> Result<()> {
    let volume = volume_dir()?;
    for rm in rm_variants(ctx) {
        let before = leaks::snapshot();
        let run = full_run(ctx, rm, &volume.0).cmd(["sleep", "30"]);
        let (mut running, container) = start_then_signal(&run, libc::SIGKILL)?;
        while running.is_running() {
            std::thread::sleep(Duration::from_millis(5));
        }
        ensure!(
            Path::new(&format!("/proc/{container}")).exists(),
            "control: the container should outlive its SIGKILLed runtime"
        );
        Run::raw(&ctx.step.bin).arg("cleanup").output()?.expect_status(0).context("cleanup")?;
        // The orphaned container held the runtime's output pipes until cleanup killed it.
        running.wait()?;
        if !rm {
            // Without --rm the layer is the container's to keep, like Docker's
            // stopped containers: `cleanup` unmounts it, `rm` removes it.
            remove_kept_layers(ctx)?;
        }
        nothing_left(
            &before,
            &format!("SIGKILL to the runtime, then `cleanup`{}", if rm { "" } else { " and `rm`" }),
        )?;
        figures::add(FAULTS, 1);
    }
    Ok(())
}

/// `rm ID` for every kept container layer (a check's own: it started with none).
fn remove_kept_layers(ctx: &Ctx) -> Result<()> {
    let listed = Run::raw(&ctx.step.bin).arg("ls").output()?;
    for id in listed.expect_status(0)?.stdout.lines() {
        Run::raw(&ctx.step.bin).args(["rm", id]).output()?.expect_status(0)?;
    }
    Ok(())
}

/// 200 containers one after another, then 20 at once: nothing leaks (the
/// leak check around this check), and those at once have distinct ids,
/// addresses and layers.
fn soak(ctx: &Ctx) -> Result<()> {
    for n in 0..200 {
        let outcome = ctx.run().cmd(["true"]).output()?;
        outcome.expect_status(0).with_context(|| format!("sequential container {n}"))?;
        figures::add(SOAK, 1);
    }

    // Each one sleeps before it reports, so all 20 run at the same time.
    let mut running = Vec::new();
    for _ in 0..20 {
        running.push(ctx.run().cmd(["/bin/probe", "--sleep-ms", "3000"]).spawn()?);
    }
    for one in &running {
        one.container_pid()?;
    }
    // All 20 run now: their roots are overlay mounts on the host, one per layer.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let roots: BTreeSet<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(CONTAINERS) && point.ends_with("/merged"))
        .collect();
    let (mut ids, mut addresses) = (BTreeSet::new(), BTreeSet::new());
    for one in running {
        let outcome = one.wait()?;
        outcome.expect_status(0)?;
        let seen = crate::Probe::parse(&outcome)?;
        ids.insert(seen.str("hostname")?.to_string());
        let eth0 = seen.0["interfaces"].as_array().and_then(|all| all.iter().find(|i| i["name"] == "eth0"));
        let address =
            eth0.and_then(|i| i["addrs"].as_array()).and_then(|a| a.first()).and_then(|a| a.as_str());
        addresses.insert(address.context("a container had no address on eth0")?.to_string());
        figures::add(SOAK, 1);
    }
    ensure!(ids.len() == 20, "20 containers at once had only {} distinct ids: {ids:?}", ids.len());
    ensure!(addresses.len() == 20, "20 containers at once had only {} distinct addresses", addresses.len());
    for id in &ids {
        let root = format!("{CONTAINERS}/{id}/merged");
        ensure!(roots.contains(root.as_str()), "container {id} had no overlay root of its own at {root}");
    }
    Ok(())
}
