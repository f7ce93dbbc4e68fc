//! Timing negotiation (the server caps what it grants) and ping-abuse enforcement (a ping budget).
//!
//! Ping budget (both codecs, server side): a token bucket on *arrival* times, kept as the
//! theoretical arrival time of GCRA (one `u64`). It refills one ping every `interval / 2` and holds
//! `ceil(timeout / interval) + 1` pings, so
//! - a compliant peer (at most one ping per `interval` of silence, or a classic client pinging every
//!   `interval`) always finds it full, even with a clock running fast against ours;
//! - pings bunched by the path or by a peer whose own loop lagged and caught up (at most
//!   `timeout / interval` of them: a longer lag is a conviction for silence) fit in the burst;
//! - pings decoded from one read (every input passed at one `now`: e.g. what the kernel queued
//!   while we were stalled) count once (each is still answered: classic clients may count their
//!   pongs), and a local stall refills the bucket;
//! - a peer pinging faster than twice per `interval` drains it whatever its frames say (arrival
//!   times cannot be forged). Each ping that finds the bucket empty is a strike; at
//!   `max_ping_strikes` the server closes with [`CloseCode::TooManyPings`](crate::CloseCode::TooManyPings).
//!   A ping that finds the bucket full again clears the strikes.

use std::time::Duration;

/// What a server accepts. Proposals are clamped into these ranges, and the timeout is raised
/// to at least twice the granted interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerPolicy {
    /// Smallest interval granted. Default 1 s.
    pub min_interval: Duration,
    /// Largest interval granted. Default 60 s.
    pub max_interval: Duration,
    /// Smallest timeout granted. Default 3 s.
    pub min_timeout: Duration,
    /// Largest timeout granted. Default 180 s.
    pub max_timeout: Duration,
    /// Strikes that close the connection with `TooManyPings`. Default 3.
    pub max_ping_strikes: u32,
    /// Client-driven heartbeats (MQTT keep-alive style): the server answers the client's pings and
    /// probes only after `1.25 × interval` of silence, instead of also pinging after `interval`. On a
    /// healthy path this halves heartbeat traffic (one PING/PONG per interval instead of up to two). On
    /// a path whose delay jitters by a large share of the timeout, the server's own pings are extra
    /// signs of life for the client: there keep the default. Default false.
    pub client_driven: bool,
}

impl Default for ServerPolicy {
    fn default() -> Self {
        ServerPolicy {
            min_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(60),
            min_timeout: Duration::from_secs(3),
            max_timeout: Duration::from_secs(180),
            max_ping_strikes: 3,
            client_driven: false,
        }
    }
}

impl ServerPolicy {
    /// The (interval, timeout) granted for a proposal.
    pub fn grant(&self, interval: Duration, timeout: Duration) -> (Duration, Duration) {
        let interval = interval.clamp(self.min_interval, self.max_interval.max(self.min_interval));
        let timeout = timeout
            .clamp(self.min_timeout, self.max_timeout.max(self.min_timeout))
            .max(interval * 2);
        (interval, timeout)
    }
}

/// Outcome of one received PING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PingVerdict {
    /// Fine.
    Ok,
    /// Too early: one more strike (total given).
    Strike(u32),
    /// Strikes reached the limit: close with `TooManyPings`.
    TooMany,
}

/// One peer's ping budget (see the module docs). Times are nanoseconds on any one clock.
///
/// 4-byte aligned (12 bytes), so that in the liveness state it shares a word with a `u32` rather
/// than taking 16 bytes: that keeps an idle connection's state at its budget (`connection.rs`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, packed(4))]
pub(crate) struct PingBudget {
    /// GCRA's theoretical arrival time: the bucket is full at any `now >= tat`, and holds
    /// `(burst * step - (tat - now)) / step` pings otherwise.
    tat: u64,
    /// Pings that found the bucket empty since it was last full.
    strikes: u16,
    /// A ping of the current input was charged already.
    charged: bool,
}

impl PingBudget {
    /// Pings the bucket holds for a timing of `interval` and `timeout`: `ceil(timeout / interval) + 1`.
    pub(crate) fn burst(interval: u64, timeout: u64) -> u64 {
        timeout.div_ceil(interval.max(1)).saturating_add(1)
    }

    /// A new read begins: its first ping is charged, the others are not.
    pub(crate) fn on_input(&mut self) {
        self.charged = false;
    }

    /// A ping arrived at `now` in the current read.
    pub(crate) fn on_ping(
        &mut self,
        now: u64,
        interval: u64,
        timeout: u64,
        max: u32,
    ) -> PingVerdict {
        if self.charged {
            return PingVerdict::Ok;
        }
        self.charged = true;
        let step = (interval / 2).max(1);
        let tolerance = (Self::burst(interval, timeout) - 1).saturating_mul(step);
        let tat = self.tat.max(now);
        if tat - now > tolerance {
            // Empty: not charged (GCRA leaves the arrival time alone for a non-conforming ping).
            let strikes = self.strikes.saturating_add(1);
            self.strikes = strikes;
            if u32::from(strikes) >= max {
                return PingVerdict::TooMany;
            }
            return PingVerdict::Strike(u32::from(strikes));
        }
        if self.tat <= now {
            self.strikes = 0;
        }
        self.tat = tat.saturating_add(step);
        PingVerdict::Ok
    }

