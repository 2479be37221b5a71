//! `cargo xtask <task>`: the workshop's helper tasks.
//!
//! Each task lives in its own module; this file holds the command line and the
//! small helpers they share (running commands, finding the workspace, root/sudo).
//!
//! Rule of thumb: cargo always runs as the invoking user (so `target/` never fills
//! with root-owned files); only the command that needs root is wrapped in `sudo`.

mod artifacts;
mod bench;
mod book;
mod classroom;
mod demo;
mod doctor;
mod exercises;
mod grade;
mod handout;
mod image;
mod mountinfo;
// Where the runtimes keep things on the host: said once, in the harness
// (not every path is one the xtask needs).
#[allow(dead_code)]
#[path = "../../harness/src/paths.rs"]
mod paths;
mod registry;
mod rootfs;
mod setup;
mod test;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Helper tasks for the container workshop")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the workshop needs on this host (static busybox, iproute2, ...).
    Setup,
    /// Build the workshop root filesystem (default: target/rootfs).
    Rootfs {
        /// Import this tarball (Alpine minirootfs .tar.gz, `docker export` .tar) instead of busybox.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Where to put the rootfs.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Check that this machine can run the workshop.
    Doctor,
    /// Run the newest step and show off what it isolates (installs what it needs first).
    Demo {
        /// (For the VM tier) use the step binaries and probe in DIR instead of building them.
        #[arg(long, value_name = "DIR", hide = true)]
        prebuilt: Option<PathBuf>,
    },
    /// Build and import the example layered image of chapter 07 ("example").
    Image,
    /// Run step 10's test registry on 127.0.0.1, filled with the example images, until Ctrl-C.
    Registry {
        /// The port on 127.0.0.1.
        #[arg(long, default_value_t = 5000)]
        port: u16,
    },
    /// Measure start-to-exit times of every step against runc, unshare and a VM.
    Bench {
        /// A few repetitions and no scaling runs (what `cargo xtask test` runs).
        #[arg(long)]
        quick: bool,
        /// Also copy the table and chart into book/src/generated/.
        #[arg(long)]
        publish: bool,
        /// Measure only these groups of rows: floor, steps, runc, vm, scaling (repeatable,
        /// or comma-separated); the results go to target/bench/only-GROUPS/.
        #[arg(long, value_name = "GROUP", value_delimiter = ',')]
        only: Vec<String>,
    },
    /// (internal) The benchmark's measuring half, run as root in a scratch network namespace.
    #[command(hide = true)]
    BenchWorker {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[arg(long)]
        rootfs: PathBuf,
        #[arg(long)]
        bin_dir: PathBuf,
        #[arg(long)]
        quick: bool,
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Run every check of the project, tier by tier, and print a summary.
    Test {
        /// Run only this tier (repeatable). Tiers: setup, lint, unit, integration, vm, exercises, book, bench.
        #[arg(long = "tier", value_name = "TIER")]
        tiers: Vec<String>,
        /// Extra arguments for the integration tests (test-name filters, --nocapture, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the step binaries and the static probe, and print their paths.
    Build,
    /// Run the integration tests in a VM: a Debian kernel under qemu, with pure cgroup v2.
    VmTest {
        /// Kernel package (e.g. linux-image-6.12.117+deb12-amd64) or .deb file [default: the newest 6.1].
        #[arg(long, value_name = "PACKAGE|FILE")]
        kernel: Option<String>,
        /// Seconds the whole run in the VM may take [default: 1200].
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// Every check on every step (the default under software emulation is every check once).
        #[arg(long)]
        all: bool,
        /// Only this guest: initramfs (busybox, every check) or systemd (Debian 12, systemd as
        /// PID 1: the demo's setup, steps 06 and newest) [default: both].
        #[arg(long, value_name = "GUEST", value_parser = ["initramfs", "systemd"])]
        guest: Option<String>,
        /// Only the book's ```console,cgroup-v2 blocks, in the systemd guest (what the book tier runs).
        #[arg(long, conflicts_with_all = ["guest", "all", "args", "kernel", "timeout"])]
        book: bool,
        /// Arguments for the harness in the VM (test-name filters, --exact, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the book (book/): regenerate the step diffs, then run mdbook (installed if missing).
    Book {
        /// Also run every command of the book as root and write its real output into the markdown.
        #[arg(long)]
        bless: bool,
        /// Open the built book in a browser.
        #[arg(long)]
        open: bool,
        /// Also run the book tier's headless-browser test (book/tests/browser.mjs) on
        /// the built book: every page, diagram and quiz, and the search. Runs no console command.
        #[arg(long)]
        browser: bool,
    },
    /// Grade the exercises (or their solutions): a table, and a JSON report for a classroom.
    Grade {
        /// Which exercises: 01, 1 or 01-uts (several may be given) [default: all]
        exercises: Vec<String>,
        /// Grade the solutions instead of the exercises.
        #[arg(long)]
        solutions: bool,
        /// Grade again whenever a file of the exercise changes (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
        /// Where to write the JSON report [default: target/grade/report.json].
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Show the hints for an exercise, one at a time.
    Hint {
        /// The exercise: 01, 1 or 01-uts.
        exercise: String,
        /// Which hint [default: the first].
        number: Option<usize>,
        /// Show all of them at once.
        #[arg(long)]
        all: bool,
    },
    /// Write a copy of the workshop for students: without solutions/, and a workspace that builds without them.
    Handout {
        /// The directory to write it to (new or empty).
        dir: PathBuf,
    },
    /// (Used by `book`: runs the book's commands as root, in namespaces of their own.)
    #[command(name = "book-commands", hide = true)]
    BookCommands {
        #[arg(long)]
        bless: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Rootfs { from, out } => rootfs::run(from, out),
        Task::Doctor => doctor::run(),
        Task::Demo { prebuilt } => demo::run(prebuilt.as_deref()),
        Task::Image => image::run(),
        Task::Registry { port } => registry::run(port),
        Task::Bench { quick, publish, only } => bench::run_only(quick, publish, &only),
        Task::BenchWorker { out, bundle, rootfs, bin_dir, quick, only } => {
            bench::worker(bench::Worker { out, bundle, rootfs, bin_dir, quick, only })
        }
        Task::Test { tiers, args } => test::run(&tiers, &args),
        Task::Build => artifacts::run(),
        Task::VmTest { book: true, .. } => vm::book::check(false),
        Task::VmTest { kernel, timeout, all, guest, args, book: false } => {
            vm::run(&vm::Options { kernel, timeout, all, args, guest })
        }
        Task::Book { bless, open, browser } => book::run(bless, open, browser),
        Task::BookCommands { bless } => book::commands_task(bless),
        Task::Grade { exercises, solutions, watch, report } => {
            let kind = if solutions { exercises::Kind::Solution } else { exercises::Kind::Exercise };
            grade::run(&exercises, kind, report, watch)
        }
        Task::Hint { exercise, number, all } => grade::hint(&exercise, number, all),
        Task::Handout { dir } => handout::run(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of xtask's own directory.
pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().expect("xtask lives inside the workspace").to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                std::env::current_dir().unwrap_or_default().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// A `cargo` command that runs in the workspace root and uses our target directory.
pub fn cargo() -> Command {
    // Cargo tells the programs it runs where it lives; fall back to the PATH.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    if std::env::var_os("CARGO_TARGET_DIR").is_some() {
        // Pass it on as an absolute path: a relative one would now mean something else.
        cmd.env("CARGO_TARGET_DIR", target_dir());
    }
    cmd
}

/// Run a command with inherited stdin/stdout/stderr; fail if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = command_line(cmd);
    eprintln!("$ {line}");
    let status = cmd.status().with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Run a command quietly and return its stdout; fail (with its stderr) if it fails.
/// (If the caller set stderr to inherit, the child's messages go straight to ours.)
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let out = cmd.output().with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.trim().is_empty() {
            bail!("`{line}` failed ({})", out.status);
        }
        bail!("`{line}` failed ({}): {}", out.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command as you would type it in a shell, environment variables first.
pub fn command_line(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), shell_quote(&value.to_string_lossy())));
        }
    }
    words.push(shell_quote(&cmd.get_program().to_string_lossy()));
    for arg in cmd.get_args() {
        words.push(shell_quote(&arg.to_string_lossy()));
    }
    words.join(" ")
}

/// Quote a word for a POSIX shell, only when needed.
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Are we root (effective uid 0)?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Find a program in $PATH, plus the sbin directories (a normal user's PATH often lacks them).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) => meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

pub fn sudo_available() -> bool {
    which("sudo").is_some()
}

/// Prepare a command that needs root: as root it is returned unchanged; otherwise it
/// becomes `sudo env VAR=... PROGRAM ARGS...` (sudo resets the environment, so the
/// variables go through `env`). Fails, with the command to run as root, without sudo.
pub fn as_root(cmd: Command) -> Result<Command> {
    if is_root() {
        return Ok(cmd);
    }
    if !sudo_available() {
        bail!("this needs root and sudo is not installed; run it as root: {}", command_line(&cmd));
    }
    let sudo = sudo_command(&cmd);
    eprintln!("running with sudo: {}", command_line(&sudo));
    Ok(sudo)
}

/// `sudo env VAR=... PROGRAM ARGS...`, in the same directory.
fn sudo_command(cmd: &Command) -> Command {
    let mut sudo = Command::new("sudo");
    sudo.arg("env");
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let mut assignment = key.to_os_string();
            assignment.push("=");
            assignment.push(value);
            sudo.arg(assignment);
        }
    }
    sudo.arg(cmd.get_program()).args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        sudo.current_dir(dir);
    }
    sudo
}

