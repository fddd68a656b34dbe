//! Host tests of the virtio-balloon driver against the fake device of `fake_balloon.rs`.

use super::balloon::{
    balloon_feature, stat_tag, BalloonError, MemStats, PageSource, VirtioBalloon, PAGE_SIZE,
    PFNS_PER_BATCH,
};
use super::fake::FakePlatform;
use super::fake_balloon::{balloon_platform, bits, set_target, Misbehave};
use super::pci::InterruptMode;
use std::collections::BTreeSet;
use std::vec::Vec;

/// Frames from 1 GiB up, `total` of them; remembers which are out.
struct Frames {
    free: Vec<u64>,
    out: BTreeSet<u64>,
    total: u64,
}

impl Frames {
    fn new(total: u64) -> Self {
        Self {
            free: (0..total)
                .rev()
                .map(|i| (1 << 30) + i * PAGE_SIZE)
                .collect(),
            out: BTreeSet::new(),
            total,
        }
    }
}

impl PageSource for Frames {
    fn take_page(&mut self) -> Option<u64> {
        let f = self.free.pop()?;
        self.out.insert(f);
        Some(f)
    }
    fn return_page(&mut self, phys: u64) {
        assert!(self.out.remove(&phys), "{phys:#x} returned but not out");
        self.free.push(phys);
    }
    fn mem_stats(&self) -> MemStats {
        let free = self.free.len() as u64 * PAGE_SIZE;
        MemStats {
            free,
            total: self.total * PAGE_SIZE,
            available: free,
        }
    }
}

const ALL: u64 = bits::VERSION_1 | bits::STATS_VQ | bits::DEFLATE_ON_OOM;

fn open<'p>(p: &'p FakePlatform, src: &Frames) -> VirtioBalloon<'p, FakePlatform> {
    VirtioBalloon::new(p, &p.function(), InterruptMode::Polled, src).unwrap()
}

#[test]
fn negotiates_and_reports_stats_at_start() {
    let (p, st) = balloon_platform(ALL | 1 << 0 | 1 << 3, 0);
    let src = Frames::new(1000);
    let b = open(&p, &src);
    assert_eq!(
        b.features(),
        ALL,
        "VERSION_1, STATS_VQ, DEFLATE_ON_OOM and nothing else (no MUST_TELL_HOST, no hints)"
    );
    let st = st.borrow();
    assert_eq!(st.stats.len(), 1);
    assert_eq!(
        st.stats[0],
        [
            (stat_tag::MEMFREE, 1000 * 4096),
            (stat_tag::MEMTOT, 1000 * 4096),
            (stat_tag::AVAIL, 1000 * 4096)
        ]
    );
}

#[test]
fn inflates_to_the_target_in_batches_and_writes_actual() {
    let (p, st) = balloon_platform(ALL, 600);
    let mut src = Frames::new(1000);
    let mut b = open(&p, &src);
    let r = b.serve(&mut src).unwrap();
    assert_eq!(
        (r.requested, r.target, r.inflated, r.actual),
        (600, 600, 600, 600)
    );
    assert!(!r.short);
    let st = st.borrow();
    let sizes: Vec<usize> = st.inflated.iter().map(|v| v.len()).collect();
    assert_eq!(
        sizes,
        [PFNS_PER_BATCH, PFNS_PER_BATCH, 600 - 2 * PFNS_PER_BATCH]
    );
    assert_eq!(st.actual, 600);
    let sent: BTreeSet<u64> = st
        .inflated
        .iter()
        .flatten()
        .map(|&pfn| u64::from(pfn) * PAGE_SIZE)
        .collect();
    assert_eq!(sent, src.out, "the device got exactly the frames taken");
    assert_eq!(b.pfns().len(), 600);
}

