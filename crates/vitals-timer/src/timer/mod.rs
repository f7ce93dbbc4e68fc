//! `Timer`: a timer task manager over a [`Wheel`]: once, N times, forever and singleton jobs.
//!
//! # Semantics (the choices, written down)
//! - **Schedule.** A job added with interval `i` at time `t0` (after an optional `delay`) first fires at
//!   `t0 + delay + i`, then every `i`. Periodic deadlines are `previous deadline + i`, never "when the last
//!   run ended + i", so 1000 periods of 1 s end at 1000 s (within one tick). A once job fires at
//!   `t0 + delay + i` (the shortcuts [`Timer::add_once`] take the delay as `i`).
//! - **Missed ticks.** After a stall (the driver woke late), [`MissedTicks`] decides: `Burst` runs every
//!   missed firing at once, `Skip` (the default) runs once and keeps the phase (the next deadline is the
//!   first `t0 + k·i` in the future), `Delay` runs once and restarts the period from now.
//! - **Jitter.** With `jitter(j)` each firing happens at its drift-free deadline plus a uniform `[0, j]`;
//!   the next deadline is still computed from the drift-free one.
//! - **Singleton.** A firing that comes while the previous run is still executing is skipped (counted in
//!   [`Entry::skipped`]); it uses up none of the entry's times.
//! - **Ending.** A job returns [`Flow::Exit`] to close its entry. A panicking job is caught, logged with
//!   `tracing::error!`, and only its entry is closed. An N-times entry closes after its N-th run.
//! - **Executors.** By default jobs run inline, on the driver thread (or, for a manual timer, on the
//!   thread calling [`Timer::advance_to`]); long jobs then delay other jobs. Given a tokio runtime handle
//!   (feature `tokio`), each run is spawned with `spawn_blocking`.
//! - **Driver.** [`Timer::new`] starts one thread that parks until the next deadline (a condition variable
//!   with a timeout), so an idle timer does not tick. [`Timer::manual`] has no thread and a manual clock.

mod clock;
mod entry;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use entry::{Entry, Status};

use crate::jitter::Jitter;
use crate::{Error, Wheel};
use clock::Clock;
use entry::{FOREVER, Shared};

/// What a job tells the timer when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep the entry scheduled.
    Continue,
    /// Close the entry: no further runs.
    Exit,
}

/// What to do with firings missed while the driver was stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissedTicks {
    /// Run once for every missed deadline, back to back.
    Burst,
    /// Run once, then continue on the original phase (missed firings are dropped).
    #[default]
    Skip,
    /// Run once, then restart the period from now.
    Delay,
}

/// What a running job is told.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The job's own entry (to stop, close or inspect it from inside).
    pub entry: &'a Entry,
    /// The drift-free deadline this run was due at (for [`Entry::run`]: the time of the call).
    pub scheduled: Instant,
    /// The clock when the run was dispatched.
    pub now: Instant,
}

/// The job function type.
pub(crate) type Job = Box<dyn Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static>;

/// Shared state of one timer.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) clock: Clock,
    state: Mutex<State>,
    wake: Condvar,
    #[cfg(feature = "tokio")]
    runtime: Option<tokio::runtime::Handle>,
}

#[derive(Debug)]
struct State {
    wheel: Wheel<Entry>,
    jitter: Jitter,
    /// When the driver thread will wake by itself; `None` while it waits without a timeout.
    driver_wakes_at: Option<Instant>,
    shutdown: bool,
    wakeups: u64,
}

/// A timer task manager. Cloning gives another handle to the same timer; the driver thread (if any)
/// stops when the last `Timer` handle is dropped ([`Entry`] handles do not keep it alive).
#[derive(Debug, Clone)]
pub struct Timer {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

/// Shuts the driver down when the last `Timer` clone goes.
#[derive(Debug)]
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.lock().shutdown = true;
        self.0.wake.notify_all();
    }
}

/// Builds a [`Timer`]: tick, executor, clock.
#[derive(Debug)]
pub struct TimerBuilder {
    tick: Duration,
    manual_start: Option<Instant>,
    #[cfg(feature = "tokio")]
    runtime: Option<tokio::runtime::Handle>,
}

