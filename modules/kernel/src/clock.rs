//! The one wall clock every module's domain asks for the time: injectable, so
//! tests drive a [`ManualClock`] through TTLs, deadlines and leases. (The
//! circuit breaker measures durations with its own monotonic clock,
//! [`crate::breaker::Clock`]; this one stamps rows and events.)

use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

/// What time it is.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock, in whole milliseconds (what every store keeps).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        truncate_ms(Utc::now())
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(truncate_ms(start)))
    }

    pub fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Drop sub-millisecond precision, as every store does.
pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_keeps_milliseconds() {
        let start = DateTime::from_timestamp_nanos(1_700_000_000_123_456_789);
        let clock = ManualClock::new(start);
        assert_eq!(clock.now().timestamp_millis(), 1_700_000_000_123);
        assert_eq!(clock.now().timestamp_subsec_nanos() % 1_000_000, 0);
        clock.advance(chrono::Duration::seconds(2));
        assert_eq!(clock.now().timestamp_millis(), 1_700_000_002_123);
        assert_eq!(SystemClock.now().timestamp_subsec_nanos() % 1_000_000, 0);
    }
}
