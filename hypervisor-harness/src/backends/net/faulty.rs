//! `faults=`: a wrapper around any [`NetBackend`] that breaks the wire on a seeded schedule, in
//! both directions: it drops, duplicates, reorders and truncates frames, so that the guest's
//! TCP has to recover (retransmits, duplicate ACKs, checksum failures) while a test checks the
//! stream by counts and checksums.
//!
//! `--net virtio:peer,faults=drop:5%+dup:2%+reorder:3%+truncate:1%+seed:7`: each frame draws
//! one number from a splitmix64 stream (one stream per direction, from the seed), and that
//! number alone picks its fate, so the same seed gives the same fates to the same frame
//! sequence. The fates exclude each other; their rates add up to at most 100%.
//!
//! - drop: the frame vanishes.
//! - dup: the frame goes twice, back to back.
//! - reorder: the frame is held and goes after the next one (TX: after the next `transmit`,
//!   or at the next `poll` if none came; RX: after the next frame the inner backend has, or
//!   at once if it has none). Only an actual overtaking is counted.
//! - truncate: the frame loses a tail, keeping at least its Ethernet header.
//!
//! [`FaultCounts`] count what happened; the harness reports them as a `net-faults:` note.

use super::{BackendCounters, FrameMeta, NetBackend, NetBackendError};
use crate::backends::net::peer::pattern::splitmix;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The prefix of the harness's note with a NIC's fault counts (JSON [`FaultNote`] follows).
pub const FAULTS_NOTE: &str = "net-faults: ";

/// Rates are in basis points (1/100 of a percent), so `0.5%` is exact.
const FULL: u32 = 10_000;

/// A truncated frame keeps at least its Ethernet header.
const MIN_TRUNCATED: usize = 14;

/// What `faults=` asks for: each fate's rate in basis points, and the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultPlan {
    pub drop: u32,
    pub dup: u32,
    pub reorder: u32,
    pub truncate: u32,
    pub seed: u64,
}

impl FaultPlan {
    /// Parse `drop:5%+dup:2%+reorder:3%+truncate:1%+seed:7` (any subset, any order; a rate is
    /// a percentage with up to two decimals).
    pub fn parse(s: &str) -> Result<Self, String> {
        let usage = "expected FAULT:RATE%[+...] with FAULT drop, dup, reorder or truncate \
                     (and seed:N), e.g. drop:5%+dup:2%+seed:7";
        let mut plan = FaultPlan {
            seed: 1,
            ..Default::default()
        };
        for item in s.split('+') {
            let (name, value) = item
                .split_once(':')
                .ok_or_else(|| format!("faults {item:?}: not FAULT:RATE; {usage}"))?;
            if name == "seed" {
                plan.seed = value
                    .parse()
                    .map_err(|_| format!("faults seed {value:?} is not a number"))?;
                continue;
            }
            let rate = parse_percent(value)
                .ok_or_else(|| format!("faults {name} {value:?} is not a rate like 5% or 0.5%"))?;
            let slot = match name {
                "drop" => &mut plan.drop,
                "dup" => &mut plan.dup,
                "reorder" => &mut plan.reorder,
                "truncate" => &mut plan.truncate,
                _ => return Err(format!("faults: unknown fault {name:?}; {usage}")),
            };
            *slot = rate;
        }
        if plan.drop + plan.dup + plan.reorder + plan.truncate > FULL {
            return Err(format!("faults {s:?}: the rates add up to more than 100%"));
        }
        Ok(plan)
    }
}

/// `5%`, `0.5%`, `12.25%` as basis points; at most 100%.
fn parse_percent(s: &str) -> Option<u32> {
    let number = s.strip_suffix('%')?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.len() > 2 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u32 = whole.parse().ok()?;
    let fraction: u32 = format!("{fraction:0<2}").parse().ok()?;
    let bp = whole.checked_mul(100)?.checked_add(fraction)?;
    (bp <= FULL).then_some(bp)
}

/// The fate of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Pass,
    Drop,
    Duplicate,
    Reorder,
    /// Keep this many bytes.
    Truncate(usize),
}

/// One direction's deterministic sequence of fates.
#[derive(Debug, Clone)]
pub struct Schedule {
    plan: FaultPlan,
    state: u64,
}

