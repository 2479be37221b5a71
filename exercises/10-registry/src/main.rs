//! Step 10: the registry, images by name and a store that shares layers.
//!
//! `10-registry pull REF` fetches an image (`alpine`, `host:port/name:tag`,
//! `name@sha256:...`) from its registry into a store that keeps each layer
//! once, by digest; `10-registry run --image REF [OPTIONS] [--] [COMMAND...]`
//! pulls it if it is missing and runs it as step 09 does (hardened, with its
//! own hostname, PID 1, layers, volumes, network and limits), with the image
//! config's command, environment, working directory and user. Read `run`
//! below top to bottom: it is the container's whole life as the host sees
//! it, and `child` is the part inside.
//!
//! Exercise 10 is the step's own checks of what it pulls: the blob's size
//! and digest (`fetch_layer` in `pull.rs`) and the platform chosen from an
//! index (`manifest_for_us`); see README.md beside Cargo.toml.

mod cgroup;
mod config;
mod image;
mod net;
mod oci;
mod overlay;
mod paths;
mod pid;
mod process;
mod pull;
mod reference;
mod registry;
mod rootfs;
mod security;
mod state;
mod store;
mod sync;
mod user;
mod uts;
mod volume;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use reference::Reference;
use std::convert::Infallible;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = env!("CARGO_BIN_NAME"),
    about = "Step 10: pull images by name from a registry into a store that shares layers, and run them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// `run`'s flags outgrew the other commands; they are parsed once, so no Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run COMMAND in a new container
    Run(RunArgs),
    /// Download an image from its registry: alpine, user/name:tag, host:port/name:tag, name@sha256:...
    Pull(PullArgs),
    /// Remove what killed runtimes left behind (cgroups, overlay mounts, leases, half-pulled layers)
    Cleanup,
    /// Show what a container changed: A added, C changed, D deleted
    Diff { id: String },
    /// List the containers whose layer was kept (run without --rm)
    Ls,
    /// Remove a finished container's layer
    Rm { id: String },
    /// Manage images: stacks of read-only layers, each kept once in the store
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage named volumes
    #[command(subcommand)]
    Volume(VolumeCommand),
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// List the named volumes
    Ls,
    /// Remove a named volume and its data
    Rm { name: String },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Make an image from layers, bottom first (directories, .tar or .tar.gz files)
    Import {
        /// The image's name, a reference like `name` or `name:tag`
        name: String,
        #[arg(required_unless_present = "oci", conflicts_with = "oci")]
        layers: Vec<PathBuf>,
        /// Take the layers from an OCI image layout (a directory with index.json and blobs/)
        #[arg(long, value_name = "DIR")]
        oci: Option<PathBuf>,
    },
    /// List the images: name, ID, layers, size and what they share with others
    Ls,
    /// Show an image's config and layers as JSON, like `docker image inspect`
    Inspect { name: String },
    /// Remove an image's name, then every layer no image or container uses
    Rm { name: String },
}

#[derive(clap::Args)]
struct PullArgs {
    /// The image: [REGISTRY/]REPOSITORY[:TAG][@DIGEST]
    reference: String,
    /// Print nothing but errors
    #[arg(short, long)]
    quiet: bool,
    /// The user name to log in with (the password comes from --password-stdin)
    #[arg(long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the password from standard input
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// A registry that may be reached over plain HTTP: HOST[:PORT] (repeatable)
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Hostname inside the container [default: a random 12-digit id, like Docker's]
    #[arg(long)]
    hostname: Option<String>,
    /// The directory that becomes the container's root filesystem (its only read-only layer)
    #[arg(long, env = "WORKSHOP_ROOTFS", default_value = rootfs::DEFAULT)]
    rootfs: PathBuf,
    /// Run this image (pulled first if it is missing); it takes the place of --rootfs
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// Set an environment variable, KEY=VALUE (or KEY: the host's value) (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Run COMMAND as this user: name, uid, name:group or uid:gid [default: the image's User]
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// A registry that may be reached over plain HTTP: HOST[:PORT] (repeatable)
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// Pull without printing the progress
    #[arg(short, long)]
    quiet: bool,
    /// The container's name, used as its id [default: a random 12-digit id]
    #[arg(long)]
    name: Option<String>,
    /// Remove the container's layer when it ends (else `diff` and `rm` can use it)
    #[arg(long)]
    rm: bool,
    /// A volume: /host/dir:/path or NAME:/path, with :ro for read-only (repeatable)
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]", value_parser = volume::parse)]
    volumes: Vec<volume::Volume>,
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
    /// Turn the hardening off: every capability, no seccomp, no masks, every device
    #[arg(long)]
    privileged: bool,
    /// Give root a capability beyond Docker's 14, like NET_ADMIN (or ALL) (repeatable)
    #[arg(long, value_name = "CAP", value_parser = security::caps::parse)]
    cap_add: Vec<String>,
    /// Take a capability away from root, like NET_RAW (or ALL) (repeatable)
    #[arg(long, value_name = "CAP", value_parser = security::caps::parse)]
    cap_drop: Vec<String>,
    /// no-new-privileges[=false], seccomp=unconfined or seccomp=PROFILE.json (repeatable)
    #[arg(long, value_name = "OPT", value_parser = security::parse_security_opt)]
    security_opt: Vec<security::SecurityOpt>,
    /// The command to run, and its arguments [default with --image: the image's]
    #[arg(required_unless_present = "image", trailing_var_arg = true)]
    command: Vec<String>,
}

