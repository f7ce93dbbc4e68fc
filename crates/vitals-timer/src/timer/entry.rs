//! `Entry`: the handle of one scheduled job, with its status and its start / stop / reset / close /
//! run-now / set-times controls.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Inner, Job, JobSpec, MissedTicks};
use crate::{Error, Key};

/// Remaining-runs value meaning "forever".
pub(crate) const FOREVER: u64 = u64::MAX;

const READY: u8 = 0;
const STOPPED: u8 = 1;
const CLOSED: u8 = 2;

/// The state of an [`Entry`], as gtimer names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Scheduled, waiting for its next deadline.
    Ready,
    /// The job is executing now (takes precedence over `Stopped`).
    Running,
    /// Stopped: no firing until [`Entry::start`] or [`Entry::reset`].
    Stopped,
    /// Closed for good: by [`Entry::close`], [`Flow::Exit`](crate::Flow::Exit), its last run, or a panic.
    Closed,
}

/// Scheduling state, only touched under the timer's state lock.
#[derive(Debug)]
pub(crate) struct Sched {
    /// Key in the wheel while scheduled.
    pub(crate) key: Option<Key>,
    /// The drift-free deadline of the next firing (before jitter).
    pub(crate) base: Instant,
}

/// Everything about one job, shared by the timer and the handles.
pub(crate) struct Shared {
    pub(crate) job: Job,
    pub(crate) interval: Duration,
    pub(crate) policy: MissedTicks,
    pub(crate) jitter: Duration,
    pub(crate) singleton: AtomicBool,
    status: AtomicU8,
    pub(crate) running: AtomicU32,
    /// Runs left; [`FOREVER`] for no limit.
    pub(crate) times: AtomicU64,
    pub(crate) runs: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) sched: Mutex<Sched>,
    pub(crate) timer: Weak<Inner>,
}

/// Handle to a scheduled job. Cheap to clone; all clones control the same job.
#[derive(Clone)]
pub struct Entry(pub(crate) Arc<Shared>);

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("status", &self.status())
            .field("interval", &self.0.interval)
            .field("runs", &self.runs())
            .finish()
    }
}

