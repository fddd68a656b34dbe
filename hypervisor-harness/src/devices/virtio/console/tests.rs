use super::control::{event, ControlMsg};
use super::port::PortShared;
use super::*;
use crate::devices::virtio::test_util::RecordingTrigger;
use std::io::Write;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const MEM: usize = 0x20_0000;
const BUFS: u64 = 0x10_0000;

fn mem() -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
}

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

struct Rig<'m> {
    mem: &'m Memory,
    mocks: Vec<MockSplitQueue<'m, Memory>>,
    dev: Console,
    ports: Vec<Arc<PortShared>>,
    sinks: Vec<Sink>,
    trigger: Arc<RecordingTrigger>,
    next_desc: Vec<u16>,
    next_buf: u64,
}

impl<'m> Rig<'m> {
    /// A console with `names.len()` ports (port 0 first), each connected to a sink.
    fn new(mem: &'m Memory, names: &[Option<&str>]) -> Self {
        let ports: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Arc::new(PortShared::new(n.map(String::from), i == 0)))
            .collect();
        let sinks: Vec<Sink> = ports
            .iter()
            .map(|p| {
                let s = Sink::default();
                p.connect(Box::new(s.clone()));
                s
            })
            .collect();
        let mut dev = Console::new(ports.clone(), 80, 24);
        let n = dev.queue_max_sizes().len();
        let mocks: Vec<_> = (0..n)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(0x4000 * i as u64), 64))
            .collect();
        let trigger = Arc::new(RecordingTrigger::default());
        let queues = mocks.iter().map(|m| m.create_queue().unwrap()).collect();
        dev.activate(Activation {
            mem: mem.clone(),
            features: dev.features(),
            queues,
            interrupt: trigger.clone(),
        })
        .unwrap();
        Self {
            mem,
            mocks,
            dev,
            ports,
            sinks,
            trigger,
            next_desc: vec![0; n],
            next_buf: BUFS,
        }
    }

    fn buf(&mut self, len: u32) -> u64 {
        let at = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(16);
        at
    }

    fn post(&mut self, queue: usize, descs: &[(u64, u32, u16)]) {
        let first = self.next_desc[queue];
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = first + i as u16 + 1;
                let flags = flags | if i + 1 < descs.len() { 1 } else { 0 };
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        self.mocks[queue].add_desc_chains(&raw, first).unwrap();
        self.next_desc[queue] += descs.len() as u16;
    }

    /// Post a transmit buffer holding `data` on `queue` and notify.
    fn transmit(&mut self, queue: usize, data: &[u8]) {
        let at = self.buf(data.len() as u32);
        self.mem.write_slice(data, GuestAddress(at)).unwrap();
        self.post(queue, &[(at, data.len() as u32, 0)]);
        self.dev.process_queue(queue).unwrap();
    }

    /// Post a receive buffer of `len` on `queue` (no notify); its address.
    fn post_rx(&mut self, queue: usize, len: u32) -> u64 {
        let at = self.buf(len);
        self.post(queue, &[(at, len, VRING_DESC_F_WRITE as u16)]);
        at
    }

    fn used(&self, queue: usize) -> Vec<(u32, u32)> {
        let used = self.mocks[queue].used_addr().0;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        (0..idx)
            .map(|i| {
                let at = used + 4 + 8 * u64::from(i);
                (
                    self.mem.read_obj(GuestAddress(at)).unwrap(),
                    self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
                )
            })
            .collect()
    }

    fn read(&self, at: u64, len: u32) -> Vec<u8> {
        let mut b = vec![0u8; len as usize];
        self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        b
    }

    fn counters(&self) -> ConsoleCounters {
        *lock(&self.dev.counters())
    }

    /// Control messages the device put in the control receive buffers at `bufs`.
    fn control_messages(&self, bufs: &[u64]) -> Vec<(ControlMsg, Vec<u8>)> {
        self.used(CONTROL_RX_QUEUE)
            .iter()
            .zip(bufs)
            .map(|(&(_, len), &at)| {
                let b = self.read(at, len);
                let (h, rest) = ControlMsg::parse(&b).unwrap();
                (h, rest.to_vec())
            })
            .collect()
    }

    fn send_control(&mut self, id: u32, ev: u16, value: u16) {
        self.transmit(
            CONTROL_TX_QUEUE,
            &ControlMsg::new(id, ev, value).encode(&[]),
        );
    }
}

