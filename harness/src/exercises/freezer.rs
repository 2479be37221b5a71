//! Exercise 06: `pause ID` and `resume ID` freeze and thaw every process of
//! a running container with the cgroup freezer.
//!
//! Seen from the host: the CPU time that the kernel counts for each process
//! of the container (/proc/PID/stat) must not grow while it is paused, and
//! must grow again once it is resumed; its group must say that it is frozen.

use super::{started, Exercise, Graded};
use crate::{Ctx, Run, Running};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The runtimes' records, one per running container, named by its id.
const RECORDS: &str = crate::paths::RECORDS;

pub fn exercise() -> Exercise {
    Exercise {
        number: 6,
        name: "06-cgroups",
        title: "pause and resume (the freezer)",
        checks: vec![
            Graded::new(6, "freezer::pause_stops_every_process", 4, pause_stops_every_process),
            Graded::new(6, "freezer::resume_lets_it_go_on", 4, resume_lets_it_go_on),
            Graded::new(6, "errors::pausing_no_running_container_is_125", 2, pausing_no_container_is_125),
        ],
        needs_the_holes: &[],
    }
}

fn v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The container's group that the freezer works on.
fn freezer_group(id: &str) -> PathBuf {
    match v2() {
        true => Path::new("/sys/fs/cgroup/workshop").join(id),
        false => Path::new("/sys/fs/cgroup/freezer/workshop").join(id),
    }
}

/// What the container's group says: "FROZEN", "FREEZING" or "THAWED" (v1),
/// "frozen 1" or "frozen 0" (v2).
fn freezer_state(id: &str) -> String {
    let group = freezer_group(id);
    match v2() {
        true => {
            let events = std::fs::read_to_string(group.join("cgroup.events")).unwrap_or_default();
            events.lines().find(|l| l.starts_with("frozen ")).unwrap_or("no cgroup.events").to_string()
        }
        false => std::fs::read_to_string(group.join("freezer.state"))
            .map_or("no freezer.state".into(), |s| s.trim().to_string()),
    }
}

/// Thaws the container's group when dropped: a frozen process can't even
/// die (on v1 not even of SIGKILL), so a check that fails while it is
/// paused must not leave it that way.
struct Thaw(String);

impl Drop for Thaw {
    fn drop(&mut self) {
        let group = freezer_group(&self.0);
        let _ = match v2() {
            true => std::fs::write(group.join("cgroup.freeze"), "0"),
            false => std::fs::write(group.join("freezer.state"), "THAWED"),
        };
    }
}

/// The id of the container that the runtime with pid `runtime` runs: the
/// name of its record, which reads "PID STARTTIME".
fn container_id(runtime: i32) -> Result<String> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        for entry in std::fs::read_dir(RECORDS).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if text.split_whitespace().next() == Some(&runtime.to_string()) {
                return Ok(entry.file_name().to_string_lossy().into_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the runtime (pid {runtime}) made no record in {RECORDS}")
}

/// CPU time (user + system, in clock ticks) that the kernel counted for `pid`.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect())
        .unwrap_or_default();
    fields.iter().sum()
}

/// Waits (up to 3 s: the machine may be busy) until each of `pids` has run
/// for at least a tick; returns whether they all did, and how many ticks each ran.
fn all_run(pids: &[i32]) -> (bool, Vec<u64>) {
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let ran =
        || -> Vec<u64> { pids.iter().zip(&before).map(|(&p, b)| cpu_ticks(p).saturating_sub(*b)).collect() };
    let all = super::poll(3.0, || ran().iter().all(|&t| t > 0).then_some(()));
    (all.is_some(), ran())
}

/// How many ticks each of `pids` ran in `wall`.
fn progress(pids: &[i32], wall: Duration) -> Vec<u64> {
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    std::thread::sleep(wall);
    pids.iter().zip(before).map(|(&p, b)| cpu_ticks(p).saturating_sub(b)).collect()
}

