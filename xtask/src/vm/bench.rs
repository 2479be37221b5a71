//! The VM row of `cargo xtask bench`: how long a whole machine takes to do what a
//! container does, from qemu's start to its exit.
//!
//! The machine is the VM tier's (the same cached Debian kernel, qemu command line,
//! kernel command line and choice of KVM or TCG), with a small initramfs of its
//! own: the static busybox and an /init that runs one command (`/bin/true`), prints
//! its status on the console and powers off at once. Everything the bench writes
//! goes to its own directory (target/bench/vm): `cargo xtask vm-test` may be running
//! at the same time in target/vm, where only `kernel::prepare` (its own cache
//! logic) may write.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{
    cache_dir, choose_accel, clean_console_line, kernel, kernel_command_line, parse_sentinel, qemu_command,
    write_cpio, Entry, SENTINEL,
};
use crate::{display_path, output, which};

/// The command the VM runs, the same as in the containers.
pub const COMMAND: &str = "/bin/true";

/// One boot may take this long; under TCG it takes seconds, a hung one is killed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The VM's boot times and what was booted.
pub struct Measured {
    /// Spawn to exit of qemu, in milliseconds, one per measured boot.
    pub times_ms: Vec<f64>,
    /// Boots before the measured ones (not in `times_ms`).
    pub warmups: usize,
    /// `uname -r` of the kernel, e.g. "6.1.0-56-amd64".
    pub kernel: String,
    /// "KVM" or "TCG".
    pub accel: &'static str,
    /// Why that accelerator (e.g. "/dev/kvm opens, but a kernel did not boot on it").
    pub accel_why: String,
    /// The consoles of every boot.
    pub log: PathBuf,
}

/// Boots the VM tier's kernel `warmups + boots` times, each to `/bin/true` and
/// power-off, in `work` (the initramfs, the console log, a KVM probe if one is needed).
/// Fails when the kernel cannot be prepared (no apt, no mirror), qemu is missing, or
/// a boot does not print the command's status 0 before qemu exits.
pub fn boot_to_true(work: &Path, warmups: usize, boots: usize) -> Result<Measured> {
    let qemu = which("qemu-system-x86_64").context(
        "no qemu-system-x86_64: install it with `sudo apt-get install qemu-system-x86` (or `sudo cargo xtask setup`)",
    )?;
    fs::create_dir_all(work).with_context(|| format!("create {}", work.display()))?;
    // The VM tier's kernel from its cache: prepare() reads an unpacked kernel that is
    // there, and otherwise downloads and unpacks it with the VM tier's own logic.
    let cache = cache_dir();
    let kernel = kernel::prepare(&cache, None).context("could not prepare the VM tier's Debian kernel")?;
    let (accel, accel_why) =
        choose_accel(&qemu, &kernel, &work.join("kvm-probe"), Some(&cache.join("kvm-probe")));
    let initrd = build_initramfs(work)?;
    let append = kernel_command_line(accel);
    let log = work.join("console.log");
    let mut log_file = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let command = || {
        let mut command = qemu_command(&qemu, accel, &kernel.vmlinuz, &append);
        command.arg("-initrd").arg(&initrd);
        command
    };
    println!("bench: vm: kernel {}, {}: {accel_why}", kernel.release, accel.name());
    println!("bench: vm: $ {}", crate::command_line(&command()));

    let mut times_ms = Vec::new();
    for i in 0..warmups + boots {
        let what = match i.checked_sub(warmups) {
            None => format!("warm-up boot {} of {warmups}", i + 1),
            Some(n) => format!("boot {} of {boots}", n + 1),
        };
        let (ms, console) = boot_once(command())?;
        writeln!(log_file, "==== {what}: {ms:.1} ms")?;
        for (seconds, line) in &console.lines {
            writeln!(log_file, "[{seconds:7.3}] {line}")?;
        }
        let ran = console.lines.iter().find_map(|(_, line)| parse_sentinel(line));
        match (console.timed_out, ran) {
            (false, Some(0)) => {}
            (true, _) => bail!(
                "the VM was still running after {} s and was killed ({what}; console: {})",
                BOOT_TIMEOUT.as_secs(),
                display_path(&log)
            ),
            (false, Some(status)) => {
                bail!("{COMMAND} exited with {status} in the VM ({what}; console: {})", display_path(&log))
            }
            (false, None) => bail!(
                "qemu exited ({}) without the VM printing `{SENTINEL} 0` ({what}): a kernel panic? \
                 Last lines of the console: {}",
                console.status,
                console
                    .lines
                    .iter()
                    .rev()
                    .take(5)
                    .rev()
                    .map(|(_, l)| l.as_str())
                    .collect::<Vec<_>>()
                    .join(" / ")
            ),
        }
        println!("bench: vm: {what}: {ms:.0} ms");
        if i >= warmups {
            times_ms.push(ms);
        }
    }
    Ok(Measured { times_ms, warmups, kernel: kernel.release, accel: accel.short_name(), accel_why, log })
}

