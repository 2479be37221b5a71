//! The escapes that Docker's default hardening (step 09) stops, tried from
//! inside: mounting a cgroup v1 hierarchy, opening a host disk through a node
//! of our own, writing a sysctl after unmounting the read-only /proc/sys,
//! syscalls that seccomp filters, and a setuid-root program run by a user.
//!
//! Each attempt is harmless to the host whether it works or not, and undoes
//! what it did (mounts, device nodes, files): the controls run them with
//! `--privileged`, where they must work. None of them ever writes a cgroup's
//! `release_agent` or `notify_on_release`, or changes a sysctl.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, getpid, pipe2, ForkResult};
use serde_json::{json, Value};

use crate::actions::{scratch_dir, Outcome};

/// The user that `--setuid-exec` runs the setuid copy as (any non-root uid
/// that a `--userns` mapping covers).
pub const UNPRIVILEGED: u32 = 1000;

/// A syscall that Docker's seccomp profile refuses, called with arguments that
/// can do nothing. "It reached the kernel" means: the errno is the kernel's
/// own answer (in the table below), not the filter's EPERM (ENOSYS for clone3).
///
/// | NAME            | call                                        | the kernel's answer               |
/// |-----------------|---------------------------------------------|-----------------------------------|
/// | keyctl          | keyctl(GET_KEYRING_ID, THREAD_KEYRING, 0)   | ENOKEY: no thread keyring, none made |
/// | bpf             | bpf(BPF_PROG_LOAD, NULL, 8)                 | EFAULT: it cannot read the attributes |
/// | init_module     | init_module(NULL, 0, "")                    | ENOEXEC: 0 bytes are no module     |
/// | finit_module    | finit_module(-1, "", 0)                     | EBADF                             |
/// | userfaultfd     | userfaultfd(all flag bits set)              | EINVAL: unknown flags             |
/// | perf_event_open | perf_event_open(NULL, 0, -1, -1, 0)         | EFAULT: it cannot read the attributes |
/// | unshare-user    | unshare(CLONE_NEWUSER), in a forked child   | ok (a user namespace that dies with the child) |
/// | clone3          | clone3(NULL, 0)                             | EINVAL: smaller than any clone_args |
///
/// Caveats. init_module and finit_module need CAP_SYS_MODULE before anything
/// else: without it the kernel itself says EPERM, so only a container that has
/// it (`--privileged`) tells the filter from the kernel. A kernel built without
/// modules (or perf events, or userfaultfd) says ENOSYS, which is still the
/// kernel's answer. Kernels before 6.5 check unprivileged_bpf_disabled first,
/// which is EPERM without CAP_SYS_ADMIN or CAP_BPF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscall {
    Keyctl,
    Bpf,
    InitModule,
    FinitModule,
    Userfaultfd,
    PerfEventOpen,
    UnshareUser,
    Clone3,
}

impl Syscall {
    pub const ALL: [Syscall; 8] = [
        Syscall::Keyctl,
        Syscall::Bpf,
        Syscall::InitModule,
        Syscall::FinitModule,
        Syscall::Userfaultfd,
        Syscall::PerfEventOpen,
        Syscall::UnshareUser,
        Syscall::Clone3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Syscall::Keyctl => "keyctl",
            Syscall::Bpf => "bpf",
            Syscall::InitModule => "init_module",
            Syscall::FinitModule => "finit_module",
            Syscall::Userfaultfd => "userfaultfd",
            Syscall::PerfEventOpen => "perf_event_open",
            Syscall::UnshareUser => "unshare-user",
            Syscall::Clone3 => "clone3",
        }
    }

    pub fn parse(name: &str) -> Result<Syscall, String> {
        Syscall::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Syscall::ALL.iter().map(|s| s.name()).collect();
            format!("unknown syscall '{name}' (known: {})", known.join(", "))
        })
    }
}

/// `MAJOR:MINOR:DIR` of `--open-block`; DIR may contain ':' itself.
pub fn parse_block_spec(spec: &str) -> Result<(u64, u64, String), String> {
    let mut parts = spec.splitn(3, ':');
    let number = |part: Option<&str>, what: &str| {
        part.and_then(|p| p.parse::<u32>().ok())
            .map(u64::from)
            .ok_or_else(|| format!("expected MAJOR:MINOR:DIR with a numeric {what}, got '{spec}'"))
    };
    let major = number(parts.next(), "major")?;
    let minor = number(parts.next(), "minor")?;
    match parts.next() {
        Some(dir) if !dir.is_empty() => Ok((major, minor, dir.to_string())),
        _ => Err(format!("expected MAJOR:MINOR:DIR with a directory, got '{spec}'")),
    }
}

