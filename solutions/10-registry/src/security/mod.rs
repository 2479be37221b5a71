//! Docker's default hardening: what stands between container root and the
//! host's kernel, besides the namespaces.
//!
//! Each layer stops what the others let through:
//! - capabilities (`caps.rs`): root keeps 14 of about 40 powers;
//! - no_new_privs: no setuid binary or file capability can give more back;
//! - masked paths (`masks.rs`): /proc and /sys files about the whole machine read empty;
//! - a device allow-list (`cgroup/devices.rs`, set up by the host): only /dev's own devices open;
//! - seccomp (`seccomp.rs`, `profile.rs`): system calls a container has no use for fail.
//!
//! `--privileged` turns all of them off, as Docker's does.

pub mod caps;
mod masks;
mod profile;
mod seccomp;
mod syscalls;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use seccompiler::BpfProgram;
use std::path::PathBuf;

// ANCHOR: options
/// One `--security-opt` value, as Docker spells them.
#[derive(Clone, Debug, PartialEq)]
pub enum SecurityOpt {
    /// `no-new-privileges[=true|false]`
    NoNewPrivileges(bool),
    /// `seccomp=unconfined`
    SeccompUnconfined,
    /// `seccomp=FILE`: a profile in Docker's JSON format
    SeccompProfile(PathBuf),
}

/// Parses `--security-opt KEY[=VALUE]` (Docker also takes `KEY:VALUE`).
pub fn parse_security_opt(text: &str) -> Result<SecurityOpt> {
    let (key, value) = match text.find(['=', ':']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    match (key, value) {
        ("no-new-privileges", None | Some("true")) => Ok(SecurityOpt::NoNewPrivileges(true)),
        ("no-new-privileges", Some("false")) => Ok(SecurityOpt::NoNewPrivileges(false)),
        ("no-new-privileges", Some(other)) => bail!("no-new-privileges takes true or false, not {other:?}"),
        ("seccomp", Some("unconfined")) => Ok(SecurityOpt::SeccompUnconfined),
        ("seccomp", Some(path)) if !path.is_empty() => Ok(SecurityOpt::SeccompProfile(path.into())),
        ("seccomp", _) => bail!("use seccomp=unconfined or seccomp=/path/to/profile.json"),
        ("apparmor" | "label" | "systempaths", _) => {
            bail!("{key} is not supported here: this workshop has no LSM (AppArmor, SELinux) layer")
        }
        _ => bail!("unknown option {key:?} (use no-new-privileges or seccomp=...)"),
    }
}
// ANCHOR_END: options

// ANCHOR: hardening
/// What the child applies just before exec, decided on the host side so that
/// a bad flag or profile fails before anything is made.
pub struct Hardening {
    /// Hide the machine's parts of /proc and /sys.
    masks: bool,
    /// The capabilities root keeps (bounding, permitted and effective sets).
    caps: caps::Set,
    no_new_privs: bool,
    /// The filter, compiled to BPF programs; None is `seccomp=unconfined`.
    seccomp: Option<Vec<BpfProgram>>,
}

/// Host side: Docker's defaults, changed by the flags. `--privileged` turns
/// it all off; only an explicit no-new-privileges still counts then, as in Docker.
pub fn decide(privileged: bool, add: &[String], drop: &[String], opts: &[SecurityOpt]) -> Result<Hardening> {
    let mut no_new_privs = !privileged;
    let mut seccomp = Some(None); // Some(None): the default filter
    for opt in opts {
        match opt {
            SecurityOpt::NoNewPrivileges(on) => no_new_privs = *on,
            SecurityOpt::SeccompUnconfined => seccomp = None,
            SecurityOpt::SeccompProfile(path) => seccomp = Some(Some(path.clone())),
        }
    }
    if privileged {
        return Ok(Hardening { masks: false, caps: caps::Set::all(), no_new_privs, seccomp: None });
    }
    let caps = caps::resolve(add, drop);
    let names = caps.names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let filter = match seccomp {
        None => None,
        Some(None) => Some(seccomp::default_filter(&names)),
        Some(Some(path)) => Some(
            seccomp::load(&path, &names)
                .with_context(|| format!("--security-opt seccomp={}", path.display()))?,
        ),
    };
    // Compiled here, so that the child only hands the programs to the kernel.
    let seccomp =
        filter.map(|filter| seccomp::compile(&filter)).transpose().context("--security-opt seccomp")?;
    Ok(Hardening { masks: true, caps, no_new_privs, seccomp })
}
// ANCHOR_END: hardening

// ANCHOR: apply
/// Child side, the last thing before exec, in the order the kernel needs:
/// what needs CAP_SYS_ADMIN first, the capabilities next, seccomp last (it
/// would block the calls before it). Without no_new_privs, installing a
/// filter needs CAP_SYS_ADMIN itself, so then it goes before capset(2).
pub fn apply(hardening: &Hardening, user: Option<&str>) -> Result<()> {
    if hardening.masks {
        masks::apply()?;
    }
    caps::limit_bounding_set(hardening.caps)?;
    if hardening.no_new_privs {
        // From here on, exec never grants more: setuid bits and file capabilities are ignored.
        // SAFETY: prctl(2) with integer arguments only.
        let set = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        Errno::result(set).context("set no_new_privs")?;
    }
    let filter = hardening.seccomp.as_ref();
    if let Some(programs) = filter.filter(|_| !hardening.no_new_privs) {
        seccomp::load_programs(programs)?;
    }
    // The image's user (step 10): a non-zero uid loses its permitted capabilities here.
    if let Some(user) = user {
        crate::config::become_user(user)?;
    }
    caps::set_own(hardening.caps)?;
    if let Some(programs) = filter.filter(|_| hardening.no_new_privs) {
        seccomp::load_programs(programs)?;
    }
    Ok(())
}
// ANCHOR_END: apply

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_opts() {
        use SecurityOpt::*;
        assert_eq!(parse_security_opt("no-new-privileges").unwrap(), NoNewPrivileges(true));
        assert_eq!(parse_security_opt("no-new-privileges=false").unwrap(), NoNewPrivileges(false));
        assert_eq!(parse_security_opt("no-new-privileges:true").unwrap(), NoNewPrivileges(true));
        assert_eq!(parse_security_opt("seccomp=unconfined").unwrap(), SeccompUnconfined);
        assert_eq!(parse_security_opt("seccomp=/p.json").unwrap(), SeccompProfile("/p.json".into()));
        for bad in ["", "seccomp", "seccomp=", "no-new-privileges=maybe", "apparmor=x", "frobnicate=1"] {
            assert!(parse_security_opt(bad).is_err(), "{bad:?}");
        }
    }
}
