//! Step 03: the mount namespace, pivot_root and a root filesystem of its own.

use super::hardening::{MASKED_DIRS, MASKED_FILES};
use super::TempPath;
use crate::{Check, Ctx, Probe, Run};
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(3, "mnt::proc_shows_only_the_container", proc_shows_only_the_container).escape(),
        Check::new(3, "mnt::root_is_the_rootfs", root_is_the_rootfs),
        Check::new(3, "mnt::default_rootfs_is_the_workshops", default_rootfs_is_the_workshops).plain_only(),
        Check::new(3, "mnt::host_files_are_out_of_reach", host_files_are_out_of_reach).escape(),
        Check::new(3, "mnt::the_chroot_escape_fails", the_chroot_escape_fails).escape(),
        Check::new(3, "mnt::pseudo_filesystems_are_mounted", pseudo_filesystems_are_mounted),
        Check::new(3, "mnt::host_wide_proc_files_are_read_only", host_wide_proc_files_are_read_only).escape(),
        Check::new(3, "mnt::nothing_of_the_old_root_is_mounted", nothing_of_the_old_root_is_mounted).escape(),
        Check::new(3, "mnt::mounts_inside_never_reach_the_host", mounts_inside_never_reach_the_host).escape(),
        Check::new(3, "mnt::private_even_when_the_host_is_shared", private_even_when_the_host_is_shared)
            .escape(),
        Check::new(3, "mnt::environment_is_clean", environment_is_clean),
        Check::new(3, "errors::bad_rootfs_is_125_in_one_line", bad_rootfs_is_125_in_one_line).plain_only(),
        Check::new(3, "errors::symlinked_mount_point_is_refused", symlinked_mount_point_is_refused)
            .plain_only(),
        Check::new(3, "errors::dynamic_program_without_libraries_is_127", dynamic_program_without_libraries)
            .plain_only(),
    ]
}

fn proc_shows_only_the_container(ctx: &Ctx) -> Result<()> {
    let pids = ctx.probe(&[], &[])?.ints("proc_pids")?;
    ensure!(pids == [1], "/proc inside should list only PID 1 (the probe), it lists {pids:?}");
    Ok(())
}

fn root_is_the_rootfs(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&[], &["--read", "/etc/workshop-release"])?;
    ensure!(
        seen.action(0)?.expect_ok()? == "workshop rootfs\n",
        "/etc/workshop-release is not the workshop rootfs's"
    );
    let mut expected: Vec<String> = std::fs::read_dir(&ctx.workshop.rootfs)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    expected.sort();
    let seen = seen.strs("root_entries")?;
    ensure!(seen == expected, "/ inside lists {seen:?}; the rootfs has {expected:?}");
    Ok(())
}

fn default_rootfs_is_the_workshops(ctx: &Ctx) -> Result<()> {
    // No --rootfs and no WORKSHOP_ROOTFS: the binary falls back to target/rootfs.
    let run = ctx.bare().args(["--", "/bin/probe", "--read", "/etc/workshop-release"]);
    let outcome = run.env_remove("WORKSHOP_ROOTFS").output()?;
    outcome.expect_status(0)?;
    Probe::parse(&outcome)?.action(0)?.expect_ok()?;
    Ok(())
}

fn host_files_are_out_of_reach(ctx: &Ctx) -> Result<()> {
    let marker = TempPath::new("marker");
    std::fs::write(&marker.0, "host")?;
    let seen = ctx.probe(&[], &["--stat", &marker.0.to_string_lossy()])?;
    seen.action(0)?.expect_errno(libc::ENOENT).context("a file in the host's /tmp is visible inside")?;
    Ok(())
}

