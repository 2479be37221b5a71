//! Bad input, tried: every flag and subcommand argument with values that a
//! runtime must refuse, and a fuzzer over the flags that the runtime parses.
//!
//! A refusal is exit 125 with one line on stderr that names the flag or the
//! value; the leak check around every test proves that nothing was left behind.

use super::{store, TempPath};
use crate::figures::{self, FUZZ, INPUTS};
use crate::{Check, Ctx, Outcome, Run};
use anyhow::{bail, ensure, Context, Result};
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::Duration;

pub fn checks() -> Vec<Check> {
    // Each case sets its own flags: the checks run once per step, without --userns added.
    let check = |since, name, run| Check::new(since, name, run).plain_only();
    vec![
        check(1, "errors::inputs::bad_command_lines_are_125_in_one_line", bad_command_lines),
        check(1, "errors::inputs::bad_hostnames_and_names_are_125_in_one_line", bad_hostnames_and_names),
        check(3, "errors::inputs::bad_rootfs_paths_are_125_in_one_line", bad_rootfs_paths),
        check(4, "errors::inputs::bad_userns_remaps_are_125_in_one_line", bad_userns_remaps),
        check(5, "errors::inputs::bad_nets_are_125_in_one_line", bad_nets),
        check(6, "errors::inputs::bad_limits_are_125_in_one_line", bad_limits),
        check(6, "errors::inputs::bad_subcommand_args_are_125_in_one_line", bad_subcommand_args),
        check(7, "errors::inputs::bad_images_are_125_in_one_line", bad_images),
        check(7, "errors::inputs::bad_layers_are_125_and_import_nothing", bad_layers),
        check(8, "errors::inputs::bad_volumes_are_125_in_one_line", bad_volumes),
        check(1, "errors::inputs::fuzzed_values_run_or_are_125_in_one_line", fuzzed_flags),
    ]
}

/// A refused input comes back at once; a hang is a failure, not a wait.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A fuzzed value may be valid and run a container: under software emulation
/// a small but valid --cpus makes that take seconds.
const FUZZ_TIMEOUT: Duration = Duration::from_secs(30);
/// The per-mapping rootfs copies that a valid `--userns-remap` makes (a cache).
use crate::paths::USERNS_CACHE;
/// Where the runtimes keep named volumes (images: see `store`).
use crate::paths::VOLUMES;

/// How a case is run.
#[derive(Clone, Copy)]
enum Via {
    /// `BIN run`, the step's usual flags (and `--net none` from step 05), ARGS, `-- true`.
    Run,
    /// The same without `--net none`, for the cases about `--net` itself.
    RunOnAnyNet,
    /// The same without `--rootfs`, for the cases that give their own.
    Bare,
    /// `BIN ARGS`: subcommands, and command lines that end early.
    Raw,
}

/// One bad input: from step `since` on, it must end in 125 and one error line
/// that contains each of `words`.
struct Case {
    since: u8,
    /// The last step it is bad for (u8::MAX: every later step).
    until: u8,
    via: Via,
    args: Vec<OsString>,
    words: Vec<String>,
}

fn case<A: AsRef<OsStr>>(since: u8, via: Via, args: impl IntoIterator<Item = A>, words: &[&str]) -> Case {
    let args = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    Case { since, until: u8::MAX, via, args, words: words.iter().map(|w| w.to_string()).collect() }
}

impl Case {
    fn until(mut self, last: u8) -> Case {
        self.until = last;
        self
    }
}

/// `FLAG=VALUE` as one argument, so that a value starting with '-' stays a value.
fn flag_is(flag: &str, value: impl AsRef<OsStr>) -> OsString {
    let mut arg = OsString::from(format!("{flag}="));
    arg.push(value);
    arg
}

/// `text` followed by bytes that are not UTF-8 (a lone continuation byte, an invalid lead).
fn not_utf8(text: &str) -> OsString {
    let mut arg = OsString::from(text);
    arg.push(OsStr::from_bytes(b"\xff\xfe"));
    arg
}

