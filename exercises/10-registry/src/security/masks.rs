//! Masked paths: parts of /proc and /sys that describe or control the whole
//! machine, hidden as Docker hides them (moby's oci/defaults.go).
//!
//! /proc/kcore is the host's memory, /proc/keys the kernel's keyrings,
//! /proc/timer_list and sched_debug leak what the host runs, /sys/firmware
//! holds the firmware's tables. A file gets /dev/null bound over it (it reads
//! empty), a directory an empty read-only tmpfs.

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};
use std::path::Path;

// ANCHOR: masked
pub const MASKED: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
// ANCHOR_END: masked

// ANCHOR: apply
/// Child side, inside the new root (after pivot_root): hide every masked path
/// this kernel has. Needs CAP_SYS_ADMIN, so it runs before the capabilities go.
pub fn apply() -> Result<()> {
    for path in MASKED.iter().map(Path::new) {
        let Ok(meta) = path.symlink_metadata() else {
            continue; // not on this kernel (timer_stats is long gone, for one)
        };
        let hidden = if meta.is_dir() {
            let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(Some("tmpfs"), path, Some("tmpfs"), flags, None::<&str>)
        } else {
            mount(Some("/dev/null"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        };
        hidden.with_context(|| format!("mask {}", path.display()))?;
    }
    Ok(())
}
// ANCHOR_END: apply
