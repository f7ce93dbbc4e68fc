//! The binary-protocol connection: handshake, liveness, sessions, chunked DATA, lazy acks.

use crate::connection::{Config, Event, Role, SendError};
use crate::decode::FrameDecoder;
use crate::error::{DecodeError, SessionError};
use crate::frame::{self, CloseCode, Frame, FrameType, Hello, VERSION, Welcome};
use crate::liveness::Liveness;
use crate::policy::{PingEnforcer, PingVerdict, backoff_timing};
use crate::rtt::RttStats;
use crate::session::{ResumeToken, Room, Seq, Session, SessionId, SessionKeys};
use crate::store::SessionStore;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitResume,
    /// Server, new session: WELCOME sent, waiting for the client's first frame after it (which
    /// proves the client holds the session id and token). Behaves as `Open` otherwise.
    AwaitConfirm,
    AwaitWelcome,
    Open,
    Closed,
}

#[derive(Debug)]
pub(crate) struct Binary {
    role: Role,
    state: State,
    cfg: Config,
    epoch: Instant,
    decoder: FrameDecoder,
    live: Liveness,
    enforcer: PingEnforcer,
    session: Option<Session>,
    /// Client: asked to resume. Server: keys for a new session.
    resuming: bool,
    fresh: Option<SessionKeys>,
    /// Server: the client demonstrably holds the session (it resumed it, or sent a frame after
    /// our WELCOME). Until then `send` is refused: a message queued in a session the client may
    /// never learn about could never be delivered. Always true for clients.
    confirmed: bool,
    pending_resume: Option<(SessionId, ResumeToken, u64)>,
    control: Vec<u8>,
    tx_seq: u64,
    tx_off: usize,
    reasm: Vec<u8>,
    ack_due: Option<Instant>,
    events: VecDeque<Event>,
    backoff: bool,
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Binary {
    fn base(now: Instant, role: Role, cfg: Config, state: State) -> Binary {
        Binary {
            role,
            state,
            cfg,
            epoch: now,
            decoder: FrameDecoder::new(cfg.limits),
            live: Liveness::new(now, cfg.liveness),
            enforcer: PingEnforcer::default(),
            session: None,
            resuming: false,
            fresh: None,
            confirmed: role == Role::Client,
            pending_resume: None,
            control: Vec::new(),
            tx_seq: 0,
            tx_off: 0,
            reasm: Vec::new(),
            ack_due: None,
            events: VecDeque::new(),
            backoff: false,
        }
    }

    pub(crate) fn client(now: Instant, cfg: Config, session: Option<Session>) -> Binary {
        let mut b = Binary::base(now, Role::Client, cfg, State::AwaitWelcome);
        let resume = session
            .as_ref()
            .filter(|s| s.is_established())
            .map(|s| (s.id(), s.keys().token, s.recv_next().0));
        b.resuming = resume.is_some();
        b.session = Some(session.unwrap_or_else(|| {
            Session::new(
                SessionKeys {
                    id: SessionId(0),
                    token: ResumeToken::from_bytes([0; 16]),
                },
                cfg.session,
            )
        }));
        frame::encode_hello(
            &mut b.control,
            &Hello {
                version: VERSION,
                interval_ms: ms(cfg.liveness.interval),
                timeout_ms: ms(cfg.liveness.timeout),
                resume,
            },
        );
        b
    }

    pub(crate) fn server(now: Instant, cfg: Config, fresh: SessionKeys) -> Binary {
        let mut b = Binary::base(now, Role::Server, cfg, State::AwaitHello);
        b.fresh = Some(fresh);
        b
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub(crate) fn rtt(&self) -> RttStats {
        *self.live.rtt()
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(crate) fn close(&mut self, code: CloseCode, reason: &str, by_peer: bool) {
        if self.state == State::Closed {
            return;
        }
        if !by_peer {
            frame::encode_close(&mut self.control, code, reason);
        }
        self.state = State::Closed;
        self.events.push_back(Event::Closed {
            code,
            reason: reason.to_owned(),
            by_peer,
        });
    }

    fn fail_session(&mut self, e: SessionError) {
        self.close(e.close_code(), &e.to_string(), false);
    }

    fn fail_decode(&mut self, e: DecodeError) {
        let code = match e {
            DecodeError::FrameTooLarge { .. } | DecodeError::BufferFull { .. } => {
                CloseCode::LimitExceeded
            }
            _ => CloseCode::ProtocolError,
        };
        self.close(code, &e.to_string(), false);
    }

    pub(crate) fn handle_input(&mut self, now: Instant, mut data: &[u8]) {
        if self.state == State::Closed || data.is_empty() {
            return;
        }
        self.live.on_recv(now);
        loop {
            let n = self.decoder.space().min(data.len());
            let (chunk, rest) = data.split_at(n);
            if let Err(e) = self.decoder.push(chunk) {
                return self.fail_decode(e);
            }
            data = rest;
            loop {
                match self.decoder.next_frame() {
                    Ok(Some(f)) => self.on_frame(now, f),
                    Ok(None) => break,
                    Err(e) => return self.fail_decode(e),
                }
                if self.state == State::Closed {
                    return;
                }
            }
            if data.is_empty() {
                return;
            }
            if self.decoder.space() == 0 {
                // A frame larger than the buffer can never complete.
                if let Err(e) = self.decoder.push(data) {
                    return self.fail_decode(e);
                }
            }
        }
    }

    fn unexpected(&mut self, ty: FrameType) {
        let reason = format!("unexpected {ty:?} frame in state {:?}", self.state);
        self.close(CloseCode::ProtocolError, &reason, false);
    }

    fn on_frame(&mut self, now: Instant, f: Frame) {
        let ty = f.frame_type();
        if self.state == State::AwaitConfirm && !matches!(f, Frame::Close { .. }) {
            // Only a client that received our WELCOME sends anything but CLOSE after HELLO.
            self.confirm();
        }
        match (f, self.state) {
            (Frame::Close { code, reason }, _) => {
                if code == CloseCode::TooManyPings && self.role == Role::Client {
                    self.backoff = true;
                }
                self.close(code, &reason, true);
            }
            (Frame::Hello(h), State::AwaitHello) if self.role == Role::Server => {
                self.on_hello(now, h)
            }
            (Frame::Welcome(w), State::AwaitWelcome) if self.role == Role::Client => {
                self.on_welcome(now, w)
            }
            (
                Frame::Ping {
                    nonce,
                    timestamp_us,
                },
                State::Open,
            ) => {
                self.live.on_heartbeat();
                if self.role == Role::Server {
                    let policy = self.cfg.policy;
                    match self.enforcer.on_ping(
                        now,
                        self.live.config().interval,
                        policy.max_ping_strikes,
                    ) {
                        PingVerdict::Ok => {}
                        PingVerdict::Strike(strikes) => {
                            self.events.push_back(Event::PingStrike { strikes })
                        }
                        PingVerdict::TooMany => {
                            return self.close(
                                CloseCode::TooManyPings,
                                "pinged more often than the granted interval",
                                false,
                            );
                        }
                    }
                }
                frame::encode_ping(&mut self.control, FrameType::Pong, nonce, timestamp_us);
            }
            (
                Frame::Pong {
                    nonce,
                    timestamp_us,
                },
                State::Open,
            ) => {
                self.live.on_heartbeat();
                if self
                    .live
                    .on_pong(now, self.epoch, nonce, timestamp_us)
                    .is_some()
                {
                    self.events.push_back(Event::Rtt(*self.live.rtt()));
                }
            }
            (Frame::Ack { next }, State::Open) => self.on_peer_ack(next),
            (
                Frame::Data {
                    seq,
                    ack,
                    fin,
                    payload,
                },
                State::Open,
            ) => {
                self.on_peer_ack(ack);
                if self.state == State::Open {
                    self.on_data(now, seq, fin, payload);
                }
            }
            _ => self.unexpected(ty),
        }
    }

    fn on_hello(&mut self, now: Instant, h: Hello) {
        if h.version != VERSION {
            let reason = format!("version {} not supported (speaks {VERSION})", h.version);
            return self.close(CloseCode::VersionMismatch, &reason, false);
        }
        let (interval, timeout) = self.cfg.policy.grant(
            Duration::from_millis(u64::from(h.interval_ms)),
            Duration::from_millis(u64::from(h.timeout_ms)),
        );
        self.live.set_timing(interval, timeout);
        if let Some((id, token, ack)) = h.resume {
            self.pending_resume = Some((id, token, ack));
            self.state = State::AwaitResume;
            self.events
                .push_back(Event::ResumeRequested { session: id });
            return;
        }
        let keys = self.fresh.take().unwrap_or(SessionKeys {
            id: SessionId(0),
            token: ResumeToken::from_bytes([0; 16]),
        });
        self.session = Some(Session::new(keys, self.cfg.session));
        self.open(now, false);
    }

    pub(crate) fn resolve_resume(&mut self, now: Instant, store: &mut dyn SessionStore) {
        let Some((id, token, ack)) = self.pending_resume.take() else {
            return;
        };
        if self.state != State::AwaitResume {
            return;
        }
        let Some(mut s) = store.take(id) else {
            return self.fail_session(SessionError::Unknown);
        };
        if !s.keys().token.ct_eq(&token) {
            store.put(s);
            return self.fail_session(SessionError::BadToken);
        }
        if s.is_expired(now) {
            return self.fail_session(SessionError::Expired);
        }
        if let Err(e) = s.on_ack(ack) {
            // Keep the session: the real client may still resume it.
            store.put(s);
            return self.fail_session(e);
        }
        self.session = Some(s);
        self.open(now, true);
    }

    /// Server side: send WELCOME and open.
    fn open(&mut self, _now: Instant, resumed: bool) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.attach();
        let keys = s.keys();
        let ack = s.recv_next().0;
        self.tx_seq = s.peer_acked();
        self.tx_off = 0;
        let cfg = self.live.config();
        let (interval, timeout) = (cfg.interval, cfg.timeout);
        frame::encode_welcome(
            &mut self.control,
            &Welcome {
                version: VERSION,
                resumed,
                interval_ms: ms(interval),
                timeout_ms: ms(timeout),
                session_id: keys.id,
                token: keys.token,
                ack,
            },
        );
        if resumed {
            // The client presented this session's id and token: it holds the session.
            self.state = State::Open;
            self.confirmed = true;
            self.events.push_back(Event::Connected {
                session: keys.id,
                resumed,
                interval,
                timeout,
            });
        } else {
            self.state = State::AwaitConfirm;
        }
    }

    /// Server, new session: the client's first frame after WELCOME arrived, so it holds the
    /// session id and token and can resume it. Now the session is open for `send`.
    fn confirm(&mut self) {
        let Some(s) = self.session.as_ref() else {
            return;
        };
        let session = s.id();
        self.state = State::Open;
        self.confirmed = true;
        let cfg = self.live.config();
        self.events.push_back(Event::Connected {
            session,
            resumed: false,
            interval: cfg.interval,
            timeout: cfg.timeout,
        });
    }

    fn on_welcome(&mut self, _now: Instant, w: Welcome) {
        if w.version != VERSION {
            let reason = format!("version {} not supported (speaks {VERSION})", w.version);
            return self.close(CloseCode::VersionMismatch, &reason, false);
        }
        if w.interval_ms == 0 || w.timeout_ms <= w.interval_ms {
            let reason = format!(
                "bad grant: interval {} ms, timeout {} ms",
                w.interval_ms, w.timeout_ms
            );
            return self.close(CloseCode::ProtocolError, &reason, false);
        }
        if w.resumed != self.resuming {
            return self.close(
                CloseCode::ProtocolError,
                "WELCOME resume flag does not match HELLO",
                false,
            );
        }
        let interval = Duration::from_millis(u64::from(w.interval_ms));
        let timeout = Duration::from_millis(u64::from(w.timeout_ms));
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if w.resumed {
            if w.session_id != s.id() {
                return self.close(
                    CloseCode::ProtocolError,
                    "WELCOME for another session",
                    false,
                );
            }
            if let Err(e) = s.on_ack(w.ack) {
                return self.fail_session(e);
            }
        } else {
            s.set_keys(SessionKeys {
                id: w.session_id,
                token: w.token,
            });
        }
        s.attach();
        if !w.resumed {
            // Completes the handshake: tells the server we hold the new session (see
            // `State::AwaitConfirm`). Control frames go first, so this precedes any DATA.
            let next = s.ack_sending();
            frame::encode_ack(&mut self.control, next);
        }
        self.tx_seq = s.peer_acked();
        self.tx_off = 0;
        self.live.set_timing(interval, timeout);
        self.state = State::Open;
        self.events.push_back(Event::Connected {
            session: w.session_id,
            resumed: w.resumed,
            interval,
            timeout,
        });
    }

    fn on_peer_ack(&mut self, next: u64) {
        // The peer cannot acknowledge what this connection has not started transmitting.
        let limit = self.tx_seq + u64::from(self.tx_off > 0);
        if next > limit {
            return self.fail_session(SessionError::BadAck {
                acked: next,
                sent: limit,
            });
        }
        if let Some(s) = self.session.as_mut()
            && let Err(e) = s.on_ack(next)
        {
            self.fail_session(e);
        }
    }

    fn on_data(&mut self, now: Instant, seq: u64, fin: bool, payload: Vec<u8>) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        match s.classify(seq) {
            Err(e) => return self.fail_session(e),
            Ok(crate::session::Incoming::Duplicate) => return,
            Ok(crate::session::Incoming::Next) => {}
        }
        let max = s.config().max_message_size;
        if self.reasm.len().saturating_add(payload.len()) > max {
            return self.fail_session(SessionError::MessageTooLarge { max });
        }
        if !fin {
            self.reasm.extend_from_slice(&payload);
            return;
        }
        let msg = if self.reasm.is_empty() {
            payload
        } else {
            self.reasm.extend_from_slice(&payload);
            std::mem::take(&mut self.reasm)
        };
        s.delivered();
        let owed = s.ack_owed();
        let every = u64::from(s.config().ack_every.max(1));
        let delay = s.config().ack_delay;
        self.events.push_back(Event::Message {
            seq: Seq(seq),
            payload: msg,
        });
        if owed >= every {
            let next = s.ack_sending();
            frame::encode_ack(&mut self.control, next);
            self.ack_due = None;
        } else if self.ack_due.is_none() {
            self.ack_due = Some(now + delay);
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if self.ack_due.is_some_and(|d| now >= d) {
            self.ack_due = None;
            if let Some(s) = self.session.as_mut()
                && self.state == State::Open
                && s.ack_owed() > 0
            {
                let next = s.ack_sending();
                frame::encode_ack(&mut self.control, next);
            }
        }
        if self
            .session
            .as_ref()
            .and_then(Session::age_deadline)
            .is_some_and(|d| now >= d)
        {
            return self.fail_session(SessionError::Expired);
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
            return self.close(CloseCode::Timeout, &reason, false);
        }
        if let Some(phi) = v.suspect {
            self.events.push_back(Event::Suspect { phi });
        }
        if v.ping && matches!(self.state, State::Open | State::AwaitConfirm) {
            let (nonce, ts) = self.live.make_ping(now, self.epoch);
            frame::encode_ping(&mut self.control, FrameType::Ping, nonce, ts);
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut d = self.live.deadline();
        if let Some(a) = self.ack_due {
            d = d.min(a);
        }
        if let Some(a) = self.session.as_ref().and_then(Session::age_deadline) {
            d = d.min(a);
        }
        Some(d)
    }

    pub(crate) fn pings_sent(&self) -> u32 {
        self.live.pings_sent()
    }

    pub(crate) fn room_for(&self, len: usize) -> Room {
        match self.session.as_ref() {
            Some(s) if self.confirmed => s.room_for(len),
            Some(s) if s.room_for(len) == Room::Never => Room::Never,
            _ => Room::Later,
        }
    }

    pub(crate) fn send(&mut self, now: Instant, payload: Vec<u8>) -> Result<Seq, SendError> {
        if !self.confirmed {
            return Err(SendError::NoSession);
        }
        let s = self.session.as_mut().ok_or(SendError::NoSession)?;
        Ok(s.push(now, payload)?)
    }

    pub(crate) fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        out.extend_from_slice(&self.control);
        self.control.clear();
        if self.state != State::Open {
            return out.len() - before;
        }
        let Some(s) = self.session.as_mut() else {
            return out.len() - before;
        };
        if s.payload(self.tx_seq).is_none() {
            return out.len() - before;
        }
        let ack = s.ack_sending();
        let Some(p) = s.payload(self.tx_seq) else {
            return out.len() - before;
        };
        let end = self
            .tx_off
            .saturating_add(self.cfg.chunk_size.max(1))
            .min(p.len());
        let chunk = p.get(self.tx_off..end).unwrap_or(&[]);
        let fin = end >= p.len();
        let seq = self.tx_seq;
        frame::encode_data(out, seq, ack, fin, chunk);
        self.ack_due = None;
        if fin {
            self.tx_seq += 1;
            self.tx_off = 0;
        } else {
            self.tx_off = end;
        }
        out.len() - before
    }

    pub(crate) fn take_session(&mut self, now: Instant) -> Option<Session> {
        if self.state != State::Closed {
            self.close(CloseCode::Normal, "session detached", false);
        }
        let mut s = self.session.take()?;
        s.detach(now);
        Some(s)
    }

    pub(crate) fn reconnect_config(&self) -> Config {
        let mut cfg = self.cfg;
        if self.backoff {
            let l = self.live.config();
            let (i, t) = backoff_timing(l.interval, l.timeout);
            cfg.liveness.interval = i;
            cfg.liveness.timeout = t;
        }
        cfg
    }
}
