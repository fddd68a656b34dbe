//! Host tests of the virtio-console driver against the fake device of `fake_console.rs`.

use super::console::{
    console_feature, port_queues, ConsoleError, VirtioConsole, MAX_PORTS, NAME_MAX, RX_BUFFERS,
    RX_BUFFER_SIZE, TX_CHUNK,
};
use super::fake::FakePlatform;
use super::fake_console::{
    bits, console_platform, deliver_control, ev, message, send_input, ConsoleState, Misbehave,
};
use super::pci::InterruptMode;
use std::cell::RefCell;
use std::rc::Rc;
use std::string::String;
use std::vec::Vec;

type Console<'p> = VirtioConsole<'p, FakePlatform>;

fn open(p: &FakePlatform, multiport: bool) -> Console<'_> {
    VirtioConsole::new(p, &p.function(), InterruptMode::Polled, multiport).unwrap()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ seed)
        .collect()
}

/// Read exactly `n` bytes of port `id`, feeding nothing more.
fn read_n(c: &mut Console<'_>, id: u32, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1000];
    while got.len() < n {
        let k = c.read_wait(id, &mut buf, 1_000_000_000).unwrap();
        got.extend_from_slice(&buf[..k]);
    }
    got
}

/// Let control messages flow both ways until none is left.
fn settle(p: &FakePlatform, c: &mut Console<'_>) {
    for _ in 0..8 {
        deliver_control(p);
        c.serve_control().unwrap();
    }
}

fn multiport_console(named: &[(u32, &str)]) -> (FakePlatform, Rc<RefCell<ConsoleState>>) {
    let (p, st) = console_platform(bits::VERSION_1 | bits::SIZE | bits::MULTIPORT, 4);
    for &(id, name) in named {
        st.borrow_mut().ports.push((id, Some(String::from(name))));
    }
    (p, st)
}

#[test]
fn negotiates_size_and_reads_cols_rows() {
    let (p, _st) = console_platform(bits::VERSION_1 | bits::SIZE | 1 << 2, 1);
    let c = open(&p, true);
    assert_eq!(c.features(), bits::VERSION_1 | console_feature::SIZE);
    assert_eq!(c.size(), Some((80, 25)));
    let ports: Vec<_> = c.ports().collect();
    assert_eq!(ports.len(), 1, "no MULTIPORT: port 0 alone");
    assert!(ports[0].present && ports[0].is_console);
}

#[test]
fn without_size_there_is_no_size() {
    let (p, _st) = console_platform(bits::VERSION_1, 1);
    let c = open(&p, true);
    assert_eq!(c.size(), None);
}

#[test]
fn multiport_is_declined_when_not_wanted() {
    let (p, st) = multiport_console(&[]);
    let c = open(&p, false);
    assert_eq!(c.features() & console_feature::MULTIPORT, 0);
    assert!(st.borrow().control_in.is_empty(), "no control traffic");
}

#[test]
fn port0_writes_reach_the_device_in_chunks() {
    let (p, st) = console_platform(bits::VERSION_1, 1);
    let mut c = open(&p, false);
    let data = pattern(3 * TX_CHUNK + 17, 1);
    c.write(0, &data).unwrap();
    c.write(0, b"!").unwrap();
    let st = st.borrow();
    assert_eq!(st.output[0][..data.len()], data[..]);
    assert_eq!(&st.output[0][data.len()..], b"!");
    assert_eq!(st.tx_chains, [TX_CHUNK, TX_CHUNK, TX_CHUNK, 17, 1]);
}

#[test]
fn port0_reads_sizes_from_one_byte_to_many_rings() {
    let (p, st) = console_platform(bits::VERSION_1, 1);
    let mut c = open(&p, false);
    let mut buf = [0u8; 16];
    assert_eq!(c.read(0, &mut buf).unwrap(), 0, "nothing sent yet");
    for (k, n) in [
        1usize,
        2,
        511,
        4096,
        4097,
        RX_BUFFERS * RX_BUFFER_SIZE * 3 + 5,
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(n, k as u8);
        // The device fills what is posted; the rest waits until the driver reposts.
        {
            let mut s = st.borrow_mut();
            s.input.resize_with(1, Default::default);
            s.input[0].extend(&data);
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 3000];
        while got.len() < n {
            p.process(0);
            let k = c.read(0, &mut buf).unwrap();
            got.extend_from_slice(&buf[..k]);
        }
        assert_eq!(got, data, "{n} bytes");
        assert!(st.borrow().input[0].is_empty());
    }
}

