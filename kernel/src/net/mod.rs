//! The kernel's TCP/IP stack: smoltcp over any [`Nic`], in ring 3. [`NicDevice`] is smoltcp's
//! `phy::Device` over the NIC (frames batched, one [`Nic::flush`] per poll round, checksums
//! left to the device when it offers offload); [`Stack`] adds the interface (a static address
//! or DHCPv4), the sockets, the platform clock and a wait that sleeps for the NIC's interrupt
//! or smoltcp's next deadline.

pub mod select;

use crate::platform::PLATFORM;
use crate::{bootinfo, time};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use drivers::net::checksum;
use drivers::net::{Nic, NicError, NicEvents, Offloads, RxInfo, TxChecksum, ETH_FRAME_MAX};
use drivers::platform::Platform;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::dhcpv4;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};

/// Frames taken from the NIC per poll round at most, so that a flood cannot starve
/// transmission (smoltcp's ingress loop runs while the device has frames).
const RX_BUDGET: usize = 64;
/// Queue pairs whose received frames are counted apart.
pub const MAX_COUNTED_QUEUES: usize = 8;
/// How long a send waits for the device to give back a TX buffer before the frame is dropped
/// (TCP retransmits it; the drop is counted).
const TX_FULL_WAIT_NS: u64 = 50_000_000;

/// smoltcp's clock: the TSC through [`time::now_ns`].
pub fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((time::now_ns() / 1000) as i64)
}

/// What the bridge did, beside the NIC's own counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct BridgeCounters {
    pub rx_frames: u64,
    /// Received frames per queue (pair) the driver said they came from.
    pub rx_per_queue: [u64; MAX_COUNTED_QUEUES],
    /// Frames whose TCP/UDP checksum the device vouched for (smoltcp skipped it).
    pub rx_checksum_by_device: u64,
    /// Frames the device did not vouch for, checked here instead.
    pub rx_checksum_here: u64,
    /// Frames dropped for a wrong TCP/UDP checksum.
    pub rx_bad_checksum: u64,
    /// Received frames longer than the bridge's buffer (a driver bug), dropped.
    pub rx_oversize: u64,
    pub tx_frames: u64,
    /// Frames sent with their checksum left to the device.
    pub tx_partial: u64,
    /// Frames the NIC refused (ring full past the wait, link down, device error).
    pub tx_dropped: u64,
    /// Rounds that found the TX ring full and had to wait.
    pub tx_full_waits: u64,
    /// [`Nic::flush`] calls (at most one per poll round).
    pub flushes: u64,
}

/// The transmit half: what a TX token needs, apart from the RX buffer an RX token borrows.
struct TxPath<'n> {
    nic: &'n mut dyn Nic,
    offloads: Offloads,
    frame: Vec<u8>,
    /// Frames queued since the last flush.
    queued: usize,
    counters: BridgeCounters,
    last_error: Option<NicError>,
}

impl TxPath<'_> {
    /// Hand `self.frame[..len]` to the NIC, its checksum finished as the offloads say.
    fn send(&mut self, len: usize) {
        let frame = &mut self.frame[..len];
        let mode = if self.offloads.tx_checksum {
            // smoltcp left the TCP/UDP checksum undone (see `capabilities`).
            match checksum::prepare_partial_checksum(frame) {
                Some(partial) => {
                    self.counters.tx_partial += 1;
                    partial
                }
                None => {
                    finish_checksum_in_software(frame);
                    TxChecksum::Complete
                }
            }
        } else {
            TxChecksum::Complete
        };
        let mut result = self.nic.send(&self.frame[..len], mode);
        if result == Err(NicError::TxFull) {
            // Every buffer is queued or in flight: let the device see the queued ones, then
            // wait (bounded) for it to finish one. `send` reclaims before it says full.
            self.counters.tx_full_waits += 1;
            self.flush();
            let deadline = time::now_ns() + TX_FULL_WAIT_NS;
            while result == Err(NicError::TxFull) && time::now_ns() < deadline {
                core::hint::spin_loop();
                result = self.nic.send(&self.frame[..len], mode);
            }
        }
        match result {
            Ok(()) => {
                self.queued += 1;
                self.counters.tx_frames += 1;
            }
            Err(e) => {
                self.counters.tx_dropped += 1;
                self.last_error = Some(e);
            }
        }
    }

    /// One notification for everything queued since the last.
    fn flush(&mut self) {
        if self.queued == 0 {
            return;
        }
        self.queued = 0;
        self.counters.flushes += 1;
        if let Err(e) = self.nic.flush() {
            self.last_error = Some(e);
        }
    }
}

