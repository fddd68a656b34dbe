//! What a long `bench` run is doing and how far along it is. On a terminal (stderr), an
//! `indicatif` bar over every child run, with each stage's line printed above it; otherwise
//! the plain `bench: <stage>...` lines, unchanged, and nothing per child run.
//!
//! One bar for the process, so that the sections (blk, net, console) report into it without
//! one being passed down to each.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn with_bar<T>(f: impl FnOnce(Option<&ProgressBar>) -> T) -> T {
    // A panic elsewhere while holding the lock leaves the bar as it was: still usable.
    let guard = BAR.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.as_ref())
}

/// The bar's template: elapsed time, the bar, runs done of planned, the run going on.
const TEMPLATE: &str = "{elapsed_precise} [{wide_bar}] {pos}/{len} {msg}";

/// `runs` child runs lie ahead: on a terminal, the bar appears.
pub fn begin(runs: u64) {
    if !std::io::stderr().is_terminal() {
        return;
    }
    let bar = ProgressBar::new(runs);
    if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    *BAR.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
}

/// A stage begins: `bench: {what}...`, above the bar when there is one.
pub fn stage(what: &str) {
    let line = format!("bench: {what}...");
    with_bar(|bar| match bar {
        Some(b) => b.println(line),
        None => eprintln!("{line}"),
    });
}

/// Run one child (`run`), named `what` on the bar while it runs.
pub fn child<T>(what: &str, run: impl FnOnce() -> T) -> T {
    with_bar(|bar| {
        if let Some(b) = bar {
            b.set_message(what.to_string());
        }
    });
    let out = run();
    with_bar(|bar| {
        if let Some(b) = bar {
            // More runs than planned (a section that grew) lengthen the bar, not overflow it.
            if b.length().is_some_and(|len| b.position() + 1 > len) {
                b.inc_length(1);
            }
            b.inc(1);
        }
    });
    out
}

/// The runs are over: the bar goes (skipped runs may leave it short of its end).
pub fn end() {
    if let Some(b) = BAR.lock().unwrap_or_else(|p| p.into_inner()).take() {
        b.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test: the bar is the process's.
    #[test]
    fn children_run_and_a_bar_counts_them() {
        // No terminal (stderr is a pipe under `cargo test`, or CI's): no bar.
        if !std::io::stderr().is_terminal() {
            begin(3);
            assert!(with_bar(|b| b.is_none()));
        }
        assert_eq!(child("x", || 7), 7);
        stage("a stage");
        end();
        // A bar counts its runs and grows past its plan.
        let b = ProgressBar::hidden();
        b.set_length(1);
        *BAR.lock().unwrap() = Some(b.clone());
        child("one", || ());
        child("two", || ());
        assert_eq!((b.position(), b.length()), (2, Some(2)));
        assert_eq!(b.message(), "two");
        end();
        assert!(with_bar(|b| b.is_none()));
    }
}
