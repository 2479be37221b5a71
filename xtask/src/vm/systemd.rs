//! The VM tier's second guest: a real Debian 12 system, systemd as PID 1 on the
//! unified cgroup hierarchy, the way a learner's machine runs the workshop.
//!
//! 1. The system: `mmdebstrap --variant=minbase` of bookworm plus systemd and a few
//!    tools (`PACKAGES`; no busybox) into target/vm/systemd/base, customised
//!    (`customise`: slow or useless units masked, the console, a fixed machine id,
//!    the test service) and kept until its inputs change (base.stamp). Its .debs are
//!    kept too (target/vm/systemd/debs, with a Packages index of our own): a rebuild
//!    installs from them, offline, and only falls back to deb.debian.org when that fails.
//! 2. The workshop's files for one run (`disk_entries`): the binaries, the host's
//!    rootfs, an apt repository with busybox-static (the guest's only source), the
//!    scripts. A scratch copy of the base (hard links, so nothing is copied) gets
//!    them, and `mke2fs -t ext4 -d` turns it into target/vm/systemd/disk.img:
//!    no loop device, no mount. qemu opens it with snapshot=on, so a run never
//!    changes the cached image.
//! 3. A tiny initramfs (busybox and the modules: virtio, ext4, overlay, veth,
//!    bridge) mounts /dev/vda and switch_roots to /sbin/init.
//! 4. systemd starts workshop-vm.service, which runs /workshop/run on the console:
//!    each part prints `WORKSHOP-VM-PART: NAME STATUS SECONDS`, the end prints
//!    `WORKSHOP-VM-EXIT: N`, then the service powers the machine off.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{kernel, Binaries, Entry};
use crate::{display_path, is_root, output, run as run_cmd, shell_quote, which, workspace_root};

/// The Debian release of the guest: the host's (its glibc runs the host's binaries).
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// On top of minbase. No busybox: the demo must install it itself.
const PACKAGES: &[&str] =
    &["systemd", "systemd-sysv", "iproute2", "bash", "coreutils", "procps", "util-linux", "mount"];
/// What the demo installs from the guest's apt repository.
const APT_PACKAGES: &[&str] = &["busybox-static"];
/// Left out of the guest (smaller, faster to build and to boot).
const EXCLUDE: &[&str] =
    &["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*"];
/// Units that are slow or useless in a test VM under emulation, masked.
const MASKED: &[&str] = &[
    "getty.target",
    "serial-getty@ttyS0.service",
    "console-getty.service",
    "systemd-logind.service",
    "systemd-firstboot.service",
    "systemd-pstore.service",
    "e2scrub_reap.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "proc-sys-fs-binfmt_misc.automount",
];
/// The modules the initramfs loads: the disk and its filesystem, then the workshop's.
pub const MODULES: &[&str] =
    &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "overlay", "veth", "bridge"];
/// Bump when `customise` or the layout of the base changes.
const BASE_FORMAT: u32 = 1;
/// The guest's apt repository (its only source) and the test script.
const GUEST_APT: &str = "/srv/workshop-apt";
pub const GUEST_RUN: &str = "/workshop/run";
pub const GUEST_BOOK: &str = "/workshop/book.sh";
/// The host's rootfs, for the harness (the demo builds target/rootfs itself).
const GUEST_ROOTFS: &str = "/workshop/rootfs";
const GUEST_XTASK: &str = "/workshop/xtask";
/// The size of the disk (a sparse file; the guest writes containers' layers into it).
const DISK_SIZE: &str = "3G";

/// The line each part of the guest's script ends with: `WORKSHOP-VM-PART: NAME STATUS SECONDS`.
pub const PART: &str = "WORKSHOP-VM-PART:";

const UNIT: &str = "[Unit]
Description=The workshop's tests (cargo xtask vm-test --guest systemd)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/workshop/run
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity
Environment=HOME=/root LC_ALL=C

[Install]
WantedBy=multi-user.target
";

/// Everything the systemd guest boots from.
pub struct Guest {
    pub kernel: kernel::Kernel,
    pub initrd: PathBuf,
    pub disk: PathBuf,
    /// Seconds spent building what was not cached: (what, seconds).
    pub built: Vec<(String, f64)>,
}

/// What the guest's script runs.
pub struct Plan {
    /// Harness runs: (part name, arguments).
    pub harness: Vec<(String, Vec<String>)>,
    /// Run the demo's setup path (xtask demo --prebuilt).
    pub demo: bool,
    /// The book's cgroup-v2 blocks, as a script (None: there are none).
    pub book: Option<String>,
}

pub fn cache_dir() -> PathBuf {
    super::cache_dir().join("systemd")
}

