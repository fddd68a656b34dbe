//! The racing guest: one thread plays a second vCPU that rewrites a virtio-blk queue's
//! descriptors, ring indices and buffers while another thread, the device's I/O path, serves
//! the queue (`Blk::process_queue`, as the I/O thread does on each notify). Bounded in time
//! (2.5 s, up to 10 s on a machine too loaded to complete 100 requests sooner), so it runs in
//! `cargo test`.
//!
//! What the guest may do is anything, inside rules that make the checks exact: the avail ring
//! only ever holds heads the guest publishes (the four honest chains' and even hostile ones);
//! hostile descriptors chain only among themselves and point into the hostile area, holes,
//! region edges or outside RAM; the honest chains (fixed reads of fixed sectors of a
//! read-only disk) are never rewritten. So the device must never complete an id the guest
//! did not publish, an honest buffer holds its sectors or is untouched, and the canary
//! memory nobody points at (inside a region and a region of its own, past holes) is as it was.

use super::virtio_rig::{push_avail, put_desc};
use super::*;
use crate::devices::virtio::blk::Blk;
use crate::devices::virtio::device::{Activation, InterruptTrigger, InterruptType, VirtioDevice};
use crate::devices::virtio::test_util::{pattern_byte, pattern_disk, pattern_sector};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const QUEUE_SIZE: u16 = 32;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// The honest chains: head 4k is header, data, status; the header at HONEST_HDR + 16k, the
/// data (2 sectors from sector 2k) at HONEST_DATA + 1 KiB k, the status at HONEST_STATUS + k.
const HONEST: u16 = 4;
const HONEST_HDR: u64 = 0x3000;
const HONEST_STATUS: u64 = 0x3100;
const HONEST_DATA: u64 = 0x4000;
/// Nobody's: the device must never write here.
const CANARY: (u64, u64) = (0x5000, 0x3000);
/// Where hostile descriptors and headers point.
const HOSTILE: (u64, u64) = (0x8000, 0x8000);
const CANARY_BYTE: u8 = 0xc3;
const RACE: Duration = Duration::from_millis(2500);

// What racing_net shares: the memory layout, the race's bounds, the queue set-up.

/// The layout: the region above, a hole, a hostile region, a hole, a canary region.
pub(super) const REGIONS: [(u64, u64); 3] = [(0, 0x1_0000), (0x1_1000, 0x1000), (0x2_0000, 0x1000)];
pub(super) const UNTOUCHED: u8 = 0xee;
/// Longer only while the device has completed fewer than [`ENOUGH`] requests (a loaded
/// machine), so that the checks never pass on an empty run.
pub(super) const RACE_MAX: Duration = Duration::from_secs(10);
pub(super) const ENOUGH: u64 = 100;

/// Guest memory of [`REGIONS`], the `canary` range in the first region and the whole third
/// region filled with `canary_byte`.
pub(super) fn racing_memory(canary: (u64, u64), canary_byte: u8) -> Memory {
    let ranges = REGIONS.map(|(at, len)| (GuestAddress(at), len as usize));
    let mem = Memory::from_ranges(&ranges).unwrap();
    fill(&mem, canary, canary_byte);
    fill(&mem, REGIONS[2], canary_byte);
    mem
}

/// A split queue of `size` entries at `rings` (descriptors, avail, used), as a driver's
/// set-up leaves it.
pub(super) fn ring_queue(size: u16, rings: [u64; 3], ready: bool) -> Queue {
    let mut q = Queue::new(size).expect("queue size is a power of two");
    q.set_size(size);
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(rings[0]);
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(rings[1]);
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(rings[2]);
    q.set_used_ring_address(lo, hi);
    q.set_ready(ready);
    q
}

pub(super) fn fill(mem: &Memory, (at, len): (u64, u64), byte: u8) {
    poke(mem, at, &vec![byte; len as usize]);
}

/// splitmix64, for the racer's choices.
pub(super) fn next(s: &mut u64) -> u64 {
    crate::backends::net::peer::pattern::splitmix(s)
}

/// The racer moves the avail index of a `size`-entry ring at `avail`, as `r` says: a jump
/// (which breaks the queue) or a step back. (The index is read afresh: the device side's
/// reset may have set it back to 0.)
pub(super) fn move_avail_index(mem: &Memory, avail: u64, size: u16, r: u64) {
    let delta = match (r >> 8) % 4 {
        0 => (r >> 16) as u16,
        1 => size + 1,
        _ => 0u16.wrapping_sub(((r >> 16) % 4) as u16),
    };
    let idx = peek_u16(mem, avail + 2).wrapping_add(delta);
    poke(mem, avail + 2, &idx.to_le_bytes());
}

#[derive(Default)]
pub(super) struct CountingTrigger(AtomicU64);

