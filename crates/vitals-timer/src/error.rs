//! Errors of the timing wheel and the timer task manager.

use thiserror::Error;

/// What can go wrong when using a [`Wheel`](crate::Wheel) or a [`Timer`](crate::Timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Error {
    /// The key names an entry that has fired, been cancelled, or belongs to another wheel's history.
    #[error("stale timer key: the entry has already fired or been cancelled")]
    StaleKey,
    /// The wheel holds the maximum number of entries (2^32 - 1).
    #[error("timing wheel is full ({0} entries)")]
    Full(usize),
    /// A tick of zero length was configured.
    #[error("the tick must be at least one nanosecond")]
    ZeroTick,
    /// A periodic job was given a zero interval.
    #[error("the interval of a periodic job must be greater than zero")]
    ZeroInterval,
    /// The entry was closed; it cannot be started, reset or run again.
    #[error("the timer entry is closed")]
    Closed,
    /// The timer that owned the entry has been dropped.
    #[error("the timer has shut down")]
    TimerGone,
}
