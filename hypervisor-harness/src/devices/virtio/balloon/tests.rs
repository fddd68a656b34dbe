use super::inflate::{discard, PageBitmap, PAGE_SIZE};
use super::stats::{TAG_AVAIL, TAG_MEMFREE, TAG_MEMTOT};
use super::*;
use crate::devices::virtio::test_util::RecordingTrigger;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x10_0000;
const QUEUE_BASES: [u64; NUM_QUEUES] = [0x0, 0x4000, 0x8000, 0xc000];
const PFN_BUF: u64 = 0x2_0000;
const PFN_BUF2: u64 = 0x2_1000;

fn mem() -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
}

struct Rig<'m> {
    mem: &'m Memory,
    mocks: Vec<MockSplitQueue<'m, Memory>>,
    dev: Balloon,
    trigger: Arc<RecordingTrigger>,
    shared: Arc<BalloonShared>,
    /// Next free descriptor per queue.
    next_desc: [u16; NUM_QUEUES],
}

impl<'m> Rig<'m> {
    fn new(mem: &'m Memory, features: u64) -> Self {
        let shared = Arc::new(BalloonShared::new(MEM as u64));
        let mut dev = Balloon::new(mem, shared.clone());
        let mocks: Vec<_> = QUEUE_BASES
            .iter()
            .map(|&b| MockSplitQueue::create(mem, GuestAddress(b), 16))
            .collect();
        let trigger = Arc::new(RecordingTrigger::default());
        let queues = mocks.iter().map(|m| m.create_queue().unwrap()).collect();
        dev.activate(Activation {
            mem: mem.clone(),
            features,
            queues,
            interrupt: trigger.clone(),
        })
        .unwrap();
        Self {
            mem,
            mocks,
            dev,
            trigger,
            shared,
            next_desc: [0; NUM_QUEUES],
        }
    }

    /// Post `descs` as one chain on `queue` and notify.
    fn post(&mut self, queue: usize, descs: &[(u64, u32, u16)]) {
        let first = self.next_desc[queue];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = first + i as u16 + 1;
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        self.mocks[queue].add_desc_chains(&raw, first).unwrap();
        self.next_desc[queue] += descs.len() as u16;
        self.dev.process_queue(queue).unwrap();
    }

    /// Send `pfns` on the inflate (0) or deflate (1) queue in one buffer.
    fn send(&mut self, queue: usize, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        let at = if queue == 0 { PFN_BUF } else { PFN_BUF2 };
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        self.post(queue, &[(at, bytes.len() as u32, 0)]);
    }

    fn used_idx(&self, queue: usize) -> u16 {
        let used = self.mocks[queue].used_addr();
        self.mem.read_obj(GuestAddress(used.0 + 2)).unwrap()
    }
}

fn fill_page(m: &Memory, pfn: u64, byte: u8) {
    m.write_slice(&[byte; PAGE_SIZE as usize], GuestAddress(pfn * PAGE_SIZE))
        .unwrap();
}

fn page(m: &Memory, pfn: u64) -> Vec<u8> {
    let mut b = vec![0u8; PAGE_SIZE as usize];
    m.read_slice(&mut b, GuestAddress(pfn * PAGE_SIZE)).unwrap();
    b
}

const ALL: u64 = 1 << 32 | F_STATS_VQ | F_DEFLATE_ON_OOM | F_PAGE_REPORTING;

#[test]
fn offers_version_1_stats_deflate_on_oom_and_page_reporting() {
    let m = mem();
    let dev = Balloon::new(&m, Arc::new(BalloonShared::new(MEM as u64)));
    assert_eq!(dev.features(), ALL);
    assert_eq!(dev.device_type(), 5);
    assert_eq!(dev.queue_max_sizes().len(), 4);
    assert_eq!(dev.config_len(), 16);
}

