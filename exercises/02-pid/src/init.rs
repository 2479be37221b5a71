//! Exercise 02: a tiny init for the container, like `docker run --init`.
//!
//! PID 1 of a PID namespace has two jobs that ordinary programs never expect:
//!
//! - Orphans: a process whose parent exits is re-parented to PID 1. When it
//!   exits in turn it stays a zombie (state Z in `ps`) until PID 1 collects
//!   its status with wait(2). A PID 1 that never waits, like `sleep` or many
//!   servers, piles up zombies until the process table is full.
//! - Signals: the kernel drops every signal that PID 1 has no handler for, so
//!   `docker stop` (SIGTERM) does nothing to a plain `sleep` as PID 1.
//!
//! With `--init`, PID 1 is this code and COMMAND runs as PID 2, an ordinary
//! process again, which a signal without a handler kills as usual. The init
//! passes the signals it gets on to COMMAND, reaps every child that exits,
//! and when COMMAND exits, exits with COMMAND's status; the kernel then kills
//! whatever is left in the namespace. tini, Docker's init, does just this.
//! Manual: pid_namespaces(7) ("The namespace init process"), wait(2), fork(2).

use anyhow::Result;
use nix::unistd::Pid;
use std::convert::Infallible;
// EXERCISE: the imports your code needs.
// END EXERCISE

/// Runs as the container's PID 1: starts COMMAND, then serves as its init
/// until it exits. Never returns: it exits with COMMAND's status.
pub fn run(command: &[String]) -> Result<Infallible> {
    let child = start(command)?;
    pass_signals_to(child)?;
    std::process::exit(reap_until_exit(child))
}

/// Starts COMMAND as a child of ours (PID 2) and returns its pid.
///
/// fork(2) (`nix::unistd::fork`), then, in the child, `process::exec`. If the
/// exec fails, the child must exit with the status `process::exit_status`
/// gives that error (127 for "not found", with its one line on stderr), so the
/// init exits with it too, as a container without --init would.
///
/// Book: chapter 02, "Exercise: a tiny init".
fn start(command: &[String]) -> Result<Pid> {
    // EXERCISE: fork; the child becomes COMMAND, the parent returns the child's pid.
    todo!("init::start({command:?}): fork, and exec COMMAND in the child")
    // END EXERCISE
}

/// Makes the signals that reach us (SIGTERM from `docker stop`, Ctrl-C's
/// SIGINT, SIGHUP) go on to COMMAND.
///
/// The runtime already does this for the container in `pid.rs`, and this
/// process is a copy of the runtime (clone(2) without exec): see what of
/// `pid.rs` you can use here.
///
/// Book: chapter 02, "Exercise: a tiny init".
fn pass_signals_to(command: Pid) -> Result<()> {
    // EXERCISE: install handlers that send what we get on to `command`.
    todo!("init::pass_signals_to({command}): pass SIGINT, SIGTERM and SIGHUP on to COMMAND")
    // END EXERCISE
}

/// Waits for children until COMMAND exits, and returns its status, Docker
/// style: its exit code, or 128+N if signal N killed it.
///
/// Every other child that exits is an orphan that was re-parented to us:
/// waiting for it is what removes its zombie. Wait for *any* child (pid -1,
/// `nix::sys::wait::wait`), and look at which one it was.
///
/// Book: chapter 02, "Exercise: a tiny init".
fn reap_until_exit(command: Pid) -> i32 {
    // EXERCISE: wait for any child, over and over, until `command` is the one that exited.
    todo!("init::reap_until_exit({command}): reap every child until COMMAND exits")
    // END EXERCISE
}
