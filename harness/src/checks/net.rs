//! Step 05: the network namespace, a bridge, veth pairs and a small IPAM.
//!
//! Everything here runs inside the harness's sandbox network namespace: the
//! "host side" below is that sandbox, never the machine's own network.

use crate::leaks::STATE;
use crate::{sandbox, Check, Ctx, Probe, Run, Running};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::time::{Duration, Instant};

use crate::paths::LEASES;

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(5, "net::eth0_has_an_address_and_a_gateway", eth0_has_an_address_and_a_gateway),
        Check::new(5, "net::two_containers_talk_over_the_bridge", two_containers_talk),
        Check::new(5, "net::the_host_side_reaches_a_container", the_host_side_reaches_a_container),
        Check::new(5, "net::none_has_only_loopback", none_has_only_loopback),
        Check::new(5, "net::host_shares_the_hosts_network", host_shares_the_hosts_network).plain_only(),
        Check::new(5, "net::containers_at_once_never_share_an_address", never_share_an_address),
        Check::new(5, "net::nothing_is_left_after_the_last_container", nothing_is_left_after_the_last),
        Check::new(5, "net::a_stale_lease_is_taken_back", a_stale_lease_is_taken_back).plain_only(),
        Check::new(5, "errors::an_exhausted_pool_is_125", an_exhausted_pool_is_125).plain_only(),
        Check::new(5, "errors::bad_net_is_125_in_one_line", bad_net_is_125).plain_only(),
    ]
}

/// The interface called `name` in the probe's report.
fn interface<'a>(seen: &'a Probe, name: &str) -> Result<&'a Value> {
    let interfaces = seen.0["interfaces"].as_array().context("probe: no interfaces")?;
    interfaces.iter().find(|i| i["name"] == name).with_context(|| format!("no {name} inside the container"))
}

fn ipv4_of(interface: &Value) -> Option<String> {
    let addrs = interface["addrs"].as_array()?;
    addrs.iter().filter_map(Value::as_str).find(|a| !a.contains(':')).map(str::to_string)
}

/// The address leased to the runtime with this pid (a lease reads "ID PID STARTTIME").
fn leased_address(runtime: i32) -> Result<String> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        for entry in std::fs::read_dir(LEASES).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if text.split_whitespace().nth(1) == Some(&runtime.to_string()) {
                return Ok(entry.file_name().to_string_lossy().into_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the runtime (pid {runtime}) never leased an address")
}

/// A container listening on `port`; returns it running, with its address.
fn listener(ctx: &Ctx, port: u16) -> Result<(Running, String)> {
    let running =
        ctx.run().cmd(["/bin/probe", "--listen", &port.to_string(), "--timeout-ms", "10000"]).spawn()?;
    let address = leased_address(running.pid())?;
    Ok((running, address))
}

fn eth0_has_an_address_and_a_gateway(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&[], &[])?;
    let eth0 = interface(&seen, "eth0")?;
    ensure!(eth0["up"] == true, "eth0 is down");
    let address = ipv4_of(eth0).context("eth0 has no IPv4 address")?;
    ensure!(
        address.starts_with("10.77.0.") && address.ends_with("/24"),
        "eth0 has {address}, not 10.77.0.x/24"
    );
    ensure!(interface(&seen, "lo")?["up"] == true, "loopback is down");
    ensure!(
        seen.0["default_gateway"] == "10.77.0.1",
        "the default route is {}, not via 10.77.0.1",
        seen.0["default_gateway"]
    );
    Ok(())
}

fn two_containers_talk(ctx: &Ctx) -> Result<()> {
    let (server, address) = listener(ctx, 8080)?;
    let client = ctx.probe(&[], &["--connect", &format!("{address}:8080"), "--timeout-ms", "5000"]);
    let served = server.wait()?;
    let reply = client?.action(0)?.expect_ok()?.clone();
    ensure!(reply["reply"] == "pong", "the client got {reply}, not pong");
    let received = Probe::parse(served.expect_status(0)?)?.action(0)?.expect_ok()?.clone();
    ensure!(received["received"] == "ping", "the server got {received}, not ping");
    Ok(())
}

fn the_host_side_reaches_a_container(ctx: &Ctx) -> Result<()> {
    let (server, address) = listener(ctx, 8081)?;
    // The host's side of the bridge: the probe run directly in the sandbox.
    let host = Run::raw(&ctx.workshop.probe).args(["--connect", &format!("{address}:8081")]).output()?;
    server.wait()?.expect_status(0)?;
    let reply = Probe::parse(host.expect_status(0)?)?.action(0)?.expect_ok()?.clone();
    ensure!(reply["reply"] == "pong", "from the host side, the container answered {reply}");
    Ok(())
}

