//! virtio-console (virtio 1.x §5.3) over the modern PCI transport.
//!
//! Port 0 is a console: [`VirtioConsole::write`] sends bytes on its transmit queue and
//! [`VirtioConsole::read`] hands over what arrived on its receive queue, whose buffers are kept
//! posted (each one reposted as soon as its bytes are copied out). `SIZE` is negotiated when
//! offered (the console's columns and rows). With `MULTIPORT` the driver posts buffers on the
//! control receive queue, says DEVICE_READY, and follows the device's control messages:
//! PORT_ADD (answered with PORT_READY), CONSOLE_PORT (the port is opened at once, as Linux
//! does), PORT_NAME, PORT_OPEN (the host side's state), RESIZE and PORT_REMOVE. Other ports are
//! opened with [`VirtioConsole::open`]. Queues: port 0 receive/transmit 0 and 1, control 2 and
//! 3, port N 2N+2 and 2N+3; the driver sets up the first [`MAX_PORTS`] ports.
//!
//! A hostile device cannot hang or crash the driver, nor make it write outside its buffers:
//! every wait has a deadline, used lengths and ids are checked by the queue (a bad one is
//! counted and its buffer reposted or written off), and control messages that are short, of
//! unknown events, for ports out of range, or with names longer than [`NAME_MAX`] are counted
//! in [`ControlCounters`] and otherwise ignored.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::mem::{offset_of, size_of};

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::feature;
use super::pci::{InterruptMode, VirtioError, VirtioPci};
use super::queue::{QueueError, VirtQueue};
use crate::pci::PciFunction;
use crate::platform::{DmaBuffer, Platform, PlatformError};

/// Ports whose queues the driver sets up (port 0 and up to three more).
pub const MAX_PORTS: u32 = 4;
/// Receive buffers posted per port, and their size.
pub const RX_BUFFERS: usize = 16;
pub const RX_BUFFER_SIZE: usize = 4096;
/// Largest chunk one transmit buffer carries.
pub const TX_CHUNK: usize = 32 * 1024;
/// Longest port name kept; a longer one is counted and dropped.
pub const NAME_MAX: usize = 64;
/// Control buffers posted: a header and a name of up to NAME_MAX bytes fit in each.
const CONTROL_BUFFERS: usize = 16;
const CONTROL_BUFFER_SIZE: usize = 128;
const QUEUE_SIZE: u16 = 64;
/// Deadline for the device to use one buffer.
pub const DEFAULT_TIMEOUT_NS: u64 = 5_000_000_000;

const CONTROL_RX_QUEUE: u16 = 2;
const CONTROL_TX_QUEUE: u16 = 3;

/// virtio-console feature bits (§5.3.3).
pub mod console_feature {
    pub const SIZE: u64 = 1 << 0;
    pub const MULTIPORT: u64 = 1 << 1;
    pub const EMERG_WRITE: u64 = 1 << 2;
}

/// Control message events (§5.3.6.2).
pub mod control_event {
    pub const DEVICE_READY: u16 = 0;
    pub const DEVICE_ADD: u16 = 1;
    pub const DEVICE_REMOVE: u16 = 2;
    pub const PORT_READY: u16 = 3;
    pub const CONSOLE_PORT: u16 = 4;
    pub const RESIZE: u16 = 5;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}

/// The device configuration (§5.3.4).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ConsoleConfig {
    pub cols: U16,
    pub rows: U16,
    pub max_nr_ports: U32,
    pub emerg_wr: U32,
}

/// A control message's header; PORT_NAME's name and RESIZE's size follow it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ControlHeader {
    pub id: U32,
    pub event: U16,
    pub value: U16,
}

/// RESIZE's payload (Linux's `struct virtio_console_resize`).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ResizePayload {
    pub cols: U16,
    pub rows: U16,
}

const _: () = assert!(size_of::<ConsoleConfig>() == 12 && size_of::<ControlHeader>() == 8);

