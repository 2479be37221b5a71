//! Docker's default hardening (step 09): capabilities, no_new_privs, seccomp,
//! masked and read-only paths, the device allow-list, and the flags that
//! loosen or tighten them.
//!
//! Every escape here works in step 08, as plain container root. Each check
//! opens with its control: the same attempt under `--privileged`, where it
//! must work, so a failure in the default container is the hardening's doing
//! and not a broken probe or a host that forbids it anyway. The controls
//! never add `--userns` (the kernel itself forbids some of these in a user
//! namespace, which is fine for the default container but no control).
//!
//! Nothing here is harmful to the host even when it works: cgroup
//! hierarchies are mounted in the container and unmounted, never written
//! (release_agent is only looked up); the block device is only read; the
//! sysctl written is the container's own UTS domainname, written back with
//! the value it has; the syscalls get arguments that can do nothing (see the
//! probe's hardening.rs).

use super::TempPath;
use crate::figures::{self, INPUTS};
use crate::probe::Action;
use crate::{Check, Ctx, Probe, Run};
use anyhow::{bail, ensure, Context, Result};
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

pub fn checks() -> Vec<Check> {
    let escape = |name, run| Check::new(9, name, run).escape();
    // These set their own flags: they run once, without --userns added.
    let flags = |name, run| Check::new(9, name, run).plain_only();
    vec![
        escape("hardening::cgroup_v1_hierarchies_cannot_be_mounted", cgroup_hierarchies_cannot_be_mounted),
        escape("hardening::release_agent_is_out_of_reach", release_agent_is_out_of_reach),
        escape("hardening::host_block_devices_cannot_be_opened", host_block_devices_cannot_be_opened),
        escape("hardening::masked_proc_files_read_empty", masked_proc_files_read_empty),
        escape("hardening::masked_directories_are_empty", masked_directories_are_empty),
        escape("hardening::proc_sys_stays_read_only_after_umount", proc_sys_stays_read_only_after_umount),
        escape("hardening::setuid_root_binary_gives_no_privileges", setuid_root_binary_gives_no_privileges),
        escape("hardening::keyctl_bpf_and_module_loading_are_blocked", kernel_attack_surface_is_blocked),
        escape("hardening::unshare_of_a_user_namespace_is_blocked", unshare_user_is_blocked),
        escape("hardening::root_has_only_dockers_14_capabilities", root_has_only_dockers_14_capabilities),
        escape("hardening::no_new_privs_and_seccomp_are_on", no_new_privs_and_seccomp_are_on),
        Check::new(9, "hardening::clone3_is_enosys_so_libc_falls_back_to_clone", clone3_is_enosys),
        flags("hardening::cap_drop_and_cap_add_set_exactly_the_named_caps", cap_drop_and_cap_add),
        flags("hardening::cap_add_sys_admin_lets_mount_work", cap_add_sys_admin_lets_mount_work),
        flags("hardening::no_new_privileges_false_lets_setuid_work", no_new_privileges_flag),
        flags("hardening::seccomp_unconfined_turns_the_filter_off", seccomp_unconfined),
        flags("hardening::seccomp_profile_from_a_file_replaces_the_default", seccomp_profile_from_a_file),
        flags("errors::hardening::bad_capability_names_are_125_in_one_line", bad_capability_names),
        flags("errors::hardening::bad_security_opts_are_125_in_one_line", bad_security_opts),
        flags("errors::hardening::bad_seccomp_profiles_are_125_in_one_line", bad_seccomp_profiles),
    ]
}

// ---------------------------------------------------------------- running

/// Docker's 14 default capabilities: CHOWN 0, DAC_OVERRIDE 1, FOWNER 3,
/// FSETID 4, KILL 5, SETGID 6, SETUID 7, SETPCAP 8, NET_BIND_SERVICE 10,
/// NET_RAW 13, SYS_CHROOT 18, MKNOD 27, AUDIT_WRITE 29, SETFCAP 31.
const DOCKER_DEFAULT_CAPS: u64 = 0x0000_0000_a804_25fb;
const CAP_NET_RAW: u64 = 1 << 13;
const CAP_SYS_ADMIN: u64 = 1 << 21;
const CAP_CHOWN: u64 = 1 << 0;
const CAP_KILL: u64 = 1 << 5;
/// The uid that the probe's `--setuid-exec` runs the setuid copy as.
const UNPRIVILEGED: i64 = 1000;
/// What the probe's --rewrite writes back unchanged: the container's own
/// (UTS-namespaced) domainname. /proc/sys being read-only is the property
/// that protects the host's sysctls; a namespaced one is the safe witness.
const NAMESPACED_SYSCTL: &str = "/proc/sys/kernel/domainname";

/// `BIN run --rm --rootfs ROOTFS`: without `--userns`, whatever the variant.
fn plain(ctx: &Ctx) -> Run {
    ctx.bare().arg("--rootfs").arg(&ctx.workshop.rootfs)
}

