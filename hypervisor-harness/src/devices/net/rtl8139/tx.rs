//! Transmit: four slots (TSAD0-3 the buffer, TSD0-3 size and status) used in turn. The driver
//! writes a slot's TSD with the size and OWN clear; the device, with TE set and bus mastering
//! on, takes the slots in order from the current one: it reads the frame from guest memory,
//! hands it to the backend, and sets OWN and then TOK (ISR.TOK).
//!
//! A backend without room ([`NetBackend::tx_ready`] false) leaves the slot started and not
//! done (OWN clear) until it has room: the backend thread watches its `tx_wait_fd` and calls
//! [`Rtl8139::tx_resume`], so nothing is dropped on a full socket.
//!
//! A size of 0 or over 1792 bytes, or a buffer outside RAM, aborts the slot: OWN and TABT,
//! ISR.TER (and SERR for the buffer), counted. Frames shorter than 60 bytes are padded with
//! zeros, as the chip pads runts.
//!
//! [`NetBackend::tx_ready`]: crate::backends::net::NetBackend::tx_ready

use super::regs::*;
use super::Rtl8139;
use crate::backends::net::{FrameMeta, MAX_FRAME};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

const MIN_FRAME: usize = 60;

pub struct TxState {
    /// The slot the device looks at next.
    pub(super) current: usize,
    /// A started slot waits for the backend's room.
    pub(super) blocked: bool,
    buf: Vec<u8>,
}

impl Default for TxState {
    fn default() -> Self {
        Self {
            current: 0,
            blocked: false,
            buf: vec![0; TX_MAX_SIZE as usize],
        }
    }
}

impl<M: GuestMemory> Rtl8139<M> {
    /// Whether a started slot waits for the backend to have room (the backend thread then
    /// polls the backend's `tx_wait_fd` and calls [`Self::tx_resume`]).
    pub fn tx_blocked(&self) -> bool {
        self.tx.blocked
    }

    /// Try the waiting slots again (the backend may have room now).
    pub fn tx_resume(&mut self) {
        if self.tx.blocked {
            self.tx_kick();
            self.update_irq();
        }
    }

    /// Run the started slots from the current one; true if any frame went to the backend.
    pub(super) fn tx_process(&mut self) -> bool {
        let was_blocked = self.tx.blocked;
        self.tx.blocked = false;
        if !self.cmd.contains(Cmd::TE) || !self.bus_master() {
            return false;
        }
        let mut causes = Intr::empty();
        let mut sent = 0usize;
        for _ in 0..TX_SLOTS {
            let slot = self.tx.current;
            let tsd = self.tsd[slot];
            if tsd & Tsd::OWN.bits() != 0 {
                break;
            }
            let size = tsd & TSD_SIZE_MASK;
            if size == 0 || size > TX_MAX_SIZE {
                self.counters.tx_bad_size += 1;
                self.tsd[slot] = tsd | (Tsd::OWN | Tsd::TABT).bits();
                causes |= Intr::TER;
            } else if !self.backend.tx_ready() {
                if !was_blocked {
                    self.counters.tx_holds += 1;
                    // The thread starts watching the backend's room.
                    self.wake_thread();
                }
                self.tx.blocked = true;
                break;
            } else {
                let size = size as usize;
                let addr = GuestAddress(u64::from(self.tsad[slot]));
                let buf = &mut self.tx.buf[..size];
                let read = self.mem.check_range(addr, size, Permissions::Read)
                    && self.mem.read_slice(buf, addr).is_ok();
                if !read {
                    self.counters.tx_buffer_fault += 1;
                    self.tsd[slot] = tsd | (Tsd::OWN | Tsd::TABT).bits();
                    causes |= Intr::TER | Intr::SERR;
                } else {
                    self.send(size);
                    sent += 1;
                    self.tsd[slot] = tsd | (Tsd::OWN | Tsd::TOK).bits();
                    causes |= Intr::TOK;
                }
            }
            self.tx.current = (slot + 1) % TX_SLOTS;
        }
        if sent > 0 && self.backend.flush().is_err() {
            self.counters.tx_backend_errors += 1;
        }
        if !causes.is_empty() {
            self.raise(causes);
        }
        sent > 0
    }

    /// Hand the `size` bytes in the TX buffer to the backend, padded to 60.
    fn send(&mut self, size: usize) {
        if size > MAX_FRAME {
            self.counters.tx_too_long += 1;
            return;
        }
        let len = size.max(MIN_FRAME);
        self.tx.buf[size..len].fill(0);
        match self
            .backend
            .transmit(&FrameMeta::default(), &self.tx.buf[..len])
        {
            Ok(()) => self.counters.tx_frames += 1,
            Err(_) => self.counters.tx_backend_errors += 1,
        }
    }
}