/// "EPERM", or "ok": how one stage of an attempt went, for `value`.
fn stage<T>(result: &Result<T, Errno>) -> Value {
    match result {
        Ok(_) => json!("ok"),
        Err(errno) => json!(format!("{errno:?}")),
    }
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// mount -t cgroup -o OPTIONS cgroup on a scratch directory: a v1 hierarchy
/// is the host's own (the same superblock as the host's mount), and its root
/// holds `release_agent`, a program the host's kernel runs as host root when
/// a cgroup empties. Whether it is there is looked up, never opened. Then it
/// is unmounted again. `value`: {"release_agent": bool, "umount": "ok"|errno}.
/// OPTIONS "cgroup2" mounts the v2 tree instead (which has no release_agent).
pub fn mount_cgroup(options: &str) -> Outcome {
    let dir = match scratch_dir("cgroup") {
        Ok(dir) => dir,
        Err(errno) => return Outcome::failure(errno),
    };
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // "cgroup2" (no v1 controller has that name) asks for the v2 tree, for hosts without v1.
    let (fstype, data) = match options {
        "cgroup2" => ("cgroup2", None),
        _ => ("cgroup", Some(options)),
    };
    let outcome = match nix::mount::mount(Some(fstype), &dir, Some(fstype), flags, data) {
        Err(errno) => Outcome::failure(errno),
        Ok(()) => {
            let release_agent = dir.join("release_agent").symlink_metadata().is_ok();
            let umount = umount2(&dir, MntFlags::MNT_DETACH);
            Outcome::success(json!({"release_agent": release_agent, "umount": stage(&umount)}))
        }
    };
    let _ = fs::remove_dir(&dir);
    outcome
}

/// mknod a block device MAJOR:MINOR in DIR, open it read-only and read its
/// first 512 bytes (a read: nothing on the disk changes), remove the node.
/// CAP_MKNOD lets root make the node; only the device cgroup (or its BPF
/// program) stops the open. ok = the read worked; `value` says how far it
/// got: {"mknod", "open", "read"}, each "ok" or an errno name, or null if
/// not tried.
pub fn open_block(major: u64, minor: u64, dir: &str) -> Outcome {
    let node = Path::new(dir).join(format!(".probe-block-{}", getpid()));
    let _ = fs::remove_file(&node); // a leftover of an earlier probe with the same pid
    let made = mknod(&node, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), makedev(major, minor));
    if let Err(errno) = made {
        return Outcome::failure(errno)
            .with_value(json!({"mknod": stage(&made), "open": null, "read": null}));
    }
    let opened = fs::File::open(&node).map_err(|e| errno_of(&e));
    let read = opened.as_ref().map_err(|e| *e).and_then(|mut file| {
        let mut sector = [0u8; 512];
        file.read(&mut sector).map_err(|e| errno_of(&e))
    });
    let _ = fs::remove_file(&node);
    let value = json!({
        "mknod": "ok",
        "open": stage(&opened),
        "read": if opened.is_ok() { stage(&read) } else { Value::Null },
        "bytes": read.as_ref().ok(),
    });
    match read {
        Ok(_) => Outcome::success(value),
        Err(errno) => Outcome::failure(errno).with_value(value),
    }
}

/// umount2(PATH, MNT_DETACH): e.g. to take away a mask or a read-only bind.
pub fn umount(path: &str) -> Outcome {
    Outcome::from_nix(umount2(path, MntFlags::MNT_DETACH).map(|()| Value::Null))
}

/// Reads PATH and writes the very same bytes back in one write(2), without
/// truncating: it shows whether PATH is writable while changing nothing,
/// which is the only safe way to try a sysctl (even a namespaced one).
/// `value`: the content.
pub fn rewrite(path: &str) -> Outcome {
    let mut content = Vec::new();
    let read = fs::File::open(path).and_then(|f| f.take(64 * 1024).read_to_end(&mut content));
    if let Err(e) = read {
        return Outcome::from_io(Err(e));
    }
    let written = fs::OpenOptions::new().write(true).open(path).and_then(|mut file| file.write(&content));
    let value = json!(String::from_utf8_lossy(&content));
    match written {
        Ok(n) if n == content.len() => Outcome::success(value),
        Ok(n) => Outcome::unexplained(format!("wrote {n} of {} bytes", content.len())).with_value(value),
        Err(e) => Outcome::from_io(Err(e)).with_value(value),
    }
}