fn the_chroot_escape_fails(ctx: &Ctx) -> Result<()> {
    let marker = TempPath::new("escape-marker");
    std::fs::write(&marker.0, "host")?;
    let marker = marker.0.to_string_lossy().into_owned();
    // Control: the escape does work against a plain chroot(2) of the same rootfs.
    let chroot =
        Run::raw("chroot").arg(&ctx.workshop.rootfs).args(["/bin/probe", "--escape", &marker]).output()?;
    chroot.expect_status(0)?;
    let escaped = Probe::parse(&chroot)?.action(0)?.expect_ok()?["escaped"].as_bool();
    ensure!(escaped == Some(true), "control failed: the probe's escape should break out of a plain chroot");
    // The container: pivot_root and a detached old root leave nowhere to climb to.
    let seen = ctx.probe(&[], &["--escape", &marker])?;
    let escaped = seen.action(0)?.value()["escaped"].as_bool();
    ensure!(escaped != Some(true), "the chroot escape reached the host's files from inside the container");
    Ok(())
}

fn pseudo_filesystems_are_mounted(ctx: &Ctx) -> Result<()> {
    let actions = [
        "--write",
        "/dev/null",
        "--write",
        "/sys/kernel/workshop-test",
        "--stat",
        "/dev/zero",
        "--read",
        "/dev/shm",
    ];
    let seen = ctx.probe(&[], &actions)?;
    for (mount_point, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
    ] {
        let mount = seen.mount(mount_point)?;
        ensure!(mount.fstype == fstype, "{mount_point} is {}, not {fstype}", mount.fstype);
    }
    ensure!(seen.mount("/sys")?.options.split(',').any(|o| o == "ro"), "/sys should be read-only");
    seen.action(0)?.expect_ok()?;
    seen.action(1)?.expect_errno(libc::EROFS)?;
    let zero = seen.action(2)?.expect_ok()?;
    ensure!(zero["kind"] == "char", "/dev/zero is not a character device: {zero}");
    Ok(())
}

/// The parts of /proc that are the whole machine's, which the runtime makes read-only.
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// Root in a container without --userns is still the host's root: /proc/sys
/// would let it change the host's kernel settings, /proc/sysrq-trigger reboot it.
fn host_wide_proc_files_are_read_only(ctx: &Ctx) -> Result<()> {
    // domainname belongs to the container's UTS namespace: harmless should the write work.
    let seen = ctx.probe(&[], &["--write", "/proc/sys/kernel/domainname", "--write", "/proc/self/comm"])?;
    seen.action(0)?.expect_errno(libc::EROFS)?;
    seen.action(1)?.expect_ok()?; // control: the container's own part of /proc is writable
                                  // Those the host's kernel has (no /proc/sysrq-trigger without CONFIG_MAGIC_SYSRQ).
    for name in PROC_READ_ONLY.iter().filter(|name| Path::new("/proc").join(name).exists()) {
        let mount = seen.mount(&format!("/proc/{name}"))?;
        ensure!(
            mount.options.split(',').any(|o| o == "ro"),
            "/proc/{name} should be mounted read-only, its options are {}",
            mount.options
        );
    }
    Ok(())
}

fn nothing_of_the_old_root_is_mounted(ctx: &Ctx) -> Result<()> {
    let allowed = ["/", "/proc", "/sys", "/dev", "/dev/pts", "/dev/shm"];
    for mount in ctx.probe(&[], &[])?.mounts()? {
        let device = mount.mount_point.strip_prefix("/dev/").is_some_and(|d| !d.contains('/'));
        let proc = mount.mount_point.strip_prefix("/proc/").is_some_and(|p| PROC_READ_ONLY.contains(&p));
        // Step 09 hides parts of /proc and /sys with mounts of its own (masked paths).
        let point = mount.mount_point.as_str();
        let masked = ctx.step.number >= crate::suite::HARDENED_SINCE
            && (MASKED_FILES.contains(&point) || MASKED_DIRS.contains(&point));
        if !allowed.contains(&mount.mount_point.as_str()) && !device && !proc && !masked {
            bail!(
                "{} ({}) is mounted inside: the old root was not detached",
                mount.mount_point,
                mount.fstype
            );
        }
    }
    Ok(())
}

