//! The floor: what one exit costs on this machine, from ring 3, against the harness's no-op
//! exit-floor device (PCI 1234:f100). BAR0 (I/O): +0 handled in VMM userspace, +4 an ioeventfd,
//! +8 a doorbell whose ioeventfd makes the VMM raise the device's interrupt (the virtio
//! notify -> completion path). BAR1 (MMIO): +0 userspace, +0x100 ioeventfd. Also one plain loop
//! timed in ring 3 and in ring 0, so the ring model's effect shows on every machine.

use crate::arch::{apic, ioapic, kcall, vectors};
use crate::ktap::Outcome;
use crate::platform::KernelPlatform;
use crate::{pci, port, println, time};
use alloc::vec::Vec;
use drivers::pci::Bar;
use drivers::platform::Platform;

const VENDOR: u16 = 0x1234;
const DEVICE: u16 = 0xf100;
const LOOP_ITERATIONS: u64 = 1000;

/// Median, min and max of per-op times (and the medians of batches of them, in order),
/// printed as one `# bench:` line.
fn report(name: &str, mut ns: Vec<u64>) {
    if ns.is_empty() {
        return;
    }
    let batch_p50 = super::batch_medians(&ns);
    ns.sort_unstable();
    println!(
        "# bench: floor.{} ns={} min={} max={} n={} batch_p50={}",
        name,
        ns[ns.len() / 2],
        ns[0],
        ns[ns.len() - 1],
        ns.len(),
        batch_p50
    );
}

/// Time `n` runs of `op`, each on its own.
fn time_each(n: usize, mut op: impl FnMut()) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let t0 = time::rdtsc();
            op();
            time::cycles_to_ns(time::rdtsc() - t0)
        })
        .collect()
}

/// Exit costs against the exit-floor device. SKIP where it is absent (it is the harness's own).
pub fn device() -> Outcome {
    let p = KernelPlatform;
    match pci::find(VENDOR, DEVICE) {
        None => Outcome::Skip("no exit-floor device (1234:f100)"),
        Some(dev) => {
            // The ports used are io and io + 4, the MMIO offsets 0 and 0x100: check the sizes
            // before any arithmetic on the bases.
            let (
                Some(Bar::Io {
                    port: io,
                    size: io_size,
                }),
                Some(Bar::Memory { addr, size, .. }),
            ) = (dev.bar(0), dev.bar(1))
            else {
                crate::fail!("exit-floor device BARs are not I/O + memory: {}", dev);
            };
            if io_size < 8 || size < 0x104 {
                crate::fail!(
                    "exit-floor BARs too small (I/O {} bytes, memory {:#x}): {}",
                    io_size,
                    size,
                    dev
                );
            }
            let mmio = match p.map_mmio(addr, size) {
                Ok(m) => m,
                Err(e) => crate::fail!("exit-floor BAR1: {}", e),
            };
            report("port_out_userspace", time_each(2000, || port::outl(io, 1)));
            report(
                "port_out_ioeventfd",
                time_each(4000, || port::outl(io + 4, 1)),
            );
            report(
                "mmio_write_userspace",
                time_each(2000, || p.mmio_write32(&mmio, 0, 1)),
            );
            report(
                "mmio_write_ioeventfd",
                time_each(4000, || p.mmio_write32(&mmio, 0x100, 1)),
            );

            let pin = dev.interrupt_line;
            if pin as u32 >= ioapic::pins() {
                crate::fail!("exit-floor interrupt line {} is not an IOAPIC pin", pin);
            }
            ioapic::route(
                pin,
                vectors::FLOOR_DEVICE,
                ioapic::Trigger::Edge,
                apic::id(),
            );
            let deadline_cycles = time::tsc_hz(); // 1 s per round trip at most
            let mut lost = 0;
            let rt = time_each(2000, || {
                let before = p.interrupt_count(vectors::FLOOR_DEVICE);
                let t0 = time::rdtsc();
                port::outl(io + 8, 1);
                while p.interrupt_count(vectors::FLOOR_DEVICE) == before {
                    if time::rdtsc() - t0 > deadline_cycles {
                        lost += 1;
                        break;
                    }
                    core::hint::spin_loop();
                }
            });
            ioapic::mask(pin);
            if lost > 0 {
                crate::fail!("{} doorbells got no interrupt within 1 s", lost);
            }
            report("notify_irq_roundtrip", rt);
            Outcome::Pass
        }
    }
}

/// The same empty loop in ring 3 and in ring 0.
pub fn loops() -> Outcome {
    report(
        "loop_ring3",
        time_each(200, || time::spin_loop(LOOP_ITERATIONS)),
    );
    let ring0: Vec<u64> = (0..20)
        .map(|_| time::cycles_to_ns(kcall::call(kcall::RING0_LOOP, LOOP_ITERATIONS, 0)))
        .collect();
    report("loop_ring0", ring0);
    println!("# floor: loops are {} iterations per op", LOOP_ITERATIONS);
    Outcome::Pass
}
