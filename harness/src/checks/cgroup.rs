//! Step 06: cgroups limit memory, CPU time and processes, on v1 and v2.
//!
//! The host tier exercises whatever this machine has (v1 here); the VM tier
//! (`cargo xtask vm-test`) runs these same checks on a pure cgroup v2 kernel.

use crate::{Check, Ctx, Run};
use anyhow::{ensure, Context, Result};
use std::path::Path;

pub fn checks() -> Vec<Check> {
    vec![
        Check::new(6, "cgroup::a_memory_hog_is_oom_killed", a_memory_hog_is_oom_killed),
        Check::new(6, "cgroup::the_same_hog_runs_fine_without_a_limit", the_hog_runs_fine_without_a_limit),
        Check::new(6, "cgroup::the_oom_score_is_not_inherited", the_oom_score_is_not_inherited),
        Check::new(6, "cgroup::a_fork_loop_stops_at_the_pids_limit", a_fork_loop_stops_at_the_pids_limit),
        Check::new(6, "cgroup::half_a_cpu_is_half_a_cpu", half_a_cpu_is_half_a_cpu),
        Check::new(6, "cgroup::the_host_sees_the_limits_in_the_containers_group", host_sees_the_limits),
        Check::new(6, "cgroup::a_killed_runtimes_group_is_cleaned_up", killed_runtimes_group_is_cleaned_up)
            .plain_only(),
        Check::new(6, "errors::bad_limits_are_125_in_one_line", bad_limits_are_125).plain_only(),
        Check::new(
            6,
            "cgroup::a_nested_root_with_processes_is_refused_in_one_line",
            nested_root_with_processes,
        )
        .plain_only(),
    ]
}

fn a_memory_hog_is_oom_killed(ctx: &Ctx) -> Result<()> {
    let outcome = ctx.run().args(["--memory", "32m"]).cmd(["/bin/probe", "--alloc-mib", "100"]).output()?;
    outcome
        .expect_status(137)
        .and_then(|o| o.expect_one_error_line(&["container killed: out of memory (limit 32 MiB)"]))
        .with_context(memory_facts)?;
    Ok(())
}

/// What decides whether a memory hog is OOM-killed, for a failure's message:
/// swap (and whether the group can limit it), inherited OOM protection, THP.
fn memory_facts() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let swaps = read("/proc/swaps").lines().count().saturating_sub(1);
    format!(
        "memory facts: {swaps} swap device(s); memory.memsw (v1 swap limit) {}; memory.swap.max (v2) {}; \
         our oom_score_adj {}; transparent hugepages {}",
        if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
            "present"
        } else {
            "absent"
        },
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "used" } else { "n/a" },
        read("/proc/self/oom_score_adj").trim(),
        read("/sys/kernel/mm/transparent_hugepage/enabled").trim(),
    )
}

/// A runtime started with OOM protection (some services run at -1000, which
/// makes them unkillable) must not pass it on. Any process may raise its own
/// score, so the runtime starts at 500 here; the container must be at 0.
fn the_oom_score_is_not_inherited(ctx: &Ctx) -> Result<()> {
    let raise = ["sh", "-c", "echo 500 > /proc/self/oom_score_adj && exec \"$@\"", "sh"];
    let outcome = ctx.run().wrapped(raise).cmd(["cat", "/proc/self/oom_score_adj"]).output()?;
    outcome.expect_status(0)?;
    let score = outcome.stdout.trim();
    ensure!(score == "0", "the container's oom_score_adj is {score:?}, not 0 (the runtime ran at 500)");
    Ok(())
}

fn the_hog_runs_fine_without_a_limit(ctx: &Ctx) -> Result<()> {
    ctx.probe(&[], &["--alloc-mib", "100"])?.action(0)?.expect_ok()?;
    ctx.probe(&["--memory", "256m"], &["--alloc-mib", "100"])?.action(0)?.expect_ok()?;
    Ok(())
}

