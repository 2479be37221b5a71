//! The things the probe tries before it looks around: each action runs once,
//! in command-line order, and reports success or the errno it got. A failure
//! is data for the test (EROFS, EPERM, EAGAIN ...), never a crash.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::{lstat, makedev, mknod, Mode, SFlag};
use nix::sys::wait::waitpid;
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{chdir, chroot, fork, getpid, pipe2, ForkResult, Pid};
use serde_json::{json, Value};

use crate::hardening::{self, Syscall};

/// Largest read (file contents, network line) the probe keeps.
const MAX_READ: u64 = 64 * 1024;

/// One action from the command line: `name` and `arg` are echoed in the
/// JSON so a test can find its entry; `kind` is the parsed form.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// The flag without its leading dashes, e.g. "mknod-char".
    pub name: String,
    /// The value as given on the command line.
    pub arg: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Write(String),
    Read(String),
    Mkdir(String),
    Remove(String),
    Stat(String),
    MknodChar(String),
    MknodBlock(String),
    MountTmpfs(String),
    AllocMib(u64),
    Fork(u32),
    Listen { port: u16, timeout: Duration },
    Connect { addr: SocketAddr, timeout: Duration },
    ShmCreate(libc::key_t),
    ShmFind(libc::key_t),
    ShmRemove(libc::key_t),
    SpinMs(u64),
    SleepMs(u64),
    Escape(String),
    // Docker's hardening, tried (see hardening.rs).
    MountCgroup(String),
    OpenBlock { major: u64, minor: u64, dir: String },
    Umount(String),
    Rewrite(String),
    List(String),
    Syscall(Syscall),
    SetuidExec(String),
}

/// How an action went: `value` may be set even on failure (e.g. how many
/// forks succeeded before EAGAIN).
#[derive(Debug)]
pub struct Outcome {
    ok: bool,
    errno: Option<Errno>,
    /// Only set by hand for failures that have no errno.
    message: Option<String>,
    value: Value,
}

impl Outcome {
    pub(crate) fn success(value: Value) -> Self {
        Outcome { ok: true, errno: None, message: None, value }
    }

    pub(crate) fn failure(errno: Errno) -> Self {
        Outcome { ok: false, errno: Some(errno), message: None, value: Value::Null }
    }

    /// A failure without an errno (e.g. invalid data).
    pub(crate) fn unexplained(message: impl Into<String>) -> Self {
        Outcome { ok: false, errno: None, message: Some(message.into()), value: Value::Null }
    }

    /// The same outcome, with `value` set (a failure may carry one too).
    pub(crate) fn with_value(self, value: Value) -> Self {
        Outcome { value, ..self }
    }

    pub(crate) fn from_io(result: io::Result<Value>) -> Self {
        match result {
            Ok(value) => Outcome::success(value),
            Err(e) => match errno_of(&e) {
                Some(errno) => Outcome::failure(errno),
                None => Outcome::unexplained(e.to_string()),
            },
        }
    }

    pub(crate) fn from_nix(result: nix::Result<Value>) -> Self {
        result.map_or_else(Outcome::failure, Outcome::success)
    }

    /// The action's entry in the JSON `actions` list.
    pub fn to_json(&self, action: &Action) -> Value {
        // Errno's Display is "EROFS: Read-only file system".
        let error = match (self.errno, &self.message) {
            (Some(errno), _) => Some(errno.to_string()),
            (None, message) => message.clone(),
        };
        json!({
            "action": action.name,
            "arg": action.arg,
            "ok": self.ok,
            "errno": self.errno.map(|e| e as i32),
            "error": error,
            "value": self.value,
        })
    }
}

