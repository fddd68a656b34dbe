//! The statistics queue (§5.5.6.3): the driver's buffer is an array of 10-byte
//! `{ le16 tag; le64 val; }` entries. The device keeps the latest value of each tag it knows.

use crate::devices::virtio::Memory;
use virtio_queue::DescriptorChain;
use vm_memory::Bytes;

pub const STAT_LEN: usize = 10;
/// Most entries read from one buffer (there are 10 tags in the spec; a few more are tolerated).
pub const MAX_STATS: usize = 64;

pub const TAG_SWAP_IN: u16 = 0;
pub const TAG_SWAP_OUT: u16 = 1;
pub const TAG_MAJFLT: u16 = 2;
pub const TAG_MINFLT: u16 = 3;
pub const TAG_MEMFREE: u16 = 4;
pub const TAG_MEMTOT: u16 = 5;
pub const TAG_AVAIL: u16 = 6;
pub const TAG_CACHES: u16 = 7;
pub const TAG_HTLB_PGALLOC: u16 = 8;
pub const TAG_HTLB_PGFAIL: u16 = 9;
const TAGS: usize = 10;

/// The latest value of each known tag, as the guest last reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestStats {
    pub values: [Option<u64>; TAGS],
    /// Reports received.
    pub updates: u64,
    /// Entries with tags the spec does not define, or buffers that were not whole entries.
    pub ignored: u64,
}

impl GuestStats {
    pub fn get(&self, tag: u16) -> Option<u64> {
        self.values.get(usize::from(tag)).copied().flatten()
    }

    /// Take one report: every readable entry of the chain.
    pub fn update<M>(&mut self, mem: &Memory, chain: DescriptorChain<M>)
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut bytes = Vec::new();
        for d in chain {
            if d.is_write_only() || bytes.len() + d.len() as usize > MAX_STATS * STAT_LEN {
                self.ignored += 1;
                continue;
            }
            let mut b = vec![0u8; d.len() as usize];
            if mem.read_slice(&mut b, d.addr()).is_err() {
                self.ignored += 1;
                continue;
            }
            bytes.extend(b);
        }
        // `run --record-exits`: the entries, for the fuzz seed corpus.
        if let Some(rec) = crate::devices::recording::active() {
            rec.record_buffer("virtio-balloon", super::STATS_QUEUE, &bytes);
        }
        let (entries, rest) = bytes.as_chunks::<STAT_LEN>();
        if !rest.is_empty() {
            self.ignored += 1;
        }
        for e in entries {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let mut val = [0u8; 8];
            val.copy_from_slice(&e[2..]);
            match self.values.get_mut(usize::from(tag)) {
                Some(v) => *v = Some(u64::from_le_bytes(val)),
                None => self.ignored += 1,
            }
        }
        self.updates += 1;
    }
}
