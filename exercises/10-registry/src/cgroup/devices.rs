//! The devices allow-list: which device files the container may open.
//!
//! Root in a container keeps CAP_MKNOD, and a device node is only a name for
//! a pair of numbers: `mknod /tmp/disk b 8 0` would give it the host's first
//! disk. Docker lets every container open only a few harmless devices and
//! refuses the rest with EPERM, whatever node points to them. The kernel asks
//! the devices cgroup at every open(2) and mknod(2) of a device node:
//!
//! - cgroup v1 has a `devices` controller: write "a" (all) to `devices.deny`,
//!   then one rule per line to `devices.allow`, like "c 1:3 rwm".
//! - cgroup v2 has no such files. Instead, a small eBPF program of type
//!   BPF_PROG_TYPE_CGROUP_DEVICE is attached to the group; the kernel runs it
//!   for every open and mknod of a device node; it returns 1 (allow) or 0.
//!   We write that program by hand, with the tiny assembler below.
//!
//! Both are asked at open and mknod time, about the node's numbers; a device
//! that is already open stays usable. The kernel asks the eBPF programs of the
//! process's v2 group first, then v1's controller (security/device_cgroup.c,
//! devcgroup_check_permission), so on a hybrid host both count.

use anyhow::{bail, Context, Result};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

// ANCHOR: rules
/// Character or block device: the first letter of `ls -l /dev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Char,
    Block,
}

/// One allow rule: a kind, a major and a minor number (None: any), and what
/// may be done: some of r (read), w (write), m (mknod).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub kind: Kind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: &'static str,
}

const fn char(major: u32, minor: Option<u32>, access: &'static str) -> Rule {
    Rule { kind: Kind::Char, major: Some(major), minor, access }
}

/// Docker's defaults, as moby and runc make them together: moby's default
/// spec (daemon/pkg/oci/defaults.go, `Resources.Devices`) starts with "deny
/// all", and runc appends its `AllowedDevices` (libcontainer/specconv/
/// spec_linux.go) to every container's rules: mknod of any device (but no
/// open), and rwm on the devices below. We keep the ones our /dev has. Two
/// more that Docker allows are left out, since our /dev has neither node:
/// c 5:1 /dev/console (moby) and c 10:200 /dev/net/tun (runc; dropped in
/// 1.2.0-rc1, put back for compatibility). moby's "deny c 10:229" (fuse)
/// is already covered by "deny all".
pub const ALLOWED: [Rule; 10] = [
    Rule { kind: Kind::Char, major: None, minor: None, access: "m" },
    Rule { kind: Kind::Block, major: None, minor: None, access: "m" },
    char(1, Some(3), "rwm"), // /dev/null
    char(1, Some(5), "rwm"), // /dev/zero
    char(1, Some(7), "rwm"), // /dev/full
    char(1, Some(8), "rwm"), // /dev/random
    char(1, Some(9), "rwm"), // /dev/urandom
    char(5, Some(0), "rwm"), // /dev/tty
    char(5, Some(2), "rwm"), // /dev/ptmx (of the container's devpts: /dev/pts/ptmx)
    char(136, None, "rwm"),  // /dev/pts/N: the container's terminals
];

/// v1's notation, as `devices.allow` and `devices.list` spell it: "c 136:* rwm".
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let kind = match self.kind {
            Kind::Char => 'c',
            Kind::Block => 'b',
        };
        let number = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        write!(f, "{kind} {}:{} {}", number(self.major), number(self.minor), self.access)
    }
}
// ANCHOR_END: rules

// ANCHOR: v1
/// cgroup v1: applies the allow-list to the container's group in the devices
/// tree (`/sys/fs/cgroup/devices/workshop/ID`), before any process is in it.
pub fn allow_v1(dir: &Path) -> Result<()> {
    write_rules_v1(dir, &ALLOWED)
}

fn write_rules_v1(dir: &Path, rules: &[Rule]) -> Result<()> {
    // A new group starts with its parent's list ("a *:* rwm" below the root).
    // "a" in devices.deny empties the list and makes "deny" the default
    // (the kernel refuses it with EINVAL once the group has groups below)...
    write(&dir.join("devices.deny"), "a")?;
    // ...and then each allowed rule is an exception, one write per rule.
    for rule in rules {
        write(&dir.join("devices.allow"), &rule.to_string())?;
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("write {value:?} to {}", path.display()))
}
// ANCHOR_END: v1

