//! virtio (1.x) devices: a transport-agnostic [`device::VirtioDevice`] trait, the virtio-pci
//! modern transport (with its common configuration), device models (blk, net), and the I/O-thread
//! glue.
//!
//! A device model raises interrupts through the [`device::InterruptTrigger`] it gets at
//! activation; the transport turns that into an ISR bit and an MSI-X message or the INTx
//! level, which leave through [`VirtioInterrupt`]. `vmm/` implements that with KVM irqfds
//! (MSI routes) and KVM_IRQ_LINE (INTx). Nothing here talks to KVM.

pub mod balloon;
pub mod blk;
pub mod common_config;
pub mod console;
pub mod device;
pub mod drain;
pub mod io_thread;
pub mod net;
pub mod poll;
pub mod transport_pci;

pub use crate::devices::pci::msix::MsiMessage;

/// Guest memory as device models see it.
pub type Memory = vm_memory::GuestMemoryMmap<()>;

/// How a virtio-pci function raises interrupts.
pub trait VirtioInterrupt: Send + Sync {
    /// Deliver MSI-X `vector` with `msg` (the transport has checked enable and masks). The
    /// implementation makes sure the message it sends is `msg` (updating its route if needed).
    fn msi(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()>;
    /// The guest programmed (or unmasked) `vector` with `msg`: a route may be updated now.
    fn msi_update(&self, _vector: u16, _msg: MsiMessage) {}
    /// Assert the INTx line (level): it stays asserted until [`Self::intx_deassert`].
    fn intx_assert(&self) -> std::io::Result<()>;
    /// The guest read the ISR, reset the device or enabled MSI-X: the line goes low.
    fn intx_deassert(&self);
}

/// Fakes and rigs for the virtio tests, and for the fuzz targets (`fuzzing` feature).
#[cfg(any(test, feature = "fuzzing"))]
pub mod test_util {
    use super::{MsiMessage, VirtioInterrupt};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// Records every interrupt raised.
    #[derive(Default)]
    pub struct RecordingIrq {
        pub msis: Mutex<Vec<(u16, MsiMessage)>>,
        pub updates: Mutex<Vec<(u16, MsiMessage)>>,
        pub intx_asserts: Mutex<u32>,
        pub intx_level: AtomicBool,
    }

    impl RecordingIrq {
        pub fn msi_vectors(&self) -> Vec<u16> {
            self.msis.lock().unwrap().iter().map(|m| m.0).collect()
        }
        pub fn intx_count(&self) -> u32 {
            *self.intx_asserts.lock().unwrap()
        }
        pub fn level(&self) -> bool {
            self.intx_level.load(Ordering::SeqCst)
        }
    }

    impl VirtioInterrupt for RecordingIrq {
        fn msi(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()> {
            self.msis.lock().unwrap().push((vector, msg));
            Ok(())
        }
        fn msi_update(&self, vector: u16, msg: MsiMessage) {
            self.updates.lock().unwrap().push((vector, msg));
        }
        fn intx_assert(&self) -> std::io::Result<()> {
            *self.intx_asserts.lock().unwrap() += 1;
            self.intx_level.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn intx_deassert(&self) {
            self.intx_level.store(false, Ordering::SeqCst);
        }
    }

    /// Records the interrupts a device model triggers.
    #[derive(Default)]
    pub struct RecordingTrigger(Mutex<Vec<InterruptType>>);

    impl RecordingTrigger {
        pub fn triggers(&self) -> Vec<InterruptType> {
            self.0.lock().unwrap().clone()
        }
    }

    impl InterruptTrigger for RecordingTrigger {
        fn trigger(&self, why: InterruptType) {
            self.0.lock().unwrap().push(why);
        }
    }

    use super::blk::{Blk, DiskBackend};
    use super::device::{Activation, InterruptTrigger, InterruptType, QueueBroken, VirtioDevice};
    use super::transport_pci::{common, BarRegion, VirtioPciDevice};
    use super::Memory;
    use crate::backends::mem_disk::MemDisk;
    use crate::devices::bus::BusDevice;
    use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_MEM, REG_COMMAND};
    use crate::devices::pci::PciFunction;
    use std::sync::mpsc::{Receiver, SyncSender};
    use std::sync::Arc;
    use std::time::Duration;
    use vm_memory::{Bytes, GuestAddress};

    /// Byte `i` of a [`pattern_disk`]: `i / 512 ^ i`, so that every sector differs.
    pub fn pattern_byte(i: usize) -> u8 {
        (i / 512) as u8 ^ i as u8
    }