fn mounts_inside_never_reach_the_host(ctx: &Ctx) -> Result<()> {
    let outcome =
        ctx.run_as_admin().cmd([ctx.probe_path()]).args(["--mount-tmpfs", "/mnt/inside"]).output()?;
    let seen = crate::Probe::parse(outcome.expect_status(0)?)?;
    seen.action(0)?.expect_ok()?;
    seen.mount("/mnt/inside")?;
    let host = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(!host.contains("/mnt/inside"), "the container's mount appeared on the host");
    Ok(())
}

fn private_even_when_the_host_is_shared(ctx: &Ctx) -> Result<()> {
    // systemd makes / shared: a container that forgets MS_PRIVATE leaks its
    // /proc into the host's mount table. Simulate such a host in a namespace.
    let script = r#"list() { cut -d' ' -f5 /proc/self/mountinfo | sort; }
        before=$(list); "$@"; status=$?; after=$(list)
        [ "$before" = "$after" ] || { echo "the shared mount table changed:"; echo "$after"; exit 99; }
        exit $status"#;
    // The probe's mount must happen, or the table could not change: check it too.
    let run = ctx.run_as_admin().cmd([
        "/bin/sh",
        "-c",
        "/bin/probe --mount-tmpfs /mnt/inside | grep -q '\"ok\": *true'",
    ]);
    let wrapped =
        Run::raw("unshare").args(["--mount", "--propagation", "shared", "--", "sh", "-c", script, "sh"]);
    let outcome = wrapped.arg(&run.bin).args(&run.args).output()?;
    outcome.expect_status(0)?;
    Ok(())
}

fn environment_is_clean(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&["--hostname", "clean"], &[])?;
    ensure!(
        seen.env("PATH") == Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "PATH is not the container default"
    );
    ensure!(seen.env("HOSTNAME") == Some("clean"), "HOSTNAME is not the container's");
    let env = seen.0["env"].as_object().cloned().unwrap_or_default();
    let leaked: Vec<&String> =
        env.keys().filter(|k| !["PATH", "HOSTNAME", "HOME", "TERM"].contains(&k.as_str())).collect();
    ensure!(leaked.is_empty(), "the host's environment leaked into the container: {leaked:?}");
    Ok(())
}

fn bad_rootfs_is_125_in_one_line(ctx: &Ctx) -> Result<()> {
    let run = |rootfs: &str| ctx.bare().args(["--rootfs", rootfs, "--", "true"]).output();
    crate::figures::add(crate::figures::INPUTS, 2);
    run("/no/such/rootfs")?
        .expect_status(125)?
        .expect_one_error_line(&["/no/such/rootfs", "cargo xtask rootfs"])?;
    run("/etc/passwd")?.expect_status(125)?.expect_one_error_line(&["not a directory"])?;
    Ok(())
}

fn symlinked_mount_point_is_refused(ctx: &Ctx) -> Result<()> {
    // A rootfs whose /proc points elsewhere must not get a mount over that place.
    let rootfs = TempPath::new("symlinked-rootfs");
    let outside = TempPath::new("outside");
    std::fs::create_dir_all(rootfs.0.join("bin"))?;
    std::fs::create_dir(&outside.0)?;
    std::os::unix::fs::symlink(&outside.0, rootfs.0.join("proc"))?;
    let outcome = ctx.bare().arg("--rootfs").arg(&rootfs.0).cmd(["/bin/sh"]).output()?;
    outcome.expect_status(125)?.expect_one_error_line(&["/proc"])?;
    Ok(())
}

fn dynamic_program_without_libraries(ctx: &Ctx) -> Result<()> {
    // The learners' classic: a dynamically linked program in a rootfs without its libraries.
    let rootfs = TempPath::new("dynamic-rootfs");
    std::fs::create_dir_all(rootfs.0.join("bin"))?;
    let program = ["/usr/bin/true", "/bin/true"].into_iter().find(|p| std::path::Path::new(p).exists());
    std::fs::copy(program.context("no /bin/true on the host")?, rootfs.0.join("bin/true"))?;
    let outcome = ctx.bare().arg("--rootfs").arg(&rootfs.0).cmd(["/bin/true"]).output()?;
    outcome.expect_status(127)?.expect_one_error_line(&["/bin/true", "dynamic"])?;
    Ok(())
}
