//! A small, fast pseudo-random source for jitter (splitmix64): timer firings, reconnect backoff.
//! Not for anything secret (resume tokens come from the OS random source).

use std::time::Duration;

/// A splitmix64 generator that samples jitter durations.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator with a fixed seed (reproducible sequences, for tests and simulations).
    pub fn from_seed(seed: u64) -> Self {
        Jitter(seed)
    }

    /// Seeded from the address of a stack value and the clock, so that two generators differ.
    pub fn seeded() -> Self {
        let local = 0u8;
        let addr = &local as *const u8 as u64;
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Jitter(addr ^ t.rotate_left(17) ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next pseudo-random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniformly distributed duration in `[0, max]` (nanosecond resolution).
    pub fn sample(&mut self, max: Duration) -> Duration {
        let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if max_nanos == 0 {
            return Duration::ZERO;
        }
        let n = ((u128::from(self.next_u64()) * (u128::from(max_nanos) + 1)) >> 64) as u64;
        Duration::from_nanos(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stay_in_range_and_spread() {
        let mut j = Jitter(1);
        let max = Duration::from_millis(100);
        let samples: Vec<_> = (0..10_000).map(|_| j.sample(max)).collect();
        assert!(samples.iter().all(|s| *s <= max));
        let low = samples.iter().filter(|s| **s < max / 2).count();
        assert!(
            (4000..6000).contains(&low),
            "{low} of 10000 below the middle"
        );
        assert_eq!(j.sample(Duration::ZERO), Duration::ZERO);
    }
}
