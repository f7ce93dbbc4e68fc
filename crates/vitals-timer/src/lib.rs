//! vitals-timer: a hierarchical timing wheel and a timer task manager built on it.
//!
//! # Layout
//! - [`wheel`]: [`Wheel<T>`], the data structure. 11 levels of 64 slots with occupancy bitmaps
//!   (`wheel/level.rs` holds the bit-level slot math), entries in a generation-checked slab
//!   (`wheel/slab.rs`). Insert, cancel and reset are O(1); a reset to a later deadline only stores it.
//!   No clock, no threads: `poll(now)` and `next_deadline()`.
//! - [`timer`]: [`Timer`], the job manager users of GoFrame's gtimer know: once, N times, forever and
//!   singleton jobs, delayed start, an [`Entry`] handle (status, start, stop, reset, close, run-now,
//!   set-times), jobs that end themselves with [`Flow::Exit`], drift-free periods with a [`MissedTicks`]
//!   policy and optional jitter. Driven by its own parked thread, or by hand on a manual clock.
//! - [`jitter`]: [`Jitter`], the small PRNG that spreads firings (also used for reconnect backoff).
//! - [`global`]: a process-wide default [`Timer`] and free functions ([`add`], [`add_once`], …).
//!
//! # Example
//! ```
//! use std::time::{Duration, Instant};
//! use vitals_timer::Wheel;
//!
//! let start = Instant::now();
//! let mut wheel = Wheel::new(start);
//! let a = wheel.insert(start + Duration::from_millis(5), "a").unwrap();
//! wheel.insert(start + Duration::from_millis(9), "b").unwrap();
//! wheel.reset(a, start + Duration::from_millis(20)).unwrap(); // the heartbeat hot path: lazy
//! let due: Vec<_> = std::iter::from_fn(|| wheel.poll(start + Duration::from_millis(10)))
//!     .map(|e| e.value)
//!     .collect();
//! assert_eq!(due, ["b"]);
//! ```

pub mod error;
pub mod global;
pub mod jitter;
pub mod timer;
pub mod wheel;

pub use error::Error;
pub use jitter::Jitter;

pub use global::{add, add_once, add_singleton, add_times, default_timer, delay_add};
pub use timer::{Ctx, Entry, Flow, JobBuilder, MissedTicks, Status, Timer, TimerBuilder};
pub use wheel::{Expired, Key, Wheel};