/// Builds (or finds cached) the kernel, the base system, the disk and the initramfs.
pub fn prepare(
    kernel_choice: Option<&str>,
    binaries: &Binaries,
    probe: &Path,
    rootfs: &Path,
    plan: &Plan,
) -> Result<Guest> {
    if !is_root() {
        bail!(
            "the systemd guest's disk holds a Debian system whose files belong to root: build it as root \
             (sudo cargo xtask vm-test --guest systemd)"
        );
    }
    crate::setup::install(
        &["mmdebstrap"],
        "the VM tier's systemd guest is a Debian system made by mmdebstrap",
    )?;
    let mke2fs = which("mke2fs").context("no mke2fs: apt-get install e2fsprogs")?;
    let cache = cache_dir();
    fs::create_dir_all(&cache)?;
    // One build at a time (two engineers' vm-test, the book tier and the vm tier):
    // held until the disk is made; a running qemu keeps its own (renamed-over) image.
    let _lock = lock(&cache.join("lock"))?;
    let mut built = Vec::new();
    let kernel = kernel::prepare_with(&super::cache_dir(), kernel_choice, MODULES, "systemd")?;

    let started = Instant::now();
    let (base, fresh) = base(&cache)?;
    if fresh {
        built.push(("base system (mmdebstrap)".to_string(), started.elapsed().as_secs_f64()));
    }
    let apt = apt_repository(&cache)?;

    let started = Instant::now();
    let entries = disk_entries(binaries, probe, rootfs, &apt, plan)?;
    let disk = cache.join("disk.img");
    let stamp_path = cache.join("disk.stamp");
    let stamp =
        format!("{}\n{}", fs::read_to_string(base.with_extension("stamp"))?, super::manifest(&entries)?);
    if disk.is_file() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        println!("vm: systemd guest's disk up to date: {}", display_path(&disk));
    } else {
        let _ = fs::remove_file(&stamp_path);
        make_disk(&mke2fs, &base, &cache, &entries, &disk)?;
        fs::write(&stamp_path, stamp)?;
        built.push(("disk image (mke2fs -d)".to_string(), started.elapsed().as_secs_f64()));
    }

    let initrd = initramfs(&cache, &kernel)?;
    Ok(Guest { kernel, initrd, disk, built })
}

// ---------------------------------------------------------------- running it

/// The harness runs of the systemd guest: the caller's filters if any, else every
/// check of step 06 and of the newest step (their `+userns` variants and the soak
/// and fuzz checks are left to the initramfs guest and the host tier).
pub fn harness_plan(args: &[String], newest: &str) -> Vec<(String, Vec<String>)> {
    if !args.is_empty() {
        return vec![("harness".to_string(), args.to_vec())];
    }
    let mut runs = Vec::new();
    for step in ["06-cgroups", newest] {
        if step.is_empty()
            || runs.iter().any(|(name, _): &(String, Vec<String>)| name == &format!("harness-{step}"))
        {
            continue;
        }
        let mut args = vec![format!("{step}::")];
        for (name, _) in super::EXCLUDED.iter().chain(&super::DEFAULT_SKIPS) {
            args.extend(["--skip".to_string(), name.to_string()]);
        }
        runs.push((format!("harness-{step}"), args));
    }
    runs
}

/// A boot of the systemd guest: how it ended, its parts, the times.
pub struct Booted {
    pub outcome: super::BootOutcome,
    /// (name, status, seconds) of each part, in order.
    pub parts: Vec<(String, i32, f64)>,
    pub prepared: f64,
    pub booted: f64,
    pub built: Vec<(String, f64)>,
    pub accel: super::Accel,
    pub log: PathBuf,
}

/// Builds what the guest needs for `plan`, boots it, reads its console.
pub fn boot(
    log_name: &str,
    kernel_choice: Option<&str>,
    timeout: Option<u64>,
    plan_for: &dyn Fn(&str) -> Plan,
) -> Result<Booted> {
    let started = Instant::now();
    let qemu = which("qemu-system-x86_64").context(
        "no qemu-system-x86_64: install it with `cargo xtask setup` (as root) or `sudo apt-get install qemu-system-x86`",
    )?;
    let cache = super::cache_dir();
    fs::create_dir_all(&cache)?;
    let triple = crate::artifacts::host_triple()?;
    let binaries = super::build_binaries(&triple, &cache)?;
    let probe = crate::artifacts::build_probe()?;
    let rootfs = crate::rootfs::prepare(&probe)?;
    let newest = binaries.steps.last().map(|(name, _)| name.clone()).unwrap_or_default();
    let plan = plan_for(&newest);
    let guest = prepare(kernel_choice, &binaries, &probe, &rootfs, &plan)?;
    let (accel, why) = super::choose_accel(&qemu, &guest.kernel, &cache.join("kvm-probe"), None);
    let prepared = started.elapsed().as_secs_f64();

    println!();
    println!(
        "vm: systemd guest: kernel {} ({}), {}: {why}",
        guest.kernel.release,
        guest.kernel.package,
        accel.name()
    );
    if plan.demo {
        println!(
            "vm: part demo: xtask demo --prebuilt (installs busybox-static from the guest's apt repository)"
        );
    }
    for (name, args) in &plan.harness {
        println!("vm: part {name}: harness {}", super::shell_words(args));
    }
    if plan.book.is_some() {
        println!("vm: part book: the book's ```console,cgroup-v2 blocks");
    }
    let disk = guest.disk.to_string_lossy();
    if disk.contains(',') {
        bail!("qemu cannot open a disk whose path has a comma: {disk}");
    }
    let extra: Vec<OsString> = vec![
        "-initrd".into(),
        guest.initrd.clone().into_os_string(),
        // snapshot=on: the guest's writes go to a temporary file qemu deletes; the image stays as built.
        "-drive".into(),
        format!("file={disk},format=raw,if=virtio,snapshot=on,cache=unsafe").into(),
    ];
    let append = format!(
        "{} systemd.unified_cgroup_hierarchy=1 systemd.show_status=error",
        super::kernel_command_line(accel)
    );
    let timeout = std::time::Duration::from_secs(timeout.unwrap_or(super::DEFAULT_TIMEOUT));
    let log = cache_dir().join(log_name);
    let boot_started = Instant::now();
    let outcome = super::boot(&qemu, accel, &guest.kernel.vmlinuz, &extra, &append, timeout, &log)?;
    let booted = boot_started.elapsed().as_secs_f64();
    let parts = outcome.marked.iter().filter_map(|line| parse_part(line)).collect();
    Ok(Booted { outcome, parts, prepared, booted, built: guest.built, accel, log })
}

