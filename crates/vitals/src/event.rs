//! What the runtime tells the application: connection events and why a connection ended.

use std::net::SocketAddr;
use std::time::Duration;

use vitals_proto::{Bytes, CloseCode, RttStats, SessionId};

/// Why a connection ended. Each cause is distinct so that dashboards and alerts can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The peer was silent for longer than the liveness timeout (convicted by our detector).
    SilenceTimeout,
    /// The peer (or the path) reset the connection (ECONNRESET, EPIPE, TCP_USER_TIMEOUT expiry).
    Reset,
    /// The peer closed its side (EOF) without a CLOSE frame.
    Eof,
    /// The peer broke the protocol or a decoder limit; the detail names what.
    ProtocolError(String),
    /// The peer pinged more often than its granted interval allowed.
    PingAbuse,
    /// Our writes stopped draining: the peer does not read (or its path is dead) for longer than the
    /// timeout, or the output buffer limit was reached.
    WriteStall,
    /// The server is shutting down (locally, or the peer told us so).
    Shutdown,
    /// The server refused the connection: its connection limit was reached.
    ServerFull,
    /// The connection reached its maximum age and was closed to rebalance.
    MaxAge,
    /// The server requires a pre-shared authentication token and the client's HELLO carried none
    /// or a wrong one (close code `AuthFailed`, 12). A client stops for good on it (retrying with the
    /// same token cannot succeed).
    AuthFailed,
    /// The peer sent CLOSE with this code and reason.
    PeerClosed {
        /// The peer's close code.
        code: CloseCode,
        /// The peer's reason text.
        reason: String,
    },
    /// We closed it: the application asked, or a session could not be resumed (code says which).
    LocalClose {
        /// The close code we sent.
        code: CloseCode,
        /// The reason we gave.
        reason: String,
    },
    /// The TLS layer failed: a failed handshake (e.g. the peer does not trust our certificate, or we do
    /// not trust the peer's), a record that does not decrypt, or a peer that does not speak TLS at all.
    /// The detail is rustls' description.
    Tls(String),
    /// The application dropped the connection with
    /// [`ServerHandle::disconnect`](crate::ServerHandle::disconnect): no CLOSE was sent and the
    /// session was kept for a resume. This reason is the confirmation that the call took effect.
    Disconnected,
    /// Another I/O error.
    Io(String),
}

impl DisconnectReason {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DisconnectReason::SilenceTimeout => "silence_timeout",
            DisconnectReason::Reset => "reset",
            DisconnectReason::Eof => "eof",
            DisconnectReason::ProtocolError(_) => "protocol_error",
            DisconnectReason::PingAbuse => "ping_abuse",
            DisconnectReason::WriteStall => "write_stall",
            DisconnectReason::Shutdown => "shutdown",
            DisconnectReason::ServerFull => "server_full",
            DisconnectReason::MaxAge => "max_age",
            DisconnectReason::AuthFailed => "auth_failed",
            DisconnectReason::PeerClosed { .. } => "peer_closed",
            DisconnectReason::LocalClose { .. } => "local_close",
            DisconnectReason::Tls(_) => "tls",
            DisconnectReason::Disconnected => "disconnected",
            DisconnectReason::Io(_) => "io",
        }
    }

    /// Classifies a proto `Closed` event.
    pub fn from_close(code: CloseCode, reason: &str, by_peer: bool) -> Self {
        match (code, by_peer) {
            (CloseCode::Timeout, false) => DisconnectReason::SilenceTimeout,
            (CloseCode::TooManyPings, _) => DisconnectReason::PingAbuse,
            (CloseCode::Shutdown, _) => DisconnectReason::Shutdown,
            (CloseCode::ServerFull, _) => DisconnectReason::ServerFull,
            (CloseCode::MaxAge, _) => DisconnectReason::MaxAge,
            (CloseCode::AuthFailed, _) => DisconnectReason::AuthFailed,
            (
                CloseCode::ProtocolError | CloseCode::LimitExceeded | CloseCode::VersionMismatch,
                false,
            ) => DisconnectReason::ProtocolError(format!("{code:?}: {reason}")),
            (code, true) => DisconnectReason::PeerClosed {
                code,
                reason: reason.to_string(),
            },
            (code, false) => DisconnectReason::LocalClose {
                code,
                reason: reason.to_string(),
            },
        }
    }

    /// Classifies an I/O error on the socket.
    pub fn from_io(err: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match err.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut => DisconnectReason::Reset,
            UnexpectedEof => DisconnectReason::Eof,
            _ => DisconnectReason::Io(err.to_string()),
        }
    }
}

