//! One KVM I/O exit, port or MMIO, as bus accesses and an exit count: the pure step of the
//! vCPU loop between `KVM_RUN` returning and the next entry. It is apart from KVM so that the
//! exit-dispatch fuzz target (`fuzzing/exit_dispatch.rs`) can feed it records as KVM would.

use super::exit_recorder;
use super::exits::{Dir, ExitCounters, Space};
use super::pio;
use crate::devices::bus::{Bus, Claim};
use crate::devices::lock;
use std::sync::Mutex;

/// An I/O exit as KVM reports it. Every field comes from the guest: for a port exit `data` is
/// `count` elements of `size` bytes (`rep ins/outs`, see [`pio`]), for MMIO the 1 to 8 bytes of
/// one access.
#[derive(Debug)]
pub enum IoExit<'a> {
    PortOut {
        port: u16,
        size: u8,
        data: &'a [u8],
    },
    PortIn {
        port: u16,
        size: u8,
        data: &'a mut [u8],
    },
    MmioWrite {
        addr: u64,
        data: &'a [u8],
    },
    MmioRead {
        addr: u64,
        data: &'a mut [u8],
    },
}

/// Hand `exit` to its bus (an `in` or MMIO read fills its `data`) and count it in `counters`,
/// taken only for the count. Returns the claim of its first access.
pub fn dispatch(
    pio_bus: &mut Bus,
    mmio_bus: &mut Bus,
    counters: &Mutex<ExitCounters>,
    mut exit: IoExit<'_>,
) -> Claim {
    let (space, addr, dir, claim) = match &mut exit {
        IoExit::PortOut { port, size, data } => (
            Space::Pio,
            *port as u64,
            Dir::Write,
            pio::write(pio_bus, *port, *size, data),
        ),
        IoExit::PortIn { port, size, data } => (
            Space::Pio,
            *port as u64,
            Dir::Read,
            pio::read(pio_bus, *port, *size, data),
        ),
        IoExit::MmioWrite { addr, data } => {
            (Space::Mmio, *addr, Dir::Write, mmio_bus.write(*addr, data))
        }
        IoExit::MmioRead { addr, data } => {
            (Space::Mmio, *addr, Dir::Read, mmio_bus.read(*addr, data))
        }
    };
    lock(counters).record_access(space, addr, dir, &claim);
    if let Some(recorder) = exit_recorder::active() {
        recorder.record(&exit, &claim);
    }
    claim
}