/// Runs the probe with ACTIONS in `run` (no network: nothing here needs one).
fn probe_in(ctx: &Ctx, run: Run, actions: &[&str]) -> Result<Probe> {
    let outcome = run.args(["--net", "none"]).cmd([ctx.probe_path()]).args(actions).output()?;
    outcome.expect_status(0)?;
    Probe::parse(&outcome)
}

/// The control: `--privileged` and `flags`, never in a user namespace.
fn privileged(ctx: &Ctx, flags: &[&str], actions: &[&str]) -> Result<Probe> {
    probe_in(ctx, plain(ctx).arg("--privileged").args(flags), actions)
        .context("control: the same attempt with --privileged")
}

/// The default container of this variant (with `--userns` in the userns one).
fn hardened(ctx: &Ctx, flags: &[&str], actions: &[&str]) -> Result<Probe> {
    probe_in(ctx, ctx.run().args(flags), actions)
}

/// The default container without `--userns`, for the checks of the flags.
fn with_flags(ctx: &Ctx, flags: &[&str], actions: &[&str]) -> Result<Probe> {
    probe_in(ctx, plain(ctx).args(flags), actions)
}

/// The probe's actions, one per (flag, value).
fn actions<'a>(flag: &'a str, values: &'a [String]) -> Vec<&'a str> {
    values.iter().flat_map(|v| [flag, v.as_str()]).collect()
}

/// Fails unless the action failed (with any errno).
fn expect_failed(action: Action<'_>, why: &str) -> Result<()> {
    ensure!(!action.ok(), "inside the container, `{}` worked: {why}", action.name());
    Ok(())
}

/// Fails unless the syscall got past seccomp: it worked, or the kernel
/// answered with something else than the filter's `errno`.
fn expect_reached_kernel(action: Action<'_>, filter_errno: i32) -> Result<()> {
    if action.errno() == Some(filter_errno.into()) {
        bail!(
            "`{}` got errno {filter_errno} ({}), the filter's answer, where the kernel's was expected",
            action.name(),
            action.0["error"]
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- the host

/// The host's cgroup v1 hierarchies: (mount point, the `-o` options that name
/// one: its controllers, or name=...). Only hierarchies the host has mounted
/// are tried: mounting a controller that no hierarchy holds yet would make a
/// new hierarchy, a change to the whole machine.
fn host_v1_hierarchies() -> Result<Vec<(String, String)>> {
    let controllers: Vec<String> = std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("read the host's mountinfo")?;
    let mut found: Vec<(String, String)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else { continue };
        let mut tail = after.split(' ');
        if tail.next() != Some("cgroup") {
            continue;
        }
        let super_options = tail.nth(1).unwrap_or("");
        let options: Vec<&str> = super_options
            .split(',')
            .filter(|o| o.starts_with("name=") || controllers.iter().any(|c| c == o))
            .collect();
        let mount_point = before.split(' ').nth(4).unwrap_or("").to_string();
        let options = options.join(",");
        if !options.is_empty() && !found.iter().any(|(_, o)| *o == options) {
            found.push((mount_point, options));
        }
    }
    Ok(found)
}

/// mknod(2) on the host.
fn make_node(path: &Path, mode: libc::mode_t, device: libc::dev_t) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: mknod(2) with a valid C string.
    if unsafe { libc::mknod(c_path.as_ptr(), mode, device) } != 0 {
        bail!("mknod {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// A host block device ("MAJOR:MINOR") that the host's root itself may open
/// through a node of its own, as the container will try: the disk under /
/// first, else any in /sys/dev/block. (Some sandboxes forbid even root to
/// open their disk; a device that the host cannot open makes no control.)
/// A block device number to try, and what the host's own open of a node for
/// it gives: success, or ENXIO for a number with no disk behind it (a VM that
/// boots from an initramfs has no disk at all). The kernel asks the device
/// cgroup before it looks for the disk (bdev_permission), so ENXIO too shows
/// that an open got past the allow-list, where EPERM shows that it did not.
fn host_block_device() -> Result<(String, Option<i32>)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let root = mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4) == Some(&"/")).then(|| fields[2].to_string())
    });
    let mut candidates: Vec<String> = root.into_iter().filter(|d| !d.starts_with("0:")).collect();
    let mut listed: Vec<String> = std::fs::read_dir("/sys/dev/block")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    candidates.extend(listed);
    let dir = TempPath::new("block-device");
    std::fs::create_dir(&dir.0)?;
    let node = dir.0.join("node");
    let mut tried = Vec::new();
    // Last, numbers of disks that are not there (SCSI disk 0, loop 0).
    let absent = ["8:0", "7:0"].into_iter().filter(|d| !candidates.iter().any(|c| c == d));
    let absent: Vec<String> = absent.map(String::from).collect();
    for device in candidates.iter().chain(&absent) {
        let Some((major, minor)) = device.split_once(':') else { continue };
        let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else { continue };
        make_node(&node, libc::S_IFBLK | 0o600, libc::makedev(major, minor))?;
        let opened = std::fs::File::open(&node);
        std::fs::remove_file(&node)?;
        match opened {
            Ok(_) => return Ok((device.clone(), None)),
            Err(err) if absent.contains(device) && err.raw_os_error() == Some(libc::ENXIO) => {
                return Ok((device.clone(), Some(libc::ENXIO)))
            }
            Err(err) => tried.push(format!("{device}: {err}")),
        }
    }
    bail!("the host's root cannot open any block device itself, so there is no control: {tried:?}")
}

