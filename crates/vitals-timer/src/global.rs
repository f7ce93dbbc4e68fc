//! A process-wide default [`Timer`] and free functions on it, like gtimer's package-level functions.

use std::sync::OnceLock;
use std::time::Duration;

use crate::{Ctx, Entry, Error, Flow, Timer};

static DEFAULT: OnceLock<Result<Timer, Error>> = OnceLock::new();

/// The process-wide timer (system clock, 1 ms tick, inline jobs), started on first use.
pub fn default_timer() -> Result<&'static Timer, Error> {
    DEFAULT.get_or_init(Timer::new).as_ref().map_err(|e| *e)
}

/// [`Timer::add`] on the default timer: every `interval`, forever.
pub fn add<F>(interval: Duration, job: F) -> Result<Entry, Error>
where
    F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
{
    default_timer()?.add(interval, job)
}

/// [`Timer::add_once`] on the default timer: once, after `delay`.
pub fn add_once<F>(delay: Duration, job: F) -> Result<Entry, Error>
where
    F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
{
    default_timer()?.add_once(delay, job)
}

/// [`Timer::add_times`] on the default timer: every `interval`, `times` times.
pub fn add_times<F>(interval: Duration, times: u64, job: F) -> Result<Entry, Error>
where
    F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
{
    default_timer()?.add_times(interval, times, job)
}

/// [`Timer::add_singleton`] on the default timer.
pub fn add_singleton<F>(interval: Duration, job: F) -> Result<Entry, Error>
where
    F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
{
    default_timer()?.add_singleton(interval, job)
}

/// [`Timer::delay_add`] on the default timer: every `interval` after `delay`, forever.
pub fn delay_add<F>(delay: Duration, interval: Duration, job: F) -> Result<Entry, Error>
where
    F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
{
    default_timer()?.delay_add(delay, interval, job)
}