impl TimerBuilder {
    /// Wheel tick (default 1 ms): deadlines are rounded up to it.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Use a manual clock starting at `start` and no driver thread; time moves by [`Timer::advance_to`].
    pub fn manual(mut self, start: Instant) -> Self {
        self.manual_start = Some(start);
        self
    }

    /// Run jobs on this tokio runtime (`spawn_blocking`) instead of inline.
    #[cfg(feature = "tokio")]
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Creates the timer (and its driver thread, for the system clock).
    pub fn build(self) -> Result<Timer, Error> {
        let clock = match self.manual_start {
            Some(start) => Clock::Manual(Mutex::new(start)),
            None => Clock::System,
        };
        let wheel = Wheel::with_tick(clock.now(), self.tick, 0)?;
        let inner = Arc::new(Inner {
            clock,
            state: Mutex::new(State {
                wheel,
                jitter: Jitter::seeded(),
                driver_wakes_at: None,
                shutdown: false,
                wakeups: 0,
            }),
            wake: Condvar::new(),
            #[cfg(feature = "tokio")]
            runtime: self.runtime,
        });
        if matches!(inner.clock, Clock::System) {
            let driver = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("vitals-timer".into())
                .spawn(move || driver.drive())
                .map_err(|_| Error::TimerGone)?;
        }
        Ok(Timer {
            _owner: Arc::new(Owner(Arc::clone(&inner))),
            inner,
        })
    }
}

/// How a job is scheduled; filled in by [`JobBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct JobSpec {
    pub(crate) interval: Duration,
    pub(crate) delay: Duration,
    pub(crate) times: u64,
    pub(crate) singleton: bool,
    pub(crate) policy: MissedTicks,
    pub(crate) jitter: Duration,
}

/// Describes one job before it is added: `timer.job(interval).times(3).singleton().start(f)`.
#[derive(Debug)]
#[must_use = "a job builder does nothing until `.start(job)`"]
pub struct JobBuilder<'t> {
    timer: &'t Timer,
    spec: JobSpec,
}

impl JobBuilder<'_> {
    /// Run at most `n` times, then close (default: forever). `times(1)` is a once job.
    pub fn times(mut self, n: u64) -> Self {
        self.spec.times = n;
        self
    }

    /// Skip a firing while the previous run is still executing.
    pub fn singleton(mut self) -> Self {
        self.spec.singleton = true;
        self
    }

    /// Wait `delay` before the schedule starts (first firing at `now + delay + interval`).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.spec.delay = delay;
        self
    }

    /// What to do with firings missed during a stall (default [`MissedTicks::Skip`]).
    pub fn missed_ticks(mut self, policy: MissedTicks) -> Self {
        self.spec.policy = policy;
        self
    }

    /// Fire each time at the deadline plus a uniform random `[0, max]`.
    pub fn jitter(mut self, max: Duration) -> Self {
        self.spec.jitter = max;
        self
    }

    /// Adds the job. Errors: [`Error::ZeroInterval`] for a repeating job with a zero interval,
    /// [`Error::Closed`] for `times(0)`, [`Error::TimerGone`] if the driver has shut down.
    pub fn start<F>(self, job: F) -> Result<Entry, Error>
    where
        F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
    {
        let spec = self.spec;
        if spec.times == 0 {
            return Err(Error::Closed);
        }
        if spec.interval.is_zero() && spec.times > 1 {
            return Err(Error::ZeroInterval);
        }
        let inner = &self.timer.inner;
        let base = inner.clock.now() + spec.delay + spec.interval;
        let shared = Shared::new(Box::new(job), &spec, base, Arc::downgrade(inner));
        let entry = Entry(Arc::new(shared));
        {
            let mut state = inner.lock();
            if state.shutdown {
                return Err(Error::TimerGone);
            }
            let mut sched = entry.0.lock_sched();
            inner.file(&mut state, &entry, &mut sched, base)?;
        }
        Ok(entry)
    }
}

impl Timer {
    /// A timer on the system clock with a 1 ms tick, running jobs inline on its driver thread.
    pub fn new() -> Result<Timer, Error> {
        Self::builder().build()
    }

    /// A timer without a driver thread on a manual clock starting at `start` (for tests and simulations).
    pub fn manual(start: Instant) -> Result<Timer, Error> {
        Self::builder().manual(start).build()
    }

