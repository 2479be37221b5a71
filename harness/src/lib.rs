//! The workshop's test harness.
//!
//! Tests run the real step binaries as root on the real kernel. They look from
//! inside the container through the probe (a static binary that prints what it
//! sees as JSON) and from outside, on the host. Every test is wrapped in a leak
//! check: whatever a container run leaves behind fails the test.

pub mod checks;
pub mod exercises;
pub mod figures;
pub mod images;
pub mod leaks;
pub mod paths;
pub mod probe;
pub mod registry;
pub mod run;
pub mod sandbox;
pub mod suite;
pub mod token;
pub mod workshop;

pub use probe::Probe;
pub use run::{Outcome, Run, Running};
pub use suite::{Check, Ctx, Skipped};
pub use workshop::{Step, Workshop};
