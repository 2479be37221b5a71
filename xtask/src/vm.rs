//! The `vm-test` task and the `vm` tier: the integration tests on a stock Debian
//! kernel under qemu, in a machine whose /sys/fs/cgroup is pure cgroup v2.
//!
//! 1. The kernel: a Debian `linux-image-6.1.0-N-amd64` package (see `vm/kernel.rs`).
//! 2. The binaries, all static: the steps and the harness built with crt-static for
//!    the host triple, the probe. From the host, with its libraries: iproute2's
//!    `ip` (see `host_tools`); busybox has the rest.
//! 3. An initramfs (our own cpio writer, `vm/cpio.rs`; uncompressed, which boots
//!    faster under emulation than gzip): busybox, the workshop rootfs, the binaries,
//!    the modules, and a two-stage /init that mounts cgroup2 on /sys/fs/cgroup.
//! 4. qemu boots it (KVM when it works, else software emulation), the console
//!    streams to the terminal and target/vm/console.log, and the sentinel line
//!    `WORKSHOP-VM-EXIT: N` that /init prints after the harness decides the result.
//!
//! Everything is cached in target/vm: the .deb, the unpacked kernel, the stripped
//! binaries and the initramfs (rebuilt only when an input changed).
//!
//! That is the `initramfs` guest. The `systemd` guest (`vm/systemd.rs`) boots the same
//! kernel into a real Debian 12 system, systemd as PID 1 on the unified hierarchy,
//! from an ext4 disk: the demo's setup path on a machine without busybox, the checks
//! of step 06 and of the newest step, and systemd's own handling of cgroups. The
//! book tier runs the book's ```console,cgroup-v2 blocks in it (`vm/book.rs`).
//! `vm-test` and the `vm` tier run both guests (`--guest` one of them) and end with
//! a table: which guest ran what, in how many seconds.

pub mod bench;
pub mod book;
mod cpio;
mod kernel;
mod systemd;

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::{
    artifacts, display_path, is_static, output, print_table, rootfs, run as run_cmd, shell_quote, target_dir,
    which, workspace_root,
};

/// Checks that cannot work in the VM: (name filter, why). They are skipped with
/// `--skip`, and listed at every run, so nothing is skipped silently. None today:
/// the one that needs a dynamically linked /usr/bin/true on the host gets the
/// host's, with its libraries (see `host_tools`).
const EXCLUDED: &[(&str, &str)] = &[(
    "::registry::",
    "they pull from Debian's docker-registry filled by skopeo, which the busybox initramfs does not carry; \
     the host tier runs them, and nothing in them depends on the kernel's version or cgroup layout",
)];

/// The line /init prints when the harness has finished: `WORKSHOP-VM-EXIT: <status>`.
const SENTINEL: &str = "WORKSHOP-VM-EXIT:";

/// The whole run in the VM, boot to power-off, must end within this (seconds).
const DEFAULT_TIMEOUT: u64 = 1200;

/// The KVM probe boots the kernel to a panic (no initramfs); KVM does that in a second or two.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the workshop's binaries live in the VM. The workspace itself (steps/ for the
/// harness to find the steps, target/rootfs) sits at the host's path: the steps fall
/// back to a rootfs path compiled in (CARGO_MANIFEST_DIR/../../target/rootfs).
const GUEST_BIN: &str = "/workshop/bin";
const GUEST_PROBE: &str = "/workshop/probe";
const GUEST_HARNESS: &str = "/workshop/harness";
const GUEST_STAGE2: &str = "/workshop/init";
/// Ahead of busybox's applets in the VM's PATH.
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Default)]
pub struct Options {
    /// A kernel package name or .deb file instead of the newest 6.1.
    pub kernel: Option<String>,
    /// Seconds for the whole run in the VM.
    pub timeout: Option<u64>,
    /// Every check on every step, even under software emulation.
    pub all: bool,
    /// Arguments for the harness (test-name filters, --exact, ...).
    pub args: Vec<String>,
    /// Only this guest: "initramfs" or "systemd" [default: both].
    pub guest: Option<String>,
}

/// The VM tier's guests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GuestKind {
    /// Busybox in an initramfs, cgroup2 mounted by hand: every check on the newest step.
    Initramfs,
    /// Debian 12 with systemd as PID 1 (see `vm/systemd.rs`): the demo's setup, step 06
    /// and the newest step's checks, systemd's own cgroup handling.
    Systemd,
}

impl GuestKind {
    pub fn name(self) -> &'static str {
        match self {
            GuestKind::Initramfs => "initramfs",
            GuestKind::Systemd => "systemd",
        }
    }

    fn parse(name: &str) -> Result<GuestKind> {
        match name {
            "initramfs" => Ok(GuestKind::Initramfs),
            "systemd" => Ok(GuestKind::Systemd),
            other => bail!("unknown guest {other:?}: the guests are initramfs and systemd"),
        }
    }
}

/// What one guest did, for the summary.
struct GuestReport {
    /// One line per part: what ran, its result, its seconds.
    parts: Vec<String>,
}

/// `target/vm`: the cache of everything the VM tier makes.
pub fn cache_dir() -> PathBuf {
    target_dir().join("vm")
}

