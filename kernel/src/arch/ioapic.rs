//! I/O APIC at its architectural address, programmed from ring 3. ISA IRQs are identity-mapped to
//! pins (no interrupt source overrides are used by our tests: COM1 is pin 4, PCI lines as read
//! from config space).

use super::idt::IRQ_LEVEL_PIN;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use volatile::VolatilePtr;

const BASE: usize = 0xfec0_0000;
const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;
const VERSION: u32 = 0x01;
const REDIRECTION_BASE: u32 = 0x10;

bitflags::bitflags! {
    /// Flag bits of a redirection entry's low word; the vector is bits 0..8. (The interrupt
    /// stub sets MASKED in assembly.)
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Redirection: u32 {
        const LEVEL = 1 << 15;
        const MASKED = 1 << 16;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// ISA style: edge, active high.
    Edge,
    /// PCI INTx as QEMU's and our harness's IOAPIC see it: level, active high. The interrupt
    /// stub masks the pin when it fires; `Platform::ack_interrupt` unmasks it.
    Level,
}

/// The IOAPIC's select or window register.
fn register(offset: usize) -> VolatilePtr<'static, u32> {
    // SAFETY: the IOAPIC page is identity-mapped, uncached and user-accessible for the kernel's
    // whole life; IOREGSEL and IOWIN are its two registers.
    unsafe { VolatilePtr::new(NonNull::new_unchecked((BASE + offset) as *mut u32)) }
}

fn read(reg: u32) -> u32 {
    register(IOREGSEL).write(reg);
    register(IOWIN).read()
}

fn write(reg: u32, value: u32) {
    register(IOREGSEL).write(reg);
    register(IOWIN).write(value);
}

/// Number of redirection entries.
pub fn pins() -> u32 {
    ((read(VERSION) >> 16) & 0xff) + 1
}

/// Route `pin` to `vector` on the LAPIC with id `dest`, unmasked.
pub fn route(pin: u8, vector: u8, trigger: Trigger, dest: u32) {
    let reg = REDIRECTION_BASE + 2 * pin as u32;
    let (flags, level_pin) = match trigger {
        Trigger::Level => (Redirection::LEVEL, pin),
        Trigger::Edge => (Redirection::empty(), 0xff),
    };
    write(reg, Redirection::MASKED.bits());
    IRQ_LEVEL_PIN[vector as usize].store(level_pin, Ordering::SeqCst);
    write(reg + 1, dest << 24);
    write(reg, flags.bits() | vector as u32);
}

pub fn mask(pin: u8) {
    let reg = REDIRECTION_BASE + 2 * pin as u32;
    write(reg, read(reg) | Redirection::MASKED.bits());
}

/// Unmask `pin` (after a level-triggered interrupt has been serviced).
pub fn unmask(pin: u8) {
    let reg = REDIRECTION_BASE + 2 * pin as u32;
    write(reg, read(reg) & !Redirection::MASKED.bits());
}
