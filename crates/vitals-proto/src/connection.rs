//! The `Connection`: one peer's protocol state, client or server, binary or JSON-compatible.
//!
//! # Polling order
//! After creating a connection, and after every input:
//! 1. feed received bytes with [`Connection::handle_input`] (read the socket *before* handling
//!    timeouts after a stall, so fresh signs of life count);
//! 2. when the instant from [`Connection::poll_timeout`] has passed, call
//!    [`Connection::handle_timeout`];
//! 3. drain [`Connection::poll_transmit`] until it returns 0 (or the socket would block) and
//!    write those bytes; control frames come first in every call (or drain
//!    [`Connection::poll_transmit_parts`], which hands DATA bytes out uncopied for a vectored
//!    write);
//! 4. drain [`Connection::poll_event`];
//! 5. re-read [`Connection::poll_timeout`] and arm the timer.
//!
//! A server connection that emits [`Event::ResumeRequested`] waits until the runtime calls
//! [`Connection::resolve_resume`] with its [`SessionStore`].

use crate::auth::AuthToken;
use crate::binary::Binary;
use crate::decode::Limits;
use crate::error::{Backpressure, SessionError};
use crate::frame::CloseCode;
use crate::json::JsonLimits;
use crate::json_conn::Json;
use crate::liveness::LivenessConfig;
use crate::policy::ServerPolicy;
use crate::rtt::RttStats;
use crate::session::{ResumeToken, Room, Seq, Session, SessionConfig, SessionId, SessionKeys};
use crate::store::SessionStore;
use bytes::{Bytes, BytesMut};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Which side of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Initiates (sends HELLO; in JSON mode, sends pings).
    Client,
    /// Accepts (answers HELLO; in JSON mode, answers pings and enforces their rate).
    Server,
}

/// Configuration of a binary-protocol connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Liveness timing. For a client, `interval`/`timeout` are the proposal; the server's grant
    /// replaces them.
    pub liveness: LivenessConfig,
    /// Decoder limits.
    pub limits: Limits,
    /// Session bounds.
    pub session: SessionConfig,
    /// What a server grants and enforces (ignored by clients).
    pub policy: ServerPolicy,
    /// DATA larger than this is split into chunks so control frames are never stuck behind it.
    /// Default 64 KiB.
    pub chunk_size: usize,
    /// Pre-shared authentication token. A client sends it in HELLO; a server that has one
    /// refuses a HELLO without it or with another one (CLOSE `AuthFailed`, code 12), and a
    /// server without one ignores a client's. Compared in constant time; `Debug` redacts it.
    /// Default none.
    pub auth_token: Option<AuthToken>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            liveness: LivenessConfig::default(),
            limits: Limits::default(),
            session: SessionConfig::default(),
            policy: ServerPolicy::default(),
            chunk_size: 64 * 1024,
            auth_token: None,
        }
    }
}

/// Configuration of a JSON-compatible connection (liveness only, no sessions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JsonConfig {
    /// Liveness timing (no negotiation happens in this mode).
    pub liveness: LivenessConfig,
    /// Decoder limits.
    pub limits: JsonLimits,
    /// Send `{"ping":N}` after `interval` of silence. Default: true for clients, false for
    /// servers (classic servers only answer).
    pub send_pings: Option<bool>,
    /// Server only: close with `TooManyPings` after this many strikes (see `policy`); `None`
    /// disables enforcement. Default `Some(3)`.
    pub max_ping_strikes: Option<u32>,
    /// Most bytes of application messages queued for sending. Default 1 MiB.
    pub max_send_queue: usize,
}

impl Default for JsonConfig {
    fn default() -> Self {
        JsonConfig {
            liveness: LivenessConfig::default(),
            limits: JsonLimits::default(),
            send_pings: None,
            max_ping_strikes: Some(3),
            max_send_queue: 1 << 20,
        }
    }
}

