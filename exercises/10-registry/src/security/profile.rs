//! Docker's seccomp profiles (`--security-opt seccomp=FILE`): the JSON format of
//! moby's profiles/seccomp/default.json, read into a `Filter`.
//!
//! An entry names calls, an action and maybe argument checks. Its `includes`
//! and `excludes` make it depend on the container and the host, as in Docker:
//! - `caps`: an entry that includes caps applies only when the container holds
//!   all of them; one that excludes caps is skipped when it holds any;
//! - `arches`: Docker's architecture names ("amd64", "arm64"), against ours;
//! - `minKernel` ("4.8"): against the running kernel's major.minor version.
//!
//! `architectures` (checked for names like SCMP_ARCH_X86_64), `archMap`,
//! `flags`, `comment` and other fields are accepted and then ignored: the
//! filter covers this architecture's own calls, and a call through any other
//! ABI (32-bit, x32) kills the caller, where Docker would let the ones that
//! these fields list through.

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::io::Read;
use std::path::Path;

use super::seccomp::{Action, ArgCheck, Filter, Op, Rule};
use super::syscalls;

/// Far more than a real profile needs (Docker's is 14 KiB), and small enough to read whole.
const MAX_SIZE: u64 = 1024 * 1024;

// ANCHOR: format
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<u64>,
    architectures: Option<Vec<String>>,
    syscalls: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    names: Option<Vec<String>>,
    /// The older form: a single name.
    name: Option<String>,
    action: String,
    errno_ret: Option<u64>,
    args: Option<Vec<Arg>>,
    includes: Option<Condition>,
    excludes: Option<Condition>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Condition {
    caps: Option<Vec<String>>,
    arches: Option<Vec<String>>,
    min_kernel: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Arg {
    index: u64,
    value: u64,
    value_two: Option<u64>,
    op: String,
}
// ANCHOR_END: format

/// What an entry's `includes` and `excludes` are checked against.
pub struct Host<'a> {
    /// The container's capabilities: "CAP_CHOWN", ...
    pub caps: &'a [&'a str],
    /// Docker's name for the architecture: "amd64", "arm64".
    pub arch: &'a str,
    /// The running kernel's major and minor version: (6, 1) for "6.1.0-13-amd64".
    pub kernel: (u64, u64),
}

impl<'a> Host<'a> {
    /// This machine, for a container that holds `caps`.
    pub fn current(caps: &'a [&'a str]) -> Result<Self> {
        let release =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").context("read the kernel version")?;
        Ok(Host { caps, arch: syscalls::DOCKER_ARCH, kernel: version(release.trim())? })
    }
}

/// The profile's bytes; a file over 1 MiB is refused (reading one byte more tells).
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).context("open the profile")?;
    let mut json = Vec::new();
    file.take(MAX_SIZE + 1).read_to_end(&mut json).context("read the profile")?;
    ensure!(json.len() as u64 <= MAX_SIZE, "the profile is larger than 1 MiB");
    Ok(json)
}

// ANCHOR: parse
/// The filter that the profile `json` describes, for `host`.
pub fn parse(json: &[u8], host: &Host) -> Result<Filter> {
    let profile: Profile = serde_json::from_slice(json).context("not a Docker seccomp profile")?;
    let default = action(&profile.default_action, profile.default_errno_ret).context("defaultAction")?;
    // Only checked: the filter is for this architecture (see above).
    if let Some(arch) = list(&profile.architectures).iter().find(|arch| !arch.starts_with("SCMP_ARCH_")) {
        bail!("architectures: {arch:?} is not a name like \"SCMP_ARCH_X86_64\"");
    }
    let mut rules = Vec::new();
    for (n, entry) in profile.syscalls.iter().flatten().enumerate() {
        rules.extend(entry_rules(entry, host).with_context(|| format!("syscalls[{n}]"))?);
    }
    Ok(Filter { default, rules })
}

/// An entry's rules: none when it does not apply to `host`. Everything is
/// checked even then, so a mistake shows whatever the capabilities, except in
/// another architecture's entry, whose names need not be calls here.
fn entry_rules(entry: &Entry, host: &Host) -> Result<Vec<Rule>> {
    let none = Condition::default();
    let includes = entry.includes.as_ref().unwrap_or(&none);
    let excludes = entry.excludes.as_ref().unwrap_or(&none);
    if !for_arch(includes, excludes, host.arch) {
        return Ok(Vec::new());
    }
    let numbers = numbers(entry)?;
    let action = action(&entry.action, entry.errno_ret)?;
    let alternatives = alternatives(entry.args.as_deref().unwrap_or_default())?;
    if !applies(includes, excludes, host)? {
        return Ok(Vec::new());
    }
    let rules = numbers.iter().flat_map(|&nr| alternatives.iter().map(move |args| (nr, args)));
    Ok(rules.map(|(nr, args)| Rule { nr, args: args.clone(), action }).collect())
}

/// Docker's rule for `arches`: listed in includes, if it lists any, and not in excludes.
fn for_arch(includes: &Condition, excludes: &Condition, arch: &str) -> bool {
    let listed = |condition: &Condition| list(&condition.arches).iter().any(|listed| listed == arch);
    (list(&includes.arches).is_empty() || listed(includes)) && !listed(excludes)
}

