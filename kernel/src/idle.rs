//! `idle` on the command line: instead of tests or a benchmark, the guest stays up serving its
//! devices until the VMM ends the run (the monitor's `quit`), so that a monitor has a running VM
//! to drive. Each round polls the device services, then sleeps in ring 0's `hlt` (the
//! WAIT_FOR_INTERRUPT kernel call) until the next interrupt; the 100 Hz LAPIC tick bounds the
//! sleep, so a round comes at least every 10 ms. The loop itself runs in ring 3, where kvm_pvm
//! runs guest code natively.

use crate::platform::KernelPlatform;
use crate::println;
use drivers::platform::Platform;

/// Whether the bare word `idle` is on the command line.
pub fn requested(cmdline: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|word| word == "idle")
}

/// Serve devices until the VMM stops the VM; never returns.
pub fn run() -> ! {
    println!("# idle: serving devices until the VMM ends the run");
    let platform = KernelPlatform;
    loop {
        // Read before polling: an interrupt that arrives while the services run makes the
        // wait return at once instead of sleeping through it.
        let epoch = platform.interrupt_epoch();
        serve_devices();
        platform.wait_for_interrupt(epoch);
    }
}

/// One round of device services, called after every wakeup. Each device that needs the guest
/// to act while it idles (a balloon following its target, say) adds its poll call here; a call
/// must return promptly, as the next round comes with the next interrupt.
fn serve_devices() {
    crate::mem::balloon::serve_idle();
}
