//! Exercise 02: `--init` makes PID 1 a tiny init that starts COMMAND as its
//! child, passes signals on to it, reaps orphaned zombies and exits with
//! COMMAND's status (like `docker run --init`).
//!
//! Step 02 has no /proc of its own yet, so the process tree is read from the
//! host, under the container's first process.

use super::{cmdline, container_pid, ended_early, kill_container, poll, Exercise, Graded};
use crate::{Ctx, Running};
use anyhow::{bail, ensure, Context, Result};
use std::time::Duration;

pub fn exercise() -> Exercise {
    Exercise {
        number: 2,
        name: "02-pid",
        title: "a tiny init (--init)",
        checks: vec![
            Graded::new(2, "init::command_is_a_child_of_pid_1", 1, command_is_a_child_of_pid_1),
            Graded::new(2, "init::orphaned_zombies_are_reaped", 4, orphaned_zombies_are_reaped),
            Graded::new(2, "init::signals_are_passed_on_to_the_command", 2, signals_are_passed_on),
            Graded::new(
                2,
                "init::sigterm_stops_a_command_without_handlers",
                1,
                sigterm_stops_a_plain_command,
            ),
            Graded::new(2, "init::exit_status_is_the_commands", 2, exit_status_is_the_commands),
        ],
        needs_the_holes: &[],
    }
}

/// The orphan in the zombie checks: started in the background by a subshell
/// that exits at once, so it is re-parented to the container's PID 1.
const ORPHAN: &str = "sleep 0.5";

/// The state letter in /proc/PID/stat (R, S, Z, ...), None once it is gone.
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

fn children(pid: i32) -> Vec<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Waits until a child of the container's PID 1 runs `command` (a command
/// line, as in /proc). Returns the host pids of PID 1 and of that child;
/// with `--init`, the child is COMMAND. Fails with what the run printed if
/// the runtime exits first.
fn wait_for_child(mut running: Running, command: &str) -> Result<(Running, i32, i32)> {
    let pid1 = match container_pid(&mut running) {
        Ok(pid) => pid,
        Err(err) if running.is_running() => {
            running.signal(libc::SIGKILL)?;
            running.wait()?;
            return Err(err);
        }
        Err(_) => return Err(ended_early(running)),
    };
    let found = poll(10.0, || match children(pid1).into_iter().find(|&c| cmdline(c) == command) {
        Some(child) => Some(Some(child)),
        None if !running.is_running() => Some(None),
        None => None,
    });
    match found {
        Some(Some(child)) => Ok((running, pid1, child)),
        Some(None) => Err(ended_early(running)),
        None => {
            kill_container(running, pid1)?;
            bail!("no child of the container's PID 1 ran `{command}` within 10 s")
        }
    }
}

fn command_is_a_child_of_pid_1(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&["--init"], &[])?;
    let (pid, ppid) = (seen.int("pid")?, seen.int("ppid")?);
    ensure!(
        pid != 1 && ppid == 1,
        "with --init, COMMAND should be a child of the init (PID 1); the probe is PID {pid}, its parent {ppid}"
    );
    Ok(())
}

/// What became of the orphan once it exited: reaped, or still a zombie.
#[derive(Debug, PartialEq)]
enum Orphan {
    Reaped,
    Zombie,
}

/// Runs `sh -c '(ORPHAN &); exec sleep 30'` with `flags` and follows the orphan.
fn follow_an_orphan(ctx: &Ctx, flags: &[&str]) -> Result<Orphan> {
    let script = format!("({ORPHAN} &); exec sleep 30");
    let running = ctx.run().args(flags).cmd(["sh", "-c", &script]).spawn()?;
    // Its parent, the subshell, exits at once: it is PID 1's child from then on.
    let (running, pid1, orphan) = wait_for_child(running, ORPHAN)?;
    // It exits after half a second. Reaped, it is gone; else a zombie (Z) for good.
    let ended = poll(3.0, || match state(orphan) {
        None => Some(Orphan::Reaped),
        Some('Z') => {
            std::thread::sleep(Duration::from_millis(500));
            Some(if state(orphan).is_none() { Orphan::Reaped } else { Orphan::Zombie })
        }
        Some(_) => None,
    });
    kill_container(running, pid1)?;
    ended.context("the orphan `sleep 0.5` was still running after 3 s")
}

