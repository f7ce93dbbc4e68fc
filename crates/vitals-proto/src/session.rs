//! Session state that outlives a connection: sequence numbers, replay buffer, receive point.
//!
//! Each direction numbers messages from 0. The sender keeps every message until the peer's
//! cumulative ack (`next expected seq`) covers it; the replay buffer is bounded in bytes, in
//! messages and in age. The receiver accepts `seq == recv_next`, drops `seq < recv_next` as a
//! duplicate (a replay of something already delivered) and rejects a gap.

use crate::connection::Config;
use crate::error::{Backpressure, SessionError};
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A message sequence number (per direction, from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

/// Whether a send buffer can take a message of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// It fits now.
    Now,
    /// It fits once the peer acknowledges (or the queue drains).
    Later,
    /// It never fits: it is larger than the whole buffer.
    Never,
}

/// Session identifier chosen by the server (supplied by the runtime, e.g. from OS randomness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// The 128-bit secret a client presents to resume. Compared in constant time; `Debug` hides it.
#[derive(Clone, Copy)]
pub struct ResumeToken([u8; 16]);

impl ResumeToken {
    /// Wrap 16 bytes (the runtime supplies them from a CSPRNG).
    pub fn from_bytes(b: [u8; 16]) -> ResumeToken {
        ResumeToken(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Constant-time comparison: the time taken does not depend on where the tokens differ.
    pub fn ct_eq(&self, other: &ResumeToken) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl PartialEq for ResumeToken {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}
impl Eq for ResumeToken {}

impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeToken(..)")
    }
}

/// Identity of a new session: id and token, both supplied by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKeys {
    /// Session id.
    pub id: SessionId,
    /// Resume token.
    pub token: ResumeToken,
}

/// Session bounds and ack pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most unacknowledged bytes kept for replay. Default 4 MiB.
    pub max_replay_bytes: usize,
    /// Most unacknowledged messages kept. Default 65,536.
    pub max_replay_messages: usize,
    /// A message unacknowledged for longer expires the session. Default 5 min.
    pub max_replay_age: Duration,
    /// How long a detached session stays resumable. Default 2 min.
    pub ttl: Duration,
    /// Longest an ack is held back waiting to piggyback on DATA. Default 50 ms.
    pub ack_delay: Duration,
    /// Send an ACK at once after this many unacknowledged received messages. Default 64.
    pub ack_every: u32,
    /// Send an ACK at once after this many bytes of unacknowledged received messages. Default
    /// 1 MiB: a quarter of the default `max_replay_bytes`, so that a peer streaming large messages
    /// into a buffer of that size is acknowledged long before the buffer fills (an ack only after
    /// 64 messages of 64 KiB would come when the sender's 4 MiB buffer is already full, and the
    /// sender would stop for a round trip every 4 MiB). Keep it well below the peer's buffer.
    pub ack_every_bytes: usize,
    /// Largest reassembled message. Default 16 MiB.
    pub max_message_size: usize,
    /// Server in a fleet (docs/FLEET.md): acknowledge a received message only once the runtime
    /// has committed it ([`Connection::commit`](crate::Connection::commit)), and report the
    /// peer's acknowledgements ([`Event::Acked`](crate::Event::Acked)) so that the runtime can
    /// trim what it stored. Default false: a message is acknowledged once delivered.
    pub commit_acks: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_replay_bytes: 4 << 20,
            max_replay_messages: 65_536,
            max_replay_age: Duration::from_secs(300),
            ttl: Duration::from_secs(120),
            ack_delay: Duration::from_millis(50),
            ack_every: 64,
            ack_every_bytes: 1 << 20,
            max_message_size: 16 << 20,
            commit_acks: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Outgoing {
    queued_at: Instant,
    /// Shared, not copied, when a DATA chunk of it is handed out for a vectored write.
    payload: Bytes,
}

/// What to do with a received DATA chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// `seq == recv_next`: part of the next message.
    Next,
    /// Already delivered: drop.
    Duplicate,
}

/// The parts of a session that are empty most of the time (nothing unacknowledged, attached):
/// boxed, and released as soon as they are empty again.
#[derive(Debug, Clone, Default)]
struct Backlog {
    replay: VecDeque<Outgoing>,
    replay_bytes: usize,
    detached_at: Option<Instant>,
}

