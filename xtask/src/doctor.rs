//! The `doctor` task: a preflight table of what the workshop needs from this machine.
//! It fails only when something required is missing; everything else is a warning.

use std::ffi::CString;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::mountinfo::{self, Mount};
use crate::{artifacts, display_path, is_root, is_static, print_table, rootfs, setup, sudo_available};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Status {
    Ok,
    Warn,
    Missing,
}

struct Row {
    check: String,
    status: Status,
    detail: String,
}

fn row(check: impl Into<String>, status: Status, detail: impl Into<String>) -> Row {
    Row { check: check.into(), status, detail: detail.into() }
}

/// A row for something that is there or not; only required things are MISSING.
fn presence(check: impl Into<String>, found: bool, required: bool, ok: String, fix: String) -> Row {
    match (found, required) {
        (true, _) => row(check, Status::Ok, ok),
        (false, true) => row(check, Status::Missing, fix),
        (false, false) => row(check, Status::Warn, fix),
    }
}

/// The namespace types, and whether the early steps cannot work without them.
const NAMESPACES: &[(&str, bool)] = &[
    ("uts", true),
    ("ipc", false),
    ("pid", true),
    ("mnt", true),
    ("net", false),
    ("user", false),
    ("cgroup", false),
];

pub fn run() -> Result<()> {
    let mut rows = vec![privilege(), kernel()];
    for (name, required) in NAMESPACES {
        let found = Path::new("/proc/self/ns").join(name).exists();
        let ok = format!("/proc/self/ns/{name}");
        let fix = "this kernel was built without it".to_string();
        rows.push(presence(format!("{name} namespace"), found, *required, ok, fix));
    }
    rows.push(user_namespaces());
    rows.push(cgroups());
    rows.push(overlayfs());
    rows.push(root_propagation());
    for requirement in setup::REQUIREMENTS {
        let found = requirement.find();
        let ok = found.map(|p| p.display().to_string()).unwrap_or_default();
        let command = setup::install_command(&[requirement.package])
            .unwrap_or_else(|| format!("your distribution's package for {}", requirement.package));
        let fix = match requirement.check {
            // Never `apt-get install` it: its package starts a service.
            setup::Check::Unpacked { env, .. } => {
                format!(
                    "cargo xtask setup (unpacks {} under target/tools), or set {env}",
                    requirement.package
                )
            }
            _ => format!("cargo xtask setup (as root, with apt-get), or: {command}"),
        };
        rows.push(presence(requirement.what, !ok.is_empty(), requirement.required, ok, fix));
    }
    rows.push(probe());
    rows.push(rootfs_built());
    rows.push(vm());

    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let status = match r.status {
                Status::Ok => "ok",
                Status::Warn => "warn",
                Status::Missing => "MISSING",
            };
            vec![r.check.clone(), status.to_string(), r.detail.clone()]
        })
        .collect();
    print_table(&["check", "status", "detail or fix"], &table);

    let missing: Vec<&str> =
        rows.iter().filter(|r| r.status == Status::Missing).map(|r| r.check.as_str()).collect();
    if !missing.is_empty() {
        bail!("this machine cannot run the workshop yet; missing: {}", missing.join(", "));
    }
    Ok(())
}

fn privilege() -> Row {
    if is_root() {
        row("root", Status::Ok, "running as root")
    } else if sudo_available() {
        row("root", Status::Ok, "not root, but sudo is there (xtask uses it for what needs root)")
    } else {
        row("root", Status::Missing, "run as root, or install sudo")
    }
}

fn kernel() -> Row {
    match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => row("kernel", Status::Ok, release.trim()),
        Err(err) => row("kernel", Status::Warn, format!("unknown: {err}")),
    }
}

