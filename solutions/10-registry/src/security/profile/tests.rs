//! The parser: a good profile, each kind of mistake, includes/excludes, Docker's
//! own default profile, and a fuzzer that feeds it broken ones.

use super::super::seccomp::compile;
use super::*;

/// Docker's own default profile (moby's profiles/seccomp/default.json, Apache-2.0).
pub const DOCKER_DEFAULT: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/docker-default.json"));

/// The capabilities a Docker container keeps by default.
pub const DOCKER_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux has (up to 6.x), as `--privileged` would keep them.
pub const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn host(caps: &'static [&'static str]) -> Host<'static> {
    Host { caps, arch: syscalls::DOCKER_ARCH, kernel: (6, 1) }
}

fn parse_with(json: &str, caps: &'static [&'static str]) -> Result<Filter> {
    parse(json.as_bytes(), &host(caps))
}

/// The error that `json` gives, checked to be one line, as the runtime prints it.
fn error(json: &str) -> String {
    let text = format!("{:#}", parse_with(json, &[]).expect_err("the profile should be refused"));
    assert!(!text.contains('\n'), "not one line: {text}");
    text
}

fn nr(name: &str) -> i64 {
    syscalls::number(name).unwrap_or_else(|| panic!("no {name} here"))
}

fn allow(name: &str) -> Rule {
    Rule { nr: nr(name), args: vec![], action: Action::Allow }
}

/// A profile with one entry, `entry` (JSON).
fn with_entry(entry: &str) -> String {
    format!(r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{entry}]}}"#)
}

#[test]
fn a_good_profile() {
    let json = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "I/O"},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"name": "personality", "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["ptrace"], "action": "SCMP_ACT_KILL", "args": null, "includes": {}},
            {"names": ["arm_fadvise64_64"], "action": "SCMP_ACT_ALLOW"}
        ]
    }"#;
    let mask = ArgCheck { index: 0, op: Op::MaskedEq { mask: 0x7E02_0000 }, value: 0 };
    let expected = Filter {
        default: Action::Errno(1),
        rules: vec![
            allow("read"),
            allow("write"),
            Rule { nr: nr("clone3"), args: vec![], action: Action::Errno(38) },
            Rule {
                nr: nr("personality"),
                args: vec![ArgCheck { index: 0, op: Op::Eq, value: 8 }],
                ..allow("read")
            },
            Rule { nr: nr("clone"), args: vec![mask], ..allow("read") },
            Rule { nr: nr("ptrace"), args: vec![], action: Action::KillThread },
        ],
    };
    assert_eq!(parse_with(json, &[]).unwrap(), expected);
}

