//! Integration tests for every step: `cargo xtask test` runs them as root.
//!
//! The checks live in the harness library (`harness::checks`), so that the
//! grader can run the same ones against the exercises.

fn main() {
    harness::suite::main(harness::checks::all())
}
