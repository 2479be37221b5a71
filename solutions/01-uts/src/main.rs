//! Step 01: the UTS namespace.
//!
//! `01-uts run [--hostname NAME] [--] COMMAND [ARGS...]` runs COMMAND with a
//! hostname of its own. Read `run` below top to bottom: it is the container's
//! whole life as the host sees it, and `child` is the part inside.
//!
//! Exercise 01 adds `--ipc MODE`: with `--ipc private` the container gets an
//! IPC namespace of its own (see `ipc.rs`, and README.md beside Cargo.toml).

mod ipc;
mod process;
mod uts;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use nix::sched::CloneFlags;
use std::convert::Infallible;

#[derive(Parser)]
#[command(name = env!("CARGO_BIN_NAME"), about = "Step 01: run a command with a hostname of its own (UTS namespace)")]
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
    /// IPC namespace: `private` (its own SysV IPC objects) or `host` [default: host, as in step 01]
    #[arg(long, value_name = "MODE", value_enum)]
    ipc: Option<ipc::Mode>,
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
    let mut flags = CloneFlags::CLONE_NEWUTS;
    if let Some(mode) = args.ipc {
        flags |= ipc::clone_flags(mode);
    }
    let spec = Spec { hostname, command: args.command };
    let mut container = process::spawn(flags, || child(&spec))?;
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
    /// COMMAND and its arguments.
    command: Vec<String>,
}
// ANCHOR_END: spec

/// The container's side: runs in the new namespaces and becomes COMMAND.
fn child(spec: &Spec) -> Result<Infallible> {
    uts::set_hostname(&spec.hostname)?;
    process::exec(&spec.command)
}
// ANCHOR_END: child
