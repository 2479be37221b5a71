//! Every check of every step, one module per kernel feature.
//!
//! A check applies from the step that introduced its feature to the last step
//! (see `suite`). The grader runs the same checks against the learners' binaries.

mod cgroup;
mod exit;
mod faults;
mod hardening;
mod inputs;
mod mnt;
mod net;
mod oci;
mod overlay;
mod pid;
mod registry;
mod security;
mod store;
mod systemd;
mod user;
mod uts;
mod volume;

use crate::Check;

/// All checks, in the order of the book.
pub fn all() -> Vec<Check> {
    [
        exit::checks(),
        uts::checks(),
        pid::checks(),
        mnt::checks(),
        user::checks(),
        net::checks(),
        cgroup::checks(),
        systemd::checks(),
        overlay::checks(),
        oci::checks(),
        volume::checks(),
        inputs::checks(),
        security::checks(),
        hardening::checks(),
        faults::checks(),
        registry::checks(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The host's hostname, straight from the kernel.
pub(crate) fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

/// A fresh path in the host's /tmp for a test's own files, removed on drop.
pub(crate) struct TempPath(pub std::path::PathBuf);

impl TempPath {
    pub fn new(label: &str) -> TempPath {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        TempPath(std::env::temp_dir().join(format!("workshop-test-{}-{n}-{label}", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0).or_else(|_| std::fs::remove_file(&self.0));
    }
}
