//! Reconnect delays: exponential backoff with full jitter applied after the cap, reset after a stable
//! period.
//!
//! Attempt `n` (from 0) waits a uniform random delay in `[0, min(cap, base · 2^n)]` ("full jitter", as in
//! the AWS architecture note on backoff): the cap bounds the exponential, then the jitter spreads the
//! capped value, so a fleet that lost its server at the same instant does not come back in lock-step.
//! A connection that stayed up for `stable_after` resets the attempt counter.

use std::time::{Duration, Instant};

use vitals_timer::Jitter;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay bound of the first retry. Default 100 ms.
    pub base: Duration,
    /// Largest delay bound. Default 30 s.
    pub cap: Duration,
    /// A connection up this long resets the backoff. Default 10 s.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// The state of one reconnecting client.
#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
    rng: Jitter,
}

impl Backoff {
    /// A fresh backoff (attempt 0) with a randomly seeded jitter source.
    pub fn new(cfg: BackoffConfig) -> Self {
        Self::with_rng(cfg, Jitter::seeded())
    }

    /// A backoff with a given jitter source (reproducible in tests).
    pub fn with_rng(cfg: BackoffConfig, rng: Jitter) -> Self {
        Backoff {
            cfg,
            attempt: 0,
            rng,
        }
    }

    /// Attempts made since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay: `min(cap, base · 2^attempt)`.
    pub fn bound(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.cfg.base.saturating_mul(factor).min(self.cfg.cap)
    }

    /// The next delay (uniform in `[0, bound]`), and counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self.bound();
        self.attempt = self.attempt.saturating_add(1);
        self.rng.sample(bound)
    }

    /// Call when a connection ends: resets the attempts if it had been up for `stable_after`.
    pub fn connection_ended(&mut self, connected_at: Instant, now: Instant) {
        if now.saturating_duration_since(connected_at) >= self.cfg.stable_after {
            self.attempt = 0;
        }
    }

    /// Resets the attempt counter.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BackoffConfig = BackoffConfig {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(5),
        stable_after: Duration::from_secs(10),
    };

    #[test]
    fn bound_doubles_then_caps_and_delays_stay_under_it() {
        let mut b = Backoff::with_rng(CFG, Jitter::from_seed(3));
        let mut bounds = Vec::new();
        for _ in 0..12 {
            let bound = b.bound();
            let d = b.next_delay();
            assert!(d <= bound);
            bounds.push(bound.as_millis());
        }
        assert_eq!(&bounds[..7], &[100, 200, 400, 800, 1600, 3200, 5000]);
        assert!(bounds[7..].iter().all(|&b| b == 5000));
        // Huge attempt counts neither overflow nor exceed the cap.
        for _ in 0..100 {
            assert!(b.next_delay() <= CFG.cap);
        }
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let mut delays = Vec::new();
        for seed in 0..2000 {
            let mut b = Backoff::with_rng(CFG, Jitter::from_seed(seed));
            for _ in 0..10 {
                b.next_delay();
            }
            delays.push(b.next_delay()); // bound is the cap here
        }
        let under_quarter = delays.iter().filter(|d| **d < CFG.cap / 4).count();
        let over_three_quarters = delays.iter().filter(|d| **d > CFG.cap * 3 / 4).count();
        assert!((350..650).contains(&under_quarter), "{under_quarter}");
        assert!(
            (350..650).contains(&over_three_quarters),
            "{over_three_quarters}"
        );
    }

    #[test]
    fn a_stable_connection_resets_the_backoff() {
        let t0 = Instant::now();
        let mut b = Backoff::with_rng(CFG, Jitter::from_seed(1));
        for _ in 0..5 {
            b.next_delay();
        }
        b.connection_ended(t0, t0 + Duration::from_secs(3));
        assert_eq!(b.attempt(), 5, "a short-lived connection keeps backing off");
        b.connection_ended(t0, t0 + Duration::from_secs(10));
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.bound(), CFG.base);
    }
}
