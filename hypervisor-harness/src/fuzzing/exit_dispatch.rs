//! The exit dispatch (`vmm::dispatch`): port and MMIO exit records as KVM hands them over,
//! `rep ins/outs` included, fed to the machine's fixed devices at their real addresses (COM1,
//! isa-debug-exit, the PCI configuration ports with the host bridge and the exit-floor
//! function, the floor's two BARs).

use super::*;
use crate::devices::bus::{Bus, Claim};
use crate::devices::debug_exit::{DebugExit, ExitRequest, DEBUG_EXIT_LEN, DEBUG_EXIT_PORT};
use crate::devices::floor::{self, FloorFunction, FloorIo, FloorMmio, FloorStats, SharedFloor};
use crate::devices::pci::config::{CMD_IO, CMD_MEM, REG_COMMAND};
use crate::devices::pci::host_bridge::HostBridge;
use crate::devices::pci::{
    Bdf, PciConfigIo, CONFIG_ADDRESS_PORT, CONFIG_IO_LEN, IO_BAR_START, MMIO_BAR_START,
};
use crate::devices::serial::{LineTee, SerialDevice, COM1_BASE, COM1_LEN, MAX_LINE};
use crate::devices::{le_value, lock};
use crate::vmm::dispatch::{dispatch, IoExit};
use crate::vmm::exits::ExitCounters;
use std::sync::{Arc, Mutex};

/// Where the rig puts the floor's BARs (the first of each space, as `vmm` does).
const FLOOR_BAR0: u64 = IO_BAR_START;
const FLOOR_BAR1: u64 = MMIO_BAR_START;
/// The floor function's device number on bus 0 (after the host bridge).
const FLOOR_DEV: u32 = 1;
/// Most bytes in one exit's data area (KVM's is one page; more is guest nonsense we accept).
const MAX_DATA: usize = 8192;

/// What the serial line handed out, for the bounds checks.
#[derive(Default)]
struct SerialSeen {
    out_bytes: u64,
    lines: u64,
    longest_line: usize,
}

struct CountingOut(Arc<Mutex<SerialSeen>>);

impl std::io::Write for CountingOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).out_bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the floor's counters and interrupt should read, from the accesses that reached it.
#[derive(Default, Debug, PartialEq, Eq)]
struct FloorExpect {
    io_writes: u64,
    mmio_writes: u64,
    doorbells: u64,
    undecoded: u64,
}

struct Rig {
    pio: Bus,
    mmio: Bus,
    counters: Mutex<ExitCounters>,
    exits: u64,
    exit_req: ExitRequest,
    /// The first value written to the debug-exit port, as the device must have kept it.
    expect_exit: Option<u32>,
    floor: SharedFloor,
    floor_stats: Arc<FloorStats>,
    floor_irq: Arc<EdgeIrq>,
    expect_floor: FloorExpect,
    serial_seen: Arc<Mutex<SerialSeen>>,
    serial_bytes_in: u64,
}

impl Rig {
    fn new() -> Self {
        let serial_seen: Arc<Mutex<SerialSeen>> = Arc::default();
        let seen = serial_seen.clone();
        let tee = LineTee::new(
            Box::new(CountingOut(serial_seen.clone())),
            Box::new(move |line| {
                let mut s = lock(&seen);
                s.lines += 1;
                s.longest_line = s.longest_line.max(line.len());
            }),
        );
        let serial = SerialDevice::new(Arc::new(EdgeIrq::default()), tee);
        let exit_req = ExitRequest::default();
        let mut f = FloorFunction::new();
        let c = f.config_mut();
        // The layout is the rig's own constants, valid for the floor's BARs.
        c.set_bar_address(0, FLOOR_BAR0).expect("floor BAR0");
        c.set_bar_address(1, FLOOR_BAR1).expect("floor BAR1");
        c.enable(CMD_IO | CMD_MEM);
        let floor: SharedFloor = Arc::new(Mutex::new(f));
        let floor_stats = Arc::new(FloorStats::default());
        let floor_irq = Arc::new(EdgeIrq::default());
        let mut pci = PciConfigIo::new();
        pci.add(Bdf::new(0, 0, 0), Arc::new(Mutex::new(HostBridge::new())));
        pci.add(Bdf::new(0, FLOOR_DEV as u8, 0), floor.clone());
        let mut pio = Bus::new();
        let mut mmio = Bus::new();
        let placed = [
            pio.insert("com1", COM1_BASE, COM1_LEN, Arc::new(Mutex::new(serial))),
            pio.insert(
                "debug-exit",
                DEBUG_EXIT_PORT,
                DEBUG_EXIT_LEN,
                Arc::new(Mutex::new(DebugExit::new(exit_req.clone()))),
            ),
            pio.insert(
                "pci-config",
                CONFIG_ADDRESS_PORT,
                CONFIG_IO_LEN,
                Arc::new(Mutex::new(pci)),
            ),
            pio.insert(
                "floor-bar0",
                FLOOR_BAR0,
                floor::BAR0_SIZE,
                Arc::new(Mutex::new(FloorIo::new(
                    floor_irq.clone(),
                    floor_stats.clone(),
                    floor.clone(),
                ))),
            ),
            mmio.insert(
                "floor-bar1",
                FLOOR_BAR1,
                floor::BAR1_SIZE,
                Arc::new(Mutex::new(FloorMmio::new(
                    floor_stats.clone(),
                    floor.clone(),
                ))),
            ),
        ];
        for p in placed {
            p.expect("the rig's fixed layout");
        }
        Self {
            pio,
            mmio,
            counters: Mutex::default(),
            exits: 0,
            exit_req,
            expect_exit: None,
            floor,
            floor_stats,
            floor_irq,
            expect_floor: FloorExpect::default(),
            serial_seen,
            serial_bytes_in: 0,
        }
    }

