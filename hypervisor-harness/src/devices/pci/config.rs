//! A generic type-0 PCI configuration space: 256 bytes with per-byte writable and
//! write-1-to-clear masks, BARs (I/O, 32-bit and 64-bit memory) sized the usual way (write
//! all-ones, read back), and a capability list.

use std::fmt;

pub const CONFIG_SIZE: usize = 256;

pub const REG_VENDOR: usize = 0x00;
pub const REG_COMMAND: usize = 0x04;
pub const REG_STATUS: usize = 0x06;
pub const REG_REVISION: usize = 0x08;
pub const REG_CACHE_LINE: usize = 0x0c;
pub const REG_LATENCY: usize = 0x0d;
pub const REG_HEADER_TYPE: usize = 0x0e;
pub const REG_BAR0: usize = 0x10;
pub const REG_SUBSYS_VENDOR: usize = 0x2c;
pub const REG_CAP_PTR: usize = 0x34;
pub const REG_INT_LINE: usize = 0x3c;
pub const REG_INT_PIN: usize = 0x3d;

pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEM: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// Writable command bits: I/O, memory, bus master, parity error response, SERR#, INTx disable.
const CMD_WRITABLE: u16 = 0x0547;
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Write-1-to-clear status bits (error bits).
const STATUS_W1C: u16 = 0xf900;

const FIRST_CAP: usize = 0x40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32 { prefetchable: bool },
    Mem64 { prefetchable: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub kind: BarKind,
    pub size: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    BadBarIndex(usize),
    BarInUse(usize),
    BadBarSize(u64),
    NoSuchBar(usize),
    AddressMisaligned { bar: usize, addr: u64 },
    CapabilitySpaceFull,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PCI config: {self:?}")
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone)]
pub struct PciConfig {
    regs: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    w1cmask: [u8; CONFIG_SIZE],
    bars: [Option<Bar>; 6],
    /// Next free byte for a capability, and the previous capability's "next" pointer.
    cap_next_free: usize,
    cap_last_link: usize,
}

impl PciConfig {
    pub fn new(vendor: u16, device: u16, class: u8, subclass: u8, prog_if: u8) -> Self {
        let mut c = Self {
            regs: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            w1cmask: [0; CONFIG_SIZE],
            bars: [None; 6],
            cap_next_free: FIRST_CAP,
            cap_last_link: REG_CAP_PTR,
        };
        c.set_u16(REG_VENDOR, vendor);
        c.set_u16(REG_VENDOR + 2, device);
        c.regs[0x09] = prog_if;
        c.regs[0x0a] = subclass;
        c.regs[0x0b] = class;
        c.regs[REG_HEADER_TYPE] = 0;
        c.set_wmask_u16(REG_COMMAND, CMD_WRITABLE);
        c.w1cmask[REG_STATUS..REG_STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        c.wmask[REG_CACHE_LINE] = 0xff;
        c.wmask[REG_LATENCY] = 0xff;
        c.wmask[REG_INT_LINE] = 0xff;
        c
    }

    pub fn set_revision(&mut self, rev: u8) {
        self.regs[REG_REVISION] = rev;
    }

    pub fn set_subsystem(&mut self, vendor: u16, id: u16) {
        self.set_u16(REG_SUBSYS_VENDOR, vendor);
        self.set_u16(REG_SUBSYS_VENDOR + 2, id);
    }

    /// `pin`: 0 none, 1 = INTA .. 4 = INTD. `line`: the preset interrupt line (GSI).
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.regs[REG_INT_PIN] = pin;
        self.regs[REG_INT_LINE] = line;
    }

    pub fn interrupt_line(&self) -> u8 {
        self.regs[REG_INT_LINE]
    }

    pub fn command(&self) -> u16 {
        self.get_u16(REG_COMMAND)
    }

    /// Set command bits as firmware would (ignores the guest-writable mask).
    pub fn enable(&mut self, bits: u16) {
        let v = self.command() | bits;
        self.set_u16(REG_COMMAND, v);
    }

    pub fn status(&self) -> u16 {
        self.get_u16(REG_STATUS)
    }

    /// Raise status bits (device side; e.g. an error bit the guest later clears).
    pub fn set_status_bits(&mut self, bits: u16) {
        let v = self.status() | bits;
        self.set_u16(REG_STATUS, v);
    }

    fn check_new_bar(
        &self,
        idx: usize,
        slots: usize,
        size: u64,
        min: u64,
    ) -> Result<(), ConfigError> {
        if idx + slots > 6 {
            return Err(ConfigError::BadBarIndex(idx));
        }
        if (idx..idx + slots).any(|i| self.bars[i].is_some() || self.is_upper_half(i)) {
            return Err(ConfigError::BarInUse(idx));
        }
        if !size.is_power_of_two() || size < min {
            return Err(ConfigError::BadBarSize(size));
        }
        Ok(())
    }

