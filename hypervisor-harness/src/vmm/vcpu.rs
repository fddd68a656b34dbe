//! vCPU setup per the PVH ABI (32-bit protected mode, paging off) and crash inspection.

use super::boot::{GDT, GDT_ADDR, SEL_CODE, SEL_DATA, SEL_TSS, START_INFO_ADDR};
use super::memory::GuestMem;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
pub const KVM_CPUID_TIMING: u32 = 0x4000_0010;

/// Flat 32-bit segment, `type_` 0xb (code) or 3 (data).
fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    }
}

/// Set CPUID from KVM_GET_SUPPORTED_CPUID plus the KVM timing leaf 0x40000010.
/// Returns a note for verbose output.
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd) -> Result<String, String> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    let tsc_khz = vcpu.get_tsc_khz().ok();
    let mut have_sig = false;
    let mut have_timing = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            KVM_CPUID_SIGNATURE => {
                have_sig = true;
                e.eax = e.eax.max(KVM_CPUID_TIMING);
            }
            KVM_CPUID_TIMING => {
                have_timing = true;
                if let Some(khz) = tsc_khz {
                    e.eax = khz;
                    e.ebx = 1_000_000;
                }
            }
            _ => {}
        }
    }
    if !have_sig {
        let sig = b"KVMKVMKVM\0\0\0";
        cpuid
            .push(kvm_bindings::kvm_cpuid_entry2 {
                function: KVM_CPUID_SIGNATURE,
                eax: KVM_CPUID_TIMING,
                ebx: u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]),
                ecx: u32::from_le_bytes([sig[4], sig[5], sig[6], sig[7]]),
                edx: u32::from_le_bytes([sig[8], sig[9], sig[10], sig[11]]),
                ..Default::default()
            })
            .map_err(|e| format!("cpuid: {e:?}"))?;
    }
    if let (Some(khz), false) = (tsc_khz, have_timing) {
        cpuid
            .push(kvm_bindings::kvm_cpuid_entry2 {
                function: KVM_CPUID_TIMING,
                eax: khz,
                ebx: 1_000_000,
                ..Default::default()
            })
            .map_err(|e| format!("cpuid: {e:?}"))?;
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
    Ok(match tsc_khz {
        Some(k) => format!(
            "cpuid: {} leaves, TSC {k} kHz in leaf 0x40000010",
            cpuid.as_slice().len()
        ),
        None => format!(
            "cpuid: {} leaves, TSC frequency unknown (no leaf 0x40000010)",
            cpuid.as_slice().len()
        ),
    })
}

/// Registers, segments, FPU and MSRs for the PVH 32-bit entry.
pub fn setup_registers(vcpu: &VcpuFd, entry: u64) -> Result<(), String> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    let code = flat_segment(SEL_CODE, 0xb);
    let data = flat_segment(SEL_DATA, 0x3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: SEL_TSS,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;

    let regs = kvm_regs {
        rip: entry,
        rbx: START_INFO_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| format!("KVM_SET_FPU: {e}"))?;
    Ok(())
}

/// Optional MSRs; failure is reported but not fatal.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), String> {
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_MISC_ENABLE,
        data: MISC_ENABLE_FAST_STRING,
        ..Default::default()
    }])
    .map_err(|e| format!("msrs: {e:?}"))?;
    match vcpu.set_msrs(&msrs) {
        Ok(1) => Ok(()),
        Ok(n) => Err(format!("KVM_SET_MSRS set {n} of 1 MSRs")),
        Err(e) => Err(format!("KVM_SET_MSRS: {e}")),
    }
}

/// What we know about a vCPU that stopped abnormally.
#[derive(Debug, Default, Clone)]
pub struct CpuSnapshot {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cs: u16,
    pub cpl: u8,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub code: Vec<u8>,
    pub code_note: Option<String>,
    /// The last port or MMIO exit before the end, as the run loop saw it.
    pub last_io: Option<String>,
}

impl std::fmt::Display for CpuSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RIP={:#x} CS={:#x} CPL={} RSP={:#x} RFLAGS={:#x} CR0={:#x} CR2={:#x} CR3={:#x} CR4={:#x} EFER={:#x}",
            self.rip, self.cs, self.cpl, self.rsp, self.rflags, self.cr0, self.cr2, self.cr3, self.cr4, self.efer
        )?;
        if !self.code.is_empty() {
            let hex: Vec<String> = self.code.iter().map(|b| format!("{b:02x}")).collect();
            write!(f, "; code at RIP: {}", hex.join(" "))?;
        }
        if let Some(n) = &self.code_note {
            write!(f, "; {n}")?;
        }
        if let Some(io) = &self.last_io {
            write!(f, "; last I/O exit: {io}")?;
        }
        Ok(())
    }
}

