//! The `registry` task: the registry of step 10's checks (Debian's docker-registry,
//! never installed, see setup.rs) on 127.0.0.1:PORT, filled with the harness's test
//! images, until Ctrl-C; then it is stopped and its storage removed.

use anyhow::{Context, Result};
use harness::images::{self, TestImages};
use harness::registry::{Options, Registry};

use crate::{artifacts, display_path, rootfs, setup, target_dir};

/// What each test image is, for the listing.
const ABOUT: [(&str, &str); 5] = [
    (images::EXAMPLE, "the workshop rootfs (busybox, the probe) as one layer"),
    (images::SHARES_BASE, "example's layer and one more (a Docker schema 2 manifest)"),
    (images::CONFIGURED, "example's layer; Entrypoint, Cmd, Env, WorkingDir, User set"),
    (images::MULTI_PLATFORM, "an index: this machine's platform and two others"),
    (images::OTHER_PLATFORM_ONLY, "an index without this machine's platform"),
];

pub fn run(port: u16) -> Result<()> {
    setup::install(&["docker-registry", "skopeo"], "the registry task runs them")?;
    let probe = artifacts::build_probe()?;
    let rootfs = rootfs::prepare(&probe)?;
    // Blocked before the registry starts, so that Ctrl-C is only ever taken by sigwait
    // below (the registry and skopeo start with an empty mask: std resets it).
    let signals = block_signals();
    let images = TestImages::get(&rootfs).context("build the test images")?;
    let registry = Registry::start_with(Options { port: Some(port), ..Options::default() })
        .with_context(|| format!("start a registry on 127.0.0.1:{port} (another one there? try --port)"))?;
    images.push_all(&registry)?;

    let host = registry.host();
    let bin = display_path(&target_dir().join("debug/10-registry"));
    println!("\nA registry runs on {} (docker-registry 2.8, plain HTTP, no auth), with:", registry.url());
    for (name, about) in ABOUT {
        println!("  {host}/{}:latest\n      {about}", TestImages::repo(name));
    }
    println!("\nPull and run from it (plain HTTP is fine for 127.0.0.1):");
    println!("  sudo {bin} pull {host}/workshop/example");
    println!("  sudo {bin} run --image {host}/workshop/configured");
    println!("  sudo {bin} run --image {host}/workshop/example -- cat /etc/workshop-release");
    println!("Or as Docker Hub's mirror (`workshop/example` is docker.io/workshop/example):");
    println!(
        "  sudo env WORKSHOP_REGISTRY_MIRROR={} {bin} run --image workshop/example -- ls /",
        registry.url()
    );
    println!("Its API: curl {}/v2/_catalog", registry.url());
    println!("Its files (blobs under docker/registry/v2/blobs): {}", display_path(&registry.storage()));
    println!("\nCtrl-C stops it and removes its storage (the images you pulled stay: `image rm`).");

    let signal = wait_for(&signals);
    println!("\nregistry: signal {signal}: stopping");
    drop(registry);
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP, blocked in this thread (and those it starts).
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset on a local set, then pthread_sigmask with it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits until one of the blocked signals comes; its number.
fn wait_for(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: sigwait on a set of signals this thread has blocked.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}
