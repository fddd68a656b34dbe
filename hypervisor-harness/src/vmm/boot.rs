//! PVH boot: load the ELF, write hvm_start_info and the memory map (through linux-loader's PVH
//! configurator), the command line and a GDT.

use super::memory::GuestMem;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use std::fs::File;
use std::path::Path;
use vm_memory::{Bytes, GuestAddress};

pub const START_INFO_ADDR: u64 = 0x6000;
pub const MEMMAP_ADDR: u64 = 0x7000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4095;
pub const GDT_ADDR: u64 = 0x500;
pub const HIMEM_START: u64 = 0x10_0000;
pub const EBDA_START: u64 = 0x9_fc00;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

pub const SEL_CODE: u16 = 0x08;
pub const SEL_DATA: u16 = 0x10;
pub const SEL_TSS: u16 = 0x18;

/// Flat GDT: null, 32-bit code (type 0xb), 32-bit data (type 3), 32-bit busy TSS (type 0xb).
pub const GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];

#[derive(Debug)]
pub enum BootError {
    /// The image itself is unusable (exit code 65).
    Image(String),
    /// Anything else (exit code 70).
    Other(String),
}

/// Load the kernel; returns the PVH entry point.
pub fn load_kernel(mem: &GuestMem, path: &Path) -> Result<u64, BootError> {
    let mut f = File::open(path)
        .map_err(|e| BootError::Image(format!("cannot open kernel {}: {e}", path.display())))?;
    let mut magic = [0u8; 4];
    use std::io::Read;
    if f.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
        return Err(BootError::Image(format!(
            "{} is not an ELF file",
            path.display()
        )));
    }
    let res = Elf::load(mem, None, &mut f, None)
        .map_err(|e| BootError::Image(format!("cannot load kernel {}: {e}", path.display())))?;
    match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(entry.0),
        _ => Err(BootError::Image(format!(
            "{}: ELF has no PVH note",
            path.display()
        ))),
    }
}

/// The memory map handed to the guest: low RAM, the EBDA and legacy hole (reserved), and RAM
/// from 1 MiB to the end.
pub fn memory_map(mem_size: u64) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr, size, type_| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        entry(HIMEM_START, mem_size - HIMEM_START, E820_RAM),
    ]
}

/// hvm_start_info (version 1) pointing at the command line and a memory map of `memmap_entries`
/// entries; no modules, no RSDP.
pub fn start_info(cmdline_paddr: u64, memmap_paddr: u64, memmap_entries: u32) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr,
        memmap_paddr,
        memmap_entries,
        ..Default::default()
    }
}

pub fn check_cmdline(cmdline: &str) -> Result<(), String> {
    if cmdline.len() > CMDLINE_MAX {
        return Err(format!(
            "--cmdline is {} bytes, at most {CMDLINE_MAX}",
            cmdline.len()
        ));
    }
    if cmdline.as_bytes().contains(&0) {
        return Err("--cmdline contains a NUL byte".into());
    }
    Ok(())
}

/// Write start_info, memmap, cmdline and GDT into guest memory.
pub fn write_boot_info(mem: &GuestMem, mem_size: u64, cmdline: &str) -> Result<(), BootError> {
    check_cmdline(cmdline).map_err(BootError::Other)?;
    let map = memory_map(mem_size);
    let info = start_info(CMDLINE_ADDR, MEMMAP_ADDR, map.len() as u32);
    let mut params = BootParams::new(&info, GuestAddress(START_INFO_ADDR));
    params.set_sections(&map, GuestAddress(MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| BootError::Other(format!("writing the PVH start info: {e}")))?;
    let w = |data: &[u8], at: u64| {
        mem.write_slice(data, GuestAddress(at))
            .map_err(|e| BootError::Other(format!("writing boot data at {at:#x}: {e}")))
    };
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    w(&c, CMDLINE_ADDR)?;
    let gdt: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    w(&gdt, GDT_ADDR)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory;
    use vmm_sys_util::tempdir::TempDir;

    fn rd<const N: usize>(m: &GuestMem, at: u64) -> [u8; N] {
        let mut b = [0u8; N];
        m.read_slice(&mut b, GuestAddress(at)).unwrap();
        b
    }

    #[test]
    fn boot_info_layout() {
        let m = memory::create(64 << 20).unwrap();
        write_boot_info(&m, 64 << 20, "tests=all").unwrap();
        let si: [u8; 56] = rd(&m, START_INFO_ADDR);
        assert_eq!(
            u32::from_le_bytes(si[0..4].try_into().unwrap()),
            0x336e_c578
        );
        assert_eq!(u32::from_le_bytes(si[4..8].try_into().unwrap()), 1);
        assert_eq!(&si[8..24], &[0u8; 16]);
        assert_eq!(u64::from_le_bytes(si[24..32].try_into().unwrap()), 0x20000);
        assert_eq!(u64::from_le_bytes(si[32..40].try_into().unwrap()), 0);
        assert_eq!(u64::from_le_bytes(si[40..48].try_into().unwrap()), 0x7000);
        assert_eq!(u32::from_le_bytes(si[48..52].try_into().unwrap()), 3);

        let mm: [u8; 72] = rd(&m, MEMMAP_ADDR);
        let e = |i: usize| {
            let b = &mm[i * 24..];
            (
                u64::from_le_bytes(b[0..8].try_into().unwrap()),
                u64::from_le_bytes(b[8..16].try_into().unwrap()),
                u32::from_le_bytes(b[16..20].try_into().unwrap()),
                u32::from_le_bytes(b[20..24].try_into().unwrap()),
            )
        };
        assert_eq!(e(0), (0, 0x9fc00, 1, 0));
        assert_eq!(e(1), (0x9fc00, 0x60400, 2, 0));
        assert_eq!(e(2), (0x100000, (64 << 20) - 0x100000, 1, 0));

        let cl: [u8; 10] = rd(&m, CMDLINE_ADDR);
        assert_eq!(&cl, b"tests=all\0");
        let gdt: [u8; 32] = rd(&m, GDT_ADDR);
        assert_eq!(&gdt[8..16], &0x00cf_9b00_0000_ffffu64.to_le_bytes());
    }

    #[test]
    fn cmdline_limits() {
        let m = memory::create(32 << 20).unwrap();
        assert!(write_boot_info(&m, 32 << 20, &"x".repeat(4095)).is_ok());
        assert!(matches!(
            write_boot_info(&m, 32 << 20, &"x".repeat(4096)),
            Err(BootError::Other(_))
        ));
        assert!(check_cmdline("a\0b").is_err());
    }

    #[test]
    fn kernel_errors() {
        let m = memory::create(32 << 20).unwrap();
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("hh-boot-")).unwrap();
        let text = dir.as_path().join("text");
        std::fs::write(&text, "hello").unwrap();
        for p in [dir.as_path().join("missing"), text] {
            assert!(matches!(load_kernel(&m, &p), Err(BootError::Image(_))));
        }
    }
}