#[test]
fn deflates_on_a_lower_target_after_a_config_change_and_returns_frames() {
    let (p, st) = balloon_platform(ALL, 300);
    let mut src = Frames::new(1000);
    let mut b = open(&p, &src);
    b.serve(&mut src).unwrap();
    assert!(!b.config_changed());
    set_target(&p, &st, 40);
    assert!(b.config_changed(), "a new generation is seen");
    let r = b.serve(&mut src).unwrap();
    assert_eq!((r.deflated, r.actual), (260, 40));
    let st = st.borrow();
    assert_eq!(st.actual, 40);
    let inflated: Vec<u32> = st.inflated.iter().flatten().copied().collect();
    let deflated: Vec<u32> = st.deflated.iter().flatten().copied().collect();
    assert_eq!(deflated.len(), 260);
    // Newest first, and only PFNs that were in the balloon.
    let mut expect: Vec<u32> = inflated[40..].to_vec();
    expect.sort();
    let mut got = deflated.clone();
    got.sort();
    assert_eq!(got, expect);
    assert_eq!(src.out.len(), 40, "deflated frames went back to the source");
}

#[test]
fn a_target_beyond_memory_is_clamped() {
    let (p, st) = balloon_platform(ALL, u32::MAX);
    let mut src = Frames::new(500);
    let mut b = open(&p, &src);
    let r = b.serve(&mut src).unwrap();
    assert_eq!((r.requested, r.target, r.actual), (u32::MAX, 500, 500));
    assert!(r.short || r.actual == 500);
    assert_eq!(st.borrow().actual, 500);
    // Nothing left to give: the next serve does nothing and does not hang.
    let r = b.serve(&mut src).unwrap();
    assert_eq!((r.inflated, r.actual), (0, 500));
}

#[test]
fn a_source_running_dry_stops_short() {
    let (p, _st) = balloon_platform(ALL, 400);
    let mut src = Frames::new(1000);
    // Hold 800 elsewhere: only 200 left for the balloon.
    let held: Vec<u64> = (0..800).map(|_| src.take_page().unwrap()).collect();
    let mut b = open(&p, &src);
    let r = b.serve(&mut src).unwrap();
    assert_eq!((r.inflated, r.actual), (200, 200));
    assert!(r.short);
    drop(held);
}

#[test]
fn deflate_on_oom_only_when_negotiated() {
    let (p, st) = balloon_platform(ALL, 100);
    let mut src = Frames::new(1000);
    let mut b = open(&p, &src);
    b.serve(&mut src).unwrap();
    assert_eq!(b.deflate_for_oom(&mut src, 10).unwrap(), 10);
    assert_eq!((b.actual(), st.borrow().actual), (90, 90));

    let (p, st) = balloon_platform(bits::VERSION_1 | bits::STATS_VQ, 100);
    let mut src = Frames::new(1000);
    let mut b = open(&p, &src);
    assert_eq!(b.features() & balloon_feature::DEFLATE_ON_OOM, 0);
    b.serve(&mut src).unwrap();
    assert_eq!(
        b.deflate_for_oom(&mut src, 10),
        Err(BalloonError::DeflateOnOomNotNegotiated)
    );
    assert_eq!((b.actual(), st.borrow().actual), (100, 100));
    assert!(st.borrow().deflated.is_empty());
}

#[test]
fn stats_are_refilled_when_the_device_returns_the_buffer() {
    let (p, st) = balloon_platform(ALL, 0);
    let mut src = Frames::new(1000);
    st.borrow_mut().hold_stats = true;
    let mut b = open(&p, &src);
    assert_eq!(st.borrow().stats.len(), 1);
    // Held: nothing to refill.
    assert!(!b.serve(&mut src).unwrap().stats_sent);
    assert_eq!(st.borrow().stats.len(), 1);

    let (p, st) = balloon_platform(ALL, 100);
    let mut src = Frames::new(1000);
    let mut b = open(&p, &src);
    assert!(b.serve(&mut src).unwrap().stats_sent);
    let st = st.borrow();
    assert_eq!(st.stats.len(), 2);
    // The second report sees the 100 pages in the balloon.
    assert_eq!(st.stats[1][0], (stat_tag::MEMFREE, 900 * 4096));
}