/// A TCP/UDP segment with its checksum left undone that cannot be offloaded (the IP length
/// does not reach the end of the frame): finish it here over the datagram only.
fn finish_checksum_in_software(frame: &mut [u8]) {
    let Some(l4) = checksum::parse_ipv4_l4(frame) else {
        return;
    };
    let at = l4.l4_start + usize::from(l4.checksum_offset);
    frame[at..at + 2].copy_from_slice(&checksum::fold(l4.pseudo_sum).to_be_bytes());
    checksum::complete_partial_checksum(
        &mut frame[..l4.l4_start + l4.l4_len],
        l4.l4_start,
        usize::from(l4.checksum_offset),
    );
}

/// smoltcp's `phy::Device` over a [`Nic`].
///
/// Checksums: smoltcp's `ChecksumCapabilities` hold for the whole interface, while the device
/// vouches for received frames one by one. So with RX offload smoltcp is told to skip TCP/UDP
/// verification, and the bridge verifies each frame the driver did not mark valid before
/// smoltcp sees it (the IPv4 header checksum smoltcp always checks). With TX offload smoltcp
/// leaves TCP/UDP checksums undone and the bridge prepares the pseudo-header sum for the
/// device ([`TxChecksum::Partial`]).
pub struct NicDevice<'n> {
    tx: TxPath<'n>,
    rx_frame: Vec<u8>,
    /// Frames this poll round may still take; 0 means the round stopped with frames waiting.
    rx_budget: usize,
}

impl<'n> NicDevice<'n> {
    pub fn new(nic: &'n mut dyn Nic) -> Self {
        let offloads = nic.offloads();
        Self {
            tx: TxPath {
                nic,
                offloads,
                frame: vec![0; ETH_FRAME_MAX],
                queued: 0,
                counters: BridgeCounters::default(),
                last_error: None,
            },
            rx_frame: vec![0; ETH_FRAME_MAX],
            rx_budget: RX_BUDGET,
        }
    }

    pub fn nic(&mut self) -> &mut dyn Nic {
        self.tx.nic
    }

    pub fn counters(&self) -> BridgeCounters {
        self.tx.counters
    }

    /// The last error the NIC reported (sending, flushing or receiving), if any.
    pub fn last_error(&self) -> Option<NicError> {
        self.tx.last_error
    }

    /// Whether smoltcp should trust this frame's TCP/UDP checksum; counts what it decided.
    fn checksum_ok(&mut self, len: usize, info: RxInfo) -> bool {
        if !self.tx.offloads.rx_checksum {
            return true; // smoltcp verifies
        }
        let c = &mut self.tx.counters;
        if info.checksum_valid {
            c.rx_checksum_by_device += 1;
            return true;
        }
        match checksum::verify_l4_checksum(&self.rx_frame[..len]) {
            Some(false) => {
                c.rx_bad_checksum += 1;
                false
            }
            Some(true) => {
                c.rx_checksum_here += 1;
                true
            }
            None => true, // not TCP/UDP over IPv4
        }
    }
}

pub struct NicRxToken<'a>(&'a [u8]);
pub struct NicTxToken<'a, 'n>(&'a mut TxPath<'n>);

impl phy::RxToken for NicRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for NicTxToken<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let tx = self.0;
        if tx.frame.len() < len {
            tx.frame.resize(len, 0);
        }
        let r = f(&mut tx.frame[..len]);
        tx.send(len);
        r
    }
}

impl<'n> phy::Device for NicDevice<'n> {
    type RxToken<'a>
        = NicRxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = NicTxToken<'a, 'n>
    where
        Self: 'a;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        while self.rx_budget > 0 {
            self.rx_budget -= 1;
            // The driver lends its buffer only during the callback: copy the frame out.
            let buf = &mut self.rx_frame;
            let mut got = None;
            let mut oversize = false;
            let more = self
                .tx
                .nic
                .receive(
                    &mut |frame: &[u8], info: RxInfo| match buf.get_mut(..frame.len()) {
                        Some(dst) => {
                            dst.copy_from_slice(frame);
                            got = Some((frame.len(), info));
                        }
                        None => oversize = true,
                    },
                );
            match more {
                Ok(true) => {}
                Ok(false) => {
                    self.rx_budget = RX_BUDGET; // nothing waiting: the round is not cut short
                    return None;
                }
                Err(e) => {
                    self.tx.last_error = Some(e);
                    return None;
                }
            }
            self.tx.counters.rx_oversize += u64::from(oversize);
            let Some((len, info)) = got else { continue };
            let c = &mut self.tx.counters;
            c.rx_frames += 1;
            if let Some(q) = c.rx_per_queue.get_mut(usize::from(info.queue)) {
                *q += 1;
            }
            if !self.checksum_ok(len, info) {
                continue;
            }
            return Some((NicRxToken(&self.rx_frame[..len]), NicTxToken(&mut self.tx)));
        }
        None
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(NicTxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETH_FRAME_MAX;
        let o = self.tx.offloads;
        // Which direction smoltcp still does for TCP and UDP (ICMP and the IPv4 header it
        // always does: the device finishes only TCP/UDP).
        let l4 = match (o.tx_checksum, o.rx_checksum) {
            (false, false) => Checksum::Both,
            (true, false) => Checksum::Rx,
            (false, true) => Checksum::Tx,
            (true, true) => Checksum::None,
        };
        caps.checksum.tcp = l4;
        caps.checksum.udp = l4;
        caps
    }
}