/// The `vm-test` task and the `vm` tier: each guest in turn (both by default), then a summary.
pub fn run(options: &Options) -> Result<()> {
    let guests = match options.guest.as_deref() {
        None => vec![GuestKind::Initramfs, GuestKind::Systemd],
        Some(name) => vec![GuestKind::parse(name)?],
    };
    let mut results = Vec::new();
    for guest in &guests {
        println!("\nvm: ==> guest {}", guest.name());
        let started = Instant::now();
        let result = match guest {
            GuestKind::Initramfs => run_initramfs(options),
            GuestKind::Systemd => systemd::run(options),
        };
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => println!("vm: guest {}: passed in {seconds:.1} s", guest.name()),
            Err(err) => println!("vm: guest {}: FAILED after {seconds:.1} s: {err:#}", guest.name()),
        }
        results.push((*guest, result, seconds));
    }
    println!("\nvm: summary");
    let mut rows = Vec::new();
    for (guest, result, seconds) in &results {
        let (outcome, parts) = match result {
            Ok(report) => ("passed".to_string(), report.parts.clone()),
            Err(err) => (format!("FAILED: {err:#}"), Vec::new()),
        };
        rows.push(vec![guest.name().to_string(), outcome, format!("{seconds:.1}")]);
        for part in parts {
            rows.push(vec![String::new(), part, String::new()]);
        }
    }
    print_table(&["guest", "what ran", "seconds"], &rows);
    let failed: Vec<&str> =
        results.iter().filter(|(_, r, _)| r.is_err()).map(|(guest, _, _)| guest.name()).collect();
    if !failed.is_empty() {
        bail!("the tests failed in the guests: {}", failed.join(", "));
    }
    Ok(())
}

/// The first guest: the initramfs with busybox, every check once.
fn run_initramfs(options: &Options) -> Result<GuestReport> {
    let started = Instant::now();
    let qemu = which("qemu-system-x86_64").context(
        "no qemu-system-x86_64: install it with `cargo xtask setup` (as root) or `sudo apt-get install qemu-system-x86`",
    )?;
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;

    let kernel = kernel::prepare(&cache, options.kernel.as_deref())?;
    let (accel, why) = choose_accel(&qemu, &kernel, &cache.join("kvm-probe"), None);
    let triple = artifacts::host_triple()?;
    let binaries = build_binaries(&triple, &cache)?;
    let probe = artifacts::build_probe()?;
    let rootfs = rootfs::prepare(&probe)?;
    let newest = binaries.steps.last().map(|(name, _)| name.as_str()).unwrap_or_default();
    let runs = harness_runs(&options.args, options.all || accel == Accel::Kvm, newest);
    let initrd = build_initramfs(&cache, &kernel, &binaries, &probe, &rootfs, &runs)?;
    let prepared = started.elapsed().as_secs_f64();

    println!();
    println!("vm: kernel {} ({}), {}: {why}", kernel.release, kernel.package, accel.name());
    if EXCLUDED.is_empty() {
        println!("vm: no checks are excluded in the VM");
    } else {
        println!("vm: checks excluded in the VM (they cannot work there):");
        for (name, why) in EXCLUDED {
            println!("  {name}: {why}");
        }
    }
    if options.args.is_empty() && !options.all && accel == Accel::Tcg {
        println!(
            "vm: under software emulation the VM runs every check once by default: on the newest \
             step ({newest}; step N runs the checks of steps 1 to N), and the cgroup checks of every \
             step; --all runs every check on every step (about three times as long)"
        );
        for (name, why) in DEFAULT_SKIPS {
            println!("vm: left to the host tier by default: {name} ({why})");
        }
    }
    for (i, args) in runs.iter().enumerate() {
        println!("vm: harness run {} of {}: {}", i + 1, runs.len(), shell_words(args));
    }
    let timeout = Duration::from_secs(options.timeout.unwrap_or(DEFAULT_TIMEOUT));
    let log = cache.join("console.log");
    let boot_started = Instant::now();
    let extra = [OsString::from("-initrd"), initrd.into_os_string()];
    let outcome = boot(&qemu, accel, &kernel.vmlinuz, &extra, &kernel_command_line(accel), timeout, &log)?;
    let booted = boot_started.elapsed().as_secs_f64();

    println!();
    println!(
        "vm: prepared in {prepared:.1} s, ran in {booted:.1} s ({}); console log: {}",
        accel.name(),
        display_path(&log)
    );
    for summary in &outcome.summaries {
        println!("vm: {summary}");
    }
    let mut parts = vec![format!("prepared in {prepared:.1} s, booted and ran in {booted:.1} s")];
    for (args, summary) in runs.iter().zip(&outcome.summaries) {
        parts.push(format!("harness {}: {summary}", shell_words(args)));
    }
    outcome.result()?;
    println!("vm: passed");
    Ok(GuestReport { parts })
}

impl BootOutcome {
    /// Ok when the sentinel says 0; else why not, with the end of the console.
    fn result(&self) -> Result<()> {
        let outcome = self;
        match outcome.exit {
            Some(0) => Ok(()),
            Some(status) => bail!("the tests in the VM failed (the guest's sentinel says {status})"),
            None => {
                if outcome.tail.is_empty() {
                    println!("vm: the console stayed empty");
                } else {
                    println!("vm: the last lines of the console:");
                    for line in &outcome.tail {
                        println!("  {line}");
                    }
                }
                let why = if outcome.timed_out {
                    format!("it was still running after {} s and was killed", outcome.timeout.as_secs())
                } else {
                    "qemu ended without it (a crash, or a kernel panic?)".to_string()
                };
                bail!("the VM never printed its result line ({SENTINEL} N): {why}")
            }
        }
    }
}

