//! A small parser for `/proc/self/mountinfo` (see proc(5)), shared by `doctor`
//! (propagation of /, cgroup mounts) and `rootfs` (never delete a tree with mounts in it).
//!
//! A line looks like:
//! `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
//!  id par dev root mount-point options [optional fields...] - fstype source super-options

use anyhow::{Context, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub mount_point: String,
    /// Optional fields such as `shared:1` or `master:2` (empty: private).
    pub optional: Vec<String>,
    pub fs_type: String,
    pub super_options: String,
}

pub fn read() -> Result<Vec<Mount>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("could not read /proc/self/mountinfo")?;
    Ok(parse(&text))
}

pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    if dash < 6 || fields.len() < dash + 4 {
        return None;
    }
    Some(Mount {
        mount_point: unescape(fields[4]),
        optional: fields[6..dash].iter().map(|s| s.to_string()).collect(),
        fs_type: fields[dash + 1].to_string(),
        super_options: fields[dash + 3].to_string(),
    })
}

/// The kernel writes space, tab, newline and backslash as `\040`-style octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The propagation type of a mount, from its optional fields.
pub fn propagation(mount: &Mount) -> &'static str {
    let has = |prefix: &str| mount.optional.iter().any(|f| f.starts_with(prefix));
    match (has("shared:"), has("master:")) {
        (true, _) => "shared",
        (false, true) => "slave",
        _ if mount.optional.iter().any(|f| f == "unbindable") => "unbindable",
        _ => "private",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime master:7 - cgroup cgroup rw,memory
41 31 0:38 / /mnt/with\\040space rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_fields() {
        let mounts = parse(SAMPLE);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].mount_point, "/");
        assert_eq!(mounts[0].optional, vec!["shared:1"]);
        assert_eq!(mounts[2].fs_type, "cgroup");
        assert_eq!(mounts[2].super_options, "rw,memory");
        assert_eq!(mounts[3].mount_point, "/mnt/with space");
    }

    #[test]
    fn propagation_types() {
        let mounts = parse(SAMPLE);
        assert_eq!(propagation(&mounts[0]), "shared");
        assert_eq!(propagation(&mounts[1]), "private");
        assert_eq!(propagation(&mounts[2]), "slave");
    }
}
