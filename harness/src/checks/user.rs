//! Step 04: the user namespace makes container root harmless to the host.

use crate::{Check, Ctx, Running};
use anyhow::{bail, ensure, Context, Result};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(4, "user::root_inside_is_uid_100000_outside", root_inside_is_uid_100000_outside)
            .plain_only(),
        Check::new(4, "user::files_made_inside_belong_to_the_mapped_uid", files_belong_to_the_mapped_uid)
            .plain_only(),
        Check::new(4, "user::container_root_cannot_mknod_a_block_device", cannot_mknod_a_block_device)
            .plain_only()
            .escape(),
        Check::new(4, "user::userns_remap_picks_the_range", userns_remap_picks_the_range).plain_only(),
        Check::new(4, "user::without_userns_root_is_the_hosts", without_userns_root_is_the_hosts)
            .plain_only(),
        Check::new(4, "errors::bad_userns_remap_is_125_in_one_line", bad_userns_remap_is_125).plain_only(),
    ]
}

/// The uid (or gid) line of /proc/PID/status, as seen from the host.
fn host_ids(pid: i32, which: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line =
        status.lines().find_map(|l| l.strip_prefix(which)).context("no id line in /proc/PID/status")?;
    Ok(line.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Stops a container that a check started with `sleep`, and checks it ended by SIGKILL.
fn kill_container(running: Running, pid: i32) -> Result<()> {
    // SAFETY: kill(2) on the container process this check started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    running.wait()?.expect_status(128 + libc::SIGKILL)?;
    Ok(())
}

fn root_inside_is_uid_100000_outside(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&["--userns"], &[])?;
    ensure!(seen.int("uid")? == 0 && seen.int("gid")? == 0, "inside, the container should be uid/gid 0");
    let map: Vec<String> = seen.str("uid_map")?.split_whitespace().map(String::from).collect();
    ensure!(map == ["0", "100000", "65536"], "uid_map inside is {map:?}, not 0 100000 65536");
    let running = ctx.run().arg("--userns").cmd(["sleep", "30"]).spawn()?;
    let pid = running.container_pid()?;
    let (uids, gids) = (host_ids(pid, "Uid:")?, host_ids(pid, "Gid:")?);
    kill_container(running, pid)?;
    ensure!(uids == "100000 100000 100000 100000", "from the host, the container's uids are {uids}");
    ensure!(gids == "100000 100000 100000 100000", "from the host, the container's gids are {gids}");
    Ok(())
}

fn files_belong_to_the_mapped_uid(ctx: &Ctx) -> Result<()> {
    let script = "echo hi > /tmp/made-inside && sleep 30";
    let running = ctx.run().arg("--userns").cmd(["sh", "-c", script]).spawn()?;
    let pid = running.container_pid()?;
    // The host sees the container's root through /proc/PID/root.
    let file = std::path::PathBuf::from(format!("/proc/{pid}/root/tmp/made-inside"));
    let until = Instant::now() + Duration::from_secs(10);
    while !file.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let owner = file.metadata().map(|m| (m.uid(), m.gid()));
    let _ = std::fs::remove_file(&file);
    kill_container(running, pid)?;
    let owner = owner.context("the container's file never appeared")?;
    ensure!(
        owner == (100000, 100000),
        "a file made by container root belongs to {owner:?} on the host, not 100000"
    );
    Ok(())
}

fn cannot_mknod_a_block_device(ctx: &Ctx) -> Result<()> {
    // Control: real root in the container (no --userns) may make one.
    let seen = ctx.probe(&[], &["--mknod-block", "/tmp/blk", "--remove", "/tmp/blk"])?;
    seen.action(0)?.expect_ok().context("control: without --userns, root may mknod")?;
    let seen = ctx.probe(&["--userns"], &["--mknod-block", "/tmp/blk"])?;
    seen.action(0)?
        .expect_errno(libc::EPERM)
        .context("container root under --userns must not make device nodes")
}

fn userns_remap_picks_the_range(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&["--userns-remap", "200000:1000"], &[])?;
    let map: Vec<String> = seen.str("uid_map")?.split_whitespace().map(String::from).collect();
    ensure!(map == ["0", "200000", "1000"], "uid_map is {map:?}, not 0 200000 1000");
    Ok(())
}

fn without_userns_root_is_the_hosts(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&[], &[])?;
    let map: Vec<String> = seen.str("uid_map")?.split_whitespace().map(String::from).collect();
    if map != ["0", "0", "4294967295"] {
        bail!("without --userns the container should share the host's ids; uid_map is {map:?}");
    }
    Ok(())
}

fn bad_userns_remap_is_125(ctx: &Ctx) -> Result<()> {
    for value in ["0", "abc", "100000:0", "4294967295:2"] {
        crate::figures::add(crate::figures::INPUTS, 1);
        let outcome = ctx.run().arg(format!("--userns-remap={value}")).cmd(["true"]).output()?;
        outcome.expect_status(125)?.expect_one_error_line(&["--userns-remap"])?;
    }
    Ok(())
}