/// How the interface gets its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSetup {
    Static(Ipv4Cidr),
    Dhcp,
}

/// The network keys of the kernel command line.
#[derive(Debug, Clone, Copy)]
pub struct NetArgs {
    /// `net_ip=A.B.C.D[/N]` or `net_ip=dhcp`; default 192.168.76.2/24.
    pub ip: IpSetup,
    /// `net_peer=A.B.C.D`: the host peer; default 192.168.76.1.
    pub peer: Ipv4Address,
    /// `net_gw=A.B.C.D`: the default route of a static address (a peer off its subnet is
    /// reached through it, as behind a NAT gateway); default none.
    pub gateway: Option<Ipv4Address>,
    /// `net_model=virtio|e1000|rtl8139`: the kind of NIC to drive; `None`: the first kind
    /// present ([`select::NicKind::ALL`]).
    pub model: Option<select::NicKind>,
    /// `net_model=each`: every NIC of the VM in turn, in bus order, each on its own network
    /// (a test passes when it passes on all of them).
    pub each: bool,
    /// `net_nic=N`: which NIC of that kind (0: the first).
    pub nic: usize,
    /// `net_expect_link=down`: the host set the link down; the link test must see that.
    pub expect_link_down: bool,
}

pub const DEFAULT_IP: Ipv4Cidr = Ipv4Cidr::new(Ipv4Address::new(192, 168, 76, 2), 24);
pub const DEFAULT_PEER: Ipv4Address = Ipv4Address::new(192, 168, 76, 1);

impl NetArgs {
    pub fn from_cmdline() -> Result<Self, String> {
        let info = bootinfo::get();
        let ip =
            match info.arg("net_ip") {
                None => IpSetup::Static(DEFAULT_IP),
                Some("dhcp") => IpSetup::Dhcp,
                Some(v) => IpSetup::Static(parse_cidr(v).ok_or_else(|| {
                    alloc::format!("net_ip={v:?} is not A.B.C.D, A.B.C.D/N or dhcp")
                })?),
            };
        let peer = match info.arg("net_peer") {
            None => DEFAULT_PEER,
            Some(v) => v
                .parse()
                .map_err(|_| alloc::format!("net_peer={v:?} is not A.B.C.D"))?,
        };
        let gateway = match info.arg("net_gw") {
            None => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| alloc::format!("net_gw={v:?} is not A.B.C.D"))?,
            ),
        };
        let nic = match info.arg("net_nic") {
            None => 0,
            Some(v) => v
                .parse()
                .map_err(|_| alloc::format!("net_nic={v:?} is not a number"))?,
        };
        let each = info.arg("net_model") == Some("each");
        let model = match info.arg("net_model") {
            None | Some("each") => None,
            Some(v) => Some(select::NicKind::parse(v).ok_or_else(|| {
                alloc::format!("net_model={v:?} is not virtio, e1000, rtl8139 or each")
            })?),
        };
        let expect_link_down = match info.arg("net_expect_link") {
            None | Some("up") => false,
            Some("down") => true,
            Some(v) => return Err(alloc::format!("net_expect_link={v:?} is not up or down")),
        };
        Ok(Self {
            ip,
            peer,
            gateway,
            model,
            each,
            nic,
            expect_link_down,
        })
    }
}

/// `A.B.C.D` (a /24) or `A.B.C.D/N`.
fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, l.parse().ok().filter(|l| *l <= 32)?),
        None => (s, 24),
    };
    Some(Ipv4Cidr::new(addr.parse().ok()?, len))
}

/// The address DHCP gave, the router, and the first name server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpLease {
    pub address: Ipv4Cidr,
    pub router: Option<Ipv4Address>,
    pub dns: Option<Ipv4Address>,
}

/// The interface, its sockets and its device.
pub struct Stack<'n> {
    pub device: NicDevice<'n>,
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    pub lease: Option<DhcpLease>,
    /// Interrupts on the NIC's vectors at the last `handle_interrupt`.
    irqs_seen: u64,
    /// Whether the NIC interrupts (else every wait is a busy poll).
    interrupts: bool,
    /// Link changes the NIC reported.
    pub link_changes: u64,
    pub events: NicEvents,
}

