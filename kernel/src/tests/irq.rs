//! Interrupts delivered while ring 3 runs: the LAPIC timer, and a device interrupt (COM1's
//! transmit-empty interrupt) through the IOAPIC.

use crate::arch::{apic, ioapic, vectors};
use crate::ktap::Outcome;
use crate::platform::KernelPlatform;
use crate::{check, println, serial, time};
use drivers::platform::Platform;

/// Spin in ring 3 (no kernel call, so nothing but a real interrupt can bump the count) until
/// `vector` has seen `want` interrupts beyond `start`, or `timeout_ms` passes. Returns how many
/// arrived.
fn spin_for(vector: u8, start: u64, want: u64, timeout_ms: u64) -> u64 {
    let p = KernelPlatform;
    let deadline = time::rdtsc() + time::tsc_hz() / 1000 * timeout_ms;
    while p.interrupt_count(vector) - start < want && time::rdtsc() < deadline {
        core::hint::spin_loop();
    }
    p.interrupt_count(vector) - start
}

pub fn lapic_timer() -> Outcome {
    let p = KernelPlatform;
    let start = p.interrupt_count(vectors::LAPIC_TIMER);
    apic::timer_start_periodic(vectors::LAPIC_TIMER, 1_000_000);
    let spun = spin_for(vectors::LAPIC_TIMER, start, 5, 10_000);
    // The timer works: now sleep for one tick through the wait-for-interrupt kernel call.
    let before = p.interrupt_count(vectors::LAPIC_TIMER);
    if spun >= 5 {
        p.wait_for_interrupt(p.interrupt_epoch());
    }
    let after_wait = p.interrupt_count(vectors::LAPIC_TIMER);
    apic::timer_stop();
    let stopped = p.interrupt_count(vectors::LAPIC_TIMER);
    let quiet = spin_for(vectors::LAPIC_TIMER, stopped, 1, 20);
    apic::start_tick();
    println!(
        "# lapic timer: {} ticks while spinning in ring 3, apic id {}",
        spun,
        apic::id()
    );
    check!(spun >= 5, "only {} LAPIC timer interrupts in 10 s", spun);
    check!(after_wait > before, "woke from hlt without a timer tick");
    check!(
        quiet == 0,
        "{} timer interrupts after the timer was stopped",
        quiet
    );
    Outcome::Pass
}

pub fn ioapic_serial() -> Outcome {
    check!(
        ioapic::pins() >= 16,
        "IOAPIC reports only {} pins",
        ioapic::pins()
    );
    let start = KernelPlatform.interrupt_count(vectors::COM1);
    ioapic::route(4, vectors::COM1, ioapic::Trigger::Edge, apic::id());
    serial::set_thr_empty_interrupt(true);
    // Some UARTs interrupt at once (THR already empty), others after the next byte.
    println!("# ioapic: COM1 THR-empty interrupt enabled on pin 4");
    let got = spin_for(vectors::COM1, start, 1, 10_000);
    serial::set_thr_empty_interrupt(false);
    ioapic::mask(4);
    check!(got >= 1, "no COM1 interrupt through the IOAPIC in 10 s");
    Outcome::Pass
}
