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
/// The first signal, if it came before the child was known.
static EARLY: AtomicI32 = AtomicI32::new(0);

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

/// Points the handlers at the container. A signal that came before this
/// (the child may exec first) is passed on now, as if it came just now.
pub fn forward_to(child: Pid) {
    CHILD.store(child.as_raw(), SeqCst);
    let early = EARLY.swap(0, SeqCst);
    if early != 0 {
        pass_on(child.as_raw(), early, RECEIVED.load(SeqCst) == 1);
    }
}

extern "C" fn forward(signal: libc::c_int) {
    let first = RECEIVED.fetch_add(1, SeqCst) == 0;
    let child = CHILD.load(SeqCst);
    if child == 0 {
        // No container yet (or we are the child before exec): keep the first for `forward_to`.
        if first {
            EARLY.store(signal, SeqCst);
        }
        return;
    }
    pass_on(child, signal, first);
}

/// The first signal goes to the container and starts the grace period; a
/// second one, or the end of the grace period (SIGALRM), kills it.
fn pass_on(child: libc::pid_t, signal: libc::c_int, first: bool) {
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