    fn is_upper_half(&self, idx: usize) -> bool {
        idx > 0
            && matches!(
                self.bars[idx - 1],
                Some(Bar {
                    kind: BarKind::Mem64 { .. },
                    ..
                })
            )
    }

    /// An I/O BAR of `size` bytes (power of two, 4..=256).
    pub fn add_io_bar(&mut self, idx: usize, size: u64) -> Result<(), ConfigError> {
        self.check_new_bar(idx, 1, size, 4)?;
        if size > 256 {
            return Err(ConfigError::BadBarSize(size));
        }
        let off = REG_BAR0 + 4 * idx;
        self.set_u32(off, 0x1);
        self.set_wmask_u32(off, !(size as u32 - 1) & 0xffff_fffc);
        self.bars[idx] = Some(Bar {
            kind: BarKind::Io,
            size,
        });
        Ok(())
    }

    /// A 32-bit memory BAR of `size` bytes (power of two, 16 bytes ..= 2 GiB).
    pub fn add_mem32_bar(
        &mut self,
        idx: usize,
        size: u64,
        prefetchable: bool,
    ) -> Result<(), ConfigError> {
        self.check_new_bar(idx, 1, size, 16)?;
        if size > 1 << 31 {
            return Err(ConfigError::BadBarSize(size));
        }
        let off = REG_BAR0 + 4 * idx;
        self.set_u32(off, if prefetchable { 0x8 } else { 0 });
        self.set_wmask_u32(off, !(size as u32 - 1) & 0xffff_fff0);
        self.bars[idx] = Some(Bar {
            kind: BarKind::Mem32 { prefetchable },
            size,
        });
        Ok(())
    }

    /// A 64-bit memory BAR occupying slots `idx` and `idx + 1`.
    pub fn add_mem64_bar(
        &mut self,
        idx: usize,
        size: u64,
        prefetchable: bool,
    ) -> Result<(), ConfigError> {
        self.check_new_bar(idx, 2, size, 16)?;
        let off = REG_BAR0 + 4 * idx;
        let mask = !(size - 1);
        self.set_u32(off, 0x4 | if prefetchable { 0x8 } else { 0 });
        self.set_wmask_u32(off, (mask as u32) & 0xffff_fff0);
        self.set_wmask_u32(off + 4, (mask >> 32) as u32);
        self.bars[idx] = Some(Bar {
            kind: BarKind::Mem64 { prefetchable },
            size,
        });
        Ok(())
    }

    pub fn bar(&self, idx: usize) -> Option<Bar> {
        self.bars.get(idx).copied().flatten()
    }

    /// Program a BAR's address (firmware side).
    pub fn set_bar_address(&mut self, idx: usize, addr: u64) -> Result<(), ConfigError> {
        let bar = self.bar(idx).ok_or(ConfigError::NoSuchBar(idx))?;
        if addr & (bar.size - 1) != 0 {
            return Err(ConfigError::AddressMisaligned { bar: idx, addr });
        }
        let off = REG_BAR0 + 4 * idx;
        let low_flags = self.get_u32(off) & if bar.kind == BarKind::Io { 0x3 } else { 0xf };
        match bar.kind {
            BarKind::Io | BarKind::Mem32 { .. } => {
                if addr > u32::MAX as u64 {
                    return Err(ConfigError::AddressMisaligned { bar: idx, addr });
                }
                self.set_u32(off, addr as u32 | low_flags);
            }
            BarKind::Mem64 { .. } => {
                self.set_u32(off, addr as u32 | low_flags);
                self.set_u32(off + 4, (addr >> 32) as u32);
            }
        }
        Ok(())
    }

    /// The address the BAR currently decodes (as the guest last wrote it, or as assigned).
    pub fn bar_address(&self, idx: usize) -> Option<u64> {
        let bar = self.bar(idx)?;
        let off = REG_BAR0 + 4 * idx;
        let low = self.get_u32(off) as u64;
        Some(match bar.kind {
            BarKind::Io => low & !0x3,
            BarKind::Mem32 { .. } => low & !0xf,
            BarKind::Mem64 { .. } => (low & !0xf) | ((self.get_u32(off + 4) as u64) << 32),
        })
    }