impl InterruptTrigger for CountingTrigger {
    fn trigger(&self, _why: InterruptType) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn write_desc(mem: &Memory, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
    put_desc(mem, DESC, index.into(), addr, len, flags, next);
}

fn activate(blk: &mut Blk, mem: &Memory, irq: &Arc<CountingTrigger>) {
    blk.reset();
    blk.activate(Activation {
        mem: mem.clone(),
        features: 0,
        queues: vec![ring_queue(QUEUE_SIZE, [DESC, AVAIL, USED], true)],
        interrupt: irq.clone(),
    })
    .expect("activation");
}

/// The honest chains, written once: reads of 2 sectors from sector 2k, each its own buffers.
fn honest_chains(mem: &Memory) {
    for k in 0..HONEST {
        let head = 4 * k;
        let kk = k as u64;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h[8..16].copy_from_slice(&(2 * kk).to_le_bytes());
        poke(mem, HONEST_HDR + 16 * kk, &h);
        let (next, write) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
        write_desc(mem, head, HONEST_HDR + 16 * kk, 16, next, head + 1);
        write_desc(
            mem,
            head + 1,
            HONEST_DATA + 1024 * kk,
            1024,
            next | write,
            head + 2,
        );
        write_desc(mem, head + 2, HONEST_STATUS + kk, 1, write, 0);
    }
}

/// An address a hostile descriptor may carry, and a length that keeps it out of the honest
/// and canary memory: in the hostile area, straddling the end of the first region or the
/// hostile region into a hole, in a hole, or past everything.
fn hostile_buffer(rng: &mut u64) -> (u64, u32) {
    let (base, len) = HOSTILE;
    let r = next(rng);
    match r % 6 {
        0..=2 => {
            let addr = base + (r >> 8) % len;
            (addr, ((r >> 32) % (base + len - addr)) as u32)
        }
        3 => (REGIONS[1].0 + (r >> 8) % REGIONS[1].1, (r >> 32) as u32),
        4 => (0x1_0000 + (r >> 8) % 0x1000, (r >> 32) as u32),
        _ => (u64::MAX - (r >> 8) % 0x1000, (r >> 32) as u32),
    }
}

/// Heads the guest may publish: the honest chains' and even hostile descriptors.
fn published(head: u16) -> bool {
    (head < 4 * HONEST && head.is_multiple_of(4))
        || ((16..QUEUE_SIZE).contains(&head) && head.is_multiple_of(2))
}

/// The second vCPU until `stop`: one step at a time, publishes chains (honest or hostile),
/// rewrites hostile descriptors, headers and buffers, and moves the avail index by small
/// steps, big jumps and backwards. Returns how many steps it took.
fn racer(mem: &Memory, stop: &AtomicBool, seed: u64) -> u64 {
    let mut rng = seed;
    let mut steps: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        steps += 1;
        let r = next(&mut rng);
        match r % 8 {
            0 | 1 => {
                // Publish: an honest head or an even hostile one, then the index.
                let head = if r & 0x100 != 0 {
                    4 * ((r >> 9) % HONEST as u64) as u16
                } else {
                    16 + 2 * ((r >> 9) % 8) as u16
                };
                push_avail(mem, AVAIL, QUEUE_SIZE, head);
            }
            2 | 3 => {
                let index = 16 + ((r >> 8) % 16) as u16;
                let (addr, len) = hostile_buffer(&mut rng);
                // NEXT and WRITE: an indirect table would be hostile junk that may rightly
                // point anywhere, honest buffers and canaries included.
                let flags = (r >> 16) as u16 & 0x3;
                let next_index = 16 + ((r >> 24) % 16) as u16;
                write_desc(mem, index, addr, len, flags, next_index);
            }
            4 => {
                // A hostile header or buffer: any type and sector, or junk.
                let (addr, len) = hostile_buffer(&mut rng);
                let junk = next(&mut rng).to_le_bytes();
                let n = (len as usize).min(64);
                let bytes: Vec<u8> = junk.iter().copied().cycle().take(n).collect();
                poke(mem, addr, &bytes);
            }
            // Rarer than the rest: a broken queue serves nothing until the reset.
            5 if (r >> 20).is_multiple_of(4) => move_avail_index(mem, AVAIL, QUEUE_SIZE, r),
            6 => poke(mem, AVAIL, &((r >> 8) as u16 & 1).to_le_bytes()),
            _ => std::hint::spin_loop(),
        }
        // On a machine with fewer free cores than threads, let the device run between bursts
        // rather than see only the end of a long one.
        if steps.is_multiple_of(64) {
            std::thread::yield_now();
        }
    }
    steps
}

/// What the device side saw.
#[derive(Debug, Default)]
struct Served {
    passes: u64,
    broken: u64,
    completions: u64,
}