/// The harness runs in the VM, each a list of arguments (the exclusions first):
/// the caller's filters if any; else everything (`all`); else every check once,
/// on the newest step, plus the cgroup checks of the other steps.
fn harness_runs(args: &[String], all: bool, newest: &str) -> Vec<Vec<String>> {
    let mut skips = Vec::new();
    for (name, _) in EXCLUDED {
        skips.push("--skip".to_string());
        skips.push(name.to_string());
    }
    let with = |extra: &[&str]| -> Vec<String> {
        skips.iter().cloned().chain(extra.iter().map(|s| s.to_string())).collect()
    };
    if !args.is_empty() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        return vec![with(&args)];
    }
    if all || newest.is_empty() {
        return vec![with(&[])];
    }
    let mut first = vec![newest];
    for (name, _) in DEFAULT_SKIPS {
        first.extend(["--skip", name]);
    }
    vec![with(&first), with(&["::cgroup::", "--skip", newest])]
}

/// Checks the default run leaves to the host tier: they test the runtime's own
/// code, not the kernel, and take minutes under software emulation (`--all` runs them).
const DEFAULT_SKIPS: [(&str, &str); 2] = [
    ("faults::soak_", "220 containers, a test of the runtime's bookkeeping"),
    ("inputs::fuzzed_values", "hundreds of bad arguments, refused before any kernel call"),
];

fn shell_words(words: &[String]) -> String {
    if words.is_empty() {
        return "(none: every check)".to_string();
    }
    words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------- binaries

struct Binaries {
    /// ("03-mnt", stripped static binary)
    steps: Vec<(String, PathBuf)>,
    harness: PathBuf,
}

/// The step binaries and the harness test executable, static, for `triple`
/// (into target/<triple>/debug, next to nothing else of the host build).
fn build_binaries(triple: &str, cache: &Path) -> Result<Binaries> {
    let steps = artifacts::steps()?;
    let packages = step_packages()?;
    let mut build = artifacts::cargo_static(triple);
    build.args(["build", "--bins", "--target", triple]);
    for step in &steps {
        let package = packages
            .iter()
            .find(|(dir, _)| dir == &step.name)
            .map(|(_, package)| package)
            .with_context(|| format!("no cargo package in steps/{}", step.name))?;
        build.args(["-p", package]);
    }
    run_cmd(&mut build)?;

    let mut test = artifacts::cargo_static(triple);
    test.args(["test", "-p", "harness", "--test", "steps", "--no-run", "--target", triple])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    eprintln!("$ {}", crate::command_line(&test));
    let json = output(&mut test).context("could not build the integration tests for the VM")?;
    let harness = artifacts::test_executable(&json, "steps")
        .context("cargo built the harness but reported no executable for test target `steps`")?;

    let dir = target_dir().join(triple).join("debug");
    let mut built = Vec::new();
    for step in &steps {
        let bin = dir.join(&step.name);
        built.push((step.name.clone(), require_static(&bin)?));
    }
    let stripped_dir = cache.join("bin");
    fs::create_dir_all(&stripped_dir)?;
    let mut result = Binaries {
        steps: Vec::new(),
        harness: strip(&require_static(&harness)?, &stripped_dir.join("harness"))?,
    };
    for (name, bin) in built {
        let stripped = strip(&bin, &stripped_dir.join(&name))?;
        result.steps.push((name, stripped));
    }
    Ok(result)
}

/// (step directory name, cargo package name) for every package under steps/.
fn step_packages() -> Result<Vec<(String, String)>> {
    let json = output(crate::cargo().args(["metadata", "--no-deps", "--format-version", "1"]))?;
    let metadata: serde_json::Value = serde_json::from_str(&json).context("parse `cargo metadata`")?;
    let steps_dir = workspace_root().join("steps");
    let packages = metadata["packages"].as_array().context("`cargo metadata` lists no packages")?;
    Ok(packages
        .iter()
        .filter_map(|package| {
            let manifest = Path::new(package["manifest_path"].as_str()?);
            let dir = manifest.parent()?;
            if dir.parent()? != steps_dir {
                return None;
            }
            Some((dir.file_name()?.to_string_lossy().into_owned(), package["name"].as_str()?.to_string()))
        })
        .collect())
}

fn require_static(path: &Path) -> Result<PathBuf> {
    if !path.is_file() {
        bail!("the build finished but {} is missing", path.display());
    }
    if !is_static(path)? {
        bail!("{} is dynamically linked; the VM needs it static ($RUSTFLAGS overrides the per-target flags: unset it)", path.display());
    }
    Ok(path.to_path_buf())
}

/// A copy without debug info (a quarter of the size: a smaller initramfs boots
/// faster), redone only when the binary is newer. Without `strip`, the binary itself.
fn strip(bin: &Path, out: &Path) -> Result<PathBuf> {
    let Some(strip) = which("strip") else { return Ok(bin.to_path_buf()) };
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(made), Some(source)) = (modified(out), modified(bin)) {
        if made >= source {
            return Ok(out.to_path_buf());
        }
    }
    let tmp = out.with_extension("tmp");
    run_cmd(Command::new(strip).arg("--strip-debug").arg("-o").arg(&tmp).arg(bin))?;
    fs::rename(&tmp, out)?;
    Ok(out.to_path_buf())
}

// ---------------------------------------------------------------- host tools

