//! The book's runnable commands.
//!
//! The convention (the book's setup chapter explains it to readers): in a
//! ```console block, a line starting with `$ ` is a command (a line ending in `\`
//! continues on the next one) and the lines after it, up to the next `$ `, are what
//! it prints, stdout and stderr together. Every such command is run and must print
//! that (after `normalise`) and exit with status 0; a block that shows a failure
//! ends its command with `; echo "exit status: $?"`, as a reader would type it.
//! ```sh blocks are shown, never run (interactive shells, output that depends on
//! the reader's machine). ```console,cgroup-v2 blocks show a pure cgroup v2 host:
//! they follow the same convention but run in the VM tier's guest, not here.
//!
//! Two terminals: a ```console,terminal-1 block followed (as the next console
//! block of the same file) by a ```console,terminal-2 block is one scene, told as
//! a reader with two terminals side by side would live it. Each terminal is one
//! `bash` session (variables and `cd` persist from one of its commands to the
//! next). The runner starts terminal 1's commands in the background and waits
//! until terminal 1 has printed its first line: that line is the ready marker (a
//! container that prints its hostname, which is its id, or a runtime that prints
//! the id). Then it runs terminal 2's commands, and when they are done, waits for
//! terminal 1 to end. Both blocks' outputs are compared and blessed like any
//! other's; each session is killed after `TIMEOUT` per command it holds, and
//! nothing either started may still run at the end. Terminal 2 finds the
//! container as a reader would: `id=$(ls /run/workshop/containers)` (the book
//! runs one container at a time), or from what terminal 1 printed.
//!
//! The commands run as root from the workspace root, each in a fresh `bash`, with
//! `sudo` defined as a function that just runs its arguments (through `env`, so
//! `sudo VAR=value cmd` works too). All of them run inside namespaces that the
//! runner makes for itself (`run_as_root`): a network namespace with only `lo`
//! (chapter 05's bridges and veths never touch the machine's interfaces), a UTS
//! namespace whose hostname is `workshop-host` (so "the host's hostname" reads the
//! same everywhere), and a mount namespace that receives the host's mounts but sends
//! none back, with a fresh tmpfs on /run (IP leases) and on /var/lib/workshop (the
//! images, container layers and volumes of chapters 07 and 08, with the example
//! image of `cargo xtask image` imported first). They all vanish when the runner
//! exits. Only the container records (/run/workshop/containers) are the host's own:
//! cgroups are machine-wide, and a runtime removes the groups whose record it cannot
//! find, so every runtime on the machine must see every record.
//!
//! `cargo xtask book --bless` rewrites the output of every command whose output
//! does not match, with what it really printed; matching blocks stay as they are.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::book_dir;
use crate::paths;
use crate::{
    artifacts, as_root, command_line, display_path, image, is_root, rootfs, target_dir, workspace_root,
};

/// The hostname of "the host" while the book's commands run.
const HOSTNAME: &str = "workshop-host";
/// The runtimes' container records: the host's, shared with the book's commands.
const RECORDS: &str = paths::RECORDS;
/// The runtimes' store of images, container layers and volumes: a tmpfs of our own.
const STORE: &str = paths::LIB;
/// A command that runs longer than this is killed and fails.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The environment of every command (nothing else from ours leaks in).
const ENV: [(&str, &str); 3] = [
    ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ("HOME", "/root"),
    ("LC_ALL", "C"),
];

/// User side: build what the commands use (as the invoking user), then run them as root.
pub fn check(bless: bool) -> Result<()> {
    if target_dir() != workspace_root().join("target") {
        bail!(
            "the book's commands use target/debug and target/rootfs, but CARGO_TARGET_DIR is {}; unset it",
            target_dir().display()
        );
    }
    artifacts::build_steps()?;
    let probe = artifacts::build_probe()?;
    // The default rootfs, whatever WORKSHOP_ROOTFS says: the book's commands use it.
    rootfs::ensure(&rootfs::default_path(), None, &probe)?;
    // The example image's layers (`cargo xtask image`), imported as root below.
    image::write_layers(&rootfs::default_path())?;

    let mut cmd = Command::new(xtask_exe()?);
    cmd.arg("book-commands").current_dir(workspace_root());
    if bless {
        cmd.arg("--bless");
    }
    let mut cmd = as_root(cmd)?;
    let line = command_line(&cmd);
    eprintln!("$ {line}");
    let status = cmd.status().with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        if bless {
            bail!("some commands could not be blessed (see above)");
        }
        bail!(
            "commands in the book do not print what the book shows (see above); \
             if the new output is right, run `cargo xtask book --bless` and commit the markdown"
        );
    }
    Ok(())
}

