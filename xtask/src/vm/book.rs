//! The book's ```console,cgroup-v2 blocks, run in the VM tier's systemd guest.
//!
//! The host is not a pure cgroup v2 machine, so the book tier skips these blocks
//! there (`book/commands.rs`) and calls `check` instead: it takes the blocks'
//! commands with the same parser, writes them as a script into the systemd guest
//! (`book_script`: bash, the `sudo` function, PATH, LC_ALL=C, the workspace root as
//! the working directory, the hostname workshop-host, a scratch network namespace,
//! a tmpfs store with the example image imported, as in `book/commands.rs`'s
//! sandbox), boots it, and reads each command's output from the console:
//!
//! ```text
//! WORKSHOP-BOOK-BEGIN <n> <exit status> <bytes> <milliseconds>
//! WORKSHOP-BOOK-DATA <n> <base64 of up to 60 bytes>
//! ...
//! WORKSHOP-BOOK-END <n>
//! ```
//!
//! Outputs are compared after the same `normalise` as the host's; with `--bless`
//! (`cargo xtask book --bless`) the markdown gets the guest's real output.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::systemd::{self, Plan};
use crate::book::commands::{self as host, Block, Scene, Verdict};
use crate::{display_path, shell_quote, workspace_root};

const BEGIN: &str = "WORKSHOP-BOOK-BEGIN";
const DATA: &str = "WORKSHOP-BOOK-DATA";
const END: &str = "WORKSHOP-BOOK-END";
/// Bytes of output per console line (80 base64 characters).
const PER_LINE: usize = 60;
/// A command that runs longer is killed and fails (as on the host).
const TIMEOUT_SECONDS: u64 = 60;
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The status the guest reports for a command of a terminal that never got to it.
const NOT_RUN: i32 = -1;

/// What a command did in the guest.
#[derive(Debug, PartialEq)]
pub struct Ran {
    pub status: i32,
    pub output: Vec<u8>,
    pub millis: u64,
}

/// What the guest runs, in order: a command alone (in a fresh bash), or a scene of
/// two terminals (each a bash session; see `book/commands.rs`). Commands are
/// numbered across the whole book, in the order `compare` reads them.
#[derive(Debug, PartialEq)]
pub enum Unit<'a> {
    Alone(usize, &'a str),
    Terminals(Vec<(usize, &'a str)>, Vec<(usize, &'a str)>),
}

/// The units of the files' cgroup-v2 blocks, numbered.
fn units(files: &[File]) -> Result<Vec<Unit<'_>>> {
    let mut units = Vec::new();
    let mut next = 0;
    for file in files {
        let mut starts = Vec::new();
        for block in &file.blocks {
            starts.push(next);
            next += block.commands.len();
        }
        let numbered = |b: usize| -> Vec<(usize, &str)> {
            file.blocks[b]
                .commands
                .iter()
                .enumerate()
                .map(|(i, c)| (starts[b] + i, c.shell.as_str()))
                .collect()
        };
        let scenes = host::scenes(&file.blocks).map_err(|problem| {
            anyhow::anyhow!("{} (cgroup-v2 blocks): {problem}", display_path(&file.path))
        })?;
        for scene in scenes {
            match scene {
                Scene::Alone(b) => {
                    units.extend(numbered(b).into_iter().map(|(i, shell)| Unit::Alone(i, shell)))
                }
                Scene::Terminals(one, two) => units.push(Unit::Terminals(numbered(one), numbered(two))),
            }
        }
    }
    Ok(units)
}

/// A markdown file and its cgroup-v2 blocks.
struct File {
    path: PathBuf,
    text: String,
    blocks: Vec<Block>,
}

fn v2_blocks() -> Result<Vec<File>> {
    let mut files = Vec::new();
    for path in host::markdown_files(&crate::book::book_dir().join("src"))? {
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let blocks: Vec<Block> = host::parse(&text).into_iter().filter(|b| b.cgroup_v2).collect();
        if !blocks.is_empty() {
            files.push(File { path, text, blocks });
        }
    }
    Ok(files)
}

