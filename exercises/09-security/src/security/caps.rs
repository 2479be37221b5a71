//! Capabilities: root's power, cut into about forty pieces.
//!
//! The kernel checks a capability, not uid 0: CAP_SYS_ADMIN for mount(2),
//! CAP_MKNOD for mknod(2), CAP_NET_ADMIN to configure interfaces, and so on.
//! A process has five sets of them: *bounding* (the most it may ever get
//! back at exec), *permitted*, *effective* (what the kernel checks now),
//! *inheritable* and *ambient* (what passes through exec to non-root
//! programs). Docker keeps 14 that a normal service needs and drops the rest.

use anyhow::{Context, Result};
use nix::errno::Errno;
// EXERCISE: the imports your code needs.
// END EXERCISE

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
/// `--cap-add`/`--cap-drop` values, as clap's value parser: NAME, CAP_NAME,
/// in any case (`sys_admin`, `CAP_SYS_ADMIN`, `Cap_Sys_Admin`), or ALL.
/// Returns the name as `NAMES` spells it (`SYS_ADMIN`), or `ALL`. Anything
/// else is an error that quotes the text (`unknown capability "FOO"`): clap
/// puts it on one line with the flag, and the run ends with status 125
/// before anything is made.
///
/// Book: chapter 09, "Exercise: capabilities by name".
pub fn parse(text: &str) -> Result<String> {
    // EXERCISE: upper-case the text, strip one CAP_, look the name up in NAMES (or ALL).
    todo!("caps::parse({text:?}): NAME, CAP_NAME (any case) or ALL, as NAMES spells it; else an error naming it")
    // END EXERCISE
}

/// The capabilities root keeps, from the names `parse` gave (`ALL`, or as
/// `NAMES` spells them). Docker's rule: start from Docker's 14
/// (`Set::docker_default()`), take away every `--cap-drop`, then give every
/// `--cap-add`, whatever the order of the flags on the command line: so
/// `--cap-drop ALL --cap-add NET_RAW` leaves exactly NET_RAW, and ALL in
/// either takes away or gives every capability (`Set::all()`).
///
/// Book: chapter 09, "Exercise: capabilities by name".
pub fn resolve(add: &[String], drop: &[String]) -> Set {
    // No --cap-* flag: Docker's 14 (given, so that the runtime works before you write the rest).
    if add.is_empty() && drop.is_empty() {
        return Set::docker_default();
    }
    // EXERCISE: start from Docker's 14, clear a bit per --cap-drop, then set a bit per --cap-add.
    todo!("caps::resolve(add: {add:?}, drop: {drop:?}): Docker's 14, minus every --cap-drop, plus every --cap-add")
    // END EXERCISE
}
// ANCHOR_END: parse

// ANCHOR: bound
/// Child side: shrink the bounding set to `keep`. It is what root gets back
/// at every exec, so this is the drop that lasts. Needs CAP_SETPCAP, which we
/// still hold: do it first.
///
/// `prctl(PR_CAPBSET_DROP, cap)` takes one capability out, for good: do it
/// for every capability of `NAMES` that `keep` lacks (a kernel older than
/// our list says EINVAL for those it does not know: skip them). Then empty
/// the ambient set (`PR_CAP_AMBIENT`, `PR_CAP_AMBIENT_CLEAR_ALL`), which would
/// pass capabilities through exec to programs that are not root. The
/// effective and permitted sets are `set_own`'s, below: given.
///
/// Until you write it, this drops nothing (it is not a `todo!()`: every
/// container runs through it), and the bounding set stays the host's: with
/// `--security-opt no-new-privileges=false`, root's next exec gives it every
/// capability back.
///
/// Book: chapter 09, "Exercise: capabilities by name".
pub fn limit_bounding_set(keep: Set) -> Result<()> {
    // EXERCISE: PR_CAPBSET_DROP each capability not in `keep`, then clear the ambient set.
    // Not written yet: nothing is dropped, the bounding set stays the host's.
    let _ = keep;
    Ok(())
    // END EXERCISE
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

    // EXERCISE: your unit tests for parse and resolve, if you like.
    // END EXERCISE
}
