//! Security: what container root can reach of the host, and the hardening
//! option of the last step (`--cap-drop ALL`).
//!
//! Most escape attempts live beside the feature that stops them (mnt, user,
//! volume, overlay) and are marked `.escape()`; these are the rest.

use crate::{Check, Ctx};
use anyhow::{ensure, Result};

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(3, "security::host_processes_are_out_of_reach", host_processes_are_out_of_reach).escape(),
        Check::new(8, "security::cap_drop_all_leaves_root_powerless", cap_drop_all_leaves_root_powerless)
            .escape(),
        Check::new(8, "errors::bad_cap_drop_is_125_in_one_line", bad_cap_drop_is_125).plain_only(),
    ]
}

/// The harness's own process, by its host pid, as the container sees it.
fn host_processes_are_out_of_reach(ctx: &Ctx) -> Result<()> {
    let ours = format!("/proc/{}/status", std::process::id());
    let seen = ctx.probe(&[], &["--stat", &ours, "--stat", "/proc/1/status"])?;
    seen.action(0)?.expect_errno(libc::ENOENT)?;
    seen.action(1)?.expect_ok()?; // control: its own PID 1 is there
    Ok(())
}

fn cap_drop_all_leaves_root_powerless(ctx: &Ctx) -> Result<()> {
    let actions = ["--mount-tmpfs", "/mnt", "--mknod-char", "/dev/workshop-null"];
    let seen = ctx.probe(&["--cap-drop", "ALL"], &actions)?;
    for set in ["effective", "permitted", "bounding"] {
        let caps = seen.0["capabilities"][set].as_str().unwrap_or("?");
        ensure!(
            caps.trim_start_matches('0').is_empty(),
            "with --cap-drop ALL the {set} set is {caps}, not 0"
        );
    }
    ensure!(seen.int("euid")? == 0, "with --cap-drop ALL the command should still run as uid 0");
    seen.action(0)?.expect_errno(libc::EPERM)?;
    seen.action(1)?.expect_errno(libc::EPERM)?;
    // Control: the same container root without the option may mount (from
    // step 09 on, only with CAP_SYS_ADMIN given back: Docker's default lacks it).
    let admin: &[&str] = match ctx.step.number >= crate::suite::HARDENED_SINCE {
        true => &["--cap-add", "SYS_ADMIN"],
        false => &[],
    };
    ctx.probe(admin, &actions[..2])?.action(0)?.expect_ok()?;
    Ok(())
}

fn bad_cap_drop_is_125(ctx: &Ctx) -> Result<()> {
    // From step 09 on, --cap-drop takes any capability's name (NET_RAW too).
    let values = match ctx.step.number >= crate::suite::HARDENED_SINCE {
        true => &["", "none"][..],
        false => &["NET_RAW", "", "none"][..],
    };
    for &value in values {
        let outcome = ctx.run().args(["--cap-drop", value]).cmd(["true"]).output()?;
        outcome.expect_status(125)?.expect_one_error_line(&["--cap-drop"])?;
        crate::figures::add(crate::figures::INPUTS, 1);
    }
    Ok(())
}
