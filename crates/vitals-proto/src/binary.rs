//! The binary-protocol connection: handshake, liveness, sessions, chunked DATA, lazy acks.

use crate::connection::{Config, Event, Role, SendError};
use crate::decode::parse;
use crate::error::{DecodeError, SessionError};
use crate::frame::{
    self, CloseCode, DATA_HEAD_LEN, Frame, FrameType, HEADER_LEN, Hello, VERSION, Welcome,
};
use crate::liveness::{Liveness, Pinging};
use crate::policy::{PingVerdict, backoff_timing};
use crate::rtt::RttStats;
use crate::session::{ResumeToken, Room, Seq, Session, SessionConfig, SessionId, SessionKeys};
use crate::store::SessionStore;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;
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

/// The PONG or ACK that waits inline (no buffer) for `poll_transmit` (our own PING waits
/// inline with `PING_DUE`); later ones, and the rare big ones (HELLO, WELCOME, CLOSE), wait
/// encoded in `Cold::spill`, after the inline ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctl {
    None,
    Ping,
    Pong,
    Ack,
}

/// Flags (bits of `Binary::flags`).
const RESUMING: u8 = 1;
const CONFIRMED: u8 = 2;
const BACKOFF: u8 = 4;
const HAS_SESSION: u8 = 8;
/// An `Event::Rtt` with the current statistics is the first queued event.
const RTT_EVENT: u8 = 16;
/// Our newest PING (`Liveness::last_ping_made`) waits inline too, beside the inline control
/// frame, so that a PONG and our own PING due in the same wake-up need no buffer either...
const PING_DUE: u8 = 32;
/// ...before the inline frame if this is set, after it otherwise.
const PING_FIRST: u8 = 64;

/// State that is empty while a connection idles (between heartbeats nothing of it is needed):
/// boxed, allocated when something needs it, and released as soon as all of it is empty again.
#[derive(Debug, Default)]
struct Cold {
    /// Events after the inline `Rtt` one.
    events: VecDeque<Event>,
    /// Encoded control frames after the inline one.
    spill: Vec<u8>,
    /// The undecoded prefix of a frame split across reads.
    tail: Vec<u8>,
    /// A DATA frame whose chunk is arriving straight into its delivery buffer.
    rx: Option<RxData>,
    /// Chunks of a DATA message received so far.
    reasm: Vec<u8>,
    /// When a held-back ACK must go out (ns since the epoch).
    ack_due: Option<u64>,
    /// Bytes of the received messages not yet acknowledged.
    ack_owed_bytes: usize,
    /// Server: a resume asked for (id, token, client's receive point), until resolved.
    resume: Option<(SessionId, ResumeToken, u64)>,
    /// (next seq to transmit, offset in it) unless that is (send_next, 0).
    tx: Option<(u64, usize)>,
    /// The `session` part of the connection's own config, when the session it runs came with
    /// different bounds (a resumed session keeps its own; see `adopt`).
    own_session_cfg: Option<SessionConfig>,
}

impl Cold {
    fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.spill.is_empty()
            && self.tail.is_empty()
            && self.rx.is_none()
            && self.reasm.is_empty()
            && self.ack_due.is_none()
            && self.ack_owed_bytes == 0
            && self.resume.is_none()
            && self.tx.is_none()
            && self.own_session_cfg.is_none()
    }
}

/// DATA chunks at least this long are delivered as shared slices of the runtime's input buffer
/// (`handle_input_buf`); shorter ones are copied, so that a small message kept by the application
/// does not keep a whole input buffer alive.
pub(crate) const SHARE_MIN: usize = 4096;

/// (seq, ack, fin) from the first [`DATA_HEAD_LEN`] bytes of a DATA frame.
fn data_head(head: &[u8]) -> (u64, u64, bool) {
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        if let Some(src) = head.get(at..at + 8) {
            b.copy_from_slice(src);
        }
        u64::from_be_bytes(b)
    };
    let flags = head.get(DATA_HEAD_LEN - 1).copied().unwrap_or(0);
    (
        u64_at(HEADER_LEN),
        u64_at(HEADER_LEN + 8),
        flags & frame::DATA_FIN != 0,
    )
}

/// A DATA frame whose head has arrived and whose chunk is still arriving: the chunk goes straight
/// into `payload`, allocated once with the chunk's exact length, which becomes the frame's (and,
/// for a message sent in one chunk, the delivered message's) buffer.
#[derive(Debug)]
struct RxData {
    seq: u64,
    ack: u64,
    fin: bool,
    /// Capacity: the chunk's length.
    payload: Vec<u8>,
    /// The chunk's length.
    len: usize,
}

