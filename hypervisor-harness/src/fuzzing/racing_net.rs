//! The racing guest for virtio-net, as [`racing`](super::racing) is for virtio-blk: one thread
//! plays a second vCPU that rewrites the RX and TX queues' descriptors, ring indices and
//! buffers while another thread, the device's I/O path, serves them (`Net::process_queue` on
//! the TX queue, which transmits and then runs the receive pass, and on the RX queue, as the
//! event loop does on notifies and backend events). Bounded in time like its sibling.
//!
//! The rules that make the checks exact: bytes split the world in two. Every byte of an
//! honest frame (the four TX chains, never rewritten, and the frames the backend injects) is
//! odd; every byte the racer writes into the TX hostile area is even (zero or above 0x7f), so
//! a hostile header can never ask for a checksum (flag bit 0) and a hostile frame is all even.
//! Hostile TX descriptors point only into the TX hostile area, holes, the region's end or past
//! RAM; hostile RX descriptors only into the RX hostile area, the hostile region, holes or
//! past RAM. So every frame the backend sees is an honest frame byte for byte or all even;
//! each used element names a head the guest publishes; honest RX buffers hold a header and an
//! injected frame or nothing; and the canaries, the honest TX memory and the TX hostile
//! area's evenness survive.

use super::racing::{
    fill, move_avail_index, next, racing_memory, ring_queue, CountingTrigger, ENOUGH, RACE_MAX,
    REGIONS, UNTOUCHED,
};
use super::virtio_rig::{canonical, push_avail, put_desc, F_NEXT, F_WRITE};
use super::*;
use crate::backends::net::{BackendCounters, FrameMeta, NetBackend, NetBackendError};
use crate::devices::virtio::device::{Activation, VirtioDevice};
use crate::devices::virtio::net::Net;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

const QUEUE_SIZE: u16 = 32;
/// Queue q's (0: RX, 1: TX) descriptors, avail and used rings: the rig's canonical ones.
fn desc(q: u64) -> u64 {
    canonical(q as usize)[0]
}
fn avail(q: u64) -> u64 {
    canonical(q as usize)[1]
}
fn used(q: u64) -> u64 {
    canonical(q as usize)[2]
}
const RX: u64 = 0;
const TX: u64 = 1;
const HEADER_LEN: usize = 12;
/// Honest chains: TX head 2k is a zero header at TX_HDR + 16k and frame k at TX_FRAME +
/// 0x800k; RX head 2k is one writable buffer at RX_BUF + 0x800k.
const HONEST: u16 = 4;
const TX_HDR: u64 = 0x2000;
const TX_FRAME: u64 = 0x3000;
const RX_BUF: u64 = 0x5000;
const RX_BUF_LEN: u32 = 0x800;
/// Nobody's: the device must never write here.
const CANARY: (u64, u64) = (0x7000, 0x1000);
/// Where hostile RX descriptors point (the device may write), and hostile TX ones (it only
/// reads; it runs to the end of the first region).
const RX_HOSTILE: (u64, u64) = (0x8000, 0x4000);
const TX_HOSTILE: (u64, u64) = (0xc000, 0x4000);
// The layout is racing's: the first region, a hole, a hostile region (RX), a hole, a canary
// region.
const CANARY_BYTE: u8 = 0xc2;
/// Frames the backend injects, cycling, and how many per device round at most.
const INJECTED: usize = 8;
const RX_PER_ROUND: u32 = 8;
const RACE: Duration = Duration::from_millis(2000);

/// Byte j of honest frame `k` (TX k < HONEST, injected k < INJECTED, told apart by `base`):
/// odd, and each frame's first byte its own.
fn honest_byte(base: usize, k: usize, j: usize) -> u8 {
    1 + 2 * (((base + k) * 13 + j) % 64) as u8
}

fn honest_frame(base: usize, k: usize) -> Vec<u8> {
    let len = 60 + 200 * k;
    (0..len).map(|j| honest_byte(base, k, j)).collect()
}

fn tx_frame(k: usize) -> Vec<u8> {
    honest_frame(0, k)
}

fn injected_frame(k: usize) -> Vec<u8> {
    honest_frame(HONEST as usize, k)
}

/// What the backend saw.
#[derive(Default)]
struct WireLog {
    honest_tx: AtomicU64,
    hostile_tx: AtomicU64,
    injected: AtomicU64,
    /// Frames the receive pass may still take this round.
    rx_budget: AtomicU32,
}

/// Checks every frame as it is transmitted; injects the patterned frames on receive.
struct RacingWire(Arc<WireLog>);

