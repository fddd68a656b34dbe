//! Benchmarks, selected by `bench=` on the command line and reported as KTAP. Results are
//! diagnostics of the form `# bench: <section>.<name> ns=<median> min=<min> max=<max> n=<ops>`,
//! which the harness parses; exits per op come from the harness's own counters.

mod floor;

use crate::exit::ExitCode;
use crate::ktap::{self, Test};

pub static REGISTRY: &[Test] = &[
    Test {
        name: "floor_device",
        run: floor::device,
        in_all: true,
    },
    Test {
        name: "floor_loops",
        run: floor::loops,
        in_all: true,
    },
];

/// `bench=floor` is both floor rows; `bench=all` everything.
pub fn run(which: &str) -> ExitCode {
    let which = which.replace("floor", "floor_device,floor_loops");
    let (selected, unknown) = ktap::select(REGISTRY, &which);
    ktap::run(&selected, &unknown)
}
