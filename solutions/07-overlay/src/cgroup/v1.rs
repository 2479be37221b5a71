//! cgroup v1: a separate tree per controller, each with its own copy of our group.

use super::{write, Limits, CPU_PERIOD_US, PARENT};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

// ANCHOR: create
/// The trees we use, in this order: memory, cpu, pids.
pub const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

pub fn create(id: &str, limits: &Limits, dirs: &mut Vec<PathBuf>) -> Result<()> {
    for controller in CONTROLLERS {
        let tree = Path::new("/sys/fs/cgroup").join(controller);
        if !tree.exists() {
            bail!("cgroup v1: no {controller} hierarchy at {} (is the controller enabled?)", tree.display());
        }
        let dir = tree.join(PARENT).join(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        dirs.push(dir);
    }
    let (memory, cpu, pids) = (&dirs[0], &dirs[1], &dirs[2]);

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
    Ok(())
}
// ANCHOR_END: create

// ANCHOR: oom_kills
/// How often the OOM killer struck: `oom_kill N` in the memory group's memory.oom_control.
pub fn oom_kills(dirs: &[PathBuf]) -> u64 {
    let control = std::fs::read_to_string(dirs[0].join("memory.oom_control")).unwrap_or_default();
    control.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()).unwrap_or(0)
}
// ANCHOR_END: oom_kills
