//! Receive: frames from the backend into the descriptors the driver gave (RDH up to RDT),
//! through the destination filter (our RA entries, broadcast with BAM, multicast by the MTA hash
//! or MPE, everything with UPE). A frame that needs more descriptors than are free stays in
//! the device (one frame) and the rest in the backend, as QEMU stops reading a full ring; the
//! RDT write that gives room resumes. Only a frame that can never fit (a ring too small for it)
//! or that cannot be written is dropped, counted in MPC with an RXO interrupt.
//!
//! Frames shorter than 60 bytes are padded, as the wire would; unless RCTL.SECRC the length
//! includes a 4-byte FCS (zeros: nobody checks it once the frame is in memory, and Linux's
//! driver strips it by length).

use super::regs::*;
use super::stats;
use super::E1000;
use crate::backends::net::MAX_FRAME;
use crate::devices::virtio::net::checksum;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Shortest Ethernet frame without FCS.
const MIN_FRAME: usize = 60;
const FCS_LEN: usize = 4;
/// Frames one pass may take before it lets the lock go (filtered floods are otherwise endless).
const PASS_BUDGET: usize = 256;
/// The descriptor error bit RXE: the frame's data could not be stored.
const RX_ERR_RXE: u8 = 1 << 7;

pub struct RxState {
    buf: Vec<u8>,
    /// Length (padded, with FCS) of the frame in `buf` waiting for descriptors.
    pending: Option<usize>,
    hold_counted: bool,
    pub(super) blocked: bool,
    /// The backend failed (disconnected): nothing more comes from it.
    failed: bool,
}

impl Default for RxState {
    fn default() -> Self {
        Self {
            buf: vec![0; MAX_FRAME + FCS_LEN],
            pending: None,
            hold_counted: false,
            blocked: false,
            failed: false,
        }
    }
}

impl RxState {
    /// Forget a held frame; true if there was one.
    pub(super) fn drop_pending(&mut self) -> bool {
        self.hold_counted = false;
        self.pending.take().is_some()
    }
}

enum Delivery {
    Done,
    NoRoom,
    /// Never fits this ring, or its descriptors are not in RAM.
    Dropped,
}

impl<M: GuestMemory> E1000<M> {
    fn rx_enabled(&self) -> bool {
        self.rctl.contains(Rctl::EN) && self.bus_master() && self.link_up && !self.rx.failed
    }

    /// Receive buffer size from RCTL.BSIZE and BSEX.
    pub fn rx_buffer_size(&self) -> usize {
        let bsize = (self.rctl.bits() >> 16) & 3;
        match (self.rctl.contains(Rctl::BSEX), bsize) {
            (false, 0) | (true, 0) => 2048,
            (false, n) => 2048 >> n,
            (true, n) => 32768 >> n,
        }
    }

    /// Whether the destination filter takes a frame for `dest`.
    pub fn rx_accepts(&self, dest: &[u8; 6]) -> bool {
        let multicast = dest[0] & 1 != 0;
        if !multicast {
            if self.rctl.contains(Rctl::UPE) {
                return true;
            }
            return (0..RA_PAIRS).any(|i| {
                let (low, high) = (self.ra[2 * i], self.ra[2 * i + 1]);
                if high & RAH_AV == 0 {
                    return false;
                }
                let l = low.to_le_bytes();
                let h = high.to_le_bytes();
                *dest == [l[0], l[1], l[2], l[3], h[0], h[1]]
            });
        }
        if *dest == [0xff; 6] && self.rctl.contains(Rctl::BAM) {
            return true;
        }
        if self.rctl.intersects(Rctl::MPE | Rctl::UPE) {
            return true;
        }
        // MO (RCTL 13:12) picks which 12 bits of the last two address bytes index the MTA.
        let shift = [4u32, 3, 2, 0][((self.rctl.bits() >> 12) & 3) as usize];
        let bits = (u32::from(dest[5]) << 8 | u32::from(dest[4])) >> shift & 0xfff;
        self.mta[(bits >> 5) as usize] & (1 << (bits & 31)) != 0
    }