/// Something the application or runtime should know.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Handshake done (binary mode); from here on [`Connection::send`] takes messages. A server
    /// reports a new session only once the client's first frame after WELCOME (its ACK) shows
    /// the client holds the session id and token, so nothing can be queued in a session the
    /// client never learned of; a resumed session is reported at once.
    Connected {
        /// Session id.
        session: SessionId,
        /// True if an existing session was resumed.
        resumed: bool,
        /// Granted interval.
        interval: Duration,
        /// Granted timeout.
        timeout: Duration,
    },
    /// Server with `SessionConfig::commit_acks`: the peer has acknowledged every message we sent
    /// below `next` (reported when that point advances), so a store may drop them.
    Acked {
        /// The peer's cumulative acknowledgement: the next sequence number it expects.
        next: Seq,
    },
    /// Server: a client asks to resume `session`; call [`Connection::resolve_resume`].
    ResumeRequested {
        /// The session id presented.
        session: SessionId,
    },
    /// A complete application message, delivered exactly once and in order.
    Message {
        /// Its sequence number (per direction).
        seq: Seq,
        /// Its bytes (JSON mode: the raw object). A large message received through
        /// [`Connection::handle_input_buf`] shares the runtime's input buffer (no copy); keeping it
        /// keeps that buffer's allocation alive.
        payload: Bytes,
    },
    /// A PONG answered our PING: updated RTT statistics.
    Rtt(RttStats),
    /// Phi-accrual suspicion reached the suspect threshold.
    Suspect {
        /// Current phi.
        phi: f64,
    },
    /// Our own timer fired late (local stall); nobody was convicted on this wake-up.
    Stalled {
        /// How late the timer fired.
        late_by: Duration,
    },
    /// Server: the peer pinged too early.
    PingStrike {
        /// Strikes so far.
        strikes: u32,
    },
    /// The peer was silent too long; the connection is closed (code `Timeout`).
    Dead {
        /// Silence observed.
        silent_for: Duration,
    },
    /// The connection is closed; no more events except those already queued.
    Closed {
        /// Close code.
        code: CloseCode,
        /// Reason text.
        reason: String,
        /// True if the peer sent the CLOSE.
        by_peer: bool,
    },
}

/// Why `send` refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The replay buffer or send queue is full; retry after acks.
    #[error(transparent)]
    Backpressure(#[from] Backpressure),
    /// A server connection has no session the client holds yet: before HELLO, while a resume
    /// is pending, or before the client confirmed a new session (see [`Event::Connected`]).
    #[error("no session yet")]
    NoSession,
    /// JSON mode: the payload is not exactly one JSON object.
    #[error("payload is not one JSON object: {0}")]
    NotJsonObject(String),
}

#[derive(Debug)]
enum Inner {
    Binary(Binary),
    Json(Json),
}

/// One connection's protocol state. See the module docs for the polling order.
///
/// # Memory
/// A connection is its state, inline (192 bytes: binary mode's size; JSON mode's fits in it),
/// so a server keeps it inside its connection slab with no allocation of its own, and it holds
/// nothing on the heap while it idles between heartbeats: buffers, event queues and the replay
/// buffer exist only while they hold something, and a heartbeat allocates nothing.
/// The configuration is shared: constructors take `impl Into<Arc<Config>>`, so one
/// `Arc<Config>` can serve every connection; a `Config` passed by value is shared with the
/// previous connection's when they are equal.
#[derive(Debug)]
pub struct Connection {
    inner: Inner,
}

/// The last config handed out, so that connections built from equal configs passed by value
/// share one allocation (the caller's `Arc` is used as is when it is already shared).
fn share<T: PartialEq>(cfg: Arc<T>, last: &Mutex<Weak<T>>) -> Arc<T> {
    if Arc::strong_count(&cfg) > 1 || Arc::weak_count(&cfg) > 0 {
        return cfg;
    }
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(prev) = last.upgrade()
        && *prev == *cfg
    {
        return prev;
    }
    *last = Arc::downgrade(&cfg);
    cfg
}

fn shared_config(cfg: impl Into<Arc<Config>>) -> Arc<Config> {
    static LAST: Mutex<Weak<Config>> = Mutex::new(Weak::new());
    share(cfg.into(), &LAST)
}