/// The systemd guest in the VM tier: the demo's setup path, the harness, its own check.
pub fn run(options: &super::Options) -> Result<super::GuestReport> {
    let plan_for = |newest: &str| Plan {
        harness: harness_plan(&options.args, newest),
        demo: options.args.is_empty(),
        book: None,
    };
    if options.all {
        println!("vm: --all is for the initramfs guest; the systemd guest runs what it always runs");
    }
    println!(
        "vm: the book's ```console,cgroup-v2 blocks run in this guest from the book tier \
         (cargo xtask book, cargo xtask test --tier book), not here"
    );
    let booted = boot("console.log", options.kernel.as_deref(), options.timeout, &plan_for)?;
    let mut report = Vec::new();
    for (what, seconds) in &booted.built {
        report.push(format!("built the {what} in {seconds:.1} s"));
    }
    report.push(format!(
        "prepared in {:.1} s, booted and ran in {:.1} s ({}); console log: {}",
        booted.prepared,
        booted.booted,
        booted.accel.short_name(),
        display_path(&booted.log)
    ));
    if let Some(seconds) = booted.outcome.first_marked {
        report.push(format!("boot: the test service started {seconds:.1} s after qemu did"));
    }
    let summaries = &booted.outcome.summaries;
    let mut harness_results = summaries.iter();
    for (name, status, seconds) in &booted.parts {
        let result = if *status == 0 { "passed".to_string() } else { format!("FAILED (status {status})") };
        let detail =
            if name.starts_with("harness") { harness_results.next().map(|s| format!(": {s}")) } else { None };
        report.push(format!("{name}: {result} in {seconds:.1} s{}", detail.unwrap_or_default()));
    }
    println!();
    for line in &report {
        println!("vm: {line}");
    }
    booted.outcome.result().map_err(|err| {
        let failed: Vec<String> = booted
            .parts
            .iter()
            .filter(|(_, status, _)| *status != 0)
            .map(|(name, status, _)| format!("{name} (status {status})"))
            .collect();
        match failed.is_empty() {
            true => err,
            false => err.context(format!("parts that failed: {}", failed.join(", "))),
        }
    })?;
    Ok(super::GuestReport { parts: report })
}

/// An exclusive flock(2) on `path`, released when the file is dropped.
fn lock(path: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    // SAFETY: flock(2) on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        println!("vm: waiting for another build of the systemd guest ({})", display_path(path));
        // SAFETY: as above, blocking this time.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("lock {}", path.display()));
        }
    }
    Ok(file)
}

// ---------------------------------------------------------------- the base system

/// The stamp of the base: what went into it.
fn base_stamp() -> String {
    format!(
        "systemd guest base {BASE_FORMAT}\nsuite {SUITE}\npackages {}\nexclude {}\nmasked {}\nunit {UNIT:?}\n",
        PACKAGES.join(" "),
        EXCLUDE.join(" "),
        MASKED.join(" ")
    )
}

