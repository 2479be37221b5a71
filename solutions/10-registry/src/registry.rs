//! A registry client: the OCI distribution API, over HTTP.
//!
//! A registry serves two kinds of things for each repository, both named by
//! their SHA-256 digest: manifests (`GET /v2/REPO/manifests/TAG-OR-DIGEST`),
//! small JSON documents that list what an image is made of, and blobs
//! (`GET /v2/REPO/blobs/DIGEST`): the image config and the layers' tars.
//! Before either, `GET /v2/` says whether the registry wants credentials.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::time::Duration;

use crate::reference::{Reference, DOCKER_HUB};

/// How the pull was asked for: `--insecure-registry`, credentials.
#[derive(Default, Clone)]
pub struct Options {
    /// Registries that may be reached over plain HTTP (`HOST[:PORT]`).
    pub insecure: Vec<String>,
    /// User name and password, from `--username` and `--password-stdin`.
    pub credentials: Option<(String, String)>,
}

/// Where Docker Hub's registry really is, unless a mirror takes its place.
const DOCKER_HUB_API: &str = "https://registry-1.docker.io";
/// Docker's `registry-mirrors`: pull docker.io images from this URL instead.
const MIRROR_VARIABLE: &str = "WORKSHOP_REGISTRY_MIRROR";
/// The most a manifest or config may be: they are small, and we hold them in memory.
const SMALL: u64 = 4 << 20;

pub struct Client {
    agent: ureq::Agent,
    /// `https://host:port` (or `http://` for a local or insecure registry).
    base: String,
    repository: String,
    credentials: Option<(String, String)>,
    /// The `Authorization` header the registry accepted, once we have one.
    authorization: Option<String>,
}

// ANCHOR: connect
impl Client {
    /// A client for the repository of `reference`.
    pub fn new(reference: &Reference, options: &Options) -> Result<Client> {
        let host = reference.registry.as_str();
        let mirror = std::env::var(MIRROR_VARIABLE).ok().filter(|m| !m.is_empty());
        let base = match (host, mirror) {
            (DOCKER_HUB, Some(mirror)) => mirror.trim_end_matches('/').to_string(),
            (DOCKER_HUB, None) => DOCKER_HUB_API.to_string(),
            // Plain HTTP only where no one else can be in the middle, as Docker decides.
            _ if is_local(host) || options.insecure.iter().any(|h| h == host) => format!("http://{host}"),
            _ => format!("https://{host}"),
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .user_agent(concat!("workshop-10-registry/", env!("CARGO_PKG_VERSION")))
            .build();
        let credentials = options.credentials.clone().or_else(|| saved_credentials(host));
        Ok(Client { agent, base, repository: reference.repository.clone(), credentials, authorization: None })
    }

    /// `GET /v2/`: is this a registry, and does it want us to log in first?
    pub fn ping(&mut self) -> Result<()> {
        self.get("/v2/", &[]).map(drop)
    }
    // ANCHOR_END: connect

    // ANCHOR: get
    /// A GET, logging in when the registry answers 401 and trying once more.
    fn get(&mut self, path: &str, accept: &[&str]) -> Result<ureq::Response> {
        let url = format!("{}{path}", self.base);
        for attempt in 0..2 {
            let mut request = self.agent.get(&url);
            if !accept.is_empty() {
                request = request.set("Accept", &accept.join(", "));
            }
            if let Some(authorization) = &self.authorization {
                request = request.set("Authorization", authorization);
            }
            match request.call() {
                Ok(response) => return Ok(response),
                Err(ureq::Error::Status(401, response)) if attempt == 0 => {
                    let challenge = response.header("WWW-Authenticate").unwrap_or_default().to_string();
                    self.authorization = Some(self.log_in(&challenge)?);
                }
                Err(ureq::Error::Status(code, response)) => {
                    let body = response.into_string().unwrap_or_default();
                    bail!("{url}: {code} {}", registry_error(&body).unwrap_or_default());
                }
                Err(ureq::Error::Transport(err)) => bail!("cannot reach {}: {}", self.base, transport(&err)),
            }
        }
        bail!("{url}: the registry refused our credentials (401)")
    }
    // ANCHOR_END: get

    // ANCHOR: log_in
    /// Answers a 401's `WWW-Authenticate` challenge with an `Authorization` header.
    ///
    /// `Basic`: the registry wants a user and a password on every request.
    /// `Bearer realm=...,service=...,scope=...`: it wants a token, from the
    /// token server at `realm`; an anonymous one is enough to pull public
    /// images (Docker Hub's case), credentials get one for private images.
    fn log_in(&self, challenge: &str) -> Result<String> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let basic = self.credentials.as_ref().map(|(user, password)| {
            format!("Basic {}", base64_encode(format!("{user}:{password}").as_bytes()))
        });
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                basic.context("the registry wants a user name and password (--username, --password-stdin)")
            }
            "bearer" => {
                let param = |name: &str| challenge_param(params, name);
                let realm = param("realm").context("a Bearer challenge without a realm")?;
                let scope = param("scope").unwrap_or(format!("repository:{}:pull", self.repository));
                let mut request = self.agent.get(&realm).query("scope", &scope);
                if let Some(service) = param("service") {
                    request = request.query("service", &service);
                }
                if let Some(basic) = &basic {
                    request = request.set("Authorization", basic);
                }
                let answer = request.call().map_err(|err| match err {
                    ureq::Error::Status(code, _) => anyhow::anyhow!("the token server {realm} said {code}"),
                    ureq::Error::Transport(err) => {
                        anyhow::anyhow!("cannot reach {realm}: {}", transport(&err))
                    }
                })?;
                let body: serde_json::Value = serde_json::from_reader(answer.into_reader().take(SMALL))
                    .context("the token server's answer")?;
                // Docker's token servers say `token`; OAuth2's say `access_token`.
                let token = body["token"].as_str().or(body["access_token"].as_str());
                Ok(format!("Bearer {}", token.context("the token server sent no token")?))
            }
            _ => bail!("the registry asks for {scheme:?} authentication, which we do not speak"),
        }
    }
    // ANCHOR_END: log_in

    // ANCHOR: manifest
    /// A manifest (or an index of manifests) by tag or digest: its bytes,
    /// its media type and its digest. By digest, the bytes are checked.
    pub fn manifest(&mut self, tag_or_digest: &str) -> Result<(Vec<u8>, String, String)> {
        let path = format!("/v2/{}/manifests/{tag_or_digest}", self.repository);
        let response = self.get(&path, &crate::pull::MANIFEST_TYPES)?;
        let media_type = response.content_type().to_string();
        let mut body = Vec::new();
        response.into_reader().take(SMALL + 1).read_to_end(&mut body).context("read the manifest")?;
        if body.len() as u64 > SMALL {
            bail!("refused: the manifest is larger than 4 MiB");
        }
        let digest = format!("sha256:{}", sha256_hex(&body));
        if tag_or_digest.starts_with("sha256:") && digest != tag_or_digest {
            bail!("refused: the registry sent a manifest whose digest is {digest}, not {tag_or_digest}");
        }
        Ok((body, media_type, digest))
    }
    // ANCHOR_END: manifest

    /// A blob as a stream: the caller checks its digest as it reads (see `pull`).
    pub fn blob(&mut self, digest: &str) -> Result<Box<dyn Read + Send>> {
        let path = format!("/v2/{}/blobs/{digest}", self.repository);
        // Docker Hub answers with a redirect to its storage; ureq follows it,
        // and does not send our Authorization header there.
        Ok(self.get(&path, &[])?.into_reader())
    }

    /// A small blob (the config), read whole and checked against its digest and size.
    pub fn small_blob(&mut self, digest: &str, size: u64) -> Result<Vec<u8>> {
        if size > SMALL {
            bail!("refused: blob {digest} claims {size} bytes, more than a config may have");
        }
        let mut body = Vec::new();
        self.blob(digest)?.take(size + 1).read_to_end(&mut body).context("read a blob")?;
        if body.len() as u64 != size || format!("sha256:{}", sha256_hex(&body)) != digest {
            bail!("refused: blob {digest} does not match its digest and size (damaged or changed)");
        }
        Ok(body)
    }
}

