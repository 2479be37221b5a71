//! Exercise 05: `-p HOST:CONTAINER` publishes a container's TCP port as a
//! port of the host side, through a proxy in the runtime.
//!
//! The host side is the harness's sandbox network namespace, where every
//! runtime runs: a connection to 127.0.0.1:HOST there must reach the
//! container's port. The client is the probe, run directly in the sandbox.

use super::{kill_container, poll, started, Exercise, Graded};
use crate::{Ctx, Outcome, Probe, Run, Running};
use anyhow::{bail, ensure, Context, Result};
use std::time::{Duration, Instant};

pub fn exercise() -> Exercise {
    Exercise {
        number: 5,
        name: "05-net",
        title: "publish a port (-p HOST:CONTAINER)",
        checks: vec![
            Graded::new(5, "publish::a_published_port_reaches_the_container", 3, reaches_the_container),
            Graded::new(
                5,
                "publish::every_connection_on_every_address",
                2,
                every_connection_on_every_address,
            ),
            Graded::new(
                5,
                "publish::the_end_of_the_input_reaches_the_container",
                2,
                the_end_of_the_input_reaches_the_container,
            ),
            Graded::new(
                5,
                "publish::the_proxy_stops_with_the_container",
                1,
                the_proxy_stops_with_the_container,
            ),
            Graded::new(5, "errors::bad_publish_specs_are_125_in_one_line", 2, bad_publish_specs_are_125),
        ],
        needs_the_holes: &[],
    }
}

/// A container whose probe answers `listens` connections, one after the
/// other, on the given container ports.
fn server(ctx: &Ctx, flags: &[&str], listens: &[u16]) -> Result<Running> {
    let mut command = vec!["/bin/probe".to_string()];
    for port in listens {
        command.extend(["--listen".to_string(), port.to_string()]);
    }
    command.extend(["--timeout-ms".into(), "10000".into()]);
    ctx.run().args(flags).cmd(command).timeout(Duration::from_secs(15)).spawn()
}

/// The host side connects to `address` once: the reply, or why there was none.
fn connect_once(ctx: &Ctx, address: &str, timeout_ms: u32) -> Result<Result<String, String>> {
    let timeout = timeout_ms.to_string();
    let outcome =
        Run::raw(&ctx.workshop.probe).args(["--connect", address, "--timeout-ms", &timeout]).output()?;
    let seen = Probe::parse(outcome.expect_status(0)?)?;
    let action = seen.action(0)?;
    Ok(match action.ok() {
        true => Ok(action.value()["reply"].as_str().unwrap_or_default().to_string()),
        false => Err(action.0["error"].as_str().unwrap_or("failed").to_string()),
    })
}

/// Connects from the host side until the container answers "pong": the
/// proxy may take a connection before the container listens, and then has
/// to close it (the reply is empty). Fails if the runtime ends first.
fn pong(ctx: &Ctx, running: &mut Running, address: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(8);
    let mut last = String::from("nothing");
    while Instant::now() < until {
        match connect_once(ctx, address, 2000)? {
            Ok(reply) if reply == "pong" => return Ok(()),
            Ok(reply) => last = format!("the reply {reply:?}"),
            Err(error) => last = error,
        }
        if !running.is_running() {
            bail!("the runtime ended before {address} answered (the last try got {last})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("from the host side, {address} never answered \"pong\" in 8 s (the last try got {last})")
}

/// Runs `steps` against a running server; on failure, ends the container
/// and adds what the runtime printed (a todo!() in a proxy thread shows there).
fn with_server(running: Running, steps: impl FnOnce(&mut Running) -> Result<()>) -> Result<Outcome> {
    let (mut running, pid1) = started(running)?;
    let Err(err) = steps(&mut running) else { return running.wait() };
    if running.is_running() {
        // SAFETY: kill(2) on the container process this check started.
        unsafe { libc::kill(pid1, libc::SIGKILL) };
    }
    let outcome = running.wait()?;
    bail!("{err:#}\n{}", outcome.transcript())
}

/// Whether something in the network namespace of `pid` listens on TCP `port`
/// (/proc/PID/net/tcp and tcp6: local address in hex, state 0A is LISTEN).
fn listens(pid: i32, port: u16) -> bool {
    let read = |file: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
    let tables = [read("tcp"), read("tcp6")];
    tables.iter().flat_map(|table| table.lines().skip(1)).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1).and_then(|a| a.rsplit_once(':')).map(|(_, p)| p);
        local_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port) && fields.get(3) == Some(&"0A")
    })
}

/// The container's probe: every connection it served got "ping".
fn served(outcome: &Outcome, count: usize) -> Result<()> {
    let seen = Probe::parse(outcome.expect_status(0)?)?;
    for n in 0..count {
        let got = seen.action(n)?.expect_ok()?.clone();
        ensure!(got["received"] == "ping", "the container's port got {got}, not the client's \"ping\"");
    }
    Ok(())
}

fn reaches_the_container(ctx: &Ctx) -> Result<()> {
    // Control: the container listens, but nothing on the host side does.
    let (running, pid1) = started(server(ctx, &[], &[8080])?)?;
    let listening = poll(10.0, || listens(pid1, 8080).then_some(()));
    let seen = match listening {
        Some(()) => connect_once(ctx, "127.0.0.1:18080", 500),
        None => Ok(Err("-".into())),
    };
    kill_container(running, pid1)?;
    listening.context("control: the container's probe never listened on port 8080")?;
    if let Ok(reply) = seen? {
        bail!("control: without -p, 127.0.0.1:18080 of the host side answered {reply:?}: is something else there?");
    }

    let running = server(ctx, &["-p", "18080:8080"], &[8080])?;
    let outcome = with_server(running, |running| pong(ctx, running, "127.0.0.1:18080"))
        .context("with -p 18080:8080, a connection to 127.0.0.1:18080 on the host side should reach port 8080 of the container")?;
    served(&outcome, 1)
}

