//! MSI-X (PCI Local Bus 3.0 §6.8.2): the vector table (16-byte entries: message address low and
//! high, message data, vector control with the per-vector mask bit), the pending bit array, and
//! the enable and function-mask bits of the capability's message control.
//!
//! The model is pure: it says what to deliver ([`MsiMessage`]s) and the caller delivers them.
//! A vector triggered while masked (per vector or by the function mask) sets its pending bit and
//! is delivered, and its pending bit cleared, when it is unmasked.

/// Capability ID of MSI-X.
pub const CAP_ID: u8 = 0x11;
/// Message control: MSI-X enable.
pub const CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Size of one table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control: mask bit.
const VECTOR_MASKED: u32 = 1;
/// Most vectors a table may have.
pub const MAX_VECTORS: u16 = 2048;

/// One MSI message, as programmed in a table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Default for Entry {
    fn default() -> Self {
        // Entries come out of reset masked.
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: VECTOR_MASKED,
        }
    }
}

impl Entry {
    fn masked(&self) -> bool {
        self.ctrl & VECTOR_MASKED != 0
    }
    fn message(&self) -> MsiMessage {
        MsiMessage {
            addr: (self.addr_hi as u64) << 32 | self.addr_lo as u64,
            data: self.data,
        }
    }
}

/// What became of a triggered vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Deliver this message now.
    Deliver(MsiMessage),
    /// Masked: the pending bit is set.
    Pending,
    /// MSI-X is disabled, or there is no such vector: nothing happens.
    Dropped,
}

/// Effects of a table write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableWrite {
    /// The entry's message changed (or it was unmasked): the route for `vector` may need updating.
    pub changed: Option<(u16, MsiMessage)>,
    /// The write unmasked a pending vector: deliver it now.
    pub deliver: Option<(u16, MsiMessage)>,
}

