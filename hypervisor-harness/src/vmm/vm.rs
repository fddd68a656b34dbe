//! The VM: KVM fds, guest memory slot, in-kernel irqchip and PIT, and the device wiring.

use super::memory::GuestMem;
use crate::devices::Interrupt;
use crate::error::HarnessError;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VmFd};
use std::sync::Arc;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;

pub const TSS_ADDR: usize = 0xfffb_d000;
pub const IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// An edge interrupt delivered through a KVM irqfd.
pub struct IrqFd {
    evt: EventFd,
    pub gsi: u32,
}

impl Interrupt for IrqFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }
}

pub struct Vm {
    pub kvm: Kvm,
    pub fd: VmFd,
    /// Setup notes for --verbose.
    pub notes: Vec<String>,
}

impl Vm {
    /// Open /dev/kvm and create the VM (69 on failure).
    pub fn open() -> Result<Self, HarnessError> {
        let hint = "(use `hypervisor-harness qemu --accel tcg` to run without KVM)";
        let kvm = Kvm::new()
            .map_err(|e| HarnessError::Unavailable(format!("cannot open /dev/kvm: {e} {hint}")))?;
        let fd = kvm
            .create_vm()
            .map_err(|e| HarnessError::Unavailable(format!("KVM_CREATE_VM failed: {e} {hint}")))?;
        Ok(Self {
            kvm,
            fd,
            notes: Vec::new(),
        })
    }

    pub fn setup(&mut self, mem: &GuestMem) -> Result<(), HarnessError> {
        let other = |what: &str, e: kvm_ioctls::Error| HarnessError::Other(format!("{what}: {e}"));
        // Guest memory first, before the irqchip: registered after KVM_CREATE_IRQCHIP the slot
        // waited 4 to 8 ms (a grace period, not CPU) on kvm_pvm here; first, 0.15 ms.
        for (slot, region) in mem.iter().enumerate() {
            use vm_memory::GuestMemoryRegion;
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| HarnessError::Other(format!("guest memory: {e}")))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM run.
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(|e| other("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        if let Err(e) = self.fd.set_tss_address(TSS_ADDR) {
            self.notes.push(format!(
                "KVM_SET_TSS_ADDR not supported here ({e}); ignored"
            ));
        }
        if let Err(e) = self.fd.set_identity_map_address(IDENTITY_MAP_ADDR) {
            self.notes.push(format!(
                "KVM_SET_IDENTITY_MAP_ADDR not supported here ({e}); ignored"
            ));
        }
        self.fd
            .create_irq_chip()
            .map_err(|e| other("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(|e| other("KVM_CREATE_PIT2", e))?;
        Ok(())
    }

    /// An irqfd on `gsi`.
    pub fn irqfd(&self, gsi: u32) -> Result<Arc<IrqFd>, HarnessError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| HarnessError::Other(format!("eventfd: {e}")))?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(|e| HarnessError::Other(format!("KVM_IRQFD on GSI {gsi}: {e}")))?;
        Ok(Arc::new(IrqFd { evt, gsi }))
    }

    /// An ioeventfd matching any write of any length at `addr`. None (with a note) if KVM
    /// refuses; the write then exits to userspace.
    pub fn ioeventfd(&mut self, addr: IoEventAddress, flags: i32) -> Option<EventFd> {
        let evt = EventFd::new(flags).ok()?;
        match self.fd.register_ioevent(&evt, &addr, NoDatamatch) {
            Ok(()) => Some(evt),
            Err(e) => {
                self.notes
                    .push(format!("KVM_IOEVENTFD at {addr:?} refused: {e}"));
                None
            }
        }
    }
}