// ANCHOR: assembler
// A tiny eBPF assembler: just the instructions the device program needs.
// (The numbers are the kernel's: include/uapi/linux/bpf.h and bpf_common.h.)

/// One eBPF instruction (the kernel's `struct bpf_insn`): an opcode, a
/// destination and a source register, a jump offset and an immediate value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// One of eBPF's registers. R1 holds the program's argument; R0 its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg(u8);
pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);

// The opcode is three parts added together: a class, an operation, a source.
const BPF_LDX: u8 = 0x01; // class: load into a register from memory
const BPF_ALU: u8 = 0x04; // class: 32-bit arithmetic
const BPF_JMP: u8 = 0x05; // class: jumps (and exit)
const BPF_MEM: u8 = 0x60; // load from [src + off]...
const BPF_W: u8 = 0x00; // ...a 32-bit word
const BPF_AND: u8 = 0x50;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;
const BPF_K: u8 = 0x00; // the other operand is the immediate
const BPF_X: u8 = 0x08; // the other operand is the source register

const fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn { code, regs: src.0 << 4 | dst.0, off, imm }
}

/// dst = the 32-bit word at [src + off]
pub const fn ld_w(dst: Reg, src: Reg, off: i16) -> Insn {
    insn(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
}
/// dst &= imm
pub const fn and_imm(dst: Reg, imm: i32) -> Insn {
    insn(BPF_ALU | BPF_AND | BPF_K, dst, R0, 0, imm)
}
/// dst >>= imm
pub const fn rsh_imm(dst: Reg, imm: i32) -> Insn {
    insn(BPF_ALU | BPF_RSH | BPF_K, dst, R0, 0, imm)
}
/// dst = src
pub const fn mov_reg(dst: Reg, src: Reg) -> Insn {
    insn(BPF_ALU | BPF_MOV | BPF_X, dst, src, 0, 0)
}
/// dst = imm
pub const fn mov_imm(dst: Reg, imm: i32) -> Insn {
    insn(BPF_ALU | BPF_MOV | BPF_K, dst, R0, 0, imm)
}
/// if dst != imm, skip the next `off` instructions
pub const fn jne_imm(dst: Reg, imm: i32, off: i16) -> Insn {
    insn(BPF_JMP | BPF_JNE | BPF_K, dst, R0, off, imm)
}
/// if dst != src, skip the next `off` instructions
pub const fn jne_reg(dst: Reg, src: Reg, off: i16) -> Insn {
    insn(BPF_JMP | BPF_JNE | BPF_X, dst, src, off, 0)
}
/// return R0
pub const fn exit() -> Insn {
    insn(BPF_JMP | BPF_EXIT, R0, R0, 0, 0)
}

impl Insn {
    /// The 8 bytes the kernel reads: the opcode, one byte for both registers
    /// (destination in the low four bits), then offset and immediate in the
    /// machine's byte order.
    pub fn to_bytes(self) -> [u8; 8] {
        let [off0, off1] = self.off.to_ne_bytes();
        let [imm0, imm1, imm2, imm3] = self.imm.to_ne_bytes();
        [self.code, self.regs, off0, off1, imm0, imm1, imm2, imm3]
    }

    fn is_conditional_jump(&self) -> bool {
        self.code & 0x07 == BPF_JMP && self.code & 0xf0 != BPF_EXIT
    }
}
// ANCHOR_END: assembler

// ANCHOR: program
// What the kernel passes in R1 (include/uapi/linux/bpf.h):
//   struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; };
// where access_type = (access << 16) | type.
const BPF_DEVCG_DEV_BLOCK: i32 = 1;
const BPF_DEVCG_DEV_CHAR: i32 = 2;
const BPF_DEVCG_ACC_MKNOD: i32 = 1;
const BPF_DEVCG_ACC_READ: i32 = 2;
const BPF_DEVCG_ACC_WRITE: i32 = 4;

// The program unpacks the request into four registers first.
const TYPE: Reg = R2;
const ACCESS: Reg = R3;
const MAJOR: Reg = R4;
const MINOR: Reg = R5;

/// The device program for `rules`: "allow if one of the rules covers the request".
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut prog = vec![
        ld_w(TYPE, R1, 0), // type: the low 16 bits of access_type
        and_imm(TYPE, 0xffff),
        ld_w(ACCESS, R1, 0), // access: its high 16 bits
        rsh_imm(ACCESS, 16),
        ld_w(MAJOR, R1, 4),
        ld_w(MINOR, R1, 8),
    ];
    for rule in rules {
        prog.extend(rule_block(rule));
    }
    // No rule matched: deny.
    prog.extend([mov_imm(R0, 0), exit()]);
    prog
}