/// The names in a directory, sorted (a masked one is an empty tmpfs).
pub fn list(path: &str) -> Outcome {
    let names = fs::read_dir(path).and_then(|entries| {
        let mut names = Vec::new();
        for entry in entries {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(json!(names))
    });
    Outcome::from_io(names)
}

/// A raw syscall's result: ok with the return value, or its errno.
fn raw(ret: libc::c_long) -> Outcome {
    if ret < 0 {
        Outcome::failure(Errno::last())
    } else {
        Outcome::success(json!(ret))
    }
}

/// An fd-returning syscall that should never succeed: close it if it did.
fn raw_fd(ret: libc::c_long) -> Outcome {
    if ret >= 0 {
        // SAFETY: a fresh fd that nothing else owns.
        unsafe { libc::close(ret as libc::c_int) };
    }
    raw(ret)
}

/// Calls `which` as the table at [`Syscall`] says.
pub fn syscall(which: Syscall) -> Outcome {
    let null = std::ptr::null::<libc::c_void>();
    // SAFETY (all of them): the pointers are NULL or a static empty C string,
    // and every call fails before it could use any memory (see the table).
    match which {
        Syscall::Keyctl => raw(unsafe {
            libc::syscall(
                libc::SYS_keyctl,
                libc::KEYCTL_GET_KEYRING_ID as libc::c_long,
                libc::KEY_SPEC_THREAD_KEYRING as libc::c_long,
                0 as libc::c_long,
            )
        }),
        Syscall::Bpf => {
            const BPF_PROG_LOAD: libc::c_long = 5;
            raw_fd(unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, null, 8 as libc::c_long) })
        }
        Syscall::InitModule => {
            raw(unsafe { libc::syscall(libc::SYS_init_module, null, 0 as libc::c_long, c"".as_ptr()) })
        }
        Syscall::FinitModule => raw(unsafe {
            libc::syscall(libc::SYS_finit_module, -1 as libc::c_long, c"".as_ptr(), 0 as libc::c_long)
        }),
        Syscall::Userfaultfd => raw_fd(unsafe { libc::syscall(libc::SYS_userfaultfd, -1 as libc::c_long) }),
        Syscall::PerfEventOpen => raw_fd(unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                null,
                0 as libc::c_long,
                -1 as libc::c_long,
                -1 as libc::c_long,
                0 as libc::c_long,
            )
        }),
        // clone3 with size 0 is refused before anything is copied or created.
        Syscall::Clone3 => raw(unsafe { libc::syscall(libc::SYS_clone3, null, 0 as libc::c_long) }),
        // A process in a new user namespace stays there: do it in a child.
        // SAFETY: unshare(2) takes no pointers.
        Syscall::UnshareUser => {
            in_child(|| Errno::result(unsafe { libc::unshare(libc::CLONE_NEWUSER) }).map(drop))
        }
    }
}

/// Runs `attempt` in a forked child, so that what it changes (namespaces,
/// ids) is not the probe's; the child reports its errno (0: it worked).
fn in_child(attempt: impl FnOnce() -> nix::Result<()>) -> Outcome {
    let (report_read, report_write) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(ends) => ends,
        Err(errno) => return Outcome::failure(errno),
    };
    // SAFETY: the probe is single-threaded, so the child may do anything.
    match unsafe { fork() } {
        Err(errno) => Outcome::failure(errno),
        Ok(ForkResult::Child) => {
            drop(report_read);
            let errno = attempt().err().map_or(0, |errno| errno as i32);
            let _ = nix::unistd::write(&report_write, &errno.to_ne_bytes());
            // SAFETY: leave without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(report_write);
            let mut message = Vec::new();
            let read = fs::File::from(report_read).read_to_end(&mut message);
            while waitpid(child, None) == Err(Errno::EINTR) {}
            match (read, <[u8; 4]>::try_from(message.as_slice())) {
                (Err(e), _) => Outcome::from_io(Err(e)),
                (Ok(_), Ok(bytes)) => match i32::from_ne_bytes(bytes) {
                    0 => Outcome::success(Value::Null),
                    errno => Outcome::failure(Errno::from_raw(errno)),
                },
                (Ok(_), Err(_)) => Outcome::unexplained("the child died without reporting"),
            }
        }
    }
}

