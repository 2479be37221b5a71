//! Exercise 05: publish a container's TCP port on the host (`-p HOST:CONTAINER`).
//!
//! The container's address (10.77.0.x) is reachable from the host, but only
//! through the bridge: nobody else can connect to it, and it changes from run
//! to run. `docker run -p 8080:80` makes the container's port 80 reachable
//! as port 8080 of the host. Docker does it with iptables rules, or, like
//! here, with a small userspace proxy (`docker-proxy`): it listens on the
//! host's port, on every address of the runtime's network namespace, and
//! forwards each connection it accepts to the container's address and port.
//! The proxy belongs to the container's life: it stops when the container
//! ends, before the container's address is given back to the IPAM (another
//! container could get it next, and would receive this container's traffic).
//!
//! The proxy runs in the runtime's process, in threads: one per published
//! port accepts connections (`serve`), and each connection gets threads that
//! copy bytes both ways (`forward`). The runtime is single-threaded until the
//! container has been cloned (see `process::spawn`), so the threads start
//! afterwards (`Proxy::start`), while the ports are taken before the
//! container starts (`Proxy::bind`), so that a port in use is an error (125)
//! before anything runs.
//! Manual: tcp(7), socket(7), shutdown(2).

use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
// EXERCISE: the imports your code needs.
use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;
// END EXERCISE

/// `-p HOST:CONTAINER`: a TCP port of the host side, and the container's port it leads to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Port {
    pub host: u16,
    pub container: u16,
}

/// Parses `-p HOST:CONTAINER`: two port numbers from 1 to 65535, like
/// `8080:80`. Anything else (one number, 0, 70000, `8080:80/udp`, ...) is an
/// error; clap prints it in one line that names `--publish`, and the
/// runtime exits with 125.
///
/// Book: chapter 05, "Exercise: publish a port".
pub fn parse(spec: &str) -> Result<Port> {
    // EXERCISE: split HOST:CONTAINER and parse two port numbers (1 to 65535).
    // parse::<u16> takes a leading '+': only digits are a port number.
    let digits = |text: &str| text.bytes().all(|b| b.is_ascii_digit());
    let port = |text: &str| text.parse::<u16>().ok().filter(|&port| port > 0 && digits(text));
    let Some((host, container)) = spec.split_once(':') else {
        bail!("expected HOST:CONTAINER, like 8080:80, not {spec:?}");
    };
    let (Some(host), Some(container)) = (port(host), port(container)) else {
        bail!("expected HOST:CONTAINER as two TCP ports from 1 to 65535, like 8080:80, not {spec:?}");
    };
    Ok(Port { host, container })
    // END EXERCISE
}

/// The published ports of one container: their listening sockets, and
/// once started, the threads that serve them.
pub struct Proxy {
    /// Each host port's listener, with the container port it leads to.
    listeners: Vec<(TcpListener, u16)>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Host side, before clone: takes every host port now, so that a port
    /// in use stops the runtime (125) before the container exists.
    pub fn bind(ports: &[Port]) -> Result<Proxy> {
        let mut listeners = Vec::new();
        for port in ports {
            listeners.push((listen(port.host)?, port.container));
        }
        Ok(Proxy { listeners, stopping: Arc::new(AtomicBool::new(false)), threads: Vec::new() })
    }

    /// Host side, once the container runs: one thread per port accepts
    /// connections and forwards them to `container`'s address.
    pub fn start(&mut self, container: Option<Ipv4Addr>) -> Result<()> {
        let Some(address) = container else {
            if self.listeners.is_empty() {
                return Ok(());
            }
            bail!("--publish needs the container's address on the bridge (--net bridge)");
        };
        for (listener, port) in &self.listeners {
            let listener = listener.try_clone().context("clone a listening socket")?;
            let (upstream, stopping) = (SocketAddrV4::new(address, *port), self.stopping.clone());
            self.threads.push(std::thread::spawn(move || serve(listener, upstream, &stopping)));
        }
        Ok(())
    }