fn a_fork_loop_stops_at_the_pids_limit(ctx: &Ctx) -> Result<()> {
    let seen = ctx.probe(&["--pids-limit", "8"], &["--fork", "20"])?;
    let fork = seen.action(0)?;
    fork.expect_errno(libc::EAGAIN).context("fork should fail with EAGAIN at the pids limit")?;
    let forked = fork.value().as_i64().unwrap_or(-1);
    ensure!(forked == 7, "with --pids-limit 8 the probe (1) forked {forked} children, not 7");
    let free = ctx.probe(&[], &["--fork", "20"])?;
    ensure!(free.action(0)?.expect_ok()? == 20, "control: without a limit, 20 forks should work");
    Ok(())
}

fn half_a_cpu_is_half_a_cpu(ctx: &Ctx) -> Result<()> {
    // CPU time over wall time of a busy loop; generous bounds, a loaded host only lowers it.
    let seen = ctx.probe(&["--cpus", "0.5"], &["--spin-ms", "1000"])?;
    let spin = seen.action(0)?.expect_ok()?;
    let (cpu, wall) = (spin["cpu_ms"].as_f64().unwrap_or(0.0), spin["wall_ms"].as_f64().unwrap_or(1.0));
    let share = cpu / wall;
    ensure!(
        (0.25..=0.65).contains(&share),
        "under --cpus 0.5 a busy loop got {share:.2} of a CPU ({cpu} ms in {wall} ms)"
    );
    Ok(())
}

/// The container's group in one controller's tree, from /proc/PID/cgroup
/// (v2: "0::/workshop/ID"; v1: "N:memory:/workshop/ID").
fn group_of(pid: i32, controller: &str) -> Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let line = text.lines().find(|line| {
        let fields: Vec<&str> = line.splitn(3, ':').collect();
        if v2 {
            fields[0] == "0"
        } else {
            fields[1].split(',').any(|c| c == controller)
        }
    });
    let path = line.and_then(|l| l.splitn(3, ':').nth(2)).context("the container is in no cgroup")?;
    ensure!(path.starts_with("/workshop/"), "the container is in {path}, not below /workshop");
    let tree = if v2 {
        Path::new("/sys/fs/cgroup").to_path_buf()
    } else {
        Path::new("/sys/fs/cgroup").join(controller)
    };
    Ok(tree.join(path.trim_start_matches('/')))
}

fn read(path: std::path::PathBuf) -> Result<String> {
    Ok(std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?.trim().to_string())
}

fn host_sees_the_limits(ctx: &Ctx) -> Result<()> {
    let flags = ["--memory", "64m", "--cpus", "0.5", "--pids-limit", "16"];
    let running = ctx.run().args(flags).cmd(["sleep", "30"]).spawn()?;
    let pid = running.container_pid()?;
    let seen = (|| -> Result<Vec<String>> {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let group = group_of(pid, "")?;
            Ok(vec![
                read(group.join("memory.max"))?,
                read(group.join("cpu.max"))?,
                read(group.join("pids.max"))?,
            ])
        } else {
            Ok(vec![
                read(group_of(pid, "memory")?.join("memory.limit_in_bytes"))?,
                read(group_of(pid, "cpu")?.join("cpu.cfs_quota_us"))?
                    + " "
                    + &read(group_of(pid, "cpu")?.join("cpu.cfs_period_us"))?,
                read(group_of(pid, "pids")?.join("pids.max"))?,
            ])
        }
    })();
    // SAFETY: kill(2) on the container process this check started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    running.wait()?.expect_status(137)?;
    let seen = seen?;
    ensure!(seen == ["67108864", "50000 100000", "16"], "the container's group holds {seen:?}");
    Ok(())
}