/// `BIN run` with the step's usual flags and, from step 05, no network (quicker).
fn quick_run(ctx: &Ctx) -> Run {
    let run = ctx.run();
    if ctx.step.number >= 5 {
        run.args(["--net", "none"])
    } else {
        run
    }
}

fn command_for(ctx: &Ctx, case: &Case) -> Run {
    let run = match case.via {
        Via::Run => quick_run(ctx).args(&case.args).cmd(["true"]),
        Via::RunOnAnyNet => ctx.run().args(&case.args).cmd(["true"]),
        Via::Bare if ctx.step.number >= 5 => {
            ctx.bare().args(["--net", "none"]).args(&case.args).cmd(["true"])
        }
        Via::Bare => ctx.bare().args(&case.args).cmd(["true"]),
        Via::Raw => Run::raw(&ctx.step.bin).args(&case.args),
    };
    run.timeout(TIMEOUT)
}

/// Runs this step's cases; fails with each one that was not refused as it should
/// be. `after` looks for a case's own leftovers (the leak check sees only the sum).
fn expect_refused(ctx: &Ctx, cases: &[Case], after: impl Fn() -> Result<()>) -> Result<()> {
    let mut failures = Vec::new();
    let mut tried = 0;
    for case in cases.iter().filter(|c| (c.since..=c.until).contains(&ctx.step.number)) {
        figures::add(INPUTS, 1);
        tried += 1;
        let words: Vec<&str> = case.words.iter().map(String::as_str).collect();
        let refused = command_for(ctx, case).output().and_then(|outcome| {
            outcome.expect_status(125)?.expect_one_error_line(&words)?;
            after().with_context(|| format!("after `{}`", outcome.command))
        });
        if let Err(err) = refused {
            failures.push(shortened(&format!("{err:#}"), 1500));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {tried} bad inputs were not refused with 125 and one line:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// A message cut to about `max` bytes: some values are 100 KB long.
fn shortened(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}... ({} bytes in all)", &text[..cut], text.len())
}

/// For the cases whose leftovers only the leak check needs to see.
fn no_leftovers() -> Result<()> {
    Ok(())
}

fn bad_command_lines(ctx: &Ctx) -> Result<()> {
    let run = || OsString::from("run");
    // Names that are not UTF-8 come back lossy, with U+FFFD for each bad byte.
    let cases = vec![
        case(1, Via::Raw, [run(), "--".into(), not_utf8("")], &["UTF-8"]),
        case(1, Via::Raw, [run(), not_utf8("--"), "--".into(), "true".into()], &["'--\u{fffd}"]),
        case(1, Via::Raw, [not_utf8("")], &["'\u{fffd}"]),
        case(1, Via::Raw, ["run", "--hostname", "a", "--hostname", "b", "--", "true"], &["--hostname"]),
        case(1, Via::Raw, ["run", "-x", "--", "true"], &["-x"]),
        case(1, Via::Raw, ["run", "--hostname=box"], &["COMMAND"]),
    ];
    expect_refused(ctx, &cases, no_leftovers)
}

fn bad_hostnames_and_names(ctx: &Ctx) -> Result<()> {
    let too_long = "x".repeat(65);
    let huge = "x".repeat(100 * 1024);
    let values =
        [&too_long, &huge, "a_b", "a b", "a/b", "héllo", "a\nb", "-dash", "dash-", "a..b", ".", "box.", ""];
    let mut cases = Vec::new();
    for (flag, since, word) in [("--hostname", 1, "hostname"), ("--name", 7, "--name")] {
        for value in values {
            cases.push(case(since, Via::Run, [flag_is(flag, value)], &[word]));
        }
        cases.push(case(since, Via::Run, [flag_is(flag, OsStr::from_bytes(b"box\xff"))], &["UTF-8"]));
        // Without '=', "-dash" is no value: clap reads it as flags.
        cases.push(case(since, Via::Run, [flag, "-dash"], &["-d"]));
    }
    expect_refused(ctx, &cases, no_leftovers)
}

fn bad_rootfs_paths(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("bad-rootfs");
    std::fs::create_dir(&dir.0)?;
    let looped = dir.0.join("loop");
    std::os::unix::fs::symlink(&looped, &looped)?;
    let to_a_file = dir.0.join("to-a-file");
    std::os::unix::fs::symlink("/etc/passwd", &to_a_file)?;
    let dangling = dir.0.join("dangling");
    std::os::unix::fs::symlink(dir.0.join("nowhere"), &dangling)?;
    let long_name = format!("/{}", "a".repeat(300));
    let long_path = "/a".repeat(3000);
    let paths: Vec<OsString> = vec![
        "/dev/null".into(),
        "../no-such-rootfs".into(),
        "/tmp/../no/such/rootfs".into(),
        long_name.into(),
        long_path.into(),
        not_utf8("/tmp/no-such-"),
        looped.into(),
        to_a_file.into(),
        dangling.into(),
    ];
    let mut cases: Vec<Case> = paths
        .into_iter()
        .map(|path| case(3, Via::Bare, [OsString::from("--rootfs"), path], &["rootfs"]))
        .collect();
    cases.push(case(3, Via::Bare, ["--rootfs="], &["rootfs"]));
    cases.push(case(3, Via::Raw, ["run", "--rootfs"], &["--rootfs"]));
    expect_refused(ctx, &cases, no_leftovers)
}

fn bad_userns_remaps(ctx: &Ctx) -> Result<()> {
    let long = "9".repeat(5000);
    let values = [
        "0",
        "0:1",
        "1:0",
        "4294967295",
        "4294967295:1",
        "4294967296",
        "1:4294967295",
        "-1",
        "1:-1",
        "abc",
        "1:abc",
        "1:2:3",
        "",
        ":",
        "100000:",
        ":65536",
        "1e5",
        " 100000",
        "100000 ",
        "0x10",
        "１",
        "1\n2",
        "99999999999999999999",
        &long,
    ];
    let mut cases: Vec<Case> = values
        .iter()
        .map(|v| case(4, Via::Run, [flag_is("--userns-remap", v)], &["--userns-remap"]))
        .collect();
    cases.push(case(4, Via::Run, [flag_is("--userns-remap", OsStr::from_bytes(b"1\xff"))], &["UTF-8"]));
    expect_refused(ctx, &cases, no_leftovers)
}

fn bad_nets(ctx: &Ctx) -> Result<()> {
    let long = "x".repeat(5000);
    let values = ["bogus", "", "Bridge", "NONE", "none ", "bridge,none", "container:abc", "host\n", &long];
    let mut cases: Vec<Case> =
        values.iter().map(|v| case(5, Via::RunOnAnyNet, [flag_is("--net", v)], &["--net"])).collect();
    cases.push(case(5, Via::RunOnAnyNet, ["--network=bogus"], &["bogus"]));
    cases.push(case(5, Via::RunOnAnyNet, ["--net", "none", "--net", "host"], &["--net"]));
    cases.push(case(5, Via::RunOnAnyNet, [flag_is("--net", OsStr::from_bytes(b"none\xff"))], &["--net"]));
    expect_refused(ctx, &cases, no_leftovers)
}

fn bad_limits(ctx: &Ctx) -> Result<()> {
    let nines = "9".repeat(5000);
    let memory: &[&str] = &[
        "0",
        "-1",
        "-5m",
        "12q",
        "1e3",
        "1.5g",
        "99999999999999999999g",
        "18446744073709551615g",
        "17179869184g",
        "",
        "5m",
        "m",
        " 64m",
        "64 m",
        "0x40m",
        "+64m",
        "64mm",
        "64mib",
        "６４m",
        "64m\n",
        &nines,
    ];
    let cpus: &[&str] = &[
        "-1",
        "abc",
        "0",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "infinity",
        "1e400",
        "1e-400",
        "1e10",
        "0.001",
        "",
        "1/2",
        "0,5",
        "0x1",
        "99999999999",
        "0.5\n",
        &nines,
    ];
    let pids: &[&str] = &[
        "0",
        "-1",
        "1.5",
        "99999999999999999999",
        "18446744073709551616",
        "",
        "1e3",
        "0x10",
        "abc",
        " 5",
        "5 ",
        "5\n",
        &nines,
    ];
    let mut cases = Vec::new();
    for (flag, values) in [("--memory", memory), ("--cpus", cpus), ("--pids-limit", pids)] {
        cases.extend(values.iter().map(|v| case(6, Via::Run, [flag_is(flag, v)], &[flag])));
        cases.push(case(6, Via::Run, [flag_is(flag, OsStr::from_bytes(b"64\xff"))], &["UTF-8"]));
        cases.push(case(6, Via::Raw, ["run", flag], &[flag]));
    }
    expect_refused(ctx, &cases, no_leftovers)
}

fn bad_subcommand_args(ctx: &Ctx) -> Result<()> {
    let missing = format!("no-such-{}", std::process::id());
    let long = "x".repeat(5000);
    // Absolute paths name a directory of ours: a runtime that took one would remove it.
    let victim = TempPath::new("not-in-any-store");
    std::fs::create_dir(&victim.0)?;
    std::fs::write(victim.0.join("kept"), "")?;
    // It even looks like a container's directory, so `diff` would read it if it took the path.
    std::fs::write(victim.0.join("lowers"), "/\n")?;
    std::fs::create_dir(victim.0.join("upper"))?;
    let victim_path = victim.0.to_string_lossy().into_owned();
    let climbing = format!("../../..{victim_path}");
    let mut cases = vec![case(6, Via::Raw, ["cleanup", "extra"], &["extra"])];
    // Container ids: `diff` and `rm` must not wander out of the container store.
    for sub in ["diff", "rm"] {
        cases.push(case(7, Via::Raw, [sub], &["<ID>"]));
        for id in [&missing, "../x", "a/b", "", "..", ".", "/", &victim_path, &climbing, &long] {
            cases.push(case(7, Via::Raw, [sub, id], &["no container"]));
        }
        cases.push(case(7, Via::Raw, [OsString::from(sub), not_utf8("id")], &["UTF-8"]));
        cases.push(case(7, Via::Raw, [sub, "a", "b"], &["'b'"]));
    }
    cases.extend([
        case(7, Via::Raw, ["ls", "extra"], &["extra"]),
        case(7, Via::Raw, ["image"], &[]),
        case(7, Via::Raw, ["image", "frobnicate"], &["frobnicate"]),
        case(7, Via::Raw, ["image", "ls", "extra"], &["extra"]),
        case(7, Via::Raw, ["image", "rm"], &["<NAME>"]),
        case(7, Via::Raw, ["image", "import"], &["<NAME>"]),
        case(7, Via::Raw, ["image", "import", &missing], &["<LAYERS>"]),
    ]);
    cases.push(case(7, Via::Raw, ["image", "rm", &missing], &[&missing]));
    let invalid = store::invalid_name_word(ctx);
    for name in ["../x", "", "..", ".", &victim_path, &long] {
        cases.push(case(7, Via::Raw, ["image", "rm", name], &[invalid]));
        // The name is refused before any layer is read.
        cases.push(case(7, Via::Raw, ["image", "import", name, &victim_path], &[invalid]));
    }
    let last_with_names = store::STORE_SINCE - 1;
    for name in &store::names_only_before_references() {
        cases.push(case(7, Via::Raw, ["image", "rm", name], &["image"]).until(last_with_names));
        let import = case(7, Via::Raw, ["image", "import", name, &victim_path], &["image"]);
        cases.push(import.until(last_with_names));
        // Well-formed references from step 10 on: of images nobody has.
        cases.push(case(store::STORE_SINCE, Via::Raw, ["image", "rm", name], &[name]));
    }
    cases.push(case(7, Via::Raw, [OsString::from("image"), "rm".into(), not_utf8("x")], &["UTF-8"]));
    cases.extend([
        case(8, Via::Raw, ["volume"], &[]),
        case(8, Via::Raw, ["volume", "ls", "extra"], &["extra"]),
        case(8, Via::Raw, ["volume", "rm"], &["<NAME>"]),
    ]);
    for name in [&missing, "a/b", &victim_path, "..", ".", "../volumes", "", "x:/y", &long] {
        cases.push(case(8, Via::Raw, ["volume", "rm", name], &["volume"]));
    }
    cases.push(case(8, Via::Raw, [OsString::from("volume"), "rm".into(), not_utf8("x")], &["UTF-8"]));
    let victim_kept = || {
        ensure!(victim.0.join("kept").exists(), "{victim_path} was removed");
        Ok(())
    };
    expect_refused(ctx, &cases, victim_kept)
}

fn bad_images(ctx: &Ctx) -> Result<()> {
    let missing = format!("no-such-{}", std::process::id());
    let long = "x".repeat(5000);
    let names = ["..", ".", "../images", "", &long, "a b", "a\nb", "/etc", "-x"];
    let invalid = store::invalid_name_word(ctx);
    let mut cases: Vec<Case> =
        names.iter().map(|n| case(7, Via::Run, [flag_is("--image", n)], &[invalid])).collect();
    // Well-formed names of images nobody has; from step 10 on they are pulled, which fails
    // at once (every run's registry mirror is a closed port), in an error that names them.
    let [two_parts, image_long] = store::names_only_before_references();
    let last_with_names = store::STORE_SINCE - 1;
    for name in [&missing, &two_parts, &image_long] {
        cases.push(case(7, Via::Run, [flag_is("--image", name)], &["image"]).until(last_with_names));
        cases.push(case(store::STORE_SINCE, Via::Run, [flag_is("--image", name)], &[name]));
    }
    cases.push(case(7, Via::Run, [flag_is("--image", not_utf8("x"))], &["UTF-8"]));
    expect_refused(ctx, &cases, no_leftovers)
}

/// `image import NAME LAYER...` with layers that cannot be imported: each is
/// refused, and no image (nor a half-built one) is left in the store.
fn bad_layers(ctx: &Ctx) -> Result<()> {
    let dir = TempPath::new("bad-layers");
    std::fs::create_dir(&dir.0)?;
    let file = |name: &str, bytes: &[u8]| -> Result<OsString> {
        let path = dir.0.join(name);
        std::fs::write(&path, bytes)?;
        Ok(path.into_os_string())
    };
    let not_a_tar = file("not-a.tar", &b"not a tar archive; ".repeat(64))?;
    // Its error quotes the file's bytes, newlines and all: still one line.
    let not_a_tar_lines = file("not-a-tar-lines.tar", &b"not a tar archive\n".repeat(64))?;
    let fifo = dir.0.join("fifo");
    make_node(&fifo, libc::S_IFIFO | 0o644, 0)?;
    let bad_gzip = file("bad.tar.gz", b"\x1f\x8b\x08\x00garbage, not deflate")?;
    let truncated = file("truncated.tar", &truncated_tar()?)?;
    let with_a_fifo_entry = file("fifo-entry.tar", &tar_with_a_fifo_entry()?)?;
    let looped = dir.0.join("loop");
    std::os::unix::fs::symlink(&looped, &looped)?;
    let dir_with_a_fifo = dir.0.join("dir-with-a-fifo");
    std::fs::create_dir(&dir_with_a_fifo)?;
    make_node(&dir_with_a_fifo.join("fifo"), libc::S_IFIFO | 0o644, 0)?;
    let dir_with_a_device = dir.0.join("dir-with-a-device");
    std::fs::create_dir(&dir_with_a_device)?;
    make_node(&dir_with_a_device.join("null"), libc::S_IFCHR | 0o644, libc::makedev(1, 3))?;
    let layers: Vec<OsString> = vec![
        format!("/no/such/layer-{}.tar", std::process::id()).into(),
        "../no-such-layer.tar".into(),
        not_utf8("/tmp/no-such-layer-"),
        format!("/{}", "a".repeat(300)).into(),
        looped.into_os_string(),
        not_a_tar,
        not_a_tar_lines,
        fifo.into_os_string(),
        "/dev/null".into(),
        bad_gzip,
        truncated,
        with_a_fifo_entry,
        dir_with_a_fifo.into_os_string(),
        dir_with_a_device.into_os_string(),
    ];
    let name = format!("bad-layers-{}", std::process::id());
    let mut cases: Vec<Case> = layers
        .iter()
        .map(|layer| {
            case(7, Via::Raw, [OsStr::new("image"), "import".as_ref(), name.as_ref(), layer], &["layer"])
        })
        .collect();
    // All or nothing: a good first layer must not stay when the second is bad.
    let good = ctx.workshop.rootfs.as_os_str();
    cases.push(case(
        7,
        Via::Raw,
        [OsStr::new("image"), "import".as_ref(), name.as_ref(), good, &layers[0]],
        &["layer"],
    ));
    let before = store::contents(ctx);
    let image_left = || {
        ensure!(!store::has_image(ctx, &name), "a refused import left the image {name}");
        store::expect_nothing_new(ctx, &before, "a refused import")
    };
    expect_refused(ctx, &cases, image_left)
}

/// A tar whose one file stops in the middle of its data.
fn truncated_tar() -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(4096);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "file", &[b'x'; 4096][..])?;
    let mut bytes = builder.into_inner()?;
    bytes.truncate(512 + 1000);
    Ok(bytes)
}

