//! Seccomp (`--security-opt seccomp=...`): a filter in the kernel that sees
//! every system call the container makes and lets it run, fails it with an
//! errno, or kills the caller. Capabilities decide what root may do; seccomp
//! shrinks the part of the kernel a container can reach at all, so a bug in
//! keyrings, BPF or namespace code stays out of reach, even for root.
//!
//! Docker installs a filter by default: `default_filter` is that policy written
//! in Rust, `load` reads one in Docker's JSON format (profile.rs), `compile`
//! turns a policy into BPF with the seccompiler crate, and `load_programs`
//! hands that to the kernel.

use anyhow::{Context, Result};
use libc::{BPF_ABS, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
use seccompiler::{BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition};
use seccompiler::{SeccompFilter, SeccompRule};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{profile, syscalls};

// ANCHOR: types
/// What the kernel does with a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// Fail the call with this errno, without running it.
    Errno(u16),
    KillThread,
    KillProcess,
    /// Send SIGSYS, which a program may catch (to emulate the call, say).
    Trap,
    /// Allow, and write an audit record.
    Log,
}

/// A test of one argument: `args[index] <op> value`, as unsigned 64-bit numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgCheck {
    pub index: u8,
    pub op: Op,
    pub value: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `args[index] & mask == value`.
    MaskedEq {
        mask: u64,
    },
}

/// System call `nr` gets `action` when every check in `args` holds (no checks: always).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub nr: i64,
    pub args: Vec<ArgCheck>,
    pub action: Action,
}

/// A policy: the rules, and the action for every call that no rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub default: Action,
    pub rules: Vec<Rule>,
}
// ANCHOR_END: types

// ANCHOR: default
/// Calls that ordinary programs make: Docker's allow-list (moby's
/// profiles/seccomp/default.json) for x86_64 and aarch64. Not in it, so they
/// fail with EPERM: keyrings (keyctl, add_key, request_key), kexec, userfaultfd,
/// io_uring, swapon/swapoff, pivot_root, calls newer than this list, and the
/// calls that need a capability (below) unless the container holds it.
const ALLOWED: &str = "
    accept accept4 access adjtimex alarm arch_prctl bind brk cachestat capget capset chdir chmod chown
    clock_adjtime clock_getres clock_gettime clock_nanosleep close close_range connect copy_file_range
    creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
    epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2
    fadvise64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchownat fcntl fdatasync
    fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstatfs fsync ftruncate futex
    futex_requeue futex_wait futex_waitv futex_wake futimesat get_robust_list get_thread_area getcpu
    getcwd getdents getdents64 getegid geteuid getgid getgroups getitimer getpeername getpgid getpgrp
    getpid getppid getpriority getrandom getresgid getresuid getrlimit getrusage getsid getsockname
    getsockopt gettid gettimeofday getuid getxattr getxattrat inotify_add_watch inotify_init
    inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents io_setup io_submit
    ioctl ioprio_get ioprio_set kill landlock_add_rule landlock_create_ruleset landlock_restrict_self
    lchown lgetxattr link linkat listen listmount listxattr listxattrat llistxattr lremovexattr lseek
    lsetxattr lstat madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat
    mknod mknodat mlock mlock2 mlockall mmap modify_ldt mprotect mq_getsetattr mq_notify mq_open
    mq_timedreceive mq_timedsend mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock
    munlockall munmap nanosleep newfstatat open openat openat2 pause pidfd_open pidfd_send_signal pipe
    pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll prctl pread64 preadv preadv2 prlimit64
    process_mrelease process_vm_readv process_vm_writev pselect6 ptrace pwrite64 pwritev pwritev2 read
    readahead readlink readlinkat readv recvfrom recvmmsg recvmsg remap_file_pages removexattr
    removexattrat rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
    rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_tgsigqueueinfo
    sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr sched_getparam
    sched_getscheduler sched_rr_get_interval sched_setaffinity sched_setattr sched_setparam
    sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop sendfile sendmmsg
    sendmsg sendto set_robust_list set_thread_area set_tid_address setfsgid setfsuid setgid setgroups
    setitimer setpgid setpriority setregid setresgid setresuid setreuid setrlimit setsid setsockopt
    setuid setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
    socketpair splice stat statfs statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo
    tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_settime
    timerfd_create timerfd_gettime timerfd_settime times tkill truncate umask uname unlink unlinkat
    uretprobe utime utimensat utimes vfork vmsplice wait4 waitid write writev