fn orphaned_zombies_are_reaped(ctx: &Ctx) -> Result<()> {
    // Control: without --init, `sleep` is PID 1 and never waits: a zombie stays.
    let without = follow_an_orphan(ctx, &[])?;
    ensure!(
        without == Orphan::Zombie,
        "control: without --init, PID 1 (`sleep`) should leave the orphan a zombie, but it was reaped"
    );
    let with = follow_an_orphan(ctx, &["--init"])?;
    ensure!(
        with == Orphan::Reaped,
        "with --init, an orphan re-parented to the init exited and stayed a zombie (state Z): \
         PID 1 must wait(2) for every child, not only for COMMAND"
    );
    Ok(())
}

/// Waits until `pid` has a handler for `signal` (the kernel lists caught signals in SigCgt).
fn wait_for_handler(pid: i32, signal: i32) -> Result<()> {
    let caught = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?.trim().to_string();
        (u64::from_str_radix(&mask, 16).ok()? & (1 << (signal - 1)) != 0).then_some(())
    };
    poll(10.0, caught).with_context(|| format!("COMMAND never installed its handler for signal {signal}"))
}

fn signals_are_passed_on(ctx: &Ctx) -> Result<()> {
    for (signal, name) in [(libc::SIGTERM, "TERM"), (libc::SIGINT, "INT")] {
        let script = format!("trap 'echo got {name}; exit 7' {name}; while :; do sleep 0.05; done");
        let running = ctx.run().arg("--init").cmd(["sh", "-c", &script]).spawn()?;
        let (running, _, command) = wait_for_child(running, &format!("sh -c {script}"))?;
        wait_for_handler(command, signal)?;
        running.signal(signal)?;
        let outcome = running.wait()?;
        ensure!(
            outcome.status == 7 && outcome.stdout.contains(&format!("got {name}")),
            "with --init, SIG{name} sent to the runtime should reach COMMAND (PID 2), whose handler \
             prints `got {name}` and exits 7; the run ended with status {}\n{}",
            outcome.status,
            outcome.transcript()
        );
    }
    Ok(())
}

fn sigterm_stops_a_plain_command(ctx: &Ctx) -> Result<()> {
    // `sleep` has no handler: as PID 1 it would ignore SIGTERM, as PID 2 it dies of it.
    let running = ctx.run().arg("--init").cmd(["sleep", "30"]).timeout(Duration::from_secs(20)).spawn()?;
    let (running, _, _) = wait_for_child(running, "sleep 30")?;
    running.signal(libc::SIGTERM)?;
    let outcome = running.wait()?;
    ensure!(
        outcome.status == 128 + libc::SIGTERM,
        "with --init, one SIGTERM should end `sleep 30` at once (it is not PID 1, so the signal's \
         default action kills it): expected status {}, got {}\n{}",
        128 + libc::SIGTERM,
        outcome.status,
        outcome.transcript()
    );
    Ok(())
}

fn exit_status_is_the_commands(ctx: &Ctx) -> Result<()> {
    let cases: [(&[&str], i32, &str); 4] = [
        (&["true"], 0, "`true` exits 0"),
        (&["sh", "-c", "exit 7"], 7, "`sh -c 'exit 7'` exits 7"),
        (&["sh", "-c", "kill -KILL $$"], 128 + libc::SIGKILL, "a COMMAND killed by SIGKILL is 128+9"),
        (&["no-such-command-here"], 127, "a COMMAND that is not found is 127"),
    ];
    for (command, status, what) in cases {
        let outcome = ctx.run().arg("--init").cmd(command).output()?;
        outcome.expect_status(status).with_context(|| format!("with --init, {what}, like without"))?;
    }
    let outcome = ctx.run().arg("--init").cmd(["no-such-command-here"]).output()?;
    outcome
        .expect_one_error_line(&["no-such-command-here", "not found"])
        .context("with --init, a COMMAND that is not found should be reported in one line, like without")?;
    Ok(())
}
