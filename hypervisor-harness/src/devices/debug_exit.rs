//! isa-debug-exit: a write of V to its port ends the run with guest exit value V.

use super::bus::BusDevice;
use super::{le_value, lock};
use std::sync::{Arc, Mutex};

pub const DEBUG_EXIT_PORT: u64 = 0xf4;
pub const DEBUG_EXIT_LEN: u64 = 4;

pub const GUEST_PASSED: u32 = 0x10;
pub const GUEST_FAILED: u32 = 0x11;
pub const GUEST_CRASHED: u32 = 0x12;

/// Shared with the vCPU loop, which stops once a value is set.
#[derive(Default, Clone)]
pub struct ExitRequest(Arc<Mutex<Option<u32>>>);

impl ExitRequest {
    pub fn get(&self) -> Option<u32> {
        *lock(&self.0)
    }
}

pub struct DebugExit {
    req: ExitRequest,
}

impl DebugExit {
    pub fn new(req: ExitRequest) -> Self {
        Self { req }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.is_empty() {
            return;
        }
        let mut slot = lock(&self.req.0);
        if slot.is_none() {
            *slot = Some(le_value(data) as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_width() {
        for data in [&[0x10u8][..], &[0x11, 0], &[0x12, 0, 0, 0]] {
            let req = ExitRequest::default();
            let mut d = DebugExit::new(req.clone());
            assert_eq!(req.get(), None);
            d.write(0, data);
            assert_eq!(req.get(), Some(data[0] as u32));
            d.write(0, &[0x55]); // first value wins
            assert_eq!(req.get(), Some(data[0] as u32));
        }
        let req = ExitRequest::default();
        let mut d = DebugExit::new(req.clone());
        d.write(2, &[1]);
        d.write(0, &[]);
        assert_eq!(req.get(), None);
    }
}
