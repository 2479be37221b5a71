//! `probe`: a tiny static binary that runs inside a container and prints, as
//! one JSON object on stdout, what the process sees from in there.
//!
//! `probe [ACTION ...]` runs the actions in the order given (see `actions.rs`),
//! then takes the snapshot (see `snapshot.rs`), so the snapshot reflects what
//! the actions did. The integration tests assert on that JSON instead of
//! parsing the output of busybox tools.

mod actions;
mod hardening;
mod snapshot;

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use actions::{Action, Kind};

const USAGE: &str = "\
usage: probe [ACTION ...]

Runs the actions in order, then prints one JSON object (what the process
sees, plus one entry per action) on stdout and exits 0. A failing action is
reported in the JSON, not by the exit status.

Actions:
  --write PATH          create/truncate PATH and write \"probe\\n\"
  --read PATH           read up to 64 KiB of PATH
  --mkdir PATH          create a directory
  --remove PATH         remove a file or an empty directory
  --stat PATH           lstat PATH (kind, mode, uid, gid, size)
  --mknod-char PATH     create the char device 1:3 (like /dev/null)
  --mknod-block PATH    create the block device 7:0 (like /dev/loop0)
  --mount-tmpfs PATH    mount a tmpfs on PATH (left mounted)
  --alloc-mib N         allocate N MiB and touch every page
  --fork N              fork N children that live until the snapshot is taken
  --listen PORT         accept one TCP connection on 0.0.0.0:PORT, answer \"pong\"
  --connect IP:PORT     connect (retrying), send \"ping\", read the reply
  --shm-create KEY      SysV shmget(KEY, 4096, IPC_CREAT|0600)
  --shm-find KEY        SysV shmget(KEY, 0, 0)
  --shm-remove KEY      find the segment KEY and remove it (IPC_RMID)
  --spin-ms N           burn CPU for N ms of wall time
  --sleep-ms N          sleep N ms
  --escape MARKER       try the chroot breakout in a child; is MARKER visible?

Against Docker's hardening (harmless either way; see hardening.rs):
  --mount-cgroup OPTS   mount -t cgroup -o OPTS on a scratch dir (OPTS cgroup2:
                        mount -t cgroup2), report whether release_agent is
                        there (never written), unmount it
  --open-block M:N:DIR  mknod block device M:N in DIR, open it read-only, read
                        512 bytes, remove the node
  --umount PATH         umount2(PATH, MNT_DETACH)
  --rewrite PATH        read PATH, write the same bytes back: writable, unchanged
  --list DIR            the names in DIR
  --syscall NAME        call NAME with arguments that can do nothing: keyctl, bpf,
                        init_module, finit_module, userfaultfd, perf_event_open,
                        unshare-user (in a child), clone3
  --setuid-exec DIR     copy the probe to DIR as setuid root and run it as uid
                        1000: the euid it gets

Options:
  --timeout-ms N        timeout for the following --listen/--connect (default 5000)
  --exit N              exit with status N after printing
  --help                print this help
  --report-ids          (what --setuid-exec runs) print ids, capabilities, no_new_privs";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Help,
    /// The setuid copy of `--setuid-exec`: print who we are, nothing else.
    ReportIds,
    Run {
        actions: Vec<Action>,
        exit_code: u8,
    },
}

