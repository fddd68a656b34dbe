//! virtio-console (virtio 1.x §5.3): port 0 a console, and with named extra ports MULTIPORT
//! with its control queues ([`control`]).
//!
//! Queues: port 0 receive/transmit 0 and 1; with MULTIPORT control receive/transmit 2 and 3 and
//! port N 2N+2 and 2N+3. The configuration holds `cols`, `rows` (SIZE) and `max_nr_ports`
//! (MULTIPORT). Host input waits in each port's [`port::PortShared`] until the guest has
//! receive buffers (and, with MULTIPORT, has opened the port, as QEMU requires); the host side
//! runs the receive queue's pass when input arrives ([`Console::rx_queue`]) and the control
//! receive queue's when it connects or goes away. What the guest transmits goes to the port's
//! host writer as it comes, or is dropped and counted while nobody is connected.
//!
//! Nothing the guest writes is fatal: chains with the wrong direction or outside RAM, and bad
//! control messages, are counted in [`ConsoleCounters`] and used with length 0.

pub mod control;
pub mod port;
#[cfg(test)]
mod tests;

use super::device::{driver_wants_interrupt, Activation, InterruptType, QueueBroken, VirtioDevice};
use super::drain::Drain;
use super::Memory;
use crate::devices::lock;
use control::{ControlState, PortView, Refused};
use port::PortShared;
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

pub const DEVICE_TYPE: u16 = virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE as u16;
pub const QUEUE_SIZE: u16 = 256;
/// `cols`, `rows` (le16), `max_nr_ports`, `emerg_wr` (le32).
pub const CONFIG_LEN: usize = 12;
/// Feature bits (§5.3.3).
pub const F_SIZE: u64 = 1 << 0;
pub const F_MULTIPORT: u64 = 1 << 1;
pub const CONTROL_RX_QUEUE: usize = 2;
pub const CONTROL_TX_QUEUE: usize = 3;
/// Bytes moved per step between guest memory and a port.
const PIECE: usize = 64 * 1024;
/// Bytes of a control message the device reads (a driver's have no payload).
const CONTROL_READ_MAX: usize = 64;

/// What the guest got wrong, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleCounters {
    /// Control messages refused (short, unknown event, port out of range or not added).
    pub bad_control: u64,
    /// Control messages dropped because too many waited for buffers.
    pub control_dropped: u64,
    /// Chains with buffers of the wrong direction or outside guest RAM.
    pub malformed_chains: u64,
    /// Notifies of queues that are not in use (a port beyond the ports, control without
    /// MULTIPORT).
    pub stray_notifies: u64,
    /// Passes over a queue stopped at their bound ([`Drain`]): rings laid so that the
    /// device's own writes publish more.
    pub drains_cut: u64,
}

/// What a queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    Receive(usize),
    Transmit(usize),
    ControlReceive,
    ControlTransmit,
}

pub struct Console {
    ports: Vec<Arc<PortShared>>,
    multiport: bool,
    cols: u16,
    rows: u16,
    sizes: Vec<u16>,
    control: ControlState,
    counters: Arc<Mutex<ConsoleCounters>>,
    active: Option<Activation>,
}

impl Console {
    /// A console with `ports` (port 0 first; more than one offers MULTIPORT) and a terminal
    /// size of `cols` x `rows`.
    pub fn new(ports: Vec<Arc<PortShared>>, cols: u16, rows: u16) -> Self {
        let multiport = ports.len() > 1;
        let queues = if multiport { 2 * ports.len() + 2 } else { 2 };
        Self {
            control: ControlState::new(ports.len()),
            ports,
            multiport,
            cols,
            rows,
            sizes: vec![QUEUE_SIZE; queues],
            counters: Arc::default(),
            active: None,
        }
    }

    pub fn counters(&self) -> Arc<Mutex<ConsoleCounters>> {
        self.counters.clone()
    }

