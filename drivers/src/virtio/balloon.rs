//! virtio-balloon (virtio 1.x §5.5) over the modern PCI transport.
//!
//! The driver follows the device's `num_pages`: it inflates by taking 4 KiB frames from a
//! [`PageSource`] (the kernel's frame allocator) and handing their page frame numbers to the
//! device on the inflate queue, and deflates by handing PFNs back on the deflate queue and
//! returning the frames to the source. Frames in the balloon are the driver's alone: it keeps
//! their PFNs in private memory and never touches their contents. After every batch it writes
//! `actual`.
//!
//! Negotiated when offered: `STATS_VQ` (free, total and available memory, as the page source
//! knows them), `DEFLATE_ON_OOM` ([`VirtioBalloon::deflate_for_oom`]) and `PAGE_REPORTING`
//! ([`VirtioBalloon::report_free`]: free frames lent to the device for the host to drop, and
//! taken back as soon as it has used the report). `MUST_TELL_HOST` is not requested, but
//! frames go back to the source only after the device has used the deflate buffer anyway.
//!
//! A hostile device cannot hang or crash the driver: a target beyond the guest's memory is
//! clamped to what the page source holds, every wait has a deadline, and a used entry with a
//! bad id or length is an error (the frames of that batch stay in the balloon, untouched,
//! since the driver cannot know what the device did with them).

use alloc::vec::Vec;
use core::fmt;
use core::mem::{offset_of, size_of};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::feature;
use super::pci::{InterruptMode, VirtioError, VirtioPci};
use super::queue::{QueueError, VirtQueue};
use crate::pci::PciFunction;
use crate::platform::{DmaBuffer, Platform, PlatformError};

/// The balloon's unit: PFNs count 4 KiB pages whatever the guest's page size.
pub const PAGE_SIZE: u64 = 4096;
/// PFNs per inflate or deflate buffer (Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX).
pub const PFNS_PER_BATCH: usize = 256;
/// Deadline for the device to use one buffer.
pub const DEFAULT_TIMEOUT_NS: u64 = 5_000_000_000;

const INFLATE_QUEUE: u16 = 0;
const DEFLATE_QUEUE: u16 = 1;
const STATS_QUEUE: u16 = 2;
const QUEUE_SIZE: u16 = 64;
/// Most runs of consecutive frames (descriptors) in one report, and most frames.
pub const REPORT_RUNS: usize = 32;
pub const REPORT_PAGES: u32 = 4096;

/// virtio-balloon feature bits (§5.5.3).
pub mod balloon_feature {
    pub const MUST_TELL_HOST: u64 = 1 << 0;
    pub const STATS_VQ: u64 = 1 << 1;
    pub const DEFLATE_ON_OOM: u64 = 1 << 2;
    pub const FREE_PAGE_HINT: u64 = 1 << 3;
    pub const PAGE_POISON: u64 = 1 << 4;
    pub const PAGE_REPORTING: u64 = 1 << 5;
}

/// Statistics tags (§5.5.6.3).
pub mod stat_tag {
    pub const SWAP_IN: u16 = 0;
    pub const SWAP_OUT: u16 = 1;
    pub const MAJFLT: u16 = 2;
    pub const MINFLT: u16 = 3;
    pub const MEMFREE: u16 = 4;
    pub const MEMTOT: u16 = 5;
    pub const AVAIL: u16 = 6;
}

/// The device configuration (§5.5.4).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct BalloonConfig {
    pub num_pages: U32,
    pub actual: U32,
    pub free_page_hint_cmd_id: U32,
    pub poison_val: U32,
}

/// One statistic as the stats queue carries it: 10 bytes, no padding.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct BalloonStat {
    pub tag: U16,
    pub val: U64,
}

const _: () = assert!(size_of::<BalloonConfig>() == 16 && size_of::<BalloonStat>() == 10);

const NUM_PAGES: u64 = offset_of!(BalloonConfig, num_pages) as u64;
const ACTUAL: u64 = offset_of!(BalloonConfig, actual) as u64;

