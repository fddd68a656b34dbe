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

/// No gate left, then an exception: the CPU shuts down (KVM_EXIT_SHUTDOWN), which the VMM
/// must report with the vCPU's state.
pub fn triple_fault() -> Outcome {
    crate::arch::idt::clear_for_triple_fault();
    // SAFETY: deliberately raising #UD with no gate to take it.
    unsafe { core::arch::asm!("ud2") };
    fail!("ud2 with an empty IDT returned")
}

/// Jump to guest-physical 2 GiB, identity-mapped but neither RAM (with --mem below 2G) nor a
/// device: KVM cannot fetch an instruction from there (KVM_EXIT_INTERNAL_ERROR, emulation
/// failure), which the VMM must report with the vCPU's state.
pub fn emulation_failure() -> Outcome {
    // SAFETY: deliberately jumping to an address that holds no code; it does not return.
    let target: extern "C" fn() = unsafe { core::mem::transmute(0x8000_0000usize) };
    target();
    fail!("the jump to 2 GiB returned")
}

/// Spin in ring 3 without a single exit to the VMM (interrupts still come and go): the VMM's
/// progress watchdog (--stall-timeout) must end it with a report.
pub fn spin() -> Outcome {
    loop {
        core::hint::spin_loop();
    }
}

pub fn panic() -> Outcome {
    let v: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
    let i = core::hint::black_box(3);
    // Out-of-bounds index: a panic in ring 3.
    fail!("indexing past the end gave {}", v[i])
}