/// target/vm/systemd/base, built unless its stamp matches; (path, built now).
fn base(cache: &Path) -> Result<(PathBuf, bool)> {
    let dir = cache.join("base");
    let stamp_path = dir.with_extension("stamp");
    let stamp = base_stamp();
    if dir.is_dir() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        println!("vm: systemd guest's base system up to date: {}", display_path(&dir));
        return Ok((dir, false));
    }
    let _ = fs::remove_file(&stamp_path);
    let partial = cache.join("base.partial");
    remove_tree(&partial)?;
    remove_tree(&dir)?;
    let debs = cache.join("debs");
    let started = Instant::now();
    let mut result = Err(anyhow::anyhow!("not tried"));
    if debs.join("Packages").is_file() {
        println!(
            "vm: building the systemd guest's base system from the cached packages in {}",
            display_path(&debs)
        );
        // Every package of the cache by name: the archive's priorities (which decide
        // what minbase installs) are not in the packages' own control files.
        if !debs.join("Release").is_file() {
            index_debs(&debs)?; // a cache from before the Release file
        }
        let names = deb_names(&debs)?;
        let mirror = format!("deb [trusted=yes] file://{} ./", debs.display());
        result = mmdebstrap(&partial, &mirror, None, &names);
        if let Err(err) = &result {
            println!("vm: from the cached packages: {err:#}; trying {MIRROR}");
            remove_tree(&partial)?;
        }
    }
    if result.is_err() {
        println!("vm: building the systemd guest's base system from {MIRROR} (mmdebstrap, about a minute)");
        let saved = cache.join("debs.partial");
        remove_tree(&saved)?;
        fs::create_dir_all(&saved)?;
        let built = mmdebstrap(&partial, MIRROR, Some(&saved), &[])
            .context("could not build the systemd guest's base system")
            .and_then(|()| index_debs(&saved));
        if let Err(err) = built {
            // Nothing half-made stays behind.
            remove_tree(&partial)?;
            remove_tree(&saved)?;
            return Err(err);
        }
        remove_tree(&debs)?;
        fs::rename(&saved, &debs)?;
    }
    if let Err(err) = customise(&partial) {
        remove_tree(&partial)?;
        return Err(err);
    }
    fs::rename(&partial, &dir)?;
    fs::write(&stamp_path, stamp)?;
    println!(
        "vm: base system built in {:.1} s: {} ({} MiB)",
        started.elapsed().as_secs_f64(),
        display_path(&dir),
        tree_size(&dir)? / (1024 * 1024)
    );
    Ok((dir, true))
}

/// mmdebstrap into `dir` from `mirror`; `save` receives the .debs it installed.
/// In a mount namespace of its own: whatever it mounts is gone when it ends.
fn mmdebstrap(dir: &Path, mirror: &str, save: Option<&Path>, more: &[String]) -> Result<()> {
    let mut cmd = Command::new("unshare");
    let mut include: Vec<&str> = PACKAGES.to_vec();
    include.extend(more.iter().map(String::as_str).filter(|name| !PACKAGES.contains(name)));
    cmd.args(["--mount", "--propagation", "private", "mmdebstrap", "--variant=minbase", "--mode=root"])
        .arg(format!("--include={}", include.join(",")));
    for pattern in EXCLUDE {
        cmd.arg(format!("--dpkgopt=path-exclude={pattern}"));
    }
    if mirror.starts_with("deb ") {
        cmd.arg("--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount");
    }
    if let Some(save) = save {
        // Keep every .deb in the chroot's archive until the end, then copy them out.
        cmd.arg("--skip=essential/unlink")
            .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", save.display()));
    }
    cmd.arg(SUITE).arg(dir).arg(mirror);
    run_cmd(&mut cmd)
}

/// The package names of the .debs in `dir` (`NAME_VERSION_ARCH.deb`), sorted.
fn deb_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.strip_suffix(".deb").and_then(|f| f.split('_').next()).map(str::to_string)
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The Packages index of a flat apt repository (`deb [trusted=yes] file:DIR ./`).
fn index_debs(dir: &Path) -> Result<()> {
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| Ok(e?.path()))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    if debs.is_empty() {
        bail!("no .deb files in {}", dir.display());
    }
    let mut index = String::new();
    for deb in &debs {
        let control = output(Command::new("dpkg-deb").arg("-f").arg(deb))?;
        let sum = output(Command::new("sha256sum").arg(deb))?;
        let sha256 = sum.split_whitespace().next().context("sha256sum printed nothing")?;
        let name = deb.file_name().unwrap().to_string_lossy();
        index.push_str(&packages_stanza(&control, &name, fs::metadata(deb)?.len(), sha256));
    }
    fs::write(dir.join("Packages"), &index)?;
    // A Release file that names the suite: mmdebstrap picks the essential packages
    // of the suite it is asked for (`?archive(^bookworm$)`), which a flat repository
    // without one does not have. Unsigned: the sources say [trusted=yes].
    let sum = output(Command::new("sha256sum").arg(dir.join("Packages")))?;
    let sha256 = sum.split_whitespace().next().context("sha256sum printed nothing")?;
    let date = output(Command::new("date").args(["-u", "-R"]))?;
    fs::write(dir.join("Release"), release_file(SUITE, date.trim(), sha256, index.len()))?;
    Ok(())
}