    /// When the container has ended: stop accepting, and wait for the
    /// accepting threads to return. shutdown(2) on a listening socket wakes
    /// a thread blocked in accept(2), which then fails (EINVAL): `serve`
    /// sees `stopping` and returns. Connections still open end by
    /// themselves: the container's side of each is gone with its network.
    pub fn stop(&mut self) {
        self.stopping.store(true, SeqCst);
        for (listener, _) in &self.listeners {
            // SAFETY: shutdown(2) on a socket that we own and that stays open.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.listeners.clear();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes host port `port` on every address of the runtime's network
/// namespace (0.0.0.0): a connection to 127.0.0.1:PORT, or to the bridge's
/// 10.77.0.1:PORT, reaches it. A port that something else holds is an
/// error that names it (EADDRINUSE: "Address in use").
///
/// Book: chapter 05, "Exercise: publish a port".
fn listen(port: u16) -> Result<TcpListener> {
    // EXERCISE: listen on 0.0.0.0:port.
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("--publish: cannot listen on host port {port}"))
    // END EXERCISE
}

/// One thread per published port: takes connections one after the other
/// and gives each to `forward`, in a thread of its own, so that the next
/// one is taken at once. Returns once the proxy stops (`Proxy::stop` makes
/// accept(2) fail, which wakes us up).
fn serve(listener: TcpListener, upstream: SocketAddrV4, stopping: &AtomicBool) {
    loop {
        let connection = accept(&listener, upstream);
        if stopping.load(SeqCst) {
            return;
        }
        if let Some((client, server)) = connection {
            std::thread::spawn(move || forward(client, server));
        }
    }
}

/// Waits for the next connection to `listener` (the client, on the host
/// side), then opens one to the container at `upstream` (the server) for
/// it. None when accept fails (as it does once the proxy stops), or when
/// the container does not answer (nothing listens there yet): then close
/// the client's connection (drop it), so the client sees it end at once.
///
/// Book: chapter 05, "Exercise: publish a port".
fn accept(listener: &TcpListener, upstream: SocketAddrV4) -> Option<(TcpStream, TcpStream)> {
    // EXERCISE: accept a client, connect to `upstream`; both, or None.
    let (client, _) = listener.accept().ok()?;
    let server = TcpStream::connect_timeout(&upstream.into(), Duration::from_secs(5)).ok()?;
    Some((client, server))
    // END EXERCISE
}

/// Copies bytes both ways between the client (the host side) and the server
/// (the container) until both directions are done. When one side has no
/// more to send (read gives 0 bytes), tell the other with
/// `shutdown(Shutdown::Write)`: it then reads the end of the stream too,
/// while its answer can still come back. One direction may run in a thread
/// of its own (`try_clone` gives a second handle on a stream).
///
/// Book: chapter 05, "Exercise: publish a port".
fn forward(client: TcpStream, server: TcpStream) {
    // EXERCISE: copy client -> server and server -> client, each until its end.
    fn pump(mut from: &TcpStream, mut to: &TcpStream) {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buffer) {
            if n == 0 || to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }
    let (Ok(client_again), Ok(server_again)) = (client.try_clone(), server.try_clone()) else { return };
    let upstream = std::thread::spawn(move || pump(&client_again, &server_again));
    pump(&server, &client);
    let _ = upstream.join();
    // END EXERCISE
}

#[cfg(test)]
mod tests {
    // EXERCISE: your unit tests for parse, if you like.
    use super::*;

    #[test]
    fn parses_host_and_container_ports() {
        assert_eq!(parse("8080:80").unwrap(), Port { host: 8080, container: 80 });
        assert_eq!(parse("65535:1").unwrap(), Port { host: 65535, container: 1 });
    }

    #[test]
    fn refuses_bad_specs() {
        for spec in [
            "",
            "80",
            "8080:",
            ":80",
            "0:80",
            "8080:0",
            "70000:80",
            "a:80",
            "8080:80/udp",
            "1:2:3",
            "+80:80",
            "80:+80",
        ] {
            assert!(parse(spec).is_err(), "{spec:?}");
        }
    }
    // END EXERCISE
}
