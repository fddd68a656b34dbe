//! Harness errors and their exit codes.

use std::fmt;

pub const EXIT_PASSED: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_CRASHED: i32 = 2;
pub const EXIT_TIMEOUT: i32 = 3;
pub const EXIT_ABNORMAL: i32 = 4;
/// The watchdog's hard deadline: a limit was reached and the run did not end within the grace.
pub const EXIT_HARD_DEADLINE: i32 = 5;
pub const EXIT_USAGE: i32 = 64;
pub const EXIT_BAD_IMAGE: i32 = 65;
pub const EXIT_UNAVAILABLE: i32 = 69;
pub const EXIT_SOFTWARE: i32 = 70;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HarnessError {
    /// Bad command line (64).
    Usage(String),
    /// Bad kernel image (65).
    Image(String),
    /// /dev/kvm or QEMU missing or unusable (69).
    Unavailable(String),
    /// Anything else (70).
    Other(String),
}

impl HarnessError {
    pub fn exit_code(&self) -> i32 {
        match self {
            HarnessError::Usage(_) => EXIT_USAGE,
            HarnessError::Image(_) => EXIT_BAD_IMAGE,
            HarnessError::Unavailable(_) => EXIT_UNAVAILABLE,
            HarnessError::Other(_) => EXIT_SOFTWARE,
        }
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = match self {
            HarnessError::Usage(m)
            | HarnessError::Image(m)
            | HarnessError::Unavailable(m)
            | HarnessError::Other(m) => m,
        };
        // Always one line.
        write!(f, "{}", m.replace('\n', " "))
    }
}

impl std::error::Error for HarnessError {}