";

/// Calls that also need a capability: allowed only to a container that holds
/// it (Docker's `includes.caps`), so that `--cap-add` alone is enough for them.
const WITH_CAP: &[(&str, &str)] = &[
    (
        "CAP_SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie lsm_get_self_attr
         lsm_list_modules lsm_set_self_attr mount mount_setattr move_mount open_tree perf_event_open
         quotactl quotactl_fd setdomainname sethostname setns syslog umount2 unshare",
    ),
    // Docker allows name_to_handle_at to all; here it goes with its other half.
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at name_to_handle_at"),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    ("CAP_SYS_PTRACE", "kcmp pidfd_getfd process_madvise"),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    ("CAP_SYS_TIME", "settimeofday clock_settime"),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    ("CAP_SYS_NICE", "get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF", "bpf"),
    ("CAP_PERFMON", "perf_event_open"),
];

/// clone(2)'s flags that make new namespaces: Docker's mask 0x7E020000.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;
const _: () = assert!(NAMESPACE_FLAGS == 0x7E02_0000);

/// personality(2) values Docker allows: Linux and 32-bit Linux, each also with
/// UNAME26, and 0xffffffff, which only asks for the current value.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

const EPERM: u16 = libc::EPERM as u16;
const ENOSYS: u16 = libc::ENOSYS as u16;

/// Docker's default policy for a container that holds `caps` ("CAP_CHOWN", ...).
pub fn default_filter(caps: &[&str]) -> Filter {
    let mut rules: Vec<Rule> = allow(ALLOWED).collect();
    for (cap, names) in WITH_CAP {
        if caps.contains(cap) {
            rules.extend(allow(names));
        }
    }
    if !caps.contains(&"CAP_SYS_ADMIN") {
        // clone(2) without namespace flags only (its flags are argument 0 on
        // x86_64 and aarch64): so no new namespaces, as unshare is not allowed.
        let no_namespaces = check(0, Op::MaskedEq { mask: NAMESPACE_FLAGS }, 0);
        rules.extend(rule("clone", Action::Allow, &[no_namespaces]));
        // clone3(2) passes its flags in memory, which BPF cannot read. ENOSYS
        // ("no such call") makes glibc and others fall back to clone(2).
        rules.extend(rule("clone3", Action::Errno(ENOSYS), &[]));
    }
    for persona in PERSONALITIES {
        rules.extend(rule("personality", Action::Allow, &[check(0, Op::Eq, persona)]));
    }
    // socket(2) for every address family but AF_ALG (38, the kernel's crypto
    // API) and AF_VSOCK (40, sockets to a hypervisor): rarely needed, often buggy.
    for family in [check(0, Op::Lt, 38), check(0, Op::Eq, 39), check(0, Op::Gt, 40)] {
        rules.extend(rule("socket", Action::Allow, &[family]));
    }
    Filter { default: Action::Errno(EPERM), rules }
}

/// Allow rules for the calls in `names`.
fn allow(names: &str) -> impl Iterator<Item = Rule> + '_ {
    names.split_whitespace().filter_map(|name| rule(name, Action::Allow, &[]))
}

/// The rule for `name`, or none when this architecture has no such call
/// (aarch64 has no open(2), only openat(2)): Docker skips those too.
fn rule(name: &str, action: Action, args: &[ArgCheck]) -> Option<Rule> {
    let nr = syscalls::number(name)?;
    Some(Rule { nr, args: args.to_vec(), action })
}

fn check(index: u8, op: Op, value: u64) -> ArgCheck {
    ArgCheck { index, op, value }
}
// ANCHOR_END: default

