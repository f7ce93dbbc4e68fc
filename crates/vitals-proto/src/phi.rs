//! Phi-accrual failure detector (Hayashibara et al.), over a fixed window of inter-arrival times.
//!
//! `phi(t) = -log10(P(next arrival later than t))` under a normal distribution fitted to the
//! window, with the logistic approximation of the normal CDF that Akka uses. The standard
//! deviation is floored at `min_std_dev`, and `acceptable_pause` is subtracted from the elapsed
//! time before evaluating, so a known pause (GC, a slow peer) does not raise suspicion.

use std::collections::VecDeque;
use std::time::Duration;

/// Phi-accrual configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhiConfig {
    /// Phi at which the peer is declared dead (before `timeout`). Default 8.0.
    pub threshold: f64,
    /// Phi at which [`Event::Suspect`](crate::Event::Suspect) is raised (and a probe ping sent).
    /// Default 3.0.
    pub suspect_threshold: f64,
    /// Inter-arrival samples kept. Default 100.
    pub window: usize,
    /// Floor on the standard deviation. Default 100 ms.
    pub min_std_dev: Duration,
    /// Silence tolerated on top of the distribution. Default 0.
    pub acceptable_pause: Duration,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            threshold: 8.0,
            suspect_threshold: 3.0,
            window: 100,
            min_std_dev: Duration::from_millis(100),
            acceptable_pause: Duration::ZERO,
        }
    }
}

/// Phi is not computed until this many samples were taken (the timeout still applies).
pub const MIN_SAMPLES: usize = 3;

/// Sample window with running sums (O(1) per sample, no allocation once full).
#[derive(Debug, Clone)]
pub(crate) struct PhiDetector {
    cfg: PhiConfig,
    /// Samples in milliseconds.
    samples: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl PhiDetector {
    pub(crate) fn new(cfg: PhiConfig) -> PhiDetector {
        PhiDetector {
            cfg,
            samples: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
        }
    }

    pub(crate) fn config(&self) -> &PhiConfig {
        &self.cfg
    }

    pub(crate) fn add(&mut self, gap: Duration) {
        let ms = gap.as_secs_f64() * 1000.0;
        if self.samples.len() >= self.cfg.window.max(1)
            && let Some(old) = self.samples.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.samples.push_back(ms);
        self.sum += ms;
        self.sum_sq += ms * ms;
    }

    /// Phi after `elapsed` of silence, `None` while too few samples were taken.
    pub(crate) fn phi(&self, elapsed: Duration) -> Option<f64> {
        let n = self.samples.len();
        if n < MIN_SAMPLES {
            return None;
        }
        let n = n as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let min_std = self.cfg.min_std_dev.as_secs_f64() * 1000.0;
        let std = var.sqrt().max(min_std).max(1e-3);
        let t = (elapsed.saturating_sub(self.cfg.acceptable_pause)).as_secs_f64() * 1000.0;
        let y = (t - mean) / std;
        let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
        let p_later = if t > mean {
            e / (1.0 + e)
        } else {
            1.0 - 1.0 / (1.0 + e)
        };
        Some(-p_later.max(f64::MIN_POSITIVE).log10())
    }

    /// The smallest silence at which phi reaches `level`, searched in `[0, limit]`;
    /// `None` if phi is unavailable or stays below `level` up to `limit`.
    pub(crate) fn time_to_reach(&self, level: f64, limit: Duration) -> Option<Duration> {
        if self.phi(limit)? < level {
            return None;
        }
        let (mut lo, mut hi) = (Duration::ZERO, limit);
        while hi - lo > Duration::from_micros(500) {
            let mid = lo + (hi - lo) / 2;
            if self.phi(mid).unwrap_or(0.0) >= level {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_grows_with_silence_and_needs_samples() {
        let mut d = PhiDetector::new(PhiConfig::default());
        d.add(Duration::from_secs(1));
        assert_eq!(d.phi(Duration::from_secs(5)), None);
        for _ in 0..10 {
            d.add(Duration::from_millis(1000));
        }
        let a = d.phi(Duration::from_millis(900)).unwrap();
        let b = d.phi(Duration::from_millis(1200)).unwrap();
        let c = d.phi(Duration::from_millis(1600)).unwrap();
        assert!(a < b && b < c, "{a} {b} {c}");
        let t = d.time_to_reach(8.0, Duration::from_secs(10)).unwrap();
        assert!(d.phi(t).unwrap() >= 8.0);
        assert!(d.phi(t - Duration::from_millis(1)).unwrap() < 8.0);
    }

    #[test]
    fn acceptable_pause_shifts_the_curve() {
        let mut plain = PhiDetector::new(PhiConfig::default());
        let mut paused = PhiDetector::new(PhiConfig {
            acceptable_pause: Duration::from_secs(2),
            ..PhiConfig::default()
        });
        for _ in 0..10 {
            plain.add(Duration::from_secs(1));
            paused.add(Duration::from_secs(1));
        }
        let lim = Duration::from_secs(60);
        let a = plain.time_to_reach(8.0, lim).unwrap();
        let b = paused.time_to_reach(8.0, lim).unwrap();
        assert!(b.abs_diff(a + Duration::from_secs(2)) < Duration::from_millis(2));
    }
}
