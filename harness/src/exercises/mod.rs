//! The graded exercises: what grades each one, and for how many points.
//!
//! An exercise is the runtime of step NN plus one feature, so it is graded as
//! step NN: every check of `crate::checks` that applies to step NN must still
//! pass (worth no points: the shipped skeleton passes them already), and the
//! exercise's own checks, in one module per exercise here, carry the points.
//! `grade::main` runs them all and reports them as JSON; `cargo xtask grade`
//! shows the table.
//!
//! Adding exercise NN: a folder in exercises/ and one in solutions/, a module
//! here with its checks, and one line in `all`.

mod as_user;
mod caps;
mod commit;
mod freezer;
pub mod grade;
mod init;
mod integrity;
mod ipc;
mod publish;
mod read_only;
mod tmpfs;

use crate::{Check, Ctx, Run, Running};
use anyhow::{bail, Context, Result};

/// One exercise: the folder `exercises/NAME` (and `solutions/NAME`), the step
/// it extends (NAME's number) and its graded checks.
pub struct Exercise {
    pub number: u8,
    /// "01-uts": the folder's name, also the step's.
    pub name: &'static str,
    /// What the learner adds, in a few words.
    pub title: &'static str,
    pub checks: Vec<Graded>,
    /// The checks of its step that fail until the exercise is done: in a
    /// build-it-yourself exercise the hole is the step's own feature (09's
    /// capabilities), so the shipped skeleton cannot pass the step's checks
    /// of it. The self-check's run of the shipped exercises (`--step-checks
    /// introduced`) leaves these out; every other grade runs them.
    pub needs_the_holes: &'static [&'static str],
}

/// One of an exercise's own checks and what it is worth.
pub struct Graded {
    pub check: Check,
    pub points: u32,
}

impl Graded {
    /// A check of exercise `number`: it runs once (no `--userns` variant added;
    /// a check that wants one runs it itself).
    pub const fn new(number: u8, name: &'static str, points: u32, run: fn(&Ctx) -> Result<()>) -> Graded {
        Graded { check: Check::new(number, name, run).until(number).plain_only(), points }
    }
}

impl Exercise {
    /// The points the exercise's checks add up to.
    pub fn points(&self) -> u32 {
        self.checks.iter().map(|g| g.points).sum()
    }
}

/// Every exercise, in the order of the book.
pub fn all() -> Vec<Exercise> {
    vec![
        ipc::exercise(),
        init::exercise(),
        read_only::exercise(),
        as_user::exercise(),
        publish::exercise(),
        freezer::exercise(),
        commit::exercise(),
        tmpfs::exercise(),
        caps::exercise(),
        integrity::exercise(),
    ]
}