    fn decode(&self) -> (bool, bool) {
        let f = lock(&self.floor);
        (f.io_decode(), f.mem_decode())
    }

    /// The range an access of `len` bytes at `addr` lands in, by name.
    fn target(bus: &Bus, addr: u64, len: usize) -> Option<Arc<str>> {
        bus.find(addr, len).map(|r| r.name.clone())
    }

    fn claim_name(c: &Claim) -> Option<Arc<str>> {
        match c {
            Claim::Device { name, .. } => Some(name.clone()),
            Claim::Unclaimed => None,
        }
    }

    /// One port exit: predicts what each element does, dispatches, checks.
    fn port(&mut self, port: u16, size: u8, data: &mut [u8], write: bool) {
        let (io_on, _) = self.decode();
        let whole = matches!(size, 1 | 2 | 4);
        let elements = if whole { data.len() / size as usize } else { 0 };
        let size_bytes = size as usize;
        let first = (elements > 0).then(|| Self::target(&self.pio, port as u64, size_bytes));
        let names = Self::target(&self.pio, port as u64, size_bytes);
        // Every element goes to the same port, so to the same range.
        let n = elements as u64;
        match names.as_deref() {
            Some("floor-bar0") if n > 0 => {
                if !io_on {
                    self.expect_floor.undecoded += n;
                } else if write {
                    self.expect_floor.io_writes += n;
                    if port as u64 - FLOOR_BAR0 == floor::IO_DOORBELL {
                        self.expect_floor.doorbells += n;
                    }
                }
            }
            Some("debug-exit") if write && n > 0 && port as u64 == DEBUG_EXIT_PORT => {
                if self.expect_exit.is_none() {
                    self.expect_exit = Some(le_value(&data[..size_bytes]) as u32);
                }
            }
            Some("com1") if write => self.serial_bytes_in += n * size as u64,
            _ => {}
        }
        if !write {
            data.fill(0x5a);
        }
        let claim = if write {
            dispatch(
                &mut self.pio,
                &mut self.mmio,
                &self.counters,
                IoExit::PortOut { port, size, data },
            )
        } else {
            dispatch(
                &mut self.pio,
                &mut self.mmio,
                &self.counters,
                IoExit::PortIn {
                    port,
                    size,
                    data: &mut *data,
                },
            )
        };
        self.exits += 1;
        assert_eq!(
            Self::claim_name(&claim),
            first.flatten(),
            "claim of the exit"
        );
        if write {
            return;
        }
        let (used, rest) = data.split_at(elements * if whole { size_bytes } else { 0 });
        assert!(rest.iter().all(|&b| b == 0xff), "bytes beyond the elements");
        let expect = match names.as_deref() {
            None => Some(0xff),
            Some("debug-exit") => Some(0),
            Some("floor-bar0") => Some(if io_on { 0 } else { 0xff }),
            _ => None,
        };
        if let Some(v) = expect {
            assert!(
                used.iter().all(|&b| b == v),
                "port {port:#x} read {used:02x?}"
            );
        }
    }

