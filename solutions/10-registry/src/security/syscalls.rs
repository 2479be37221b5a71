//! System call numbers by name, for the architecture this runtime is built for.
//!
//! A seccomp filter sees numbers, a profile names calls, and the numbers differ
//! between architectures: `getpid` is 39 on x86_64 and 172 on aarch64, which
//! has no `open` at all (only `openat`). libc's `SYS_*` constants give the
//! numbers; calls newer than libc's list carry the number from the kernel's
//! own table (since Linux 5.1, 424 and up, every architecture numbers alike).

/// The number of the system call `name` on this architecture.
pub fn number(name: &str) -> Option<i64> {
    // A binary search: every run looks up some 400 names, and FROM_LIBC is
    // sorted by name (the test below keeps it so).
    let from_libc = arch::FROM_LIBC.binary_search_by(|(sys, _)| sys["SYS_".len()..].cmp(name));
    let newer = || arch::NEWER.iter().find(|(known, _)| *known == name).map(|&(_, nr)| nr);
    from_libc.ok().map(|at| arch::FROM_LIBC[at].1).or_else(newer)
}

/// Whether `name` is a system call only of other architectures (Docker's
/// profile lists them side by side): skipped like Docker does, not a typo.
pub fn elsewhere(name: &str) -> bool {
    arch::ELSEWHERE.contains(&name)
}

/// Docker's name for this architecture, as `includes.arches` in a profile has it.
pub const DOCKER_ARCH: &str = arch::DOCKER_ARCH;

/// seccompiler's name for it: the filter kills a caller of any other ABI.
pub const TARGET: seccompiler::TargetArch = arch::TARGET;

/// The kernel's name for it in `seccomp_data.arch` (<linux/audit.h>).
pub const AUDIT_ARCH: u32 = arch::AUDIT_ARCH;

/// `calls![SYS_read SYS_write ...]`: each libc constant with its own name, `("SYS_read", 0)`.
macro_rules! calls {
    ($($sys:ident)*) => {
        &[$((stringify!($sys), libc::$sys)),*]
    };
}

/// `names![_llseek send ...]`: the names, as strings.
macro_rules! names {
    ($($name:ident)*) => {
        &[$(stringify!($name)),*]
    };
}

#[cfg(target_arch = "x86_64")]
mod arch {
    pub const DOCKER_ARCH: &str = "amd64";
    pub const TARGET: seccompiler::TargetArch = seccompiler::TargetArch::x86_64;
    /// EM_X86_64 | 64-bit | little-endian.
    pub const AUDIT_ARCH: u32 = 0xC000_003E;

