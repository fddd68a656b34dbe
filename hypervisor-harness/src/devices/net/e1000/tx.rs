//! Transmit: on a TDT write, the descriptors from TDH up to TDT. Legacy descriptors and the
//! extended pair (a context descriptor giving the checksum offsets, data descriptors carrying
//! the buffers and POPTS) gather a frame until EOP; the IP and TCP/UDP checksums are inserted as
//! the context says (the driver has put the pseudo-header sum in the TCP/UDP field); DD is
//! written back when RS asks for it.
//!
//! TSE (segmentation, as Linux's driver uses it): the context gives the header length, MSS and
//! whether it is IPv4 and TCP; the gathered frame (up to 64 KiB of payload) goes out as
//! header + MSS-sized segments, each with its IP total length and ID, TCP sequence number
//! (FIN and PSH only on the last) or UDP length, and its checksums (the driver's TCP/UDP field
//! holds the pseudo-header sum without the length, which each segment adds).

use super::regs::*;
use super::stats::Stats;
use super::{Counters, DESC_SIZE, E1000};
use crate::backends::net::{FrameMeta, MAX_FRAME};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion};

/// The last context descriptor's checksum fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxContext {
    pub ipcss: u8,
    pub ipcso: u8,
    /// Inclusive end; 0 means the end of the frame.
    pub ipcse: u16,
    pub tucss: u8,
    pub tucso: u8,
    pub tucse: u16,
    /// TUCMD.IP: the packet is IPv4 (segmentation updates its total length and ID).
    pub ipv4: bool,
    /// TUCMD.TCP: the L4 header is TCP (else UDP).
    pub tcp: bool,
    pub hdr_len: u8,
    pub mss: u16,
}

/// TUCMD bits of a context descriptor (its byte 11) beside DEXT and TSE.
const TUCMD_TCP: u8 = 1 << 0;
const TUCMD_IP: u8 = 1 << 1;
/// The largest frame a TSE context gathers: 64 KiB of payload after a header of up to 255.
const MAX_TSO_FRAME: usize = (64 << 10) + 255;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;

/// Where to sum and where to store: `[start, end]` inclusive, the result at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChecksumSpec {
    start: usize,
    end: Option<usize>,
    at: usize,
}

#[derive(Default)]
pub struct TxState {
    context: TxContext,
    frame: Vec<u8>,
    /// The frame under assembly is already lost (too long, a buffer outside RAM, TSE).
    lost: Option<Loss>,
    /// Checksums the frame's first data descriptor asked for (POPTS), or a legacy IC.
    sums: Vec<ChecksumSpec>,
    in_frame: bool,
    /// The frame's first data descriptor asked for TSE; its POPTS.
    tso: bool,
    popts: u8,
    /// The last pass stopped at a frame's first descriptor because the backend had no room:
    /// TDH stays there, and the backend thread runs the pass again when room comes.
    pub(super) stalled: bool,
}

impl TxState {
    fn abandon(&mut self) {
        self.frame.clear();
        self.sums.clear();
        self.lost = None;
        self.in_frame = false;
        self.tso = false;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    Oversize,
    Fault,
}

/// One descriptor's common fields.
struct Desc {
    bytes: [u8; 16],
}

impl Desc {
    fn addr(&self) -> u64 {
        u64::from_le_bytes(self.bytes[0..8].try_into().unwrap_or_default())
    }
    fn dword2(&self) -> u32 {
        u32::from_le_bytes(self.bytes[8..12].try_into().unwrap_or_default())
    }
    fn cmd(&self) -> TxCmd {
        TxCmd::from_bits_retain(self.bytes[11])
    }
}

/// The Internet checksum (RFC 1071) of `data`, finished, 0 given as 0xFFFF (as a UDP sender
/// must, and harmless for TCP and IP).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let (pairs, rest) = data.as_chunks::<2>();
    for c in pairs {
        sum += u32::from(u16::from_be_bytes(*c));
    }
    if let [last] = rest {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        v => v,
    }
}

