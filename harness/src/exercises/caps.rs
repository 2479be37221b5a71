//! Exercise 09: capabilities by name. The step's own feature is the hole:
//! `--cap-add`/`--cap-drop` take names in Docker's spellings (`parse`), root
//! keeps Docker's 14 minus the drops plus the adds (`resolve`), and the
//! bounding set shrinks with them (`limit_bounding_set`), so that no exec
//! gives a dropped capability back.
//!
//! The sets are read from /proc/self/status by the probe, as COMMAND (it was
//! exec'd by the runtime, so what it holds is what exec left it). Each set is
//! compared within the host's own bounding set: a sandbox may lack some.

use super::{Exercise, Graded};
use crate::{Ctx, Outcome, Probe, Run};
use anyhow::{bail, ensure, Context, Result};

pub fn exercise() -> Exercise {
    Exercise {
        number: 9,
        name: "09-security",
        title: "capabilities by name (--cap-add, --cap-drop)",
        checks: vec![
            Graded::new(9, "caps::the_default_is_dockers_14", 2, the_default_is_dockers_14),
            Graded::new(9, "caps::cap_drop_all_then_cap_add_keeps_only_that_one", 2, drop_all_then_add),
            Graded::new(9, "caps::cap_add_sys_admin_lets_mount_work", 2, cap_add_sys_admin_lets_mount_work),
            Graded::new(9, "caps::cap_drop_chown_makes_chown_fail", 1, cap_drop_chown_makes_chown_fail),
            Graded::new(9, "caps::a_dropped_capability_cannot_come_back", 1, cannot_come_back),
            Graded::new(9, "caps::names_in_any_case_with_or_without_cap_", 1, names_in_any_spelling),
            Graded::new(9, "errors::bad_capability_names_are_125_in_one_line", 1, bad_names_are_125),
        ],
        // The step's own checks of capabilities: they fail until the
        // exercise is done, like the ones above (and the seccomp and device
        // checks that also look at the sets or use --cap-add).
        needs_the_holes: &[
            "hardening::root_has_only_dockers_14_capabilities",
            "hardening::cap_drop_and_cap_add_set_exactly_the_named_caps",
            "hardening::cap_add_sys_admin_lets_mount_work",
            "hardening::host_block_devices_cannot_be_opened",
            "hardening::seccomp_unconfined_turns_the_filter_off",
            "errors::hardening::bad_capability_names_are_125_in_one_line",
        ],
    }
}

/// Docker's 14 (moby's oci/caps/defaults.go): CHOWN 0, DAC_OVERRIDE 1,
/// FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, SETPCAP 8,
/// NET_BIND_SERVICE 10, NET_RAW 13, SYS_CHROOT 18, MKNOD 27, AUDIT_WRITE 29,
/// SETFCAP 31.
const DOCKER_DEFAULT: u64 = 0xa804_25fb;
const CAP_CHOWN: u64 = 1 << 0;
const CAP_NET_RAW: u64 = 1 << 13;
const CAP_SYS_ADMIN: u64 = 1 << 21;
/// The three sets the runtime decides: what root may use now, may take up,
/// and may ever get back at exec.
const SETS: [&str; 3] = ["effective", "permitted", "bounding"];

/// The host's bounding set: the most any container here can hold.
fn host_bounding_set() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).context("no CapBnd on the host")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// `BIN run --rm --rootfs R --net none FLAGS -- probe ACTIONS`: what the probe
/// saw. A run that was refused says so first, with its flags.
fn probe(ctx: &Ctx, flags: &[&str], actions: &[&str]) -> Result<Probe> {
    let outcome = run(ctx, flags).cmd([ctx.probe_path()]).args(actions).output()?;
    expect_ran(&outcome, flags)?;
    Probe::parse(&outcome)
}

fn run(ctx: &Ctx, flags: &[&str]) -> Run {
    ctx.run().args(["--net", "none"]).args(flags)
}

/// Fails unless COMMAND ran and exited 0; the message names the flags, and
/// keeps what the runtime printed (a todo!() among it says "not done yet").
fn expect_ran(outcome: &Outcome, flags: &[&str]) -> Result<()> {
    let shown = shown(flags);
    if outcome.status == 125 {
        let line = outcome.stderr.lines().next().unwrap_or("");
        bail!("`{shown}` was refused (status 125), but it is valid: {line}\n{}", outcome.transcript());
    }
    outcome.expect_status(0).map(drop).with_context(|| with(flags))
}

