//! The container's record on the host, made before anything else it owns.
//!
//! It names the runtime that runs the container (pid and start time), so
//! what a killed runtime left behind can be told from what a live one uses.

use crate::process;
use anyhow::{Context, Result};
use std::path::PathBuf;

pub const DIR: &str = crate::paths::RECORDS;

// ANCHOR: create
/// Removed when dropped, after everything the container owned is gone.
pub struct Record(PathBuf);

pub fn create(id: &str) -> Result<Record> {
    std::fs::create_dir_all(DIR).with_context(|| format!("mkdir {DIR}"))?;
    let me = process::identity(std::process::id()).context("read our own start time")?;
    let path = PathBuf::from(DIR).join(id);
    // Write it whole under a private name, then link it into place: no one
    // ever reads half a record, and link(2) fails if the name is taken, so
    // two runtimes never share a record (nor a container id).
    let draft = PathBuf::from(DIR).join(format!(".{id}.{}", std::process::id()));
    std::fs::write(&draft, me + "\n").with_context(|| format!("write {}", draft.display()))?;
    let mut linked = std::fs::hard_link(&draft, &path);
    if linked.is_err() && !is_live(id) {
        let _ = std::fs::remove_file(&path); // a killed runtime's record
        linked = std::fs::hard_link(&draft, &path);
    }
    let _ = std::fs::remove_file(&draft);
    linked.with_context(|| format!("container {id} is already running"))?;
    let record = Record(path);
    process::fault("record")?;
    Ok(record)
}
// ANCHOR_END: create

// ANCHOR: is_live
/// Whether the runtime that recorded container `id` is still running.
pub fn is_live(id: &str) -> bool {
    let text = std::fs::read_to_string(PathBuf::from(DIR).join(id)).unwrap_or_default();
    let pid = text.split_whitespace().next().and_then(|pid| pid.parse().ok());
    !text.is_empty() && pid.and_then(process::identity).as_deref() == Some(text.trim())
}
// ANCHOR_END: is_live

/// Forgets the records of runtimes that are gone.
pub fn remove_stale() {
    for entry in std::fs::read_dir(DIR).into_iter().flatten().flatten() {
        if !is_live(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
