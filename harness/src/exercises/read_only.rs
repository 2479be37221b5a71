//! Exercise 03: `--read-only` mounts the container's root filesystem
//! read-only, with a fresh writable tmpfs on /tmp.
//!
//! Every `--read-only` run here has a copy of the workshop rootfs on a tmpfs
//! of its own as its root, mounted nosuid and nodev: a remount that forgets
//! MS_BIND then turns that tmpfs read-only, not the host's disk, and a
//! remount that drops the mount's flags shows.

use super::{Exercise, Graded, InRootfs};
use crate::{Ctx, Workshop};
use anyhow::{bail, ensure, Context, Result};
use std::path::PathBuf;

pub fn exercise() -> Exercise {
    Exercise {
        number: 3,
        name: "03-mnt",
        title: "a read-only root filesystem (--read-only)",
        checks: vec![
            Graded::new(3, "read_only::root_is_read_only", 4, root_is_read_only),
            Graded::new(3, "read_only::tmp_is_a_writable_tmpfs_of_its_own", 3, tmp_is_a_writable_tmpfs),
            Graded::new(3, "read_only::dev_and_proc_still_work", 2, dev_and_proc_still_work),
            Graded::new(
                3,
                "read_only::the_hosts_filesystem_stays_writable",
                1,
                hosts_filesystem_stays_writable,
            ),
        ],
        needs_the_holes: &[],
    }
}

/// A copy of the workshop rootfs on a tmpfs of its own, mounted nosuid and
/// nodev (as a rootfs on a removable disk may be); unmounted when dropped.
struct OwnRootfs(PathBuf);

impl OwnRootfs {
    /// The copy, and a context whose runs use it.
    fn new(ctx: &Ctx) -> Result<(OwnRootfs, Ctx)> {
        let dir = std::env::temp_dir().join(format!("workshop-grade-rootfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "nosuid,nodev,mode=755,size=64m", "workshop-grade-rootfs"])
            .arg(&dir)
            .status()?;
        if !mounted.success() {
            let _ = std::fs::remove_dir(&dir);
            bail!("could not mount a tmpfs on {} for a copy of the rootfs", dir.display());
        }
        let own = OwnRootfs(dir);
        let mut source = ctx.workshop.rootfs.clone().into_os_string();
        source.push("/.");
        let copied = std::process::Command::new("cp").arg("-a").arg(source).arg(&own.0).status()?;
        ensure!(copied.success(), "could not copy the rootfs to {}", own.0.display());
        let workshop = Workshop { rootfs: own.0.clone(), ..ctx.workshop.clone() };
        let ctx = Ctx { workshop, ..ctx.clone() };
        Ok((own, ctx))
    }
}

impl Drop for OwnRootfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn root_is_read_only(ctx: &Ctx) -> Result<()> {
    let (_own, ctx) = OwnRootfs::new(ctx)?;
    let ctx = &ctx;
    let (file, dir) = ("/etc/workshop-grade-file", "/etc/workshop-grade-dir");
    let _cleanup = (InRootfs::new(ctx, file), InRootfs::new(ctx, dir));
    let seen = ctx.probe(&["--read-only"], &["--write", file, "--mkdir", dir])?;
    for action in 0..2 {
        seen.action(action)?
            .expect_errno(libc::EROFS)
            .context("with --read-only, changing the root filesystem must fail with EROFS")?;
    }
    let root = seen.mount("/")?;
    ensure!(
        root.options.split(',').any(|o| o == "ro"),
        "with --read-only, / should be mounted read-only (ro); its options are {}",
        root.options
    );
    for flag in ["nosuid", "nodev"] {
        ensure!(
            root.options.split(',').any(|o| o == flag),
            "with --read-only, / lost {flag}: the rootfs was on a mount with nosuid,nodev, and / inside is \
             mounted {}. A remount replaces the mount's flags: keep the ones it has (statvfs)",
            root.options
        );
    }
    Ok(())
}

fn tmp_is_a_writable_tmpfs(ctx: &Ctx) -> Result<()> {
    let (_own, ctx) = OwnRootfs::new(ctx)?;
    let ctx = &ctx;
    let file = "/tmp/workshop-grade-file";
    let on_host = InRootfs::new(ctx, file);
    let seen = ctx.probe(&["--read-only"], &["--write", file, "--read", file])?;
    seen.action(0)?.expect_ok().context("with --read-only, /tmp must stay writable")?;
    let read = seen.action(1)?.expect_ok()?.clone();
    ensure!(read == "probe\n", "/tmp/workshop-grade-file inside reads {read}, not what was written");
    let tmp = seen.mount("/tmp").context("with --read-only, /tmp should be a mount of its own (a tmpfs)")?;
    ensure!(tmp.fstype == "tmpfs", "with --read-only, /tmp should be a tmpfs, not {}", tmp.fstype);
    for flag in ["nosuid", "nodev"] {
        ensure!(
            tmp.options.split(',').any(|o| o == flag),
            "with --read-only, /tmp should be mounted nosuid and nodev (no set-uid programs, no devices \
             in a directory everyone writes to); it is mounted {}",
            tmp.options
        );
    }
    ensure!(
        !on_host.0.exists(),
        "a file written to /tmp inside landed in the rootfs on the host ({}): /tmp should be a fresh tmpfs",
        on_host.0.display()
    );
    Ok(())
}

fn dev_and_proc_still_work(ctx: &Ctx) -> Result<()> {
    let (_own, ctx) = OwnRootfs::new(ctx)?;
    let ctx = &ctx;
    let seen =
        ctx.probe(&["--read-only"], &["--write", "/dev/null", "--write", "/dev/shm/workshop-grade"])?;
    seen.action(0)?.expect_ok().context("with --read-only, /dev/null must stay writable")?;
    seen.action(1)?.expect_ok().context("with --read-only, /dev/shm must stay writable")?;
    let proc = seen.mount("/proc")?;
    ensure!(proc.fstype == "proc", "with --read-only, /proc is {}, not proc", proc.fstype);
    let pids = seen.ints("proc_pids")?;
    ensure!(pids == [1], "with --read-only, /proc should still list only PID 1; it lists {pids:?}");
    Ok(())
}

fn hosts_filesystem_stays_writable(ctx: &Ctx) -> Result<()> {
    let (_own, ctx) = OwnRootfs::new(ctx)?;
    let ctx = &ctx;
    ctx.probe(&["--read-only"], &[])?;
    let host = mount_flags(&ctx.workshop.rootfs)?;
    ensure!(
        host & libc::ST_RDONLY == 0,
        "after a --read-only run, the filesystem that holds {} is read-only on the host too: the remount \
         changed the filesystem, not only the container's mount of it (MS_BIND). (This check gave the run \
         a rootfs on a tmpfs of its own, so your disk is unharmed.)",
        ctx.workshop.rootfs.display(),
    );
    Ok(())
}

/// The mount flags (ST_*) of the filesystem that holds `path`.
fn mount_flags(path: &std::path::Path) -> Result<libc::c_ulong> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid C string and a zeroed statvfs for the kernel to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error()).context("statvfs the rootfs");
    }
    Ok(stat.f_flag)
}