/// The book tier's part (and `cargo xtask book --bless`'s): every cgroup-v2 command,
/// run in the systemd guest, must print what the book shows; `bless` writes what they printed.
pub fn check(bless: bool) -> Result<()> {
    let files = v2_blocks()?;
    let count: usize = files.iter().flat_map(|f| &f.blocks).map(|b| b.commands.len()).sum();
    if count == 0 {
        println!(
            "book: no ```console,cgroup-v2 blocks in the book: nothing to run in the VM's systemd guest"
        );
        return Ok(());
    }
    println!(
        "book: {count} commands in ```console,cgroup-v2 blocks ({} files): they run in the VM tier's \
         systemd guest (pure cgroup v2)",
        files.len()
    );
    let units = units(&files)?;
    // The example image's layers, imported in the guest (as the host's book commands do).
    let probe = crate::artifacts::build_probe()?;
    crate::rootfs::ensure(&crate::rootfs::default_path(), None, &probe)?;
    crate::image::write_layers(&crate::rootfs::default_path())?;
    let steps = crate::artifacts::steps()?;
    let image_steps: Vec<&str> = crate::image::importers(&steps).iter().map(|s| s.name.as_str()).collect();
    let root = workspace_root().to_string_lossy().into_owned();
    let script = book_script(&root, &image_steps, &units);
    let plan = |_: &str| Plan { harness: Vec::new(), demo: false, book: Some(script.clone()) };
    let booted = systemd::boot("console-book.log", None, None, &plan)?;
    println!(
        "book: the systemd guest was prepared in {:.1} s, booted and ran in {:.1} s (console log: {})",
        booted.prepared,
        booted.booted,
        display_path(&booted.log)
    );
    booted.outcome.result().context("the book's cgroup-v2 commands in the systemd guest")?;
    let ran = parse_outputs(&booted.outcome.marked)?;
    compare(&files, &ran, bless)
}

/// Compares (and with `bless`, rewrites) every command's output.
fn compare(files: &[File], ran: &BTreeMap<usize, Ran>, bless: bool) -> Result<()> {
    let (mut index, mut failed, mut blessed) = (0, 0, 0);
    for file in files {
        let mut lines: Vec<String> = file.text.lines().map(str::to_string).collect();
        let mut replacements = Vec::new();
        for block in &file.blocks {
            let mut rendered = Vec::new();
            let mut changed = false;
            for cmd in &block.commands {
                let place = format!("{}:{}", display_path(&file.path), cmd.line + 1);
                let Some(result) = ran.get(&index) else {
                    bail!("the guest printed no output for command {index} ({place}: {})", cmd.shell);
                };
                index += 1;
                let output = String::from_utf8_lossy(&result.output).into_owned();
                let expected = cmd.expected_output(&block.indent);
                let mut problems = Vec::new();
                if result.status == NOT_RUN {
                    problems.push(
                        "not run: its terminal was killed after its time, or terminal 1 printed nothing"
                            .into(),
                    );
                } else if result.millis >= TIMEOUT_SECONDS * 1000 {
                    problems.push(format!("killed after {TIMEOUT_SECONDS}s"));
                } else if let Some(problem) = host::status_problem(Some(result.status)) {
                    problems.push(problem);
                }
                match host::judge(cmd, &block.indent, &output, problems, bless, &mut rendered) {
                    Verdict::Kept => {}
                    Verdict::Blessed => {
                        blessed += 1;
                        changed = true;
                        println!("blessed {place} (in the systemd guest): {}", cmd.shell);
                    }
                    Verdict::Failed(problems) => {
                        failed += 1;
                        let place = format!("{place} (in the systemd guest)");
                        host::report(&place, cmd, &expected, &output, &problems);
                    }
                }
            }
            if changed {
                replacements.push((block.first, block.end, rendered));
            }
        }
        if bless && !replacements.is_empty() {
            // The file as it is now: the host's bless may have rewritten other blocks of it.
            let now = std::fs::read_to_string(&file.path)?;
            if now != file.text {
                bail!(
                    "{} changed while its cgroup-v2 blocks ran in the guest: bless again",
                    file.path.display()
                );
            }
            for (first, end, rendered) in replacements.into_iter().rev() {
                lines.splice(first..end, rendered);
            }
            let mut text = lines.join("\n");
            text.push('\n');
            std::fs::write(&file.path, text).with_context(|| format!("write {}", file.path.display()))?;
        }
    }
    println!("book commands in the systemd guest: {index} run, {failed} failed, {blessed} blessed");
    if failed > 0 {
        bail!("{failed} of the book's {index} cgroup-v2 commands failed in the systemd guest");
    }
    Ok(())
}

