//! The MULTIPORT control protocol (virtio 1.x §5.3.6.2), device side, as pure state: what the
//! driver's messages do and which messages go back. The device feeds it each message of the
//! control transmit queue and hands what it queues to the control receive queue.
//!
//! The handshake as QEMU's virtio-serial-bus runs it: DEVICE_READY from the driver is answered
//! with PORT_ADD for every port; PORT_READY(id, 1) with CONSOLE_PORT for the console port,
//! PORT_NAME for a named port, and PORT_OPEN(id, 1) if the host side is connected;
//! PORT_OPEN from the driver says whether the guest has the port open (data flows to the guest
//! only then). Later host connections and disconnections are PORT_OPEN messages too.

use std::collections::VecDeque;

/// Bytes of a message's header: le32 id, le16 event, le16 value.
pub const HEADER_LEN: usize = 8;
/// Most messages waiting for control receive buffers; beyond, new ones are dropped (counted).
pub const OUTGOING_CAP: usize = 256;

/// Control events (§5.3.6.2; virtio-bindings has no console header).
pub mod event {
    pub const DEVICE_READY: u16 = 0;
    pub const DEVICE_ADD: u16 = 1;
    pub const DEVICE_REMOVE: u16 = 2;
    pub const PORT_READY: u16 = 3;
    pub const CONSOLE_PORT: u16 = 4;
    pub const RESIZE: u16 = 5;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMsg {
    pub id: u32,
    pub event: u16,
    pub value: u16,
}

impl ControlMsg {
    pub fn new(id: u32, event: u16, value: u16) -> Self {
        Self { id, event, value }
    }

    /// The header of `bytes` and what follows it; None if it is shorter than a header.
    pub fn parse(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let header = bytes.get(..HEADER_LEN)?;
        let msg = Self {
            id: u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
            event: u16::from_le_bytes([header[4], header[5]]),
            value: u16::from_le_bytes([header[6], header[7]]),
        };
        Some((msg, &bytes[HEADER_LEN..]))
    }

    /// The message on the wire, with `payload` after the header.
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.event.to_le_bytes());
        out.extend_from_slice(&self.value.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }
}

/// A driver message the device refused (counted by the caller; nothing else happens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Short,
    /// An event a driver does not send, or none at all.
    UnknownEvent(u16),
    PortOutOfRange(u32),
    /// PORT_READY or PORT_OPEN before the device added the port.
    NotAdded(u32),
}

/// What the protocol needs to know of a port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortView {
    pub name: Option<String>,
    pub is_console: bool,
    pub host_open: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PortState {
    added: bool,
    ready: bool,
    guest_open: bool,
    /// The host state last told to the driver.
    host_open_told: Option<bool>,
}

#[derive(Debug, Default)]
pub struct ControlState {
    ports: Vec<PortState>,
    outgoing: VecDeque<Vec<u8>>,
    /// Messages dropped because OUTGOING_CAP were waiting.
    pub dropped: u64,
}

