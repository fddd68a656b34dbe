//! Kernel calls: the few things ring 3 needs ring 0 for. Ring 3 enters with `int3` (a DPL3 #BP
//! gate), call number in RAX, arguments in RDI/RSI, result in RAX (and, for a call with a
//! second result, RDI; other calls leave RDI as it was). `int n` and `syscall` don't
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
/// CPUID as the VMM defines it: argument 0 is `leaf | subleaf << 32`; the answer comes back as
/// EAX | EBX << 32 in RAX and ECX | EDX << 32 in RDI, in one call. Ring 0 is needed because on
/// kvm_pvm ring-3 code runs natively, so a ring-3 `cpuid` answers with the host CPU's leaves,
/// not the VMM's (the TSC frequency the harness publishes in 0x40000010 was never seen).
pub const CPUID: u64 = 4;

/// Ring-0 side, called from the #BP handler with interrupts off. Returns the new RAX and RDI.
pub fn dispatch(number: u64, arg0: u64, _arg1: u64) -> (u64, u64) {
    let rax = match number {
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
        CPUID => {
            let r = core::arch::x86_64::__cpuid_count(arg0 as u32, (arg0 >> 32) as u32);
            return (
                u64::from(r.eax) | u64::from(r.ebx) << 32,
                u64::from(r.ecx) | u64::from(r.edx) << 32,
            );
        }
        RING0_FAULT => {
            // SAFETY: deliberately raises #UD; the handler reports it and ends the run.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
            u64::MAX
        }
        _ => u64::MAX,
    };
    (rax, arg0)
}

/// CPUID `leaf`/`subleaf` as the VMM answers it (through ring 0, one call; see [`CPUID`]).
pub fn cpuid(leaf: u32, subleaf: u32) -> core::arch::x86_64::CpuidResult {
    let (ab, cd) = call2(CPUID, u64::from(leaf) | u64::from(subleaf) << 32, 0);
    core::arch::x86_64::CpuidResult {
        eax: ab as u32,
        ebx: (ab >> 32) as u32,
        ecx: cd as u32,
        edx: (cd >> 32) as u32,
    }
}

/// Ring-3 side.
#[inline(always)]
pub fn call(number: u64, arg0: u64, arg1: u64) -> u64 {
    call2(number, arg0, arg1).0
}

/// Ring-3 side, for a call with two results (RAX, RDI).
#[inline(always)]
pub fn call2(number: u64, arg0: u64, arg1: u64) -> (u64, u64) {
    let (rax, rdi): (u64, u64);
    // SAFETY: the #BP gate saves and restores every register except RAX and RDI, the results.
    unsafe {
        core::arch::asm!(
            "int3",
            inlateout("rax") number => rax,
            inlateout("rdi") arg0 => rdi,
            in("rsi") arg1
        )
    };
    (rax, rdi)
}