/// The guest's script: the sandbox of `book/commands.rs`, then every unit in order,
/// each command's output base64-encoded between marker lines (see the module comment).
/// It runs as `unshare --net --uts --mount --propagation slave bash SCRIPT`.
pub fn book_script(root: &str, image_steps: &[&str], units: &[Unit]) -> String {
    let mut script = format!(
        r#"#!/bin/bash
# The book's ```console,cgroup-v2 blocks (cargo xtask book), in the systemd guest.
cd {root} || exit 1
hostname workshop-host
ip link set lo up
mkdir -p {lib} {records}
mount -t tmpfs -o mode=755 tmpfs {lib}
"#,
        root = shell_quote(root),
        lib = crate::paths::LIB,
        records = crate::paths::RECORDS,
    );
    for step in image_steps {
        script.push_str(&format!(
            "target/debug/{step} image import example /workshop/image/base.tar /workshop/image/app.tar > /dev/null \
             || echo 'WORKSHOP-VM: could not import the example image'\n"
        ));
    }
    let width = PER_LINE / 3 * 4;
    let clean = format!("env -i PATH={PATH} HOME=/root LC_ALL=C");
    script.push_str(&format!(
        r#"# emit INDEX STATUS FILE MILLISECONDS: one command's record on the console.
emit() {{
    [ -f "$3" ] || : > "$3"
    echo "{BEGIN} $1 $2 $(stat -c %s "$3") $4"
    base64 -w {width} "$3" | sed "s/^/{DATA} $1 /"
    echo "{END} $1"
}}
# run INDEX BASE64-COMMAND: a command alone, in a fresh bash.
run() {{
    local out=$(mktemp) cmd=$(printf '%s' "$2" | base64 -d)
    local start=$(date +%s%N)
    timeout -s KILL {TIMEOUT_SECONDS} {clean} \
        bash -c "sudo() {{ env \"\$@\"; }}"$'\n'"$cmd"$'\n' < /dev/null > "$out" 2>&1
    local code=$?
    local end=$(date +%s%N)
    emit "$1" $code "$out" $(( (end - start) / 1000000 ))
    rm -f "$out"
}}
# scene ONE-SESSION ONE-INDICES TWO-SESSION TWO-INDICES: two terminals. Terminal 1
# runs in the background; terminal 2 once terminal 1 has printed a line (or ended).
scene() {{
    local dir=$(mktemp -d) n1=$(wc -w <<< "$2") n2=$(wc -w <<< "$4") i waited=0
    printf '%s' "$1" | base64 -d > "$dir/one.sh"
    printf '%s' "$3" | base64 -d > "$dir/two.sh"
    timeout -s KILL $(( {TIMEOUT_SECONDS} * n1 )) {clean} bash "$dir/one.sh" "$dir" < /dev/null > /dev/null 2>&1 &
    local one=$!
    printed() {{ for i in $2; do [ -f "$dir/$i.out" ] && cat "$dir/$i.out"; done | wc -l; }}
    while [ "$(printed "$@")" -eq 0 ] && kill -0 $one 2> /dev/null && [ $waited -lt $(( {TIMEOUT_SECONDS} * 10 * n1 )) ]; do
        sleep 0.1; waited=$((waited + 1))
    done
    if [ "$(printed "$@")" -gt 0 ] || ! kill -0 $one 2> /dev/null; then
        timeout -s KILL $(( {TIMEOUT_SECONDS} * n2 )) {clean} bash "$dir/two.sh" "$dir" < /dev/null > /dev/null 2>&1
    fi
    wait $one
    for i in $2 $4; do
        emit $i "$(cat "$dir/$i.status" 2> /dev/null || echo {NOT_RUN})" "$dir/$i.out" 0
    done
    rm -rf "$dir"
}}
"#
    ));
    for unit in units {
        match unit {
            Unit::Alone(i, command) => script.push_str(&format!("run {i} {}\n", encode(command.as_bytes()))),
            Unit::Terminals(one, two) => {
                let indices = |cmds: &[(usize, &str)]| {
                    cmds.iter().map(|(i, _)| i.to_string()).collect::<Vec<_>>().join(" ")
                };
                script.push_str(&format!(
                    "scene {} '{}' {} '{}'\n",
                    encode(session_script(one).as_bytes()),
                    indices(one),
                    encode(session_script(two).as_bytes()),
                    indices(two)
                ));
            }
        }
    }
    script
}