/// "If the request matches `rule`, return 1". Each check that fails jumps
/// past the block, to the next rule's.
fn rule_block(rule: &Rule) -> Vec<Insn> {
    let kind = match rule.kind {
        Kind::Char => BPF_DEVCG_DEV_CHAR,
        Kind::Block => BPF_DEVCG_DEV_BLOCK,
    };
    let mut block = vec![jne_imm(TYPE, kind, 0)];
    let allowed = access_bits(rule.access);
    if allowed != BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE {
        // One request may ask for more than one thing (open O_RDWR: read and
        // write); the rule covers it only if it allows them all:
        // if (access & allowed) != access, next rule. R1 is free by now.
        block.extend([mov_reg(R1, ACCESS), and_imm(R1, allowed), jne_reg(R1, ACCESS, 0)]);
    }
    if let Some(major) = rule.major {
        block.push(jne_imm(MAJOR, major as i32, 0));
    }
    if let Some(minor) = rule.minor {
        block.push(jne_imm(MINOR, minor as i32, 0));
    }
    block.extend([mov_imm(R0, 1), exit()]);
    // A jump at index i lands on i + 1 + off: point every one just past the block.
    let len = block.len();
    for (i, insn) in block.iter_mut().enumerate() {
        if insn.is_conditional_jump() {
            insn.off = (len - i - 1) as i16;
        }
    }
    block
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |bits, c| match c {
        'm' => bits | BPF_DEVCG_ACC_MKNOD,
        'r' => bits | BPF_DEVCG_ACC_READ,
        'w' => bits | BPF_DEVCG_ACC_WRITE,
        _ => panic!("device access {access:?}: only r, w and m"),
    })
}
// ANCHOR_END: program

// ANCHOR: bpf
// The bpf(2) system call: a command and a pointer to a union bpf_attr; each
// command reads its own struct, of which we send the leading fields we use.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Let other programs be attached too, here and in groups above and below;
/// all of them must allow. systemd attaches its own device programs (for
/// units with DeviceAllow= or DevicePolicy=) this way; runc attaches with
/// this flag too, so that those stay in force.
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live #[repr(C)] struct of the given size, laid out as
    // the leading fields of the kernel's struct for `cmd`; the kernel treats
    // the fields it knows beyond that size as zero.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
// ANCHOR_END: bpf

// ANCHOR: v2
/// cgroup v2: attaches the allow-list program to the container's group
/// (`/sys/fs/cgroup/workshop/ID`), before any process is in it.
pub fn allow_v2(dir: &Path) -> Result<()> {
    attach_v2(dir, &program(&ALLOWED))
}

