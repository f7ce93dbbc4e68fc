//! Liveness detector: one deadline decides when to ping, suspect or convict.
//!
//! Receiving bytes stores `last_recv = now` and moves the deadline with it ([`Liveness::on_recv`];
//! with phi-accrual the deadline is re-armed lazily, when it fires); no timer is touched.
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
//!   `timeout - interval` of real, observed silence; and the peer's ping budget is refilled, since
//!   what it sent meanwhile arrives at once;
//! - **in-flight guard**: conviction also waits until the first probe of the current silence
//!   has been unanswered for `srtt + 4 * rttvar` (capped at `timeout`), so a slow but live
//!   path is not convicted while its answer can still be on the way.

use crate::phi::{PhiConfig, PhiDetector};
use crate::policy::{PingBudget, PingVerdict};
use crate::rtt::{CompactRtt, RttStats};
use std::sync::OnceLock;
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

/// "No such time" for the optional instants below.
const NEVER: u64 = u64::MAX;

/// A process-wide origin for every connection's times, so that a time is 8 bytes (nanoseconds
/// since the anchor) rather than a 16-byte `Instant`, and a connection needs no epoch of its own.
/// It lies far (up to 146 years, 2^62 ns) before the first instant any connection was given, so
/// every instant a connection sees is after it, and a `u64` of nanoseconds since it lasts
/// centuries more.
static ANCHOR: OnceLock<Instant> = OnceLock::new();

fn anchor(hint: Instant) -> Instant {
    *ANCHOR.get_or_init(|| {
        [1u64 << 62, 1 << 50, 1 << 40, 1 << 30]
            .iter()
            .find_map(|&ns| hint.checked_sub(Duration::from_nanos(ns)))
            .unwrap_or(hint)
    })
}

/// Whole nanoseconds of `d`, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Phi-accrual state, boxed: only connections that enable phi pay for it.
#[derive(Debug, Clone)]
struct PhiState {
    detector: PhiDetector,
    /// Arrival times (ns since the anchor) of the last two inputs: the gap phi samples.
    last_recv: u64,
    prev_recv: u64,
    /// Whether the gap of the current input was sampled already.
    sampled: bool,
    suspected_since: Option<u64>,
}

/// Per-connection liveness state: 104 bytes. Every time is a `u64` of nanoseconds since the
/// process anchor (exact: `Instant` has nanosecond resolution), `NEVER` standing for `None`.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    interval: u64,
    timeout: u64,
    /// Where the current silence starts: the last receive, moved later by the stall guard
    /// (`max(last_recv, floor)` in the rules above; one field, since both only move forward).
    start: u64,
    last_ping: u64,
    /// First ping sent in the current silence (the probe whose answer conviction waits for).
    probe_sent: u64,
    deadline: u64,
    /// The peer's ping budget (server side; see `policy`).
    ping: PingBudget,
    phi: Option<Box<PhiState>>,
    rtt: CompactRtt,
    next_nonce: u32,
    /// The newest ping sent (nonce `next_nonce - 1`, timestamp `last_ping` in µs) is unanswered.
    outstanding: bool,
    /// Who pings (see [`Pinging`]).
    pinging: Pinging,
}

/// When this side pings a silent peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pinging {
    /// After `interval` of silence (two-sided liveness).
    Active,
    /// The peer drives the heartbeat (a server with a pinging client): our first ping of a silence
    /// waits `1.25 × interval` instead of `interval`, so that a client pinging every `interval` is
    /// answered, not pinged as well (while a late client still gets probed soon).
    Passive,
    /// Never: the peer drives the heartbeat and would not answer ours (a classic JSON client). The
    /// only deadline is the conviction at `timeout` of silence, so while the peer keeps pinging no
    /// timer fires at all.
    Never,
}

