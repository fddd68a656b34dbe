//! What the platform tells the kernel at boot: `hvm_start_info`, its memory map and command line.

use crate::boot::pvh::{HvmMemmapEntry, HvmStartInfo, E820_RAM, HVM_START_MAGIC};
use spin::Once;

#[derive(Clone)]
pub struct BootInfo {
    pub memmap: &'static [HvmMemmapEntry],
    pub cmdline: &'static str,
    /// Where start_info, the memory map and the command line lie: the heap must not cover
    /// them, since `memmap` and `cmdline` keep pointing there.
    pub reserved: [core::ops::Range<u64>; 3],
}

static INFO: Once<BootInfo> = Once::new();

const MAX_CMDLINE: usize = 4096;
const MAX_MEMMAP: u32 = 128;

/// End of ordinary RAM in the boot page tables: 0..3 GiB is identity-mapped write-back, 3..4 GiB
/// is the uncached MMIO window, and nothing above 4 GiB is mapped. Boot structures must lie
/// below this, or reading them would fault (or read a device).
pub const RAM_MAPPED_END: u64 = 0xC000_0000;

/// `len` bytes at `addr`, aligned to `align`, inside mapped RAM and not at address 0.
pub fn check_region(
    addr: u64,
    len: u64,
    align: u64,
    what: &'static str,
) -> Result<(), &'static str> {
    let end = addr.checked_add(len).ok_or(what)?;
    if addr == 0 || !addr.is_multiple_of(align) || end > RAM_MAPPED_END {
        return Err(what);
    }
    Ok(())
}

impl BootInfo {
    /// Read and check `hvm_start_info` at physical (= virtual) address `paddr`. Every pointer in
    /// it is checked against mapped RAM before it is followed.
    pub fn parse(paddr: u64) -> Result<Self, &'static str> {
        let si_len = size_of::<HvmStartInfo>() as u64;
        check_region(
            paddr,
            si_len,
            8,
            "start_info pointer is null, misaligned or outside RAM",
        )?;
        // SAFETY: inside the identity-mapped RAM (checked), aligned, and every bit pattern is a
        // valid HvmStartInfo (plain integers).
        let si = unsafe { &*(paddr as *const HvmStartInfo) };
        if si.magic != HVM_START_MAGIC {
            return Err("start_info magic is wrong");
        }
        if si.version < 1 || si.memmap_paddr == 0 || si.memmap_entries == 0 {
            return Err("start_info has no memory map (version < 1)");
        }
        if si.memmap_entries > MAX_MEMMAP {
            return Err("memory map has too many entries");
        }
        let memmap_len = u64::from(si.memmap_entries) * size_of::<HvmMemmapEntry>() as u64;
        check_region(
            si.memmap_paddr,
            memmap_len,
            8,
            "memory map is misaligned or outside RAM",
        )?;
        // SAFETY: inside mapped RAM and aligned (checked), count bounded above; entries are
        // plain integers.
        let memmap = unsafe {
            core::slice::from_raw_parts(
                si.memmap_paddr as *const HvmMemmapEntry,
                si.memmap_entries as usize,
            )
        };
        if memmap.iter().any(|e| e.addr.checked_add(e.size).is_none()) {
            return Err("a memory map entry wraps around the address space");
        }
        let (cmdline, cmdline_len) = if si.cmdline_paddr == 0 {
            ("", 0)
        } else {
            check_region(si.cmdline_paddr, 1, 1, "command line is outside RAM")?;
            // The scan stops at the NUL, MAX_CMDLINE, or the end of mapped RAM.
            let limit = (RAM_MAPPED_END - si.cmdline_paddr).min(MAX_CMDLINE as u64) as usize;
            // SAFETY: every byte read lies in [cmdline_paddr, cmdline_paddr + limit), inside
            // mapped RAM (checked above).
            let bytes = unsafe {
                let p = si.cmdline_paddr as *const u8;
                let mut len = 0;
                while len < limit && *p.add(len) != 0 {
                    len += 1;
                }
                core::slice::from_raw_parts(p, len)
            };
            let s = core::str::from_utf8(bytes).map_err(|_| "command line is not UTF-8")?;
            (s, bytes.len() as u64 + 1)
        };
        Ok(Self {
            memmap,
            cmdline,
            reserved: [
                paddr..paddr + si_len,
                si.memmap_paddr..si.memmap_paddr + memmap_len,
                si.cmdline_paddr..si.cmdline_paddr + cmdline_len,
            ],
        })
    }

    /// Value of `key=value` on the command line.
    pub fn arg(&self, key: &str) -> Option<&'static str> {
        self.cmdline.split_ascii_whitespace().find_map(|w| {
            let (k, v) = w.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// A numeric `key=value` (decimal or 0x hex).
    pub fn arg_u64(&self, key: &str) -> Option<u64> {
        let v = self.arg(key)?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }

    pub fn ram_bytes(&self) -> u64 {
        self.memmap
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }
}

pub fn set(info: BootInfo) {
    INFO.call_once(|| info);
}

pub fn get() -> &'static BootInfo {
    INFO.get().expect("boot info is set before tests run")
}