fn shown(flags: &[&str]) -> String {
    flags.join(" ")
}

/// "with FLAGS", or "by default".
fn with(flags: &[&str]) -> String {
    match flags.is_empty() {
        true => "by default".to_string(),
        false => format!("with {}", shown(flags)),
    }
}

/// The capabilities of a mask, by name: "CHOWN, NET_RAW".
fn names(mask: u64) -> String {
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let named = (0..64).filter(|n| mask & (1 << n) != 0);
    let named: Vec<String> = named.map(|n| NAMES.get(n).map_or(format!("#{n}"), |s| s.to_string())).collect();
    match named.is_empty() {
        true => "none".to_string(),
        false => named.join(", "),
    }
}

/// Fails unless each of `sets` is `wanted` (within the host's); says which
/// capabilities are extra or missing.
fn expect_sets(seen: &Probe, sets: &[&str], wanted: u64, flags: &[&str]) -> Result<()> {
    let host = host_bounding_set()?;
    let wanted = wanted & host;
    for set in sets {
        let caps = seen.caps(set)?;
        if caps == wanted {
            continue;
        }
        if *set == "bounding" && caps == host {
            bail!(
                "{}, the bounding set is still the host's ({caps:#x}), not {wanted:#x}: nothing was dropped \
                 from it (limit_bounding_set, with PR_CAPBSET_DROP), so root's next exec can get back all of it",
                with(flags)
            );
        }
        let (extra, missing) = (caps & !wanted, wanted & !caps);
        let mut why = Vec::new();
        if extra != 0 {
            why.push(format!("it should not hold {}", names(extra)));
        }
        if missing != 0 {
            why.push(format!("it lacks {}", names(missing)));
        }
        bail!("{}, the {set} set is {caps:#x}, not {wanted:#x}: {}", with(flags), why.join("; "));
    }
    Ok(())
}

fn the_default_is_dockers_14(ctx: &Ctx) -> Result<()> {
    // Control: --privileged keeps the host's sets (the probe reads them right).
    let host = host_bounding_set()?;
    let control = probe(ctx, &["--privileged"], &[])?;
    ensure!(
        control.caps("bounding")? == host,
        "control: with --privileged the bounding set is {:#x}, not the host's {host:#x}",
        control.caps("bounding")?
    );
    let seen = probe(ctx, &[], &[])?;
    expect_sets(&seen, &SETS, DOCKER_DEFAULT, &[])?;
    expect_sets(&seen, &["inheritable", "ambient"], 0, &[])
}

fn drop_all_then_add(ctx: &Ctx) -> Result<()> {
    let cases: [(&[&str], u64); 4] = [
        (&["--cap-drop", "ALL", "--cap-add", "NET_RAW"], CAP_NET_RAW),
        // Docker drops first and adds then, whatever the order on the command line.
        (&["--cap-add", "NET_RAW", "--cap-drop", "ALL"], CAP_NET_RAW),
        (&["--cap-drop", "ALL"], 0),
        (&["--cap-add", "ALL"], u64::MAX),
    ];
    for (flags, wanted) in cases {
        let seen = probe(ctx, flags, &[])?;
        expect_sets(&seen, &SETS, wanted, flags).map_err(|err| match wanted == CAP_NET_RAW {
            true => err.context(
                "Docker's rule: start from the 14, take the --cap-drop ones away, then give the --cap-add ones",
            ),
            false => err,
        })?;
        expect_sets(&seen, &["inheritable", "ambient"], 0, flags)?;
    }
    Ok(())
}

fn cap_add_sys_admin_lets_mount_work(ctx: &Ctx) -> Result<()> {
    let tries = ["--mount-tmpfs", "/mnt/workshop-cap-add"];
    probe(ctx, &[], &tries)?
        .action(0)?
        .expect_errno(libc::EPERM)
        .context("control: without --cap-add SYS_ADMIN, root may not mount")?;
    let flags = ["--cap-add", "sys_admin"];
    let seen = probe(ctx, &flags, &tries)?;
    seen.action(0)?.expect_ok().context("with --cap-add sys_admin, mounting a tmpfs should work")?;
    expect_sets(&seen, &SETS, DOCKER_DEFAULT | CAP_SYS_ADMIN, &flags)
}