impl NetBackend for RacingWire {
    fn describe(&self) -> String {
        "racing".into()
    }
    fn transmit(&mut self, meta: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError> {
        assert!(meta.needs_csum.is_none(), "a partial checksum passed on");
        if (0..HONEST as usize).any(|k| frame == tx_frame(k)) {
            self.0.honest_tx.fetch_add(1, Ordering::Relaxed);
        } else {
            assert!(
                frame.iter().all(|b| b & 1 == 0),
                "transmitted a frame the guest never made: {:02x?}",
                &frame[..frame.len().min(32)]
            );
            self.0.hostile_tx.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
        let log = &self.0;
        // Only the device thread receives: a load and a store are enough.
        let budget = log.rx_budget.load(Ordering::Relaxed);
        if budget == 0 {
            return Ok(None);
        }
        log.rx_budget.store(budget - 1, Ordering::Relaxed);
        let n = log.injected.fetch_add(1, Ordering::Relaxed) as usize;
        let frame = injected_frame(n % INJECTED);
        buf[..frame.len()].copy_from_slice(&frame);
        Ok(Some((frame.len(), FrameMeta::default())))
    }
    fn rx_ready_fd(&self) -> RawFd {
        -1
    }
    fn counters(&self) -> BackendCounters {
        BackendCounters::default()
    }
}

fn write_desc(mem: &Memory, q: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
    put_desc(mem, desc(q), index.into(), addr, len, flags, next);
}

fn queue(q: u64, ready: bool) -> Queue {
    ring_queue(QUEUE_SIZE, canonical(q as usize), ready)
}

fn activate(net: &mut Net, mem: &Memory, irq: &Arc<CountingTrigger>) {
    net.reset();
    net.activate(Activation {
        mem: mem.clone(),
        features: 1 << VIRTIO_F_VERSION_1,
        // RX, TX and the control queue, which stays off (no CTRL_VQ).
        queues: vec![queue(RX, true), queue(TX, true), queue(2, false)],
        interrupt: irq.clone(),
    })
    .expect("activation");
}

/// The honest chains and their memory, written once.
fn honest_chains(mem: &Memory) {
    for k in 0..HONEST {
        let kk = k as u64;
        poke(mem, TX_HDR + 16 * kk, &[0; HEADER_LEN]);
        let frame = tx_frame(k as usize);
        poke(mem, TX_FRAME + 0x800 * kk, &frame);
        let head = 2 * k;
        write_desc(mem, TX, head, TX_HDR + 16 * kk, 12, F_NEXT, head + 1);
        write_desc(
            mem,
            TX,
            head + 1,
            TX_FRAME + 0x800 * kk,
            frame.len() as u32,
            0,
            0,
        );
        write_desc(mem, RX, head, RX_BUF + 0x800 * kk, RX_BUF_LEN, F_WRITE, 0);
    }
}

/// Heads the guest may publish: the honest chains' and even hostile descriptors.
fn published(head: u16) -> bool {
    (head < 2 * HONEST && head.is_multiple_of(2))
        || ((16..QUEUE_SIZE).contains(&head) && head.is_multiple_of(2))
}

/// An address and length for a hostile descriptor of queue `q` that stays out of honest and
/// canary memory: in its hostile area, straddling a region's end into a hole, in a hole, or
/// past everything.
fn hostile_buffer(rng: &mut u64, q: u64) -> (u64, u32) {
    let (base, len) = if q == TX { TX_HOSTILE } else { RX_HOSTILE };
    let r = next(rng);
    match r % 6 {
        0..=2 => {
            let addr = base + (r >> 8) % len;
            (addr, ((r >> 32) % (base + len - addr)) as u32)
        }
        3 if q == RX => (REGIONS[1].0 + (r >> 8) % REGIONS[1].1, (r >> 32) as u32),
        3 | 4 => (0x1_0000 + (r >> 8) % 0x1000, (r >> 32) as u32),
        _ => (u64::MAX - (r >> 8) % 0x1000, (r >> 32) as u32),
    }
}

/// Hostile bytes for the TX hostile area: zero or even above 0x7f (never an honest byte).
fn even_bytes(rng: &mut u64, n: usize) -> Vec<u8> {
    let word = next(rng).to_le_bytes();
    let zero = word[0] & 1 == 0;
    word.iter()
        .cycle()
        .take(n)
        .map(|b| if zero { 0 } else { (b | 0x80) & !1 })
        .collect()
}

/// The second vCPU until `stop`: publishes honest or hostile heads on either queue, rewrites
/// hostile descriptors and buffers, moves avail indices by steps, jumps and backwards, and
/// toggles the no-interrupt flag. Returns how many steps it took.
fn racer(mem: &Memory, stop: &AtomicBool, seed: u64) -> u64 {
    let mut rng = seed;
    let mut steps: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        steps += 1;
        let r = next(&mut rng);
        let q = (r >> 60) & 1;
        match r % 8 {
            0 | 1 => {
                let head = if r & 0x100 != 0 {
                    2 * ((r >> 9) % HONEST as u64) as u16
                } else {
                    16 + 2 * ((r >> 9) % 8) as u16
                };
                push_avail(mem, avail(q), QUEUE_SIZE, head);
            }
            2 | 3 => {
                let index = 16 + ((r >> 8) % 16) as u16;
                let (addr, len) = hostile_buffer(&mut rng, q);
                // NEXT and WRITE, never INDIRECT (a table of junk may rightly point anywhere).
                let flags = (r >> 16) as u16 & (F_NEXT | F_WRITE);
                let next_index = 16 + ((r >> 24) % 16) as u16;
                write_desc(mem, q, index, addr, len, flags, next_index);
            }
            4 => {
                // A hostile header or frame (TX), or scribbles over a hostile RX buffer.
                let (addr, len) = hostile_buffer(&mut rng, q);
                let n = (len as usize).min(96);
                poke(mem, addr, &even_bytes(&mut rng, n));
            }
            5 if (r >> 20).is_multiple_of(4) => move_avail_index(mem, avail(q), QUEUE_SIZE, r),
            6 => poke(mem, avail(q), &((r >> 8) as u16 & 1).to_le_bytes()),
            _ => std::hint::spin_loop(),
        }
        if steps.is_multiple_of(64) {
            std::thread::yield_now();
        }
    }
    steps
}

#[derive(Debug, Default)]
struct Served {
    rounds: u64,
    broken: u64,
    completions: [u64; 2],
}

/// The device side until `stop`: TX (and the receive pass after it), then RX; a broken queue
/// resets the device, its rings starting over. Each used element is checked as it appears.
fn device(
    net: &mut Net,
    mem: &Memory,
    irq: &Arc<CountingTrigger>,
    log: &WireLog,
    stop: &AtomicBool,
    completed: &AtomicU64,
) -> Served {
    let mut served = Served::default();
    let mut seen_used = [0u16; 2];
    while !stop.load(Ordering::Relaxed) {
        served.rounds += 1;
        log.rx_budget.store(RX_PER_ROUND, Ordering::Relaxed);
        let broken = [TX, RX]
            .iter()
            .any(|&q| net.process_queue(q as usize).is_err());
        if broken {
            served.broken += 1;
            activate(net, mem, irq);
            for q in [RX, TX] {
                poke(mem, used(q) + 2, &0u16.to_le_bytes());
                poke(mem, avail(q) + 2, &0u16.to_le_bytes());
            }
            seen_used = [0; 2];
            continue;
        }
        for q in [RX, TX] {
            let used_idx = peek_u16(mem, used(q) + 2);
            let seen = &mut seen_used[q as usize];
            while *seen != used_idx {
                let at = used(q) + 4 + 8 * (*seen % QUEUE_SIZE) as u64;
                let id = mem.read_obj::<u32>(GuestAddress(at)).unwrap_or(u32::MAX);
                let len = mem
                    .read_obj::<u32>(GuestAddress(at + 4))
                    .unwrap_or(u32::MAX);
                assert!(
                    u16::try_from(id).is_ok_and(published),
                    "queue {q}: completed id {id} was never published"
                );
                if q == RX && id < u32::from(2 * HONEST) {
                    assert!(len <= RX_BUF_LEN, "RX used length {len} past its buffer");
                }
                served.completions[q as usize] += 1;
                completed.fetch_add(1, Ordering::Relaxed);
                *seen = seen.wrapping_add(1);
            }
        }
    }
    served
}

fn read(mem: &Memory, (at, len): (u64, u64)) -> Vec<u8> {
    let mut now = vec![0u8; len as usize];
    mem.read_slice(&mut now, GuestAddress(at)).expect("in RAM");
    now
}

/// Each honest RX buffer: untouched, or a header and then one injected frame whole. Returns
/// how many hold a frame.
fn check_honest_rx(mem: &Memory) -> u16 {
    let mut filled = 0;
    for k in 0..HONEST as u64 {
        let buf = read(mem, (RX_BUF + 0x800 * k, u64::from(RX_BUF_LEN)));
        if buf.iter().all(|&b| b == UNTOUCHED) {
            continue;
        }
        let body = &buf[HEADER_LEN..];
        let which = (0..INJECTED).find(|&i| body[0] == honest_byte(HONEST as usize, i, 0));
        let frame = which.map(injected_frame);
        assert!(
            frame.as_ref().is_some_and(|f| body.starts_with(f)),
            "honest RX buffer {k} holds no injected frame: {:02x?}",
            &body[..32]
        );
        filled += 1;
    }
    filled
}

/// What no one but the racer may change: the canaries, the honest TX memory, the TX hostile
/// area's evenness.
fn check_untouched(mem: &Memory) {
    for (range, byte, what) in [
        (CANARY, CANARY_BYTE, "the canary in the first region"),
        (REGIONS[2], CANARY_BYTE, "the canary region"),
    ] {
        assert!(
            read(mem, range).iter().all(|&b| b == byte),
            "{what} was written"
        );
    }
    for k in 0..HONEST as u64 {
        assert_eq!(read(mem, (TX_HDR + 16 * k, 12)), [0; 12], "TX header {k}");
        let frame = tx_frame(k as usize);
        let at = (TX_FRAME + 0x800 * k, frame.len() as u64);
        assert_eq!(read(mem, at), frame, "TX frame {k}");
    }
    assert!(
        read(mem, TX_HOSTILE).iter().all(|b| b & 1 == 0),
        "the device wrote into the TX hostile area"
    );
}

#[test]
fn a_racing_guest_never_gets_a_frame_it_did_not_make() {
    let mem = racing_memory(CANARY, CANARY_BYTE);
    fill(&mem, TX_HOSTILE, 0x80);
    fill(&mem, (RX_BUF, 0x800 * HONEST as u64), UNTOUCHED);
    honest_chains(&mem);
    let log = Arc::new(WireLog::default());
    let mut net = Net::new(Box::new(RacingWire(log.clone())), [2, 0, 0, 0, 0, 1], 1);
    let irq = Arc::new(CountingTrigger::default());
    activate(&mut net, &mem, &irq);

    let stop = AtomicBool::new(false);
    let completed = AtomicU64::new(0);
    let (steps, served) = std::thread::scope(|s| {
        let racer = s.spawn(|| racer(&mem, &stop, 0x05ee_d0e7));
        let device = s.spawn(|| device(&mut net, &mem, &irq, &log, &stop, &completed));
        let start = Instant::now();
        let enough = || completed.load(Ordering::Relaxed) >= ENOUGH;
        while start.elapsed() < RACE || (!enough() && start.elapsed() < RACE_MAX) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        (racer.join().unwrap(), device.join().unwrap())
    });
    check_untouched(&mem);
    let filled = check_honest_rx(&mem);
    let (honest_tx, hostile_tx) = (
        log.honest_tx.load(Ordering::Relaxed),
        log.hostile_tx.load(Ordering::Relaxed),
    );
    println!(
        "racing virtio-net: {steps} racer steps, {served:?}, {honest_tx} honest and \
         {hostile_tx} hostile frames transmitted, {filled} honest RX buffers filled"
    );
    assert!(
        steps > 1000 && served.rounds > 100,
        "{steps} steps, {served:?}"
    );
    assert!(honest_tx > 0, "no honest frame went out during the race");
    assert!(filled > 0, "no honest RX buffer was filled during the race");
    assert!(
        served.completions.iter().all(|&c| c > 0) && served.broken > 0,
        "{served:?}"
    );

    // Afterwards the device still serves an honest driver exactly.
    fill(&mem, (RX_BUF, 0x800 * HONEST as u64), UNTOUCHED);
    honest_chains(&mem);
    activate(&mut net, &mem, &irq);
    for q in [RX, TX] {
        fill(&mem, (avail(q), 0x400), 0);
        fill(&mem, (used(q), 0x400), 0);
        for k in 0..HONEST {
            poke(&mem, avail(q) + 4 + 2 * k as u64, &(2 * k).to_le_bytes());
        }
        poke(&mem, avail(q) + 2, &HONEST.to_le_bytes());
    }
    let before = log.honest_tx.load(Ordering::Relaxed);
    log.rx_budget.store(u32::from(HONEST), Ordering::Relaxed);
    net.process_queue(TX as usize).unwrap();
    assert_eq!(peek_u16(&mem, used(TX) + 2), HONEST);
    assert_eq!(peek_u16(&mem, used(RX) + 2), HONEST);
    assert_eq!(
        log.honest_tx.load(Ordering::Relaxed) - before,
        u64::from(HONEST)
    );
    assert_eq!(
        check_honest_rx(&mem),
        HONEST,
        "every honest RX buffer filled"
    );
}
