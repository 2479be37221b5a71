//! Exercise 04: `--user UID[:GID]` runs COMMAND as that user, without root's
//! powers, with or without a user namespace.

use super::{cmdline, container_pid, ended_early, kill_container, poll, Exercise, Graded, InRootfs};
use crate::{Ctx, Probe};
use anyhow::{bail, ensure, Context, Result};

pub fn exercise() -> Exercise {
    Exercise {
        number: 4,
        name: "04-user",
        title: "a user of your choice (--user UID[:GID])",
        checks: vec![
            Graded::new(4, "as_user::command_has_the_ids_asked_for", 3, command_has_the_ids_asked_for),
            Graded::new(4, "as_user::root_only_actions_fail", 3, root_only_actions_fail),
            Graded::new(4, "as_user::works_in_a_user_namespace", 2, works_in_a_user_namespace),
            Graded::new(4, "errors::bad_user_is_125_in_one_line", 2, bad_user_is_125_in_one_line),
        ],
        needs_the_holes: &[],
    }
}

/// `BIN run FLAGS -- probe`, the runtime started with the supplementary
/// groups 0, 4 and 27 (as root often has them): what the probe saw.
fn probe_with_groups(ctx: &Ctx, flags: &[&str]) -> Result<Probe> {
    let run = ctx.run().args(flags).cmd([ctx.probe_path()]);
    let outcome = run.wrapped(["setpriv", "--groups", "0,4,27", "--"]).output()?;
    Probe::parse(outcome.expect_status(0)?)
}

fn command_has_the_ids_asked_for(ctx: &Ctx) -> Result<()> {
    // Control: without --user, COMMAND keeps the groups the runtime had.
    let groups = probe_with_groups(ctx, &[])?.ints("groups")?;
    ensure!(
        groups.contains(&4),
        "control: the runtime, started with `setpriv --groups 0,4,27`, ran COMMAND with the groups {groups:?}"
    );
    for (flag, uid, gid) in [("1000:1001", 1000, 1001), ("1234", 1234, 0)] {
        let seen = probe_with_groups(ctx, &["--user", flag])?;
        let ids = [seen.int("uid")?, seen.int("euid")?, seen.int("gid")?, seen.int("egid")?];
        ensure!(
            ids == [uid, uid, gid, gid],
            "with --user {flag}, COMMAND should run with uid {uid} and gid {gid} (real and effective); \
             it has uid {}, euid {}, gid {}, egid {}",
            ids[0],
            ids[1],
            ids[2],
            ids[3]
        );
        let groups = seen.ints("groups")?;
        ensure!(
            groups.iter().all(|&g| g == gid),
            "with --user {flag}, COMMAND still has root's supplementary groups {groups:?}: drop them (setgroups)"
        );
    }
    Ok(())
}

fn root_only_actions_fail(ctx: &Ctx) -> Result<()> {
    // /tmp of the workshop rootfs is the host's directory: remove what lands there.
    let (device, file) = ("/tmp/workshop-grade-device", "/root/workshop-grade");
    let _cleanup = (InRootfs::new(ctx, device), InRootfs::new(ctx, file));
    // Control: root in the container may make a device node (steps 03, 04).
    let seen = ctx.probe(&[], &["--mknod-char", device, "--remove", device])?;
    seen.action(0)?.expect_ok().context("control: without --user, root may mknod")?;
    let seen = ctx.probe(&["--user", "1000:1000"], &["--mknod-char", device, "--write", file])?;
    seen.action(0)?
        .expect_errno(libc::EPERM)
        .context("with --user 1000:1000, making a device node needs a capability COMMAND must not have")?;
    seen.action(1)?
        .expect_errno(libc::EACCES)
        .context("with --user 1000:1000, root's home (/root, mode 700) must be out of reach")?;
    let effective = seen.0["capabilities"]["effective"].as_str().unwrap_or("?").to_string();
    ensure!(
        effective.trim_start_matches('0').is_empty(),
        "with --user 1000:1000, COMMAND should have no capabilities; its effective set is {effective}: \
         change the real, effective and saved uid (setresuid)"
    );
    Ok(())
}

fn works_in_a_user_namespace(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&["--userns", "--user", "1000:1000"], &[])?;
    let (uid, gid) = (seen.int("uid")?, seen.int("gid")?);
    ensure!(
        (uid, gid) == (1000, 1000),
        "with --userns --user 1000:1000, COMMAND should be uid 1000, gid 1000 inside; it is {uid}, {gid}"
    );
    // From the host, container uid 1000 is 100000 + 1000.
    let mut running = ctx.run().args(["--userns", "--user", "1000:1000"]).cmd(["sleep", "30"]).spawn()?;
    let pid = match container_pid(&mut running) {
        Ok(pid) => pid,
        Err(_) => return Err(ended_early(running)),
    };
    let exec_done = poll(10.0, || (cmdline(pid) == "sleep 30").then_some(()));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    kill_container(running, pid)?;
    exec_done.context("the container never ran `sleep 30`")?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or("?");
    let uids: Vec<&str> = uids.split_whitespace().collect();
    ensure!(
        uids == ["101000"; 4],
        "with --userns --user 1000:1000, the host should see COMMAND as uid 101000 (100000 + 1000); it sees {uids:?}"
    );
    // A uid the map does not cover cannot be become: one clear error line.
    let outcome = ctx.run().args(["--userns", "--user", "70000"]).cmd(["true"]).output()?;
    outcome.expect_status(125)?.expect_one_error_line(&["70000"]).context(
        "with --userns, --user 70000 (outside the map 0..65536) should fail in one line naming it",
    )?;
    Ok(())
}

fn bad_user_is_125_in_one_line(ctx: &Ctx) -> Result<()> {
    // 4294967295 is (uid_t)-1, which setresuid takes as "unchanged": it would stay root.
    for value in
        ["abc", "1000:x", "", ":1000", "1:2:3", "-1", "+1000", "1000:+0", "4294967295", "1000:4294967295"]
    {
        let outcome = ctx.run().arg(format!("--user={value}")).cmd(["true"]).output()?;
        if outcome.status == 0 {
            bail!("--user={value} should be refused (status 125), but COMMAND ran\n{}", outcome.transcript());
        }
        outcome
            .expect_status(125)?
            .expect_one_error_line(&["--user"])
            .with_context(|| format!("--user={value} should be refused in one line that names --user"))?;
    }
    Ok(())
}
