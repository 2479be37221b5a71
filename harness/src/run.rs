//! Running a step binary the way a learner does, with a deadline.

use anyhow::{bail, Context, Result};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A command line for a step binary: `BIN run FLAGS... -- COMMAND...`.
#[derive(Clone, Debug)]
pub struct Run {
    pub bin: OsString,
    pub args: Vec<OsString>,
    pub timeout: Duration,
    pub uid: Option<u32>,
    /// Run the binary through this wrapper (e.g. `unshare -m --propagation shared`).
    pub wrapper: Vec<OsString>,
    /// Variables removed from the environment the binary gets.
    pub env_removed: Vec<OsString>,
    /// Variables set in it (after the harness's own, see `spawn`).
    pub env: Vec<(OsString, OsString)>,
    /// What the binary reads on stdin (by default: nothing, /dev/null).
    pub stdin: Option<Vec<u8>>,
    /// Start it in the machine's own network namespace, not the test sandbox
    /// (only for a check that must reach the internet, like pulling from Docker Hub).
    pub on_host_network: bool,
}

/// How a run ended: Docker-style status (128+N for signal N) and its output.
#[derive(Debug)]
pub struct Outcome {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

/// A run in progress (for tests that signal it while it runs).
pub struct Running {
    pub child: Child,
    command: String,
    readers: [JoinHandle<String>; 2],
    deadline: Instant,
}

impl Run {
    /// `bin` with the raw arguments (no `run` added).
    pub fn raw(bin: impl AsRef<OsStr>) -> Run {
        Run {
            bin: bin.as_ref().into(),
            args: vec![],
            timeout: Duration::from_secs(30),
            uid: None,
            wrapper: vec![],
            env_removed: vec![],
            env: vec![],
            stdin: None,
            on_host_network: false,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Run {
        self.args.push(arg.as_ref().into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Run {
        self.args.extend(args.into_iter().map(|a| a.as_ref().into()));
        self
    }

    /// Appends `-- COMMAND...`.
    pub fn cmd<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(self, command: I) -> Run {
        self.arg("--").args(command)
    }

    pub fn as_uid(mut self, uid: u32) -> Run {
        self.uid = Some(uid);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Run {
        self.timeout = timeout;
        self
    }

    pub fn wrapped<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, wrapper: I) -> Run {
        self.wrapper = wrapper.into_iter().map(|a| a.as_ref().into()).collect();
        self
    }

    pub fn env_remove(mut self, name: impl AsRef<OsStr>) -> Run {
        self.env_removed.push(name.as_ref().into());
        self
    }

    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Run {
        self.env.push((name.as_ref().into(), value.as_ref().into()));
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Run {
        self.stdin = Some(bytes.into());
        self
    }

    pub fn on_host_network(mut self) -> Run {
        self.on_host_network = true;
        self
    }

    fn describe(&self) -> String {
        let env = self
            .env
            .iter()
            .map(|(name, value)| format!("{}={}", name.to_string_lossy(), value.to_string_lossy()));
        let words = self.wrapper.iter().chain([&self.bin]).chain(&self.args);
        env.chain(words.map(|w| w.to_string_lossy().into_owned())).collect::<Vec<_>>().join(" ")
    }

    pub fn spawn(&self) -> Result<Running> {
        let mut words = self.wrapper.iter().chain([&self.bin]).chain(&self.args);
        let mut cmd = Command::new(words.next().unwrap());
        let stdin = if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() };
        cmd.args(words).stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Its own process group, so a timeout can kill the runtime and its container together.
        cmd.process_group(0);
        // Never the machine's own network: every run starts in the test sandbox.
        if !self.on_host_network {
            crate::sandbox::inside(&mut cmd);
        }
        // Never the internet either: step 10 pulls docker.io images from this mirror, a
        // closed port unless a check points it at its own registry (with `env`).
        cmd.env(crate::registry::MIRROR_VAR, crate::registry::NO_MIRROR);
        cmd.envs(self.env.iter().map(|(name, value)| (name, value)));
        for name in &self.env_removed {
            cmd.env_remove(name);
        }
        if let Some(uid) = self.uid {
            // The not-root case: a plain unprivileged user, like `nobody`. Not
            // Command::uid: std changes ids before pre_exec hooks, and joining
            // the sandbox needs root.
            // SAFETY: only setgroups/setgid/setuid between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let dropped = libc::setgroups(0, std::ptr::null()) == 0
                        && libc::setgid(uid) == 0
                        && libc::setuid(uid) == 0;
                    dropped.then_some(()).ok_or_else(std::io::Error::last_os_error)
                })
            };
        }
        let mut child = cmd.spawn().with_context(|| format!("start {}", self.describe()))?;
        if let (Some(bytes), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            // A thread: a binary that never reads must not block the run (its pipe just breaks).
            std::thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&bytes);
            });
        }
        let reader = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                let _ = pipe.read_to_end(&mut text);
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let readers =
            [reader(Box::new(child.stdout.take().unwrap())), reader(Box::new(child.stderr.take().unwrap()))];
        Ok(Running { child, command: self.describe(), readers, deadline: Instant::now() + self.timeout })
    }

    pub fn output(&self) -> Result<Outcome> {
        self.spawn()?.wait()
    }
}

