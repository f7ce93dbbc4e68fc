//! The JSON-compatible connection: liveness with `{"ping":N}`/`{"pong":N}`, no sessions.
//!
//! Our pings carry `N` = microseconds since this connection was created; a pong that answers it
//! with `N` or `N + 1` gives an RTT sample, any other pong is still a sign of life. Pongs we
//! send answer the peer's `N` with `N + 1`, as the classic servers do (`{"ping":10}` →
//! `{"pong":11}`). Closing sends nothing (the classic protocol has no close message).

use crate::connection::{Event, JsonConfig, Role, SendError};
use crate::error::{Backpressure, JsonError};
use crate::frame::CloseCode;
use crate::json::{
    JsonDecoder, JsonMessage, Scanner, classify, encode_json_ping, encode_json_pong,
    heartbeat_at_start,
};
use crate::liveness::{Liveness, Pinging};
use crate::policy::PingVerdict;
use crate::rtt::RttStats;
use crate::session::{Room, Seq};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The pong waiting inline for `poll_transmit` (our own ping waits inline with `ping_due`;
/// later ones wait in `Cold::spill`, after the inline ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctl {
    None,
    Ping,
    Pong,
}

/// State that is empty while the connection idles: boxed, and released when empty again.
#[derive(Debug, Default)]
struct Cold {
    /// Events after the inline `Rtt` one.
    events: VecDeque<Event>,
    /// Encoded control messages after the inline one.
    spill: Vec<u8>,
    /// An object split across reads, from its `{`, and where its scan stopped.
    tail: Vec<u8>,
    scanner: Scanner,
    /// Application messages waiting to be written.
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
}

impl Cold {
    fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.spill.is_empty()
            && self.tail.is_empty()
            && self.queue.is_empty()
    }
}