    /// Our process was stalled: what arrives now was sent while we could not read. Refill.
    pub(crate) fn refill(&mut self) {
        self.tat = 0;
        self.strikes = 0;
    }
}

/// The interval a client uses after being closed with `TooManyPings`: doubled, and the
/// timeout raised to keep at least twice the interval.
pub fn backoff_timing(interval: Duration, timeout: Duration) -> (Duration, Duration) {
    let interval = interval.saturating_mul(2);
    (interval, timeout.max(interval.saturating_mul(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_clamps_and_keeps_timeout_above_two_intervals() {
        let p = ServerPolicy::default();
        let s = Duration::from_secs;
        assert_eq!(p.grant(Duration::from_millis(10), s(1)), (s(1), s(3)));
        assert_eq!(p.grant(s(600), s(6000)), (s(60), s(180)));
        assert_eq!(p.grant(s(30), s(40)), (s(30), s(60)));
    }

    const MS: u64 = 1_000_000;

    fn verdicts(times_ms: &[u64], interval_ms: u64, timeout_ms: u64) -> Vec<PingVerdict> {
        let mut b = PingBudget::default();
        times_ms
            .iter()
            .map(|t| {
                b.on_input();
                b.on_ping(t * MS, interval_ms * MS, timeout_ms * MS, 3)
            })
            .collect()
    }

    #[test]
    fn burst_covers_the_timeout_plus_one() {
        assert_eq!(PingBudget::burst(1000, 3000), 4);
        assert_eq!(PingBudget::burst(1000, 2500), 4);
        assert_eq!(PingBudget::burst(15, 45), 4);
    }

    #[test]
    fn a_compliant_peer_never_strikes_even_with_a_fast_clock() {
        // Pings every 990 ms of our clock (its clock 1 % fast) for an hour.
        let times: Vec<u64> = (1..3600).map(|i| i * 990).collect();
        assert!(
            verdicts(&times, 1000, 3000)
                .iter()
                .all(|v| *v == PingVerdict::Ok)
        );
    }

    #[test]
    fn a_bunched_burst_after_a_lag_fits() {
        // Regular pings, then a 2.9 s lag and four pings back to back (separate inputs), then regular.
        let mut times: Vec<u64> = (1..=10).map(|i| i * 1000).collect();
        times.extend([12_900, 12_901, 12_902, 12_903, 13_900, 14_900]);
        assert!(
            verdicts(&times, 1000, 3000)
                .iter()
                .all(|v| *v == PingVerdict::Ok)
        );
    }

    #[test]
    fn pings_of_one_input_count_once() {
        let mut b = PingBudget::default();
        for t in 0..1000 {
            // A flood, but all in one input.
            assert_eq!(b.on_ping(t * MS, 1000 * MS, 3000 * MS, 3), PingVerdict::Ok);
        }
        // Charged once, and long ago: a full burst of four reads fits, the fifth is a strike.
        for t in 1000..1004 {
            b.on_input();
            assert_eq!(b.on_ping(t * MS, 1000 * MS, 3000 * MS, 3), PingVerdict::Ok);
        }
        b.on_input();
        assert_eq!(
            b.on_ping(1004 * MS, 1000 * MS, 3000 * MS, 3),
            PingVerdict::Strike(1)
        );
    }

    #[test]
    fn a_flood_strikes_then_closes_and_a_refill_forgives() {
        // 100 pings/s: four fit, then three strikes.
        let times: Vec<u64> = (0..7).map(|i| 1000 + i * 10).collect();
        use PingVerdict::*;
        let v = verdicts(&times, 1000, 3000);
        assert_eq!(v, vec![Ok, Ok, Ok, Ok, Strike(1), Strike(2), TooMany]);
        let mut b = PingBudget::default();
        for t in &times[..6] {
            b.on_input();
            b.on_ping(t * MS, 1000 * MS, 3000 * MS, 3);
        }
        b.refill();
        b.on_input();
        assert_eq!(b.on_ping(1070 * MS, 1000 * MS, 3000 * MS, 3), Ok);
    }

    #[test]
    fn three_pings_per_interval_are_caught_within_a_bounded_time() {
        // Sustained 3 per interval drains one ping per interval: caught within burst + strikes intervals.
        let times: Vec<u64> = (0..60).map(|i| 1000 + i * 333).collect();
        let v = verdicts(&times, 1000, 3000);
        let closed = v.iter().position(|v| *v == PingVerdict::TooMany);
        assert!(closed.is_some_and(|i| times[i] < 1000 + 8000), "{v:?}");
    }

    #[test]
    fn strikes_clear_once_the_bucket_is_full_again() {
        use PingVerdict::*;
        let times = [0, 1, 2, 3, 4, 5, 5000, 5001];
        // Six in a row: two strikes; 5 s later full again (cleared), then a ping in a new input.
        assert_eq!(
            verdicts(&times, 1000, 3000),
            vec![Ok, Ok, Ok, Ok, Strike(1), Strike(2), Ok, Ok]
        );
    }
}
