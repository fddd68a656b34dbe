//! Benchmarks, selected by `bench=` on the command line and reported as KTAP. Results are
//! diagnostics of the form `# bench: <section>.<name> ns=<median> min=<min> max=<max> n=<ops>`,
//! which the harness parses; exits per op come from the harness's own counters.

mod blk;
mod console;
mod floor;
mod net;

use crate::exit::ExitCode;
use crate::ktap::{self, Test};

pub static REGISTRY: &[Test] = &[
    Test::in_all("floor_device", floor::device),
    Test::in_all("floor_loops", floor::loops),
    Test::in_all("blk", blk::blk),
    Test::in_all("net", net::net),
    // Never in `all`: the host's bench drains the console's socket.
    Test::by_name("console", console::console),
];

/// `bench=floor` is both floor rows; `bench=all` everything.
pub fn run(which: &str) -> ExitCode {
    let which = which.replace("floor", "floor_device,floor_loops");
    let (selected, unknown) = ktap::select(REGISTRY, &which);
    ktap::run(&selected, &unknown)
}

/// Batches a row's latencies are split into, in the order they were measured.
const SAMPLE_BATCHES: usize = 16;

/// The median of each of up to SAMPLE_BATCHES runs of consecutive operations, comma-separated:
/// samples of the row's p50 that the harness's `bench compare` can test for a change.
pub(crate) fn batch_medians(latencies: &[u64]) -> alloc::string::String {
    let mut out = alloc::string::String::new();
    if latencies.is_empty() {
        return out;
    }
    let batches = SAMPLE_BATCHES.min(latencies.len());
    for i in 0..batches {
        let (from, to) = (
            i * latencies.len() / batches,
            (i + 1) * latencies.len() / batches,
        );
        let mut batch = latencies[from..to].to_vec();
        batch.sort_unstable();
        if i > 0 {
            out.push(',');
        }
        out += &alloc::format!("{}", batch[batch.len() / 2]);
    }
    out
}