impl Schedule {
    /// The schedule of direction `stream` (0: TX, 1: RX) under `plan`.
    pub fn new(plan: FaultPlan, stream: u64) -> Self {
        Self {
            plan,
            state: plan.seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407),
        }
    }

    /// The fate of the next frame, `len` bytes long.
    pub fn next(&mut self, len: usize) -> Fate {
        let draw = splitmix(&mut self.state);
        let roll = (draw % u64::from(FULL)) as u32;
        let p = &self.plan;
        let mut bound = p.drop;
        if roll < bound {
            return Fate::Drop;
        }
        bound += p.dup;
        if roll < bound {
            return Fate::Duplicate;
        }
        bound += p.reorder;
        if roll < bound {
            return Fate::Reorder;
        }
        bound += p.truncate;
        if roll < bound && len > MIN_TRUNCATED {
            // The upper bits, unused by the roll, pick the length in MIN_TRUNCATED..len.
            let span = (len - MIN_TRUNCATED) as u64;
            return Fate::Truncate(MIN_TRUNCATED + ((draw >> 32) % span) as usize);
        }
        Fate::Pass
    }
}

/// What the wrapper did, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FaultCounts {
    pub tx_dropped: u64,
    pub tx_duplicated: u64,
    pub tx_reordered: u64,
    pub tx_truncated: u64,
    pub rx_dropped: u64,
    pub rx_duplicated: u64,
    pub rx_reordered: u64,
    pub rx_truncated: u64,
}

/// The `net-faults:` note: which `--net` (from 0) and its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultNote {
    pub nic: usize,
    #[serde(flatten)]
    pub counts: FaultCounts,
}

/// The counts, readable by the harness's report while the device thread owns the backend.
pub type SharedFaultCounts = Arc<Mutex<FaultCounts>>;

/// A frame waiting in the wrapper.
struct Held {
    meta: FrameMeta,
    frame: Vec<u8>,
}

/// The wrapper. Its `rx_ready_fd` is an epoll set of the inner backend's fd and an eventfd of
/// its own, which `poll` writes while frames wait here (a duplicate, a frame that was
/// overtaken), so that no frame it holds waits unseen.
pub struct FaultyNet {
    inner: Box<dyn NetBackend>,
    tx: Schedule,
    rx: Schedule,
    /// A TX frame held for reordering, sent after the next one.
    tx_held: Option<Held>,
    /// RX frames to hand out before asking the inner backend again.
    rx_pending: VecDeque<Held>,
    counts: SharedFaultCounts,
    epoll: Epoll,
    ready: EventFd,
    signalled: bool,
}

impl FaultyNet {
    pub fn new(inner: Box<dyn NetBackend>, plan: FaultPlan) -> std::io::Result<Self> {
        let epoll = Epoll::new()?;
        let ready = EventFd::new(EFD_NONBLOCK)?;
        for (fd, token) in [(inner.rx_ready_fd(), 0), (ready.as_raw_fd(), 1)] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(Self {
            inner,
            tx: Schedule::new(plan, 0),
            rx: Schedule::new(plan, 1),
            tx_held: None,
            rx_pending: VecDeque::new(),
            counts: SharedFaultCounts::default(),
            epoll,
            ready,
            signalled: false,
        })
    }

    /// The counts, for the report.
    pub fn counts(&self) -> SharedFaultCounts {
        self.counts.clone()
    }

