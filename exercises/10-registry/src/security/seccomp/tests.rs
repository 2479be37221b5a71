//! The filters at work: each test forks a child that installs one, tries
//! system calls, and tells the parent through its exit status. Run as root.

use super::profile::tests::{ALL_CAPS, DOCKER_CAPS, DOCKER_DEFAULT};
use super::*;
use std::ffi::CString;
use std::io::{Read, Write};

#[derive(Debug, PartialEq, Eq)]
enum End {
    Exited(i32),
    Killed(i32),
}

/// Forks a child that runs `child` and exits with what it returns.
fn fork(child: impl FnOnce() -> i32) -> End {
    // SAFETY: the child runs `child` and exits; glibc's fork leaves malloc usable in it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(99);
        // SAFETY: ends the child at once, without the test harness's exit path.
        unsafe { libc::_exit(code) }
    }
    wait(pid)
}

fn wait(pid: libc::pid_t) -> End {
    let mut status = 0;
    // SAFETY: waits for our own child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        End::Exited(libc::WEXITSTATUS(status))
    } else {
        End::Killed(libc::WTERMSIG(status))
    }
}

/// Forks a child that sets no_new_privs, loads `programs`, then runs `body`.
fn under(programs: &[BpfProgram], body: impl FnOnce() -> i32) -> End {
    fork(|| {
        // SAFETY: prctl(2) with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return 100;
        }
        if load_programs(programs).is_err() {
            return 101;
        }
        body()
    })
}

/// A check that the child runs under the filter: what it shows, and the test.
type Check = (&'static str, fn() -> bool);

/// Runs `checks` in a child under `filter`; it exits with the number of the first that fails.
fn assert_passes(filter: &Filter, checks: &[Check]) {
    let programs = compile(filter).unwrap();
    let first_failing = || checks.iter().position(|(_, check)| !check()).map_or(0, |n| n as i32 + 1);
    match under(&programs, first_failing) {
        End::Exited(0) => {}
        End::Exited(n) if (1..=checks.len() as i32).contains(&n) => {
            panic!("under the filter: {}", checks[n as usize - 1].0)
        }
        other => panic!("the child under the filter: {other:?}"),
    }
}

/// The errno of a raw system call's result: 0 when it succeeded.
fn errno_of(result: libc::c_long) -> i32 {
    if result >= 0 {
        return 0;
    }
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn unshare_user_namespace() -> i32 {
    // SAFETY: unshare(2) with a flag: at worst this child gets a user namespace.
    errno_of(unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER as libc::c_long) })
}

fn clone_user_namespace() -> i32 {
    let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_long;
    // SAFETY: clone(2) without a new stack works like fork(2).
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
    match pid {
        // SAFETY: a child that the filter should have prevented: gone at once.
        0 => unsafe { libc::_exit(0) },
        1.. => {
            wait(pid as libc::pid_t);
            0
        }
        _ => errno_of(pid),
    }
}

fn keyctl() -> i32 {
    const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
    const KEY_SPEC_SESSION_KEYRING: libc::c_long = -3;
    // SAFETY: asks for the session keyring's id; touches no memory of ours.
    errno_of(unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) })
}

fn bpf() -> i32 {
    // SAFETY: no such command, no attributes: EINVAL when it runs.
    errno_of(unsafe { libc::syscall(libc::SYS_bpf, 0xffff, 0, 0) })
}

fn clone3() -> i32 {
    // SAFETY: a null clone_args: EFAULT when it runs.
    errno_of(unsafe { libc::syscall(libc::SYS_clone3, 0, 88) })
}

fn mount() -> i32 {
    // SAFETY: null source, target and type: EFAULT when it runs.
    errno_of(unsafe { libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0) })
}

fn personality(persona: libc::c_long) -> i32 {
    // SAFETY: personality(2) with a value.
    errno_of(unsafe { libc::syscall(libc::SYS_personality, persona) })
}