/// A JSON-compatible connection: 168 bytes, and no heap of its own while it idles.
#[derive(Debug)]
pub(crate) struct Json {
    cfg: Arc<JsonConfig>,
    live: Liveness,
    /// Stream offset of the next input byte (error messages name offsets).
    received: u64,
    /// This connection's creation, in µs since the liveness anchor: our pings carry times
    /// relative to it, so that `N` stays small for classic peers.
    epoch_us: u64,
    send_seq: u64,
    recv_seq: u64,
    /// Payload of the inline control message.
    ctl_val: u64,
    cold: Option<Box<Cold>>,
    ctl: Ctl,
    role: Role,
    closed: bool,
    /// An `Event::Rtt` with the current statistics is the first queued event.
    rtt_event: bool,
    /// Our newest ping (`Liveness::last_ping_made`) waits inline too, beside the inline
    /// message: before it if `ping_first`, after it otherwise.
    ping_due: bool,
    ping_first: bool,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl Json {
    pub(crate) fn new(now: Instant, role: Role, cfg: Arc<JsonConfig>) -> Json {
        let mut live = Liveness::new(now, &cfg.liveness);
        if !Self::sends_pings(&cfg, role) {
            // A classic peer drives the heartbeat and never answers ours: no ping deadline, only
            // the conviction at `timeout` of silence (docs/LIVENESS.md, rule 7).
            live.set_pinging(Pinging::Never);
        }
        Json {
            epoch_us: live.ns(now) / 1000,
            live,
            cfg,
            received: 0,
            send_seq: 0,
            recv_seq: 0,
            ctl_val: 0,
            cold: None,
            ctl: Ctl::None,
            role,
            closed: false,
            rtt_event: false,
            ping_due: false,
            ping_first: false,
        }
    }

    /// Whether this side sends `{"ping":N}` on silence: `send_pings`, by default only clients.
    fn sends_pings(cfg: &JsonConfig, role: Role) -> bool {
        cfg.send_pings.unwrap_or(role == Role::Client)
    }

    fn cold_mut(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    fn tidy(&mut self) {
        if self.cold.as_deref().is_some_and(Cold::is_empty) {
            self.cold = None;
        }
    }

    fn push_event(&mut self, e: Event) {
        self.cold_mut().events.push_back(e);
    }

    /// Queue a control message (a ping must be the one `make_ping` just made).
    fn queue_ctl(&mut self, ctl: Ctl, val: u64) {
        let spill_empty = self.cold.as_deref().is_none_or(|c| c.spill.is_empty());
        if spill_empty && ctl == Ctl::Ping && !self.ping_due {
            self.ping_due = true;
            self.ping_first = self.ctl == Ctl::None;
        } else if spill_empty && ctl != Ctl::Ping && self.ctl == Ctl::None {
            self.ctl = ctl;
            self.ctl_val = val;
        } else {
            encode_ctl(&mut self.cold_mut().spill, ctl, val);
        }
    }

    /// Append the inline control messages, in the order they were queued, and clear them.
    fn take_inline_ctl(&mut self, out: &mut Vec<u8>) {
        let ping = self
            .ping_due
            .then(|| self.live.last_ping_made().1.saturating_sub(self.epoch_us));
        let ping_first = self.ping_first;
        (self.ping_due, self.ping_first) = (false, false);
        if let (Some(ts), true) = (ping, ping_first) {
            encode_json_ping(out, ts);
        }
        encode_ctl(out, self.ctl, self.ctl_val);
        self.ctl = Ctl::None;
        if let (Some(ts), false) = (ping, ping_first) {
            encode_json_ping(out, ts);
        }
    }

    /// Move a due ping (and the inline message) to the front of the spill, where they belong
    /// in order, before the liveness state the ping is read from changes.
    fn pin_due_ping(&mut self) {
        if self.ping_due {
            let mut inline = Vec::new();
            self.take_inline_ctl(&mut inline);
            self.cold_mut().spill.splice(0..0, inline);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn rtt(&self) -> RttStats {
        self.live.rtt()
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.live.timeout()
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        if self.rtt_event {
            self.rtt_event = false;
            return Some(Event::Rtt(self.live.rtt()));
        }
        let e = self.cold.as_deref_mut()?.events.pop_front();
        self.tidy();
        e
    }

    pub(crate) fn close(&mut self, code: CloseCode, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.push_event(Event::Closed {
            code,
            reason: reason.to_owned(),
            by_peer: false,
        });
    }

    fn fail(&mut self, e: JsonError) {
        let code = match e {
            JsonError::ObjectTooLarge { .. }
            | JsonError::TooDeep { .. }
            | JsonError::BufferFull { .. } => CloseCode::LimitExceeded,
            _ => CloseCode::ProtocolError,
        };
        self.close(code, &e.to_string());
    }

    pub(crate) fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.closed || data.is_empty() {
            return;
        }
        let now = self.live.ns(now);
        self.live.on_recv(now);
        let base = self.received;
        self.received += data.len() as u64;
        self.decode(now, data, base);
        self.tidy();
    }

    /// Decode objects straight from `data` (stream offset `base`), buffering only an object
    /// that is not complete yet. The outcome is that of a decoder holding at most
    /// `max_buffered` bytes (see `JsonDecoder`): an object is decoded when it fits in
    /// `max_buffered` from its `{`, and the connection fails with `BufferFull` once more than
    /// that of an object's bytes are at hand.
    fn decode(&mut self, now: u64, data: &[u8], base: u64) {
        let limits = self.cfg.limits;
        let max = limits.max_buffered;
        let mut i = 0;
        // First complete an object begun in an earlier input.
        if let Some(c) = self.cold.as_deref_mut()
            && !c.tail.is_empty()
        {
            let carried = c.tail.len();
            let window = data.get(..max.saturating_sub(carried)).unwrap_or(data);
            let (mut start, mut pos) = (0, 0);
            match c
                .scanner
                .scan(window, &mut start, &mut pos, base, carried, &limits)
            {
                Err(e) => return self.fail(e),
                Ok(Some(end)) => {
                    c.tail.extend_from_slice(window.get(..end).unwrap_or(&[]));
                    let msg = classify(&c.tail);
                    c.tail = Vec::new();
                    c.scanner = Scanner::default();
                    i = end;
                    match msg {
                        Ok(m) => self.on_message(now, m),
                        Err(e) => return self.fail(e),
                    }
                    if self.closed {
                        return;
                    }
                }
                Ok(None) if window.len() < data.len() => {
                    let buffered = carried + data.len();
                    return self.fail(JsonError::BufferFull { buffered, max });
                }
                Ok(None) => {
                    c.tail.extend_from_slice(data);
                    return;
                }
            }
        }
        loop {
            while data.get(i).copied().is_some_and(is_ws) {
                i += 1;
            }
            let Some(rest) = data.get(i..).filter(|r| !r.is_empty()) else {
                return;
            };
            if let Some((msg, len)) = heartbeat_at_start(rest, &limits) {
                // The common read: a short heartbeat, recognised without the general scanner.
                i += len;
                self.on_message(now, msg);
                if self.closed {
                    return;
                }
                continue;
            }
            let window = rest.get(..max).unwrap_or(rest);
            let mut scanner = Scanner::default();
            let (mut start, mut pos) = (0, 0);
            match scanner.scan(window, &mut start, &mut pos, base + i as u64, 0, &limits) {
                Err(e) => return self.fail(e),
                Ok(Some(end)) => {
                    let msg = classify(window.get(..end).unwrap_or(&[]));
                    i += end;
                    match msg {
                        Ok(m) => self.on_message(now, m),
                        Err(e) => return self.fail(e),
                    }
                    if self.closed {
                        return;
                    }
                }
                Ok(None) if window.len() < rest.len() => {
                    let buffered = rest.len();
                    return self.fail(JsonError::BufferFull { buffered, max });
                }
                Ok(None) => {
                    let c = self.cold_mut();
                    c.tail.extend_from_slice(rest);
                    c.scanner = scanner;
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, now: u64, m: JsonMessage) {
        match m {
            JsonMessage::Ping(n) => {
                self.live.on_heartbeat();
                if let (Role::Server, Some(max)) = (self.role, self.cfg.max_ping_strikes) {
                    match self.live.on_peer_ping(now, max) {
                        PingVerdict::Ok => {}
                        PingVerdict::Strike(strikes) => {
                            self.push_event(Event::PingStrike { strikes })
                        }
                        PingVerdict::TooMany => {
                            return self.close(
                                CloseCode::TooManyPings,
                                "pinged more often than the interval allows",
                            );
                        }
                    }
                }
                self.queue_ctl(Ctl::Pong, n.saturating_add(1));
            }
            JsonMessage::Pong(n) => {
                self.live.on_heartbeat();
                if self.rtt_event {
                    // Fix the queued Rtt event's statistics before this sample changes them.
                    self.rtt_event = false;
                    let e = Event::Rtt(self.live.rtt());
                    self.cold_mut().events.push_front(e);
                }
                // Classic servers answer N + 1; echoing servers answer N. Either is our sample.
                let ts = n.saturating_add(self.epoch_us);
                if let Some(nonce) = self.live.outstanding_nonce()
                    && (self.live.on_pong(now, nonce, ts).is_some()
                        || self
                            .live
                            .on_pong(now, nonce, ts.saturating_sub(1))
                            .is_some())
                {
                    if self.cold.as_deref().is_none_or(|c| c.events.is_empty()) {
                        self.rtt_event = true;
                    } else {
                        self.push_event(Event::Rtt(self.live.rtt()));
                    }
                }
            }
            JsonMessage::Data(payload) => {
                let seq = Seq(self.recv_seq);
                self.recv_seq += 1;
                self.push_event(Event::Message {
                    seq,
                    payload: payload.into(),
                });
            }
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.on_timeout(now);
        self.tidy();
    }

    fn on_timeout(&mut self, now: Instant) {
        self.pin_due_ping();
        let now = self.live.ns(now);
        let asked = self.live.deadline_ns();
        let v = self.live.on_timeout(now, self.cfg.liveness.stall_tolerance);
        if v.stalled {
            self.push_event(Event::Stalled {
                late_by: Duration::from_nanos(now.saturating_sub(asked)),
            });
        }
        if let Some(silent_for) = v.dead {
            self.push_event(Event::Dead { silent_for });
            let reason = format!("peer silent for {silent_for:?}");
            return self.close(CloseCode::Timeout, &reason);
        }
        if let Some(phi) = v.suspect {
            self.push_event(Event::Suspect { phi });
        }
        if v.ping && Self::sends_pings(&self.cfg, self.role) {
            let (_, ts) = self.live.make_ping(now);
            self.queue_ctl(Ctl::Ping, ts.saturating_sub(self.epoch_us));
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        (!self.closed).then(|| self.live.deadline())
    }

    pub(crate) fn pings_sent(&self) -> u32 {
        self.live.pings_sent()
    }

    pub(crate) fn queued(&self) -> usize {
        self.cold.as_ref().map_or(0, |c| c.queue.len())
    }

    fn queued_bytes(&self) -> usize {
        self.cold.as_deref().map_or(0, |c| c.queued_bytes)
    }

    pub(crate) fn room_for(&self, len: usize) -> Room {
        let max = self.cfg.max_send_queue;
        if len > max {
            Room::Never
        } else if self.queued_bytes().saturating_add(len) <= max {
            Room::Now
        } else {
            Room::Later
        }
    }

    pub(crate) fn send(&mut self, payload: Vec<u8>) -> Result<Seq, SendError> {
        let mut check = JsonDecoder::new(self.cfg.limits);
        let ok = check.push(&payload).and_then(|()| check.next_message());
        match ok {
            Ok(Some(_)) if check.buffered() == 0 => {}
            Ok(_) => return Err(SendError::NotJsonObject("not exactly one object".into())),
            Err(e) => return Err(SendError::NotJsonObject(e.to_string())),
        }
        let max = self.cfg.max_send_queue;
        let queued = self.queued_bytes();
        if queued.saturating_add(payload.len()) > max {
            let messages = self.cold.as_deref().map_or(0, |c| c.queue.len());
            return Err(SendError::Backpressure(Backpressure {
                buffered: queued,
                messages,
                len: payload.len(),
                max_bytes: max,
                max_messages: usize::MAX,
            }));
        }
        let c = self.cold_mut();
        c.queued_bytes += payload.len();
        c.queue.push_back(payload);
        let seq = Seq(self.send_seq);
        self.send_seq += 1;
        Ok(seq)
    }

    pub(crate) fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        self.take_inline_ctl(out);
        let closed = self.closed;
        if let Some(c) = self.cold.as_deref_mut() {
            out.extend_from_slice(&c.spill);
            c.spill.clear();
            if !closed && let Some(m) = c.queue.pop_front() {
                c.queued_bytes -= m.len();
                out.extend_from_slice(&m);
            }
        }
        self.tidy();
        out.len() - before
    }
}

fn encode_ctl(out: &mut Vec<u8>, ctl: Ctl, val: u64) {
    match ctl {
        Ctl::None => {}
        Ctl::Ping => encode_json_ping(out, val),
        Ctl::Pong => encode_json_pong(out, val),
    }
}