const COLS: u64 = offset_of!(ConsoleConfig, cols) as u64;
const ROWS: u64 = offset_of!(ConsoleConfig, rows) as u64;
const MAX_NR_PORTS: u64 = offset_of!(ConsoleConfig, max_nr_ports) as u64;
/// The id Linux puts in DEVICE_READY (no port).
const NO_PORT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleError {
    Virtio(VirtioError),
    Queue(QueueError),
    Platform(PlatformError),
    /// The function is not a console.
    NotConsole(Option<u16>),
    /// The port is beyond those the driver set up, or the device never added it.
    NoSuchPort(u32),
    /// MULTIPORT was not negotiated: only port 0 exists.
    NoMultiport,
    /// The device did not use a buffer (or send data) before the deadline.
    Timeout {
        queue: u16,
    },
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Virtio(e) => write!(f, "{e}"),
            Self::Queue(e) => write!(f, "queue: {e}"),
            Self::Platform(e) => write!(f, "platform: {e}"),
            Self::NotConsole(t) => write!(f, "not a virtio console (device type {t:?})"),
            Self::NoSuchPort(id) => write!(f, "no port {id}"),
            Self::NoMultiport => write!(f, "MULTIPORT was not negotiated"),
            Self::Timeout { queue } => write!(f, "the device did not answer on queue {queue}"),
        }
    }
}

impl From<VirtioError> for ConsoleError {
    fn from(e: VirtioError) -> Self {
        match e {
            VirtioError::Queue(q) => Self::Queue(q),
            VirtioError::Timeout => Self::Timeout { queue: u16::MAX },
            e => Self::Virtio(e),
        }
    }
}
impl From<QueueError> for ConsoleError {
    fn from(e: QueueError) -> Self {
        Self::Queue(e)
    }
}
impl From<PlatformError> for ConsoleError {
    fn from(e: PlatformError) -> Self {
        Self::Platform(e)
    }
}

/// What the device got wrong on the control queue and the data queues, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlCounters {
    /// Control messages seen (good or bad).
    pub messages: u64,
    /// Shorter than their header (or RESIZE without its size).
    pub short: u64,
    /// Events the driver does not know, or that only a driver sends.
    pub unknown_event: u64,
    /// Ports at or beyond max_nr_ports, or beyond those the driver set up.
    pub port_out_of_range: u64,
    /// PORT_NAME longer than NAME_MAX, or not UTF-8.
    pub bad_name: u64,
    /// Used entries with a bad id or a length beyond the buffer (any queue).
    pub bad_used: u64,
}

/// One port as the driver knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortInfo {
    pub id: u32,
    /// The device added it (always true for port 0 without MULTIPORT).
    pub present: bool,
    pub is_console: bool,
    pub name: Option<String>,
    /// The host side is connected (PORT_OPEN from the device).
    pub host_open: bool,
    /// The driver opened it (PORT_OPEN to the device).
    pub guest_open: bool,
}

struct Port<'p, P: Platform + ?Sized> {
    info: PortInfo,
    rx_q: VirtQueue<'p, P>,
    tx_q: VirtQueue<'p, P>,
    /// RX_BUFFERS buffers of RX_BUFFER_SIZE, one region.
    rx_region: Option<DmaBuffer>,
    tx_buf: Option<DmaBuffer>,
    /// Bytes received and not yet read (at most a ring's worth is pulled in at a time).
    received: VecDeque<u8>,
}

pub struct VirtioConsole<'p, P: Platform + ?Sized> {
    transport: VirtioPci<'p, P>,
    ports: Vec<Port<'p, P>>,
    /// The control queues and their buffers (MULTIPORT only).
    control: Option<Control<'p, P>>,
    features: u64,
    size: Option<(u16, u16)>,
    max_nr_ports: u32,
    counters: ControlCounters,
    timeout_ns: u64,
    platform: &'p P,
}

struct Control<'p, P: Platform + ?Sized> {
    rx_q: VirtQueue<'p, P>,
    tx_q: VirtQueue<'p, P>,
    rx_region: Option<DmaBuffer>,
    tx_buf: Option<DmaBuffer>,
}