// ---------------------------------------------------------------- cgroups

/// A cgroup v1 hierarchy mounted in the container is the host's own: its
/// release_agent runs as host root (CVE-2022-0492). On a host without v1,
/// the v2 tree is tried instead.
fn cgroup_hierarchies_cannot_be_mounted(ctx: &Ctx) -> Result<()> {
    let mut options: Vec<String> = host_v1_hierarchies()?.into_iter().map(|(_, o)| o).collect();
    if options.is_empty() {
        options.push("cgroup2".into());
    }
    let tries = actions("--mount-cgroup", &options);
    let control = privileged(ctx, &[], &tries)?;
    for index in 0..options.len() {
        let value = control.action(index)?.expect_ok().context("control")?;
        ensure!(value["umount"] == "ok", "control: the probe could not unmount its cgroup mount: {value}");
    }
    let seen = hardened(ctx, &[], &tries)?;
    for index in 0..options.len() {
        seen.action(index)?.expect_errno(libc::EPERM)?;
    }
    Ok(())
}

/// The innermost mount of the container that holds `path`.
fn mount_holding(seen: &Probe, path: &str) -> Result<crate::probe::Mount> {
    let holds = |m: &crate::probe::Mount| {
        let point = m.mount_point.trim_end_matches('/');
        path == point || path.starts_with(&format!("{point}/"))
    };
    let found = seen.mounts()?.into_iter().filter(holds).max_by_key(|m| m.mount_point.len());
    found.with_context(|| format!("no mount inside the container holds {path}"))
}