/// One session's state (either side).
///
/// 64 bytes while nothing is unacknowledged; the replay buffer (and the detach time) live in a
/// box that exists only while they are in use. The configuration is shared (`Arc`).
#[derive(Debug, Clone)]
pub struct Session {
    keys: SessionKeys,
    cfg: Arc<Config>,
    send_next: u64,
    recv_next: u64,
    backlog: Option<Box<Backlog>>,
    /// Received messages not yet committed (`commit_acks`): `recv_next - uncommitted` is what
    /// an ack may cover.
    uncommitted: u32,
    /// Received (and committed) messages not yet acknowledged, saturating: an ack goes out at
    /// `ack_every`, or after `ack_delay` whatever the count.
    ack_owed: u16,
    established: bool,
}

impl Session {
    /// A fresh session.
    pub fn new(keys: SessionKeys, cfg: SessionConfig) -> Session {
        Session::with_config(
            keys,
            Arc::new(Config {
                session: cfg,
                ..Config::default()
            }),
        )
    }

    /// A fresh session using the `session` part of a shared connection config.
    pub(crate) fn with_config(keys: SessionKeys, cfg: Arc<Config>) -> Session {
        Session {
            keys,
            cfg,
            send_next: 0,
            recv_next: 0,
            backlog: None,
            uncommitted: 0,
            ack_owed: 0,
            established: false,
        }
    }

    /// A session rebuilt from what a shared store holds (docs/FLEET.md): it has received every
    /// message below `recv_next`, and holds `unacked` — messages `first_unacked`,
    /// `first_unacked + 1`, … — for the peer, which has acknowledged everything before them.
    /// Marked established and detached at `now`, ready for a resume.
    pub fn restore(
        keys: SessionKeys,
        cfg: SessionConfig,
        recv_next: Seq,
        first_unacked: Seq,
        unacked: impl IntoIterator<Item = Bytes>,
        now: Instant,
    ) -> Session {
        let mut s = Session::new(keys, cfg);
        s.recv_next = recv_next.0;
        s.send_next = first_unacked.0;
        for payload in unacked {
            // Not bounded by the replay limits: the store bounded what it accepted.
            let b = s.backlog_mut();
            b.replay_bytes += payload.len();
            b.replay.push_back(Outgoing {
                queued_at: now,
                payload,
            });
            s.send_next += 1;
        }
        s.established = true;
        s.detach(now);
        s
    }

    /// The shared config this session was created with (its `session` part applies).
    pub(crate) fn shared_config(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// Replace the shared config; only its `session` part must stay equal.
    pub(crate) fn set_shared_config(&mut self, cfg: Arc<Config>) {
        debug_assert!(cfg.session == self.cfg.session);
        self.cfg = cfg;
    }

    fn backlog_mut(&mut self) -> &mut Backlog {
        self.backlog.get_or_insert_with(Box::default)
    }

    /// Release the backlog box once it holds nothing.
    fn tidy(&mut self) {
        if self
            .backlog
            .as_deref()
            .is_some_and(|b| b.replay.is_empty() && b.detached_at.is_none())
        {
            self.backlog = None;
        }
    }

    fn replay_len(&self) -> usize {
        self.backlog.as_deref().map_or(0, |b| b.replay.len())
    }

    /// True once a handshake bound this session to an id the server knows. A client session
    /// that never got a WELCOME starts a new session on reconnect (keeping its queued messages).
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Session id.
    pub fn id(&self) -> SessionId {
        self.keys.id
    }

    /// Session keys (id and token).
    pub fn keys(&self) -> SessionKeys {
        self.keys
    }

    pub(crate) fn set_keys(&mut self, keys: SessionKeys) {
        self.keys = keys;
    }

    /// Next sequence number that `push` will assign.
    pub fn send_next(&self) -> Seq {
        Seq(self.send_next)
    }

    /// Next sequence number expected from the peer (our cumulative ack).
    pub fn recv_next(&self) -> Seq {
        Seq(self.recv_next)
    }

    /// Messages sent but not acknowledged by the peer.
    pub fn unacked(&self) -> usize {
        self.replay_len()
    }

    /// Bytes sent but not acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.backlog.as_deref().map_or(0, |b| b.replay_bytes)
    }

    /// The unacknowledged payloads, oldest first (for re-sending in a new session after the
    /// server answered "unknown session"; see docs/PROTOCOL.md for what that guarantees).
    pub fn into_unacked(self) -> Vec<Vec<u8>> {
        self.backlog
            .map(|b| b.replay.into_iter().map(|o| Vec::from(o.payload)).collect())
            .unwrap_or_default()
    }

