//! The grader for the exercises: `cargo xtask grade` builds them and runs
//! this as root. The checks and their points live in the harness library
//! (`harness::exercises`), next to the steps' checks that they reuse.

fn main() {
    harness::exercises::grade::main()
}
