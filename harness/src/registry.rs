//! A real registry for step 10's checks: Debian's docker-registry (distribution
//! 2.8) on 127.0.0.1, with its own storage directory, filled with `skopeo copy`.
//!
//! It runs where the binaries under test run: in the test sandbox's network
//! namespace when there is one (the harness), else on the machine's loopback
//! (`cargo xtask registry`). Dropping it stops it and removes its storage.

use crate::run::Run;
use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Step 10 pulls docker.io references from this URL instead of Docker Hub.
pub const MIRROR_VAR: &str = "WORKSHOP_REGISTRY_MIRROR";
/// What every run gets unless a check says otherwise: a closed loopback port
/// (the discard port), so that no test can reach the internet.
pub const NO_MIRROR: &str = "http://127.0.0.1:9";
/// Names another docker-registry binary than the one `cargo xtask setup` unpacks.
pub const BINARY_VAR: &str = "WORKSHOP_DOCKER_REGISTRY";
/// skopeo runs as this uid when we are root (`nobody`): it then writes nothing
/// on the host (as root it keeps a cache in /var/lib/containers).
const SKOPEO_UID: u32 = 65534;
/// How long the registry may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How to start a registry.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// This port, or (None) a free one.
    pub port: Option<u16>,
    pub auth: Auth,
}

/// Who may pull and push.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// Anyone, no credentials.
    #[default]
    Anonymous,
    /// Basic authentication with this user and password (an htpasswd file, bcrypt).
    Basic { user: String, password: String },
    /// Bearer tokens from a token server of ours (see `crate::token`), as Docker
    /// Hub does: anonymous tokens may pull all but `workshop/private/...`; with this
    /// user and password, tokens may do what they ask.
    Token { user: String, password: String },
}

/// A running registry; stopped (SIGTERM, then SIGKILL) and removed on drop.
pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    /// Holds config.yml, the log, storage/ (the registry's files) and skopeo's scratch files.
    dir: PathBuf,
    pub auth: Auth,
    /// The token server of `Auth::Token` (stopped after the registry).
    token_server: Option<crate::token::TokenServer>,
}

