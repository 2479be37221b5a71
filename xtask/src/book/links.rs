//! Checks that mdbook does not make: every `{{#include file:anchor}}` finds its
//! file and a non-empty anchor (mdbook silently includes nothing otherwise), the
//! copies of a file in consecutive steps carry the same anchors, and every internal
//! link and fragment of the rendered HTML leads somewhere.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::book_dir;
use crate::{artifacts, display_path, workspace_root};

/// Includes and anchors, in the markdown and in steps/.
pub fn check_sources() -> Result<()> {
    let mut problems = Vec::new();
    for file in markdown_files(&book_dir().join("src"))? {
        let text = std::fs::read_to_string(&file)?;
        for (line, target, anchor) in includes(&text) {
            let place = format!("{}:{}", display_path(&file), line + 1);
            let path = file.parent().unwrap_or(Path::new(".")).join(&target);
            let Ok(source) = std::fs::read_to_string(&path) else {
                problems.push(format!("{place}: {{{{#include {target}}}}}: no such file"));
                continue;
            };
            if let Some(anchor) = anchor {
                if anchored(&source, &anchor).is_none_or(|body| body.trim().is_empty()) {
                    problems.push(format!("{place}: {target} has no (or an empty) anchor {anchor:?}"));
                }
            }
        }
    }
    problems.extend(step_anchor_problems()?);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// `{{#include path}}` and `{{#include path:anchor}}` (also rustdoc_include):
/// (line index, path, anchor). Line ranges (`:3:10`) are not anchors.
fn includes(text: &str) -> Vec<(usize, String, Option<String>)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("{{#") {
            let escaped = rest[..start].ends_with('\\');
            let after = &rest[start + 3..];
            let Some(end) = after.find("}}") else { break };
            let inner = &after[..end];
            rest = &after[end..];
            let Some(args) =
                inner.strip_prefix("include ").or_else(|| inner.strip_prefix("rustdoc_include "))
            else {
                continue;
            };
            if escaped {
                continue;
            }
            let mut parts = args.trim().splitn(2, ':');
            let path = parts.next().unwrap_or_default().to_string();
            let anchor = parts
                .next()
                .map(|a| a.split(':').next().unwrap_or_default().to_string())
                .filter(|a| !a.is_empty() && !a.chars().all(|c| c.is_ascii_digit()));
            found.push((n, path, anchor));
        }
    }
    found
}

/// The lines between `ANCHOR: name` and `ANCHOR_END: name`, as mdbook takes them.
fn anchored(source: &str, anchor: &str) -> Option<String> {
    let mut body = Vec::new();
    let mut inside = false;
    for line in source.lines() {
        match anchor_of(line) {
            Some(("ANCHOR", name)) if name == anchor => inside = true,
            Some(("ANCHOR_END", name)) if name == anchor && inside => return Some(body.join("\n")),
            Some(_) => {}
            None if inside => body.push(line),
            None => {}
        }
    }
    None
}

/// ("ANCHOR" | "ANCHOR_END", name) for an anchor line.
fn anchor_of(line: &str) -> Option<(&'static str, &str)> {
    let comment = line.trim().strip_prefix("//")?.trim();
    if let Some(name) = comment.strip_prefix("ANCHOR_END:") {
        return Some(("ANCHOR_END", name.trim()));
    }
    comment.strip_prefix("ANCHOR:").map(|name| ("ANCHOR", name.trim()))
}

fn anchor_names(source: &str) -> BTreeSet<String> {
    source.lines().filter_map(anchor_of).filter(|(k, _)| *k == "ANCHOR").map(|(_, n)| n.to_string()).collect()
}

/// A file that two consecutive steps both have must not differ only in its anchors,
/// and the newer copy keeps every anchor of the older one.
fn step_anchor_problems() -> Result<Vec<String>> {
    let steps = artifacts::steps()?;
    let mut problems = Vec::new();
    for pair in steps.windows(2) {
        let (old, new) = (&pair[0].name, &pair[1].name);
        let old_src = workspace_root().join("steps").join(old).join("src");
        for path in rust_files(&old_src)? {
            let rel = path.strip_prefix(&old_src)?;
            let new_path = workspace_root().join("steps").join(new).join("src").join(rel);
            let (Ok(a), Ok(b)) = (std::fs::read_to_string(&path), std::fs::read_to_string(&new_path)) else {
                continue;
            };
            let rel = rel.display();
            let strip = |s: &str| s.lines().filter(|l| anchor_of(l).is_none()).collect::<Vec<_>>().join("\n");
            if a != b && strip(&a) == strip(&b) {
                problems.push(format!(
                    "steps/{old}/src/{rel} and steps/{new}/src/{rel} differ only in their ANCHOR lines"
                ));
            }
            let missing: Vec<String> = anchor_names(&a).difference(&anchor_names(&b)).cloned().collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "steps/{new}/src/{rel} lacks the anchors {} that steps/{old}/src/{rel} has",
                    missing.join(", ")
                ));
            }
        }
    }
    Ok(problems)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    files_with(dir, "rs", &[])
}

