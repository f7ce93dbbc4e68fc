//! The clock a [`Timer`](crate::Timer) reads: the system's monotonic clock, or a manual one for tests.

use std::sync::Mutex;
use std::time::Instant;

/// Where "now" comes from.
#[derive(Debug)]
pub(crate) enum Clock {
    /// `Instant::now()`.
    System,
    /// A clock that only moves when told (`Timer::advance_to`).
    Manual(Mutex<Instant>),
}

impl Clock {
    pub(crate) fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Manual(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Moves a manual clock forward to `to` (never backwards). No effect on the system clock.
    pub(crate) fn advance_to(&self, to: Instant) {
        if let Clock::Manual(t) = self {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            if to > *t {
                *t = to;
            }
        }
    }
}
