//! What boot handed over: start_info, the ring we run in, the heap.

use crate::boot::pvh::E820_RAM;
use crate::ktap::Outcome;
use crate::{bootinfo, check, mem, println};
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
    let cs: u16;
    // SAFETY: reading CS has no side effects.
    unsafe { core::arch::asm!("mov {:x}, cs", out(reg) cs) };
    check!(cs & 3 == 3, "tests run at CPL {}, expected 3", cs & 3);
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
