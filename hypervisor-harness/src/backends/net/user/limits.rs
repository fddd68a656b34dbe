//! Limits on the proxied flows, so that a guest cannot exhaust the host's sockets or memory:
//! at most so many flows at once, so many of them half-open (a SYN taken, no handshake
//! finished), and none idle for ever. A flow beyond a limit is refused (the guest gets a
//! RST); an expired one is closed at both ends. Each outcome is counted.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    pub max_flows: usize,
    pub max_half_open: usize,
    /// A handshake not finished within this is abandoned.
    pub half_open_timeout: Duration,
    /// A flow that moved no byte for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            max_flows: 256,
            max_half_open: 32,
            half_open_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Why a new flow was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooMany,
    TooManyHalfOpen,
}

/// Why a flow was closed by the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    HalfOpen,
    Idle,
}

impl FlowLimits {
    /// May one more flow open, with `flows` open of which `half_open` are half-open?
    pub fn admit(&self, flows: usize, half_open: usize) -> Result<(), Refusal> {
        if flows >= self.max_flows {
            Err(Refusal::TooMany)
        } else if half_open >= self.max_half_open {
            Err(Refusal::TooManyHalfOpen)
        } else {
            Ok(())
        }
    }

    /// Whether a flow `age` old, `idle` since it last moved a byte, is past its time.
    pub fn expired(&self, established: bool, age: Duration, idle: Duration) -> Option<Expiry> {
        if !established && age >= self.half_open_timeout {
            Some(Expiry::HalfOpen)
        } else if idle >= self.idle_timeout {
            Some(Expiry::Idle)
        } else {
            None
        }
    }

    /// How long until a flow of this state could expire (for the backend's timer).
    pub fn next_expiry(&self, established: bool, age: Duration, idle: Duration) -> Duration {
        let idle_left = self.idle_timeout.saturating_sub(idle);
        if established {
            idle_left
        } else {
            idle_left.min(self.half_open_timeout.saturating_sub(age))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn admits_up_to_each_limit() {
        let l = FlowLimits {
            max_flows: 4,
            max_half_open: 2,
            ..FlowLimits::default()
        };
        assert_eq!(l.admit(0, 0), Ok(()));
        assert_eq!(l.admit(3, 1), Ok(()));
        assert_eq!(l.admit(3, 2), Err(Refusal::TooManyHalfOpen));
        assert_eq!(l.admit(4, 0), Err(Refusal::TooMany));
    }

    #[test]
    fn expires_half_open_then_idle() {
        let l = FlowLimits::default();
        assert_eq!(l.expired(false, S(9), S(9)), None);
        assert_eq!(l.expired(false, S(10), S(10)), Some(Expiry::HalfOpen));
        // Established flows are not held to the handshake's time.
        assert_eq!(l.expired(true, S(1000), S(299)), None);
        assert_eq!(l.expired(true, S(1000), S(300)), Some(Expiry::Idle));
        assert_eq!(l.next_expiry(false, S(4), S(4)), S(6));
        assert_eq!(l.next_expiry(true, S(4), S(4)), S(296));
        assert_eq!(l.next_expiry(true, S(400), S(400)), S(0));
    }
}
