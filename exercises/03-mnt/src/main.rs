//! Step 03: the mount namespace and a root filesystem.
//!
//! `03-mnt run [--hostname NAME] [--rootfs DIR] [--] COMMAND [ARGS...]` runs
//! COMMAND with a hostname of its own, as PID 1 of its own process tree, in a
//! root filesystem of its own with its own /proc. Read `run` below top to
//! bottom: it is the container's whole life as the host sees it, and `child`
//! is the part inside.
//!
//! Exercise 03 adds `--read-only`: the container's root filesystem is then
//! read-only, with a fresh writable tmpfs on /tmp (see `make_read_only` in
//! `rootfs.rs`, and README.md beside Cargo.toml).

mod pid;
mod process;
mod rootfs;
mod uts;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use nix::sched::CloneFlags;
use std::convert::Infallible;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = env!("CARGO_BIN_NAME"),
    about = "Step 03: run a command in a root filesystem of its own (+ mount namespace)"
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
    /// The directory that becomes the container's root filesystem
    #[arg(long, env = "WORKSHOP_ROOTFS", default_value = rootfs::DEFAULT)]
    rootfs: PathBuf,
    /// Mount the root filesystem read-only, with a writable tmpfs on /tmp (like `docker run --read-only --tmpfs /tmp`)
    #[arg(long)]
    read_only: bool,
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
    let rootfs = rootfs::check(&args.rootfs)?;

    // clone(2) with CLONE_NEWUTS: the child starts in a fresh UTS namespace,
    // a copy of ours that it may change without anyone else noticing.
    // CLONE_NEWPID: it is PID 1 of a new PID namespace.
    // CLONE_NEWNS: it gets a copy of our mount table to change at will.
    let flags = CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS;
    pid::forward_signals()?;
    let spec = Spec { hostname, rootfs, read_only: args.read_only, command: args.command };
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
    /// The directory that becomes the container's root.
    rootfs: PathBuf,
    /// Remount the root read-only (--read-only).
    read_only: bool,
    /// COMMAND and its arguments.
    command: Vec<String>,
}
// ANCHOR_END: spec

/// The container's side: runs in the new namespaces and becomes COMMAND.
fn child(spec: &Spec) -> Result<Infallible> {
    uts::set_hostname(&spec.hostname)?;
    rootfs::enter(&spec.rootfs)?;
    if spec.read_only {
        rootfs::make_read_only()?;
    }
    rootfs::clean_env(&spec.hostname);
    process::exec(&spec.command)
}
// ANCHOR_END: child