fn killed_runtimes_group_is_cleaned_up(ctx: &Ctx) -> Result<()> {
    // --net none: this check is about the group (a killed runtime's lease waits for the next run).
    let mut running = ctx.run().args(["--net", "none", "--memory", "64m"]).cmd(["sleep", "30"]).spawn()?;
    let container = running.container_pid()?;
    let group = group_of(container, "memory")?;
    running.signal(libc::SIGKILL)?; // the runtime, not the container: nobody cleans up
    while running.is_running() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ensure!(group.exists(), "control: the group should outlive a SIGKILLed runtime");
    let cleanup = Run::raw(&ctx.step.bin).arg("cleanup").output()?;
    cleanup.expect_status(0)?;
    // The orphaned container held the runtime's output pipes; cleanup killed it.
    running.wait()?.expect_status(137)?;
    ensure!(!group.exists(), "`cleanup` left the killed runtime's group {}", group.display());
    ensure!(
        !Path::new(&format!("/proc/{container}")).exists() || is_zombie(container),
        "`cleanup` left the container running"
    );
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

fn bad_limits_are_125(ctx: &Ctx) -> Result<()> {
    let cases =
        [("--memory", "0"), ("--memory", "12q"), ("--cpus", "-1"), ("--cpus", "abc"), ("--pids-limit", "0")];
    for (flag, value) in cases {
        crate::figures::add(crate::figures::INPUTS, 1);
        let outcome = ctx.run().args([flag, value]).cmd(["true"]).output()?;
        outcome.expect_status(125)?.expect_one_error_line(&[flag, value])?;
    }
    Ok(())
}

/// cgroup v2's "no internal processes" rule, as a runtime meets it inside a
/// cgroup namespace (docker-in-docker, a nested or delegated root): the
/// namespace's root is not the real root, so while it holds processes (here the
/// runtime itself) it cannot hand controllers down. The runtime must say so in
/// one line, not fail with a bare EBUSY. The control moves the shell into a
/// leaf first, as the message advises: then the same run works.
fn nested_root_with_processes(ctx: &Ctx) -> Result<()> {
    let root = Path::new("/sys/fs/cgroup");
    if !root.join("cgroup.controllers").exists() {
        println!(
            "cgroup::a_nested_root_with_processes_is_refused_in_one_line: this host is not cgroup v2 \
             (no subtree_control, no such rule): nothing to check here; the VM tier runs it on pure v2"
        );
        return Ok(());
    }
    // The real root hands the controllers to its children (the runtime does the same).
    std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
    let leaf = "mkdir /sys/fs/cgroup/init && echo $$ > /sys/fs/cgroup/init/cgroup.procs &&";
    let control = in_a_nested_root(ctx, "control", leaf);
    control?.expect_status(0).context("control: with the shell moved to a leaf, the run should work")?;
    let refused = in_a_nested_root(ctx, "refused", "")?;
    refused.expect_status(125)?.expect_one_error_line(&["no internal processes", "leaf"])?;
    Ok(())
}

/// Runs `true` in a container from a shell that joins a fresh group, then a new
/// cgroup namespace rooted there with its own cgroup2 mount on /sys/fs/cgroup
/// (in a mount namespace of its own), then runs `to_leaf`; removes the group after.
/// (A fresh group each time: one that has handed controllers down takes no processes.)
fn in_a_nested_root(ctx: &Ctx, label: &str, to_leaf: &str) -> Result<crate::Outcome> {
    let nest = Path::new("/sys/fs/cgroup").join(format!("workshop-test-nest-{}-{label}", std::process::id()));
    std::fs::create_dir(&nest).with_context(|| format!("mkdir {}", nest.display()))?;
    let unshare = util_linux_unshare();
    let outcome = unshare.and_then(|unshare| {
        // The same filesystem cannot be mounted again on top of itself: unmount it first.
        let inner = format!(
            "umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && {to_leaf} exec \"$@\""
        );
        let outer = format!(
            "echo $$ > {}/cgroup.procs && exec {unshare} --cgroup --mount sh -c '{inner}' sh \"$@\"",
            nest.display()
        );
        let wrapper = ["sh".to_string(), "-c".to_string(), outer, "sh".to_string()];
        ctx.run().wrapped(wrapper).args(["--net", "none", "--memory", "64m"]).cmd(["true"]).output()
    });
    // The leaf, then the group (the runtime removed its own groups below it).
    let _ = std::fs::remove_dir(nest.join("init"));
    let removed = std::fs::remove_dir(&nest).with_context(|| format!("rmdir {}", nest.display()));
    let outcome = outcome?;
    removed?;
    Ok(outcome)
}

/// util-linux's unshare (busybox's has no --cgroup, and busybox's sh runs its own
/// applet whatever PATH says, so the path is spelled out). The VM has it in /usr/local/bin.
fn util_linux_unshare() -> Result<String> {
    let found = ["/usr/local/bin/unshare", "/usr/bin/unshare", "/bin/unshare"]
        .into_iter()
        .find(|path| std::fs::canonicalize(path).is_ok_and(|real| !real.ends_with("busybox")));
    found.map(String::from).context("no util-linux unshare (with --cgroup) on this machine")
}
