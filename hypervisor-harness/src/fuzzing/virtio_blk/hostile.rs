//! virtio-blk's INDIRECT and USED_EVENT ops: a chain already in the ring moved into an
//! indirect table (valid, or broken in one of the ways a hostile driver can), and garbage in
//! the driver's `used_event`. Whether the device may use either is the NEGOTIATE op's choice.

use super::super::virtio_rig::{desc_addr, push_avail, put_desc, F_NEXT};
use super::super::{peek_u16, poke, Reader, VirtioPciDriver};
use super::BlkRig;
use crate::devices::virtio::transport_pci as tp;
use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
/// Where the INDIRECT op puts its table: between the REQUEST op's header slots and status
/// bytes, room for [`MAX_ENTRIES`].
const TABLE_AT: u64 = 0x3100;
const MAX_ENTRIES: usize = 64;

impl BlkRig {
    /// INDIRECT: the chain at a head of queue 0 copied into a table, the head replaced by one
    /// descriptor pointing at it (a mode byte picks how it is broken, if at all), made
    /// available again and maybe notified.
    pub(super) fn indirect(&mut self, r: &mut Reader) {
        let (size, desc, avail, _) = self.rig.queue(0);
        if size == 0 {
            return;
        }
        let mem = &self.rig.mem;
        let head = u16::from(r.u8()) % size;
        let mut entries: Vec<Descriptor> = Vec::new();
        let mut i = head;
        while entries.len() < MAX_ENTRIES.min(usize::from(size)) {
            let Some(Ok(d)) =
                desc_addr(desc, i.into()).map(|a| mem.read_obj::<Descriptor>(GuestAddress(a)))
            else {
                break;
            };
            entries.push(d);
            if d.flags() & F_NEXT == 0 || d.next() >= size {
                break;
            }
            i = d.next();
        }
        let n = entries.len() as u16;
        if n == 0 {
            return;
        }
        for (k, d) in entries.iter().enumerate() {
            let k = k as u16;
            let next = if k + 1 < n { k + 1 } else { 0 };
            put_desc(
                mem,
                TABLE_AT,
                k.into(),
                d.addr().0,
                d.len(),
                d.flags(),
                next,
            );
        }
        let whole = u32::from(n) * 16;
        let (mut table, mut len, mut flags, mut next) = (TABLE_AT, whole, F_INDIRECT, 0);
        match r.u8() % 12 {
            0..=3 => {}
            4 => len += 1 + u32::from(r.u8() % 15),
            5 => len = 0,
            6 => len = (u32::from(size) + 1 + u32::from(r.u8())) * 16,
            7 => (flags, next) = (F_INDIRECT | F_NEXT, u16::from(r.u8()) % size),
            8 => {
                // A table inside the table.
                let k = u16::from(r.u8()) % n;
                put_desc(mem, TABLE_AT, k.into(), TABLE_AT, whole, F_INDIRECT, 0);
            }
            9 => table = r.gpa(),
            10 => {
                // The last entry goes on, back into the table.
                let d = entries[usize::from(n - 1)];
                let to = u16::from(r.u8()) % n;
                let last = u64::from(n - 1);
                put_desc(
                    mem,
                    TABLE_AT,
                    last,
                    d.addr().0,
                    d.len(),
                    d.flags() | F_NEXT,
                    to,
                );
            }
            _ => len = r.len32(),
        }
        put_desc(mem, desc, head.into(), table, len, flags, next);
        push_avail(mem, avail, size, head);
        if r.u8() & 1 == 0 {
            self.rig.w(tp::NOTIFY_OFFSET, 2, 0);
        }
    }