    fn mmio(&mut self, addr: u64, data: &mut [u8], write: bool) {
        let (_, mem_on) = self.decode();
        let name = Self::target(&self.mmio, addr, data.len());
        if name.as_deref() == Some("floor-bar1") {
            if !mem_on {
                self.expect_floor.undecoded += 1;
            } else if write {
                self.expect_floor.mmio_writes += 1;
            }
        }
        if !write {
            data.fill(0x5a);
        }
        let claim = if write {
            dispatch(
                &mut self.pio,
                &mut self.mmio,
                &self.counters,
                IoExit::MmioWrite { addr, data },
            )
        } else {
            dispatch(
                &mut self.pio,
                &mut self.mmio,
                &self.counters,
                IoExit::MmioRead {
                    addr,
                    data: &mut *data,
                },
            )
        };
        self.exits += 1;
        assert_eq!(Self::claim_name(&claim), name, "claim of the MMIO exit");
        if !write {
            let expect = match name.as_deref() {
                None => 0xff,
                _ => u8::from(!mem_on) * 0xff,
            };
            assert!(data.iter().all(|&b| b == expect), "MMIO read {data:02x?}");
        }
    }

    fn check(&self) {
        assert_eq!(self.exit_req.get(), self.expect_exit, "debug-exit value");
        let s = &self.floor_stats;
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let got = FloorExpect {
            io_writes: ld(&s.io_writes),
            mmio_writes: ld(&s.mmio_writes),
            doorbells: ld(&s.doorbells),
            undecoded: ld(&s.undecoded),
        };
        assert_eq!(got, self.expect_floor, "floor counters");
        assert_eq!(self.floor_irq.0.load(Ordering::Relaxed), got.doorbells);
        let c = lock(&self.counters);
        assert_eq!(c.total, self.exits, "every exit counted once");
        assert_eq!(c.by_device.values().sum::<u64>(), c.total);
        assert_eq!(
            c.by_addr.values().map(|(_, n)| n).sum::<u64>()
                + c.mmio_addr_overflow
                + c.pio_addr_overflow,
            c.total
        );
        let seen = lock(&self.serial_seen);
        assert!(seen.longest_line <= MAX_LINE, "serial line unbounded");
        assert!(
            seen.out_bytes <= self.serial_bytes_in,
            "serial output invented"
        );
        assert!(seen.lines <= seen.out_bytes);
    }
}

/// A port: mostly at or around one of the rig's devices, else anywhere.
fn port(r: &mut Reader) -> u16 {
    let near = |base: u64, r: &mut Reader| (base - 2 + (r.u8() % 20) as u64) as u16;
    match r.u8() % 8 {
        0 | 1 => near(COM1_BASE, r),
        2 => near(DEBUG_EXIT_PORT, r),
        3 => near(CONFIG_ADDRESS_PORT, r),
        4 | 5 => near(FLOOR_BAR0, r),
        6 => u16::MAX - r.u8() as u16 % 8,
        _ => r.u16(),
    }
}

/// An element size: mostly 1, 2 or 4, sometimes one no port access has.
fn size(r: &mut Reader) -> u8 {
    match r.u8() % 8 {
        0 | 1 => 1,
        2 | 3 => 2,
        4 | 5 => 4,
        6 => [0, 3, 8][r.u8() as usize % 3],
        _ => r.u8(),
    }
}

/// The data area's length: `count` elements (a plain access, a `rep` of a few, or a long one)
/// and sometimes a stray byte or three that belong to no element.
fn data_len(r: &mut Reader, size: u8) -> usize {
    let count = match r.u8() % 8 {
        0..=3 => 1,
        4 | 5 => 1 + r.u8() as usize % 16,
        6 => r.u16() as usize % 2048,
        _ => 0,
    };
    let stray = match r.u8() % 8 {
        7 => 1 + r.u8() as usize % 3,
        _ => 0,
    };
    (count * size.max(1) as usize + stray).min(MAX_DATA)
}

/// `len` bytes from the input, the taken ones repeated to fill it (so that a short input can
/// still write a long serial line).
fn data(r: &mut Reader, len: usize) -> Vec<u8> {
    let taken = r.bytes(len.min(64));
    if taken.is_empty() {
        return vec![0; len];
    }
    taken.iter().copied().cycle().take(len).collect()
}

fn mmio_addr(r: &mut Reader) -> u64 {
    match r.u8() % 6 {
        0 | 1 => FLOOR_BAR1 + r.u16() as u64 % (floor::BAR1_SIZE + 16),
        2 => FLOOR_BAR1 + floor::MMIO_IOEVENTFD,
        3 => FLOOR_BAR1 - 1 - r.u8() as u64 % 8,
        4 => u64::MAX - r.u8() as u64,
        _ => r.u64(),
    }
}