/// How many descriptors from `at` on (16 bytes apart, at most `limit`, at least 1) start
/// outside guest RAM: the rest of the hole `at` lies in. A ring that runs past the end of RAM
/// (a 1 MiB one over 64 KiB of it has 61,000 such descriptors) then costs one step per hole, not
/// a failed lookup per descriptor; the faults counted and the head reached are the same.
fn descriptors_in_hole<M: GuestMemory>(mem: &M, at: u64, limit: u32) -> u32 {
    // Behind an IOMMU there is no plain RAM map to look at: one descriptor at a time.
    let Some(ram) = mem.physical_memory() else {
        return 1;
    };
    if ram.address_in_range(GuestAddress(at)) {
        // A descriptor over a region's end: the next one starts inside RAM again or not.
        return 1;
    }
    let next_region = ram
        .iter()
        .map(|r| r.start_addr().raw_value())
        .filter(|&start| start > at)
        .min();
    let in_hole = next_region.map_or(u64::MAX, |start| (start - at).div_ceil(DESC_SIZE));
    in_hole.clamp(1, u64::from(limit.max(1))) as u32
}

/// Insert one checksum; false if its offsets do not fit the frame.
fn insert(frame: &mut [u8], spec: ChecksumSpec) -> bool {
    let end = spec
        .end
        .map_or(frame.len(), |e| e.saturating_add(1).min(frame.len()));
    if spec.start >= end || spec.at.saturating_add(2) > frame.len() {
        return false;
    }
    let sum = internet_checksum(&frame[spec.start..end]);
    frame[spec.at..spec.at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

impl<M: GuestMemory> E1000<M> {
    /// Process TDH..TDT; true if any descriptor was consumed.
    pub(super) fn tx_process(&mut self) -> bool {
        if !self.tctl.contains(Tctl::EN) || !self.bus_master() {
            return false;
        }
        let count = self.tx_ring.count();
        if count == 0 || self.tx_ring.head >= count {
            return false;
        }
        let mut done = 0u32;
        let was_stalled = self.tx.stalled;
        self.tx.stalled = false;
        // At most one lap: a head/tail pair that never met would otherwise spin.
        while self.tx_ring.head != self.tx_ring.tail && done < count {
            // A frame starts here: only if the backend can take it now. A wire would drop it;
            // a stream socket or TAP queue that is full is the host's backpressure, and the
            // guest's ring is the right place to wait.
            if !self.tx.in_frame && !self.backend.tx_ready() {
                self.tx.stalled = true;
                break;
            }
            let mut step = 1;
            let at = self.tx_ring.desc_addr(self.tx_ring.head);
            let mut bytes = [0u8; 16];
            match at.map(|a| self.mem.read_slice(&mut bytes, GuestAddress(a))) {
                Some(Ok(())) => {
                    let desc = Desc { bytes };
                    self.tx_descriptor(&desc);
                    if desc.cmd().contains(TxCmd::RS) {
                        let status = [bytes[12] | TX_STATUS_DD];
                        let addr = at.unwrap_or(0) + 12;
                        if self.mem.write_slice(&status, GuestAddress(addr)).is_err() {
                            self.counters.tx_desc_fault += 1;
                        }
                    }
                }
                _ => {
                    // The ring itself is not in RAM: a frame under way is abandoned. So are
                    // the descriptors after it in the same hole, all in one step, each
                    // counted, but not past the tail, the ring's end or the lap; and only when
                    // the backend is ready, since each of them would wait for it.
                    let head = self.tx_ring.head;
                    let left = ((self.tx_ring.tail + count - head) % count)
                        .min(count - head)
                        .min(count - done);
                    if let (Some(a), true) = (at, self.backend.tx_ready()) {
                        step = descriptors_in_hole(&self.mem, a, left);
                    }
                    self.counters.tx_desc_fault += u64::from(step);
                    self.tx.abandon();
                }
            }
            done += step;
            self.tx_ring.head = (self.tx_ring.head + step) % count;
        }
        if self.tx.stalled && !was_stalled {
            self.counters.tx_stalls += 1;
            // The backend thread watches for room only while a pass is stalled.
            self.wake_backend_thread();
        }
        if done > 0 {
            // The end of the batch: a gathering backend sends what it holds.
            if self.backend.flush().is_err() {
                self.counters.tx_backend_errors += 1;
            }
            let mut causes = Cause::TXDW;
            if self.tx_ring.head == self.tx_ring.tail {
                causes |= Cause::TXQE;
            }
            self.raise(causes);
        }
        done > 0
    }

    fn tx_descriptor(&mut self, d: &Desc) {
        let cmd = d.cmd();
        let dword2 = d.dword2();
        if !cmd.contains(TxCmd::DEXT) {
            let len = (dword2 & 0xffff) as usize;
            if cmd.contains(TxCmd::IC_TSE) && cmd.contains(TxCmd::EOP) {
                self.tx.sums.push(ChecksumSpec {
                    start: usize::from(d.bytes[13]),
                    end: None,
                    at: usize::from(d.bytes[10]),
                });
            }
            self.tx_gather(d.addr(), len, cmd);
            return;
        }
        match (dword2 >> 20) & 0xf {
            DTYP_CONTEXT => {
                let b = &d.bytes;
                self.tx.context = TxContext {
                    ipcss: b[0],
                    ipcso: b[1],
                    ipcse: u16::from_le_bytes([b[2], b[3]]),
                    tucss: b[4],
                    tucso: b[5],
                    tucse: u16::from_le_bytes([b[6], b[7]]),
                    ipv4: b[11] & TUCMD_IP != 0,
                    tcp: b[11] & TUCMD_TCP != 0,
                    hdr_len: b[13],
                    mss: u16::from_le_bytes([b[14], b[15]]),
                };
            }
            DTYP_DATA => {
                let len = (dword2 & 0xf_ffff) as usize;
                if !self.tx.in_frame {
                    let popts = d.bytes[13];
                    let c = self.tx.context;
                    if popts & POPTS_IXSM != 0 {
                        self.tx.sums.push(ChecksumSpec {
                            start: usize::from(c.ipcss),
                            end: (c.ipcse != 0).then_some(usize::from(c.ipcse)),
                            at: usize::from(c.ipcso),
                        });
                    }
                    if popts & POPTS_TXSM != 0 {
                        self.tx.sums.push(ChecksumSpec {
                            start: usize::from(c.tucss),
                            end: (c.tucse != 0).then_some(usize::from(c.tucse)),
                            at: usize::from(c.tucso),
                        });
                    }
                    self.tx.tso = cmd.contains(TxCmd::IC_TSE);
                    self.tx.popts = popts;
                }
                self.tx_gather(d.addr(), len, cmd);
            }
            _ => self.counters.tx_bad_desc_type += 1,
        }
    }

    /// Append one buffer to the frame; at EOP send it (or count why it was lost).
    fn tx_gather(&mut self, addr: u64, len: usize, cmd: TxCmd) {
        self.tx.in_frame = true;
        if self.tx.lost.is_none() {
            let have = self.tx.frame.len();
            let max = if self.tx.tso {
                MAX_TSO_FRAME
            } else {
                MAX_FRAME
            };
            if have.saturating_add(len) > max {
                self.tx.lost = Some(Loss::Oversize);
            } else {
                self.tx.frame.resize(have + len, 0);
                if self
                    .mem
                    .read_slice(&mut self.tx.frame[have..], GuestAddress(addr))
                    .is_err()
                {
                    self.tx.lost = Some(Loss::Fault);
                }
            }
        }
        if cmd.contains(TxCmd::EOP) {
            self.tx_send();
        }
    }

    fn tx_send(&mut self) {
        let mut frame = std::mem::take(&mut self.tx.frame);
        let sums = std::mem::take(&mut self.tx.sums);
        let lost = self.tx.lost.take();
        let tso = std::mem::take(&mut self.tx.tso);
        self.tx.in_frame = false;
        match lost {
            Some(Loss::Oversize) => self.counters.tx_oversize += 1,
            Some(Loss::Fault) => self.counters.tx_buffer_fault += 1,
            None if frame.is_empty() => self.counters.tx_empty += 1,
            None if tso => self.tx_segment(&frame, &sums),
            None => {
                for s in sums {
                    if !insert(&mut frame, s) {
                        self.counters.tx_bad_checksum_offsets += 1;
                    }
                }
                transmit(
                    &mut *self.backend,
                    &mut self.stats,
                    &mut self.counters,
                    &frame,
                );
            }
        }
        // Keep the allocation for the next frame.
        frame.clear();
        self.tx.frame = frame;
    }
}

/// One's complement addition of 16-bit words.
fn ones_add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

fn get_be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn put_be16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

impl<M: GuestMemory> E1000<M> {
    /// Send a TSE frame as segments of at most MSS payload bytes (see the module comment).
    /// A context that does not fit the frame drops it, counted in `tx_tso_dropped`.
    fn tx_segment(&mut self, frame: &[u8], sums: &[ChecksumSpec]) {
        let c = self.tx.context;
        let (hdr, mss) = (usize::from(c.hdr_len), usize::from(c.mss));
        let (ipcss, ipcso, tucss, tucso) = (
            usize::from(c.ipcss),
            usize::from(c.ipcso),
            usize::from(c.tucss),
            usize::from(c.tucso),
        );
        let l4_header = if c.tcp { 20 } else { 8 };
        let fits = mss != 0
            && hdr < frame.len()
            && hdr + mss <= MAX_FRAME
            && tucss + l4_header <= hdr
            && tucso + 2 <= hdr
            && ipcss + 20 <= hdr
            && ipcso + 2 <= hdr;
        if !fits {
            self.counters.tx_tso_dropped += 1;
            return;
        }
        let payload = &frame[hdr..];
        let ip_id = get_be16(frame, ipcss + 4);
        let seq = u32::from_be_bytes([
            frame[tucss + 4],
            frame[tucss + 5],
            frame[tucss + 6],
            frame[tucss + 7],
        ]);
        let pseudo = get_be16(frame, tucso);
        let segments = payload.len().div_ceil(mss);
        let mut seg = Vec::with_capacity(hdr + mss);
        for (i, chunk) in payload.chunks(mss).enumerate() {
            seg.clear();
            seg.extend_from_slice(&frame[..hdr]);
            seg.extend_from_slice(chunk);
            let len = seg.len();
            if c.ipv4 {
                put_be16(&mut seg, ipcss + 2, (len - ipcss) as u16);
                put_be16(&mut seg, ipcss + 4, ip_id.wrapping_add(i as u16));
            }
            if c.tcp {
                let s = seq.wrapping_add((i * mss) as u32);
                seg[tucss + 4..tucss + 8].copy_from_slice(&s.to_be_bytes());
                if i + 1 < segments {
                    seg[tucss + 13] &= !(TCP_FIN | TCP_PSH);
                }
            } else {
                put_be16(&mut seg, tucss + 4, (len - tucss) as u16);
            }
            if self.tx.popts & POPTS_IXSM != 0 {
                put_be16(&mut seg, ipcso, 0);
            }
            if self.tx.popts & POPTS_TXSM != 0 {
                put_be16(&mut seg, tucso, ones_add(pseudo, (len - tucss) as u16));
            }
            for &s in sums {
                if !insert(&mut seg, s) {
                    self.counters.tx_bad_checksum_offsets += 1;
                }
            }
            transmit(
                &mut *self.backend,
                &mut self.stats,
                &mut self.counters,
                &seg,
            );
        }
    }
}

fn transmit(
    backend: &mut dyn crate::backends::net::NetBackend,
    stats: &mut Stats,
    counters: &mut Counters,
    frame: &[u8],
) {
    match backend.transmit(&FrameMeta::default(), frame) {
        Ok(()) => {
            counters.tx_frames += 1;
            stats.tx_frame(frame.len(), &frame[..frame.len().min(6)]);
        }
        Err(_) => counters.tx_backend_errors += 1,
    }
}