impl ControlState {
    pub fn new(ports: usize) -> Self {
        Self {
            ports: vec![PortState::default(); ports],
            outgoing: VecDeque::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, msg: ControlMsg, payload: &[u8]) {
        if self.outgoing.len() >= OUTGOING_CAP {
            self.dropped += 1;
            return;
        }
        self.outgoing.push_back(msg.encode(payload));
    }

    /// The next message for the driver, if any.
    pub fn pop_outgoing(&mut self) -> Option<Vec<u8>> {
        self.outgoing.pop_front()
    }

    /// Put back a message that found no buffer.
    pub fn unpop_outgoing(&mut self, msg: Vec<u8>) {
        self.outgoing.push_front(msg);
    }

    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether the driver has port `id` open (data may flow to the guest).
    pub fn guest_open(&self, id: usize) -> bool {
        self.ports.get(id).is_some_and(|p| p.guest_open)
    }

    /// Handle one message from the driver; `ports` describes every port, by id.
    pub fn guest_message(&mut self, bytes: &[u8], ports: &[PortView]) -> Result<(), Refused> {
        let (msg, _) = ControlMsg::parse(bytes).ok_or(Refused::Short)?;
        let id = msg.id as usize;
        match msg.event {
            event::DEVICE_READY => {
                if msg.value == 1 {
                    for id in 0..self.ports.len().min(ports.len()) {
                        self.ports[id].added = true;
                        self.push(ControlMsg::new(id as u32, event::DEVICE_ADD, 0), &[]);
                    }
                }
                Ok(())
            }
            event::PORT_READY | event::PORT_OPEN => {
                let (Some(state), Some(view)) = (self.ports.get(id).copied(), ports.get(id)) else {
                    return Err(Refused::PortOutOfRange(msg.id));
                };
                if !state.added {
                    return Err(Refused::NotAdded(msg.id));
                }
                if msg.event == event::PORT_OPEN {
                    self.ports[id].guest_open = msg.value != 0;
                    return Ok(());
                }
                if msg.value != 1 {
                    // The driver could not take the port: it stays unused.
                    self.ports[id].ready = false;
                    return Ok(());
                }
                self.ports[id].ready = true;
                if view.is_console {
                    self.push(ControlMsg::new(msg.id, event::CONSOLE_PORT, 1), &[]);
                }
                if let Some(name) = &view.name {
                    self.push(
                        ControlMsg::new(msg.id, event::PORT_NAME, 1),
                        name.as_bytes(),
                    );
                }
                if view.host_open {
                    self.ports[id].host_open_told = Some(true);
                    self.push(ControlMsg::new(msg.id, event::PORT_OPEN, 1), &[]);
                }
                Ok(())
            }
            other => Err(Refused::UnknownEvent(other)),
        }
    }

    /// The host side of port `id` connected or went away: tell a driver that has the port
    /// ready, once per change.
    pub fn host_state(&mut self, id: usize, open: bool) {
        let Some(state) = self.ports.get_mut(id) else {
            return;
        };
        if !state.ready || state.host_open_told == Some(open) {
            return;
        }
        state.host_open_told = Some(open);
        self.push(
            ControlMsg::new(id as u32, event::PORT_OPEN, u16::from(open)),
            &[],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u32, ev: u16, value: u16) -> Vec<u8> {
        ControlMsg::new(id, ev, value).encode(&[])
    }

    fn drain(c: &mut ControlState) -> Vec<(ControlMsg, Vec<u8>)> {
        std::iter::from_fn(|| c.pop_outgoing())
            .map(|m| {
                let (h, rest) = ControlMsg::parse(&m).unwrap();
                (h, rest.to_vec())
            })
            .collect()
    }

    fn two_ports(host_open: bool) -> Vec<PortView> {
        vec![
            PortView {
                name: None,
                is_console: true,
                host_open,
            },
            PortView {
                name: Some("org.test.echo".into()),
                is_console: false,
                host_open,
            },
        ]
    }

    #[test]
    fn encode_and_parse_agree_with_the_wire_layout() {
        let m = ControlMsg::new(0x0102_0304, event::PORT_NAME, 1).encode(b"ab");
        assert_eq!(m, [4, 3, 2, 1, 7, 0, 1, 0, b'a', b'b']);
        let (h, rest) = ControlMsg::parse(&m).unwrap();
        assert_eq!(
            (h.id, h.event, h.value, rest),
            (0x0102_0304, 7, 1, &b"ab"[..])
        );
        assert_eq!(ControlMsg::parse(&m[..7]), None);
    }

    #[test]
    fn the_handshake_adds_names_and_opens_ports() {
        let ports = two_ports(true);
        let mut c = ControlState::new(2);
        c.guest_message(&msg(u32::MAX, event::DEVICE_READY, 1), &ports)
            .unwrap();
        let adds = drain(&mut c);
        assert_eq!(
            adds.iter()
                .map(|(h, _)| (h.id, h.event))
                .collect::<Vec<_>>(),
            [(0, event::DEVICE_ADD), (1, event::DEVICE_ADD)]
        );
        c.guest_message(&msg(0, event::PORT_READY, 1), &ports)
            .unwrap();
        let out = drain(&mut c);
        assert_eq!(
            out.iter()
                .map(|(h, _)| (h.id, h.event, h.value))
                .collect::<Vec<_>>(),
            [(0, event::CONSOLE_PORT, 1), (0, event::PORT_OPEN, 1)]
        );
        c.guest_message(&msg(1, event::PORT_READY, 1), &ports)
            .unwrap();
        let out = drain(&mut c);
        assert_eq!(out[0].0, ControlMsg::new(1, event::PORT_NAME, 1));
        assert_eq!(out[0].1, b"org.test.echo");
        assert_eq!(out[1].0, ControlMsg::new(1, event::PORT_OPEN, 1));
        assert!(!c.guest_open(1));
        c.guest_message(&msg(1, event::PORT_OPEN, 1), &ports)
            .unwrap();
        assert!(c.guest_open(1) && !c.guest_open(0));
        c.guest_message(&msg(1, event::PORT_OPEN, 0), &ports)
            .unwrap();
        assert!(!c.guest_open(1));
    }

    #[test]
    fn host_changes_are_told_once_and_only_to_ready_ports() {
        let ports = two_ports(false);
        let mut c = ControlState::new(2);
        c.host_state(0, true);
        assert!(!c.has_outgoing(), "not ready yet");
        c.guest_message(&msg(0, event::DEVICE_READY, 1), &ports)
            .unwrap();
        c.guest_message(&msg(0, event::PORT_READY, 1), &ports)
            .unwrap();
        drain(&mut c);
        c.host_state(0, true);
        c.host_state(0, true);
        c.host_state(0, false);
        let out = drain(&mut c);
        assert_eq!(
            out.iter()
                .map(|(h, _)| (h.event, h.value))
                .collect::<Vec<_>>(),
            [(event::PORT_OPEN, 1), (event::PORT_OPEN, 0)]
        );
        c.host_state(9, true);
        assert!(!c.has_outgoing());
    }

    #[test]
    fn garbage_is_refused_and_changes_nothing() {
        let ports = two_ports(true);
        let mut c = ControlState::new(2);
        assert_eq!(c.guest_message(&[1, 2], &ports), Err(Refused::Short));
        assert_eq!(
            c.guest_message(&msg(0, event::PORT_READY, 1), &ports),
            Err(Refused::NotAdded(0))
        );
        c.guest_message(&msg(0, event::DEVICE_READY, 1), &ports)
            .unwrap();
        drain(&mut c);
        for (m, want) in [
            (msg(2, event::PORT_READY, 1), Refused::PortOutOfRange(2)),
            (
                msg(u32::MAX, event::PORT_OPEN, 1),
                Refused::PortOutOfRange(u32::MAX),
            ),
            (msg(0, event::CONSOLE_PORT, 1), Refused::UnknownEvent(4)),
            (msg(0, event::PORT_NAME, 1), Refused::UnknownEvent(7)),
            (msg(0, 0xffff, 1), Refused::UnknownEvent(0xffff)),
        ] {
            assert_eq!(c.guest_message(&m, &ports), Err(want));
        }
        assert!(!c.has_outgoing());
        assert!(!c.guest_open(0));
    }

    #[test]
    fn a_flood_of_device_ready_is_capped() {
        let ports = two_ports(true);
        let mut c = ControlState::new(2);
        for _ in 0..OUTGOING_CAP {
            c.guest_message(&msg(0, event::DEVICE_READY, 1), &ports)
                .unwrap();
        }
        assert_eq!(drain(&mut c).len(), OUTGOING_CAP);
        assert_eq!(c.dropped, OUTGOING_CAP as u64);
    }
}
