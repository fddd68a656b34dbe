//! IDT: 256 fixed-size entry stubs (assembly), in gates built with the `x86_64` crate; ring 0
//! only loads the table, ring 3 writes the gates (see [`fill`]). Vectors
//! 0..31 go to `trap::exception_entry` with a full register frame; vectors 32..255 only count
//! the interrupt and send the LAPIC EOI (a handful of emulated instructions), because interrupt
//! handlers acknowledge and record, and the completion work runs in ring 3.

use super::gdt;
use core::arch::global_asm;
use core::mem::size_of;
use core::sync::atomic::{AtomicU64, AtomicU8};
use x86_64::instructions::tables::lidt;
use x86_64::structures::gdt::SegmentSelector;
use x86_64::structures::idt::{Entry, HandlerFunc};
use x86_64::structures::DescriptorTablePointer;
use x86_64::{PrivilegeLevel, VirtAddr};

/// Interrupts seen per vector since boot. Ring 3 reads these to notice completions.
#[no_mangle]
pub static IRQ_COUNTS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// For level-triggered vectors, the IOAPIC pin the stub masks when the vector fires
/// (0xff: edge or MSI, nothing to mask). Set by `ioapic::route`.
#[no_mangle]
pub static IRQ_LEVEL_PIN: [AtomicU8; 256] = [const { AtomicU8::new(0xff) }; 256];
/// Sum over all vectors >= 32, for the race-free "wait for interrupt" kernel call.
#[no_mangle]
pub static IRQ_TOTAL: AtomicU64 = AtomicU64::new(0);

pub const SPURIOUS_VECTOR: u8 = 0xff;
const STUB_SIZE: u64 = 16;

// Exceptions that push an error code: 8, 10-14, 17, 21, 29, 30.
global_asm!(
    r#"
    .section .text
    .p2align 4
    .global idt_stubs
idt_stubs:
    .set i, 0
    .rept 256
    .p2align 4
    .if (i == 8) || (i >= 10 && i <= 14) || (i == 17) || (i == 21) || (i == 29) || (i == 30)
        pushq $i
        jmp exception_common
    .elseif i < 32
        pushq $0
        pushq $i
        jmp exception_common
    .else
        pushq $i
        jmp irq_common
    .endif
    .set i, i + 1
    .endr

irq_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    movq 32(%rsp), %rax                 /* vector */
    lock incq IRQ_COUNTS(,%rax,8)
    lock incq IRQ_TOTAL
    movzbl IRQ_LEVEL_PIN(%rax), %ecx
    cmpl $0xff, %ecx
    je 2f
    /* Level-triggered: mask the IOAPIC pin until ring 3 has serviced the device (it unmasks
       through Platform::ack_interrupt). Ring 3 may be between its IOREGSEL and IOWIN
       accesses, so IOREGSEL is put back as it was. */
    movl $0xfec00000, %edx
    movl (%rdx), %esi
    leal 0x10(,%rcx,2), %ecx
    movl %ecx, (%rdx)
    orl $0x10000, 0x10(%rdx)
    movl %esi, (%rdx)
2:  cmpq $0xff, %rax
    je 1f
    movl $0xfee000b0, %eax              /* LAPIC EOI (above 2 GiB: not a disp32) */
    movl $0, (%rax)
1:  popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $8, %rsp
    iretq

exception_common:
    pushq %r15
    pushq %r14
    pushq %r13
    pushq %r12
    pushq %r11
    pushq %r10
    pushq %r9
    pushq %r8
    pushq %rbp
    pushq %rdi
    pushq %rsi
    pushq %rdx
    pushq %rcx
    pushq %rbx
    pushq %rax
    movq %rsp, %rdi
    call exception_entry
    popq %rax
    popq %rbx
    popq %rcx
    popq %rdx
    popq %rsi
    popq %rdi
    popq %rbp
    popq %r8
    popq %r9
    popq %r10
    popq %r11
    popq %r12
    popq %r13
    popq %r14
    popq %r15
    addq $16, %rsp
    iretq
    "#,
    options(att_syntax)
);

extern "C" {
    static idt_stubs: u8;
}

/// All 256 gates as the crate's `Entry`, rather than its `InterruptDescriptorTable`, whose
/// reserved exception vectors (15, 22..27, 31) cannot be set: every vector gets a handler here.
#[repr(C, align(16))]
struct Idt([Entry<HandlerFunc>; 256]);

const _: () = assert!(size_of::<Idt>() == 256 * 16);

static mut IDT: Idt = Idt([const { Entry::missing() }; 256]);

/// Load the IDT, still empty: [`fill`] writes its gates from ring 3. Ring 0 only; called once
/// at boot.
pub fn load() {
    // SAFETY: the table is a static that lives forever. Until `fill` has run, any interrupt or
    // exception would find a not-present gate and triple-fault; nothing can raise one before
    // it runs (the PIC is masked, the LAPIC and IOAPIC pins are still off, and the code between
    // here and `fill` does not fault).
    unsafe {
        lidt(&DescriptorTablePointer {
            limit: (size_of::<Idt>() - 1) as u16,
            base: VirtAddr::from_ptr(&raw const IDT),
        });
    }
}

/// Mark every gate not present, from ring 3: the next interrupt or exception then
/// triple-faults (#NP, then #DF, then shutdown). Only for the self-test that proves the VMM
/// reports a triple fault.
pub fn clear_for_triple_fault() {
    // SAFETY: the run is meant to end at the next event; the gates are plain memory that only
    // the CPU reads, at delivery.
    unsafe {
        let idt = &raw mut IDT;
        core::ptr::write_volatile(idt, Idt([const { Entry::missing() }; 256]));
    }
}

/// Write all 256 gates of the loaded IDT. Ring 3, first thing after entering it: every ring-0
/// instruction is emulated on kvm_pvm, and filling the table there took about 7,000. Ring 3 can
/// write the table because all memory is user-mapped; the CPU reads it only when it delivers
/// an interrupt or exception.
pub fn fill() {
    let kernel_code = SegmentSelector::new(gdt::KERNEL_CS >> 3, PrivilegeLevel::Ring0);
    // SAFETY: called once, before anything can raise an interrupt or exception (see `load`),
    // so no gate is read while it is written; the stubs are 16-byte spaced code emitted above,
    // each a complete entry point; IST index 0 (the TSS's IST1) has a stack (gdt::init); the
    // gates take the kernel code selector explicitly, because in ring 3 `set_handler_addr`
    // would take the current (user) CS.
    unsafe {
        let base = VirtAddr::from_ptr(&raw const idt_stubs);
        let idt = &raw mut IDT;
        for (v, entry) in (*idt).0.iter_mut().enumerate() {
            let options = entry.set_handler_addr(base + v as u64 * STUB_SIZE);
            options.set_code_selector(kernel_code);
            // #BP is the kernel-call gate from ring 3 (`int3`), so DPL3; all others DPL0.
            if v == 3 {
                options.set_privilege_level(PrivilegeLevel::Ring3);
            }
            // Double fault, NMI and machine check run on IST1, so a broken stack still reports.
            if v == 2 || v == 8 || v == 18 {
                options.set_stack_index(0);
            }
        }
    }
}