fn markdown_files(dir: &Path) -> Result<Vec<PathBuf>> {
    files_with(dir, "md", &[])
}

fn files_with(dir: &Path, extension: &str, skip: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        if path.is_dir() {
            files.extend(files_with(&path, extension, skip)?);
        } else if path.extension().is_some_and(|e| e == extension) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Every relative href/src of the rendered book must exist, and its #fragment too.
/// 404.html is skipped: mdbook writes its links absolute, for the site's root.
pub fn check_html(html_dir: &Path) -> Result<()> {
    let pages = files_with(html_dir, "html", &["404.html"])?;
    let mut ids: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut problems = BTreeSet::new();
    let mut checked = 0;
    for page in &pages {
        let html = std::fs::read_to_string(page)?;
        for link in attributes(&html, &["href", "src"]) {
            if link.is_empty() || is_external(&link) {
                continue;
            }
            checked += 1;
            let (path, fragment) = match link.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (link.as_str(), None),
            };
            let path = path.split('?').next().unwrap_or_default();
            let target = if path.is_empty() {
                page.clone()
            } else {
                let joined = page.parent().unwrap_or(html_dir).join(percent_decode(path));
                if joined.is_dir() {
                    joined.join("index.html")
                } else {
                    joined
                }
            };
            let shown = display_path(page);
            if !target.exists() {
                problems.insert(format!("{shown}: broken link {link}"));
                continue;
            }
            let Some(fragment) = fragment.filter(|f| !f.is_empty()) else { continue };
            if target.extension().is_none_or(|e| e != "html") {
                continue;
            }
            let target_ids = match ids.get(&target) {
                Some(found) => found,
                None => {
                    let text = std::fs::read_to_string(&target)?;
                    ids.entry(target.clone())
                        .or_insert_with(|| attributes(&text, &["id", "name"]).into_iter().collect())
                }
            };
            if !target_ids.contains(&percent_decode(fragment)) {
                problems
                    .insert(format!("{shown}: link {link}: no id {fragment:?} in {}", display_path(&target)));
            }
        }
    }
    if pages.is_empty() {
        bail!("no HTML pages in {}", html_dir.display());
    }
    if !problems.is_empty() {
        let list: Vec<String> = problems.into_iter().collect();
        bail!("{} broken internal links:\n{}", list.len(), list.join("\n"));
    }
    println!("book: {checked} internal links in {} pages lead somewhere", pages.len());
    Ok(())
}

fn is_external(link: &str) -> bool {
    if link.starts_with("//") {
        return true;
    }
    // A scheme: letters, digits, + - . before the first ':' (http:, mailto:, data:, javascript:).
    match link.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !scheme.contains('/')
        }
        None => false,
    }
}

/// The values of the given attributes (quoted with " or '), HTML entities for & decoded.
fn attributes(html: &str, names: &[&str]) -> Vec<String> {
    let mut values = Vec::new();
    let bytes = html.as_bytes();
    for name in names {
        let pattern = format!("{name}=");
        let mut from = 0;
        while let Some(pos) = html[from..].find(&pattern) {
            let start = from + pos;
            from = start + pattern.len();
            // Only a whole attribute name: preceded by whitespace.
            if start == 0 || !bytes[start - 1].is_ascii_whitespace() {
                continue;
            }
            let Some(quote) = html[from..].chars().next().filter(|c| *c == '"' || *c == '\'') else {
                continue;
            };
            let value_start = from + 1;
            let Some(len) = html[value_start..].find(quote) else { break };
            values.push(html[value_start..value_start + len].replace("&amp;", "&"));
            from = value_start + len;
        }
    }
    values
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_includes_and_anchors() {
        let text = "a {{#include ../x.rs:run}} b\n\\{{#include not/this.rs}}\n{{#include y.rs:3:10}} {{#include z.md}}\n";
        let found = includes(text);
        assert_eq!(
            found,
            vec![
                (0, "../x.rs".to_string(), Some("run".to_string())),
                (2, "y.rs".to_string(), None),
                (2, "z.md".to_string(), None),
            ]
        );
    }

    #[test]
    fn anchored_lines() {
        let src = "a\n// ANCHOR: run\nfn run() {\n    // ANCHOR: inner\n}\n// ANCHOR_END: run\n";
        assert_eq!(anchored(src, "run").as_deref(), Some("fn run() {\n}"));
        assert_eq!(anchored(src, "missing"), None);
        assert_eq!(anchor_names(src).into_iter().collect::<Vec<_>>(), vec!["inner", "run"]);
    }

    #[test]
    fn html_attributes_and_external_links() {
        let html = r#"<a href="01-uts.html#run-it">x</a><img src='a.svg'><div data-href="no"><p id="top">"#;
        assert_eq!(attributes(html, &["href", "src"]), vec!["01-uts.html#run-it", "a.svg"]);
        assert_eq!(attributes(html, &["id"]), vec!["top"]);
        assert!(is_external("https://example.org/"));
        assert!(is_external("mailto:x@y"));
        assert!(!is_external("reference/glossary.html#pid-1"));
        assert!(!is_external("#a:b"));
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
    }
}