    pub const FROM_LIBC: &[(&str, i64)] = calls![
        SYS__sysctl SYS_accept SYS_accept4 SYS_access SYS_acct SYS_add_key SYS_adjtimex
        SYS_afs_syscall SYS_alarm SYS_arch_prctl SYS_bind SYS_bpf SYS_brk SYS_capget SYS_capset
        SYS_chdir SYS_chmod SYS_chown SYS_chroot SYS_clock_adjtime SYS_clock_getres
        SYS_clock_gettime SYS_clock_nanosleep SYS_clock_settime SYS_clone SYS_clone3 SYS_close
        SYS_close_range SYS_connect SYS_copy_file_range SYS_creat SYS_delete_module SYS_dup SYS_dup2
        SYS_dup3 SYS_epoll_create SYS_epoll_create1 SYS_epoll_ctl SYS_epoll_ctl_old SYS_epoll_pwait
        SYS_epoll_pwait2 SYS_epoll_wait SYS_epoll_wait_old SYS_eventfd SYS_eventfd2 SYS_execve
        SYS_execveat SYS_exit SYS_exit_group SYS_faccessat SYS_faccessat2 SYS_fadvise64
        SYS_fallocate SYS_fanotify_init SYS_fanotify_mark SYS_fchdir SYS_fchmod SYS_fchmodat
        SYS_fchmodat2 SYS_fchown SYS_fchownat SYS_fcntl SYS_fdatasync SYS_fgetxattr SYS_finit_module
        SYS_flistxattr SYS_flock SYS_fork SYS_fremovexattr SYS_fsconfig SYS_fsetxattr SYS_fsmount
        SYS_fsopen SYS_fspick SYS_fstat SYS_fstatfs SYS_fsync SYS_ftruncate SYS_futex
        SYS_futex_waitv SYS_futimesat SYS_get_mempolicy SYS_get_robust_list SYS_get_thread_area
        SYS_getcpu SYS_getcwd SYS_getdents SYS_getdents64 SYS_getegid SYS_geteuid SYS_getgid
        SYS_getgroups SYS_getitimer SYS_getpeername SYS_getpgid SYS_getpgrp SYS_getpid SYS_getpmsg
        SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid SYS_getresuid SYS_getrlimit
        SYS_getrusage SYS_getsid SYS_getsockname SYS_getsockopt SYS_gettid SYS_gettimeofday
        SYS_getuid SYS_getxattr SYS_init_module SYS_inotify_add_watch SYS_inotify_init
        SYS_inotify_init1 SYS_inotify_rm_watch SYS_io_cancel SYS_io_destroy SYS_io_getevents
        SYS_io_setup SYS_io_submit SYS_io_uring_enter SYS_io_uring_register SYS_io_uring_setup
        SYS_ioctl SYS_ioperm SYS_iopl SYS_ioprio_get SYS_ioprio_set SYS_kcmp SYS_kexec_file_load
        SYS_kexec_load SYS_keyctl SYS_kill SYS_landlock_add_rule SYS_landlock_create_ruleset
        SYS_landlock_restrict_self SYS_lchown SYS_lgetxattr SYS_link SYS_linkat SYS_listen
        SYS_listxattr SYS_llistxattr SYS_lookup_dcookie SYS_lremovexattr SYS_lseek SYS_lsetxattr
        SYS_lstat SYS_madvise SYS_mbind SYS_membarrier SYS_memfd_create SYS_memfd_secret
        SYS_migrate_pages SYS_mincore SYS_mkdir SYS_mkdirat SYS_mknod SYS_mknodat SYS_mlock
        SYS_mlock2 SYS_mlockall SYS_mmap SYS_modify_ldt SYS_mount SYS_mount_setattr SYS_move_mount
        SYS_move_pages SYS_mprotect SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive
        SYS_mq_timedsend SYS_mq_unlink SYS_mremap SYS_mseal SYS_msgctl SYS_msgget SYS_msgrcv
        SYS_msgsnd SYS_msync SYS_munlock SYS_munlockall SYS_munmap SYS_name_to_handle_at
        SYS_nanosleep SYS_newfstatat SYS_nfsservctl SYS_open SYS_open_by_handle_at SYS_open_tree
        SYS_openat SYS_openat2 SYS_pause SYS_perf_event_open SYS_personality SYS_pidfd_getfd
        SYS_pidfd_open SYS_pidfd_send_signal SYS_pipe SYS_pipe2 SYS_pivot_root SYS_pkey_alloc
        SYS_pkey_free SYS_pkey_mprotect SYS_poll SYS_ppoll SYS_prctl SYS_pread64 SYS_preadv
        SYS_preadv2 SYS_prlimit64 SYS_process_madvise SYS_process_mrelease SYS_process_vm_readv
        SYS_process_vm_writev SYS_pselect6 SYS_ptrace SYS_putpmsg SYS_pwrite64 SYS_pwritev
        SYS_pwritev2 SYS_quotactl SYS_quotactl_fd SYS_read SYS_readahead SYS_readlink SYS_readlinkat
        SYS_readv SYS_reboot SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages
        SYS_removexattr SYS_rename SYS_renameat SYS_renameat2 SYS_request_key SYS_restart_syscall
        SYS_rmdir SYS_rseq SYS_rt_sigaction SYS_rt_sigpending SYS_rt_sigprocmask SYS_rt_sigqueueinfo
        SYS_rt_sigreturn SYS_rt_sigsuspend SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo
        SYS_sched_get_priority_max SYS_sched_get_priority_min SYS_sched_getaffinity
        SYS_sched_getattr SYS_sched_getparam SYS_sched_getscheduler SYS_sched_rr_get_interval
        SYS_sched_setaffinity SYS_sched_setattr SYS_sched_setparam SYS_sched_setscheduler
        SYS_sched_yield SYS_seccomp SYS_security SYS_select SYS_semctl SYS_semget SYS_semop
        SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto SYS_set_mempolicy
        SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_thread_area SYS_set_tid_address
        SYS_setdomainname SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_sethostname
        SYS_setitimer SYS_setns SYS_setpgid SYS_setpriority SYS_setregid SYS_setresgid SYS_setresuid
        SYS_setreuid SYS_setrlimit SYS_setsid SYS_setsockopt SYS_settimeofday SYS_setuid
        SYS_setxattr SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget SYS_shutdown SYS_sigaltstack
        SYS_signalfd SYS_signalfd4 SYS_socket SYS_socketpair SYS_splice SYS_stat SYS_statfs
        SYS_statx SYS_swapoff SYS_swapon SYS_symlink SYS_symlinkat SYS_sync SYS_sync_file_range
        SYS_syncfs SYS_sysfs SYS_sysinfo SYS_syslog SYS_tee SYS_tgkill SYS_time SYS_timer_create
        SYS_timer_delete SYS_timer_getoverrun SYS_timer_gettime SYS_timer_settime SYS_timerfd_create
        SYS_timerfd_gettime SYS_timerfd_settime SYS_times SYS_tkill SYS_truncate SYS_tuxcall
        SYS_umask SYS_umount2 SYS_uname SYS_unlink SYS_unlinkat SYS_unshare SYS_uselib
        SYS_userfaultfd SYS_ustat SYS_utime SYS_utimensat SYS_utimes SYS_vfork SYS_vhangup
        SYS_vmsplice SYS_vserver SYS_wait4 SYS_waitid SYS_write SYS_writev
    ];