/// The Release file of a flat repository holding one Packages index.
pub fn release_file(suite: &str, date: &str, packages_sha256: &str, packages_size: usize) -> String {
    format!(
        "Origin: workshop\nLabel: workshop\nSuite: {suite}\nCodename: {suite}\nArchitectures: amd64 all\n\
         Date: {date}\nSHA256:\n {packages_sha256} {packages_size} Packages\n"
    )
}

/// One package's entry in a Packages file: its control fields, then where it is.
pub fn packages_stanza(control: &str, file_name: &str, size: u64, sha256: &str) -> String {
    let mut stanza: String =
        control.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{l}\n")).collect();
    stanza.push_str(&format!("Filename: ./{file_name}\nSize: {size}\nSHA256: {sha256}\n\n"));
    stanza
}

/// The guest's own settings, written into the fresh base.
fn customise(root: &Path) -> Result<()> {
    let write = |path: &str, text: &str| -> Result<()> {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap())?;
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    };
    write("etc/apt/sources.list", &format!("deb [trusted=yes] file:{GUEST_APT} ./\n"))?;
    for entry in fs::read_dir(root.join("etc/apt/sources.list.d")).into_iter().flatten().flatten() {
        fs::remove_file(entry.path())?;
    }
    write("etc/hostname", "workshop-vm\n")?;
    // A machine id of its own: an empty one makes systemd treat every boot as the first.
    write("etc/machine-id", "3f2a9c1b7d4e4c0e9a6b5d8f1e2c3b4a\n")?;
    write("etc/fstab", "# The initramfs mounts the root (/dev/vda, ext4) read-write.\n")?;
    let units = root.join("etc/systemd/system");
    fs::create_dir_all(&units)?;
    for unit in MASKED {
        let link = units.join(unit);
        let _ = fs::remove_file(&link);
        symlink("/dev/null", &link)?;
    }
    write("etc/systemd/system/workshop-vm.service", UNIT)?;
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    symlink("../workshop-vm.service", wants.join("workshop-vm.service"))?;
    let default = units.join("default.target");
    let _ = fs::remove_file(&default);
    symlink("/lib/systemd/system/multi-user.target", &default)?;
    Ok(())
}

fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn tree_size(dir: &Path) -> Result<u64> {
    let mut size = 0;
    super::walk(dir, &mut |_, meta| {
        size += meta.len();
        Ok(())
    })?;
    Ok(size)
}

// ---------------------------------------------------------------- the apt repository

/// target/vm/systemd/apt: the .debs the demo installs, downloaded once, indexed.
fn apt_repository(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("apt");
    let have = |package: &str| {
        fs::read_dir(&dir).into_iter().flatten().flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".deb") && name.split('_').next() == Some(package)
        })
    };
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !have(p)).collect();
    if missing.is_empty() && dir.join("Packages").is_file() {
        return Ok(dir);
    }
    fs::create_dir_all(&dir)?;
    if !missing.is_empty() {
        // As root, apt would drop to the _apt user, who cannot write into target/.
        let mut download = Command::new("apt-get");
        download.args(["-o", "APT::Sandbox::User=root", "download"]).args(&missing).current_dir(&dir);
        if run_cmd(&mut download).is_err() {
            println!("vm: the download failed; updating apt's lists and trying once more");
            run_cmd(Command::new("apt-get").arg("update"))?;
            run_cmd(&mut download).with_context(|| format!("could not download {}", missing.join(" ")))?;
        }
    }
    index_debs(&dir)?;
    Ok(dir)
}

// ---------------------------------------------------------------- the disk

/// The workshop's files on the guest's disk (new paths only: the base is hard-linked).
fn disk_entries(
    binaries: &Binaries,
    probe: &Path,
    rootfs: &Path,
    apt: &Path,
    plan: &Plan,
) -> Result<Vec<Entry>> {
    let root = workspace_root().to_string_lossy().into_owned();
    let mut entries = Vec::new();
    let file = |guest: String, host: &Path| Entry::File { guest, host: host.to_path_buf(), mode: 0o755 };
    for (name, bin) in &binaries.steps {
        entries.push(file(format!("{}/{name}", super::GUEST_BIN), bin));
        // The book's commands run target/debug/NN-name.
        entries.push(file(format!("{root}/target/debug/{name}"), bin));
        entries.push(Entry::Dir { guest: format!("{root}/steps/{name}"), mode: 0o755 });
    }
    entries.push(file(format!("{}/probe", super::GUEST_BIN), probe));
    entries.push(file(super::GUEST_HARNESS.into(), &binaries.harness));
    // This very program (its file may have been rebuilt since it started).
    entries.push(file(GUEST_XTASK.into(), Path::new("/proc/self/exe")));
    entries.push(Entry::Tree { guest: GUEST_ROOTFS.into(), host: rootfs.to_path_buf() });
    entries.push(Entry::Tree { guest: GUEST_APT.into(), host: apt.to_path_buf() });
    // The example image's layers, for the book's commands (written by `book`'s check).
    for layer in ["base.tar", "app.tar"] {
        let host = crate::target_dir().join("image").join(layer);
        if host.is_file() && plan.book.is_some() {
            entries.push(Entry::File { guest: format!("/workshop/image/{layer}"), host, mode: 0o644 });
        }
    }
    entries.push(Entry::Data { guest: GUEST_RUN.into(), mode: 0o755, data: run_script(&root, plan) });
    if let Some(book) = &plan.book {
        entries.push(Entry::Data { guest: GUEST_BOOK.into(), mode: 0o755, data: book.clone() });
    }
    Ok(entries)
}

