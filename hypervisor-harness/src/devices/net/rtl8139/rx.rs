//! Receive: frames from the backend into the guest's ring buffer at RBSTART + CBR, each as a
//! 4-byte header (status: ROK and how the address matched; length: the frame's bytes plus its
//! 4-byte CRC), the frame, its CRC-32 (the Ethernet FCS, computed here), and padding to the
//! next dword.
//!
//! The ring is 8, 16, 32 or 64 KiB (RCR.RBLEN). A frame that runs past its end goes on into
//! the slack after it when RCR.WRAP is set (the driver allocated the ring plus 1.5 KiB), or is
//! split and continues at the ring's start when it is clear (always for 64 KiB, as the
//! hardware has no slack there). CBR then wraps modulo the ring size.
//!
//! Room: the driver has read up to CAPR + 16. As in QEMU, equal pointers mean an empty ring,
//! and a frame goes in only if it leaves the write pointer short of the read pointer. A
//! frame that does not fit stays in the device (one frame) and the rest in the backend: the
//! CAPR write that makes room resumes (backpressure, as the e1000 model does). Only a frame
//! that can never fit, or whose place in the ring is outside RAM, is dropped: counted in MPC
//! with RXOVW or SERR.
//!
//! Filters: AAP takes everything; else broadcast with AB, multicast with AM when its bit in
//! the MAR hash (the top 6 bits of the big-endian Ethernet CRC of the address) is set, our
//! IDR with APM. Frames shorter than 60 bytes are padded, as the wire would.

use super::regs::*;
use super::Rtl8139;
use crate::backends::net::MAX_FRAME;
use crate::devices::virtio::net::checksum;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

const HEADER_LEN: usize = 4;
const CRC_LEN: usize = 4;
/// Shortest Ethernet frame without FCS.
const MIN_FRAME: usize = 60;
/// Frames one pass may take before it lets the lock go (filtered floods are otherwise endless).
const PASS_BUDGET: usize = 256;

pub struct RxState {
    /// Header, frame and CRC of the frame in hand.
    buf: Vec<u8>,
    /// The frame in `buf` waiting for room: its bytes after the header (frame and CRC).
    pending: Option<usize>,
    hold_counted: bool,
    pub(super) blocked: bool,
    /// The backend failed (disconnected): nothing more comes from it.
    failed: bool,
}