    /// A read-write memory disk of `sectors` sectors holding [`pattern_byte`]s.
    pub fn pattern_disk(sectors: u64) -> MemDisk {
        MemDisk::patterned(sectors, false, pattern_byte).expect("a disk of at least one sector")
    }

    /// What sector `sector` of a [`pattern_disk`] holds.
    pub fn pattern_sector(sector: u64) -> Vec<u8> {
        let start = sector as usize * 512;
        (start..start + 512).map(pattern_byte).collect()
    }

    /// A disk whose every read first says so on `entered` and then waits for `release` (at
    /// most a minute, so that a failing test cannot hang the suite).
    pub struct GatedDisk<D> {
        disk: D,
        entered: SyncSender<()>,
        release: Mutex<Receiver<()>>,
    }

    impl<D: DiskBackend> GatedDisk<D> {
        /// (disk, entered, release).
        pub fn new(disk: D) -> (Self, Receiver<()>, SyncSender<()>) {
            let (entered, entered_rx) = std::sync::mpsc::sync_channel(16);
            let (release_tx, release) = std::sync::mpsc::sync_channel(16);
            let gated = Self {
                disk,
                entered,
                release: Mutex::new(release),
            };
            (gated, entered_rx, release_tx)
        }
    }

    impl<D: DiskBackend> DiskBackend for GatedDisk<D> {
        fn len(&self) -> u64 {
            self.disk.len()
        }
        fn read_only(&self) -> bool {
            self.disk.read_only()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let _ = self.entered.send(());
            let _ = self
                .release
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(60));
            self.disk.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
            self.disk.write_at(offset, buf)
        }
        fn flush(&self) -> std::io::Result<()> {
            self.disk.flush()
        }
    }

    /// A virtio device with queues and nothing else: no features, no configuration, notifies
    /// that do nothing. It keeps its activation, as a model does, for the transport to see.
    pub struct InertDevice {
        device_type: u16,
        queue_max_sizes: Vec<u16>,
        active: Option<Activation>,
    }

    impl InertDevice {
        pub fn new(device_type: u16, queue_max_sizes: &[u16]) -> Self {
            Self {
                device_type,
                queue_max_sizes: queue_max_sizes.to_vec(),
                active: None,
            }
        }
    }

    impl VirtioDevice for InertDevice {
        fn device_type(&self) -> u16 {
            self.device_type
        }
        fn features(&self) -> u64 {
            0
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.queue_max_sizes
        }
        fn config_len(&self) -> usize {
            0
        }
        fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
        fn activate(&mut self, activation: Activation) -> Result<(), String> {
            self.active = Some(activation);
            Ok(())
        }
        fn activation(&self) -> Option<&Activation> {
            self.active.as_ref()
        }
        fn activation_mut(&mut self) -> Option<&mut Activation> {
            self.active.as_mut()
        }
        fn process_queue(&mut self, _index: usize) -> Result<(), QueueBroken> {
            Ok(())
        }
        fn reset(&mut self) {
            self.active = None;
        }
    }

    /// A virtio-blk function driven the way a driver drives it, with queue 0 (16 entries)
    /// in guest memory at fixed addresses and one-sector reads posted by hand.
    pub struct BlkRig {
        pub dev: Arc<Mutex<VirtioPciDevice>>,
        pub mem: Memory,
        pub irq: Arc<RecordingIrq>,
        posted: u16,
    }

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;
    pub const HDR: u64 = 0x4000;
    pub const DATA: u64 = 0x5000;
    pub const STATUS: u64 = 0x6000;
    const QSIZE: u16 = 16;

    impl BlkRig {
        /// Memory decode and bus mastering on, queue 0 set up, features negotiated, DRIVER_OK.
        pub fn new(disk: Box<dyn DiskBackend>) -> Self {
            Self::with_command(disk, CMD_MEM | CMD_BUS_MASTER)
        }

        pub fn with_command(disk: Box<dyn DiskBackend>, command: u16) -> Self {
            Self::build(disk, command, 0)
        }

        /// As [`Self::new`], with VIRTIO_RING_F_EVENT_IDX negotiated too.
        pub fn with_event_idx(disk: Box<dyn DiskBackend>) -> Self {
            let event_idx = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
            Self::build(disk, CMD_MEM | CMD_BUS_MASTER, event_idx)
        }

