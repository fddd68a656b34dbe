//! The 93C46 serial EEPROM (64 words of 16 bits) behind 9346CR, spoken to over microwire when
//! 9346CR's mode is "programming": the driver drives CS, SK and DI and reads DO.
//!
//! A command is a start bit (1; zeros before it are ignored), a 2-bit opcode and 6 address
//! bits, shifted in MSB first on SK's rising edges while CS is high:
//! - READ (10): DO gives a dummy 0, then each rising edge the next data bit, MSB first,
//!   running on into the next word while CS stays high;
//! - WRITE (01) and ERASE (11): 16 data bits follow (WRITE), then the word is written (ERASE:
//!   0xFFFF) if writes are enabled; DO reads 1 (ready) until CS drops;
//! - 00 with the address's top two bits: EWEN (11), EWDS (00), ERAL (10: all 0xFFFF), WRAL
//!   (01: 16 data bits to every word).
//!
//! Writes start disabled, as at power-on. Anything else (a CS drop mid-command, stray
//! clocks) returns the part to waiting for a start bit; nothing the guest clocks in panics.
//!
//! The contents as the real part and QEMU lay them out: word 0 the ID 0x8129, then vendor,
//! device, subsystem vendor and subsystem ids, MIN_GNT/MAX_LAT, and the MAC in words 7..=9.

pub const WORDS: usize = 64;
pub const EEPROM_ID: u16 = 0x8129;
pub const MAC_WORD: usize = 7;

const ADDR_BITS: u32 = 6;
/// A command after its start bit: opcode and address.
const COMMAND_BITS: u32 = 2 + ADDR_BITS;
const DATA_BITS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// CS high, waiting for the start bit.
    Start,
    /// Shifting in opcode and address: bits so far, value so far.
    Command { bits: u32, value: u32 },
    /// Shifting out: the current word's address and how many of its bits are out.
    Read { addr: usize, bit: u32 },
    /// Shifting in data for a WRITE (`Some(addr)`) or WRAL (`None`).
    Data {
        target: Option<usize>,
        bits: u32,
        value: u32,
    },
    /// A command finished; DO reads ready until CS drops.
    Done,
}

#[derive(Debug, Clone)]
pub struct Eeprom {
    words: [u16; WORDS],
    write_enabled: bool,
    state: State,
    sk: bool,
    data_out: bool,
    /// WRITE, ERASE, ERAL and WRAL commands refused because writes were disabled.
    pub refused_writes: u64,
}

impl Eeprom {
    pub fn new(mac: [u8; 6], ids: [u16; 4]) -> Self {
        let mut words = [0u16; WORDS];
        words[0] = EEPROM_ID;
        words[1..5].copy_from_slice(&ids);
        // MIN_GNT 0x20, MAX_LAT 0x40.
        words[5] = 0x4020;
        for i in 0..3 {
            words[MAC_WORD + i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
        }
        Self {
            words,
            write_enabled: false,
            state: State::Start,
            sk: false,
            data_out: false,
            refused_writes: 0,
        }
    }

    pub fn word(&self, addr: usize) -> u16 {
        self.words.get(addr).copied().unwrap_or(0)
    }

    /// The MAC in words 7..=9 (what an auto-load puts in IDR0-5).
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        for i in 0..3 {
            mac[2 * i..2 * i + 2].copy_from_slice(&self.word(MAC_WORD + i).to_le_bytes());
        }
        mac
    }

    /// DO as the driver reads it.
    pub fn data_out(&self) -> bool {
        self.data_out
    }

    /// The pins the driver drives, at each 9346CR write in programming mode.
    pub fn set_pins(&mut self, cs: bool, sk: bool, di: bool) {
        let rising = sk && !self.sk;
        self.sk = sk;
        if !cs {
            self.state = State::Start;
            self.data_out = false;
            return;
        }
        if !rising {
            return;
        }
        self.state = match self.state {
            State::Start if di => State::Command { bits: 0, value: 0 },
            State::Start => State::Start,
            State::Command { bits, value } => {
                let value = value << 1 | u32::from(di);
                if bits + 1 < COMMAND_BITS {
                    State::Command {
                        bits: bits + 1,
                        value,
                    }
                } else {
                    self.command(value)
                }
            }
            State::Read { addr, bit } => {
                let word = self.word(addr);
                self.data_out = word >> (15 - bit) & 1 != 0;
                if bit + 1 == DATA_BITS {
                    State::Read {
                        addr: (addr + 1) % WORDS,
                        bit: 0,
                    }
                } else {
                    State::Read { addr, bit: bit + 1 }
                }
            }
            State::Data {
                target,
                bits,
                value,
            } => {
                let value = value << 1 | u32::from(di);
                if bits + 1 < DATA_BITS {
                    State::Data {
                        target,
                        bits: bits + 1,
                        value,
                    }
                } else {
                    self.store(target, value as u16);
                    self.data_out = true;
                    State::Done
                }
            }
            State::Done => State::Done,
        };
    }

    fn command(&mut self, value: u32) -> State {
        let opcode = value >> ADDR_BITS;
        let addr = (value & ((1 << ADDR_BITS) - 1)) as usize;
        match opcode {
            0b10 => {
                // The dummy zero before the data.
                self.data_out = false;
                State::Read { addr, bit: 0 }
            }
            0b01 => State::Data {
                target: Some(addr),
                bits: 0,
                value: 0,
            },
            0b11 => {
                self.store(Some(addr), 0xffff);
                self.data_out = true;
                State::Done
            }
            _ => match addr >> 4 {
                0b11 => {
                    self.write_enabled = true;
                    State::Done
                }
                0b00 => {
                    self.write_enabled = false;
                    State::Done
                }
                0b10 => {
                    if self.write_enabled {
                        self.words = [0xffff; WORDS];
                    } else {
                        self.refused_writes += 1;
                    }
                    self.data_out = true;
                    State::Done
                }
                _ => State::Data {
                    target: None,
                    bits: 0,
                    value: 0,
                },
            },
        }
    }

    /// Write one word (`None`: all of them), if writes are enabled.
    fn store(&mut self, target: Option<usize>, value: u16) {
        if !self.write_enabled {
            self.refused_writes += 1;
            return;
        }
        match target {
            Some(addr) => {
                if let Some(w) = self.words.get_mut(addr) {
                    *w = value;
                }
            }
            None => self.words = [value; WORDS],
        }
    }

    /// Leaving programming mode ends any command.
    pub fn deselect(&mut self) {
        self.set_pins(false, false, false);
    }
}
