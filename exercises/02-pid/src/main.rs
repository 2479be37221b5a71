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
    let child_pid = process::spawn(flags, || child(&hostname, args.init, &args.command))?;
    pid::forward_to(child_pid);

    process::wait_for(child_pid)
}
// ANCHOR_END: run

// ANCHOR: child
/// The container's side: runs in the new namespaces and becomes COMMAND.
fn child(hostname: &str, init: bool, command: &[String]) -> Result<Infallible> {
    uts::set_hostname(hostname)?;
    if init {
        return init::run(command);
    }
    process::exec(command)
}
// ANCHOR_END: child
