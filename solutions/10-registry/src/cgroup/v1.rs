//! cgroup v1: a separate tree per controller, each with its own copy of our group.

use super::{remove_group, write, Limits, CONTROLLERS, CPU_PERIOD_US, PARENT};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// v1 has a tree per controller: ours, and the devices tree (its allow-list).
fn trees() -> impl Iterator<Item = &'static str> {
    CONTROLLERS.into_iter().chain(["devices"])
}

// ANCHOR: create
/// The container's group in each controller's tree: /sys/fs/cgroup/memory/workshop/ID, ...
pub struct Group {
    id: String,
    /// The directories made so far, removed again when dropped.
    made: Vec<PathBuf>,
}

impl Group {
    /// Our group in `controller`'s tree.
    fn dir(&self, controller: &str) -> PathBuf {
        Path::new(ROOT).join(controller).join(PARENT).join(&self.id)
    }
}

pub fn create(id: &str, limits: &Limits) -> Result<Group> {
    let mut group = Group { id: id.to_string(), made: Vec::new() };
    for controller in trees() {
        let tree = Path::new(ROOT).join(controller);
        if !tree.exists() {
            bail!("cgroup v1: no {controller} hierarchy at {} (is the controller enabled?)", tree.display());
        }
        let dir = group.dir(controller);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        group.made.push(dir);
    }
    let (memory, cpu, pids) = (group.dir("memory"), group.dir("cpu"), group.dir("pids"));

    if let Some(bytes) = limits.memory_bytes {
        write(&memory.join("memory.limit_in_bytes"), &bytes.to_string())?;
        // With swap accounting on, memory+swap needs the same limit (it may not be lower).
        let memsw = memory.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, &bytes.to_string())?;
        }
    }
    if let Some(quota) = limits.cpu_quota_us() {
        write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
    }
    if let Some(max) = limits.pids {
        write(&pids.join("pids.max"), &max.to_string())?;
    }
    if limits.devices_allow_list {
        super::devices::allow_v1(&group.dir("devices"))?;
    }
    Ok(group)
}
// ANCHOR_END: create

// ANCHOR: oom_kills
impl super::Group for Group {
    fn dirs(&self) -> Vec<PathBuf> {
        self.made.clone()
    }

    /// `oom_kill N` in the memory group's memory.oom_control.
    fn oom_kills(&self) -> u64 {
        let control = std::fs::read_to_string(self.dir("memory").join("memory.oom_control"));
        let control = control.unwrap_or_default();
        control.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()).unwrap_or(0)
    }
}
// ANCHOR_END: oom_kills

impl Drop for Group {
    fn drop(&mut self) {
        self.made.iter().rev().for_each(|dir| remove_group(dir));
    }
}

/// Where the groups of all our containers are: `workshop` in each tree.
pub fn parents() -> Vec<PathBuf> {
    trees().map(|c| Path::new(ROOT).join(c).join(PARENT)).collect()
}
