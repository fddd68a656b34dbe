//! The control queue (virtio 1.x §5.1.6.5): each chain is a command, `class`, `command` and
//! its data (device-readable), then one ack byte (device-writable) that gets VIRTIO_NET_OK or
//! VIRTIO_NET_ERR. Known: MQ VQ_PAIRS_SET (with MQ), RX PROMISC and ALLMULTI (with CTRL_RX;
//! accepted and recorded: the device delivers whatever the backend gives, it filters nothing).
//! Everything else is answered VIRTIO_NET_ERR.

use super::DropReason;
use crate::devices::virtio::Memory;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Command bytes the device reads (class, command, data); the longest command it knows needs 4.
const MAX_COMMAND: usize = 16;

/// What the control queue may change, and what it recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtrlState {
    /// MQ negotiated.
    pub mq: bool,
    /// CTRL_RX negotiated.
    pub ctrl_rx: bool,
    /// Queue pairs the device has.
    pub max_pairs: u16,
    /// Queue pairs in use (1 until the driver sets more).
    pub active_pairs: u16,
    pub promisc: bool,
    pub allmulti: bool,
}

/// The outcome of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlOutcome {
    /// The ack was written (OK or ERR); used length 1.
    Acked(u8),
    /// No ack byte to write: the chain is returned with length 0.
    Unanswerable(DropReason),
}

/// Run one command chain.
pub fn handle<M>(mem: &Memory, chain: DescriptorChain<M>, st: &mut CtrlState) -> CtrlOutcome
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut cmd = [0u8; MAX_COMMAND];
    let mut cmd_len = 0usize;
    let mut ack: Option<GuestAddress> = None;
    let mut seen_writable = false;
    let mut ends = true;
    let mut any = false;
    for d in chain {
        any = true;
        ends = !d.has_next();
        if d.is_write_only() {
            seen_writable = true;
            if ack.is_none() && d.len() > 0 {
                if !mem.check_range(d.addr(), 1) {
                    return CtrlOutcome::Unanswerable(DropReason::CtrlBadChain);
                }
                ack = Some(d.addr());
            }
        } else {
            if seen_writable {
                return CtrlOutcome::Unanswerable(DropReason::CtrlBadChain);
            }
            let take = (d.len() as usize).min(MAX_COMMAND - cmd_len);
            if mem
                .read_slice(&mut cmd[cmd_len..cmd_len + take], d.addr())
                .is_err()
            {
                return CtrlOutcome::Unanswerable(DropReason::CtrlBadChain);
            }
            cmd_len += take;
        }
    }
    let Some(ack) = ack.filter(|_| any && ends) else {
        return CtrlOutcome::Unanswerable(DropReason::CtrlBadChain);
    };
    let status = if execute(&cmd[..cmd_len], st) {
        VIRTIO_NET_OK
    } else {
        VIRTIO_NET_ERR
    } as u8;
    match mem.write_obj(status, ack) {
        Ok(()) => CtrlOutcome::Acked(status),
        Err(_) => CtrlOutcome::Unanswerable(DropReason::CtrlBadChain),
    }
}

/// Apply a command; true for OK.
fn execute(cmd: &[u8], st: &mut CtrlState) -> bool {
    let [class, command, data @ ..] = cmd else {
        return false;
    };
    match (*class as u32, *command as u32) {
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) if st.mq => {
            let Some(&[lo, hi]) = data.first_chunk::<2>() else {
                return false;
            };
            let pairs = u16::from_le_bytes([lo, hi]);
            if (1..=st.max_pairs).contains(&pairs) {
                st.active_pairs = pairs;
                true
            } else {
                false
            }
        }
        (VIRTIO_NET_CTRL_RX, c @ (VIRTIO_NET_CTRL_RX_PROMISC | VIRTIO_NET_CTRL_RX_ALLMULTI))
            if st.ctrl_rx =>
        {
            let Some(&on) = data.first() else {
                return false;
            };
            if c == VIRTIO_NET_CTRL_RX_PROMISC {
                st.promisc = on != 0;
            } else {
                st.allmulti = on != 0;
            }
            true
        }
        _ => false,
    }
}
