//! Control groups: limits on memory, CPU time and the number of processes.
//!
//! The kernel has two interfaces. cgroup v2 is one tree with every controller
//! in each group (`/sys/fs/cgroup/workshop/ID/memory.max`); v1 has one tree
//! per controller (`/sys/fs/cgroup/memory/workshop/ID/memory.limit_in_bytes`).
//! A host in "hybrid" mode (v1 controllers plus an empty v2 mount) is a v1
//! host for us. `v1.rs` and `v2.rs` do the same things side by side, behind
//! the small `Group` interface below. Step 09 adds `devices.rs`: which device
//! files the container may open, a controller on v1 and a BPF program on v2.

mod devices;
mod v1;
mod v2;

use crate::state;
use anyhow::{bail, Context, Result};
use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Our groups live below this one, in each tree: one group per container.
const PARENT: &str = "workshop";
/// The controllers we use, in both versions (v1: a tree each; v2: handed down).
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// The CPU limit is "QUOTA microseconds of CPU time in every PERIOD".
const CPU_PERIOD_US: u64 = 100_000;

// ANCHOR: limits
/// What the flags ask for; None is "no limit".
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// Only /dev's own devices may be opened (false with --privileged).
    pub devices_allow_list: bool,
}

impl Limits {
    fn cpu_quota_us(&self) -> Option<u64> {
        self.cpus.map(|cpus| (cpus * CPU_PERIOD_US as f64).round() as u64)
    }
}
// ANCHOR_END: limits

#[derive(Clone, Copy, Debug, PartialEq)]
enum Version {
    V1,
    V2,
}

// ANCHOR: detect
/// Which interface the host has: the filesystem type of /sys/fs/cgroup tells.
fn detect() -> Result<Version> {
    let fs = statfs("/sys/fs/cgroup").context("statfs /sys/fs/cgroup (is cgroupfs mounted?)")?;
    Ok(if fs.filesystem_type() == CGROUP2_SUPER_MAGIC { Version::V2 } else { Version::V1 })
}
// ANCHOR_END: detect

// ANCHOR: interface
/// What a container's group is in either version: `v1::Group` and
/// `v2::Group` each make themselves in `create` and remove themselves when
/// dropped; the runtime needs only this much of them.
trait Group {
    /// The directories a process joins: one on v2, one per tree on v1.
    fn dirs(&self) -> Vec<PathBuf>;
    /// How often the OOM killer struck in the group.
    fn oom_kills(&self) -> u64;
}

/// A container's group, whichever version the host has.
pub struct Cgroup {
    group: Box<dyn Group>,
    limits: Limits,
}
// ANCHOR_END: interface

// ANCHOR: create
/// Host side, before clone: make the container's group and write its limits.
pub fn create(id: &str, limits: Limits) -> Result<Cgroup> {
    let group: Box<dyn Group> = match detect()? {
        Version::V2 => Box::new(v2::create(id, &limits)?),
        Version::V1 => Box::new(v1::create(id, &limits)?),
    };
    let cgroup = Cgroup { group, limits };
    crate::process::fault("cgroup")?;
    Ok(cgroup)
}
// ANCHOR_END: create

// ANCHOR: add
impl Cgroup {
    /// Host side, while the child waits: move it into the group, so that no
    /// instruction of COMMAND runs unlimited.
    pub fn add(&self, child: Pid) -> Result<()> {
        for dir in self.group.dirs() {
            let procs = dir.join("cgroup.procs");
            write(&procs, &child.to_string())?;
        }
        // The child inherited our OOM score; at -1000 (some services run so)
        // the OOM killer could never pick it. Docker starts containers at 0.
        write(Path::new(&format!("/proc/{child}/oom_score_adj")), "0")
    }

    /// After the container ended: did the kernel's OOM killer end it?
    pub fn oom_killed(&self) -> bool {
        self.group.oom_kills() > 0
    }

