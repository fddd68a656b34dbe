//! A tiny PVH test kernel. Ring 0 holds boot, trap entry and a few kernel calls; everything else
//! (console, heap, PCI, drivers, tests, benchmarks) runs in ring 3, where kvm_pvm runs guest code
//! natively. Results go out over COM1 as KTAP; the run ends through isa-debug-exit.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;
mod bench;
mod boot;
mod bootinfo;
mod exit;
mod idle;
mod ktap;
mod mem;
mod net;
mod pattern;
mod pci;
mod platform;
mod port;
mod serial;
mod tests;
mod time;

use arch::{gdt, idt, kcall};
use exit::ExitCode;

#[repr(C, align(4096))]
struct UserStack([u8; 1 << 20]);
static mut USER_STACK: UserStack = UserStack([0; 1 << 20]);

/// First Rust code, ring 0, from `pvh_start64`: descriptor tables, then straight to ring 3.
/// Nothing here loops: kvm_pvm emulates every ring-0 instruction.
#[no_mangle]
extern "C" fn ring0_entry(start_info: u64) -> ! {
    gdt::init();
    idt::load();
    disable_pic();
    let stack_top = (&raw const USER_STACK) as u64 + core::mem::size_of::<UserStack>() as u64;
    gdt::load_user_data_segments();
    // SAFETY: GDT, TSS (with RSP0) and IDT are loaded, and `user_main` fills the IDT before
    // anything can trap, so ring 3 can trap back; the stack and `user_main` are mapped
    // user-accessible. IF=1 in the pushed RFLAGS: interrupts arrive while ring 3 runs (the PIC
    // is masked, and no other source is on until `user_main` turns the LAPIC on).
    unsafe {
        core::arch::asm!(
            "push {ds}",
            "push {stack}",
            "push 0x202",
            "push {cs}",
            "push {entry}",
            "iretq",
            ds = in(reg) gdt::USER_DS as u64,
            cs = in(reg) gdt::USER_CS as u64,
            stack = in(reg) stack_top,
            entry = in(reg) user_main as *const () as u64,
            in("rdi") start_info,
            options(noreturn)
        )
    }
}

/// Remap the 8259s away from the exception vectors and mask them: interrupts come through the
/// IOAPIC and LAPIC. (Firmware may have left them on 0x08..0x0f, where a PIT tick would look
/// like a double fault.)
fn disable_pic() {
    use port::outb;
    for (cmd, data, offset, cascade) in [(0x20, 0x21, 0x20, 4), (0xa0, 0xa1, 0x28, 2)] {
        outb(cmd, 0x11);
        outb(data, offset);
        outb(data, cascade);
        outb(data, 0x01);
        outb(data, 0xff);
    }
}

/// Ring 3 from here on.
extern "C" fn user_main(start_info: u64) -> ! {
    // First: until the gates are written, an interrupt or exception would triple-fault.
    idt::fill();
    serial::init();
    let info = match bootinfo::BootInfo::parse(start_info) {
        Ok(info) => info,
        Err(e) => {
            println!("# boot info unusable: {}", e);
            exit(ExitCode::Crashed);
        }
    };
    if let Err(e) = mem::heap::init(info.memmap, &info.reserved) {
        println!("# heap: {}", e);
        exit(ExitCode::Crashed);
    }
    arch::apic::enable();
    arch::apic::start_tick();
    let (hz, source) = time::init();
    println!(
        "# kernel: cmdline {:?}, TSC {} kHz from {}",
        info.cmdline,
        hz / 1000,
        source.name()
    );
    bootinfo::set(info.clone());

    if idle::requested(info.cmdline) {
        idle::run();
    }
    let code = if let Some(which) = info.arg("bench") {
        bench::run(which)
    } else {
        let (selected, unknown) = ktap::select(tests::REGISTRY, info.arg("tests").unwrap_or("all"));
        ktap::run(&selected, &unknown)
    };
    exit(code)
}

/// End the run (ring 3): the exit kernel call writes isa-debug-exit from ring 0.
pub fn exit(code: ExitCode) -> ! {
    kcall::call(kcall::EXIT, code as u64, 0);
    exit::debug_exit(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    serial::force_unlock();
    let mut w = serial::EmergencyWriter;
    let _ = writeln!(w, "\n# PANIC: {}", info);
    ktap::report_crash(&mut w);
    exit(ExitCode::Crashed)
}
