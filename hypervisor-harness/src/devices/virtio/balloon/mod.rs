//! virtio-balloon (virtio 1.x §5.5) with real host reclaim.
//!
//! The device asks the guest to hold `num_pages` pages (set from outside through
//! [`BalloonShared`]); the guest hands PFNs over on the inflate queue, and the device gives
//! those pages back to the host with `madvise(MADV_DONTNEED)` ([`inflate`]), so the host's RSS
//! falls. On the deflate queue the guest takes pages back; they come back zero-filled on
//! demand. The guest writes `actual`. The stats queue carries the guest's memory statistics
//! ([`stats`]); the device keeps the latest and returns the buffer at once, so the guest
//! refills it when it next serves the balloon (QEMU instead holds it for its polling
//! interval). With free page reporting the guest hands over free pages it keeps: the device
//! discards them the same way, and the guest may use them again at any time.
//!
//! PFNs outside guest RAM, duplicates and PFNs that are not in the balloon are ignored and
//! counted ([`BalloonCounters`]); nothing the guest writes can make the device panic or
//! touch host memory outside guest RAM.

pub mod inflate;
pub mod stats;
#[cfg(test)]
mod tests;

use super::device::{driver_wants_interrupt, Activation, InterruptType, QueueBroken, VirtioDevice};
use super::drain::{Drain, Drained};
use super::Memory;
use crate::devices::lock;
use inflate::PageBitmap;
use stats::GuestStats;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryBackend;

pub const DEVICE_TYPE: u16 = virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON as u16;
pub const QUEUE_SIZE: u16 = 128;
pub const INFLATE_QUEUE: usize = 0;
pub const DEFLATE_QUEUE: usize = 1;
pub const STATS_QUEUE: usize = 2;
/// The queues the device declares: inflate, deflate, stats, reporting. The stats and
/// reporting queues exist only with their features, and a later one takes the index of an
/// earlier one that does not (as Linux numbers them): see [`queue_role`].
pub const NUM_QUEUES: usize = 4;
/// `num_pages`, `actual`, `free_page_hint_cmd_id`, `poison_val` (le32 each).
pub const CONFIG_LEN: usize = 16;
const CONFIG_ACTUAL: u64 = 4;

/// Feature bits (§5.5.3; virtio-bindings has no balloon header).
pub const F_MUST_TELL_HOST: u64 = 1 << 0;
pub const F_STATS_VQ: u64 = 1 << 1;
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
pub const F_PAGE_REPORTING: u64 = 1 << 5;

/// What a queue is for, given the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// The role of queue `index`: inflate and deflate, then stats (with STATS_VQ) and reporting
/// (with PAGE_REPORTING) in that order, each only if negotiated.
pub fn queue_role(index: usize, features: u64) -> Option<QueueRole> {
    let optional = [
        (F_STATS_VQ, QueueRole::Stats),
        (F_PAGE_REPORTING, QueueRole::Reporting),
    ];
    match index {
        INFLATE_QUEUE => Some(QueueRole::Inflate),
        DEFLATE_QUEUE => Some(QueueRole::Deflate),
        i => optional
            .iter()
            .filter(|(f, _)| features & f != 0)
            .map(|&(_, r)| r)
            .nth(i - 2),
    }
}

/// What the device did and what it refused, for the run's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Pages taken into the balloon.
    pub inflated: u64,
    /// Pages given back to the host (madvise succeeded).
    pub discarded: u64,
    /// Pages taken out of the balloon.
    pub deflated: u64,
    /// PFNs outside guest RAM (ignored).
    pub outside_ram: u64,
    /// Inflated PFNs already in the balloon (ignored).
    pub duplicates: u64,
    /// Deflated PFNs that were not in the balloon (ignored).
    pub not_in_balloon: u64,
    /// Chains with device-writable parts, odd lengths, unreadable or overlong arrays.
    pub malformed: u64,
    /// madvise calls that failed (the pages stay resident; nothing else changes).
    pub discard_errors: u64,
    /// Device-configuration writes to fields other than `actual` (ignored).
    pub config_writes_ignored: u64,
    /// Free pages the guest reported (and the host discarded).
    pub reported: u64,
    /// Reported ranges that were not whole pages of guest RAM (ignored).
    pub report_refused: u64,
    /// Pages the balloon held when the driver reset the device: the guest has them back (a
    /// discarded one faults back in, zeroed, on touch). The balloon holds
    /// `inflated - deflated - reset_released` pages.
    pub reset_released: u64,
    /// Passes over a queue stopped at their bound ([`Drain`]).
    pub drains_cut: u64,
}