/// Walk 4-level long-mode page tables. Every table read is bounds-checked by vm-memory.
pub fn walk_long_mode(mem: &GuestMem, cr3: u64, gva: u64) -> Option<u64> {
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    let mut table = cr3 & ADDR_MASK;
    for level in (0..4).rev() {
        let idx = (gva >> (12 + 9 * level)) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + idx * 8)).ok()?;
        if entry & 1 == 0 {
            return None;
        }
        let large = entry & 0x80 != 0;
        if large && (level == 1 || level == 2) {
            let page = 1u64 << (12 + 9 * level);
            return Some((entry & ADDR_MASK & !(page - 1)) | (gva & (page - 1)));
        }
        table = entry & ADDR_MASK;
    }
    Some(table | (gva & 0xfff))
}

/// 32-bit non-PAE paging walk.
fn walk_32bit(mem: &GuestMem, cr3: u64, gva: u64) -> Option<u64> {
    let pde: u32 = mem
        .read_obj(GuestAddress(
            (cr3 & 0xffff_f000) + ((gva >> 22) & 0x3ff) * 4,
        ))
        .ok()?;
    if pde & 1 == 0 {
        return None;
    }
    if pde & 0x80 != 0 {
        return Some((pde as u64 & 0xffc0_0000) | (gva & 0x3f_ffff));
    }
    let pte: u32 = mem
        .read_obj(GuestAddress(
            (pde as u64 & 0xffff_f000) + ((gva >> 12) & 0x3ff) * 4,
        ))
        .ok()?;
    (pte & 1 != 0).then_some((pte as u64 & 0xffff_f000) | (gva & 0xfff))
}

pub fn snapshot(vcpu: &VcpuFd, mem: &GuestMem) -> CpuSnapshot {
    let mut s = CpuSnapshot::default();
    let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        s.code_note = Some("registers unavailable".into());
        return s;
    };
    s.rip = regs.rip;
    s.rsp = regs.rsp;
    s.rflags = regs.rflags;
    s.cs = sregs.cs.selector;
    s.cpl = sregs.cs.dpl;
    s.cr0 = sregs.cr0;
    s.cr2 = sregs.cr2;
    s.cr3 = sregs.cr3;
    s.cr4 = sregs.cr4;
    s.efer = sregs.efer;
    let long = sregs.efer & (1 << 10) != 0;
    let linear = if long {
        regs.rip
    } else {
        sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff
    };
    let paging = sregs.cr0 & (1 << 31) != 0;
    let translate = |gva: u64| -> Option<u64> {
        if !paging {
            return Some(gva);
        }
        if let Ok(t) = vcpu.translate_gva(gva) {
            if t.valid != 0 {
                return Some(t.physical_address);
            }
        }
        if long {
            walk_long_mode(mem, sregs.cr3, gva)
        } else if sregs.cr4 & (1 << 5) == 0 {
            walk_32bit(mem, sregs.cr3, gva)
        } else {
            None
        }
    };
    for i in 0..16u64 {
        let Some(pa) = translate(linear.wrapping_add(i)) else {
            s.code_note = Some(format!("RIP+{i} is not mapped"));
            break;
        };
        match mem.read_obj::<u8>(GuestAddress(pa)) {
            Ok(b) => s.code.push(b),
            Err(_) => {
                s.code_note = Some(format!("RIP+{i} (GPA {pa:#x}) is outside guest RAM"));
                break;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory;

    #[test]
    fn page_walk() {
        let m = memory::create(32 << 20).unwrap();
        // PML4 at 0x10000 -> PDPT 0x11000 -> PD 0x12000; PD[1] is a 2 MiB page at 0x400000;
        // PD[0] -> PT 0x13000, PT[5] -> 0x7000.
        let w = |at: u64, v: u64| m.write_obj(v, GuestAddress(at)).unwrap();
        w(0x10000, 0x11003);
        w(0x11000, 0x12003);
        w(0x12000 + 8, 0x400083);
        w(0x12000, 0x13003);
        w(0x13000 + 5 * 8, 0x7003);
        assert_eq!(walk_long_mode(&m, 0x10000, 0x20_1234), Some(0x40_1234));
        assert_eq!(walk_long_mode(&m, 0x10000, 0x5abc), Some(0x7abc));
        assert_eq!(walk_long_mode(&m, 0x10000, 0x6000), None);
        // Tables pointing outside guest RAM fail cleanly.
        w(0x10000 + 8, 0xffff_ffff_f003);
        assert_eq!(walk_long_mode(&m, 0x10000, 1 << 39), None);
        assert_eq!(walk_long_mode(&m, u64::MAX, 0), None);
    }
}
