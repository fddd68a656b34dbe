//! GDT and TSS. The TSS carries RSP0 (the stack for traps out of ring 3), IST1 (double fault, NMI,
//! machine check) and an I/O permission bitmap that opens every port to ring 3: the workloads in
//! ring 3 are the drivers, and IOPL=3 is not honoured by kvm_pvm.

use core::mem::size_of;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

const IOPB_BYTES: usize = 65536 / 8;

/// The 64-bit TSS followed by its I/O bitmap and the required all-ones terminator byte.
#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iopb_offset: u16,
    /// Zero bits allow the port; .bss is zero, so every port starts open.
    iopb: [u8; IOPB_BYTES],
    iopb_end: u8,
}

#[repr(C, align(4096))]
struct Stack<const N: usize>([u8; N]);

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iopb_offset: 0,
    iopb: [0; IOPB_BYTES],
    iopb_end: 0,
};
static mut TRAP_STACK: Stack<{ 64 * 1024 }> = Stack([0; 64 * 1024]);
static mut IST1_STACK: Stack<{ 16 * 1024 }> = Stack([0; 16 * 1024]);

static mut GDT: [u64; 7] = [
    0,
    0x00af_9a00_0000_ffff, // 0x08 kernel code, 64-bit
    0x00cf_9200_0000_ffff, // 0x10 kernel data
    0x00cf_f200_0000_ffff, // 0x18 user data (DPL3)
    0x00af_fa00_0000_ffff, // 0x20 user code, 64-bit (DPL3)
    0,                     // 0x28 TSS, low half
    0,                     // 0x30 TSS, high half
];

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Load the final GDT and the TSS. Ring 0 only; called once at boot.
pub fn init() {
    // SAFETY: single-threaded boot code in ring 0; nothing else uses these statics yet.
    unsafe {
        let tss = &raw mut TSS;
        (*tss).rsp[0] = (&raw const TRAP_STACK) as u64 + size_of::<Stack<{ 64 * 1024 }>>() as u64;
        (*tss).ist[0] = (&raw const IST1_STACK) as u64 + size_of::<Stack<{ 16 * 1024 }>>() as u64;
        (*tss).iopb_offset = (size_of::<Tss>() - IOPB_BYTES - 1) as u16;
        (*tss).iopb_end = 0xff;

        let base = tss as u64;
        let limit = (size_of::<Tss>() - 1) as u64;
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, 64-bit available TSS
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let gdt = &raw mut GDT;
        (*gdt)[5] = low;
        (*gdt)[6] = base >> 32;

        let ptr = DescriptorPointer {
            limit: (size_of::<[u64; 7]>() - 1) as u16,
            base: gdt as u64,
        };
        core::arch::asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            cs = in(reg) KERNEL_CS as u64,
            ds = in(reg) KERNEL_DS as u64,
            tss = in(reg) TSS_SEL as u64,
            tmp = out(reg) _,
        );
    }
}