/// QEMU's contract on a receive queue: with no buffer posted it stops reading its socket, and
/// it reads on only when the driver notifies the queue after reposting (virtio-serial's
/// `handle_input` -> `qemu_chr_fe_accept_input`). Here the device fills the ring once and
/// then moves input only on a notify: read_wait alone must drain several rings' worth.
#[test]
fn reposted_buffers_are_notified_to_a_device_that_waits_for_the_kick() {
    let (p, st) = console_platform(bits::VERSION_1, 1);
    let mut c = open(&p, false);
    let n = RX_BUFFERS * RX_BUFFER_SIZE * 3 + 5;
    let data = pattern(n, 7);
    send_input(&p, &st, 0, &data);
    assert!(
        !st.borrow().input[0].is_empty(),
        "the ring holds less than the input"
    );
    p.dev.borrow_mut().notifies.clear();
    let mut got = Vec::new();
    let mut buf = [0u8; 3000];
    while got.len() < n {
        let k = c.read_wait(0, &mut buf, 1_000_000_000).unwrap();
        got.extend_from_slice(&buf[..k]);
    }
    assert_eq!(got, data);
    assert!(st.borrow().input[0].is_empty());
    let kicks = p.dev.borrow().notifies.iter().filter(|&&q| q == 0).count();
    assert!(
        kicks >= 3,
        "one notify at least per ring drained, got {kicks}"
    );
}

#[test]
fn read_wait_times_out_without_input() {
    let (p, _st) = console_platform(bits::VERSION_1, 1);
    let mut c = open(&p, false);
    let mut buf = [0u8; 4];
    assert_eq!(
        c.read_wait(0, &mut buf, 50_000_000),
        Err(ConsoleError::Timeout { queue: 0 })
    );
}

#[test]
fn multiport_handshake_names_and_opens_ports() {
    let (p, st) = multiport_console(&[(1, "org.test.echo")]);
    let mut c = open(&p, true);
    assert_eq!(c.max_nr_ports(), 4);
    settle(&p, &mut c);
    let s = st.borrow();
    assert_eq!(s.control_in[0], (u32::MAX, ev::DEVICE_READY, 1));
    assert!(s.control_in.contains(&(0, ev::PORT_READY, 1)));
    assert!(s.control_in.contains(&(1, ev::PORT_READY, 1)));
    assert!(
        s.control_in.contains(&(0, ev::PORT_OPEN, 1)),
        "the console port is opened at once"
    );
    assert!(
        !s.control_in.contains(&(1, ev::PORT_OPEN, 1)),
        "port 1 waits for open()"
    );
    drop(s);
    let p0 = c.ports().find(|i| i.id == 0).unwrap().clone();
    assert!(p0.present && p0.is_console && p0.host_open && p0.guest_open);
    assert_eq!(c.port_named("org.test.echo"), Some(1));
    c.open(1).unwrap();
    assert!(st.borrow().control_in.contains(&(1, ev::PORT_OPEN, 1)));
    // The ports the device did not add are not usable.
    assert_eq!(c.write(2, b"x"), Err(ConsoleError::NoSuchPort(2)));
    assert_eq!(
        c.counters().messages,
        6,
        "2 PORT_ADD, CONSOLE_PORT, PORT_NAME, 2 PORT_OPEN"
    );
    assert_eq!(c.counters().unknown_event + c.counters().short, 0);
}

#[test]
fn second_port_exchanges_data() {
    let (p, st) = multiport_console(&[(1, "org.test.echo")]);
    let mut c = open(&p, true);
    settle(&p, &mut c);
    c.open(1).unwrap();
    let data = pattern(100_000, 9);
    send_input(&p, &st, 1, &data[..40_000]);
    let mut got = read_n(&mut c, 1, 10);
    send_input(&p, &st, 1, &data[40_000..]);
    while got.len() < data.len() {
        p.process(port_queues(1).0);
        got.extend(read_n(&mut c, 1, 1));
    }
    assert_eq!(got, data);
    c.write(1, &data).unwrap();
    c.write(0, b"port0").unwrap();
    let s = st.borrow();
    assert_eq!(s.output[1], data);
    assert_eq!(s.output[0], b"port0");
}

#[test]
fn wait_for_port_serves_control_until_the_port_comes() {
    let (p, st) = multiport_console(&[(2, "late")]);
    let mut c = open(&p, true);
    // Nothing delivered yet: the device has not added any port.
    assert!(!c.ports().any(|i| i.present));
    c.set_timeout_ns(1_000_000_000);
    assert_eq!(
        c.wait_for_port(20_000_000, |i| i.name.is_some()),
        Err(ConsoleError::Timeout { queue: 2 }),
        "control messages are only delivered when the device processes queue 2"
    );
    deliver_control(&p);
    let p0 = c
        .wait_for_port(1_000_000_000, |i| i.id == 0 && i.present)
        .unwrap();
    assert!(p0.present);
    settle(&p, &mut c);
    let late = c
        .wait_for_port(1_000_000_000, |i| i.name.is_some())
        .unwrap();
    assert_eq!((late.id, late.name.as_deref()), (2, Some("late")));
    assert!(st.borrow().control_in.contains(&(2, ev::PORT_READY, 1)));
    // Without MULTIPORT only port 0, at once.
    let (p1, _st1) = console_platform(bits::VERSION_1, 1);
    let mut c1 = open(&p1, true);
    assert_eq!(c1.wait_for_port(1, |i| i.id == 0).unwrap().id, 0);
    assert!(c1.wait_for_port(1, |i| i.id == 1).is_err());
}