    /// Whether [`push`](Self::push) would take a message of `len` bytes now: [`Room::Now`], after
    /// acknowledgements free space ([`Room::Later`]), or never (larger than the whole buffer).
    pub fn room_for(&self, len: usize) -> Room {
        let cfg = &self.cfg.session;
        if len > cfg.max_replay_bytes {
            Room::Never
        } else if self.replay_len() < cfg.max_replay_messages
            && self.unacked_bytes().saturating_add(len) <= cfg.max_replay_bytes
        {
            Room::Now
        } else {
            Room::Later
        }
    }

    /// True when a message of `len` bytes fits now (see [`room_for`](Self::room_for)).
    pub fn has_room(&self, len: usize) -> bool {
        self.room_for(len) == Room::Now
    }

    /// Queue a message; it stays until acknowledged. A `Vec<u8>` is taken without copying, and so
    /// is a [`Bytes`] (which lets a caller send one buffer many times without copying it).
    pub fn push(&mut self, now: Instant, payload: impl Into<Bytes>) -> Result<Seq, Backpressure> {
        let payload = payload.into();
        let len = payload.len();
        let cfg = &self.cfg.session;
        let (messages, buffered) = (self.replay_len(), self.unacked_bytes());
        if messages >= cfg.max_replay_messages
            || buffered.saturating_add(len) > cfg.max_replay_bytes
        {
            return Err(Backpressure {
                buffered,
                messages,
                len,
                max_bytes: cfg.max_replay_bytes,
                max_messages: cfg.max_replay_messages,
            });
        }
        let seq = self.send_next;
        self.send_next += 1;
        let b = self.backlog_mut();
        b.replay_bytes += len;
        b.replay.push_back(Outgoing {
            queued_at: now,
            payload,
        });
        Ok(Seq(seq))
    }

    /// The peer acknowledged everything below `next`.
    pub(crate) fn on_ack(&mut self, next: u64) -> Result<(), SessionError> {
        if next > self.send_next {
            return Err(SessionError::BadAck {
                acked: next,
                sent: self.send_next,
            });
        }
        let acked = self.peer_acked();
        if acked < next
            && let Some(b) = self.backlog.as_deref_mut()
        {
            for _ in acked..next {
                if let Some(o) = b.replay.pop_front() {
                    b.replay_bytes -= o.payload.len();
                }
            }
            self.tidy();
        }
        Ok(())
    }

    /// First unacknowledged sequence number.
    pub(crate) fn peer_acked(&self) -> u64 {
        // Every message from the first unacknowledged one to `send_next` is held for replay.
        self.send_next - self.replay_len() as u64
    }

    /// Payload of message `seq` if it is still held.
    pub(crate) fn payload(&self, seq: u64) -> Option<&Bytes> {
        let idx = usize::try_from(seq.checked_sub(self.peer_acked())?).ok()?;
        let b = self.backlog.as_deref()?;
        b.replay.get(idx).map(|o| &o.payload)
    }

    /// Classify a received DATA sequence number.
    pub(crate) fn classify(&self, seq: u64) -> Result<Incoming, SessionError> {
        if seq < self.recv_next {
            Ok(Incoming::Duplicate)
        } else if seq == self.recv_next {
            Ok(Incoming::Next)
        } else {
            Err(SessionError::Gap {
                got: seq,
                expected: self.recv_next,
            })
        }
    }

    /// A complete message `recv_next` was delivered.
    pub(crate) fn delivered(&mut self) {
        self.recv_next += 1;
        if self.cfg.session.commit_acks {
            self.uncommitted = self.uncommitted.saturating_add(1);
        } else {
            self.ack_owed = self.ack_owed.saturating_add(1);
        }
    }

    /// Everything below `upto` was committed (`commit_acks`); returns how many messages that
    /// newly allows to acknowledge (zero for a stale or impossible `upto`).
    pub(crate) fn commit(&mut self, upto: u64) -> u64 {
        let committed = self.committed();
        if upto <= committed || upto > self.recv_next {
            return 0;
        }
        self.uncommitted = u32::try_from(self.recv_next - upto).unwrap_or(u32::MAX);
        let newly = upto - committed;
        let owed = u64::from(self.ack_owed).saturating_add(newly);
        self.ack_owed = u16::try_from(owed).unwrap_or(u16::MAX);
        newly
    }

    /// What an ack may cover: every message received (and, with `commit_acks`, committed)
    /// below this.
    pub(crate) fn committed(&self) -> u64 {
        self.recv_next - u64::from(self.uncommitted)
    }