/// One terminal's session: its commands one after the other in one bash (variables
/// and `cd` carry over), each one's output and status into files of the scene's
/// directory (`$1`): INDEX.out, INDEX.status.
pub fn session_script(commands: &[(usize, &str)]) -> String {
    let mut script = String::from("__book_dir=$1\nshift\nsudo() { env \"$@\"; }\n");
    for (i, shell) in commands {
        script.push_str(&format!(
            "{{ {shell}\n}} > \"$__book_dir/{i}.out\" 2>&1\necho $? > \"$__book_dir/{i}.status\"\n"
        ));
    }
    script
}

/// The commands' results from the console's marked lines; fails on a garbled record.
pub fn parse_outputs(lines: &[String]) -> Result<BTreeMap<usize, Ran>> {
    let mut done = BTreeMap::new();
    // (index, status, size, millis, data so far)
    let mut open: Option<(usize, i32, usize, u64, Vec<u8>)> = None;
    for line in lines {
        let line = line.trim_end();
        let Some(at) = line.find("WORKSHOP-BOOK-") else { continue };
        let mut words = line[at..].split_whitespace();
        let marker = words.next().unwrap_or_default();
        let number = |w: Option<&str>| -> Result<u64> {
            w.and_then(|w| w.parse().ok()).with_context(|| format!("a garbled line on the console: {line:?}"))
        };
        match marker {
            BEGIN => {
                let index = number(words.next())? as usize;
                let status = number(words.next())? as i32;
                let size = number(words.next())? as usize;
                let millis = number(words.next())?;
                if let Some((other, ..)) = open {
                    bail!("the output of command {other} has no end on the console");
                }
                open = Some((index, status, size, millis, Vec::new()));
            }
            DATA => {
                let index = number(words.next())? as usize;
                let data = words.next().unwrap_or_default();
                match &mut open {
                    Some((current, _, _, _, bytes)) if *current == index => bytes.extend(
                        decode(data).with_context(|| format!("bad base64 on the console: {line:?}"))?,
                    ),
                    _ => bail!("output of command {index} outside its markers: {line:?}"),
                }
            }
            END => {
                let index = number(words.next())? as usize;
                match open.take() {
                    Some((current, status, size, millis, output)) if current == index => {
                        if output.len() != size {
                            bail!(
                                "command {index}'s output arrived with {} of its {size} bytes (a console line lost?)",
                                output.len()
                            );
                        }
                        done.insert(index, Ran { status, output, millis });
                    }
                    _ => bail!("an end marker without its start: {line:?}"),
                }
            }
            _ => {}
        }
    }
    if let Some((index, ..)) = open {
        bail!("the output of command {index} has no end on the console (the guest stopped?)");
    }
    Ok(done)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, on one line.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padded or not.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u32, 0);
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = bits << 6 | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_both_ways() {
        for (plain, coded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")]
        {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded).unwrap(), plain.as_bytes());
        }
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
        assert_eq!(decode("a!b"), None);
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn outputs_between_markers() {
        let console = lines(
            "WORKSHOP-VM: part book\n\
             WORKSHOP-BOOK-BEGIN 0 0 7 12\n\
             WORKSHOP-BOOK-DATA 0 bWF4Cg==\n\
             WORKSHOP-BOOK-DATA 0 MTAK\n\
             WORKSHOP-BOOK-END 0\n\
             WORKSHOP-BOOK-BEGIN 1 1 0 70000\n\
             WORKSHOP-BOOK-END 1\n",
        );
        let ran = parse_outputs(&console).unwrap();
        assert_eq!(ran[&0], Ran { status: 0, output: b"max\n10\n".to_vec(), millis: 12 });
        assert_eq!(ran[&1], Ran { status: 1, output: Vec::new(), millis: 70000 });
    }

    #[test]
    fn garbled_records_are_errors() {
        let short =
            lines("WORKSHOP-BOOK-BEGIN 0 0 9 1\nWORKSHOP-BOOK-DATA 0 bWF4Cg==\nWORKSHOP-BOOK-END 0\n");
        assert!(format!("{:#}", parse_outputs(&short).unwrap_err()).contains("4 of its 9 bytes"));
        let unended = lines("WORKSHOP-BOOK-BEGIN 0 0 4 1\nWORKSHOP-BOOK-DATA 0 bWF4Cg==\n");
        assert!(parse_outputs(&unended).is_err());
        let stray = lines("WORKSHOP-BOOK-DATA 3 bWF4Cg==\n");
        assert!(parse_outputs(&stray).is_err());
        let mixed = lines("WORKSHOP-BOOK-BEGIN 0 0 4 1\nWORKSHOP-BOOK-DATA 1 bWF4Cg==\n");
        assert!(parse_outputs(&mixed).is_err());
    }

    #[test]
    fn the_script_runs_each_command_in_the_sandbox() {
        let units = [Unit::Alone(0, "cat /sys/fs/cgroup/memory.max"), Unit::Alone(1, "echo 'a b'")];
        let script = book_script("/work/main", &["08-volumes"], &units);
        assert!(script.contains("cd /work/main || exit 1\nhostname workshop-host\nip link set lo up\n"));
        assert!(script.contains("target/debug/08-volumes image import example"));
        assert!(script.contains(&format!("run 0 {}\n", encode(b"cat /sys/fs/cgroup/memory.max"))));
        assert!(script.contains(&format!("run 1 {}\n", encode(b"echo 'a b'"))));
        assert!(script.contains(
            "env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C"
        ));
        let out = std::process::Command::new("bash").args(["-n", "-c", &script]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// The script's `run` function, for real on this machine (no sandbox, no import).
    #[test]
    fn the_run_function_round_trips_through_the_markers() {
        let dir = std::env::temp_dir().join(format!("workshop-book-vm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let units = [
            Unit::Alone(0, "printf 'x\\ny\\n'; sudo true"),
            Unit::Alone(1, "exit 3"),
            Unit::Terminals(
                vec![(2, "sleep 0.3; echo ready; sleep 0.5"), (3, "echo $SHELL_VAR; cd /")],
                vec![(4, "SHELL_VAR=kept; echo two"), (5, "echo $SHELL_VAR")],
            ),
        ];
        let script = book_script(&dir.to_string_lossy(), &[], &units);
        let body = script.split_once("emit() {").map(|(_, rest)| format!("emit() {{{rest}")).unwrap();
        let out = std::process::Command::new("bash").args(["-c", &body]).current_dir(&dir).output().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let ran = parse_outputs(&lines(&String::from_utf8_lossy(&out.stdout))).unwrap();
        let console =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(ran.len(), 6, "{console}");
        assert_eq!(ran[&0].output, b"x\ny\n");
        assert_eq!(ran[&0].status, 0);
        assert_eq!(ran[&1].status, 3);
        assert_eq!(ran[&2].output, b"ready\n");
        assert_eq!(ran[&3].output, b"\n");
        assert_eq!(ran[&4].output, b"two\n");
        // Terminal 2 is one session: the variable set by its first command is still set.
        assert_eq!(ran[&5].output, b"kept\n");
        assert!([2, 3, 4, 5].iter().all(|i| ran[i].status == 0));
    }

    #[test]
    fn a_session_keeps_its_shell() {
        let script = session_script(&[(7, "cd /tmp"), (8, "pwd")]);
        assert!(script.starts_with("__book_dir=$1\nshift\nsudo() { env \"$@\"; }\n"));
        assert!(script
            .contains("{ cd /tmp\n} > \"$__book_dir/7.out\" 2>&1\necho $? > \"$__book_dir/7.status\"\n"));
        assert!(script.contains("{ pwd\n} > \"$__book_dir/8.out\""));
    }
}
