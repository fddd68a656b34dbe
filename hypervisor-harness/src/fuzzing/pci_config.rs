//! PCI configuration mechanism #1 over every kind of function.

use super::*;
use crate::devices::bus::Bus;
use crate::devices::floor::FloorFunction;
use crate::devices::ide::piix::{self, PiixFunction, PiixIde};
use crate::devices::pci::config::{PciConfig, CMD_IO, CMD_MEM, REG_COMMAND};
use crate::devices::pci::host_bridge::HostBridge;
use crate::devices::pci::msix::{self};
use crate::devices::pci::{Bdf, PciConfigIo, PciFunction, SharedFunction};
use crate::devices::virtio::test_util::InertDevice;
use crate::devices::virtio::transport_pci::{self as tp, VirtioPciDevice};
use crate::devices::virtio::Memory;
use crate::devices::{lock, Interrupt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// A config space built from the input through the firmware-side API.
struct RawFunction(PciConfig);

impl PciFunction for RawFunction {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data)
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data)
    }
}

fn raw_function(r: &mut Reader) -> PciConfig {
    let mut c = PciConfig::new(r.u16(), r.u16(), r.u8(), r.u8(), r.u8());
    c.set_interrupt(r.u8(), r.u8());
    let size = |r: &mut Reader| match r.u8() {
        b if b < 64 => 1u64 << b,
        _ => r.u64(),
    };
    for _ in 0..r.u8() % 8 {
        let idx = r.u8() as usize % 8;
        // Errors are the API's answer to a bad layout; they must not panic.
        let _ = match r.u8() % 5 {
            0 => c.add_io_bar(idx, size(r)),
            1 => c.add_mem32_bar(idx, size(r), r.u8() & 1 != 0),
            2 => c.add_mem64_bar(idx, size(r), r.u8() & 1 != 0),
            3 => {
                let id = r.u8();
                let n = r.u8() as usize % 80;
                let body = r.bytes(n).to_vec();
                let m = r.u8() as usize % 8;
                c.add_capability(id, &body, r.bytes(m)).map(|_| ())
            }
            _ => {
                let addr = if r.u8() & 1 == 0 {
                    (r.u32() as u64) << 12
                } else {
                    r.u64()
                };
                c.set_bar_address(idx, addr)
            }
        };
    }
    c
}

/// Opcodes of [`pci_config()`] programs (the opcode byte is taken modulo 5).
pub mod pop {
    pub const ADDRESS: u8 = 0;
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const DIRECT_WRITE: u8 = 3;
    pub const DIRECT_READ: u8 = 4;
}

fn share(f: impl PciFunction + 'static) -> SharedFunction {
    Arc::new(Mutex::new(f))
}

enum Function {
    Host,
    Floor(Arc<Mutex<FloorFunction>>),
    Virtio(Arc<Mutex<VirtioPciDevice>>, Arc<VirtioIrq>),
    Ide(Arc<Mutex<PiixIde<Memory>>>),
    Raw(Arc<Mutex<RawFunction>>),
}

struct Identity {
    words: [u32; 4],
    caps: Vec<(u8, u8)>,
}

fn identity(f: &mut dyn PciFunction) -> Identity {
    let mut words = [0u32; 4];
    for (i, w) in [0u64, 8, 0x2c, 0x0c].into_iter().enumerate() {
        let mut b = [0u8; 4];
        f.config_read(w, &mut b);
        words[i] = u32::from_le_bytes(b);
    }
    // Only the header type byte of dword 0x0c is read-only.
    words[3] &= 0x00ff_0000;
    let caps = capabilities(f);
    Identity { words, caps }
}

fn check_function(f: &Function, shared: &SharedFunction, before: &Identity) {
    let now = identity(&mut *lock(shared));
    assert_eq!(now.words, before.words, "identity registers changed");
    assert_eq!(now.caps, before.caps, "capability list changed");
    let mut cmd = [0u8; 2];
    lock(shared).config_read(REG_COMMAND as u64, &mut cmd);
    assert_eq!(
        u16::from_le_bytes(cmd) & !0x0547,
        0,
        "read-only command bits"
    );
    match f {
        Function::Host => {}
        Function::Floor(x) => check_bars(lock(x).config()),
        Function::Ide(x) => check_bars(lock(x).config()),
        Function::Raw(x) => check_bars(&lock(x).0),
        Function::Virtio(x, irq) => {
            let d = lock(x);
            check_bars(d.config());
            let (p, _) = before
                .caps
                .iter()
                .find(|c| c.1 == msix::CAP_ID)
                .copied()
                .expect("MSI-X capability");
            let mut ctrl = [0u8; 2];
            d.config().read(p as u64 + 2, &mut ctrl);
            let ctrl = u16::from_le_bytes(ctrl);
            assert_eq!(d.msix().enabled(), ctrl & msix::CTRL_ENABLE != 0);
            assert_eq!(
                d.msix().function_masked(),
                ctrl & msix::CTRL_FUNCTION_MASK != 0
            );
            assert_eq!(ctrl & 0x7ff, d.msix().vectors() - 1, "table size changed");
            assert!(!irq.bad_vector.load(Ordering::Relaxed));
        }
    }
}