impl Default for RxState {
    fn default() -> Self {
        Self {
            buf: vec![0; HEADER_LEN + MAX_FRAME + CRC_LEN],
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
    /// Never fits this ring.
    TooBig,
    /// Its place in the ring is not guest RAM.
    Fault,
}

/// The MAR bit for a multicast address: the top 6 bits of its Ethernet CRC taken MSB first
/// (Linux's `ether_crc(6, addr) >> 26`), which is the bit-reversed, uninverted CRC-32.
pub fn mar_index(dest: &[u8; 6]) -> usize {
    let crc = !crc32fast::hash(dest);
    (crc.reverse_bits() >> 26) as usize
}

impl<M: GuestMemory> Rtl8139<M> {
    fn rx_enabled(&self) -> bool {
        self.cmd.contains(Cmd::RE) && self.bus_master() && self.link_up && !self.rx.failed
    }

    pub fn rx_blocked(&self) -> bool {
        self.rx.blocked
    }

    /// The guest memory a received frame may be written to: the ring and, with WRAP (below
    /// 64 KiB), the slack a frame's record may run into past its end.
    pub fn rx_window(&self) -> std::ops::Range<u64> {
        let size = self.rx_ring_size();
        let slack = if size < 65536 && self.rcr.contains(Rcr::WRAP) {
            (HEADER_LEN + MAX_FRAME + CRC_LEN) as u64
        } else {
            0
        };
        let start = u64::from(self.rbstart);
        start..start + u64::from(size) + slack
    }

    /// The windows ([`Rtl8139::rx_window`] as it was then) that frames were written under
    /// since the last call, each once: the fuzz rig's check that the device wrote only inside
    /// a ring the guest had programmed when it wrote.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn take_rx_windows_written(&mut self) -> Vec<std::ops::Range<u64>> {
        std::mem::take(&mut self.rx_windows_written)
    }

    /// CBR and the read pointer (CAPR + 16), both offsets in the ring.
    pub fn rx_offsets(&self) -> (u32, u32) {
        (self.rx_write, self.rx_read)
    }

    /// The header status for a frame to `dest`, or `None` when the filters refuse it.
    pub fn rx_filter(&self, dest: &[u8; 6]) -> Option<RxStatus> {
        let mut status = RxStatus::ROK;
        let broadcast = *dest == [0xff; 6];
        let multicast = dest[0] & 1 != 0;
        if broadcast {
            status |= RxStatus::BAR;
        } else if multicast {
            status |= RxStatus::MAR;
        } else if *dest == self.idr {
            status |= RxStatus::PAM;
        }
        if self.rcr.contains(Rcr::AAP) {
            return Some(status);
        }
        let take = if broadcast {
            self.rcr.contains(Rcr::AB)
        } else if multicast {
            let i = mar_index(dest);
            self.rcr.contains(Rcr::AM) && self.mar[i / 8] & (1 << (i % 8)) != 0
        } else {
            self.rcr.contains(Rcr::APM) && *dest == self.idr
        };
        take.then_some(status)
    }

    /// Move frames from the backend into the ring until it is empty, the ring is full (the
    /// frame is held: [`Rtl8139::rx_blocked`]) or RX is off. Raises ROK for what it delivered.
    pub fn rx_pass(&mut self) {
        let mut causes = Intr::empty();
        self.rx.blocked = false;
        for _ in 0..PASS_BUDGET {
            if !self.rx_enabled() {
                self.rx.blocked = true;
                break;
            }
            let len = match self.rx.pending {
                Some(len) => len,
                None => match self.receive_one() {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    // Filtered: the next one.
                    Err(true) => continue,
                    Err(false) => {
                        self.rx.blocked = true;
                        break;
                    }
                },
            };
            match self.rx_deliver(len) {
                Delivery::Done => {
                    self.rx.drop_pending();
                    self.counters.rx_frames += 1;
                    causes |= Intr::ROK;
                }
                Delivery::NoRoom => {
                    if !self.rx.hold_counted {
                        self.rx.hold_counted = true;
                        self.counters.rx_holds += 1;
                    }
                    self.rx.blocked = true;
                    break;
                }
                Delivery::TooBig => {
                    self.rx.drop_pending();
                    self.counters.rx_dropped += 1;
                    self.mpc_add();
                    causes |= Intr::RXOVW;
                }
                Delivery::Fault => {
                    self.rx.drop_pending();
                    self.counters.rx_buffer_fault += 1;
                    self.mpc_add();
                    causes |= Intr::SERR;
                }
            }
        }
        if !causes.is_empty() {
            self.raise(causes);
        }
    }

    /// MPC is a 24-bit counter.
    fn mpc_add(&mut self) {
        self.mpc = (self.mpc + 1).min(0x00ff_ffff);
    }

    /// Take one frame from the backend into `buf` with its header and CRC, held as pending:
    /// its length after the header. `Err(true)`: filtered (or dropped); `Err(false)`: the backend failed.
    fn receive_one(&mut self) -> Result<Option<usize>, bool> {
        let frame = &mut self.rx.buf[HEADER_LEN..HEADER_LEN + MAX_FRAME];
        let (len, meta) = match self.backend.receive(frame) {
            Ok(Some((len, meta))) => (len.min(MAX_FRAME), meta),
            Ok(None) => return Ok(None),
            Err(_) => {
                self.counters.rx_backend_errors += 1;
                self.rx.failed = true;
                return Err(false);
            }
        };
        let dest: Option<[u8; 6]> = frame.get(..6).and_then(|d| d.try_into().ok());
        let status = match dest.filter(|_| len >= 6).and_then(|d| self.rx_filter(&d)) {
            Some(s) => s,
            None => {
                self.counters.rx_filtered += 1;
                return Err(true);
            }
        };
        // A TAP with vnet_hdr may hand over the host's TCP/UDP checksum unfinished; a wire
        // never does, so the guest's driver gets it whole.
        if let Some(req) = meta.needs_csum {
            let frame = &mut self.rx.buf[HEADER_LEN..HEADER_LEN + len];
            if checksum::complete(frame, req.start, req.offset).is_err() {
                self.counters.rx_dropped += 1;
                return Err(true);
            }
        }
        let padded = len.max(MIN_FRAME);
        let buf = &mut self.rx.buf;
        buf[HEADER_LEN + len..HEADER_LEN + padded].fill(0);
        let crc = crc32fast::hash(&buf[HEADER_LEN..HEADER_LEN + padded]);
        buf[HEADER_LEN + padded..HEADER_LEN + padded + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
        let total = padded + CRC_LEN;
        buf[..2].copy_from_slice(&status.bits().to_le_bytes());
        buf[2..4].copy_from_slice(&(total as u16).to_le_bytes());
        self.rx.pending = Some(total);
        Ok(Some(total))
    }

    /// Write the held frame (`len` bytes after its header) at CBR, if it fits before CAPR.
    fn rx_deliver(&mut self, len: usize) -> Delivery {
        let size = self.rx_ring_size();
        let record = (HEADER_LEN + len) as u32;
        let needed = record.next_multiple_of(4);
        if needed >= size {
            return Delivery::TooBig;
        }
        let avail = (self.rx_read + size - self.rx_write) % size;
        if avail != 0 && needed >= avail {
            return Delivery::NoRoom;
        }
        let base = u64::from(self.rbstart);
        let at = self.rx_write;
        // Into the slack past the end (WRAP), or split at the end.
        let split = at + record > size && (size == 65536 || !self.rcr.contains(Rcr::WRAP));
        let first = if split { size - at } else { record } as usize;
        let parts = [
            (base + u64::from(at), 0..first),
            (base, first..record as usize),
        ];
        // Every part first, so a ring partly outside RAM takes nothing.
        for (addr, range) in &parts {
            if !range.is_empty()
                && !self
                    .mem
                    .check_range(GuestAddress(*addr), range.len(), Permissions::Write)
            {
                return Delivery::Fault;
            }
        }
        #[cfg(any(test, feature = "fuzzing"))]
        {
            let window = self.rx_window();
            if !self.rx_windows_written.contains(&window) {
                self.rx_windows_written.push(window);
            }
        }
        for (addr, range) in parts {
            if !range.is_empty()
                && self
                    .mem
                    .write_slice(&self.rx.buf[range], GuestAddress(addr))
                    .is_err()
            {
                return Delivery::Fault;
            }
        }
        self.rx_write = (at + needed) % size;
        Delivery::Done
    }
}