fn shared_json_config(cfg: impl Into<Arc<JsonConfig>>) -> Arc<JsonConfig> {
    static LAST: Mutex<Weak<JsonConfig>> = Mutex::new(Weak::new());
    share(cfg.into(), &LAST)
}

impl Connection {
    /// A client starting a new session (sends HELLO).
    pub fn client(now: Instant, cfg: impl Into<Arc<Config>>) -> Connection {
        let cfg = shared_config(cfg);
        Connection {
            inner: Inner::Binary(Binary::client(now, cfg, None)),
        }
    }

    /// A client resuming `session` (taken from a previous connection with
    /// [`take_session`](Self::take_session)).
    pub fn client_resume(
        now: Instant,
        cfg: impl Into<Arc<Config>>,
        session: Session,
    ) -> Connection {
        let cfg = shared_config(cfg);
        Connection {
            inner: Inner::Binary(Binary::client(now, cfg, Some(session))),
        }
    }

    /// A server connection; `fresh` are the id and token used if the client starts a new
    /// session (the runtime draws them from OS randomness).
    pub fn server(now: Instant, cfg: impl Into<Arc<Config>>, fresh: SessionKeys) -> Connection {
        let cfg = shared_config(cfg);
        Connection {
            inner: Inner::Binary(Binary::server(now, cfg, fresh)),
        }
    }

    /// A JSON-compatible connection in either role.
    pub fn json(now: Instant, role: Role, cfg: impl Into<Arc<JsonConfig>>) -> Connection {
        let cfg = shared_json_config(cfg);
        Connection {
            inner: Inner::Json(Json::new(now, role, cfg)),
        }
    }

