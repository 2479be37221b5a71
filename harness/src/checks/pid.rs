//! Step 02: the PID namespace, and what being PID 1 means for signals.

use crate::{Check, Ctx, Probe, Running};
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(2, "pid::command_is_pid_1", command_is_pid_1),
        Check::new(2, "pid::signals_are_passed_on", signals_are_passed_on),
        Check::new(2, "pid::a_second_signal_kills_a_pid_1_that_ignores_it", second_signal_kills),
        Check::new(2, "pid::ps_still_lies_without_a_proc_of_its_own", ps_still_lies).until(2),
    ]
}

fn command_is_pid_1(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&[], &[])?;
    ensure!(seen.int("pid")? == 1, "inside, the command is PID {}, not 1", seen.int("pid")?);
    ensure!(
        seen.int("ppid")? == 0,
        "PID 1's parent is {} (outside its namespace it should read 0)",
        seen.int("ppid")?
    );
    let host_pid_ns = std::fs::read_link("/proc/self/ns/pid")?.to_string_lossy().into_owned();
    ensure!(
        !host_pid_ns.contains(&seen.ns("pid")?.to_string()),
        "the container shares the host's PID namespace"
    );
    Ok(())
}

/// Waits until the container's first process has a handler for `signal`
/// (the kernel lists caught signals in SigCgt), so sending it is not racy.
fn wait_for_handler(running: &Running, signal: i32) -> Result<()> {
    let pid = running.container_pid()?;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim).unwrap_or("0");
        // A shell may catch the signal before its `trap` runs; its first child
        // (the loop's `sleep`, after the trap) says the trap is in place.
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if u64::from_str_radix(caught, 16).unwrap_or(0) & (1 << (signal - 1)) != 0
            && !children.trim().is_empty()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    anyhow::bail!("the container never installed its handler for signal {signal}")
}

fn signals_are_passed_on(ctx: &Ctx) -> Result<()> {
    for (signal, name) in [(libc::SIGTERM, "TERM"), (libc::SIGINT, "INT"), (libc::SIGHUP, "HUP")] {
        let script = format!("trap 'echo got {name}; exit 7' {name}; while :; do sleep 0.05; done");
        let running = ctx.run().cmd(["sh", "-c", &script]).spawn()?;
        wait_for_handler(&running, signal)?;
        running.signal(signal)?;
        let outcome = running.wait()?;
        outcome
            .expect_status(7)
            .with_context(|| format!("SIG{name} sent to the runtime should reach the container"))?;
        ensure!(
            outcome.stdout.contains(&format!("got {name}")),
            "the container did not see SIG{name}\n{}",
            outcome.transcript()
        );
    }
    Ok(())
}

fn second_signal_kills(ctx: &Ctx) -> Result<()> {
    // `sleep` has no handler, and the kernel drops such signals for PID 1.
    let mut running = ctx.run().cmd(["sleep", "30"]).spawn()?;
    running.container_pid()?;
    running.signal(libc::SIGINT)?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(running.is_running(), "PID 1 without a handler should survive the first SIGINT");
    running.signal(libc::SIGINT)?;
    running
        .wait()?
        .expect_status(128 + libc::SIGKILL)
        .context("a second Ctrl-C should kill the container")?;
    Ok(())
}

fn ps_still_lies(ctx: &Ctx) -> Result<()> {
    // Without a /proc of its own, the container still sees every host process.
    let running = ctx.run().cmd([ctx.probe_path()]).spawn()?;
    let runtime = running.pid() as i64;
    let outcome = running.wait()?;
    outcome.expect_status(0)?;
    let pids = Probe::parse(&outcome)?.ints("proc_pids")?;
    ensure!(
        pids.contains(&runtime),
        "the host's /proc should still show the runtime (pid {runtime}) in step 02"
    );
    Ok(())
}
