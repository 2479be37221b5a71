//! cgroup v2: one tree, and in each group a file per limit.
//!
//! A controller works in a group only if its parent lists it in
//! `cgroup.subtree_control`, so we switch ours on along the way down.

use super::{remove_group, write, Limits, CONTROLLERS, CPU_PERIOD_US, PARENT};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

// ANCHOR: create
/// The container's group: /sys/fs/cgroup/workshop/ID, every limit in it.
pub struct Group {
    dir: PathBuf,
}

pub fn create(id: &str, limits: &Limits) -> Result<Group> {
    let parent = Path::new(ROOT).join(PARENT);
    enable_controllers(Path::new(ROOT))?;
    let dir = parent.join(id);
    // Runtimes start at once: another may make the parent between our check
    // and our mkdir, or remove it (its container was the last) just before we
    // make our group in it. So EEXIST is fine, and ENOENT means "again".
    for attempt in 1.. {
        match std::fs::create_dir(&parent) {
            Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(err).with_context(|| format!("mkdir {}", parent.display()));
            }
            _ => {}
        }
        let made = enable_controllers(&parent)
            .and_then(|()| std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display())));
        match made {
            Err(_) if attempt < 10 && !parent.exists() => continue,
            made => {
                made?;
                break;
            }
        }
    }
    let group = Group { dir: dir.clone() };

    if let Some(bytes) = limits.memory_bytes {
        write(&dir.join("memory.max"), &bytes.to_string())?;
        // Else the kernel would swap the container out instead of stopping it.
        if dir.join("memory.swap.max").exists() {
            write(&dir.join("memory.swap.max"), "0")?;
        }
    }
    if let Some(quota) = limits.cpu_quota_us() {
        write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
    }
    if let Some(pids) = limits.pids {
        write(&dir.join("pids.max"), &pids.to_string())?;
    }
    Ok(group)
}
// ANCHOR_END: create

// ANCHOR: enable_controllers
/// Lets the groups below `group` use memory, cpu and pids.
fn enable_controllers(group: &Path) -> Result<()> {
    let available = std::fs::read_to_string(group.join("cgroup.controllers")).unwrap_or_default();
    let missing: Vec<&str> =
        CONTROLLERS.into_iter().filter(|c| !available.split_whitespace().any(|a| a == *c)).collect();
    if !missing.is_empty() {
        bail!(
            "cgroup v2: {} offers no {} controller (it has: {})",
            group.display(),
            missing.join(", "),
            available.trim()
        );
    }
    let control = group.join("cgroup.subtree_control");
    let enable = CONTROLLERS.map(|c| format!("+{c}")).join(" ");
    match std::fs::write(&control, &enable) {
        // v2's "no internal processes" rule: only the real root may hold processes
        // and hand controllers down; a cgroup namespace's root (dind, say) may not.
        Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
            let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
            bail!(
                "cgroup v2: {0} holds {1} process(es), so it cannot hand controllers to groups below it \
                 (the \"no internal processes\" rule); move them into a leaf group first, \
                 e.g. mkdir {0}/init and write each PID into {0}/init/cgroup.procs",
                group.display(),
                procs.lines().count()
            )
        }
        result => result.with_context(|| format!("write {enable:?} to {}", control.display())),
    }
}
// ANCHOR_END: enable_controllers

// ANCHOR: oom_kills
impl super::Group for Group {
    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    /// `oom_kill N` in the group's memory.events.
    fn oom_kills(&self) -> u64 {
        let events = std::fs::read_to_string(self.dir.join("memory.events")).unwrap_or_default();
        events.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()).unwrap_or(0)
    }
}
// ANCHOR_END: oom_kills

impl Drop for Group {
    fn drop(&mut self) {
        remove_group(&self.dir);
    }
}

/// Where the groups of all our containers are.
pub fn parents() -> Vec<PathBuf> {
    vec![Path::new(ROOT).join(PARENT)]
}
