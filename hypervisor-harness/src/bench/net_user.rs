//! `bench net`'s user-mode rows: the same guest workload through our harness's user-mode
//! network and through QEMU's slirp. The guest (static 10.0.2.15, the host alias 10.0.2.2 as
//! its peer) streams `tcp_tx` through the proxy to a TCP sink on the host's 127.0.0.1 and
//! times `rtt_udp` round trips to a UDP echo there, both started here on ports of their own
//! (`net_sink_port=`, `net_echo_port=`). Target: our throughput at least 1.2 times slirp's.

use super::net::{run_configs, BaseArgs, NetConfig, NetSection, NetTarget, SpawnChild};
use crate::error::HarnessError;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The rows' backend label.
pub const BACKEND: &str = "user";
/// The guest's part of the command line; the ports follow.
const GUEST_ARGS: &str = "net_ip=10.0.2.15/24 net_peer=10.0.2.2 net_workloads=rtt_udp,tcp_tx";
/// How often the services look at their stop flag.
const POLL: Duration = Duration::from_millis(100);

/// The host's side of the rows: the sink (bytes counted to the guest's FIN, then the
/// 16-byte report `total` LE + FNV-1a 64 LE the guest checks) and the UDP echo. Stopped and
/// joined when dropped.
pub struct HostServices {
    pub sink_port: u16,
    pub echo_port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HostServices {
    pub fn start() -> std::io::Result<Self> {
        let sink = TcpListener::bind("127.0.0.1:0")?;
        sink.set_nonblocking(true)?;
        let echo = UdpSocket::bind("127.0.0.1:0")?;
        echo.set_read_timeout(Some(POLL))?;
        let (sink_port, echo_port) = (sink.local_addr()?.port(), echo.local_addr()?.port());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let sink_thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match sink.accept() {
                    Ok((c, _)) => {
                        let _ = sink_one(c, &s);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL / 10),
                    Err(_) => break,
                }
            }
        });
        let s = stop.clone();
        let echo_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
        });
        Ok(Self {
            sink_port,
            echo_port,
            stop,
            threads: vec![sink_thread, echo_thread],
        })
    }
}

impl Drop for HostServices {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One sink connection: count and hash to the FIN, then report.
fn sink_one(mut c: TcpStream, stop: &AtomicBool) -> std::io::Result<()> {
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(POLL))?;
    let mut buf = vec![0u8; 256 << 10];
    let (mut total, mut fnv) = (0u64, 0xcbf2_9ce4_8422_2325u64);
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                for &b in &buf[..n] {
                    fnv = (fnv ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
    let mut report = [0u8; 16];
    report[..8].copy_from_slice(&total.to_le_bytes());
    report[8..].copy_from_slice(&fnv.to_le_bytes());
    c.write_all(&report)
}

/// virtio-net on `--net virtio:user` under our harness (I/O thread) and under QEMU.
pub fn configs(qemu_extra: &[String]) -> Vec<NetConfig> {
    let net = vec!["--net".to_string(), "virtio:user".to_string()];
    let mut harness_args = net.clone();
    harness_args.extend(["--io-mode".to_string(), "thread".to_string()]);
    let mut qemu_args = net;
    qemu_args.extend_from_slice(qemu_extra);
    vec![
        NetConfig {
            vmm: "harness-thread",
            sub: "run",
            nic: "virtio",
            backend: BACKEND,
            queues: 1,
            args: harness_args,
            wrapper: vec![],
        },
        NetConfig {
            vmm: "qemu",
            sub: "qemu",
            nic: "virtio",
            backend: BACKEND,
            queues: 1,
            args: qemu_args,
            wrapper: vec![],
        },
    ]
}

/// The guest's command line for these rows: `cmdline` plus the addresses and ports.
pub fn guest_args(cmdline: &str, services: &HostServices) -> String {
    format!(
        "{cmdline} {GUEST_ARGS} net_sink_port={} net_echo_port={}",
        services.sink_port, services.echo_port
    )
}

/// Run the user-mode rows into `section` (a note instead when the host services cannot start).
pub fn run_rows(
    section: &mut NetSection,
    base_args: &BaseArgs,
    qemu_extra: &[String],
    quick: bool,
    spawn: &mut SpawnChild,
) -> Result<(), HarnessError> {
    let services = match HostServices::start() {
        Ok(s) => s,
        Err(e) => {
            section.notes.push(format!(
                "user rows skipped: the loopback sink and echo: {e}"
            ));
            return Ok(());
        }
    };
    let user_base = |sub: &str, cmdline: &str| base_args(sub, &guest_args(cmdline, &services));
    run_configs(section, &configs(qemu_extra), &user_base, quick, spawn)
}

/// Our `tcp_tx` MB/s through the user-mode proxy over slirp's.
pub fn throughput_target(section: &NetSection) -> NetTarget {
    let mb = |vmm: &str| {
        section
            .rows
            .iter()
            .find(|r| r.backend == BACKEND && r.workload == "tcp_tx" && r.vmm.starts_with(vmm))
            .and_then(|r| r.mb_per_s())
    };
    let ratio = Some(mb("harness").zip(mb("qemu")).map(|(a, b)| a / b))
        .flatten()
        .filter(|v| v.is_finite())
        .map(|v| (v, "harness-thread virtio-net user q1 tcp_tx".to_string()));
    NetTarget::new(
        "user-mode harness/QEMU (slirp) tcp_tx MB/s",
        ">=",
        1.2,
        ratio,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::net::{rows_of, NetRow};

    /// A user row as the guest would report it: `mb_per_s` over one second.
    fn row(vmm: &str, workload: &str, mb_per_s: f64) -> NetRow {
        let cfg = &configs(&[])[usize::from(vmm == "qemu")];
        let line = format!(
            "# bench: net.{workload} n=1000 bytes={} total_ns=1000000000",
            (mb_per_s * 1e6) as u64
        );
        rows_of(cfg, &line, &[]).remove(0)
    }

    #[test]
    fn the_target_is_our_tcp_tx_over_slirps() {
        let mut s = NetSection::default();
        assert_eq!(throughput_target(&s).met, None);
        s.rows = vec![
            row("harness-thread", "tcp_tx", 300.0),
            row("qemu", "rtt_udp", 1.0),
            row("qemu", "tcp_tx", 200.0),
        ];
        let t = throughput_target(&s);
        assert_eq!((t.measured, t.met), (Some(1.5), Some(true)));
        s.rows[0] = row("harness-thread", "tcp_tx", 220.0);
        assert_eq!(throughput_target(&s).met, Some(false));
    }

    #[test]
    fn the_sink_reports_and_the_echo_answers() {
        let s = HostServices::start().unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", s.sink_port)).unwrap();
        c.write_all(b"abc").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut report = Vec::new();
        c.read_to_end(&mut report).unwrap();
        assert_eq!(report[..8], 3u64.to_le_bytes());
        // FNV-1a 64 of "abc".
        assert_eq!(report[8..], 0xe71f_a219_0541_574bu64.to_le_bytes());
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        u.send_to(b"ping", ("127.0.0.1", s.echo_port)).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(u.recv(&mut buf).unwrap(), 4);
        assert!(guest_args("bench=net", &s).contains(&format!("net_sink_port={}", s.sink_port)));
    }
}
