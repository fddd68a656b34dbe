//! Console throughput, emulated against paravirtual: the 16550 (COM1, an exit for every byte
//! and for every status read before it) and virtio-console port 0 (one notify per 32 KiB
//! chunk, the bytes in shared memory). Each row writes its bytes between `# phase:` marks, so
//! the harness counts the exits per KiB; `ns` is per KiB, `n` the KiB written.
//!
//! The serial row's bytes are KTAP diagnostic lines (`# console-bench ...`), so the serial log
//! stays readable; the virtio row writes a pattern to whatever the host put on port 0
//! (`--console socket:PATH`), and skips without a console.

use crate::ktap::Outcome;
use crate::platform::PLATFORM;
use crate::{pci, println, time, try_or_fail};
use alloc::vec;
use drivers::virtio::console::VirtioConsole;
use drivers::virtio::pci::{device_type, virtio_device_type, InterruptMode};

/// KiB through the 16550: at ~2 exits per byte, about a second under kvm_pvm.
const SERIAL_KIB: u64 = 8;
/// KiB through virtio-console.
const VIRTIO_KIB: u64 = 4096;
const CHUNK: usize = 32 * 1024;

fn report(name: &str, kib: u64, elapsed_ns: u64) {
    let per_kib = elapsed_ns / kib.max(1);
    println!(
        "# bench: console.{} ns={} min={} max={} n={} bytes={}",
        name,
        per_kib,
        per_kib,
        per_kib,
        kib,
        kib * 1024
    );
}

pub fn console() -> Outcome {
    // 64-byte lines: "# console-bench " and 47 filler bytes and the newline.
    let mut line = [b'.'; 63];
    line[..16].copy_from_slice(b"# console-bench ");
    let line = core::str::from_utf8(&line).unwrap_or("#");
    let lines = SERIAL_KIB * 1024 / 64;
    println!("# phase: begin console.serial_tx");
    let t0 = time::now_ns();
    for _ in 0..lines {
        println!("{}", line);
    }
    let serial_ns = time::now_ns() - t0;
    println!("# phase: end console.serial_tx");
    report("serial_tx", SERIAL_KIB, serial_ns);

    let Some(function) = pci::devices()
        .iter()
        .find(|f| virtio_device_type(f) == Some(device_type::CONSOLE))
    else {
        return Outcome::Skip("no virtio-console (the 16550 row ran)");
    };
    // Port 0 alone: the row measures the data path, not the control queue.
    let mut c = try_or_fail!(
        VirtioConsole::new(&PLATFORM, function, InterruptMode::Polled, false),
        "virtio-console {}",
        function.address
    );
    let mut chunk = vec![0u8; CHUNK];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13);
    }
    let chunks = VIRTIO_KIB * 1024 / CHUNK as u64;
    println!("# phase: begin console.virtio_tx");
    let t0 = time::now_ns();
    for _ in 0..chunks {
        try_or_fail!(c.write(0, &chunk), "virtio-console write");
    }
    let virtio_ns = time::now_ns() - t0;
    println!("# phase: end console.virtio_tx");
    report("virtio_tx", VIRTIO_KIB, virtio_ns);
    Outcome::Pass
}
