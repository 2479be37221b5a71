//! The mount namespace and a root filesystem of the container's own.
//!
//! The child gets a copy of the host's mount table (CLONE_NEWNS). It cuts
//! the copy loose from the host, mounts /proc, /sys and /dev inside the new
//! root, swaps the root with pivot_root(2) and throws the old one away, so
//! the host's files are out of reach.

use crate::volume;
use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};
use std::path::{Path, PathBuf};

/// Where `cargo xtask rootfs` puts the workshop rootfs.
pub const DEFAULT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/rootfs");

/// The devices a program expects; bind-mounted from the host's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Host side: the rootfs must be a directory; returns its absolute path.
pub fn check(rootfs: &Path) -> Result<PathBuf> {
    let hint = "build the workshop rootfs with `cargo xtask rootfs`, or pass --rootfs DIR";
    match rootfs.canonicalize() {
        Ok(path) if path.is_dir() => Ok(path),
        Ok(_) => bail!("rootfs {}: not a directory ({hint})", rootfs.display()),
        Err(err) => bail!("rootfs {}: {err} ({hint})", rootfs.display()),
    }
}

// ANCHOR: enter
/// Child side: make `rootfs` the root of this mount namespace.
pub fn enter(rootfs: &Path, volumes: &[volume::Mount]) -> Result<()> {
    // Our copy of the mount table still shares events with the host's
    // (systemd makes / shared): without this, our /proc would appear there.
    let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    mount(None::<&str>, "/", None::<&str>, private, None::<&str>).context("make the mount tree private")?;
    // pivot_root needs the new root to be a mount point: bind it onto itself.
    bind(rootfs, rootfs)?;

    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // A fresh procfs shows only this PID namespace: `ps` stops lying.
    let proc = target(rootfs, "proc")?;
    mount_fs("proc", &proc, nosuid_nodev_noexec, None)?;
    protect_proc(&proc)?;
    let read_only = nosuid_nodev_noexec | MsFlags::MS_RDONLY;
    mount_fs("sysfs", &target(rootfs, "sys")?, read_only, None)?;
    mount_dev(rootfs)?;
    // Volumes go in now: the tree is private, and the host's paths still reachable.
    volume::mount_all(rootfs, volumes)?;

    crate::process::fault("mounts")?;

    // Swap the roots: "." becomes /, the old root is stacked on top of it
    // and detached at once, so nothing of the host stays reachable.
    chdir(rootfs).context("chdir into the rootfs")?;
    pivot_root(".", ".").context("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).context("detach the old root")?;
    chdir("/").context("chdir /")
}
// ANCHOR_END: enter

/// The host's environment means nothing in the new root: start from Docker's defaults.
pub fn clean_env(hostname: &str) {
    let term = std::env::var_os("TERM");
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    std::env::set_var("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    std::env::set_var("HOSTNAME", hostname);
    std::env::set_var("HOME", "/root");
    if let Some(term) = term {
        std::env::set_var("TERM", term);
    }
}

// ANCHOR: protect_proc
/// The parts of /proc that are the whole machine's, not the container's:
/// kernel settings, the SysRq key (one letter reboots the host), IRQs, buses.
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// Makes those read-only, as Docker does: root in here still owns the host's kernel.
fn protect_proc(proc: &Path) -> Result<()> {
    for name in PROC_READ_ONLY {
        let path = proc.join(name);
        if path.symlink_metadata().is_err() {
            continue; // /proc/bus is missing on machines without PCI, for one
        }
        // A bind mount onto itself, then a read-only remount of just that bind.
        bind(&path, &path)?;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        let flags = flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(None::<&str>, &path, None::<&str>, flags, None::<&str>)
            .with_context(|| format!("make {} read-only", path.display()))?;
    }
    Ok(())
}
// ANCHOR_END: protect_proc

// ANCHOR: dev
/// A minimal /dev on a tmpfs: a few devices, pseudo-terminals, shared memory.
fn mount_dev(rootfs: &Path) -> Result<()> {
    let dev = target(rootfs, "dev")?;
    mount_fs("tmpfs", &dev, MsFlags::MS_NOSUID, Some("mode=755,size=64k"))?;
    for name in DEVICES {
        // Binding the host's device needs no mknod, so it also works in a user namespace.
        let node = dev.join(name);
        std::fs::File::create(&node).with_context(|| format!("create {}", node.display()))?;
        bind(&Path::new("/dev").join(name), &node)?;
    }
    for dir in ["pts", "shm"] {
        std::fs::create_dir(dev.join(dir)).with_context(|| format!("mkdir /dev/{dir}"))?;
    }
    // A private devpts instance: the container's terminals are not the host's.
    let pts_options = Some("newinstance,ptmxmode=0666,mode=0620");
    mount_fs("devpts", &dev.join("pts"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, pts_options)?;
    mount_fs("tmpfs", &dev.join("shm"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (link, to) in links {
        std::os::unix::fs::symlink(to, dev.join(link)).with_context(|| format!("symlink /dev/{link}"))?;
    }
    Ok(())
}
// ANCHOR_END: dev

/// A mount point directly below the new root. It must not be a symlink:
/// a rootfs with `proc -> /` would otherwise mount over something else.
fn target(rootfs: &Path, name: &str) -> Result<PathBuf> {
    let path = rootfs.join(name);
    match path.symlink_metadata() {
        Ok(meta) if meta.is_dir() => Ok(path),
        Ok(_) => bail!("rootfs: /{name} must be a directory, not a file or symlink"),
        Err(_) => {
            std::fs::create_dir(&path).with_context(|| format!("mkdir /{name} in the rootfs"))?;
            Ok(path)
        }
    }
}

/// Mounts a fresh instance of a pseudo filesystem (proc, sysfs, tmpfs, devpts).
fn mount_fs(fstype: &str, target: &Path, flags: MsFlags, data: Option<&str>) -> Result<()> {
    mount(Some(fstype), target, Some(fstype), flags, data)
        .with_context(|| format!("mount {fstype} on {}", target.display()))
}

/// Makes `source` visible at `target` too (a bind mount, with what is mounted below it).
fn bind(source: &Path, target: &Path) -> Result<()> {
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("bind-mount {} on {}", source.display(), target.display()))
}
