//! The statistics block (0x4000..0x40FF, 64 dwords): every register clears when read, as on
//! the 82540EM. A 64-bit counter is a low/high pair; reading the high half clears both, so a
//! driver reads low then high.

use super::regs::{STATS_BASE, STATS_END};

pub const CRCERRS: u64 = 0x4000;
/// Missed packets: frames dropped for want of room.
pub const MPC: u64 = 0x4010;
pub const GPRC: u64 = 0x4074;
pub const BPRC: u64 = 0x4078;
pub const MPRC: u64 = 0x407c;
pub const GPTC: u64 = 0x4080;
pub const GORCL: u64 = 0x4088;
pub const GORCH: u64 = 0x408c;
pub const GOTCL: u64 = 0x4090;
pub const GOTCH: u64 = 0x4094;
/// Receive no buffers: times a frame had to wait for descriptors.
pub const RNBC: u64 = 0x40a0;
/// Receive oversize.
pub const ROC: u64 = 0x40ac;
pub const TORL: u64 = 0x40c0;
pub const TORH: u64 = 0x40c4;
pub const TOTL: u64 = 0x40c8;
pub const TOTH: u64 = 0x40cc;
pub const TPR: u64 = 0x40d0;
pub const TPT: u64 = 0x40d4;
pub const MPTC: u64 = 0x40f0;
pub const BPTC: u64 = 0x40f4;

const LEN: usize = ((STATS_END - STATS_BASE) / 4) as usize;

#[derive(Clone)]
pub struct Stats {
    regs: [u32; LEN],
}

impl Default for Stats {
    fn default() -> Self {
        Self { regs: [0; LEN] }
    }
}

fn index(reg: u64) -> Option<usize> {
    (STATS_BASE..STATS_END)
        .contains(&reg)
        .then(|| ((reg - STATS_BASE) / 4) as usize)
}

impl Stats {
    /// Add to a 32-bit counter (saturating, as the hardware's counters stick at their maximum).
    pub fn add(&mut self, reg: u64, n: u32) {
        if let Some(i) = index(reg) {
            self.regs[i] = self.regs[i].saturating_add(n);
        }
    }

    /// Add to the 64-bit counter whose low half is at `low`.
    pub fn add64(&mut self, low: u64, n: u64) {
        let (Some(l), Some(h)) = (index(low), index(low + 4)) else {
            return;
        };
        let v = (u64::from(self.regs[h]) << 32 | u64::from(self.regs[l])).saturating_add(n);
        self.regs[l] = v as u32;
        self.regs[h] = (v >> 32) as u32;
    }

    /// A received frame of `len` bytes: good and total counts, broadcast/multicast.
    pub fn rx_frame(&mut self, len: usize, dest: &[u8]) {
        self.add(GPRC, 1);
        self.add(TPR, 1);
        self.add64(GORCL, len as u64);
        self.add64(TORL, len as u64);
        if dest.iter().all(|&b| b == 0xff) {
            self.add(BPRC, 1);
        } else if dest.first().is_some_and(|b| b & 1 != 0) {
            self.add(MPRC, 1);
        }
    }

    pub fn tx_frame(&mut self, len: usize, dest: &[u8]) {
        self.add(GPTC, 1);
        self.add(TPT, 1);
        self.add64(GOTCL, len as u64);
        self.add64(TOTL, len as u64);
        if dest.iter().all(|&b| b == 0xff) {
            self.add(BPTC, 1);
        } else if dest.first().is_some_and(|b| b & 1 != 0) {
            self.add(MPTC, 1);
        }
    }

    /// Without clearing (for reports and tests).
    pub fn peek(&self, reg: u64) -> u32 {
        index(reg).map_or(0, |i| self.regs[i])
    }

    /// A guest read: the value, then cleared; a 64-bit pair clears when its high half is read.
    pub fn read_clear(&mut self, reg: u64) -> u32 {
        let Some(i) = index(reg) else {
            return 0;
        };
        let v = self.regs[i];
        if matches!(reg, GORCL | GOTCL | TORL | TOTL) {
            return v;
        }
        self.regs[i] = 0;
        if matches!(reg, GORCH | GOTCH | TORH | TOTH) {
            self.regs[i - 1] = 0;
        }
        v
    }
}
