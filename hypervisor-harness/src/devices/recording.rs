//! The devices' side of `run --record-exits`: snapshots of what a device took from guest
//! memory (queue contents are in guest memory, not in exits, so only the device sees them),
//! for the fuzz seed corpus.
//!
//! A device knows only [`DeviceRecorder`] and [`active`]. The recording itself (its file
//! format, its bounds) belongs to the VMM: `vmm/exit_recorder.rs` implements the trait and
//! [`install`]s itself when `--record-exits` is on, so `devices/` never imports `vmm/`. Off, a
//! device's hook costs one load and branch.

use std::sync::OnceLock;

/// Where devices send their snapshots. An implementation keeps its own bounds: a device calls
/// it and goes on, whatever it kept.
pub trait DeviceRecorder: Send + Sync {
    /// A request `device` parsed: its type, its sector and its data segments (length,
    /// whether the device writes it), in chain order.
    fn record_request(
        &self,
        device: &str,
        ty: u32,
        sector: u64,
        segments: &mut dyn Iterator<Item = (u32, bool)>,
    );

    /// The bytes the virtio device `device` took from (or put into the buffers of) its queue
    /// `queue`.
    fn record_buffer(&self, device: &str, queue: usize, bytes: &[u8]);

    /// `count` doorbells the device of bus range `range` took at `offset` through its
    /// ioeventfd: writes KVM never turned into exits.
    fn record_doorbells(&self, range: &str, offset: u64, count: u64);
}

static RECORDER: OnceLock<&'static dyn DeviceRecorder> = OnceLock::new();

/// Send every device's snapshots to `recorder` from now until the process exits. One per
/// process: a second call gets back the recorder already installed.
pub fn install(recorder: &'static dyn DeviceRecorder) -> Result<(), &'static dyn DeviceRecorder> {
    RECORDER.set(recorder)
}

/// The recorder, when one is installed.
#[inline]
pub fn active() -> Option<&'static dyn DeviceRecorder> {
    RECORDER.get().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::blk::parse;
    use crate::devices::virtio::Memory;
    use std::sync::Mutex;
    use std::thread::ThreadId;
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::{Bytes, GuestAddress};

    /// A request snapshot as the fake got it: device, type, sector, segments.
    type RequestSnapshot = (String, u32, u64, Vec<(u32, bool)>);

    /// Keeps the requests recorded from one thread: once installed it is the whole test
    /// process's, and the other tests' devices run on threads of their own.
    struct FakeRecorder {
        thread: ThreadId,
        requests: Mutex<Vec<RequestSnapshot>>,
        others: Mutex<usize>,
    }

    impl FakeRecorder {
        fn mine(&self) -> bool {
            std::thread::current().id() == self.thread
        }
    }

    impl DeviceRecorder for FakeRecorder {
        fn record_request(
            &self,
            device: &str,
            ty: u32,
            sector: u64,
            segments: &mut dyn Iterator<Item = (u32, bool)>,
        ) {
            if self.mine() {
                let segments = segments.collect();
                let snapshot = (device.to_owned(), ty, sector, segments);
                crate::devices::lock(&self.requests).push(snapshot);
            }
        }

        fn record_buffer(&self, _: &str, _: usize, _: &[u8]) {
            if self.mine() {
                *crate::devices::lock(&self.others) += 1;
            }
        }

        fn record_doorbells(&self, _: &str, _: u64, _: u64) {
            if self.mine() {
                *crate::devices::lock(&self.others) += 1;
            }
        }
    }

    const HDR: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x3000;

    /// virtio-blk's parser on one read of 512 bytes at `sector`.
    fn parse_a_read(sector: u64) {
        let m = Memory::from_ranges(&[(GuestAddress(0), 0x10_000)]).unwrap();
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&header, GuestAddress(HDR)).unwrap();
        let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
        let descs = [
            Descriptor::new(HDR, 16, next, 1),
            Descriptor::new(DATA, 512, next | write, 2),
            Descriptor::new(STATUS, 1, write, 0),
        ]
        .map(RawDescriptor::from);
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(&m).unwrap().next().unwrap();
        parse(&m, chain).unwrap();
    }

    // The only test that installs a recorder (one per process), so both halves are one test.
    #[test]
    fn an_installed_recorder_gets_a_devices_snapshot_and_none_installed_gets_nothing() {
        let fake: &'static FakeRecorder = Box::leak(Box::new(FakeRecorder {
            thread: std::thread::current().id(),
            requests: Mutex::default(),
            others: Mutex::default(),
        }));
        assert!(active().is_none());
        parse_a_read(7);
        assert!(crate::devices::lock(&fake.requests).is_empty());

        install(fake).unwrap_or_else(|_| panic!("a recorder was installed already"));
        assert!(active().is_some());
        assert!(install(fake).is_err(), "one recorder per process");
        parse_a_read(0x1234);
        let requests = crate::devices::lock(&fake.requests).clone();
        let want = (
            "virtio-blk".to_owned(),
            VIRTIO_BLK_T_IN,
            0x1234,
            vec![(512, true)],
        );
        assert_eq!(requests, [want]);
        assert_eq!(*crate::devices::lock(&fake.others), 0);
    }
}
