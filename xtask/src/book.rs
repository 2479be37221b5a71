//! The book (`book/`): the `book` task and the book tier of `cargo xtask test`.
//!
//! `cargo xtask book [--bless] [--open]`
//!   1. regenerates the "what changed since the previous step" diffs
//!      (`book/src/generated/NN-name.md`) from `steps/`;
//!   2. with `--bless`, runs every command of the book's ```console blocks as root
//!      and writes their real output into the markdown (see `book/commands.rs`);
//!   3. installs the pinned mdbook and mdbook-mermaid if they are missing, builds
//!      the book (no warnings allowed) and checks its internal links;
//!   4. with `--open`, opens it in a browser.
//!
//! The book tier checks the same things without writing anything: the generated
//! files and mermaid's JavaScript are up to date, every `{{#include}}` finds its
//! anchor, the build is clean, every console command prints what the book shows,
//! and the rendered pages work in a real headless Chromium (`book/tests/`).

pub(crate) mod commands;
mod diffs;
pub mod figures;
mod links;

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
pub fn run(bless: bool, open: bool) -> Result<()> {
    let written = diffs::write()?;
    println!("book: step diffs up to date in book/src/generated ({written} files)");
    figures::write()?;
    links::check_sources()?;
    if bless {
        commands::check(true)?;
        crate::vm::book::check(true)?;
    }
    let tools = install_tools()?;
    mermaid_assets(&tools, true)?;
    build(&tools)?;
    links::check_html(&html_dir())?;
    let index = html_dir().join("index.html");
    println!("book: built {}", index.display());
    if open {
        match which("xdg-open") {
            Some(opener) => run_cmd(Command::new(opener).arg(&index))?,
            None => println!("book: no xdg-open here; open file://{} in a browser", index.display()),
        }
    }
    Ok(())
}

/// The book tier: check everything, write nothing (except the HTML and screenshots under target/).
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

/// Install mdbook and mdbook-mermaid at the pinned versions unless they are there
/// already; returns the directory they are in.
fn install_tools() -> Result<PathBuf> {
    let bin_dir = cargo_bin_dir();
    for tool in [&MDBOOK, &MDBOOK_MERMAID] {
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
    let warnings: Vec<&str> =
        text.lines().filter(|l| !l.trim().is_empty() && !l.contains(" INFO ")).collect();
    if !warnings.is_empty() {
        bail!("mdbook printed {} warnings:\n{}", warnings.len(), warnings.join("\n"));
    }
    Ok(())
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
