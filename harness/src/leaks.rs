//! The leak check: what a container run may leave on the host.
//!
//! A snapshot before and after each test; anything new afterwards is a leak
//! that fails the test, and is then removed so it cannot spoil the next one.
//! Later steps add their resources here (cgroups, links, state files).

use crate::paths;
use crate::sandbox::links_in;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const NAMESPACES: [&str; 7] = ["pid", "mnt", "uts", "ipc", "net", "user", "cgroup"];

/// The runtimes' state directory (IPAM leases, ...); it must be empty after a run.
pub const STATE: &str = paths::RUN;
/// What the runtimes keep on disk, one entry per container, image or volume
/// (the per-mapping rootfs copies of --userns are a cache, not counted).
const KEPT: [&str; 3] = [paths::CONTAINERS, paths::IMAGES, paths::VOLUMES];
/// Step 10's store: one entry per layer (and its short link) and image, one
/// file per tag; its tmp/ holds only what a pull or import has in progress, so
/// whatever a run leaves there is a leak (and is removed).
const STORE_KEPT: [&str; 3] = ["layers", "l", "images"];
const STORE_TAGS: &str = "tags";
const STORE_TMP: &str = "tmp";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// "mount_point fstype source" of every host mount, sorted.
    mounts: Vec<String>,
    /// Processes in namespaces other than ours (containers), pid -> command line.
    contained: BTreeMap<i32, String>,
    /// Network interfaces, "host NAME" and "sandbox NAME".
    links: Vec<String>,
    /// Files under the state directory.
    state: Vec<String>,
    /// The workshop's cgroups, in the v2 tree and each v1 tree.
    cgroups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leak {
    Mount(String),
    MountGone(String),
    Process(i32, String),
    Link(String),
    State(String),
    Cgroup(String),
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Leak::Mount(m) => write!(f, "left mounted on the host: {m}"),
            Leak::MountGone(m) => write!(f, "a host mount disappeared: {m}"),
            Leak::Process(pid, cmd) => {
                write!(f, "a contained process is still running: pid {pid} ({cmd})")
            }
            Leak::Link(link) => write!(f, "a network interface was left: {link}"),
            Leak::State(path) if Path::new(path).starts_with(Path::new(paths::STORE).join(STORE_TMP)) => {
                write!(f, "left in the store's tmp/ (a pull or import must remove its own): {path}")
            }
            Leak::State(path) => write!(f, "a state file was left: {path}"),
            Leak::Cgroup(path) => write!(f, "a cgroup was left: {path}"),
        }
    }
}

/// The leaks since `before`, once the kernel is done: it deletes a dead
/// container's veth pair in the background, with its network namespace, a
/// moment after the last process ended. Only links get that moment (a second).
pub fn settled_since(before: &Snapshot) -> Vec<Leak> {
    let mut leaked = snapshot().leaks_since(before);
    for _ in 0..100 {
        if !leaked.iter().any(|leak| matches!(leak, Leak::Link(_))) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        leaked = snapshot().leaks_since(before);
    }
    leaked
}

pub fn snapshot() -> Snapshot {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = mountinfo.lines().filter_map(mount_key).collect();
    mounts.sort();
    let mut links: Vec<String> =
        links_in("/proc/self/net/dev").into_iter().map(|l| format!("host {l}")).collect();
    if let Some(sandbox) = crate::sandbox::get() {
        links.extend(sandbox.links().into_iter().map(|l| format!("sandbox {l}")));
    }
    Snapshot {
        mounts,
        contained: contained_processes(),
        links,
        state: [
            files_under(Path::new(STATE)),
            KEPT.iter().flat_map(|dir| entries_of(Path::new(dir))).collect(),
            store_entries(),
        ]
        .concat(),
        cgroups: workshop_cgroups(),
    }
}

/// The runtimes' parent groups ("workshop") and the groups below them
/// (v1's freezer tree too: exercise 06's runtime makes its groups there; and
/// the devices tree, for step 09's allow-list).
fn workshop_cgroups() -> Vec<String> {
    let mut groups = Vec::new();
    for tree in ["", "memory", "cpu", "pids", "freezer", "devices"] {
        let parent = Path::new("/sys/fs/cgroup").join(tree).join("workshop");
        if parent.is_dir() {
            groups.push(parent.to_string_lossy().into_owned());
            let children = std::fs::read_dir(&parent).into_iter().flatten().flatten();
            groups.extend(
                children.filter(|e| e.path().is_dir()).map(|e| e.path().to_string_lossy().into_owned()),
            );
        }
    }
    groups.sort();
    groups
}

