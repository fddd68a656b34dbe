//! isa-debug-exit (`devices/debug_exit.rs`).

use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::debug_exit::{DebugExit, ExitRequest};
use crate::devices::le_value;

/// A program of reads and writes of any width at any offset. Reads give zeros; the exit value
/// is the first non-empty write at offset 0 (its low 32 bits of at most 8 bytes), never changed
/// after.
pub fn debug_exit(input: &[u8]) {
    run_debug_exit(input);
}

/// [`debug_exit()`], returning the exit value the program asked for.
pub fn run_debug_exit(input: &[u8]) -> Option<u32> {
    let mut r = Reader(input);
    let req = ExitRequest::default();
    let mut dev = DebugExit::new(req.clone());
    let mut want = None;
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        let off = match r.u8() % 4 {
            0 | 1 => 0,
            2 => r.u8() as u64 % 8,
            _ => r.u64(),
        };
        let width = r.width();
        if op.is_multiple_of(2) {
            let v = r.value(width);
            dev.write(off, &v);
            if want.is_none() && off == 0 && !v.is_empty() {
                want = Some(le_value(&v) as u32);
            }
        } else {
            let mut b = vec![0x5a; width];
            dev.read(off, &mut b);
            assert!(b.iter().all(|&x| x == 0), "debug-exit read {b:02x?}");
        }
        assert_eq!(req.get(), want);
    }
    want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::test_util::random;

    #[test]
    fn debug_exit_random_programs() {
        random(0x5eed_000a, 3000, 200, &[], debug_exit);
    }
}