impl<'n> Stack<'n> {
    /// Bring up an interface on `nic`: its MAC, `ip`, interrupts on if the NIC has them.
    pub fn new(nic: &'n mut dyn Nic, ip: IpSetup) -> Result<Self, String> {
        let mac = nic.mac();
        if mac[0] & 1 != 0 {
            return Err(alloc::format!("the NIC's MAC {mac:02x?} is not unicast"));
        }
        let interrupts = nic.set_interrupts(true);
        let mut device = NicDevice::new(nic);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        // TCP sequence numbers and ephemeral ports: different on every boot.
        config.random_seed = time::rdtsc();
        let mut iface = Interface::new(config, &mut device, now());
        let mut sockets = SocketSet::new(Vec::new());
        let dhcp = match ip {
            IpSetup::Static(cidr) => {
                iface.update_ip_addrs(|a| {
                    let _ = a.push(IpCidr::Ipv4(cidr));
                });
                None
            }
            IpSetup::Dhcp => Some(sockets.add(dhcpv4::Socket::new())),
        };
        Ok(Self {
            device,
            iface,
            sockets,
            dhcp,
            lease: None,
            irqs_seen: 0,
            interrupts,
            link_changes: 0,
            events: NicEvents::default(),
        })
    }

    /// Whether the NIC is interrupt-driven (else polled).
    pub fn interrupts(&self) -> bool {
        self.interrupts
    }

    /// One round: service the NIC's interrupt if one came, let smoltcp take what arrived
    /// (at most [`RX_BUDGET`] frames) and send what it has, then one flush for the batch.
    pub fn poll(&mut self) {
        self.service_interrupt();
        self.device.rx_budget = RX_BUDGET;
        self.iface.poll(now(), &mut self.device, &mut self.sockets);
        self.device.tx.flush();
        if let Some(h) = self.dhcp {
            self.dhcp_event(h);
        }
    }

    fn service_interrupt(&mut self) {
        let nic = &mut *self.device.tx.nic;
        let count: u64 = nic
            .interrupt_vectors()
            .iter()
            .map(|&v| PLATFORM.interrupt_count(v))
            .sum();
        // Polled NICs look at their rings on every round.
        if count == self.irqs_seen && self.interrupts {
            return;
        }
        self.irqs_seen = count;
        let ev = nic.handle_interrupt();
        self.events.rx |= ev.rx;
        self.events.tx |= ev.tx;
        if ev.link_changed {
            self.events.link_changed = true;
            self.link_changes += 1;
        }
    }

    fn dhcp_event(&mut self, h: SocketHandle) {
        let event = self.sockets.get_mut::<dhcpv4::Socket>(h).poll();
        match event {
            None => {}
            Some(dhcpv4::Event::Configured(cfg)) => {
                let lease = DhcpLease {
                    address: cfg.address,
                    router: cfg.router,
                    dns: cfg.dns_servers.first().copied(),
                };
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(lease.address));
                });
                match lease.router {
                    Some(r) => {
                        let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                    }
                    None => {
                        self.iface.routes_mut().remove_default_ipv4_route();
                    }
                }
                self.lease = Some(lease);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                self.iface.update_ip_addrs(|a| a.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                self.lease = None;
            }
        }
    }

    /// Poll until `done` holds or `timeout_ns` passes (`false`). Between rounds it sleeps for
    /// an interrupt (the NIC's, or the 100 Hz tick that bounds every sleep) unless smoltcp
    /// has work due now, frames were left waiting, or the NIC is polled.
    pub fn poll_until(&mut self, timeout_ns: u64, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let deadline = time::now_ns().saturating_add(timeout_ns);
        loop {
            let epoch = PLATFORM.interrupt_epoch();
            self.poll();
            if done(self) {
                return true;
            }
            if time::now_ns() >= deadline {
                return false;
            }
            self.wait(epoch);
        }
    }

    /// Sleep until something may have happened since `epoch` (see [`Stack::poll_until`]).
    fn wait(&mut self, epoch: u64) {
        if !self.interrupts || self.device.rx_budget == 0 || self.device.tx.queued != 0 {
            return;
        }
        match self.iface.poll_delay(now(), &self.sockets) {
            Some(d) if d.total_micros() == 0 => {}
            // Sooner deadlines than the tick still wait for it: smoltcp's timers (delayed
            // ACKs, retransmissions) tolerate 10 ms of lateness.
            _ => PLATFORM.wait_for_interrupt(epoch),
        }
    }
}