#[test]
fn garbage_control_messages_are_counted_not_fatal() {
    let (p, st) = multiport_console(&[(1, "ok")]);
    let mut c = open(&p, true);
    settle(&p, &mut c);
    let long = [b'x'; NAME_MAX + 1];
    let garbage = [
        vec![1, 2, 3],                                // short
        message(0, 99, 0, &[]),                       // unknown event
        message(0, ev::PORT_READY, 1, &[]),           // a driver's event
        message(MAX_PORTS + 7, ev::PORT_ADD, 0, &[]), // beyond max_nr_ports
        message(3, ev::PORT_ADD, 0, &[]),             // in range, never named
        message(1, ev::PORT_NAME, 0, &long),          // too long
        message(1, ev::PORT_NAME, 0, &[0xff, 0xfe]),  // not UTF-8
        message(0, ev::RESIZE, 0, &[1]),              // RESIZE without its size
        message(u32::MAX, ev::PORT_OPEN, 1, &[]),     // no such port
    ];
    for m in &garbage {
        st.borrow_mut().control_out.push_back(m.clone());
    }
    settle(&p, &mut c);
    let k = c.counters();
    assert_eq!(k.short, 2, "{k:?}");
    assert_eq!(k.unknown_event, 2, "{k:?}");
    assert_eq!(k.port_out_of_range, 2, "{k:?}");
    assert_eq!(k.bad_name, 2, "{k:?}");
    assert_eq!(c.port_named("ok"), Some(1), "the good name stays");
    // Port 3 was added and answered PORT_READY.
    assert!(st.borrow().control_in.contains(&(3, ev::PORT_READY, 1)));
    // A RESIZE that is whole takes effect on the console.
    let mut size = Vec::new();
    size.extend_from_slice(&132u16.to_le_bytes());
    size.extend_from_slice(&43u16.to_le_bytes());
    st.borrow_mut()
        .control_out
        .push_back(message(0, ev::RESIZE, 0, &size));
    settle(&p, &mut c);
    assert_eq!(c.size(), Some((132, 43)));
    // Data still flows.
    send_input(&p, &st, 0, b"still here");
    assert_eq!(read_n(&mut c, 0, 10), b"still here");
}

#[test]
fn wild_used_lengths_are_counted_and_buffers_reposted() {
    let (p, st) = console_platform(bits::VERSION_1, 1);
    let mut c = open(&p, false);
    st.borrow_mut().misbehave = Misbehave::RxUsedLen(RX_BUFFER_SIZE as u32 + 1);
    send_input(&p, &st, 0, &pattern(3 * RX_BUFFER_SIZE, 2));
    let mut buf = [0u8; 64];
    assert_eq!(
        c.read(0, &mut buf).unwrap(),
        0,
        "nothing of a bad buffer is read"
    );
    assert_eq!(c.counters().bad_used, 3);
    // Every buffer was reposted: the device can fill the whole ring again.
    st.borrow_mut().misbehave = Misbehave::No;
    let data = pattern(RX_BUFFERS * RX_BUFFER_SIZE, 3);
    send_input(&p, &st, 0, &data);
    let got = read_n(&mut c, 0, data.len());
    assert_eq!(got, data);
}

#[test]
fn wild_control_used_lengths_are_counted() {
    let (p, st) = multiport_console(&[]);
    let mut c = open(&p, true);
    st.borrow_mut().misbehave = Misbehave::ControlUsedLen(100_000);
    st.borrow_mut()
        .control_out
        .push_back(message(0, ev::PORT_OPEN, 1, &[]));
    settle(&p, &mut c);
    assert!(c.counters().bad_used >= 1);
    assert!(
        !c.ports().any(|i| i.host_open),
        "a bad message is not acted on"
    );
    st.borrow_mut().misbehave = Misbehave::No;
    settle(&p, &mut c);
    st.borrow_mut()
        .control_out
        .push_back(message(0, ev::PORT_OPEN, 1, &[]));
    settle(&p, &mut c);
    assert!(c.ports().any(|i| i.id == 0 && i.host_open));
}

#[test]
fn a_device_that_never_uses_transmit_buffers_times_out() {
    let (p, _st) = console_platform(bits::VERSION_1, 1);
    let mut c = open(&p, false);
    p.dev.borrow_mut().auto_process = false;
    c.set_timeout_ns(10_000_000);
    assert_eq!(c.write(0, b"x"), Err(ConsoleError::Timeout { queue: 1 }));
    assert!(c.write(0, b"y").is_err(), "the queue is not reused");
}

#[test]
fn dropping_frees_every_buffer() {
    let (p, _st) = multiport_console(&[(1, "a")]);
    let c = open(&p, true);
    assert!(!p.dma_live.borrow().is_empty());
    drop(c);
    assert!(p.dma_live.borrow().is_empty(), "{:?}", p.dma_live.borrow());
}

#[test]
fn not_a_console_is_refused() {
    let (p, _st) = console_platform(bits::VERSION_1, 1);
    p.cfg.borrow_mut()[2..4].copy_from_slice(&0x1042u16.to_le_bytes());
    assert!(matches!(
        VirtioConsole::new(&p, &p.function(), InterruptMode::Polled, true),
        Err(ConsoleError::NotConsole(Some(2)))
    ));
}
