//! Capabilities: root's power, cut into about forty pieces.
//!
//! The kernel checks a capability, not uid 0: CAP_SYS_ADMIN for mount(2),
//! CAP_MKNOD for mknod(2), CAP_NET_ADMIN to configure interfaces, and so on.
//! A process has five sets of them: *bounding* (the most it may ever get
//! back at exec), *permitted*, *effective* (what the kernel checks now),
//! *inheritable* and *ambient* (what passes through exec to non-root
//! programs). Docker keeps 14 that a normal service needs and drops the rest.

use anyhow::{bail, Context, Result};
use nix::errno::Errno;

// ANCHOR: names
/// Every capability, by its number (<linux/capability.h>); Docker's names without CAP_.
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default set (moby's oci/caps/defaults.go): enough for a web
/// server, a package manager or a shell, not enough to touch the kernel.
pub const DOCKER_DEFAULT: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];
// ANCHOR_END: names

/// A set of capabilities, one bit per number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Set(pub u64);

impl Set {
    pub fn all() -> Set {
        Set((1u64 << NAMES.len()) - 1)
    }

    pub fn docker_default() -> Set {
        Set(DOCKER_DEFAULT.iter().map(|name| 1u64 << number(name).unwrap_or(0)).fold(0, |a, b| a | b))
    }

    /// "CAP_CHOWN", ... as Docker's seccomp profiles name them.
    pub fn names(&self) -> Vec<String> {
        (0..NAMES.len()).filter(|n| self.0 & (1 << n) != 0).map(|n| format!("CAP_{}", NAMES[n])).collect()
    }
}

fn number(name: &str) -> Option<usize> {
    NAMES.iter().position(|known| *known == name)
}

// ANCHOR: parse
/// `--cap-add`/`--cap-drop` values: NAME, CAP_NAME, any case, or ALL.
pub fn parse(text: &str) -> Result<String> {
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if name == "ALL" || number(name).is_some() {
        return Ok(name.to_string());
    }
    bail!("unknown capability {text:?} (names like NET_ADMIN or CAP_NET_ADMIN, or ALL)")
}

/// Docker's rule: start from the default set, drop, then add (so that
/// `--cap-drop ALL --cap-add NET_RAW` leaves exactly NET_RAW).
pub fn resolve(add: &[String], drop: &[String]) -> Set {
    let mut set = Set::docker_default();
    for name in drop {
        set.0 &= if name == "ALL" { 0 } else { !(1 << number(name).unwrap_or(63)) };
    }
    for name in add {
        set.0 |= if name == "ALL" { Set::all().0 } else { 1 << number(name).unwrap_or(63) };
    }
    set
}
// ANCHOR_END: parse

// ANCHOR: bound
/// Child side: shrink the bounding set to `keep`. It is what root gets back
/// at every exec, so this is the drop that lasts. Needs CAP_SETPCAP, which we
/// still hold: do it first.
pub fn limit_bounding_set(keep: Set) -> Result<()> {
    // The kernel may know fewer capabilities than we do (EINVAL past its last).
    for (cap, name) in NAMES.iter().enumerate() {
        if keep.0 & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl(2) with integer arguments only.
        let dropped = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if dropped != 0 && Errno::last() != Errno::EINVAL {
            return Err(Errno::last()).context(format!("drop CAP_{name} from the bounding set"));
        }
    }
    // Ambient capabilities would survive exec into non-root programs: none.
    // SAFETY: as above.
    let cleared = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    if cleared != 0 && Errno::last() != Errno::EINVAL {
        return Err(Errno::last()).context("clear the ambient capabilities");
    }
    Ok(())
}
// ANCHOR_END: bound

// ANCHOR: capset
/// capget(2) and capset(2) have no wrapper in libc or nix: a header and two
/// data words (capabilities 0-31 and 32-63), as the kernel defines them.
#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

/// Child side: our own effective and permitted sets become `keep`, the
/// inheritable set empty. A set can only shrink, so `keep` is cut to what we
/// hold: the runtime itself may lack some (`--privileged` in a container).
pub fn set_own(keep: Set) -> Result<()> {
    let header = Header { version: VERSION_3, pid: 0 };
    let mut now = [Data::default(); 2];
    // SAFETY: both pointers are to live, correctly laid-out structs.
    let got = unsafe { libc::syscall(libc::SYS_capget, &header, now.as_mut_ptr()) };
    Errno::result(got).context("capget(2)")?;
    let held = now[0].permitted as u64 | (now[1].permitted as u64) << 32;
    let keep = keep.0 & held;
    let word = |half: usize| (keep >> (32 * half)) as u32;
    let data = [0, 1].map(|half| Data { effective: word(half), permitted: word(half), inheritable: 0 });
    // SAFETY: as above.
    let set = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    Errno::result(set).map(drop).context("capset(2)")
}
// ANCHOR_END: capset

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_dockers_fourteen() {
        assert_eq!(Set::docker_default().0, 0xa804_25fb);
        assert_eq!(Set::docker_default().names().len(), 14);
        assert!(!Set::docker_default().names().contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn names_are_spelled_as_docker_does() {
        for (text, name) in [("net_admin", "NET_ADMIN"), ("CAP_SYS_ADMIN", "SYS_ADMIN"), ("all", "ALL")] {
            assert_eq!(parse(text).unwrap(), name);
        }
        for bad in ["", "CAP_", "FOO", "SYS ADMIN", "cap_cap_chown", "41"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn drop_then_add() {
        let only_raw = resolve(&["NET_RAW".into()], &["ALL".into()]);
        assert_eq!(only_raw.names(), ["CAP_NET_RAW"]);
        let admin = resolve(&["SYS_ADMIN".into()], &["MKNOD".into()]);
        let names = admin.names();
        let has = |name: &str| names.iter().any(|n| n == name);
        assert!(has("CAP_SYS_ADMIN") && !has("CAP_MKNOD") && has("CAP_CHOWN"));
        assert_eq!(resolve(&["ALL".into()], &[]), Set::all());
    }
}