/// The errno behind an io::Error; std's own timeouts carry none, so they
/// are mapped to ETIMEDOUT.
fn errno_of(e: &io::Error) -> Option<Errno> {
    match (e.raw_os_error(), e.kind()) {
        (Some(raw), _) => Some(Errno::from_raw(raw)),
        (None, io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => Some(Errno::ETIMEDOUT),
        _ => None,
    }
}

/// What must stay alive until the snapshot has been taken: forked children
/// (so they show up in /proc and pids.current) and allocated memory (so it
/// shows up in memory.current; it is simply never freed).
#[derive(Default)]
pub struct Held {
    fork_groups: Vec<ForkGroup>,
}

/// Children of one `--fork`: each blocks reading the pipe until `release`
/// is closed, which only happens when the probe is done.
struct ForkGroup {
    release: Option<OwnedFd>,
    children: Vec<Pid>,
}

impl Held {
    /// Lets the children exit and reaps them. Newest group first: children
    /// of a later group inherited the write ends of earlier pipes, so an
    /// earlier group only sees EOF once the later children have exited.
    pub fn release(&mut self) {
        while let Some(mut group) = self.fork_groups.pop() {
            drop(group.release.take());
            for child in group.children {
                while waitpid(child, None) == Err(Errno::EINTR) {}
            }
        }
    }
}

impl Action {
    pub fn run(&self, held: &mut Held) -> Outcome {
        match &self.kind {
            Kind::Write(path) => Outcome::from_io(fs::write(path, b"probe\n").map(|()| Value::Null)),
            Kind::Read(path) => Outcome::from_io(read(path)),
            Kind::Mkdir(path) => Outcome::from_io(fs::create_dir(path).map(|()| Value::Null)),
            Kind::Remove(path) => Outcome::from_io(remove(path)),
            Kind::Stat(path) => Outcome::from_nix(stat(path)),
            // The devices of /dev/null and /dev/loop0: creating device nodes
            // needs CAP_MKNOD in the initial user namespace.
            Kind::MknodChar(path) => Outcome::from_nix(
                mknod(path.as_str(), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(1, 3))
                    .map(|()| Value::Null),
            ),
            Kind::MknodBlock(path) => Outcome::from_nix(
                mknod(path.as_str(), SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), makedev(7, 0))
                    .map(|()| Value::Null),
            ),
            Kind::MountTmpfs(path) => mount_tmpfs(path),
            Kind::AllocMib(mib) => alloc_mib(*mib),
            Kind::Fork(count) => fork_children(*count, held),
            Kind::Listen { port, timeout } => Outcome::from_io(listen(*port, *timeout)),
            Kind::Connect { addr, timeout } => Outcome::from_io(connect(*addr, *timeout)),
            Kind::ShmCreate(key) => {
                Outcome::from_nix(shmget(*key, 4096, libc::IPC_CREAT | 0o600).map(|id| json!(id)))
            }
            Kind::ShmFind(key) => Outcome::from_nix(shmget(*key, 0, 0).map(|id| json!(id))),
            Kind::ShmRemove(key) => Outcome::from_nix(shm_remove(*key)),
            Kind::SpinMs(ms) => spin(*ms),
            Kind::SleepMs(ms) => {
                sleep(Duration::from_millis(*ms));
                Outcome::success(Value::Null)
            }
            Kind::Escape(marker) => escape(marker),
            Kind::MountCgroup(options) => hardening::mount_cgroup(options),
            Kind::OpenBlock { major, minor, dir } => hardening::open_block(*major, *minor, dir),
            Kind::Umount(path) => hardening::umount(path),
            Kind::Rewrite(path) => hardening::rewrite(path),
            Kind::List(path) => hardening::list(path),
            Kind::Syscall(which) => hardening::syscall(*which),
            Kind::SetuidExec(dir) => hardening::setuid_exec(dir),
        }
    }
}

fn read(path: &str) -> io::Result<Value> {
    let mut data = Vec::new();
    fs::File::open(path)?.take(MAX_READ).read_to_end(&mut data)?;
    Ok(json!(String::from_utf8_lossy(&data)))
}

/// Removes a file, or an empty directory (unlink says EISDIR for those).
fn remove(path: &str) -> io::Result<Value> {
    match fs::remove_file(path) {
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => fs::remove_dir(path),
        other => other,
    }
    .map(|()| Value::Null)
}

fn stat(path: &str) -> nix::Result<Value> {
    let st = lstat(path)?;
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "char",
        libc::S_IFBLK => "block",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "unknown",
    };
    Ok(json!({
        "kind": kind,
        "mode": format!("{:04o}", st.st_mode & 0o7777),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size,
    }))
}

/// Mounts a tmpfs and deliberately leaves it: it lives in the container's
/// mount namespace and must vanish with it (tests check the host never sees
/// it). The source "probe" makes it easy to spot in a mount table.
fn mount_tmpfs(path: &str) -> Outcome {
    if fs::symlink_metadata(path).is_err() {
        if let Err(e) = fs::create_dir_all(path) {
            return Outcome::from_io(Err(e));
        }
    }
    Outcome::from_nix(
        nix::mount::mount(Some("probe"), path, Some("tmpfs"), MsFlags::empty(), None::<&str>)
            .map(|()| Value::Null),
    )
}