/// Reads a profile in Docker's JSON format (`--security-opt seccomp=FILE`) for
/// a container that holds `caps`; see profile.rs.
pub fn load(path: &Path, caps: &[&str]) -> Result<Filter> {
    let json = profile::read(path)?;
    profile::parse(&json, &profile::Host::current(caps)?)
}

// ANCHOR: compile
/// The BPF programs for `filter`, in the order `load_programs` loads them.
///
/// seccompiler builds programs with one action for the calls they match and
/// one for all others, while a policy has an action per rule. The kernel runs
/// every program a process has on each call and takes the strictest answer
/// (kernel/seccomp.c, seccomp_run_filters: kill, then trap, errno, log, allow;
/// between two errnos, the program loaded last). So there is one program per
/// action, "its rules: that action, the rest: allow", and one for the default,
/// "any rule's call: allow, the rest: the default". A call that a rule matches
/// gets that rule's action, any other call the default. Where rules of two
/// actions match one call, the stricter action wins.
pub fn compile(filter: &Filter) -> Result<Vec<BpfProgram>> {
    // A rule that says what the default says changes nothing (runc skips it too).
    let rules: Vec<&Rule> = filter.rules.iter().filter(|rule| rule.action != filter.default).collect();
    let mut programs = Vec::new();
    #[cfg(target_arch = "x86_64")]
    programs.push(x32_guard());
    // Every program after the first is loaded with seccomp(2), which the ones
    // already loaded filter: one that may fail seccomp(2) itself goes last.
    let mut last = Vec::new();
    for action in actions(&rules) {
        let matches = matches(rules.iter().copied().filter(|rule| rule.action == action))?;
        let blocks_seccomp = matches.contains_key(&libc::SYS_seccomp);
        let program = program(matches, Action::Allow, action)?;
        if blocks_seccomp {
            last.push(program)
        } else {
            programs.push(program)
        }
    }
    if filter.default != Action::Allow {
        programs.push(program(matches(rules.iter().copied())?, filter.default, Action::Allow)?);
    }
    programs.extend(last);
    Ok(programs)
}

/// The actions other than Allow that `rules` use, in order of first use.
fn actions(rules: &[&Rule]) -> Vec<Action> {
    let mut actions = Vec::new();
    for rule in rules {
        if rule.action != Action::Allow && !actions.contains(&rule.action) {
            actions.push(rule.action);
        }
    }
    actions
}

/// Rules in seccompiler's shape: for each call number the argument rules, any
/// of which may hold; an empty list means "whatever the arguments".
type Matches = BTreeMap<i64, Vec<SeccompRule>>;

/// Rules that share an action, as `Matches`.
fn matches<'a>(rules: impl Iterator<Item = &'a Rule>) -> Result<Matches> {
    let mut by_nr = Matches::new();
    let mut any_args = BTreeSet::new();
    for rule in rules {
        // seccompiler takes any i64, but a call number is 32 bits (and it would panic).
        u32::try_from(rule.nr).ok().with_context(|| format!("{} is not a system call number", rule.nr))?;
        let alternatives = by_nr.entry(rule.nr).or_default();
        if rule.args.is_empty() {
            any_args.insert(rule.nr);
        } else {
            alternatives.push(seccomp_rule(&rule.args)?);
        }
    }
    // A rule without checks matches the call whatever the others check.
    for nr in any_args {
        by_nr.insert(nr, Vec::new());
    }
    Ok(by_nr)
}

fn seccomp_rule(args: &[ArgCheck]) -> Result<SeccompRule> {
    let condition = |arg: &ArgCheck| {
        // Qword: all 64 bits of the argument, the way libseccomp compares them.
        SeccompCondition::new(arg.index, SeccompCmpArgLen::Qword, arg.op.into(), arg.value)
    };
    let conditions = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
    Ok(SeccompRule::new(conditions)?)
}

