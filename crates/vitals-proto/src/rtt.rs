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

#[cfg(test)]
mod tests {
    use super::*;

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
