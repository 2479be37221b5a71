//! Step 02: the PID namespace.
//!
//! `02-pid run [--hostname NAME] [--] COMMAND [ARGS...]` runs COMMAND with a
//! hostname of its own, as PID 1 of its own process tree. Read `run` below
//! top to bottom: it is the container's whole life as the host sees it,
//! and `child` is the part inside.
//!
//! Exercise 02 adds `--init`: PID 1 is then a tiny init that starts COMMAND,
//! passes signals on to it and reaps orphaned zombies (see `init.rs`, and
//! README.md beside Cargo.toml).

mod init;
mod pid;
mod process;
mod uts;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use nix::sched::CloneFlags;
use std::convert::Infallible;

#[derive(Parser)]
#[command(
    name = env!("CARGO_BIN_NAME"),
    about = "Step 02: run a command with its own hostname, as PID 1 (+ PID namespace)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run COMMAND in a new container
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Hostname inside the container [default: a random 12-digit id, like Docker's]
    #[arg(long)]
    hostname: Option<String>,
    /// Run a tiny init as PID 1: it starts COMMAND, passes signals on and reaps zombies (like `docker run --init`)
    #[arg(long)]
    init: bool,
    /// The command to run, and its arguments
    #[arg(required = true, trailing_var_arg = true)]
    command: Vec<String>,
}

fn main() {
    let Command::Run(args) = process::parse_args::<Cli>().command;
    std::process::exit(process::exit_status(run(args)));
}

// ANCHOR: run
/// The host's side: check the input, start the child, wait for it.
fn run(args: RunArgs) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("creating namespaces needs root: run it with sudo");
    }
    let hostname = args.hostname.unwrap_or_else(process::random_id);
    uts::check_hostname(&hostname)?;

    // clone(2) with CLONE_NEWUTS: the child starts in a fresh UTS namespace,
    // a copy of ours that it may change without anyone else noticing.
    // CLONE_NEWPID: it is PID 1 of a new PID namespace.
    let flags = CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID;
    pid::forward_signals()?;
    let spec = Spec { hostname, init: args.init, command: args.command };
    let mut container = process::spawn(flags, || child(&spec))?;
    pid::forward_to(container.pid);
    // The child sets itself up now: it reports a failure, or its exec closes the pipe.
    container.wait_for_exec()?;

    process::wait_for(container.pid)
}
// ANCHOR_END: run

// ANCHOR: child
// ANCHOR: spec
/// What the child needs to become the container, decided by `run`: a new
/// feature adds a field here, not an argument to `child`.
struct Spec {
    /// The container's hostname.
    hostname: String,
    /// Run the tiny init as PID 1 (--init).
    init: bool,
    /// COMMAND and its arguments.
    command: Vec<String>,
}
// ANCHOR_END: spec

/// The container's side: runs in the new namespaces and becomes COMMAND.
fn child(spec: &Spec) -> Result<Infallible> {
    uts::set_hostname(&spec.hostname)?;
    if spec.init {
        return init::run(&spec.command);
    }
    process::exec(&spec.command)
}
// ANCHOR_END: child