/// This program, to start again as root. `cargo build --workspace` (above) may have
/// replaced its file: as root, run our own image through /proc/self/exe (which the
/// forked child still shares); through sudo, run the new file at the same path.
fn xtask_exe() -> Result<PathBuf> {
    if is_root() {
        return Ok(PathBuf::from("/proc/self/exe"));
    }
    let exe = std::env::current_exe().context("where is the xtask binary?")?;
    let text = exe.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(path) if !exe.exists() => Ok(PathBuf::from(path)),
        _ => Ok(exe),
    }
}

/// Root side (`cargo xtask book-commands [--bless]`, hidden): run every command.
pub fn run_as_root(bless: bool) -> Result<()> {
    if !is_root() {
        bail!("book-commands runs the book's commands and must run as root");
    }
    sandbox()?;
    import_example_image()?;
    let (mut commands, mut failed, mut blessed) = (0, 0, 0);
    for file in markdown_files(&book_dir().join("src"))? {
        let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        let mut blocks = parse(&text);
        // The host is not a pure cgroup v2 machine: those blocks run in the VM tier.
        blocks.retain(|b| !b.cgroup_v2);
        if blocks.is_empty() {
            continue;
        }
        let scenes = match scenes(&blocks) {
            Ok(scenes) => scenes,
            Err(problem) => {
                failed += 1;
                println!("\nFAILED {}: {problem}", display_path(&file));
                continue;
            }
        };
        // Run first (the two blocks of a scene run together), then compare.
        let mut results: Vec<Vec<Ran>> = blocks.iter().map(|_| Vec::new()).collect();
        for scene in scenes {
            match scene {
                Scene::Alone(b) => {
                    for cmd in &blocks[b].commands {
                        results[b].push(execute(&cmd.shell)?);
                    }
                }
                Scene::Terminals(one, two) => {
                    let (first, second) = two_terminals(&blocks[one], &blocks[two])?;
                    results[one] = first;
                    results[two] = second;
                }
            }
        }
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        // Replace blocks from the last to the first, so earlier line numbers stay valid.
        let mut replacements = Vec::new();
        for (block, results) in blocks.iter().zip(results) {
            let mut rendered = Vec::new();
            let mut changed = false;
            for (cmd, ran) in block.commands.iter().zip(results) {
                commands += 1;
                let place = format!("{}:{}", display_path(&file), cmd.line + 1);
                let mut problems = Vec::new();
                if let Some(why) = &ran.not_run {
                    problems.push(why.clone());
                } else if ran.timed_out {
                    problems.push(format!("killed after {}s", TIMEOUT.as_secs()));
                } else if let Some(problem) = status_problem(ran.status) {
                    problems.push(problem);
                }
                if ran.left_running {
                    problems.push("left processes running (they were killed)".to_string());
                }
                match judge(cmd, &block.indent, &ran.output, problems, bless, &mut rendered) {
                    Verdict::Kept => {}
                    Verdict::Blessed => {
                        blessed += 1;
                        changed = true;
                        println!("blessed {place}: {}", cmd.shell);
                    }
                    Verdict::Failed(problems) => {
                        failed += 1;
                        report(&place, cmd, &cmd.expected_output(&block.indent), &ran.output, &problems);
                    }
                }
            }
            if changed {
                replacements.push((block.first, block.end, rendered));
            }
        }
        if bless && !replacements.is_empty() {
            for (first, end, rendered) in replacements.into_iter().rev() {
                lines.splice(first..end, rendered);
            }
            let mut new_text = lines.join("\n");
            new_text.push('\n');
            std::fs::write(&file, new_text).with_context(|| format!("write {}", file.display()))?;
        }
    }
    println!("book commands: {commands} run, {failed} failed, {blessed} blessed");
    if failed > 0 {
        bail!("{failed} of the book's {commands} commands failed");
    }
    Ok(())
}

/// What became of a command's lines in the markdown.
pub(crate) enum Verdict {
    /// It printed what the book shows.
    Kept,
    /// It printed something else, and `--bless` wrote that in.
    Blessed,
    /// These problems; the book's lines stay.
    Failed(Vec<String>),
}

/// Compares what a command printed with what the book shows, given the problems
/// its run had (not run, killed, a bad status), and appends the lines the block
/// should have now to `rendered`. Only a clean run may be blessed. (The host's
/// commands and the VM's cgroup-v2 ones are judged alike.)
pub(crate) fn judge(
    cmd: &Cmd,
    indent: &str,
    output: &str,
    mut problems: Vec<String>,
    bless: bool,
    rendered: &mut Vec<String>,
) -> Verdict {
    let can_bless = problems.is_empty();
    if normalise(&cmd.expected_output(indent)) != normalise(output) {
        problems.push("prints something else than the book shows".to_string());
    }
    rendered.extend(cmd.shown.iter().cloned());
    if problems.is_empty() {
        rendered.extend(cmd.expected.iter().cloned());
        return Verdict::Kept;
    }
    if bless && can_bless {
        rendered.extend(output_lines(output).map(|l| format!("{indent}{l}")));
        return Verdict::Blessed;
    }
    rendered.extend(cmd.expected.iter().cloned());
    Verdict::Failed(problems)
}

