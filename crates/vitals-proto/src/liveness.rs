//! Liveness detector: one lazily re-armed deadline decides when to ping, suspect or convict.
//!
//! Receiving bytes only stores `last_recv = now` ([`Liveness::on_recv`]); no timer is touched.
//! The connection reports [`Liveness::deadline`] as (part of) its single timeout; when it fires,
//! [`Liveness::on_timeout`] looks at how long the peer has been silent and either pings,
//! raises suspicion, convicts, or simply re-arms for the new silence window.
//!
//! Rules (also in docs/LIVENESS.md):
//! - silence is measured from the last byte received (`last_recv`), never from the last ping sent;
//! - a ping goes out when silence reaches `interval`, then every `interval` while silence lasts;
//! - the peer is dead when silence reaches `timeout`, or earlier when phi-accrual is enabled and
//!   phi reaches its threshold;
//! - **stall guard**: if `on_timeout` runs more than `stall_tolerance` after the deadline it
//!   asked for, our process was paused or starved. That call convicts nobody: silence is
//!   counted from at most `interval` before this late wake-up (`silence_start =
//!   max(last_recv, now - interval)`), so a ping goes out at once and conviction needs another
//!   `timeout - interval` of real, observed silence;
//! - **in-flight guard**: conviction also waits until the first probe of the current silence
//!   has been unanswered for `srtt + 4 * rttvar` (capped at `timeout`), so a slow but live
//!   path is not convicted while its answer can still be on the way.

use crate::phi::{PhiConfig, PhiDetector};
use crate::rtt::RttStats;
use std::time::{Duration, Instant};

/// Liveness timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessConfig {
    /// Silence after which a ping is sent. Default 15 s.
    pub interval: Duration,
    /// Silence after which the peer is dead. Default 45 s. Must exceed `interval`.
    pub timeout: Duration,
    /// Lateness of our own timer beyond which the wake-up counts as a local stall. Default 1 s.
    pub stall_tolerance: Duration,
    /// Optional phi-accrual suspicion; `None` (default) uses the fixed timeout only.
    pub phi: Option<PhiConfig>,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(45),
            stall_tolerance: Duration::from_secs(1),
            phi: None,
        }
    }
}

/// What a timeout asks the connection to do.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Verdict {
    /// Send a ping now.
    pub(crate) ping: bool,
    /// Raise suspicion with this phi.
    pub(crate) suspect: Option<f64>,
    /// The peer is dead after this much silence.
    pub(crate) dead: Option<Duration>,
    /// This wake-up was a local stall.
    pub(crate) stalled: bool,
}

/// Per-connection liveness state.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    cfg: LivenessConfig,
    last_recv: Instant,
    prev_recv: Instant,
    /// Silence is never counted from before this (set by the stall guard).
    floor: Instant,
    last_ping: Option<Instant>,
    /// First ping sent in the current silence (the probe whose answer conviction waits for).
    probe_sent: Option<Instant>,
    /// (nonce, timestamp µs) of the newest ping sent.
    outstanding: Option<(u32, u64)>,
    next_nonce: u32,
    deadline: Instant,
    suspected_since: Option<Instant>,
    sampled: bool,
    rtt: RttStats,
    phi: Option<Box<PhiDetector>>,
}

impl Liveness {
    pub(crate) fn new(now: Instant, cfg: LivenessConfig) -> Liveness {
        let mut l = Liveness {
            cfg,
            last_recv: now,
            prev_recv: now,
            floor: now,
            last_ping: None,
            probe_sent: None,
            outstanding: None,
            next_nonce: 0,
            deadline: now,
            suspected_since: None,
            sampled: true,
            rtt: RttStats::default(),
            phi: cfg.phi.map(|p| Box::new(PhiDetector::new(p))),
        };
        l.deadline = l.compute_deadline();
        l
    }

    pub(crate) fn config(&self) -> &LivenessConfig {
        &self.cfg
    }

