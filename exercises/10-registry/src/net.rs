//! The network namespace: an interface of the container's own on a bridge.
//!
//! The host side has a bridge, `workshop0`, with the gateway address. Each
//! container gets a veth pair (two interfaces joined by a virtual cable): one
//! end on the bridge, the other moved into the container's namespace as
//! `eth0`, with an address from a small IPAM whose leases are files.

use crate::process;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const BRIDGE: &str = "workshop0";
/// The workshop's subnet, 10.77.0.0/24: the bridge is .1, containers get .2 to .254.
const SUBNET: [u8; 3] = [10, 77, 0];
/// One file per leased address, named like the address (it vanishes at reboot).
const LEASES: &str = crate::paths::LEASES;

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
    let mut network = Network { mode, veth: veth_name(id), address: None };
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
    /// Host side, after clone: cable the child's namespace to the bridge,
    /// then configure the child's side from inside its namespace.
    pub fn connect(&mut self, child: Pid) -> Result<()> {
        if self.mode == Mode::Host {
            return Ok(());
        }
        if self.address.is_some() {
            // Create the pair with its second end already in the child's namespace.
            ip(&format!(
                "link add {} type veth peer name eth0 netns {child}\nlink set {} master {BRIDGE} up\n",
                self.veth, self.veth
            ))?;
            process::fault("veth")?;
        }
        let netns =
            File::open(format!("/proc/{child}/ns/net")).context("open the child's network namespace")?;
        // setns(2) moves only the thread that calls it: a short-lived thread
        // joins the child's namespace while the runtime stays in the host's.
        let address = self.address;
        let configured = std::thread::scope(|s| s.spawn(|| configure_inside(&netns, address)).join());
        configured.unwrap_or_else(|_| bail!("the thread that configures the network panicked"))
    }
}
// ANCHOR_END: connect

// ANCHOR: inside
/// In the child's network namespace: `lo` up and, on the bridge, eth0's
/// address and the default route. These are the ioctl(2)s that `ifconfig`
/// and `route` make (`ip` speaks netlink); making them here saves starting
/// `nsenter` and `ip` for every container.
fn configure_inside(netns: &File, address: Option<Ipv4Addr>) -> Result<()> {
    setns(netns, CloneFlags::CLONE_NEWNET).context("join the child's network namespace")?;
    let socket = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let fd = socket.as_raw_fd();
    set_up(fd, "lo")?;
    if let Some(address) = address {
        let mut eth0 = ifreq("eth0");
        eth0.ifr_ifru.ifru_addr = sockaddr(address);
        ioctl(fd, libc::SIOCSIFADDR, &mut eth0).context("set eth0's address")?;
        eth0.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::new(255, 255, 255, 0));
        ioctl(fd, libc::SIOCSIFNETMASK, &mut eth0).context("set eth0's netmask")?;
        set_up(fd, "eth0")?;
        // SAFETY: all zeros is a valid rtentry (no pointers set).
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED); // with genmask 0: every address
        route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr(Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 1));
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        ioctl(fd, libc::SIOCADDRT, &mut route).context("add the default route")?;
    }
    Ok(())
}
// ANCHOR_END: inside

/// Sets IFF_UP in an interface's flags, as `ip link set NAME up` does.
fn set_up(fd: RawFd, name: &str) -> Result<()> {
    let mut request = ifreq(name);
    ioctl(fd, libc::SIOCGIFFLAGS, &mut request).with_context(|| format!("read {name}'s flags"))?;
    // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(fd, libc::SIOCSIFFLAGS, &mut request).with_context(|| format!("bring {name} up"))
}

/// A request about the interface `name` (at most 15 bytes, like every interface name).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: all zeros is a valid ifreq.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *to = from as libc::c_char;
    }
    request
}

/// An IPv4 address as the generic `sockaddr` these ioctls take.
fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(address).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it by sin_family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn ioctl<T>(fd: RawFd, request: libc::c_ulong, argument: &mut T) -> Result<()> {
    // SAFETY: `argument` is the struct this request reads or fills in.
    let done = unsafe { libc::ioctl(fd, request, argument as *mut T) };
    Errno::result(done).map(drop).map_err(Into::into)
}

// ANCHOR: drop
impl Drop for Network {
    /// Runs on every way out of the runtime: give the address back, and
    /// remove the bridge once no container needs it. Our veth needs no
    /// removing: when the container's last process ends, its network
    /// namespace goes, and the kernel deletes both ends of the pair (in the
    /// background: deleting it ourselves would wait for it, ~20 ms).
    fn drop(&mut self) {
        if let Some(address) = self.address {
            let Ok(_lock) = lock() else { return };
            let _ = std::fs::remove_file(lease_path(address));
            remove_bridge_if_unused();
        }
    }
}
// ANCHOR_END: drop

// ANCHOR: remove_stale
/// For `cleanup`: forget the leases of killed runtimes (their veths went with
/// their namespaces), and remove the bridge if no container is left on it.
pub fn remove_stale() {
    if !std::path::Path::new(LEASES).exists() {
        return; // no container ever had a lease since boot
    }
    let Ok(_lock) = lock() else { return };
    remove_bridge_if_unused();
}

/// Removes the bridge when no live runtime holds a lease (under the lock).
fn remove_bridge_if_unused() {
    if live_leases().is_empty() {
        let _ = ip(&format!("link del {BRIDGE}\n"));
    }
}
// ANCHOR_END: remove_stale

/// The host end's name: interface names have at most 15 bytes and container
/// names may be long, so use a hash of the name.
fn veth_name(id: &str) -> String {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("veth{:08x}", hash as u32)
}

/// Runs `ip -batch -` with `commands`, on the host.
fn ip(commands: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
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
    ip(&format!("link add {BRIDGE} type bridge\naddr add {gateway} dev {BRIDGE}\nlink set {BRIDGE} up\n"))
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