/// A program of exit records: port writes and reads (element size, count, stray bytes), MMIO
/// writes and reads of any width, and command-register writes to the floor through the PCI
/// configuration ports (so that its decode goes on and off). Checks after every exit that
/// unclaimed and undecoded reads give all-ones, the floor counted exactly the accesses that
/// reached it, the debug-exit port kept the first value, every exit was counted once, and the
/// serial line stayed bounded.
pub fn exit_dispatch(input: &[u8]) {
    run_exit_dispatch(input);
}

/// What one input did (for the seed corpus's checks).
#[derive(Debug, Default)]
pub struct ExitDispatchSummary {
    /// Exits claimed by each of the rig's ranges, by range name.
    pub claimed: std::collections::BTreeMap<String, u64>,
    /// Bytes the serial line handed out.
    pub serial_out: u64,
}

/// [`exit_dispatch()`], returning what happened.
pub fn run_exit_dispatch(input: &[u8]) -> ExitDispatchSummary {
    let mut r = Reader(input);
    let mut rig = Rig::new();
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 6 {
            op @ 0..=2 => {
                let (p, s) = (port(&mut r), size(&mut r));
                let len = data_len(&mut r, s);
                let mut d = if op == 2 {
                    vec![0; len]
                } else {
                    data(&mut r, len)
                };
                rig.port(p, s, &mut d, op != 2);
            }
            op @ (3 | 4) => {
                let addr = mmio_addr(&mut r);
                let width = r.width();
                let mut d = r.value(width);
                rig.mmio(addr, &mut d, op == 3);
            }
            _ => {
                let select = 0x8000_0000u32 | FLOOR_DEV << 11 | REG_COMMAND as u32;
                let cmd = r.u16() & (CMD_IO | CMD_MEM | 0x4);
                let port = CONFIG_ADDRESS_PORT as u16;
                rig.port(port, 4, &mut select.to_le_bytes(), true);
                rig.port(port + 4, 2, &mut cmd.to_le_bytes(), true);
                assert_eq!(rig.decode(), (cmd & CMD_IO != 0, cmd & CMD_MEM != 0));
            }
        }
        rig.check();
    }
    rig.check();
    let mut summary = ExitDispatchSummary {
        serial_out: lock(&rig.serial_seen).out_bytes,
        ..Default::default()
    };
    for ((_, dev, _), n) in &lock(&rig.counters).by_device {
        *summary.claimed.entry(dev.clone()).or_default() += n;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::test_util::{random, P};

    #[test]
    fn exit_dispatch_random_programs() {
        random(0x5eed_0008, 3000, 600, &[], exit_dispatch);
    }

    #[test]
    fn rep_outsb_to_debug_exit_keeps_the_first_element() {
        // op 0 (port out), port: debug-exit + 0, size 1, count 1 + 3, no stray, data.
        let p = P::default().op(&[0, 2, 2, 0, 4, 3, 0, 0x33, 0x44, 0x55, 0x66]);
        exit_dispatch(&p.0);
        let mut rig = Rig::new();
        rig.port(0xf4, 1, &mut [0x33, 0x44], true);
        assert_eq!(rig.exit_req.get(), Some(0x33));
        rig.check();
    }

    #[test]
    fn floor_doorbell_by_rep_outsw_and_decode_off() {
        let mut rig = Rig::new();
        let bell = (FLOOR_BAR0 + floor::IO_DOORBELL) as u16;
        rig.port(bell, 2, &mut [1, 0, 1, 0, 1], true);
        assert_eq!(rig.floor_irq.0.load(Ordering::Relaxed), 2);
        rig.check();
        // Decode off through the config ports: the doorbell is dropped, reads are all-ones.
        let select = 0x8000_0000u32 | FLOOR_DEV << 11 | REG_COMMAND as u32;
        rig.port(0xcf8, 4, &mut select.to_le_bytes(), true);
        rig.port(0xcfc, 2, &mut [0, 0], true);
        rig.port(bell, 1, &mut [1], true);
        let mut b = [0u8; 4];
        rig.port(bell, 4, &mut b, false);
        assert_eq!(b, [0xff; 4]);
        rig.mmio(FLOOR_BAR1, &mut [0; 8], false);
        assert_eq!(rig.floor_irq.0.load(Ordering::Relaxed), 2);
        rig.check();
    }
}
