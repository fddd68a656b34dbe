//! `run --record-exits`: a short run's recording holds what the run did, and (ignored) the
//! recordings the fuzz seed corpus is converted from (`hypervisor-harness/fuzz/record-corpus.sh`
//! runs it, then the conversion): each one `run --record-exits` of named kernel tests with a
//! virtio disk and an IDE disk, written to `$RECORDINGS` (default `target/exit-recordings/`).

mod common;
use common::*;
use hypervisor_harness::vmm::exit_recorder::{parse, ExitKind, ExitRecord};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// (recording name, the kernel tests it runs).
const RECORDINGS: [(&str, &str); 3] = [
    ("boot-pci", "boot_info,pci"),
    (
        "virtio-blk",
        "virtio_blk_integrity,virtio_blk_interrupt_modes",
    ),
    ("ide", "ide_pio_integrity,ide_dma_integrity,ide_interrupts"),
];

/// (recording name, the device's arguments, the kernel's command line, the device's name in
/// its snapshots, or its bus ranges' prefix): each NIC model alone on the in-process peer,
/// through the tests that move frames both ways without the 16 MiB transfers (which would
/// fill the recording's budget with one test's data); the balloon asked for 192 of 256 MiB;
/// the exit floor's bench (its first rows fill the budget: the recording is cut there).
const DEVICE_RECORDINGS: [(&str, &[&str], &str, &str); 5] = [
    ("virtio-net", &["--net", "virtio"], NET_TESTS, "virtio-net"),
    ("e1000", &["--net", "e1000"], NET_TESTS, "e1000"),
    ("rtl8139", &["--net", "rtl8139"], NET_TESTS, "rtl8139"),
    (
        "balloon",
        &["--mem", "256M", "--balloon", "--balloon-target", "192"],
        "tests=balloon_inflate,balloon_deflate_reuse",
        "virtio-balloon",
    ),
    ("floor", &[], "bench=floor", "floor-bar"),
];
const NET_TESTS: &str = "tests=net_link,net_ping,net_udp_echo";

/// `tests=pci` recorded under the seccomp filters: the file parses, COM1 got the KTAP text,
/// the configuration ports were read and written, the debug-exit port got the status once.
#[test]
fn a_recording_holds_what_the_run_did() {
    if !have_kvm("a_recording_holds_what_the_run_did") {
        return;
    }
    let dir = TempDir::new("record-exits-pci");
    let file = dir.0.join("pci.exits");
    let o = harness()
        .args(["run", "--kernel", KERNEL, "--cmdline", "tests=pci"])
        .arg("--record-exits")
        .arg(&file)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    let records = parse(&std::fs::read(&file).unwrap()).unwrap();
    let text_out: Vec<u8> = records
        .iter()
        .filter(|r| r.kind == ExitKind::PortOut && r.addr == 0x3f8)
        .flat_map(|r| r.data.clone())
        .collect();
    let text_out = String::from_utf8_lossy(&text_out);
    assert!(text_out.contains("ok 1 pci"), "{text_out}");
    let config = |kind| {
        let on_ports = |r: &&ExitRecord| r.range == "pci-config" && r.kind == kind;
        records.iter().filter(on_ports).count()
    };
    assert!(config(ExitKind::PortOut) > 10 && config(ExitKind::PortIn) > 10);
    let exits: Vec<_> = records.iter().filter(|r| r.range == "debug-exit").collect();
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0].data, 0x10u32.to_le_bytes());
    assert!(
        t.contains(&format!("recorded {} exits", records.len())),
        "{t}"
    );
}

#[test]
#[ignore]
fn record_the_kernel_tests_exits() {
    if !have_kvm("record_the_kernel_tests_exits") {
        return;
    }
    let out = std::env::var_os("RECORDINGS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/exit-recordings"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&out).unwrap();
    let dir = TempDir::new("record-exits");
    let (virtio, ide) = (dir.0.join("virtio.img"), dir.0.join("ide.img"));
    let (seed, wseed) = (0x5eed_0001u64, 0x0077_0002u64);
    for (name, tests) in RECORDINGS {
        make_image(&virtio, seed);
        make_image(&ide, seed);
        let file = out.join(format!("{name}.exits"));
        let o = harness()
            .args(["run", "--kernel", KERNEL, "--timeout", "120"])
            .arg("--cmdline")
            .arg(format!("tests={tests} disk_seed={seed} write_seed={wseed}"))
            .arg("--disk")
            .arg(format!("virtio:{}", virtio.display()))
            .arg("--disk")
            .arg(format!("ide:{}", ide.display()))
            .arg("--record-exits")
            .arg(&file)
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{name}: {t}");
        assert!(t.contains("recorded "), "{name}: {t}");
        eprintln!("{name}: {}", file.display());
    }
    for (name, args, cmdline, device) in DEVICE_RECORDINGS {
        let file = out.join(format!("{name}.exits"));
        let o = harness()
            .args(["run", "--kernel", KERNEL, "--timeout", "120"])
            .args(args)
            .args(["--cmdline", cmdline])
            .arg("--record-exits")
            .arg(&file)
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{name}: {t}");
        let records = parse(&std::fs::read(&file).unwrap()).unwrap();
        let snapshots = |kind: ExitKind, addr: u64| {
            let of = |r: &&ExitRecord| r.kind == kind && r.range == device && r.addr == addr;
            records.iter().filter(of).count()
        };
        if device == "floor-bar" {
            let on_floor = |r: &&ExitRecord| r.range.starts_with(device);
            assert!(records.iter().filter(on_floor).count() > 1000, "{name}");
            let doorbells = |r: &&ExitRecord| r.kind == ExitKind::Doorbell;
            assert!(records.iter().any(|r| doorbells(&r)), "{name}: no doorbell");
            continue;
        }
        // Frames both ways; the balloon's inflate and deflate queues.
        let both = match device {
            "virtio-balloon" => [(ExitKind::Buffer, 0), (ExitKind::Buffer, 1)],
            _ => [(ExitKind::Frame, 0), (ExitKind::Frame, 1)],
        };
        for (kind, addr) in both {
            assert!(
                snapshots(kind, addr) > 0,
                "{name}: no {kind:?} {addr} recorded"
            );
        }
        let counts = t.lines().filter(|l| l.contains("recorded "));
        eprintln!("{name}: {}: {}", file.display(), counts.collect::<String>());
    }
    record_the_console_prompt(&out.join("console.exits"));
}

/// `tests=console_prompt` on a socket console, driven as tests/console.rs drives it (every
/// command, then `quit`): the guest's output, the control messages and the typed input.
fn record_the_console_prompt(file: &Path) {
    let dir = TempDir::new("record-exits-console");
    let socket = dir.0.join("console.sock");
    let child = harness()
        .args(["run", "--kernel", KERNEL, "--timeout", "120"])
        .arg("--console")
        .arg(format!("socket:{}", socket.display()))
        .args(["--cmdline", "tests=console_prompt"])
        .arg("--record-exits")
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drive_console_prompt(&mut connect_unix(&socket));
    let o = child.wait_with_output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "console: {t}");
    let records = parse(&std::fs::read(file).unwrap()).unwrap();
    // Output on port 0's transmit queue (1), input on its receive queue (0).
    for queue in [0, 1] {
        let of = |r: &&ExitRecord| {
            r.kind == ExitKind::Buffer && r.range == "virtio-console" && r.addr == queue
        };
        assert!(records.iter().any(|r| of(&r)), "console: queue {queue}");
    }
    eprintln!("console: {}", file.display());
}