    fn count(&self, f: impl FnOnce(&mut FaultCounts)) {
        f(&mut self.counts.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn release_tx_held(&mut self) -> Result<(), NetBackendError> {
        match self.tx_held.take() {
            Some(h) => self.inner.transmit(&h.meta, &h.frame),
            None => Ok(()),
        }
    }
}

/// A truncated frame's metadata: a partial checksum whose fields fall beyond the end cannot
/// be finished, so the request goes (the frame is broken anyway).
fn truncated_meta(meta: &FrameMeta, len: usize) -> FrameMeta {
    let mut m = *meta;
    if let Some(c) = m.needs_csum {
        if usize::from(c.start) + usize::from(c.offset) + 2 > len {
            m.needs_csum = None;
        }
    }
    m
}

impl NetBackend for FaultyNet {
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    fn accepts_partial_checksum(&self) -> bool {
        self.inner.accepts_partial_checksum()
    }

    fn transmit(&mut self, meta: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError> {
        let went = match self.tx.next(frame.len()) {
            Fate::Reorder => {
                // A frame already held goes first: this one does not overtake it.
                self.release_tx_held()?;
                self.tx_held = Some(Held {
                    meta: *meta,
                    frame: frame.to_vec(),
                });
                return Ok(());
            }
            Fate::Pass => {
                self.inner.transmit(meta, frame)?;
                true
            }
            Fate::Drop => {
                self.count(|c| c.tx_dropped += 1);
                false
            }
            Fate::Duplicate => {
                self.count(|c| c.tx_duplicated += 1);
                self.inner.transmit(meta, frame)?;
                self.inner.transmit(meta, frame)?;
                true
            }
            Fate::Truncate(len) => {
                self.count(|c| c.tx_truncated += 1);
                self.inner
                    .transmit(&truncated_meta(meta, len), &frame[..len])?;
                true
            }
        };
        if went && self.tx_held.is_some() {
            self.count(|c| c.tx_reordered += 1);
        }
        self.release_tx_held()
    }

    fn flush(&mut self) -> Result<(), NetBackendError> {
        self.inner.flush()
    }

    fn tx_ready(&mut self) -> bool {
        self.inner.tx_ready()
    }

    fn tx_wait_fd(&self) -> Option<RawFd> {
        self.inner.tx_wait_fd()
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
        loop {
            if let Some(h) = self.rx_pending.pop_front() {
                let len = h.frame.len().min(buf.len());
                buf[..len].copy_from_slice(&h.frame[..len]);
                return Ok(Some((len, h.meta)));
            }
            let Some((len, meta)) = self.inner.receive(buf)? else {
                if self.signalled {
                    // Nonblocking: a count already read is EAGAIN, which is fine.
                    let _ = self.ready.read();
                    self.signalled = false;
                }
                return Ok(None);
            };
            let len = len.min(buf.len());
            match self.rx.next(len) {
                Fate::Pass => return Ok(Some((len, meta))),
                Fate::Drop => self.count(|c| c.rx_dropped += 1),
                Fate::Duplicate => {
                    self.count(|c| c.rx_duplicated += 1);
                    self.rx_pending.push_back(Held {
                        meta,
                        frame: buf[..len].to_vec(),
                    });
                    return Ok(Some((len, meta)));
                }
                Fate::Reorder => {
                    let held = Held {
                        meta,
                        frame: buf[..len].to_vec(),
                    };
                    match self.inner.receive(buf)? {
                        Some((next_len, next_meta)) => {
                            self.count(|c| c.rx_reordered += 1);
                            self.rx_pending.push_back(held);
                            return Ok(Some((next_len.min(buf.len()), next_meta)));
                        }
                        // Nothing to overtake it: it goes as it is.
                        None => self.rx_pending.push_back(held),
                    }
                }
                Fate::Truncate(short) => {
                    self.count(|c| c.rx_truncated += 1);
                    return Ok(Some((short, truncated_meta(&meta, short))));
                }
            }
        }
    }

    fn rx_ready_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn poll(&mut self) -> Option<Duration> {
        // A held TX frame that nothing overtook goes before the inner backend runs its
        // timers, so that its replies are seen by the inner poll. An error here is the
        // inner backend's to report at the next transmit.
        let _ = self.release_tx_held();
        let delay = self.inner.poll();
        if !self.rx_pending.is_empty() && !self.signalled {
            self.ready.write(1).ok();
            self.signalled = true;
        }
        delay
    }

    fn counters(&self) -> BackendCounters {
        self.inner.counters()
    }
}

/// Wrap `inner` when `plan` asks for faults; the counts come back for the report.
pub fn wrap(
    inner: Box<dyn NetBackend>,
    plan: Option<FaultPlan>,
) -> std::io::Result<(Box<dyn NetBackend>, Option<SharedFaultCounts>)> {
    match plan {
        None => Ok((inner, None)),
        Some(plan) => {
            let faulty = FaultyNet::new(inner, plan)?;
            let counts = faulty.counts();
            Ok((Box::new(faulty), Some(counts)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_seed() {
        let p = FaultPlan::parse("drop:5%+dup:2%+reorder:3%+truncate:0.5%+seed:7").unwrap();
        assert_eq!(
            p,
            FaultPlan {
                drop: 500,
                dup: 200,
                reorder: 300,
                truncate: 50,
                seed: 7
            }
        );
        assert_eq!(FaultPlan::parse("dup:100%").unwrap().dup, FULL);
        assert_eq!(
            FaultPlan::parse("drop:1.25%").unwrap().seed,
            1,
            "default seed"
        );
        for (bad, why) in [
            ("drop", "not FAULT:RATE"),
            ("drop:5", "not a rate"),
            ("drop:-1%", "not a rate"),
            ("drop:101%", "not a rate"),
            ("drop:0.125%", "not a rate"),
            ("drop:.5%", "not a rate"),
            ("lose:5%", "unknown fault"),
            ("seed:x", "not a number"),
            ("drop:60%+dup:41%", "more than 100%"),
        ] {
            let e = FaultPlan::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    fn fates(plan: FaultPlan, stream: u64, n: usize) -> Vec<Fate> {
        let mut s = Schedule::new(plan, stream);
        (0..n).map(|_| s.next(1000)).collect()
    }

    #[test]
    fn the_schedule_is_seeded_and_keeps_its_rates() {
        let plan = FaultPlan::parse("drop:5%+dup:2%+reorder:3%+truncate:1%+seed:7").unwrap();
        let n = 200_000;
        let a = fates(plan, 0, n);
        assert_eq!(a, fates(plan, 0, n), "same seed, same fates");
        assert_ne!(a, fates(plan, 1, n), "each direction its own stream");
        let other = FaultPlan { seed: 8, ..plan };
        assert_ne!(a, fates(other, 0, n), "another seed, other fates");
        let count = |f: fn(&Fate) -> bool| a.iter().filter(|x| f(x)).count();
        // Within 10% of the rate: 200 000 draws make that many standard deviations.
        for (what, got, bp) in [
            ("drop", count(|f| *f == Fate::Drop), plan.drop),
            ("dup", count(|f| *f == Fate::Duplicate), plan.dup),
            ("reorder", count(|f| *f == Fate::Reorder), plan.reorder),
            (
                "truncate",
                count(|f| matches!(f, Fate::Truncate(_))),
                plan.truncate,
            ),
        ] {
            let want = n as u64 * u64::from(bp) / u64::from(FULL);
            assert!(
                (got as u64).abs_diff(want) * 10 < want,
                "{what}: {got} of {n}, want about {want}"
            );
        }
        for f in &a {
            if let Fate::Truncate(len) = f {
                assert!((MIN_TRUNCATED..1000).contains(len), "{len}");
            }
        }
        // Nothing asked, nothing done; a frame too short to truncate passes.
        let none = FaultPlan::parse("seed:3").unwrap();
        assert!(fates(none, 0, 10_000).iter().all(|f| *f == Fate::Pass));
        let mut s = Schedule::new(FaultPlan::parse("truncate:100%").unwrap(), 0);
        assert_eq!(s.next(MIN_TRUNCATED), Fate::Pass);
        assert!(matches!(s.next(MIN_TRUNCATED + 1), Fate::Truncate(14)));
    }

    /// A wire in a box: transmitted frames are kept; frames queued for receive come out in
    /// order.
    struct Wire {
        sent: Arc<Mutex<Vec<Vec<u8>>>>,
        to_guest: VecDeque<Vec<u8>>,
        fd: EventFd,
    }

    impl NetBackend for Wire {
        fn describe(&self) -> String {
            "wire".into()
        }
        fn transmit(&mut self, _: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError> {
            self.sent.lock().unwrap().push(frame.to_vec());
            Ok(())
        }
        fn receive(
            &mut self,
            buf: &mut [u8],
        ) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
            Ok(self.to_guest.pop_front().map(|f| {
                buf[..f.len()].copy_from_slice(&f);
                (f.len(), FrameMeta::default())
            }))
        }
        fn rx_ready_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }
        fn counters(&self) -> BackendCounters {
            BackendCounters::default()
        }
    }

    /// Frame `i`: its number, then filler, 60..=1514 bytes.
    fn frame(i: u32) -> Vec<u8> {
        let len = 60 + (i as usize * 97) % 1455;
        let mut f = vec![(i % 251) as u8; len];
        f[..4].copy_from_slice(&i.to_le_bytes());
        f
    }

    /// What came out, against what went in: every frame intact or a prefix of itself, each
    /// number 0, 1 or 2 times, and the counts match what is seen.
    fn check_stream(out: &[Vec<u8>], n: u32) -> (u64, u64, u64, u64) {
        let mut seen = vec![0u32; n as usize];
        let (mut truncated, mut inversions) = (0, 0);
        let mut last = None;
        for f in out {
            let i = u32::from_le_bytes(f[..4].try_into().unwrap());
            let whole = frame(i);
            assert!(whole.starts_with(f), "frame {i} changed");
            truncated += u64::from(f.len() < whole.len());
            seen[i as usize] += 1;
            if last.is_some_and(|l| i < l) {
                inversions += 1;
            }
            last = Some(i);
        }
        let dropped = seen.iter().filter(|&&s| s == 0).count() as u64;
        let duplicated = seen.iter().filter(|&&s| s == 2).count() as u64;
        assert!(seen.iter().all(|&s| s <= 2));
        (dropped, duplicated, inversions, truncated)
    }

    fn plan() -> FaultPlan {
        FaultPlan::parse("drop:5%+dup:2%+reorder:3%+truncate:1%+seed:11").unwrap()
    }

    #[test]
    fn transmit_breaks_frames_as_counted() {
        let sent = Arc::default();
        let wire = Wire {
            sent: Arc::clone(&sent),
            to_guest: VecDeque::new(),
            fd: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        let mut faulty = FaultyNet::new(Box::new(wire), plan()).unwrap();
        let n = 20_000;
        for i in 0..n {
            faulty.transmit(&FrameMeta::default(), &frame(i)).unwrap();
        }
        faulty.poll();
        let c = *faulty.counts().lock().unwrap();
        let (dropped, duplicated, inversions, truncated) = check_stream(&sent.lock().unwrap(), n);
        assert_eq!(
            (dropped, duplicated, inversions, truncated),
            (
                c.tx_dropped,
                c.tx_duplicated,
                c.tx_reordered,
                c.tx_truncated
            )
        );
        assert!(c.tx_dropped > 0 && c.tx_duplicated > 0 && c.tx_reordered > 0);
        assert!(c.tx_truncated > 0);
        assert_eq!(c.rx_dropped + c.rx_duplicated + c.rx_reordered, 0);
        assert_eq!(faulty.describe(), "faulty(wire)");
    }

    #[test]
    fn receive_breaks_frames_as_counted_and_signals_what_it_holds() {
        let n = 20_000;
        let wire = Wire {
            sent: Arc::default(),
            to_guest: (0..n).map(frame).collect(),
            fd: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        let mut faulty = FaultyNet::new(Box::new(wire), plan()).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2048];
        while let Some((len, _)) = faulty.receive(&mut buf).unwrap() {
            out.push(buf[..len].to_vec());
        }
        let c = *faulty.counts().lock().unwrap();
        let seen = check_stream(&out, n);
        assert_eq!(
            seen,
            (
                c.rx_dropped,
                c.rx_duplicated,
                c.rx_reordered,
                c.rx_truncated
            )
        );
        assert!(c.rx_dropped > 0 && c.rx_duplicated > 0 && c.rx_reordered > 0);
        assert!(c.rx_truncated > 0);

        // A duplicate left waiting (the guest took one frame and stopped) makes the fd
        // readable at the next poll, and draining clears it.
        let readable = |fd: RawFd| {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no timeout.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        let wire = Wire {
            sent: Arc::default(),
            to_guest: [frame(1)].into(),
            fd: EventFd::new(EFD_NONBLOCK).unwrap(),
        };
        let mut faulty =
            FaultyNet::new(Box::new(wire), FaultPlan::parse("dup:100%").unwrap()).unwrap();
        assert!(faulty.receive(&mut buf).unwrap().is_some());
        assert!(!readable(faulty.rx_ready_fd()));
        faulty.poll();
        assert!(readable(faulty.rx_ready_fd()), "the duplicate waits");
        assert!(faulty.receive(&mut buf).unwrap().is_some());
        assert!(faulty.receive(&mut buf).unwrap().is_none());
        assert!(!readable(faulty.rx_ready_fd()));
    }
}