#[test]
fn one_port_offers_size_without_multiport() {
    let m = mem();
    let rig = Rig::new(&m, &[None]);
    assert_eq!(rig.dev.features(), 1 << 32 | F_SIZE);
    assert_eq!(rig.dev.queue_max_sizes().len(), 2);
    let mut c = [0xff; CONFIG_LEN];
    rig.dev.read_config(0, &mut c);
    assert_eq!(c, [80, 0, 24, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    let mut tail = [0xff; 4];
    rig.dev.read_config(10, &mut tail);
    assert_eq!(tail, [0; 4], "reads past the end are zero");
}

#[test]
fn port0_transmit_reaches_the_host_and_input_the_guest() {
    let m = mem();
    let mut rig = Rig::new(&m, &[None]);
    rig.transmit(1, b"hello ");
    rig.transmit(1, b"world");
    assert_eq!(*lock(&rig.sinks[0].0), b"hello world");
    assert_eq!(rig.used(1).len(), 2);
    // Input before any buffer waits; a buffer posted later takes it.
    rig.ports[0].push_input(b"abcdefghij", Duration::from_millis(1), || false);
    rig.dev.process_queue(0).unwrap();
    assert!(rig.used(0).is_empty());
    let a = rig.post_rx(0, 4);
    let b = rig.post_rx(0, 100);
    rig.dev.process_queue(0).unwrap();
    assert_eq!(rig.used(0), [(0, 4), (1, 6)]);
    assert_eq!(rig.read(a, 4), b"abcd");
    assert_eq!(rig.read(b, 6), b"efghij");
    assert!(!rig.ports[0].has_input());
    assert_eq!(rig.ports[0].counters().to_guest, 10);
    assert_eq!(rig.ports[0].counters().from_guest, 11);
    assert!(rig.trigger.triggers().contains(&InterruptType::Queue(0)));
}

use std::time::Duration;

#[test]
fn multiport_handshake_then_data_on_the_second_port() {
    let m = mem();
    let mut rig = Rig::new(&m, &[None, Some("org.test.echo")]);
    assert_eq!(rig.dev.features() & F_MULTIPORT, F_MULTIPORT);
    assert_eq!(rig.dev.queue_max_sizes().len(), 6);
    let bufs: Vec<u64> = (0..8).map(|_| rig.post_rx(CONTROL_RX_QUEUE, 128)).collect();
    rig.send_control(u32::MAX, event::DEVICE_READY, 1);
    rig.send_control(0, event::PORT_READY, 1);
    rig.send_control(1, event::PORT_READY, 1);
    let msgs = rig.control_messages(&bufs);
    let heads: Vec<_> = msgs.iter().map(|(h, _)| (h.id, h.event, h.value)).collect();
    assert_eq!(
        heads,
        [
            (0, event::DEVICE_ADD, 0),
            (1, event::DEVICE_ADD, 0),
            (0, event::CONSOLE_PORT, 1),
            (0, event::PORT_OPEN, 1),
            (1, event::PORT_NAME, 1),
            (1, event::PORT_OPEN, 1),
        ]
    );
    assert_eq!(msgs[4].1, b"org.test.echo");
    // Input for port 1 waits until the guest opens it, then arrives with the open.
    rig.ports[1].push_input(b"to port 1", Duration::from_millis(1), || false);
    let rx1 = rig.post_rx(4, 64);
    rig.dev.process_queue(4).unwrap();
    assert!(rig.used(4).is_empty(), "port 1 not open yet");
    rig.send_control(1, event::PORT_OPEN, 1);
    assert_eq!(rig.used(4), [(0, 9)]);
    assert_eq!(rig.read(rx1, 9), b"to port 1");
    rig.transmit(5, b"from port 1");
    assert_eq!(*lock(&rig.sinks[1].0), b"from port 1");
    assert!(lock(&rig.sinks[0].0).is_empty());
    // The host going away is told to the guest.
    rig.ports[1].disconnect();
    rig.dev.process_queue(CONTROL_RX_QUEUE).unwrap();
    let msgs = rig.control_messages(&bufs);
    assert_eq!(
        msgs.last().unwrap().0,
        ControlMsg::new(1, event::PORT_OPEN, 0)
    );
    assert_eq!(rig.counters(), ConsoleCounters::default());
}

#[test]
fn bad_control_messages_and_chains_are_counted_not_fatal() {
    let m = mem();
    let mut rig = Rig::new(&m, &[None, Some("p")]);
    let _bufs: Vec<u64> = (0..8).map(|_| rig.post_rx(CONTROL_RX_QUEUE, 128)).collect();
    rig.transmit(CONTROL_TX_QUEUE, &[1, 2, 3]);
    rig.send_control(0, 0x4242, 0);
    rig.send_control(7, event::PORT_READY, 1);
    rig.send_control(0, event::PORT_READY, 1); // before DEVICE_READY: not added
    assert_eq!(rig.counters().bad_control, 4);
    // A transmit chain that is device-writable, and one outside RAM.
    let at = rig.buf(8);
    rig.post(1, &[(at, 8, VRING_DESC_F_WRITE as u16)]);
    rig.post(1, &[(MEM as u64 - 4, 64, 0)]);
    rig.dev.process_queue(1).unwrap();
    assert_eq!(rig.counters().malformed_chains, 2);
    assert_eq!(rig.used(1).len(), 2, "used anyway, length 0");
    // A notify of a queue nobody has.
    rig.dev.process_queue(99).unwrap();
    assert_eq!(rig.counters().stray_notifies, 1);
    // Still working.
    rig.send_control(u32::MAX, event::DEVICE_READY, 1);
    assert_eq!(rig.used(CONTROL_RX_QUEUE).len(), 2);
}

#[test]
fn control_queues_of_a_single_port_console_are_stray() {
    let m = mem();
    let mut rig = Rig::new(&m, &[None]);
    rig.dev.process_queue(CONTROL_TX_QUEUE).unwrap();
    assert_eq!(rig.counters().stray_notifies, 1);
}

#[test]
fn a_receive_buffer_outside_ram_loses_its_bytes_counted() {
    let m = mem();
    let mut rig = Rig::new(&m, &[None]);
    rig.ports[0].push_input(b"xyz", Duration::from_millis(1), || false);
    rig.post(0, &[(MEM as u64 + 0x1000, 16, VRING_DESC_F_WRITE as u16)]);
    rig.dev.process_queue(0).unwrap();
    assert_eq!(rig.counters().malformed_chains, 1);
    assert_eq!(rig.used(0), [(0, 0)]);
    let c = rig.ports[0].counters();
    assert_eq!((c.to_guest, c.input_lost, c.dropped), (0, 3, 0));
}

/// A small xorshift, so that the hostile-guest programs are the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Seeded programs of a hostile guest: chains of any direction, length and address (inside,
/// across the end of and outside RAM) on every queue, control messages of any bytes, notifies
/// of queues that do not exist, host input and disconnections in between. The model must not
/// panic, and every byte of host input is accounted for: delivered to the guest, counted as
/// lost at a bad buffer, or still waiting.
#[test]
fn hostile_guest_programs_never_panic_and_lose_no_input_uncounted() {
    for seed in 1..=300u64 {
        let m = mem();
        let mut rig = Rig::new(&m, &[None, Some("p1")]);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut pushed = [0u64; 2];
        let mut posted = vec![0u32; rig.mocks.len()];
        for _ in 0..64 {
            match rng.below(6) {
                0 | 1 => {
                    let queue = rng.below(rig.mocks.len() as u64) as usize;
                    if posted[queue] >= 48 {
                        continue;
                    }
                    let n = 1 + rng.below(3) as usize;
                    if rig.next_desc[queue] as usize + n > 64 {
                        continue;
                    }
                    let descs: Vec<(u64, u32, u16)> = (0..n)
                        .map(|_| {
                            let addr = match rng.below(4) {
                                0 => MEM as u64 - rng.below(64),
                                1 => rng.next(),
                                _ => BUFS + rng.below(0x8_0000),
                            };
                            let len = match rng.below(4) {
                                0 => rng.next() as u32,
                                1 => 0,
                                _ => rng.below(70_000) as u32,
                            };
                            let flags = if rng.below(2) == 0 {
                                VRING_DESC_F_WRITE as u16
                            } else {
                                0
                            };
                            (addr, len, flags)
                        })
                        .collect();
                    rig.post(queue, &descs);
                    posted[queue] += 1;
                }
                2 => {
                    let len = rng.below(20) as usize;
                    let mut msg: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    if len >= 8 && rng.below(2) == 0 {
                        // A plausible message: a small id and a known event.
                        msg[..4].copy_from_slice(&(rng.below(4) as u32).to_le_bytes());
                        msg[4..6].copy_from_slice(&(rng.below(8) as u16).to_le_bytes());
                        msg[6..8].copy_from_slice(&(rng.below(2) as u16).to_le_bytes());
                    }
                    if rig.next_desc[CONTROL_TX_QUEUE] < 64 && posted[CONTROL_TX_QUEUE] < 48 {
                        rig.transmit(CONTROL_TX_QUEUE, &msg);
                        posted[CONTROL_TX_QUEUE] += 1;
                    }
                }
                3 => {
                    let port = rng.below(2) as usize;
                    let data = vec![rng.next() as u8; rng.below(9000) as usize];
                    pushed[port] +=
                        rig.ports[port].push_input(&data, Duration::from_millis(1), || false)
                            as u64;
                }
                4 => {
                    let port = rng.below(2) as usize;
                    if rng.below(2) == 0 {
                        rig.ports[port].disconnect();
                    } else {
                        rig.ports[port].connect(Box::new(rig.sinks[port].clone()));
                    }
                }
                _ => {
                    // Errors (a ring the guest overran) are the transport's to act on.
                    let _ = rig.dev.process_queue(rng.below(10) as usize);
                }
            }
        }
        for (port, &n) in rig.ports.iter().zip(&pushed) {
            // What still waits, taken as the guest would (and counted delivered).
            let mut buf = vec![0u8; 4096];
            while port.take_input(&mut buf) > 0 {}
            let c = port.counters();
            assert_eq!(c.to_guest + c.input_lost, n, "seed {seed}: {c:?}");
        }
        let _ = rig.trigger.triggers();
    }
}

/// Rings laid so that the device's own writes feed the queue (the console fuzz target's
/// timeout, [`feed_itself`]): port 0's transmit pass and the control transmit pass end at
/// their bound with the one chain sent once, counted.
#[test]
fn a_transmit_queue_that_feeds_itself_ends_at_the_bound() {
    use crate::devices::virtio::drain::test_util::feed_itself;
    let m = mem();
    let mut rig = Rig::new(&m, &[None, Some("port1")]);
    let at = rig.buf(5);
    m.write_slice(b"hello", GuestAddress(at)).unwrap();
    rig.post(1, &[(at, 5, 0)]);
    feed_itself(&mut rig.dev.queues_mut()[1], &m, 0x8_0000);
    rig.dev.process_queue(1).unwrap();
    assert_eq!(*lock(&rig.sinks[0].0), b"hello");
    assert_eq!(rig.counters().drains_cut, 1);
    let msg = ControlMsg::new(0, event::DEVICE_READY, 1).encode(&[]);
    let at = rig.buf(msg.len() as u32);
    m.write_slice(&msg, GuestAddress(at)).unwrap();
    rig.post(CONTROL_TX_QUEUE, &[(at, msg.len() as u32, 0)]);
    feed_itself(&mut rig.dev.queues_mut()[CONTROL_TX_QUEUE], &m, 0x9_0000);
    rig.dev.process_queue(CONTROL_TX_QUEUE).unwrap();
    assert_eq!(rig.counters().drains_cut, 2);
    assert_eq!(rig.counters().bad_control, 0);
}