/// The problem with a command's exit status, if it has one (a failure is shown
/// by ending the command with `echo "exit status: $?"`, so it exits 0).
pub(crate) fn status_problem(status: Option<i32>) -> Option<String> {
    let status = match status {
        Some(0) => return None,
        Some(code) => format!("exit status {code}"),
        None => "no exit status (ended by a signal)".to_string(),
    };
    Some(format!("{status}; to show a failure, end the command with `; echo \"exit status: $?\"`"))
}

pub(crate) fn report(place: &str, cmd: &Cmd, expected: &str, output: &str, problems: &[String]) {
    println!("\nFAILED {place}: {}", problems.join("; "));
    println!("  $ {}", cmd.shell);
    let shown = normalise(expected);
    let got = normalise(output);
    println!("  the book shows (normalised):");
    for line in shown.lines() {
        println!("    | {line}");
    }
    println!("  it printed (normalised):");
    for line in got.lines() {
        println!("    | {line}");
    }
}

/// A command's output as lines, without trailing blanks.
pub(crate) fn output_lines(output: &str) -> impl Iterator<Item = &str> {
    let lines: Vec<&str> = output.lines().map(str::trim_end).collect();
    let keep = lines.iter().rposition(|l| !l.is_empty()).map_or(0, |i| i + 1);
    lines.into_iter().take(keep)
}

/// Every markdown file under `dir`, sorted; the generated diffs have no commands.
pub(crate) fn markdown_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "generated") {
                files.extend(markdown_files(&path)?);
            }
        } else if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

// ---------------------------------------------------------------------------
// Parsing the markdown

/// A ```console block: its commands, and the lines it spans (between the fences).
#[derive(Debug, PartialEq)]
pub(crate) struct Block {
    /// Index of the first line after the opening fence.
    pub(crate) first: usize,
    /// Index of the closing fence (or the end of the file).
    pub(crate) end: usize,
    /// The indentation of the fence (blocks inside list items are indented).
    pub(crate) indent: String,
    /// 1 or 2 for a ```console,terminal-N block (see the module comment).
    pub(crate) terminal: Option<u8>,
    /// A ```console,cgroup-v2 block: it shows a pure cgroup v2 host, and runs in
    /// the VM tier's guest, never here.
    pub(crate) cgroup_v2: bool,
    pub(crate) commands: Vec<Cmd>,
}

/// One `$ command` and the output the book shows for it.
#[derive(Debug, PartialEq)]
pub(crate) struct Cmd {
    /// Index of its first line in the file.
    pub(crate) line: usize,
    /// Its lines as written, with the prompt.
    pub(crate) shown: Vec<String>,
    /// What the shell runs: the lines without prompt and indentation.
    pub(crate) shell: String,
    /// The output lines as written (with indentation).
    pub(crate) expected: Vec<String>,
}

impl Cmd {
    /// The output the book shows, without the block's indentation.
    pub(crate) fn expected_output(&self, indent: &str) -> String {
        let lines: Vec<&str> = self.expected.iter().map(|l| l.strip_prefix(indent).unwrap_or(l)).collect();
        lines.join("\n")
    }
}

/// Find the ```console blocks of a markdown text.
pub(crate) fn parse(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((fence, indent, info)) = fence_open(lines[i]) else {
            i += 1;
            continue;
        };
        let first = i + 1;
        let mut end = first;
        while end < lines.len() && !fence_closes(lines[end], &fence) {
            end += 1;
        }
        let tags: Vec<&str> = info.split([',', ' ', '{', '}']).filter(|t| !t.is_empty()).collect();
        if tags.first() == Some(&"console") {
            let terminal = tags.iter().find_map(|t| match *t {
                "terminal-1" => Some(1),
                "terminal-2" => Some(2),
                _ => None,
            });
            blocks.push(Block {
                first,
                end,
                indent: indent.to_string(),
                terminal,
                cgroup_v2: tags.contains(&"cgroup-v2"),
                commands: commands(&lines[first..end], first, indent),
            });
        }
        i = end + 1;
    }
    blocks
}

/// How the blocks of a file run: alone, or a terminal-1 block with the terminal-2
/// block after it. A terminal block without its partner is an error.
#[derive(Debug, PartialEq)]
pub(crate) enum Scene {
    Alone(usize),
    Terminals(usize, usize),
}