// SAFETY: the DMA buffers (raw pointers) are owned by the driver alone, and nothing in it is
// tied to a thread; moving the driver moves that ownership. `P: Sync` because `&P` is held.
unsafe impl<P: Platform + Sync + ?Sized> Send for VirtioConsole<'_, P> {}

/// The receive and transmit queue of port `id` (§5.3.2).
pub fn port_queues(id: u32) -> (u16, u16) {
    if id == 0 {
        (0, 1)
    } else {
        let rx = (2 * id + 2) as u16;
        (rx, rx + 1)
    }
}

impl<'p, P: Platform + ?Sized> VirtioConsole<'p, P> {
    /// Initialise the device with VERSION_1, SIZE and MULTIPORT when offered (MULTIPORT only if
    /// `multiport`), set up port 0 (and with MULTIPORT the control queues and ports up to
    /// [`MAX_PORTS`] or max_nr_ports), post every receive buffer, DRIVER_OK, and with MULTIPORT
    /// send DEVICE_READY and handle the control messages that came by then.
    pub fn new(
        platform: &'p P,
        function: &PciFunction,
        mode: InterruptMode,
        multiport: bool,
    ) -> Result<Self, ConsoleError> {
        let ty = super::pci::virtio_device_type(function);
        if ty != Some(super::pci::device_type::CONSOLE) {
            return Err(ConsoleError::NotConsole(ty));
        }
        let mut transport = VirtioPci::new(platform, function)?;
        let mut wanted = feature::VERSION_1 | console_feature::SIZE;
        if multiport {
            wanted |= console_feature::MULTIPORT;
        }
        let features = transport.begin_init(wanted, mode)?;
        let size = if features & console_feature::SIZE != 0 {
            Some((
                transport.config_read16(COLS)?,
                transport.config_read16(ROWS)?,
            ))
        } else {
            None
        };
        let multiport = features & console_feature::MULTIPORT != 0;
        let max_nr_ports = if multiport {
            transport.config_read32(MAX_NR_PORTS)?.max(1)
        } else {
            1
        };
        let mut console = Self {
            transport,
            ports: Vec::new(),
            control: None,
            features,
            size,
            max_nr_ports,
            counters: ControlCounters::default(),
            timeout_ns: DEFAULT_TIMEOUT_NS,
            platform,
        };
        // Dropping `console` on an error below resets the device and frees what was made.
        console.add_port(0)?;
        if multiport {
            let rx_q = console
                .transport
                .setup_queue(CONTROL_RX_QUEUE, QUEUE_SIZE)?;
            let tx_q = console
                .transport
                .setup_queue(CONTROL_TX_QUEUE, QUEUE_SIZE)?;
            let rx_region = platform.dma_alloc(CONTROL_BUFFERS * CONTROL_BUFFER_SIZE, 8)?;
            let mut control = Control {
                rx_q,
                tx_q,
                rx_region: Some(rx_region),
                tx_buf: None,
            };
            control.tx_buf = Some(platform.dma_alloc(CONTROL_BUFFER_SIZE, 8)?);
            console.control = Some(control);
            for slot in 0..CONTROL_BUFFERS {
                console.post_control(slot)?;
            }
            for id in 1..max_nr_ports.min(MAX_PORTS) {
                console.add_port(id)?;
            }
        } else {
            console.ports[0].info.present = true;
            console.ports[0].info.is_console = true;
        }
        console.transport.driver_ok()?;
        for id in 0..console.ports.len() {
            console.kick_rx(id);
        }
        if let Some(c) = console.control.as_mut() {
            // The control buffers must be with the device before it answers DEVICE_READY.
            if c.rx_q.kick_needed() {
                console.transport.notify(CONTROL_RX_QUEUE);
            }
            console.send_control(NO_PORT, control_event::DEVICE_READY, 1)?;
            console.serve_control()?;
        }
        Ok(console)
    }