impl RxData {
    /// Starts receiving the DATA frame at the front of `buf` (which holds less than all of it)
    /// if its head is complete and the whole frame fits in `max_buffered`; the bytes of the chunk
    /// in `buf` are taken. `parse` has already checked the header against the limits.
    fn start(buf: &[u8], max_buffered: usize) -> Option<RxData> {
        let head = buf.get(..DATA_HEAD_LEN)?;
        if head[0] != FrameType::Data as u8 {
            return None;
        }
        let frame_len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if HEADER_LEN + frame_len > max_buffered {
            return None;
        }
        let len = frame_len.checked_sub(frame::DATA_PREFIX_LEN)?;
        let (seq, ack, fin) = data_head(head);
        let mut rx = RxData {
            seq,
            ack,
            fin,
            payload: Vec::with_capacity(len),
            len,
        };
        let rest = rx.fill(buf.get(DATA_HEAD_LEN..).unwrap_or(&[]));
        debug_assert!(rest.is_empty() && !rx.is_complete());
        Some(rx)
    }

    /// Takes what `data` holds of the chunk; returns the rest.
    fn fill<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let take = self.len.saturating_sub(self.payload.len()).min(data.len());
        let (head, rest) = data.split_at(take);
        self.payload.extend_from_slice(head);
        rest
    }

    fn is_complete(&self) -> bool {
        self.payload.len() >= self.len
    }

    fn into_frame(self) -> Frame {
        Frame::Data {
            seq: self.seq,
            ack: self.ack,
            fin: self.fin,
            payload: self.payload,
        }
    }
}

/// A binary-protocol connection: 192 bytes, and no heap of its own while it idles.
#[derive(Debug)]
pub(crate) struct Binary {
    /// Always present (it carries the shared config); `HAS_SESSION` says whether it is the
    /// connection's session (a server has none before HELLO, nor after a failed resume or
    /// `take_session`). Before HELLO a server keeps its fresh keys here.
    session: Session,
    live: Liveness,
    /// Payload of the inline control frame: PING/PONG timestamp, or ACK's next seq.
    ctl_val: u64,
    cold: Option<Box<Cold>>,
    /// Nonce of the inline PING/PONG.
    ctl_nonce: u32,
    ctl: Ctl,
    state: State,
    role: Role,
    flags: u8,
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn zero_keys() -> SessionKeys {
    SessionKeys {
        id: SessionId(0),
        token: ResumeToken::from_bytes([0; 16]),
    }
}

impl Binary {
    fn base(now: Instant, role: Role, session: Session, state: State) -> Binary {
        let live = Liveness::new(now, &session.shared_config().liveness);
        Binary {
            session,
            live,
            ctl_val: 0,
            cold: None,
            ctl_nonce: 0,
            ctl: Ctl::None,
            state,
            role,
            flags: if role == Role::Client { CONFIRMED } else { 0 },
        }
    }

    pub(crate) fn client(now: Instant, cfg: Arc<Config>, session: Option<Session>) -> Binary {
        let resume = session
            .as_ref()
            .filter(|s| s.is_established())
            .map(|s| (s.id(), s.keys().token, s.recv_next().0));
        let mut b = Binary::base(
            now,
            Role::Client,
            Session::with_config(zero_keys(), cfg),
            State::AwaitWelcome,
        );
        if let Some(s) = session {
            b.adopt(s);
        }
        b.flags |= HAS_SESSION;
        if resume.is_some() {
            b.flags |= RESUMING;
        }
        let cfg = b.cfg();
        let hello = Hello {
            version: VERSION,
            interval_ms: ms(cfg.liveness.interval),
            timeout_ms: ms(cfg.liveness.timeout),
            resume,
            auth: cfg.auth_token,
        };
        frame::encode_hello(&mut b.cold_mut().spill, &hello);
        b
    }

    pub(crate) fn server(now: Instant, cfg: Arc<Config>, fresh: SessionKeys) -> Binary {
        let mut b = Binary::base(
            now,
            Role::Server,
            Session::with_config(fresh, cfg),
            State::AwaitHello,
        );
        // Client-driven heartbeats (opt-in): the server answers, and probes only after
        // 1.25 × interval of silence (docs/LIVENESS.md).
        let pinging = if b.cfg().policy.client_driven {
            Pinging::Passive
        } else {
            Pinging::Active
        };
        b.live.set_pinging(pinging);
        b
    }

    /// Run `s` as this connection's session. The session keeps its own bounds (its `session`
    /// config); everything else follows this connection's config. Both live in one shared
    /// config, which is this connection's own unless the bounds differ.
    fn adopt(&mut self, mut s: Session) {
        let conn = self.session.shared_config();
        if !Arc::ptr_eq(s.shared_config(), conn) {
            if conn.session == *s.config() {
                s.set_shared_config(conn.clone());
            } else {
                let own = conn.session;
                s.set_shared_config(Arc::new(Config {
                    session: *s.config(),
                    ..**conn
                }));
                let c = self.cold_mut();
                c.own_session_cfg = Some(c.own_session_cfg.unwrap_or(own));
            }
        }
        self.session = s;
    }