fn attach_v2(dir: &Path, prog: &[Insn]) -> Result<()> {
    let prog = load(prog)?;
    let group = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .with_context(|| format!("open {}", dir.display()))?;
    let mut attr = ProgAttachAttr {
        target_fd: group.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    if let Err(err) = bpf(BPF_PROG_ATTACH, &mut attr) {
        let why = match err.raw_os_error() {
            Some(libc::EBADF) => " (not a directory of a cgroup v2 hierarchy)",
            Some(libc::EPERM) => {
                " (needs CAP_SYS_ADMIN in the initial user namespace, and no group above \
                 may hold a device program attached without BPF_F_ALLOW_MULTI)"
            }
            Some(libc::EINVAL) => " (a kernel without CONFIG_CGROUP_BPF?)",
            _ => "",
        };
        bail!("bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE) to {}: {err}{why}", dir.display());
    }
    // The group now holds a reference to the program: our fd can go (when
    // `prog` is dropped here), and the program lives as long as the group.
    // rmdir of the group frees it; nothing is left behind (the tests check).
    Ok(())
}

/// Loads the program into the kernel; the verifier checks it first.
fn load(prog: &[Insn]) -> Result<OwnedFd> {
    let code: Vec<u8> = prog.iter().flat_map(|insn| insn.to_bytes()).collect();
    let license = c"GPL"; // (this type needs none; the verifier only records it)
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    attr.prog_name[..12].copy_from_slice(b"workshop_dev"); // what `bpftool prog` shows
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: on success, bpf(2) returns a new file descriptor, ours alone.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(err) => {
            // Ask again, this time for the verifier's log: why it refused.
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
                // SAFETY: as above (it failed once; should it load now, we let it go).
                drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
            let text = String::from_utf8_lossy(&log);
            let why = verifier_verdict(text.trim_end_matches('\0'));
            let hint = match err.raw_os_error() {
                Some(libc::EPERM) => " (needs CAP_SYS_ADMIN, or CAP_BPF, in the initial user namespace)",
                Some(libc::EACCES) => " (EACCES from the verifier: it refused the program)",
                _ => "",
            };
            bail!("bpf(BPF_PROG_LOAD) of the device program: {err}{hint}{why}");
        }
    }
}