/// `chown 1000` of a file root made: CAP_CHOWN's to allow.
const CHOWN: &str = "touch /tmp/workshop-chown && chown 1000 /tmp/workshop-chown";

/// Runs `chown` in a container with `flags`: Ok(()) if it worked, Err(what it said) if not.
fn try_chown(ctx: &Ctx, flags: &[&str]) -> Result<std::result::Result<(), String>> {
    let outcome = run(ctx, flags).cmd(["sh", "-c", CHOWN]).output()?;
    if outcome.status == 0 {
        return Ok(Ok(()));
    }
    if outcome.status == 125 || outcome.status == 101 {
        expect_ran(&outcome, flags)?;
    }
    Ok(Err(outcome.stderr.trim().to_string()))
}

fn cap_drop_chown_makes_chown_fail(ctx: &Ctx) -> Result<()> {
    if let Err(said) = try_chown(ctx, &[])? {
        bail!("control: by default root may chown (CAP_CHOWN is one of the 14), but: {said}");
    }
    let flags = ["--cap-drop", "CHOWN"];
    match try_chown(ctx, &flags)? {
        Ok(()) => bail!("with --cap-drop CHOWN, root could still chown a file to uid 1000"),
        Err(said) if said.contains("Operation not permitted") => Ok(()),
        Err(said) => bail!("with --cap-drop CHOWN, chown should fail with EPERM, but it said: {said}"),
    }
}

fn cannot_come_back(ctx: &Ctx) -> Result<()> {
    let flags = ["--cap-drop", "CHOWN"];
    let seen = probe(ctx, &flags, &[])?;
    expect_sets(&seen, &["bounding"], DOCKER_DEFAULT & !CAP_CHOWN, &flags)?;
    // Without no_new_privs, root's exec gives it its whole bounding set back:
    // so that is where a dropped capability must be gone.
    let flags = ["--cap-drop", "CHOWN", "--security-opt", "no-new-privileges=false"];
    let seen = probe(ctx, &flags, &[])?;
    ensure!(
        seen.int("no_new_privs")? == 0,
        "with --security-opt no-new-privileges=false, no_new_privs is {}",
        seen.int("no_new_privs")?
    );
    if seen.caps("effective")? & CAP_CHOWN != 0 {
        bail!(
            "{}, the exec of COMMAND gave root CAP_CHOWN back (effective {:#x}, bounding {:#x}): \
             drop it from the bounding set",
            with(&flags),
            seen.caps("effective")?,
            seen.caps("bounding")?
        );
    }
    expect_sets(&seen, &SETS, DOCKER_DEFAULT & !CAP_CHOWN, &flags)?;
    if try_chown(ctx, &flags)?.is_ok() {
        bail!("{}, root could chown again", with(&flags));
    }
    Ok(())
}

fn names_in_any_spelling(ctx: &Ctx) -> Result<()> {
    for spelling in ["CHOWN", "chown", "cap_chown", "CAP_CHOWN", "Cap_Chown"] {
        let flags = ["--cap-drop", spelling];
        let seen = probe(ctx, &flags, &[])?;
        expect_sets(&seen, &["effective", "bounding"], DOCKER_DEFAULT & !CAP_CHOWN, &flags)?;
    }
    let flags = ["--cap-drop", "all", "--cap-add", "cap_net_raw"];
    expect_sets(&probe(ctx, &flags, &[])?, &["effective", "bounding"], CAP_NET_RAW, &flags)
}

fn bad_names_are_125(ctx: &Ctx) -> Result<()> {
    let values = ["FOO", "CAP_FOO", "", "CAP_", "CAP_CAP_CHOWN", "NET RAW", "NET-RAW", "13", "CHOWN,KILL"];
    for flag in ["--cap-add", "--cap-drop"] {
        for value in values {
            let outcome = run(ctx, &[flag, value]).cmd(["true"]).output()?;
            if outcome.status == 0 {
                bail!(
                    "{flag} {value:?} should be refused (status 125), but COMMAND ran\n{}",
                    outcome.transcript()
                );
            }
            outcome.expect_status(125)?.expect_one_error_line(&[flag, value]).with_context(|| {
                format!("{flag} {value:?} should be refused in one line that names {flag} and {value:?}")
            })?;
        }
    }
    Ok(())
}