/// The balloon's state that the outside (the monitor, the report) reads and sets while the
/// guest runs: atomics and short locks, never held across guest work.
pub struct BalloonShared {
    ram_bytes: u64,
    num_pages: AtomicU32,
    actual: AtomicU32,
    counters: Mutex<BalloonCounters>,
    stats: Mutex<GuestStats>,
}

impl BalloonShared {
    pub fn new(ram_bytes: u64) -> Self {
        Self {
            ram_bytes,
            num_pages: AtomicU32::new(0),
            actual: AtomicU32::new(0),
            counters: Mutex::default(),
            stats: Mutex::default(),
        }
    }

    pub fn ram_bytes(&self) -> u64 {
        self.ram_bytes
    }

    /// The pages to ask for so that the guest keeps `bytes` of memory, as QEMU's `balloon`
    /// command computes it. Zero, or more than the RAM, is an error.
    pub fn target_for(&self, bytes: u64) -> Result<u32, String> {
        if bytes == 0 || bytes > self.ram_bytes {
            return Err(format!(
                "guest memory of {bytes} bytes is outside 1..={} (the guest's RAM)",
                self.ram_bytes
            ));
        }
        let pages = (self.ram_bytes - bytes) >> inflate::PAGE_SHIFT;
        u32::try_from(pages).map_err(|_| format!("{pages} pages is more than num_pages holds"))
    }

    /// Set `num_pages`. The caller then tells the transport that the configuration changed.
    pub fn set_target_pages(&self, pages: u32) {
        self.num_pages.store(pages, Ordering::SeqCst);
    }

    pub fn target_pages(&self) -> u32 {
        self.num_pages.load(Ordering::SeqCst)
    }

    /// `actual`, as the guest last wrote it.
    pub fn actual_pages(&self) -> u32 {
        self.actual.load(Ordering::SeqCst)
    }

    pub fn counters(&self) -> BalloonCounters {
        *lock(&self.counters)
    }

    pub fn guest_stats(&self) -> GuestStats {
        *lock(&self.stats)
    }
}

pub struct Balloon {
    shared: Arc<BalloonShared>,
    sizes: [u16; NUM_QUEUES],
    /// Pages in the balloon, one bit per guest page.
    pages: PageBitmap,
    active: Option<Activation>,
}

impl Balloon {
    /// A balloon over guest memory `mem` (its bitmap covers every page up to the last
    /// address).
    pub fn new(mem: &Memory, shared: Arc<BalloonShared>) -> Self {
        let end = mem.last_addr().0.saturating_add(1);
        Self {
            shared,
            sizes: [QUEUE_SIZE; NUM_QUEUES],
            pages: PageBitmap::new(end),
            active: None,
        }
    }

    pub fn shared(&self) -> &Arc<BalloonShared> {
        &self.shared
    }

    /// Pages in the balloon as the device counts them.
    pub fn pages_held(&self) -> u64 {
        self.pages.count()
    }
}

