//! The JSON-compatible connection: liveness with `{"ping":N}`/`{"pong":N}`, no sessions.
//!
//! Our pings carry `N` = microseconds since this connection's epoch; a pong that answers it
//! with `N` or `N + 1` gives an RTT sample, any other pong is still a sign of life. Pongs we
//! send answer the peer's `N` with `N + 1`, as the classic servers do (`{"ping":10}` →
//! `{"pong":11}`). Closing sends nothing (the classic protocol has no close message).

use crate::connection::{Event, JsonConfig, Role, SendError};
use crate::error::{Backpressure, JsonError};
use crate::frame::CloseCode;
use crate::json::{JsonDecoder, JsonMessage, encode_json_ping, encode_json_pong};
use crate::liveness::Liveness;
use crate::policy::{PingEnforcer, PingVerdict};
use crate::rtt::RttStats;
use crate::session::{Room, Seq};
use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug)]
pub(crate) struct Json {
    role: Role,
    cfg: JsonConfig,
    epoch: Instant,
    decoder: JsonDecoder,
    live: Liveness,
    enforcer: PingEnforcer,
    control: Vec<u8>,
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    send_seq: u64,
    recv_seq: u64,
    events: VecDeque<Event>,
    closed: bool,
}

impl Json {
    pub(crate) fn new(now: Instant, role: Role, cfg: JsonConfig) -> Json {
        Json {
            role,
            cfg,
            epoch: now,
            decoder: JsonDecoder::new(cfg.limits),
            live: Liveness::new(now, cfg.liveness),
            enforcer: PingEnforcer::default(),
            control: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            send_seq: 0,
            recv_seq: 0,
            events: VecDeque::new(),
            closed: false,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn rtt(&self) -> RttStats {
        *self.live.rtt()
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(crate) fn close(&mut self, code: CloseCode, reason: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.events.push_back(Event::Closed {
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

    pub(crate) fn handle_input(&mut self, now: Instant, mut data: &[u8]) {
        if self.closed || data.is_empty() {
            return;
        }
        self.live.on_recv(now);
        loop {
            let n = self.decoder.space().min(data.len());
            let (chunk, rest) = data.split_at(n);
            if let Err(e) = self.decoder.push(chunk) {
                return self.fail(e);
            }
            data = rest;
            loop {
                match self.decoder.next_message() {
                    Ok(Some(m)) => self.on_message(now, m),
                    Ok(None) => break,
                    Err(e) => return self.fail(e),
                }
                if self.closed {
                    return;
                }
            }
            if data.is_empty() {
                return;
            }
            if self.decoder.space() == 0
                && let Err(e) = self.decoder.push(data)
            {
                return self.fail(e);
            }
        }
    }

    fn on_message(&mut self, now: Instant, m: JsonMessage) {
        match m {
            JsonMessage::Ping(n) => {
                self.live.on_heartbeat();
                if let (Role::Server, Some(max)) = (self.role, self.cfg.max_ping_strikes) {
                    match self.enforcer.on_ping(now, self.live.config().interval, max) {
                        PingVerdict::Ok => {}
                        PingVerdict::Strike(strikes) => {
                            self.events.push_back(Event::PingStrike { strikes })
                        }
                        PingVerdict::TooMany => {
                            return self.close(
                                CloseCode::TooManyPings,
                                "pinged more often than the interval allows",
                            );
                        }
                    }
                }
                encode_json_pong(&mut self.control, n.saturating_add(1));
            }
            JsonMessage::Pong(n) => {
                self.live.on_heartbeat();
                // Classic servers answer N + 1; echoing servers answer N. Either is our sample.
                if let Some(nonce) = self.live.outstanding_nonce()
                    && (self.live.on_pong(now, self.epoch, nonce, n).is_some()
                        || self
                            .live
                            .on_pong(now, self.epoch, nonce, n.saturating_sub(1))
                            .is_some())
                {
                    self.events.push_back(Event::Rtt(*self.live.rtt()));
                }
            }
            JsonMessage::Data(payload) => {
                let seq = Seq(self.recv_seq);
                self.recv_seq += 1;
                self.events.push_back(Event::Message { seq, payload });
            }
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        let asked = self.live.deadline();
        let v = self.live.on_timeout(now);
        if v.stalled {
            self.events.push_back(Event::Stalled {
                late_by: now.saturating_duration_since(asked),
            });
        }
        if let Some(silent_for) = v.dead {
            self.events.push_back(Event::Dead { silent_for });
            let reason = format!("peer silent for {silent_for:?}");
            return self.close(CloseCode::Timeout, &reason);
        }
        if let Some(phi) = v.suspect {
            self.events.push_back(Event::Suspect { phi });
        }
        let pings = self.cfg.send_pings.unwrap_or(self.role == Role::Client);
        if v.ping && pings {
            let (_, ts) = self.live.make_ping(now, self.epoch);
            encode_json_ping(&mut self.control, ts);
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        (!self.closed).then(|| self.live.deadline())
    }

    pub(crate) fn pings_sent(&self) -> u32 {
        self.live.pings_sent()
    }

    pub(crate) fn room_for(&self, len: usize) -> Room {
        if len > self.cfg.max_send_queue {
            Room::Never
        } else if self.queued_bytes.saturating_add(len) <= self.cfg.max_send_queue {
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
        if self.queued_bytes.saturating_add(payload.len()) > self.cfg.max_send_queue {
            return Err(SendError::Backpressure(Backpressure {
                buffered: self.queued_bytes,
                messages: self.queue.len(),
                len: payload.len(),
                max_bytes: self.cfg.max_send_queue,
                max_messages: usize::MAX,
            }));
        }
        self.queued_bytes += payload.len();
        self.queue.push_back(payload);
        let seq = Seq(self.send_seq);
        self.send_seq += 1;
        Ok(seq)
    }

    pub(crate) fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        out.extend_from_slice(&self.control);
        self.control.clear();
        if !self.closed
            && let Some(m) = self.queue.pop_front()
        {
            self.queued_bytes -= m.len();
            out.extend_from_slice(&m);
        }
        out.len() - before
    }
}
