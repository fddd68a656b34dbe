//! The 93C46 serial EEPROM behind 9346CR: the driver drives chip select, clock and data in
//! by hand (EEM = programming mode) and samples data out after each rising clock edge.
//!
//! A READ is the start bit, opcode 10 and six address bits, MSB first, each latched on a
//! rising edge of SK; the EEPROM then drives a dummy 0 and shifts the word out, MSB first,
//! one bit per further rising edge. Every step is a fixed number of port accesses, so a
//! missing or broken EEPROM reads as some value (0 or 0xFFFF, say), never as a hang.

use super::regs::{reg, Cr9346, EEPROM_ADDR_BITS, EEPROM_READ};
use crate::platform::Platform;

/// Read the 16-bit word at `address` (0..64).
pub fn read_word<P: Platform + ?Sized>(platform: &P, io: u16, address: u8) -> u16 {
    let port = io + reg::CR9346;
    let pins = |bits: Cr9346| platform.outb(port, (Cr9346::PROGRAM | bits).bits());
    let selected = Cr9346::EECS;
    pins(Cr9346::empty());
    pins(selected);
    let command = EEPROM_READ << EEPROM_ADDR_BITS | u16::from(address & 0x3F);
    for bit in (0..3 + EEPROM_ADDR_BITS).rev() {
        let di = if command >> bit & 1 != 0 {
            Cr9346::EEDI
        } else {
            Cr9346::empty()
        };
        pins(selected | di);
        pins(selected | di | Cr9346::EESK);
    }
    pins(selected);
    let mut word = 0u16;
    for _ in 0..16 {
        pins(selected | Cr9346::EESK);
        let out = Cr9346::from_bits_retain(platform.inb(port));
        word = word << 1 | u16::from(out.contains(Cr9346::EEDO));
        pins(selected);
    }
    // Deselect, and back to normal operation (EEM = 00).
    pins(Cr9346::empty());
    platform.outb(port, 0);
    word
}