/// Parses the arguments (without argv[0]). Hand-written rather than clap so
/// the actions keep the order they were given in, repeats included.
fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, String> {
    let mut args = args.into_iter();
    let mut actions = Vec::new();
    let mut exit_code = 0u8;
    let mut timeout = Duration::from_millis(5000);

    while let Some(flag) = args.next() {
        let flag = flag.into_string().map_err(|f| format!("unknown argument {f:?}"))?;
        if flag == "--help" || flag == "-h" {
            return Ok(Command::Help);
        }
        if flag == "--report-ids" {
            return match (actions.is_empty(), args.next()) {
                (true, None) => Ok(Command::ReportIds),
                _ => Err("--report-ids takes no other arguments".into()),
            };
        }
        // Every other flag takes exactly one value.
        let takes_value = matches!(
            flag.as_str(),
            "--write"
                | "--read"
                | "--mkdir"
                | "--remove"
                | "--stat"
                | "--mknod-char"
                | "--mknod-block"
                | "--mount-tmpfs"
                | "--alloc-mib"
                | "--fork"
                | "--listen"
                | "--connect"
                | "--timeout-ms"
                | "--shm-create"
                | "--shm-find"
                | "--shm-remove"
                | "--spin-ms"
                | "--sleep-ms"
                | "--escape"
                | "--mount-cgroup"
                | "--open-block"
                | "--umount"
                | "--rewrite"
                | "--list"
                | "--syscall"
                | "--setuid-exec"
                | "--exit"
        );
        if !takes_value {
            return Err(format!("unknown argument '{flag}'"));
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .into_string()
            .map_err(|v| format!("{flag}: value {v:?} is not UTF-8"))?;

        let kind = match flag.as_str() {
            "--timeout-ms" => {
                timeout = Duration::from_millis(number(&flag, &value)?);
                continue;
            }
            "--exit" => {
                exit_code = number(&flag, &value)?;
                continue;
            }
            "--write" => Kind::Write(value.clone()),
            "--read" => Kind::Read(value.clone()),
            "--mkdir" => Kind::Mkdir(value.clone()),
            "--remove" => Kind::Remove(value.clone()),
            "--stat" => Kind::Stat(value.clone()),
            "--mknod-char" => Kind::MknodChar(value.clone()),
            "--mknod-block" => Kind::MknodBlock(value.clone()),
            "--mount-tmpfs" => Kind::MountTmpfs(value.clone()),
            "--escape" => Kind::Escape(value.clone()),
            "--mount-cgroup" => Kind::MountCgroup(value.clone()),
            "--open-block" => {
                let (major, minor, dir) =
                    hardening::parse_block_spec(&value).map_err(|e| format!("{flag}: {e}"))?;
                Kind::OpenBlock { major, minor, dir }
            }
            "--umount" => Kind::Umount(value.clone()),
            "--rewrite" => Kind::Rewrite(value.clone()),
            "--list" => Kind::List(value.clone()),
            "--syscall" => {
                Kind::Syscall(hardening::Syscall::parse(&value).map_err(|e| format!("{flag}: {e}"))?)
            }
            "--setuid-exec" => Kind::SetuidExec(value.clone()),
            "--alloc-mib" => Kind::AllocMib(number(&flag, &value)?),
            "--fork" => Kind::Fork(number(&flag, &value)?),
            "--spin-ms" => Kind::SpinMs(number(&flag, &value)?),
            "--sleep-ms" => Kind::SleepMs(number(&flag, &value)?),
            "--shm-create" => Kind::ShmCreate(number(&flag, &value)?),
            "--shm-find" => Kind::ShmFind(number(&flag, &value)?),
            "--shm-remove" => Kind::ShmRemove(number(&flag, &value)?),
            "--listen" => Kind::Listen { port: number(&flag, &value)?, timeout },
            "--connect" => Kind::Connect {
                addr: SocketAddr::from_str(&value).map_err(|_| {
                    format!("{flag}: expected a numeric IP:PORT or [IPv6]:PORT, got '{value}'")
                })?,
                timeout,
            },
            _ => unreachable!("every flag that takes a value is handled above"),
        };
        actions.push(Action { name: flag.trim_start_matches("--").to_string(), arg: value, kind });
    }
    Ok(Command::Run { actions, exit_code })
}

/// Parses a number value, naming the flag in the error.
fn number<T: FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value.parse().map_err(|_| format!("{flag}: expected a number in range, got '{value}'"))
}

