//! A fake virtio-console device for the driver's host tests: a [`Backend`] of the fake
//! virtio-pci function (rust-vmm's virtio-queue is the device side). It keeps what the driver
//! sent on each port and on the control queue, delivers host input and control messages when
//! its receive queues are processed, answers DEVICE_READY and PORT_READY as QEMU does (PORT_ADD
//! for each port; CONSOLE_PORT, PORT_NAME, PORT_OPEN), and misbehaves on demand.

use super::fake::{Backend, FakePlatform, Mem};
use std::boxed::Box;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::string::String;
use std::vec;
use std::vec::Vec;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

/// Feature bits and events, spelled out independently of the driver.
pub mod bits {
    pub const SIZE: u64 = 1 << 0;
    pub const MULTIPORT: u64 = 1 << 1;
    pub const VERSION_1: u64 = 1 << 32;
}
pub mod ev {
    pub const DEVICE_READY: u16 = 0;
    pub const PORT_ADD: u16 = 1;
    pub const PORT_READY: u16 = 3;
    pub const CONSOLE_PORT: u16 = 4;
    pub const RESIZE: u16 = 5;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Misbehave {
    #[default]
    No,
    /// Use receive buffers with this length (whatever was written).
    RxUsedLen(u32),
    /// Use control receive buffers with this length.
    ControlUsedLen(u32),
}

#[derive(Default)]
pub struct ConsoleState {
    pub features: u64,
    pub cols: u16,
    pub rows: u16,
    pub max_nr_ports: u32,
    /// The ports the device adds after DEVICE_READY: (id, name).
    pub ports: Vec<(u32, Option<String>)>,
    /// Host input waiting per port id.
    pub input: Vec<VecDeque<u8>>,
    /// What the driver wrote per port id.
    pub output: Vec<Vec<u8>>,
    /// Lengths of each transmit chain.
    pub tx_chains: Vec<usize>,
    /// Control messages for the driver, raw.
    pub control_out: VecDeque<Vec<u8>>,
    /// Control messages from the driver: (id, event, value).
    pub control_in: Vec<(u32, u16, u16)>,
    pub misbehave: Misbehave,
}

pub fn message(id: u32, event: u16, value: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + payload.len());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

pub struct FakeConsole {
    pub state: Rc<RefCell<ConsoleState>>,
}

/// Which port and direction a queue is: (port id, is receive).
fn queue_port(queue: u16) -> Option<(u32, bool)> {
    match queue {
        0 => Some((0, true)),
        1 => Some((0, false)),
        2 | 3 => None,
        q => Some((u32::from(q / 2 - 1), q % 2 == 0)),
    }
}

impl Backend for FakeConsole {
    fn features(&self) -> u64 {
        self.state.borrow().features
    }

    fn config(&self) -> Vec<u8> {
        let st = self.state.borrow();
        let mut c = vec![0u8; 12];
        c[0..2].copy_from_slice(&st.cols.to_le_bytes());
        c[2..4].copy_from_slice(&st.rows.to_le_bytes());
        c[4..8].copy_from_slice(&st.max_nr_ports.to_le_bytes());
        c
    }