/// What the kernel knows of its memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemStats {
    pub free: u64,
    pub total: u64,
    pub available: u64,
}

/// Where balloon pages come from and go back to: the kernel implements it over its frame
/// allocator.
pub trait PageSource {
    /// A free 4 KiB-aligned frame's physical address, now owned by the balloon; None when none
    /// is left.
    fn take_page(&mut self) -> Option<u64>;
    /// A frame the balloon took, given back after deflating.
    fn return_page(&mut self, phys: u64);
    /// The memory the kernel knows of (for the stats queue and to clamp the target).
    fn mem_stats(&self) -> MemStats;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalloonError {
    Virtio(VirtioError),
    Queue(QueueError),
    Platform(PlatformError),
    /// The function is not a balloon.
    NotBalloon(Option<u16>),
    /// The device did not use a buffer before the deadline; its frames stay in the balloon.
    Timeout {
        queue: u16,
    },
    /// DEFLATE_ON_OOM was not negotiated: the balloon's frames may not be taken back for an
    /// allocation.
    DeflateOnOomNotNegotiated,
    /// PAGE_REPORTING was not negotiated.
    PageReportingNotNegotiated,
    /// The page source gave a frame that is not 4 KiB aligned or beyond 32-bit PFNs.
    BadFrame(u64),
}

impl fmt::Display for BalloonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Virtio(e) => write!(f, "{e}"),
            Self::Queue(e) => write!(f, "queue: {e}"),
            Self::Platform(e) => write!(f, "platform: {e}"),
            Self::NotBalloon(t) => write!(f, "not a virtio balloon (device type {t:?})"),
            Self::Timeout { queue } => write!(f, "the device did not use queue {queue}'s buffer"),
            Self::DeflateOnOomNotNegotiated => write!(f, "DEFLATE_ON_OOM was not negotiated"),
            Self::PageReportingNotNegotiated => write!(f, "PAGE_REPORTING was not negotiated"),
            Self::BadFrame(p) => write!(f, "page source gave an unusable frame {p:#x}"),
        }
    }
}

impl From<VirtioError> for BalloonError {
    fn from(e: VirtioError) -> Self {
        match e {
            VirtioError::Queue(q) => Self::Queue(q),
            VirtioError::Timeout => Self::Timeout { queue: u16::MAX },
            e => Self::Virtio(e),
        }
    }
}
impl From<QueueError> for BalloonError {
    fn from(e: QueueError) -> Self {
        Self::Queue(e)
    }
}
impl From<PlatformError> for BalloonError {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

/// What one [`VirtioBalloon::serve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The device's `num_pages`, as read.
    pub requested: u32,
    /// The target followed: `requested`, clamped to the guest's memory.
    pub target: u32,
    pub inflated: u32,
    pub deflated: u32,
    /// Pages in the balloon afterwards.
    pub actual: u32,
    /// The page source ran dry before the target was reached.
    pub short: bool,
    /// Fresh statistics went to the device.
    pub stats_sent: bool,
}

pub struct VirtioBalloon<'p, P: Platform + ?Sized> {
    transport: VirtioPci<'p, P>,
    inflate_q: VirtQueue<'p, P>,
    deflate_q: VirtQueue<'p, P>,
    stats_q: Option<VirtQueue<'p, P>>,
    /// The reporting queue and its index (after the stats queue when there is one).
    report_q: Option<(u16, VirtQueue<'p, P>)>,
    /// One batch of PFNs for the device to read (taken only by drop).
    pfn_buf: Option<DmaBuffer>,
    stats_buf: Option<DmaBuffer>,
    /// Whether the stats buffer is with the device.
    stats_posted: bool,
    /// PFNs in the balloon, in the order they went in (deflate takes the newest first).
    pages: Vec<u32>,
    features: u64,
    generation: u8,
    timeout_ns: u64,
    platform: &'p P,
}

// SAFETY: the DMA buffers (raw pointers) are owned by the driver alone, and nothing in it is
// tied to a thread; moving the driver moves that ownership. `P: Sync` because `&P` is held.
unsafe impl<P: Platform + Sync + ?Sized> Send for VirtioBalloon<'_, P> {}