#[test]
fn without_stats_vq_there_is_no_stats_queue() {
    let (p, st) = balloon_platform(bits::VERSION_1, 10);
    let mut src = Frames::new(100);
    let mut b = open(&p, &src);
    assert_eq!(b.features(), bits::VERSION_1);
    assert!(!b.serve(&mut src).unwrap().stats_sent);
    assert!(st.borrow().stats.is_empty());
    assert_eq!(b.actual(), 10);
}

#[test]
fn a_device_that_never_uses_the_buffer_times_out_and_keeps_the_frames() {
    let (p, st) = balloon_platform(ALL, 10);
    st.borrow_mut().misbehave = Misbehave::Hold;
    let mut src = Frames::new(100);
    let mut b = open(&p, &src);
    b.set_timeout_ns(50_000_000);
    let e = b.serve(&mut src).unwrap_err();
    assert!(matches!(e, BalloonError::Timeout { queue: 0 }), "{e:?}");
    // The device may hold those frames: they stay in the balloon, out of the source.
    assert_eq!((b.actual(), src.out.len()), (10, 10));
    // And the broken queue refuses more work, taking no frames, instead of hanging.
    set_target(&p, &st, 20);
    assert_eq!(
        b.serve(&mut src).unwrap_err(),
        BalloonError::Queue(super::queue::QueueError::Broken)
    );
    assert_eq!((b.actual(), src.out.len()), (10, 10));
}

#[test]
fn garbage_used_lengths_and_ids_are_errors() {
    for m in [Misbehave::UsedLen(4096), Misbehave::BadId] {
        let (p, st) = balloon_platform(ALL, 10);
        st.borrow_mut().misbehave = m;
        let mut src = Frames::new(100);
        let mut b = open(&p, &src);
        let e = b.serve(&mut src).unwrap_err();
        assert!(matches!(e, BalloonError::Queue(_)), "{m:?}: {e:?}");
        assert_eq!(b.actual(), 10, "{m:?}: the frames stay in the balloon");
    }
}

#[test]
fn not_a_balloon() {
    let (p, _st) = balloon_platform(ALL, 0);
    p.cfg.borrow_mut()[2..4].copy_from_slice(&0x1042u16.to_le_bytes());
    let src = Frames::new(1);
    let e = VirtioBalloon::new(&p, &p.function(), InterruptMode::Polled, &src).err();
    assert_eq!(e, Some(BalloonError::NotBalloon(Some(2))));
}

#[test]
fn drop_frees_dma_buffers() {
    let (p, _st) = balloon_platform(ALL, 5);
    let mut src = Frames::new(100);
    {
        let mut b = open(&p, &src);
        b.serve(&mut src).unwrap();
        b.deflate(&mut src, 5).unwrap();
    }
    assert!(p.dma_live.borrow().is_empty(), "{:?}", p.dma_live.borrow());
}

#[test]
fn free_pages_are_reported_in_runs_and_given_back() {
    for features in [
        ALL | bits::PAGE_REPORTING,
        bits::VERSION_1 | bits::PAGE_REPORTING,
    ] {
        let (p, st) = balloon_platform(features, 0);
        let mut src = Frames::new(10_000);
        let mut b = open(&p, &src);
        assert_eq!(b.features(), features);
        // 1000 frames from the source: consecutive, so one run for each report.
        assert_eq!(b.report_free(&mut src, 1000).unwrap(), 1000);
        {
            let st = st.borrow();
            assert_eq!(st.reports.len(), 1, "{features:#x}");
            assert_eq!(st.reports[0], [(1 << 30, 1000 * 4096, true)]);
        }
        assert!(
            src.out.is_empty(),
            "reported frames went back to the source"
        );
        assert_eq!(b.actual(), 0, "reporting does not inflate");
        // More than a report holds: several reports.
        assert_eq!(b.report_free(&mut src, 9000).unwrap(), 9000);
        assert_eq!(st.borrow().reports.len(), 4);
        // More than the source has: what it has.
        assert_eq!(b.report_free(&mut src, 20_000).unwrap(), 10_000);
    }
}

