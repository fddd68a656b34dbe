//! The 82540EM's 64-word microwire EEPROM: MAC in words 0..2, IDs, and word 0x3F chosen so
//! that the sum of all 64 words is 0xBABA (the check every driver makes). Read through EERD
//! (at once: START gives DONE with the data) or bit by bit through EECD, as Linux's `e1000`
//! does on this chip (start bit, read opcode 10b, 6 address bits, then 16 data bits per word,
//! continuing into the next word while CS stays high).

use super::regs::Eecd;

pub const WORDS: usize = 64;
pub const CHECKSUM_WORD: usize = 0x3f;
pub const CHECKSUM_SUM: u16 = 0xbaba;

/// Microwire READ: the start bit and opcode 10b, as the top three of the nine bits shifted in.
const MICROWIRE_READ: u32 = 0b110;
const MICROWIRE_HEADER_BITS: u32 = 9;

#[derive(Clone)]
pub struct Eeprom {
    words: [u16; WORDS],
    /// EECD's driver-written pins (SK, CS, DI, REQ and the rest as written).
    pins: Eecd,
    bits_in: u32,
    value_in: u32,
    /// Bit position being shifted out (word * 16 + bit), once a READ header was taken.
    bit_out: Option<u32>,
}

impl Eeprom {
    pub fn new(mac: [u8; 6], device: u16, vendor: u16) -> Self {
        let mut words = [0u16; WORDS];
        for i in 0..3 {
            words[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
        }
        // Initialization control words and IDs at their 8254x positions (§5.6).
        words[0x0a] = 0x64c0;
        words[0x0b] = device;
        words[0x0c] = vendor;
        words[0x0d] = device;
        words[0x0e] = vendor;
        words[0x0f] = 0x3040;
        let sum = words[..CHECKSUM_WORD]
            .iter()
            .fold(0u16, |a, &w| a.wrapping_add(w));
        words[CHECKSUM_WORD] = CHECKSUM_SUM.wrapping_sub(sum);
        Self {
            words,
            pins: Eecd::empty(),
            bits_in: 0,
            value_in: 0,
            bit_out: None,
        }
    }

    /// Word `addr`; addresses beyond the part read 0 (the driver asked for more than is fitted).
    pub fn word(&self, addr: usize) -> u16 {
        self.words.get(addr).copied().unwrap_or(0)
    }

    pub fn words(&self) -> &[u16; WORDS] {
        &self.words
    }

    /// EECD as read: the pins as written, PRES, GNT when requested, DO from the shift state.
    pub fn eecd(&self) -> u32 {
        let mut v = self.pins.difference(Eecd::DO | Eecd::GNT) | Eecd::PRES;
        if self.pins.contains(Eecd::REQ) {
            v |= Eecd::GNT;
        }
        if self.data_out() {
            v |= Eecd::DO;
        }
        v.bits()
    }

    fn data_out(&self) -> bool {
        let Some(pos) = self.bit_out else {
            return false;
        };
        let word = self.word((pos / 16) as usize % WORDS);
        (word >> (15 - pos % 16)) & 1 != 0
    }

    /// EECD write: CS low ends a transfer; a rising SK shifts DI in (or, reading, nothing); a
    /// falling SK moves to the next output bit.
    pub fn write_eecd(&mut self, value: u32) {
        let new = Eecd::from_bits_retain(value);
        let old = self.pins;
        self.pins = new;
        if !new.contains(Eecd::CS) {
            self.bits_in = 0;
            self.value_in = 0;
            self.bit_out = None;
            return;
        }
        let rising = new.contains(Eecd::SK) && !old.contains(Eecd::SK);
        let falling = !new.contains(Eecd::SK) && old.contains(Eecd::SK);
        if falling {
            if let Some(pos) = &mut self.bit_out {
                *pos = pos.wrapping_add(1) % (WORDS as u32 * 16);
            }
            return;
        }
        if !rising || self.bit_out.is_some() {
            return;
        }
        self.value_in = (self.value_in << 1) | u32::from(new.contains(Eecd::DI));
        self.bits_in += 1;
        if self.bits_in == MICROWIRE_HEADER_BITS {
            if self.value_in >> 6 == MICROWIRE_READ {
                let addr = self.value_in & 0x3f;
                // The falling edge after the last address bit moves to the word's first bit.
                self.bit_out = Some((addr * 16).wrapping_sub(1) % (WORDS as u32 * 16));
            } else {
                // Not a read (write/erase are not modelled): ignore until CS drops.
                self.bits_in = 0;
                self.value_in = 0;
            }
        }
    }

    pub fn reset_pins(&mut self) {
        self.write_eecd(0);
    }
}