    /// Received messages not yet acknowledged to the peer.
    pub(crate) fn ack_owed(&self) -> u64 {
        u64::from(self.ack_owed)
    }

    /// An ack carrying `committed()` is going out.
    pub(crate) fn ack_sending(&mut self) -> u64 {
        self.ack_owed = 0;
        self.committed()
    }

    /// When the oldest unacknowledged message ages out (expires the session).
    pub(crate) fn age_deadline(&self) -> Option<Instant> {
        let b = self.backlog.as_deref()?;
        b.replay
            .front()
            .map(|o| o.queued_at + self.cfg.session.max_replay_age)
    }

    /// Session config.
    pub(crate) fn config(&self) -> &SessionConfig {
        &self.cfg.session
    }

    /// Mark the session detached from its connection at `now` (starts the ttl).
    pub fn detach(&mut self, now: Instant) {
        self.backlog_mut().detached_at = Some(now);
    }

    /// Mark the session attached to a live connection again; the peer's ack resets too,
    /// since what the peer acknowledged during resume is all we know.
    pub(crate) fn attach(&mut self) {
        if let Some(b) = self.backlog.as_deref_mut() {
            b.detached_at = None;
        }
        self.tidy();
        self.established = true;
        self.ack_owed = 0;
    }

    /// Expired: detached longer than `ttl`, or an unacknowledged message older than
    /// `max_replay_age`.
    pub fn is_expired(&self, now: Instant) -> bool {
        let detached = self.backlog.as_deref().and_then(|b| b.detached_at);
        detached.is_some_and(|t| now >= t + self.cfg.session.ttl)
            || self.age_deadline().is_some_and(|d| now >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys {
            id: SessionId(1),
            token: ResumeToken::from_bytes([7; 16]),
        }
    }

    #[test]
    fn replay_buffer_is_bounded_and_acks_free_it() {
        let t = Instant::now();
        let cfg = SessionConfig {
            max_replay_bytes: 10,
            max_replay_messages: 3,
            ..SessionConfig::default()
        };
        let mut s = Session::new(keys(), cfg);
        assert_eq!(s.push(t, vec![0; 6]), Ok(Seq(0)));
        let err = s.push(t, vec![0; 5]).unwrap_err();
        assert_eq!((err.buffered, err.len, err.max_bytes), (6, 5, 10));
        assert_eq!(s.push(t, vec![0; 4]), Ok(Seq(1)));
        assert_eq!(s.push(t, vec![]), Ok(Seq(2)));
        assert_eq!(s.push(t, vec![]).unwrap_err().messages, 3);
        s.on_ack(2).unwrap();
        assert_eq!((s.unacked(), s.unacked_bytes()), (1, 0));
        assert_eq!(s.payload(2).map(|p| &p[..]), Some(&[][..]));
        assert_eq!(s.payload(1), None);
        assert_eq!(s.on_ack(9), Err(SessionError::BadAck { acked: 9, sent: 3 }));
    }

    #[test]
    fn receive_side_drops_duplicates_and_rejects_gaps() {
        let mut s = Session::new(keys(), SessionConfig::default());
        assert_eq!(s.classify(0), Ok(Incoming::Next));
        s.delivered();
        assert_eq!(s.classify(0), Ok(Incoming::Duplicate));
        assert_eq!(
            s.classify(5),
            Err(SessionError::Gap {
                got: 5,
                expected: 1
            })
        );
    }

    #[test]
    fn expiry_by_ttl_and_by_age() {
        let t = Instant::now();
        let cfg = SessionConfig {
            ttl: Duration::from_secs(10),
            max_replay_age: Duration::from_secs(30),
            ..SessionConfig::default()
        };
        let mut s = Session::new(keys(), cfg);
        s.detach(t);
        assert!(!s.is_expired(t + Duration::from_secs(9)));
        assert!(s.is_expired(t + Duration::from_secs(10)));
        let mut s = Session::new(keys(), cfg);
        s.push(t, vec![1]).unwrap();
        assert!(!s.is_expired(t + Duration::from_secs(29)));
        assert!(s.is_expired(t + Duration::from_secs(30)));
    }

    #[test]
    fn token_comparison() {
        let a = ResumeToken::from_bytes([1; 16]);
        let mut b = [1; 16];
        assert!(a.ct_eq(&ResumeToken::from_bytes(b)));
        b[15] = 0;
        assert!(!a.ct_eq(&ResumeToken::from_bytes(b)));
        assert_eq!(format!("{a:?}"), "ResumeToken(..)");
    }
}