/// Is this executable statically linked? Asks `ldd`, which says "not a dynamic
/// executable" (and exits 1) or "statically linked" for static binaries.
pub fn is_static(path: &Path) -> Result<bool> {
    let mut cmd = Command::new("ldd");
    cmd.arg(path);
    let line = command_line(&cmd);
    let out = cmd.output().with_context(|| format!("could not start `{line}` (is ldd installed?)"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        Ok(true)
    } else if out.status.success() {
        Ok(false)
    } else {
        bail!("`{line}` failed ({}): {}", out.status, text.trim());
    }
}

/// Show a path relative to the workspace root when it is inside it (shorter to read).
pub fn display_path(path: &Path) -> String {
    let root = workspace_root();
    match path.strip_prefix(&root) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => path.display().to_string(),
    }
}

/// Print rows as a table with aligned columns and a header rule.
pub fn print_table<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.as_ref().chars().count());
        }
    }
    let format_row = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        padded.join(" | ").trim_end().to_string()
    };
    println!("{}", format_row(header.to_vec()));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("{}", rule.join("-+-"));
    for row in rows {
        println!("{}", format_row(row.iter().map(|c| c.as_ref()).collect()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("plain/path-1.0"), "plain/path-1.0");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn sudo_passes_variables_through_env() {
        let mut cmd = Command::new("/t/steps");
        cmd.env("WORKSHOP_ROOT", "/w").arg("uts").current_dir("/w");
        let sudo = sudo_command(&cmd);
        assert_eq!(command_line(&sudo), "sudo env WORKSHOP_ROOT=/w /t/steps uts");
        assert_eq!(sudo.get_envs().count(), 0);
        assert_eq!(sudo.get_current_dir(), Some(Path::new("/w")));
    }

    #[test]
    fn command_lines_show_env_first() {
        let mut cmd = Command::new("/bin/sh");
        cmd.env("A", "1").args(["-c", "echo hi"]);
        assert_eq!(command_line(&cmd), "A=1 /bin/sh -c 'echo hi'");
    }
}
