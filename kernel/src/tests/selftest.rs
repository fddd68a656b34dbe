//! Tests that must not pass: they prove a failure, a hang and a crash reach the harness.

use crate::arch::kcall;
use crate::fail;
use crate::ktap::Outcome;
use crate::platform::KernelPlatform;
use drivers::platform::Platform;

pub fn fail() -> Outcome {
    fail!("selftest_fail fails on purpose")
}

pub fn hang() -> Outcome {
    // Sleep forever: the harness's timeout must end this.
    loop {
        KernelPlatform.wait_for_interrupt(KernelPlatform.interrupt_epoch());
    }
}

pub fn fault() -> Outcome {
    // 256 GiB is outside the boot identity map: a page fault from ring 3.
    // SAFETY: deliberately faulting; the #PF handler reports and ends the run.
    let v = unsafe { core::ptr::read_volatile(0x40_0000_0000 as *const u64) };
    fail!("read from an unmapped address returned {:#x}", v)
}

pub fn ring0_fault() -> Outcome {
    kcall::call(kcall::RING0_FAULT, 0, 0);
    fail!("the ring-0 fault returned")
}

pub fn panic() -> Outcome {
    let v: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
    let i = core::hint::black_box(3);
    // Out-of-bounds index: a panic in ring 3.
    fail!("indexing past the end gave {}", v[i])
}