fn read_number(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn user_namespaces() -> Row {
    let check = "user namespaces enabled";
    let Some(max) = read_number("/proc/sys/user/max_user_namespaces") else {
        return row(check, Status::Warn, "no /proc/sys/user/max_user_namespaces");
    };
    if max == 0 {
        return row(
            check,
            Status::Warn,
            "max_user_namespaces is 0: sysctl -w user.max_user_namespaces=15000",
        );
    }
    let mut detail = format!("max_user_namespaces = {max}");
    if read_number("/proc/sys/kernel/unprivileged_userns_clone") == Some(0) {
        detail.push_str("; only root may create them (kernel.unprivileged_userns_clone = 0)");
    }
    if read_number("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1) {
        detail.push_str("; AppArmor restricts unprivileged ones");
    }
    row(check, Status::Ok, detail)
}

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const TMPFS_MAGIC: u64 = 0x0102_1994;

#[derive(Debug, PartialEq)]
enum CgroupMode {
    V2,
    Hybrid,
    V1,
}

/// What /sys/fs/cgroup is, from its filesystem type and the mount table.
fn cgroup_mode(fs_magic: u64, mounts: &[Mount]) -> CgroupMode {
    let unified_v2 =
        mounts.iter().any(|m| m.mount_point == "/sys/fs/cgroup/unified" && m.fs_type == "cgroup2");
    if fs_magic == CGROUP2_SUPER_MAGIC {
        CgroupMode::V2
    } else if fs_magic == TMPFS_MAGIC && unified_v2 {
        CgroupMode::Hybrid
    } else {
        CgroupMode::V1
    }
}

/// Which of the controllers the workshop uses are mounted as cgroup v1 hierarchies.
fn v1_controllers(mounts: &[Mount]) -> Vec<&'static str> {
    ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|controller| {
            mounts
                .iter()
                .any(|m| m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == *controller))
        })
        .collect()
}

fn cgroups() -> Row {
    let check = "cgroup mode";
    let (magic, mounts) = match (fs_magic("/sys/fs/cgroup"), mountinfo::read()) {
        (Ok(magic), Ok(mounts)) => (magic, mounts),
        (Err(err), _) | (_, Err(err)) => return row(check, Status::Warn, format!("{err:#}")),
    };
    let mode = cgroup_mode(magic, &mounts);
    let mut detail = match mode {
        CgroupMode::V2 => {
            let controllers =
                std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
            format!("v2 (unified); controllers: {}", controllers.trim())
        }
        CgroupMode::Hybrid | CgroupMode::V1 => {
            let name = match mode {
                CgroupMode::Hybrid => "hybrid (v1 controllers; v2 mount without controllers)",
                _ => "v1",
            };
            let found = v1_controllers(&mounts);
            if found.is_empty() {
                format!("{name}; no memory, cpu or pids controller mounted")
            } else {
                format!("{name}; v1 controllers mounted: {}", found.join(", "))
            }
        }
    };
    detail.push_str(&format!("; {}", chapter_06(&mode)));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if is_wsl(&release) {
        detail.push_str(
            "; WSL2: the layout depends on the distribution and on `systemd=true` in /etc/wsl.conf \
             (with systemd, usually v2); `wsl --shutdown` after a change",
        );
    }
    let status = match mode {
        CgroupMode::V2 => Status::Ok,
        _ => Status::Warn,
    };
    row(check, status, detail)
}

/// What the layout means for chapter 06 (cgroups), in a few words.
fn chapter_06(mode: &CgroupMode) -> &'static str {
    match mode {
        CgroupMode::V2 => {
            "chapter 06 writes memory.max, cpu.max and pids.max in /sys/fs/cgroup/workshop/ID: \
             read the book's \"pure cgroup v2\" outputs"
        }
        CgroupMode::Hybrid => {
            "chapter 06 uses the v1 trees (memory.limit_in_bytes, cpu.cfs_quota_us, pids.max); \
             the v2 mount has no controllers, so it is ignored: read the book's v1 outputs"
        }
        CgroupMode::V1 => {
            "chapter 06 uses the v1 trees (memory.limit_in_bytes, cpu.cfs_quota_us, pids.max): \
             read the book's v1 outputs"
        }
    }
}

/// Windows' WSL2 kernels say so in their release ("5.15.153.1-microsoft-standard-WSL2").
fn is_wsl(release: &str) -> bool {
    let release = release.to_ascii_lowercase();
    release.contains("microsoft") || release.contains("wsl")
}

/// The filesystem type ("magic") of the filesystem a path is on, from statfs(2).
fn fs_magic(path: &str) -> Result<u64> {
    let c_path = CString::new(path)?;
    // SAFETY: statfs only writes into the zeroed buffer we hand it.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("statfs({path})"));
    }
    Ok(buf.f_type as u64)
}