/// The device side until `stop`: serve the queue; a broken queue is reset and re-activated
/// (the driver's answer to NEEDS_RESET), its used index starting over. Every used element is
/// checked as it appears.
fn device(
    blk: &mut Blk,
    mem: &Memory,
    irq: &Arc<CountingTrigger>,
    stop: &AtomicBool,
    completed: &AtomicU64,
) -> Served {
    let mut served = Served::default();
    let mut seen_used: u16 = 0;
    while !stop.load(Ordering::Relaxed) {
        served.passes += 1;
        if blk.process_queue(0).is_err() {
            served.broken += 1;
            activate(blk, mem, irq);
            poke(mem, USED + 2, &0u16.to_le_bytes());
            poke(mem, AVAIL + 2, &0u16.to_le_bytes());
            seen_used = 0;
            continue;
        }
        let used_idx = peek_u16(mem, USED + 2);
        while seen_used != used_idx {
            let at = USED + 4 + 8 * (seen_used % QUEUE_SIZE) as u64;
            let id = mem.read_obj::<u32>(GuestAddress(at)).unwrap_or(u32::MAX);
            assert!(
                u16::try_from(id).is_ok_and(published),
                "completed id {id} was never published"
            );
            served.completions += 1;
            completed.fetch_add(1, Ordering::Relaxed);
            seen_used = seen_used.wrapping_add(1);
        }
    }
    served
}

fn check_untouched(mem: &Memory, (at, len): (u64, u64), byte: u8, what: &str) {
    let mut now = vec![0u8; len as usize];
    mem.read_slice(&mut now, GuestAddress(at)).expect(what);
    assert!(now.iter().all(|&b| b == byte), "{what} was written");
}

/// Each honest chain's status and data: never run (untouched), or OK with its sectors.
fn check_honest(mem: &Memory) -> u16 {
    let mut done = 0;
    for k in 0..HONEST as u64 {
        let status = mem.read_obj::<u8>(GuestAddress(HONEST_STATUS + k)).unwrap();
        let mut data = vec![0u8; 1024];
        mem.read_slice(&mut data, GuestAddress(HONEST_DATA + 1024 * k))
            .unwrap();
        if status == UNTOUCHED {
            assert!(
                data.iter().all(|&b| b == UNTOUCHED),
                "chain {k}: data, no status"
            );
            continue;
        }
        assert_eq!(status, VIRTIO_BLK_S_OK as u8, "honest chain {k}");
        let mut want = pattern_sector(2 * k);
        want.extend(pattern_sector(2 * k + 1));
        assert_eq!(data, want, "honest chain {k}'s sectors");
        done += 1;
    }
    done
}

#[test]
fn a_racing_guest_never_gets_a_request_it_did_not_make() {
    let mem = racing_memory(CANARY, CANARY_BYTE);
    fill(&mem, (HONEST_STATUS, HONEST as u64), UNTOUCHED);
    fill(&mem, (HONEST_DATA, 1024 * HONEST as u64), UNTOUCHED);
    honest_chains(&mem);
    let disk = MemDisk::patterned(64, true, pattern_byte).unwrap();
    let mut blk = Blk::new(Box::new(disk.clone()), [0; 20]);
    let irq = Arc::new(CountingTrigger::default());
    activate(&mut blk, &mem, &irq);

    let stop = AtomicBool::new(false);
    let completed = AtomicU64::new(0);
    let (steps, served) = std::thread::scope(|s| {
        let racer = s.spawn(|| racer(&mem, &stop, 0x5eed_7ace));
        let device = s.spawn(|| device(&mut blk, &mem, &irq, &stop, &completed));
        let start = Instant::now();
        let enough = || completed.load(Ordering::Relaxed) >= ENOUGH;
        while start.elapsed() < RACE || (!enough() && start.elapsed() < RACE_MAX) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        (racer.join().unwrap(), device.join().unwrap())
    });
    check_untouched(&mem, CANARY, CANARY_BYTE, "canary inside the first region");
    check_untouched(&mem, REGIONS[2], CANARY_BYTE, "the canary region");
    let honest_done = check_honest(&mem);
    println!("racing: {steps} racer steps, {served:?}, {honest_done} honest chains served");
    assert!(
        honest_done > 0,
        "no honest chain was served during the race"
    );
    assert!(
        steps > 1000 && served.passes > 100,
        "{steps} steps, {served:?}"
    );
    assert!(served.completions > 0 && served.broken > 0, "{served:?}");
    assert_eq!(
        disk.contents(),
        pattern_disk(64).contents(),
        "read-only disk"
    );

    // Afterwards the device still serves an honest driver exactly.
    fill(&mem, (HONEST_STATUS, HONEST as u64), UNTOUCHED);
    fill(&mem, (HONEST_DATA, 1024 * HONEST as u64), UNTOUCHED);
    honest_chains(&mem);
    activate(&mut blk, &mem, &irq);
    fill(&mem, (AVAIL, 0x1000), 0);
    fill(&mem, (USED, 0x1000), 0);
    for k in 0..HONEST {
        poke(&mem, AVAIL + 4 + 2 * k as u64, &(4 * k).to_le_bytes());
    }
    poke(&mem, AVAIL + 2, &HONEST.to_le_bytes());
    blk.process_queue(0).unwrap();
    assert_eq!(peek_u16(&mem, USED + 2), HONEST);
    assert_eq!(
        check_honest(&mem),
        HONEST,
        "every honest chain served after the race"
    );
}
