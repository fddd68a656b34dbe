//! virtio-console through the guest driver, against our harness's model and QEMU's
//! virtio-serial-pci with a virtconsole (and a virtserialport) alike: `console_roundtrip`
//! echoes what the host sends on port 0, then on the first named port (MULTIPORT);
//! `console_prompt` is a tiny command prompt on port 0 (input into the kernel).
//!
//! The protocol, per port: the host sends frames of `le32 length` then that many bytes; the
//! guest echoes each frame as it arrives (header, then the bytes in the chunks it reads), and
//! a frame of length 0, echoed too, ends the port's session. The guest logs
//! `# console: port N: frames F bytes B fnv H` (FNV-1a 64 of every payload byte it received),
//! which the host compares with its own, so both directions are checked byte for byte.

use crate::ktap::Outcome;
use crate::platform::{KernelPlatform, PLATFORM};
use crate::{pci, println, try_or_fail};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use drivers::virtio::console::{ConsoleError, VirtioConsole};
use drivers::virtio::pci::{device_type, virtio_device_type, InterruptMode};

type Console = VirtioConsole<'static, KernelPlatform>;

/// How long the host may take to start (or go on) sending.
const HOST_WAIT_NS: u64 = 60_000_000_000;
/// How long a named port may take to be announced after DEVICE_READY.
const PORT_WAIT_NS: u64 = 5_000_000_000;
const CHUNK: usize = 32 * 1024;

/// FNV-1a 64.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn read_exact(c: &mut Console, port: u32, buf: &mut [u8]) -> Result<(), ConsoleError> {
    let mut done = 0;
    while done < buf.len() {
        done += c.read_wait(port, &mut buf[done..], HOST_WAIT_NS)?;
    }
    Ok(())
}

/// One port's echo session; returns (frames, bytes, fnv).
fn echo_session(c: &mut Console, port: u32) -> Result<(u64, u64, u64), String> {
    let mut buf = vec![0u8; CHUNK];
    let (mut frames, mut bytes, mut fnv) = (0u64, 0u64, Fnv::new());
    loop {
        let mut header = [0u8; 4];
        read_exact(c, port, &mut header).map_err(|e| format!("frame header: {e}"))?;
        c.write(port, &header)
            .map_err(|e| format!("echo header: {e}"))?;
        let len = u32::from_le_bytes(header) as u64;
        if len == 0 {
            return Ok((frames, bytes, fnv.0));
        }
        let mut left = len;
        while left > 0 {
            let want = (left as usize).min(CHUNK);
            let n = c
                .read_wait(port, &mut buf[..want], HOST_WAIT_NS)
                .map_err(|e| format!("frame {frames} at {}: {e}", len - left))?;
            fnv.update(&buf[..n]);
            c.write(port, &buf[..n])
                .map_err(|e| format!("echo of frame {frames}: {e}"))?;
            left -= n as u64;
        }
        frames += 1;
        bytes += len;
    }
}

fn session(c: &mut Console, port: u32) -> Result<(), String> {
    let (frames, bytes, fnv) = echo_session(c, port).map_err(|e| format!("port {port}: {e}"))?;
    println!(
        "# console: port {}: frames {} bytes {} fnv {:#018x}",
        port, frames, bytes, fnv
    );
    Ok(())
}

/// Echo on port 0, then on the first named port if the device has MULTIPORT.
pub fn roundtrip() -> Outcome {
    let Some(function) = pci::devices()
        .iter()
        .find(|f| virtio_device_type(f) == Some(device_type::CONSOLE))
    else {
        return Outcome::Skip("no virtio-console");
    };
    let mut c = try_or_fail!(
        VirtioConsole::new(&PLATFORM, function, InterruptMode::Polled, true),
        "virtio-console {}",
        function.address
    );
    println!(
        "# virtio-console {}: features {:#x} size {:?} max_nr_ports {}",
        function.address,
        c.features(),
        c.size(),
        c.max_nr_ports()
    );
    // With MULTIPORT the device adds port 0 after DEVICE_READY, at its own pace.
    try_or_fail!(
        c.wait_for_port(PORT_WAIT_NS, |p| p.id == 0 && p.present),
        "port 0 never added"
    );
    if let Err(e) = session(&mut c, 0) {
        return Outcome::Fail(e);
    }
    if c.max_nr_ports() > 1 {
        let named = c
            .wait_for_port(PORT_WAIT_NS, |p| p.present && p.name.is_some())
            .ok()
            .map(|p| (p.id, p.name.unwrap_or_default()));
        match named {
            None => println!("# console: no named port"),
            Some((id, name)) => {
                println!("# console: port {} is {:?}", id, name);
                try_or_fail!(c.open(id), "open port {}", id);
                if let Err(e) = session(&mut c, id) {
                    return Outcome::Fail(e);
                }
            }
        }
    }
    let k = c.counters();
    println!(
        "# console: control messages {} short {} unknown {} out_of_range {} bad_name {} bad_used {}",
        k.messages, k.short, k.unknown_event, k.port_out_of_range, k.bad_name, k.bad_used
    );
    Outcome::Pass
}

/// The longest command line kept; the rest of a longer line is dropped.
const LINE_MAX: usize = 128;

/// A tiny command prompt on port 0: input into the kernel. `help`, `echo TEXT`, `uptime`,
/// `mem`, `quit` (ends the test, passing); anything else is answered `unknown command`. Lines
/// end at `\n` or `\r`.
pub fn prompt() -> Outcome {
    let Some(function) = pci::devices()
        .iter()
        .find(|f| virtio_device_type(f) == Some(device_type::CONSOLE))
    else {
        return Outcome::Skip("no virtio-console");
    };
    let mut c = try_or_fail!(
        VirtioConsole::new(&PLATFORM, function, InterruptMode::Polled, true),
        "virtio-console {}",
        function.address
    );
    try_or_fail!(
        c.wait_for_port(PORT_WAIT_NS, |p| p.id == 0 && p.present),
        "port 0 never added"
    );
    let say = |c: &mut Console, text: &str| c.write(0, text.as_bytes());
    try_or_fail!(say(&mut c, "kernel console; type help\n> "), "prompt");
    let mut line = String::new();
    let mut commands = 0u64;
    let mut buf = [0u8; 256];
    loop {
        let n = try_or_fail!(c.read_wait(0, &mut buf, HOST_WAIT_NS), "console input");
        for &b in &buf[..n] {
            if b != b'\n' && b != b'\r' {
                if line.len() < LINE_MAX {
                    line.push(char::from(b));
                }
                continue;
            }
            let cmd = core::mem::take(&mut line);
            let cmd = cmd.trim();
            if cmd.is_empty() {
                continue;
            }
            commands += 1;
            let (word, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
            let reply = match word {
                "help" => String::from("commands: help, echo TEXT, uptime, mem, quit"),
                "echo" => String::from(rest),
                "uptime" => format!("up {} ms", crate::time::now_ns() / 1_000_000),
                "mem" => {
                    let (free, total) =
                        crate::mem::frames::with(|m| (m.free_bytes(), m.total_bytes()));
                    format!("frames: {} KiB free of {} KiB", free >> 10, total >> 10)
                }
                "quit" => {
                    try_or_fail!(say(&mut c, "bye\n"), "reply");
                    println!("# console: prompt served {} commands", commands);
                    return Outcome::Pass;
                }
                _ => format!("unknown command {:?}", word),
            };
            try_or_fail!(say(&mut c, &format!("{reply}\n> ")), "reply");
        }
    }
}