/// Use every chain available on `queue` with `each` (up to the pass's bound), then say
/// whether the driver wants an interrupt.
fn drain(
    queue: &mut Queue,
    mem: &Memory,
    mut each: impl FnMut(virtio_queue::DescriptorChain<&Memory>),
) -> Result<Drained, QueueBroken> {
    let mut used_any = false;
    let mut pass = Drain::new(queue);
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = pass.next_chain(queue, mem)? {
            let head = chain.head_index();
            each(chain);
            // Every balloon buffer is device-readable: nothing written, used length 0.
            queue.add_used(mem, head, 0)?;
            used_any = true;
        }
        if !pass.again(queue, mem)? {
            break;
        }
    }
    Ok(Drained {
        wants_interrupt: used_any && driver_wants_interrupt(queue, mem)?,
        cut: pass.was_cut(),
    })
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1 | F_STATS_VQ | F_DEFLATE_ON_OOM | F_PAGE_REPORTING
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[0..4].copy_from_slice(&self.shared.target_pages().to_le_bytes());
        config[4..8].copy_from_slice(&self.shared.actual_pages().to_le_bytes());
        data.fill(0);
        if let Some(src) = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o..o.checked_add(data.len())?))
        {
            data.copy_from_slice(src);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == CONFIG_ACTUAL && data.len() == 4 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.shared.actual.store(v, Ordering::SeqCst);
        } else {
            lock(&self.shared.counters).config_writes_ignored += 1;
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), String> {
        if activation.queues.len() != self.sizes.len() {
            return Err(format!(
                "{} queues for {NUM_QUEUES}",
                activation.queues.len()
            ));
        }
        self.active = Some(activation);
        Ok(())
    }

    fn activation(&self) -> Option<&Activation> {
        self.active.as_ref()
    }

    fn activation_mut(&mut self) -> Option<&mut Activation> {
        self.active.as_mut()
    }

    fn process_queue(&mut self, index: usize) -> Result<(), QueueBroken> {
        let Some(Activation {
            mem,
            queues,
            interrupt,
            features,
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let Some(queue) = queues.get_mut(index) else {
            return Ok(());
        };
        // A queue the driver left off, or one its features do not create, is not used.
        let Some(role) = queue_role(index, *features).filter(|_| queue.ready()) else {
            return Ok(());
        };
        let mut counters = BalloonCounters::default();
        let pages = &mut self.pages;
        let shared = &self.shared;
        let drained = match role {
            QueueRole::Inflate | QueueRole::Deflate => drain(queue, mem, |chain| {
                let (pfns, malformed) = inflate::chain_pfns(mem, chain);
                // `run --record-exits`: the page numbers, for the fuzz seed corpus.
                if let Some(rec) = crate::devices::recording::active() {
                    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
                    rec.record_buffer("virtio-balloon", index, &bytes);
                }
                counters.malformed += u64::from(malformed);
                if role == QueueRole::Inflate {
                    inflate::inflate(mem, pages, &pfns, &mut counters);
                } else {
                    inflate::deflate(mem, pages, &pfns, &mut counters);
                }
            }),
            QueueRole::Stats => drain(queue, mem, |chain| lock(&shared.stats).update(mem, chain)),
            QueueRole::Reporting => drain(queue, mem, |chain| {
                inflate::report(mem, chain, &mut counters)
            }),
        };
        // The chains used before a queue broke count too: their pages are in the balloon (and
        // discarded) whatever became of the ring.
        counters.drains_cut += drained.as_ref().map_or(0, |d| u64::from(d.cut));
        add_counters(&mut lock(&self.shared.counters), &counters);
        let drained = drained?;
        if drained.wants_interrupt {
            interrupt.trigger(InterruptType::Queue(index));
        }
        Ok(())
    }

    fn reset(&mut self) {
        // A reset driver starts with an empty balloon; its old pages fault back in on touch.
        self.active = None;
        lock(&self.shared.counters).reset_released += self.pages.count();
        self.pages.clear();
        self.shared.actual.store(0, Ordering::SeqCst);
    }
}

fn add_counters(total: &mut BalloonCounters, c: &BalloonCounters) {
    total.inflated += c.inflated;
    total.discarded += c.discarded;
    total.deflated += c.deflated;
    total.outside_ram += c.outside_ram;
    total.duplicates += c.duplicates;
    total.not_in_balloon += c.not_in_balloon;
    total.malformed += c.malformed;
    total.discard_errors += c.discard_errors;
    total.config_writes_ignored += c.config_writes_ignored;
    total.reported += c.reported;
    total.report_refused += c.report_refused;
    total.drains_cut += c.drains_cut;
}