#[derive(Debug, Clone)]
pub struct Msix {
    entries: Vec<Entry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl Msix {
    /// A table of `vectors` entries (1..=2048; clamped).
    pub fn new(vectors: u16) -> Self {
        let n = vectors.clamp(1, MAX_VECTORS) as usize;
        Self {
            entries: vec![Entry::default(); n],
            pba: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
        }
    }

    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Table size in bytes.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// PBA size in bytes (whole qwords).
    pub fn pba_len(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// The read-only part of message control: table size - 1.
    pub fn control_table_size(&self) -> u16 {
        self.vectors() - 1
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.entries.get(vector as usize).map(Entry::message)
    }

    pub fn is_masked(&self, vector: u16) -> bool {
        self.function_masked || self.entries.get(vector as usize).is_none_or(Entry::masked)
    }

    pub fn is_pending(&self, vector: u16) -> bool {
        let v = vector as usize;
        self.pba
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: u16, on: bool) {
        let v = vector as usize;
        if let Some(w) = self.pba.get_mut(v / 64) {
            if on {
                *w |= 1 << (v % 64);
            } else {
                *w &= !(1 << (v % 64));
            }
        }
    }

    /// A new message control value (the guest wrote the capability). Returns the pending vectors
    /// that became deliverable, their pending bits cleared.
    pub fn set_control(&mut self, control: u16) -> Vec<(u16, MsiMessage)> {
        self.enabled = control & CTRL_ENABLE != 0;
        self.function_masked = control & CTRL_FUNCTION_MASK != 0;
        self.collect_deliverable()
    }

    fn collect_deliverable(&mut self) -> Vec<(u16, MsiMessage)> {
        let mut out = Vec::new();
        if !self.enabled || self.function_masked {
            return out;
        }
        for v in 0..self.vectors() {
            if self.is_pending(v) && !self.is_masked(v) {
                self.set_pending(v, false);
                out.push((v, self.entries[v as usize].message()));
            }
        }
        out
    }

    /// Raise `vector`.
    pub fn trigger(&mut self, vector: u16) -> Trigger {
        if !self.enabled || vector as usize >= self.entries.len() {
            return Trigger::Dropped;
        }
        if self.is_masked(vector) {
            self.set_pending(vector, true);
            return Trigger::Pending;
        }
        Trigger::Deliver(self.entries[vector as usize].message())
    }

    /// Guest read of the table. Dword or qword accesses inside the table; anything else reads 0.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) {
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let off = offset + 4 * i as u64;
            if let Some(v) = self.table_dword(off) {
                chunk.copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn table_dword(&self, off: u64) -> Option<u32> {
        let e = self.entries.get((off / ENTRY_SIZE) as usize)?;
        Some(match off % ENTRY_SIZE {
            0 => e.addr_lo,
            4 => e.addr_hi,
            8 => e.data,
            _ => e.ctrl,
        })
    }

    /// Guest write of the table. Dword or qword accesses inside the table; others are ignored.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> TableWrite {
        let mut out = TableWrite::default();
        let len = data.len() as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) {
            return out;
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let off = offset + 4 * i as u64;
            let idx = (off / ENTRY_SIZE) as usize;
            let Some(e) = self.entries.get_mut(idx) else {
                continue;
            };
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let before = *e;
            match off % ENTRY_SIZE {
                // The address is dword aligned: the low two bits are read-only zero.
                0 => e.addr_lo = v & !3,
                4 => e.addr_hi = v,
                8 => e.data = v,
                _ => e.ctrl = v & VECTOR_MASKED,
            }
            let after = *e;
            let vector = idx as u16;
            if after != before && !after.masked() {
                out.changed = Some((vector, after.message()));
            }
            if before.masked() && !after.masked() {
                out.changed = Some((vector, after.message()));
                if self.enabled && !self.function_masked && self.is_pending(vector) {
                    self.set_pending(vector, false);
                    out.deliver = Some((vector, after.message()));
                }
            }
        }
        out
    }

    /// Guest read of the PBA (read-only). Any aligned dword or qword; others read 0.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) {
            return;
        }
        let Some(word) = self.pba.get((offset / 8) as usize) else {
            return;
        };
        let bytes = word.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    /// Back to the power-on state (entries masked, nothing pending, disabled).
    pub fn reset(&mut self) {
        let n = self.entries.len();
        *self = Self::new(n as u16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w32(m: &mut Msix, off: u64, v: u32) -> TableWrite {
        m.write_table(off, &v.to_le_bytes())
    }

    fn r32(m: &Msix, off: u64) -> u32 {
        let mut b = [0u8; 4];
        m.read_table(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn program(m: &mut Msix, v: u16, addr: u32, data: u32) {
        let base = v as u64 * ENTRY_SIZE;
        w32(m, base, addr);
        w32(m, base + 4, 0);
        w32(m, base + 8, data);
    }

    #[test]
    fn table_layout_and_reset_state() {
        let mut m = Msix::new(3);
        assert_eq!(m.table_len(), 48);
        assert_eq!(m.pba_len(), 8);
        assert_eq!(m.control_table_size(), 2);
        for v in 0..3 {
            assert_eq!(r32(&m, v * 16 + 12), 1, "vector {v} not masked at reset");
        }
        program(&mut m, 1, 0xfee0_0003, 0x41);
        assert_eq!(r32(&m, 16), 0xfee0_0000, "low address bits are read-only");
        assert_eq!(r32(&m, 24), 0x41);
        // A qword read of the address, odd sizes and offsets read 0, out of range reads 0.
        let mut q = [0u8; 8];
        m.read_table(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_0000);
        let mut b = [0xffu8; 2];
        m.read_table(16, &mut b);
        assert_eq!(b, [0, 0]);
        assert_eq!(r32(&m, 48), 0);
        assert_eq!(r32(&m, u64::MAX - 3), 0);
        // Vector control: only the mask bit is writable.
        w32(&mut m, 12, 0xffff_fffe);
        assert_eq!(r32(&m, 12), 0);
        // Odd writes are ignored, never panic.
        m.write_table(1, &[1, 2, 3, 4]);
        m.write_table(0, &[1]);
        m.write_table(u64::MAX - 3, &[1, 2, 3, 4]);
        m.reset();
        assert_eq!(r32(&m, 16), 0);
        assert_eq!(r32(&m, 12), 1);
    }

    #[test]
    fn disabled_drops_and_enabled_delivers() {
        let mut m = Msix::new(2);
        program(&mut m, 0, 0xfee0_0000, 0x30);
        w32(&mut m, 12, 0);
        assert_eq!(m.trigger(0), Trigger::Dropped);
        assert!(!m.is_pending(0));
        m.set_control(CTRL_ENABLE);
        assert_eq!(
            m.trigger(0),
            Trigger::Deliver(MsiMessage {
                addr: 0xfee0_0000,
                data: 0x30
            })
        );
        assert_eq!(m.trigger(7), Trigger::Dropped);
    }

    #[test]
    fn masked_vector_pends_and_fires_on_unmask() {
        let mut m = Msix::new(2);
        m.set_control(CTRL_ENABLE);
        program(&mut m, 1, 0xfee0_0000, 0x31);
        // Still masked (reset state).
        assert_eq!(m.trigger(1), Trigger::Pending);
        assert!(m.is_pending(1));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0b10);
        let mut pba4 = [0u8; 4];
        m.read_pba(4, &mut pba4);
        assert_eq!(pba4, [0; 4]);
        let w = w32(&mut m, 16 + 12, 0);
        let msg = MsiMessage {
            addr: 0xfee0_0000,
            data: 0x31,
        };
        assert_eq!(w.deliver, Some((1, msg)));
        assert_eq!(w.changed, Some((1, msg)));
        assert!(!m.is_pending(1));
        // Unmasking again does nothing more.
        assert_eq!(w32(&mut m, 16 + 12, 0).deliver, None);
    }

    #[test]
    fn function_mask_pends_all_and_releases_on_clear() {
        let mut m = Msix::new(2);
        for v in 0..2 {
            program(&mut m, v, 0xfee0_0000, 0x40 + v as u32);
            w32(&mut m, v as u64 * 16 + 12, 0);
        }
        assert!(m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK).is_empty());
        assert_eq!(m.trigger(0), Trigger::Pending);
        assert_eq!(m.trigger(1), Trigger::Pending);
        // Per-vector unmask while the function is masked: stays pending.
        assert_eq!(w32(&mut m, 12, 0).deliver, None);
        // Mask vector 1 individually, then clear the function mask: only 0 fires.
        w32(&mut m, 16 + 12, 1);
        let fired = m.set_control(CTRL_ENABLE);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].0, 0);
        assert_eq!(fired[0].1.data, 0x40);
        assert!(m.is_pending(1));
        assert!(!m.is_pending(0));
        let w = w32(&mut m, 16 + 12, 0);
        assert_eq!(w.deliver.map(|d| d.1.data), Some(0x41));
    }

    #[test]
    fn message_change_is_reported_for_unmasked_entries() {
        let mut m = Msix::new(1);
        // Masked entry: no route change reported while programming.
        assert_eq!(w32(&mut m, 8, 0x55).changed, None);
        w32(&mut m, 12, 0);
        let w = w32(&mut m, 8, 0x56);
        assert_eq!(w.changed.map(|c| c.1.data), Some(0x56));
        // The same value again: nothing changed.
        assert_eq!(w32(&mut m, 8, 0x56).changed, None);
    }
}
