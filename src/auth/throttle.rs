//! Slowing down password and token guessing: failed logins are counted per client address in a window; after a
//! few, each further failure is answered after a growing, bounded delay. The table of addresses is bounded. Pure
//! bookkeeping over a [`Clock`](crate::clock::Clock): the caller sleeps (asynchronously).
//!
//! Must not: block, or delay a client that has not failed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::SharedClock;

/// Failures forgiven in a window before delays start.
pub const FREE_FAILURES: u32 = 5;
/// How long failures are remembered.
pub const WINDOW: Duration = Duration::from_secs(300);
/// The first delay; each further failure doubles it, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// Addresses tracked at most.
const MAX_ADDRESSES: usize = 16_384;

struct Failures {
    count: u32,
    since: Instant,
}

/// Failed logins by client address.
pub struct Throttle {
    clock: SharedClock,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// The delay after `count` failures in a window. Pure.
pub fn delay_after(count: u32) -> Duration {
    if count <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES - 1).min(16);
    FIRST_DELAY
        .checked_mul(1u32 << doublings)
        .unwrap_or(MAX_DELAY)
        .min(MAX_DELAY)
}

impl Throttle {
    pub fn new(clock: SharedClock) -> Throttle {
        Throttle {
            clock,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failed login from `client` and returns how long to wait before answering.
    pub fn failed(&self, client: Option<IpAddr>) -> Duration {
        let Some(client) = client else {
            return Duration::ZERO;
        };
        let now = self.clock.instant();
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&client) {
            failures.retain(|_, f| now.saturating_duration_since(f.since) < WINDOW);
            if failures.len() >= MAX_ADDRESSES {
                failures.clear();
            }
        }
        let entry = failures.entry(client).or_insert(Failures {
            count: 0,
            since: now,
        });
        if now.saturating_duration_since(entry.since) >= WINDOW {
            *entry = Failures {
                count: 0,
                since: now,
            };
        }
        entry.count = entry.count.saturating_add(1);
        delay_after(entry.count)
    }

    /// Forgets the failures of `client` (it logged in).
    pub fn succeeded(&self, client: Option<IpAddr>) {
        if let Some(client) = client {
            self.failures
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn delays_grow_and_stay_bounded() {
        let cases = [
            (1, Duration::ZERO),
            (FREE_FAILURES, Duration::ZERO),
            (FREE_FAILURES + 1, FIRST_DELAY),
            (FREE_FAILURES + 2, FIRST_DELAY * 2),
            (FREE_FAILURES + 3, FIRST_DELAY * 4),
            (FREE_FAILURES + 100, MAX_DELAY),
            (u32::MAX, MAX_DELAY),
        ];
        for (count, expected) in cases {
            assert_eq!(delay_after(count), expected, "{count}");
        }
    }

    #[test]
    fn failures_are_counted_per_address_in_a_window() {
        let clock = ManualClock::new();
        let throttle = Throttle::new(clock.clone());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.failed(Some(a)), Duration::ZERO);
        }
        assert_eq!(throttle.failed(Some(a)), FIRST_DELAY);
        assert_eq!(throttle.failed(Some(b)), Duration::ZERO);
        clock.advance(WINDOW);
        assert_eq!(throttle.failed(Some(a)), Duration::ZERO);
        for _ in 0..FREE_FAILURES {
            throttle.failed(Some(b));
        }
        throttle.succeeded(Some(b));
        assert_eq!(throttle.failed(Some(b)), Duration::ZERO);
        assert_eq!(throttle.failed(None), Duration::ZERO);
    }
}
