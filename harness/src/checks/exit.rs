//! Exit statuses (Docker's) and input errors: the conventions every step keeps.

use crate::{Check, Ctx, Run};
use anyhow::Result;

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(1, "exit::status_is_the_commands_own", status_is_the_commands_own),
        Check::new(1, "exit::death_by_signal_n_is_128_plus_n", death_by_signal_n_is_128_plus_n),
        Check::new(1, "exit::command_not_found_is_127", command_not_found_is_127),
        Check::new(1, "exit::not_executable_is_126", not_executable_is_126),
        Check::new(1, "errors::without_root_is_125_and_says_sudo", without_root_is_125_and_says_sudo),
        Check::new(1, "errors::bad_flags_are_125_in_one_line", bad_flags_are_125_in_one_line),
    ]
}

fn status_is_the_commands_own(ctx: &Ctx) -> Result<()> {
    ctx.run().cmd(["sh", "-c", "exit 7"]).output()?.expect_status(7)?;
    ctx.run().cmd(["true"]).output()?.expect_status(0)?;
    ctx.run().cmd(["false"]).output()?.expect_status(1)?;
    Ok(())
}

fn death_by_signal_n_is_128_plus_n(ctx: &Ctx) -> Result<()> {
    let running = ctx.run().cmd(["sleep", "30"]).spawn()?;
    let container = running.container_pid()?;
    // From the host, SIGKILL reaches even a PID 1 of another PID namespace.
    // SAFETY: kill(2) on the container process this test started.
    unsafe { libc::kill(container, libc::SIGKILL) };
    running.wait()?.expect_status(128 + libc::SIGKILL)?;
    Ok(())
}

fn command_not_found_is_127(ctx: &Ctx) -> Result<()> {
    let outcome = ctx.run().cmd(["no-such-command-here"]).output()?;
    outcome.expect_status(127)?.expect_one_error_line(&["no-such-command-here", "not found"])?;
    let outcome = ctx.run().cmd(["/no/such/program"]).output()?;
    outcome.expect_status(127)?.expect_one_error_line(&["/no/such/program"])?;
    Ok(())
}

fn not_executable_is_126(ctx: &Ctx) -> Result<()> {
    // /etc/passwd exists on the host and in the workshop rootfs, without an x bit.
    let outcome = ctx.run().cmd(["/etc/passwd"]).output()?;
    outcome.expect_status(126)?.expect_one_error_line(&["/etc/passwd", "ermission denied"])?;
    Ok(())
}

fn without_root_is_125_and_says_sudo(ctx: &Ctx) -> Result<()> {
    let outcome = ctx.run().cmd(["true"]).as_uid(65534).output()?;
    outcome.expect_status(125)?.expect_one_error_line(&["root", "sudo"])?;
    Ok(())
}

fn bad_flags_are_125_in_one_line(ctx: &Ctx) -> Result<()> {
    let bin = &ctx.step.bin;
    let cases: Vec<(Run, &[&str])> = vec![
        (ctx.run().arg("--no-such-flag").cmd(["true"]), &["--no-such-flag"]),
        (ctx.run(), &["COMMAND"]),
        (Run::raw(bin).args(["run", "--hostname"]), &["--hostname"]),
        (Run::raw(bin).args(["frobnicate"]), &["frobnicate"]),
    ];
    for (run, words) in cases {
        crate::figures::add(crate::figures::INPUTS, 1);
        run.output()?.expect_status(125)?.expect_one_error_line(words)?;
    }
    Ok(())
}
