//! Time as a value that can be passed in: the registry ages uploads and the cache ages tags and blobs by asking a
//! [`Clock`], so the in-process tests move time forward instead of sleeping. A leaf: it uses nothing of berth.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Where berth reads the time. Both readings move together: `system` for what is compared with file times and
/// shown to people, `instant` for deadlines and ages inside one process.
pub trait Clock: Send + Sync + 'static {
    /// The wall-clock time.
    fn system(&self) -> SystemTime;
    /// The monotonic time.
    fn instant(&self) -> Instant;
}

/// The shared handle every subsystem holds.
pub type SharedClock = Arc<dyn Clock>;

/// The real time of the machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn system(&self) -> SystemTime {
        SystemTime::now()
    }
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// The real clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that stands still until it is told to move: the real time at its creation plus what [`ManualClock::advance`]
/// added. For tests.
#[derive(Debug)]
pub struct ManualClock {
    system_start: SystemTime,
    instant_start: Instant,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            system_start: SystemTime::now(),
            instant_start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        })
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut elapsed = self
            .elapsed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *elapsed = elapsed.saturating_add(by);
    }

    fn elapsed(&self) -> Duration {
        *self
            .elapsed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clock for ManualClock {
    fn system(&self) -> SystemTime {
        self.system_start + self.elapsed()
    }
    fn instant(&self) -> Instant {
        self.instant_start + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new();
        let (system, instant) = (clock.system(), clock.instant());
        assert_eq!(clock.system(), system);
        assert_eq!(clock.instant(), instant);
        clock.advance(Duration::from_secs(3600));
        assert_eq!(clock.system(), system + Duration::from_secs(3600));
        assert_eq!(clock.instant(), instant + Duration::from_secs(3600));
    }
}