/// What step 10's store holds (see STORE_KEPT).
fn store_entries() -> Vec<String> {
    let store = Path::new(paths::STORE);
    let mut entries: Vec<String> = STORE_KEPT.iter().flat_map(|dir| entries_of(&store.join(dir))).collect();
    entries.extend(files_under(&store.join(STORE_TAGS)));
    entries.extend(entries_of(&store.join(STORE_TMP)));
    entries
}

fn entries_of(dir: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    let mut names: Vec<String> = entries.map(|e| e.path().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => files.extend(files_under(&entry.path())),
            _ => files.push(entry.path().to_string_lossy().into_owned()),
        }
    }
    files.sort();
    files
}

/// mountinfo: `id parent major:minor root mount_point options [optional...] - fstype source super`.
fn mount_key(line: &str) -> Option<String> {
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    Some(format!("{} {} {}", fields.get(4)?, fields.get(dash + 1)?, fields.get(dash + 2)?))
}

/// Makes this process the "subreaper" of everything it starts: a container
/// process whose runtime died is re-parented to us, not to the host's init,
/// so we can tell our leftovers from the rest of the machine.
pub fn adopt_orphans() {
    // SAFETY: prctl(2) with plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// Our descendants that live in other namespaces than ours (containers).
fn contained_processes() -> BTreeMap<i32, String> {
    // Reap orphans that already died (adopt_orphans makes them our children).
    // SAFETY: waitpid(2) with WNOHANG; called between tests, when no run is live.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    let ns = |pid: &str, name: &str| std::fs::read_link(format!("/proc/{pid}/ns/{name}")).ok();
    let ours: Vec<_> = NAMESPACES.iter().map(|n| ns("self", n)).collect();
    let mut parents = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // stat: `pid (comm) state ppid ...`; comm may contain spaces, so split after ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        parents.insert(pid, ppid.unwrap_or(0));
    }
    let me = std::process::id() as i32;
    let is_ours = |mut pid: i32| {
        while pid > 1 {
            pid = parents.get(&pid).copied().unwrap_or(0);
            if pid == me {
                return true;
            }
        }
        false
    };
    let mut found = BTreeMap::new();
    for &pid in parents.keys() {
        let name = pid.to_string();
        let theirs: Vec<_> = NAMESPACES.iter().map(|n| ns(&name, n)).collect();
        if is_ours(pid) && theirs != ours {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string();
            found.insert(pid, cmdline);
        }
    }
    found
}

impl Snapshot {
    /// What is in `self` (after) but was not in `before`.
    pub fn leaks_since(&self, before: &Snapshot) -> Vec<Leak> {
        let mut leaks = Vec::new();
        leaks.extend(multiset_minus(&self.mounts, &before.mounts).into_iter().map(Leak::Mount));
        leaks.extend(multiset_minus(&before.mounts, &self.mounts).into_iter().map(Leak::MountGone));
        for (pid, cmd) in &self.contained {
            if before.contained.get(pid) != Some(cmd) {
                leaks.push(Leak::Process(*pid, cmd.clone()));
            }
        }
        leaks.extend(multiset_minus(&self.links, &before.links).into_iter().map(Leak::Link));
        leaks.extend(multiset_minus(&self.state, &before.state).into_iter().map(Leak::State));
        leaks.extend(multiset_minus(&self.cgroups, &before.cgroups).into_iter().map(Leak::Cgroup));
        leaks
    }
}

fn multiset_minus(a: &[String], b: &[String]) -> Vec<String> {
    let mut rest = b.to_vec();
    let mut extra = Vec::new();
    for item in a {
        match rest.iter().position(|x| x == item) {
            Some(i) => {
                rest.swap_remove(i);
            }
            None => extra.push(item.clone()),
        }
    }
    extra
}