/// One program: `on_match` for the calls in `matches`, `mismatch` for the rest.
///
/// seccompiler tests the call number against one rule after another: some
/// 350 tests for Docker's allow-list, on every system call, and the kernel
/// runs them for every call number when it loads the program (to cache which
/// calls are always allowed), which made starting a container 1 ms slower.
/// So a binary search on the number goes in front (`search`): it answers the
/// calls whose rules check no argument at once, and sends only the others on
/// to seccompiler's program, which then holds just those.
fn program(matches: Matches, mismatch: Action, on_match: Action) -> Result<BpfProgram> {
    let (checked, plain): (Matches, Matches) = matches.into_iter().partition(|(_, rules)| !rules.is_empty());
    let (mismatch_ret, match_ret) =
        (u32::from(SeccompAction::from(mismatch)), u32::from(SeccompAction::from(on_match)));
    // The number line cut into runs of calls with the same answer.
    let mut runs = vec![(0, Leaf::Return(mismatch_ret))];
    let all: BTreeSet<i64> = plain.keys().chain(checked.keys()).copied().collect();
    for nr in all {
        let leaf = if checked.contains_key(&nr) { Leaf::Checked } else { Leaf::Return(match_ret) };
        push_run(&mut runs, nr as u32, leaf);
        push_run(&mut runs, nr as u32 + 1, Leaf::Return(mismatch_ret));
    }
    let mut code = vec![
        // Another architecture's calls have other numbers: kill (as seccompiler does).
        load_word(OFFSET_ARCH),
        insn(BPF_JMP | BPF_JEQ | BPF_K, syscalls::AUDIT_ARCH, 1, 0),
        ret(SeccompAction::KillProcess.into()),
        load_word(OFFSET_NR),
    ];
    let mut to_checked = Vec::new();
    search(&runs, &mut code, &mut to_checked);
    for at in to_checked {
        code[at].k = (code.len() - at - 1) as u32; // to the first instruction after the search
    }
    if !checked.is_empty() {
        let filter = SeccompFilter::new(checked, mismatch.into(), on_match.into(), syscalls::TARGET)?;
        code.extend(BpfProgram::try_from(filter)?);
    }
    Ok(code)
}

/// What the search answers for a run of call numbers.
#[derive(Clone, Copy, PartialEq)]
enum Leaf {
    /// This seccomp return value (SECCOMP_RET_...).
    Return(u32),
    /// Ask seccompiler's program after the search: the rules check arguments.
    Checked,
}

/// Adds a run starting at `start`, merged with the one before when they agree.
fn push_run(runs: &mut Vec<(u32, Leaf)>, start: u32, leaf: Leaf) {
    if runs.last().is_some_and(|&(at, _)| at == start) {
        runs.pop();
    }
    if runs.last().is_none_or(|&(_, before)| before != leaf) {
        runs.push((start, leaf));
    }
}

/// The binary search over `runs` (sorted by start), as BPF with forward jumps
/// only: "number >= start of the right half? then jump over the left half".
/// Jumps to seccompiler's program are left for `program` to aim (`to_checked`).
fn search(runs: &[(u32, Leaf)], code: &mut Vec<seccompiler::sock_filter>, to_checked: &mut Vec<usize>) {
    if let [(_, leaf)] = runs {
        match *leaf {
            Leaf::Return(action) => code.push(ret(action)),
            Leaf::Checked => {
                to_checked.push(code.len());
                code.push(insn(BPF_JMP | BPF_JA, 0, 0, 0));
            }
        }
        return;
    }
    let (left, right) = runs.split_at(runs.len() / 2);
    // true: on to the next instruction, a jump to the right half; false: skip it.
    code.push(insn(BPF_JMP | BPF_JGE | BPF_K, right[0].0, 0, 1));
    let jump = code.len();
    code.push(insn(BPF_JMP | BPF_JA, 0, 0, 0));
    search(left, code, to_checked);
    code[jump].k = (code.len() - jump - 1) as u32;
    search(right, code, to_checked);
}

/// Where seccomp_data keeps the call number and the architecture.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

fn insn(code: u32, k: u32, jt: u8, jf: u8) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code: code as u16, jt, jf, k }
}

