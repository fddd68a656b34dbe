//! virtio-console behind the virtio-pci transport ([`virtio_rig`](super::virtio_rig)), with
//! two ports (port 0 the console, port 1 named): transmit queues fed data, receive queues
//! buffers of any size and direction, the control queue MULTIPORT messages of every event
//! with ids in and past the ports, and the host connecting, disconnecting and typing between
//! ops. Besides the rig's checks: what each port's host got is exactly what the device counted
//! as delivered, input reaches the guest only as far as it was typed, and at the end a reset
//! console carries a write from port 0 to its host.

use super::virtio_rig::{Rig, GENERIC_OPS};
use super::*;
use crate::devices::lock;
use crate::devices::virtio::console::port::PortShared;
use crate::devices::virtio::console::Console;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Opcodes past the rig's ([`virtio_rig::rop`](super::virtio_rig::rop)).
pub mod cop {
    /// The host of a port types bytes (as much as the port's input holds).
    pub const INPUT: u8 = super::GENERIC_OPS;
    /// The host of a port connects (a fresh sink) or disconnects.
    pub const HOST: u8 = super::GENERIC_OPS + 1;
}
const OPS: u8 = GENERIC_OPS + 2;
const PORTS: usize = 2;

/// The host side of a port: every byte written to it.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A readable buffer's bytes: control messages (id, event, value, maybe a name) on the
/// control transmit queue, data elsewhere.
fn payload(r: &mut Reader, q: usize) -> Vec<u8> {
    use crate::devices::virtio::console::CONTROL_TX_QUEUE;
    if q == CONTROL_TX_QUEUE {
        let id = match r.u8() % 4 {
            0 => r.u32(),
            _ => u32::from(r.u8()) % (PORTS as u32 + 1),
        };
        let event = match r.u8() % 4 {
            0 => r.u16(),
            _ => u16::from(r.u8() % 8),
        };
        let value = u16::from(r.u8() % 3);
        let mut m = id.to_le_bytes().to_vec();
        m.extend(event.to_le_bytes());
        m.extend(value.to_le_bytes());
        let extra = r.u8() as usize % 4;
        m.extend_from_slice(r.bytes(extra));
        m.truncate(r.u8() as usize % 16 + 1);
        m
    } else {
        let n = 1 + r.u8() as usize % 64;
        r.bytes(n).to_vec()
    }
}

/// What one input did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSummary {
    pub from_guest: u64,
    pub to_guest: u64,
    pub bad_control: u64,
    /// Passes stopped at their bound (rings laid so that the device feeds itself).
    pub drains_cut: u64,
}

/// virtio-console over virtio-pci: header byte (bit 0: seed guest memory from the input),
/// then operations (the rig's, [`cop`]).
pub fn console(data: &[u8]) {
    run_console(data);
}

/// [`console()`], returning what happened.
pub fn run_console(data: &[u8]) -> ConsoleSummary {
    let mut r = Reader(data);
    let flags = r.u8();
    let mem = new_memory((flags & 1 != 0).then_some(data));
    let ports: Vec<Arc<PortShared>> = (0..PORTS)
        .map(|i| Arc::new(PortShared::new((i > 0).then(|| format!("port{i}")), i == 0)))
        .collect();
    // Each port's sinks so far (a reconnect starts a new one) and the bytes typed.
    let mut sinks: Vec<Vec<Sink>> = vec![Vec::new(); PORTS];
    for (p, s) in ports.iter().zip(&mut sinks) {
        let sink = Sink::default();
        p.connect(Box::new(sink.clone()));
        s.push(sink);
    }
    let mut typed = [0u64; PORTS];
    let dev = Console::new(ports.clone(), 80, 25);
    let counters = dev.counters();
    let mut rig = Rig::new(Box::new(dev), mem, payload);
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % OPS {
            cop::INPUT => {
                let p = r.u8() as usize % PORTS;
                let n = r.u8() as usize;
                let bytes = r.bytes(n);
                // Never waits: the port takes what it has room for.
                typed[p] += ports[p].push_input(bytes, Duration::ZERO, || false) as u64;
            }
            cop::HOST => {
                let p = r.u8() as usize % PORTS;
                if r.u8() & 1 == 0 {
                    ports[p].disconnect();
                } else {
                    let sink = Sink::default();
                    ports[p].connect(Box::new(sink.clone()));
                    sinks[p].push(sink);
                }
            }
            op => rig.op(op, &mut r),
        }
        rig.check();
        for (i, p) in ports.iter().enumerate() {
            let c = p.counters();
            let got: u64 = sinks[i].iter().map(|s| lock(&s.0).len() as u64).sum();
            assert_eq!(
                got,
                c.from_guest - c.dropped,
                "port {i}: host bytes vs {c:?}"
            );
            assert!(
                c.to_guest <= typed[i],
                "port {i}: more input than typed: {c:?}"
            );
        }
    }
    let device_counts = *lock(&counters);
    let summary = ConsoleSummary {
        from_guest: ports.iter().map(|p| p.counters().from_guest).sum(),
        to_guest: ports.iter().map(|p| p.counters().to_guest).sum(),
        bad_control: device_counts.bad_control,
        drains_cut: device_counts.drains_cut,
    };
    rig.check_alive();
    let sink = Sink::default();
    ports[0].connect(Box::new(sink.clone()));
    assert_eq!(rig.submit(Console::rx_queue(0) + 1, b"alive", false), 1);
    assert_eq!(*lock(&sink.0), b"alive", "port 0's write after the reset");
    summary
}