    fn process(&mut self, queue: u16, q: &mut Queue, mem: &Mem) -> bool {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let mut used = false;
        if queue == 2 {
            while !st.control_out.is_empty() {
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                let msg = st.control_out.pop_front().unwrap_or_default();
                let d = chain.into_iter().next().expect("one descriptor");
                assert!(d.is_write_only());
                let n = msg.len().min(d.len() as usize);
                mem.write_slice(&msg[..n], d.addr()).unwrap();
                let len = match st.misbehave {
                    Misbehave::ControlUsedLen(l) => l,
                    _ => n as u32,
                };
                q.add_used(mem, head, len).unwrap();
                used = true;
            }
            return used;
        }
        if queue == 3 {
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let mut bytes = Vec::new();
                for d in chain {
                    let mut b = vec![0u8; d.len() as usize];
                    mem.read_slice(&mut b, d.addr()).unwrap();
                    bytes.extend(b);
                }
                let id = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
                let event = u16::from_le_bytes([bytes[4], bytes[5]]);
                let value = u16::from_le_bytes([bytes[6], bytes[7]]);
                st.control_in.push((id, event, value));
                match (event, value) {
                    (ev::DEVICE_READY, 1) => {
                        for (pid, _) in &st.ports {
                            st.control_out
                                .push_back(message(*pid, ev::PORT_ADD, 0, &[]));
                        }
                    }
                    (ev::PORT_READY, 1) => {
                        if id == 0 {
                            st.control_out
                                .push_back(message(0, ev::CONSOLE_PORT, 1, &[]));
                        }
                        if let Some((_, Some(name))) = st.ports.iter().find(|p| p.0 == id) {
                            let m = message(id, ev::PORT_NAME, 1, name.as_bytes());
                            st.control_out.push_back(m);
                        }
                        st.control_out.push_back(message(id, ev::PORT_OPEN, 1, &[]));
                    }
                    _ => {}
                }
                q.add_used(mem, head, 0).unwrap();
                used = true;
            }
            return used;
        }
        let Some((port, rx)) = queue_port(queue) else {
            return false;
        };
        let port = port as usize;
        if st.input.len() <= port {
            st.input.resize_with(port + 1, VecDeque::new);
            st.output.resize_with(port + 1, Vec::new);
        }
        if rx {
            while !st.input[port].is_empty() {
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                let d = chain.into_iter().next().expect("one descriptor");
                assert!(d.is_write_only(), "receive buffers are device-writable");
                let n = st.input[port].len().min(d.len() as usize);
                let bytes: Vec<u8> = st.input[port].drain(..n).collect();
                mem.write_slice(&bytes, d.addr()).unwrap();
                let len = match st.misbehave {
                    Misbehave::RxUsedLen(l) => l,
                    _ => n as u32,
                };
                q.add_used(mem, head, len).unwrap();
                used = true;
            }
        } else {
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let mut total = 0;
                for d in chain {
                    assert!(!d.is_write_only(), "transmit buffers are device-readable");
                    let mut b = vec![0u8; d.len() as usize];
                    mem.read_slice(&mut b, d.addr()).unwrap();
                    total += b.len();
                    st.output[port].extend(b);
                }
                st.tx_chains.push(total);
                q.add_used(mem, head, 0).unwrap();
                used = true;
            }
        }
        used
    }
}

/// A fake console function (1af4:1043) offering `features`, with queues for `max_nr_ports`
/// ports (port 0 and the control queues at least).
pub fn console_platform(
    features: u64,
    max_nr_ports: u32,
) -> (FakePlatform, Rc<RefCell<ConsoleState>>) {
    let state = Rc::new(RefCell::new(ConsoleState {
        features,
        cols: 80,
        rows: 25,
        max_nr_ports,
        ports: vec![(0, None)],
        ..ConsoleState::default()
    }));
    let queues = if features & bits::MULTIPORT != 0 {
        2 * max_nr_ports as usize + 2
    } else {
        2
    };
    let p = FakePlatform::new(
        Box::new(FakeConsole {
            state: state.clone(),
        }),
        vec![128; queues],
    );
    p.cfg.borrow_mut()[2..4].copy_from_slice(&0x1043u16.to_le_bytes());
    p.cfg.borrow_mut()[0x0B] = 0x07; // communication controller
    (p, state)
}

/// Host input for port `id`, delivered now on its receive queue.
pub fn send_input(p: &FakePlatform, st: &Rc<RefCell<ConsoleState>>, id: u32, data: &[u8]) {
    {
        let mut s = st.borrow_mut();
        let port = id as usize;
        if s.input.len() <= port {
            s.input.resize_with(port + 1, VecDeque::new);
            s.output.resize_with(port + 1, Vec::new);
        }
        s.input[port].extend(data);
    }
    let rx = if id == 0 { 0 } else { 2 * id as u16 + 2 };
    p.process(rx);
}

/// Deliver the control messages the device has queued.
pub fn deliver_control(p: &FakePlatform) {
    p.process(2);
}