    fn add_port(&mut self, id: u32) -> Result<(), ConsoleError> {
        let (rx, tx) = port_queues(id);
        let rx_q = self.transport.setup_queue(rx, QUEUE_SIZE)?;
        let tx_q = self.transport.setup_queue(tx, QUEUE_SIZE)?;
        let mut port = Port {
            info: PortInfo {
                id,
                ..PortInfo::default()
            },
            rx_q,
            tx_q,
            rx_region: None,
            tx_buf: None,
            received: VecDeque::new(),
        };
        // Kept in the list at once, so that Drop frees whatever was allocated.
        let rx_region = self
            .platform
            .dma_alloc(RX_BUFFERS * RX_BUFFER_SIZE, 8)
            .map_err(|e| self.fail(e.into()))?;
        port.rx_region = Some(rx_region);
        self.ports.push(port);
        let tx_buf = self
            .platform
            .dma_alloc(TX_CHUNK, 8)
            .map_err(|e| self.fail(e.into()))?;
        let port = self.ports.last_mut().ok_or(ConsoleError::NoSuchPort(id))?;
        port.tx_buf = Some(tx_buf);
        for slot in 0..RX_BUFFERS {
            post_rx(port, slot)?;
        }
        Ok(())
    }

    fn fail(&self, e: ConsoleError) -> ConsoleError {
        self.transport.set_failed();
        e
    }

    pub fn features(&self) -> u64 {
        self.features
    }

    pub fn set_timeout_ns(&mut self, ns: u64) {
        self.timeout_ns = ns;
    }

    /// (columns, rows) with SIZE (updated by RESIZE messages).
    pub fn size(&self) -> Option<(u16, u16)> {
        self.size
    }

    pub fn max_nr_ports(&self) -> u32 {
        self.max_nr_ports
    }

    pub fn counters(&self) -> ControlCounters {
        self.counters
    }

