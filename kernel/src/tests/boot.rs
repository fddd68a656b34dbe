//! What boot handed over: start_info, the ring we run in, the heap.

use crate::boot::pvh::E820_RAM;
use crate::ktap::Outcome;
use crate::{bootinfo, check, mem, println, try_or_fail};
use alloc::boxed::Box;
use alloc::vec::Vec;

pub fn boot_info() -> Outcome {
    let info = bootinfo::get();
    for e in info.memmap {
        println!(
            "# memmap {:#012x}-{:#012x} type {}",
            e.addr,
            e.addr + e.size,
            e.kind
        );
    }
    let ram = info.ram_bytes();
    check!(
        ram >= 16 << 20,
        "only {} bytes of RAM in the memory map",
        ram
    );
    let kernel = 0x10_0000;
    check!(
        info.memmap
            .iter()
            .any(|e| e.kind == E820_RAM && e.addr <= kernel && e.addr + e.size > kernel),
        "the kernel's load address {:#x} is not in RAM per the memory map",
        kernel
    );
    check!(
        info.arg("tests").is_some(),
        "command line {:?} has no tests=",
        info.cmdline
    );
    Outcome::Pass
}

pub fn ring3() -> Outcome {
    use x86_64::instructions::segmentation::{Segment, CS};
    let cpl = CS::get_reg().rpl() as u8;
    check!(cpl == 3, "tests run at CPL {}, expected 3", cpl);
    Outcome::Pass
}

/// The identity map uses 1 GiB pages exactly when the VMM's CPUID offers them (pdpe1gb).
pub fn identity_map() -> Outcome {
    let pdpe1gb = crate::arch::kcall::cpuid(0x8000_0001, 0).edx & (1 << 26) != 0;
    let leaf = crate::boot::pvh::identity_map_leaf_size();
    println!("# pdpe1gb {}, identity map leaves {:?}", pdpe1gb, leaf);
    let expected = if pdpe1gb { 1 << 30 } else { 2 << 20 };
    check!(
        leaf == Some(expected),
        "identity map leaf size {:?}, expected {:#x}",
        leaf,
        expected
    );
    Outcome::Pass
}

pub fn heap() -> Outcome {
    let before = mem::heap::used();
    {
        let v: Vec<u64> = (0..100_000u64).collect();
        check!(
            v.iter().sum::<u64>() == 100_000 * 99_999 / 2,
            "vector contents wrong"
        );
        let b = Box::new([7u8; 4096]);
        check!(b.iter().all(|&x| x == 7), "box contents wrong");
        check!(
            mem::heap::used() >= before + 800_000,
            "allocations not accounted"
        );
    }
    check!(
        mem::heap::used() == before,
        "heap leaked: {} -> {}",
        before,
        mem::heap::used()
    );
    Outcome::Pass
}

/// The boot-information checks refuse what would fault or mislead: start_info, memory map or
/// command line outside mapped RAM or misaligned, memory map entries that wrap; and the heap
/// is placed clear of the boot structures, inside one RAM range, or not at all.
pub fn boot_info_checks() -> Outcome {
    use crate::boot::pvh::{HvmMemmapEntry, HvmStartInfo, HVM_START_MAGIC};
    use crate::bootinfo::{BootInfo, RAM_MAPPED_END};
    use mem::heap::place;

    let ram = |addr, size| HvmMemmapEntry {
        addr,
        size,
        kind: E820_RAM,
        reserved: 0,
    };
    let memmap = Box::new([ram(0, 0xA_0000), ram(0x10_0000, 0x1000_0000)]);
    let cmdline = Box::new(*b"tests=x\0");
    let good = HvmStartInfo {
        magic: HVM_START_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: 0,
        modlist_paddr: 0,
        cmdline_paddr: cmdline.as_ptr() as u64,
        rsdp_paddr: 0,
        memmap_paddr: memmap.as_ptr() as u64,
        memmap_entries: 2,
        reserved: 0,
    };
    let parse = |si: HvmStartInfo| BootInfo::parse(&*Box::new(si) as *const _ as u64);

    let info = try_or_fail!(parse(good), "a well-formed start_info");
    check!(
        info.cmdline == "tests=x" && info.memmap.len() == 2,
        "parsed {:?}",
        info.cmdline
    );
    let m = memmap.as_ptr() as u64;
    check!(
        info.reserved[1] == (m..m + 48),
        "memory map reserved as {:?}",
        info.reserved[1]
    );
    let cases: [(&str, Result<BootInfo, &str>); 6] = [
        ("start_info above 4 GiB", BootInfo::parse(0x1_0000_0000)),
        (
            "start_info across the end of RAM",
            BootInfo::parse(RAM_MAPPED_END - 8),
        ),
        (
            "memory map outside RAM",
            parse(HvmStartInfo {
                memmap_paddr: 0xdead_0000_0000,
                ..good
            }),
        ),
        (
            "misaligned memory map",
            parse(HvmStartInfo {
                memmap_paddr: m + 4,
                ..good
            }),
        ),
        (
            "command line above 4 GiB",
            parse(HvmStartInfo {
                cmdline_paddr: 0x1_0000_0000,
                ..good
            }),
        ),
        ("a wrapping memory map entry", {
            let wrapping = Box::new([ram(0x10_0000, u64::MAX)]);
            parse(HvmStartInfo {
                memmap_paddr: wrapping.as_ptr() as u64,
                memmap_entries: 1,
                ..good
            })
        }),
    ];
    for (what, r) in cases {
        check!(r.is_err(), "{} was accepted", what);
    }

    // Heap placement.
    let mib = 1 << 20;
    let map = [ram(0, 0xA_0000), ram(mib, 63 * mib)];
    let at = place(&map, 3 * mib, &[], 32 * mib);
    check!(at == Ok(4 * mib), "heap at {:x?}, expected 4 MiB", at);
    // A boot structure where the heap would go pushes it past.
    let structure = 4 * mib + 16..4 * mib + 64;
    let at = place(&map, 3 * mib, core::slice::from_ref(&structure), 32 * mib);
    check!(at == Ok(6 * mib), "heap at {:x?} over a boot structure", at);
    // Too little RAM, or only an entry that wraps: no heap rather than a wrong one.
    check!(
        place(&map, 3 * mib, &[], 62 * mib).is_err(),
        "a heap larger than RAM was placed"
    );
    check!(
        place(&[ram(mib, u64::MAX)], 3 * mib, &[], 32 * mib).is_err(),
        "a heap was placed in a wrapping entry"
    );
    // A small guest (32 MiB of RAM) gets a smaller heap rather than none.
    let small = [ram(0, 0xA_0000), ram(mib, 31 * mib)];
    let got = mem::heap::place_largest(&small, 3 * mib, &[]);
    check!(
        got == Ok((4 * mib, 16 * mib)),
        "small guest: heap {:x?}",
        got
    );
    check!(
        mem::heap::place_largest(&[ram(mib, 4 * mib)], 3 * mib, &[]).is_err(),
        "a heap below the minimum was placed"
    );
    // A hole between two RAM ranges: the heap goes to the second.
    let holed = [ram(mib, 8 * mib), ram(64 * mib, 64 * mib)];
    let at = place(&holed, 3 * mib, &[], 32 * mib);
    check!(at == Ok(64 * mib), "heap at {:x?} across a hole", at);
    Outcome::Pass
}
