//! The PID namespace: COMMAND is PID 1 of a process tree of its own.
//!
//! PID 1 is special: the kernel drops every signal that PID 1 has no handler
//! for, so a plain `sleep` as PID 1 shrugs off Ctrl-C. The runtime passes
//! SIGINT, SIGTERM and SIGHUP on to it, and if the container is still there
//! after a second signal or a grace period, sends SIGKILL, as `docker stop` does.

use anyhow::{Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering::SeqCst};

/// How long PID 1 has to exit after the first signal (Docker's default).
const GRACE_SECONDS: u32 = 10;

// A signal handler can only reach statics: one container per process. A
// daemon that runs many (step 11) forwards from a signalfd loop instead.
static CHILD: AtomicI32 = AtomicI32::new(0);
static RECEIVED: AtomicU32 = AtomicU32::new(0);

// ANCHOR: forward
/// Installs the handlers. Call it before the child exists, so that no
/// signal can kill the runtime and leave an orphaned container behind.
/// (From step 05 on, before anything outside is made: the teardown must run.)
pub fn forward_signals() -> Result<()> {
    let action = SigAction::new(SigHandler::Handler(forward), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGALRM] {
        // SAFETY: `forward` only makes async-signal-safe calls (kill, alarm).
        unsafe { sigaction(signal, &action) }.with_context(|| format!("install a {signal} handler"))?;
    }
    Ok(())
}

/// Points the handlers at the container; a signal that came early stops it now.
pub fn forward_to(child: Pid) {
    CHILD.store(child.as_raw(), SeqCst);
    if RECEIVED.load(SeqCst) > 0 {
        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
    }
}

extern "C" fn forward(signal: libc::c_int) {
    let first = RECEIVED.fetch_add(1, SeqCst) == 0;
    let child = CHILD.load(SeqCst);
    if child == 0 {
        return; // no container yet (or we are the child before exec)
    }
    // SAFETY: kill(2) and alarm(2) are async-signal-safe.
    unsafe {
        if first && signal != libc::SIGALRM {
            libc::kill(child, signal);
            libc::alarm(GRACE_SECONDS);
        } else {
            libc::kill(child, libc::SIGKILL);
        }
    }
}
// ANCHOR_END: forward
