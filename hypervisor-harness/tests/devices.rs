//! The PCI functions of the device models as the real kernel enumerates them: virtio-blk
//! (1af4:1042, in both I/O modes), the PIIX3 IDE controller (8086:7010 with its BAR4) and the
//! e1000 (8086:100e with its two BARs), and the e1000 carrying the kernel's network tests
//! through its own guest driver.

mod common;
use common::*;

fn lspci_line(t: &str, id: &str) -> String {
    t.lines()
        .find(|l| l.starts_with("# lspci") && l.contains(id))
        .unwrap_or_else(|| panic!("no {id} function in lspci:\n{t}"))
        .to_string()
}

#[test]
fn virtio_blk_function_enumerates() {
    if !have_kvm("virtio_blk_function_enumerates") {
        return;
    }
    let dir = TempDir::new("lspci-virtio");
    let img = dir.file("disk.img", 1 << 20);
    for mode in ["thread", "inline"] {
        let o = harness()
            .args([
                "run",
                "--kernel",
                KERNEL,
                "--cmdline",
                "tests=pci",
                "--io-mode",
                mode,
            ])
            .arg("--disk")
            .arg(format!("virtio:{}", img.display()))
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{mode}: {t}");
        let line = lspci_line(&t, "1af4:1042");
        // Mass storage (other), revision 1, INTA on line 11, one 64-bit memory BAR.
        assert!(line.contains("[0180]: 1af4:1042 rev 01"), "{line}");
        assert!(line.contains("irq 11 pin A"), "{line}");
        assert!(line.contains("BAR0 mem64 "), "{line}");
        let caps = line
            .split("caps [")
            .nth(1)
            .and_then(|c| c.split(']').next())
            .unwrap_or_else(|| panic!("no capabilities: {line}"));
        let ids: Vec<&str> = caps.split(',').map(|c| &c[..2]).collect();
        assert_eq!(ids, ["09", "09", "09", "09", "11"], "{line}");
        assert!(!line.contains(" !"), "decode problems: {line}");
    }
    assert_eq!(
        std::fs::read(&img).unwrap(),
        vec![0u8; 1 << 20],
        "enumeration wrote the disk"
    );
}

#[test]
fn ide_controller_enumerates_with_bar4() {
    if !have_kvm("ide_controller_enumerates_with_bar4") {
        return;
    }
    let dir = TempDir::new("lspci-ide");
    let img = dir.file("disk.img", 2048 * 512);
    let o = harness()
        .args(["run", "--kernel", KERNEL, "--cmdline", "tests=pci"])
        .arg("--disk")
        .arg(format!("ide:{}", img.display()))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    let line = lspci_line(&t, "8086:7010");
    assert!(line.contains("[0101]"), "class: {line}");
    assert!(line.contains("BAR4 io 0x"), "no BAR4 I/O: {line}");
    assert!(line.contains("+0x10"), "BAR4 size: {line}");
}

#[test]
fn e1000_function_enumerates() {
    if !have_kvm("e1000_function_enumerates") {
        return;
    }
    // After a virtio-net NIC, so it takes the next slot and the next INTx line.
    let o = harness()
        .args(["run", "--kernel", KERNEL, "--cmdline", "tests=pci"])
        .args(["--net", "virtio", "--net", "e1000"])
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    let line = lspci_line(&t, "8086:100e");
    // Ethernet, revision 3 (QEMU's 82540EM), 128 KiB of registers and the 64-byte I/O window.
    assert!(line.contains("[0200]: 8086:100e rev 03"), "{line}");
    assert!(line.contains("irq 5 pin A"), "{line}");
    assert!(line.contains("BAR0 mem32 0x"), "{line}");
    assert!(line.contains("+0x20000"), "BAR0 size: {line}");
    assert!(line.contains("BAR1 io 0x"), "{line}");
    assert!(line.contains("+0x40"), "BAR1 size: {line}");
    assert!(!line.contains(" !"), "decode problems: {line}");
}

#[test]
fn rtl8139_function_enumerates() {
    if !have_kvm("rtl8139_function_enumerates") {
        return;
    }
    // After an e1000, so it takes the next slot and the next INTx line.
    let o = harness()
        .args(["run", "--kernel", KERNEL, "--cmdline", "tests=pci"])
        .args(["--net", "e1000", "--net", "rtl8139"])
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    let line = lspci_line(&t, "10ec:8139");
    // Ethernet, revision 0x10 (the RTL8139C that Linux's 8139too drives in C mode), 256 bytes
    // of ports in BAR0 and the same registers as MMIO in BAR1.
    assert!(line.contains("[0200]: 10ec:8139 rev 10"), "{line}");
    assert!(line.contains("irq 5 pin A"), "{line}");
    assert!(line.contains("BAR0 io 0x"), "{line}");
    assert!(line.contains("+0x100 BAR1 mem32 0x"), "BAR0 size: {line}");
    assert!(line.ends_with("+0x100"), "BAR1 size: {line}");
    assert!(!line.contains(" !"), "decode problems: {line}");
}

/// The guest's e1000 driver against our model, over the in-process peer: ping, UDP echo of
/// every size, 16 MiB of TCP each way, and an RX flood that the ring's backpressure delivers
/// without loss; the model's counters note shows no refused guest input.
#[test]
fn e1000_carries_the_network_tests() {
    if !have_kvm("e1000_carries_the_network_tests") {
        return;
    }
    let dir = TempDir::new("e1000-net");
    let json = dir.file("exits.json", 0);
    let o = harness()
        .args(["run", "--kernel", KERNEL, "--net", "e1000", "--cmdline"])
        .arg("tests=net_ping,net_udp_echo,net_tcp_tx,net_tcp_rx,net_rx_flood")
        .arg("--exits-json")
        .arg(&json)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("ktap: 5 passed, 0 failed"), "{t}");
    assert!(t.contains("(0 lost)"), "flood lost datagrams: {t}");
    let j = std::fs::read_to_string(&json).unwrap();
    let note = j
        .split("e1000-counters: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no e1000 counters note: {j}"));
    for zero in [
        "tx_desc_fault",
        "tx_buffer_fault",
        "tx_oversize",
        "bad_index_writes",
    ] {
        assert!(
            note.contains(&format!("\\\"{zero}\\\":0,")),
            "{zero} not 0: {note}"
        );
    }
}

/// `--net e1000,link=down`: the guest's driver sees the link down (STATUS.LU, the PHY) and
/// refuses to send; the same test fails with the link up.
#[test]
fn e1000_link_down_is_reported() {
    if !have_kvm("e1000_link_down_is_reported") {
        return;
    }
    for (link, code) in [("down", 0), ("up", 1)] {
        let o = harness()
            .args(["run", "--kernel", KERNEL, "--net"])
            .arg(format!("e1000,link={link}"))
            .args(["--cmdline", "tests=net_link net_expect_link=down"])
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(code), "link={link}: {t}");
        if link == "down" {
            assert!(t.contains("send with the link down: refused"), "{t}");
        }
    }
}
