//! Hardening (`--cap-drop ALL`): root inside keeps uid 0 but loses every
//! capability, so the kernel treats it like any user for mount(2), mknod(2),
//! chown(2), reading others' files, raw sockets and the rest. Docker drops
//! most capabilities by default; this workshop only does it when asked, so
//! that the chapters can show what plain container root can still do.

use anyhow::{bail, Context, Result};
use nix::errno::Errno;

// ANCHOR: parse
/// `--cap-drop`: only ALL, the one setting that needs no table of names.
pub fn parse_cap_drop(text: &str) -> Result<bool> {
    if !text.eq_ignore_ascii_case("all") {
        bail!("only ALL is supported (dropping every capability)");
    }
    Ok(true)
}
// ANCHOR_END: parse

// ANCHOR: drop
/// Child side, just before exec: give up every capability, for good.
pub fn drop_all_capabilities() -> Result<()> {
    // The bounding set caps what any later exec can get back: root gains
    // "all" capabilities at exec, but only within this set. 64 covers every
    // capability a kernel has (beyond its last one, PR_CAPBSET_DROP says EINVAL).
    for cap in 0..64 {
        // SAFETY: prctl(2) with integer arguments only.
        let dropped = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if dropped != 0 && Errno::last() != Errno::EINVAL {
            return Err(Errno::last()).context(format!("drop capability {cap} from the bounding set"));
        }
    }
    // Ambient capabilities would survive exec too (EINVAL: a kernel without them).
    // SAFETY: as above.
    let cleared = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    if cleared != 0 && Errno::last() != Errno::EINVAL {
        return Err(Errno::last()).context("clear the ambient capabilities");
    }
    // Then our own sets: effective, permitted and inheritable all empty.
    capset_empty().context("capset(2)")
}

/// capset(2) has no wrapper in libc or nix: a header and two data words
/// (capabilities 0-31 and 32-63), as <linux/capability.h> defines them.
fn capset_empty() -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: both pointers are to live, correctly laid-out structs.
    let set = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    Errno::result(set).map(drop).map_err(Into::into)
}
// ANCHOR_END: drop