/// Names one server-side connection: which event loop, which slab slot, which generation of that slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) shard: u16,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}.{}", self.shard, self.index, self.generation)
    }
}

/// What a [`Server`](crate::Server) reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A connection completed its handshake (JSON mode: was accepted).
    Connected {
        /// The connection.
        conn: ConnId,
        /// The peer's address.
        peer: SocketAddr,
        /// Its session (binary mode).
        session: Option<SessionId>,
        /// True when the client resumed an existing session.
        resumed: bool,
    },
    /// An application message, delivered exactly once and in order per session.
    Message {
        /// The connection it came on.
        conn: ConnId,
        /// Its session (binary mode).
        session: Option<SessionId>,
        /// The bytes. A large message shares the connection's input buffer (no copy was made);
        /// keeping it keeps that buffer alive, so copy out what you keep for long.
        payload: Bytes,
    },
    /// A new RTT sample.
    Rtt {
        /// The connection.
        conn: ConnId,
        /// The statistics after the sample.
        rtt: RttStats,
    },
    /// Phi-accrual suspicion crossed its threshold.
    Suspect {
        /// The connection.
        conn: ConnId,
        /// Current phi.
        phi: f64,
    },
    /// A message given to [`ServerHandle::send`](crate::ServerHandle::send) could not be queued; it is
    /// handed back so the application can retry later or drop it knowingly.
    SendRefused {
        /// The connection.
        conn: ConnId,
        /// The message, untouched.
        payload: Bytes,
        /// Why: the send buffer is full (wait for acknowledgements), the session is not confirmed yet,
        /// or the message is larger than the whole buffer.
        reason: &'static str,
    },
    /// A message sent to a session with [`ServerHandle::send_to_session`](crate::ServerHandle::send_to_session)
    /// through a fleet's store (docs/FLEET.md) that the store refused or could not take in time:
    /// handed back, never dropped silently.
    SessionSendRefused {
        /// The session.
        session: SessionId,
        /// The message, untouched.
        payload: Bytes,
        /// Why: unknown session, its unacknowledged messages full, or the store unavailable.
        reason: &'static str,
    },
    /// The connection ended.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Its session, if it had one (kept for resume unless the close was final).
        session: Option<SessionId>,
        /// A [`ServerEvent::Connected`] was reported for this connection (so that an application can
        /// count live connections without keeping a set of them).
        connected: bool,
        /// Why.
        reason: DisconnectReason,
    },
}

/// What a [`Client`](crate::Client) reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Connected and handshake done.
    Connected {
        /// The session (binary mode).
        session: Option<SessionId>,
        /// The granted heartbeat interval.
        interval: Duration,
        /// The granted timeout.
        timeout: Duration,
    },
    /// A session was resumed after a reconnect; `replayed` messages of ours were re-sent.
    Resumed {
        /// The session.
        session: SessionId,
        /// Messages re-sent because the server had not acknowledged them.
        replayed: usize,
    },
    /// An application message from the server.
    Message(Bytes),
    /// A new RTT sample.
    Rtt(RttStats),
    /// Phi-accrual suspicion crossed its threshold.
    Suspect {
        /// Current phi.
        phi: f64,
    },
    /// The connection is gone (a reconnect follows unless the client is closing).
    Dead {
        /// Why.
        reason: DisconnectReason,
    },
    /// Waiting `delay` before connection attempt `attempt` (1-based).
    Reconnecting {
        /// Attempt number since the last stable connection.
        attempt: u32,
        /// Delay before it.
        delay: Duration,
    },
    /// The server said the session is gone; a new session starts and `resent` unacknowledged
    /// messages are sent again in it.
    SessionLost {
        /// The lost session.
        session: SessionId,
        /// Messages re-sent in the new session.
        resent: usize,
    },
    /// The client stopped for good.
    Closed {
        /// Why.
        reason: DisconnectReason,
    },
}