    /// The memory limit, for messages: "64 MiB".
    pub fn memory_limit(&self) -> String {
        let bytes = self.limits.memory_bytes.unwrap_or(0);
        if bytes.is_multiple_of(1 << 20) {
            format!("{} MiB", bytes >> 20)
        } else {
            format!("{bytes} bytes")
        }
    }
}
// ANCHOR_END: add

// ANCHOR: remove
/// Kills whatever is still in a group, removes it, and its parent once empty.
/// (`v1::Group` and `v2::Group` call it for each of their directories when dropped.)
fn remove_group(dir: &Path) {
    // A group with processes cannot be removed; exiting ones take a moment.
    for _ in 0..200 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // rmdir refuses a parent that still has groups: another container's.
    if let Some(parent) = dir.parent().filter(|p| p.ends_with(PARENT)) {
        let _ = std::fs::remove_dir(parent);
    }
}
// ANCHOR_END: remove

// ANCHOR: remove_stale
/// Removes the groups of containers whose runtime is gone (killed, say).
pub fn remove_stale() {
    let parents = match detect() {
        Ok(Version::V2) => v2::parents(),
        _ => v1::parents(),
    };
    for parent in parents {
        for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let is_group = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_group && !state::is_live(&entry.file_name().to_string_lossy()) {
                remove_group(&entry.path());
            }
        }
    }
}
// ANCHOR_END: remove_stale

/// Writes a cgroup file, saying which one when the kernel refuses.
fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("write {value:?} to {}", path.display()))
}

/// Parses `--memory`: a number of bytes with an optional b, k, m or g, like Docker's.
/// (clap says which flag and value in the message.)
pub fn parse_memory(text: &str) -> Result<u64> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => lower.split_at(at),
        None => (lower.as_str(), ""),
    };
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" => 10,
        "m" | "mb" => 20,
        "g" | "gb" => 30,
        _ => bail!("use a number with b, k, m or g, like 64m"),
    };
    let bytes = digits.parse::<u64>().ok().and_then(|n| n.checked_mul(1 << shift));
    let Some(bytes) = bytes else { bail!("use a number with b, k, m or g, like 64m") };
    // Docker's minimum too: below it a container dies before it has started.
    if bytes < 6 << 20 {
        bail!("the minimum is 6m");
    }
    Ok(bytes)
}

/// Parses `--cpus`: how many CPUs' worth of time, like 0.5 or 2.
pub fn parse_cpus(text: &str) -> Result<f64> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    match text.parse::<f64>() {
        Ok(cpus) if cpus.is_finite() && (0.01..=available).contains(&cpus) => Ok(cpus),
        _ => bail!("use a number from 0.01 to {available} (this machine's CPUs)"),
    }
}

/// Parses `--pids-limit`: at least 1 process.
pub fn parse_pids(text: &str) -> Result<u64> {
    match text.parse::<u64>() {
        Ok(pids) if pids > 0 => Ok(pids),
        _ => bail!("use a whole number of processes, at least 1"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("64m").unwrap(), 64 << 20);
        assert_eq!(parse_memory("64M").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("8192k").unwrap(), 8 << 20);
        assert_eq!(parse_memory("7000000").unwrap(), 7_000_000);
        for bad in ["", "0", "12q", "m", "-5m", "1.5g", "5m", "99999999999999g", " 64m"] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpus_and_quota() {
        assert_eq!(parse_cpus("0.5").unwrap(), 0.5);
        let limits = Limits { cpus: Some(0.5), ..Limits::default() };
        assert_eq!(limits.cpu_quota_us(), Some(50_000));
        for bad in ["", "-1", "0", "abc", "NaN", "inf", "0.001", "100000"] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pids("32").unwrap(), 32);
        for bad in ["0", "-1", "x", ""] {
            assert!(parse_pids(bad).is_err(), "{bad:?}");
        }
    }
}