#[test]
fn config_has_num_pages_and_the_actual_the_driver_writes() {
    let m = mem();
    let shared = Arc::new(BalloonShared::new(MEM as u64));
    let mut dev = Balloon::new(&m, shared.clone());
    shared.set_target_pages(0x1234);
    let mut c = [0xffu8; 16];
    dev.read_config(0, &mut c);
    assert_eq!(&c[0..8], &[0x34, 0x12, 0, 0, 0, 0, 0, 0]);
    dev.write_config(4, &7u32.to_le_bytes());
    assert_eq!(shared.actual_pages(), 7);
    // num_pages is the device's: a driver write is ignored and counted.
    dev.write_config(0, &9u32.to_le_bytes());
    dev.write_config(4, &[1, 2]);
    assert_eq!(shared.target_pages(), 0x1234);
    assert_eq!(shared.actual_pages(), 7);
    assert_eq!(shared.counters().config_writes_ignored, 2);
    // Reads past the end are zero, never a panic.
    let mut c = [0xffu8; 8];
    dev.read_config(12, &mut c);
    assert_eq!(c, [0; 8]);
    dev.read_config(u64::MAX, &mut c);
}

#[test]
fn inflate_gives_pages_back_to_the_host_and_deflate_takes_them_out() {
    let m = mem();
    let mut rig = Rig::new(&m, ALL);
    for pfn in 0x80..0x88 {
        fill_page(&m, pfn, 0xa5);
    }
    // Not consecutive, to take two madvise runs.
    rig.send(0, &[0x80, 0x81, 0x82, 0x85]);
    assert_eq!(rig.used_idx(0), 1);
    for pfn in [0x80, 0x81, 0x82, 0x85] {
        assert_eq!(
            page(&m, pfn),
            vec![0; 4096],
            "PFN {pfn:#x} was not discarded"
        );
    }
    for pfn in [0x83, 0x84, 0x86] {
        assert_eq!(page(&m, pfn), vec![0xa5; 4096], "PFN {pfn:#x} was touched");
    }
    let c = rig.shared.counters();
    assert_eq!((c.inflated, c.discarded), (4, 4));
    assert_eq!(rig.dev.pages_held(), 4);
    assert_eq!(rig.trigger.triggers(), [InterruptType::Queue(0)]);

    rig.send(1, &[0x81, 0x85]);
    assert_eq!(rig.used_idx(1), 1);
    assert_eq!(rig.shared.counters().deflated, 2);
    assert_eq!(rig.dev.pages_held(), 2);
    // A deflated page is the guest's again: usable, zero until written.
    fill_page(&m, 0x81, 0x11);
    assert_eq!(page(&m, 0x81), vec![0x11; 4096]);
}

#[test]
fn outside_ram_duplicates_and_strangers_are_ignored_and_counted() {
    let m = mem();
    let mut rig = Rig::new(&m, ALL);
    let beyond = (MEM as u64 / PAGE_SIZE) as u32;
    rig.send(0, &[0x90, 0x90, beyond, u32::MAX, 0x91]);
    rig.send(0, &[0x91]);
    rig.send(1, &[0x92, beyond, 0x90]);
    rig.send(1, &[0x90]);
    let c = rig.shared.counters();
    assert_eq!(c.inflated, 2);
    assert_eq!(c.duplicates, 2);
    assert_eq!(c.outside_ram, 3);
    assert_eq!(c.deflated, 1);
    assert_eq!(c.not_in_balloon, 2);
    assert_eq!(rig.dev.pages_held(), 1);
    // Every buffer was returned all the same.
    assert_eq!((rig.used_idx(0), rig.used_idx(1)), (2, 2));
}

#[test]
fn malformed_chains_are_returned_and_counted() {
    let m = mem();
    let mut rig = Rig::new(&m, ALL);
    m.write_slice(&0x95u32.to_le_bytes(), GuestAddress(PFN_BUF))
        .unwrap();
    let next = VRING_DESC_F_NEXT as u16;
    let write = VRING_DESC_F_WRITE as u16;
    // A writable descriptor, a length that is not whole PFNs, a buffer outside RAM.
    rig.post(0, &[(PFN_BUF, 4, next), (PFN_BUF2, 8, write)]);
    rig.post(0, &[(PFN_BUF, 6, 0)]);
    rig.post(0, &[(MEM as u64 - 2, 4, 0)]);
    rig.post(0, &[(PFN_BUF, 4 * 5000, 0)]);
    let c = rig.shared.counters();
    assert_eq!(c.malformed, 4);
    // The whole PFN of the first chain still counts.
    assert_eq!(c.inflated, 1);
    assert_eq!(rig.used_idx(0), 4);
}