/// A scratch copy of the base (hard links), the entries added, `mke2fs -d`, the copy removed.
fn make_disk(mke2fs: &Path, base: &Path, cache: &Path, entries: &[Entry], disk: &Path) -> Result<()> {
    let stage = cache.join("stage");
    remove_tree(&stage)?;
    run_cmd(Command::new("cp").arg("-al").arg(base).arg(&stage))?;
    let result = (|| -> Result<()> {
        for entry in entries {
            add_entry(&stage, entry)?;
        }
        let tmp = disk.with_extension("img.tmp");
        let _ = fs::remove_file(&tmp);
        run_cmd(
            Command::new(mke2fs)
                .args(["-q", "-F", "-t", "ext4", "-L", "workshop-vm", "-E", "root_owner=0:0", "-d"])
                .arg(&stage)
                .arg(&tmp)
                .arg(DISK_SIZE),
        )?;
        fs::rename(&tmp, disk)?;
        Ok(())
    })();
    remove_tree(&stage)?;
    result?;
    let used = fs::metadata(disk)?.blocks() * 512;
    println!(
        "vm: systemd guest's disk built: {} ({} MiB used of {DISK_SIZE})",
        display_path(disk),
        used >> 20
    );
    Ok(())
}

/// Writes one entry below `stage`; never over a file of the base (it is hard-linked).
fn add_entry(stage: &Path, entry: &Entry) -> Result<()> {
    let at = |guest: &str| stage.join(guest.trim_start_matches('/'));
    let parent = |path: &Path| fs::create_dir_all(path.parent().unwrap());
    let fresh = |path: &Path| -> Result<()> {
        if path.symlink_metadata().is_ok() {
            bail!("{} is in the base system already (it is hard-linked: not overwritten)", path.display());
        }
        Ok(())
    };
    use std::os::unix::fs::PermissionsExt;
    match entry {
        Entry::Dir { guest, mode } => {
            let path = at(guest);
            fs::create_dir_all(&path)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
        }
        Entry::File { guest, host, mode } => {
            let path = at(guest);
            parent(&path)?;
            fresh(&path)?;
            fs::copy(host, &path).with_context(|| format!("copy {} into the disk", host.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
        }
        Entry::Data { guest, mode, data } => {
            let path = at(guest);
            parent(&path)?;
            fresh(&path)?;
            fs::write(&path, data)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
        }
        Entry::Symlink { guest, target } => {
            let path = at(guest);
            parent(&path)?;
            fresh(&path)?;
            symlink(target, &path)?;
        }
        Entry::Tree { guest, host } => {
            let path = at(guest);
            parent(&path)?;
            fresh(&path)?;
            run_cmd(Command::new("cp").arg("-a").arg(host).arg(&path))?;
        }
        Entry::CharDevice { guest, .. } => bail!("no devices on the disk ({guest})"),
    }
    Ok(())
}

// ---------------------------------------------------------------- the initramfs

/// target/vm/systemd/initramfs.cpio: busybox, the modules, an /init that mounts the disk.
fn initramfs(cache: &Path, kernel: &kernel::Kernel) -> Result<PathBuf> {
    let busybox = crate::setup::require_static_busybox()?;
    let dir = |guest: &str| Entry::Dir { guest: guest.to_string(), mode: 0o755 };
    let mut entries = vec![
        dir("dev"),
        Entry::CharDevice { guest: "dev/console".into(), mode: 0o600, rdev: (5, 1) },
        dir("proc"),
        dir("sys"),
        dir("newroot"),
        Entry::File { guest: "bin/busybox".into(), host: busybox, mode: 0o755 },
        Entry::Symlink { guest: "bin/sh".into(), target: "busybox".into() },
    ];
    let mut modules = Vec::new();
    for module in &kernel.modules {
        let name = module.file_name().context("a module without a name")?.to_string_lossy();
        let guest = format!("lib/modules/{}/{name}", kernel.release);
        modules.push(format!("/{guest}"));
        entries.push(Entry::File { guest, host: module.clone(), mode: 0o644 });
    }
    entries.push(Entry::Data { guest: "init".into(), mode: 0o755, data: init_script(&modules) });
    let initrd = cache.join("initramfs.cpio");
    let stamp_path = cache.join("initramfs.stamp");
    let stamp = super::manifest(&entries)?;
    if initrd.is_file() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(initrd);
    }
    super::write_cpio(&initrd, &entries)?;
    fs::write(&stamp_path, stamp)?;
    Ok(initrd)
}

/// The initramfs's /init: load the modules, mount the disk, hand over to systemd.
pub fn init_script(modules: &[String]) -> String {
    let mut script = String::from(
        "#!/bin/sh\n# The systemd guest's initramfs (cargo xtask vm-test --guest systemd).\n\
         export PATH=/bin\n\
         busybox mount -t proc proc /proc\n\
         busybox mount -t sysfs sysfs /sys\n\
         busybox mount -t devtmpfs devtmpfs /dev\n",
    );
    for module in modules {
        let module = shell_quote(module);
        script
            .push_str(&format!("busybox insmod {module} || echo \"WORKSHOP-VM: insmod {module} failed\"\n"));
    }
    script.push_str(
        "i=0\nwhile [ ! -b /dev/vda ] && [ $i -lt 200 ]; do busybox sleep 0.05; i=$((i + 1)); done\n\
         if ! busybox mount -t ext4 -o rw /dev/vda /newroot; then\n\
         \x20   echo 'WORKSHOP-VM: could not mount the disk (/dev/vda) on /newroot'\n\
         \x20   busybox poweroff -f\n\
         fi\n\
         busybox umount /proc /sys /dev\n\
         exec busybox switch_root /newroot /sbin/init\n",
    );
    script
}

// ---------------------------------------------------------------- the guest's script

/// /workshop/run: the parts of the plan, each timed, then the sentinel and power-off.
pub fn run_script(root: &str, plan: &Plan) -> String {
    let q = |s: &str| shell_quote(s);
    let bin = super::GUEST_BIN;
    let mut script = format!(
        r#"#!/bin/bash
# The systemd guest's tests (cargo xtask vm-test --guest systemd), run by workshop-vm.service.
export PATH={path} HOME=/root LC_ALL=C
cd {root} || exit 1
echo "WORKSHOP-VM: kernel $(uname -r); PID 1 is $(cat /proc/1/comm) ($(systemctl --version | head -n 1))"
echo "WORKSHOP-VM: /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup); controllers: $(cat /sys/fs/cgroup/cgroup.controllers); enabled below the root: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
echo "WORKSHOP-VM: this service's group: $(cat /proc/self/cgroup)"
echo "WORKSHOP-VM: the tests start $(cut -d ' ' -f 1 /proc/uptime) s after the kernel did"
failed=$(systemctl --failed --no-legend --plain | awk '{{print $1}}' | tr '\n' ' ')
[ -z "$failed" ] || echo "WORKSHOP-VM: failed units: $failed"
status=0
# part NAME COMMAND...: runs it, prints "{PART} NAME STATUS SECONDS".
part() {{
    local name=$1; shift
    echo "WORKSHOP-VM: part $name: $*"
    local start=$(date +%s%N)
    "$@"
    local code=$?
    local end=$(date +%s%N)
    echo "{PART} $name $code $(( (end - start) / 1000000 ))ms"
    [ $status -ne 0 ] || status=$code
}}
"#,
        path = super::GUEST_PATH,
        root = q(root),
    );
    if plan.demo {
        script.push_str(&format!(
            r#"demo() {{
    if dpkg -s busybox-static > /dev/null 2>&1 || command -v busybox > /dev/null; then
        echo "WORKSHOP-VM: busybox is installed before the demo: this proves nothing"
        return 1
    fi
    echo "WORKSHOP-VM: no busybox before the demo; apt's sources: $(grep -v '^#' /etc/apt/sources.list)"
    {xtask} demo --prebuilt {bin} || return $?
    if ! dpkg -s busybox-static > /dev/null 2>&1; then
        echo "WORKSHOP-VM: the demo passed, but busybox-static is not installed"
        return 1
    fi
    echo "WORKSHOP-VM: the demo installed busybox-static $(dpkg-query -W -f '${{Version}}' busybox-static)"
}}
part demo demo
"#,
            xtask = GUEST_XTASK,
        ));
    }
    let env = format!(
        "env WORKSHOP_ROOT={root} WORKSHOP_BIN_DIR={bin} WORKSHOP_PROBE={bin}/probe WORKSHOP_ROOTFS={GUEST_ROOTFS}",
        root = q(root)
    );
    for (name, args) in &plan.harness {
        let args: Vec<String> = args.iter().map(|a| q(a)).collect();
        script.push_str(&format!("part {} {env} {} {}\n", q(name), super::GUEST_HARNESS, args.join(" ")));
    }
    if plan.book.is_some() {
        // The book's commands use the default rootfs, target/rootfs: the demo's, else the host's.
        script.push_str(&format!(
            "[ -d target/rootfs ] || cp -a {GUEST_ROOTFS} target/rootfs\n\
             part book unshare --net --uts --mount --propagation slave bash {GUEST_BOOK}\n"
        ));
    }
    script.push_str(&format!(
        "echo \"WORKSHOP-VM: after the tests, /sys/fs/cgroup/cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)\"\n\
         echo \"{} $status\"\n\
         systemctl --no-block start poweroff.target --job-mode=replace-irreversibly\n",
        super::SENTINEL
    ));
    script
}

