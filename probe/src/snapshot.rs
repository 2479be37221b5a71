//! What the process sees: identity, namespaces, mounts, network, cgroup
//! limits, IPC, capabilities. Every field is always present; whatever cannot
//! be read (no /proc in a half-built container, say) is null or [].

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::{if_nametoindex, InterfaceFlags};
use nix::sys::utsname::uname;
use nix::unistd::{getcwd, getegid, geteuid, getgid, getgroups, getpid, getppid, getuid};
use serde_json::{json, Map, Value};

/// The namespaces listed in /proc/self/ns, as the JSON keys of "ns".
const NAMESPACES: [&str; 9] =
    ["cgroup", "ipc", "mnt", "net", "pid", "pid_for_children", "time", "user", "uts"];

/// Limit and usage files, relative to /sys/fs/cgroup: cgroup v2 names first,
/// then the v1 hierarchies. Only those that exist are reported.
const CGROUP_FILES: [&str; 13] = [
    "cgroup.controllers",
    "memory.max",
    "memory.current",
    "memory.events",
    "cpu.max",
    "pids.max",
    "pids.current",
    "memory/memory.limit_in_bytes",
    "memory/memory.usage_in_bytes",
    "cpu/cpu.cfs_quota_us",
    "cpu/cpu.cfs_period_us",
    "pids/pids.max",
    "pids/pids.current",
];

/// Takes the snapshot; `actions` are the already-run actions' entries.
pub fn take(actions: Vec<Value>) -> Value {
    let uts = uname().ok();
    let status = read_text("/proc/self/status").unwrap_or_default();
    json!({
        "hostname": uts.as_ref().map(|u| u.nodename().to_string_lossy().into_owned()),
        "domainname": uts.as_ref().map(|u| u.domainname().to_string_lossy().into_owned()),
        "pid": getpid().as_raw(),
        "ppid": getppid().as_raw(),
        "proc_pids": proc_pids(),
        "uid": getuid().as_raw(),
        "gid": getgid().as_raw(),
        "euid": geteuid().as_raw(),
        "egid": getegid().as_raw(),
        "groups": getgroups()
            .map(|groups| groups.iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| Vec::new()),
        "uid_map": read_text("/proc/self/uid_map"),
        "gid_map": read_text("/proc/self/gid_map"),
        "setgroups": read_text("/proc/self/setgroups"),
        "ns": namespaces(),
        "mounts": mounts(),
        "root_entries": dir_names("/"),
        "cwd": getcwd().ok().map(|p| p.to_string_lossy().into_owned()),
        "interfaces": interfaces(),
        "default_gateway": read_text("/proc/net/route")
            .and_then(|text| default_gateway(&text))
            .map(|ip| ip.to_string()),
        "cgroup": cgroup(),
        "sysv_shm_keys": read_text("/proc/sysvipc/shm")
            .map(|text| shm_keys(&text))
            .unwrap_or_default(),
        "capabilities": {
            "effective": status_field(&status, "CapEff"),
            "permitted": status_field(&status, "CapPrm"),
            "bounding": status_field(&status, "CapBnd"),
            "inheritable": status_field(&status, "CapInh"),
            "ambient": status_field(&status, "CapAmb"),
        },
        "no_new_privs": status_field(&status, "NoNewPrivs").and_then(|v| v.parse::<i64>().ok()),
        "seccomp": status_field(&status, "Seccomp").and_then(|v| v.parse::<i64>().ok()),
        "env": std::env::vars_os()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), json!(v.to_string_lossy())))
            .collect::<Map<String, Value>>(),
        "actions": actions,
    })
}

/// Who this process is, for the setuid copy of `--setuid-exec` to print:
/// ids, the effective and permitted capabilities, no_new_privs.
pub fn ids() -> Value {
    let status = read_text("/proc/self/status").unwrap_or_default();
    json!({
        "uid": getuid().as_raw(),
        "euid": geteuid().as_raw(),
        "gid": getgid().as_raw(),
        "egid": getegid().as_raw(),
        "cap_eff": status_field(&status, "CapEff"),
        "cap_prm": status_field(&status, "CapPrm"),
        "no_new_privs": status_field(&status, "NoNewPrivs").and_then(|v| v.parse::<i64>().ok()),
    })
}

/// The whole file as text (lossy UTF-8), or None if it can't be read.
fn read_text(path: &str) -> Option<String> {
    fs::read(path).ok().map(|data| String::from_utf8_lossy(&data).into_owned())
}

