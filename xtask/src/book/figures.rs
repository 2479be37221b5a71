//! The reliability page's figures (`book/src/generated/reliability.md`): how
//! many faults, bad inputs, fuzzed arguments, escapes and soak containers the
//! last whole run of the integration tests tried, and how many leaks it found.
//!
//! The harness counts them (harness/src/figures.rs) into
//! `target/reliability/figures.json` when the integration tier runs unfiltered.
//! They are counts of cases, the same on every machine, so the book tier can
//! check the committed page against a fresh run.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::target_dir;

/// Where a whole integration run leaves its figures.
pub fn json_path() -> PathBuf {
    target_dir().join("reliability/figures.json")
}

fn page_path() -> PathBuf {
    super::book_dir().join("src/generated/reliability.md")
}

/// The figures as the page's table, in the harness's order.
fn render(json: &str) -> Result<String> {
    let figures: Value = serde_json::from_str(json).context("parse the figures")?;
    let figures = figures.as_object().context("the figures are not a JSON object")?;
    let order =
        ["faults injected", "bad inputs tried", "fuzzed arguments tried", "escapes tried", "soak containers"];
    let mut table = String::from("| what the suite tried | how many |\n|---|---:|\n");
    for name in order.iter().copied().chain(figures.keys().map(String::as_str).filter(|k| !order.contains(k)))
    {
        if name == "leaks found" {
            continue;
        }
        table += &format!("| {name} | {} |\n", figures.get(name).and_then(Value::as_u64).unwrap_or(0));
    }
    let leaks = figures.get("leaks found").and_then(Value::as_u64).unwrap_or(0);
    table += &format!("| **leaks found** | **{leaks}** |\n");
    Ok(table)
}

fn fresh() -> Result<Option<String>> {
    match std::fs::read_to_string(json_path()) {
        Ok(json) => Ok(Some(render(&json)?)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("read {}", json_path().display())),
    }
}

/// `cargo xtask book`: writes the page from the last whole run, if there is one.
pub fn write() -> Result<()> {
    match fresh()? {
        Some(table) => {
            std::fs::write(page_path(), table)?;
            println!("book: reliability figures written from {}", json_path().display());
        }
        None => println!(
            "book: no figures from a whole integration run here ({}): the page keeps its figures",
            json_path().display()
        ),
    }
    Ok(())
}

/// The book tier: the committed figures are those of the last whole run.
pub fn check() -> Result<()> {
    let Some(table) = fresh()? else {
        println!(
            "book: NOT CHECKED: the reliability figures (no whole integration run here wrote {})",
            json_path().display()
        );
        return Ok(());
    };
    let committed = std::fs::read_to_string(page_path()).unwrap_or_default();
    if committed != table {
        bail!(
            "book/src/generated/reliability.md differs from the last integration run's figures:\n{table}\
             (the suite changed: run `cargo xtask book` and commit the page)"
        );
    }
    println!("book: reliability figures match the last integration run");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_leaks_last_and_zero_for_missing_figures() {
        let table = super::render(r#"{"leaks found": 0, "escapes tried": 7, "new figure": 2}"#).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[2], "| faults injected | 0 |");
        assert!(lines.contains(&"| escapes tried | 7 |"));
        assert!(lines.contains(&"| new figure | 2 |"));
        assert_eq!(lines.last(), Some(&"| **leaks found** | **0** |"));
    }
}
