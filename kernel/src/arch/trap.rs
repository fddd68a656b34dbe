//! Exception entry (ring 0). `int3` from ring 3 is the kernel-call gate; any other exception, from
//! either ring, is reported on the serial port and ends the run with the "crashed" exit code.

use super::kcall;
use crate::{exit, serial};
use x86_64::registers::control::Cr2;

/// Registers saved by `exception_common`, then what the CPU pushed.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved 15",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved 31",
];

#[no_mangle]
extern "C" fn exception_entry(frame: &mut TrapFrame) {
    let ring = frame.cs & 3;
    if frame.vector == 3 && ring == 3 {
        (frame.rax, frame.rdi) = kcall::dispatch(frame.rax, frame.rdi, frame.rsi);
        return;
    }
    // Raw: a fault on a non-canonical address is worth reporting as it is.
    let cr2 = Cr2::read_raw();
    let mut w = serial::EmergencyWriter;
    use core::fmt::Write;
    let _ = write!(
        w,
        "\n# EXCEPTION vector {} ({}) in ring {}: rip={:#x} error={:#x} cr2={:#x} rsp={:#x} rflags={:#x}\n",
        frame.vector,
        NAMES[(frame.vector & 31) as usize],
        ring,
        frame.rip,
        frame.error_code,
        cr2,
        frame.rsp,
        frame.rflags
    );
    crate::ktap::report_crash(&mut w);
    exit::debug_exit(exit::ExitCode::Crashed);
}