    /// A builder for tick, clock and executor.
    pub fn builder() -> TimerBuilder {
        TimerBuilder {
            tick: crate::wheel::DEFAULT_TICK,
            manual_start: None,
            #[cfg(feature = "tokio")]
            runtime: None,
        }
    }

    /// Describes a job firing every `interval`; finish with [`JobBuilder::start`].
    pub fn job(&self, interval: Duration) -> JobBuilder<'_> {
        JobBuilder {
            timer: self,
            spec: JobSpec {
                interval,
                delay: Duration::ZERO,
                times: FOREVER,
                singleton: false,
                policy: MissedTicks::default(),
                jitter: Duration::ZERO,
            },
        }
    }

    /// Adds a job that runs every `interval`, forever.
    pub fn add<F>(&self, interval: Duration, job: F) -> Result<Entry, Error>
    where
        F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
    {
        self.job(interval).start(job)
    }

    /// Adds a job that runs once, after `delay`.
    pub fn add_once<F>(&self, delay: Duration, job: F) -> Result<Entry, Error>
    where
        F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
    {
        self.job(delay).times(1).start(job)
    }

    /// Adds a job that runs every `interval`, `times` times.
    pub fn add_times<F>(&self, interval: Duration, times: u64, job: F) -> Result<Entry, Error>
    where
        F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
    {
        self.job(interval).times(times).start(job)
    }

    /// Adds a forever job that skips a firing while its previous run is still executing.
    pub fn add_singleton<F>(&self, interval: Duration, job: F) -> Result<Entry, Error>
    where
        F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
    {
        self.job(interval).singleton().start(job)
    }

    /// Adds a forever job whose schedule starts after `delay`.
    pub fn delay_add<F>(&self, delay: Duration, interval: Duration, job: F) -> Result<Entry, Error>
    where
        F: Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
    {
        self.job(interval).delay(delay).start(job)
    }

    /// The timer's clock now.
    pub fn now(&self) -> Instant {
        self.inner.clock.now()
    }

    /// Number of scheduled entries.
    pub fn len(&self) -> usize {
        self.inner.lock().wheel.len()
    }

    /// True when no entry is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the timer next has work (at or before the earliest deadline); `None` when idle.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.inner.lock().wheel.next_deadline()
    }

    /// How many times the driver thread has woken up (a measure of idle cost; 0 for a manual timer).
    pub fn wakeups(&self) -> u64 {
        self.inner.lock().wakeups
    }

    /// Manual clock: moves time to `to` and runs every job due by then (inline, on this thread, unless a
    /// runtime was given). Returns the number of runs dispatched. On a system-clock timer it only runs
    /// what is already due.
    pub fn advance_to(&self, to: Instant) -> usize {
        self.inner.clock.advance_to(to);
        let now = self.inner.clock.now();
        let due = self.inner.collect_due(&mut self.inner.lock(), now);
        let n = due.len();
        for (entry, scheduled) in due {
            self.inner.execute(entry, scheduled, now);
        }
        n
    }

    /// Manual clock: [`advance_to`](Self::advance_to) `now + by`.
    pub fn advance(&self, by: Duration) -> usize {
        self.advance_to(self.now() + by)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Files `entry` to fire at `base` (plus jitter) and wakes the driver if that is sooner than it
    /// planned to wake.
    fn file(
        &self,
        state: &mut State,
        entry: &Entry,
        sched: &mut entry::Sched,
        base: Instant,
    ) -> Result<(), Error> {
        let at = base + state.jitter.sample(entry.0.jitter);
        if let Some(key) = sched.key.take() {
            // Re-use a cancelled key's slab entry; cancel is O(1).
            let _ = state.wheel.cancel(key);
        }
        sched.base = base;
        sched.key = Some(state.wheel.insert(at, entry.clone())?);
        if state.driver_wakes_at.is_none_or(|w| at < w) {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Removes the entry from the wheel (stop / close).
    fn unschedule(&self, shared: &Shared) {
        let mut state = self.lock();
        if let Some(key) = shared.lock_sched().key.take() {
            let _ = state.wheel.cancel(key);
        }
    }

    /// Re-files `entry` one interval from now (start / reset).
    fn schedule_from_now(&self, entry: &Entry) {
        let base = self.clock.now() + entry.0.interval;
        let mut state = self.lock();
        let mut sched = entry.0.lock_sched();
        // The only error is a full wheel; the entry then stays unscheduled, as if stopped.
        let _ = self.file(&mut state, entry, &mut sched, base);
    }

    /// Takes every entry due by `now` from the wheel, reschedules the periodic ones (drift-free), and
    /// returns the runs to dispatch, in deadline order.
    fn collect_due(&self, state: &mut State, now: Instant) -> Vec<(Entry, Instant)> {
        let mut due = Vec::new();
        while let Some(expired) = state.wheel.poll(now) {
            let entry = expired.value;
            let mut sched = entry.0.lock_sched();
            sched.key = None;
            if !entry.0.is_ready() {
                continue;
            }
            let scheduled = sched.base;
            let skip = entry.is_singleton()
                && entry.0.running.load(std::sync::atomic::Ordering::Acquire) > 0;
            if skip {
                entry
                    .0
                    .skipped
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            } else if !entry.0.take_time() {
                entry.0.mark_closed();
                continue;
            }
            if entry.0.times_left() > 0 {
                let next = next_base(&entry.0, scheduled, now);
                let _ = self.file(state, &entry, &mut sched, next);
            }
            drop(sched);
            if !skip {
                due.push((entry, scheduled));
            }
        }
        due.sort_by_key(|(_, scheduled)| *scheduled);
        due
    }

    /// Runs one job: inline, or spawned on the runtime.
    fn execute(self: &Arc<Self>, entry: Entry, scheduled: Instant, now: Instant) {
        entry
            .0
            .running
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        #[cfg(feature = "tokio")]
        if let Some(rt) = &self.runtime {
            rt.spawn_blocking(move || run_job(entry, scheduled, now));
            return;
        }
        run_job(entry, scheduled, now);
    }

    /// The driver thread: run what is due, then park until the next deadline or a notification.
    fn drive(self: Arc<Self>) {
        let mut state = self.lock();
        loop {
            if state.shutdown {
                return;
            }
            state.wakeups += 1;
            let now = self.clock.now();
            let due = self.collect_due(&mut state, now);
            if !due.is_empty() {
                drop(state);
                for (entry, scheduled) in due {
                    self.execute(entry, scheduled, now);
                }
                state = self.lock();
                continue;
            }
            let next = state.wheel.next_deadline();
            state.driver_wakes_at = next;
            state = match next {
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    self.wake
                        .wait_timeout(state, wait)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0)
                }
                None => self.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// The next drift-free deadline after a firing due at `scheduled`, observed at `now`.
fn next_base(shared: &Shared, scheduled: Instant, now: Instant) -> Instant {
    let interval = shared.interval;
    let next = scheduled + interval;
    if next > now || interval.is_zero() {
        return next;
    }
    match shared.policy {
        MissedTicks::Burst => next,
        MissedTicks::Delay => now + interval,
        MissedTicks::Skip => {
            // The first scheduled + k·interval strictly after now.
            let behind = now.duration_since(scheduled).as_nanos();
            let k = behind / interval.as_nanos() + 1;
            let k = u32::try_from(k).unwrap_or(u32::MAX);
            scheduled + interval.saturating_mul(k)
        }
    }
}

/// Calls the job, catching a panic; closes the entry on `Exit`, a panic, or its last run.
fn run_job(entry: Entry, scheduled: Instant, now: Instant) {
    use std::sync::atomic::Ordering;
    let ctx = Ctx {
        entry: &entry,
        scheduled,
        now,
    };
    let result = catch_unwind(AssertUnwindSafe(|| (entry.0.job)(&ctx)));
    entry.0.runs.fetch_add(1, Ordering::AcqRel);
    entry.0.running.fetch_sub(1, Ordering::AcqRel);
    match result {
        Ok(Flow::Continue) if entry.0.times_left() > 0 => {}
        Ok(_) => entry.close(),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            tracing::error!(panic = %msg, interval = ?entry.0.interval, "timer job panicked; closing its entry");
            entry.close();
        }
    }
}

#[cfg(test)]
mod tests;
