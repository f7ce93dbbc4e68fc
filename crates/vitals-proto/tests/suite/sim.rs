//! A two-peer in-memory simulator on virtual time (in the spirit of quinn-proto's `Pair`).
//!
//! Each direction is a FIFO link with a base delay and random jitter (order is kept, as TCP
//! does). Faults: `blackhole` (bytes written are lost: a cut cable, a NAT that dropped the
//! flow), `hold` (bytes wait until a time: a partition TCP survives), `stall` (a side does
//! nothing at all until a time: a paused process; input piles up for it), and `crash` (a side
//! stops for good). The simulator plays the runtime: it calls the connection in the documented
//! polling order, resolves resume requests against a `MemoryStore`, and can reconnect.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use vitals_proto::{
    Config, Connection, Event, Frame, FrameDecoder, Limits, MemoryStore, ResumeToken, SessionId,
    SessionKeys, SessionStore,
};

/// Tiny deterministic RNG (xorshift64*).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, max).
    pub(crate) fn below(&mut self, max: Duration) -> Duration {
        let n = max.as_micros() as u64;
        if n == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.next() % n)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Link {
    queue: VecDeque<(Instant, Vec<u8>)>,
    pub(crate) delay: Duration,
    pub(crate) jitter: Duration,
    pub(crate) blackhole: bool,
    pub(crate) hold_until: Option<Instant>,
    last_at: Option<Instant>,
}

impl Link {
    fn next_at(&self) -> Option<Instant> {
        let (at, _) = self.queue.front()?;
        Some(match self.hold_until {
            Some(h) => (*at).max(h),
            None => *at,
        })
    }
}

pub(crate) struct Side {
    pub(crate) conn: Connection,
    pub(crate) events: Vec<(Instant, Event)>,
    pub(crate) received: Vec<Vec<u8>>,
    /// Everything this side wrote, for wire-level assertions.
    pub(crate) wire_out: Vec<u8>,
    pub(crate) stalled_until: Option<Instant>,
    pub(crate) crashed: bool,
    pub(crate) pending_in: Vec<u8>,
    pub(crate) last_rx: Option<Instant>,
}

impl Side {
    pub(crate) fn new(conn: Connection) -> Side {
        Side {
            conn,
            events: Vec::new(),
            received: Vec::new(),
            wire_out: Vec::new(),
            stalled_until: None,
            crashed: false,
            pending_in: Vec::new(),
            last_rx: None,
        }
    }

    fn active(&self, now: Instant) -> bool {
        !self.crashed && self.stalled_until.is_none_or(|t| now >= t)
    }

    /// Frames this side wrote so far.
    pub(crate) fn frames_out(&self) -> Vec<Frame> {
        let mut d = FrameDecoder::new(Limits {
            max_frame_size: u32::MAX,
            max_buffered: usize::MAX,
        });
        d.push(&self.wire_out).unwrap();
        std::iter::from_fn(|| d.next_frame().unwrap()).collect()
    }

    pub(crate) fn dead_at(&self) -> Option<Instant> {
        self.events
            .iter()
            .find(|(_, e)| matches!(e, Event::Dead { .. }))
            .map(|(t, _)| *t)
    }

    pub(crate) fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| f(e)).count()
    }
}

pub(crate) struct Pair {
    pub t0: Instant,
    pub(crate) now: Instant,
    pub(crate) client: Side,
    pub(crate) server: Side,
    pub c2s: Link,
    pub s2c: Link,
    pub(crate) rng: Rng,
    pub(crate) store: MemoryStore,
    /// Timers fire on multiples of this tick (like a timing wheel), rounded up.
    pub(crate) tick: Duration,
    pub(crate) client_cfg: Config,
    pub(crate) server_cfg: Config,
    next_id: u64,
}

pub(crate) fn keys(n: u64) -> SessionKeys {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&n.to_be_bytes());
    t[8..].copy_from_slice(&(!n).to_be_bytes());
    SessionKeys {
        id: SessionId(n),
        token: ResumeToken::from_bytes(t),
    }
}

impl Pair {
    pub(crate) fn new(client_cfg: Config, server_cfg: Config, seed: u64) -> Pair {
        let t0 = Instant::now();
        Pair {
            t0,
            now: t0,
            client: Side::new(Connection::client(t0, client_cfg)),
            server: Side::new(Connection::server(t0, server_cfg, keys(1))),
            c2s: Link {
                delay: Duration::from_millis(5),
                ..Link::default()
            },
            s2c: Link {
                delay: Duration::from_millis(5),
                ..Link::default()
            },
            rng: Rng::new(seed),
            store: MemoryStore::new(),
            tick: Duration::from_millis(1),
            client_cfg,
            server_cfg,
            next_id: 2,
        }
    }

    /// A pair around two given connections (e.g. JSON mode).
    pub(crate) fn with(client: Connection, server: Connection, seed: u64) -> Pair {
        let mut p = Pair::new(Config::default(), Config::default(), seed);
        p.client = Side::new(client);
        p.server = Side::new(server);
        p
    }

