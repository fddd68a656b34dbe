//! The TSC and its calibration.

use crate::ktap::Outcome;
use crate::{check, println, time};

pub fn tsc() -> Outcome {
    let hz = time::tsc_hz();
    check!(
        (100_000_000..=20_000_000_000).contains(&hz),
        "TSC frequency {} Hz is implausible",
        hz
    );
    let a = time::rdtsc();
    let b = time::rdtsc();
    check!(b > a, "TSC did not advance ({} then {})", a, b);
    // Cross-check against the PIT. Only a gross disagreement (2x) fails: this is a check that
    // the two clocks agree, not a timing target.
    let pit = time::pit_calibrate_best(3, 20);
    println!(
        "# tsc: {} kHz in use, {} kHz against the PIT",
        hz / 1000,
        pit / 1000
    );
    check!(
        pit > hz / 2 && pit < hz * 2,
        "PIT says {} Hz, in use {} Hz",
        pit,
        hz
    );
    Outcome::Pass
}