fn socket(family: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> i32 {
    // SAFETY: socket(2), and close(2) of what it returned.
    let fd = unsafe { libc::socket(family, kind, protocol) };
    if fd >= 0 {
        unsafe { libc::close(fd) };
    }
    errno_of(fd.into())
}

fn forks() -> bool {
    match fork(|| 7) {
        End::Exited(code) => code == 7,
        End::Killed(_) => false,
    }
}

fn thread_runs() -> bool {
    // glibc (2.34 and later) tries clone3 first, and falls back to clone on ENOSYS.
    std::thread::spawn(|| 7).join().is_ok_and(|n| n == 7)
}

/// Execs `/bin/true`; returns only if that fails.
fn exec_true() -> bool {
    let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
    // SAFETY: a NUL-terminated path and a null-terminated argv of literals.
    unsafe { libc::execv(argv[0], argv.as_ptr()) };
    false
}

const DEFAULT_CHECKS: &[Check] = &[
    ("getpid works", || unsafe { libc::getpid() } > 0),
    ("unshare(CLONE_NEWUSER) fails with EPERM", || unshare_user_namespace() == libc::EPERM),
    ("clone(CLONE_NEWUSER) fails with EPERM", || clone_user_namespace() == libc::EPERM),
    ("keyctl fails with EPERM", || keyctl() == libc::EPERM),
    ("bpf fails with EPERM", || bpf() == libc::EPERM),
    ("clone3 fails with ENOSYS", || clone3() == libc::ENOSYS),
    ("mount fails with EPERM", || mount() == libc::EPERM),
    ("personality(0xffffffff) works", || personality(0xffff_ffff) == 0),
    ("personality(ADDR_NO_RANDOMIZE) fails with EPERM", || personality(0x0040000) == libc::EPERM),
    ("socket(AF_ALG) fails with EPERM", || socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0) == libc::EPERM),
    ("a UDP socket opens", || socket(libc::AF_INET, libc::SOCK_DGRAM, 0) == 0),
    ("a raw ICMP socket opens (ping)", || socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) == 0),
    ("fork works", forks),
    ("a thread starts", thread_runs),
    ("execve(/bin/true) runs it", exec_true),
];

#[test]
fn the_default_filter() {
    assert_passes(&default_filter(&DOCKER_CAPS), DEFAULT_CHECKS);
}

#[test]
fn without_a_filter_the_same_calls_run() {
    // So the checks above see the filter at work, not the test machine's limits (as root).
    let unfiltered = || {
        let ran = [unshare_user_namespace() == 0, keyctl() != libc::EPERM, bpf() == libc::EINVAL];
        let faulted = [clone3() == libc::EFAULT, mount() == libc::EFAULT];
        i32::from(!ran.iter().chain(&faulted).all(|&ok| ok))
    };
    assert_eq!(fork(unfiltered), End::Exited(0));
}

#[test]
fn dockers_default_profile() {
    let filter = profile::parse(DOCKER_DEFAULT, &profile::Host::current(&DOCKER_CAPS).unwrap()).unwrap();
    assert_passes(&filter, DEFAULT_CHECKS);
}