    /// Move frames from the backend into the ring until it is empty, the ring is full (the
    /// frame is held: [`E1000::rx_blocked`]) or RX is off. Raises RXT0 for what it delivered.
    pub fn rx_pass(&mut self) {
        let mut causes = Cause::empty();
        let mut delivered = false;
        self.rx.blocked = false;
        for _ in 0..PASS_BUDGET {
            if !self.rx_enabled() {
                self.rx.blocked = true;
                break;
            }
            let total = match self.rx.pending {
                Some(t) => t,
                None => match self.backend.receive(&mut self.rx.buf) {
                    Ok(Some((len, meta))) => {
                        let len = len.min(MAX_FRAME);
                        let dest: Option<[u8; 6]> =
                            self.rx.buf.get(..6).and_then(|d| d.try_into().ok());
                        if len < 6 || !dest.is_some_and(|d| self.rx_accepts(&d)) {
                            self.counters.rx_filtered += 1;
                            continue;
                        }
                        // A TAP with vnet_hdr may hand over the host's TCP/UDP checksum
                        // unfinished; a wire never does, so the guest's driver gets it whole.
                        if let Some(req) = meta.needs_csum {
                            let frame = &mut self.rx.buf[..len];
                            if checksum::complete(frame, req.start, req.offset).is_err() {
                                self.counters.rx_dropped += 1;
                                continue;
                            }
                        }
                        let mut total = len.max(MIN_FRAME);
                        self.rx.buf[len..total].fill(0);
                        if !self.rctl.contains(Rctl::SECRC) {
                            self.rx.buf[total..total + FCS_LEN].fill(0);
                            total += FCS_LEN;
                        }
                        // Statistics count the frame as it came, FCS included.
                        self.rx.pending = Some(total);
                        total
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.counters.rx_backend_errors += 1;
                        self.rx.failed = true;
                        self.rx.blocked = true;
                        break;
                    }
                },
            };
            match self.rx_deliver(total) {
                Delivery::Done => {
                    self.rx.drop_pending();
                    delivered = true;
                    self.counters.rx_frames += 1;
                    let dest: [u8; 6] = self.rx.buf[..6].try_into().unwrap_or_default();
                    self.stats.rx_frame(total, &dest);
                }
                Delivery::NoRoom => {
                    if !self.rx.hold_counted {
                        self.rx.hold_counted = true;
                        self.counters.rx_holds += 1;
                        self.stats.add(stats::RNBC, 1);
                    }
                    self.rx.blocked = true;
                    break;
                }
                Delivery::Dropped => {
                    self.rx.drop_pending();
                    self.counters.rx_dropped += 1;
                    self.stats.add(stats::MPC, 1);
                    causes |= Cause::RXO;
                }
            }
        }
        if delivered {
            causes |= Cause::RXT0;
            let count = self.rx_ring.count();
            let free = self.rx_free(count);
            let threshold = count >> (1 + ((self.rctl.bits() >> 8) & 3).min(2));
            if free <= threshold {
                causes |= Cause::RXDMT0;
            }
        }
        if !causes.is_empty() {
            self.raise(causes);
        }
    }

    /// Descriptors the device owns: RDH up to (not including) RDT.
    fn rx_free(&self, count: u32) -> u32 {
        if count == 0 {
            return 0;
        }
        (self.rx_ring.tail + count - self.rx_ring.head % count) % count
    }

    fn rx_deliver(&mut self, total: usize) -> Delivery {
        let count = self.rx_ring.count();
        let bufsize = self.rx_buffer_size();
        let needed = total.div_ceil(bufsize) as u32;
        if count == 0 {
            // No ring yet: wait for the driver to set one up.
            return Delivery::NoRoom;
        }
        if needed >= count {
            return Delivery::Dropped;
        }
        if needed > self.rx_free(count) {
            return Delivery::NoRoom;
        }
        let head = self.rx_ring.head % count;
        // Every descriptor first, so a ring partly outside RAM takes nothing.
        let mut descs = Vec::with_capacity(needed as usize);
        for i in 0..needed {
            let Some(at) = self.rx_ring.desc_addr((head + i) % count) else {
                self.counters.rx_desc_fault += 1;
                return Delivery::Dropped;
            };
            let mut d = [0u8; 16];
            if self.mem.read_slice(&mut d, GuestAddress(at)).is_err() {
                self.counters.rx_desc_fault += 1;
                return Delivery::Dropped;
            }
            descs.push((
                at,
                u64::from_le_bytes(d[0..8].try_into().unwrap_or_default()),
            ));
        }
        let chunks = self.rx.buf[..total].chunks(bufsize);
        let last = needed as usize - 1;
        for (i, ((at, buffer), chunk)) in descs.into_iter().zip(chunks).enumerate() {
            let mut errors = 0u8;
            if self.mem.write_slice(chunk, GuestAddress(buffer)).is_err() {
                self.counters.rx_buffer_fault += 1;
                errors |= RX_ERR_RXE;
            }
            let mut status = RxStatus::DD | RxStatus::IXSM;
            if i == last {
                status |= RxStatus::EOP;
            }
            let mut wb = [0u8; 8];
            wb[0..2].copy_from_slice(&(chunk.len() as u16).to_le_bytes());
            wb[4] = status.bits();
            wb[5] = errors;
            if self.mem.write_slice(&wb, GuestAddress(at + 8)).is_err() {
                self.counters.rx_desc_fault += 1;
            }
        }
        self.rx_ring.head = (head + needed) % count;
        Delivery::Done
    }
}
