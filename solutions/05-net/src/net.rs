//! The network namespace: an interface of the container's own on a bridge.
//!
//! The host side has a bridge, `workshop0`, with the gateway address. Each
//! container gets a veth pair (two interfaces joined by a virtual cable): one
//! end on the bridge, the other moved into the container's namespace as
//! `eth0`, with an address from a small IPAM whose leases are files.

use crate::process;
use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const BRIDGE: &str = "workshop0";
/// The workshop's subnet, 10.77.0.0/24: the bridge is .1, containers get .2 to .254.
const SUBNET: [u8; 3] = [10, 77, 0];
/// One file per leased address, named like the address (it vanishes at reboot).
const LEASES: &str = "/run/workshop/ipam";

// ANCHOR: modes
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Its own eth0 on the workshop bridge, with an address of its own
    Bridge,
    /// Its own network namespace with only loopback
    None,
    /// The host's network (no network namespace)
    Host,
}
// ANCHOR_END: modes

/// What a container has on the host side; dropping it gives it all back.
pub struct Network {
    mode: Mode,
    veth: String,
    address: Option<Ipv4Addr>,
    veth_created: bool,
}

// ANCHOR: clone_flags
pub fn clone_flags(mode: Mode) -> CloneFlags {
    match mode {
        Mode::Host => CloneFlags::empty(),
        Mode::Bridge | Mode::None => CloneFlags::CLONE_NEWNET,
    }
}
// ANCHOR_END: clone_flags

// ANCHOR: prepare
/// Host side, before clone: lease an address and make sure the bridge is up.
pub fn prepare(mode: Mode, id: &str) -> Result<Network> {
    let mut network = Network { mode, veth: format!("veth{}", &id[..8]), address: None, veth_created: false };
    if mode == Mode::Bridge {
        let _lock = lock()?;
        network.address = Some(lease(id)?);
        ensure_bridge()?;
    }
    process::fault("network")?;
    Ok(network)
}
// ANCHOR_END: prepare

// ANCHOR: connect
impl Network {
    /// The container's address on the bridge (None without one: --net none or host).
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.address
    }

    /// Host side, after clone: cable the child's namespace to the bridge.
    pub fn connect(&mut self, child: Pid) -> Result<()> {
        if self.mode == Mode::Host {
            return Ok(());
        }
        let mut inside = String::from("link set lo up\n");
        if let Some(address) = self.address {
            // Create the pair with its second end already in the child's namespace.
            self.veth_created = true;
            ip(
                None,
                &format!(
                    "link add {} type veth peer name eth0 netns {child}\nlink set {} master {BRIDGE} up\n",
                    self.veth, self.veth
                ),
            )?;
            process::fault("veth")?;
            let gateway = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1);
            inside += &format!(
                "addr add {address}/24 dev eth0\nlink set eth0 up\nroute add default via {gateway}\n"
            );
        }
        ip(Some(child), &inside)
    }
}
// ANCHOR_END: connect

// ANCHOR: drop
impl Drop for Network {
    /// Runs on every way out of the runtime: give the address back, remove
    /// our veth, and the bridge once no container needs it.
    fn drop(&mut self) {
        if self.veth_created {
            let _ = ip(None, &format!("link del {}\n", self.veth));
        }
        if let Some(address) = self.address {
            let Ok(_lock) = lock() else { return };
            let _ = std::fs::remove_file(lease_path(address));
            if live_leases().is_empty() {
                let _ = ip(None, &format!("link del {BRIDGE}\n"));
            }
        }
    }
}
// ANCHOR_END: drop

/// Runs `ip -batch -` with `commands`, in the namespace of `netns` if given.
fn ip(netns: Option<Pid>, commands: &str) -> Result<()> {
    let mut cmd = match netns {
        Some(pid) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/proc/{pid}/ns/net")).arg("ip");
            cmd
        }
        None => Command::new("ip"),
    };
    cmd.args(["-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("run ip (is iproute2 installed? apt-get install iproute2)")?;
    child.stdin.take().unwrap().write_all(commands.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        let why = String::from_utf8_lossy(&output.stderr).lines().next().unwrap_or_default().to_string();
        bail!("ip {}: {why}", commands.lines().next().unwrap_or_default());
    }
    Ok(())
}

// ANCHOR: bridge
/// Creates the bridge with the gateway address, unless it is already there.
fn ensure_bridge() -> Result<()> {
    // Not /sys/class/net: sysfs shows the namespace of whoever mounted it,
    // while /proc/self/net shows ours (which matters inside a sandbox).
    let interfaces = std::fs::read_to_string("/proc/self/net/dev").context("read /proc/self/net/dev")?;
    if interfaces.lines().any(|line| line.trim_start().starts_with(&format!("{BRIDGE}:"))) {
        return Ok(());
    }
    let gateway = format!("{}.{}.{}.1/24", SUBNET[0], SUBNET[1], SUBNET[2]);
    ip(
        None,
        &format!("link add {BRIDGE} type bridge\naddr add {gateway} dev {BRIDGE}\nlink set {BRIDGE} up\n"),
    )
}
// ANCHOR_END: bridge

// ANCHOR: ipam
/// All of IPAM happens under a lock on the leases directory, so concurrent
/// runtimes never hand out the same address.
fn lock() -> Result<Flock<std::fs::File>> {
    std::fs::create_dir_all(LEASES).with_context(|| format!("mkdir {LEASES}"))?;
    let dir = std::fs::File::open(LEASES).with_context(|| format!("open {LEASES}"))?;
    Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, errno)| errno).context("lock the IPAM")
}

fn lease_path(address: Ipv4Addr) -> PathBuf {
    PathBuf::from(LEASES).join(address.to_string())
}

/// Takes the lowest free address. A lease names the runtime that holds it
/// (pid and start time), so one left by a killed runtime is taken back.
fn lease(id: &str) -> Result<Ipv4Addr> {
    let holder = process::identity(std::process::id()).context("read our own start time")?;
    let live = live_leases();
    for host in 2..=254 {
        let address = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host);
        if !live.contains(&address) {
            std::fs::write(lease_path(address), format!("{id} {holder}\n")).context("write the lease")?;
            return Ok(address);
        }
    }
    bail!("no free address in {}.{}.{}.0/24: 253 containers are running", SUBNET[0], SUBNET[1], SUBNET[2])
}

/// The addresses whose lease holder is still running; stale leases are removed.
fn live_leases() -> Vec<Ipv4Addr> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir(LEASES).into_iter().flatten().flatten() {
        let Ok(address) = entry.file_name().to_string_lossy().parse::<Ipv4Addr>() else { continue };
        // A lease reads "ID PID STARTTIME".
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let holder = text.trim().split_once(' ').map(|(_, holder)| holder.to_string());
        let pid = holder.as_deref().and_then(|h| h.split(' ').next()?.parse().ok());
        if holder.is_some() && pid.and_then(process::identity) == holder {
            live.push(address);
        } else {
            let _ = std::fs::remove_file(entry.path()); // its runtime is gone
        }
    }
    live
}
// ANCHOR_END: ipam