impl Registry {
    /// An anonymous registry on a free port.
    pub fn start() -> Result<Registry> {
        Registry::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Result<Registry> {
        let binary = binary()?;
        let dir = scratch_dir()?;
        let mut registry =
            Registry { child: None, port: 0, dir, auth: options.auth.clone(), token_server: None };
        std::fs::create_dir_all(registry.storage())?;
        let skopeo_dir = registry.dir.join("skopeo");
        std::fs::create_dir(&skopeo_dir)?;
        if is_root() {
            std::os::unix::fs::chown(&skopeo_dir, Some(SKOPEO_UID), Some(SKOPEO_UID))?;
        }
        let auth = match &options.auth {
            Auth::Anonymous => String::new(),
            Auth::Basic { user, password } => {
                let htpasswd = registry.dir.join("htpasswd");
                std::fs::write(&htpasswd, htpasswd_line(user, password)?)?;
                format!("auth:\n  htpasswd:\n    realm: workshop\n    path: {}\n", htpasswd.display())
            }
            Auth::Token { user, password } => {
                let server = crate::token::TokenServer::start(&registry.dir.join("token"), user, password)?;
                let config = server.registry_config();
                registry.token_server = Some(server);
                config
            }
        };
        // A port that another process takes between our probe and the registry's bind
        // makes it exit at once: try another (unless the port was asked for).
        for attempt in 1.. {
            let port = match options.port {
                Some(port) => port,
                None => free_port()?,
            };
            let config = registry.dir.join("config.yml");
            std::fs::write(&config, config_yml(&registry.storage(), port, &auth))?;
            let log = std::fs::File::create(registry.log_path())?;
            let mut cmd = Command::new(&binary);
            cmd.arg("serve").arg(&config).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
            // Its own process group: a Ctrl-C meant for `cargo xtask registry` reaches only
            // the task, which then stops the registry itself; and it dies with us.
            cmd.process_group(0);
            // SAFETY: only prctl(2) between fork and exec.
            unsafe {
                cmd.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                })
            };
            crate::sandbox::inside(&mut cmd);
            registry.child = Some(cmd.spawn().with_context(|| format!("start {}", binary.display()))?);
            registry.port = port;
            match registry.wait_until_up() {
                Ok(()) => return Ok(registry),
                Err(err) => {
                    registry.stop_process();
                    let log = std::fs::read_to_string(registry.log_path()).unwrap_or_default();
                    if options.port.is_none() && attempt < 5 && log.contains("address already in use") {
                        continue;
                    }
                    return Err(err.context(format!(
                        "{} serve {}; its log:\n{log}",
                        binary.display(),
                        config.display()
                    )));
                }
            }
        }
        unreachable!()
    }

    /// `127.0.0.1:PORT`: the host part of the references into this registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`, for WORKSHOP_REGISTRY_MIRROR.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `127.0.0.1:PORT/REPO`: a reference without its tag or digest.
    pub fn repo(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host())
    }

    /// The registry's files (distribution's filesystem driver: docker/registry/v2/...).
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// The file that holds a blob, by its digest (`sha256:HEX`), in the storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// What the registry logged (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `skopeo copy` of the image (or index: `all`) tagged `tag` in the OCI layout
    /// `layout` to `REPO:TAG` here. `format` converts it ("v2s2": Docker's own manifest);
    /// without it the manifests are pushed byte for byte. Returns the manifest digest.
    pub fn push(&self, layout: &Path, tag: &str, to: &str, push: Push) -> Result<String> {
        let digest_file = self.dir.join("skopeo").join(format!("digest-{}", to.replace(['/', ':'], "_")));
        let mut run = Run::raw("skopeo")
            .args(["--insecure-policy", "copy", "--quiet", "--retry-times", "0", "--dest-tls-verify=false"])
            .arg("--digestfile")
            .arg(&digest_file)
            .timeout(Duration::from_secs(120))
            // No user configuration (auth files, registries.conf of $HOME) and no cache.
            .env("HOME", self.dir.join("skopeo"))
            .env("XDG_RUNTIME_DIR", self.dir.join("skopeo"));
        if is_root() {
            run = run.as_uid(SKOPEO_UID);
        }
        run = match push {
            Push::Image => run.arg("--preserve-digests"),
            Push::Index => run.args(["--all", "--preserve-digests"]),
            Push::AsDocker => run.args(["--format", "v2s2"]),
        };
        if let Auth::Basic { user, password } | Auth::Token { user, password } = &self.auth {
            run = run.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        let mut source = std::ffi::OsString::from("oci:");
        source.push(layout);
        source.push(format!(":{tag}"));
        let outcome = run.arg(source).arg(format!("docker://{}/{to}", self.host())).output()?;
        outcome
            .expect_status(0)
            .with_context(|| format!("push {tag} to {}; the registry's log:\n{}", self.host(), self.log()))?;
        let digest = std::fs::read_to_string(&digest_file).context("skopeo's --digestfile")?;
        let _ = std::fs::remove_file(&digest_file);
        ensure!(digest.starts_with("sha256:"), "skopeo wrote the digest {digest:?}");
        Ok(digest.trim().to_string())
    }

    /// `METHOD PATH` over HTTP/1.1 (with the Basic credentials, if any): the status and the body.
    pub fn request(&self, method: &str, path: &str) -> Result<(u16, Vec<u8>)> {
        let auth = match &self.auth {
            Auth::Basic { user, password } => Some(basic(user, password)),
            _ => None,
        };
        http(self.port, method, path, auth.as_deref())
    }

    /// Polls `GET /v2/` until the registry answers (200, or 401 with auth).
    fn wait_until_up(&mut self) -> Result<()> {
        let until = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("the registry exited at once ({status})");
            }
            match http(self.port, "GET", "/v2/", None) {
                Ok((200 | 401, _)) => return Ok(()),
                Ok((status, _)) => bail!("GET /v2/ answered {status}"),
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                Err(err) => {
                    return Err(err.context(format!("the registry did not answer within {START_TIMEOUT:?}")))
                }
            }
        }
    }

    /// Stops the registry (SIGTERM, SIGKILL after 5 s) and keeps its files: a check
    /// then finds nothing listening where the registry was.
    pub fn stop_process(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on the registry we started and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What `Registry::push` pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// One image, its OCI manifest as it is.
    Image,
    /// An index and every image it lists.
    Index,
    /// One image, converted to Docker's schema 2 manifest (same blobs).
    AsDocker,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop_process();
        drop(self.token_server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The docker-registry binary: $WORKSHOP_DOCKER_REGISTRY, or the one `cargo xtask
/// setup` unpacked from Debian's package (under the target directory's tools/).
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(BINARY_VAR).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        ensure!(path.is_file(), "{BINARY_VAR}={}: no such file", path.display());
        return Ok(path);
    }
    let path = target_dir().join("tools/docker-registry/usr/bin/docker-registry");
    ensure!(
        path.is_file(),
        "no docker-registry at {}: run `cargo xtask setup`, which unpacks Debian's docker-registry \
         there (never installed: the package would start a service), or set {BINARY_VAR}",
        path.display()
    );
    Ok(path)
}

