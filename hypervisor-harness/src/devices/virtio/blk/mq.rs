//! VIRTIO_BLK_F_MQ (virtio 1.x §5.2.3, §5.2.6): `--disk virtio:PATH,queues=N` gives the
//! device N request queues, `num_queues` in its configuration, one MSI-X vector and one I/O
//! thread each (the wiring's). The queues are independent rings on the same disk: each is
//! drained when notified and interrupts on its own vector.
//!
//! A broken ring on any queue sets DEVICE_NEEDS_RESET, after which the device serves no
//! queue until the driver resets it: the spec's NEEDS_RESET is the device's, not a queue's
//! (virtio 1.x §2.1.1), as QEMU's virtio-blk does with `virtio_error`.
//!
//! The queues' disk I/O still shares the transport's engine lock (one device model behind
//! it), so two queues' requests run one after the other; per-queue locking is the known next
//! step.

use super::{Blk, QUEUE_SIZE};
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_MQ;

/// Most queues a disk may have (`queues=`).
pub use crate::backends::disk::MAX_QUEUES;

impl Blk {
    /// The device with `queues` request queues (1..=[`MAX_QUEUES`]); more than one offers
    /// VIRTIO_BLK_F_MQ and `num_queues`. With `cache=none` the io_uring serves queue 0 and
    /// the others go the synchronous way.
    pub fn with_queues(mut self, queues: u16) -> Result<Self, String> {
        if !(1..=MAX_QUEUES).contains(&queues) {
            return Err(format!("queues={queues}: 1 to {MAX_QUEUES}"));
        }
        self.sizes = vec![QUEUE_SIZE; usize::from(queues)];
        self.config.0.num_queues = queues.to_le();
        Ok(self)
    }

