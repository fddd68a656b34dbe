//! COM1 (`devices/serial.rs`: vm-superio's 16550 behind our line tee).

use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::lock;
use crate::devices::serial::{LineTee, SerialDevice, COM1_LEN};

/// The line buffer's size in this target: the tee's cut is the same code at any size, and at
/// the production 64 KiB every burst past it cost 65 K register writes (48 inputs a second).
pub const MAX_LINE: usize = 64;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

const DLAB: u8 = 0x80;
const LOOPBACK: u8 = 0x10;
/// The 16550's receive FIFO, which loopback fills.
const FIFO: usize = 64;
const LSR_DATA_READY: u8 = 0x01;
/// Transmitter empty and idle: always, since output is written at once.
const LSR_TX_EMPTY: u8 = 0x60;

/// What left the device: bytes on the output, and each line the callback got (its length).
#[derive(Default)]
struct Seen {
    out: Vec<u8>,
    lines: Vec<usize>,
}

struct Out(Arc<Mutex<Seen>>);

impl std::io::Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The registers as the guest programmed them, which every read is checked against.
struct Shadow {
    lcr: u8,
    mcr: u8,
    scr: u8,
    ier: u8,
    divisor: [u8; 2],
    fifo: VecDeque<u8>,
    /// Every byte the model should have written out, and where the current line began.
    out: Vec<u8>,
}

impl Shadow {
    fn write(&mut self, off: u64, v: u8) {
        let dlab = self.lcr & DLAB != 0;
        match off {
            0 | 1 if dlab => self.divisor[off as usize] = v,
            0 if self.mcr & LOOPBACK != 0 => {
                if self.fifo.len() < FIFO {
                    self.fifo.push_back(v);
                }
            }
            0 => self.out.push(v),
            1 => self.ier = v & 0x0f,
            3 => self.lcr = v,
            4 => self.mcr = v,
            7 => self.scr = v,
            _ => {}
        }
    }

    /// What a read of `off` must give (`None`: a register the check leaves alone).
    fn read(&mut self, off: u64) -> Option<u8> {
        let dlab = self.lcr & DLAB != 0;
        match off {
            0 | 1 if dlab => Some(self.divisor[off as usize]),
            0 => Some(self.fifo.pop_front().unwrap_or(0)),
            1 => Some(self.ier),
            3 => Some(self.lcr),
            4 => Some(self.mcr),
            5 => Some(LSR_TX_EMPTY | (u8::from(!self.fifo.is_empty()) * LSR_DATA_READY)),
            7 => Some(self.scr),
            o if o >= COM1_LEN => Some(0xff),
            // IIR (2) clears on read; MSR (6) follows MCR in loopback.
            _ => None,
        }
    }
}

/// An offset: mostly a register, else just past the block or anywhere.
fn offset(r: &mut Reader) -> u64 {
    match r.u8() % 8 {
        0..=5 => r.u8() as u64 % COM1_LEN,
        6 => COM1_LEN + r.u8() as u64 % 4,
        _ => r.u64(),
    }
}

/// A program of register reads and writes of any width and offset (a multi-byte access is
/// one byte per register, in order), and bursts of output bytes long enough to overflow the
/// line buffer. Checks every read against a shadow of the registers (divisor latch, IER's
/// valid bits, LCR, MCR, scratch, the loopback FIFO and LSR's data-ready bit), and at the end
/// that the output is exactly the bytes transmitted outside loopback, that each line reached
/// the callback, cut at [`MAX_LINE`].
pub fn serial(input: &[u8]) {
    let mut r = Reader(input);
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let lines = seen.clone();
    let tee = LineTee::with_max_line(
        Box::new(Out(seen.clone())),
        Box::new(move |line| lock(&lines).lines.push(line.len())),
        MAX_LINE,
    );
    let irq = Arc::new(EdgeIrq::default());
    let mut dev = SerialDevice::new(irq.clone(), tee);
    let mut shadow = Shadow {
        lcr: 0x03,
        mcr: 0x08,
        scr: 0,
        ier: 0,
        divisor: [0x0c, 0],
        fifo: VecDeque::new(),
        out: Vec::new(),
    };
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 4 {
            0 | 1 => {
                let off = offset(&mut r);
                let width = r.width();
                let v = r.value(width);
                dev.write(off, &v);
                for (i, &b) in v.iter().enumerate() {
                    shadow.write(off.saturating_add(i as u64), b);
                }
            }
            2 => {
                let off = offset(&mut r);
                let mut b = vec![0x5a; r.width()];
                dev.read(off, &mut b);
                for (i, &got) in b.iter().enumerate() {
                    let at = off.saturating_add(i as u64);
                    if let Some(want) = shadow.read(at) {
                        assert_eq!(got, want, "register {at:#x}");
                    }
                }
            }
            _ => {
                // A burst as `rep outsb` to THR makes it: under 32 bytes of a short pattern
                // (with line ends in it, perhaps; three without fill the line buffer), or, on
                // a two-byte key, more than a line buffer's worth. Bursts of up to 255 bytes
                // made the target write 12 K bytes an input.
                let n = match r.u16() {
                    0xffff => MAX_LINE + r.u16() as usize % 1024,
                    k => k as usize % 32,
                };
                let len = 1 + r.u8() as usize % 8;
                let pattern = r.value(len);
                for &b in pattern.iter().cycle().take(n) {
                    dev.write(0, &[b]);
                    shadow.write(0, b);
                }
            }
        }
    }
    dev.finish();
    let seen = lock(&seen);
    assert_eq!(
        seen.out, shadow.out,
        "output is exactly what was transmitted"
    );
    // The callback gets each line's first MAX_LINE bytes as lossy UTF-8 without a trailing `\r`.
    let mut want_lines: Vec<usize> = shadow
        .out
        .split(|&b| b == b'\n')
        .map(|l| {
            let kept = String::from_utf8_lossy(&l[..l.len().min(MAX_LINE)]);
            kept.trim_end_matches('\r').len()
        })
        .collect();
    // A last line without its newline is flushed at `finish` only if it has bytes.
    if shadow.out.last().is_none_or(|&b| b == b'\n') {
        want_lines.pop();
    }
    assert_eq!(seen.lines, want_lines, "the lines the callback got");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::test_util::{random, P};

    #[test]
    fn serial_random_programs() {
        random(0x5eed_0009, 3000, 300, &[], serial);
    }

    #[test]
    fn loopback_divisor_and_a_line_longer_than_the_buffer() {
        // MCR loopback, two bytes through THR, read them back and LSR; DLAB and the divisor.
        let p = P::default()
            .op(&[0, 0, 4, 0, 0x18])
            .op(&[0, 0, 0, 0, b'a', 0, 0, 0, 0, b'b'])
            .op(&[2, 0, 5, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 0, 5, 0])
            .op(&[0, 0, 3, 0, 0x80, 0, 0, 0, 1, 0x12, 0x34, 2, 0, 0, 1])
            .op(&[0, 0, 3, 0, 0x03, 0, 0, 4, 0, 0x08]);
        serial(&p.0);
        // MAX_LINE + 0x100 bytes of 'x', then a newline: one line, cut to MAX_LINE.
        let p = P::default()
            .op(&[3, 0xff, 0xff, 0, 1, 0, b'x'])
            .op(&[3, 1, 0, 0, b'\n']);
        serial(&p.0);
    }
}
