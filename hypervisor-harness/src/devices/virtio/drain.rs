//! The bound on one pass over a virtqueue, which every device's drain loop takes its chains
//! through.
//!
//! The usual drain (notifications off, take every available chain, notifications on, look
//! again in case the driver published meanwhile) ends only when the avail index stops moving.
//! A hostile driver can lay its rings so that the device's own writes move it: virtio-queue
//! checks that each ring lies in guest RAM, not that the rings are apart, so a used ring (or
//! its flags word, which turning notifications off and on rewrites) over the avail ring's
//! index makes every `add_used` or every look-again find more "available", and the pass never
//! returns. The vCPU or I/O thread running it spins, and nothing else of the device (a reset
//! included) gets its lock again.
//!
//! A [`Drain`] counts what the pass takes, one unit per chain and one per look-again, and
//! stops it at [`PASSES_PER_ENTRY`] times the queue size, with notifications on. That does
//! not stall a well-behaved driver. It never has more than the queue size of chains
//! available that the device has not used, so a pass reaches the bound only if the driver
//! reaps and reposts the whole ring several times while that one pass runs, which needs a
//! vCPU running beside the thread doing the pass: an I/O thread's (the vCPU doing it inline
//! is the VM's only one, so the guest stands still meanwhile). Its later posts kick, since
//! notifications are on; what it posted while they were off gets no kick, so an I/O thread
//! whose pass was cut notifies the queue itself ([`QueueWorker::notified`]) and runs the
//! rest after its other events, as QEMU reschedules a transmit burst that hit its limit. A
//! cut is counted ([`drains_cut`], and each device's counters) so a run's report shows it.
//!
//! [`QueueWorker::notified`]: super::transport_pci::QueueWorker::notified

use super::device::QueueBroken;
use super::Memory;
use std::sync::atomic::{AtomicU64, Ordering};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

/// How many times its size in chains (and looks-again) one pass over a queue may take. A
/// legitimate pass takes at most about one size, and a few more when the driver reposts while
/// the pass runs; four leaves room for that and still ends a self-feeding ring in a few
/// thousand steps (256-entry queues: 1024).
pub const PASSES_PER_ENTRY: u32 = 4;

/// Passes stopped at their bound since the process started, every device together.
static DRAINS_CUT: AtomicU64 = AtomicU64::new(0);

/// Passes any device stopped at their bound so far (a guest feeding a queue from its own
/// used ring).
pub fn drains_cut() -> u64 {
    DRAINS_CUT.load(Ordering::Relaxed)
}

/// The run report's note on passes stopped at their bound, when there were any: every
/// device's together, so that a guest feeding a ring from itself shows in the report of any
/// device kind.
pub fn drains_cut_note() -> Option<String> {
    note_for(drains_cut())
}

fn note_for(cut: u64) -> Option<String> {
    (cut > 0).then(|| {
        format!(
            "virtio: {cut} pass(es) over a queue stopped at their bound of {PASSES_PER_ENTRY}x \
             the queue's size (a ring that feeds itself); the rest waited for the next notify"
        )
    })
}

/// What a device's pass over a queue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// The driver wants an interrupt for the used entries the pass added.
    pub wants_interrupt: bool,
    /// The pass stopped at its bound ([`Drain::was_cut`]).
    pub cut: bool,
}

/// One pass over a queue: what it may still take.
#[derive(Debug)]
pub struct Drain {
    left: u32,
    cut: bool,
}

impl Drain {
    /// A pass over `queue`, bounded by its size.
    pub fn new(queue: &Queue) -> Self {
        Self {
            left: u32::from(queue.size().max(1)) * PASSES_PER_ENTRY,
            cut: false,
        }
    }

    /// Spend one unit; false (and the pass counted as cut, once) when none is left, as
    /// after a cut, which spends the last.
    fn spend(&mut self) -> bool {
        if self.left == 0 {
            if !self.cut {
                self.cut = true;
                DRAINS_CUT.fetch_add(1, Ordering::Relaxed);
            }
            return false;
        }
        self.left -= 1;
        true
    }

    /// The next available chain of `queue`, or None: nothing available, or the pass is at its
    /// bound ([`Self::was_cut`]).
    pub fn next_chain<'m>(
        &mut self,
        queue: &mut Queue,
        mem: &'m Memory,
    ) -> Result<Option<DescriptorChain<&'m Memory>>, QueueBroken> {
        if !self.spend() {
            return Ok(None);
        }
        Ok(queue.iter(mem)?.next())
    }

    /// The end of a round: notifications on, and whether the driver published more meanwhile
    /// and the pass may take it (true: go round again). At the bound the pass ends here, with
    /// notifications on.
    pub fn again(&mut self, queue: &mut Queue, mem: &Memory) -> Result<bool, QueueBroken> {
        if !queue.enable_notification(mem)? {
            return Ok(false);
        }
        Ok(self.spend())
    }

    /// Whether the pass stopped at its bound, leaving chains in the ring.
    pub fn was_cut(&self) -> bool {
        self.cut
    }
}

