//! The test runner and its KTAP v1 output: `KTAP version 1`, the plan `1..N`, one
//! `ok N name` / `not ok N name` per test, `# SKIP reason`, and `#` diagnostics.

use crate::exit::ExitCode;
use crate::println;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

pub enum Outcome {
    Pass,
    Fail(String),
    Skip(&'static str),
}

/// A registered test: `in_all` is false for the self-tests that must fail, hang or crash.
pub struct Test {
    pub name: &'static str,
    pub run: fn() -> Outcome,
    pub in_all: bool,
}

impl Test {
    /// A test that `tests=all` runs.
    pub const fn in_all(name: &'static str, run: fn() -> Outcome) -> Self {
        Self {
            name,
            run,
            in_all: true,
        }
    }

    /// A test that runs only when named.
    pub const fn by_name(name: &'static str, run: fn() -> Outcome) -> Self {
        Self {
            name,
            run,
            in_all: false,
        }
    }
}

/// Index (1-based) and name of the test now running, for crash and panic reports.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static CURRENT_NAME: spin::Mutex<&'static str> = spin::Mutex::new("");

/// Select tests by the command line's `tests=` value: `all`, `none`, or a comma list.
/// Unknown names come back in the second list.
pub fn select<'a>(registry: &'a [Test], spec: &str) -> (Vec<&'a Test>, Vec<String>) {
    let mut chosen = Vec::new();
    let mut unknown = Vec::new();
    for word in spec.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "none" => {}
            "all" => chosen.extend(registry.iter().filter(|t| t.in_all)),
            name => match registry.iter().find(|t| t.name == name) {
                Some(t) => chosen.push(t),
                None => unknown.push(String::from(name)),
            },
        }
    }
    (chosen, unknown)
}

/// Run the tests, print KTAP, and return the exit code the run ends with.
pub fn run(tests: &[&Test], unknown: &[String]) -> ExitCode {
    println!("KTAP version 1");
    println!("1..{}", tests.len() + unknown.len());
    let mut failed = 0;
    for (i, test) in tests.iter().enumerate() {
        let n = i + 1;
        CURRENT.store(n, Ordering::SeqCst);
        *CURRENT_NAME.lock() = test.name;
        match (test.run)() {
            Outcome::Pass => println!("ok {} {}", n, test.name),
            Outcome::Skip(why) => println!("ok {} {} # SKIP {}", n, test.name, why),
            Outcome::Fail(why) => {
                failed += 1;
                for line in why.lines() {
                    println!("# {}", line);
                }
                println!("not ok {} {}", n, test.name);
            }
        }
    }
    CURRENT.store(0, Ordering::SeqCst);
    for (i, name) in unknown.iter().enumerate() {
        println!("# no test named {:?}", name);
        println!("not ok {} {}", tests.len() + i + 1, name);
        failed += 1;
    }
    if failed == 0 {
        ExitCode::AllPassed
    } else {
        ExitCode::SomeFailed
    }
}

/// After an exception or panic: close the running test with `not ok`.
pub fn report_crash(w: &mut dyn core::fmt::Write) {
    let n = CURRENT.load(Ordering::SeqCst);
    if n != 0 {
        // The name lock is only ever held for a store; don't wait on it from a crash.
        let name = CURRENT_NAME.try_lock().map(|g| *g).unwrap_or("?");
        let _ = writeln!(w, "not ok {} {}", n, name);
    }
}

/// `Outcome::Fail` with a formatted message.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return $crate::ktap::Outcome::Fail(alloc::format!($($arg)*))
    };
}

/// Fail the test unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::fail!($($arg)*);
        }
    };
}

/// The value of an `Ok`, or fail the test with a message naming what was attempted.
#[macro_export]
macro_rules! try_or_fail {
    ($e:expr, $($what:tt)*) => {
        match $e {
            Ok(v) => v,
            Err(e) => $crate::fail!("{}: {}", alloc::format!($($what)*), e),
        }
    };
}