/// release_agent sits in the root of every v1 hierarchy. The container must
/// reach none: it cannot mount one, and any it sees under /sys/fs/cgroup is
/// read-only. (Only ever looked up: writing it is the escape.)
fn release_agent_is_out_of_reach(ctx: &Ctx) -> Result<()> {
    let hierarchies = host_v1_hierarchies()?;
    if hierarchies.is_empty() {
        // No v1 on this host: no release_agent anywhere; the mount itself is
        // cgroup_v1_hierarchies_cannot_be_mounted's (with the v2 tree).
        let seen = hardened(ctx, &[], &["--mount-cgroup", "cgroup2"])?;
        return seen.action(0)?.expect_errno(libc::EPERM);
    }
    let options: Vec<String> = hierarchies.iter().map(|(_, o)| o.clone()).collect();
    let agents: Vec<String> = hierarchies.iter().map(|(point, _)| format!("{point}/release_agent")).collect();
    let control = privileged(ctx, &[], &actions("--mount-cgroup", &options))?;
    for (index, option) in options.iter().enumerate() {
        let value = control.action(index)?.expect_ok().context("control")?;
        ensure!(
            value["release_agent"] == true,
            "control: a privileged container that mounts the {option} hierarchy should see its \
             release_agent (does --privileged get a cgroup namespace?): {value}"
        );
    }
    let mut tries = actions("--mount-cgroup", &options);
    tries.extend(actions("--stat", &agents));
    let seen = hardened(ctx, &[], &tries)?;
    for index in 0..options.len() {
        seen.action(index)?.expect_errno(libc::EPERM)?;
    }
    for (index, agent) in agents.iter().enumerate() {
        if seen.action(options.len() + index)?.ok() {
            let mount = mount_holding(&seen, agent)?;
            ensure!(
                mount.options.split(',').any(|o| o == "ro"),
                "the container sees {agent} on a writable mount ({} {})",
                mount.mount_point,
                mount.options
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- devices

/// CAP_MKNOD (one of Docker's 14) lets root make a node for the host's disk;
/// only the device allow-list stops the open. Tried on the container's root,
/// on its /dev (a tmpfs the runtime mounts) and on a tmpfs the container
/// mounts itself (with CAP_SYS_ADMIN, so that the allow-list, not the missing
/// capability, is what stops it).
fn host_block_devices_cannot_be_opened(ctx: &Ctx) -> Result<()> {
    let (device, no_disk) = host_block_device()?;
    let on = |dir: &str| format!("{device}:{dir}");
    let (on_root, on_dev, on_own) = (on("/tmp"), on("/dev"), on("/mnt/workshop-blk"));
    let own_tmpfs = ["--mount-tmpfs", "/mnt/workshop-blk", "--open-block", &on_own];
    let mut tries = vec!["--open-block", &on_root, "--open-block", &on_dev];
    tries.extend(own_tmpfs);
    let control = privileged(ctx, &[], &tries)?;
    for index in 0..tries.len() / 2 {
        match no_disk {
            // The mount of the own tmpfs (index 2) works either way.
            Some(errno) if index != 2 => control.action(index)?.expect_errno(errno).context("control")?,
            _ => drop(control.action(index)?.expect_ok().context("control")?),
        }
    }
    // Without --userns root may make the node, and only the open fails; in a
    // user namespace the kernel refuses the mknod already.
    let refused = |action: Action<'_>| -> Result<()> {
        if ctx.userns {
            return expect_failed(action, "a host block device was opened");
        }
        let value = action.value();
        ensure!(
            value["mknod"] == "ok",
            "`{}`: with CAP_MKNOD the node should be made (only its open refused): {value}",
            action.name()
        );
        action.expect_errno(libc::EPERM)
    };
    let seen = hardened(ctx, &[], &tries[..4])?;
    refused(seen.action(0)?)?;
    refused(seen.action(1)?)?;
    let seen = hardened(ctx, &["--cap-add", "SYS_ADMIN"], &own_tmpfs)?;
    seen.action(0)?.expect_ok().context("with --cap-add SYS_ADMIN the container may mount a tmpfs")?;
    refused(seen.action(1)?)
}

// ---------------------------------------------------------------- masks

/// Docker's masked files: /dev/null is bound over each (if the kernel has it).
pub(super) const MASKED_FILES: [&str; 7] = [
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/timer_list",
    "/proc/timer_stats",
];
/// Those that always have content when not masked (/proc/keys may list nothing).
const ALWAYS_CONTENT: [&str; 2] = ["/proc/interrupts", "/proc/timer_list"];
/// Docker's masked directories: an empty read-only tmpfs over each.
pub(super) const MASKED_DIRS: [&str; 5] =
    ["/proc/acpi", "/proc/asound", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"];

fn masked_proc_files_read_empty(ctx: &Ctx) -> Result<()> {
    let files: Vec<String> =
        MASKED_FILES.iter().filter(|f| Path::new(f).exists()).map(|f| f.to_string()).collect();
    ensure!(!files.is_empty(), "the host's kernel has none of {MASKED_FILES:?}: nothing to try");
    let mut tries = actions("--stat", &files);
    tries.extend(actions("--read", &files));
    let control = privileged(ctx, &[], &tries)?;
    for (index, file) in files.iter().enumerate() {
        let stat = control.action(index)?.expect_ok().context("control")?;
        ensure!(
            stat["kind"] == "file",
            "control: with --privileged {file} should be the kernel's file: {stat}"
        );
        let text = control.action(files.len() + index)?.expect_ok().context("control")?;
        if ALWAYS_CONTENT.contains(&file.as_str()) {
            ensure!(text.as_str().is_some_and(|t| !t.is_empty()), "control: {file} read empty");
        }
    }
    // Reading, and reading after trying to take the mask away.
    let mut tries = actions("--read", &files);
    for file in &files {
        tries.extend(["--umount", file, "--read", file]);
    }
    let seen = hardened(ctx, &[], &tries)?;
    let masked = |action: Action<'_>| -> Result<()> {
        let empty = action.value().as_str() == Some("");
        ensure!(!action.ok() || empty, "`{}` read the kernel's content: {}", action.name(), action.value());
        Ok(())
    };
    for (index, file) in files.iter().enumerate() {
        masked(seen.action(index)?)?;
        let at = files.len() + 2 * index;
        expect_failed(seen.action(at)?, &format!("the mask over {file} came off"))?;
        masked(seen.action(at + 1)?)?;
    }
    Ok(())
}

fn masked_directories_are_empty(ctx: &Ctx) -> Result<()> {
    let has_entries = |dir: &&&str| std::fs::read_dir(dir).is_ok_and(|mut e| e.next().is_some());
    let dirs: Vec<String> = MASKED_DIRS.iter().filter(has_entries).map(|d| d.to_string()).collect();
    ensure!(!dirs.is_empty(), "the host has none of {MASKED_DIRS:?} with entries: nothing to try");
    let tries = actions("--list", &dirs);
    let control = privileged(ctx, &[], &tries)?;
    for (index, dir) in dirs.iter().enumerate() {
        let names = control.action(index)?.expect_ok().context("control")?;
        ensure!(names.as_array().is_some_and(|n| !n.is_empty()), "control: {dir} is empty with --privileged");
    }
    let seen = hardened(ctx, &[], &tries)?;
    for (index, dir) in dirs.iter().enumerate() {
        let action = seen.action(index)?;
        let empty = action.value().as_array().is_some_and(Vec::is_empty);
        ensure!(!action.ok() || empty, "the container lists the host's {dir}: {}", action.value());
        if action.ok() {
            let mount = mount_holding(&seen, dir)?;
            ensure!(
                mount.mount_point == *dir && mount.options.split(',').any(|o| o == "ro"),
                "{dir} should be masked by a read-only mount of its own, not {} ({})",
                mount.mount_point,
                mount.options
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- /proc/sys

/// /proc/sys is the whole machine's kernel settings: the read-only bind over
/// it must stay, since container root cannot unmount it. The write is a
/// no-op (the value read is written back) on a namespaced sysctl, so that
/// even the control changes nothing of the host.
fn proc_sys_stays_read_only_after_umount(ctx: &Ctx) -> Result<()> {
    let tries = ["--umount", "/proc/sys", "--rewrite", NAMESPACED_SYSCTL];
    let control = privileged(ctx, &[], &tries)?;
    let host_uts = std::fs::read_link("/proc/self/ns/uts")?.to_string_lossy().into_owned();
    ensure!(
        !host_uts.contains(&format!("[{}]", control.ns("uts")?)),
        "control: the privileged container shares the host's UTS namespace"
    );
    // Privileged containers may have /proc/sys writable already: then there
    // is no mount to take away (EINVAL), and the write works all the same.
    let umount = control.action(0)?;
    ensure!(
        umount.ok() || umount.errno() == Some(libc::EINVAL.into()),
        "control: `umount /proc/sys` failed with --privileged: {}",
        umount.0["error"]
    );
    control.action(1)?.expect_ok().context("control: the sysctl write")?;

    let seen = hardened(ctx, &[], &tries)?;
    let mount = seen.mount("/proc/sys")?;
    ensure!(mount.options.split(',').any(|o| o == "ro"), "/proc/sys is mounted {}, not ro", mount.options);
    seen.action(0)?.expect_errno(libc::EPERM)?;
    // In a user namespace the kernel refuses the write to a sysctl that host
    // root owns (EACCES) before it looks at the mount (EROFS).
    let write = seen.action(1)?;
    match ctx.userns {
        true => expect_failed(write, "a sysctl was written")?,
        false => write.expect_errno(libc::EROFS)?,
    }
    Ok(())
}

// ---------------------------------------------------------------- setuid

/// uid 1000 runs a setuid-root copy of the probe: with no_new_privs its euid
/// stays 1000.
fn setuid_root_binary_gives_no_privileges(ctx: &Ctx) -> Result<()> {
    let tries = ["--setuid-exec", "/tmp"];
    let control = privileged(ctx, &[], &tries)?;
    let ids = control.action(0)?.expect_ok().context("control")?;
    ensure!(
        ids["uid"] == UNPRIVILEGED && ids["euid"] == 0,
        "control: with --privileged the setuid-root program should run with euid 0: {ids}"
    );
    let seen = hardened(ctx, &[], &tries)?;
    let ids = seen.action(0)?.expect_ok()?;
    ensure!(
        ids["uid"] == UNPRIVILEGED && ids["euid"] == UNPRIVILEGED,
        "uid {UNPRIVILEGED} gained privileges through a setuid-root program: {ids}"
    );
    ensure!(ids["no_new_privs"] == 1, "the setuid program ran without no_new_privs: {ids}");
    Ok(())
}

// ---------------------------------------------------------------- seccomp

/// Syscalls that only widen the kernel's attack surface: keyrings (not
/// namespaced), BPF programs, kernel modules, userfaultfd, perf events.
/// Without CAP_SYS_MODULE the kernel refuses module loading with EPERM
/// itself; the control has the capability, so there the kernel's own
/// answer (ENOEXEC, EBADF, or ENOSYS on a kernel without modules) shows.
const BLOCKED: [&str; 6] = ["keyctl", "bpf", "init_module", "finit_module", "userfaultfd", "perf_event_open"];

fn kernel_attack_surface_is_blocked(ctx: &Ctx) -> Result<()> {
    let names: Vec<String> = BLOCKED.iter().map(|s| s.to_string()).collect();
    let tries = actions("--syscall", &names);
    let control = privileged(ctx, &[], &tries)?;
    for index in 0..names.len() {
        expect_reached_kernel(control.action(index)?, libc::EPERM).context("control")?;
    }
    let seen = hardened(ctx, &[], &tries)?;
    for index in 0..names.len() {
        seen.action(index)?.expect_errno(libc::EPERM)?;
    }
    Ok(())
}

/// A user namespace of its own would give container root every capability
/// again (in there), and with it a path to kernel code that only "root" reaches.
fn unshare_user_is_blocked(ctx: &Ctx) -> Result<()> {
    let tries = ["--syscall", "unshare-user"];
    privileged(ctx, &[], &tries)?.action(0)?.expect_ok().context("control")?;
    hardened(ctx, &[], &tries)?.action(0)?.expect_errno(libc::EPERM)
}

/// Seccomp cannot look into clone3's argument struct, so Docker's profile
/// answers ENOSYS, and libc falls back to clone(2), whose flags it can check.
fn clone3_is_enosys(ctx: &Ctx) -> Result<()> {
    let tries = ["--syscall", "clone3"];
    expect_reached_kernel(privileged(ctx, &[], &tries)?.action(0)?, libc::ENOSYS).context("control")?;
    hardened(ctx, &[], &tries)?.action(0)?.expect_errno(libc::ENOSYS)
}

// ---------------------------------------------------------------- capabilities

/// The host's own bounding set: what a privileged container can get at most
/// (a sandbox may have dropped some of those that cap_last_cap counts).
fn host_bounding_set() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).context("no CapBnd on the host")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

fn all_caps_of_this_kernel() -> Result<u64> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?.trim().parse()?;
    Ok(if last >= 63 { u64::MAX } else { (1u64 << (last + 1)) - 1 })
}

fn expect_caps(seen: &Probe, sets: &[&str], wanted: u64, context: &str) -> Result<()> {
    for set in sets {
        let caps = seen.caps(set)?;
        ensure!(caps == wanted, "{context}: the {set} set is {caps:#018x}, not {wanted:#018x}");
    }
    Ok(())
}

fn root_has_only_dockers_14_capabilities(ctx: &Ctx) -> Result<()> {
    let host = host_bounding_set()?;
    let all = all_caps_of_this_kernel()?;
    ensure!(host & !all == 0, "the host's bounding set {host:#x} has capabilities beyond cap_last_cap");
    let control = privileged(ctx, &[], &[])?;
    expect_caps(&control, &["effective", "permitted", "bounding"], host, "control: with --privileged")?;
    let seen = hardened(ctx, &[], &[])?;
    let wanted = DOCKER_DEFAULT_CAPS & host;
    expect_caps(&seen, &["effective", "permitted", "bounding"], wanted, "by default")?;
    expect_caps(&seen, &["inheritable", "ambient"], 0, "by default")?;
    ensure!(seen.caps("effective")? & CAP_SYS_ADMIN == 0, "CAP_SYS_ADMIN is effective");
    ensure!(seen.int("euid")? == 0, "the command should still run as (container) root");
    Ok(())
}

fn no_new_privs_and_seccomp_are_on(ctx: &Ctx) -> Result<()> {
    let control = privileged(ctx, &[], &[])?;
    ensure!(control.int("no_new_privs")? == 0, "control: --privileged should leave no_new_privs off");
    ensure!(control.int("seccomp")? == 0, "control: --privileged should have no seccomp filter");
    let seen = hardened(ctx, &[], &[])?;
    ensure!(seen.int("no_new_privs")? == 1, "no_new_privs is {}, not 1", seen.int("no_new_privs")?);
    ensure!(seen.int("seccomp")? == 2, "Seccomp is {}, not 2 (a filter)", seen.int("seccomp")?);
    Ok(())
}

// ---------------------------------------------------------------- the flags

fn cap_drop_and_cap_add(ctx: &Ctx) -> Result<()> {
    let host = host_bounding_set()?;
    let sets = ["effective", "permitted", "bounding"];
    let control = with_flags(ctx, &[], &[])?;
    expect_caps(&control, &sets, DOCKER_DEFAULT_CAPS & host, "control: without --cap-* flags")?;
    for (flags, wanted) in [
        (&["--cap-drop", "ALL", "--cap-add", "NET_RAW"][..], CAP_NET_RAW),
        (&["--cap-drop", "all", "--cap-add", "cap_net_raw"][..], CAP_NET_RAW),
        (&["--cap-drop", "ALL"][..], 0),
        (&["--cap-drop", "NET_RAW"][..], DOCKER_DEFAULT_CAPS & !CAP_NET_RAW),
        (
            &["--cap-drop", "CAP_CHOWN", "--cap-drop", "kill"][..],
            DOCKER_DEFAULT_CAPS & !(CAP_CHOWN | CAP_KILL),
        ),
        (&["--cap-add", "SYS_ADMIN"][..], DOCKER_DEFAULT_CAPS | CAP_SYS_ADMIN),
    ] {
        let seen = with_flags(ctx, flags, &[])?;
        expect_caps(&seen, &sets, wanted & host, &format!("with {}", flags.join(" ")))?;
        expect_caps(&seen, &["inheritable", "ambient"], 0, &format!("with {}", flags.join(" ")))?;
    }
    Ok(())
}

fn cap_add_sys_admin_lets_mount_work(ctx: &Ctx) -> Result<()> {
    let tries = ["--mount-tmpfs", "/mnt/workshop-cap-add"];
    with_flags(ctx, &[], &tries)?.action(0)?.expect_errno(libc::EPERM).context("control: by default")?;
    let seen = with_flags(ctx, &["--cap-add", "sys_admin"], &tries)?;
    seen.action(0)?.expect_ok()?;
    ensure!(
        seen.caps("effective")? & CAP_SYS_ADMIN != 0,
        "--cap-add sys_admin: CAP_SYS_ADMIN is not effective"
    );
    ensure!(seen.int("seccomp")? == 2, "--cap-add sys_admin should keep the seccomp filter");
    Ok(())
}

/// The setuid program as uid 1000: (euid it got, no_new_privs of the probe).
fn setuid_result(seen: &Probe) -> Result<(i64, i64)> {
    let ids = seen.action(0)?.expect_ok()?;
    let euid = ids["euid"].as_i64().with_context(|| format!("the setuid copy reported no euid: {ids}"))?;
    Ok((euid, seen.int("no_new_privs")?))
}

fn no_new_privileges_flag(ctx: &Ctx) -> Result<()> {
    let tries = ["--setuid-exec", "/tmp"];
    let control = with_flags(ctx, &[], &tries)?;
    ensure!(
        setuid_result(&control)? == (UNPRIVILEGED, 1),
        "control: by default, {:?}",
        setuid_result(&control)?
    );
    for (flags, wanted) in [
        (&["--security-opt", "no-new-privileges=false"][..], (0, 0)),
        // The flag is also honoured where the default is off.
        (&["--privileged", "--security-opt", "no-new-privileges=true"][..], (UNPRIVILEGED, 1)),
        (&["--privileged", "--security-opt", "no-new-privileges"][..], (UNPRIVILEGED, 1)),
        (&["--security-opt", "no-new-privileges=true"][..], (UNPRIVILEGED, 1)),
    ] {
        let got = setuid_result(&with_flags(ctx, flags, &tries)?)?;
        ensure!(got == wanted, "with {}: (euid, no_new_privs) is {got:?}, not {wanted:?}", flags.join(" "));
    }
    Ok(())
}

fn seccomp_unconfined(ctx: &Ctx) -> Result<()> {
    let tries = ["--syscall", "keyctl", "--syscall", "clone3"];
    let control = with_flags(ctx, &[], &tries)?;
    ensure!(control.int("seccomp")? == 2, "control: by default Seccomp should be 2");
    control.action(0)?.expect_errno(libc::EPERM).context("control: by default")?;
    let seen = with_flags(ctx, &["--security-opt", "seccomp=unconfined"], &tries)?;
    ensure!(seen.int("seccomp")? == 0, "with seccomp=unconfined Seccomp is {}, not 0", seen.int("seccomp")?);
    expect_reached_kernel(seen.action(0)?, libc::EPERM)?;
    expect_reached_kernel(seen.action(1)?, libc::ENOSYS)?;
    // Only the filter goes: the rest of the hardening stays.
    ensure!(seen.int("no_new_privs")? == 1, "seccomp=unconfined turned no_new_privs off");
    let host = host_bounding_set()?;
    expect_caps(&seen, &["effective", "bounding"], DOCKER_DEFAULT_CAPS & host, "with seccomp=unconfined")
}

/// A profile in Docker's format that allows everything but keyctl: the
/// default profile is gone (userfaultfd reaches the kernel), this one is in
/// force (keyctl fails with its errno: EPERM, or the errnoRet it names).
fn seccomp_profile_from_a_file(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("seccomp-profiles");
    std::fs::create_dir(&dir.0)?;
    let tries = ["--syscall", "keyctl", "--syscall", "userfaultfd"];
    let control = with_flags(ctx, &["--security-opt", "seccomp=unconfined"], &tries)?;
    expect_reached_kernel(control.action(0)?, libc::EPERM).context("control: with seccomp=unconfined")?;
    for (name, rule, errno) in [
        ("default-errno.json", r#"{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"}"#, libc::EPERM),
        (
            "errno-ret.json",
            r#"{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}"#,
            libc::EACCES,
        ),
    ] {
        let path = dir.0.join(name);
        std::fs::write(&path, format!(r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{rule}]}}"#))?;
        let opt = format!("seccomp={}", path.display());
        let seen =
            with_flags(ctx, &["--security-opt", &opt], &tries).with_context(|| format!("with {name}"))?;
        ensure!(
            seen.int("seccomp")? == 2,
            "with the profile {name} Seccomp is {}, not 2",
            seen.int("seccomp")?
        );
        seen.action(0)?.expect_errno(errno).with_context(|| format!("with the profile {name}"))?;
        expect_reached_kernel(seen.action(1)?, libc::EPERM)
            .with_context(|| format!("with the profile {name}, the default profile still applies"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- bad input

/// A refused input comes back at once; a hang is a failure, not a wait.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One bad input: `BIN run --rm --rootfs R --net none ARGS -- true`, or
/// `BIN ARGS` when `raw` (for a flag without its value).
struct Case {
    args: Vec<OsString>,
    words: Vec<String>,
    raw: bool,
}

fn case<A: AsRef<OsStr>>(args: impl IntoIterator<Item = A>, words: &[&str]) -> Case {
    let args = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    Case { args, words: words.iter().map(|w| w.to_string()).collect(), raw: false }
}

fn raw_case(args: &[&str], words: &[&str]) -> Case {
    Case { raw: true, ..case(args, words) }
}

/// `text` followed by a byte that is not UTF-8.
fn not_utf8(text: &str) -> OsString {
    let mut arg = OsString::from(text);
    arg.push(OsStr::from_bytes(b"\xff"));
    arg
}

/// Each case must end in 125 with one error line that contains every word;
/// fails with all the cases that were not refused so.
fn expect_refused(ctx: &Ctx, cases: &[Case]) -> Result<()> {
    let mut failures = Vec::new();
    for case in cases {
        figures::add(INPUTS, 1);
        let run = match case.raw {
            true => Run::raw(&ctx.step.bin).args(&case.args),
            false => plain(ctx).args(["--net", "none"]).args(&case.args).cmd(["true"]),
        };
        let words: Vec<&str> = case.words.iter().map(String::as_str).collect();
        let refused = run.timeout(TIMEOUT).output().and_then(|outcome| {
            outcome.expect_status(125)?.expect_one_error_line(&words)?;
            Ok(())
        });
        if let Err(err) = refused {
            // Some values are 5000 bytes long, and errors quote them.
            let text = format!("{err:#}");
            let cut = (0..=text.len().min(1500)).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            failures.push(text[..cut].to_string());
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {} bad inputs were not refused with 125 and one line:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

fn bad_capability_names(ctx: &Ctx) -> Result<()> {
    let long = "X".repeat(5000);
    let values = [
        "FOO",
        "CAP_FOO",
        "",
        "CAP_",
        "CAP_CAP_NET_RAW",
        "NET_RAW ",
        " NET_RAW",
        "NET-RAW",
        "NET_RAW,SYS_ADMIN",
        "13",
        "NET_RAW\nSYS_ADMIN",
        "ＮＥＴ_RAW",
        &long,
    ];
    let mut cases = Vec::new();
    for flag in ["--cap-add", "--cap-drop"] {
        for value in values {
            cases.push(case([flag, value], &[flag]));
        }
        // clap refuses it before it knows the flag (like the other flags: see inputs.rs).
        cases.push(case([OsString::from(flag), not_utf8("NET_RAW")], &["UTF-8"]));
        cases.push(raw_case(&["run", flag], &[flag]));
    }
    expect_refused(ctx, &cases)
}

fn bad_security_opts(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("security-opt");
    std::fs::create_dir(&dir.0)?;
    let missing = format!("seccomp={}", dir.0.join("no-such-profile.json").display());
    let directory = format!("seccomp={}", dir.0.display());
    let long = format!("seccomp={}", "x".repeat(5000));
    let values = [
        "seccomp",
        "seccomp=",
        "apparmor=x",
        "no-new-privileges=maybe",
        "no-new-privileges=",
        "bogus",
        "=x",
        "",
        "seccomp=unconfined\nx",
        &missing,
        &directory,
        &long,
    ];
    let mut cases: Vec<_> = values.iter().map(|v| case(["--security-opt", v], &["--security-opt"])).collect();
    cases.push(case([OsString::from("--security-opt"), not_utf8("seccomp=unconfined")], &["UTF-8"]));
    cases.push(raw_case(&["run", "--security-opt"], &["--security-opt"]));
    expect_refused(ctx, &cases)
}

/// Profiles that are not what Docker's format allows. The huge one is valid
/// but for its size (2 MiB of padding): a runtime reads a bounded amount.
fn bad_seccomp_profiles(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("seccomp-bad");
    std::fs::create_dir(&dir.0)?;
    let allow_all = r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#;
    let huge = format!("{allow_all}{}", " ".repeat(2 << 20));
    let profiles: [(&str, &str, &[&str]); 8] = [
        ("not-json.json", "this is not JSON\n{ nor is\nthis", &[]),
        ("empty.json", "", &[]),
        ("a-list.json", "[]", &[]),
        ("no-default-action.json", r#"{"syscalls": []}"#, &[]),
        (
            "unknown-syscall.json",
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["no_such_syscall"], "action": "SCMP_ACT_ALLOW"}]}"#,
            &["no_such_syscall"],
        ),
        ("unknown-default-action.json", r#"{"defaultAction": "SCMP_ACT_FROB"}"#, &["SCMP_ACT_FROB"]),
        (
            "unknown-action.json",
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_FROB"}]}"#,
            &["SCMP_ACT_FROB"],
        ),
        ("huge.json", &huge, &[]),
    ];
    let mut cases = Vec::new();
    for (name, text, words) in profiles {
        let path = dir.0.join(name);
        std::fs::write(&path, text)?;
        let mut words = words.to_vec();
        words.push("--security-opt");
        cases.push(case(["--security-opt".to_string(), format!("seccomp={}", path.display())], &words));
    }
    expect_refused(ctx, &cases)
}
