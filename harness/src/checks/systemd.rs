//! systemd leaves the workshop's cgroups alone.
//!
//! The runtime keeps its groups in /sys/fs/cgroup/workshop/ID, beside systemd's
//! slices, like Docker's `cgroupfs` driver. Where PID 1 is systemd on the unified
//! hierarchy (the VM tier's systemd guest, most learners' machines), systemd must not
//! move the container, nor reset its limits, when it reloads or restarts a unit.
//! Elsewhere the check does not apply, and says so in a line of its own.

use crate::{Check, Ctx};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn checks() -> Vec<Check> {
    vec![Check::new(
        6,
        "systemd::a_daemon_reload_and_a_restart_leave_the_containers_group_alone",
        reload_leaves_the_group_alone,
    )
    .plain_only()]
}

/// Why the check does not apply here, or None where PID 1 is systemd on cgroup v2.
pub fn not_systemd_on_v2() -> Option<String> {
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default().trim().to_string();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    match (init == "systemd", v2) {
        (true, true) => None,
        (true, false) => {
            Some("PID 1 is systemd, but /sys/fs/cgroup is not the unified (v2) hierarchy".into())
        }
        (false, _) => Some(format!("PID 1 is {init:?}, not systemd")),
    }
}

fn systemctl(args: &[&str]) -> Result<()> {
    let out = Command::new("systemctl").args(args).output().context("could not run systemctl")?;
    if !out.status.success() {
        bail!(
            "`systemctl {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The v2 group of a process, from /proc/PID/cgroup ("0::/workshop/ID").
fn group_of(pid: i32) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("the container (pid {pid}) is gone"))?;
    let line = text.lines().find(|l| l.starts_with("0::")).context("no v2 line in /proc/PID/cgroup")?;
    Ok(line["0::".len()..].to_string())
}

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

fn reload_leaves_the_group_alone(ctx: &Ctx) -> Result<()> {
    if let Some(why) = not_systemd_on_v2() {
        println!(
            "{}::systemd: did not apply here ({why}); it runs where PID 1 is systemd on cgroup v2 \
             (cargo xtask vm-test --guest systemd)",
            ctx.step.name
        );
        return Ok(());
    }
    let running = ctx.run().args(["--net", "none", "--memory", "64m"]).cmd(["sleep", "30"]).spawn()?;
    let pid = running.container_pid()?;
    let seen = (|| -> Result<PathBuf> {
        let before = group_of(pid)?;
        ensure!(before.starts_with("/workshop/"), "the container is in {before}, not below /workshop");
        let dir = Path::new("/sys/fs/cgroup").join(before.trim_start_matches('/'));
        let limit = |when: &str| -> Result<()> {
            let max = std::fs::read_to_string(dir.join("memory.max"))
                .with_context(|| format!("read {}/memory.max {when}", dir.display()))?;
            ensure!(max.trim() == "67108864", "memory.max {when} is {:?}, not 67108864", max.trim());
            Ok(())
        };
        limit("before")?;
        systemctl(&["daemon-reload"])?;
        systemctl(&["restart", "systemd-journald.service"])?;
        ensure!(alive(pid), "the container (pid {pid}) died when systemd reloaded and restarted journald");
        let after = group_of(pid)?;
        ensure!(after == before, "systemd moved the container from {before} to {after}");
        limit("after the reload and the restart")?;
        Ok(dir)
    })();
    // SAFETY: kill(2) on the container process this check started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    running.wait()?.expect_status(137)?;
    let dir = seen?;
    ensure!(!dir.exists(), "the container ended but its group {} is still there", dir.display());
    Ok(())
}