    /// Append a capability with id `id` and body `body` (the bytes after id and next pointer).
    /// Returns its offset. The body is read-only for the guest unless `writable` covers it.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = 2 + body.len();
        let off = (self.cap_next_free + 3) & !3;
        if off + len > CONFIG_SIZE {
            return Err(ConfigError::CapabilitySpaceFull);
        }
        self.regs[off] = id;
        self.regs[off + 1] = 0;
        self.regs[off + 2..off + len].copy_from_slice(body);
        for (i, m) in writable.iter().take(body.len()).enumerate() {
            self.wmask[off + 2 + i] = *m;
        }
        self.regs[self.cap_last_link] = off as u8;
        self.cap_last_link = off + 1;
        self.cap_next_free = off + len;
        self.set_status_bits(STATUS_CAP_LIST);
        Ok(off)
    }

    /// Guest read of `data.len()` bytes at `offset`. Out of range: all-ones.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        match range(offset, data.len()) {
            Some(r) => data.copy_from_slice(&self.regs[r]),
            None => data.fill(0xff),
        }
    }

    /// Guest write. Read-only bits keep their value; W1C bits clear when written with 1.
    /// Out-of-range writes are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(r) = range(offset, data.len()) else {
            return;
        };
        for (i, &v) in r.zip(data) {
            let w = self.wmask[i];
            let c = self.w1cmask[i];
            self.regs[i] = (self.regs[i] & !w & !(c & v)) | (v & w);
        }
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    fn get_u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.regs[off], self.regs[off + 1]])
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.regs[off..off + 4].try_into().unwrap_or([0xff; 4]))
    }
    fn set_u16(&mut self, off: usize, v: u16) {
        self.regs[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set_u32(&mut self, off: usize, v: u32) {
        self.regs[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn set_wmask_u16(&mut self, off: usize, v: u16) {
        self.wmask[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set_wmask_u32(&mut self, off: usize, v: u32) {
        self.wmask[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
}

fn range(offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (end <= CONFIG_SIZE).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PciConfig {
        PciConfig::new(0x1234, 0xf100, 0xff, 0x01, 0x02)
    }

    fn w32(c: &mut PciConfig, off: usize, v: u32) {
        c.write(off as u64, &v.to_le_bytes());
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = cfg();
        assert_eq!(c.read_u32(0), 0xf100_1234);
        assert_eq!(c.read_u32(8), 0xff01_0200);
        w32(&mut c, 0, 0xdead_beef);
        w32(&mut c, 8, 0xffff_ffff);
        c.write(REG_HEADER_TYPE as u64, &[0xff]);
        assert_eq!(c.read_u32(0), 0xf100_1234);
        assert_eq!(c.read_u32(8), 0xff01_0200);
        assert_eq!(c.read_u32(0xc) >> 16 & 0xff, 0);
    }

    #[test]
    fn command_status_and_int_line() {
        let mut c = cfg();
        c.set_interrupt(1, 10);
        c.write(REG_COMMAND as u64, &[0xff, 0xff]);
        assert_eq!(c.command(), CMD_WRITABLE);
        // Interrupt line writable, pin read-only.
        c.write(REG_INT_LINE as u64, &[0x0b, 0x04]);
        assert_eq!(c.read_u32(REG_INT_LINE) & 0xffff, 0x010b);
        // Status: W1C bit clears, others read-only.
        c.set_status_bits(0x8000 | STATUS_CAP_LIST);
        c.write(REG_STATUS as u64, &0xffffu16.to_le_bytes());
        assert_eq!(c.status(), STATUS_CAP_LIST);
    }

    #[test]
    fn io_bar_sizing() {
        let mut c = cfg();
        c.add_io_bar(0, 16).unwrap();
        c.set_bar_address(0, 0xc000).unwrap();
        assert_eq!(c.read_u32(REG_BAR0), 0xc001);
        w32(&mut c, REG_BAR0, 0xffff_ffff);
        assert_eq!(c.read_u32(REG_BAR0), 0xffff_fff1);
        w32(&mut c, REG_BAR0, 0xc000);
        assert_eq!(c.bar_address(0), Some(0xc000));
        assert_eq!(c.read_u32(REG_BAR0), 0xc001);
    }

    #[test]
    fn mem32_bar_sizing() {
        let mut c = cfg();
        c.add_mem32_bar(1, 4096, false).unwrap();
        c.add_mem32_bar(2, 1 << 20, true).unwrap();
        c.set_bar_address(1, 0xc000_0000).unwrap();
        w32(&mut c, REG_BAR0 + 4, 0xffff_ffff);
        assert_eq!(c.read_u32(REG_BAR0 + 4), 0xffff_f000);
        w32(&mut c, REG_BAR0 + 8, 0xffff_ffff);
        assert_eq!(c.read_u32(REG_BAR0 + 8), 0xfff0_0008);
        assert_eq!(
            c.set_bar_address(1, 0xc000_0800),
            Err(ConfigError::AddressMisaligned {
                bar: 1,
                addr: 0xc000_0800
            })
        );
        // Unused BARs read 0 and are not writable.
        w32(&mut c, REG_BAR0 + 12, 0xffff_ffff);
        assert_eq!(c.read_u32(REG_BAR0 + 12), 0);
    }

    #[test]
    fn mem64_bar_sizing() {
        let mut c = cfg();
        c.add_mem64_bar(2, 0x4000, true).unwrap();
        assert_eq!(c.add_io_bar(3, 16), Err(ConfigError::BarInUse(3)));
        assert_eq!(
            c.add_mem64_bar(5, 16, false),
            Err(ConfigError::BadBarIndex(5))
        );
        c.set_bar_address(2, 0x1_2345_0000).unwrap();
        assert_eq!(c.read_u32(REG_BAR0 + 8), 0x2345_000c);
        assert_eq!(c.read_u32(REG_BAR0 + 12), 0x1);
        w32(&mut c, REG_BAR0 + 8, 0xffff_ffff);
        w32(&mut c, REG_BAR0 + 12, 0xffff_ffff);
        assert_eq!(c.read_u32(REG_BAR0 + 8), 0xffff_c00c);
        assert_eq!(c.read_u32(REG_BAR0 + 12), 0xffff_ffff);
        let mut big = cfg();
        big.add_mem64_bar(0, 1 << 33, false).unwrap();
        w32(&mut big, REG_BAR0, 0xffff_ffff);
        w32(&mut big, REG_BAR0 + 4, 0xffff_ffff);
        assert_eq!(big.read_u32(REG_BAR0), 0x4);
        assert_eq!(big.read_u32(REG_BAR0 + 4), 0xffff_fffe);
    }

    #[test]
    fn bad_bars() {
        let mut c = cfg();
        assert_eq!(c.add_io_bar(6, 16), Err(ConfigError::BadBarIndex(6)));
        assert_eq!(c.add_io_bar(0, 12), Err(ConfigError::BadBarSize(12)));
        assert_eq!(
            c.add_mem32_bar(0, 8, false),
            Err(ConfigError::BadBarSize(8))
        );
        c.add_io_bar(0, 4).unwrap();
        assert_eq!(c.add_io_bar(0, 4), Err(ConfigError::BarInUse(0)));
        assert_eq!(c.set_bar_address(4, 0), Err(ConfigError::NoSuchBar(4)));
    }

    #[test]
    fn byte_and_word_access_at_odd_offsets() {
        let mut c = cfg();
        let mut b = [0u8; 1];
        c.read(1, &mut b);
        assert_eq!(b, [0x12]);
        let mut w = [0u8; 2];
        c.read(3, &mut w);
        assert_eq!(w, [0xf1, 0x00]);
        c.add_io_bar(0, 256).unwrap();
        // A byte write into the middle of a BAR.
        c.write(0x11, &[0xab]);
        assert_eq!(c.read_u32(REG_BAR0), 0xab01);
        c.write(0x12, &[0x34, 0x12]);
        assert_eq!(c.read_u32(REG_BAR0), 0x1234_ab01);
        c.write(0x3d, &[0x77]);
        assert_eq!(c.read_u32(0x3c) >> 8 & 0xff, 0);
    }

    #[test]
    fn out_of_range_offsets() {
        let mut c = cfg();
        let mut b = [0u8; 4];
        c.read(0xfe, &mut b);
        assert_eq!(b, [0xff; 4]);
        c.read(u64::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
        c.read(0x100, &mut b[..1]);
        c.write(0xff, &[1, 2, 3, 4]);
        c.write(u64::MAX - 1, &[1, 2, 3, 4]);
        let mut last = [0u8; 1];
        c.read(0xff, &mut last);
        assert_eq!(last, [0]);
    }

    #[test]
    fn capability_list() {
        let mut c = cfg();
        assert_eq!(c.status() & STATUS_CAP_LIST, 0);
        let a = c
            .add_capability(0x09, &[6, 0xaa, 0xbb, 0xcc], &[0, 0xff])
            .unwrap();
        let b = c.add_capability(0x11, &[1, 2], &[]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48);
        assert_ne!(c.status() & STATUS_CAP_LIST, 0);
        let mut p = [0u8; 1];
        c.read(REG_CAP_PTR as u64, &mut p);
        assert_eq!(p[0], 0x40);
        c.read(0x41, &mut p);
        assert_eq!(p[0], 0x48);
        c.read(0x49, &mut p);
        assert_eq!(p[0], 0);
        c.write(0x43, &[0x55, 0x66]);
        let mut body = [0u8; 2];
        c.read(0x43, &mut body);
        assert_eq!(body, [0x55, 0xbb]);
        c.write(REG_CAP_PTR as u64, &[0]);
        c.read(REG_CAP_PTR as u64, &mut p);
        assert_eq!(p[0], 0x40);
    }
}
