//! The test run's own network namespace.
//!
//! Every binary the harness runs is placed in it first, so the bridges, veths
//! and traffic of the network steps stay inside a namespace the harness made,
//! and the machine's own interfaces are never touched. A `sleep` process
//! holds it open and dies with the harness.

use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

static SANDBOX: OnceLock<Sandbox> = OnceLock::new();

pub struct Sandbox {
    holder: Child,
    /// The namespace, open for setns(2) (close-on-exec is fine: setns comes before exec).
    netns: File,
}

impl Sandbox {
    /// The interfaces inside, from the holder's view of /proc/net/dev.
    pub fn links(&self) -> Vec<String> {
        links_in(&format!("/proc/{}/net/dev", self.holder.id()))
    }

    /// The namespace's inode, as the probe reports it.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.netns.metadata().map(|m| m.ino()).unwrap_or(0)
    }
}

/// Interface names from a /proc/.../net/dev file.
pub fn links_in(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().skip(2).filter_map(|l| Some(l.split_once(':')?.0.trim().to_string())).collect()
}

/// Creates the sandbox (once per test run) and brings its loopback up.
pub fn start() -> Result<&'static Sandbox> {
    let mut holder = Command::new("unshare");
    holder.args(["--net", "--", "sleep", "1000000"]).stdin(Stdio::null());
    // SAFETY: only prctl(2) between fork and exec: the holder dies with us.
    unsafe { holder.pre_exec(|| ok_or_errno(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))) };
    let holder = holder.spawn().context("start the sandbox (unshare --net)")?;
    // Wait until unshare has switched namespaces before we open it.
    let path = format!("/proc/{}/ns/net", holder.id());
    let ours = std::fs::read_link("/proc/self/ns/net")?;
    while std::fs::read_link(&path).map(|ns| ns == ours).unwrap_or(true) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let netns = File::open(&path).context("open the sandbox's namespace")?;
    let sandbox = SANDBOX.get_or_init(|| Sandbox { holder, netns });
    inside(Command::new("ip").args(["link", "set", "lo", "up"])).status()?;
    Ok(sandbox)
}

pub fn get() -> Option<&'static Sandbox> {
    SANDBOX.get()
}

/// Makes `cmd` start inside the sandbox, once there is one.
pub fn inside(cmd: &mut Command) -> &mut Command {
    if let Some(sandbox) = SANDBOX.get() {
        let fd = sandbox.netns.as_raw_fd();
        // SAFETY: only setns(2) between fork and exec, on a descriptor that lives as long as the sandbox.
        unsafe { cmd.pre_exec(move || ok_or_errno(libc::setns(fd, libc::CLONE_NEWNET))) };
    }
    cmd
}

/// Runs `f` on a thread of its own inside the sandbox's network namespace (setns(2)
/// moves only the calling thread), or right here when there is no sandbox: the
/// sockets `f` opens talk to the loopback that the binaries under test see.
pub fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let Some(sandbox) = SANDBOX.get() else { return Ok(f()) };
    let fd = sandbox.netns.as_raw_fd();
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            // SAFETY: setns(2) on a descriptor that lives as long as the sandbox; this
            // thread ends with `f`, so no other code runs in the namespace by mistake.
            ok_or_errno(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }).map(|()| f())
        });
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Stops the holder; the namespace goes with it.
pub fn stop() {
    if let Some(sandbox) = SANDBOX.get() {
        // SAFETY: kill(2) on the holder process we started.
        unsafe { libc::kill(sandbox.holder.id() as i32, libc::SIGKILL) };
    }
}

fn ok_or_errno(result: libc::c_int) -> std::io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