fn none_has_only_loopback(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&["--net", "none"], &[])?;
    let names: Vec<&str> =
        seen.0["interfaces"].as_array().into_iter().flatten().filter_map(|i| i["name"].as_str()).collect();
    ensure!(names == ["lo"], "with --net none the container has {names:?}, not just lo");
    ensure!(interface(&seen, "lo")?["up"] == true, "loopback is down");
    Ok(())
}

fn host_shares_the_hosts_network(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&["--net", "host"], &[])?;
    let sandbox = sandbox::get().context("no sandbox")?.inode();
    ensure!(
        seen.ns("net")? == sandbox,
        "with --net host the container should be in the runtime's network namespace"
    );
    Ok(())
}

fn never_share_an_address(ctx: &Ctx) -> Result<()> {
    let runs: Vec<Running> =
        (0..6).map(|_| ctx.run().cmd(["/bin/probe", "--sleep-ms", "300"]).spawn()).collect::<Result<_>>()?;
    let mut addresses = Vec::new();
    for running in runs {
        let outcome = running.wait()?;
        let seen = Probe::parse(outcome.expect_status(0)?)?;
        addresses.push(ipv4_of(interface(&seen, "eth0")?).context("eth0 has no address")?);
    }
    let mut unique = addresses.clone();
    unique.sort();
    unique.dedup();
    ensure!(unique.len() == addresses.len(), "containers running at once shared addresses: {addresses:?}");
    Ok(())
}

fn nothing_is_left_after_the_last(ctx: &Ctx) -> Result<()> {
    ctx.probe(&[], &[])?;
    // The runtime removes the bridge; the kernel deletes the veth pair with the
    // container's namespace, in the background: give it a second.
    let sandbox = sandbox::get().context("no sandbox")?;
    let mut links = sandbox.links();
    for _ in 0..100 {
        if links == ["lo"] {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        links = sandbox.links();
    }
    ensure!(links == ["lo"], "after the container, the host side still has {links:?}");
    let leases: Vec<_> =
        std::fs::read_dir(LEASES).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
    ensure!(leases.is_empty(), "leases left in {LEASES}: {leases:?}");
    Ok(())
}

/// Lease files this check wrote; removed even when the check fails.
struct FakeLeases(Vec<String>);

impl Drop for FakeLeases {
    fn drop(&mut self) {
        for address in &self.0 {
            let _ = std::fs::remove_file(format!("{LEASES}/{address}"));
        }
    }
}

fn a_stale_lease_is_taken_back(ctx: &Ctx) -> Result<()> {
    // A lease whose runtime died (it was SIGKILLed, say): `true` has exited.
    let mut gone = std::process::Command::new("true").spawn()?;
    let dead = gone.id();
    gone.wait()?;
    std::fs::create_dir_all(LEASES)?;
    let _fake = FakeLeases(vec!["10.77.0.2".into()]);
    std::fs::write(format!("{LEASES}/10.77.0.2"), format!("deadbeef0000 {dead} 1\n"))?;
    let seen = ctx.probe(&[], &[])?;
    let address = ipv4_of(interface(&seen, "eth0")?);
    ensure!(
        address.as_deref() == Some("10.77.0.2/24"),
        "the stale lease of 10.77.0.2 was not reused: got {address:?}"
    );
    Ok(())
}

fn an_exhausted_pool_is_125(ctx: &Ctx) -> Result<()> {
    // Every address held by a live process (this harness).
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let start =
        stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)).context("stat")?;
    std::fs::create_dir_all(LEASES)?;
    let fake = FakeLeases((2..=254).map(|host| format!("10.77.0.{host}")).collect());
    for address in &fake.0 {
        std::fs::write(
            format!("{LEASES}/{address}"),
            format!("fake00000000 {} {start}\n", std::process::id()),
        )?;
    }
    let outcome = ctx.run().cmd(["true"]).output()?;
    outcome.expect_status(125)?.expect_one_error_line(&["no free address"])?;
    drop(fake);
    ensure!(std::fs::read_dir(STATE).is_ok(), "the state directory is gone");
    Ok(())
}

fn bad_net_is_125(ctx: &Ctx) -> Result<()> {
    crate::figures::add(crate::figures::INPUTS, 2);
    ctx.run()
        .args(["--net", "bogus"])
        .cmd(["true"])
        .output()?
        .expect_status(125)?
        .expect_one_error_line(&["--net"])?;
    let outcome = ctx.run().args(["--net", "host", "--userns"]).cmd(["true"]).output()?;
    outcome.expect_status(125)?.expect_one_error_line(&["--net host", "--userns"])?;
    Ok(())
}
