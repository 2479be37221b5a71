//! Exercise 01: the IPC namespace.
//!
//! System V IPC objects (shared memory segments, semaphore sets, message
//! queues) are found by a numeric key, machine-wide: any process that knows
//! the key of a segment can attach it, read it and write it. Each IPC
//! namespace has a set of these objects of its own, empty when it is made,
//! and destroyed with everything in it when its last process exits.
//!
//! `--ipc private` gives the container a new IPC namespace, as Docker does for
//! every container; `--ipc host` (and no flag, as in step 01) shares the host's.
//! Manual: ipc_namespaces(7), clone(2), and `ipcmk`/`ipcs` to try it by hand.

use nix::sched::CloneFlags;

/// `--ipc MODE`, with Docker's names for the two modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A new, empty IPC namespace: the container sees none of the host's objects
    Private,
    /// The host's IPC namespace, shared
    Host,
}

/// The clone(2) flags that give the child the IPC namespace `mode` asks for:
/// a new one for `Mode::Private`, none for `Mode::Host` (the child then stays
/// in ours). `run` in main.rs adds them to the flags of the clone.
///
/// Book: chapter 01, "Exercise: the IPC namespace".
pub fn clone_flags(mode: Mode) -> CloneFlags {
    // EXERCISE: return the flag that gives the child a new IPC namespace, or none.
    todo!("ipc::clone_flags({mode:?}): which CloneFlags give the child an IPC namespace of its own?")
    // END EXERCISE
}