/// Sorted names in a directory; [] if unreadable.
fn dir_names(path: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .map(|entries| {
            entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The processes this process can see: the numeric entries of /proc, which
/// is what `ps` lists. In a new PID namespace (with its own /proc) that is
/// only the container's processes.
fn proc_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = dir_names("/proc").iter().filter_map(|name| name.parse().ok()).collect();
    pids.sort_unstable();
    pids
}

/// Namespace identities: two processes share a namespace exactly when these
/// inode numbers are equal.
fn namespaces() -> Value {
    NAMESPACES
        .iter()
        .map(|ns| {
            let inode = fs::read_link(format!("/proc/self/ns/{ns}"))
                .ok()
                .and_then(|target| parse_ns_link(&target.to_string_lossy()));
            (ns.to_string(), json!(inode))
        })
        .collect::<Map<String, Value>>()
        .into()
}

/// The mount table as this process sees it (its mount namespace and root).
fn mounts() -> Vec<Value> {
    read_text("/proc/self/mountinfo")
        .map(|text| text.lines().filter_map(parse_mountinfo_line).map(Mount::into_json).collect())
        .unwrap_or_default()
}

/// "uts:[4026531838]" -> 4026531838.
pub(crate) fn parse_ns_link(text: &str) -> Option<u64> {
    let start = text.find(":[")? + 2;
    let end = start + text[start..].find(']')?;
    text[start..end].parse().ok()
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, PartialEq)]
pub(crate) struct Mount {
    id: u64,
    parent: u64,
    root: String,
    mount_point: String,
    options: String,
    /// Optional fields such as "shared:1 master:2", or "".
    optional: String,
    fstype: String,
    source: String,
    super_options: String,
}

impl Mount {
    fn into_json(self) -> Value {
        json!({
            "id": self.id,
            "parent": self.parent,
            "mount_point": self.mount_point,
            "root": self.root,
            "fstype": self.fstype,
            "source": self.source,
            "options": self.options,
            "super_options": self.super_options,
            "optional": self.optional,
        })
    }
}

/// Parses "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw".
/// The optional fields run up to the lone "-"; paths have spaces and other
/// awkward bytes escaped as octal (`\040`), undone here.
pub(crate) fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mut head = before.split(' ');
    let id = head.next()?.parse().ok()?;
    let parent = head.next()?.parse().ok()?;
    let _major_minor = head.next()?;
    let root = unescape_octal(head.next()?);
    let mount_point = unescape_octal(head.next()?);
    let options = head.next()?.to_string();
    let optional = head.collect::<Vec<_>>().join(" ");
    let mut tail = after.split(' ');
    let fstype = unescape_octal(tail.next()?);
    let source = unescape_octal(tail.next()?);
    let super_options = tail.next().unwrap_or("").to_string();
    Some(Mount { id, parent, root, mount_point, options, optional, fstype, source, super_options })
}

/// Undoes the kernel's `\ooo` escapes (space, tab, newline, backslash).
pub(crate) fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        match digits {
            Some(d) if bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(value as u8);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Network interfaces from getifaddrs (netlink, so it works without /proc):
/// one entry per interface, addresses as "ip/prefix", sorted by index.
fn interfaces() -> Vec<Value> {
    struct Interface {
        index: u32,
        up: bool,
        mac: Option<String>,
        addrs: Vec<String>,
    }
    let Ok(entries) = getifaddrs() else {
        return Vec::new();
    };
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    for entry in entries {
        let iface = by_name.entry(entry.interface_name.clone()).or_insert_with(|| Interface {
            index: 0,
            up: false,
            mac: None,
            addrs: Vec::new(),
        });
        iface.up |= entry.flags.contains(InterfaceFlags::IFF_UP);
        let Some(address) = entry.address else {
            continue;
        };
        if let Some(link) = address.as_link_addr() {
            // The AF_PACKET entry: index and hardware address. Loopback's
            // all-zero address counts as none.
            iface.index = link.ifindex() as u32;
            iface.mac = link
                .addr()
                .filter(|mac| link.halen() == 6 && mac.iter().any(|&b| b != 0))
                .map(|mac| format_mac(&mac));
        } else if let Some(v4) = address.as_sockaddr_in() {
            let prefix = entry
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|m| u32::from(m.ip()).count_ones()))
                .unwrap_or(32);
            iface.addrs.push(format!("{}/{prefix}", v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            let prefix = entry
                .netmask
                .and_then(|m| m.as_sockaddr_in6().map(|m| u128::from(m.ip()).count_ones()))
                .unwrap_or(128);
            iface.addrs.push(format!("{}/{prefix}", v6.ip()));
        }
    }
    let mut list: Vec<(String, Interface)> = by_name.into_iter().collect();
    for (name, iface) in &mut list {
        if iface.index == 0 {
            iface.index = if_nametoindex(name.as_str()).unwrap_or(0);
        }
    }
    list.sort_by_key(|(name, iface)| (iface.index, name.clone()));
    list.into_iter()
        .map(|(name, iface)| {
            json!({
                "name": name,
                "index": iface.index,
                "up": iface.up,
                "mac": iface.mac,
                "addrs": iface.addrs,
            })
        })
        .collect()
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The IPv4 default route's gateway from /proc/net/route, whose addresses
/// are hex in host byte order: "0100A8C0" is 192.168.0.1 on x86.
pub(crate) fn default_gateway(route_table: &str) -> Option<Ipv4Addr> {
    route_table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| u32::from_str_radix(fields.get(i)?, 16).ok();
        let (destination, gateway, mask) = (hex(1)?, hex(2)?, hex(7)?);
        (destination == 0 && mask == 0 && gateway != 0).then(|| Ipv4Addr::from(gateway.to_ne_bytes()))
    })
}