/// Removes what a failed test left behind: kills leaked processes (ours, by
/// pid), deletes leaked links and state files, and lazily unmounts leaked
/// mounts, deepest first.
pub fn reclaim(leaks: &[Leak]) {
    let ours: Vec<i32> = contained_processes().into_keys().collect();
    for leak in leaks {
        match leak {
            // SAFETY: kill(2) on a process a test of ours started.
            Leak::Process(pid, _) => unsafe {
                libc::kill(*pid, libc::SIGKILL);
            },
            Leak::Link(link) => {
                let (place, name) = link.split_once(' ').unwrap_or(("", link));
                let mut cmd = Command::new("ip");
                cmd.args(["link", "del", name]);
                // Only our kinds of interface, in the machine's own namespace.
                if place == "sandbox" || name.starts_with("veth") || name.starts_with("workshop") {
                    let _ = crate::run::quietly(&mut cmd, place == "sandbox");
                }
            }
            // Leases and records name their runtime's pid: keep a live one's.
            // Leases and records name their runtime: keep a live one's. Of what
            // is kept on disk, only a container layer whose runtime is gone is
            // removed; images and volumes are reported, never deleted.
            Leak::State(path) if path.starts_with(KEPT[0]) => {
                let id = Path::new(path).file_name().unwrap_or_default().to_string_lossy().into_owned();
                if !names_a_live_process(&format!("{STATE}/containers/{id}")) {
                    let _ = remove_container_layer(Path::new(path));
                }
            }
            Leak::State(path) if path.starts_with(STATE) && !names_a_live_process(path) => {
                let _ = std::fs::remove_file(path);
            }
            // Half a download or an unpacked layer nobody finished: no run is live now.
            Leak::State(path) if Path::new(path).starts_with(Path::new(paths::STORE).join(STORE_TMP)) => {
                let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
            }
            Leak::Cgroup(path) => remove_cgroup(Path::new(path), &ours),
            _ => {}
        }
    }
    let mut mounts: Vec<&str> = leaks
        .iter()
        .filter_map(|l| match l {
            Leak::Mount(key) => key.split(' ').next(),
            _ => None,
        })
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount_point in mounts {
        let Ok(path) = std::ffi::CString::new(mount_point) else {
            continue;
        };
        // SAFETY: a plain umount2(2) call with a valid C string.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A kept container layer: unmount its root if still mounted, then remove it.
fn remove_container_layer(dir: &Path) -> std::io::Result<()> {
    if let Ok(c) = std::ffi::CString::new(dir.join("merged").to_string_lossy().as_bytes()) {
        // SAFETY: umount2(2) with a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    std::fs::remove_dir_all(dir)
}

fn names_a_live_process(path: &str) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let pids = text.split_whitespace().filter_map(|w| w.parse::<u32>().ok()).filter(|&p| p > 1);
    pids.take(2).any(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Kills our processes in a leaked cgroup and removes it (a group that holds
/// someone else's processes stays: it is not ours to remove).
fn remove_cgroup(dir: &Path, ours: &[i32]) {
    // A group whose container's runtime still runs is someone else's, not a leak of ours.
    let id = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    if names_a_live_process(&format!("{STATE}/containers/{id}")) {
        return;
    }
    let children = std::fs::read_dir(dir).into_iter().flatten().flatten().filter(|e| e.path().is_dir());
    for child in children.collect::<Vec<_>>() {
        remove_cgroup(&child.path(), ours);
    }
    // A frozen process (a `pause` left so) dies of SIGKILL only once thawed.
    for (file, thawed) in [("freezer.state", "THAWED"), ("cgroup.freeze", "0")] {
        if dir.join(file).exists() {
            let _ = std::fs::write(dir.join(file), thawed);
        }
    }
    for _ in 0..100 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).filter(|p| ours.contains(p))
        {
            // SAFETY: kill(2) on a process in a container a test of ours started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_key_reads_mountinfo() {
        let line = "36 25 0:32 / /sys/fs/cgroup/memory rw,relatime shared:5 - cgroup cgroup rw,memory";
        assert_eq!(mount_key(line).unwrap(), "/sys/fs/cgroup/memory cgroup cgroup");
    }

    #[test]
    fn leaks_are_new_or_missing_entries() {
        let before = Snapshot {
            mounts: vec!["/ ext4 a".into(), "/x tmpfs t".into()],
            contained: BTreeMap::new(),
            links: vec!["host lo".into()],
            state: vec![],
            cgroups: vec![],
        };
        let mut after = before.clone();
        after.mounts.push("/x tmpfs t".into());
        after.mounts.retain(|m| m != "/ ext4 a");
        after.contained.insert(7, "sleep".into());
        after.links.push("sandbox veth1".into());
        after.state.push("/run/workshop/ipam/10.77.0.2".into());
        after.cgroups.push("/sys/fs/cgroup/workshop/abc".into());
        let leaks = after.leaks_since(&before);
        assert!(leaks.contains(&Leak::Mount("/x tmpfs t".into())));
        assert!(leaks.contains(&Leak::MountGone("/ ext4 a".into())));
        assert!(leaks.contains(&Leak::Process(7, "sleep".into())));
        assert!(leaks.contains(&Leak::Link("sandbox veth1".into())));
        assert!(leaks.contains(&Leak::State("/run/workshop/ipam/10.77.0.2".into())));
        assert!(leaks.contains(&Leak::Cgroup("/sys/fs/cgroup/workshop/abc".into())));
        assert!(before.leaks_since(&before).is_empty());
    }
}