#[test]
fn every_action() {
    let cases = [
        ("SCMP_ACT_ALLOW", Action::Allow),
        ("SCMP_ACT_ERRNO", Action::Errno(1)),
        ("SCMP_ACT_KILL", Action::KillThread),
        ("SCMP_ACT_KILL_THREAD", Action::KillThread),
        ("SCMP_ACT_KILL_PROCESS", Action::KillProcess),
        ("SCMP_ACT_TRAP", Action::Trap),
        ("SCMP_ACT_LOG", Action::Log),
    ];
    for (name, action) in cases {
        let filter = parse_with(&format!(r#"{{"defaultAction": "{name}"}}"#), &[]).unwrap();
        assert_eq!(filter, Filter { default: action, rules: vec![] }, "{name}");
    }
}

#[test]
fn errno_ret() {
    let errno = |entry: &str| parse_with(&with_entry(entry), &[]).unwrap().rules[0].action;
    assert_eq!(errno(r#"{"names": ["read"], "action": "SCMP_ACT_ERRNO"}"#), Action::Errno(1));
    assert_eq!(errno(r#"{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 0}"#), Action::Errno(0));
    let too_big = error(&with_entry(r#"{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5000}"#));
    assert_eq!(too_big, "syscalls[0]: errnoRet 5000 is not an errno (0 to 4095)");
}

#[test]
fn not_json() {
    for text in ["", "{", "hello", "{\"defaultAction\": \"SCMP_ACT_ALLOW\",}", "\u{feff}{}"] {
        let message = error(text);
        assert!(message.starts_with("not a Docker seccomp profile: "), "{message}");
        assert!(message.contains(" at line 1 column "), "{message}");
    }
    let second_line = error("{\n  \"defaultAction\": 7\n}");
    assert!(second_line.ends_with("expected a string at line 2 column 20"), "{second_line}");
    let missing = error("{}");
    assert!(missing.contains("missing field `defaultAction`"), "{missing}");
}

#[test]
fn architectures() {
    let json = |arch: &str| {
        format!(r#"{{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86", "{arch}"]}}"#)
    };
    assert!(parse_with(&json("SCMP_ARCH_AARCH64"), &[]).is_ok());
    assert_eq!(error(&json("x86_64")), r#"architectures: "x86_64" is not a name like "SCMP_ARCH_X86_64""#);
}

#[test]
fn unknown_action() {
    assert_eq!(
        error(r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#),
        r#"defaultAction: unknown action "SCMP_ACT_MAYBE""#
    );
    let entry = error(&with_entry(r#"{"names": ["read"], "action": "allow"}"#));
    assert_eq!(entry, r#"syscalls[0]: unknown action "allow""#);
    let notify = error(&with_entry(r#"{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}"#));
    assert_eq!(
        notify,
        "syscalls[0]: action SCMP_ACT_NOTIFY is not supported (it needs a tracer or a listener)"
    );
}

#[test]
fn unknown_syscall() {
    let typo = error(&with_entry(r#"{"names": ["read", "wirte"], "action": "SCMP_ACT_ALLOW"}"#));
    assert_eq!(typo, r#"syscalls[0]: unknown system call "wirte""#);
    let newline = error(&with_entry(r#"{"names": ["read\nwrite"], "action": "SCMP_ACT_ALLOW"}"#));
    assert_eq!(newline, r#"syscalls[0]: unknown system call "read\nwrite""#);
}

#[test]
fn names() {
    let both = error(&with_entry(r#"{"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}"#));
    assert_eq!(both, r#"syscalls[0]: both "name" and "names""#);
    let neither = error(&with_entry(r#"{"names": [], "action": "SCMP_ACT_ALLOW"}"#));
    assert_eq!(neither, r#"syscalls[0]: no "names""#);
}

#[test]
fn bad_args() {
    let arg = |arg: &str| {
        error(&with_entry(&format!(r#"{{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{arg}]}}"#)))
    };
    let op = arg(r#"{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}"#);
    assert_eq!(op, r#"syscalls[0]: args[0]: unknown op "SCMP_CMP_ABOUT""#);
    let index = arg(r#"{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}"#);
    assert_eq!(index, "syscalls[0]: args[0]: index 6 is not an argument (0 to 5)");
    let huge = arg(r#"{"index": 4294967296, "value": 1, "op": "SCMP_CMP_EQ"}"#);
    assert_eq!(huge, "syscalls[0]: args[0]: index 4294967296 is not an argument (0 to 5)");
    let negative = arg(r#"{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}"#);
    assert!(negative.contains("invalid value: integer `-1`, expected u64 at line 1"), "{negative}");
}

#[test]
fn every_op() {
    let ops = [
        ("SCMP_CMP_EQ", Op::Eq),
        ("SCMP_CMP_NE", Op::Ne),
        ("SCMP_CMP_LT", Op::Lt),
        ("SCMP_CMP_LE", Op::Le),
        ("SCMP_CMP_GT", Op::Gt),
        ("SCMP_CMP_GE", Op::Ge),
    ];
    for (name, op) in ops {
        let entry = format!(
            r#"{{"names": ["read"], "action": "SCMP_ACT_LOG", "args": [{{"index": 5, "value": 7, "valueTwo": 9, "op": "{name}"}}]}}"#
        );
        let rules = parse_with(&with_entry(&entry), &[]).unwrap().rules;
        assert_eq!(rules[0].args, vec![ArgCheck { index: 5, op, value: 7 }], "{name}");
    }
}

#[test]
fn checks_of_one_argument_are_alternatives() {
    let args = |args: &str| {
        let entry = format!(r#"{{"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{args}]}}"#);
        let rules = parse_with(&with_entry(&entry), &[]).unwrap().rules;
        rules.into_iter().map(|rule| rule.args).collect::<Vec<_>>()
    };
    let eq = |index, value| ArgCheck { index, op: Op::Eq, value };
    let two_args = args(
        r#"{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}"#,
    );
    assert_eq!(two_args, vec![vec![eq(0, 1), eq(1, 2)]]);
    let one_arg = args(
        r#"{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}"#,
    );
    assert_eq!(one_arg, vec![vec![eq(0, 1)], vec![eq(0, 2)]]);
}

#[test]
fn includes_and_excludes_caps() {
    let json = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["unshare"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]}},
        {"names": ["kcmp"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_BPF", "CAP_SYS_PTRACE"]}}
    ]}"#;
    let calls = |caps| parse_with(json, caps).unwrap().rules.iter().map(|rule| rule.nr).collect::<Vec<_>>();
    assert_eq!(calls(&[]), [nr("clone3"), nr("kcmp")]);
    assert_eq!(calls(&["CAP_SYS_ADMIN"]), [nr("unshare"), nr("kcmp")]);
    assert_eq!(calls(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]), [nr("unshare"), nr("ptrace")]);
    assert_eq!(calls(&["CAP_SYS_PTRACE"]), [nr("clone3")]);
}

#[test]
fn includes_and_excludes_arches() {
    let ours = syscalls::DOCKER_ARCH;
    let entry = |names: &str, condition: &str| {
        with_entry(&format!(r#"{{"names": [{names}], "action": "SCMP_ACT_ALLOW", {condition}}}"#))
    };
    // Another architecture's entry: skipped, its names not even looked at.
    let s390 = parse_with(&entry(r#""s390_only_call""#, r#""includes": {"arches": ["s390x"]}"#), &[]);
    assert_eq!(s390.unwrap().rules, vec![]);
    let ours_only =
        parse_with(&entry(r#""read""#, &format!(r#""includes": {{"arches": ["s390x", "{ours}"]}}"#)), &[]);
    assert_eq!(ours_only.unwrap().rules, vec![allow("read")]);
    let not_ours = parse_with(&entry(r#""read""#, &format!(r#""excludes": {{"arches": ["{ours}"]}}"#)), &[]);
    assert_eq!(not_ours.unwrap().rules, vec![]);
    let typo = error(&entry(r#""raed""#, &format!(r#""includes": {{"arches": ["{ours}"]}}"#)));
    assert_eq!(typo, r#"syscalls[0]: unknown system call "raed""#);
}

#[test]
fn includes_and_excludes_min_kernel() {
    // The test host runs Linux 6.1.
    let rules = |condition: &str| {
        let json =
            with_entry(&format!(r#"{{"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", {condition}}}"#));
        parse_with(&json, &[]).map(|filter| filter.rules.len())
    };
    assert_eq!(rules(r#""includes": {"minKernel": "4.8"}"#).unwrap(), 1);
    assert_eq!(rules(r#""includes": {"minKernel": "6.1"}"#).unwrap(), 1);
    assert_eq!(rules(r#""includes": {"minKernel": "6.2"}"#).unwrap(), 0);
    assert_eq!(rules(r#""excludes": {"minKernel": "4.8"}"#).unwrap(), 0);
    assert_eq!(rules(r#""excludes": {"minKernel": "10.0"}"#).unwrap(), 1);
    let bad = rules(r#""excludes": {"minKernel": "4"}, "includes": {"caps": ["CAP_BPF"]}"#).unwrap_err();
    assert_eq!(format!("{bad:#}"), r#"syscalls[0]: "4" is not a kernel version like "4.8""#);
}

#[test]
fn kernel_versions() {
    assert_eq!(version("6.1.0-13-amd64").unwrap(), (6, 1));
    assert_eq!(version("4.8").unwrap(), (4, 8));
    assert_eq!(version("5.15rc1").unwrap(), (5, 15));
    assert!(version("6").is_err());
    assert!(version("x.1").is_err());
    assert!(version(".1").is_err());
    let current = Host::current(&[]).unwrap();
    assert!(current.kernel >= (3, 17), "seccomp(2) came with 3.17: {:?}", current.kernel);
}

#[test]
fn size_limit() {
    let path = std::env::temp_dir().join(format!("seccomp-profile-size-{}.json", std::process::id()));
    let small = br#"{"defaultAction": "SCMP_ACT_ALLOW"}"#;
    let mut json = small.to_vec();
    json.resize(MAX_SIZE as usize, b' ');
    std::fs::write(&path, &json).unwrap();
    let read_back = read(&path).unwrap();
    assert!(parse(&read_back, &host(&[])).is_ok());
    json.push(b' ');
    std::fs::write(&path, &json).unwrap();
    assert_eq!(format!("{:#}", read(&path).unwrap_err()), "the profile is larger than 1 MiB");
    std::fs::remove_file(&path).unwrap();
    let missing = format!("{:#}", read(&path).unwrap_err());
    assert_eq!(missing, "open the profile: No such file or directory (os error 2)");
}

#[test]
fn dockers_default_profile() {
    for caps in [&DOCKER_CAPS[..], &ALL_CAPS[..], &[]] {
        let host = Host::current(caps).unwrap();
        let filter = parse(DOCKER_DEFAULT, &host).unwrap();
        assert_eq!(filter.default, Action::Errno(1));
        let programs = compile(&filter).unwrap();
        assert!(programs.iter().all(|program| program.len() < 4096), "over BPF_MAXINSNS");
        let action = |name| filter.rules.iter().find(|rule| rule.nr == nr(name)).map(|rule| rule.action);
        let admin = caps.contains(&"CAP_SYS_ADMIN");
        assert_eq!(action("unshare"), admin.then_some(Action::Allow));
        assert_eq!(action("clone3"), Some(if admin { Action::Allow } else { Action::Errno(38) }));
        assert_eq!(action("keyctl"), None);
        assert_eq!(action("read"), Some(Action::Allow));
    }
}

/// xorshift64*: a tiny deterministic generator, so that a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }
}

/// Bits of JSON and of profiles, to splice in.
const PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "0",
    "-1",
    "5",
    "6",
    "1e999",
    "4095",
    "4096",
    "18446744073709551615",
    "18446744073709551616",
    "\"SCMP_ACT_ERRNO\"",
    "\"SCMP_ACT_KILL\"",
    "\"SCMP_CMP_MASKED_EQ\"",
    "\"names\"",
    "\"name\"",
    "\"args\"",
    "\"index\"",
    "\"value\"",
    "\"valueTwo\"",
    "\"op\"",
    "\"errnoRet\"",
    "\"includes\"",
    "\"excludes\"",
    "\"caps\"",
    "\"arches\"",
    "\"minKernel\"",
    "\"4.8\"",
    "\"amd64\"",
    "\"arm64\"",
    "\"CAP_SYS_ADMIN\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\n",
    "\u{1F980}",
    "\u{feff}",
    "\"open\"",
    "\"clone3\"",
];

/// `seed` with a few random edits: bit flips, cuts, copies and spliced pieces.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.below(bytes.len() + 1);
        let end = (at + rng.below(40)).min(bytes.len());
        match rng.below(5) {
            0 if at < bytes.len() => bytes[at] ^= 1 << rng.below(8),
            1 => drop(bytes.drain(at..end)),
            2 => {
                let copy = bytes[at..end].to_vec();
                let to = rng.below(bytes.len() + 1);
                bytes.splice(to..to, copy);
            }
            3 => bytes.truncate(at),
            _ => {
                let piece = PIECES[rng.below(PIECES.len())].as_bytes();
                bytes.splice(at..at, piece.iter().copied());
            }
        }
    }
    bytes
}

#[test]
fn fuzz_never_panics_and_errors_are_one_line() {
    let small = br#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "syscalls": [
        {"names": ["read", "clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
         "includes": {"caps": ["CAP_SYS_ADMIN"], "minKernel": "4.8"}, "excludes": {"arches": ["s390x"]}},
        {"name": "clone3", "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": ["write"], "action": "SCMP_ACT_LOG", "args": [{"index": 1, "value": 3, "op": "SCMP_CMP_LE"},
         {"index": 1, "value": 1, "op": "SCMP_CMP_GE"}]}]}"#;
    let seeds: [&[u8]; 3] = [small, DOCKER_DEFAULT, b"{}"];
    let caps: [&[&str]; 3] = [&[], &DOCKER_CAPS, &ALL_CAPS];
    let mut rng = Rng(0x5ECC_0A11);
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..4000 {
        let input = mutate(&mut rng, seeds[round % seeds.len()]);
        let host = Host { caps: caps[rng.below(caps.len())], arch: syscalls::DOCKER_ARCH, kernel: (6, 1) };
        let shown = String::from_utf8_lossy(&input);
        let result = std::panic::catch_unwind(|| parse(&input, &host).and_then(|filter| compile(&filter)));
        match result {
            Ok(Ok(_)) => accepted += 1,
            Ok(Err(err)) => {
                let text = format!("{err:#}");
                assert!(!text.is_empty() && !text.contains('\n'), "round {round}: {text:?} for {shown}");
                refused += 1;
            }
            Err(_) => panic!("round {round}: the parser panicked on {shown}"),
        }
    }
    // Most edits break a profile; enough should leave one intact to reach compile().
    assert!(accepted >= 40 && refused >= 1000, "accepted {accepted}, refused {refused}");
}
