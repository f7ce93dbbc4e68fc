//! Timing negotiation (the server caps what it grants) and ping-abuse enforcement (strikes).
//!
//! Strike rule: a PING received less than `interval / 2` after the previous PING from the same
//! peer is a strike; a PING at least `interval` after the previous one clears the strikes. When
//! strikes reach `max_ping_strikes` the server closes with
//! [`CloseCode::TooManyPings`](crate::CloseCode::TooManyPings). A compliant vitals peer never
//! pings twice within one `interval` (it pings only after `interval` of silence), so only
//! network jitter above `interval / 2` could make it collect a strike.

use std::time::Duration;
#[cfg(test)]
use std::time::Instant;

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

/// The strike rule for one PING received at `now` (any time unit, as long as `prev` and
/// `interval` use the same), the previous one having arrived at `prev`.
pub(crate) fn ping_verdict(
    prev: Option<u64>,
    now: u64,
    strikes: &mut u32,
    interval: u64,
    max: u32,
) -> PingVerdict {
    let Some(prev) = prev else {
        return PingVerdict::Ok;
    };
    let gap = now.saturating_sub(prev);
    if gap < interval / 2 {
        *strikes += 1;
        if *strikes >= max {
            return PingVerdict::TooMany;
        }
        return PingVerdict::Strike(*strikes);
    }
    if gap >= interval {
        *strikes = 0;
    }
    PingVerdict::Ok
}

/// Counts ping strikes of one peer (the connections keep these two fields in their liveness
/// state; this stand-alone form is what the rule's test drives).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PingEnforcer {
    last_ping: Option<Instant>,
    strikes: u32,
}

#[cfg(test)]
impl PingEnforcer {
    pub(crate) fn on_ping(&mut self, now: Instant, interval: Duration, max: u32) -> PingVerdict {
        let prev = self.last_ping.replace(now);
        let Some(prev) = prev else {
            return PingVerdict::Ok;
        };
        // Nanoseconds since the previous ping: same rule, same unit for both sides.
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let gap = ns(now.saturating_duration_since(prev));
        ping_verdict(Some(0), gap, &mut self.strikes, ns(interval), max)
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

    #[test]
    fn early_pings_strike_and_spaced_pings_clear() {
        let t0 = Instant::now();
        let i = Duration::from_secs(2);
        let mut e = PingEnforcer::default();
        assert_eq!(e.on_ping(t0, i, 3), PingVerdict::Ok);
        let ms = Duration::from_millis;
        assert_eq!(e.on_ping(t0 + ms(100), i, 3), PingVerdict::Strike(1));
        assert_eq!(e.on_ping(t0 + ms(200), i, 3), PingVerdict::Strike(2));
        assert_eq!(e.on_ping(t0 + ms(2200), i, 3), PingVerdict::Ok);
        assert_eq!(e.on_ping(t0 + ms(2300), i, 3), PingVerdict::Strike(1));
        assert_eq!(e.on_ping(t0 + ms(2400), i, 3), PingVerdict::Strike(2));
        assert_eq!(e.on_ping(t0 + ms(2500), i, 3), PingVerdict::TooMany);
    }
}
