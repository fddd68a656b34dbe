//! Kernel calls: the few things ring 3 needs ring 0 for. Ring 3 enters with `int3` (a DPL3 #BP
//! gate), call number in RAX, arguments in RDI/RSI, result in RAX. `int n` and `syscall` don't
//! work from ring 3 on kvm_pvm; `int3` does, on it and on hardware alike.

use super::idt::IRQ_TOTAL;
use core::sync::atomic::Ordering;
use x86_64::instructions::interrupts;

/// Sleep in `hlt` until an interrupt arrives, unless one arrived after the caller last looked
/// (argument: the `IRQ_TOTAL` the caller saw). Returns the new total.
pub const WAIT_FOR_INTERRUPT: u64 = 0;
/// End the run: argument is the isa-debug-exit code.
pub const EXIT: u64 = 1;
/// Run an empty loop of N iterations in ring 0; returns the TSC cycles it took.
pub const RING0_LOOP: u64 = 2;
/// Execute `ud2` in ring 0: proves that a ring-0 exception is reported (self-test only).
pub const RING0_FAULT: u64 = 3;

/// Ring-0 side, called from the #BP handler with interrupts off.
pub fn dispatch(number: u64, arg0: u64, _arg1: u64) -> u64 {
    match number {
        WAIT_FOR_INTERRUPT => {
            if IRQ_TOTAL.load(Ordering::Acquire) == arg0 {
                // `sti; hlt` is atomic with respect to interrupts (the STI shadow), so an
                // interrupt cannot slip in between the check above and the halt. The rest of
                // the trap runs with interrupts off again.
                interrupts::enable_and_hlt();
                interrupts::disable();
            }
            IRQ_TOTAL.load(Ordering::Acquire)
        }
        EXIT => crate::exit::debug_exit_raw(arg0 as u32),
        RING0_LOOP => {
            let start = crate::time::rdtsc();
            crate::time::spin_loop(arg0);
            crate::time::rdtsc() - start
        }
        RING0_FAULT => {
            // SAFETY: deliberately raises #UD; the handler reports it and ends the run.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
            u64::MAX
        }
        _ => u64::MAX,
    }
}

/// Ring-3 side.
#[inline(always)]
pub fn call(number: u64, arg0: u64, arg1: u64) -> u64 {
    let ret: u64;
    // SAFETY: the #BP gate saves and restores every register except RAX, the result.
    unsafe {
        core::arch::asm!("int3", inlateout("rax") number => ret, in("rdi") arg0, in("rsi") arg1)
    };
    ret
}