#[test]
fn cap_sys_admin_allows_namespaces() {
    let checks: &[Check] = &[
        ("unshare(CLONE_NEWUSER) works", || unshare_user_namespace() == 0),
        ("clone3 runs (EFAULT for its null argument)", || clone3() == libc::EFAULT),
        ("keyctl still fails with EPERM", || keyctl() == libc::EPERM),
    ];
    assert_passes(&default_filter(&ALL_CAPS), checks);
    let filter = profile::parse(DOCKER_DEFAULT, &profile::Host::current(&ALL_CAPS).unwrap()).unwrap();
    assert_passes(&filter, checks);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn other_abis_are_killed() {
    let programs = compile(&default_filter(&DOCKER_CAPS)).unwrap();
    let x32_getpid = || {
        // SAFETY: x32's getpid; x32 is off in most kernels (ENOSYS) but seccomp sees it first.
        unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
        1
    };
    assert_eq!(under(&programs, x32_getpid), End::Killed(libc::SIGSYS));
    let i386_getpid = || {
        let pid: i32;
        // SAFETY: int 0x80 enters the kernel's i386 ABI, where 20 is getpid.
        unsafe {
            std::arch::asm!("int 0x80", inlateout("eax") 20 => pid,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                out("r12") _, out("r13") _, out("r14") _, out("r15") _)
        };
        i32::from(pid <= 0) + 1
    };
    assert_eq!(under(&programs, i386_getpid), End::Killed(libc::SIGSYS));
    // And without a filter the same calls return, so the filter did the killing.
    assert_eq!(fork(x32_getpid), End::Exited(1));
    assert_eq!(fork(i386_getpid), End::Exited(1));
}

#[test]
fn busybox_tools_work() {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|path| Path::new(path).exists());
    let busybox = busybox.expect("this test runs busybox: apt-get install busybox-static");
    // wget fetches from a server of ours on loopback.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let _ = client.read(&mut [0; 4096]);
        let _ = client.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
    });
    let script = format!(
        "{busybox} ls / >/dev/null && {busybox} ps >/dev/null && {busybox} ping -c 1 -W 5 127.0.0.1 >/dev/null \
         && {busybox} wget -q -O /dev/null http://127.0.0.1:{port}/ && ! {busybox} unshare -U true 2>/dev/null"
    );
    let args = [busybox, "sh", "-c", &script].map(|arg| CString::new(arg).unwrap());
    let argv = [args[0].as_ptr(), args[1].as_ptr(), args[2].as_ptr(), args[3].as_ptr(), std::ptr::null()];
    // No http_proxy and the like from our environment: wget goes straight to the server.
    let envp = [c"PATH=/nonexistent".as_ptr(), std::ptr::null()];
    let programs = compile(&default_filter(&DOCKER_CAPS)).unwrap();
    // SAFETY: argv and envp are null-terminated arrays of C strings that outlive the call.
    let end = under(&programs, || unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) });
    // If the script stopped before wget, unblock the server before waiting for it.
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    server.join().unwrap();
    assert_eq!(end, End::Exited(0), "busybox sh -c {script:?}");
}

#[test]
fn loading_needs_no_new_privs_or_cap_sys_admin() {
    let programs = compile(&default_filter(&DOCKER_CAPS)).unwrap();
    let as_nobody = || {
        // SAFETY: setuid(2): root becomes nobody and loses every capability.
        if unsafe { libc::setuid(65534) } != 0 {
            return 2;
        }
        // Only the raw errno here: an anyhow error would capture a backtrace,
        // whose lock another thread of this test binary may have held at fork.
        match load_program(&programs[0]) {
            Err(err) if err.raw_os_error() == Some(libc::EACCES) => 0,
            _ => 1,
        }
    };
    assert_eq!(fork(as_nobody), End::Exited(0));
    let message = format!("{:#}", refused(std::io::Error::from_raw_os_error(libc::EACCES), 1, 3));
    assert_eq!(message, "seccomp(2), program 1 of 3: Permission denied (os error 13): set no_new_privs first, or hold CAP_SYS_ADMIN");
}