/// localhost, 127.0.0.0/8 and ::1, with or without a port.
fn is_local(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.starts_with("127.") || name == "::1"
}

/// One parameter of a challenge: `realm="https://auth.docker.io/token",service="..."`.
fn challenge_param(params: &str, name: &str) -> Option<String> {
    let mut rest = params;
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"')?,
            None => after.split_once(',').unwrap_or((after, "")),
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(value.to_string());
        }
        rest = next.trim_start_matches(',');
    }
    None
}

/// `~/.docker/config.json`'s `auths` (what `docker login` saved): base64 of `user:password`.
fn saved_credentials(registry: &str) -> Option<(String, String)> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".docker")))?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    // Docker Hub's entry has a historical name.
    let key = if registry == DOCKER_HUB { "https://index.docker.io/v1/" } else { registry };
    let auth = config["auths"][key]["auth"].as_str()?;
    let decoded = String::from_utf8(base64_decode(auth)?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The `message` of a registry's error body (`{"errors":[{"code":...,"message":...}]}`).
fn registry_error(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let first = &value["errors"][0];
    Some(format!("{} ({})", first["message"].as_str()?, first["code"].as_str().unwrap_or("?")))
}

/// What went wrong on the way, in one line and without the URL again.
fn transport(err: &ureq::Transport) -> String {
    let said = err.message().map(str::to_string).unwrap_or_else(|| err.kind().to_string());
    format!("{}: {}", err.kind(), said.replace('\n', " "))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 for the Basic header: three bytes become four letters.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            let letter = BASE64[(n >> (18 - 6 * i) & 63) as usize] as char;
            out.push(if i <= chunk.len() { letter } else { '=' });
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut n, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        n = n << 6 | BASE64.iter().position(|&b| b == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_as_docker_hub_sends_them() {
        let hub = r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;
        assert_eq!(challenge_param(hub, "realm").unwrap(), "https://auth.docker.io/token");
        assert_eq!(challenge_param(hub, "service").unwrap(), "registry.docker.io");
        assert_eq!(challenge_param(hub, "scope").unwrap(), "repository:library/alpine:pull");
        assert_eq!(challenge_param(r#"realm="x""#, "service"), None);
        assert_eq!(challenge_param("realm=plain,service=s", "service").unwrap(), "s");
    }

    #[test]
    fn base64_both_ways() {
        for (plain, coded) in [("user:pass", "dXNlcjpwYXNz"), ("a", "YQ=="), ("ab", "YWI="), ("abc", "YWJj")]
        {
            assert_eq!(base64_encode(plain.as_bytes()), coded);
            assert_eq!(base64_decode(coded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn only_local_registries_are_plain_http() {
        for local in ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000"] {
            assert!(is_local(local), "{local}");
        }
        for remote in ["docker.io", "10.0.0.1:5000", "localhost.example.com", "ghcr.io"] {
            assert!(!is_local(remote), "{remote}");
        }
    }
}