    /// Not in libc (0.2.191) yet: arch/x86/entry/syscalls/syscall_64.tbl.
    pub const NEWER: &[(&str, i64)] = &[
        ("io_pgetevents", 333),
        ("uretprobe", 335),
        ("cachestat", 451),
        ("map_shadow_stack", 453),
        ("futex_wake", 454),
        ("futex_wait", 455),
        ("futex_requeue", 456),
        ("statmount", 457),
        ("listmount", 458),
        ("lsm_get_self_attr", 459),
        ("lsm_set_self_attr", 460),
        ("lsm_list_modules", 461),
        ("setxattrat", 463),
        ("getxattrat", 464),
        ("listxattrat", 465),
        ("removexattrat", 466),
    ];

    /// Names in Docker's default profile that x86_64 has no call for: 32-bit
    /// calls (`*32`, `*64`, `*_time64`) and other architectures' own.
    pub const ELSEWHERE: &[&str] = names![
        _llseek _newselect arm_fadvise64_64 arm_sync_file_range breakpoint cacheflush chown32
        clock_adjtime64 clock_getres_time64 clock_gettime64 clock_nanosleep_time64 clock_settime64
        fadvise64_64 fchown32 fcntl64 fstat64 fstatat64 fstatfs64 ftruncate64 futex_time64 getegid32
        geteuid32 getgid32 getgroups32 getresgid32 getresuid32 getuid32 io_pgetevents_time64 ipc
        lchown32 lstat64 mmap2 mq_timedreceive_time64 mq_timedsend_time64 ppoll_time64
        pselect6_time64 recv recvmmsg_time64 riscv_flush_icache riscv_hwprobe rt_sigtimedwait_time64
        s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr sched_rr_get_interval_time64
        semtimedop_time64 send sendfile64 set_tls setfsgid32 setfsuid32 setgid32 setgroups32
        setregid32 setresgid32 setresuid32 setreuid32 setuid32 sigprocmask sigreturn socketcall
        stat64 statfs64 stime swapcontext sync_file_range2 timer_gettime64 timer_settime64
        timerfd_gettime64 timerfd_settime64 truncate64 ugetrlimit umount utimensat_time64 waitpid
    ];
}

#[cfg(target_arch = "aarch64")]
mod arch {
    pub const DOCKER_ARCH: &str = "arm64";
    pub const TARGET: seccompiler::TargetArch = seccompiler::TargetArch::aarch64;
    /// EM_AARCH64 | 64-bit | little-endian.
    pub const AUDIT_ARCH: u32 = 0xC000_00B7;

