//! Step 04: the user namespace.
//!
//! `04-user run [--hostname NAME] [--rootfs DIR] [--userns] [--] COMMAND...`
//! runs COMMAND with a hostname of its own, as PID 1 of its own process tree,
//! in a root filesystem of its own; with `--userns`, its root is an
//! unprivileged user on the host. Read `run` below top to
//! bottom: it is the container's whole life as the host sees it, and `child`
//! is the part inside.
//!
//! Exercise 04 adds `--user UID[:GID]`: COMMAND then runs as that user, not as
//! root (see `parse_user` and `switch_to` in `user.rs`, and README.md beside
//! Cargo.toml).

mod paths;
mod pid;
mod process;
mod rootfs;
mod sync;
mod user;
mod uts;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use std::convert::Infallible;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = env!("CARGO_BIN_NAME"),
    about = "Step 04: run a command whose root is, with --userns, nobody on the host (+ user namespace)"
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
    /// Give the container a user namespace: root inside, uid 100000 outside
    #[arg(long)]
    userns: bool,
    /// With --userns: map container ids 0..SIZE to host ids START.. [implies --userns]
    #[arg(long, value_name = "START[:SIZE]", value_parser = user::parse_mapping)]
    userns_remap: Option<user::Mapping>,
    /// Run COMMAND as this user and group, by number (like `docker run --user 1000:1000`) [GID default: 0]
    #[arg(long, short = 'u', value_name = "UID[:GID]", value_parser = user::parse_user)]
    user: Option<user::User>,
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
    let mut rootfs = rootfs::check(&args.rootfs)?;
    let userns = args.userns_remap.or(args.userns.then_some(user::DEFAULT));

    // clone(2) with CLONE_NEWUTS: the child starts in a fresh UTS namespace,
    // a copy of ours that it may change without anyone else noticing.
    // CLONE_NEWPID: it is PID 1 of a new PID namespace.
    // CLONE_NEWNS: it gets a copy of our mount table to change at will.
    let mut flags = CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS;
    if let Some(mapping) = userns {
        // CLONE_NEWUSER: the other namespaces then belong to the new user
        // namespace. Its root may mount sysfs only for a network namespace
        // it owns, so it gets one too (empty until step 05).
        flags |= CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET;
        rootfs = user::mapped_rootfs(&rootfs, mapping)?;
    }
    let mut sync = sync::Sync::new()?;
    pid::forward_signals()?;
    let spec = Spec { userns: userns.is_some(), user: args.user, hostname, rootfs, command: args.command };
    let mut container = process::spawn(flags, || child(&spec, &mut sync))?;
    pid::forward_to(container.pid);

    // The child waits while we do what only the outside can do.
    if let Err(err) = outside_setup(container.pid, userns) {
        process::stop(container.pid);
        return Err(err);
    }
    sync.release_child()?;
    // The child sets itself up now: it reports a failure, or its exec closes the pipe.
    container.wait_for_exec()?;

    process::wait_for(container.pid)
}
// ANCHOR_END: run

// ANCHOR: outside_setup
/// What only the host can do once the child exists.
fn outside_setup(child_pid: Pid, userns: Option<user::Mapping>) -> Result<()> {
    if let Some(mapping) = userns {
        user::write_maps(child_pid, mapping)?;
    }
    Ok(())
}
// ANCHOR_END: outside_setup

// ANCHOR: child
// ANCHOR: spec
/// What the child needs to become the container, decided by `run`: a new
/// feature adds a field here, not an argument to `child`.
struct Spec {
    /// Whether it has a user namespace of its own (the host writes its uid map).
    userns: bool,
    /// The user COMMAND runs as (--user).
    user: Option<user::User>,
    /// The container's hostname.
    hostname: String,
    /// The directory that becomes the container's root.
    rootfs: PathBuf,
    /// COMMAND and its arguments.
    command: Vec<String>,
}
// ANCHOR_END: spec

/// The container's side: runs in the new namespaces and becomes COMMAND.
fn child(spec: &Spec, sync: &mut sync::Sync) -> Result<Infallible> {
    sync.wait_for_parent()?;
    if spec.userns {
        user::become_root()?;
    }
    uts::set_hostname(&spec.hostname)?;
    rootfs::enter(&spec.rootfs)?;
    rootfs::clean_env(&spec.hostname);
    if let Some(user) = spec.user {
        user::switch_to(user)?;
    }
    process::exec(&spec.command)
}
// ANCHOR_END: child