/// The classic privilege gain: a setuid-root program, run by a plain user,
/// runs as root. The probe copies itself to DIR (root-owned, mode 4755),
/// forks a child that becomes uid/gid 1000 for good and execs the copy with
/// `--report-ids`, and reports what the copy saw: {"euid": 0} means it gained
/// root; with no_new_privs (or a nosuid mount) euid stays 1000. A failure
/// names its stage ("copy", "chown", "chmod", "setgroups", "setresgid",
/// "setresuid", "exec", "report") in `value`. The copy is removed.
pub fn setuid_exec(dir: &str) -> Outcome {
    let copy = Path::new(dir).join(format!(".probe-suid-{}", getpid()));
    let installed = fs::copy("/proc/self/exe", &copy)
        .map_err(|e| ("copy", e))
        // chown first: it clears the setuid bit.
        .and_then(|_| std::os::unix::fs::chown(&copy, Some(0), Some(0)).map_err(|e| ("chown", e)))
        .and_then(|()| {
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o4755)).map_err(|e| ("chmod", e))
        });
    let outcome = match installed {
        Err((what, e)) => Outcome::from_io(Err(e)).with_value(json!({"stage": what})),
        Ok(()) => run_as_user(&copy),
    };
    let _ = fs::remove_file(&copy);
    outcome
}

fn run_as_user(program: &Path) -> Outcome {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = CString::new(program.as_os_str().as_bytes()) else {
        return Outcome::failure(Errno::EINVAL);
    };
    let argv = [c"probe".as_ptr(), c"--report-ids".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let (report_read, report_write) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(ends) => ends,
        Err(errno) => return Outcome::failure(errno),
    };
    // SAFETY: the probe is single-threaded, so the child may allocate.
    match unsafe { fork() } {
        Err(errno) => Outcome::failure(errno),
        Ok(ForkResult::Child) => {
            drop(report_read);
            let id = UNPRIVILEGED;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&report_write);
            // SAFETY: plain syscalls with valid arguments; dup2 clears
            // close-on-exec on fd 1, which the copy prints its ids to.
            let failed = unsafe {
                if libc::dup2(fd, 1) < 0 {
                    Some("report")
                } else if libc::setgroups(0, std::ptr::null()) < 0 {
                    Some("setgroups")
                } else if libc::setresgid(id, id, id) < 0 {
                    Some("setresgid")
                } else if libc::setresuid(id, id, id) < 0 {
                    Some("setresuid")
                } else {
                    libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    Some("exec")
                }
            }
            .map(|what| (what, Errno::last()));
            if let Some((what, errno)) = failed {
                let message = format!("{{\"stage\":\"{what}\",\"errno\":{}}}\n", errno as i32);
                let _ = nix::unistd::write(&report_write, message.as_bytes());
            }
            // SAFETY: leave without running the parent's exit handlers.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(report_write);
            let mut report = Vec::new();
            let read = fs::File::from(report_read).read_to_end(&mut report);
            while waitpid(child, None) == Err(Errno::EINTR) {}
            if let Err(e) = read {
                return Outcome::from_io(Err(e));
            }
            let Ok(mut seen) = serde_json::from_slice::<Value>(&report) else {
                let text = String::from_utf8_lossy(&report);
                return Outcome::unexplained(format!("the setuid copy reported {text:?}"));
            };
            match seen["errno"].as_i64() {
                Some(errno) => Outcome::failure(Errno::from_raw(errno as i32)).with_value(seen),
                None => {
                    seen["path"] = json!(program.to_string_lossy());
                    Outcome::success(seen)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_specs() {
        assert_eq!(parse_block_spec("254:0:/tmp"), Ok((254, 0, "/tmp".into())));
        assert_eq!(parse_block_spec("8:1:/a:b"), Ok((8, 1, "/a:b".into())));
        for bad in ["254:0", "254:0:", "x:0:/tmp", "254:-1:/tmp", ":0:/tmp", "4294967296:0:/tmp", ""] {
            assert!(parse_block_spec(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn syscall_names_round_trip() {
        for which in Syscall::ALL {
            assert_eq!(Syscall::parse(which.name()), Ok(which));
        }
        let err = Syscall::parse("kexec_load").unwrap_err();
        assert!(err.contains("unknown syscall 'kexec_load'") && err.contains("clone3"), "{err}");
    }

    #[test]
    fn stages_are_errno_names() {
        assert_eq!(stage(&Ok::<(), Errno>(())), json!("ok"));
        assert_eq!(stage(&Err::<(), Errno>(Errno::EPERM)), json!("EPERM"));
    }
}