    pub const FROM_LIBC: &[(&str, i64)] = calls![
        SYS_accept SYS_accept4 SYS_acct SYS_add_key SYS_adjtimex SYS_bind SYS_bpf SYS_brk SYS_capget
        SYS_capset SYS_chdir SYS_chroot SYS_clock_adjtime SYS_clock_getres SYS_clock_gettime
        SYS_clock_nanosleep SYS_clock_settime SYS_clone SYS_clone3 SYS_close SYS_close_range
        SYS_connect SYS_copy_file_range SYS_delete_module SYS_dup SYS_dup3 SYS_epoll_create1
        SYS_epoll_ctl SYS_epoll_pwait SYS_epoll_pwait2 SYS_eventfd2 SYS_execve SYS_execveat SYS_exit
        SYS_exit_group SYS_faccessat SYS_faccessat2 SYS_fadvise64 SYS_fallocate SYS_fanotify_init
        SYS_fanotify_mark SYS_fchdir SYS_fchmod SYS_fchmodat SYS_fchown SYS_fchownat SYS_fcntl
        SYS_fdatasync SYS_fgetxattr SYS_finit_module SYS_flistxattr SYS_flock SYS_fremovexattr
        SYS_fsconfig SYS_fsetxattr SYS_fsmount SYS_fsopen SYS_fspick SYS_fstat SYS_fstatfs SYS_fsync
        SYS_ftruncate SYS_futex SYS_futex_waitv SYS_get_mempolicy SYS_get_robust_list SYS_getcpu
        SYS_getcwd SYS_getdents64 SYS_getegid SYS_geteuid SYS_getgid SYS_getgroups SYS_getitimer
        SYS_getpeername SYS_getpgid SYS_getpid SYS_getppid SYS_getpriority SYS_getrandom
        SYS_getresgid SYS_getresuid SYS_getrusage SYS_getsid SYS_getsockname SYS_getsockopt
        SYS_gettid SYS_gettimeofday SYS_getuid SYS_getxattr SYS_init_module SYS_inotify_add_watch
        SYS_inotify_init1 SYS_inotify_rm_watch SYS_io_cancel SYS_io_destroy SYS_io_getevents
        SYS_io_setup SYS_io_submit SYS_io_uring_enter SYS_io_uring_register SYS_io_uring_setup
        SYS_ioctl SYS_ioprio_get SYS_ioprio_set SYS_kcmp SYS_kexec_load SYS_keyctl SYS_kill
        SYS_landlock_add_rule SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lgetxattr
        SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr SYS_lookup_dcookie SYS_lremovexattr
        SYS_lseek SYS_lsetxattr SYS_madvise SYS_mbind SYS_membarrier SYS_memfd_create
        SYS_memfd_secret SYS_migrate_pages SYS_mincore SYS_mkdirat SYS_mknodat SYS_mlock SYS_mlock2
        SYS_mlockall SYS_mmap SYS_mount SYS_mount_setattr SYS_move_mount SYS_move_pages SYS_mprotect
        SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive SYS_mq_timedsend
        SYS_mq_unlink SYS_mremap SYS_mseal SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd SYS_msync
        SYS_munlock SYS_munlockall SYS_munmap SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat
        SYS_nfsservctl SYS_open_by_handle_at SYS_open_tree SYS_openat SYS_openat2
        SYS_perf_event_open SYS_personality SYS_pidfd_getfd SYS_pidfd_open SYS_pidfd_send_signal
        SYS_pipe2 SYS_pivot_root SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect SYS_ppoll SYS_prctl
        SYS_pread64 SYS_preadv SYS_preadv2 SYS_prlimit64 SYS_process_madvise SYS_process_mrelease
        SYS_process_vm_readv SYS_process_vm_writev SYS_pselect6 SYS_ptrace SYS_pwrite64 SYS_pwritev
        SYS_pwritev2 SYS_quotactl SYS_quotactl_fd SYS_read SYS_readahead SYS_readlinkat SYS_readv
        SYS_reboot SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages SYS_removexattr
        SYS_renameat2 SYS_request_key SYS_restart_syscall SYS_rseq SYS_rt_sigaction
        SYS_rt_sigpending SYS_rt_sigprocmask SYS_rt_sigqueueinfo SYS_rt_sigreturn SYS_rt_sigsuspend
        SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo SYS_sched_get_priority_max
        SYS_sched_get_priority_min SYS_sched_getaffinity SYS_sched_getattr SYS_sched_getparam
        SYS_sched_getscheduler SYS_sched_rr_get_interval SYS_sched_setaffinity SYS_sched_setattr
        SYS_sched_setparam SYS_sched_setscheduler SYS_sched_yield SYS_seccomp SYS_semctl SYS_semget
        SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto SYS_set_mempolicy
        SYS_set_mempolicy_home_node SYS_set_robust_list SYS_set_tid_address SYS_setdomainname
        SYS_setfsgid SYS_setfsuid SYS_setgid SYS_setgroups SYS_sethostname SYS_setitimer SYS_setns
        SYS_setpgid SYS_setpriority SYS_setregid SYS_setresgid SYS_setresuid SYS_setreuid SYS_setsid
        SYS_setsockopt SYS_settimeofday SYS_setuid SYS_setxattr SYS_shmat SYS_shmctl SYS_shmdt
        SYS_shmget SYS_shutdown SYS_sigaltstack SYS_signalfd4 SYS_socket SYS_socketpair SYS_splice
        SYS_statfs SYS_statx SYS_swapoff SYS_swapon SYS_symlinkat SYS_sync SYS_syncfs SYS_sysinfo
        SYS_syslog SYS_tee SYS_tgkill SYS_timer_create SYS_timer_delete SYS_timer_getoverrun
        SYS_timer_gettime SYS_timer_settime SYS_timerfd_create SYS_timerfd_gettime
        SYS_timerfd_settime SYS_times SYS_tkill SYS_truncate SYS_umask SYS_umount2 SYS_uname
        SYS_unlinkat SYS_unshare SYS_userfaultfd SYS_utimensat SYS_vhangup SYS_vmsplice SYS_wait4
        SYS_waitid SYS_write SYS_writev
    ];