#[test]
fn stats_keep_the_latest_report() {
    let m = mem();
    let mut rig = Rig::new(&m, ALL);
    let mut buf = Vec::new();
    for (tag, val) in [
        (TAG_MEMFREE, 100u64),
        (TAG_MEMTOT, 200),
        (TAG_AVAIL, 150),
        (77, 1),
    ] {
        buf.extend(tag.to_le_bytes());
        buf.extend(val.to_le_bytes());
    }
    m.write_slice(&buf, GuestAddress(PFN_BUF)).unwrap();
    rig.post(2, &[(PFN_BUF, buf.len() as u32, 0)]);
    let s = rig.shared.guest_stats();
    assert_eq!(s.get(TAG_MEMFREE), Some(100));
    assert_eq!(s.get(TAG_MEMTOT), Some(200));
    assert_eq!(s.get(TAG_AVAIL), Some(150));
    assert_eq!((s.updates, s.ignored), (1, 1));
    // The buffer goes back at once, for the driver to refill.
    assert_eq!(rig.used_idx(2), 1);
}

#[test]
fn without_stats_vq_the_stats_queue_is_not_used() {
    let m = mem();
    let mut rig = Rig::new(&m, 1 << 32);
    rig.post(2, &[(PFN_BUF, 10, 0)]);
    assert_eq!(rig.used_idx(2), 0);
    assert_eq!(rig.shared.guest_stats().updates, 0);
}

#[test]
fn reset_empties_the_balloon() {
    let m = mem();
    let mut rig = Rig::new(&m, ALL);
    rig.send(0, &[0x40, 0x41]);
    rig.dev.write_config(4, &2u32.to_le_bytes());
    rig.dev.reset();
    assert_eq!(rig.dev.pages_held(), 0);
    assert_eq!(rig.shared.actual_pages(), 0);
    assert!(!rig.dev.is_activated());
}

/// The counters add up across a reset: what a reset drops is counted as released, so
/// inflated = deflated + reset_released + pages held.
#[test]
fn a_reset_counts_the_pages_it_releases() {
    let m = mem();
    let mut rig = Rig::new(&m, ALL);
    rig.send(0, &[0x40, 0x41, 0x42]);
    rig.send(1, &[0x41]);
    rig.dev.reset();
    let c = rig.shared.counters();
    assert_eq!(
        (c.inflated, c.deflated, c.reset_released),
        (3, 1, 2),
        "{c:?}"
    );
    assert_eq!(rig.dev.pages_held(), 0);
    // A reset of an empty balloon releases nothing more.
    rig.dev.reset();
    assert_eq!(rig.shared.counters().reset_released, 2);
}

/// A guest that balloons the page of its own inflate ring: the discard zeroes the ring, so the
/// pass finds the queue broken after the chain. The pages that chain put in are counted all
/// the same, so the counters still add up to what the balloon holds.
#[test]
fn pages_taken_before_the_queue_breaks_are_counted() {
    let m = mem();
    let mut rig = Rig::new(&m, ALL);
    // Page 0 holds queue 0's descriptors and rings (QUEUE_BASES[0]).
    let pfns: Vec<u8> = [0u32, 0x40].iter().flat_map(|p| p.to_le_bytes()).collect();
    m.write_slice(&pfns, GuestAddress(PFN_BUF)).unwrap();
    let raw = [RawDescriptor::from(Descriptor::new(PFN_BUF, 8, 0, 0))];
    rig.mocks[0].add_desc_chains(&raw, 0).unwrap();
    assert!(rig.dev.process_queue(0).is_err());
    let c = rig.shared.counters();
    assert_eq!((c.inflated, c.discarded), (2, 2), "{c:?}");
    assert_eq!(rig.dev.pages_held(), 2);
}

#[test]
fn target_for_a_guest_memory_size() {
    let s = BalloonShared::new(256 << 20);
    assert_eq!(s.target_for(192 << 20), Ok(16384));
    assert_eq!(s.target_for(256 << 20), Ok(0));
    assert!(s.target_for(0).is_err());
    assert!(s.target_for((256 << 20) + 1).is_err());
}