    /// The receive queue of port `id`.
    pub fn rx_queue(id: usize) -> usize {
        if id == 0 {
            0
        } else {
            2 * id + 2
        }
    }

    pub fn role(&self, index: usize) -> Option<QueueRole> {
        let port = match index {
            0 | 1 => 0,
            CONTROL_RX_QUEUE if self.multiport => return Some(QueueRole::ControlReceive),
            CONTROL_TX_QUEUE if self.multiport => return Some(QueueRole::ControlTransmit),
            i if self.multiport => i / 2 - 1,
            _ => return None,
        };
        if port >= self.ports.len() {
            return None;
        }
        Some(if index.is_multiple_of(2) {
            QueueRole::Receive(port)
        } else {
            QueueRole::Transmit(port)
        })
    }

    fn views(&self) -> Vec<PortView> {
        self.ports
            .iter()
            .map(|p| PortView {
                name: p.name.clone(),
                is_console: p.is_console,
                host_open: p.host_open(),
            })
            .collect()
    }
}

/// Fill receive chains from `port`'s input while both last. Returns whether any was used.
fn receive(
    queue: &mut Queue,
    index: usize,
    mem: &Memory,
    port: &PortShared,
    counters: &mut ConsoleCounters,
) -> Result<bool, QueueBroken> {
    let mut used = false;
    let mut piece = vec![0u8; PIECE];
    // `run --record-exits`: what each buffer got, for the fuzz seed corpus.
    let recorder = crate::devices::recording::active();
    let mut recorded = Vec::new();
    let mut pass = Drain::new(queue);
    while port.has_input() {
        let Some(chain) = pass.next_chain(queue, mem)? else {
            break;
        };
        let head = chain.head_index();
        let mut written = 0u32;
        for d in chain {
            if !d.is_write_only() {
                counters.malformed_chains += 1;
                break;
            }
            let mut at = 0u32;
            while at < d.len() {
                let want = ((d.len() - at) as usize).min(PIECE);
                let n = port.take_input(&mut piece[..want]);
                if n == 0 {
                    break;
                }
                let addr = GuestAddress(d.addr().0.wrapping_add(u64::from(at)));
                if mem.write_slice(&piece[..n], addr).is_err() {
                    counters.malformed_chains += 1;
                    port.lost_input(n);
                    break;
                }
                at += n as u32;
                if recorder.is_some() {
                    recorded.extend_from_slice(&piece[..n]);
                }
            }
            written += at;
            if at < d.len() {
                break;
            }
        }
        if let Some(rec) = recorder {
            rec.record_buffer("virtio-console", index, &recorded);
            recorded.clear();
        }
        queue.add_used(mem, head, written)?;
        used = true;
    }
    counters.drains_cut += u64::from(pass.was_cut());
    Ok(used)
}

/// Send every transmit chain's bytes to `port`. Returns whether any was used.
fn transmit(
    queue: &mut Queue,
    index: usize,
    mem: &Memory,
    port: &PortShared,
    counters: &mut ConsoleCounters,
) -> Result<bool, QueueBroken> {
    let mut used = false;
    let mut piece = vec![0u8; PIECE];
    // `run --record-exits`: each chain's bytes, for the fuzz seed corpus.
    let recorder = crate::devices::recording::active();
    let mut recorded = Vec::new();
    let mut pass = Drain::new(queue);
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = pass.next_chain(queue, mem)? {
            let head = chain.head_index();
            for_each_readable(chain, mem, &mut piece, counters, |b| {
                port.output(b);
                if recorder.is_some() {
                    recorded.extend_from_slice(b);
                }
            });
            if let Some(rec) = recorder {
                rec.record_buffer("virtio-console", index, &recorded);
                recorded.clear();
            }
            queue.add_used(mem, head, 0)?;
            used = true;
        }
        if !pass.again(queue, mem)? {
            break;
        }
    }
    counters.drains_cut += u64::from(pass.was_cut());
    Ok(used)
}