fn main() -> ExitCode {
    let (actions, exit_code) = match parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::ReportIds) => {
            println!("{}", snapshot::ids());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run { actions, exit_code }) => (actions, exit_code),
        Err(message) => {
            eprintln!("probe: usage: {message} (see probe --help)");
            return ExitCode::from(2);
        }
    };

    // Forked children and allocated memory must outlive the snapshot, so the
    // snapshot shows them; `held` keeps them until after it is taken.
    let mut held = actions::Held::default();
    let results = actions.iter().map(|action| action.run(&mut held).to_json(action)).collect();
    let snapshot = snapshot::take(results);
    held.release();

    // One line of JSON and nothing else on stdout. A write error (e.g. the
    // reader went away) cannot be reported anywhere useful, so it is ignored.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{snapshot}").and_then(|()| out.flush());
    ExitCode::from(exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(OsString::from))
    }

    fn actions(args: &[&str]) -> Vec<Action> {
        match parse(args) {
            Ok(Command::Run { actions, .. }) => actions,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn no_arguments_is_an_empty_run() {
        assert_eq!(parse(&[]), Ok(Command::Run { actions: vec![], exit_code: 0 }));
    }

    #[test]
    fn actions_keep_their_order_and_repeats() {
        let got = actions(&["--write", "/a", "--fork", "3", "--write", "/b"]);
        let names: Vec<_> = got.iter().map(|a| (a.name.as_str(), a.arg.as_str())).collect();
        assert_eq!(names, [("write", "/a"), ("fork", "3"), ("write", "/b")]);
        assert_eq!(got[1].kind, Kind::Fork(3));
        assert_eq!(got[2].kind, Kind::Write("/b".into()));
    }

    #[test]
    fn timeout_applies_to_later_network_actions_only() {
        let got = actions(&["--listen", "8080", "--timeout-ms", "250", "--connect", "[::1]:80"]);
        assert_eq!(got.len(), 2, "--timeout-ms is not an action");
        assert_eq!(got[0].kind, Kind::Listen { port: 8080, timeout: Duration::from_millis(5000) });
        assert_eq!(
            got[1].kind,
            Kind::Connect { addr: "[::1]:80".parse().unwrap(), timeout: Duration::from_millis(250) }
        );
    }

    #[test]
    fn exit_code_and_help() {
        assert_eq!(
            parse(&["--exit", "7", "--sleep-ms", "1"]),
            Ok(Command::Run {
                actions: vec![Action { name: "sleep-ms".into(), arg: "1".into(), kind: Kind::SleepMs(1) }],
                exit_code: 7
            })
        );
        assert_eq!(parse(&["--write", "/x", "--help"]), Ok(Command::Help));
        assert_eq!(parse(&["-h"]), Ok(Command::Help));
    }

    #[test]
    fn shm_keys_may_be_negative() {
        assert_eq!(actions(&["--shm-find", "-5"])[0].kind, Kind::ShmFind(-5));
    }

    #[test]
    fn hardening_actions() {
        let got = actions(&[
            "--mount-cgroup",
            "name=systemd",
            "--open-block",
            "254:0:/tmp",
            "--umount",
            "/proc/sys",
            "--rewrite",
            "/proc/sys/kernel/domainname",
            "--list",
            "/sys/firmware",
            "--syscall",
            "unshare-user",
            "--setuid-exec",
            "/tmp",
        ]);
        let kinds: Vec<Kind> = got.iter().map(|a| a.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                Kind::MountCgroup("name=systemd".into()),
                Kind::OpenBlock { major: 254, minor: 0, dir: "/tmp".into() },
                Kind::Umount("/proc/sys".into()),
                Kind::Rewrite("/proc/sys/kernel/domainname".into()),
                Kind::List("/sys/firmware".into()),
                Kind::Syscall(hardening::Syscall::UnshareUser),
                Kind::SetuidExec("/tmp".into()),
            ]
        );
        assert_eq!(got[1].name, "open-block");
        assert_eq!(got[1].arg, "254:0:/tmp", "the JSON echoes the spec as given");
        assert_eq!(actions(&["--syscall", "clone3"])[0].kind, Kind::Syscall(hardening::Syscall::Clone3));
    }

    #[test]
    fn report_ids_stands_alone() {
        assert_eq!(parse(&["--report-ids"]), Ok(Command::ReportIds));
        for args in [&["--report-ids", "--read", "/x"][..], &["--read", "/x", "--report-ids"][..]] {
            assert_eq!(parse(args), Err("--report-ids takes no other arguments".into()), "{args:?}");
        }
    }

    #[test]
    fn usage_errors() {
        for (args, needle) in [
            (&["--frobnicate"][..], "unknown argument '--frobnicate'"),
            (&["positional"][..], "unknown argument 'positional'"),
            (&["--write"][..], "--write needs a value"),
            (&["--fork", "many"][..], "--fork: expected a number"),
            (&["--fork", "-1"][..], "--fork: expected a number"),
            (&["--listen", "70000"][..], "--listen: expected a number"),
            (&["--exit", "256"][..], "--exit: expected a number"),
            (&["--timeout-ms", "1s"][..], "--timeout-ms: expected a number"),
            (&["--connect", "localhost:80"][..], "numeric IP:PORT"),
            (&["--connect", "::1:80"][..], "numeric IP:PORT"),
            (&["--sleep-ms", "5", "--bogus"][..], "unknown argument '--bogus'"),
            (&["--syscall", "kexec_load"][..], "--syscall: unknown syscall 'kexec_load'"),
            (&["--syscall"][..], "--syscall needs a value"),
            (&["--open-block", "8:0"][..], "--open-block: expected MAJOR:MINOR:DIR"),
            (&["--open-block", "sda:/tmp"][..], "--open-block: expected MAJOR:MINOR:DIR"),
            (&["--mount-cgroup"][..], "--mount-cgroup needs a value"),
        ] {
            match parse(args) {
                Err(message) => assert!(message.contains(needle), "{args:?}: {message:?} lacks {needle:?}"),
                Ok(cmd) => panic!("{args:?} parsed as {cmd:?}"),
            }
        }
    }
}