    /// VIRTIO_BLK_F_MQ when the device has more than one queue.
    pub(super) fn mq_features(&self) -> u64 {
        if self.sizes.len() > 1 {
            1 << VIRTIO_BLK_F_MQ
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_MEM, REG_CAP_PTR};
    use crate::devices::pci::msix::CTRL_ENABLE;
    use crate::devices::pci::PciFunction;
    use crate::devices::virtio::device::VirtioDevice;
    use crate::devices::virtio::test_util::{pattern_disk, pattern_sector, RecordingIrq};
    use crate::devices::virtio::transport_pci::{
        common, VirtioPciDevice, DEVICE_OFFSET, MSIX_TABLE_OFFSET,
    };
    use crate::devices::virtio::Memory;
    use std::mem::offset_of;
    use std::sync::Arc;
    use virtio_bindings::virtio_blk::{virtio_blk_config, VIRTIO_BLK_S_OK};
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
    use vm_memory::{Bytes, GuestAddress};

    const QSIZE: u16 = 16;
    /// Queue `q`'s rings and one request's buffers, 64 KiB apart per queue.
    fn at(q: u16, what: u64) -> u64 {
        0x1_0000 * (u64::from(q) + 1) + what
    }
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const HDR: u64 = 0x4000;
    const DATA: u64 = 0x5000;
    const STATUS: u64 = 0x6000;

    struct Rig {
        dev: VirtioPciDevice,
        mem: Memory,
        irq: Arc<RecordingIrq>,
        posted: [u16; 2],
    }

    impl Rig {
        fn w(&mut self, off: u64, len: usize, v: u64) {
            self.dev.bar_write(off, &v.to_le_bytes()[..len]);
        }
        fn r(&mut self, off: u64, len: usize) -> u64 {
            let mut b = vec![0u8; len];
            self.dev.bar_read(off, &mut b);
            crate::devices::le_value(&b)
        }

        /// A two-queue disk, MQ negotiated, queue q on MSI-X vector q + 1, MSI-X on.
        fn new() -> Self {
            let mem = Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let irq = Arc::new(RecordingIrq::default());
            let blk = Blk::new(Box::new(pattern_disk(64)), [0; 20])
                .with_queues(2)
                .unwrap();
            assert_ne!(blk.features() & 1 << VIRTIO_BLK_F_MQ, 0);
            let mut dev =
                VirtioPciDevice::with_msix(Box::new(blk), mem.clone(), irq.clone(), 11, true)
                    .unwrap();
            dev.config_mut().enable(CMD_MEM | CMD_BUS_MASTER);
            let mut rig = Self {
                dev,
                mem,
                irq,
                posted: [0; 2],
            };
            let num_queues = offset_of!(virtio_blk_config, num_queues) as u64;
            assert_eq!(rig.r(DEVICE_OFFSET + num_queues, 2), 2);
            rig.w(common::DEVICE_STATUS, 1, 1);
            rig.w(common::DEVICE_STATUS, 1, 3);
            rig.w(common::DRIVER_FEATURE_SELECT, 4, 1);
            rig.w(common::DRIVER_FEATURE, 4, 1); // VERSION_1
            rig.w(common::DRIVER_FEATURE_SELECT, 4, 0);
            rig.w(common::DRIVER_FEATURE, 4, 1 << VIRTIO_BLK_F_MQ);
            rig.w(common::DEVICE_STATUS, 1, 11);
            assert_eq!(rig.r(common::DEVICE_STATUS, 1), 11, "MQ accepted");
            assert_eq!(rig.r(common::NUM_QUEUES, 2), 2);
            for q in 0..2u16 {
                rig.w(common::QUEUE_SELECT, 2, q.into());
                rig.w(common::QUEUE_MSIX_VECTOR, 2, u64::from(q) + 1);
                rig.w(common::QUEUE_SIZE, 2, QSIZE.into());
                rig.w(common::QUEUE_DESC, 8, at(q, DESC));
                rig.w(common::QUEUE_DRIVER, 8, at(q, AVAIL));
                rig.w(common::QUEUE_DEVICE, 8, at(q, USED));
                rig.w(common::QUEUE_ENABLE, 2, 1);
            }
            // A queue past the device's: nothing there, and enabling it changes nothing.
            rig.w(common::QUEUE_SELECT, 2, 2);
            assert_eq!(rig.r(common::QUEUE_SIZE, 2), 0);
            rig.w(common::QUEUE_SIZE, 2, QSIZE.into());
            rig.w(common::QUEUE_ENABLE, 2, 1);
            assert_eq!(rig.r(common::QUEUE_SIZE, 2), 0);
            assert_eq!(rig.r(common::QUEUE_ENABLE, 2), 0);
            rig.w(common::DEVICE_STATUS, 1, 15);
            assert_eq!(rig.r(common::DEVICE_STATUS, 1), 15);
            // MSI-X on, vectors 1 and 2 programmed and unmasked.
            let cap = rig.msix_cap();
            rig.dev.config_write(cap + 2, &CTRL_ENABLE.to_le_bytes());
            for v in 1..=2u64 {
                let entry = MSIX_TABLE_OFFSET + 16 * v;
                rig.w(entry, 4, 0xfee0_0000);
                rig.w(entry + 4, 4, 0);
                rig.w(entry + 8, 4, 0x40 + v);
                rig.w(entry + 12, 4, 0);
            }
            rig
        }

        /// The MSI-X capability's offset in configuration space.
        fn msix_cap(&mut self) -> u64 {
            let mut b = [0u8; 2];
            self.dev.config_read(REG_CAP_PTR as u64, &mut b[..1]);
            let mut cap = u64::from(b[0]);
            while cap != 0 {
                self.dev.config_read(cap, &mut b);
                if b[0] == 0x11 {
                    return cap;
                }
                cap = u64::from(b[1]);
            }
            panic!("no MSI-X capability");
        }

        /// Post a one-sector read of `sector` on queue `q`.
        fn post_read(&mut self, q: u16, sector: u64) {
            let m = &self.mem;
            let mut h = [0u8; 16];
            h[8..].copy_from_slice(&sector.to_le_bytes());
            m.write_slice(&h, GuestAddress(at(q, HDR))).unwrap();
            m.write_obj(0xffu8, GuestAddress(at(q, STATUS))).unwrap();
            let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
                let d = at(q, DESC) + 16 * i;
                m.write_obj(addr, GuestAddress(d)).unwrap();
                m.write_obj(len, GuestAddress(d + 8)).unwrap();
                m.write_obj(flags, GuestAddress(d + 12)).unwrap();
                m.write_obj(next, GuestAddress(d + 14)).unwrap();
            };
            desc(0, at(q, HDR), 16, 1, 1);
            desc(1, at(q, DATA), 512, 1 | 2, 2);
            desc(2, at(q, STATUS), 1, 2, 0);
            let posted = &mut self.posted[usize::from(q)];
            let slot = at(q, AVAIL) + 4 + 2 * u64::from(*posted % QSIZE);
            m.write_obj(0u16, GuestAddress(slot)).unwrap();
            *posted = posted.wrapping_add(1);
            m.write_obj(*posted, GuestAddress(at(q, AVAIL) + 2))
                .unwrap();
        }

        fn notify(&mut self, q: u16) {
            self.w(VirtioPciDevice::notify_offset(q.into()), 2, q.into());
        }

        fn used_idx(&self, q: u16) -> u16 {
            self.mem.read_obj(GuestAddress(at(q, USED) + 2)).unwrap()
        }

        fn read_back(&self, q: u16, sector: u64) {
            let status: u8 = self.mem.read_obj(GuestAddress(at(q, STATUS))).unwrap();
            assert_eq!(status, VIRTIO_BLK_S_OK as u8, "queue {q}");
            let mut b = vec![0u8; 512];
            self.mem
                .read_slice(&mut b, GuestAddress(at(q, DATA)))
                .unwrap();
            assert_eq!(b, pattern_sector(sector), "queue {q}");
        }
    }

