//! Local APIC (xAPIC, MMIO at its architectural address), used from ring 3 through the
//! user-accessible identity map. Ring 0 only writes EOI (in the interrupt stub).

use core::ptr::NonNull;
use volatile::VolatilePtr;

const BASE: usize = 0xfee0_0000;
const ID: usize = 0x20;
const TPR: usize = 0x80;
const SVR: usize = 0xf0;
const LVT_TIMER: usize = 0x320;
const TIMER_INITIAL: usize = 0x380;
const TIMER_DIVIDE: usize = 0x3e0;

const SVR_ENABLE: u32 = 1 << 8;
bitflags::bitflags! {
    /// Flag bits of the LVT timer entry; the vector is bits 0..8.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct LvtTimer: u32 {
        const MASKED = 1 << 16;
        const PERIODIC = 1 << 17;
    }
}

/// One 32-bit LAPIC register; `reg` is one of the 16-byte-aligned offsets above.
fn register(reg: usize) -> VolatilePtr<'static, u32> {
    // SAFETY: the LAPIC page is identity-mapped, uncached and user-accessible for the kernel's
    // whole life, and every offset used here is a register of it.
    unsafe { VolatilePtr::new(NonNull::new_unchecked((BASE + reg) as *mut u32)) }
}

fn read(reg: usize) -> u32 {
    register(reg).read()
}

fn write(reg: usize, value: u32) {
    register(reg).write(value)
}

/// Software-enable the LAPIC with the spurious vector, accept all priorities.
pub fn enable() {
    write(TPR, 0);
    write(SVR, SVR_ENABLE | super::idt::SPURIOUS_VECTOR as u32);
}

pub fn id() -> u32 {
    read(ID) >> 24
}

/// Periodic timer on `vector`, divide by 1, `count` bus cycles per tick.
pub fn timer_start_periodic(vector: u8, count: u32) {
    write(TIMER_DIVIDE, 0b1011);
    write(LVT_TIMER, LvtTimer::PERIODIC.bits() | vector as u32);
    write(TIMER_INITIAL, count);
}

pub fn timer_stop() {
    write(LVT_TIMER, LvtTimer::MASKED.bits());
    write(TIMER_INITIAL, 0);
}

/// Bus cycles between background ticks: 10 ms at KVM's (and QEMU's) 1 GHz APIC bus.
const TICK_COUNT: u32 = 10_000_000;

/// The background tick: a periodic LAPIC timer interrupt that bounds every `hlt`, so a driver
/// waiting for an interrupt that never comes still reaches its timeout.
pub fn start_tick() {
    timer_start_periodic(super::vectors::LAPIC_TIMER, TICK_COUNT);
}