/// Statistics sent per report: free, total, available.
const STATS_SENT: usize = 3;

impl<'p, P: Platform + ?Sized> VirtioBalloon<'p, P> {
    /// Initialise the device (§3.1.1) with VERSION_1, STATS_VQ and DEFLATE_ON_OOM when offered,
    /// its inflate and deflate queues (and the stats queue, primed with a first report), and
    /// DRIVER_OK. `source` only supplies the first statistics.
    pub fn new(
        platform: &'p P,
        function: &PciFunction,
        mode: InterruptMode,
        source: &dyn PageSource,
    ) -> Result<Self, BalloonError> {
        let ty = super::pci::virtio_device_type(function);
        if ty != Some(super::pci::device_type::BALLOON) {
            return Err(BalloonError::NotBalloon(ty));
        }
        let mut transport = VirtioPci::new(platform, function)?;
        let wanted = feature::VERSION_1
            | balloon_feature::STATS_VQ
            | balloon_feature::DEFLATE_ON_OOM
            | balloon_feature::PAGE_REPORTING;
        let features = transport.begin_init(wanted, mode)?;
        let inflate_q = transport.setup_queue(INFLATE_QUEUE, QUEUE_SIZE)?;
        let deflate_q = transport.setup_queue(DEFLATE_QUEUE, QUEUE_SIZE)?;
        let fail = |t: &VirtioPci<'p, P>, e: BalloonError| {
            t.set_failed();
            e
        };
        let mut stats_q = None;
        let mut stats_buf = None;
        if features & balloon_feature::STATS_VQ != 0 {
            let mut q = transport.setup_queue(STATS_QUEUE, QUEUE_SIZE)?;
            // The device returns the stats buffer when it wants fresh numbers; the driver
            // refills it when it next serves, so it needs no interrupt for it.
            q.set_interrupts(false);
            stats_q = Some(q);
            let len = STATS_SENT * size_of::<BalloonStat>();
            stats_buf = Some(
                platform
                    .dma_alloc(len, 8)
                    .map_err(|e| fail(&transport, e.into()))?,
            );
        }
        let mut report_q = None;
        if features & balloon_feature::PAGE_REPORTING != 0 {
            // Queues that do not exist take no index: reporting follows stats if there is one.
            let index = STATS_QUEUE + u16::from(stats_q.is_some());
            match transport.setup_queue(index, QUEUE_SIZE) {
                Ok(mut q) => {
                    q.set_interrupts(false);
                    report_q = Some((index, q));
                }
                Err(e) => {
                    if let Some(b) = stats_buf {
                        platform.dma_free(b);
                    }
                    return Err(e.into());
                }
            }
        }
        let pfn_buf = match platform.dma_alloc(PFNS_PER_BATCH * 4, 8) {
            Ok(b) => b,
            Err(e) => {
                if let Some(b) = stats_buf {
                    platform.dma_free(b);
                }
                return Err(fail(&transport, e.into()));
            }
        };
        let generation = transport.config_generation();
        let mut balloon = Self {
            transport,
            inflate_q,
            deflate_q,
            stats_q,
            report_q,
            pfn_buf: Some(pfn_buf),
            stats_buf,
            stats_posted: false,
            pages: Vec::new(),
            features,
            generation,
            timeout_ns: DEFAULT_TIMEOUT_NS,
            platform,
        };
        balloon.transport.driver_ok()?;
        balloon.post_stats(source)?;
        Ok(balloon)
    }

    pub fn features(&self) -> u64 {
        self.features
    }

    pub fn set_timeout_ns(&mut self, ns: u64) {
        self.timeout_ns = ns;
    }

    /// Pages in the balloon.
    pub fn actual(&self) -> u32 {
        self.pages.len() as u32
    }

    /// The PFNs in the balloon (the kernel must not touch these frames).
    pub fn pfns(&self) -> &[u32] {
        &self.pages
    }

    /// The device's `num_pages`.
    pub fn requested_pages(&self) -> Result<u32, BalloonError> {
        Ok(self.transport.config_read32(NUM_PAGES)?)
    }

    /// `actual` as the device's configuration holds it.
    pub fn device_actual(&self) -> Result<u32, BalloonError> {
        Ok(self.transport.config_read32(ACTUAL)?)
    }

    /// Whether the configuration changed since the last call (a new config generation; with
    /// INTx also the ISR's config bit). Cheap enough to poll.
    pub fn config_changed(&mut self) -> bool {
        let g = self.transport.config_generation();
        let changed = g != self.generation;
        self.generation = g;
        changed
    }

    /// Whether the device raised a configuration-change interrupt (a new target, say) since
    /// the last call, from interrupts alone (see [`VirtioPci::take_config_interrupt`]); always
    /// false when polled, where [`Self::config_changed`] is the way to know.
    pub fn take_config_interrupt(&mut self) -> bool {
        self.transport.take_config_interrupt()
    }

    /// How the device signals this driver.
    pub fn interrupt_mode(&self) -> &InterruptMode {
        self.transport.interrupt_mode()
    }

    /// Move the balloon to the device's target, clamped to the memory the page source
    /// knows: inflate or deflate in batches of up to [`PFNS_PER_BATCH`], writing `actual`
    /// after each. Then refill the stats buffer if the device returned it.
    pub fn serve(&mut self, source: &mut dyn PageSource) -> Result<Progress, BalloonError> {
        self.transport.check_status()?;
        let _ = self.config_changed();
        let requested = self.requested_pages()?;
        let total_pages = (source.mem_stats().total / PAGE_SIZE).min(u64::from(u32::MAX)) as u32;
        let target = requested.min(total_pages);
        let mut p = Progress {
            requested,
            target,
            ..Progress::default()
        };
        let actual = self.actual();
        if target > actual {
            let (n, short) = self.inflate(source, target - actual)?;
            p.inflated = n;
            p.short = short;
        } else if target < actual {
            p.deflated = self.deflate(source, actual - target)?;
        }
        p.actual = self.actual();
        p.stats_sent = self.serve_stats(source)?;
        Ok(p)
    }

    /// Inflate by up to `pages`. Returns how many went in and whether the source ran dry.
    pub fn inflate(
        &mut self,
        source: &mut dyn PageSource,
        pages: u32,
    ) -> Result<(u32, bool), BalloonError> {
        // Before any frame is taken: a batch that cannot be posted would strand its frames.
        if self.inflate_q.is_broken() {
            return Err(BalloonError::Queue(QueueError::Broken));
        }
        let mut done = 0u32;
        while done < pages {
            let want = ((pages - done) as usize).min(PFNS_PER_BATCH);
            let mut batch = [0u32; PFNS_PER_BATCH];
            let mut n = 0;
            while n < want {
                let Some(phys) = source.take_page() else {
                    break;
                };
                if phys % PAGE_SIZE != 0 || phys / PAGE_SIZE > u64::from(u32::MAX) {
                    // Not a frame the balloon can name: give it straight back.
                    source.return_page(phys);
                    self.send_inflate(&batch[..n])?;
                    return Err(BalloonError::BadFrame(phys));
                }
                batch[n] = (phys / PAGE_SIZE) as u32;
                n += 1;
            }
            if n == 0 {
                return Ok((done, true));
            }
            self.send_inflate(&batch[..n])?;
            done += n as u32;
            if n < want {
                return Ok((done, true));
            }
        }
        Ok((done, false))
    }

    /// Send an inflate batch; the frames are in the balloon from the moment the device may
    /// see them (whether it used the buffer or not).
    fn send_inflate(&mut self, batch: &[u32]) -> Result<(), BalloonError> {
        if batch.is_empty() {
            return Ok(());
        }
        let sent = self.send(INFLATE_QUEUE, batch);
        self.pages.extend_from_slice(batch);
        self.write_actual()?;
        sent
    }

    /// Deflate by up to `pages` (the newest first), returning the frames to the source once
    /// the device has used each batch. Returns how many came out.
    pub fn deflate(
        &mut self,
        source: &mut dyn PageSource,
        pages: u32,
    ) -> Result<u32, BalloonError> {
        let mut done = 0u32;
        while done < pages && !self.pages.is_empty() {
            let n = ((pages - done) as usize)
                .min(PFNS_PER_BATCH)
                .min(self.pages.len());
            let start = self.pages.len() - n;
            let mut batch = [0u32; PFNS_PER_BATCH];
            batch[..n].copy_from_slice(&self.pages[start..]);
            // On an error the frames stay in the balloon: the device may not have let go.
            self.send(DEFLATE_QUEUE, &batch[..n])?;
            self.pages.truncate(start);
            for &pfn in &batch[..n] {
                source.return_page(u64::from(pfn) * PAGE_SIZE);
            }
            self.write_actual()?;
            done += n as u32;
        }
        Ok(done)
    }

    /// The allocator ran short: with DEFLATE_ON_OOM, take up to `pages` back from the balloon
    /// whatever the target says (§5.5.6.1). Without it, an error and the balloon unchanged.
    pub fn deflate_for_oom(
        &mut self,
        source: &mut dyn PageSource,
        pages: u32,
    ) -> Result<u32, BalloonError> {
        if self.features & balloon_feature::DEFLATE_ON_OOM == 0 {
            return Err(BalloonError::DeflateOnOomNotNegotiated);
        }
        self.deflate(source, pages)
    }

    /// Report up to `pages` free frames (taken from the source, lowest first as it gives them)
    /// so that the host can drop them: runs of consecutive frames, one device-writable
    /// descriptor each, up to [`REPORT_RUNS`] runs and [`REPORT_PAGES`] frames per report. The
    /// frames go back to the source once the device has used each report (they read zero
    /// afterwards, unless written). Returns how many were reported.
    pub fn report_free(
        &mut self,
        source: &mut dyn PageSource,
        pages: u32,
    ) -> Result<u32, BalloonError> {
        let Some((index, q)) = self.report_q.as_mut() else {
            return Err(BalloonError::PageReportingNotNegotiated);
        };
        let index = *index;
        if q.is_broken() {
            return Err(BalloonError::Queue(QueueError::Broken));
        }
        let mut done = 0u32;
        // Reported frames stay out of the source until the end, so none is reported twice.
        let mut reported: Vec<(u64, u32)> = Vec::new();
        let give_back = |source: &mut dyn PageSource, runs: &[(u64, u32)]| {
            for &(start, len) in runs {
                for page in 0..u64::from(len) / PAGE_SIZE {
                    source.return_page(start + page * PAGE_SIZE);
                }
            }
        };
        while done < pages {
            let want = (pages - done).min(REPORT_PAGES);
            let mut runs: Vec<(u64, u32)> = Vec::with_capacity(REPORT_RUNS);
            let mut taken = 0u32;
            let mut dry = false;
            while taken < want {
                let Some(phys) = source.take_page() else {
                    dry = true;
                    break;
                };
                let page = PAGE_SIZE as u32;
                let full = runs.len() == REPORT_RUNS;
                match runs.last_mut() {
                    Some((start, len)) if *start + u64::from(*len) == phys => *len += page,
                    Some((start, len)) if phys + PAGE_SIZE == *start => {
                        *start = phys;
                        *len += page;
                    }
                    _ if full => {
                        // No descriptor left for it: it waits for the next report.
                        source.return_page(phys);
                        break;
                    }
                    _ => runs.push((phys, page)),
                }
                taken += 1;
            }
            if runs.is_empty() {
                break;
            }
            q.add(&[], &runs, 0)?;
            if q.kick_needed() {
                self.transport.notify(index);
            }
            match self.transport.wait_used(index, q, self.timeout_ns) {
                Ok(_) => {}
                Err(e) => {
                    // The device may still drop this report's frames: never give them back.
                    q.mark_broken();
                    give_back(source, &reported);
                    return Err(match e {
                        VirtioError::Timeout => BalloonError::Timeout { queue: index },
                        e => e.into(),
                    });
                }
            }
            reported.extend_from_slice(&runs);
            done += taken;
            if dry {
                break;
            }
        }
        give_back(source, &reported);
        Ok(done)
    }

    /// If the device returned the stats buffer, fill it with fresh numbers and give it back.
    /// Returns whether it did.
    pub fn serve_stats(&mut self, source: &dyn PageSource) -> Result<bool, BalloonError> {
        let Some(q) = self.stats_q.as_mut() else {
            return Ok(false);
        };
        if !self.stats_posted {
            return self.post_stats(source).map(|()| true);
        }
        match q.pop_used() {
            None => Ok(false),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(_)) => {
                self.stats_posted = false;
                self.post_stats(source).map(|()| true)
            }
        }
    }

    fn post_stats(&mut self, source: &dyn PageSource) -> Result<(), BalloonError> {
        let (Some(q), Some(buf)) = (self.stats_q.as_mut(), self.stats_buf.as_mut()) else {
            return Ok(());
        };
        let m = source.mem_stats();
        let stats = [
            (stat_tag::MEMFREE, m.free),
            (stat_tag::MEMTOT, m.total),
            (stat_tag::AVAIL, m.available),
        ];
        let bytes = buf.as_mut_slice();
        for (i, (tag, val)) in stats.into_iter().enumerate() {
            let s = BalloonStat {
                tag: U16::new(tag),
                val: U64::new(val),
            };
            let at = i * size_of::<BalloonStat>();
            bytes[at..at + size_of::<BalloonStat>()].copy_from_slice(s.as_bytes());
        }
        q.add(&[(buf.phys(), buf.len() as u32)], &[], 0)?;
        self.stats_posted = true;
        if q.kick_needed() {
            self.transport.notify(STATS_QUEUE);
        }
        Ok(())
    }

    /// Post one batch of PFNs on `queue`, notify, and wait for the device to use it.
    fn send(&mut self, queue: u16, batch: &[u32]) -> Result<(), BalloonError> {
        let Some(buf) = self.pfn_buf.as_mut() else {
            return Err(BalloonError::Queue(QueueError::Broken));
        };
        let bytes = buf.as_mut_slice();
        for (i, pfn) in batch.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&pfn.to_le_bytes());
        }
        let len = (4 * batch.len()) as u32;
        let phys = buf.phys();
        let q = if queue == INFLATE_QUEUE {
            &mut self.inflate_q
        } else {
            &mut self.deflate_q
        };
        q.add(&[(phys, len)], &[], u64::from(queue))?;
        if q.kick_needed() {
            self.transport.notify(queue);
        }
        match self.transport.wait_used(queue, q, self.timeout_ns) {
            Ok(_) => Ok(()),
            Err(VirtioError::Timeout) => {
                // The buffer is still the device's: never reuse the queue or the PFN buffer.
                q.mark_broken();
                Err(BalloonError::Timeout { queue })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn write_actual(&self) -> Result<(), BalloonError> {
        Ok(self.transport.config_write32(ACTUAL, self.actual())?)
    }

    /// Reset the device, so that it no longer reads the rings or buffers.
    pub fn reset(&mut self) -> Result<(), BalloonError> {
        Ok(self.transport.reset()?)
    }
}

impl<P: Platform + ?Sized> Drop for VirtioBalloon<'_, P> {
    fn drop(&mut self) {
        // The device must be done with the buffers before they are freed; if it does not reset,
        // leak them rather than let it write freed memory.
        if self.transport.reset().is_err() {
            self.inflate_q.leak_rings();
            self.deflate_q.leak_rings();
            if let Some(q) = self.stats_q.as_mut() {
                q.leak_rings();
            }
            if let Some((_, q)) = self.report_q.as_mut() {
                q.leak_rings();
            }
            // DmaBuffer has no destructor: dropping without `dma_free` leaks.
            return;
        }
        for b in [self.pfn_buf.take(), self.stats_buf.take()]
            .into_iter()
            .flatten()
        {
            self.platform.dma_free(b);
        }
    }
}
