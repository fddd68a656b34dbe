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

/// Batches a row is timed in, for the samples `bench compare` tests.
const BATCHES: u64 = 16;

/// Run `write` `units` times (each `unit_bytes`), timed in up to [`BATCHES`] equal batches:
/// the whole row's ns and each batch's ns per KiB.
fn timed<E>(
    units: u64,
    unit_bytes: u64,
    mut write: impl FnMut() -> Result<(), E>,
) -> Result<(u64, alloc::vec::Vec<u64>), E> {
    let per_batch = units.div_ceil(BATCHES).max(1);
    let mut per_kib = alloc::vec::Vec::new();
    let t0 = time::now_ns();
    let mut batch_start = t0;
    for i in 0..units {
        write()?;
        if (i + 1) % per_batch == 0 || i + 1 == units {
            let now = time::now_ns();
            let bytes = ((i % per_batch) + 1) * unit_bytes;
            per_kib.push((now - batch_start) * 1024 / bytes.max(1));
            batch_start = now;
        }
    }
    Ok((time::now_ns() - t0, per_kib))
}

/// The row's line: `ns` per KiB over the row, `batch_ns_per_kib=` per batch.
fn report(name: &str, kib: u64, elapsed_ns: u64, batches: &[u64]) {
    let per_kib = elapsed_ns / kib.max(1);
    let batches: alloc::vec::Vec<alloc::string::String> =
        batches.iter().map(|b| alloc::format!("{b}")).collect();
    println!(
        "# bench: console.{} ns={} min={} max={} n={} bytes={} batch_ns_per_kib={}",
        name,
        per_kib,
        per_kib,
        per_kib,
        kib,
        kib * 1024,
        batches.join(",")
    );
}

pub fn console() -> Outcome {
    // 64-byte lines: "# console-bench " and 47 filler bytes and the newline.
    let mut line = [b'.'; 63];
    line[..16].copy_from_slice(b"# console-bench ");
    let line = core::str::from_utf8(&line).unwrap_or("#");
    let lines = SERIAL_KIB * 1024 / 64;
    println!("# phase: begin console.serial_tx");
    let Ok((serial_ns, batches)) = timed(lines, 64, || {
        println!("{}", line);
        Ok::<(), core::convert::Infallible>(())
    });
    println!("# phase: end console.serial_tx");
    report("serial_tx", SERIAL_KIB, serial_ns, &batches);

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
    let timing = timed(chunks, CHUNK as u64, || c.write(0, &chunk));
    let (virtio_ns, batches) = try_or_fail!(timing, "virtio-console write");
    println!("# phase: end console.virtio_tx");
    report("virtio_tx", VIRTIO_KIB, virtio_ns, &batches);
    Outcome::Pass
}
