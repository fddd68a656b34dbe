//! The PCI functions of the disk models as the real kernel enumerates them: virtio-blk
//! (1af4:1042, in both I/O modes) and the PIIX3 IDE controller (8086:7010 with its BAR4).

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
