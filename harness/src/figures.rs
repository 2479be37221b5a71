//! The reliability figures: how many faults, bad inputs and escapes the suite
//! tried, and how many leaks it found. Checks count what they try with `add`;
//! at the end of a run the totals go to the JSON file that `WORKSHOP_FIGURES`
//! names (`cargo xtask test` sets it for a whole, unfiltered run), and from
//! there to the book's reliability page.
//!
//! Only counts of cases go here, never timings, so that a run gives the same
//! figures on every machine and the book's copy can be checked against them.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The figures the book's reliability page shows, in its order.
pub const FAULTS: &str = "faults injected";
pub const INPUTS: &str = "bad inputs tried";
pub const FUZZ: &str = "fuzzed arguments tried";
pub const ESCAPES: &str = "escapes tried";
pub const SOAK: &str = "soak containers";
pub const LEAKS: &str = "leaks found";

static TOTALS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Counts `n` more of `figure` (for example `add(INPUTS, 1)` per bad input run).
pub fn add(figure: &'static str, n: u64) {
    let mut totals = TOTALS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *totals.entry(figure).or_default() += n;
}

/// Writes the totals, when the run was asked to (`WORKSHOP_FIGURES=PATH`).
pub fn save() {
    let Some(path) = std::env::var_os("WORKSHOP_FIGURES") else { return };
    let totals = TOTALS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut all: BTreeMap<&str, u64> = [FAULTS, INPUTS, FUZZ, ESCAPES, SOAK, LEAKS].map(|f| (f, 0)).into();
    all.extend(totals.iter().map(|(k, v)| (*k, *v)));
    let text = serde_json::to_string_pretty(&all).unwrap_or_default() + "\n";
    if let Err(err) = std::fs::write(&path, text) {
        eprintln!("warning: could not write the figures to {}: {err}", path.to_string_lossy());
    }
}
