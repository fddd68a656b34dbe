//! Fully emulated NICs (every register access traps): the e1000 (82540EM) and the RTL8139C.
//! Like virtio-net they take a `Box<dyn NetBackend>` and nothing else of the network.

pub mod e1000;
pub mod rtl8139;

/// A level-triggered interrupt line (PCI INTx): the model says what level the line should have
/// after each register access or ring pass; `vmm/` turns a change into `KVM_IRQ_LINE`.
pub trait IrqLevel: Send + Sync {
    fn set_level(&self, high: bool);
}