    fn round_up(&self, t: Instant) -> Instant {
        let tick = self.tick.as_micros().max(1);
        let us = (t.saturating_duration_since(self.t0)).as_micros();
        let r = us.div_ceil(tick) * tick;
        self.t0 + Duration::from_micros(r as u64)
    }

    fn transmit(&mut self) {
        let now = self.now;
        for (side, link) in [
            (&mut self.client, &mut self.c2s),
            (&mut self.server, &mut self.s2c),
        ] {
            if !side.active(now) {
                continue;
            }
            let mut buf = Vec::new();
            while side.conn.poll_transmit(&mut buf) > 0 {}
            if buf.is_empty() {
                continue;
            }
            side.wire_out.extend_from_slice(&buf);
            if link.blackhole {
                continue;
            }
            let jitter = self.rng.below(link.jitter);
            let mut at = now + link.delay + jitter;
            if let Some(last) = link.last_at {
                at = at.max(last);
            }
            link.last_at = Some(at);
            link.queue.push_back((at, buf));
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        };
        for side in [&self.client, &self.server] {
            if side.crashed {
                continue;
            }
            match side.stalled_until {
                Some(s) if s > self.now => consider(Some(s)),
                _ => consider(side.conn.poll_timeout().map(|t| self.round_up(t))),
            }
        }
        consider(self.c2s.next_at());
        consider(self.s2c.next_at());
        best
    }

    fn drain_events(side: &mut Side, now: Instant, store: &mut MemoryStore) {
        while let Some(e) = side.conn.poll_event() {
            if let Event::ResumeRequested { .. } = e {
                side.conn.resolve_resume(now, store);
            }
            if let Event::Message { payload, .. } = &e {
                side.received.push(payload.to_vec());
            }
            side.events.push((now, e));
        }
    }

    fn deliver(link: &mut Link, side: &mut Side, now: Instant) {
        while link.next_at().is_some_and(|t| t <= now) {
            let Some((_, bytes)) = link.queue.pop_front() else {
                break;
            };
            if side.crashed {
                continue;
            }
            side.last_rx = Some(now);
            if side.active(now) {
                side.conn.handle_input(now, &bytes);
            } else {
                side.pending_in.extend_from_slice(&bytes);
            }
        }
    }

    /// Advance to the next event, but not past `limit`. Returns false if nothing happened.
    pub(crate) fn step(&mut self, limit: Instant) -> bool {
        self.transmit();
        let Some(t) = self.next_time() else {
            self.now = self.now.max(limit);
            return false;
        };
        if t > limit {
            self.now = self.now.max(limit);
            return false;
        }
        self.now = self.now.max(t);
        let now = self.now;
        Self::deliver(&mut self.c2s, &mut self.server, now);
        Self::deliver(&mut self.s2c, &mut self.client, now);
        for side in [&mut self.client, &mut self.server] {
            if !side.active(now) {
                continue;
            }
            if side.stalled_until.is_some() {
                side.stalled_until = None;
                // Runtime order after a stall: read the socket first, then timers.
                let input = std::mem::take(&mut side.pending_in);
                if !input.is_empty() {
                    side.conn.handle_input(now, &input);
                }
            }
            if side.conn.poll_timeout().is_some_and(|d| d <= now) {
                side.conn.handle_timeout(now);
            }
            Self::drain_events(side, now, &mut self.store);
        }
        self.transmit();
        true
    }

    /// Run for `d` of virtual time.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        while self.step(limit) {}
    }

    /// Run until `cond` holds or `d` passes; returns whether it held.
    pub(crate) fn run_until(&mut self, d: Duration, mut cond: impl FnMut(&Pair) -> bool) -> bool {
        let limit = self.now + d;
        loop {
            if cond(self) {
                return true;
            }
            if !self.step(limit) {
                return cond(self);
            }
        }
    }

    pub(crate) fn connected(&self) -> bool {
        let up = |s: &Side| {
            let c = s.count(|e| matches!(e, Event::Connected { .. }));
            c > 0 && !s.conn.is_closed()
        };
        up(&self.client) && up(&self.server)
    }

    /// Lose everything in flight and lift blackholes and holds.
    pub(crate) fn reset_links(&mut self) {
        for l in [&mut self.c2s, &mut self.s2c] {
            l.queue.clear();
            l.blackhole = false;
            l.hold_until = None;
            l.last_at = None;
        }
    }

    /// Both sides drop their connection (as a runtime does after `Dead`), the server parks its
    /// session in the store, and the client reconnects with its session. In-flight bytes are lost.
    pub(crate) fn reconnect(&mut self) {
        let now = self.now;
        if let Some(s) = self.server.conn.take_session(now) {
            self.store.put(s);
        }
        let cs = self.client.conn.take_session(now);
        let cfg = self
            .client
            .conn
            .reconnect_config()
            .unwrap_or(self.client_cfg);
        self.client.conn = match cs {
            Some(s) => Connection::client_resume(now, cfg, s),
            None => Connection::client(now, cfg),
        };
        self.server.conn = Connection::server(now, self.server_cfg, keys(self.next_id));
        self.next_id += 1;
        self.reset_links();
        for s in [&mut self.client, &mut self.server] {
            s.pending_in.clear();
            s.stalled_until = None;
        }
    }
}