/// The programs the VM takes from the host, dynamic ones with their libraries:
/// (path in the VM, file on the host). Busybox has the rest.
fn host_tools() -> Result<Vec<(String, PathBuf)>> {
    // iproute2's ip: the runtimes run `ip -batch -`, which busybox's ip lacks.
    let ip = which("ip").context("no ip on the host: apt-get install iproute2 (cargo xtask setup)")?;
    let mut tools = vec![("/usr/local/sbin/ip".to_string(), ip)];
    // util-linux's unshare: busybox's has no --cgroup (the "no internal processes" check).
    let unshare = which("unshare").context("no unshare on the host (util-linux)")?;
    tools.push(("/usr/local/bin/unshare".to_string(), unshare));
    // A dynamic /usr/bin/true, like a host has: the check that a dynamic program in a
    // rootfs without its libraries fails with 127 copies it into a rootfs of its own.
    if let Some(true_) = ["/usr/bin/true", "/bin/true"].iter().map(PathBuf::from).find(|p| p.is_file()) {
        tools.push(("/usr/bin/true".to_string(), true_));
    }
    let mut libraries: Vec<(String, PathBuf)> = Vec::new();
    for (_, program) in &tools {
        if is_static(program)? {
            continue;
        }
        let mut ldd = Command::new("ldd");
        ldd.arg(program);
        for library in ldd_paths(&output(&mut ldd)?)? {
            let guest = library.to_string_lossy().into_owned();
            if !libraries.iter().any(|(g, _)| *g == guest) {
                libraries.push((guest, library));
            }
        }
    }
    tools.extend(libraries);
    Ok(tools)
}

/// The files `ldd` lists: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
/// the loader "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
pub fn ldd_paths(ldd: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("ldd: {} not found", name.trim());
                }
                rest.split(" (").next().unwrap_or_default().trim()
            }
            None => line.split(" (").next().unwrap_or_default().trim(),
        };
        if file.starts_with('/') {
            paths.push(PathBuf::from(file));
        }
    }
    Ok(paths)
}

// ---------------------------------------------------------------- initramfs

/// What goes into the initramfs.
enum Entry {
    Dir {
        guest: String,
        mode: u32,
    },
    /// A file of the host (symlinks followed).
    File {
        guest: String,
        host: PathBuf,
        mode: u32,
    },
    Data {
        guest: String,
        mode: u32,
        data: String,
    },
    Symlink {
        guest: String,
        target: String,
    },
    /// A directory tree of the host, copied as it is (owners, modes, links, devices).
    Tree {
        guest: String,
        host: PathBuf,
    },
    CharDevice {
        guest: String,
        mode: u32,
        rdev: (u32, u32),
    },
}

/// Builds target/vm/initramfs.cpio unless its stamp says the same inputs made it.
fn build_initramfs(
    cache: &Path,
    kernel: &kernel::Kernel,
    binaries: &Binaries,
    probe: &Path,
    rootfs: &Path,
    runs: &[Vec<String>],
) -> Result<PathBuf> {
    let entries = initramfs_entries(kernel, binaries, probe, rootfs, runs)?;
    let initrd = cache.join("initramfs.cpio");
    let stamp_path = cache.join("initramfs.stamp");
    let stamp = manifest(&entries)?;
    if initrd.is_file() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        println!("vm: initramfs up to date: {}", display_path(&initrd));
        return Ok(initrd);
    }
    write_cpio(&initrd, &entries)?;
    fs::write(&stamp_path, stamp)?;
    let size = fs::metadata(&initrd)?.len();
    println!("vm: initramfs built: {} ({} MiB)", display_path(&initrd), size / (1024 * 1024));
    Ok(initrd)
}

fn initramfs_entries(
    kernel: &kernel::Kernel,
    binaries: &Binaries,
    probe: &Path,
    rootfs: &Path,
    runs: &[Vec<String>],
) -> Result<Vec<Entry>> {
    let dir = |guest: &str, mode: u32| Entry::Dir { guest: guest.to_string(), mode };
    let mut entries = vec![
        dir("dev", 0o755),
        Entry::CharDevice { guest: "dev/console".into(), mode: 0o600, rdev: (5, 1) },
        dir("proc", 0o755),
        dir("sys", 0o755),
        dir("run", 0o755),
        dir("tmp", 0o1777),
        dir("root", 0o700),
        dir("mnt", 0o755),
        dir("newroot", 0o755),
        Entry::Data { guest: "init".into(), mode: 0o755, data: STAGE1.to_string() },
    ];
    for (path, contents) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hostname", "workshop-vm\n"),
    ] {
        entries.push(Entry::Data { guest: path.into(), mode: 0o644, data: contents.into() });
    }

    // Busybox and its applets, except those the host's real programs replace.
    let busybox = crate::setup::require_static_busybox()?;
    entries.push(Entry::File { guest: "bin/busybox".into(), host: busybox.clone(), mode: 0o755 });
    let tools = host_tools()?;
    let replaced: Vec<&str> = tools
        .iter()
        .filter(|(guest, _)| guest.contains("bin/"))
        .filter_map(|(guest, _)| guest.rsplit('/').next())
        .collect();
    let list = output(Command::new(&busybox).arg("--list-full"))?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "bin/busybox") {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        if replaced.contains(&name) || applet.split('/').any(|c| c == "..") {
            continue;
        }
        entries.push(Entry::Symlink { guest: applet.to_string(), target: "/bin/busybox".into() });
    }
    for (guest, host) in tools {
        entries.push(Entry::File { guest, host, mode: 0o755 });
    }

    for module in &kernel.modules {
        let name = module.file_name().context("a module without a name")?.to_string_lossy();
        let guest = format!("lib/modules/{}/{name}", kernel.release);
        entries.push(Entry::File { guest, host: module.clone(), mode: 0o644 });
    }

    for (name, bin) in &binaries.steps {
        entries.push(Entry::File { guest: format!("{GUEST_BIN}/{name}"), host: bin.clone(), mode: 0o755 });
    }
    entries.push(Entry::File { guest: GUEST_PROBE.into(), host: probe.to_path_buf(), mode: 0o755 });
    entries.push(Entry::File { guest: GUEST_HARNESS.into(), host: binaries.harness.clone(), mode: 0o755 });

    let root = workspace_root().to_string_lossy().into_owned();
    for (name, _) in &binaries.steps {
        entries.push(dir(&format!("{root}/steps/{name}"), 0o755));
    }
    entries.push(Entry::Tree { guest: format!("{root}/target/rootfs"), host: rootfs.to_path_buf() });

    let modules: Vec<String> = kernel
        .modules
        .iter()
        .filter_map(|m| Some(format!("/lib/modules/{}/{}", kernel.release, m.file_name()?.to_string_lossy())))
        .collect();
    entries.push(Entry::Data {
        guest: GUEST_STAGE2.into(),
        mode: 0o755,
        data: stage2(&root, &modules, runs),
    });
    Ok(entries)
}