fn main() {
    let result = match process::parse_args::<Cli>().command {
        Command::Run(args) => run(args),
        Command::Pull(args) => pull(args),
        Command::Cleanup => cleanup(),
        Command::Diff { id } => overlay::diff(&id).map(|changes| {
            changes.iter().for_each(|change| println!("{change}"));
            0
        }),
        Command::Ls => {
            overlay::list().iter().for_each(|id| println!("{id}"));
            Ok(0)
        }
        Command::Rm { id } => overlay::remove(&id).map(|()| 0),
        Command::Image(command) => image_command(command),
        Command::Volume(VolumeCommand::Ls) => {
            volume::list().iter().for_each(|name| println!("{name}"));
            Ok(0)
        }
        Command::Volume(VolumeCommand::Rm { name }) => volume::remove(&name).map(|()| 0),
    };
    std::process::exit(process::exit_status(result));
}

// ANCHOR: run
/// The host's side: check the input, start the child, wait for it.
fn run(args: RunArgs) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("creating namespaces needs root: run it with sudo");
    }
    let id = args.name.clone().unwrap_or_else(process::random_id);
    uts::check_hostname(&id)
        .map_err(|_| anyhow::anyhow!("invalid --name {id:?}: use letters, digits and '-'"))?;
    let hostname = args.hostname.unwrap_or_else(|| id.clone());
    uts::check_hostname(&hostname)?;
    // ANCHOR: find_image
    // The read-only layers, bottom first: the image's (pulled if it is not in
    // the store yet), or --rootfs as the only one. The store stays locked
    // (shared) until the overlay names them, so `image rm` cannot sweep them.
    let store_lock = args.image.as_ref().map(|_| store::lock(false)).transpose()?;
    let image = match &args.image {
        Some(text) => {
            let options = registry::Options { insecure: args.insecure_registry.clone(), credentials: None };
            Some(pull::find_or_pull(&Reference::parse(text)?, &options, args.quiet)?)
        }
        None => None,
    };
    let mut layers = match &image {
        Some(image) => store::layer_dirs(image)?,
        None => vec![rootfs::check(&args.rootfs)?],
    };
    // What to run: the image config's Entrypoint, Cmd, Env, WorkingDir and User, and the flags.
    let config = image.as_ref().map(|image| &image.config);
    let process = config::process(config, &args.command, &args.env, args.user.as_deref())?;
    // ANCHOR_END: find_image
    let userns = args.userns_remap.or(args.userns.then_some(user::DEFAULT));
    // ANCHOR: decide
    // A bad --cap-add or seccomp profile fails here, before anything is made.
    let hardening = security::decide(args.privileged, &args.cap_add, &args.cap_drop, &args.security_opt)?;
    // ANCHOR_END: decide
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
        layers = layers.iter().map(|layer| user::mapped_rootfs(layer, mapping)).collect::<Result<_>>()?;
    }
    // Signals first: a Ctrl-C during setup must not end us before the teardown.
    pid::forward_signals()?;
    // ANCHOR: make_group
    // What lives outside is recorded first, then made; each part is removed
    // when dropped, on every way out of this function.
    let _record = state::create(&id)?;
    cgroup::remove_stale();
    let limits = cgroup::Limits {
        memory_bytes: args.memory,
        cpus: args.cpus,
        pids: args.pids_limit,
        devices_allow_list: !args.privileged,
    };
    let cgroup = cgroup::create(&id, limits)?;
    // ANCHOR_END: make_group
    let mut network = net::prepare(args.net, &id)?;
    // ANCHOR: overlay_root
    let mut root = overlay::mount_root(&id, &layers, !args.rm, userns.map_or(0, |m| m.start))?;
    let rootfs = root.merged();
    drop(store_lock); // the container's `lowers` file names its layers now
                      // ANCHOR_END: overlay_root
                      // ANCHOR: prepare_volumes
    let volumes = volume::prepare(&args.volumes, userns.map_or(0, |m| m.start))?;
    // ANCHOR_END: prepare_volumes
    let mut sync = sync::Sync::new()?;
    let spec = Spec { userns: userns.is_some(), hostname, rootfs, volumes, hardening, process };
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
    // ANCHOR: keep_layer
    if !args.rm {
        root.keep();
    }
    // ANCHOR_END: keep_layer
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
/// `cleanup`: the groups, overlay mounts, leases and records of runtimes that were killed.
fn cleanup() -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("cleaning up needs root: run it with sudo");
    }
    cgroup::remove_stale();
    overlay::remove_stale();
    net::remove_stale();
    state::remove_stale();
    store::remove_stale();
    Ok(0)
}
// ANCHOR_END: cleanup
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
    /// The volumes to mount, in order.
    volumes: Vec<volume::Mount>,
    /// What `security::apply` does last, before exec.
    hardening: security::Hardening,
    /// COMMAND, its environment, working directory and user (from the image config and the flags).
    process: config::Process,
}
// ANCHOR_END: spec