/// Docker's rules for `caps` and `minKernel`: every included cap held, no
/// excluded one; a kernel at least as new as included, older than excluded.
fn applies(includes: &Condition, excludes: &Condition, host: &Host) -> Result<bool> {
    let held = |cap: &String| host.caps.contains(&cap.as_str());
    let new_enough = |min: &Option<String>| match min {
        Some(min) => version(min).map(|min| Some(host.kernel >= min)),
        None => Ok(None),
    };
    let (kernel_included, kernel_excluded) =
        (new_enough(&includes.min_kernel)?, new_enough(&excludes.min_kernel)?);
    Ok(list(&includes.caps).iter().all(held)
        && !list(&excludes.caps).iter().any(held)
        && kernel_included != Some(false)
        && kernel_excluded != Some(true))
}

/// The entry's call numbers. A name of another architecture's call is skipped,
/// like Docker does (its profile lists them side by side); any other name that
/// is no call here is an error, most likely a typo.
fn numbers(entry: &Entry) -> Result<Vec<i64>> {
    let names: Vec<&String> = match (&entry.name, list(&entry.names)) {
        (Some(_), [_, ..]) => bail!("both \"name\" and \"names\""),
        (Some(name), []) => vec![name],
        (None, names) => names.iter().collect(),
    };
    ensure!(!names.is_empty(), "no \"names\"");
    let mut numbers = Vec::new();
    for name in names {
        match syscalls::number(name) {
            Some(nr) => numbers.push(nr),
            None if syscalls::elsewhere(name) => {}
            None => bail!("unknown system call {name:?}"),
        }
    }
    Ok(numbers)
}
// ANCHOR_END: parse

/// Docker's (libseccomp's) action names.
fn action(name: &str, errno_ret: Option<u64>) -> Result<Action> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno(errno_ret)?),
        // libseccomp's plain KILL kills the calling thread only.
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_TRACE" | "SCMP_ACT_NOTIFY" => {
            bail!("action {name} is not supported (it needs a tracer or a listener)")
        }
        _ => bail!("unknown action {name:?}"),
    })
}

/// The errno for SCMP_ACT_ERRNO: EPERM when errnoRet is not given, as in runc.
fn errno(errno_ret: Option<u64>) -> Result<u16> {
    let errno = errno_ret.unwrap_or(libc::EPERM as u64);
    // 4095 (MAX_ERRNO) is the highest errno; the kernel caps larger values.
    ensure!(errno <= 4095, "errnoRet {errno} is not an errno (0 to 4095)");
    Ok(errno as u16)
}

/// The argument checks as alternatives, one of which must hold: normally one,
/// all checks together; when two check the same argument, each on its own, as
/// runc does: `arg0 == 1, arg0 == 2` then means either value.
fn alternatives(args: &[Arg]) -> Result<Vec<Vec<ArgCheck>>> {
    let checked = |(n, arg)| arg_check(arg).with_context(|| format!("args[{n}]"));
    let checks = args.iter().enumerate().map(checked).collect::<Result<Vec<_>>>()?;
    let repeats =
        checks.iter().enumerate().any(|(n, check)| checks[..n].iter().any(|c| c.index == check.index));
    if repeats {
        return Ok(checks.into_iter().map(|check| vec![check]).collect());
    }
    Ok(vec![checks])
}

fn arg_check(arg: &Arg) -> Result<ArgCheck> {
    // Six arguments at most, numbered from 0.
    let index = u8::try_from(arg.index).ok().filter(|&index| index <= 5);
    let index = index.with_context(|| format!("index {} is not an argument (0 to 5)", arg.index))?;
    let op = match arg.op.as_str() {
        "SCMP_CMP_EQ" => Op::Eq,
        "SCMP_CMP_NE" => Op::Ne,
        "SCMP_CMP_LT" => Op::Lt,
        "SCMP_CMP_LE" => Op::Le,
        "SCMP_CMP_GT" => Op::Gt,
        "SCMP_CMP_GE" => Op::Ge,
        // `value` is the mask here, and `valueTwo` what the masked bits must be.
        "SCMP_CMP_MASKED_EQ" => {
            return Ok(ArgCheck {
                index,
                op: Op::MaskedEq { mask: arg.value },
                value: arg.value_two.unwrap_or(0),
            })
        }
        op => bail!("unknown op {op:?}"),
    };
    Ok(ArgCheck { index, op, value: arg.value })
}

/// "4.8" or "6.1.0-13-amd64" as (major, minor); the rest does not count, as in Docker.
fn version(text: &str) -> Result<(u64, u64)> {
    let parsed = || {
        let (major, rest) = text.split_once('.')?;
        let minor = rest.split(|c: char| !c.is_ascii_digit()).next()?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    parsed().with_context(|| format!("{text:?} is not a kernel version like \"4.8\""))
}

/// A list that may be missing or null.
fn list<T>(list: &Option<Vec<T>>) -> &[T] {
    list.as_deref().unwrap_or_default()
}

#[cfg(test)]
pub(super) mod tests;
