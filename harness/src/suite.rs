//! The test matrix: every step x every check that applies to it.
//!
//! A check names the first step that must pass it (`since`) and, rarely, the
//! last (`until`, for a limitation that a later step removes). Step N is thus
//! tested against every check of steps 1..N: no step may lose an isolation.

use crate::{leaks, Probe, Run, Step, Workshop};
use anyhow::Result;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::ffi::OsString;

pub struct Check {
    pub name: &'static str,
    pub since: u8,
    pub until: u8,
    /// Whether it also runs with `--userns` (from step 04 on).
    pub with_userns: bool,
    /// An escape attempt from inside (counted for the book's reliability page).
    pub escape: bool,
    pub run: fn(&Ctx) -> Result<()>,
}

impl Check {
    pub const fn new(since: u8, name: &'static str, run: fn(&Ctx) -> Result<()>) -> Check {
        Check { name, since, until: u8::MAX, with_userns: true, escape: false, run }
    }

    /// For a limitation that a later step fixes (like `ps` in step 02).
    pub const fn until(mut self, last: u8) -> Check {
        self.until = last;
        self
    }

    /// For a check that tries to get out of the container (or to reach the host from it).
    pub const fn escape(mut self) -> Check {
        self.escape = true;
        self
    }

    /// For a check that sets its own flags (it runs once, without `--userns` added).
    pub const fn plain_only(mut self) -> Check {
        self.with_userns = false;
        self
    }
}

/// What a check returns (as its error) when it cannot run here, and why: the
/// test list shows it as `ignored (skipped: WHY)`, never as a pass.
#[derive(Debug)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for Skipped {}

/// From step 04 on, every check also runs in a user namespace.
pub const USERNS_SINCE: u8 = 4;
/// From step 07 on, a container's layer is kept unless `--rm` says otherwise.
const RM_SINCE: u8 = 7;
/// From step 09 on, root in a default container lacks CAP_SYS_ADMIN (Docker's
/// hardening): no mount(2), no sethostname(2).
pub const HARDENED_SINCE: u8 = 9;

/// What a check gets: the step under test and the workshop's paths.
#[derive(Clone)]
pub struct Ctx {
    pub step: Step,
    pub workshop: Workshop,
    /// This run of the check adds `--userns` to every container.
    pub userns: bool,
}

impl Ctx {
    /// From step 03 on, the container has the workshop rootfs as its root.
    pub fn has_rootfs(&self) -> bool {
        self.step.number >= 3
    }

    /// `BIN run` with only what every run of this step needs: `--rm` from
    /// step 07 on, so that checks leave no container layers behind.
    pub fn bare(&self) -> Run {
        let run = Run::raw(&self.step.bin).arg("run");
        if self.step.number >= RM_SINCE {
            run.arg("--rm")
        } else {
            run
        }
    }

    /// `BIN run` with what the step needs to find the workshop's programs,
    /// and the variant's flags.
    pub fn run(&self) -> Run {
        let mut run = self.bare();
        if self.has_rootfs() {
            run = run.arg("--rootfs").arg(&self.workshop.rootfs);
        }
        if self.userns {
            run = run.arg("--userns");
        }
        run
    }

    /// `run()` for a check that shows a namespace keeps a change inside (a
    /// mount, a hostname): from step 09 on it gives root CAP_SYS_ADMIN back, so
    /// that the check still tests the namespace and not the hardening.
    pub fn run_as_admin(&self) -> Run {
        match self.step.number >= HARDENED_SINCE {
            true => self.run().args(["--cap-add", "SYS_ADMIN"]),
            false => self.run(),
        }
    }

    /// The probe's path as the container sees it.
    pub fn probe_path(&self) -> OsString {
        match self.has_rootfs() {
            true => "/bin/probe".into(),
            false => self.workshop.probe.clone().into(),
        }
    }

    /// `BIN run FLAGS -- probe ACTIONS`: expects exit 0, returns what it saw.
    pub fn probe(&self, flags: &[&str], actions: &[&str]) -> Result<Probe> {
        let outcome = self.run().args(flags).cmd([self.probe_path()]).args(actions).output()?;
        outcome.expect_status(0)?;
        Probe::parse(&outcome)
    }
}

/// Runs `checks` against every step in the workspace, like `cargo test`.
pub fn main(checks: Vec<Check>) -> ! {
    let (steps, workshop) = setup(|workshop| workshop.steps());
    run(&steps, &workshop, checks)
}

/// Checks that we are root and finds the workshop and the binaries to test;
/// exits with the reason when it cannot.
pub fn setup(targets: impl FnOnce(&Workshop) -> Result<Vec<Step>>) -> (Vec<Step>, Workshop) {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("The integration tests run containers and need root. Run them with:\n    cargo xtask test\n(it uses sudo), or as root: sudo -E cargo xtask test");
        std::process::exit(1);
    }
    let found = Workshop::from_env().and_then(|ws| Ok((targets(&ws)?, ws)));
    found.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    })
}

/// Runs each check on each binary it applies to (by the binary's step number).
pub fn run(steps: &[Step], workshop: &Workshop, checks: Vec<Check>) -> ! {
    let mut args = Arguments::from_args();
    // The leak check compares the whole host before and after: one test at a time.
    args.test_threads = Some(1);
    leaks::adopt_orphans();
    if let Err(err) = crate::sandbox::start() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
    let mut trials = Vec::new();
    for step in steps {
        for check in checks.iter().filter(|c| (c.since..=c.until).contains(&step.number)) {
            for userns in [false, true] {
                if userns && (step.number < USERNS_SINCE || !check.with_userns) {
                    continue;
                }
                let ctx = Ctx { step: step.clone(), workshop: workshop.clone(), userns };
                let name = format!("{}{}::{}", step.name, if userns { "+userns" } else { "" }, check.name);
                let (run, escape) = (check.run, check.escape);
                trials.push(Trial::ignorable_test(name, move || {
                    if escape {
                        crate::figures::add(crate::figures::ESCAPES, 1);
                    }
                    guarded_or_skipped(&ctx, run)
                }));
            }
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    crate::sandbox::stop();
    crate::figures::save();
    conclusion.exit()
}

/// Runs one check inside the leak check; leftovers fail it and are removed.
/// (The grader, `exercises::grade`, runs its tests through it too.)
pub fn guarded(ctx: &Ctx, check: fn(&Ctx) -> Result<()>) -> Result<(), Failed> {
    guarded_or_skipped(ctx, check).map(|_| ())
}

/// `guarded`, where a check that returns `Skipped` is reported as skipped.
fn guarded_or_skipped(ctx: &Ctx, check: fn(&Ctx) -> Result<()>) -> Result<Completion, Failed> {
    let before = leaks::snapshot();
    let mut result = check(ctx);
    let skipped = match &result {
        Err(err) => err.downcast_ref::<Skipped>().map(|skip| skip.to_string()),
        Ok(()) => None,
    };
    if skipped.is_some() {
        result = Ok(());
    }
    let leaked = leaks::settled_since(&before);
    leaks::reclaim(&leaked);
    crate::figures::add(crate::figures::LEAKS, leaked.len() as u64);
    let mut report: Vec<String> = leaked.iter().map(|l| format!("LEAK: {l}")).collect();
    if let Err(err) = result {
        report.insert(0, format!("{err:#}"));
    }
    match (report.is_empty(), skipped) {
        (true, None) => Ok(Completion::Completed),
        (true, Some(why)) => Ok(Completion::ignored_with(why)),
        (false, _) => Err(report.join("\n").into()),
    }
}