    fn cfg(&self) -> &Config {
        self.session.shared_config()
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn session(&self) -> Option<&Session> {
        self.has(HAS_SESSION).then_some(&self.session)
    }

    fn session_mut(&mut self) -> Option<&mut Session> {
        self.has(HAS_SESSION).then_some(&mut self.session)
    }

    /// An ack carrying the session's receive point is going out: nothing is owed any more.
    fn ack_sending(&mut self) -> u64 {
        if let Some(c) = self.cold.as_deref_mut() {
            c.ack_owed_bytes = 0;
        }
        self.session.ack_sending()
    }

    fn cold_mut(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Release the cold state once it holds nothing.
    fn tidy(&mut self) {
        let send_next = self.session.send_next().0;
        if let Some(c) = self.cold.as_deref_mut() {
            if c.tx == Some((send_next, 0)) {
                c.tx = None;
            }
            if c.is_empty() {
                self.cold = None;
            }
        }
    }

    /// (next seq to transmit, offset in it).
    fn tx(&self) -> (u64, usize) {
        self.cold
            .as_deref()
            .and_then(|c| c.tx)
            .unwrap_or((self.session.send_next().0, 0))
    }

    fn set_tx(&mut self, seq: u64, off: usize) {
        if (seq, off) == (self.session.send_next().0, 0) {
            if let Some(c) = self.cold.as_deref_mut() {
                c.tx = None;
            }
        } else {
            self.cold_mut().tx = Some((seq, off));
        }
    }

    fn push_event(&mut self, e: Event) {
        self.cold_mut().events.push_back(e);
    }

    /// Queue a control frame (a PING must be the one `make_ping` just made).
    fn queue_ctl(&mut self, ctl: Ctl, nonce: u32, val: u64) {
        let spill_empty = self.cold.as_deref().is_none_or(|c| c.spill.is_empty());
        if spill_empty && ctl == Ctl::Ping && !self.has(PING_DUE) {
            self.flags |= PING_DUE;
            if self.ctl == Ctl::None {
                self.flags |= PING_FIRST;
            }
        } else if spill_empty && ctl != Ctl::Ping && self.ctl == Ctl::None {
            self.ctl = ctl;
            self.ctl_nonce = nonce;
            self.ctl_val = val;
        } else {
            encode_ctl(&mut self.cold_mut().spill, ctl, nonce, val);
        }
    }

    /// Append the inline control frames, in the order they were queued, and clear them.
    fn take_inline_ctl(&mut self, out: &mut Vec<u8>) {
        let ping = self.has(PING_DUE).then(|| self.live.last_ping_made());
        let ping_first = self.has(PING_FIRST);
        self.flags &= !(PING_DUE | PING_FIRST);
        if let (Some((nonce, ts)), true) = (ping, ping_first) {
            frame::encode_ping(out, FrameType::Ping, nonce, ts);
        }
        encode_ctl(out, self.ctl, self.ctl_nonce, self.ctl_val);
        self.ctl = Ctl::None;
        if let (Some((nonce, ts)), false) = (ping, ping_first) {
            frame::encode_ping(out, FrameType::Ping, nonce, ts);
        }
    }

    /// Move a due PING (and the inline frame) to the front of the spill, where they belong in
    /// order, before the liveness state the PING is read from changes.
    fn pin_due_ping(&mut self) {
        if self.has(PING_DUE) {
            let mut inline = Vec::with_capacity(2 * (frame::HEADER_LEN + frame::PING_LEN));
            self.take_inline_ctl(&mut inline);
            self.cold_mut().spill.splice(0..0, inline);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub(crate) fn rtt(&self) -> RttStats {
        self.live.rtt()
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        if self.has(RTT_EVENT) {
            self.flags &= !RTT_EVENT;
            return Some(Event::Rtt(self.live.rtt()));
        }
        let e = self.cold.as_deref_mut()?.events.pop_front();
        self.tidy();
        e
    }

    pub(crate) fn close(&mut self, code: CloseCode, reason: &str, by_peer: bool) {
        if self.state == State::Closed {
            return;
        }
        if !by_peer {
            frame::encode_close(&mut self.cold_mut().spill, code, reason);
        }
        self.state = State::Closed;
        self.push_event(Event::Closed {
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

    pub(crate) fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.state == State::Closed || data.is_empty() {
            return;
        }
        let now = self.live.ns(now);
        self.live.on_recv(now);
        self.decode(now, data);
        self.tidy();
    }

    /// Input in a buffer the runtime owns and reads into: complete frames are taken from its
    /// front, DATA chunks of at least [`SHARE_MIN`] bytes as shared slices of it (no copy), and a
    /// frame not complete yet stays in it for the next read to complete.
    pub(crate) fn handle_input_buf(&mut self, now: Instant, buf: &mut BytesMut) {
        if self.state == State::Closed {
            // Input after the close is ignored, as `handle_input` ignores it.
            buf.clear();
            return;
        }
        if buf.is_empty() {
            return;
        }
        let now = self.live.ns(now);
        self.live.on_recv(now);
        self.decode_buf(now, buf);
        self.tidy();
    }

    fn decode_buf(&mut self, now: u64, buf: &mut BytesMut) {
        let limits = self.cfg().limits;
        let max = limits.max_buffered;
        // A frame begun in an earlier `handle_input` (in `tail` or `rx`) takes its bytes first.
        if self
            .cold
            .as_deref()
            .is_some_and(|c| !c.tail.is_empty() || c.rx.is_some())
        {
            let before = buf.len();
            let used = self.decode_pending(now, buf);
            buf.advance(used.min(before));
            if self.state == State::Closed {
                buf.clear();
                return;
            }
            if self
                .cold
                .as_deref()
                .is_some_and(|c| !c.tail.is_empty() || c.rx.is_some())
            {
                return;
            }
        }
        while !buf.is_empty() {
            if let Some(head) = buf.get(..DATA_HEAD_LEN)
                && head[0] == FrameType::Data as u8
            {
                let total =
                    HEADER_LEN + u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                let len = total.saturating_sub(DATA_HEAD_LEN);
                // The head alone: a bad length fails here as `parse` fails it.
                if let Err(e) = parse(head, limits.max_frame_size) {
                    buf.clear();
                    return self.fail_decode(e);
                }
                if len >= SHARE_MIN && total <= max {
                    if buf.len() < total {
                        break;
                    }
                    let (seq, ack, fin) = data_head(head);
                    let payload = buf.split_to(total).freeze().slice(DATA_HEAD_LEN..);
                    self.on_data_frame(now, seq, ack, fin, payload);
                    if self.state == State::Closed {
                        buf.clear();
                        return;
                    }
                    continue;
                }
            }
            let window = buf.get(..max).unwrap_or(buf);
            match parse(window, limits.max_frame_size) {
                Err(e) => {
                    buf.clear();
                    return self.fail_decode(e);
                }
                Ok(Some((f, used))) => {
                    buf.advance(used);
                    self.on_frame(now, f);
                    if self.state == State::Closed {
                        buf.clear();
                        return;
                    }
                }
                Ok(None) => break,
            }
        }
        if buf.len() > max {
            // An incomplete frame that does not fit in the buffer, and more than that at hand.
            let buffered = buf.len();
            buf.clear();
            self.fail_decode(DecodeError::BufferFull { buffered, max });
        }
    }

    /// Feeds the front of `data` to the frame begun in an earlier input (`tail` or `rx`), as
    /// `decode` would, and returns how many bytes it took (all of `data` when the frame is still
    /// not complete, or when the connection closed).
    fn decode_pending(&mut self, now: u64, data: &[u8]) -> usize {
        // `decode` stops at the end of the pending frame only if it is given no more than that.
        let want = match self.cold.as_deref() {
            Some(c) if c.rx.is_some() => c.rx.as_ref().map_or(0, |rx| rx.len - rx.payload.len()),
            Some(c) => match c.tail.get(..HEADER_LEN) {
                Some(h) => {
                    let total = HEADER_LEN + u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                    total.saturating_sub(c.tail.len())
                }
                // Not even the header yet: take what completes it; the rest is decided then.
                None => HEADER_LEN - c.tail.len(),
            },
            None => 0,
        };
        let take = want.min(data.len());
        self.decode(now, &data[..take]);
        if take == data.len() || self.state == State::Closed {
            return data.len();
        }
        let pending = self
            .cold
            .as_deref()
            .is_some_and(|c| !c.tail.is_empty() || c.rx.is_some());
        if pending {
            // The header just completed: the frame's length is known now.
            return take + self.decode_pending(now, &data[take..]);
        }
        take
    }

    /// Decode frames straight from `data`, buffering only the prefix of a frame that is not
    /// complete yet. The outcome is that of a decoder holding at most `max_buffered` bytes
    /// (see `FrameDecoder`): a frame is decoded when it fits in `max_buffered`, and the
    /// connection fails with `BufferFull` once more than that of a frame's bytes are at hand.
    ///
    /// A DATA frame that does not arrive whole is not gathered in `tail`: once its head (header,
    /// seq, ack, flags) is here, its chunk is copied straight into the buffer it is delivered in,
    /// allocated once with the chunk's exact length (see [`RxData`]).
    fn decode(&mut self, now: u64, mut data: &[u8]) {
        let limits = self.cfg().limits;
        let max = limits.max_buffered;
        // First complete a frame begun in an earlier input (its head in `tail`).
        if let Some(c) = self.cold.as_deref_mut()
            && !c.tail.is_empty()
        {
            let frame = loop {
                let tail = &mut c.tail;
                let want = match tail.get(..HEADER_LEN) {
                    Some(h) => {
                        let total =
                            HEADER_LEN + u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                        // A DATA frame that fits is gathered here only up to its head.
                        let upto = if h[0] == FrameType::Data as u8 && total <= max {
                            total.min(DATA_HEAD_LEN)
                        } else {
                            total
                        };
                        upto.saturating_sub(tail.len())
                    }
                    None => HEADER_LEN - tail.len(),
                };
                let take = want.min(max.saturating_sub(tail.len())).min(data.len());
                let (head, rest) = data.split_at(take);
                tail.extend_from_slice(head);
                data = rest;
                match parse(tail, limits.max_frame_size) {
                    Err(e) => return self.fail_decode(e),
                    Ok(Some((f, _))) => {
                        tail.clear();
                        break Some(f);
                    }
                    Ok(None) => {
                        if let Some(rx) = RxData::start(tail, max) {
                            tail.clear();
                            c.rx = Some(rx);
                            break None;
                        }
                        if data.is_empty() {
                            return;
                        }
                        if tail.len() >= max {
                            let buffered = tail.len() + data.len();
                            return self.fail_decode(DecodeError::BufferFull { buffered, max });
                        }
                    }
                }
            };
            if let Some(frame) = frame {
                self.on_frame(now, frame);
                if self.state == State::Closed {
                    return;
                }
            }
        }
        // Then the rest of a DATA chunk that is arriving straight into place.
        if let Some(c) = self.cold.as_deref_mut()
            && let Some(rx) = c.rx.as_mut()
        {
            data = rx.fill(data);
            if !rx.is_complete() {
                return;
            }
            if let Some(rx) = c.rx.take() {
                self.on_frame(now, rx.into_frame());
                if self.state == State::Closed {
                    return;
                }
            }
        }
        while !data.is_empty() {
            let window = data.get(..max).unwrap_or(data);
            match parse(window, limits.max_frame_size) {
                Err(e) => return self.fail_decode(e),
                Ok(Some((f, used))) => {
                    data = data.get(used..).unwrap_or(&[]);
                    self.on_frame(now, f);
                    if self.state == State::Closed {
                        return;
                    }
                }
                Ok(None) => {
                    if let Some(rx) = RxData::start(data, max) {
                        // `data` holds less than the whole frame: all of it went into `rx`.
                        self.cold_mut().rx = Some(rx);
                        return;
                    }
                    if data.len() > max {
                        // The frame does not fit in the buffer and more than that is at hand.
                        let buffered = data.len();
                        return self.fail_decode(DecodeError::BufferFull { buffered, max });
                    }
                    self.cold_mut().tail.extend_from_slice(data);
                    return;
                }
            }
        }
    }

    fn unexpected(&mut self, ty: FrameType) {
        let reason = format!("unexpected {ty:?} frame in state {:?}", self.state);
        self.close(CloseCode::ProtocolError, &reason, false);
    }

    fn on_frame(&mut self, now: u64, f: Frame) {
        let ty = f.frame_type();
        if self.state == State::AwaitConfirm && !matches!(f, Frame::Close { .. }) {
            // Only a client that received our WELCOME sends anything but CLOSE after HELLO.
            self.confirm();
        }
        match (f, self.state) {
            (Frame::Close { code, reason }, _) => {
                if code == CloseCode::TooManyPings && self.role == Role::Client {
                    self.flags |= BACKOFF;
                }
                self.close(code, &reason, true);
            }
            (Frame::Hello(h), State::AwaitHello) if self.role == Role::Server => self.on_hello(h),
            (Frame::Welcome(w), State::AwaitWelcome) if self.role == Role::Client => {
                self.on_welcome(w)
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
                    let max = self.cfg().policy.max_ping_strikes;
                    // Judged on arrival (the budget in `policy`): a sender's timestamps could be forged.
                    match self.live.on_peer_ping(now, max) {
                        PingVerdict::Ok => {}
                        PingVerdict::Strike(strikes) => {
                            self.push_event(Event::PingStrike { strikes })
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
                self.queue_ctl(Ctl::Pong, nonce, timestamp_us);
            }
            (
                Frame::Pong {
                    nonce,
                    timestamp_us,
                },
                State::Open,
            ) => {
                self.live.on_heartbeat();
                if self.has(RTT_EVENT) {
                    // The queued Rtt event reports the statistics as they are now: fix them
                    // before this sample changes them.
                    self.flags &= !RTT_EVENT;
                    let e = Event::Rtt(self.live.rtt());
                    self.cold_mut().events.push_front(e);
                }
                if self.live.on_pong(now, nonce, timestamp_us).is_some() {
                    if self.cold.as_deref().is_none_or(|c| c.events.is_empty()) {
                        self.flags |= RTT_EVENT;
                    } else {
                        self.push_event(Event::Rtt(self.live.rtt()));
                    }
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
            ) => self.on_open_data(now, seq, ack, fin, Bytes::from(payload)),
            _ => self.unexpected(ty),
        }
    }

    fn on_hello(&mut self, h: Hello) {
        if h.version != VERSION {
            let reason = format!("version {} not supported (speaks {VERSION})", h.version);
            return self.close(CloseCode::VersionMismatch, &reason, false);
        }
        if let Some(expected) = &self.cfg().auth_token {
            // Constant time; a resume needs the token as well as the session's own secret.
            let why = match &h.auth {
                None => Some("authentication token required"),
                Some(got) if !expected.ct_eq(got) => Some("authentication failed"),
                Some(_) => None,
            };
            if let Some(why) = why {
                return self.close(CloseCode::AuthFailed, why, false);
            }
        }
        let (interval, timeout) = self.cfg().policy.grant(
            Duration::from_millis(u64::from(h.interval_ms)),
            Duration::from_millis(u64::from(h.timeout_ms)),
        );
        self.live.set_timing(interval, timeout);
        if let Some((id, token, ack)) = h.resume {
            self.cold_mut().resume = Some((id, token, ack));
            self.state = State::AwaitResume;
            self.push_event(Event::ResumeRequested { session: id });
            return;
        }
        // The session made at construction, with the fresh keys.
        self.flags |= HAS_SESSION;
        self.open(false);
    }

    pub(crate) fn resolve_resume(&mut self, now: Instant, store: &mut dyn SessionStore) {
        self.resolve(now, store);
        self.tidy();
    }

    fn resolve(&mut self, now: Instant, store: &mut dyn SessionStore) {
        let Some((id, token, ack)) = self.cold.as_deref_mut().and_then(|c| c.resume.take()) else {
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
        self.adopt(s);
        self.flags |= HAS_SESSION;
        self.open(true);
    }

    /// Server side: send WELCOME and open.
    fn open(&mut self, resumed: bool) {
        let s = &mut self.session;
        s.attach();
        let keys = s.keys();
        let ack = s.committed();
        let acked = s.peer_acked();
        self.set_tx(acked, 0);
        let (interval, timeout) = (self.live.interval(), self.live.timeout());
        frame::encode_welcome(
            &mut self.cold_mut().spill,
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
            self.flags |= CONFIRMED;
            self.push_event(Event::Connected {
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
        let Some(s) = self.session() else {
            return;
        };
        let session = s.id();
        self.state = State::Open;
        self.flags |= CONFIRMED;
        let (interval, timeout) = (self.live.interval(), self.live.timeout());
        self.push_event(Event::Connected {
            session,
            resumed: false,
            interval,
            timeout,
        });
    }

    fn on_welcome(&mut self, w: Welcome) {
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
        if w.resumed != self.has(RESUMING) {
            return self.close(
                CloseCode::ProtocolError,
                "WELCOME resume flag does not match HELLO",
                false,
            );
        }
        let interval = Duration::from_millis(u64::from(w.interval_ms));
        let timeout = Duration::from_millis(u64::from(w.timeout_ms));
        let Some(s) = self.session_mut() else {
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
            if w.ack < s.peer_acked() {
                // The server acknowledged more before than it holds now (a shared store that lost
                // writes): what lies between is gone from our replay buffer. Say so, never a gap.
                return self.fail_session(SessionError::Unknown);
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
        let acked = s.peer_acked();
        if !w.resumed {
            // Completes the handshake: tells the server we hold the new session (see
            // `State::AwaitConfirm`). Control frames go first, so this precedes any DATA.
            let next = self.ack_sending();
            self.queue_ctl(Ctl::Ack, 0, next);
        }
        self.set_tx(acked, 0);
        self.live.set_timing(interval, timeout);
        self.state = State::Open;
        self.push_event(Event::Connected {
            session: w.session_id,
            resumed: w.resumed,
            interval,
            timeout,
        });
    }

    fn on_peer_ack(&mut self, next: u64) {
        // The peer cannot acknowledge what this connection has not started transmitting.
        let (tx_seq, tx_off) = self.tx();
        let limit = tx_seq + u64::from(tx_off > 0);
        if next > limit {
            return self.fail_session(SessionError::BadAck {
                acked: next,
                sent: limit,
            });
        }
        let Some(s) = self.session_mut() else {
            return;
        };
        let before = s.peer_acked();
        if let Err(e) = s.on_ack(next) {
            return self.fail_session(e);
        }
        if s.config().commit_acks && s.peer_acked() > before {
            let next = Seq(s.peer_acked());
            self.push_event(Event::Acked { next });
        }
    }

    /// A DATA frame whose chunk is a shared slice of the input (see `handle_input_buf`): what
    /// `on_frame` does with a decoded DATA frame.
    fn on_data_frame(&mut self, now: u64, seq: u64, ack: u64, fin: bool, payload: Bytes) {
        if self.state == State::AwaitConfirm {
            self.confirm();
        }
        if self.state == State::Open {
            self.on_open_data(now, seq, ack, fin, payload);
        } else {
            self.unexpected(FrameType::Data);
        }
    }

    fn on_open_data(&mut self, now: u64, seq: u64, ack: u64, fin: bool, payload: Bytes) {
        self.on_peer_ack(ack);
        if self.state == State::Open {
            self.on_data(now, seq, fin, payload);
        }
    }

    fn on_data(&mut self, now: u64, seq: u64, fin: bool, payload: Bytes) {
        let Some(s) = self.session() else {
            return;
        };
        match s.classify(seq) {
            Err(e) => return self.fail_session(e),
            Ok(crate::session::Incoming::Duplicate) => return,
            Ok(crate::session::Incoming::Next) => {}
        }
        let max = s.config().max_message_size;
        let reasm = self.cold.as_deref().map_or(0, |c| c.reasm.len());
        if reasm.saturating_add(payload.len()) > max {
            return self.fail_session(SessionError::MessageTooLarge { max });
        }
        if !fin {
            self.cold_mut().reasm.extend_from_slice(&payload);
            return;
        }
        let msg = if reasm == 0 {
            payload
        } else {
            let c = self.cold_mut();
            c.reasm.extend_from_slice(&payload);
            Bytes::from(std::mem::take(&mut c.reasm))
        };
        self.session.delivered();
        let len = msg.len();
        self.push_event(Event::Message {
            seq: Seq(seq),
            payload: msg,
        });
        if !self.session.config().commit_acks {
            self.owe_ack(now, len);
        }
    }

    /// Messages of `len` bytes in all became acknowledgeable: ack at once past `ack_every` (or
    /// `ack_every_bytes`), else within `ack_delay`.
    fn owe_ack(&mut self, now: u64, len: usize) {
        let s = &self.session;
        let owed = s.ack_owed();
        let cfg = s.config();
        let every = u64::from(cfg.ack_every.max(1));
        let every_bytes = cfg.ack_every_bytes.max(1);
        let delay = crate::liveness::nanos(cfg.ack_delay);
        let c = self.cold_mut();
        c.ack_owed_bytes = c.ack_owed_bytes.saturating_add(len);
        let owed_bytes = c.ack_owed_bytes;
        if owed >= every || owed_bytes >= every_bytes {
            let next = self.ack_sending();
            self.queue_ctl(Ctl::Ack, 0, next);
            if let Some(c) = self.cold.as_deref_mut() {
                c.ack_due = None;
            }
        } else {
            let c = self.cold_mut();
            if c.ack_due.is_none() {
                c.ack_due = Some(now.saturating_add(delay));
            }
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        self.on_timeout(now);
        self.tidy();
    }

    fn on_timeout(&mut self, now_i: Instant) {
        self.pin_due_ping();
        let now = self.live.ns(now_i);
        if let Some(c) = self.cold.as_deref_mut()
            && c.ack_due.is_some_and(|d| now >= d)
        {
            c.ack_due = None;
            if self.state == State::Open && self.session().is_some_and(|s| s.ack_owed() > 0) {
                let next = self.ack_sending();
                self.queue_ctl(Ctl::Ack, 0, next);
            }
        }
        if self
            .session()
            .and_then(Session::age_deadline)
            .is_some_and(|d| now_i >= d)
        {
            return self.fail_session(SessionError::Expired);
        }
        let asked = self.live.deadline_ns();
        let v = self
            .live
            .on_timeout(now, self.cfg().liveness.stall_tolerance);
        if v.stalled {
            self.push_event(Event::Stalled {
                late_by: Duration::from_nanos(now.saturating_sub(asked)),
            });
        }
        if let Some(silent_for) = v.dead {
            self.push_event(Event::Dead { silent_for });
            let reason = format!("peer silent for {silent_for:?}");
            return self.close(CloseCode::Timeout, &reason, false);
        }
        if let Some(phi) = v.suspect {
            self.push_event(Event::Suspect { phi });
        }
        if v.ping && matches!(self.state, State::Open | State::AwaitConfirm) {
            let (nonce, ts) = self.live.make_ping(now);
            self.queue_ctl(Ctl::Ping, nonce, ts);
        }
    }

    /// Queues a PING now, outside the liveness schedule (an RTT probe). False if not open.
    pub(crate) fn ping_now(&mut self, now_i: Instant) -> bool {
        if !matches!(self.state, State::Open | State::AwaitConfirm) {
            return false;
        }
        self.pin_due_ping();
        let now = self.live.ns(now_i);
        let (nonce, ts) = self.live.make_ping(now);
        self.queue_ctl(Ctl::Ping, nonce, ts);
        self.tidy();
        true
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut d = self.live.deadline_ns();
        if let Some(a) = self.cold.as_deref().and_then(|c| c.ack_due) {
            d = d.min(a);
        }
        let mut d = self.live.instant(d);
        if let Some(a) = self.session().and_then(Session::age_deadline) {
            d = d.min(a);
        }
        Some(d)
    }

    pub(crate) fn pings_sent(&self) -> u32 {
        self.live.pings_sent()
    }

    pub(crate) fn session_id(&self) -> Option<SessionId> {
        self.session().map(|s| s.id())
    }

    pub(crate) fn commit(&mut self, now: Instant, upto: Seq) {
        if self.state != State::Open || !self.has(HAS_SESSION) {
            return;
        }
        if self.session.commit(upto.0) > 0 {
            let now = self.live.ns(now);
            // Committed bytes are not tracked: the count and the delay decide.
            self.owe_ack(now, 0);
        }
        self.tidy();
    }

    pub(crate) fn pending_resume(&self) -> Option<(SessionId, ResumeToken, Seq)> {
        if self.state != State::AwaitResume {
            return None;
        }
        let (id, token, ack) = self.cold.as_deref()?.resume?;
        Some((id, token, Seq(ack)))
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.live.timeout()
    }

    pub(crate) fn send_next(&self) -> Option<Seq> {
        self.session().map(|s| s.send_next())
    }

    pub(crate) fn refuse_resume(&mut self, e: SessionError) {
        if self.state == State::AwaitResume {
            if let Some(c) = self.cold.as_deref_mut() {
                c.resume = None;
            }
            self.fail_session(e);
            self.tidy();
        }
    }

    pub(crate) fn session_keys(&self) -> Option<SessionKeys> {
        self.session().map(|s| s.keys())
    }

    pub(crate) fn verify_resume(&mut self, keys: &SessionKeys) -> bool {
        let ok = self.state == State::AwaitResume
            && self
                .cold
                .as_deref()
                .and_then(|c| c.resume.as_ref())
                .is_some_and(|(id, token, _)| *id == keys.id && keys.token.ct_eq(token));
        if !ok {
            self.refuse_resume(SessionError::BadToken);
        }
        ok
    }

    pub(crate) fn unacked(&self) -> usize {
        self.session().map_or(0, |s| s.unacked())
    }

    pub(crate) fn room_for(&self, len: usize) -> Room {
        match self.session() {
            Some(s) if self.has(CONFIRMED) => s.room_for(len),
            Some(s) if s.room_for(len) == Room::Never => Room::Never,
            _ => Room::Later,
        }
    }

    pub(crate) fn send(&mut self, now: Instant, payload: Bytes) -> Result<Seq, SendError> {
        if !self.has(CONFIRMED) || !self.has(HAS_SESSION) {
            return Err(SendError::NoSession);
        }
        // `tx` defaults to `send_next`, which is about to move: pin it first.
        let tx = self.tx();
        self.cold_mut().tx = Some(tx);
        let r = self.session.push(now, payload);
        self.tidy();
        Ok(r?)
    }

    pub(crate) fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        if let Some(chunk) = self.poll_transmit_parts(out) {
            out.extend_from_slice(&chunk);
        }
        out.len() - before
    }

    /// Control frames, then at most one DATA chunk: its head goes into `out` and its bytes are
    /// returned (a shared slice of the replay buffer), to follow `out` on the wire.
    pub(crate) fn poll_transmit_parts(&mut self, out: &mut Vec<u8>) -> Option<Bytes> {
        self.take_inline_ctl(out);
        if let Some(c) = self.cold.as_deref_mut() {
            out.extend_from_slice(&c.spill);
            c.spill.clear();
        }
        let chunk = self.transmit_data(out);
        self.tidy();
        chunk
    }

    /// Appends the next DATA chunk's head to `out` and returns the chunk.
    fn transmit_data(&mut self, out: &mut Vec<u8>) -> Option<Bytes> {
        if self.state != State::Open || !self.has(HAS_SESSION) {
            return None;
        }
        let (tx_seq, tx_off) = self.tx();
        let chunk_size = self.cfg().chunk_size.max(1);
        self.session.payload(tx_seq)?;
        let ack = self.ack_sending();
        let p = self.session.payload(tx_seq)?;
        let start = tx_off.min(p.len());
        let end = tx_off.saturating_add(chunk_size).min(p.len());
        let chunk = p.slice(start..end);
        let fin = end >= p.len();
        frame::encode_data_head(out, tx_seq, ack, fin, chunk.len());
        if let Some(c) = self.cold.as_deref_mut() {
            c.ack_due = None;
        }
        if fin {
            self.set_tx(tx_seq + 1, 0);
        } else {
            self.set_tx(tx_seq, end);
        }
        Some(chunk)
    }

    pub(crate) fn take_session(&mut self, now: Instant) -> Option<Session> {
        if self.state != State::Closed {
            self.close(CloseCode::Normal, "session detached", false);
        }
        if !self.has(HAS_SESSION) {
            return None;
        }
        self.flags &= !HAS_SESSION;
        let placeholder = Session::with_config(zero_keys(), self.session.shared_config().clone());
        let mut s = std::mem::replace(&mut self.session, placeholder);
        s.detach(now);
        self.tidy();
        Some(s)
    }

    pub(crate) fn reconnect_config(&self) -> Config {
        let mut cfg = *self.cfg();
        if let Some(own) = self.cold.as_deref().and_then(|c| c.own_session_cfg) {
            cfg.session = own;
        }
        if self.has(BACKOFF) {
            let (i, t) = backoff_timing(self.live.interval(), self.live.timeout());
            cfg.liveness.interval = i;
            cfg.liveness.timeout = t;
        }
        cfg
    }
}

fn encode_ctl(out: &mut Vec<u8>, ctl: Ctl, nonce: u32, val: u64) {
    match ctl {
        Ctl::None => {}
        Ctl::Ping => frame::encode_ping(out, FrameType::Ping, nonce, val),
        Ctl::Pong => frame::encode_ping(out, FrameType::Pong, nonce, val),
        Ctl::Ack => frame::encode_ack(out, val),
    }
}