/// Maps N MiB and writes one byte per page so the memory is really charged
/// to the cgroup (untouched pages cost nothing). Never unmapped: it stays
/// charged until exit, and under a memory limit the kernel OOM-kills us.
fn alloc_mib(mib: u64) -> Outcome {
    let Some(len) = mib.checked_mul(1 << 20).and_then(|len| usize::try_from(len).ok()) else {
        return Outcome::failure(Errno::ENOMEM);
    };
    if len > 0 {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Outcome::failure(Errno::last());
        }
        for offset in (0..len).step_by(4096) {
            // SAFETY: offset < len, inside the mapping. Volatile so the
            // compiler cannot drop writes that are never read.
            unsafe { ptr.cast::<u8>().add(offset).write_volatile(1) };
        }
    }
    Outcome::success(json!(mib))
}

/// Forks up to `count` children that block until the probe is done, so the
/// snapshot (and the pids controller) sees them. Stops at the first failing
/// fork, e.g. EAGAIN under pids.max; `value` is how many succeeded.
fn fork_children(count: u32, held: &mut Held) -> Outcome {
    let (wait_end, release_end) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(ends) => ends,
        Err(errno) => return Outcome::failure(errno),
    };
    let mut group = ForkGroup { release: Some(release_end), children: Vec::new() };
    let mut failed = None;
    for _ in 0..count {
        // SAFETY: the probe is single-threaded; the child only makes
        // async-signal-safe calls (close, read, _exit).
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let release_fd = group.release.as_ref().map_or(-1, AsRawFd::as_raw_fd);
                block_until_eof(wait_end.as_raw_fd(), release_fd)
            }
            Ok(ForkResult::Parent { child }) => group.children.push(child),
            Err(errno) => {
                failed = Some(errno);
                break;
            }
        }
    }
    let forked = group.children.len();
    held.fork_groups.push(group);
    match failed {
        None => Outcome::success(json!(forked)),
        Some(errno) => Outcome { value: json!(forked), ..Outcome::failure(errno) },
    }
}

/// Body of a forked child: drop our copy of the write end, then read until
/// the parent closes its own (EOF), or dies.
fn block_until_eof(wait_fd: RawFd, release_fd: RawFd) -> ! {
    // SAFETY: plain syscalls on fds this process owns; _exit skips Rust's
    // atexit machinery, which belongs to the parent.
    unsafe {
        libc::close(release_fd);
        let mut byte = 0u8;
        while libc::read(wait_fd, (&raw mut byte).cast(), 1) < 0 && Errno::last() == Errno::EINTR {}
        libc::_exit(0)
    }
}

/// Time left until `deadline`, or ETIMEDOUT once it has passed.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::from_raw_os_error(libc::ETIMEDOUT))
    } else {
        Ok(left)
    }
}

/// Reads one line (without its newline) before `deadline`; EOF ends it too.
fn read_line(mut stream: &TcpStream, deadline: Instant) -> io::Result<String> {
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    while (line.len() as u64) < MAX_READ {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..end]);
            break;
        }
        line.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Waits until `fd` is readable (a pending connection), or the deadline.
fn wait_readable(fd: RawFd, deadline: Instant) -> io::Result<()> {
    loop {
        let ms = remaining(deadline)?.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            n if n > 0 => return Ok(()),
            0 => {}
            _ if Errno::last() == Errno::EINTR => {}
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// Serves one "ping" with "pong" on 0.0.0.0:PORT: enough for a test to see
/// whether traffic from the host (or a peer container) reaches us.
fn listen(port: u16, timeout: Duration) -> io::Result<Value> {
    let deadline = Instant::now() + timeout;
    // Numeric address: no name resolution, which a static glibc can't do.
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
    let port = listener.local_addr()?.port();
    // A test waits for this line (on stderr: stdout is for JSON only)
    // before it connects.
    let mut err = io::stderr().lock();
    writeln!(err, "probe: listening on 0.0.0.0:{port}")?;
    err.flush()?;
    drop(err);

    wait_readable(listener.as_raw_fd(), deadline)?;
    let (mut stream, peer) = listener.accept()?;
    let received = read_line(&stream, deadline)?;
    stream.write_all(b"pong\n")?;
    Ok(json!({"peer": peer.to_string(), "received": received}))
}

/// Sends "ping" to ADDR and reads the reply. The listener may not be up yet
/// (it starts in parallel), so refused connects are retried every 50 ms
/// until the timeout; the last error is reported.
fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Value> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        let left = remaining(deadline)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => break stream,
            Err(e) => {
                let pause = Duration::from_millis(50).min(left);
                sleep(pause);
                if Instant::now() >= deadline {
                    return Err(e);
                }
            }
        }
    };
    stream.write_all(b"ping\n")?;
    let reply = read_line(&stream, deadline)?;
    Ok(json!({"reply": reply}))
}