impl Running {
    /// The runtime's pid on the host.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) -> Result<()> {
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        if unsafe { libc::kill(self.pid(), signal) } != 0 {
            bail!("kill {} {signal}: {}", self.pid(), std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the runtime's children from /proc (the container's first process).
    pub fn children(&self) -> Vec<i32> {
        let path = format!("/proc/{0}/task/{0}/children", self.pid());
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }

    /// Waits until the container's first process runs COMMAND, and returns
    /// its pid: the child in a UTS namespace of its own (the runtime's other
    /// children, like `ip`, share the runtime's) that has exec'd (until then it
    /// is a copy of the runtime, with the runtime's signal handlers).
    pub fn container_pid(&self) -> Result<i32> {
        let link = |pid: i32, what: &str| std::fs::read_link(format!("/proc/{pid}/{what}")).ok();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let (uts, exe) = (link(self.pid(), "ns/uts"), link(self.pid(), "exe"));
            let is_container = |&child: &i32| {
                let (child_uts, child_exe) = (link(child, "ns/uts"), link(child, "exe"));
                child_uts.is_some() && child_uts != uts && child_exe.is_some() && child_exe != exe
            };
            if let Some(pid) = self.children().into_iter().find(is_container) {
                return Ok(pid);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        bail!("{}: the container did not start its command within 10 s", self.command)
    }

    /// Whether the runtime is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (until the run's deadline) and collects the outcome.
    pub fn wait(mut self) -> Result<Outcome> {
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > self.deadline {
                // SAFETY: the process group we created for this run.
                unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
                let _ = self.child.wait();
                bail!("{}: still running after its timeout; killed", self.command);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        use std::os::unix::process::ExitStatusExt;
        let status = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let [out, err] = self.readers;
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        Ok(Outcome { status, stdout, stderr, command: self.command })
    }
}

impl Outcome {
    /// Fails unless the run ended with `status`; the error shows what was seen.
    pub fn expect_status(&self, status: i32) -> Result<&Outcome> {
        if self.status != status {
            bail!(
                "`{}`: expected exit status {status}, got {}\n{}",
                self.command,
                self.status,
                self.transcript()
            );
        }
        Ok(self)
    }

    /// Fails unless stderr is exactly one line that contains each of `words`.
    pub fn expect_one_error_line(&self, words: &[&str]) -> Result<&Outcome> {
        let lines: Vec<&str> = self.stderr.lines().collect();
        if lines.len() != 1 {
            bail!(
                "`{}`: expected one line on stderr, got {}\n{}",
                self.command,
                lines.len(),
                self.transcript()
            );
        }
        for word in words {
            if !lines[0].contains(word) {
                bail!("`{}`: expected the error to mention {word:?}\n{}", self.command, self.transcript());
            }
        }
        Ok(self)
    }

    pub fn transcript(&self) -> String {
        format!("--- stdout:\n{}--- stderr:\n{}---", self.stdout, self.stderr)
    }
}

/// Runs a helper command (like `ip link del`) with no output, in the sandbox
/// or in the machine's own namespace.
pub fn quietly(cmd: &mut Command, in_sandbox: bool) -> std::io::Result<std::process::ExitStatus> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    if in_sandbox {
        crate::sandbox::inside(cmd);
    }
    cmd.status()
}