impl Shared {
    pub(crate) fn new(job: Job, spec: &JobSpec, base: Instant, timer: Weak<Inner>) -> Self {
        Shared {
            job,
            interval: spec.interval,
            policy: spec.policy,
            jitter: spec.jitter,
            singleton: AtomicBool::new(spec.singleton),
            status: AtomicU8::new(READY),
            running: AtomicU32::new(0),
            times: AtomicU64::new(spec.times),
            runs: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            sched: Mutex::new(Sched { key: None, base }),
            timer,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.status.load(Ordering::Acquire) == CLOSED
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.status.load(Ordering::Acquire) == READY
    }

    /// Sets the status unless the entry is closed. Returns false if it was closed.
    pub(crate) fn set_open_status(&self, stopped: bool) -> bool {
        let to = if stopped { STOPPED } else { READY };
        self.status
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != CLOSED).then_some(to)
            })
            .is_ok()
    }

    pub(crate) fn mark_closed(&self) {
        self.status.store(CLOSED, Ordering::Release);
    }

    /// Takes one run from the budget. False when none is left.
    pub(crate) fn take_time(&self) -> bool {
        self.times
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| match t {
                FOREVER => Some(FOREVER),
                0 => None,
                t => Some(t - 1),
            })
            .is_ok()
    }

    pub(crate) fn times_left(&self) -> u64 {
        self.times.load(Ordering::Acquire)
    }

    pub(crate) fn lock_sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Entry {
    fn timer(&self) -> Result<Arc<Inner>, Error> {
        self.0.timer.upgrade().ok_or(Error::TimerGone)
    }

    /// The entry's status.
    pub fn status(&self) -> Status {
        match self.0.status.load(Ordering::Acquire) {
            CLOSED => Status::Closed,
            _ if self.0.running.load(Ordering::Acquire) > 0 => Status::Running,
            STOPPED => Status::Stopped,
            _ => Status::Ready,
        }
    }

    /// The interval between firings (for a once job: its delay).
    pub fn interval(&self) -> Duration {
        self.0.interval
    }

    /// How many times the job has run (completed or panicked).
    pub fn runs(&self) -> u64 {
        self.0.runs.load(Ordering::Acquire)
    }

    /// How many firings were skipped because a singleton job was still running.
    pub fn skipped(&self) -> u64 {
        self.0.skipped.load(Ordering::Acquire)
    }

    /// Runs left, or `None` for a job without limit.
    pub fn times_left(&self) -> Option<u64> {
        Some(self.0.times_left()).filter(|&t| t != FOREVER)
    }

    /// True when firings are skipped while a previous run is still executing.
    pub fn is_singleton(&self) -> bool {
        self.0.singleton.load(Ordering::Acquire)
    }

    /// Turns singleton mode on or off.
    pub fn set_singleton(&self, singleton: bool) {
        self.0.singleton.store(singleton, Ordering::Release);
    }

    /// Sets the number of runs left (`0` closes the entry now). A forever job becomes an N-times job.
    pub fn set_times(&self, times: u64) -> Result<(), Error> {
        if self.0.is_closed() {
            return Err(Error::Closed);
        }
        self.0.times.store(times, Ordering::Release);
        if times == 0 {
            self.close();
        }
        Ok(())
    }

    /// The drift-free deadline of the next firing (before jitter), while the entry is scheduled.
    pub fn next_deadline(&self) -> Option<Instant> {
        let sched = self.0.lock_sched();
        sched.key.map(|_| sched.base)
    }

    /// Stops the entry: it stays alive but does not fire until [`start`](Self::start) or
    /// [`reset`](Self::reset). A run already executing finishes.
    pub fn stop(&self) -> Result<(), Error> {
        let timer = self.timer()?;
        if !self.0.set_open_status(true) {
            return Err(Error::Closed);
        }
        timer.unschedule(&self.0);
        Ok(())
    }

    /// Starts a stopped entry: its next firing is one interval from now. No effect on a ready entry.
    pub fn start(&self) -> Result<(), Error> {
        let timer = self.timer()?;
        if self.0.is_ready() {
            return Ok(());
        }
        if !self.0.set_open_status(false) {
            return Err(Error::Closed);
        }
        timer.schedule_from_now(self);
        Ok(())
    }

    /// Restarts the schedule: the next firing is one full interval from now, and the entry is ready
    /// (also when it was stopped).
    pub fn reset(&self) -> Result<(), Error> {
        let timer = self.timer()?;
        if !self.0.set_open_status(false) {
            return Err(Error::Closed);
        }
        timer.schedule_from_now(self);
        Ok(())
    }

    /// Closes the entry for good: it never fires again. A run already executing finishes.
    pub fn close(&self) {
        self.0.mark_closed();
        if let Ok(timer) = self.timer() {
            timer.unschedule(&self.0);
        }
    }

    /// Runs the job once now, outside its schedule (which is unchanged). It counts as one of its runs:
    /// an N-times entry uses up one, and closes after its last. With the inline executor the job runs on
    /// the calling thread; with a tokio runtime it is spawned. Returns `Ok(false)` when a singleton job is
    /// running already (nothing is started).
    pub fn run(&self) -> Result<bool, Error> {
        let timer = self.timer()?;
        if self.0.is_closed() {
            return Err(Error::Closed);
        }
        if self.is_singleton() && self.0.running.load(Ordering::Acquire) > 0 {
            return Ok(false);
        }
        if !self.0.take_time() {
            return Err(Error::Closed);
        }
        let now = timer.clock.now();
        timer.execute(self.clone(), now, now);
        Ok(true)
    }
}
