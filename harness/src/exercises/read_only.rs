//! Exercise 03: `--read-only` mounts the container's root filesystem
//! read-only, with a fresh writable tmpfs on /tmp.

use super::{Exercise, Graded, InRootfs};
use crate::Ctx;
use anyhow::{ensure, Context, Result};

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
    }
}

fn root_is_read_only(ctx: &Ctx) -> Result<()> {
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
    Ok(())
}

fn tmp_is_a_writable_tmpfs(ctx: &Ctx) -> Result<()> {
    let file = "/tmp/workshop-grade-file";
    let on_host = InRootfs::new(ctx, file);
    let seen = ctx.probe(&["--read-only"], &["--write", file, "--read", file])?;
    seen.action(0)?.expect_ok().context("with --read-only, /tmp must stay writable")?;
    let read = seen.action(1)?.expect_ok()?.clone();
    ensure!(read == "probe\n", "/tmp/workshop-grade-file inside reads {read}, not what was written");
    let tmp = seen.mount("/tmp").context("with --read-only, /tmp should be a mount of its own (a tmpfs)")?;
    ensure!(tmp.fstype == "tmpfs", "with --read-only, /tmp should be a tmpfs, not {}", tmp.fstype);
    ensure!(
        !on_host.0.exists(),
        "a file written to /tmp inside landed in the rootfs on the host ({}): /tmp should be a fresh tmpfs",
        on_host.0.display()
    );
    Ok(())
}

fn dev_and_proc_still_work(ctx: &Ctx) -> Result<()> {
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
    ctx.probe(&["--read-only"], &[])?;
    let host = mount_flags(&ctx.workshop.rootfs)?;
    ensure!(
        host & libc::ST_RDONLY == 0,
        "after a --read-only run, the filesystem that holds {} is read-only on the host too: the remount \
         changed the filesystem, not only the container's mount of it (MS_BIND). Fix the host with \
         `mount -o remount,rw $(findmnt -n -o TARGET -T {})`",
        ctx.workshop.rootfs.display(),
        ctx.workshop.rootfs.display()
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
