//! GDT and TSS, through the `x86_64` crate. The TSS carries RSP0 (the stack for traps out of
//! ring 3), IST1 (double fault, NMI, machine check) and an I/O permission bitmap that opens every
//! port to ring 3: the workloads in ring 3 are the drivers, and IOPL=3 is not honoured by kvm_pvm.

use core::mem::size_of;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::{PrivilegeLevel, VirtAddr};

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

/// One bit per port; zero allows it.
const IOPB_BYTES: usize = 65536 / 8;

/// The TSS followed by its I/O bitmap and the all-ones byte the CPU requires after it (an
/// access may read one byte past the last port's).
#[repr(C)]
struct TssWithIoBitmap {
    tss: TaskStateSegment,
    iopb: [u8; IOPB_BYTES + 1],
}

/// Every port open, then the terminator. Built at compile time: nothing to store in ring 0.
const fn open_bitmap() -> [u8; IOPB_BYTES + 1] {
    let mut b = [0; IOPB_BYTES + 1];
    b[IOPB_BYTES] = 0xff;
    b
}

#[repr(C, align(4096))]
struct Stack<const N: usize>([u8; N]);

// `TaskStateSegment::new` puts the bitmap right after the TSS (`iomap_base` = its size), which
// is where `TssWithIoBitmap` has it.
static mut TSS: TssWithIoBitmap = TssWithIoBitmap {
    tss: TaskStateSegment::new(),
    iopb: open_bitmap(),
};
static mut TRAP_STACK: Stack<{ 64 * 1024 }> = Stack([0; 64 * 1024]);
static mut IST1_STACK: Stack<{ 16 * 1024 }> = Stack([0; 16 * 1024]);

/// The code and data segments at the selectors above, checked at compile time; the TSS
/// descriptor (0x28, two entries) needs the TSS's address and is appended at boot.
static mut GDT: GlobalDescriptorTable = {
    let mut gdt = GlobalDescriptorTable::new();
    assert!(gdt.append(Descriptor::kernel_code_segment()).0 == KERNEL_CS);
    assert!(gdt.append(Descriptor::kernel_data_segment()).0 == KERNEL_DS);
    assert!(gdt.append(Descriptor::user_data_segment()).0 == USER_DS);
    assert!(gdt.append(Descriptor::user_code_segment()).0 == USER_CS);
    assert!(gdt.limit() + 1 == TSS_SEL);
    gdt
};

const fn selector(raw: u16) -> SegmentSelector {
    SegmentSelector::new(raw >> 3, PrivilegeLevel::from_u16(raw & 3))
}

fn stack_top<T>(stack: *const T) -> VirtAddr {
    VirtAddr::from_ptr(stack) + size_of::<T>() as u64
}

/// Load the final GDT and the TSS. Ring 0 only; called once at boot.
pub fn init() {
    // SAFETY: single-threaded boot code in ring 0; nothing else uses these statics yet, and
    // neither is changed after it is loaded (hence the `'static` borrows the crate asks for).
    unsafe {
        let tss = &raw mut TSS;
        (*tss).tss.privilege_stack_table[0] = stack_top(&raw const TRAP_STACK);
        (*tss).tss.interrupt_stack_table[0] = stack_top(&raw const IST1_STACK);
        let tss: &'static TssWithIoBitmap = &*tss;
        let descriptor = Descriptor::tss_segment_with_iomap(&tss.tss, &tss.iopb)
            .expect("the I/O bitmap follows the TSS");

        let gdt = &raw mut GDT;
        // At TSS_SEL, where the segments end (checked above).
        (*gdt).append(descriptor);
        let gdt: &'static GlobalDescriptorTable = &*gdt;
        gdt.load();

        CS::set_reg(selector(KERNEL_CS));
        let data = selector(KERNEL_DS);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(selector(TSS_SEL));
    }
}

/// The user data selector, for DS and ES before entering ring 3. Ring 0 only.
pub fn load_user_data_segments() {
    let data = selector(USER_DS);
    // SAFETY: a present DPL3 data segment of the loaded GDT; ring 0 may load it, and the
    // kernel's own code never depends on DS/ES (long mode ignores their base and limit).
    unsafe {
        DS::set_reg(data);
        ES::set_reg(data);
    }
}
