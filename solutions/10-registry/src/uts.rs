//! The UTS namespace: the hostname (and NIS domain name) that `uname` reports.

use anyhow::{bail, Context, Result};

/// The kernel's limit for a hostname (HOST_NAME_MAX).
const MAX_LEN: usize = 64;

/// Refuses a hostname that the kernel or a resolver would choke on: 1 to 64
/// bytes of dot-separated labels made of letters, digits and inner hyphens.
pub fn check_hostname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_LEN {
        bail!("invalid hostname {name:?}: it must be 1 to {MAX_LEN} bytes long");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !name.split('.').all(label_ok) {
        bail!("invalid hostname {name:?}: use letters, digits, '-' and '.' (like my-box.local)");
    }
    Ok(())
}

// ANCHOR: set_hostname
/// Runs in the child after clone(CLONE_NEWUTS), so only the new namespace changes.
pub fn set_hostname(name: &str) -> Result<()> {
    nix::unistd::sethostname(name).with_context(|| format!("sethostname {name}"))
}
// ANCHOR_END: set_hostname

#[cfg(test)]
mod tests {
    use super::check_hostname;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["box", "my-box", "a1.example.org", "0123456789ab", &"x".repeat(64)] {
            assert!(check_hostname(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        let long = "x".repeat(65);
        for name in ["", &long, "-box", "box-", "a..b", ".box", "my_box", "héllo", "a b", "a/b"] {
            assert!(check_hostname(name).is_err(), "{name:?}");
        }
    }
}