fn load_word(offset: u32) -> seccompiler::sock_filter {
    insn(BPF_LD | BPF_W | BPF_ABS, offset, 0, 0)
}

fn ret(action: u32) -> seccompiler::sock_filter {
    insn(BPF_RET | BPF_K, action, 0, 0)
}

impl From<Action> for SeccompAction {
    fn from(action: Action) -> Self {
        match action {
            Action::Allow => SeccompAction::Allow,
            Action::Errno(errno) => SeccompAction::Errno(errno.into()),
            Action::KillThread => SeccompAction::KillThread,
            Action::KillProcess => SeccompAction::KillProcess,
            Action::Trap => SeccompAction::Trap,
            Action::Log => SeccompAction::Log,
        }
    }
}

impl From<Op> for SeccompCmpOp {
    fn from(op: Op) -> Self {
        match op {
            Op::Eq => SeccompCmpOp::Eq,
            Op::Ne => SeccompCmpOp::Ne,
            Op::Lt => SeccompCmpOp::Lt,
            Op::Le => SeccompCmpOp::Le,
            Op::Gt => SeccompCmpOp::Gt,
            Op::Ge => SeccompCmpOp::Ge,
            Op::MaskedEq { mask } => SeccompCmpOp::MaskedEq(mask),
        }
    }
}

/// x32 programs run on x86_64 kernels: same arch value in seccomp_data, but bit
/// 30 set in the call number (seccomp(2) warns about it). seccompiler checks
/// only the arch, so a default of Allow would let this second, separately
/// numbered ABI through unchecked. Seven instructions, so written by hand.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> BpfProgram {
    use libc::{SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS};
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    vec![
        // A foreign arch (the other programs kill it too): kill.
        load_word(OFFSET_ARCH),
        insn(BPF_JMP | BPF_JEQ | BPF_K, syscalls::AUDIT_ARCH, 1, 0),
        ret(SECCOMP_RET_KILL_PROCESS),
        // An x32 call number: kill; any other: over to the other programs.
        load_word(OFFSET_NR),
        insn(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
        ret(SECCOMP_RET_KILL_PROCESS),
        ret(SECCOMP_RET_ALLOW),
    ]
}
// ANCHOR_END: compile

// ANCHOR: install
/// Child side, just before exec: gives `compile`'s programs to the kernel,
/// in order, for this process and all it forks and execs, for good.
///
/// The kernel takes a filter only from a process that has set no_new_privs
/// (prctl PR_SET_NO_NEW_PRIVS: no setuid program will run under a filter it
/// does not expect) or that holds CAP_SYS_ADMIN: the caller does one of the two
/// first. The filter applies to the calling thread; the child has no others.
/// It allocates nothing unless it fails, so
/// it is safe in a child forked from a multithreaded process.
pub fn load_programs(programs: &[BpfProgram]) -> Result<()> {
    for (n, program) in programs.iter().enumerate() {
        if let Err(err) = load_program(program) {
            return Err(refused(err, n + 1, programs.len()));
        }
    }
    Ok(())
}

fn load_program(program: &[seccompiler::sock_filter]) -> std::io::Result<()> {
    /// struct sock_fprog, from <linux/filter.h>.
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const seccompiler::sock_filter,
    }
    let len = u16::try_from(program.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = SockFprog { len, filter: program.as_ptr() };
    // seccompiler's apply_filter would also set no_new_privs: the caller's call.
    // SAFETY: `prog` points to `len` instructions that the kernel copies.
    let loaded = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) };
    if loaded != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The error for program `n` of `count`, with a hint where the kernel said EACCES.
fn refused(err: std::io::Error, n: usize, count: usize) -> anyhow::Error {
    let hint = match err.raw_os_error() {
        Some(libc::EACCES) => ": set no_new_privs first, or hold CAP_SYS_ADMIN",
        _ => "",
    };
    anyhow::anyhow!("seccomp(2), program {n} of {count}: {err}{hint}")
}
// ANCHOR_END: install

#[cfg(test)]
mod tests;