#[test]
fn the_default_filter_follows_capabilities() {
    let action = |filter: &Filter, name| {
        let nr = syscalls::number(name).unwrap();
        filter
            .rules
            .iter()
            .filter(|rule| rule.nr == nr)
            .map(|rule| (rule.action, rule.args.len()))
            .collect::<Vec<_>>()
    };
    let docker = default_filter(&DOCKER_CAPS);
    assert_eq!(docker.default, Action::Errno(libc::EPERM as u16));
    assert_eq!(action(&docker, "unshare"), []);
    assert_eq!(action(&docker, "clone"), [(Action::Allow, 1)]);
    assert_eq!(action(&docker, "clone3"), [(Action::Errno(libc::ENOSYS as u16), 0)]);
    assert_eq!(action(&docker, "chroot"), [(Action::Allow, 0)]);
    assert_eq!(action(&docker, "keyctl"), []);
    let admin = default_filter(&["CAP_SYS_ADMIN"]);
    assert_eq!(action(&admin, "unshare"), [(Action::Allow, 0)]);
    assert_eq!(action(&admin, "clone"), [(Action::Allow, 0)]);
    assert_eq!(action(&admin, "clone3"), [(Action::Allow, 0)]);
    assert_eq!(action(&admin, "chroot"), []);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn every_default_name_is_a_call_on_x86_64() {
    let names = WITH_CAP.iter().flat_map(|(_, names)| names.split_whitespace());
    for name in ALLOWED.split_whitespace().chain(names) {
        assert!(syscalls::number(name).is_some(), "{name}");
    }
}

#[test]
fn programs_stay_small() {
    // The kernel's limits: 4096 instructions a program, 32768 in all (each counted 4 more).
    let docker = profile::parse(DOCKER_DEFAULT, &profile::Host::current(&ALL_CAPS).unwrap()).unwrap();
    for filter in [default_filter(&DOCKER_CAPS), default_filter(&ALL_CAPS), docker] {
        let programs = compile(&filter).unwrap();
        let sizes: Vec<usize> = programs.iter().map(Vec::len).collect();
        println!("{} rules: programs of {sizes:?} instructions", filter.rules.len());
        assert!(sizes.iter().all(|&size| size < 2048), "{sizes:?}");
        assert!(sizes.iter().map(|size| size + 4).sum::<usize>() < 8192, "{sizes:?}");
    }
}

#[test]
fn stricter_actions_win_and_seccomp_is_blocked_last() {
    let nr = |name| syscalls::number(name).unwrap();
    let rule = |name, action| Rule { nr: nr(name), args: vec![], action };
    // A default of Allow: programs for the kill and the errnos, none for the default.
    let filter = Filter {
        default: Action::Allow,
        rules: vec![
            rule("seccomp", Action::Errno(13)),
            rule("getppid", Action::KillProcess),
            rule("getppid", Action::Errno(1)),
            rule("getuid", Action::Errno(42)),
        ],
    };
    let programs = compile(&filter).unwrap();
    assert_eq!(programs.len(), if cfg!(target_arch = "x86_64") { 5 } else { 4 });
    let body = || {
        // SAFETY: calls without arguments.
        let uid = errno_of(unsafe { libc::syscall(libc::SYS_getuid) });
        let pid = errno_of(unsafe { libc::syscall(libc::SYS_getpid) });
        if uid != 42 || pid != 0 {
            return 1;
        }
        unsafe { libc::syscall(libc::SYS_getppid) };
        2
    };
    // Loading worked although the first errno program blocks seccomp(2): it went last.
    assert_eq!(under(&programs, body), End::Killed(libc::SIGSYS));
}

/// Runs the binary search in front of a program (`program`) for call number
/// `nr`, the way the kernel would: its return value, or None when it hands the
/// call on to seccompiler's part (a call whose rules check arguments).
fn search_answer(code: &[seccompiler::sock_filter], nr: u32) -> Option<u32> {
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let (at, i) = (pc, &code[pc]);
        pc += 1;
        match i.code as u32 {
            // The search's own two loads (arch, then nr); any later one is seccompiler's.
            c if c == BPF_LD | BPF_W | BPF_ABS && at <= 3 => {
                acc = if i.k == OFFSET_NR { nr } else { syscalls::AUDIT_ARCH }
            }
            c if c == BPF_JMP | BPF_JEQ | BPF_K => pc += if acc == i.k { i.jt } else { i.jf } as usize,
            c if c == BPF_JMP | BPF_JGE | BPF_K => pc += if acc >= i.k { i.jt } else { i.jf } as usize,
            c if c == BPF_JMP | BPF_JA => pc += i.k as usize,
            c if c == BPF_RET | BPF_K => return Some(i.k),
            _ => return None, // seccompiler's part begins
        }
    }
}

#[test]
fn the_binary_search_answers_each_call_number_like_the_rules() {
    let filter = default_filter(&DOCKER_CAPS);
    let rules: Vec<&Rule> = filter.rules.iter().collect();
    let matches = matches(rules.iter().copied()).unwrap();
    let code = program(matches.clone(), filter.default, Action::Allow).unwrap();
    let (allow, deny) = (u32::from(SeccompAction::Allow), u32::from(SeccompAction::from(filter.default)));
    for nr in (0..1200).chain([0x4000_0000, u32::MAX]) {
        let expected = match matches.get(&(nr as i64)) {
            Some(rules) if rules.is_empty() => Some(allow),
            Some(_) => None,
            None => Some(deny),
        };
        assert_eq!(search_answer(&code, nr), expected, "call number {nr}");
    }
    // Far smaller than seccompiler's one-test-per-call program.
    assert!(code.len() < 600, "{} instructions", code.len());
}