    /// Apply negotiated timing (re-arms the deadline).
    pub(crate) fn set_timing(&mut self, interval: Duration, timeout: Duration) {
        self.cfg.interval = interval;
        self.cfg.timeout = timeout;
        self.deadline = self.compute_deadline();
    }

    /// Bytes arrived: a sign of life. Only stores the time.
    pub(crate) fn on_recv(&mut self, now: Instant) {
        self.prev_recv = self.last_recv;
        self.last_recv = now;
        self.sampled = false;
    }

    /// A heartbeat frame (PING/PONG) arrived in the input last passed to `on_recv`:
    /// feed the inter-arrival gap to phi-accrual (once per input).
    pub(crate) fn on_heartbeat(&mut self) {
        if let (Some(phi), false) = (self.phi.as_mut(), self.sampled) {
            phi.add(self.last_recv.saturating_duration_since(self.prev_recv));
            self.sampled = true;
        }
    }

    /// Pings sent so far (wrapping): nonces are handed out in sequence from 0.
    pub(crate) fn pings_sent(&self) -> u32 {
        self.next_nonce
    }

    /// A ping is about to be sent: returns (nonce, timestamp µs since `epoch`).
    pub(crate) fn make_ping(&mut self, now: Instant, epoch: Instant) -> (u32, u64) {
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        let ts = micros_since(epoch, now);
        self.outstanding = Some((nonce, ts));
        self.last_ping = Some(now);
        (nonce, ts)
    }

    /// A pong arrived: if it answers our newest ping, take an RTT sample.
    pub(crate) fn on_pong(
        &mut self,
        now: Instant,
        epoch: Instant,
        nonce: u32,
        ts: u64,
    ) -> Option<Duration> {
        let (n, sent) = self.outstanding?;
        if n != nonce || sent != ts {
            return None;
        }
        self.outstanding = None;
        let rtt = Duration::from_micros(micros_since(epoch, now).checked_sub(sent)?);
        self.rtt.update(rtt);
        Some(rtt)
    }

    /// Nonce of the newest unanswered ping.
    pub(crate) fn outstanding_nonce(&self) -> Option<u32> {
        self.outstanding.map(|(n, _)| n)
    }

    /// RTT statistics so far.
    pub(crate) fn rtt(&self) -> &RttStats {
        &self.rtt
    }

