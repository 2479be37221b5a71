//! The book (`book/`): the `book` task and the book tier of `cargo xtask test`.
//!
//! `cargo xtask book [--bless] [--open]`
//!   1. regenerates the "what changed since the previous step" diffs
//!      (`book/src/generated/NN-name.md`) from `steps/`;
//!   2. with `--bless`, runs every command of the book's ```console blocks as root
//!      and writes their real output into the markdown (see `book/commands.rs`);
//!   3. checks the chapters' quizzes against the console output (`book/quiz.rs`);
//!   4. installs the pinned mdbook, mdbook-mermaid and mdbook-quiz if they are
//!      missing, builds the book (no warnings allowed) and checks its internal links;
//!   5. with `--browser`, runs the headless-browser test on the built pages, as the
//!      book tier does (it runs no console command, so it is safe anywhere);
//!   6. with `--open`, opens it in a browser.
//!
//! The book tier checks the same things without writing anything: the generated
//! files and mermaid's JavaScript are up to date, every `{{#include}}` finds its
//! anchor, no quiz answer contradicts the output it quotes, the build is clean,
//! every console command prints what the book shows, and the rendered pages work
//! in a real headless Chromium (`book/tests/`), each chapter's quiz included.

pub(crate) mod commands;
mod diffs;
pub mod figures;
mod links;
pub(crate) mod quiz;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, output, run as run_cmd, target_dir, which, workspace_root};

pub use commands::run_as_root as commands_task;

/// A tool installed with `cargo install --locked --version VERSION CRATE`.
struct Tool {
    krate: &'static str,
    version: &'static str,
}

/// mdbook-mermaid 0.17.1 is built (with its lock file) against mdbook's preprocessor
/// API 0.5.0 and prints a warning when a different mdbook calls it: keep them in step.
const MDBOOK: Tool = Tool { krate: "mdbook", version: "0.5.0" };
const MDBOOK_MERMAID: Tool = Tool { krate: "mdbook-mermaid", version: "0.17.1" };
/// mdbook-quiz 0.5.0 is the first release for mdBook 0.5. Its JavaScript is in the
/// crate, built: it installs offline like the others. At every build it writes
/// that JavaScript and CSS into book/src/quiz/ (ignored by git; see QUIZ_ASSETS).
const MDBOOK_QUIZ: Tool = Tool { krate: "mdbook-quiz", version: "0.5.0" };

/// mdbook-quiz 0.5.0's lock file has mdbook-preprocessor 0.5.2, and it warns when an
/// older mdbook calls it ("built against version 0.5.2 of mdbook, but we're being
/// called from version 0.5.0"), though mdBook 0.5's preprocessor protocol is the same
/// (the browser test takes every quiz). That one line is not counted as a warning.
/// mdbook 0.5.2 would silence it (mdbook-mermaid accepts any 0.5.x), but changes the
/// pinned mdbook that every checkout on a machine shares in ~/.cargo/bin.
const MDBOOK_QUIZ_BUILT_AGAINST: &str = "0.5.2";

/// What mdbook-quiz writes into book/src/ at every build, and mdbook then copies
/// into the HTML: unlike mermaid's files, nothing to commit or compare, since the
/// pinned preprocessor itself writes them each time. The build must leave them there.
const QUIZ_ASSETS: [&str; 2] = ["quiz/quiz-embed.iife.js", "quiz/style.css"];

/// The JavaScript that draws the diagrams, copied into book/ by `mdbook-mermaid install`.
const MERMAID_ASSETS: [&str; 2] = ["mermaid.min.js", "mermaid-init.js"];

/// The search term the browser test types, and the page it must find.
const SEARCH: (&str, &str) = ("pivot_root", "03-mnt.html");

pub fn book_dir() -> PathBuf {
    workspace_root().join("book")
}

fn html_dir() -> PathBuf {
    book_dir().join("book")
}

/// The `book` task.
pub fn run(bless: bool, open: bool, browser_test: bool) -> Result<()> {
    let written = diffs::write()?;
    println!("book: step diffs up to date in book/src/generated ({written} files)");
    figures::write()?;
    links::check_sources()?;
    if bless {
        commands::check(true)?;
        crate::vm::book::check(true)?;
    }
    quiz::check()?;
    let tools = install_tools()?;
    mermaid_assets(&tools, true)?;
    build(&tools)?;
    links::check_html(&html_dir())?;
    let index = html_dir().join("index.html");
    println!("book: built {}", index.display());
    if browser_test {
        browser()?;
    }
    if open {
        match which("xdg-open") {
            Some(opener) => run_cmd(Command::new(opener).arg(&index))?,
            None => println!("book: no xdg-open here; open file://{} in a browser", index.display()),
        }
    }
    Ok(())
}

/// The book tier: check everything, write nothing (except the HTML, the screenshots under
/// target/ and mdbook-quiz's git-ignored book/src/quiz/, see QUIZ_ASSETS).
pub fn tier() -> Result<()> {
    let mut problems = Vec::new();
    let mut step = |what: &str, result: Result<()>| {
        if let Err(err) = result {
            println!("book: {what}: FAILED: {err:#}");
            problems.push(format!("{what}: {err:#}"));
        }
    };
    step("step diffs", diffs::check());
    step("reliability figures", figures::check());
    step("includes and anchors", links::check_sources());
    step("quizzes and the output they quote", quiz::check());
    let built = install_tools().and_then(|tools| {
        mermaid_assets(&tools, false)?;
        build(&tools)?;
        links::check_html(&html_dir())
    });
    let built_ok = built.is_ok();
    step("mdbook build and links", built);
    step("console commands", commands::check(false));
    step("console commands, cgroup v2 (VM)", crate::vm::book::check(false));
    if built_ok {
        step("headless browser", browser());
    }
    if !problems.is_empty() {
        bail!("{} book checks failed:\n  {}", problems.len(), problems.join("\n  "));
    }
    Ok(())
}