fn overlayfs() -> Row {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let found = filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay"));
    let fix = "not loaded: modprobe overlay".to_string();
    presence("overlayfs", found, false, "in /proc/filesystems".to_string(), fix)
}

fn root_propagation() -> Row {
    let check = "propagation of /";
    let mounts = match mountinfo::read() {
        Ok(mounts) => mounts,
        Err(err) => return row(check, Status::Warn, format!("{err:#}")),
    };
    // The last mount on / is the one on top, the one we see.
    match mounts.iter().rev().find(|m| m.mount_point == "/") {
        Some(root) => {
            let kind = mountinfo::propagation(root);
            let detail = if kind == "shared" {
                "shared (normal under systemd; the steps make their mount tree private first)".to_string()
            } else {
                kind.to_string()
            };
            row(check, Status::Ok, detail)
        }
        None => row(check, Status::Warn, "no / in /proc/self/mountinfo"),
    }
}

fn probe() -> Row {
    let check = "static probe built";
    let triple = match artifacts::host_triple() {
        Ok(triple) => triple,
        Err(err) => return row(check, Status::Warn, format!("{err:#}")),
    };
    let path = artifacts::probe_path(&triple);
    if !path.is_file() {
        return row(check, Status::Warn, "not yet: cargo xtask build");
    }
    match is_static(&path) {
        Ok(true) => row(check, Status::Ok, display_path(&path)),
        Ok(false) => {
            row(check, Status::Warn, format!("{} is dynamic: cargo xtask build", display_path(&path)))
        }
        Err(err) => row(check, Status::Warn, format!("{err:#}")),
    }
}

/// The VM tier (`cargo xtask vm-test`): qemu, KVM or software emulation, the kernel package.
fn vm() -> Row {
    let (ready, detail) = crate::vm::readiness();
    row("vm", if ready { Status::Ok } else { Status::Warn }, detail)
}

fn rootfs_built() -> Row {
    let check = "rootfs built";
    match std::env::var_os("WORKSHOP_ROOTFS").filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = Path::new(&path);
            let found = path.join("bin").exists();
            let ok = format!("WORKSHOP_ROOTFS={}", path.display());
            let fix = format!("WORKSHOP_ROOTFS={} has no bin/", path.display());
            presence(check, found, false, ok, fix)
        }
        None => {
            let path = rootfs::default_path();
            let ok = display_path(&path);
            let fix = "not yet: cargo xtask rootfs".to_string();
            presence(check, rootfs::is_built(&path), false, ok, fix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(text: &str) -> Vec<Mount> {
        mountinfo::parse(text)
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";

    const V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";

    const V2: &str = "31 23 0:28 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn cgroup_modes() {
        assert_eq!(cgroup_mode(CGROUP2_SUPER_MAGIC, &mounts(V2)), CgroupMode::V2);
        assert_eq!(cgroup_mode(TMPFS_MAGIC, &mounts(HYBRID)), CgroupMode::Hybrid);
        assert_eq!(cgroup_mode(TMPFS_MAGIC, &mounts(V1)), CgroupMode::V1);
        // Some other filesystem: not v2, not hybrid.
        assert_eq!(cgroup_mode(0xEF53, &mounts(V1)), CgroupMode::V1);
    }

    #[test]
    fn v1_controller_list() {
        assert_eq!(v1_controllers(&mounts(HYBRID)), vec!["memory", "cpu", "pids"]);
        assert_eq!(v1_controllers(&mounts(V1)), vec!["memory", "cpu"]);
        assert!(v1_controllers(&mounts(V2)).is_empty());
    }

    #[test]
    fn wsl_kernels() {
        assert!(is_wsl("5.15.153.1-microsoft-standard-WSL2"));
        assert!(!is_wsl("6.1.0-27-amd64"));
    }

    #[test]
    fn every_layout_says_what_chapter_06_shows() {
        for mode in [CgroupMode::V2, CgroupMode::Hybrid, CgroupMode::V1] {
            assert!(chapter_06(&mode).contains("chapter 06"));
        }
    }

    #[test]
    fn presence_rows() {
        let ok = || "ok".to_string();
        assert_eq!(presence("x", true, true, ok(), ok()).status, Status::Ok);
        assert_eq!(presence("x", false, true, ok(), ok()).status, Status::Missing);
        assert_eq!(presence("x", false, false, ok(), ok()).status, Status::Warn);
    }
}