    /// Bytes arrived from the peer.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        match &mut self.inner {
            Inner::Binary(b) => b.handle_input(now, data),
            Inner::Json(j) => j.handle_input(now, data),
        }
    }

    /// Bytes arrived from the peer, read into `buf`, a buffer the runtime keeps between reads and
    /// reads into (appending). Complete frames are taken from its front; a frame not complete yet
    /// stays in it (at most `max_buffered` bytes of it, as with `handle_input`), so the next read
    /// completes it in place. Binary codec: a DATA chunk of 4 KiB or more is delivered as a shared
    /// slice of `buf`'s allocation — no copy of the message bytes, and `BytesMut::reserve` reuses
    /// the allocation once the application has dropped those messages. The JSON codec consumes
    /// all of `buf` as `handle_input` would. May follow `handle_input` calls (a frame begun there
    /// is completed from `buf`); call `handle_input` again only while `buf` is empty.
    pub fn handle_input_buf(&mut self, now: Instant, buf: &mut BytesMut) {
        match &mut self.inner {
            Inner::Binary(b) => b.handle_input_buf(now, buf),
            Inner::Json(j) => {
                j.handle_input(now, buf);
                buf.clear();
            }
        }
    }

    /// The deadline from [`poll_timeout`](Self::poll_timeout) passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &mut self.inner {
            Inner::Binary(b) => b.handle_timeout(now),
            Inner::Json(j) => j.handle_timeout(now),
        }
    }

    /// Pings this connection has sent (a wrapping counter; take differences with `wrapping_sub`).
    pub fn pings_sent(&self) -> u32 {
        match &self.inner {
            Inner::Binary(b) => b.pings_sent(),
            Inner::Json(j) => j.pings_sent(),
        }
    }

    /// Sends a PING now, outside the liveness schedule, so that its PONG gives an RTT sample even
    /// while data flows (when the schedule sends none). Binary codec only; returns false when nothing
    /// was queued (JSON codec, or the connection is not open).
    pub fn ping_now(&mut self, now: Instant) -> bool {
        match &mut self.inner {
            Inner::Binary(b) => b.ping_now(now),
            Inner::Json(_) => false,
        }
    }

    /// The session this connection carries (binary codec, once established or resumed).
    pub fn session_id(&self) -> Option<SessionId> {
        match &self.inner {
            Inner::Binary(b) => b.session_id(),
            Inner::Json(_) => None,
        }
    }

    /// Server with `SessionConfig::commit_acks`: every received message below `upto` is committed
    /// (stored where the application will find it), so acknowledgements may now cover it: an ACK
    /// follows under the usual rule (at once after `ack_every` messages, else within `ack_delay`;
    /// re-arm the timer from [`poll_timeout`](Self::poll_timeout)). A stale `upto` is ignored.
    pub fn commit(&mut self, now: Instant, upto: Seq) {
        if let Inner::Binary(b) = &mut self.inner {
            b.commit(now, upto);
        }
    }

    /// Server: the resume a client asked for ([`Event::ResumeRequested`]) while it is pending: the
    /// session id, the token presented, and the client's acknowledgement (the next message of ours
    /// it expects).
    pub fn pending_resume(&self) -> Option<(SessionId, ResumeToken, Seq)> {
        match &self.inner {
            Inner::Binary(b) => b.pending_resume(),
            Inner::Json(_) => None,
        }
    }

    /// The liveness timeout in force: the granted one once HELLO (server) or WELCOME (client) was
    /// handled, the configured one before.
    pub fn timeout(&self) -> Duration {
        match &self.inner {
            Inner::Binary(b) => b.timeout(),
            Inner::Json(j) => j.timeout(),
        }
    }

    /// The sequence number the next message sent will get (binary codec, once a session is held).
    pub fn send_next(&self) -> Option<Seq> {
        match &self.inner {
            Inner::Binary(b) => b.send_next(),
            Inner::Json(_) => None,
        }
    }

    /// Server: answers a pending [`Event::ResumeRequested`] with `error` (closing with its code),
    /// for a runtime that resolves resumes against something else than a [`SessionStore`].
    pub fn refuse_resume(&mut self, error: SessionError) {
        if let Inner::Binary(b) = &mut self.inner {
            b.refuse_resume(error);
        }
    }

    /// Id and resume token of the session attached to this connection (binary codec).
    pub fn session_keys(&self) -> Option<SessionKeys> {
        match &self.inner {
            Inner::Binary(b) => b.session_keys(),
            Inner::Json(_) => None,
        }
    }

    /// Server: the session a pending resume ([`Event::ResumeRequested`]) names is not in a store
    /// but held elsewhere, with `keys` (attached to another live connection, say). True if the
    /// client presented that session's id and token (compared in constant time): the runtime may
    /// then take the session from its holder and resolve the resume. Otherwise this connection is
    /// closed with `BadToken` (false), and the holder must be left alone: knowing a session id is
    /// not owning it.
    pub fn verify_resume(&mut self, keys: &SessionKeys) -> bool {
        match &mut self.inner {
            Inner::Binary(b) => b.verify_resume(keys),
            Inner::Json(_) => false,
        }
    }

    /// Messages sent and not yet acknowledged by the peer (binary codec: the replay buffer), or not yet
    /// written (JSON codec, which has no acknowledgements). Zero means everything sent was delivered
    /// (binary) or handed to the transport (JSON).
    pub fn unacked(&self) -> usize {
        match &self.inner {
            Inner::Binary(b) => b.unacked(),
            Inner::Json(j) => j.queued(),
        }
    }

    /// Whether [`send`](Self::send) would take a message of `len` bytes now, later (after acks or
    /// draining), or never.
    pub fn room_for(&self, len: usize) -> Room {
        match &self.inner {
            Inner::Binary(b) => b.room_for(len),
            Inner::Json(j) => j.room_for(len),
        }
    }

    /// Queue an application message. Binary mode: kept for replay until acknowledged.
    ///
    /// Takes a `Vec<u8>` or a [`Bytes`] without copying it; with [`Bytes`] one buffer can be sent
    /// many times (each send shares it), and a runtime using
    /// [`poll_transmit_parts`](Self::poll_transmit_parts) writes it to the socket from where it is.
    pub fn send(&mut self, now: Instant, payload: impl Into<Bytes>) -> Result<Seq, SendError> {
        let payload = payload.into();
        match &mut self.inner {
            Inner::Binary(b) => b.send(now, payload),
            Inner::Json(j) => j.send(Vec::from(payload)),
        }
    }

    /// Append bytes to write to `out`: pending control frames first, then at most one DATA
    /// chunk. Returns the number of bytes appended (0: nothing to send now).
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        match &mut self.inner {
            Inner::Binary(b) => b.poll_transmit(out),
            Inner::Json(j) => j.poll_transmit(out),
        }
    }

    /// [`poll_transmit`](Self::poll_transmit) for vectored writes: appends the same bytes, except
    /// that a DATA chunk's message bytes are not copied into `out` but returned (a shared slice of
    /// the replay buffer). On the wire they go right after what this call appended to `out`, and
    /// before anything a later call appends. `out` unchanged and `None`: nothing to send now.
    /// The JSON codec always appends everything to `out`.
    pub fn poll_transmit_parts(&mut self, out: &mut Vec<u8>) -> Option<Bytes> {
        match &mut self.inner {
            Inner::Binary(b) => b.poll_transmit_parts(out),
            Inner::Json(j) => {
                j.poll_transmit(out);
                None
            }
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next; `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.inner {
            Inner::Binary(b) => b.poll_timeout(),
            Inner::Json(j) => j.poll_timeout(),
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        match &mut self.inner {
            Inner::Binary(b) => b.poll_event(),
            Inner::Json(j) => j.poll_event(),
        }
    }

    /// Close with `code` and `reason` (binary mode sends CLOSE first).
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        match &mut self.inner {
            Inner::Binary(b) => b.close(code, reason, false),
            Inner::Json(j) => j.close(code, reason),
        }
    }

    /// True once closed (by either side, or by the liveness detector).
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::Binary(b) => b.is_closed(),
            Inner::Json(j) => j.is_closed(),
        }
    }

    /// RTT statistics so far.
    pub fn rtt(&self) -> RttStats {
        match &self.inner {
            Inner::Binary(b) => b.rtt(),
            Inner::Json(j) => j.rtt(),
        }
    }

    /// Server: answer a pending [`Event::ResumeRequested`] using `store`. The token is checked
    /// in constant time; on a bad token the session goes back into the store untouched. Failure
    /// closes the connection with `UnknownSession`, `BadToken` or `SessionExpired`.
    pub fn resolve_resume(&mut self, now: Instant, store: &mut dyn SessionStore) {
        if let Inner::Binary(b) = &mut self.inner {
            b.resolve_resume(now, store);
        }
    }

    /// Detach the session (marking it detached at `now`) for a store (server) or a later
    /// [`client_resume`](Self::client_resume) (client). Closes the connection if still open.
    pub fn take_session(&mut self, now: Instant) -> Option<Session> {
        match &mut self.inner {
            Inner::Binary(b) => b.take_session(now),
            Inner::Json(_) => None,
        }
    }

    /// Client: the config to reconnect with. After a `TooManyPings` close it carries twice the
    /// interval that was in use (timeout raised to at least twice that).
    pub fn reconnect_config(&self) -> Option<Config> {
        match &self.inner {
            Inner::Binary(b) => Some(b.reconnect_config()),
            Inner::Json(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::Liveness;

    /// The per-connection budget (issue 6): what a connection costs while it idles is its
    /// state alone, so these sizes are the whole of it.
    #[test]
    fn connection_state_sizes() {
        eprintln!(
            "Connection {} B, Binary {} B, Json {} B, Session {} B, Liveness {} B",
            size_of::<Connection>(),
            size_of::<Binary>(),
            size_of::<Json>(),
            size_of::<Session>(),
            size_of::<Liveness>(),
        );
        assert!(size_of::<Connection>() <= 192);
        assert!(size_of::<Binary>() <= 192);
        assert!(size_of::<Json>() <= 168);
        assert!(size_of::<Session>() <= 64);
        assert!(size_of::<Liveness>() <= 104);
    }
}