#[test]
fn discard_refuses_ranges_outside_guest_ram() {
    let m = mem();
    assert!(discard(&m, 0, PAGE_SIZE).is_ok());
    assert!(discard(&m, MEM as u64 - PAGE_SIZE, 2 * PAGE_SIZE).is_err());
    assert!(discard(&m, MEM as u64, PAGE_SIZE).is_err());
    assert!(discard(&m, u64::MAX - 10, PAGE_SIZE).is_err());
}

#[test]
fn bitmap() {
    let mut b = PageBitmap::new(70 * PAGE_SIZE);
    assert!(b.insert(69));
    assert!(!b.insert(69));
    assert!(!b.insert(70));
    assert!(b.contains(69));
    assert_eq!(b.count(), 1);
    assert!(b.remove(69));
    assert!(!b.remove(69));
    assert!(!b.remove(u64::MAX));
}

#[test]
fn queue_roles_follow_the_negotiated_features() {
    use QueueRole::*;
    let v1 = 1u64 << 32;
    let roles = |f: u64| (0..4).map(|i| queue_role(i, f)).collect::<Vec<_>>();
    assert_eq!(
        roles(ALL),
        [Some(Inflate), Some(Deflate), Some(Stats), Some(Reporting)]
    );
    assert_eq!(roles(v1), [Some(Inflate), Some(Deflate), None, None]);
    // Without STATS_VQ the reporting queue takes index 2.
    assert_eq!(
        roles(v1 | F_PAGE_REPORTING),
        [Some(Inflate), Some(Deflate), Some(Reporting), None]
    );
}

#[test]
fn reported_free_pages_are_discarded_but_stay_the_guests() {
    let m = mem();
    let mut rig = Rig::new(&m, ALL);
    for pfn in 0xa0..0xa4 {
        fill_page(&m, pfn, 0x5a);
    }
    let write = VRING_DESC_F_WRITE as u16;
    let next = VRING_DESC_F_NEXT as u16;
    // Two pages, then one, then a range that is not whole pages and one outside RAM.
    rig.post(
        3,
        &[
            (0xa0 * PAGE_SIZE, 2 * PAGE_SIZE as u32, write | next),
            (0xa3 * PAGE_SIZE, PAGE_SIZE as u32, write | next),
            (0xa2 * PAGE_SIZE + 8, PAGE_SIZE as u32, write | next),
            (MEM as u64, PAGE_SIZE as u32, write),
        ],
    );
    assert_eq!(rig.used_idx(3), 1);
    for pfn in [0xa0, 0xa1, 0xa3] {
        assert_eq!(page(&m, pfn), vec![0; 4096], "PFN {pfn:#x} not discarded");
    }
    assert_eq!(page(&m, 0xa2), vec![0x5a; 4096]);
    let c = rig.shared.counters();
    assert_eq!((c.reported, c.report_refused), (3, 2));
    // Not in the balloon: nothing to deflate.
    assert_eq!(rig.dev.pages_held(), 0);
    // A device-readable descriptor is not a report.
    rig.post(3, &[(0xa2 * PAGE_SIZE, PAGE_SIZE as u32, 0)]);
    assert_eq!(rig.shared.counters().report_refused, 3);
    assert_eq!(page(&m, 0xa2), vec![0x5a; 4096]);
}

/// Rings laid so that the device's own writes feed the inflate queue ([`feed_itself`]): the
/// pass takes the one buffer once and ends at its bound, counted.
#[test]
fn an_inflate_queue_that_feeds_itself_ends_at_the_bound() {
    use crate::devices::virtio::drain::test_util::feed_itself;
    let m = mem();
    let mut rig = Rig::new(&m, 0);
    m.write_slice(&0x50u32.to_le_bytes(), GuestAddress(PFN_BUF))
        .unwrap();
    let raw = [RawDescriptor::from(Descriptor::new(PFN_BUF, 4, 0, 0))];
    rig.mocks[0].add_desc_chains(&raw, 0).unwrap();
    feed_itself(&mut rig.dev.queues_mut()[0], &m, 0x3_0000);
    rig.dev.process_queue(0).unwrap();
    let c = rig.shared.counters();
    assert_eq!((c.inflated, c.drains_cut), (1, 1), "{c:?}");
}