    /// Not in libc's list for both glibc and musl (0.2.191): from the kernel's
    /// include/uapi/asm-generic/unistd.h and scripts/syscall.tbl.
    pub const NEWER: &[(&str, i64)] = &[
        ("renameat", 38),
        ("sync_file_range", 84),
        ("getrlimit", 163),
        ("setrlimit", 164),
        ("io_pgetevents", 292),
        ("kexec_file_load", 294),
        ("cachestat", 451),
        ("fchmodat2", 452),
        ("map_shadow_stack", 453),
        ("futex_wake", 454),
        ("futex_wait", 455),
        ("futex_requeue", 456),
        ("statmount", 457),
        ("listmount", 458),
        ("lsm_get_self_attr", 459),
        ("lsm_set_self_attr", 460),
        ("lsm_list_modules", 461),
        ("setxattrat", 463),
        ("getxattrat", 464),
        ("listxattrat", 465),
        ("removexattrat", 466),
    ];

    /// Names in Docker's default profile, or x86_64 calls, that aarch64 has no
    /// call for: the legacy calls that only have `*at` forms here, 32-bit
    /// calls and other architectures' own.
    pub const ELSEWHERE: &[&str] = names![
        _llseek _newselect _sysctl access afs_syscall alarm arch_prctl arm_fadvise64_64
        arm_sync_file_range breakpoint cacheflush chmod chown chown32 clock_adjtime64
        clock_getres_time64 clock_gettime64 clock_nanosleep_time64 clock_settime64 creat dup2
        epoll_create epoll_ctl_old epoll_wait epoll_wait_old eventfd fadvise64_64 fchown32 fcntl64
        fork fstat64 fstatat64 fstatfs64 ftruncate64 futex_time64 futimesat get_thread_area getdents
        getegid32 geteuid32 getgid32 getgroups32 getpgrp getpmsg getresgid32 getresuid32 getuid32
        inotify_init io_pgetevents_time64 ioperm iopl ipc lchown lchown32 link lstat lstat64 mkdir
        mknod mmap2 modify_ldt mq_timedreceive_time64 mq_timedsend_time64 open pause pipe poll
        ppoll_time64 pselect6_time64 putpmsg readlink recv recvmmsg_time64 rename riscv_flush_icache
        riscv_hwprobe rmdir rt_sigtimedwait_time64 s390_pci_mmio_read s390_pci_mmio_write
        s390_runtime_instr sched_rr_get_interval_time64 security select semtimedop_time64 send
        sendfile64 set_thread_area set_tls setfsgid32 setfsuid32 setgid32 setgroups32 setregid32
        setresgid32 setresuid32 setreuid32 setuid32 signalfd sigprocmask sigreturn socketcall stat
        stat64 statfs64 stime swapcontext symlink sync_file_range2 sysfs time timer_gettime64
        timer_settime64 timerfd_gettime64 timerfd_settime64 truncate64 tuxcall ugetrlimit umount
        unlink uretprobe uselib ustat utime utimensat_time64 utimes vfork vserver waitpid
    ];
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the seccomp filter has syscall tables for x86_64 and aarch64 only");

#[cfg(test)]
mod sorted {
    #[test]
    fn the_table_is_sorted_for_the_binary_search() {
        let names: Vec<&str> = super::arch::FROM_LIBC.iter().map(|(sys, _)| *sys).collect();
        assert!(names.windows(2).all(|pair| pair[0] < pair[1]), "sort FROM_LIBC by name");
        assert_eq!(super::number("getpid"), Some(libc::SYS_getpid));
        assert_eq!(super::number("no_such_call"), None);
    }
}
