//! Step 01: the UTS namespace.

use super::host_hostname;
use crate::{Check, Ctx};
use anyhow::{ensure, Result};

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(1, "uts::hostname_is_the_containers", hostname_is_the_containers),
        Check::new(1, "uts::default_hostname_is_a_fresh_id", default_hostname_is_a_fresh_id),
        Check::new(
            1,
            "uts::changing_it_inside_leaves_the_host_alone",
            changing_it_inside_leaves_the_host_alone,
        ),
        Check::new(1, "uts::bad_hostnames_are_125_in_one_line", bad_hostnames_are_125_in_one_line),
    ]
}

fn hostname_is_the_containers(ctx: &Ctx) -> Result<()> {
    let host = host_hostname();
    let seen = ctx.probe(&["--hostname", "box-1"], &[])?;
    ensure!(
        seen.str("hostname")? == "box-1",
        "inside, the hostname is {:?}, not box-1",
        seen.str("hostname")?
    );
    let host_uts = std::fs::read_link("/proc/self/ns/uts")?;
    ensure!(
        !host_uts.to_string_lossy().contains(&seen.ns("uts")?.to_string()),
        "the container shares the host's UTS namespace"
    );
    ensure!(host_hostname() == host, "the host's hostname changed to {:?}", host_hostname());
    Ok(())
}

fn default_hostname_is_a_fresh_id(ctx: &Ctx) -> Result<()> {
    let first = ctx.probe(&[], &[])?.str("hostname")?.to_string();
    let second = ctx.probe(&[], &[])?.str("hostname")?.to_string();
    let is_id = |h: &str| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit());
    ensure!(is_id(&first) && is_id(&second), "default hostnames {first:?}, {second:?} are not 12-digit ids");
    ensure!(first != second, "two containers got the same default hostname {first:?}");
    Ok(())
}

fn changing_it_inside_leaves_the_host_alone(ctx: &Ctx) -> Result<()> {
    let host = host_hostname();
    ctx.run_as_admin().cmd(["hostname", "renamed-inside"]).output()?.expect_status(0)?;
    ensure!(host_hostname() == host, "the container renamed the host to {:?}", host_hostname());
    Ok(())
}

fn bad_hostnames_are_125_in_one_line(ctx: &Ctx) -> Result<()> {
    let too_long = "x".repeat(65);
    for name in [too_long.as_str(), "bad_name", "-dash", "dots..", "spa ce", ""] {
        crate::figures::add(crate::figures::INPUTS, 1);
        // `--hostname=VALUE`, so that "-dash" is a value and not a flag.
        let outcome = ctx.run().arg(format!("--hostname={name}")).cmd(["true"]).output()?;
        outcome.expect_status(125)?.expect_one_error_line(&["hostname"])?;
    }
    Ok(())
}