/// The container's side: runs in the new namespaces and becomes COMMAND.
fn child(spec: &Spec, sync: &mut sync::Sync) -> Result<Infallible> {
    sync.wait_for_parent()?;
    if spec.userns {
        user::become_root()?;
    }
    uts::set_hostname(&spec.hostname)?;
    rootfs::enter(&spec.rootfs, &spec.volumes)?;
    rootfs::clean_env(&spec.hostname);
    // ANCHOR: image_config
    config::enter(&spec.process)?;
    // ANCHOR_END: image_config
    // ANCHOR: harden
    security::apply(&spec.hardening, spec.process.user.as_deref())?;
    // ANCHOR_END: harden
    process::exec(&spec.process.command)
}
// ANCHOR_END: child

// ANCHOR: pull
/// `pull REF`: into the store, then the canonical name on stdout.
fn pull(args: PullArgs) -> Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the image store belongs to root: run it with sudo");
    }
    let reference = Reference::parse(&args.reference)?;
    let credentials = match args.username {
        Some(user) => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            Some((user, password.trim_end_matches(['\r', '\n']).to_string()))
        }
        None => None,
    };
    let options = registry::Options { insecure: args.insecure_registry, credentials };
    pull::stop_on_signals()?;
    match pull::pull(&reference, &options, args.quiet) {
        Ok(_) => println!("{reference}"),
        // Ctrl-C: what was half-unpacked is gone; the status says which signal, as Docker's would.
        Err(err) if pull::interrupted().is_some() => {
            eprintln!("{}: error: {err:#}", env!("CARGO_BIN_NAME"));
            return Ok(128 + pull::interrupted().unwrap_or(0));
        }
        Err(err) => return Err(err),
    }
    Ok(0)
}
// ANCHOR_END: pull

/// `image import|ls|inspect|rm`.
fn image_command(command: ImageCommand) -> Result<i32> {
    let reads_only = matches!(command, ImageCommand::Ls | ImageCommand::Inspect { .. });
    if !reads_only && !nix::unistd::geteuid().is_root() {
        bail!("the image store belongs to root: run it with sudo");
    }
    match command {
        ImageCommand::Import { name, layers, oci: None } => {
            image::import(&Reference::parse(&name)?, &layers, None)?
        }
        ImageCommand::Import { name, oci: Some(dir), .. } => {
            let (layers, config) = oci::read(&dir)?;
            image::import(&Reference::parse(&name)?, &layers, Some(&config))?
        }
        ImageCommand::Ls => image::list(),
        ImageCommand::Inspect { name } => image::inspect(&Reference::parse(&name)?)?,
        ImageCommand::Rm { name } => store::remove(&Reference::parse(&name)?)?,
    }
    Ok(0)
}
