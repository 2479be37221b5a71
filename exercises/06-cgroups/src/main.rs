//! Step 06: control groups.
//!
//! `06-cgroups run [--memory SIZE] [--cpus N] [--pids-limit N] [OPTIONS] [--] COMMAND...`
//! runs COMMAND with a hostname of its own, as PID 1 of its own process tree,
//! in a root filesystem of its own, with its own network interface on the
//! workshop bridge, within limits on memory, CPU time and processes; with
//! `--userns`, its root is an unprivileged user on the host. Read `run` below top to
//! bottom: it is the container's whole life as the host sees it, and `child`
//! is the part inside.
//!
//! Exercise 06 adds `pause ID` and `resume ID`: every process of a running
//! container stops where it is, and later goes on, with the cgroup freezer
//! (see `freeze` in `cgroup/mod.rs`, `v1.rs` and `v2.rs`, and README.md
//! beside Cargo.toml).

mod cgroup;
mod net;
mod paths;
mod pid;
mod process;
mod rootfs;
mod state;
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
    about = "Step 06: run a command within limits on memory, CPU and processes (+ cgroups)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run COMMAND in a new container
    Run(RunArgs),
    /// Remove what killed runtimes left behind (cgroups, leases)
    Cleanup,
    /// Freeze every process of a running container (ID: its name in /run/workshop/containers)
    Pause { id: String },
    /// Let the processes of a paused container go on
    Resume { id: String },
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
    /// The container's network
    #[arg(long, value_enum, default_value_t = net::Mode::Bridge, visible_alias = "network")]
    net: net::Mode,
    /// Memory limit, like 64m (b, k, m, g); the kernel kills the container beyond it
    #[arg(long, value_name = "SIZE", allow_negative_numbers = true, value_parser = cgroup::parse_memory)]
    memory: Option<u64>,
    /// CPU limit, in CPUs: 0.5 is half of one CPU's time
    #[arg(long, value_name = "CPUS", allow_negative_numbers = true, value_parser = cgroup::parse_cpus)]
    cpus: Option<f64>,
    /// The most processes (and threads) the container may have at once
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = cgroup::parse_pids)]
    pids_limit: Option<u64>,
    /// The command to run, and its arguments
    #[arg(required = true, trailing_var_arg = true)]
    command: Vec<String>,
}

fn main() {
    let result = match process::parse_args::<Cli>().command {
        Command::Run(args) => run(args),
        Command::Cleanup => cleanup(),
        Command::Pause { id } => pause(&id, true),
        Command::Resume { id } => pause(&id, false),
    };
    std::process::exit(process::exit_status(result));
}

// ANCHOR: run
/// The host's side: check the input, start the child, wait for it.
fn run(args: RunArgs) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("creating namespaces needs root: run it with sudo");
    }
    let id = process::random_id();
    let hostname = args.hostname.unwrap_or_else(|| id.clone());
    uts::check_hostname(&hostname)?;
    let mut rootfs = rootfs::check(&args.rootfs)?;
    let userns = args.userns_remap.or(args.userns.then_some(user::DEFAULT));
    if userns.is_some() && args.net == net::Mode::Host {
        bail!("--net host cannot be combined with --userns: a user namespace may only manage a network namespace of its own");
    }

    // clone(2) with CLONE_NEWUTS: the child starts in a fresh UTS namespace,
    // a copy of ours that it may change without anyone else noticing.
    // CLONE_NEWPID: it is PID 1 of a new PID namespace.
    // CLONE_NEWNS: it gets a copy of our mount table to change at will.
    // CLONE_NEWNET: a network stack of its own (except with --net host).
    let mut flags = CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS;
    flags |= net::clone_flags(args.net);
    if let Some(mapping) = userns {
        // CLONE_NEWUSER: the other namespaces then belong to the new user namespace.
        flags |= CloneFlags::CLONE_NEWUSER;
        rootfs = user::mapped_rootfs(&rootfs, mapping)?;
    }
    // Signals first: a Ctrl-C during setup must not end us before the teardown.
    pid::forward_signals()?;
    // ANCHOR: make_group
    // What lives outside is recorded first, then made; each part is removed
    // when dropped, on every way out of this function.
    let _record = state::create(&id)?;
    cgroup::remove_stale();
    let limits = cgroup::Limits { memory_bytes: args.memory, cpus: args.cpus, pids: args.pids_limit };
    let cgroup = cgroup::create(&id, limits)?;
    // ANCHOR_END: make_group
    let mut network = net::prepare(args.net, &id)?;
    let mut sync = sync::Sync::new()?;
    let spec = Spec { userns: userns.is_some(), hostname, rootfs, command: args.command };
    let mut container = process::spawn(flags, || child(&spec, &mut sync))?;
    pid::forward_to(container.pid);

    // The child waits while we do what only the outside can do.
    if let Err(err) = outside_setup(container.pid, &cgroup, userns, &mut network) {
        process::stop(container.pid);
        return Err(err);
    }
    sync.release_child()?;
    // The child sets itself up now: it reports a failure, or its exec closes the pipe.
    container.wait_for_exec()?;

    let status = process::wait_for(container.pid)?;
    // ANCHOR: oom_report
    if cgroup.oom_killed() {
        eprintln!(
            "{}: container killed: out of memory (limit {})",
            env!("CARGO_BIN_NAME"),
            cgroup.memory_limit()
        );
    }
    // ANCHOR_END: oom_report
    Ok(status)
}

// ANCHOR: cleanup
/// `cleanup`: the groups, leases and records of runtimes that were killed.
fn cleanup() -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("cleaning up needs root: run it with sudo");
    }
    cgroup::remove_stale();
    net::remove_stale();
    state::remove_stale();
    Ok(0)
}
// ANCHOR_END: cleanup

/// `pause ID` (frozen) and `resume ID` (not frozen): the container's id is
/// the name of its record in /run/workshop/containers, and its default hostname.
fn pause(id: &str, frozen: bool) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("pausing a container needs root: run it with sudo");
    }
    cgroup::freeze(id, frozen)?;
    Ok(0)
}
// ANCHOR_END: run

// ANCHOR: outside_setup
/// What only the host can do once the child exists.
fn outside_setup(
    child_pid: Pid,
    cgroup: &cgroup::Cgroup,
    userns: Option<user::Mapping>,
    network: &mut net::Network,
) -> Result<()> {
    cgroup.add(child_pid)?;
    if let Some(mapping) = userns {
        user::write_maps(child_pid, mapping)?;
    }
    network.connect(child_pid)
}
// ANCHOR_END: outside_setup

// ANCHOR: child
// ANCHOR: spec
/// What the child needs to become the container, decided by `run`: a new
/// feature adds a field here, not an argument to `child`.
struct Spec {
    /// Whether it has a user namespace of its own (the host writes its uid map).
    userns: bool,
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
    process::exec(&spec.command)
}
// ANCHOR_END: child