/// A `WORKSHOP-VM-PART: NAME STATUS DURATIONms` line: (name, status, seconds).
pub fn parse_part(line: &str) -> Option<(String, i32, f64)> {
    let (_, rest) = line.split_once(PART)?;
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_string();
    let status = words.next()?.parse().ok()?;
    let ms: f64 = words.next()?.strip_suffix("ms")?.parse().ok()?;
    Some((name, status, ms / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_runs_step_06_and_the_newest_step() {
        let runs = harness_plan(&[], "08-volumes");
        let names: Vec<&str> = runs.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["harness-06-cgroups", "harness-08-volumes"]);
        assert_eq!(runs[0].1[0], "06-cgroups::");
        assert_eq!(runs[1].1[0], "08-volumes::");
        assert!(runs[1].1.windows(2).any(|w| w == ["--skip", "faults::soak_"]));
        assert!(runs[1].1.windows(2).any(|w| w == ["--skip", "::registry::"]));
        // Step 06 is the newest: one run.
        assert_eq!(harness_plan(&[], "06-cgroups").len(), 1);
        // Filters: just those.
        assert_eq!(
            harness_plan(&["cgroup".into()], "08-volumes"),
            [("harness".to_string(), vec!["cgroup".to_string()])]
        );
    }

    #[test]
    fn part_lines() {
        assert_eq!(parse_part("WORKSHOP-VM-PART: demo 0 81234ms"), Some(("demo".into(), 0, 81.234)));
        assert_eq!(
            parse_part("[  3.1] WORKSHOP-VM-PART: harness-06 101 5ms"),
            Some(("harness-06".into(), 101, 0.005))
        );
        assert_eq!(parse_part("WORKSHOP-VM-PART: demo"), None);
        assert_eq!(parse_part("WORKSHOP-VM-PART: $name $code $(( x ))ms"), None);
    }

    #[test]
    fn a_release_file_names_the_suite_and_the_index() {
        let release = release_file("bookworm", "Tue, 01 Dec 2026 20:00:00 +0000", "ab12", 42);
        assert!(release.contains("\nSuite: bookworm\nCodename: bookworm\n"));
        assert!(release.ends_with("SHA256:\n ab12 42 Packages\n"));
    }

    #[test]
    fn a_stanza_for_a_flat_repository() {
        let control = "Package: busybox-static\nVersion: 1:1.35.0-4+b3\nDescription: x\n multi-line\n\n";
        let stanza = packages_stanza(control, "busybox-static_1.deb", 42, "ab12");
        assert_eq!(
            stanza,
            "Package: busybox-static\nVersion: 1:1.35.0-4+b3\nDescription: x\n multi-line\n\
             Filename: ./busybox-static_1.deb\nSize: 42\nSHA256: ab12\n\n"
        );
    }

    #[test]
    fn the_script_runs_every_part_and_ends_with_the_sentinel() {
        let plan = Plan {
            harness: vec![("harness-06".into(), vec!["06-cgroups::".into()])],
            demo: true,
            book: Some("echo book\n".into()),
        };
        let script = run_script("/work/main", &plan);
        assert!(script.contains("part demo demo\n"));
        assert!(script.contains("/workshop/xtask demo --prebuilt /workshop/bin"));
        assert!(script.contains(
            "part harness-06 env WORKSHOP_ROOT=/work/main WORKSHOP_BIN_DIR=/workshop/bin \
             WORKSHOP_PROBE=/workshop/bin/probe WORKSHOP_ROOTFS=/workshop/rootfs /workshop/harness 06-cgroups::\n"
        ));
        assert!(script
            .contains("part book unshare --net --uts --mount --propagation slave bash /workshop/book.sh\n"));
        let sentinel = script.find("echo \"WORKSHOP-VM-EXIT: $status\"").unwrap();
        assert!(script.rfind("part ").unwrap() < sentinel);
        assert!(
            script.ends_with("systemctl --no-block start poweroff.target --job-mode=replace-irreversibly\n")
        );
        // The shell can read it.
        let out = Command::new("bash").args(["-n", "-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn init_loads_modules_then_switches_to_systemd() {
        let script = init_script(&["/lib/modules/r/virtio_blk.ko".into(), "/lib/modules/r/ext4.ko".into()]);
        let blk = script.find("insmod /lib/modules/r/virtio_blk.ko").unwrap();
        assert!(blk < script.find("insmod /lib/modules/r/ext4.ko").unwrap());
        assert!(script.find("mount -t ext4 -o rw /dev/vda /newroot").unwrap() > blk);
        assert!(script.ends_with("exec busybox switch_root /newroot /sbin/init\n"));
    }
}