/// One line per entry and per file of each tree, with sizes and times: the
/// initramfs is rebuilt when this changes.
fn manifest(entries: &[Entry]) -> Result<String> {
    let mut text = String::from("workshop initramfs 1\n");
    let describe = |path: &Path| -> Result<String> {
        let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        Ok(format!("{} {} {}.{:09}", path.display(), meta.len(), meta.mtime(), meta.mtime_nsec()))
    };
    for entry in entries {
        let line = match entry {
            Entry::Dir { guest, mode } => format!("dir {guest} {mode:o}"),
            Entry::File { guest, host, mode } => format!("file {guest} {mode:o} {}", describe(host)?),
            Entry::Data { guest, mode, data } => format!("data {guest} {mode:o} {data:?}"),
            Entry::Symlink { guest, target } => format!("link {guest} {target}"),
            Entry::CharDevice { guest, mode, rdev } => format!("chr {guest} {mode:o} {rdev:?}"),
            Entry::Tree { guest, host } => {
                let mut lines = vec![format!("tree {guest} {}", host.display())];
                walk(host, &mut |path, meta| {
                    lines.push(format!(
                        "  {} {:o} {} {}.{:09} {}:{}",
                        path.display(),
                        meta.mode(),
                        meta.len(),
                        meta.mtime(),
                        meta.mtime_nsec(),
                        meta.uid(),
                        meta.gid()
                    ));
                    Ok(())
                })?;
                lines.join("\n")
            }
        };
        text.push_str(&line);
        text.push('\n');
    }
    Ok(text)
}

/// Every path below `dir` (not `dir` itself), parents before children, sorted.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<()>) -> Result<()> {
    let mut children: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .map(|e| Ok(e?.path()))
        .collect::<Result<_>>()?;
    children.sort();
    for path in children {
        let meta = fs::symlink_metadata(&path)?;
        visit(&path, &meta)?;
        if meta.is_dir() {
            walk(&path, visit)?;
        }
    }
    Ok(())
}