/// Polls `probe` every 10 ms until it gives a value or `seconds` have passed.
pub(crate) fn poll<T>(seconds: f64, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if std::time::Instant::now() > until {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The container's first process (its PID 1), as the host sees it. Fails at
/// once, with what the run printed, if the runtime exits first.
pub(crate) fn container_pid(running: &mut Running) -> Result<i32> {
    let found = poll(10.0, || match running.children().first() {
        Some(&pid) => Some(Some(pid)),
        None if !running.is_running() => Some(None),
        None => None,
    });
    found.flatten().context("no container process appeared within 10 s")
}

/// The error for a run that ended before its COMMAND was running.
pub(crate) fn ended_early(running: Running) -> anyhow::Error {
    match running.wait() {
        Ok(outcome) => anyhow::anyhow!(
            "`{}` ended (status {}) before COMMAND was running\n{}",
            outcome.command,
            outcome.status,
            outcome.transcript()
        ),
        Err(err) => err,
    }
}

/// The container's first process of a runtime from step 05 on, as the host
/// sees it, once it runs COMMAND: the child in a UTS namespace of its own
/// that has exec'd (the runtime's other children, like `ip`, are neither).
/// Fails at once, with what the run printed, if the runtime exits first.
pub(crate) fn started(mut running: Running) -> Result<(Running, i32)> {
    let link = |pid: i32, what: &str| std::fs::read_link(format!("/proc/{pid}/{what}")).ok();
    let runtime = running.pid();
    let found = poll(10.0, || {
        let (uts, exe) = (link(runtime, "ns/uts"), link(runtime, "exe"));
        let is_container = |&child: &i32| {
            let (child_uts, child_exe) = (link(child, "ns/uts"), link(child, "exe"));
            child_uts.is_some() && child_uts != uts && child_exe.is_some() && child_exe != exe
        };
        match running.children().into_iter().find(is_container) {
            Some(pid) => Some(Some(pid)),
            None if !running.is_running() => Some(None),
            None => None,
        }
    });
    match found {
        Some(Some(pid)) => Ok((running, pid)),
        Some(None) => Err(ended_early(running)),
        None => {
            running.signal(libc::SIGKILL)?;
            let outcome = running.wait()?;
            bail!("the container did not start its command within 10 s\n{}", outcome.transcript())
        }
    }
}

/// A container kept after it ended (run with `--name`, without `--rm`);
/// its layer is removed with `rm` when dropped.
pub(crate) struct Kept<'a> {
    pub ctx: &'a Ctx,
    pub name: String,
}

impl<'a> Kept<'a> {
    /// A name of this check's own: `LABEL-PID`.
    pub fn new(ctx: &'a Ctx, label: &str) -> Kept<'a> {
        Kept { ctx, name: format!("{label}-{}", std::process::id()) }
    }

    /// `BIN run --name NAME` (kept: no --rm), with `--rootfs` unless `image` is given.
    pub fn run(&self, image: Option<&str>) -> Run {
        let run = Run::raw(&self.ctx.step.bin).args(["run", "--net", "none", "--name", &self.name]);
        match image {
            Some(image) => run.args(["--image", image]),
            None => run.arg("--rootfs").arg(&self.ctx.workshop.rootfs),
        }
    }
}

impl Drop for Kept<'_> {
    fn drop(&mut self) {
        let _ = Run::raw(&self.ctx.step.bin).args(["rm", &self.name]).output();
    }
}

/// A command line from /proc (its NULs as spaces); empty for a zombie.
pub(crate) fn cmdline(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_string()
}

/// Kills a container that a check started (its PID 1: the whole namespace
/// goes with it) and waits for the runtime.
pub(crate) fn kill_container(running: Running, pid1: i32) -> Result<()> {
    // SAFETY: kill(2) on the container process this check started.
    unsafe { libc::kill(pid1, libc::SIGKILL) };
    running.wait()?;
    Ok(())
}

/// A path in the workshop rootfs, as the host sees it; removed on drop, in
/// case a container wrote it where it should not have.
pub(crate) struct InRootfs(pub std::path::PathBuf);

impl InRootfs {
    pub fn new(ctx: &Ctx, inside: &str) -> InRootfs {
        InRootfs(ctx.workshop.rootfs.join(inside.trim_start_matches('/')))
    }
}

impl Drop for InRootfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0).or_else(|_| std::fs::remove_file(&self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exercise_is_worth_points_and_is_named_after_its_step() {
        for exercise in all() {
            assert!(exercise.points() > 0, "{}", exercise.name);
            assert_eq!(exercise.name[..2].parse::<u8>().ok(), Some(exercise.number), "{}", exercise.name);
            for graded in &exercise.checks {
                assert_eq!((graded.check.since, graded.check.until), (exercise.number, exercise.number));
            }
        }
    }

    #[test]
    fn the_step_checks_an_exercise_leaves_out_as_shipped_are_its_steps_own() {
        let checks = crate::checks::all();
        for exercise in all() {
            for name in exercise.needs_the_holes {
                let found = checks.iter().find(|c| c.name == *name);
                let found = found.unwrap_or_else(|| panic!("{}: no step check {name}", exercise.name));
                // Only the checks the step introduced run beside the shipped skeleton.
                assert_eq!(found.since, exercise.number, "{}: {name}", exercise.name);
            }
        }
    }
}
