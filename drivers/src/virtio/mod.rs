//! virtio 1.x over PCI (modern transport, split virtqueue).
