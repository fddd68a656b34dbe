//! The exit-floor device (`devices/floor.rs`): its PCI function and both BARs.

use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::floor::{self, FloorFunction, FloorIo, FloorMmio, FloorStats, SharedFloor};
use crate::devices::lock;
use crate::devices::pci::config::{CMD_IO, CMD_MEM};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// A config-space offset: mostly the header (command, BARs, interrupt), else anywhere.
fn config_offset(r: &mut Reader) -> u64 {
    match r.u8() % 4 {
        0 => 4,
        1 => r.u8() as u64 % 0x40,
        2 => r.u8() as u64,
        _ => r.u64(),
    }
}

/// An offset into a BAR: a register, anywhere in it, just past it, or anywhere.
fn bar_offset(r: &mut Reader, size: u64, registers: &[u64]) -> u64 {
    match r.u8() % 4 {
        0 => registers[r.u8() as usize % registers.len()],
        1 => r.u16() as u64 % size,
        2 => size + r.u8() as u64 % 8,
        _ => r.u64(),
    }
}

/// A program of config-space reads and writes (the command register's decode bits, BAR
/// sizing and reprogramming), and reads and writes of any width and offset in BAR0 (ports)
/// and BAR1 (MMIO). Checks after each that the identity, interrupt pin and BAR type bits hold,
/// the capability list is sane, reads give zeros with decode on and all-ones with it off, and
/// the counters and interrupt count exactly the accesses the decode state let through (a
/// doorbell is a decoded BAR0 write at +8).
pub fn floor(input: &[u8]) {
    run_floor(input);
}

/// What a [`floor()`] run did (decoded writes to each BAR, doorbells rung).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FloorSummary {
    pub io_writes: u64,
    pub mmio_writes: u64,
    pub doorbells: u64,
}

/// [`floor()`], returning what happened.
pub fn run_floor(input: &[u8]) -> FloorSummary {
    let mut r = Reader(input);
    let function: SharedFloor = Arc::new(Mutex::new(FloorFunction::new()));
    {
        let mut f = lock(&function);
        let c = f.config_mut();
        // Where `vmm` puts them on a machine with no other PCI device.
        c.set_bar_address(0, crate::devices::pci::IO_BAR_START)
            .expect("floor BAR0");
        c.set_bar_address(1, VIRTIO_BAR).expect("floor BAR1");
        if r.u8() % 4 != 0 {
            c.enable(CMD_IO | CMD_MEM);
        }
    }
    let irq = Arc::new(EdgeIrq::default());
    let stats = Arc::new(FloorStats::default());
    let mut io = FloorIo::new(irq.clone(), stats.clone(), function.clone());
    let mut mmio = FloorMmio::new(stats.clone(), function.clone());
    let (mut io_writes, mut mmio_writes, mut doorbells, mut undecoded) = (0, 0, 0, 0);
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let (io_on, mem_on) = {
            let f = lock(&function);
            (f.io_decode(), f.mem_decode())
        };
        match r.u8() % 6 {
            0 => {
                let off = config_offset(&mut r);
                let width = r.width();
                let v = r.value(width);
                lock(&function).config_write(off, &v);
            }
            1 => {
                let off = config_offset(&mut r);
                let mut b = vec![0u8; r.width()];
                lock(&function).config_read(off, &mut b);
            }
            op @ (2 | 3) => {
                let registers = [floor::IO_USERSPACE, floor::IO_IOEVENTFD, floor::IO_DOORBELL];
                let off = bar_offset(&mut r, floor::BAR0_SIZE, &registers);
                let width = r.width();
                if !io_on {
                    undecoded += 1;
                }
                if op == 2 {
                    let v = r.value(width);
                    io.write(off, &v);
                    if io_on {
                        io_writes += 1;
                        doorbells += u64::from(off == floor::IO_DOORBELL);
                    }
                } else {
                    let mut b = vec![0x5a; width];
                    io.read(off, &mut b);
                    let want = if io_on { 0 } else { 0xff };
                    assert!(b.iter().all(|&x| x == want), "BAR0 read {b:02x?}");
                }
            }
            op => {
                let registers = [floor::MMIO_USERSPACE, floor::MMIO_IOEVENTFD];
                let off = bar_offset(&mut r, floor::BAR1_SIZE, &registers);
                let width = r.width();
                if !mem_on {
                    undecoded += 1;
                }
                if op == 4 {
                    let v = r.value(width);
                    mmio.write(off, &v);
                    mmio_writes += u64::from(mem_on);
                } else {
                    let mut b = vec![0x5a; width];
                    mmio.read(off, &mut b);
                    let want = if mem_on { 0 } else { 0xff };
                    assert!(b.iter().all(|&x| x == want), "BAR1 read {b:02x?}");
                }
            }
        }
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(ld(&stats.io_writes), io_writes, "BAR0 writes");
        assert_eq!(ld(&stats.mmio_writes), mmio_writes, "BAR1 writes");
        assert_eq!(ld(&stats.doorbells), doorbells, "doorbells");
        assert_eq!(ld(&stats.undecoded), undecoded, "undecoded accesses");
        assert_eq!(
            irq.0.load(Ordering::Relaxed),
            doorbells,
            "one interrupt per doorbell"
        );
        let mut f = lock(&function);
        let c = f.config();
        assert_eq!(c.read_u32(0), 0xf100_1234, "identity");
        assert_eq!(c.read_u32(8) >> 8, 0xff_00_00, "class");
        assert_eq!((c.read_u32(0x3c) >> 8) & 0xff, 1, "interrupt pin INTA");
        check_bars(c);
        capabilities(&mut *f);
    }
    FloorSummary {
        io_writes,
        mmio_writes,
        doorbells,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::test_util::{random, P};

    #[test]
    fn floor_random_programs() {
        random(0x5eed_000b, 3000, 300, &[], floor);
    }

    #[test]
    fn doorbell_then_decode_off() {
        // Decode on; a 4-byte doorbell; command 0 (config write at 4, 2 bytes); the doorbell
        // again (dropped, counted as undecoded); a BAR1 read (all-ones).
        let p = P::default()
            .op(&[1, 2, 0, 2, 2, 1, 0, 0, 0])
            .op(&[0, 0, 1, 0, 0])
            .op(&[2, 0, 2, 2, 1, 0, 0, 0])
            .op(&[5, 1, 0, 0, 2]);
        floor(&p.0);
    }
}