/// PCI configuration space through ports 0xCF8-0xCFF, with a host bridge, the floor device, a
/// virtio-pci function, the PIIX IDE function and a function whose layout comes from the input.
/// Operations: [`pop`].
pub fn pci_config(data: &[u8]) {
    let mut r = Reader(data);
    let mem = new_memory(None);
    let raw = raw_function(&mut r);
    let virtio_irq = Arc::new(VirtioIrq::new(3));
    let mut virtio = VirtioPciDevice::new(
        // Two queues, nothing behind them: the transport's config space is the point here.
        Box::new(InertDevice::new(1, &[16, 8])),
        mem.clone(),
        virtio_irq.clone(),
        11,
    )
    .expect("virtio-pci transport");
    virtio
        .config_mut()
        .set_bar_address(tp::BAR, VIRTIO_BAR)
        .expect("BAR");
    virtio.config_mut().enable(CMD_IO | CMD_MEM);
    let mut floor = FloorFunction::new();
    floor.config_mut().set_bar_address(0, 0xc100).expect("BAR0");
    floor
        .config_mut()
        .set_bar_address(1, 0xc001_0000)
        .expect("BAR1");
    floor.config_mut().enable(CMD_IO | CMD_MEM);
    let irqs: [Arc<dyn Interrupt>; 2] =
        [Arc::new(EdgeIrq::default()), Arc::new(EdgeIrq::default())];
    let mut piix = PiixIde::new(mem, Default::default(), irqs).expect("PIIX IDE");
    piix.config_mut()
        .set_bar_address(piix::BAR4, IDE_BAR4)
        .expect("BAR4");
    let piix = Arc::new(Mutex::new(piix));

    let virtio = Arc::new(Mutex::new(virtio));
    let floor = Arc::new(Mutex::new(floor));
    let raw = Arc::new(Mutex::new(RawFunction(raw)));
    let functions: Vec<(Function, SharedFunction)> = vec![
        (Function::Host, share(HostBridge::new())),
        (Function::Floor(floor.clone()), floor),
        (Function::Virtio(virtio.clone(), virtio_irq), virtio),
        (Function::Ide(piix.clone()), share(PiixFunction::new(piix))),
        (Function::Raw(raw.clone()), raw),
    ];
    let mut io = PciConfigIo::new();
    let mut ids = Vec::new();
    for (i, (_, f)) in functions.iter().enumerate() {
        io.add(Bdf::new(0, i as u8, 0), f.clone());
        ids.push(identity(&mut *lock(f)));
    }
    let mut bus = Bus::new();
    bus.insert(
        "pci-config",
        crate::devices::pci::CONFIG_ADDRESS_PORT,
        crate::devices::pci::CONFIG_IO_LEN,
        Arc::new(Mutex::new(io)),
    )
    .expect("config ports");
    let port = crate::devices::pci::CONFIG_ADDRESS_PORT;

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 5 {
            pop::ADDRESS => {
                let b = r.u8();
                let addr = if b & 0x80 == 0 {
                    // Enabled, bus 0, one of the functions (or an empty slot), any register.
                    0x8000_0000
                        | ((b as u32 % 8) << 11)
                        | ((b as u32 >> 3) & 7) << 8
                        | r.u8() as u32
                } else {
                    r.u32()
                };
                bus.write(port, &addr.to_le_bytes());
            }
            op @ (pop::READ | pop::WRITE) => {
                let off = (r.u8() % 14) as u64;
                let at = port + off - 2;
                let width = r.width();
                if op == pop::READ {
                    let mut b = vec![0u8; width];
                    bus.read(at, &mut b);
                } else {
                    let v = r.value(width);
                    bus.write(at, &v);
                }
            }
            op => {
                let (_, f) = &functions[r.u8() as usize % functions.len()];
                let off = match r.u8() % 4 {
                    0 => r.u8() as u64,
                    1 => r.u16() as u64,
                    2 => u64::MAX - r.u8() as u64,
                    _ => 0x10 + 4 * (r.u8() % 6) as u64,
                };
                let width = r.width();
                if op == pop::DIRECT_WRITE {
                    let v = r.value(width);
                    lock(f).config_write(off, &v);
                } else {
                    let mut b = vec![0u8; width];
                    lock(f).config_read(off, &mut b);
                }
            }
        }
        let mut a = [0u8; 4];
        bus.read(port, &mut a);
        assert_eq!(u32::from_le_bytes(a) & !0x80ff_fffc, 0, "CONFIG_ADDRESS");
        for ((f, shared), before) in functions.iter().zip(&ids) {
            check_function(f, shared, before);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::test_util::{random, P};

    #[test]
    fn pci_config_random_programs() {
        random(0x5eed_0003, 3000, 400, &[], pci_config);
    }

    #[test]
    fn pci_config_smoke() {
        // Select each function's dword 0 and read it through 0xCFC.
        let mut p = P(Vec::new()).op(&[0; 10]);
        for dev in 0..6u8 {
            p = p.op(&[pop::ADDRESS, dev, 0]).op(&[pop::READ, 6, 2]);
        }
        pci_config(&p.0);
        msix(&[2, 3, 0, 0, 0, 0]);
    }
}
