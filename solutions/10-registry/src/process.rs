//! The container's process: clone it into new namespaces, exec COMMAND, wait.
//!
//! Exit statuses follow Docker's: COMMAND's own status, 128+N when it died of
//! signal N, 125 when the runtime failed, 126 when COMMAND cannot be executed,
//! 127 when it is not found.

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{execvp, pipe2, Pid};
use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;

const RUNTIME_FAILED: i32 = 125;
const CANNOT_EXECUTE: i32 = 126;
const NOT_FOUND: i32 = 127;

/// Every error line starts with the binary's name, like `01-uts: error: ...`.
const NAME: &str = env!("CARGO_BIN_NAME");

/// An error that carries the exit status it should end the runtime with.
#[derive(Debug)]
struct ExecError {
    status: i32,
    message: String,
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExecError {}

/// Parses the command line; bad flags are a runtime error (125), like Docker's.
pub fn parse_args<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|err| {
        use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
        if matches!(err.kind(), DisplayHelp | DisplayVersion) {
            err.exit();
        }
        // clap explains over several lines; keep its first paragraph, as one line.
        let text = err.render().to_string();
        let words: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).map(str::trim).collect();
        eprintln!("{NAME}: {} (see --help)", words.join(" "));
        std::process::exit(RUNTIME_FAILED);
    })
}

/// Turns the runtime's result into its exit status, printing the error in one line.
pub fn exit_status(result: Result<i32>) -> i32 {
    result.unwrap_or_else(|err| {
        eprintln!("{NAME}: error: {}", one_line(&err));
        match err.downcast_ref::<ExecError>() {
            Some(exec) => exec.status,
            None => RUNTIME_FAILED,
        }
    })
}

/// The error and its causes in one line, even when it quotes a path or
/// bytes with newlines in them.
fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', "\\n")
}

// ANCHOR: fault
/// A switch for the reliability tests: `WORKSHOP_FAULT=STAGE` makes the
/// runtime fail on purpose at that stage, to prove that its way out cleans up.
pub fn fault(stage: &str) -> Result<()> {
    match std::env::var("WORKSHOP_FAULT") {
        Ok(wanted) if wanted == stage => anyhow::bail!("injected fault at stage {stage} (WORKSHOP_FAULT)"),
        _ => Ok(()),
    }
}
// ANCHOR_END: fault

// ANCHOR: spawn
/// The container's first process as the runtime sees it: its pid, and the
/// pipe on which its setup reports a failure.
pub struct Child {
    pub pid: Pid,
    errors: File,
}

/// Starts `child` in a new process with the namespaces in `flags`.
pub fn spawn(flags: CloneFlags, mut child: impl FnMut() -> Result<Infallible>) -> Result<Child> {
    // The child reports a setup failure on this pipe. Its end closes by itself
    // when exec succeeds (O_CLOEXEC): EOF with nothing written means COMMAND runs.
    let (errors, report_to) = pipe2(OFlag::O_CLOEXEC).context("create the error pipe")?;
    // The child gets a copy of our memory (no CLONE_VM), so this stack is its own.
    let mut stack = vec![0u8; 1024 * 1024];
    let body = Box::new(|| {
        // A panic (a todo!(), say) must not unwind into clone(2)'s C callback,
        // where Rust aborts with a message that reads like a crash: say so.
        let failure = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut child)) {
            Ok(Ok(never)) => match never {},
            Ok(Err(err)) => err,
            Err(_) => anyhow!(
                "the container's setup panicked (message above); \
                 a todo!() there means that part is not written yet"
            ),
        };
        report(&report_to, &failure) as isize
    });
    // SAFETY: we are single-threaded, so the copy of our memory is consistent,
    // and the child only runs `body` on a 1 MiB stack.
    let pid = unsafe { nix::sched::clone(body, &mut stack, flags, Some(Signal::SIGCHLD as i32)) };
    let pid = pid.context("clone a child in new namespaces")?;
    drop(report_to); // only the child may hold it open, or we would never see EOF
    Ok(Child { pid, errors: File::from(errors) })
}

/// Child side: sends "STATUS MESSAGE" to the runtime, returns STATUS to exit with.
fn report(pipe: &OwnedFd, err: &anyhow::Error) -> i32 {
    let status = err.downcast_ref::<ExecError>().map_or(RUNTIME_FAILED, |exec| exec.status);
    let _ = nix::unistd::write(pipe, format!("{status} {}", one_line(err)).as_bytes());
    status
}

impl Child {
    /// Host side: blocks until COMMAND runs (EOF on the pipe), or returns the
    /// error the child's setup reported, with its exit status (and reaps it).
    pub fn wait_for_exec(&mut self) -> Result<()> {
        let mut report = String::new();
        let _ = self.errors.read_to_string(&mut report);
        let Some((status, message)) = report.split_once(' ') else { return Ok(()) };
        let _ = wait_for(self.pid);
        let status = status.parse().unwrap_or(RUNTIME_FAILED);
        Err(ExecError { status, message: message.to_string() }.into())
    }
}
// ANCHOR_END: spawn

// ANCHOR: exec
/// Replaces the child with COMMAND; returns only if that fails.
pub fn exec(command: &[String]) -> Result<Infallible> {
    let argv = command
        .iter()
        .map(|arg| CString::new(arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .context("the command contains a NUL byte")?;
    let errno = execvp(&argv[0], &argv).unwrap_err();
    let cmd = &command[0];
    let (status, message) = match errno {
        Errno::ENOENT if !cmd.contains('/') => (NOT_FOUND, format!("{cmd}: command not found in PATH")),
        Errno::ENOENT if std::path::Path::new(cmd).exists() => (
            NOT_FOUND,
            format!("{cmd}: its interpreter or dynamic loader is missing (a dynamically linked program needs its libraries in the root filesystem)"),
        ),
        Errno::ENOENT => (NOT_FOUND, format!("{cmd}: no such file or directory")),
        _ => (CANNOT_EXECUTE, format!("{cmd}: cannot execute: {}", errno.desc())),
    };
    Err(ExecError { status, message }.into())
}
// ANCHOR_END: exec

// ANCHOR: wait_for
/// Waits for the child and returns its exit status, Docker style.
pub fn wait_for(pid: Pid) -> Result<i32> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(err) => return Err(err).context("waitpid"),
        }
    }
}
// ANCHOR_END: wait_for

/// Kills a child whose setup failed, and reaps it, so nothing is left running.
pub fn stop(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
}

/// "PID STARTTIME" of a running process: a pid alone may be reused, with its
/// start time it names one process. None when it is gone.
pub fn identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may contain spaces: count fields after ')'.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.to_string();
    Some(format!("{pid} {start}"))
}

/// A short random id (12 hex digits, like Docker's), the default hostname.
pub fn random_id() -> String {
    let mut bytes = [0u8; 6];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No /dev/urandom is rare enough; the pid still gives a usable name.
        bytes[..4].copy_from_slice(&std::process::id().to_be_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