/// The target directory, as `cargo xtask` and the harness's Workshop find it.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let root = std::env::var_os("WORKSHOP_ROOT").map(PathBuf::from);
    root.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).join("target")
}

fn config_yml(storage: &Path, port: u16, auth: &str) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
         maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: workshop-test-registry\n\
         {auth}",
        storage.display()
    )
}

/// `user:bcrypt-hash` for the registry's htpasswd file, from apache2-utils' htpasswd.
fn htpasswd_line(user: &str, password: &str) -> Result<String> {
    let out = Command::new("htpasswd")
        .args(["-B", "-b", "-n", user, password])
        .stdin(Stdio::null())
        .output()
        .context("run htpasswd (apache2-utils; `cargo xtask setup` installs it)")?;
    ensure!(out.status.success(), "htpasswd -Bbn failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8(out.stdout)?.trim().to_string() + "\n")
}

/// An `Authorization: Basic ...` value.
pub(crate) fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes(), false))
}

/// Base64 (RFC 4648): with `=` padding, or (`url`) the URL alphabet without it (JWTs).
pub(crate) fn base64(bytes: &[u8], url: bool) -> String {
    let abc: &[u8; 64] = match url {
        false => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        true => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | ((*b as u32) << (16 - 8 * i)));
        for i in 0..4 {
            match (i <= chunk.len(), url) {
                (true, _) => out.push(abc[((n >> (18 - 6 * i)) & 63) as usize] as char),
                (false, false) => out.push('='),
                (false, true) => {}
            }
        }
    }
    out
}

/// A port that nothing on the sandbox's loopback uses right now.
fn free_port() -> Result<u16> {
    let port = crate::sandbox::in_netns(|| {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|listener| listener.local_addr())
    })??;
    Ok(port.port())
}

/// One HTTP/1.1 request to 127.0.0.1:PORT (in the sandbox), `Connection: close`.
pub fn http(port: u16, method: &str, path: &str, authorization: Option<&str>) -> Result<(u16, Vec<u8>)> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{}\r\n",
        authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default()
    );
    let response = crate::sandbox::in_netns(move || -> std::io::Result<Vec<u8>> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(response)
    })??;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP header")?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status")?;
    Ok((status, response[head_end + 4..].to_vec()))
}

fn scratch_dir() -> Result<PathBuf> {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("workshop-registry-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A check's registry, with the test images it needs pushed.
pub struct Fixture {
    pub registry: Registry,
    pub images: &'static crate::images::TestImages,
}

impl Fixture {
    pub fn new(ctx: &crate::Ctx, names: &[&str]) -> Result<Fixture> {
        Fixture::with(ctx, names, Options::default())
    }

    pub fn with(ctx: &crate::Ctx, names: &[&str], options: Options) -> Result<Fixture> {
        let images = crate::images::TestImages::get(&ctx.workshop.rootfs)?;
        let registry = Registry::start_with(options)?;
        for name in names {
            images.push(&registry, name)?;
        }
        Ok(Fixture { registry, images })
    }

    /// `127.0.0.1:PORT/workshop/NAME:latest`.
    pub fn tag(&self, name: &str) -> String {
        format!("{}:latest", self.registry.repo(&crate::images::TestImages::repo(name)))
    }

    /// `127.0.0.1:PORT/workshop/NAME@DIGEST`.
    pub fn by_digest(&self, name: &str, digest: &str) -> String {
        format!("{}@{digest}", self.registry.repo(&crate::images::TestImages::repo(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"user:pass", false), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab", false), "YWI=");
        assert_eq!(base64(b"a", false), "YQ==");
        assert_eq!(base64(b"\xfb\xff", true), "-_8");
    }
}