/// Hand the device-readable bytes of `chain` to `each` in pieces; a device-writable buffer or
/// one outside RAM ends the chain (counted).
fn for_each_readable(
    chain: DescriptorChain<&Memory>,
    mem: &Memory,
    piece: &mut [u8],
    counters: &mut ConsoleCounters,
    mut each: impl FnMut(&[u8]),
) {
    for d in chain {
        if d.is_write_only() {
            counters.malformed_chains += 1;
            return;
        }
        let mut at = 0u32;
        while at < d.len() {
            let n = ((d.len() - at) as usize).min(piece.len());
            let addr = GuestAddress(d.addr().0.wrapping_add(u64::from(at)));
            if mem.read_slice(&mut piece[..n], addr).is_err() {
                counters.malformed_chains += 1;
                return;
            }
            each(&piece[..n]);
            at += n as u32;
        }
    }
}

/// Put waiting control messages into the control receive queue's buffers.
fn deliver_control(
    queue: &mut Queue,
    mem: &Memory,
    control: &mut ControlState,
    counters: &mut ConsoleCounters,
) -> Result<bool, QueueBroken> {
    let mut used = false;
    let mut pass = Drain::new(queue);
    while control.has_outgoing() {
        let Some(chain) = pass.next_chain(queue, mem)? else {
            break;
        };
        let Some(msg) = control.pop_outgoing() else {
            break;
        };
        let head = chain.head_index();
        // One device-writable buffer large enough for the message (Linux posts 4 KiB ones).
        let mut len = 0u32;
        if let Some(d) = chain.into_iter().next() {
            if d.is_write_only()
                && d.len() as usize >= msg.len()
                && mem.write_slice(&msg, d.addr()).is_ok()
            {
                len = msg.len() as u32;
            }
        }
        if len == 0 {
            counters.malformed_chains += 1;
            control.unpop_outgoing(msg);
        }
        queue.add_used(mem, head, len)?;
        used = true;
    }
    counters.drains_cut += u64::from(pass.was_cut());
    Ok(used)
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        let multiport = if self.multiport { F_MULTIPORT } else { 0 };
        1u64 << VIRTIO_F_VERSION_1 | F_SIZE | multiport
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[0..2].copy_from_slice(&self.cols.to_le_bytes());
        config[2..4].copy_from_slice(&self.rows.to_le_bytes());
        config[4..8].copy_from_slice(&(self.ports.len() as u32).to_le_bytes());
        data.fill(0);
        if let Some(src) = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o..o.checked_add(data.len())?))
        {
            data.copy_from_slice(src);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), String> {
        if activation.queues.len() != self.sizes.len() {
            return Err(format!(
                "{} queues for {}",
                activation.queues.len(),
                self.sizes.len()
            ));
        }
        self.control = ControlState::new(self.ports.len());
        self.active = Some(activation);
        Ok(())
    }

    fn activation(&self) -> Option<&Activation> {
        self.active.as_ref()
    }

    fn activation_mut(&mut self) -> Option<&mut Activation> {
        self.active.as_mut()
    }

    fn process_queue(&mut self, index: usize) -> Result<(), QueueBroken> {
        let Some(role) = self.role(index) else {
            lock(&self.counters).stray_notifies += 1;
            return Ok(());
        };
        let views = match role {
            QueueRole::ControlTransmit | QueueRole::ControlReceive => self.views(),
            _ => Vec::new(),
        };
        let Some(Activation {
            mem,
            queues,
            interrupt,
            features,
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let mem: &Memory = mem;
        let multiport = *features & F_MULTIPORT != 0;
        let mut counters = ConsoleCounters::default();
        let mut used = Vec::new();
        match role {
            QueueRole::Receive(id) => {
                let Some(q) = queues.get_mut(index).filter(|q| q.ready()) else {
                    return Ok(());
                };
                // With MULTIPORT a port takes data once the guest opened it (as QEMU does).
                if !multiport || self.control.guest_open(id) {
                    let port = &self.ports[id];
                    if receive(q, index, mem, port, &mut counters)? {
                        used.push(index);
                    }
                }
            }
            QueueRole::Transmit(id) => {
                let Some(q) = queues.get_mut(index).filter(|q| q.ready()) else {
                    return Ok(());
                };
                if transmit(q, index, mem, &self.ports[id], &mut counters)? {
                    used.push(index);
                }
            }
            QueueRole::ControlTransmit | QueueRole::ControlReceive => {
                if !multiport {
                    counters.stray_notifies += 1;
                } else {
                    let (rx_part, tx_part) = queues.split_at_mut(CONTROL_TX_QUEUE);
                    let (rx, tx) = (&mut rx_part[CONTROL_RX_QUEUE], &mut tx_part[0]);
                    let mut opened = Vec::new();
                    if role == QueueRole::ControlTransmit && tx.ready() {
                        let mut piece = [0u8; CONTROL_READ_MAX];
                        let mut pass = Drain::new(tx);
                        loop {
                            tx.disable_notification(mem)?;
                            while let Some(chain) = pass.next_chain(tx, mem)? {
                                let head = chain.head_index();
                                let mut msg = Vec::new();
                                for_each_readable(chain, mem, &mut piece, &mut counters, |b| {
                                    let room = CONTROL_READ_MAX.saturating_sub(msg.len());
                                    msg.extend_from_slice(&b[..b.len().min(room)]);
                                });
                                // `run --record-exits`: the message, for the fuzz seed corpus.
                                if let Some(rec) = crate::devices::recording::active() {
                                    rec.record_buffer("virtio-console", CONTROL_TX_QUEUE, &msg);
                                }
                                let was_open: Vec<bool> = (0..views.len())
                                    .map(|i| self.control.guest_open(i))
                                    .collect();
                                match self.control.guest_message(&msg, &views) {
                                    Ok(()) => {}
                                    Err(Refused::Short)
                                    | Err(Refused::UnknownEvent(_))
                                    | Err(Refused::PortOutOfRange(_))
                                    | Err(Refused::NotAdded(_)) => counters.bad_control += 1,
                                }
                                opened.extend(
                                    (0..views.len())
                                        .filter(|&i| self.control.guest_open(i) && !was_open[i]),
                                );
                                tx.add_used(mem, head, 0)?;
                                used.push(CONTROL_TX_QUEUE);
                            }
                            if !pass.again(tx, mem)? {
                                break;
                            }
                        }
                        counters.drains_cut += u64::from(pass.was_cut());
                    }
                    // Host connections and disconnections since the last pass.
                    for (id, v) in views.iter().enumerate() {
                        self.control.host_state(id, v.host_open);
                    }
                    if rx.ready() && deliver_control(rx, mem, &mut self.control, &mut counters)? {
                        used.push(CONTROL_RX_QUEUE);
                    }
                    // A port just opened may have input waiting already.
                    for id in opened {
                        let index = Self::rx_queue(id);
                        if let Some(q) = queues.get_mut(index).filter(|q| q.ready()) {
                            if receive(q, index, mem, &self.ports[id], &mut counters)? {
                                used.push(index);
                            }
                        }
                    }
                }
            }
        }
        used.sort_unstable();
        used.dedup();
        for i in used {
            if driver_wants_interrupt(&mut queues[i], mem)? {
                interrupt.trigger(InterruptType::Queue(i));
            }
        }
        let dropped = std::mem::take(&mut self.control.dropped);
        let mut total = lock(&self.counters);
        total.bad_control += counters.bad_control;
        total.control_dropped += counters.control_dropped + dropped;
        total.malformed_chains += counters.malformed_chains;
        total.stray_notifies += counters.stray_notifies;
        total.drains_cut += counters.drains_cut;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.control = ControlState::new(self.ports.len());
    }
}