/// A running container that runs `script` in a shell; returns the run, its
/// id, and the host pids of PID 1 and (once there are) `children` of its children.
fn spinning(ctx: &Ctx, flags: &[&str], script: &str, children: usize) -> Result<(Running, String, Vec<i32>)> {
    let running = ctx.run().args(["--net", "none"]).args(flags).cmd(["sh", "-c", script]).spawn()?;
    let (running, pid1) = started(running)?;
    let id = container_id(running.pid());
    let found = super::poll(10.0, || {
        let path = format!("/proc/{pid1}/task/{pid1}/children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found: Vec<i32> = text.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        (found.len() >= children).then_some(found)
    });
    match (id, found) {
        (Ok(id), Some(children)) => Ok((running, id, [vec![pid1], children].concat())),
        (id, _) => {
            // SAFETY: kill(2) on the container process this check started.
            unsafe { libc::kill(pid1, libc::SIGKILL) };
            let outcome = running.wait()?;
            id?;
            bail!("the container's PID 1 did not start {children} busy children\n{}", outcome.transcript())
        }
    }
}

/// `BIN pause ID` or `BIN resume ID`.
fn pause(ctx: &Ctx, verb: &str, id: &str) -> Result<()> {
    let outcome = Run::raw(&ctx.step.bin).args([verb, id]).timeout(Duration::from_secs(10)).output()?;
    outcome.expect_status(0).with_context(|| format!("`{verb} ID` should work on a running container"))?;
    Ok(())
}

/// Kills the container (thawed first) and waits for its runtime.
fn stop(running: Running, pids: &[i32], thaw: Thaw) -> Result<()> {
    drop(thaw);
    // SAFETY: kill(2) on the container process this check started.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    running.wait()?;
    Ok(())
}

/// The busy loop: the probe burns CPU for this long (wall time); a child
/// in the background and PID 1 (exec'd) both spin.
const SPIN: &str = "/bin/probe --spin-ms 20000 >/dev/null & exec /bin/probe --spin-ms 20000 >/dev/null";

fn pause_stops_every_process(ctx: &Ctx) -> Result<()> {
    let (running, id, pids) = spinning(ctx, &[], SPIN, 1)?;
    let thaw = Thaw(id.clone());
    let result = (|| -> Result<()> {
        // Control: both processes run.
        let (all, ran) = all_run(&pids);
        ensure!(all, "control: the container's busy processes did not all run in 3 s ({ran:?} ticks)");
        pause(ctx, "pause", &id)?;
        let ran = progress(&pids, Duration::from_millis(500));
        ensure!(
            ran.iter().all(|&t| t <= 1),
            "after `pause {id}` returned, the container's processes (PID 1 and its child) still ran for \
             {ran:?} clock ticks in 0.5 s: every process of the container must stop"
        );
        let state = freezer_state(&id);
        ensure!(
            state == "FROZEN" || state == "frozen 1",
            "after `pause {id}`, the container's group says {state:?}, not frozen ({})",
            freezer_group(&id).display()
        );
        Ok(())
    })();
    stop(running, &pids, thaw)?;
    result
}

fn resume_lets_it_go_on(ctx: &Ctx) -> Result<()> {
    // Under --userns too: the freezer works from the host, on the group.
    let script = "/bin/probe --spin-ms 4000 >/dev/null & /bin/probe --spin-ms 4000 >/dev/null; wait; exit 3";
    let (running, id, pids) = spinning(ctx, &["--userns"], script, 2)?;
    let thaw = Thaw(id.clone());
    let result = (|| -> Result<()> {
        pause(ctx, "pause", &id)?;
        let ran = progress(&pids[1..], Duration::from_millis(300));
        ensure!(
            ran.iter().all(|&t| t <= 1),
            "a paused --userns container still ran ({ran:?} ticks in 0.3 s)"
        );
        pause(ctx, "resume", &id)?;
        let (all, ran) = all_run(&pids[1..]);
        ensure!(
            all,
            "after `resume {id}`, the container's busy processes did not all run again in 3 s ({ran:?} ticks)"
        );
        let state = freezer_state(&id);
        ensure!(
            state == "THAWED" || state == "frozen 0",
            "after `resume {id}`, the container's group says {state:?}, not thawed"
        );
        Ok(())
    })();
    if let Err(err) = result {
        stop(running, &pids, thaw)?;
        return Err(err);
    }
    let outcome = running.wait()?;
    drop(thaw);
    outcome
        .expect_status(3)
        .context("a paused and resumed container should end as it would have: status 3")?;
    ensure!(
        !freezer_group(&id).exists(),
        "the container's group {} is left after it ended",
        freezer_group(&id).display()
    );
    Ok(())
}

/// A record file this check wrote; removed even when the check fails.
struct FakeRecord(PathBuf);

impl Drop for FakeRecord {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A group this check made, as a runtime killed with SIGKILL leaves one
/// (and its parent, if there was none); removed when dropped.
struct LeftGroup(Vec<PathBuf>);

impl LeftGroup {
    fn new(id: &str) -> Result<LeftGroup> {
        let group = freezer_group(id);
        let parent = group.parent().context("a group has a parent")?.to_path_buf();
        let mut made = Vec::new();
        for dir in [parent, group] {
            if !dir.exists() {
                std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                made.push(dir);
            }
        }
        Ok(LeftGroup(made))
    }
}

impl Drop for LeftGroup {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn pausing_no_container_is_125(ctx: &Ctx) -> Result<()> {
    // A record whose runtime is gone (it was killed, say): `true` has exited.
    let mut gone = std::process::Command::new("true").spawn()?;
    let dead = gone.id();
    gone.wait()?;
    std::fs::create_dir_all(RECORDS)?;
    let stale = FakeRecord(Path::new(RECORDS).join(format!("stale{}", std::process::id())));
    std::fs::write(&stale.0, format!("{dead} 1\n"))?;
    let stale_id = stale.0.file_name().unwrap_or_default().to_string_lossy().into_owned();
    // Its group is left too: only the record says whether it still runs.
    let _left = LeftGroup::new(&stale_id)?;
    let ids = ["no-such-container", stale_id.as_str(), "..", "../freezer", ""];
    for verb in ["pause", "resume"] {
        for id in ids {
            let outcome = Run::raw(&ctx.step.bin).args([verb, id]).output()?;
            let named = if id.is_empty() { vec![] } else { vec![id] };
            let refused = outcome.expect_status(125).and_then(|o| o.expect_one_error_line(&named));
            refused.with_context(|| format!("`{verb} {id:?}`: no running container has that id"))?;
        }
    }
    Ok(())
}
