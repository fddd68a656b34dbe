//! The smoltcp bridge's checksum rules, without a device: a scripted NIC hands the stack
//! frames with or without the driver's "checksum valid" mark and records what the stack
//! sends, with the offloads on and off.

use crate::ktap::Outcome;
use crate::net::{IpSetup, Stack, DEFAULT_IP};
use crate::time;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use drivers::net::checksum::{complete_partial_checksum, verify_l4_checksum};
use drivers::net::{
    LinkState, MacAddress, Nic, NicCounters, NicError, NicEvents, Offloads, RxInfo, TxChecksum,
};
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};

const MAC: MacAddress = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const SENDER_MAC: MacAddress = [0x02, 0x00, 0x00, 0x76, 0x00, 0x01];
const PORT: u16 = 4000;

/// A NIC that delivers the frames queued in `rx` and keeps what is sent.
struct ScriptedNic {
    offloads: Offloads,
    rx: VecDeque<(Vec<u8>, RxInfo)>,
    tx: Vec<(Vec<u8>, TxChecksum)>,
}

impl Nic for ScriptedNic {
    fn mac(&self) -> MacAddress {
        MAC
    }
    fn link(&mut self) -> LinkState {
        LinkState::Up
    }
    fn offloads(&self) -> Offloads {
        self.offloads
    }
    fn send(&mut self, frame: &[u8], checksum: TxChecksum) -> Result<(), NicError> {
        if matches!(checksum, TxChecksum::Partial { .. }) && !self.offloads.tx_checksum {
            return Err(NicError::OffloadUnavailable);
        }
        self.tx.push((frame.to_vec(), checksum));
        Ok(())
    }
    fn flush(&mut self) -> Result<(), NicError> {
        Ok(())
    }
    fn reclaim(&mut self) -> Result<usize, NicError> {
        Ok(0)
    }
    /// Sent frames are kept, never outstanding.
    fn tx_in_flight(&self) -> usize {
        0
    }
    fn receive(&mut self, deliver: &mut dyn FnMut(&[u8], RxInfo)) -> Result<bool, NicError> {
        match self.rx.pop_front() {
            Some((f, info)) => {
                deliver(&f, info);
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn set_interrupts(&mut self, _enabled: bool) -> bool {
        false
    }
    fn handle_interrupt(&mut self) -> NicEvents {
        NicEvents::default()
    }
    fn interrupt_vectors(&self) -> &[u8] {
        &[]
    }
    fn counters(&self) -> NicCounters {
        NicCounters::default()
    }
}

/// A UDP datagram from 192.168.76.1:7 to us at PORT with `payload`, its checksum right.
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let (src, dst) = ([192, 168, 76, 1], DEFAULT_IP.address().octets());
    let udp_len = 8 + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&SENDER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let sum = drivers::net::checksum::internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&7u16.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    // The checksum: the pseudo-header sum in the field, then completed over the segment.
    let l4 = drivers::net::checksum::parse_ipv4_l4(&f).expect("a UDP frame");
    let at = l4.l4_start + 6;
    f[at..at + 2].copy_from_slice(&drivers::net::checksum::fold(l4.pseudo_sum).to_be_bytes());
    assert!(complete_partial_checksum(&mut f, l4.l4_start, 6));
    f
}

/// Deliver `frame` (marked valid or not) to a UDP socket on a stack with `offloads`; return
/// whether the socket got it, and the bridge's (by device, here, bad) counts.
fn deliver(offloads: Offloads, frame: Vec<u8>, valid: bool) -> Result<(bool, [u64; 3]), String> {
    let mut nic = ScriptedNic {
        offloads,
        rx: VecDeque::new(),
        tx: Vec::new(),
    };
    nic.rx.push_back((
        frame,
        RxInfo {
            checksum_valid: valid,
            queue: 0,
        },
    ));
    let mut stack = Stack::new(&mut nic, IpSetup::Static(DEFAULT_IP))?;
    let mut s = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
    );
    s.bind(PORT).map_err(|e| format!("bind: {e:?}"))?;
    let h = stack.sockets.add(s);
    stack.poll();
    let got = stack.sockets.get_mut::<udp::Socket>(h).recv().is_ok();
    let c = stack.device.counters();
    Ok((
        got,
        [
            c.rx_checksum_by_device,
            c.rx_checksum_here,
            c.rx_bad_checksum,
        ],
    ))
}

/// Send one datagram to the broadcast address (no ARP needed) on a stack with `offloads`;
/// return the frame and how its checksum was to be finished.
fn send_one(offloads: Offloads) -> Result<(Vec<u8>, TxChecksum), String> {
    let mut nic = ScriptedNic {
        offloads,
        rx: VecDeque::new(),
        tx: Vec::new(),
    };
    {
        let mut stack = Stack::new(&mut nic, IpSetup::Static(DEFAULT_IP))?;
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        );
        s.bind(PORT).map_err(|e| format!("bind: {e:?}"))?;
        let h = stack.sockets.add(s);
        let to = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::new(192, 168, 76, 255)), 9);
        stack
            .sockets
            .get_mut::<udp::Socket>(h)
            .send_slice(b"partial checksum, please", to)
            .map_err(|e| format!("send: {e:?}"))?;
        // Polled at least once, however late: a vCPU descheduled past the deadline still
        // gives the stack its turn.
        let deadline = time::now_ns() + 100_000_000;
        loop {
            stack.poll();
            if stack.device.counters().tx_frames != 0 || time::now_ns() >= deadline {
                break;
            }
        }
    }
    nic.tx
        .pop()
        .ok_or_else(|| String::from("the stack sent nothing"))
}