/// The line of the verifier's log that says what is wrong. The log traces
/// every instruction it checked ("0: (61) r2 = *(u32 *)(r1 +0)") and ends
/// with a summary ("processed N insns ..."); the reason is the line before it.
fn verifier_verdict(log: &str) -> String {
    let reason = log.lines().rev().find(|line| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with("processed ") && !line.starts_with(char::is_numeric)
    });
    reason.map_or(String::new(), |line| format!("; the verifier says: {}", line.trim()))
}
// ANCHOR_END: v2

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_in_v1_notation() {
        let lines: Vec<String> = ALLOWED.iter().map(Rule::to_string).collect();
        let expected = [
            "c *:* m",
            "b *:* m",
            "c 1:3 rwm",
            "c 1:5 rwm",
            "c 1:7 rwm",
            "c 1:8 rwm",
            "c 1:9 rwm",
            "c 5:0 rwm",
            "c 5:2 rwm",
            "c 136:* rwm",
        ];
        assert_eq!(lines, expected);
    }

    fn bytes(prog: &[Insn]) -> Vec<[u8; 8]> {
        prog.iter().map(|insn| insn.to_bytes()).collect()
    }

    const PROLOGUE: [[u8; 8]; 6] = [
        [0x61, 0x12, 0, 0, 0, 0, 0, 0],       // r2 = *(u32 *)(r1 + 0)
        [0x54, 0x02, 0, 0, 0xff, 0xff, 0, 0], // w2 &= 0xffff
        [0x61, 0x13, 0, 0, 0, 0, 0, 0],       // r3 = *(u32 *)(r1 + 0)
        [0x74, 0x03, 0, 0, 16, 0, 0, 0],      // w3 >>= 16
        [0x61, 0x14, 4, 0, 0, 0, 0, 0],       // r4 = *(u32 *)(r1 + 4)
        [0x61, 0x15, 8, 0, 0, 0, 0, 0],       // r5 = *(u32 *)(r1 + 8)
    ];
    const DENY: [[u8; 8]; 2] = [
        [0xb4, 0x00, 0, 0, 0, 0, 0, 0], // w0 = 0
        [0x95, 0x00, 0, 0, 0, 0, 0, 0], // exit
    ];

    #[test]
    fn encoding_of_one_device() {
        let mut expected = PROLOGUE.to_vec();
        expected.extend([
            [0x55, 0x02, 4, 0, 2, 0, 0, 0], // if r2 != 2 (char) goto +4
            [0x55, 0x04, 3, 0, 1, 0, 0, 0], // if r4 != 1 goto +3
            [0x55, 0x05, 2, 0, 3, 0, 0, 0], // if r5 != 3 goto +2
            [0xb4, 0x00, 0, 0, 1, 0, 0, 0], // w0 = 1
            [0x95, 0x00, 0, 0, 0, 0, 0, 0], // exit
        ]);
        expected.extend(DENY);
        assert_eq!(bytes(&program(&[char(1, Some(3), "rwm")])), expected);
    }

    #[test]
    fn encoding_of_mknod_any_block_device() {
        let mut expected = PROLOGUE.to_vec();
        expected.extend([
            [0x55, 0x02, 5, 0, 1, 0, 0, 0], // if r2 != 1 (block) goto +5
            [0xbc, 0x31, 0, 0, 0, 0, 0, 0], // w1 = w3
            [0x54, 0x01, 0, 0, 1, 0, 0, 0], // w1 &= 1 (mknod)
            [0x5d, 0x31, 2, 0, 0, 0, 0, 0], // if r1 != r3 goto +2
            [0xb4, 0x00, 0, 0, 1, 0, 0, 0], // w0 = 1
            [0x95, 0x00, 0, 0, 0, 0, 0, 0], // exit
        ]);
        expected.extend(DENY);
        let rule = Rule { kind: Kind::Block, major: None, minor: None, access: "m" };
        assert_eq!(bytes(&program(&[rule])), expected);
    }

    /// Runs a device program the way the kernel would, for the few
    /// instructions our assembler makes.
    fn run(prog: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> i32 {
        let ctx = [(access << 16 | kind) as u32, major, minor];
        let mut reg = [0u64; 11];
        let mut pc = 0;
        loop {
            let Insn { code, regs, off, imm } = prog[pc];
            let (dst, src) = ((regs & 0x0f) as usize, (regs >> 4) as usize);
            pc += 1;
            match code {
                0x61 => reg[dst] = ctx[off as usize / 4] as u64,
                0x54 => reg[dst] = (reg[dst] as u32 & imm as u32) as u64,
                0x74 => reg[dst] = (reg[dst] as u32 >> imm) as u64,
                0xbc => reg[dst] = reg[src] as u32 as u64,
                0xb4 => reg[dst] = imm as u32 as u64,
                0x55 if reg[dst] != imm as i64 as u64 => pc += off as usize,
                0x5d if reg[dst] != reg[src] => pc += off as usize,
                0x55 | 0x5d => {}
                0x95 => return reg[0] as i32,
                _ => panic!("unknown opcode {code:#x}"),
            }
        }
    }

    #[test]
    fn program_decides_like_the_rules() {
        let prog = program(&ALLOWED);
        let (c, b) = (BPF_DEVCG_DEV_CHAR, BPF_DEVCG_DEV_BLOCK);
        let (m, r, w) = (BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE);
        assert_eq!(run(&prog, c, r | w, 1, 3), 1, "open /dev/null");
        assert_eq!(run(&prog, c, r, 136, 7), 1, "open /dev/pts/7");
        assert_eq!(run(&prog, b, m, 8, 0), 1, "mknod a disk");
        assert_eq!(run(&prog, b, r, 8, 0), 0, "open a disk");
        assert_eq!(run(&prog, c, r, 1, 11), 0, "open /dev/kmsg");
        assert_eq!(run(&prog, c, r, 5, 1), 0, "open /dev/console");
        assert_eq!(run(&prog, b, r, 1, 3), 0, "a block device 1:3 is not /dev/null");

        // A rule with only some of r, w, m: every part of the request counts.
        let read_only = program(&[char(1, Some(3), "r")]);
        assert_eq!(run(&read_only, c, r, 1, 3), 1);
        assert_eq!(run(&read_only, c, r | w, 1, 3), 0);
        assert_eq!(run(&read_only, c, w, 1, 3), 0);
    }

    #[test]
    fn verdict_is_the_reason_line() {
        let log = "func#0 @0\n0: R1=ctx() R10=fp0\n0: (61) r2 = *(u32 *)(r1 +12)\n\
                   invalid bpf_context access off=12 size=4\nprocessed 1 insns (limit 1000000)\n";
        assert_eq!(verifier_verdict(log), "; the verifier says: invalid bpf_context access off=12 size=4");
        assert_eq!(verifier_verdict(""), "");
    }
}