#[test]
fn scattered_frames_make_runs_of_at_most_32_descriptors() {
    let (p, st) = balloon_platform(ALL | bits::PAGE_REPORTING, 0);
    let mut src = Frames::new(200);
    // Every other frame held elsewhere: no two free frames are consecutive.
    let all: Vec<u64> = (0..200).map(|_| src.take_page().unwrap()).collect();
    let mut held = Vec::new();
    for (i, f) in all.into_iter().enumerate() {
        if i % 2 == 0 {
            held.push(f);
        } else {
            src.return_page(f);
        }
    }
    let mut b = open(&p, &src);
    assert_eq!(b.report_free(&mut src, 100).unwrap(), 100);
    let st = st.borrow();
    let sizes: Vec<usize> = st.reports.iter().map(|r| r.len()).collect();
    assert_eq!(sizes, [32, 32, 32, 4]);
    assert!(st
        .reports
        .iter()
        .flatten()
        .all(|&(_, len, w)| len == 4096 && w));
    drop(held);
}

#[test]
fn reporting_needs_the_feature_and_a_held_report_keeps_its_frames() {
    let (p, _st) = balloon_platform(ALL, 0);
    let mut src = Frames::new(10);
    let mut b = open(&p, &src);
    assert_eq!(
        b.report_free(&mut src, 1),
        Err(BalloonError::PageReportingNotNegotiated)
    );

    let (p, st) = balloon_platform(ALL | bits::PAGE_REPORTING, 0);
    st.borrow_mut().misbehave = Misbehave::Hold;
    let mut src = Frames::new(10);
    let mut b = open(&p, &src);
    b.set_timeout_ns(50_000_000);
    assert!(matches!(
        b.report_free(&mut src, 5),
        Err(BalloonError::Timeout { queue: 3 })
    ));
    // The device may still drop them: the frames are not given back.
    assert_eq!(src.out.len(), 5);
}

#[test]
fn msix_config_vector_signals_target_changes_and_queue_interrupts_do_not() {
    let (p, st) = balloon_platform(ALL, 300);
    let mut src = Frames::new(1000);
    let mode = InterruptMode::Msix {
        dest_apic_id: 0,
        vectors: vec![0x60, 0x61],
    };
    let mut b = VirtioBalloon::new(&p, &p.function(), mode, &src).unwrap();
    b.serve(&mut src).unwrap();
    assert!(p.irq_count(0x61) > 0, "the inflate batches were interrupts");
    assert!(
        !b.take_config_interrupt(),
        "queue interrupts are not config changes"
    );
    set_target(&p, &st, 40);
    assert!(b.take_config_interrupt(), "the config vector fired");
    assert!(!b.take_config_interrupt(), "taken once");
    assert_eq!(b.serve(&mut src).unwrap().actual, 40);
}

#[test]
fn intx_config_bit_seen_by_a_queue_wait_is_kept_for_the_driver() {
    let (p, st) = balloon_platform(ALL, 0);
    let mut src = Frames::new(1000);
    let mode = InterruptMode::Intx {
        vector: super::fake::INTX_VECTOR,
    };
    let mut b = VirtioBalloon::new(&p, &p.function(), mode, &src).unwrap();
    assert!(!b.take_config_interrupt(), "nothing yet");
    set_target(&p, &st, 300);
    // A queue wait (one page inflated) reads, and so clears, the ISR before the driver looks.
    b.inflate(&mut src, 1).unwrap();
    assert!(
        b.take_config_interrupt(),
        "the config bit survived the wait"
    );
    assert!(!b.take_config_interrupt(), "taken once");
    assert_eq!(b.serve(&mut src).unwrap().actual, 300);
    assert!(
        !b.take_config_interrupt(),
        "queue interrupts are not config changes"
    );
}