/// Writes `entries` as a cpio archive at `path`, whole or not at all (a temporary file, renamed).
fn write_cpio(path: &Path, entries: &[Entry]) -> Result<()> {
    let tmp = path.with_extension("cpio.tmp");
    let file = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let mut writer = cpio::Writer::new(std::io::BufWriter::new(file));
    for entry in entries {
        write_entry(&mut writer, entry)?;
    }
    writer.finish()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn write_entry<W: Write>(writer: &mut cpio::Writer<W>, entry: &Entry) -> Result<()> {
    let root = cpio::Meta::default();
    match entry {
        Entry::Dir { guest, mode } => writer.dir(guest, *mode, root)?,
        Entry::File { guest, host, mode } => {
            let data = fs::read(host).with_context(|| format!("read {}", host.display()))?;
            let mtime = owner(&fs::metadata(host)?).mtime;
            writer.file(guest, *mode, cpio::Meta { mtime, ..root }, &data)?;
        }
        Entry::Data { guest, mode, data } => writer.file(guest, *mode, root, data.as_bytes())?,
        Entry::Symlink { guest, target } => writer.symlink(guest, target, root)?,
        Entry::CharDevice { guest, mode, rdev } => writer.device(guest, false, *mode, *rdev, root)?,
        Entry::Tree { guest, host } => {
            let top = fs::metadata(host).with_context(|| format!("stat {}", host.display()))?;
            writer.dir(guest, top.permissions().mode(), owner(&top))?;
            walk(host, &mut |path, meta| {
                let rel = path.strip_prefix(host)?;
                let inside = format!("{guest}/{}", rel.display());
                let kind = meta.file_type();
                let mode = meta.permissions().mode();
                if kind.is_dir() {
                    writer.dir(&inside, mode, owner(meta))?;
                } else if kind.is_symlink() {
                    writer.symlink(&inside, &fs::read_link(path)?.to_string_lossy(), owner(meta))?;
                } else if kind.is_file() {
                    writer.file(&inside, mode, owner(meta), &fs::read(path)?)?;
                } else if kind.is_char_device() || kind.is_block_device() {
                    let rdev = meta.rdev();
                    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
                    writer.device(&inside, kind.is_block_device(), mode, (major, minor), owner(meta))?;
                } else {
                    println!("vm: left out of the initramfs (a fifo or socket): {}", path.display());
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

fn owner(meta: &fs::Metadata) -> cpio::Meta {
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    cpio::Meta { uid: meta.uid(), gid: meta.gid(), mtime: mtime.map(|d| d.as_secs() as u32).unwrap_or(0) }
}

/// Stage 1, /init of the initramfs. Every container pivot_root()s, and the kernel
/// refuses that while the current root is the initramfs itself (its mount has no
/// parent): copy everything to a tmpfs and make that the root, like a distribution's
/// initramfs hands over to the real root.
const STAGE1: &str = r#"#!/bin/sh
# Stage 1 (cargo xtask vm-test): move onto a tmpfs, where pivot_root works.
mount -t tmpfs -o mode=0755 tmpfs /newroot
for entry in /*; do
    [ "$entry" = /newroot ] || cp -a "$entry" /newroot/
done
exec switch_root /newroot /workshop/init
"#;

/// Stage 2: the machine as the harness expects it, the harness, the sentinel, power off.
fn stage2(root: &str, modules: &[String], runs: &[Vec<String>]) -> String {
    let rootfs = format!("{root}/target/rootfs");
    let mut script = format!(
        r#"#!/bin/sh
# Stage 2 (cargo xtask vm-test): set up the machine, run the tests, power off.
export PATH={GUEST_PATH} HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
# No tmpfs on /tmp: the root is a tmpfs already, and the workspace may live below /tmp.
# Pure cgroup v2: the unified hierarchy alone on /sys/fs/cgroup.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
hostname workshop-vm
ip link set lo up
"#
    );
    for module in modules {
        let module = shell_quote(module);
        script.push_str(&format!("insmod {module} || echo \"WORKSHOP-VM: insmod {module} failed\"\n"));
    }
    script.push_str(&format!(
        r#"echo "WORKSHOP-VM: kernel $(uname -r)"
echo "WORKSHOP-VM: /sys/fs/cgroup is $(awk '$2 == "/sys/fs/cgroup" {{ print $3 }}' /proc/mounts); controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "WORKSHOP-VM: /proc/self/cgroup: $(cat /proc/self/cgroup)"
for controller in memory cpu pids; do
    grep -qw $controller /sys/fs/cgroup/cgroup.controllers || echo "WORKSHOP-VM: warning: no $controller controller"
done
cd {root}
export WORKSHOP_ROOT={root} WORKSHOP_BIN_DIR={GUEST_BIN} WORKSHOP_PROBE={GUEST_PROBE} WORKSHOP_ROOTFS={rootfs}
status=0
"#,
        root = shell_quote(root),
        rootfs = shell_quote(&rootfs),
    ));
    for (i, args) in runs.iter().enumerate() {
        let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        script.push_str(&format!(
            "echo 'WORKSHOP-VM: harness run {} of {}'\n{GUEST_HARNESS} {}\n\
             code=$?; [ $status -ne 0 ] || status=$code\n",
            i + 1,
            runs.len(),
            args.join(" "),
        ));
    }
    script.push_str(&format!(
        "echo \"WORKSHOP-VM: after the tests, /sys/fs/cgroup/cgroup.subtree_control: \
         $(cat /sys/fs/cgroup/cgroup.subtree_control)\"\n\
         echo \"{SENTINEL} $status\"\nsync\npoweroff -f\n"
    ));
    script
}

// ---------------------------------------------------------------- qemu

#[derive(Clone, Copy, Debug, PartialEq)]
enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (software emulation)",
        }
    }

    /// "KVM" or "TCG", for a table.
    fn short_name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg,thread=multi"],
        }
    }
}

/// The machine, the same for the KVM probe and the real run.
fn qemu_command(qemu: &Path, accel: Accel, kernel: &Path, append: &str) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(accel.args())
        .args(["-m", "2048", "-smp", "2", "-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(kernel)
        .args(["-append", append])
        .stdin(Stdio::null());
    cmd
}

/// KVM when /dev/kvm opens and a kernel boots on it (cached for this boot of the
/// host: some machines open /dev/kvm fine and then hang the guest), else TCG.
/// WORKSHOP_VM_ACCEL=kvm|tcg decides instead. The probe's result is kept in
/// `probe_file`; `also_read` is another such file to trust (the bench reads the VM
/// tier's, and keeps its own probe out of target/vm).
fn choose_accel(
    qemu: &Path,
    kernel: &kernel::Kernel,
    probe_file: &Path,
    also_read: Option<&Path>,
) -> (Accel, String) {
    match std::env::var("WORKSHOP_VM_ACCEL").as_deref() {
        Ok("kvm") => return (Accel::Kvm, "WORKSHOP_VM_ACCEL=kvm".into()),
        Ok("tcg") => return (Accel::Tcg, "WORKSHOP_VM_ACCEL=tcg".into()),
        _ => {}
    }
    if let Err(why) = open_kvm() {
        return (Accel::Tcg, why);
    }
    if let Some(usable) = std::iter::once(probe_file).chain(also_read).find_map(cached_kvm_probe) {
        return match usable {
            true => (Accel::Kvm, "KVM booted a kernel earlier since the host booted".into()),
            false => (
                Accel::Tcg,
                "/dev/kvm opens, but a kernel did not boot on it (probed earlier since the host booted)"
                    .into(),
            ),
        };
    }
    println!("vm: probing KVM: does the kernel boot on it within {} s?", KVM_PROBE_TIMEOUT.as_secs());
    let usable = kvm_boots(qemu, &kernel.vmlinuz);
    if let Some(boot_id) = boot_id() {
        let _ = fs::write(probe_file, format!("boot_id {boot_id}\nusable {usable}\n"));
    }
    match usable {
        true => (Accel::Kvm, "KVM boots a kernel".into()),
        false => (Accel::Tcg, "/dev/kvm opens, but a kernel did not boot on it".into()),
    }
}

fn open_kvm() -> std::result::Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("no /dev/kvm".into());
    }
    match fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok(()),
        Err(err) => Err(format!("cannot open /dev/kvm read-write: {err}")),
    }
}

fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
}

/// The KVM probe's result, if it was made since the host booted.
fn cached_kvm_probe(file: &Path) -> Option<bool> {
    let text = fs::read_to_string(file).ok()?;
    let boot = text.lines().find_map(|l| l.strip_prefix("boot_id "))?;
    if Some(boot) != boot_id().as_deref() {
        return None;
    }
    text.lines().find_map(|l| l.strip_prefix("usable ")).map(|v| v == "true")
}

/// Boots the kernel without an initramfs under KVM: it panics for want of a root
/// filesystem (and qemu exits, -no-reboot) in a second or two where KVM works.
fn kvm_boots(qemu: &Path, vmlinuz: &Path) -> bool {
    let mut cmd = qemu_command(qemu, Accel::Kvm, vmlinuz, "console=ttyS0 panic=-1 loglevel=4");
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else { return false };
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let deadline = Instant::now() + KVM_PROBE_TIMEOUT;
    let exited = loop {
        match child.try_wait() {
            Ok(Some(_)) => break true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill(); // SIGKILL to the qemu we started, by its pid
                let _ = child.wait();
                break false;
            }
        }
    };
    let console = reader.join().unwrap_or_default();
    exited && console.contains("Kernel panic")
}

/// The kernel's command line for a run with an initramfs (the tests, the bench).
fn kernel_command_line(accel: Accel) -> String {
    // quiet and loglevel=3: the kernel's errors, not its boot chatter (an OOM kill
    // still says so in one line).
    let mut append = "console=ttyS0 quiet loglevel=3 panic=-1".to_string();
    if accel == Accel::Tcg {
        // No address space randomisation: TCG keeps the code it translated by virtual
        // address, so with the same addresses every exec of a binary reuses it (a
        // container run takes a quarter of the time).
        append.push_str(" norandmaps");
    }
    append
}

/// How the run in the VM ended.
struct BootOutcome {
    /// The harness's exit status, from the sentinel line.
    exit: Option<i32>,
    timed_out: bool,
    timeout: Duration,
    /// The lines that carry a `WORKSHOP-` marker (parts, the book's outputs), from the marker on.
    marked: Vec<String>,
    /// Seconds from qemu's start to the first marked line (the boot, seen from the host).
    first_marked: Option<f64>,
    /// libtest's "test result: ..." lines, one per harness run.
    summaries: Vec<String>,
    /// The last lines of the console.
    tail: VecDeque<String>,
}

/// Boots the VM (`extra`: -initrd, -drive, ... for qemu), streams its console to
/// stdout and `log`, and reads the sentinel. qemu is killed (by its pid) on timeout.
fn boot(
    qemu: &Path,
    accel: Accel,
    vmlinuz: &Path,
    extra: &[OsString],
    append: &str,
    timeout: Duration,
    log: &Path,
) -> Result<BootOutcome> {
    let mut cmd = qemu_command(qemu, accel, vmlinuz, append);
    cmd.args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
    eprintln!("$ {}", crate::command_line(&cmd));
    let mut log_file = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let child = cmd.spawn().with_context(|| format!("could not start {}", qemu.display()))?;
    // Killed (by its pid) if we leave this function early, with an error or a panic.
    let mut child = KillOnDrop(child);
    let child = &mut child.0;

    let (lines, received) = mpsc::channel::<String>();
    let forward = |pipe: Box<dyn Read + Send>, lines: mpsc::Sender<String>| {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).map(|n| n > 0).unwrap_or(false) {
                if lines.send(clean_console_line(&String::from_utf8_lossy(&line))).is_err() {
                    break;
                }
                line.clear();
            }
        })
    };
    forward(Box::new(child.stdout.take().unwrap()), lines.clone());
    forward(Box::new(child.stderr.take().unwrap()), lines);

    let started = Instant::now();
    let deadline = started + timeout;
    let mut outcome = BootOutcome {
        exit: None,
        timed_out: false,
        timeout,
        marked: Vec::new(),
        first_marked: None,
        summaries: Vec::new(),
        tail: VecDeque::new(),
    };
    let stdout = std::io::stdout();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) => {
                let _ = writeln!(stdout.lock(), "{line}");
                // The log has the host's seconds since the start: where the time goes.
                let _ = writeln!(log_file, "[{:7.1}] {line}", started.elapsed().as_secs_f64());
                if let Some(status) = parse_sentinel(&line) {
                    outcome.exit = Some(status);
                }
                if let Some(at) = line.find("WORKSHOP-") {
                    outcome.marked.push(line[at..].to_string());
                    outcome.first_marked.get_or_insert(started.elapsed().as_secs_f64());
                }
                if line.trim_start().starts_with("test result:") {
                    outcome.summaries.push(line.trim().to_string());
                }
                outcome.tail.push_back(line);
                if outcome.tail.len() > 30 {
                    outcome.tail.pop_front();
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break, // qemu closed its output: it ended
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            outcome.timed_out = true;
            println!("vm: still running after {} s: killing qemu (pid {})", timeout.as_secs(), child.id());
            let _ = child.kill(); // SIGKILL, by the pid of the qemu we started
            break;
        }
    }
    let status = child.wait()?;
    if outcome.exit.is_none() && !outcome.timed_out {
        println!("vm: qemu ended ({status})");
    }
    Ok(outcome)
}

/// A qemu we started: killed (SIGKILL, by its pid) and reaped when dropped, unless it ended.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A console line as text: no line ending, no terminal control sequences (the BIOS
/// clears the screen; the harness colours its results).
pub fn clean_console_line(raw: &str) -> String {
    let mut clean = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI (ESC [): parameters up to a final byte in @..~; else a
                // two-byte sequence like ESC c (reset), or a lone ESC at the end.
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => clean.push(c),
            c if c.is_control() => {}
            c => clean.push(c),
        }
    }
    clean
}

/// The harness's exit status from the sentinel line, wherever it is on the line.
pub fn parse_sentinel(line: &str) -> Option<i32> {
    let (_, rest) = line.split_once(SENTINEL)?;
    rest.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------- doctor

/// For `doctor`: can this machine run the VM tier, and the details.
pub fn readiness() -> (bool, String) {
    if which("qemu-system-x86_64").is_none() {
        return (false, "no qemu-system-x86_64: cargo xtask setup (as root)".into());
    }
    let cache = cache_dir();
    let accel = match open_kvm() {
        Err(why) => format!("TCG, software emulation ({why})"),
        Ok(()) => match cached_kvm_probe(&cache.join("kvm-probe")) {
            Some(true) => "KVM (a kernel booted on it since the host booted)".into(),
            Some(false) => "TCG, software emulation (/dev/kvm opens but a kernel hung on it)".into(),
            None => "KVM or TCG: /dev/kvm opens; vm-test probes whether a kernel boots on it".into(),
        },
    };
    let (kernel_ok, kernel) = kernel::describe(&cache);
    (kernel_ok, format!("{accel}; {kernel}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_lines() {
        assert_eq!(parse_sentinel("WORKSHOP-VM-EXIT: 0"), Some(0));
        assert_eq!(parse_sentinel("WORKSHOP-VM-EXIT: 101"), Some(101));
        assert_eq!(parse_sentinel("[   12.5] x WORKSHOP-VM-EXIT: 1 "), Some(1));
        assert_eq!(parse_sentinel("WORKSHOP-VM-EXIT:"), None);
        assert_eq!(parse_sentinel("WORKSHOP-VM-EXIT: $?"), None);
        assert_eq!(parse_sentinel("test result: ok. 3 passed"), None);
    }

    #[test]
    fn console_lines_lose_control_sequences() {
        assert_eq!(
            clean_console_line("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16)\r\n"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(clean_console_line("test a ... \u{1b}[32mok\u{1b}[0m\r\n"), "test a ... ok");
        assert_eq!(clean_console_line("plain\ttab\n"), "plain\ttab");
        assert_eq!(clean_console_line("ends in escape \u{1b}"), "ends in escape ");
    }

    #[test]
    fn ldd_output() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007f02)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f01)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        let paths = ldd_paths(ldd).unwrap();
        assert_eq!(
            paths,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libbpf.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(ldd_paths("\tlibgone.so.1 => not found\n").is_err());
    }

    #[test]
    fn stage2_runs_the_harness_and_prints_the_sentinel() {
        let runs = vec![vec!["08-volumes".to_string()], vec!["--skip".into(), "a b".into()]];
        let script = stage2("/work/main", &["/lib/modules/6.1.0-56-amd64/llc.ko".into()], &runs);
        assert!(script.contains("mount -t cgroup2 cgroup2 /sys/fs/cgroup\n"));
        assert!(script.contains("insmod /lib/modules/6.1.0-56-amd64/llc.ko ||"));
        assert!(script.contains("WORKSHOP_ROOTFS=/work/main/target/rootfs"));
        assert!(script.contains("/workshop/harness 08-volumes\ncode=$?; [ $status -ne 0 ] || status=$code\n"));
        assert!(script.contains("/workshop/harness --skip 'a b'\n"));
        assert!(script.contains("echo \"WORKSHOP-VM-EXIT: $status\"\n"));
        assert!(script.rfind("/workshop/harness").unwrap() < script.find("poweroff -f").unwrap());
    }

    #[test]
    fn which_checks_run() {
        let skips = EXCLUDED.len() * 2;
        // Filters: one run, with them.
        let runs = harness_runs(&["cgroup".into()], false, "08-volumes");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0][skips..], ["cgroup"]);
        // Everything.
        assert_eq!(harness_runs(&[], true, "08-volumes"), [runs[0][..skips].to_vec()]);
        // The default: the newest step, then the other steps' cgroup checks.
        let runs = harness_runs(&[], false, "08-volumes");
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0][skips], "08-volumes");
        assert_eq!(runs[0].len(), skips + 1 + 2 * DEFAULT_SKIPS.len());
        assert_eq!(runs[1][skips..], ["::cgroup::", "--skip", "08-volumes"]);
    }
}