        /// As [`Self::new`] (with the event index if `event_idx`), the device told that a
        /// polling I/O thread serves it ([`Blk::set_polled`]).
        pub fn polled(disk: Box<dyn DiskBackend>, event_idx: bool) -> Self {
            let mut blk = Blk::new(disk, [0; 20]);
            blk.set_polled(true);
            let features_lo = if event_idx {
                1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX
            } else {
                0
            };
            Self::build_blk(blk, CMD_MEM | CMD_BUS_MASTER, features_lo)
        }

        /// `features_lo`: feature bits 0..31 the driver accepts (VERSION_1 is always on).
        fn build(disk: Box<dyn DiskBackend>, command: u16, features_lo: u64) -> Self {
            Self::build_blk(Blk::new(disk, [0; 20]), command, features_lo)
        }

        fn build_blk(blk: Blk, command: u16, features_lo: u64) -> Self {
            let mem = Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let irq = Arc::new(RecordingIrq::default());
            let mut dev =
                VirtioPciDevice::new(Box::new(blk), mem.clone(), irq.clone(), 11).unwrap();
            dev.config_mut().enable(CMD_MEM);
            let rig = Self {
                dev: Arc::new(Mutex::new(dev)),
                mem,
                irq,
                posted: 0,
            };
            let w = |off: u64, len: usize, v: u64| rig.write(off, &v.to_le_bytes()[..len]);
            w(common::DEVICE_STATUS, 1, 1);
            w(common::DEVICE_STATUS, 1, 3);
            w(common::DRIVER_FEATURE_SELECT, 4, 1);
            w(common::DRIVER_FEATURE, 4, 1); // VERSION_1
            w(common::DRIVER_FEATURE_SELECT, 4, 0);
            w(common::DRIVER_FEATURE, 4, features_lo);
            w(common::DEVICE_STATUS, 1, 11);
            w(common::QUEUE_SELECT, 2, 0);
            w(common::QUEUE_SIZE, 2, QSIZE as u64);
            w(common::QUEUE_DESC, 8, DESC);
            w(common::QUEUE_DRIVER, 8, AVAIL);
            w(common::QUEUE_DEVICE, 8, USED);
            w(common::QUEUE_ENABLE, 2, 1);
            w(common::DEVICE_STATUS, 1, 15);
            assert_eq!(rig.read(common::DEVICE_STATUS, 1), 15);
            // The command register as the test wants it, written as a driver would.
            rig.dev
                .lock()
                .unwrap()
                .config_write(REG_COMMAND as u64, &command.to_le_bytes());
            rig
        }

        /// A BAR0 access through the bus-facing region (so decode is honoured).
        pub fn write(&self, off: u64, data: &[u8]) {
            BarRegion::new(self.dev.clone(), 0).write(off, data);
        }

        pub fn read(&self, off: u64, len: usize) -> u64 {
            let mut b = vec![0u8; len];
            BarRegion::new(self.dev.clone(), 0).read(off, &mut b);
            crate::devices::le_value(&b)
        }

        /// Post a one-sector read of `sector` (descriptors 0..2, status byte set to 0xff).
        pub fn post_read(&mut self, sector: u64) {
            let m = &self.mem;
            let mut h = [0u8; 16];
            h[8..].copy_from_slice(&sector.to_le_bytes()); // type 0 = IN
            m.write_slice(&h, GuestAddress(HDR)).unwrap();
            m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            m.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
            let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
                let at = DESC + 16 * i;
                m.write_obj(addr, GuestAddress(at)).unwrap();
                m.write_obj(len, GuestAddress(at + 8)).unwrap();
                m.write_obj(flags, GuestAddress(at + 12)).unwrap();
                m.write_obj(next, GuestAddress(at + 14)).unwrap();
            };
            desc(0, HDR, 16, 1, 1);
            desc(1, DATA, 512, 1 | 2, 2);
            desc(2, STATUS, 1, 2, 0);
            let slot = AVAIL + 4 + 2 * (self.posted % QSIZE) as u64;
            m.write_obj(0u16, GuestAddress(slot)).unwrap();
            self.posted = self.posted.wrapping_add(1);
            m.write_obj(self.posted, GuestAddress(AVAIL + 2)).unwrap();
        }

        /// The used ring's index.
        pub fn used_idx(&self) -> u16 {
            self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
        }

        /// Used element `i`: (descriptor id, length).
        pub fn used_elem(&self, i: u16) -> (u32, u32) {
            let at = USED + 4 + 8 * (i % QSIZE) as u64;
            (
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }

        pub fn status_byte(&self) -> u8 {
            self.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }

        pub fn data(&self) -> Vec<u8> {
            let mut b = vec![0u8; 512];
            self.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
            b
        }
    }
}