    #[test]
    fn queues_are_bounded_and_one_queue_offers_no_mq() {
        let one = Blk::new(Box::new(pattern_disk(8)), [0; 20]);
        assert_eq!(one.features() & 1 << VIRTIO_BLK_F_MQ, 0);
        assert_eq!(one.queue_max_sizes().len(), 1);
        let four = Blk::new(Box::new(pattern_disk(8)), [0; 20])
            .with_queues(4)
            .unwrap();
        assert_eq!(four.queue_max_sizes(), [QUEUE_SIZE; 4]);
        for bad in [0, MAX_QUEUES + 1] {
            let e = Blk::new(Box::new(pattern_disk(8)), [0; 20])
                .with_queues(bad)
                .err()
                .unwrap();
            assert!(e.contains("1 to 16"), "{e}");
        }
    }

    #[test]
    fn each_queue_completes_its_own_requests_on_its_own_vector() {
        let mut rig = Rig::new();
        rig.post_read(0, 3);
        rig.post_read(1, 9);
        rig.notify(1);
        assert_eq!((rig.used_idx(0), rig.used_idx(1)), (0, 1));
        rig.read_back(1, 9);
        assert_eq!(rig.irq.msi_vectors(), [2]);
        rig.notify(0);
        assert_eq!((rig.used_idx(0), rig.used_idx(1)), (1, 1));
        rig.read_back(0, 3);
        assert_eq!(rig.irq.msi_vectors(), [2, 1]);
        let c = rig.dev.queue_counters();
        assert_eq!((c.interrupts(0), c.interrupts(1)), (1, 1));
        // A notify for a queue the device does not have: nothing, and no panic.
        rig.notify(5);
        rig.notify(u16::MAX);
        assert_eq!(rig.irq.msi_vectors(), [2, 1]);
        assert_eq!(rig.r(common::DEVICE_STATUS, 1), 15);
    }

    /// A broken ring is the device's NEEDS_RESET (virtio 1.x §2.1.1): no queue is served
    /// until the driver resets it, as QEMU's virtio_error does.
    #[test]
    fn a_broken_queue_stops_the_device_until_reset() {
        let mut rig = Rig::new();
        // Queue 1's avail index runs ahead by more than its size.
        rig.mem
            .write_obj(QSIZE + 5, GuestAddress(at(1, AVAIL) + 2))
            .unwrap();
        rig.notify(1);
        let needs_reset = VIRTIO_CONFIG_S_NEEDS_RESET as u64;
        assert_eq!(rig.r(common::DEVICE_STATUS, 1), 15 | needs_reset);
        assert!(rig.dev.broken().is_some());
        rig.post_read(0, 4);
        rig.notify(0);
        assert_eq!(
            rig.used_idx(0),
            0,
            "a device that needs a reset serves nothing"
        );
        // The driver's reset clears it.
        rig.w(common::DEVICE_STATUS, 1, 0);
        assert_eq!(rig.r(common::DEVICE_STATUS, 1), 0);
        assert!(rig.dev.broken().is_none());
    }
}
