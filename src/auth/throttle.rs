//! Slowing down password and token guessing: failed logins are counted per client address (an IPv6 address by its
//! /64, which one host usually holds whole) in a window; after a few, the address is refused for a growing, bounded
//! time after each failure — at once and without verifying anything, so guesses sent in parallel do not each get
//! a try. Failures are also counted per user name within the address, so that a success (say, with the guesser's
//! own account) forgives only the failures of the name that succeeded. The table of addresses is bounded. Pure
//! bookkeeping over a [`Clock`](crate::clock::Clock).
//!
//! Must not: block or sleep, or refuse a client that has not failed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::SharedClock;

/// Failures forgiven in a window before refusals start.
pub const FREE_FAILURES: u32 = 5;
/// How long failures are remembered.
pub const WINDOW: Duration = Duration::from_secs(300);
/// The first refusal period; each further failure doubles it, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest refusal period.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// Addresses tracked at most.
const MAX_ADDRESSES: usize = 16_384;
/// User names tracked per address at most (failures of further names count for the address only).
const MAX_NAMES_PER_ADDRESS: usize = 64;

/// The key an address is counted under: IPv4 as it is (an IPv4-mapped IPv6 address as its IPv4), IPv6 by its /64.
/// Pure.
pub fn client_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask: u128 = !0u128 << 64;
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

/// How an address is shown in messages: the address, or its /64 for IPv6.
pub fn shown_key(client: IpAddr) -> String {
    match client_key(client) {
        IpAddr::V6(prefix) => format!("{prefix}/64"),
        v4 => v4.to_string(),
    }
}

struct Failures {
    count: u32,
    since: Instant,
    /// Refused without a check until then.
    refused_until: Option<Instant>,
    /// Of `count`, the failures by user name.
    by_name: HashMap<String, u32>,
}

/// Failed logins by client address.
pub struct Throttle {
    clock: SharedClock,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

/// How long an address is refused after `count` failures in a window. Pure.
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

    /// How much longer `client` is refused (None: it may try now).
    pub fn refused_for(&self, client: Option<IpAddr>) -> Option<Duration> {
        let key = client_key(client?);
        let now = self.clock.instant();
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let until = failures.get(&key)?.refused_until?;
        let left = until.saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }

    /// Records a failed login from `client` as `name` (the user name it gave; empty for a token) and returns how
    /// long the address is now refused.
    pub fn failed(&self, client: Option<IpAddr>, name: &str) -> Duration {
        let Some(client) = client else {
            return Duration::ZERO;
        };
        let key = client_key(client);
        let now = self.clock.instant();
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&key) {
            failures.retain(|_, f| now.saturating_duration_since(f.since) < WINDOW);
            if failures.len() >= MAX_ADDRESSES {
                failures.clear();
            }
        }
        let fresh = || Failures {
            count: 0,
            since: now,
            refused_until: None,
            by_name: HashMap::new(),
        };
        let entry = failures.entry(key).or_insert_with(fresh);
        if now.saturating_duration_since(entry.since) >= WINDOW {
            *entry = fresh();
        }
        entry.count = entry.count.saturating_add(1);
        if entry.by_name.len() < MAX_NAMES_PER_ADDRESS || entry.by_name.contains_key(name) {
            let by_name = entry.by_name.entry(name.to_owned()).or_insert(0);
            *by_name = by_name.saturating_add(1);
        }
        let delay = delay_after(entry.count);
        entry.refused_until = (!delay.is_zero()).then(|| now + delay);
        delay
    }

    /// `client` logged in as `name`: forgets the failures counted for that name, not those of other names.
    pub fn succeeded(&self, client: Option<IpAddr>, name: &str) {
        let Some(client) = client else {
            return;
        };
        let key = client_key(client);
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(entry) = failures.get_mut(&key) else {
            return;
        };
        if let Some(forgiven) = entry.by_name.remove(name) {
            entry.count = entry.count.saturating_sub(forgiven);
        }
        if entry.count == 0 {
            failures.remove(&key);
        }
    }
}