    /// USED_EVENT: queue 0's `used_event` set near the used index (ahead or behind), to
    /// 0xffff, or to anything.
    pub(super) fn used_event(&mut self, r: &mut Reader) {
        let (size, _, avail, used) = self.rig.queue(0);
        if size == 0 {
            return;
        }
        let mem = &self.rig.mem;
        // The rings' addresses are the guest's: anything up to the top of the address space.
        let used_idx = peek_u16(mem, used.wrapping_add(2));
        let event = match r.u8() % 4 {
            0 => used_idx.wrapping_add(r.u8().into()),
            1 => used_idx.wrapping_sub(1 + u16::from(r.u8())),
            2 => 0xffff,
            _ => r.u16(),
        };
        let used_event_at = avail.wrapping_add(4 + 2 * u64::from(size));
        poke(mem, used_event_at, &event.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::{run_virtio_blk, vop};
    use crate::fuzzing::test_util::P;

    /// Queue 0 (16 entries, canonical, enabled), all offered features (INDIRECT_DESC and
    /// EVENT_IDX among them), DRIVER_OK; a read of sector 3 published but not notified.
    fn read_published() -> P {
        P(vec![0])
            .op(&[vop::QUEUE, 0, 0, 4, 0, 2, 1])
            .op(&[vop::NEGOTIATE, 0])
            .op(&[vop::REQUEST, 0, 0, 0, 3, 0, 1, 0, 0, 1])
    }

    #[test]
    fn a_read_moved_into_an_indirect_table_completes() {
        // INDIRECT: head 0, mode 0 (valid), notify. Head 0 is in the avail ring twice now.
        let s = run_virtio_blk(&read_published().op(&[vop::INDIRECT, 0, 0, 0]).0);
        assert_eq!(s.requests, 2, "{s:?}");
        assert_eq!(s.queue_interrupts, 1);
        assert!(!s.needs_reset, "{s:?}");
    }

    /// Each hostile table (bad length, 0, longer than the queue, NEXT, nested, at an address
    /// from the input, looping, any length): answered, the device not broken, and the run's
    /// end checks (a read through the reset device) pass.
    #[test]
    fn hostile_tables_are_answered_and_the_device_lives_on() {
        for mode in 4..12u8 {
            let p = read_published().op(&[vop::INDIRECT, 0, mode, 7, 0x80, 0, 0, 0, 0, 0, 0]);
            let s = run_virtio_blk(&p.0);
            assert!(!s.needs_reset, "mode {mode}: {s:?}");
            // The same on cache=none, where head 0 (in the avail ring twice) may still be in
            // flight when it comes again: that alone breaks the queue.
            let s = super::super::run_virtio_blk_async(&p.0);
            let twice = |b: &str| b.contains("made available again while in flight");
            assert!(
                s.broken.as_deref().is_none_or(twice),
                "cache=none, mode {mode}: {s:?}"
            );
        }
    }

    /// A fuzz campaign's crash (an add overflow in the rig, not the device): queue 0's rings
    /// in the last bytes below 2^64. INDIRECT reads head 1 past the top, USED_EVENT writes
    /// past it; neither is RAM, and neither op may overflow computing where.
    #[test]
    fn rings_at_the_top_of_the_address_space_take_indirect_and_used_event() {
        // QUEUE: queue 0, 16 entries, the rings from the input (gpa kind 6, u64::MAX - n:
        // the table, avail and used ring each aligned), no vector, enabled; then USED_EVENT
        // (0xffff), or INDIRECT of head 1 (valid mode, no notify).
        let rings = P(vec![0])
            .op(&[vop::QUEUE, 0, 0, 4, 1, 6, 15, 0, 6, 1, 0, 6, 3, 0, 2, 1])
            .op(&[vop::NEGOTIATE, 0]);
        for op in [[vop::USED_EVENT, 2, 0, 0], [vop::INDIRECT, 1, 0, 1]] {
            let p = P(rings.0.clone()).op(&op);
            for s in [
                run_virtio_blk(&p.0),
                super::super::run_virtio_blk_async(&p.0),
            ] {
                assert_eq!(s.requests, 0, "{op:?}: {s:?}");
            }
        }
    }

    /// used_event behind, ahead, 0xffff and anything, each before a notified read: every
    /// read is served, the interrupts at most one per notify.
    #[test]
    fn garbage_used_event_before_each_read() {
        let mut p = read_published().op(&[vop::NOTIFY, 0]);
        for (mode, arg) in [(0u8, 5u8), (1, 0), (1, 200), (2, 0), (3, 0x34)] {
            p = p.op(&[vop::USED_EVENT, mode, arg, 0x12]).op(&[
                vop::REQUEST,
                0,
                0,
                0,
                3,
                0,
                1,
                0,
                0,
                0,
            ]);
        }
        let s = run_virtio_blk(&p.0);
        assert_eq!(s.requests, 6, "{s:?}");
        assert!(s.queue_interrupts <= s.notifies, "{s:?}");
        assert!(!s.needs_reset, "{s:?}");
    }
}