pub fn checksums() -> Outcome {
    match run() {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Fail(e),
    }
}

fn run() -> Result<(), String> {
    let on = Offloads {
        tx_checksum: true,
        rx_checksum: true,
    };
    let off = Offloads::default();
    let good = udp_frame(b"hello");
    let mut bad = good.clone();
    *bad.last_mut().expect("payload") ^= 0x20;
    // (what, offloads, frame, marked valid, delivered, [by device, here, bad])
    let cases = [
        ("offload, good, unmarked", on, &good, false, true, [0, 1, 0]),
        ("offload, bad, unmarked", on, &bad, false, false, [0, 0, 1]),
        // The device vouched: neither the bridge nor smoltcp looks (a NEEDS_CSUM frame's
        // field holds only the pseudo-header sum, which must not be judged).
        ("offload, bad, marked", on, &bad, true, true, [1, 0, 0]),
        ("offload, good, marked", on, &good, true, true, [1, 0, 0]),
        // No offload: smoltcp verifies everything, marks or not.
        ("no offload, good", off, &good, false, true, [0, 0, 0]),
        ("no offload, bad, marked", off, &bad, true, false, [0, 0, 0]),
    ];
    for (what, offloads, frame, valid, want, counts) in cases {
        let (got, c) = deliver(offloads, frame.clone(), valid)?;
        if got != want || c != counts {
            return Err(format!(
                "{what}: delivered {got} (want {want}), counts by device/here/bad {c:?} \
                 (want {counts:?})"
            ));
        }
    }
    // TX with offload: a partial checksum the device can finish into a valid one.
    let (mut frame, how) = send_one(on)?;
    let TxChecksum::Partial { start, offset } = how else {
        return Err(format!("offload TX sent {how:?}, not a partial checksum"));
    };
    if (start, offset) != (34, 6) {
        return Err(format!("partial checksum at {start}+{offset}, not 34+6"));
    }
    if !complete_partial_checksum(&mut frame, start.into(), offset.into())
        || verify_l4_checksum(&frame) != Some(true)
    {
        return Err(String::from(
            "the device's finish of the partial checksum is invalid",
        ));
    }
    // TX without offload: complete, and valid as sent.
    let (frame, how) = send_one(off)?;
    if how != TxChecksum::Complete || verify_l4_checksum(&frame) != Some(true) {
        return Err(format!(
            "TX without offload: {how:?}, checksum valid {:?}",
            verify_l4_checksum(&frame)
        ));
    }
    Ok(())
}