/// Where `cargo install` puts binaries: $CARGO_INSTALL_ROOT/bin, else $CARGO_HOME/bin, else ~/.cargo/bin.
fn cargo_bin_dir() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(root) = var("CARGO_INSTALL_ROOT") {
        return root.join("bin");
    }
    let home = var("CARGO_HOME").unwrap_or_else(|| var("HOME").unwrap_or_default().join(".cargo"));
    home.join("bin")
}

/// The installed version of a tool ("mdbook v0.5.0" -> "0.5.0"), if any.
fn installed_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.split_whitespace().last()?.trim_start_matches('v').to_string())
}

/// Install mdbook, mdbook-mermaid and mdbook-quiz at the pinned versions unless they are there
/// already; returns the directory they are in.
fn install_tools() -> Result<PathBuf> {
    let bin_dir = cargo_bin_dir();
    for tool in [&MDBOOK, &MDBOOK_MERMAID, &MDBOOK_QUIZ] {
        let bin = bin_dir.join(tool.krate);
        if installed_version(&bin).as_deref() == Some(tool.version) {
            continue;
        }
        println!("book: installing {} {} (compiles once, a few minutes)", tool.krate, tool.version);
        run_cmd(cargo().args(["install", "--locked", "--version", tool.version, tool.krate]))?;
        let found = installed_version(&bin);
        if found.as_deref() != Some(tool.version) {
            bail!(
                "installed {} {} but {} reports {:?} (is CARGO_INSTALL_ROOT or CARGO_HOME set differently for cargo?)",
                tool.krate,
                tool.version,
                bin.display(),
                found
            );
        }
    }
    Ok(bin_dir)
}

/// mermaid.min.js and mermaid-init.js in book/ must be the ones the pinned
/// mdbook-mermaid installs: compare (tier) or copy them (task).
fn mermaid_assets(tools: &Path, write: bool) -> Result<()> {
    let scratch = target_dir().join("book-mermaid-assets");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("mkdir {}", scratch.display()))?;
    std::fs::write(scratch.join("book.toml"), "[book]\n")?;
    let mut install = Command::new(tools.join(MDBOOK_MERMAID.krate));
    install.arg("install").arg(&scratch);
    output(&mut install)?;
    let mut stale = Vec::new();
    for name in MERMAID_ASSETS {
        let wanted =
            std::fs::read(scratch.join(name)).with_context(|| format!("mdbook-mermaid wrote no {name}"))?;
        let path = book_dir().join(name);
        if std::fs::read(&path).ok().as_deref() != Some(wanted.as_slice()) {
            if write {
                std::fs::write(&path, &wanted).with_context(|| format!("write {}", path.display()))?;
            } else {
                stale.push(format!("book/{name}"));
            }
        }
    }
    std::fs::remove_dir_all(&scratch)?;
    if !stale.is_empty() {
        bail!(
            "{} differ from what mdbook-mermaid {} installs: run `cargo xtask book` and commit them",
            stale.join(", "),
            MDBOOK_MERMAID.version
        );
    }
    Ok(())
}

/// `mdbook build book`; any output line that is not INFO counts as a warning.
fn build(tools: &Path) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path =
        std::env::join_paths(std::iter::once(tools.to_path_buf()).chain(std::env::split_paths(&path)))?;
    let mut cmd = Command::new(tools.join(MDBOOK.krate));
    cmd.arg("build").arg(book_dir()).env("PATH", path).env_remove("RUST_LOG");
    // The line without the long PATH, which only adds `tools` in front.
    let line = format!("{} build {}", tools.join(MDBOOK.krate).display(), book_dir().display());
    eprintln!("$ {line}");
    let out = cmd.output().with_context(|| format!("could not start `{line}`"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    print!("{text}");
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    // mdbook logs " INFO ", mdbook-quiz's logger "[INFO]".
    let known = quiz_version_warning();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" INFO ") && !l.contains(" [INFO] ") && *l != known)
        .collect();
    if !warnings.is_empty() {
        bail!("mdbook printed {} warnings:\n{}", warnings.len(), warnings.join("\n"));
    }
    for asset in QUIZ_ASSETS {
        if !html_dir().join(asset).is_file() {
            bail!("mdbook-quiz {} wrote no {asset} into the book", MDBOOK_QUIZ.version);
        }
    }
    Ok(())
}

/// The line mdbook-quiz prints when the pinned mdbook is older than its own (see
/// MDBOOK_QUIZ_BUILT_AGAINST); empty when they agree.
fn quiz_version_warning() -> String {
    if MDBOOK.version == MDBOOK_QUIZ_BUILT_AGAINST {
        return String::new();
    }
    format!(
        "Warning: The quiz plugin was built against version {MDBOOK_QUIZ_BUILT_AGAINST} of mdbook, \
         but we're being called from version {}",
        MDBOOK.version
    )
}

/// Open every page in headless Chromium (book/tests/browser.mjs, with playwright-core).
fn browser() -> Result<()> {
    let need = |program: &str| {
        which(program)
            .with_context(|| format!("{program} is missing: install it with `cargo xtask setup` (as root)"))
    };
    let chromium = need("chromium")?;
    need("node")?;
    need("npm")?;
    let tests = book_dir().join("tests");
    run_cmd(
        Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&tests),
    )?;
    let shots = target_dir().join("book-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let (term, page) = SEARCH;
    run_cmd(
        Command::new("node")
            .arg(tests.join("browser.mjs"))
            .arg(html_dir())
            .arg(&shots)
            .arg(chromium)
            .args([term, page])
            .current_dir(&tests),
    )
}