/// Expensive checks (bcrypt, TokenReview) in flight per client address, capped, so that one address cannot take
/// every slot.
pub struct PerClient {
    max: usize,
    counts: std::sync::Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One check in flight from a client address; counted down when dropped.
pub struct InFlight {
    counts: std::sync::Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl PerClient {
    pub fn new(max: usize) -> PerClient {
        PerClient {
            max,
            counts: std::sync::Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts a check from `client` (by [`client_key`]), or None when it has the maximum in flight already.
    pub fn enter(&self, client: IpAddr) -> Option<InFlight> {
        let key = client_key(client);
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(InFlight {
            counts: self.counts.clone(),
            key,
        })
    }

    /// Whether nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_empty()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
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
    fn addresses_are_keyed_ipv6_by_their_64() {
        let check = |address: &str, expected: &str| {
            let ip: IpAddr = address.parse().expect("ip");
            assert_eq!(client_key(ip).to_string(), expected, "{address}");
        };
        check("10.0.0.1", "10.0.0.1");
        check("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::");
        check("2001:db8:1:2::1", "2001:db8:1:2::");
        check("2001:db8:1:3::1", "2001:db8:1:3::");
        check("::ffff:10.0.0.1", "10.0.0.1");
        check("::1", "::");
        assert_eq!(
            shown_key("2001:db8:1:2::1".parse().expect("ip")),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn failures_are_counted_per_address_in_a_window() {
        let clock = ManualClock::new();
        let throttle = Throttle::new(clock.clone());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.failed(Some(a), "x"), Duration::ZERO);
        }
        assert_eq!(throttle.refused_for(Some(a)), None);
        assert_eq!(throttle.failed(Some(a), "x"), FIRST_DELAY);
        assert_eq!(throttle.refused_for(Some(a)), Some(FIRST_DELAY));
        assert_eq!(throttle.refused_for(Some(b)), None);
        assert_eq!(throttle.failed(Some(b), "x"), Duration::ZERO);
        clock.advance(FIRST_DELAY);
        assert_eq!(throttle.refused_for(Some(a)), None, "the period is over");
        clock.advance(WINDOW);
        assert_eq!(throttle.failed(Some(a), "x"), Duration::ZERO);
        for _ in 0..FREE_FAILURES {
            throttle.failed(Some(b), "x");
        }
        throttle.succeeded(Some(b), "x");
        assert_eq!(throttle.failed(Some(b), "x"), Duration::ZERO);
        assert_eq!(throttle.failed(None, "x"), Duration::ZERO);
        assert_eq!(throttle.refused_for(None), None);
    }

    #[test]
    fn a_success_forgives_only_the_failures_of_its_own_name() {
        let clock = ManualClock::new();
        let throttle = Throttle::new(clock.clone());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..FREE_FAILURES {
            throttle.failed(Some(a), "alice");
        }
        throttle.failed(Some(a), "mallory");
        // The guesser logs in as its own account: alice's failures stand.
        throttle.succeeded(Some(a), "mallory");
        assert_eq!(throttle.failed(Some(a), "alice"), FIRST_DELAY);
    }

    #[test]
    fn checks_in_flight_are_capped_per_address() {
        let limit = PerClient::new(2);
        let a: IpAddr = "2001:db8::1".parse().expect("ip");
        let a_too: IpAddr = "2001:db8::2".parse().expect("ip");
        let b: IpAddr = "10.0.0.1".parse().expect("ip");
        let first = limit.enter(a).expect("room");
        let second = limit.enter(a_too).expect("room");
        assert!(limit.enter(a).is_none(), "the /64 has two in flight");
        let other = limit.enter(b).expect("another address");
        drop(first);
        let third = limit.enter(a).expect("room again");
        drop((second, third, other));
        assert!(limit.is_idle());
    }

    #[test]
    fn one_ipv6_64_is_one_address() {
        let clock = ManualClock::new();
        let throttle = Throttle::new(clock.clone());
        for host in 0..=FREE_FAILURES {
            let ip: IpAddr = format!("2001:db8::{:x}", host + 1).parse().expect("ip");
            throttle.failed(Some(ip), "alice");
        }
        let other_host: IpAddr = "2001:db8::ffff:1".parse().expect("ip");
        assert_eq!(throttle.refused_for(Some(other_host)), Some(FIRST_DELAY));
        let other_net: IpAddr = "2001:db8:0:1::1".parse().expect("ip");
        assert_eq!(throttle.refused_for(Some(other_net)), None);
    }
}
