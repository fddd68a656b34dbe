//! PVH boot ABI: an ELF note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY) names `pvh_start32`, which the
//! VMM (our harness, or QEMU's PVH option ROM) enters in 32-bit protected mode with paging off and
//! EBX = physical address of `hvm_start_info`.
//!
//! The stub identity-maps the first 4 GiB, all user-accessible (ring 3 runs the workloads and
//! touches RAM, DMA buffers and device MMIO directly; 3..4 GiB is uncached), turns on long mode
//! and calls `kernel::ring0_entry(start_info)`. Every instruction here runs in ring 0, which
//! kvm_pvm emulates one by one, so it is kept short: the page tables are assembled into .data
//! (one set with 1 GiB pages, one with 2 MiB pages for CPUs without them) and the stub only picks
//! one by CPUID, where building 2048 entries in a loop took about 8,000 emulated instructions.

use core::arch::global_asm;

/// Physical address of `hvm_start_info` (and its layout), from the Xen PVH ABI.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// One entry of the PVH memory map (E820 types).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HvmMemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

pub const E820_RAM: u32 = 1;

extern "C" {
    static boot_pdpt_1g: u64;
    static boot_pd: u64;
}

/// The leaf size of the identity map the stub chose (1 GiB or 2 MiB), from the accessed bit the
/// CPU sets in the first leaf of whichever tables it walks (0..2 MiB holds the kernel, so that
/// leaf is always used); `None` if neither shows it.
pub fn identity_map_leaf_size() -> Option<u64> {
    const ACCESSED: u64 = 1 << 5;
    // SAFETY: 8-byte aligned entries of the page tables assembled below, which live forever;
    // only read, volatile because the CPU writes them behind the compiler's back.
    let (gib, mib2) = unsafe {
        (
            (&raw const boot_pdpt_1g).read_volatile(),
            (&raw const boot_pd).read_volatile(),
        )
    };
    match (gib & ACCESSED != 0, mib2 & ACCESSED != 0) {
        (true, false) => Some(1 << 30),
        (false, true) => Some(2 << 20),
        _ => None,
    }
}

global_asm!(
    r#"
    .section .note.Xen, "a"
    .p2align 2
    .long 4                 /* namesz */
    .long 8                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .p2align 2
    .quad pvh_start32
    .p2align 2

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %edi                     /* start_info, survives to the Rust entry */
    movl $boot_stack_top, %esp

    /* The page tables are data, built by the assembler: only the choice between them runs.
       1 GiB pages where CPUID 0x80000001 EDX bit 26 (pdpe1gb) offers them. Ring 0 sees the
       VMM's CPUID here (on kvm_pvm a ring-3 cpuid would answer with the host's). */
    movl $0x80000001, %eax
    cpuid
    movl $boot_pml4_2m, %esi
    btl $26, %edx
    jnc 1f
    movl $boot_pml4_1g, %esi
1:
    movl %cr4, %eax
    orl $0x20, %eax                     /* PAE */
    movl %eax, %cr4
    movl %esi, %cr3
    movl $0xc0000080, %ecx              /* EFER.LME */
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010023, %eax               /* PG | WP | NE | MP | PE */
    movl %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $pvh_start64

    .code64
pvh_start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $boot_stack_top, %rsp
    movl %edi, %edi
    call ring0_entry
4:  cli
    hlt
    jmp 4b

    .section .rodata
    .p2align 3
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff            /* 0x08: 64-bit code, DPL0 */
    .quad 0x00cf92000000ffff            /* 0x10: data, DPL0 */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    /* Identity map of 0..4 GiB: present, writable, user (0x07), PS (0x80) in the leaves; the
       3..4 GiB leaves also PCD|PWT (0x18): device MMIO there must not be cached. In .data, not
       .rodata: the CPU sets the accessed and dirty bits. */
    .section .data
    .global boot_pdpt_1g, boot_pd
    .p2align 12
boot_pml4_1g:
    .quad boot_pdpt_1g + 0x07
    .p2align 12
boot_pdpt_1g:
    .quad 0x00000087, 0x40000087, 0x80000087, 0xc000009f
    .p2align 12
boot_pml4_2m:
    .quad boot_pdpt_2m + 0x07
    .p2align 12
boot_pdpt_2m:
    .quad boot_pd + 0x07, boot_pd + 0x1007, boot_pd + 0x2007, boot_pd + 0x3007
    .p2align 12
boot_pd:
    .set leaf, 0
    .rept 2048
    .if leaf < 0xc0000000
    .quad leaf + 0x87
    .else
    .quad leaf + 0x9f
    .endif
    .set leaf, leaf + 0x200000
    .endr

    .section .bss
    .p2align 4
boot_stack: .skip 64 * 1024
boot_stack_top:
    "#,
    options(att_syntax)
);
