//! Round-trip time estimator: latest, minimum, smoothed and variance, as in RFC 6298.

use std::time::Duration;

/// RTT statistics from PING/PONG timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RttStats {
    /// Most recent sample.
    pub latest: Duration,
    /// Smallest sample seen.
    pub min: Duration,
    /// Smoothed RTT (`srtt`, gain 1/8).
    pub smoothed: Duration,
    /// RTT variance (`rttvar`, gain 1/4).
    pub var: Duration,
    /// Number of samples taken.
    pub samples: u32,
}

impl RttStats {
    /// Fold in one sample (RFC 6298 section 2: the first sample sets `srtt = r`, `rttvar = r/2`;
    /// later ones `rttvar = 3/4 rttvar + 1/4 |srtt - r|`, then `srtt = 7/8 srtt + 1/8 r`).
    pub fn update(&mut self, r: Duration) {
        if self.samples == 0 {
            self.smoothed = r;
            self.var = r / 2;
            self.min = r;
        } else {
            let diff = self.smoothed.abs_diff(r);
            self.var = (self.var * 3 + diff) / 4;
            self.smoothed = (self.smoothed * 7 + r) / 8;
            self.min = self.min.min(r);
        }
        self.latest = r;
        self.samples = self.samples.saturating_add(1);
    }
}

/// The estimator's state in 28 bytes (RttStats is 72): exact, since every sample is a whole
/// number of microseconds and `smoothed`/`var` are kept in nanoseconds as `Duration` keeps them.
/// `latest`/`min` saturate at `u32::MAX` µs (71 minutes), far beyond any timeout in use.
/// Packed to 4-byte alignment so it shares a word with the owner's `u32` fields (28 bytes, not 32).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, packed(4))]
pub(crate) struct CompactRtt {
    smoothed_ns: u64,
    var_ns: u64,
    latest_us: u32,
    min_us: u32,
    samples: u32,
}

impl CompactRtt {
    /// Fold in one sample of `r_us` microseconds (same arithmetic as [`RttStats::update`]).
    pub(crate) fn update(&mut self, r_us: u64) {
        let r = r_us.saturating_mul(1000);
        let r32 = u32::try_from(r_us).unwrap_or(u32::MAX);
        if self.samples == 0 {
            self.smoothed_ns = r;
            self.var_ns = r / 2;
            self.min_us = r32;
        } else {
            let diff = self.smoothed_ns.abs_diff(r);
            self.var_ns = self.var_ns.saturating_mul(3).saturating_add(diff) / 4;
            self.smoothed_ns = self.smoothed_ns.saturating_mul(7).saturating_add(r) / 8;
            self.min_us = self.min_us.min(r32);
        }
        self.latest_us = r32;
        self.samples = self.samples.saturating_add(1);
    }

    pub(crate) fn samples(&self) -> u32 {
        self.samples
    }

    /// `smoothed + 4 * var` in nanoseconds.
    pub(crate) fn rto_ns(&self) -> u64 {
        self.smoothed_ns
            .saturating_add(self.var_ns.saturating_mul(4))
    }

    pub(crate) fn stats(&self) -> RttStats {
        RttStats {
            latest: Duration::from_micros(u64::from(self.latest_us)),
            min: Duration::from_micros(u64::from(self.min_us)),
            smoothed: Duration::from_nanos(self.smoothed_ns),
            var: Duration::from_nanos(self.var_ns),
            samples: self.samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_matches_rtt_stats_exactly() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut full = RttStats::default();
        let mut compact = CompactRtt::default();
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let us = x % 3_000_000;
            full.update(Duration::from_micros(us));
            compact.update(us);
            assert_eq!(compact.stats(), full);
        }
    }

    #[test]
    fn follows_rfc6298() {
        let mut s = RttStats::default();
        s.update(Duration::from_millis(100));
        assert_eq!(s.smoothed, Duration::from_millis(100));
        assert_eq!(s.var, Duration::from_millis(50));
        s.update(Duration::from_millis(20));
        // rttvar = (3*50 + |100-20|)/4 = 57.5 ms; srtt = (7*100 + 20)/8 = 90 ms
        assert_eq!(s.var, Duration::from_micros(57_500));
        assert_eq!(s.smoothed, Duration::from_millis(90));
        assert_eq!(s.min, Duration::from_millis(20));
        assert_eq!(s.latest, Duration::from_millis(20));
        assert_eq!(s.samples, 2);
    }
}
