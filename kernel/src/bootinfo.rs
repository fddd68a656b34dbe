//! What the platform tells the kernel at boot: `hvm_start_info`, its memory map and command line.

use crate::boot::pvh::{HvmMemmapEntry, HvmStartInfo, E820_RAM, HVM_START_MAGIC};
use spin::Once;

#[derive(Clone, Copy)]
pub struct BootInfo {
    pub memmap: &'static [HvmMemmapEntry],
    pub cmdline: &'static str,
}

static INFO: Once<BootInfo> = Once::new();

const MAX_CMDLINE: usize = 4096;
const MAX_MEMMAP: u32 = 128;

impl BootInfo {
    /// Read and check `hvm_start_info` at physical (= virtual) address `paddr`.
    pub fn parse(paddr: u64) -> Result<Self, &'static str> {
        if paddr == 0 || !paddr.is_multiple_of(8) {
            return Err("start_info pointer is null or misaligned");
        }
        // SAFETY: the PVH ABI puts a start_info at this identity-mapped address; checked below.
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
        // SAFETY: the memmap lies in RAM the VMM wrote; count bounded above.
        let memmap = unsafe {
            core::slice::from_raw_parts(
                si.memmap_paddr as *const HvmMemmapEntry,
                si.memmap_entries as usize,
            )
        };
        let cmdline = if si.cmdline_paddr == 0 {
            ""
        } else {
            // SAFETY: a NUL-terminated string the VMM wrote; bounded by MAX_CMDLINE.
            let bytes = unsafe {
                let p = si.cmdline_paddr as *const u8;
                let mut len = 0;
                while len < MAX_CMDLINE && *p.add(len) != 0 {
                    len += 1;
                }
                core::slice::from_raw_parts(p, len)
            };
            core::str::from_utf8(bytes).map_err(|_| "command line is not UTF-8")?
        };
        Ok(Self { memmap, cmdline })
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