pub(crate) fn scenes(blocks: &[Block]) -> std::result::Result<Vec<Scene>, String> {
    let mut scenes = Vec::new();
    let mut i = 0;
    while i < blocks.len() {
        match blocks[i].terminal {
            None => scenes.push(Scene::Alone(i)),
            Some(1) if blocks.get(i + 1).is_some_and(|b| b.terminal == Some(2)) => {
                scenes.push(Scene::Terminals(i, i + 1));
                i += 1;
            }
            Some(n) => {
                let wanted = if n == 1 {
                    "a console,terminal-2 block after it"
                } else {
                    "a console,terminal-1 block before it"
                };
                return Err(format!(
                    "the console,terminal-{n} block at line {} needs {wanted}",
                    blocks[i].first
                ));
            }
        }
        i += 1;
    }
    Ok(scenes)
}

/// An opening fence: (the fence, the indentation, the info string).
fn fence_open(line: &str) -> Option<(String, &str, &str)> {
    let trimmed = line.trim_start();
    let indent = &line[..line.len() - trimmed.len()];
    let c = trimmed.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let fence: String = trimmed.chars().take_while(|x| *x == c).collect();
    if fence.len() < 3 {
        return None;
    }
    Some((fence.clone(), indent, trimmed[fence.len()..].trim()))
}

fn fence_closes(line: &str, fence: &str) -> bool {
    let trimmed = line.trim();
    let c = fence.chars().next().unwrap_or('`');
    trimmed.len() >= fence.len() && trimmed.chars().all(|x| x == c)
}

fn commands(lines: &[&str], offset: usize, indent: &str) -> Vec<Cmd> {
    let mut commands: Vec<Cmd> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let body = line.strip_prefix(indent).unwrap_or(line);
        if let Some(first) = body.strip_prefix("$ ") {
            let mut shown = vec![line.to_string()];
            let mut shell = first.to_string();
            while shell.ends_with('\\') && i + 1 < lines.len() {
                i += 1;
                shown.push(lines[i].to_string());
                shell.push('\n');
                shell.push_str(lines[i].strip_prefix(indent).unwrap_or(lines[i]));
            }
            commands.push(Cmd { line: offset + i + 1 - shown.len(), shown, shell, expected: Vec::new() });
        } else if let Some(cmd) = commands.last_mut() {
            cmd.expected.push(line.to_string());
        }
        // Lines before the first command (there should be none) are left alone.
        i += 1;
    }
    for cmd in &mut commands {
        while cmd.expected.last().is_some_and(|l| l.trim().is_empty()) {
            cmd.expected.pop();
        }
    }
    commands
}

// ---------------------------------------------------------------------------
// Running

struct Ran {
    output: String,
    status: Option<i32>,
    timed_out: bool,
    left_running: bool,
    /// Why a terminal's command never ran or never finished (its session ended first).
    not_run: Option<String>,
}

/// Make this process's own namespaces for the commands (see the module comment).
fn sandbox() -> Result<()> {
    let c = |s: &str| CString::new(s).expect("no NUL");
    std::fs::create_dir_all(RECORDS).with_context(|| format!("mkdir {RECORDS}"))?;
    std::fs::create_dir_all(STORE).with_context(|| format!("mkdir {STORE}"))?;
    // SAFETY: plain system calls with valid C strings; we are single-threaded here,
    // as unshare(CLONE_NEWNS) requires.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error())
                .context("unshare the network, UTS and mount namespaces");
        }
        // Mounts made by the commands stay here: the host's tree does not receive them.
        let flags = libc::MS_REC | libc::MS_SLAVE;
        if libc::mount(std::ptr::null(), c("/").as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("make / a slave mount");
        }
        // The host's container records, kept open (in our copy of its mounts) to be
        // bound into our own /run below.
        let records = std::fs::File::open(RECORDS).with_context(|| format!("open {RECORDS}"))?;
        let records_fd = c(&format!("/proc/self/fd/{}", records.as_raw_fd()));
        // IP leases, `ip netns` files and the like land in this /run, not the host's.
        let (tmpfs, run, mode) = (c("tmpfs"), c("/run"), c("mode=755"));
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        if libc::mount(tmpfs.as_ptr(), run.as_ptr(), tmpfs.as_ptr(), flags, mode.as_ptr().cast()) != 0 {
            return Err(std::io::Error::last_os_error()).context("mount a tmpfs on /run");
        }
        std::fs::create_dir_all(RECORDS).with_context(|| format!("mkdir {RECORDS} in our /run"))?;
        let (none, target) = (std::ptr::null(), c(RECORDS));
        if libc::mount(records_fd.as_ptr(), target.as_ptr(), none, libc::MS_BIND, std::ptr::null()) != 0 {
            return Err(std::io::Error::last_os_error()).context("bind the host's container records");
        }
        // Images, container layers and volumes land here, not in the host's store.
        let store = c(STORE);
        if libc::mount(tmpfs.as_ptr(), store.as_ptr(), tmpfs.as_ptr(), 0, mode.as_ptr().cast()) != 0 {
            return Err(std::io::Error::last_os_error()).context("mount a tmpfs on /var/lib/workshop");
        }
        if libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()) != 0 {
            return Err(std::io::Error::last_os_error()).context("sethostname");
        }
        // Orphans (a container whose runtime died) are re-parented to us: we reap them.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let lo = Command::new("ip").args(["link", "set", "lo", "up"]).status();
    if !lo.is_ok_and(|s| s.success()) {
        bail!("`ip link set lo up` failed in the book's network namespace (is iproute2 installed?)");
    }
    Ok(())
}