/// Rings laid so that the device feeds itself, for the devices' tests.
#[cfg(test)]
pub mod test_util {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    /// Move `queue`'s avail ring to `at + 2` and its used ring to `at + 4` (`at` 4-aligned),
    /// as the console fuzz target's timeout had them, with head 0 of its descriptor table
    /// published once. The used ring's flags word is then the avail index: turning
    /// notifications off publishes an entry (NO_NOTIFY = 1), turning them on withdraws it
    /// (0), and the look-again after every round finds "more". Without event index, which
    /// would leave the flags alone.
    pub fn feed_itself(queue: &mut Queue, mem: &Memory, at: u64) {
        let (avail, used) = (at + 2, at + 4);
        queue.set_event_idx(false);
        queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        queue.set_next_avail(0);
        queue.set_next_used(0);
        // avail: flags 0, idx 1 (the used flags), ring[0] = head 0 (the used idx, 0).
        mem.write_slice(&[0, 0, 1, 0, 0, 0], GuestAddress(avail))
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const SIZE: u16 = 8;

    fn memory() -> Memory {
        Memory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    /// A ready queue of `SIZE` whose used ring is at `used`, every descriptor a 16-byte
    /// device-readable buffer.
    fn queue(mem: &Memory, used: u64) -> Queue {
        let mut q = Queue::new(SIZE).unwrap();
        q.set_size(SIZE);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        for i in 0..u64::from(SIZE) {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&0x8000u64.to_le_bytes());
            d[8..12].copy_from_slice(&16u32.to_le_bytes());
            mem.write_slice(&d, GuestAddress(DESC + 16 * i)).unwrap();
        }
        q
    }

    /// Publish `n` chains (heads 0, 1, ...).
    fn publish(mem: &Memory, n: u16) {
        for i in 0..n {
            mem.write_obj(i % SIZE, GuestAddress(AVAIL + 4 + 2 * u64::from(i % SIZE)))
                .unwrap();
        }
        mem.write_obj(n, GuestAddress(AVAIL + 2)).unwrap();
    }

    /// The drain every device runs, through `Drain`: how many chains it took.
    fn drain(q: &mut Queue, mem: &Memory) -> (u32, bool) {
        let mut pass = Drain::new(q);
        let mut taken = 0;
        loop {
            q.disable_notification(mem).unwrap();
            while let Some(chain) = pass.next_chain(q, mem).unwrap() {
                q.add_used(mem, chain.head_index(), 0).unwrap();
                taken += 1;
            }
            if !pass.again(q, mem).unwrap() {
                break;
            }
        }
        (taken, pass.was_cut())
    }

    #[test]
    fn a_well_behaved_ring_is_drained_whole() {
        let mem = memory();
        let mut q = queue(&mem, 0x3000);
        publish(&mem, SIZE);
        assert_eq!(drain(&mut q, &mem), (u32::from(SIZE), false));
        // Notifications are on at the end (used flags 0).
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3000)).unwrap(), 0);
    }

    #[test]
    fn the_note_names_the_cut_passes_and_is_absent_without_any() {
        assert_eq!(note_for(0), None);
        let n = note_for(3).unwrap();
        assert!(
            n.starts_with("virtio: 3 pass(es)") && n.contains("4x"),
            "{n}"
        );
    }

    #[test]
    fn used_flags_over_the_avail_index_end_at_the_bound_with_notifications_on() {
        let mem = memory();
        let mut q = queue(&mem, 0x3000);
        test_util::feed_itself(&mut q, &mem, 0x2000);
        let before = drains_cut();
        let (taken, cut) = drain(&mut q, &mem);
        assert_eq!((taken, cut), (1, true), "one chain, then the bound");
        assert!(drains_cut() > before);
        assert!(drains_cut_note().is_some_and(|n| n.contains("stopped at their bound")));
        // Notifications on at the end: the used flags (the avail index here) are 0.
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x2004)).unwrap(), 0);
    }

    #[test]
    fn a_driver_that_keeps_publishing_is_cut_at_the_bound() {
        // A second vCPU (or the device's own writes) publishing one more chain for every
        // chain used: the pass takes what its bound allows and stops.
        let mem = memory();
        let mut q = queue(&mem, 0x3000);
        publish(&mem, 1);
        let mut pass = Drain::new(&q);
        let mut taken = 0u32;
        loop {
            q.disable_notification(&mem).unwrap();
            while let Some(chain) = pass.next_chain(&mut q, &mem).unwrap() {
                q.add_used(&mem, chain.head_index(), 0).unwrap();
                taken += 1;
                let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
                mem.write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
                    .unwrap();
            }
            if !pass.again(&mut q, &mem).unwrap() {
                break;
            }
        }
        assert!(pass.was_cut());
        assert_eq!(taken, u32::from(SIZE) * PASSES_PER_ENTRY);
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3000)).unwrap(), 0);
    }
}