#[cfg(test)]
mod tests {
    use super::super::virtio_rig::rop;
    use super::*;
    use crate::fuzzing::test_util::{random, P};

    /// Every queue canonical (8 entries, vector 0), all features, DRIVER_OK.
    fn ready() -> P {
        let mut p = P::default().op(&[0]);
        for q in 0..2 * PORTS as u8 + 2 {
            p = p.op(&[rop::QUEUE, 0, q, 3, 0, 0, 1]);
        }
        p.op(&[rop::NEGOTIATE, 0])
    }

    /// Found by the console target (a libFuzzer timeout): port 0's transmit queue of size 1
    /// with its descriptors at 0, its avail ring at 0x2 and its used ring at 0x4, so the used
    /// flags word is the avail index. The transmit pass's notifications off and on published
    /// and withdrew an entry, and its look-again found "more" for ever. The pass now stops at
    /// its bound.
    #[test]
    fn a_used_ring_over_the_avail_index_ends_the_pass() {
        const INPUT: [u8; 120] = [
            0x00, 0x00, 0xd1, 0xd2, 0xd2, 0x83, 0x00, 0x01, 0x03, 0x00, 0x03, 0x83, 0x00, 0x00,
            0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xd3, 0xff, 0x10, 0x6c, 0x6c, 0x6f,
            0x2c, 0xff, 0xfd, 0xff, 0xff, 0xff, 0x6f, 0x33, 0x74, 0x0a, 0x10, 0x00, 0x70, 0x70,
            0x70, 0x63, 0x07, 0x01, 0x00, 0x00, 0x6b, 0x6c, 0x5d, 0x65, 0x28, 0x3b, 0x20, 0x00,
            0x01, 0x04, 0x00, 0x03, 0x03, 0x00, 0x00, 0x01, 0x03, 0x00, 0x04, 0x8c, 0x03, 0x00,
            0x2b, 0x00, 0x09, 0x03, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x04, 0x00, 0x6f, 0x33,
            0x74, 0x0a, 0x10, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x16, 0x00, 0x6b, 0x6c,
            0x65, 0x28, 0x3b, 0x00, 0x00, 0x01, 0x04, 0x00, 0x03, 0x03, 0x00, 0x00, 0x01, 0x03,
            0x00, 0x00, 0x11, 0x00, 0x00, 0x0f, 0x01, 0x00,
        ];
        let s = run_console(&INPUT);
        assert!(s.drains_cut >= 1, "{s:?}");
    }

    #[test]
    fn console_random_programs() {
        random(0x5eed_c0de, 2000, 400, &ready().0[1..], console);
    }

    #[test]
    fn console_carries_a_write_and_refuses_bad_control() {
        // Port 0 transmits 4 bytes; the guest sends DEVICE_ADD, which only a device sends.
        let p = ready()
            .op(&[rop::CHAIN, 1, 0, 0, 1, 3, b'a', b'b', b'c', b'd'])
            .op(&[rop::CHAIN, 3, 0, 0, 1, 1, 0, 1, 9, 0, 0, 15]);
        let s = run_console(&p.0);
        assert_eq!(s.from_guest, 4, "{s:?}");
        assert_eq!(s.bad_control, 1, "{s:?}");
    }
}