/// What one boot printed.
struct Console {
    /// Each line with the host's seconds since qemu started: where the time goes.
    lines: Vec<(f64, String)>,
    timed_out: bool,
    /// qemu's exit status, as text.
    status: String,
}

/// Runs qemu once: the time from spawn to exit, and its console (stdout and stderr).
fn boot_once(mut command: Command) -> Result<(f64, Console)> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command.spawn().context("could not start qemu")?;
    let read = |pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let (mut lines, mut line) = (Vec::new(), Vec::new());
            while reader.read_until(b'\n', &mut line).map(|n| n > 0).unwrap_or(false) {
                let text = clean_console_line(&String::from_utf8_lossy(&line));
                lines.push((start.elapsed().as_secs_f64(), text));
                line.clear();
            }
            lines
        })
    };
    let stdout = read(Box::new(child.stdout.take().context("qemu's stdout")?));
    let stderr = read(Box::new(child.stderr.take().context("qemu's stderr")?));
    // Polled every millisecond: a boot takes seconds, so the error is well under 0.1 %.
    let (ms, status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (start.elapsed().as_secs_f64() * 1000.0, status.to_string(), false);
        }
        if start.elapsed() >= BOOT_TIMEOUT {
            let _ = child.kill(); // SIGKILL, by the pid of the qemu we started
            let status = child.wait()?;
            break (start.elapsed().as_secs_f64() * 1000.0, status.to_string(), true);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut lines = stdout.join().unwrap_or_default();
    lines.extend(stderr.join().unwrap_or_default());
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok((ms, Console { lines, timed_out, status }))
}

/// /init: the command, its status on the console, power off at once. No sync: the
/// machine has no disk, and `poweroff -f` skips init's shutdown (the VM tier's
/// stage 2 ends the same way).
fn init_script() -> String {
    format!(
        "#!/bin/sh\n\
         # cargo xtask bench: one command, its status on the console, power off.\n\
         {COMMAND}\n\
         echo \"{SENTINEL} $?\"\n\
         poweroff -f\n"
    )
}

/// work/initramfs.cpio: busybox (the VM tier's static one) with its applets, and /init.
/// Rebuilt every time: it is a few megabytes and takes milliseconds.
fn build_initramfs(work: &Path) -> Result<PathBuf> {
    let busybox = crate::setup::require_static_busybox()?;
    let mut entries = vec![
        Entry::Dir { guest: "dev".into(), mode: 0o755 },
        Entry::CharDevice { guest: "dev/console".into(), mode: 0o600, rdev: (5, 1) },
        Entry::Dir { guest: "proc".into(), mode: 0o755 },
        Entry::Dir { guest: "sys".into(), mode: 0o755 },
        Entry::File { guest: "bin/busybox".into(), host: busybox.clone(), mode: 0o755 },
        Entry::Data { guest: "init".into(), mode: 0o755, data: init_script() },
    ];
    let list = output(Command::new(&busybox).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "bin/busybox") {
        if !applet.split('/').any(|c| c == "..") {
            entries.push(Entry::Symlink { guest: applet.to_string(), target: "/bin/busybox".into() });
        }
    }
    let initrd = work.join("initramfs.cpio");
    write_cpio(&initrd, &entries)?;
    Ok(initrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_runs_the_command_then_powers_off() {
        let script = init_script();
        assert!(script.starts_with("#!/bin/sh\n"));
        let run = script.find("\n/bin/true\n").unwrap();
        let status = script.find("echo \"WORKSHOP-VM-EXIT: $?\"\n").unwrap();
        let off = script.find("poweroff -f\n").unwrap();
        assert!(run < status && status < off);
    }
}