/// Imports the example image of `cargo xtask image` into our stores (the one of
/// steps 07-09 and step 10's, see `image::importers`), from the layers that `check` wrote.
fn import_example_image() -> Result<()> {
    let steps = artifacts::steps()?;
    let layers = ["base.tar", "app.tar"].map(|name| target_dir().join("image").join(name));
    for step in image::importers(&steps) {
        let mut import = Command::new(&step.bin);
        import.args(["image", "import", image::NAME]).args(&layers);
        let out = import.output().with_context(|| format!("could not start {}", step.bin.display()))?;
        if !out.status.success() {
            bail!("`{}` failed: {}", command_line(&import), String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    Ok(())
}

/// `bash -c SCRIPT` as the book's commands run: from the workspace root, with
/// only `ENV`, no input, stdout and stderr into one pipe, in a process group of
/// its own (a timeout kills the whole group). Returns the child and the pipe's
/// reading end, which sees the end once bash and everything it started are gone.
fn bash(script: String) -> Result<(std::process::Child, std::io::PipeReader)> {
    let (reader, writer) = std::io::pipe().context("create a pipe")?;
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .current_dir(workspace_root())
        .env_clear()
        .envs(ENV)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    let child = cmd.spawn().context("start bash")?;
    // `cmd`, and with it our copies of the pipe's write end, is dropped here.
    Ok((child, reader))
}

fn execute(shell: &str) -> Result<Ran> {
    let script = format!("sudo() {{ env \"$@\"; }}\n{shell}\n");
    let (mut child, mut reader) = bash(script)?;
    let group = child.id() as i32;
    let collector = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        bytes
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !timed_out && start.elapsed() > TIMEOUT {
            timed_out = true;
            // SAFETY: kill(2) on the process group we created.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    reap_orphans();
    // Anything still in the command's process group was left behind.
    // SAFETY: kill(2) with signal 0 only checks; SIGKILL ends what was left.
    let left_running = unsafe { libc::kill(-group, 0) } == 0;
    if left_running {
        unsafe { libc::kill(-group, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(100));
        reap_orphans();
    }
    let bytes = collector.join().unwrap_or_default();
    Ok(Ran {
        output: String::from_utf8_lossy(&bytes).into_owned(),
        status: status.code(),
        timed_out,
        left_running,
        not_run: None,
    })
}

// ---------------------------------------------------------------------------
// Two terminals (see the module comment)

/// One terminal: a `bash` running a block's commands one after the other, in the
/// background, printing a marker line with its status after each.
struct Session {
    child: std::process::Child,
    group: i32,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    collector: std::thread::JoinHandle<()>,
    start: Instant,
    limit: Duration,
    mark: String,
    commands: usize,
}

impl Session {
    fn start(commands: &[Cmd], terminal: u8) -> Result<Session> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let mark = format!("@@book-terminal-{terminal}-{}-{nanos}@@", std::process::id());
        let mut script = String::from("sudo() { env \"$@\"; }\n");
        for (n, cmd) in commands.iter().enumerate() {
            // The newline first: the marker is on a line of its own even after an
            // output without one (the blank line it may add does not count).
            script.push_str(&format!("{}\nprintf '\\n%s %d %d\\n' '{mark}' {n} $?\n", cmd.shell));
        }
        let (child, mut reader) = bash(script)?;
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = output.clone();
        let collector = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("not poisoned").extend_from_slice(&chunk[..n]);
            }
        });
        Ok(Session {
            group: child.id() as i32,
            child,
            output,
            collector,
            start: Instant::now(),
            limit: TIMEOUT * commands.len().max(1) as u32,
            mark,
            commands: commands.len(),
        })
    }

    /// Wait until the terminal has printed a line (or has ended); false if it did
    /// neither in time (it is killed then).
    fn ready(&mut self) -> Result<bool> {
        loop {
            if self.output.lock().expect("not poisoned").contains(&b'\n') {
                return Ok(true);
            }
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            if self.start.elapsed() > self.limit {
                // SAFETY: kill(2) on the process group we created.
                unsafe { libc::kill(-self.group, libc::SIGKILL) };
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the end of the session's bash (killing it after its time); true if
    /// it had to be killed.
    fn wait(&mut self) -> Result<bool> {
        let mut timed_out = false;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(timed_out);
            }
            if !timed_out && self.start.elapsed() > self.limit {
                timed_out = true;
                // SAFETY: kill(2) on the process group we created.
                unsafe { libc::kill(-self.group, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// After `wait` and `reap_orphans`: each command's output and status.
    fn results(self, timed_out: bool) -> Vec<Ran> {
        // SAFETY: kill(2) with signal 0 only checks; SIGKILL ends what was left.
        let left_running = unsafe { libc::kill(-self.group, 0) } == 0;
        if left_running {
            unsafe { libc::kill(-self.group, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(100));
            reap_orphans();
        }
        let _ = self.collector.join();
        let bytes = std::mem::take(&mut *self.output.lock().expect("not poisoned"));
        let mut results = split_session(&String::from_utf8_lossy(&bytes), &self.mark, self.commands);
        for ran in &mut results {
            if ran.not_run.is_some() && timed_out {
                ran.timed_out = true;
                ran.not_run = Some(format!("its terminal was killed after {}s", self.limit.as_secs()));
            }
        }
        if let Some(last) = results.last_mut() {
            last.left_running = left_running;
        }
        results
    }
}

/// A session's output cut at its marker lines (`MARK N STATUS`): one result per
/// command; commands without a marker never finished.
fn split_session(output: &str, mark: &str, commands: usize) -> Vec<Ran> {
    let mut results = Vec::new();
    let mut current = String::new();
    for line in output.lines() {
        let status = line
            .strip_prefix(mark)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|rest| rest.split_once(' '))
            .filter(|(n, _)| n.parse::<usize>().is_ok())
            .and_then(|(_, status)| status.parse::<i32>().ok());
        match status {
            Some(status) if results.len() < commands => {
                let output = std::mem::take(&mut current);
                results.push(Ran {
                    output,
                    status: Some(status),
                    timed_out: false,
                    left_running: false,
                    not_run: None,
                });
            }
            _ => {
                current.push_str(line);
                current.push('\n');
            }
        }
    }
    while results.len() < commands {
        let output = std::mem::take(&mut current);
        let not_run = Some("its terminal ended before this command finished".to_string());
        results.push(Ran { output, status: None, timed_out: false, left_running: false, not_run });
    }
    results
}

/// Terminal 1 in the background until it prints its first line, terminal 2 to its
/// end, then the end of terminal 1.
fn two_terminals(one: &Block, two: &Block) -> Result<(Vec<Ran>, Vec<Ran>)> {
    let mut first = Session::start(&one.commands, 1)?;
    let second = if first.ready()? {
        let mut second = Session::start(&two.commands, 2)?;
        let timed_out = second.wait()?;
        Some((second, timed_out))
    } else {
        None
    };
    let first_timed_out = first.wait()?;
    // Only now: reaping orphans earlier could reap terminal 1's own bash.
    reap_orphans();
    let first = first.results(first_timed_out);
    let second = match second {
        Some((second, timed_out)) => second.results(timed_out),
        None => two
            .commands
            .iter()
            .map(|_| Ran {
                output: String::new(),
                status: None,
                timed_out: false,
                left_running: false,
                not_run: Some("not run: terminal 1 printed nothing in time".to_string()),
            })
            .collect(),
    };
    Ok((first, second))
}

fn reap_orphans() {
    // SAFETY: waitpid(2) with WNOHANG on our (adopted) children.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

// ---------------------------------------------------------------------------
// Normalising: what may differ from run to run

/// Replace what differs between runs with placeholders, the same value with the same
/// placeholder within one command's output (so "these two are equal" still counts):
/// 12-hex-digit container ids (<ID1>), namespace inode numbers in `[...]` (<NS1>),
/// process ids other than 1 after "pid"/"PID"/"/proc/" and in the PID columns of a
/// `ps` table (<PID1>), MAC addresses (<MAC1>), the host ends of veth pairs, named
/// from the container id (veth3f2a9c1b: <VETH1>), and times of day or durations like
/// 0:00 and 12:34:56 (<TIME>), and SHA-256 digests of files that hold times (<SHA1>).
/// Trailing spaces and blank lines do not count.
pub fn normalise(text: &str) -> String {
    let mut names = Names::default();
    let mut pid_columns: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.contains(&"PID") && words.iter().all(|w| w.chars().all(|c| !c.is_ascii_digit())) {
            // A `ps` header: remember which columns hold process ids.
            pid_columns =
                words.iter().enumerate().filter(|(_, w)| w.ends_with("PID")).map(|(i, _)| i).collect();
        } else if !words.first().is_some_and(|w| w.chars().all(|c| c.is_ascii_digit())) {
            pid_columns.clear();
        }
        out.push(normalise_line(line, &pid_columns, &mut names).trim_end().to_string());
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out.join("\n")
}

#[derive(Default)]
struct Names {
    seen: HashMap<(&'static str, String), usize>,
    count: HashMap<&'static str, usize>,
}

impl Names {
    fn name(&mut self, kind: &'static str, value: &str) -> String {
        let count = self.count.entry(kind).or_insert(0);
        let n = *self.seen.entry((kind, value.to_string())).or_insert_with(|| {
            *count += 1;
            *count
        });
        format!("<{kind}{n}>")
    }
}

/// A line as tokens: words of [A-Za-z0-9_] and single other characters.
fn tokens(line: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if word(c) {
            while chars.peek().is_some_and(|(_, c)| word(*c)) {
                chars.next();
            }
            let end = chars.peek().map_or(line.len(), |(j, _)| *j);
            tokens.push(&line[i..end]);
        } else {
            tokens.push(&line[i..i + c.len_utf8()]);
        }
    }
    tokens
}

fn normalise_line(line: &str, pid_columns: &[usize], names: &mut Names) -> String {
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    let hex = |t: &str, len: usize| {
        t.len() == len && t.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    let t = tokens(line);
    let mut out = String::new();
    let mut column = 0; // index of the whitespace-separated field we are in
    let mut in_space = true;
    let mut i = 0;
    while i < t.len() {
        let tok = t[i];
        let at = |k: usize| t.get(k).copied().unwrap_or("");
        if tok.chars().all(char::is_whitespace) {
            if !in_space {
                column += 1;
            }
            in_space = true;
            out.push_str(tok);
            i += 1;
            continue;
        }
        in_space = false;
        // MAC address: 6 pairs of hex digits joined by ':'.
        if (0..6).all(|k| hex(at(i + 2 * k), 2)) && (0..5).all(|k| at(i + 2 * k + 1) == ":") {
            out.push_str(&names.name("MAC", &t[i..i + 11].concat()));
            i += 11;
            continue;
        }
        // Time of day or duration: H:MM or HH:MM:SS.
        if digits(tok)
            && tok.len() <= 2
            && at(i + 1) == ":"
            && digits(at(i + 2))
            && at(i + 2).len() == 2
            && at(i.wrapping_sub(1)) != ":"
        {
            let mut end = i + 3;
            if at(end) == ":" && digits(at(end + 1)) && at(end + 1).len() == 2 {
                end += 2;
            }
            out.push_str("<TIME>");
            i = end;
            continue;
        }
        if hex(tok, 12) {
            out.push_str(&names.name("ID", tok));
        } else if hex(tok, 64) {
            out.push_str(&names.name("SHA", tok));
        } else if tok.strip_prefix("veth").is_some_and(|rest| hex(rest, 8)) {
            out.push_str(&names.name("VETH", tok));
        } else if digits(tok) && i > 0 && at(i - 1) == "[" && at(i + 1) == "]" && tok.len() >= 6 {
            out.push_str(&names.name("NS", tok));
        } else if digits(tok) && tok != "1" && (after_pid_word(&t, i) || pid_columns.contains(&column)) {
            out.push_str(&names.name("PID", tok));
        } else {
            out.push_str(tok);
        }
        i += 1;
    }
    out
}

/// Does the number at `t[i]` follow "pid", "PID:", "pid=", "PPID " or "/proc/"?
fn after_pid_word(t: &[&str], i: usize) -> bool {
    let mut k = i;
    while k > 0 && [" ", ":", "=", "/"].contains(&t[k - 1]) {
        k -= 1;
    }
    if k == i || k == 0 {
        return false;
    }
    let word = t[k - 1].to_ascii_lowercase();
    word == "pid" || word == "ppid" || (word == "proc" && t[i - 1] == "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_console_blocks_and_their_commands() {
        let text = "intro\n\n```console\n$ echo a\na\n$ printf 'x\\n' \\\n  'y'\nx\n\n```\n\n```sh\n$ not run\n```\n  ~~~console\n  $ true\n  ~~~\n";
        let blocks = parse(text);
        assert_eq!(blocks.len(), 2);
        let first = &blocks[0];
        assert_eq!((first.first, first.end), (3, 9));
        assert_eq!(first.commands.len(), 2);
        assert_eq!(first.commands[0].shell, "echo a");
        assert_eq!(first.commands[0].expected, vec!["a"]);
        assert_eq!(first.commands[1].line, 5);
        assert_eq!(first.commands[1].shell, "printf 'x\\n' \\\n  'y'");
        assert_eq!(first.commands[1].expected, vec!["x"]);
        assert_eq!(blocks[1].indent, "  ");
        assert_eq!(blocks[1].commands[0].shell, "true");
        let indented = parse("  ```console\n  $ echo a\n  a\n   b\n  ```\n");
        assert_eq!(indented[0].commands[0].expected_output("  "), "a\n b");
    }

    #[test]
    fn terminal_blocks_pair_up() {
        let text = "```console,terminal-1\n$ a\n1\n```\ntext\n```console,terminal-2\n$ b\n$ c\n```\n```console\n$ d\n```\n";
        let blocks = parse(text);
        let terminals: Vec<Option<u8>> = blocks.iter().map(|b| b.terminal).collect();
        assert_eq!(terminals, vec![Some(1), Some(2), None]);
        assert_eq!(blocks[1].commands.len(), 2);
        assert_eq!(scenes(&blocks), Ok(vec![Scene::Terminals(0, 1), Scene::Alone(2)]));
        // Other tags (cgroup-v2, say) do not get in the way.
        let v2 = parse("```console,cgroup-v2,terminal-2\n$ x\n```\n```console\n$ y\n```\n");
        assert_eq!((v2[0].terminal, v2[0].cgroup_v2, v2[1].cgroup_v2), (Some(2), true, false));
        // A terminal block alone, or the two in the wrong order, is an error.
        for text in [
            "```console,terminal-1\n$ a\n```\n```console\n$ b\n```\n",
            "```console,terminal-2\n$ a\n```\n",
            "```console,terminal-2\n$ a\n```\n```console,terminal-1\n$ b\n```\n",
            "```console,terminal-1\n$ a\n```\n",
        ] {
            assert!(scenes(&parse(text)).is_err(), "{text}");
        }
    }

    #[test]
    fn a_session_is_cut_at_its_markers() {
        let out = "one\n\nMARK 0 0\nno newline\nMARK 1 3\n\nMARK 2 0\nhalf";
        let ran = split_session(out, "MARK", 4);
        let got: Vec<(&str, Option<i32>, bool)> =
            ran.iter().map(|r| (r.output.as_str(), r.status, r.not_run.is_some())).collect();
        assert_eq!(
            got,
            vec![
                ("one\n\n", Some(0), false),
                ("no newline\n", Some(3), false),
                ("\n", Some(0), false),
                ("half\n", None, true)
            ]
        );
        // A line that only starts like a marker is output.
        let ran = split_session("MARKER 0 0\nMARK 0 0\n", "MARK", 1);
        assert_eq!((ran[0].output.as_str(), ran[0].status), ("MARKER 0 0\n", Some(0)));
    }

    #[test]
    fn digests_are_renamed_consistently() {
        let (a, b) = ("ab".repeat(32), "0c".repeat(32));
        let text = format!("blobs/sha256/{a}\n\"digest\": \"sha256:{b}\", again sha256:{a}");
        assert_eq!(
            normalise(&text),
            "blobs/sha256/<SHA1>\n\"digest\": \"sha256:<SHA2>\", again sha256:<SHA1>"
        );
    }

    #[test]
    fn ids_are_renamed_consistently() {
        let a = normalise("host 3f2a9c1b7d4e\nagain 3f2a9c1b7d4e\nother 0123456789ab");
        assert_eq!(a, "host <ID1>\nagain <ID1>\nother <ID2>");
        let b = normalise("host 9999aaaabbbb\nagain 9999aaaabbbb\nother 00000000cafe");
        assert_eq!(a, b);
        // Different structure (the two ids equal) does not match.
        assert_ne!(a, normalise("host 3f2a9c1b7d4e\nagain 0123456789ab\nother 0123456789ab"));
    }

    #[test]
    fn pids_other_than_1() {
        assert_eq!(normalise("my PID: 1"), "my PID: 1");
        assert_eq!(
            normalise("my PID: 4242 and pid=77, /proc/4242/ns"),
            "my PID: <PID1> and pid=<PID2>, /proc/<PID1>/ns"
        );
        assert_eq!(normalise("uid 100000 count 65536"), "uid 100000 count 65536");
        let ps =
            "PID   USER     TIME  COMMAND\n    1 root      0:00 sh -c ps\n   7 root      0:00 ps\ndone 8";
        assert_eq!(normalise(ps), "PID   USER     TIME  COMMAND\n    1 root      <TIME> sh -c ps\n   <PID1> root      <TIME> ps\ndone 8");
    }

    #[test]
    fn namespaces_macs_and_times() {
        assert_eq!(normalise("uts:[4026532247] uts:[4026531838]"), "uts:[<NS1>] uts:[<NS2>]");
        assert_eq!(
            normalise("link/ether 02:42:ac:11:00:02 brd ff:ff:ff:ff:ff:ff"),
            "link/ether <MAC1> brd <MAC2>"
        );
        assert_eq!(normalise("up 12:34:56, 0:01"), "up <TIME>, <TIME>");
        assert_eq!(normalise("veth3f2a9c1b@if2 veth3f2a9c1b vethx"), "<VETH1>@if2 <VETH1> vethx");
        // Not times: a uid range, a port.
        assert_eq!(
            normalise("--userns-remap 100000:65536 10.0.0.1:8080"),
            "--userns-remap 100000:65536 10.0.0.1:8080"
        );
    }

    #[test]
    fn trailing_space_and_blank_lines_do_not_count() {
        assert_eq!(normalise("a  \nb\n\n"), normalise("a\nb"));
    }
}
