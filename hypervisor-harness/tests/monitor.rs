//! The monitor of a running VM, through the real binary: an idle guest (`--cmdline idle`)
//! driven over `--monitor` by the `monitor` client and by raw clients that misbehave, then over
//! `--qmp` by QEMU's own Python QMP client (`qemu.qmp`), which drives QEMU the same way.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const PROMPT: &str = "(harness) ";

/// A VMM started in the background, its output in files of the test's directory.
struct Vmm {
    child: Child,
    stderr: PathBuf,
}

impl Vmm {
    fn start(dir: &TempDir, args: &[String]) -> Self {
        let stdout = dir.0.join("stdout");
        let stderr = dir.0.join("stderr");
        let child = harness()
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Wait for the monitor socket to appear (the VMM still running).
    fn wait_for_socket(&mut self, path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "the VMM ended ({st}) before {}: {}",
                    path.display(),
                    self.stderr()
                );
            }
            assert!(Instant::now() < deadline, "no {}", path.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its exit status once it ends, which must be soon.
    fn wait_end(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the VMM still ran {within:?} after quit: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn unix(path: &Path) -> String {
    format!("unix:{}", path.display())
}

/// `hypervisor-harness monitor PATH COMMAND`: its stdout, which must come with success.
fn hmp(path: &Path, command: &str) -> String {
    let o = harness()
        .arg("monitor")
        .arg(path)
        .args(command.split_whitespace())
        .output()
        .unwrap();
    assert!(o.status.success(), "monitor {command}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Read from a raw HMP connection until the text ends with the prompt.
fn read_prompt(s: &mut UnixStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(PROMPT.as_bytes()) {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the monitor closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

#[test]
fn hmp_drives_an_idle_vm_until_quit() {
    if !have_kvm("hmp_drives_an_idle_vm_until_quit") {
        return;
    }
    let dir = TempDir::new("monitor-hmp");
    let disk = dir.file("disk.img", 1 << 20);
    let sock = dir.0.join("monitor.sock");
    let json = dir.0.join("exits.json");
    let mut vm = Vmm::start(
        &dir,
        &[
            "run".into(),
            "--kernel".into(),
            KERNEL.into(),
            "--cmdline".into(),
            "idle".into(),
            "--timeout".into(),
            "300".into(),
            "--monitor".into(),
            unix(&sock),
            "--disk".into(),
            format!("virtio:{}", disk.display()),
            "--exits-json".into(),
            json.display().to_string(),
        ],
    );
    vm.wait_for_socket(&sock);

    assert_eq!(hmp(&sock, "info status"), "VM status: running\n");
    let pci = hmp(&sock, "info pci");
    assert!(pci.contains("00:00.0 8086:1237 class 060000"), "{pci}");
    assert!(pci.contains("00:02.0 1af4:1042 class 0180"), "{pci}");
    assert!(pci.contains("  BAR0: 64-bit memory at 0xc"), "{pci}");
    assert!(pci.contains("  INTx: pin A, line "), "{pci}");
    assert!(pci.contains("  MSI-X: 2 vectors, disabled"), "{pci}");
    // The table as the harness holds it: untouched by an idle guest, so masked, as at reset.
    assert!(
        pci.contains("    vector 1: address 0x0 data 0x0000"),
        "{pci}"
    );
    assert!(pci.contains(", masked\n"), "{pci}");
    let exits = hmp(&sock, "info exits");
    assert!(exits.starts_with("exits: "), "{exits}");
    assert!(exits.contains("com1"), "the guest's serial output: {exits}");
    let queues = hmp(&sock, "info queues");
    assert!(
        queues.contains("virtio-blk0 (00:02.0): status 0x00")
            && queues.contains("  queue 0: size 256, not ready"),
        "{queues}"
    );
    assert!(hmp(&sock, "info balloon").contains("No balloon device has been activated"));
    assert_eq!(hmp(&sock, "frobnicate"), "unknown command: 'frobnicate'\n");

    // A flood of garbage, an overlong line and binary: one error line each, then an answer.
    let mut flood = connect(&sock);
    let mut reader = flood.try_clone().unwrap();
    let replies = std::thread::spawn(move || {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    });
    for _ in 0..2000 {
        flood.write_all(b"garbage \x01\xff\xfe\n").unwrap();
    }
    flood.write_all(&vec![b'x'; 100_000]).unwrap();
    flood.write_all(b"\ninfo status\n").unwrap();
    flood.shutdown(std::net::Shutdown::Write).unwrap();
    let out = replies.join().unwrap();
    assert_eq!(out.matches("unknown command: 'garbage").count(), 2000);
    assert_eq!(
        out.matches("longer than").count(),
        1,
        "{}",
        &out[out.len() - 300..]
    );
    assert!(
        out.ends_with(&format!("VM status: running\n{PROMPT}")),
        "{out:.300}"
    );

    // A client that leaves in the middle of a command.
    let mut half = connect(&sock);
    read_prompt(&mut half);
    half.write_all(b"info pc").unwrap();
    drop(half);

    // Clients in turn: while one holds the monitor, the next waits; it is served once the
    // first leaves.
    let mut first = connect(&sock);
    read_prompt(&mut first);
    let sock2 = sock.clone();
    let second = std::thread::spawn(move || hmp(&sock2, "info status"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!second.is_finished(), "two clients served at once");
    first.write_all(b"info status\n").unwrap();
    assert_eq!(
        read_prompt(&mut first),
        format!("VM status: running\n{PROMPT}")
    );
    drop(first);
    assert_eq!(second.join().unwrap(), "VM status: running\n");
    for _ in 0..5 {
        assert_eq!(hmp(&sock, "info status"), "VM status: running\n");
    }
    assert!(vm.child.try_wait().unwrap().is_none(), "{}", vm.stderr());

    // quit ends the run, with success, and says so.
    assert_eq!(hmp(&sock, "quit"), "");
    let status = vm.wait_end(Duration::from_secs(20));
    let stderr = vm.stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("the VM was quit by the monitor"),
        "{stderr}"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["outcome"]["kind"], "quit");
    assert_eq!(doc["outcome"]["exit_code"], 0);
    assert!(!sock.exists(), "the socket is removed at the end");
}

/// Whether QEMU's Python QMP library is installed; if not, SKIP (or, under CI=true, fail).
fn have_python_qmp(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok || {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "{test}: python3's qemu.qmp is missing, and CI=true demands it"
        );
        eprintln!("SKIP {test}: python3's qemu.qmp is not installed (pip3 install qemu.qmp)");
        false
    }
}

/// tests/qmp_client.py against `sock`: its JSON line (status, and stats summed per target).
fn python_qmp(sock: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qmp_client.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(sock)
        .output()
        .unwrap();
    assert!(o.status.success(), "qmp_client.py: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

/// A raw QMP conversation: the greeting, refusals before negotiation, bad JSON; the VM goes on.
fn raw_qmp_checks(sock: &Path) {
    let mut s = connect(sock);
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let mut next = || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    let greeting = next();
    assert!(
        greeting["QMP"]["version"]["qemu"]["major"].is_u64(),
        "{greeting}"
    );
    assert_eq!(greeting["QMP"]["capabilities"], serde_json::json!([]));
    s.write_all(br#"{"execute": "query-status"}"#).unwrap();
    assert_eq!(next()["error"]["class"], "CommandNotFound");
    s.write_all(b"{bad json\n").unwrap();
    assert_eq!(next()["error"]["class"], "GenericError");
    s.write_all(br#"{"execute": "qmp_capabilities", "id": 1}"#)
        .unwrap();
    assert_eq!(next(), serde_json::json!({"return": {}, "id": 1}));
    s.write_all(b"\x00\x01 garbage\n").unwrap();
    assert_eq!(next()["error"]["class"], "GenericError");
    s.write_all(br#"{"execute": "query-balloon"}"#).unwrap();
    assert_eq!(next()["error"]["class"], "DeviceNotActive");
    s.write_all(br#"{"execute": "query-status"}"#).unwrap();
    assert_eq!(next()["return"]["running"], true);
}

/// The same Python script, QEMU's own QMP client, drives our harness and QEMU: query-status,
/// query-stats (read back the same way from both), quit.
#[test]
fn qmp_with_qemus_python_client_drives_both_vmms() {
    let test = "qmp_with_qemus_python_client_drives_both_vmms";
    if !have_kvm(test) || !have_python_qmp(test) {
        return;
    }
    let dir = TempDir::new("monitor-qmp");
    let sock = dir.0.join("qmp.sock");
    let args = |vmm: &str, sock: &Path| -> Vec<String> {
        [
            vmm,
            "--kernel",
            KERNEL,
            "--cmdline",
            "idle",
            "--timeout",
            "300",
        ]
        .map(String::from)
        .into_iter()
        .chain(["--qmp".into(), unix(sock)])
        .collect()
    };
    let mut vm = Vmm::start(&dir, &args("run", &sock));
    vm.wait_for_socket(&sock);
    raw_qmp_checks(&sock);
    let ours = python_qmp(&sock);
    let status = vm.wait_end(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", vm.stderr());
    assert!(vm.stderr().contains("the VM was quit by the monitor"));
    assert_eq!(ours["status"]["running"], true, "{ours}");
    assert_eq!(ours["status"]["status"], "running", "{ours}");
    let vcpu = &ours["stats"]["vcpu"];
    assert!(
        vcpu["exits"].as_u64().unwrap_or(0) > 0,
        "KVM's exits: {ours}"
    );
    assert!(
        vcpu["userspace_exits"].as_u64().unwrap_or(0) > 0,
        "our counters: {ours}"
    );
    drop(vm);

    if !have_qemu(test) {
        return;
    }
    let dir = TempDir::new("monitor-qmp-qemu");
    let sock = dir.0.join("qmp.sock");
    let mut qemu = Vmm::start(&dir, &args("qemu", &sock));
    qemu.wait_for_socket(&sock);
    let theirs = python_qmp(&sock);
    let status = qemu.wait_end(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", qemu.stderr());
    assert!(qemu.stderr().contains("QEMU was quit by its monitor"));
    assert_eq!(theirs["status"]["running"], true, "{theirs}");
    assert!(
        theirs["stats"]["vcpu"]["exits"].as_u64().unwrap_or(0) > 0,
        "QEMU's KVM exits: {theirs}"
    );
}

/// The monitor drives the balloon through its seam (`BalloonControl`): QEMU's `info balloon`
/// text and QMP's `query-balloon` bytes, a target accepted, one beyond RAM refused in one line,
/// and without `--balloon` QEMU's "No balloon device has been activated".
#[test]
fn balloon_commands_reach_the_device() {
    if !have_kvm("balloon_commands_reach_the_device") {
        return;
    }
    let dir = TempDir::new("monitor-balloon");
    let hmp_sock = dir.0.join("m.sock");
    let qmp_sock = dir.0.join("q.sock");
    let mut vm = Vmm::start(
        &dir,
        &[
            "run",
            "--kernel",
            KERNEL,
            "--mem",
            "256M",
            "--cmdline",
            "idle",
            "--timeout",
            "300",
            "--balloon",
        ]
        .map(String::from)
        .into_iter()
        .chain([
            "--monitor".into(),
            unix(&hmp_sock),
            "--qmp".into(),
            unix(&qmp_sock),
        ])
        .collect::<Vec<_>>(),
    );
    vm.wait_for_socket(&hmp_sock);
    vm.wait_for_socket(&qmp_sock);
    assert_eq!(hmp(&hmp_sock, "info balloon"), "balloon: actual=256\n");
    let queues = hmp(&hmp_sock, "info queues");
    assert!(queues.contains("virtio-balloon"), "{queues}");
    assert_eq!(hmp(&hmp_sock, "balloon 192"), "");
    // The guest follows by inflating through queue 0 (ioeventfd notifies, used-buffer
    // interrupts), and never uses the deflate queue (1): info queues counts per queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    while hmp(&hmp_sock, "info balloon") != "balloon: actual=192\n" {
        assert!(
            Instant::now() < deadline,
            "the guest did not follow 192 MiB"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let queues = hmp(&hmp_sock, "info queues");
    let counts = |queue: &str| -> (u64, u64) {
        let mut lines = queues.lines().skip_while(|l| !l.starts_with(queue));
        let counts = lines
            .nth(1)
            .unwrap_or_else(|| panic!("no {queue}: {queues}"));
        let n: Vec<u64> = counts
            .split_whitespace()
            .filter_map(|w| w.trim_end_matches(',').parse().ok())
            .collect();
        assert_eq!(n.len(), 2, "{counts:?}: {queues}");
        (n[0], n[1])
    };
    let (notifies, interrupts) = counts("  queue 0:");
    assert!(notifies > 0 && interrupts > 0, "inflate queue: {queues}");
    assert_eq!(counts("  queue 1:"), (0, 0), "deflate queue: {queues}");
    let refused = hmp(&hmp_sock, "balloon 512");
    assert!(
        refused.starts_with("balloon: ") && refused.lines().count() == 1,
        "{refused:?}"
    );
    let qmp = |cmd: &str| -> Value {
        let o = harness()
            .arg("monitor")
            .arg("--qmp")
            .arg(&qmp_sock)
            .arg(cmd)
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
    };
    let actual = qmp(r#"{"execute": "query-balloon"}"#);
    assert!(actual["return"]["actual"].as_u64().is_some(), "{actual}");
    assert_eq!(
        qmp(r#"{"execute": "balloon", "arguments": {"value": 201326592}}"#),
        serde_json::json!({"return": {}})
    );
    assert_eq!(
        qmp(r#"{"execute": "balloon", "arguments": {"value": 0}}"#)["error"]["class"],
        "GenericError"
    );
    assert_eq!(hmp(&hmp_sock, "quit"), "");
    assert_eq!(vm.wait_end(Duration::from_secs(20)).code(), Some(0));
    drop(vm);

    // Without a balloon: QEMU's words and error class.
    let dir = TempDir::new("monitor-noballoon");
    let qmp_sock = dir.0.join("q.sock");
    let mut vm = Vmm::start(
        &dir,
        &[
            "run",
            "--kernel",
            KERNEL,
            "--cmdline",
            "idle",
            "--timeout",
            "300",
        ]
        .map(String::from)
        .into_iter()
        .chain(["--qmp".into(), unix(&qmp_sock)])
        .collect::<Vec<_>>(),
    );
    vm.wait_for_socket(&qmp_sock);
    let o = harness()
        .args(["monitor", "--qmp"])
        .arg(&qmp_sock)
        .arg(r#"{"execute": "query-balloon"}"#)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "a QMP error is exit 1: {}",
        text(&o)
    );
    let reply: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(reply["error"]["class"], "DeviceNotActive");
    assert_eq!(
        reply["error"]["desc"],
        "No balloon device has been activated"
    );
    let o = harness()
        .args(["monitor", "--qmp"])
        .arg(&qmp_sock)
        .arg(r#"{"execute": "quit"}"#)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(vm.wait_end(Duration::from_secs(20)).code(), Some(0));
}

/// `balloon_follows_interrupts`: the guest follows its first target, says it waits, and sleeps
/// on interrupts alone; the host moves the target (HMP `balloon 192` under our harness, QMP
/// `balloon` under QEMU), and the guest must follow it from the config-change interrupt (MSI-X
/// under our harness; INTx under QEMU 7.2, whose virtio-balloon-pci has no MSI-X by default).
#[test]
fn balloon_follows_config_change_interrupts_under_both_vmms() {
    let test = "balloon_follows_config_change_interrupts_under_both_vmms";
    if !have_kvm(test) {
        return;
    }
    let args = |vmm: &str, monitor: &str, sock: &Path| -> Vec<String> {
        [
            vmm,
            "--kernel",
            KERNEL,
            "--mem",
            "256M",
            "--balloon",
            "--cmdline",
            "tests=balloon_follows_interrupts",
            "--timeout",
            "180",
            monitor,
        ]
        .map(String::from)
        .into_iter()
        .chain([unix(sock)])
        .collect()
    };
    // Drive one VMM: wait for the guest to sleep, move the target, and check what it did.
    let drive = |vmm: &str, monitor: &str, move_target: &dyn Fn(&Path)| {
        let dir = TempDir::new(&format!("monitor-balloon-irq-{vmm}"));
        let sock = dir.0.join("monitor.sock");
        let mut vm = Vmm::start(&dir, &args(vmm, monitor, &sock));
        vm.wait_for_socket(&sock);
        let stdout = dir.0.join("stdout");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !std::fs::read_to_string(&stdout)
            .unwrap_or_default()
            .contains("# balloon: waiting for a config-change interrupt")
        {
            assert!(
                Instant::now() < deadline && vm.child.try_wait().unwrap().is_none(),
                "{vmm}: the guest never waited: {}{}",
                std::fs::read_to_string(&stdout).unwrap_or_default(),
                vm.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        move_target(&sock);
        let status = vm.wait_end(Duration::from_secs(90));
        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        assert_eq!(status.code(), Some(0), "{vmm}: {out}{}", vm.stderr());
        assert!(passed(&out, "balloon_follows_interrupts"), "{vmm}: {out}");
        assert!(
            out.contains("target 0 -> 16384 pages, actual 16384"),
            "{vmm}: {out}"
        );
        out
    };
    let ours = drive("run", "--monitor", &|sock| {
        assert_eq!(hmp(sock, "balloon 192"), "");
    });
    assert!(ours.contains("interrupts: msix (2 vectors)"), "{ours}");
    if !have_qemu(test) {
        return;
    }
    drive("qemu", "--qmp", &|sock| {
        let o = harness()
            .args(["monitor", "--qmp"])
            .arg(sock)
            .arg(r#"{"execute": "balloon", "arguments": {"value": 201326592}}"#)
            .output()
            .unwrap();
        assert!(o.status.success(), "QEMU's QMP balloon: {}", text(&o));
    });
}