    /// The deadline this detector wants to be woken at.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    fn silence_start(&self) -> Instant {
        self.last_recv.max(self.floor)
    }

    /// Our timer fired (possibly for another reason; early calls only re-arm).
    pub(crate) fn on_timeout(&mut self, now: Instant) -> Verdict {
        let mut v = Verdict::default();
        if now < self.deadline {
            return v;
        }
        if now.saturating_duration_since(self.deadline) > self.cfg.stall_tolerance {
            v.stalled = true;
            self.floor = self
                .floor
                .max(now.checked_sub(self.cfg.interval).unwrap_or(now));
        }
        let start = self.silence_start();
        if self.suspected_since.is_some_and(|s| self.last_recv > s) {
            self.suspected_since = None;
        }
        let silent = now.saturating_duration_since(start);
        if now >= self.dead_at(start) && !v.stalled {
            v.dead = Some(silent);
            return v;
        }
        if let (Some(phi), false) = (self.phi.as_deref(), v.stalled)
            && let Some(p) = phi.phi(silent)
        {
            if p >= phi.config().threshold {
                v.dead = Some(silent);
                return v;
            }
            if p >= phi.config().suspect_threshold && self.suspected_since.is_none() {
                self.suspected_since = Some(now);
                v.suspect = Some(p);
                // Probe at once unless a ping already went out in this silence.
                if self.last_ping.is_none_or(|t| t < start) {
                    v.ping = true;
                }
            }
        }
        if now >= self.next_ping_at(start) {
            v.ping = true;
        }
        if v.ping {
            // The caller sends it; record the time now so the next deadline is right.
            self.last_ping = Some(now);
            if self.probe_sent.is_none_or(|p| p < start) {
                self.probe_sent = Some(now);
            }
        }
        self.deadline = self.compute_deadline();
        v
    }

    fn next_ping_at(&self, start: Instant) -> Instant {
        match self.last_ping {
            Some(t) if t >= start => t + self.cfg.interval,
            _ => start + self.cfg.interval,
        }
    }

    /// Retransmission-style timeout of a probe: `srtt + 4 * rttvar`, capped at `timeout`
    /// (zero before the first RTT sample).
    fn probe_rto(&self) -> Duration {
        if self.rtt.samples == 0 {
            return Duration::ZERO;
        }
        (self.rtt.smoothed + self.rtt.var * 4).min(self.cfg.timeout)
    }

    /// When silence since `start` convicts: `start + timeout`, but never while the answer to
    /// the first probe of this silence can still be in flight (`probe + rto`).
    fn dead_at(&self, start: Instant) -> Instant {
        let at = start + self.cfg.timeout;
        match self.probe_sent {
            Some(p) if p >= start => at.max(p + self.probe_rto()),
            _ => at,
        }
    }

    fn compute_deadline(&self) -> Instant {
        let start = self.silence_start();
        let mut d = self.dead_at(start).min(self.next_ping_at(start));
        if let Some(phi) = self.phi.as_deref() {
            let limit = self.cfg.timeout;
            let cfg = phi.config();
            let mut levels = [Some(cfg.threshold), None];
            if self.suspected_since.is_none() {
                levels[1] = Some(cfg.suspect_threshold);
            }
            for level in levels.into_iter().flatten() {
                if let Some(t) = phi.time_to_reach(level, limit) {
                    d = d.min(start + t);
                }
            }
        }
        d
    }
}

/// Microseconds from `epoch` to `now` (0 if `now` is earlier; saturates at u64::MAX).
pub(crate) fn micros_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LivenessConfig {
        LivenessConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            stall_tolerance: Duration::from_millis(200),
            phi: None,
        }
    }

    #[test]
    fn receiving_only_moves_last_recv_and_deadline_is_rearmed_lazily() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, cfg());
        assert_eq!(l.deadline(), t0 + Duration::from_secs(1));
        l.on_recv(t0 + Duration::from_millis(700));
        // Unchanged until the timer fires.
        assert_eq!(l.deadline(), t0 + Duration::from_secs(1));
        let v = l.on_timeout(t0 + Duration::from_secs(1));
        assert!(!v.ping && v.dead.is_none());
        assert_eq!(l.deadline(), t0 + Duration::from_millis(1700));
    }

    #[test]
    fn pings_every_interval_of_silence_then_convicts_at_timeout() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, cfg());
        let mut pings = Vec::new();
        loop {
            let now = l.deadline();
            let v = l.on_timeout(now);
            if v.ping {
                pings.push(now - t0);
            }
            if let Some(s) = v.dead {
                assert_eq!(now - t0, Duration::from_secs(3));
                assert_eq!(s, Duration::from_secs(3));
                break;
            }
        }
        assert_eq!(pings, vec![Duration::from_secs(1), Duration::from_secs(2)]);
    }

    #[test]
    fn stalled_wakeup_does_not_convict() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, cfg());
        let late = t0 + Duration::from_secs(10);
        let v = l.on_timeout(late);
        assert!(v.stalled && v.dead.is_none() && v.ping);
        // Conviction needs timeout - interval more of observed silence.
        assert_eq!(l.deadline(), late + Duration::from_secs(1));
        let v = l.on_timeout(late + Duration::from_secs(1));
        assert!(v.ping && v.dead.is_none());
        let v = l.on_timeout(late + Duration::from_secs(2));
        assert_eq!(v.dead, Some(Duration::from_secs(3)));
    }
}