    /// Every port the driver set up, as it knows it now.
    pub fn ports(&self) -> impl Iterator<Item = &PortInfo> + '_ {
        self.ports.iter().map(|p| &p.info)
    }

    /// Serve control messages until a port satisfies `wanted`, up to `timeout_ns` (the device
    /// adds ports after DEVICE_READY, at its own pace). Without MULTIPORT only port 0 is
    /// looked at, at once. Err(Timeout) if none did.
    pub fn wait_for_port(
        &mut self,
        timeout_ns: u64,
        mut wanted: impl FnMut(&PortInfo) -> bool,
    ) -> Result<PortInfo, ConsoleError> {
        let deadline = self.platform.now_ns().saturating_add(timeout_ns);
        loop {
            if let Some(p) = self.ports.iter().find(|p| wanted(&p.info)) {
                return Ok(p.info.clone());
            }
            if self.control.is_none() || self.platform.now_ns() >= deadline {
                return Err(ConsoleError::Timeout {
                    queue: CONTROL_RX_QUEUE,
                });
            }
            if self.serve_control()? == 0 {
                let Some(c) = self.control.as_ref() else {
                    continue;
                };
                let slice = deadline
                    .saturating_sub(self.platform.now_ns())
                    .min(10_000_000);
                match self
                    .transport
                    .wait_for(CONTROL_RX_QUEUE, slice, || c.rx_q.has_used().then_some(()))
                {
                    Ok(()) | Err(VirtioError::Timeout) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    /// The port the device named `name`.
    pub fn port_named(&self, name: &str) -> Option<u32> {
        self.ports()
            .find(|p| p.present && p.name.as_deref() == Some(name))
            .map(|p| p.id)
    }

    fn port_index(&self, id: u32) -> Result<usize, ConsoleError> {
        match self.ports.iter().position(|p| p.info.id == id) {
            Some(i) if self.ports[i].info.present => Ok(i),
            _ => Err(ConsoleError::NoSuchPort(id)),
        }
    }

    /// Open port `id` (PORT_OPEN 1 to the device; needs MULTIPORT). Port 0 without MULTIPORT
    /// is always open.
    pub fn open(&mut self, id: u32) -> Result<(), ConsoleError> {
        let i = self.port_index(id)?;
        if self.control.is_none() {
            return if id == 0 {
                Ok(())
            } else {
                Err(ConsoleError::NoMultiport)
            };
        }
        self.send_control(id, control_event::PORT_OPEN, 1)?;
        self.ports[i].info.guest_open = true;
        Ok(())
    }

    /// Write all of `data` on port `id`, in chunks of up to [`TX_CHUNK`], each waited for.
    pub fn write(&mut self, id: u32, data: &[u8]) -> Result<(), ConsoleError> {
        let i = self.port_index(id)?;
        let (_, tx) = port_queues(id);
        let timeout = self.timeout_ns;
        for chunk in data.chunks(TX_CHUNK) {
            let port = &mut self.ports[i];
            let Some(buf) = port.tx_buf.as_mut() else {
                return Err(ConsoleError::Queue(QueueError::Broken));
            };
            buf.as_mut_slice()[..chunk.len()].copy_from_slice(chunk);
            port.tx_q.add(&[(buf.phys(), chunk.len() as u32)], &[], 0)?;
            if port.tx_q.kick_needed() {
                self.transport.notify(tx);
            }
            match self.transport.wait_used(tx, &mut port.tx_q, timeout) {
                Ok(_) => {}
                Err(VirtioError::Timeout) => {
                    // The buffer is still the device's: never reuse it.
                    port.tx_q.mark_broken();
                    return Err(ConsoleError::Timeout { queue: tx });
                }
                Err(VirtioError::Queue(e @ QueueError::BadUsedId { .. })) => {
                    // The buffer may still be the device's.
                    self.counters.bad_used += 1;
                    port.tx_q.mark_broken();
                    return Err(ConsoleError::Queue(e));
                }
                Err(VirtioError::Queue(QueueError::BadUsedLength { .. })) => {
                    // A transmit buffer is device-readable: the device wrote nothing into it
                    // whatever it says; the chain came back.
                    self.counters.bad_used += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Copy bytes that arrived on port `id` into `buf` without waiting; 0 if none.
    pub fn read(&mut self, id: u32, buf: &mut [u8]) -> Result<usize, ConsoleError> {
        let i = self.port_index(id)?;
        self.pull(i)?;
        let port = &mut self.ports[i];
        let n = buf.len().min(port.received.len());
        for (dst, src) in buf[..n].iter_mut().zip(port.received.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }

    /// Like [`Self::read`], waiting up to `timeout_ns` for at least one byte (with MULTIPORT
    /// serving control messages meanwhile). Err(Timeout) if none came.
    pub fn read_wait(
        &mut self,
        id: u32,
        buf: &mut [u8],
        timeout_ns: u64,
    ) -> Result<usize, ConsoleError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.platform.now_ns().saturating_add(timeout_ns);
        let (rx, _) = port_queues(id);
        loop {
            let n = self.read(id, buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.control.is_some() {
                self.serve_control()?;
            }
            let now = self.platform.now_ns();
            if now >= deadline {
                return Err(ConsoleError::Timeout { queue: rx });
            }
            let i = self.port_index(id)?;
            let q = &self.ports[i].rx_q;
            // Sleep until the receive queue moves (or a short slice passes for control).
            let slice = (deadline - now).min(10_000_000);
            match self
                .transport
                .wait_for(rx, slice, || q.has_used().then_some(()))
            {
                Ok(()) | Err(VirtioError::Timeout) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Move used receive buffers of port index `i` into `received` (while it holds less than
    /// a ring's worth), reposting each.
    fn pull(&mut self, i: usize) -> Result<(), ConsoleError> {
        let port = &mut self.ports[i];
        let mut reposted = false;
        while port.received.len() < RX_BUFFERS * RX_BUFFER_SIZE {
            let (slot, len) = match port.rx_q.pop_used() {
                None => break,
                Some(Ok((slot, len))) => (slot as usize, len as usize),
                Some(Err(QueueError::BadUsedLength { token, .. })) => {
                    // Nothing of it is trusted: the buffer goes back empty.
                    self.counters.bad_used += 1;
                    post_rx(port, token as usize)?;
                    reposted = true;
                    continue;
                }
                Some(Err(QueueError::BadUsedId { .. })) => {
                    self.counters.bad_used += 1;
                    continue;
                }
                Some(Err(e)) => return Err(e.into()),
            };
            let Some(region) = port.rx_region.as_ref() else {
                break;
            };
            let at = slot * RX_BUFFER_SIZE;
            port.received
                .extend(&region.as_slice()[at..at + len.min(RX_BUFFER_SIZE)]);
            post_rx(port, slot)?;
            reposted = true;
        }
        if reposted {
            self.kick_rx(i);
        }
        Ok(())
    }

    fn kick_rx(&mut self, i: usize) {
        let port = &mut self.ports[i];
        if port.rx_q.kick_needed() {
            self.transport.notify(port_queues(port.info.id).0);
        }
    }

    fn post_control(&mut self, slot: usize) -> Result<(), ConsoleError> {
        let Some(c) = self.control.as_mut() else {
            return Err(ConsoleError::NoMultiport);
        };
        let Some(region) = c.rx_region.as_ref() else {
            return Err(ConsoleError::Queue(QueueError::Broken));
        };
        let phys = region.phys() + (slot * CONTROL_BUFFER_SIZE) as u64;
        c.rx_q
            .add(&[], &[(phys, CONTROL_BUFFER_SIZE as u32)], slot as u64)?;
        Ok(())
    }

    /// Send one control message to the device and wait for it to be used.
    fn send_control(&mut self, id: u32, event: u16, value: u16) -> Result<(), ConsoleError> {
        let timeout = self.timeout_ns;
        let Some(c) = self.control.as_mut() else {
            return Err(ConsoleError::NoMultiport);
        };
        let Some(buf) = c.tx_buf.as_mut() else {
            return Err(ConsoleError::Queue(QueueError::Broken));
        };
        let msg = ControlHeader {
            id: U32::new(id),
            event: U16::new(event),
            value: U16::new(value),
        };
        buf.as_mut_slice()[..size_of::<ControlHeader>()].copy_from_slice(msg.as_bytes());
        c.tx_q
            .add(&[(buf.phys(), size_of::<ControlHeader>() as u32)], &[], 0)?;
        if c.tx_q.kick_needed() {
            self.transport.notify(CONTROL_TX_QUEUE);
        }
        match self
            .transport
            .wait_used(CONTROL_TX_QUEUE, &mut c.tx_q, timeout)
        {
            Ok(_) => Ok(()),
            Err(VirtioError::Queue(QueueError::BadUsedLength { .. })) => {
                self.counters.bad_used += 1;
                Ok(())
            }
            Err(VirtioError::Timeout) => {
                c.tx_q.mark_broken();
                Err(ConsoleError::Timeout {
                    queue: CONTROL_TX_QUEUE,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Handle every control message the device sent (MULTIPORT; nothing otherwise). Returns
    /// how many there were.
    pub fn serve_control(&mut self) -> Result<usize, ConsoleError> {
        let mut handled = 0;
        loop {
            let Some(c) = self.control.as_mut() else {
                return Ok(handled);
            };
            let (slot, len) = match c.rx_q.pop_used() {
                None => break,
                Some(Ok((slot, len))) => (slot as usize, len as usize),
                Some(Err(QueueError::BadUsedLength { token, .. })) => {
                    self.counters.bad_used += 1;
                    self.counters.messages += 1;
                    self.post_control(token as usize)?;
                    continue;
                }
                Some(Err(QueueError::BadUsedId { .. })) => {
                    self.counters.bad_used += 1;
                    continue;
                }
                Some(Err(e)) => return Err(e.into()),
            };
            let mut msg = [0u8; CONTROL_BUFFER_SIZE];
            if let Some(region) = c.rx_region.as_ref() {
                let at = slot * CONTROL_BUFFER_SIZE;
                msg[..len].copy_from_slice(&region.as_slice()[at..at + len]);
            }
            self.post_control(slot)?;
            self.handle_control(&msg[..len])?;
            handled += 1;
        }
        if let Some(c) = self.control.as_mut() {
            if c.rx_q.kick_needed() {
                self.transport.notify(CONTROL_RX_QUEUE);
            }
        }
        Ok(handled)
    }

    fn handle_control(&mut self, msg: &[u8]) -> Result<(), ConsoleError> {
        self.counters.messages += 1;
        let Ok((header, payload)) = ControlHeader::read_from_prefix(msg) else {
            self.counters.short += 1;
            return Ok(());
        };
        let (id, event, value) = (header.id.get(), header.event.get(), header.value.get());
        let known_event = matches!(
            event,
            control_event::DEVICE_ADD
                | control_event::DEVICE_REMOVE
                | control_event::CONSOLE_PORT
                | control_event::RESIZE
                | control_event::PORT_OPEN
                | control_event::PORT_NAME
        );
        if !known_event {
            self.counters.unknown_event += 1;
            return Ok(());
        }
        let index = self.ports.iter().position(|p| p.info.id == id);
        let Some(i) = index.filter(|_| id < self.max_nr_ports) else {
            self.counters.port_out_of_range += 1;
            if event == control_event::DEVICE_ADD && id < self.max_nr_ports {
                // A port the driver has no queues for: tell the device it is not taken.
                self.send_control(id, control_event::PORT_READY, 0)?;
            }
            return Ok(());
        };
        let info = &mut self.ports[i].info;
        match event {
            control_event::DEVICE_ADD => {
                info.present = true;
                self.send_control(id, control_event::PORT_READY, 1)?;
            }
            control_event::DEVICE_REMOVE => {
                *info = PortInfo {
                    id,
                    ..PortInfo::default()
                };
            }
            control_event::CONSOLE_PORT => {
                info.is_console = true;
                if info.present && !info.guest_open {
                    info.guest_open = true;
                    self.send_control(id, control_event::PORT_OPEN, 1)?;
                }
            }
            control_event::RESIZE => match ResizePayload::read_from_prefix(payload) {
                Ok((r, _)) if info.is_console => self.size = Some((r.cols.get(), r.rows.get())),
                Ok(_) => {}
                Err(_) => self.counters.short += 1,
            },
            control_event::PORT_OPEN => info.host_open = value != 0,
            control_event::PORT_NAME => {
                // Linux's names end at the message's end (a trailing NUL is allowed).
                let name = payload.strip_suffix(&[0]).unwrap_or(payload);
                match core::str::from_utf8(name) {
                    Ok(s) if s.len() <= NAME_MAX => info.name = Some(String::from(s)),
                    _ => self.counters.bad_name += 1,
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Reset the device, so that it no longer reads the rings or buffers.
    pub fn reset(&mut self) -> Result<(), ConsoleError> {
        Ok(self.transport.reset()?)
    }
}

/// Post receive buffer `slot` of `port`.
fn post_rx<P: Platform + ?Sized>(port: &mut Port<'_, P>, slot: usize) -> Result<(), ConsoleError> {
    let Some(region) = port.rx_region.as_ref() else {
        return Err(ConsoleError::Queue(QueueError::Broken));
    };
    if slot >= RX_BUFFERS {
        return Err(ConsoleError::Queue(QueueError::Broken));
    }
    let phys = region.phys() + (slot * RX_BUFFER_SIZE) as u64;
    port.rx_q
        .add(&[], &[(phys, RX_BUFFER_SIZE as u32)], slot as u64)?;
    Ok(())
}

impl<P: Platform + ?Sized> Drop for VirtioConsole<'_, P> {
    fn drop(&mut self) {
        // The device must be done with the buffers before they are freed; if it does not reset,
        // leak them rather than let it write freed memory.
        if self.transport.reset().is_err() {
            for p in &mut self.ports {
                p.rx_q.leak_rings();
                p.tx_q.leak_rings();
            }
            if let Some(c) = self.control.as_mut() {
                c.rx_q.leak_rings();
                c.tx_q.leak_rings();
            }
            // DmaBuffer has no destructor: dropping without `dma_free` leaks.
            return;
        }
        let control = self
            .control
            .as_mut()
            .map(|c| [c.rx_region.take(), c.tx_buf.take()]);
        for b in self
            .ports
            .iter_mut()
            .flat_map(|p| [p.rx_region.take(), p.tx_buf.take()])
            .chain(control.into_iter().flatten())
            .flatten()
        {
            self.platform.dma_free(b);
        }
    }
}