/// SysV shared memory lives in the IPC namespace: a segment created in one
/// container must be invisible in another.
fn shmget(key: libc::key_t, size: usize, flags: libc::c_int) -> nix::Result<libc::c_int> {
    // SAFETY: shmget takes no pointers.
    Errno::result(unsafe { libc::shmget(key, size, flags) })
}

fn shm_remove(key: libc::key_t) -> nix::Result<Value> {
    let id = shmget(key, 0, 0)?;
    // SAFETY: IPC_RMID ignores the buffer argument.
    Errno::result(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) })?;
    Ok(json!(id))
}

fn process_cpu_time() -> Duration {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

/// Burns CPU for `ms` of wall time. Under a CPU quota (cpu.max) the process
/// is throttled, so cpu_ms comes out well below wall_ms.
fn spin(ms: u64) -> Outcome {
    let target = Duration::from_millis(ms);
    let cpu_start = process_cpu_time();
    let start = Instant::now();
    while start.elapsed() < target {
        std::hint::spin_loop();
    }
    let wall = start.elapsed();
    let cpu = process_cpu_time().saturating_sub(cpu_start);
    Outcome::success(json!({
        "wall_ms": wall.as_millis() as u64,
        "cpu_ms": cpu.as_millis() as u64,
    }))
}

/// A fresh empty directory `.probe-LABEL-PID`: in /tmp (created if a bare
/// rootfs lacks it), else in /.
pub(crate) fn scratch_dir(label: &str) -> Result<PathBuf, Errno> {
    let _ = fs::create_dir("/tmp");
    let name = format!(".probe-{label}-{}", getpid());
    let mut last = Errno::ENOENT;
    for base in ["/tmp", "/"] {
        let dir = Path::new(base).join(&name);
        match nix::unistd::mkdir(&dir, Mode::from_bits_truncate(0o700)) {
            // A leftover of an earlier probe with the same pid (pid 1 in
            // every container) is just as good.
            Ok(()) => return Ok(dir),
            Err(Errno::EEXIST) if dir.is_dir() => return Ok(dir),
            Err(errno) => last = errno,
        }
    }
    Err(last)
}

/// The classic chroot escape: chroot() does not move the cwd, so from a cwd
/// outside the new root, ".." climbs up to the real root. pivot_root plus
/// unmounting the old root is what defeats it.
fn breakout(dir: &Path, marker: &str) -> nix::Result<bool> {
    chroot(dir)?;
    for _ in 0..256 {
        chdir("..")?;
    }
    chroot(".")?;
    Ok(lstat(marker).is_ok())
}

/// Runs `breakout` in a child so the probe's own root (and the snapshot)
/// stays where it was. The child reports one status byte plus an errno.
fn escape(marker: &str) -> Outcome {
    let dir = match scratch_dir("escape") {
        Ok(dir) => dir,
        Err(errno) => return Outcome::failure(errno),
    };
    let outcome = match pipe2(OFlag::O_CLOEXEC) {
        Err(errno) => Outcome::failure(errno),
        // SAFETY: the probe is single-threaded, so the child may allocate.
        Ok((report_read, report_write)) => match unsafe { fork() } {
            Err(errno) => Outcome::failure(errno),
            Ok(ForkResult::Child) => {
                drop(report_read);
                let mut message = [0u8; 5];
                match breakout(&dir, marker) {
                    Ok(escaped) => message[0] = u8::from(escaped),
                    Err(errno) => {
                        message[0] = 2;
                        message[1..].copy_from_slice(&(errno as i32).to_ne_bytes());
                    }
                }
                let _ = nix::unistd::write(&report_write, &message);
                // SAFETY: leave without running the parent's exit handlers.
                unsafe { libc::_exit(0) }
            }
            Ok(ForkResult::Parent { child }) => {
                drop(report_write);
                let mut message = Vec::new();
                let read = fs::File::from(report_read).read_to_end(&mut message);
                while waitpid(child, None) == Err(Errno::EINTR) {}
                match (read, message.as_slice()) {
                    (Ok(_), [0 | 1, ..]) => Outcome::success(json!({"escaped": message[0] == 1})),
                    (Ok(_), [2, a, b, c, d]) => {
                        Outcome::failure(Errno::from_raw(i32::from_ne_bytes([*a, *b, *c, *d])))
                    }
                    (Err(e), _) => Outcome::from_io(Err(e)),
                    (Ok(_), _) => Outcome::unexplained("breakout child died without reporting"),
                }
            }
        },
    };
    let _ = fs::remove_dir(&dir);
    outcome
}
