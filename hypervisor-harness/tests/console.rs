//! virtio-console end to end: the kernel's `console_roundtrip` echoes framed data (le32
//! length, then the bytes; length 0 ends a port's session) on port 0 and then on the named
//! port `org.test.echo`, while the host sends frames of many sizes up to megabytes through the
//! sockets of `--console socket:PATH --console-port NAME=socket:PATH` and checks every echoed
//! byte, and the guest's FNV-1a of what it received against its own. Under our harness's
//! model and under QEMU's virtio-serial-pci (virtconsole, virtserialport) with its defaults.

mod common;

use common::{
    assert_usage_error, connect_unix, drive_console_prompt, harness, have_kvm, have_qemu, passed,
    text, TempDir, KERNEL,
};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const PORT_NAME: &str = "org.test.echo";
/// Frame sizes, each way, on each port: edges of the guest's 4 KiB receive buffers and 32 KiB
/// transmit chunks, and megabytes.
const SIZES: &[usize] = &[
    1,
    2,
    3,
    7,
    100,
    4095,
    4096,
    4097,
    32 * 1024 + 1,
    65536,
    100_000,
    1 << 20,
    (1 << 20) + 12345,
    3 << 20,
];

/// A byte stream that differs per frame and offset.
fn payload(frame: usize, len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(151) ^ (i >> 9) as u8 ^ (frame as u8) ^ seed)
        .collect()
}

fn fnv(fnv: &mut u64, data: &[u8]) {
    for &b in data {
        *fnv = (*fnv ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
}

/// Most bytes sent and not yet echoed back. QEMU's virtconsole (port 0) drops what its
/// socket does not take at once: `flush_buf` in hw/char/virtio-console.c throttles only
/// non-console ports, and a console's chunk that meets EAGAIN is returned to the guest as
/// sent (its trace `virtio_console_flush_buf port 0, in_len 32768, out_len -1` in a run that
/// came back 32768 bytes short). So the echo waiting in QEMU's socket must always fit the
/// socket's buffer (212992 bytes of skb truesize by default, up to twice the data for 4 KiB
/// writes): holding the unechoed bytes to 64 KiB keeps it there however late we read.
const ECHO_WINDOW: usize = 64 * 1024;
/// How long the sender waits for the echo to make room in the window.
const ECHO_WAIT: Duration = Duration::from_secs(120);

/// Bytes of the echo read so far, shared by the reader and the sender.
#[derive(Default)]
struct Echoed {
    bytes: Mutex<usize>,
    moved: Condvar,
}

impl Echoed {
    fn set(&self, n: usize) {
        *self.bytes.lock().unwrap() = n;
        self.moved.notify_all();
    }

    /// Wait until fewer than ECHO_WINDOW of `sent` bytes are unechoed; how many more may go.
    fn room(&self, sent: usize) -> std::io::Result<usize> {
        let echoed = self.bytes.lock().unwrap();
        let (echoed, wait) = self
            .moved
            .wait_timeout_while(echoed, ECHO_WAIT, |e| {
                sent.saturating_sub(*e) >= ECHO_WINDOW
            })
            .unwrap();
        if wait.timed_out() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no echo of {} bytes sent", sent.saturating_sub(*echoed)),
            ));
        }
        Ok(ECHO_WINDOW - sent.saturating_sub(*echoed))
    }
}

/// Send every frame of SIZES (and the end frame) on `stream` while reading the echo back,
/// never more than ECHO_WINDOW ahead of it; checks the echo byte for byte and returns
/// (frames, bytes, FNV-1a of the payloads).
fn drive(stream: UnixStream, seed: u8) -> (usize, usize, u64) {
    let mut expected = Vec::new();
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    for (i, &n) in SIZES.iter().enumerate() {
        let p = payload(i, n, seed);
        fnv(&mut sum, &p);
        expected.extend_from_slice(&(n as u32).to_le_bytes());
        expected.extend_from_slice(&p);
    }
    expected.extend_from_slice(&0u32.to_le_bytes());
    let mut writer = stream.try_clone().unwrap();
    let to_send = expected.clone();
    let echoed = Arc::new(Echoed::default());
    let window = Arc::clone(&echoed);
    // Writing and reading at once: the guest echoes while a frame is still arriving.
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut sent = 0;
        while sent < to_send.len() {
            let n = window.room(sent)?.min(to_send.len() - sent);
            writer.write_all(&to_send[sent..sent + n])?;
            sent += n;
        }
        Ok(())
    });
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut got = vec![0u8; expected.len()];
    let mut done = 0;
    while done < got.len() {
        match reader.read(&mut got[done..]) {
            Ok(0) => panic!("echo ended after {done} of {} bytes", expected.len()),
            Ok(n) => done += n,
            Err(e) => panic!("echo after {done} of {} bytes: {e}", expected.len()),
        }
        echoed.set(done);
    }
    sender.join().unwrap().unwrap();
    if let Some(at) = got.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("echo differs at byte {at} of {}", expected.len());
    }
    (SIZES.len(), SIZES.iter().sum(), sum)
}