/// Which cgroup we are in, and the limits and usage visible from here.
fn cgroup() -> Value {
    let lines: Vec<String> = read_text("/proc/self/cgroup")
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default();
    let files: Map<String, Value> = CGROUP_FILES
        .iter()
        .filter_map(|name| {
            let text = read_text(&format!("/sys/fs/cgroup/{name}"))?;
            Some((name.to_string(), json!(text.trim())))
        })
        .collect();
    json!({"proc_self_cgroup": lines, "files": files})
}

/// The keys (first column, decimal) of /proc/sysvipc/shm, sorted.
pub(crate) fn shm_keys(table: &str) -> Vec<i64> {
    let mut keys: Vec<i64> =
        table.lines().skip(1).filter_map(|line| line.split_whitespace().next()?.parse().ok()).collect();
    keys.sort_unstable();
    keys
}

/// The value of "Name:\tvalue" in /proc/self/status.
pub(crate) fn status_field(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_link_to_inode() {
        assert_eq!(parse_ns_link("uts:[4026531838]"), Some(4026531838));
        assert_eq!(parse_ns_link("pid_for_children:[4026532201]"), Some(4026532201));
        assert_eq!(parse_ns_link("uts:[]"), None);
        assert_eq!(parse_ns_link("uts:[12"), None);
        assert_eq!(parse_ns_link("garbage"), None);
    }

    #[test]
    fn mountinfo_line_with_optional_fields() {
        let mount = parse_mountinfo_line(
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(
            mount,
            Mount {
                id: 36,
                parent: 35,
                root: "/mnt1".into(),
                mount_point: "/mnt2".into(),
                options: "rw,noatime".into(),
                optional: "master:1 shared:7".into(),
                fstype: "ext3".into(),
                source: "/dev/root".into(),
                super_options: "rw,errors=continue".into(),
            }
        );
    }

    #[test]
    fn mountinfo_line_without_optional_fields_and_escaped_spaces() {
        let mount = parse_mountinfo_line(
            r"101 24 0:52 / /tmp/my\040dir\011x rw,relatime - tmpfs my\134src rw,size=64k",
        )
        .unwrap();
        assert_eq!(mount.mount_point, "/tmp/my dir\tx");
        assert_eq!(mount.source, r"my\src");
        assert_eq!(mount.optional, "");
        assert_eq!(mount.fstype, "tmpfs");
        assert_eq!(mount.super_options, "rw,size=64k");
    }

    #[test]
    fn mountinfo_garbage_is_skipped() {
        assert_eq!(parse_mountinfo_line(""), None);
        assert_eq!(parse_mountinfo_line("x 1 0:1 / / rw - tmpfs t rw"), None);
        assert_eq!(parse_mountinfo_line("1 2 0:1 / / rw shared:1"), None);
    }

    #[test]
    fn octal_unescape_leaves_other_backslashes() {
        assert_eq!(unescape_octal(r"a\040b"), "a b");
        assert_eq!(unescape_octal(r"a\012b"), "a\nb");
        assert_eq!(unescape_octal(r"a\9b\04"), r"a\9b\04");
        assert_eq!(unescape_octal(r"trailing\"), r"trailing\");
    }

    #[test]
    fn gateway_from_route_table() {
        let table = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00005814\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth0\t00000000\t0100580A\t0003\t0\t0\t0\t00000000\t0\t0\t0
";
        assert_eq!(default_gateway(table), Some(Ipv4Addr::new(10, 88, 0, 1)));
        // Only on-link routes: no gateway.
        let no_default = "Iface\tDestination\tGateway\n\
lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n";
        assert_eq!(default_gateway(no_default), None);
        assert_eq!(default_gateway(""), None);
    }

    #[test]
    fn shm_keys_are_decimal_first_column() {
        let table = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
      4242          3   600                  4096  1234     0      0     0     0     0     0          0          0 1700000000                     0                     0
        -5          4   600                  4096  1234     0      0     0     0     0     0          0          0 1700000000                     0                     0
";
        assert_eq!(shm_keys(table), vec![-5, 4242]);
        assert_eq!(shm_keys(""), Vec::<i64>::new());
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tprobe\nCapEff:\t000001ffffffffff\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        assert_eq!(status_field(status, "CapEff").as_deref(), Some("000001ffffffffff"));
        assert_eq!(status_field(status, "NoNewPrivs").as_deref(), Some("1"));
        assert_eq!(status_field(status, "CapBnd"), None);
    }

    #[test]
    fn mac_is_lowercase_colon_separated() {
        assert_eq!(format_mac(&[0x02, 0x42, 0xAC, 0x11, 0, 2]), "02:42:ac:11:00:02");
    }
}
