//! The `setup` task: make sure the host has the programs the workshop needs,
//! installing the missing Debian/Ubuntu packages with apt-get when we are root.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};

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
}

/// Everything the workshop needs from the host. Add one line per new need, e.g.
/// `Requirement { what: "qemu", check: Check::Command("qemu-system-x86_64"), package: "qemu-system-x86", required: false },`
#[rustfmt::skip]
pub const REQUIREMENTS: &[Requirement] = &[
    Requirement { what: "static busybox", check: Check::StaticBusybox, package: "busybox-static", required: true },
    Requirement { what: "iproute2 (ip)", check: Check::Command("ip"), package: "iproute2", required: false },
    // The book tier (xtask/src/book.rs) opens the rendered book in headless Chromium with playwright-core.
    Requirement { what: "chromium (book tier)", check: Check::Command("chromium"), package: "chromium", required: false },
    Requirement { what: "node (book tier)", check: Check::Command("node"), package: "nodejs", required: false },
    Requirement { what: "npm (book tier)", check: Check::Command("npm"), package: "npm", required: false },
    // The VM tier (xtask/src/vm.rs): qemu boots a Debian kernel package that dpkg-deb unpacks.
    Requirement { what: "qemu (VM tier)", check: Check::Command("qemu-system-x86_64"), package: "qemu-system-x86", required: false },
    // The benchmark (xtask/src/bench.rs) measures runc next to the steps.
    Requirement { what: "runc (benchmark)", check: Check::Command("runc"), package: "runc", required: false },
];

impl Requirement {
    /// Where the requirement was found, or None.
    pub fn find(&self) -> Option<PathBuf> {
        match self.check {
            Check::Command(program) => which(program),
            Check::File(path) => Some(PathBuf::from(path)).filter(|p| p.exists()),
            Check::StaticBusybox => find_static_busybox(),
        }
    }
}

/// The `setup` task.
pub fn run() -> Result<()> {
    let missing: Vec<&Requirement> = REQUIREMENTS.iter().filter(|r| r.find().is_none()).collect();
    if missing.is_empty() {
        println!("setup: everything the workshop needs is installed");
        return Ok(());
    }
    apt_install(&missing, false)
}

/// For a task that needs a few of the requirements (the benchmark): install the
/// missing ones among these packages the way `setup` does, through sudo when we are
/// not root. Fails, saying what is missing and how to install it, when it cannot.
pub fn install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&Requirement> =
        REQUIREMENTS.iter().filter(|r| packages.contains(&r.package) && r.find().is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing, true)
}

/// `apt-get update`, then `apt-get install` of the packages of `missing`; as root, or
/// through sudo if `sudo` says so.
fn apt_install(missing: &[&Requirement], sudo: bool) -> Result<()> {
    let packages: Vec<&str> = missing.iter().map(|r| r.package).collect();
    let what: Vec<&str> = missing.iter().map(|r| r.what).collect();
    println!("setup: missing {}", what.join(", "));

    let install = format!("apt-get install -y --no-install-recommends {}", packages.join(" "));
    if which("apt-get").is_none() {
        bail!(
            "missing {}; this is not a Debian/Ubuntu host (no apt-get): install the equivalent of the packages {}",
            what.join(", "),
            packages.join(" ")
        );
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
    bail!("the rootfs needs a static busybox: {found}; install busybox-static with `cargo xtask setup` (as root) or `sudo apt-get install busybox-static`")
}