/// Run `console_roundtrip` under `vmm` (`run` or `qemu`) with port 0 and the named port on
/// sockets; drive both, then check the guest's own account. Returns the output and, under
/// our harness, the run's notes (--exits-json).
fn roundtrip(vmm: &str, tag: &str) -> (String, Vec<String>) {
    let dir = TempDir::new(tag);
    let json = dir.0.join("exits.json");
    let p0: PathBuf = dir.0.join("console.sock");
    let p1: PathBuf = dir.0.join("port1.sock");
    let child = harness()
        .args([vmm, "--kernel", KERNEL, "--timeout", "180"])
        .arg("--console")
        .arg(format!("socket:{}", p0.display()))
        .arg("--console-port")
        .arg(format!("{PORT_NAME}=socket:{}", p1.display()))
        .args(["--cmdline", "tests=console_roundtrip"])
        .args(if vmm == "run" {
            vec!["--exits-json".to_string(), json.display().to_string()]
        } else {
            Vec::new()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let s0 = connect_unix(&p0);
    let s1 = connect_unix(&p1);
    let r0 = drive(s0, 0x00);
    let r1 = drive(s1, 0x5a);
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(passed(&t, "console_roundtrip"), "{t}");
    for (port, (frames, bytes, sum)) in [("0", r0), ("1", r1)] {
        let line = format!("# console: port {port}: frames {frames} bytes {bytes} fnv {sum:#018x}");
        assert!(t.contains(&line), "{line:?} not in\n{t}");
    }
    assert!(
        t.contains(&format!("# console: port 1 is \"{PORT_NAME}\"")),
        "{t}"
    );
    let notes = std::fs::read_to_string(&json)
        .ok()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .and_then(|doc| {
            let notes = doc["notes"].as_array()?.iter();
            Some(
                notes
                    .filter_map(|n| Some(n.as_str()?.to_string()))
                    .collect(),
            )
        })
        .unwrap_or_default();
    (t, notes)
}

#[test]
fn round_trips_of_many_sizes_on_both_ports_under_the_harness() {
    if !have_kvm("round_trips_of_many_sizes_on_both_ports_under_the_harness") {
        return;
    }
    let (_, notes) = roundtrip("run", "console-harness");
    // Our model's account: every byte each way, nothing refused or dropped.
    let bytes: usize = SIZES.iter().sum::<usize>() + 4 * (SIZES.len() + 1);
    let note = notes
        .iter()
        .find(|l| l.starts_with("console-counters:"))
        .unwrap_or_else(|| panic!("no console-counters note in {notes:?}"));
    for port in ["port0(console)", &format!("port1({PORT_NAME})")] {
        let want = format!("{port} to_guest={bytes} from_guest={bytes} dropped=0");
        assert!(note.contains(&want), "{want:?} not in {note}");
    }
    assert!(
        note.contains("bad_control=0 control_dropped=0 malformed_chains=0 stray_notifies=0"),
        "{note}"
    );
}

#[test]
fn round_trips_of_many_sizes_on_both_ports_under_qemu() {
    if !have_kvm("round_trips_of_many_sizes_on_both_ports_under_qemu")
        || !have_qemu("round_trips_of_many_sizes_on_both_ports_under_qemu")
    {
        return;
    }
    roundtrip("qemu", "console-qemu");
}

#[test]
fn console_arguments_are_checked() {
    let o = harness()
        .args(["run", "--kernel", KERNEL, "--console", "file:/x"])
        .output()
        .unwrap();
    assert_usage_error(&o, "expected stdio or socket:PATH");
    let o = harness()
        .args(["run", "--kernel", KERNEL, "--console-port", "a=socket:/x"])
        .output()
        .unwrap();
    assert_usage_error(&o, "required arguments");
    let o = harness()
        .args(["qemu", "--kernel", KERNEL, "--console", "stdio"])
        .output()
        .unwrap();
    assert_usage_error(&o, "use socket:PATH");
}

/// The kernel's command prompt on port 0, driven through the socket: replies to each command,
/// an unknown one answered, `quit` ends the test.
fn prompt(vmm: &str, tag: &str) {
    let dir = TempDir::new(tag);
    let p0 = dir.0.join("console.sock");
    let child = harness()
        .args([vmm, "--kernel", KERNEL, "--timeout", "120"])
        .arg("--console")
        .arg(format!("socket:{}", p0.display()))
        .args(["--cmdline", "tests=console_prompt"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let got = drive_console_prompt(&mut connect_unix(&p0));
    let replies = String::from_utf8_lossy(&got).to_string();
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(passed(&t, "console_prompt"), "{t}");
    assert!(t.contains("# console: prompt served 6 commands"), "{t}");
    for want in [
        "kernel console; type help\n> ",
        "commands: help, echo TEXT, uptime, mem, quit\n> ",
        "hello console\n> ",
        "up ",
        "unknown command \"bogus\"\n> ",
        "frames: ",
        "bye\n",
    ] {
        assert!(replies.contains(want), "{want:?} not in {replies:?}");
    }
}

#[test]
fn the_kernel_prompt_takes_commands_under_the_harness() {
    if !have_kvm("the_kernel_prompt_takes_commands_under_the_harness") {
        return;
    }
    prompt("run", "console-prompt-harness");
}

#[test]
fn the_kernel_prompt_takes_commands_under_qemu() {
    if !have_kvm("the_kernel_prompt_takes_commands_under_qemu")
        || !have_qemu("the_kernel_prompt_takes_commands_under_qemu")
    {
        return;
    }
    prompt("qemu", "console-prompt-qemu");
}