fn every_connection_on_every_address(ctx: &Ctx) -> Result<()> {
    let flags = ["-p", "18080:8080", "-p", "18081:8081"];
    let running = server(ctx, &flags, &[8080, 8080, 8081])?;
    let outcome = with_server(running, |running| {
        pong(ctx, running, "127.0.0.1:18080").context("the first connection to 127.0.0.1:18080")?;
        pong(ctx, running, "10.77.0.1:18080").context(
            "a second connection to the same port, on another address of the host side (the bridge's 10.77.0.1): \
             listen on every address (0.0.0.0) and accept connection after connection",
        )?;
        pong(ctx, running, "127.0.0.1:18081").context("a second published port, -p 18081:8081")
    })
    .context("with -p 18080:8080 -p 18081:8081")?;
    served(&outcome, 3)
}

fn the_end_of_the_input_reaches_the_container(ctx: &Ctx) -> Result<()> {
    // A server that answers once its input has ended (sed, sort, a request
    // body read to its end): busybox nc hands the connection to sed. The
    // client, busybox nc too, half-closes when its input ends (echo's).
    let server = ["nc", "-l", "-p", "8080", "-e", "sed", "s/^/got:/"];
    let running =
        ctx.run().args(["-p", "18080:8080"]).cmd(server).timeout(Duration::from_secs(20)).spawn()?;
    let (mut running, pid1) = started(running)?;
    let busybox = ctx.workshop.rootfs.join("bin/busybox");
    let client = format!("echo hi | {} nc 127.0.0.1 18080", busybox.display());
    let listening = poll(10.0, || listens(pid1, 8080).then_some(()));
    let reply = listening
        .map(|()| Run::raw(&busybox).args(["sh", "-c", &client]).timeout(Duration::from_secs(5)).output());
    if running.is_running() {
        // SAFETY: kill(2) on the container process this check started.
        unsafe { libc::kill(pid1, libc::SIGKILL) };
    }
    let outcome = running.wait()?;
    let problem = match reply {
        None => "the container's nc never listened on port 8080".to_string(),
        Some(Ok(reply)) if reply.status == 0 && reply.stdout == "got:hi\n" => return Ok(()),
        Some(Ok(reply)) => format!(
            "the client got {:?} (status {}), not \"got:hi\"\n{}",
            reply.stdout,
            reply.status,
            reply.transcript()
        ),
        Some(Err(err)) => format!(
            "the client got no answer in 5 s ({err:#}): the server in the container waits for the end of \
             the client's input, and never saw it. When one side's read gives 0 bytes, `forward` must \
             tell the other side with shutdown(Shutdown::Write)"
        ),
    };
    bail!(
        "with -p 18080:8080, `echo hi | nc 127.0.0.1 18080` on the host side, to `nc -l -p 8080 -e sed \
         s/^/got:/` in the container: {problem}\n{}",
        outcome.transcript()
    )
}

fn the_proxy_stops_with_the_container(ctx: &Ctx) -> Result<()> {
    let running = server(ctx, &["-p", "18080:8080"], &[8080])?;
    let outcome = with_server(running, |running| pong(ctx, running, "127.0.0.1:18080"));
    let outcome = outcome.context(
        "with -p 18080:8080, the container answered once and ended; the runtime should stop its proxy and exit",
    )?;
    served(&outcome, 1)?;
    match connect_once(ctx, "127.0.0.1:18080", 300)? {
        Err(error) if error.contains("ECONNREFUSED") => {}
        seen => bail!(
            "after the container ended, 127.0.0.1:18080 should refuse connections (the proxy stops with the \
             container); a connection got {seen:?}"
        ),
    }
    let outcome = ctx.run().args(["-p", "18080:8080"]).cmd(["sh", "-c", "exit 3"]).output()?;
    outcome.expect_status(3).context("with -p, the exit status is still COMMAND's")?;
    Ok(())
}

fn bad_publish_specs_are_125(ctx: &Ctx) -> Result<()> {
    for spec in [
        "80",
        "0:80",
        "8080:0",
        "70000:80",
        "a:80",
        "+8080:80",
        "8080:+80",
        "8080:",
        ":80",
        "8080:80/udp",
        "",
    ] {
        let outcome = ctx.run().arg(format!("--publish={spec}")).cmd(["true"]).output()?;
        if outcome.status == 0 {
            bail!("-p {spec:?} should be refused (status 125), but COMMAND ran\n{}", outcome.transcript());
        }
        outcome
            .expect_status(125)?
            .expect_one_error_line(&["--publish"])
            .with_context(|| format!("-p {spec:?} should be refused in one line that names --publish"))?;
    }
    // The same host port twice: the second one is in use. Nothing may start.
    let outcome = ctx.run().args(["-p", "18080:80", "-p", "18080:81"]).cmd(["true"]).output()?;
    outcome.expect_status(125)?.expect_one_error_line(&["18080"]).context(
        "-p 18080:80 -p 18080:81: the second host port is in use, an error in one line that names it",
    )?;
    let outcome = ctx.run().args(["--net", "none", "-p", "18080:80"]).cmd(["true"]).output()?;
    outcome.expect_status(125)?.expect_one_error_line(&["--publish"])?;
    Ok(())
}