impl Liveness {
    pub(crate) fn new(now: Instant, cfg: &LivenessConfig) -> Liveness {
        let created = nanos(now.saturating_duration_since(anchor(now)));
        let mut l = Liveness {
            interval: nanos(cfg.interval),
            timeout: nanos(cfg.timeout),
            start: created,
            last_ping: NEVER,
            probe_sent: NEVER,
            deadline: 0,
            ping: PingBudget::default(),
            phi: cfg.phi.map(|p| {
                Box::new(PhiState {
                    detector: PhiDetector::new(p),
                    last_recv: created,
                    prev_recv: created,
                    sampled: true,
                    suspected_since: None,
                })
            }),
            rtt: CompactRtt::default(),
            next_nonce: 0,
            outstanding: false,
            pinging: Pinging::Active,
        };
        l.deadline = l.compute_deadline();
        l
    }

    /// `now` as nanoseconds since the process anchor.
    pub(crate) fn ns(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(anchor(now)))
    }

    /// The instant `ns` nanoseconds after the process anchor.
    pub(crate) fn instant(&self, ns: u64) -> Instant {
        // `new` set the anchor, so the clock is never read here.
        let a = *ANCHOR.get_or_init(Instant::now);
        a + Duration::from_nanos(ns)
    }

    pub(crate) fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout)
    }

    /// Apply negotiated timing (re-arms the deadline).
    pub(crate) fn set_timing(&mut self, interval: Duration, timeout: Duration) {
        self.interval = nanos(interval);
        self.timeout = nanos(timeout);
        self.deadline = self.compute_deadline();
    }

    /// Bytes arrived: a sign of life. Without phi-accrual the deadline moves with it at once (a
    /// few comparisons), so a timer fires only when a connection really falls silent; a runtime
    /// whose timing wheel re-files later deadlines lazily then does no timer work per heartbeat.
    /// With phi-accrual only the times are stored, and the deadline (whose phi part costs more to
    /// compute) is re-armed when it fires.
    pub(crate) fn on_recv(&mut self, now: u64) {
        if now != self.start {
            // Inputs passed at one `now` are one read (a runtime hands a TLS read over record by
            // record): their pings are charged once.
            self.ping.on_input();
        }
        self.start = now;
        if let Some(p) = self.phi.as_deref_mut() {
            p.prev_recv = p.last_recv;
            p.last_recv = now;
            p.sampled = false;
        } else {
            self.deadline = self.compute_deadline();
        }
    }

    /// A heartbeat frame (PING/PONG) arrived in the input last passed to `on_recv`:
    /// feed the inter-arrival gap to phi-accrual (once per input).
    pub(crate) fn on_heartbeat(&mut self) {
        if let Some(p) = self.phi.as_deref_mut()
            && !p.sampled
        {
            let gap = p.last_recv.saturating_sub(p.prev_recv);
            p.detector.add(Duration::from_nanos(gap));
            p.sampled = true;
        }
    }

    /// The peer pinged us in the input that arrived at `now`: charge its ping budget (once per
    /// input) against the current timing.
    pub(crate) fn on_peer_ping(&mut self, now: u64, max_strikes: u32) -> PingVerdict {
        self.ping
            .on_ping(now, self.interval, self.timeout, max_strikes)
    }

    /// Pings sent so far (wrapping): nonces are handed out in sequence from 0.
    pub(crate) fn pings_sent(&self) -> u32 {
        self.next_nonce
    }

    /// A ping is about to be sent: returns (nonce, timestamp µs since the anchor).
    pub(crate) fn make_ping(&mut self, now: u64) -> (u32, u64) {
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        self.outstanding = true;
        self.last_ping = now;
        (nonce, now / 1000)
    }

    /// (nonce, timestamp µs) of the newest ping made with `make_ping`, as long as no
    /// `on_timeout` ran since.
    pub(crate) fn last_ping_made(&self) -> (u32, u64) {
        (self.next_nonce.wrapping_sub(1), self.last_ping / 1000)
    }

    /// A pong arrived: if it answers our newest ping, take an RTT sample.
    pub(crate) fn on_pong(&mut self, now: u64, nonce: u32, ts: u64) -> Option<Duration> {
        if !self.outstanding {
            return None;
        }
        let sent = self.last_ping / 1000;
        if self.next_nonce.wrapping_sub(1) != nonce || sent != ts {
            return None;
        }
        self.outstanding = false;
        let us = (now / 1000).checked_sub(sent)?;
        self.rtt.update(us);
        Some(Duration::from_micros(us))
    }

    /// Nonce of the newest unanswered ping.
    pub(crate) fn outstanding_nonce(&self) -> Option<u32> {
        self.outstanding.then(|| self.next_nonce.wrapping_sub(1))
    }

    /// RTT statistics so far.
    pub(crate) fn rtt(&self) -> RttStats {
        self.rtt.stats()
    }

    /// The deadline this detector wants to be woken at (ns since the anchor).
    pub(crate) fn deadline_ns(&self) -> u64 {
        self.deadline
    }

    /// The deadline this detector wants to be woken at.
    pub(crate) fn deadline(&self) -> Instant {
        self.instant(self.deadline)
    }

    /// Our timer fired (possibly for another reason; early calls only re-arm).
    pub(crate) fn on_timeout(&mut self, now: u64, stall_tolerance: Duration) -> Verdict {
        let mut v = Verdict::default();
        if now < self.deadline {
            return v;
        }
        if now - self.deadline > nanos(stall_tolerance) {
            v.stalled = true;
            self.start = self.start.max(now.saturating_sub(self.interval));
            // What the peer sent while we could not read arrives at once: not ping abuse.
            self.ping.refill();
        }
        let start = self.start;
        if let Some(p) = self.phi.as_deref_mut()
            && p.suspected_since.is_some_and(|s| p.last_recv > s)
        {
            p.suspected_since = None;
        }
        let silent = Duration::from_nanos(now.saturating_sub(start));
        if now >= self.dead_at(start) && !v.stalled {
            v.dead = Some(silent);
            return v;
        }
        let last_ping = self.last_ping;
        if let (Some(p), false) = (self.phi.as_deref_mut(), v.stalled)
            && let Some(phi) = p.detector.phi(silent)
        {
            let cfg = *p.detector.config();
            if phi >= cfg.threshold {
                v.dead = Some(silent);
                return v;
            }
            if phi >= cfg.suspect_threshold && p.suspected_since.is_none() {
                p.suspected_since = Some(now);
                v.suspect = Some(phi);
                // Probe at once unless a ping already went out in this silence.
                if last_ping == NEVER || last_ping < start {
                    v.ping = true;
                }
            }
        }
        if now >= self.next_ping_at(start) {
            v.ping = true;
        }
        if v.ping {
            // The caller sends it (with `make_ping`); record the time now so the next deadline
            // is right. Until `make_ping`, no ping of this silence is awaiting its pong.
            self.last_ping = now;
            self.outstanding = false;
            if self.probe_sent == NEVER || self.probe_sent < start {
                self.probe_sent = now;
            }
        }
        self.deadline = self.compute_deadline();
        v
    }

    fn next_ping_at(&self, start: u64) -> u64 {
        if self.pinging == Pinging::Never {
            NEVER
        } else if self.last_ping != NEVER && self.last_ping >= start {
            self.last_ping.saturating_add(self.interval)
        } else {
            start.saturating_add(self.first_ping())
        }
    }

    /// Silence before the first ping: `interval`, or for a passive side `1.25 × interval` (never past
    /// halfway between `interval` and `timeout`, so a probe still goes out well before conviction).
    fn first_ping(&self) -> u64 {
        if self.pinging == Pinging::Passive {
            let half_way = self.interval + self.timeout.saturating_sub(self.interval) / 2;
            (self.interval + self.interval / 4).min(half_way)
        } else {
            self.interval
        }
    }

    /// Says when this side pings (see [`Pinging`]); re-arms the deadline.
    pub(crate) fn set_pinging(&mut self, pinging: Pinging) {
        self.pinging = pinging;
        self.deadline = self.compute_deadline();
    }

    /// Retransmission-style timeout of a probe: `srtt + 4 * rttvar`, capped at `timeout`
    /// (zero before the first RTT sample).
    fn probe_rto(&self) -> u64 {
        if self.rtt.samples() == 0 {
            return 0;
        }
        self.rtt.rto_ns().min(self.timeout)
    }

    /// When silence since `start` convicts: `start + timeout`, but never while the answer to
    /// the first probe of this silence can still be in flight (`probe + rto`).
    fn dead_at(&self, start: u64) -> u64 {
        let at = start.saturating_add(self.timeout);
        if self.probe_sent != NEVER && self.probe_sent >= start {
            at.max(self.probe_sent.saturating_add(self.probe_rto()))
        } else {
            at
        }
    }

    fn compute_deadline(&self) -> u64 {
        let start = self.start;
        let mut d = self.dead_at(start).min(self.next_ping_at(start));
        if let Some(p) = self.phi.as_deref() {
            let limit = self.timeout();
            let cfg = p.detector.config();
            let mut levels = [Some(cfg.threshold), None];
            if p.suspected_since.is_none() {
                levels[1] = Some(cfg.suspect_threshold);
            }
            for level in levels.into_iter().flatten() {
                if let Some(t) = p.detector.time_to_reach(level, limit) {
                    d = d.min(start.saturating_add(nanos(t)));
                }
            }
        }
        d
    }
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
    fn receiving_moves_the_deadline_at_once() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, &cfg());
        assert_eq!(l.deadline(), t0 + Duration::from_secs(1));
        l.on_recv(l.ns(t0 + Duration::from_millis(700)));
        assert_eq!(l.deadline(), t0 + Duration::from_millis(1700));
        // A timer that fires early anyway (a runtime's stale entry) changes nothing.
        let v = l.on_timeout(l.ns(t0 + Duration::from_secs(1)), cfg().stall_tolerance);
        assert!(!v.ping && v.dead.is_none() && !v.stalled);
        assert_eq!(l.deadline(), t0 + Duration::from_millis(1700));
    }

    #[test]
    fn with_phi_receiving_only_stores_the_time_and_the_deadline_is_rearmed_lazily() {
        let t0 = Instant::now();
        let cfg = LivenessConfig {
            phi: Some(crate::phi::PhiConfig::default()),
            ..cfg()
        };
        let mut l = Liveness::new(t0, &cfg);
        let first = l.deadline();
        assert!(first <= t0 + Duration::from_secs(1));
        l.on_recv(l.ns(t0 + Duration::from_millis(700)));
        // Unchanged until the timer fires.
        assert_eq!(l.deadline(), first);
        let v = l.on_timeout(l.ns(first), cfg.stall_tolerance);
        assert!(!v.ping && v.dead.is_none());
        assert!(l.deadline() > first);
    }

    #[test]
    fn pings_every_interval_of_silence_then_convicts_at_timeout() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, &cfg());
        let mut pings = Vec::new();
        loop {
            let now = l.deadline();
            let v = l.on_timeout(l.ns(now), cfg().stall_tolerance);
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
        let mut l = Liveness::new(t0, &cfg());
        let late = t0 + Duration::from_secs(10);
        let v = l.on_timeout(l.ns(late), cfg().stall_tolerance);
        assert!(v.stalled && v.dead.is_none() && v.ping);
        // Conviction needs timeout - interval more of observed silence.
        assert_eq!(l.deadline(), late + Duration::from_secs(1));
        let v = l.on_timeout(l.ns(late + Duration::from_secs(1)), cfg().stall_tolerance);
        assert!(v.ping && v.dead.is_none());
        let v = l.on_timeout(l.ns(late + Duration::from_secs(2)), cfg().stall_tolerance);
        assert_eq!(v.dead, Some(Duration::from_secs(3)));
    }
}
