//! PVH boot ABI: an ELF note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY) names `pvh_start32`, which the
//! VMM (our harness, or QEMU's PVH option ROM) enters in 32-bit protected mode with paging off and
//! EBX = physical address of `hvm_start_info`.
//!
//! The stub identity-maps the first 4 GiB with 2 MiB pages, all user-accessible (ring 3 runs the
//! workloads and touches RAM, DMA buffers and device MMIO directly; 3..4 GiB is uncached), turns
//! on long mode and calls `kernel::ring0_entry(start_info)`. Every instruction here runs in ring 0,
//! which kvm_pvm emulates one by one, so it is kept short. Page tables live in .bss: fresh guest
//! RAM is zero, so nothing is cleared.

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

    /* PML4[0] -> PDPT; PDPT[0..4] -> PD0..PD3 */
    movl $boot_pdpt + 7, boot_pml4
    movl $boot_pd + 7, %eax
    xorl %ecx, %ecx
1:  movl %eax, boot_pdpt(,%ecx,8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    /* 2048 x 2 MiB: present, writable, user, PS; 3..4 GiB also PCD|PWT (device MMIO) */
    movl $0x87, %eax
    xorl %ecx, %ecx
2:  movl %eax, boot_pd(,%ecx,8)
    addl $0x200000, %eax
    incl %ecx
    cmpl $1536, %ecx
    jb 2b
    orl $0x18, %eax
3:  movl %eax, boot_pd(,%ecx,8)
    addl $0x200000, %eax
    incl %ecx
    cmpl $2048, %ecx
    jb 3b

    movl %cr4, %eax
    orl $0x20, %eax                     /* PAE */
    movl %eax, %cr4
    movl $boot_pml4, %eax
    movl %eax, %cr3
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

    .section .bss
    .p2align 12
boot_pml4: .skip 4096
boot_pdpt: .skip 4096
boot_pd:   .skip 4 * 4096
    .p2align 4
boot_stack: .skip 64 * 1024
boot_stack_top:
    "#,
    options(att_syntax)
);