/// A tar with a fifo: a layer carries files, directories and links, nothing else.
fn tar_with_a_fifo_entry() -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Fifo);
    header.set_size(0);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "fifo", &b""[..])?;
    Ok(builder.into_inner()?)
}

/// mknod(2): a fifo or a device node for a layer directory.
fn make_node(path: &Path, mode: libc::mode_t, device: libc::dev_t) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: mknod(2) with a valid C string.
    if unsafe { libc::mknod(c_path.as_ptr(), mode, device) } != 0 {
        bail!("mknod {}: {}", path.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

fn bad_volumes(ctx: &Ctx) -> Result<()> {
    let missing = format!("/no/such-{}:/x", std::process::id());
    let long_target = format!("/tmp:/{}", "a".repeat(300));
    let long_name = format!("{}:/x", "v".repeat(300));
    let long_source = format!("/{}:/x", "a".repeat(5000));
    let specs = [
        "nocolon",
        "/tmp",
        "/tmp:relative",
        "/tmp:../x",
        "/tmp:/a/../b",
        "/tmp:/..",
        "/tmp:/",
        "/tmp://",
        "/tmp:",
        ":/x",
        ":",
        "::",
        ":::",
        "/tmp:/x:ro:extra",
        "/tmp:/x:rw2",
        "/tmp:/x:RO",
        "/tmp:/x:",
        "/etc/passwd:/x",
        &missing,
        "a/b:/x",
        "..:/x",
        "../x:/x",
        ".:/x",
        ".hidden:/x",
        "na me:/x",
        "a\nb:/x",
        &long_name,
        &long_source,
    ];
    let mut cases: Vec<Case> = specs.iter().map(|s| case(8, Via::Run, ["-v", s], &["volume"])).collect();
    cases.push(case(8, Via::Run, [flag_is("--volume", "/tmp:/x:rx")], &["volume"]));
    cases.push(case(8, Via::Run, [OsString::from("-v"), not_utf8("/tmp:/x")], &["UTF-8"]));
    // Refused inside the container, before COMMAND: the message names the target.
    cases.push(case(8, Via::Run, ["-v", &long_target], &["/aaaaaaaa"]));
    cases.push(case(8, Via::Run, ["-v", "/tmp:/proc/x"], &["/proc/x"]));
    cases.push(case(8, Via::Raw, ["run", "-v"], &["volume"]));
    let volume_left = || {
        let left: Vec<OsString> =
            std::fs::read_dir(VOLUMES).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
        let made: Vec<&OsString> = left.iter().filter(|n| n.as_bytes().starts_with(b"vvvv")).collect();
        ensure!(made.is_empty(), "a refused volume was made: {made:?}");
        Ok(())
    };
    expect_refused(ctx, &cases, volume_left)
}

// ---------------------------------------------------------------- fuzzing

/// The default seed; `WORKSHOP_FUZZ_SEED` (decimal or 0x-hex) picks another.
const SEED: u64 = 0x5eed_0125_cafe_f00d;
/// Values per flag: ~300 runs on step 08, with its nine parsed flags.
const VALUES_PER_FLAG: usize = 32;
/// The longest value: one argument may be up to 128 KiB (MAX_ARG_STRLEN).
const MAX_VALUE: usize = 100 * 1024;

/// A flag that the runtime parses, from the step that introduced it, with
/// fragments of valid values so that the fuzzer also lands near them.
struct Fuzzed {
    since: u8,
    flag: &'static str,
    fragments: &'static [&'static str],
}

const FUZZED: [Fuzzed; 12] = [
    Fuzzed { since: 1, flag: "--hostname", fragments: &["box", "my-box", "a", "0", "-", ".", "local"] },
    Fuzzed { since: 4, flag: "--userns-remap", fragments: &["100000", "65536", "0", "1", "4294967295", ":"] },
    Fuzzed { since: 5, flag: "--net", fragments: &["none", "bridge", "host", "no", "ne"] },
    Fuzzed {
        since: 6,
        flag: "--memory",
        fragments: &["64", "6", "1024", "m", "k", "g", "b", "mb", "18446744073709551615"],
    },
    // No tiny CPU shares among the fragments: a valid 0.01 only makes a slow run.
    Fuzzed { since: 6, flag: "--cpus", fragments: &["0.5", "1", "2", "nan", "inf", "e", "1e400", "0."] },
    Fuzzed { since: 6, flag: "--pids-limit", fragments: &["1", "8", "64", "0", "18446744073709551615"] },
    Fuzzed { since: 7, flag: "--name", fragments: &["box", "fuzz", "-", ".", "a1"] },
    // No image names that a host may have: a valid one would run `true` on it.
    Fuzzed { since: 7, flag: "--image", fragments: &["no-such-image", ".", "-", "_", "/"] },
    Fuzzed {
        since: 8,
        flag: "--volume",
        fragments: &["/tmp", "fuzz-vol", "/data", "ro", "rw", "/", ":", ":/x"],
    },
    Fuzzed {
        since: 9,
        flag: "--cap-add",
        fragments: &["CAP_", "NET_", "SYS_", "ADMIN", "RAW", "all", "chown", "_"],
    },
    Fuzzed {
        since: 9,
        flag: "--cap-drop",
        fragments: &["CAP_", "NET_", "KILL", "MKNOD", "ALL", "cap_", "_"],
    },
    Fuzzed {
        since: 9,
        flag: "--security-opt",
        fragments: &["no-new-privileges", "seccomp", "=", ":", "true", "false", "unconfined", "json"],
    },
];

/// xorshift64*: tiny, and the same numbers on every machine for a seed.
struct Rng(u64);

impl Rng {
    /// A generator of its own for each flag, so that a flag's values do not
    /// depend on which other flags the step has.
    fn for_flag(seed: u64, flag: &str) -> Rng {
        let hash =
            flag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        // splitmix64 of the mix, so that no flag starts from the all-zero state.
        let mut z = (seed ^ hash).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in 0..n.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One value from the grammar: a few pieces, each a fragment of a valid value,
/// digits, a sign, dots, an exponent, a unit, a separator, unicode, a long run
/// or raw bytes (newlines included: an error must stay one line). Never NUL: argv cannot carry it.
fn fuzzed_value(rng: &mut Rng, fragments: &[&str]) -> Vec<u8> {
    let mut value = Vec::new();
    for _ in 0..rng.below(6) {
        match rng.below(12) {
            0 | 1 => value.extend(rng.pick(fragments).as_bytes()),
            2 => (0..1 + rng.below(24)).for_each(|_| value.push(b'0' + rng.below(10) as u8)),
            3 => value.push(*rng.pick(b"+-")),
            4 => value.extend(*rng.pick(&[&b"."[..], b"..", b"../", b"/.."])),
            5 => {
                value.push(*rng.pick(b"eE"));
                value.extend(*rng.pick(&[&b""[..], b"-", b"+"]));
                (0..1 + rng.below(4)).for_each(|_| value.push(b'0' + rng.below(10) as u8));
            }
            6 => value.push(*rng.pick(b"bkmgtKMGTqiB")),
            7 => value.push(*rng.pick(b":/,=")),
            8 => {
                let unicode =
                    ["é", "ß", "中", "🦀", "\u{200b}", "\u{202e}", "Ⅷ", "٣", "１", "ｍ", "\u{feff}"];
                value.extend(rng.pick(&unicode).as_bytes());
            }
            9 => {
                // Most long runs are a few KB; one in eight is as long as an argument may be.
                let len = if rng.below(8) == 0 { MAX_VALUE } else { 200 + rng.below(5000) };
                value.extend(std::iter::repeat_n(*rng.pick(b"x9:/-.a"), len));
            }
            10 => (0..1 + rng.below(6)).for_each(|_| value.push(1 + rng.below(255) as u8)),
            _ => value.extend(*rng.pick(&[&b" "[..], b"\t", b"\r", b"'", b"\"", b"\\", b"$", b"*", b"%s"])),
        }
    }
    value.retain(|&b| b != 0); // argv strings end at a NUL
    value.truncate(MAX_VALUE);
    value
}

fn fuzz_seed() -> Result<u64> {
    let Some(text) = std::env::var_os("WORKSHOP_FUZZ_SEED") else { return Ok(SEED) };
    let text = text.to_string_lossy();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.with_context(|| format!("WORKSHOP_FUZZ_SEED={text:?} is not a number"))
}

/// Each parsed flag of the step gets a few dozen grammar-made values. A value
/// is fine if the container ran (exit 0, nothing on stderr) or if it was
/// refused with 125 and one line; a panic (101), an abort (134), a crash (139),
/// a hang or a ragged error fails, with what reproduces it.
fn fuzzed_flags(ctx: &Ctx) -> Result<()> {
    let seed = fuzz_seed()?;
    let reproduce = format!("seed {seed:#x}; WORKSHOP_FUZZ_SEED={seed:#x} reproduces it");
    let volumes_before = entries(VOLUMES);
    let cache_before = entries(USERNS_CACHE);
    let mut failures = Vec::new();
    let mut tried = 0;
    for fuzzed in FUZZED.iter().filter(|f| f.since <= ctx.step.number) {
        let mut rng = Rng::for_flag(seed, fuzzed.flag);
        for n in 0..VALUES_PER_FLAG {
            let value = fuzzed_value(&mut rng, fuzzed.fragments);
            let arg = flag_is(fuzzed.flag, OsString::from_vec(value.clone()));
            // `--net none` keeps it quick, except where --net is what is fuzzed.
            let run = if fuzzed.flag == "--net" { ctx.run() } else { quick_run(ctx) };
            figures::add(FUZZ, 1);
            tried += 1;
            let outcome = run.arg(arg).cmd(["true"]).timeout(FUZZ_TIMEOUT).output();
            if let Some(wrong) = wrong_ending(outcome) {
                let shown = shortened(&value.escape_ascii().to_string(), 300);
                let (flag, bytes, wrong) = (fuzzed.flag, value.len(), shortened(&wrong, 1500));
                failures
                    .push(format!("{flag} value #{n} ({reproduce}), {bytes} bytes: \"{shown}\": {wrong}"));
            }
        }
    }
    // What valid values made on purpose: named volumes, rootfs copies for new mappings.
    for (store, before) in [(VOLUMES, volumes_before), (USERNS_CACHE, cache_before)] {
        for made in entries(store).into_iter().filter(|e| !before.contains(e)) {
            let _ = std::fs::remove_dir_all(Path::new(store).join(made));
        }
    }
    ensure!(
        failures.is_empty(),
        "{} of {tried} fuzzed values neither ran nor were refused in one line:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// What was wrong with a fuzzed run's ending, if anything.
fn wrong_ending(outcome: Result<Outcome>) -> Option<String> {
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(err) => return Some(format!("{err:#}")),
    };
    let lines = outcome.stderr.lines().count();
    let fine = match outcome.status {
        0 => lines == 0,
        125 => lines == 1,
        _ => false,
    };
    let what = match outcome.status {
        101 => " (a Rust panic)",
        134 => " (an abort)",
        139 => " (a segfault)",
        _ => "",
    };
    (!fine).then(|| {
        format!("exit {}{what} with {lines} line(s) on stderr\n{}", outcome.status, outcome.transcript())
    })
}

fn entries(dir: &str) -> Vec<OsString> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name()).collect()
}
