//! A token server for the registry's `auth: token` mode, the scheme of Docker Hub:
//! the registry answers 401 with `WWW-Authenticate: Bearer realm=...,scope=...`,
//! the client asks the realm (here) for a token, and the registry checks the
//! token's RS256 signature against a certificate it trusts (ours, made with
//! openssl, sent along in the JWT's `x5c` header).
//!
//! Anonymous tokens may pull every repository but those below `PRIVATE`; with
//! the user and password, a token may do what it asks. A wrong password is 401.

use anyhow::{ensure, Context, Result};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The audience of the tokens (the registry's `auth.token.service`).
pub const SERVICE: &str = "workshop-registry";
/// Who signs them (the registry's `auth.token.issuer`).
pub const ISSUER: &str = "workshop-token-server";
/// Repositories below this need credentials.
pub const PRIVATE: &str = "workshop/private/";

pub struct TokenServer {
    pub port: u16,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a request needs: the signing key, the certificate for `x5c`, the credentials.
struct Signer {
    key: PathBuf,
    certificate: String,
    authorization: String,
    user: String,
}

impl TokenServer {
    /// A key and a self-signed certificate in `dir`, and the server on a free port
    /// of the sandbox's loopback (where the registry and the runtime reach it).
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<TokenServer> {
        std::fs::create_dir_all(dir)?;
        let (key, certificate) = (dir.join("key.pem"), dir.join("cert.pem"));
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={ISSUER}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&certificate)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run openssl (the token server's key and certificate)")?;
        ensure!(status.success(), "openssl req -x509 failed ({status})");
        // x5c holds the DER certificate in plain base64: the PEM file's body.
        let pem = std::fs::read_to_string(&certificate)?;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let signer = Signer {
            key,
            certificate: body,
            authorization: crate::registry::basic(user, password),
            user: user.to_string(),
        };
        let listener = crate::sandbox::in_netns(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))??;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = answer(stream, &signer);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(TokenServer { port, dir: dir.to_path_buf(), stop, thread: Some(thread) })
    }

    /// The registry's `auth:` section that trusts this server.
    pub fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    \
             issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.port,
            self.dir.join("cert.pem").display()
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request: `GET /token?service=...&scope=repository:NAME:pull,push`.
fn answer(mut stream: TcpStream, signer: &Signer) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte)? == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let authorization = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("authorization").then(|| value.trim().to_string())
    });
    let authenticated = match &authorization {
        None => false,
        Some(given) if *given == signer.authorization => true,
        Some(_) => {
            return respond(&mut stream, "401 Unauthorized", r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#)
        }
    };
    if path != "/token" {
        return respond(&mut stream, "404 Not Found", r#"{"errors":[{"code":"NOT_FOUND"}]}"#);
    }
    let scopes = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("scope="))
        .flat_map(|scope| decode(scope).split(' ').map(str::to_string).collect::<Vec<_>>());
    let mut access = Vec::new();
    for scope in scopes {
        let Some((kind_name, actions)) = scope.rsplit_once(':') else { continue };
        let Some((kind, name)) = kind_name.split_once(':') else { continue };
        let actions: Vec<&str> = actions
            .split(',')
            .filter(|a| authenticated || (*a == "pull" && !name.starts_with(PRIVATE)))
            .collect();
        access.push(json!({ "type": kind, "name": name, "actions": actions }));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    static ISSUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let claims = json!({
        "iss": ISSUER,
        "sub": if authenticated { signer.user.as_str() } else { "" },
        "aud": SERVICE,
        "exp": now + 600,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{}-{}", std::process::id(), ISSUED.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let header = json!({ "typ": "JWT", "alg": "RS256", "x5c": [signer.certificate] });
    let b64 = |bytes: &[u8]| crate::registry::base64(bytes, true);
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let token = format!("{input}.{}", b64(&sign(&signer.key, input.as_bytes())?));
    let body = json!({ "token": token, "access_token": token, "expires_in": 600 });
    respond(&mut stream, "200 OK", &body.to_string())
}

/// RSASSA-PKCS1-v1_5 with SHA-256 (JWT's RS256), by openssl.
fn sign(key: &Path, input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("run openssl dgst -sign")?;
    child.stdin.take().context("openssl's stdin")?.write_all(input)?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success() && !out.stdout.is_empty(), "openssl dgst -sign failed ({})", out.status);
    Ok(out.stdout)
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    Ok(stream.shutdown(std::net::Shutdown::Both)?)
}

/// URL percent-decoding (and `+` for a space, as forms write it).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn scopes_are_percent_decoded() {
        assert_eq!(
            super::decode("repository%3Aworkshop%2Fexample%3Apull%2Cpush"),
            "repository:workshop/example:pull,push"
        );
        assert_eq!(super::decode("a+b%20c%"), "a b c%");
    }
}
