//! Image references, as Docker reads them: `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`.
//!
//! `alpine` is short for `docker.io/library/alpine:latest`: the registry is
//! Docker Hub unless the first part looks like a host (it has a `.` or a `:`,
//! or is `localhost`), a one-part name on Docker Hub lives in `library/`, and
//! the tag is `latest` unless one is given. A digest (`@sha256:...`) names one
//! manifest by its content, so what it names can never change.

use anyhow::Result;
use std::fmt;

/// Docker Hub, as references name it.
pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `127.0.0.1:5000`, `ghcr.io`...
    pub registry: String,
    /// `library/alpine`, `workshop/example`...
    pub repository: String,
    /// The tag, `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    /// `sha256:` and 64 hex digits.
    pub digest: Option<String>,
}

// ANCHOR: parse
impl Reference {
    /// Reads a reference the way `docker pull` does, or says in one line what is wrong with it.
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |why: &str| anyhow::anyhow!("invalid reference {text:?}: {why}");
        if text.is_empty() || text.len() > 255 {
            return Err(bad("a reference has 1 to 255 characters"));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(check_digest(digest).map_err(|why| bad(&why))?)),
            None => (text, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last_part = name.rfind('/').map_or(0, |slash| slash + 1);
        let (name, tag) = match name[last_part..].rfind(':') {
            Some(colon) => (&name[..last_part + colon], Some(&name[last_part + colon + 1..])),
            None => (name, None),
        };
        if let Some(tag) = tag {
            let first_ok = tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            let rest_ok = tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !first_ok || !rest_ok || tag.len() > 128 {
                return Err(bad(
                    "a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(bad("the registry must be a host name or address, with an optional :PORT"));
        }
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository names must be lowercase"));
        }
        if !repository.split('/').all(valid_component) {
            return Err(bad("each part of a repository name is lowercase letters and digits, joined by '.', '_', '__' or '-'"));
        }
        let repository = match (registry.as_str(), repository.contains('/')) {
            (DOCKER_HUB, false) => format!("library/{repository}"),
            _ => repository,
        };
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(Reference { registry, repository, tag, digest })
    }
    // ANCHOR_END: parse

    /// What to ask the registry's manifests endpoint for: the digest if there is one, else the tag.
    pub fn tag_or_digest(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The short form Docker shows: `alpine:latest` for `docker.io/library/alpine:latest`.
    pub fn familiar(&self) -> String {
        let full = self.to_string();
        let short = full.strip_prefix("docker.io/").unwrap_or(&full);
        short.strip_prefix("library/").unwrap_or(short).to_string()
    }
}

/// A host name (labels of letters, digits and '-' joined by '.'), an IPv4 or
/// `[IPv6]` address, and an optional `:PORT`.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (host, Some(port)),
        _ => (registry, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
        None => host.split('.').all(label_ok),
    };
    port_ok && host_ok
}

/// Each part of a repository path: `[a-z0-9]+` joined by one separator (`.`, `_`, `__`, or dashes).
fn valid_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    // Between two runs of letters and digits: ".", "_", "__" or any number of '-'.
    part.split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        .filter(|sep| !sep.is_empty())
        .all(|sep| sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-'))
}

/// `sha256:` and 64 lowercase hex digits: the only digest the workshop reads.
pub fn check_digest(digest: &str) -> std::result::Result<String, String> {
    let hex = digest.strip_prefix("sha256:").ok_or("a digest starts with sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err("a sha256 digest has 64 lowercase hex digits".into());
    }
    Ok(digest.to_string())
}

impl fmt::Display for Reference {
    /// The canonical form: `docker.io/library/alpine:latest`, or `...@sha256:...`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_names_are_filled_in() {
        let canonical = |text: &str| Reference::parse(text).unwrap().to_string();
        assert_eq!(canonical("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(canonical("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(canonical("jwilder/nginx-proxy"), "docker.io/jwilder/nginx-proxy:latest");
        assert_eq!(canonical("docker.io/library/ubuntu:14.04"), "docker.io/library/ubuntu:14.04");
        assert_eq!(canonical("127.0.0.1:5000/workshop/example"), "127.0.0.1:5000/workshop/example:latest");
        assert_eq!(canonical("localhost/a"), "localhost/a:latest");
        assert_eq!(canonical("[::1]:5000/a"), "[::1]:5000/a:latest");
        assert_eq!(canonical("ghcr.io/a/b/c:v1.2-x_y"), "ghcr.io/a/b/c:v1.2-x_y");
        assert_eq!(canonical(&format!("alpine@{DIGEST}")), format!("docker.io/library/alpine@{DIGEST}"));
        assert_eq!(canonical(&format!("a:t@{DIGEST}")), format!("docker.io/library/a:t@{DIGEST}"));
        assert_eq!(canonical("my_app__x.y-z"), "docker.io/library/my_app__x.y-z:latest");
    }

    #[test]
    fn the_short_form_is_dockers() {
        let familiar = |text: &str| Reference::parse(text).unwrap().familiar();
        assert_eq!(familiar("alpine"), "alpine:latest");
        assert_eq!(familiar("docker.io/user/app:1"), "user/app:1");
        assert_eq!(familiar("127.0.0.1:5000/workshop/example"), "127.0.0.1:5000/workshop/example:latest");
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "alpine:-x",
            "alpine@sha256:abc",
            "alpine@md5:0123",
            "/alpine",
            "alpine/",
            "a//b",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "host:5000/",
            "alpine:tag with space",
            "a b",
            "../etc",
            "a..b:5000/x",
            "host:port/x",
            "-host.io/x",
            &format!("alpine@{}", DIGEST.to_uppercase()),
            &"a".repeat(256),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
