//! Boots tiny hand-assembled PVH ELF images (32-bit code at 1 MiB) under the harness, to check
//! the boot ABI, exit codes and the abnormal-exit report without depending on the real kernel.

mod common;
use common::{have_kvm, TempDir};
use std::path::PathBuf;
use std::process::{Command, Output};

/// An ELF64 with one PT_LOAD of `code` at 0x100000 and a PT_NOTE holding the Xen PVH entry.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const ENTRY: u64 = 0x10_0000;
    let mut f = vec![0u8; 0x1000];
    // ELF header
    f[0..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&ENTRY.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let ph = |f: &mut Vec<u8>, at: usize, ty: u32, flags: u32, off: u64, addr: u64, size: u64| {
        f[at..at + 4].copy_from_slice(&ty.to_le_bytes());
        f[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
        f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
        f[at + 16..at + 24].copy_from_slice(&addr.to_le_bytes());
        f[at + 24..at + 32].copy_from_slice(&addr.to_le_bytes());
        f[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
        f[at + 40..at + 48].copy_from_slice(&size.to_le_bytes());
        f[at + 48..at + 56].copy_from_slice(&4u64.to_le_bytes());
    };
    ph(&mut f, 64, 1, 5, 0x1000, ENTRY, code.len() as u64);
    ph(&mut f, 120, 4, 4, 0x200, 0, 20);
    // Note: namesz 4, descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", entry.
    let note = [4u32.to_le_bytes(), 4u32.to_le_bytes(), 18u32.to_le_bytes()].concat();
    f[0x200..0x20c].copy_from_slice(&note);
    f[0x20c..0x210].copy_from_slice(b"Xen\0");
    f[0x210..0x214].copy_from_slice(&(ENTRY as u32).to_le_bytes());
    f.extend_from_slice(code);
    f
}

/// 32-bit code: print `text` on COM1, then write `exit` (32-bit) to port 0xf4.
fn print_and_exit(text: &str, exit: u32) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in text.bytes() {
        c.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    // Unclaimed accesses: in eax, 0x80; MMIO write/read at 0xd0000000 (outside RAM).
    c.extend_from_slice(&[0xe5, 0x80]);
    c.extend_from_slice(&[0xc7, 0x05, 0x00, 0x00, 0x00, 0xd0, 0x78, 0x56, 0x34, 0x12]);
    c.extend_from_slice(&[0xa1, 0x00, 0x00, 0x00, 0xd0]);
    c.push(0xb8); // mov eax, exit
    c.extend_from_slice(&exit.to_le_bytes());
    c.extend_from_slice(&[0xe7, 0xf4]); // out 0xf4, eax
    c.extend_from_slice(&[0xeb, 0xfe]); // jmp $
    c
}

/// Boot `code` as a PVH image; returns the output, its text and the `--exits-json` file (in a
/// directory that lives as long as the returned [`TempDir`]).
fn boot(name: &str, code: &[u8], extra: &[&str]) -> (Output, String, PathBuf, TempDir) {
    let dir = TempDir::new(&format!("tiny-{name}"));
    let k = dir.0.join(name);
    std::fs::write(&k, pvh_elf(code)).unwrap();
    let json = dir.0.join(format!("{name}.json"));
    let o = Command::new(env!("CARGO_BIN_EXE_hypervisor-harness"))
        .args([
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--mem",
            "32M",
            "--exits-json",
            json.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .unwrap();
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o, t, json, dir)
}

#[test]
fn tiny_guest_passes() {
    if !have_kvm("tiny_guest_passes") {
        return;
    }
    let (o, t, json, _dir) = boot(
        "pass",
        &print_and_exit("KTAP version 1\n1..1\nok 1 tiny\n", 0x10),
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(
        t.contains("ok 1 tiny") && t.contains("ktap: 1 passed, 0 failed, 0 skipped (plan 1)"),
        "{t}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(j["outcome"]["guest_value"], 0x10);
    // Exactly: one out per byte, 1 unclaimed in, 1 MMIO write, 1 MMIO read, 1 debug-exit.
    let bytes = "KTAP version 1\n1..1\nok 1 tiny\n".len() as u64;
    assert_eq!(j["exits"]["by_reason"]["io"], bytes + 2, "{j}");
    assert_eq!(j["exits"]["by_reason"]["mmio"], 2, "{j}");
    assert_eq!(j["exits"]["total"], bytes + 4, "{j}");
    assert!(j["platform"]["kvm"].is_string());
}

#[test]
fn tiny_guest_without_plan_fails() {
    if !have_kvm("tiny_guest_without_plan_fails") {
        return;
    }
    let (o, t, _, _dir) = boot("noplan", &print_and_exit("hello\n", 0x10), &[]);
    assert_eq!(o.status.code(), Some(1), "{t}");
}

#[test]
fn unknown_debug_exit_value() {
    if !have_kvm("unknown_debug_exit_value") {
        return;
    }
    let (o, t, _, _dir) = boot("unknown", &print_and_exit("", 0x42), &[]);
    assert_eq!(o.status.code(), Some(4), "{t}");
    assert!(t.contains("unknown exit code 0x42"), "{t}");
}

#[test]
fn triple_fault_is_reported_with_rip_and_code() {
    if !have_kvm("triple_fault_is_reported_with_rip_and_code") {
        return;
    }
    // ud2 with no IDT: #UD -> #GP -> double fault -> triple fault.
    let (o, t, _, _dir) = boot("ud2", &[0x0f, 0x0b, 0x90, 0x90], &[]);
    assert_eq!(o.status.code(), Some(4), "{t}");
    assert!(t.contains("KVM_EXIT_SHUTDOWN"), "{t}");
    assert!(t.contains("RIP=0x100000") && t.contains("CS=0x8"), "{t}");
    assert!(t.contains("code at RIP: 0f 0b 90 90"), "{t}");
}

#[test]
fn hang_hits_the_timeout() {
    if !have_kvm("hang_hits_the_timeout") {
        return;
    }
    let (o, t, _, _dir) = boot("hang", &[0xeb, 0xfe], &["--timeout", "1"]);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("guest did not exit within 1 s"), "{t}");
}

#[test]
fn string_io_reaches_the_devices() {
    if !have_kvm("string_io_reaches_the_devices") {
        return;
    }
    let text = b"KTAP version 1\n1..1\nok 1 rep\n";
    let mut c = Vec::new();
    // rep insw: 4 words from unclaimed port 0x80 into 0x200000 (one exit carrying 8 bytes).
    c.extend_from_slice(&[
        0xbf, 0x00, 0x00, 0x20, 0x00, 0xb9, 4, 0, 0, 0, 0x66, 0xba, 0x80, 0x00,
    ]);
    c.extend_from_slice(&[0xf3, 0x66, 0x6d]);
    // rep outsb of `text` (placed after the code) to COM1.
    let code_len = 14 + 3 + 5 + 5 + 4 + 2 + 5 + 2 + 2;
    let text_addr = 0x10_0000u32 + code_len as u32;
    c.push(0xbe);
    c.extend_from_slice(&text_addr.to_le_bytes());
    c.push(0xb9);
    c.extend_from_slice(&(text.len() as u32).to_le_bytes());
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xf3, 0x6e]);
    c.extend_from_slice(&[0xb8, 0x10, 0, 0, 0, 0xe7, 0xf4, 0xeb, 0xfe]);
    assert_eq!(c.len(), code_len);
    c.extend_from_slice(text);
    let (o, t, _, _dir) = boot("rep", &c, &[]);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("ok 1 rep"), "{t}");
}
