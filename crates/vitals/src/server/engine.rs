//! One event loop: a mio `Poll` over a slab of connections, one timing wheel holding all their
//! deadlines, one scratch read buffer and one output buffer. A server runs one loop per core, each with
//! its own SO_REUSEPORT listener.
//!
//! Per iteration: wait for readiness or the wheel's next deadline; accept; read each ready socket into
//! the scratch buffer, feed its protocol core and service it at once (hand its events to the
//! application, write what it has to send, re-arm its deadline); then run expired deadlines and
//! service every connection they, accepts or commands touched.
//! A heartbeat costs one `epoll_wait` share, one `read`, one `write`; a reset of a deadline to later only
//! stores it (the wheel re-files lazily).
//!
//! TLS (when configured) sits between the socket and the protocol core of each connection as a rustls
//! state machine: read bytes are fed to it and only the plaintext it yields reaches the core; the core's
//! output is written into it and its records go to the socket. Refused records stay inside rustls, so a
//! TLS connection's backlog is "rustls still wants to write", with the same stall rules.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tokio::sync::mpsc::UnboundedSender;
use vitals_proto::{
    Bytes, CloseCode, Connection, Event, MemoryStore, ResumeToken, Role, Seq, Session,
    SessionError, SessionId, SessionKeys, SessionStore,
};
use vitals_timer::{Jitter, Wheel};

use super::conn::{Backlog, BulkBuf, BulkPool, Conn, read_bulk, read_into, write_some};
use super::shared::{Command, Shared};
use crate::config::Codec;
use crate::event::{ConnId, DisconnectReason, ServerEvent};
use crate::fleet::task::{Op, Reply, Snapshot};
use crate::metrics as m;
use crate::outbox::Outbox;
use crate::socket::SocketOptions;
use crate::tls::{Fed, feed, write_out};

/// Token of the listener.
pub(crate) const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the waker that signals queued commands.
pub(crate) const WAKER: Token = Token(usize::MAX - 2);
/// Token of the timerfd that ends the last sub-millisecond of a wait for a deadline.
const TIMER: Token = Token(usize::MAX - 3);

/// Scratch read buffer size: large enough for a burst of frames, shared by all connections of a loop.
const SCRATCH: usize = 64 * 1024;
/// Most bytes gathered from a protocol core per write call.
const OUT_BATCH: usize = 256 * 1024;
/// How long an expired parked session is kept so that a resume is answered `SessionExpired`.
const EXPIRED_GRACE: Duration = Duration::from_secs(30);
/// Most connections a loop reserves slab and wheel room for up front (beyond it they grow as usual).
const MAX_RESERVED_PER_LOOP: usize = 1 << 20;
/// How long a closing connection may take to flush its last bytes (CLOSE frame) outside a drain.
const LINGER: Duration = Duration::from_secs(1);

/// A wake-up that reads less than this from a streaming connection, leaving its buffer empty, ends
/// its streaming mode.
const BULK_EXIT: usize = 16 * 1024;

/// How long a loop keeps its pool of input allocations after its last streaming connection ebbed.
const BULK_POOL_KEEP: Duration = Duration::from_secs(1);

/// The input buffer of a connection that data is streaming into.
struct BulkIn {
    /// The connection's generation (the slab index is reused after a teardown).
    generation: u32,
    buf: BulkBuf,
}

/// One event loop's state.
pub(crate) struct Loop {
    shard: u16,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    /// The protocol configurations every connection of this loop shares.
    proto_cfg: Arc<vitals_proto::Config>,
    json_cfg: Arc<vitals_proto::JsonConfig>,
    /// Deadlines of all connections; the payload is the slab index (`u32`: 24-byte wheel entries).
    wheel: Wheel<u32>,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
    events: UnboundedSender<ServerEvent>,
    scratch: Vec<u8>,
    /// Input buffers of the plaintext connections that data is streaming into (a read filled the
    /// scratch buffer), by slab index; dropped when the stream ebbs, so idle connections own none.
    bulk: HashMap<usize, BulkIn>,
    /// Connections that stopped reading at their budget for one turn (index, generation, the peer's
    /// FIN was seen): read again on the next turn, after this one's events and writes.
    reread: Vec<(usize, u32, bool)>,
    /// Input allocations kept for reuse by streaming connections; released once none has been
    /// streaming for [`BULK_POOL_KEEP`].
    bulk_pool: BulkPool,
    /// When a connection of this loop last streamed.
    bulk_seen: Instant,
    /// Plaintext output of the connection being flushed (DATA chunks are not copied into it).
    outbox: Outbox,
    /// TLS: the core's output before encryption.
    out: Vec<u8>,
    next_generation: u32,
    /// See [`Sessions::generation_stride`](super::shared::Sessions::generation_stride).
    generation_stride: u32,
    jitter: Jitter,
    socket_options: SocketOptions,
    stall_limit: Duration,
    draining: Option<Instant>,
    /// A timerfd for the last sub-millisecond of a wait (`epoll_wait` counts whole milliseconds and
    /// rounds up, which would add up to a tick to every deadline). `None` where it cannot be made.
    timerfd: Option<rustix::fd::OwnedFd>,
    /// When loop 0 next drops expired parked sessions.
    next_purge: Instant,
    /// Connections touched by accepts, commands and deadlines in this iteration, serviced once at
    /// its end.
    touched: Vec<usize>,
    /// Fleet: outbound messages from the store that did not fit a session's replay buffer yet,
    /// by slab index (with the generation), in order; retried as the client acknowledges.
    fleet_waiting: HashMap<usize, (u32, std::collections::VecDeque<(u64, Bytes)>)>,
    /// Fleet: when this loop next refreshes its sessions' leases and presence in the store.
    next_touch: Instant,
    /// Bytes read and written in this turn of the loop, added to the metrics once per turn (not
    /// per heartbeat).
    bytes_in: u64,
    bytes_out: u64,
    /// Timers of this turn that fired late (local stalls), added to the metrics at the turn's end.
    stalls: u64,
    /// Late timers since a stall was last logged, the latest of them, and when it was logged: one
    /// line a second at most, however many turns and connections saw the stall.
    stalls_unlogged: u64,
    stall_worst: Duration,
    stall_logged: Option<Instant>,
}

impl Loop {
    pub(crate) fn new(
        shard: u16,
        poll: Poll,
        listener: TcpListener,
        commands: Receiver<Command>,
        shared: Arc<Shared>,
        events: UnboundedSender<ServerEvent>,
    ) -> io::Result<Loop> {
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let timerfd = rustix::time::timerfd_create(
            rustix::time::TimerfdClockId::Monotonic,
            rustix::time::TimerfdFlags::NONBLOCK | rustix::time::TimerfdFlags::CLOEXEC,
        )
        .ok()
        .filter(|fd| {
            use std::os::fd::AsRawFd;
            poll.registry()
                .register(
                    &mut mio::unix::SourceFd(&fd.as_raw_fd()),
                    TIMER,
                    Interest::READABLE,
                )
                .is_ok()
        });
        let timeout = shared.cfg.liveness().timeout;
        // Reserve (not touch) room for this loop's share of the connection limit: the slab and the
        // wheel then never grow by doubling, which would copy them and leave up to half their
        // capacity unused; untouched capacity costs address space, not RSS.
        let share = shared
            .cfg
            .max_connections
            .div_ceil(shared.cfg.loops.max(1))
            .min(MAX_RESERVED_PER_LOOP);
        let wheel = Wheel::with_tick(Instant::now(), shared.cfg.tick, share)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // The stride the session table decodes routes with (one source for both).
        let generation_stride = shared.sessions().generation_stride();
        Ok(Loop {
            shard,
            poll,
            listener: Some(listener),
            conns: Slab::with_capacity(share),
            proto_cfg: Arc::new(shared.cfg.proto),
            json_cfg: Arc::new(shared.cfg.json),
            wheel,
            commands,
            events,
            scratch: vec![0; SCRATCH],
            bulk: HashMap::new(),
            reread: Vec::new(),
            bulk_pool: BulkPool::default(),
            bulk_seen: Instant::now(),
            outbox: Outbox::default(),
            out: Vec::new(),
            next_generation: u32::from(shard),
            generation_stride,
            jitter: Jitter::seeded(),
            socket_options: SocketOptions::for_timeout(timeout),
            stall_limit: timeout,
            draining: None,
            next_purge: Instant::now(),
            timerfd,
            touched: Vec::new(),
            fleet_waiting: HashMap::new(),
            next_touch: Instant::now(),
            bytes_in: 0,
            bytes_out: 0,
            stalls: 0,
            stalls_unlogged: 0,
            stall_worst: Duration::ZERO,
            stall_logged: None,
            shared,
        })
    }

    /// Runs until shutdown has drained (or the server handle is gone).
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if let Some(deadline) = self.draining
                && (self.conns.is_empty() || now >= deadline)
            {
                self.close_all(now);
                return;
            }
            let timeout = if self.reread.is_empty() {
                self.wheel
                    .next_deadline()
                    .map(|d| self.wait_for(d.saturating_duration_since(now)))
            } else {
                // Connections stopped reading at their budget: only look for other events.
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(shard = self.shard, error = %e, "poll failed; loop exits");
                self.close_all(Instant::now());
                return;
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    TIMER => self.drain_timerfd(),
                    WAKER => {
                        if !self.run_commands(now) {
                            self.close_all(now);
                            return;
                        }
                    }
                    Token(idx) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(idx, now, event.is_read_closed());
                        }
                        // Serviced at once, while its state is in cache: what the input made (a
                        // PONG, a handshake's transient buffers) is written and freed before the
                        // next connection's input makes more, so a burst of handshakes reuses one
                        // connection's worth of scratch memory instead of holding a batch's.
                        self.service(idx, now);
                    }
                }
            }
            for (idx, generation, read_closed) in std::mem::take(&mut self.reread) {
                if self
                    .conns
                    .get(idx)
                    .is_some_and(|c| c.generation == generation)
                {
                    self.read(idx, now, read_closed);
                    self.touched.push(idx);
                }
            }
            if !self.bulk.is_empty() {
                self.bulk_seen = now;
            } else if !self.bulk_pool.is_empty() && now >= self.bulk_seen + BULK_POOL_KEEP {
                self.bulk_pool.clear();
            }
            self.expire(now);
            self.service_touched(now);
            self.purge_sessions(now);
            self.touch_sessions(now);
            self.end_turn(now);
        }
    }

    /// Adds this turn's bytes and local stalls to the metrics, and logs the stalls since the last
    /// line if that was a second ago or more (one line).
    fn end_turn(&mut self, now: Instant) {
        if self.stalls > 0 {
            let n = std::mem::take(&mut self.stalls);
            metrics::counter!(m::LOCAL_STALLS).increment(n);
            self.stalls_unlogged += n;
        }
        if self.stalls_unlogged > 0
            && self
                .stall_logged
                .is_none_or(|t| now >= t + Duration::from_secs(1))
        {
            tracing::warn!(
                shard = self.shard,
                timers = std::mem::take(&mut self.stalls_unlogged),
                late_by = ?std::mem::take(&mut self.stall_worst),
                "local stall: timers fired late; no conviction"
            );
            self.stall_logged = Some(now);
        }
        if self.bytes_in > 0 {
            metrics::counter!(m::BYTES_IN).increment(std::mem::take(&mut self.bytes_in));
        }
        if self.bytes_out > 0 {
            metrics::counter!(m::BYTES_OUT).increment(std::mem::take(&mut self.bytes_out));
        }
    }

    /// The `epoll_wait` timeout for a deadline `wait` away: whole milliseconds rounded down (the poller
    /// rounds up, which would make every deadline up to a millisecond late); the last fraction of a
    /// millisecond goes to the timerfd, armed only then. Without a timerfd: `wait` as it is.
    fn wait_for(&mut self, wait: Duration) -> Duration {
        let Some(fd) = &self.timerfd else {
            return wait;
        };
        let whole_ms = Duration::from_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        if !whole_ms.is_zero() || wait.is_zero() {
            return whole_ms;
        }
        let spec = rustix::time::Itimerspec {
            it_interval: rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: i64::from(wait.subsec_nanos()),
            },
        };
        match rustix::time::timerfd_settime(fd, rustix::time::TimerfdTimerFlags::empty(), &spec) {
            // The timerfd ends the wait; the poller's own timeout is only a backstop.
            Ok(_) => Duration::from_millis(1),
            Err(_) => wait,
        }
    }

    /// Reads the timerfd's expiry count so that it can fire again.
    fn drain_timerfd(&mut self) {
        if let Some(fd) = &self.timerfd {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(fd, &mut buf);
        }
    }

    /// Accepts every pending connection.
    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the connection stays in the backlog; try again next wake-up.
                    tracing::warn!(shard = self.shard, error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: mio::net::TcpStream, peer: std::net::SocketAddr, now: Instant) {
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.cfg;
        if self.draining.is_some() {
            return;
        }
        if self.shared.open.fetch_add(1, Ordering::AcqRel) >= cfg.max_connections {
            self.shared.open.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
            tracing::info!(%peer, limit = cfg.max_connections, "connection limit reached; refusing");
            // Read what the peer already sent (its HELLO) so that closing sends FIN, not RST, and the
            // CLOSE frame reaches it.
            let _ = read_into(&mut stream, &mut self.scratch, false, |_| true);
            // A TLS client would read a plaintext CLOSE as a bad record: it just sees the close.
            if cfg.codec == Codec::Binary && cfg.tls.is_none() {
                let mut buf = Vec::new();
                vitals_proto::frame::encode_close(&mut buf, CloseCode::ServerFull, "server full");
                let _ = write_some(&mut stream, &buf);
            }
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return;
        }
        if let Err(e) = self.socket_options.apply(&stream) {
            tracing::debug!(%peer, error = %e, "socket options not applied");
        }
        let tls = match &cfg.tls {
            None => None,
            Some(tls_cfg) => match rustls::ServerConnection::new(Arc::clone(tls_cfg)) {
                Ok(mut tls) => {
                    // rustls takes each batch whole; what the socket refuses is checked against
                    // `max_write_buffer` in `flush_tls`, as a plaintext backlog is.
                    tls.set_buffer_limit(None);
                    Some(Box::new(tls))
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "TLS session not created; dropping connection");
                    self.shared.open.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            },
        };
        let proto = match cfg.codec {
            Codec::Binary => Connection::server(now, Arc::clone(&self.proto_cfg), fresh_keys()),
            Codec::Json => Connection::json(now, Role::Server, Arc::clone(&self.json_cfg)),
        };
        let expires = cfg.max_connection_age.map(|age| {
            // ±10 % so that connections accepted together do not all expire together.
            let low = age.mul_f64(0.9);
            now + low + self.jitter.sample(age.mul_f64(0.2))
        });
        let generation = self.next_generation();
        let entry = self.conns.vacant_entry();
        let idx = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(idx), Interest::READABLE)
        {
            tracing::warn!(%peer, error = %e, "register failed");
            self.shared.open.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let mut conn = Conn::new(stream, proto, generation, tls);
        conn.set_expires(self.shared.origin, expires);
        entry.insert(conn);
        metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
        metrics::gauge!(m::CONNECTIONS_OPEN).increment(1.0);
        if cfg.codec == Codec::Json {
            let conn = self.id(idx, generation);
            let _ = self.events.send(ServerEvent::Connected {
                conn,
                peer,
                session: None,
                resumed: false,
            });
        }
        self.touched.push(idx);
    }

    /// A generation for a new slot occupant: this loop's generations are ≡ its shard modulo the
    /// stride, so a generation names its loop (routes store no shard).
    fn next_generation(&mut self) -> u32 {
        let generation = self.next_generation;
        self.next_generation = generation.wrapping_add(self.generation_stride);
        generation
    }

    fn id(&self, index: usize, generation: u32) -> ConnId {
        ConnId {
            shard: self.shard,
            index: index as u32,
            generation,
        }
    }

    /// The slab index of `conn` if it is one of ours and still alive.
    fn index_of(&self, conn: ConnId) -> Option<usize> {
        let idx = conn.index as usize;
        (conn.shard == self.shard
            && self
                .conns
                .get(idx)
                .is_some_and(|c| c.generation == conn.generation))
        .then_some(idx)
    }

    fn read(&mut self, idx: usize, now: Instant, read_closed: bool) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.linger_until().is_some() {
            // Closing: discard input, only flush.
            let (_, ended) = read_into(&mut conn.stream, &mut self.scratch, read_closed, |_| true);
            if let Some(reason) = ended {
                conn.break_with(reason);
            }
            return;
        }
        let Conn {
            stream,
            proto,
            tls,
            generation,
            ..
        } = conn;
        if tls.is_none()
            && let Some(bulk) = self.bulk.get_mut(&idx)
            && bulk.generation == *generation
        {
            // Data is streaming in: read into the connection's own buffer, whose large DATA chunks
            // reach the application without a copy.
            let pool = &mut self.bulk_pool;
            let (n, ended, more) = read_bulk(stream, &mut bulk.buf, pool, read_closed, |buf| {
                proto.handle_input_buf(now, buf);
                !proto.is_closed()
            });
            self.bytes_in += n as u64;
            if more {
                self.reread.push((idx, *generation, read_closed));
            }
            if n < BULK_EXIT
                && bulk.buf.len() == 0
                && let Some(bulk) = self.bulk.remove(&idx)
            {
                // The stream has ebbed: back to the shared scratch buffer.
                bulk.buf.retire(&mut self.bulk_pool);
            }
            if let Some(reason) = ended {
                conn.break_with(reason);
            }
            return;
        }
        // Only what reaches the protocol core is a sign of life: with TLS, decrypted application bytes.
        let mut tls_end = None;
        let mut filled = false;
        let (n, ended) = read_into(stream, &mut self.scratch, read_closed, |chunk| match tls {
            None => {
                proto.handle_input(now, chunk);
                // A full read: data is streaming in. Stop here; the rest is read into a buffer of
                // the connection's own (see `read_bulk`), on the next turn of the loop.
                filled = chunk.len() == SCRATCH;
                !proto.is_closed() && !filled
            }
            Some(tls) => match feed(tls, chunk, |plain| {
                proto.handle_input(now, plain);
                !proto.is_closed()
            }) {
                Fed::Open => true,
                Fed::Stopped => false,
                Fed::PeerClosed => {
                    tls_end = Some(DisconnectReason::Eof);
                    false
                }
                Fed::Failed(detail) => {
                    tls_end = Some(DisconnectReason::Tls(detail));
                    false
                }
            },
        });
        self.bytes_in += n as u64;
        if filled && ended.is_none() && !conn.proto.is_closed() {
            // A read filled the scratch buffer: data is streaming in. Further reads go into a buffer
            // of the connection's own (see `read_bulk`).
            self.bulk.insert(
                idx,
                BulkIn {
                    generation: conn.generation,
                    buf: BulkBuf::default(),
                },
            );
            self.reread.push((idx, conn.generation, read_closed));
        }
        if let Some(reason) = tls_end {
            if let DisconnectReason::Tls(detail) = &reason {
                tracing::debug!(peer = %conn.peer(), error = %detail, "TLS failure");
            }
            if let (DisconnectReason::Tls(_), Some(tls)) = (&reason, conn.tls.as_mut()) {
                // Best effort: the alert rustls queued tells the peer why.
                let _ = write_out(tls, &mut conn.stream);
            }
            conn.break_with(reason);
        } else if let Some(reason) = ended {
            conn.break_with(reason);
        }
    }

    /// Runs every deadline that has passed.
    fn expire(&mut self, now: Instant) {
        while let Some(expired) = self.wheel.poll(now) {
            let idx = expired.value as usize;
            let Some(conn) = self.conns.get_mut(idx) else {
                continue;
            };
            if conn.timer != Some(expired.key) {
                continue;
            }
            conn.timer = None;
            let lingered_out = conn.linger_until().is_some_and(|t| now >= t);
            let write_stalled = conn
                .backlog
                .as_ref()
                .is_some_and(|b| now >= b.since + self.stall_limit);
            if lingered_out || write_stalled {
                conn.break_with(DisconnectReason::WriteStall);
            } else if conn.expires(self.shared.origin).is_some_and(|t| now >= t) {
                conn.set_expires(self.shared.origin, None);
                conn.proto
                    .close(CloseCode::MaxAge, "maximum connection age");
            } else {
                let before = conn.proto.pings_sent();
                conn.proto.handle_timeout(now);
                let pings = conn.proto.pings_sent().wrapping_sub(before);
                if pings > 0 {
                    metrics::counter!(m::PINGS_SENT).increment(u64::from(pings));
                }
            }
            self.touched.push(idx);
        }
    }

    /// Hands events to the application, writes, re-arms deadlines, and tears down what ended.
    fn service_touched(&mut self, now: Instant) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for &idx in &touched {
            self.service(idx, now);
        }
        touched.clear();
        // Keep the allocation; servicing may have pushed more (e.g. evictions) — handle those too.
        while !self.touched.is_empty() {
            let more = std::mem::take(&mut self.touched);
            for idx in more {
                self.service(idx, now);
            }
        }
        self.touched = touched;
    }

    fn service(&mut self, idx: usize, now: Instant) {
        let Some(conn) = self.conns.get(idx) else {
            return;
        };
        // Per-connection span: free when DEBUG is off (the callsite is disabled); the peer address is
        // logged by the events that matter (connect, conviction, close).
        let _span = tracing::debug_span!(
            "conn",
            id = %self.id(idx, conn.generation),
            session = ?conn.session()
        )
        .entered();
        self.dispatch_events(idx, now);
        self.flush(idx, now);
        if let Some(conn) = self.conns.get_mut(idx)
            && !conn.has_backlog()
            && !conn.broken
            && let Some(code) = conn.take_close_when_flushed()
        {
            // Everything queued has left: now the CLOSE.
            conn.proto.close(code, "server shutting down");
            self.dispatch_events(idx, now);
            self.flush(idx, now);
        }
        let linger_end = self.draining.map_or(now + LINGER, |d| d.min(now + LINGER));
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        // Waiting for the peer's FIN is for an orderly close of a live, well-behaved peer (drain,
        // max age, the application's close, the peer's own CLOSE). A peer convicted of silence is
        // gone, and one closed for abuse or a protocol error gets no more of our time: for those the
        // CLOSE is best effort and the socket closes at once.
        let orderly = matches!(
            conn.reason(),
            Some(
                DisconnectReason::Shutdown
                    | DisconnectReason::MaxAge
                    | DisconnectReason::LocalClose { .. }
                    | DisconnectReason::PeerClosed { .. }
            )
        );
        if conn.broken || (!orderly && conn.proto.is_closed() && !conn.has_backlog()) {
            self.teardown(idx, now);
            return;
        }
        if conn.proto.is_closed() {
            // Its CLOSE (and what was queued before it) is still being written, or has been and the
            // peer's FIN is awaited: linger briefly, discarding input.
            conn.set_linger(linger_end);
            if !conn.has_backlog() && !conn.fin_sent() {
                // Everything is out: send FIN and read on until the peer's (or the linger's end).
                // Closing the socket now could reset the connection instead — the peer's last
                // frames (its acks) unread here make the kernel send RST, and a RST can destroy
                // the CLOSE before the peer reads it.
                let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                conn.set_fin_sent();
            }
        }
        self.arm(idx);
    }

    /// Passes the protocol core's events on.
    fn dispatch_events(&mut self, idx: usize, now: Instant) {
        let Some(generation) = self.conns.get(idx).map(|c| c.generation) else {
            return;
        };
        let id = self.id(idx, generation);
        while let Some(event) = self.conns.get_mut(idx).and_then(|c| c.proto.poll_event()) {
            let Some(conn) = self.conns.get_mut(idx) else {
                return;
            };
            let out = match event {
                Event::ResumeRequested { session } => {
                    self.resume(idx, id, session, now);
                    None
                }
                Event::Connected {
                    session, resumed, ..
                } => {
                    conn.session_reported();
                    let mut sessions = self.shared.sessions();
                    sessions.set_route(session, id);
                    sessions.parked.remove(&session);
                    drop(sessions);
                    if let (Some(fleet), false, Some(keys)) =
                        (&self.shared.fleet, resumed, conn.proto.session_keys())
                    {
                        fleet.op(Op::Register {
                            sid: session,
                            token: keys.token,
                            conn: id,
                        });
                    }
                    if resumed {
                        metrics::counter!(m::RESUMES).increment(1);
                    }
                    Some(ServerEvent::Connected {
                        conn: id,
                        peer: conn.peer(),
                        session: Some(session),
                        resumed,
                    })
                }
                Event::Message { payload, seq } => match (&self.shared.fleet, conn.session()) {
                    // Committed to the fleet's store first; the store task reports it then.
                    (Some(fleet), Some(sid)) => {
                        fleet.op(Op::Commit {
                            sid,
                            conn: id,
                            seq: seq.0,
                            payload,
                        });
                        None
                    }
                    _ => Some(ServerEvent::Message {
                        conn: id,
                        session: conn.session(),
                        payload,
                    }),
                },
                Event::Acked { next } => {
                    if let (Some(fleet), Some(sid)) = (&self.shared.fleet, conn.session()) {
                        fleet.op(Op::Acked { sid, next: next.0 });
                    }
                    self.retry_fleet_waiting(idx, now);
                    None
                }
                Event::Rtt(rtt) => {
                    m::rtt(rtt.latest);
                    Some(ServerEvent::Rtt { conn: id, rtt })
                }
                Event::Suspect { phi } => Some(ServerEvent::Suspect { conn: id, phi }),
                Event::Stalled { late_by } => {
                    // Counted here, logged at the turn's end at most once a second: a stall of
                    // the process is seen by every connection due in it, and a starved loop finds
                    // many late timers at once; a line for each would add to the starvation.
                    self.stalls += 1;
                    self.stall_worst = self.stall_worst.max(late_by);
                    None
                }
                Event::PingStrike { strikes } => {
                    metrics::counter!(m::PING_STRIKES).increment(1);
                    tracing::debug!(peer = %conn.peer(), strikes, "ping strike");
                    None
                }
                Event::Dead { silent_for } => {
                    tracing::info!(peer = %conn.peer(), session = ?conn.session(), ?silent_for, "peer convicted: silent too long");
                    conn.end(DisconnectReason::SilenceTimeout);
                    None
                }
                Event::Closed {
                    code,
                    reason,
                    by_peer,
                } => {
                    conn.end(DisconnectReason::from_close(code, &reason, by_peer));
                    None
                }
            };
            if let Some(out) = out {
                let _ = self.events.send(out);
            }
        }
    }

    /// A client asks to resume `session` on connection `idx`. If the session is still attached to an
    /// older connection (the client noticed the break first), the token the client presented is checked
    /// against that session's first: a wrong one closes `idx` with `BadToken` and leaves the holder
    /// alone; the right one evicts the holder and stores its session before the resume is resolved.
    fn resume(&mut self, idx: usize, id: ConnId, session: SessionId, now: Instant) {
        let holder = self.shared.sessions().route(session);
        match holder {
            Some(home) if home.shard != self.shard => {
                // The session's home is another loop: hand this connection over, so that the resume
                // and every later send for the session go through that loop's queue, in order.
                if let Some(mut conn) = self.detach(idx) {
                    conn.awaiting_resume = true;
                    let conn = Box::new(conn);
                    if !self
                        .shared
                        .to_loop_of(home, Command::Adopt { conn, session })
                    {
                        // The home loop has exited (shutdown): the connection is dropped with the
                        // command; the client reconnects.
                        tracing::debug!(%home, "session's home loop is gone");
                        self.shared.open.fetch_sub(1, Ordering::AcqRel);
                        metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1.0);
                    }
                }
                return;
            }
            Some(victim) if victim != id => {
                if let Some(vidx) = self.index_of(victim) {
                    let keys = self.conns.get(vidx).and_then(|c| c.proto.session_keys());
                    let owner = match (keys, self.conns.get_mut(idx)) {
                        (Some(keys), Some(conn)) => conn.proto.verify_resume(&keys),
                        _ => true,
                    };
                    if !owner {
                        tracing::warn!(?session, %id, "resume with a wrong token refused; the session's connection is kept");
                        self.touched.push(idx);
                        return;
                    }
                    self.evict(vidx, now);
                }
            }
            _ => {}
        }
        if let Some(fleet) = &self.shared.fleet {
            // The session lives in Redis: take it over there (fenced by its epoch; the previous
            // owner, on whatever node, is told to let go); the answer comes back as a command.
            if let Some(conn) = self.conns.get_mut(idx)
                && let Some((sid, token, ack)) = conn.proto.pending_resume()
            {
                conn.awaiting_resume = true;
                // Neither side hears the other while the resume waits: answer (`Unavailable` at
                // worst) well before either would convict the other for the silence.
                let wait = fleet.cfg.resume_wait.min(conn.proto.timeout() / 3);
                fleet.op(Op::Takeover {
                    sid,
                    token,
                    client_ack: ack.0,
                    conn: id,
                    wait,
                });
            }
            return;
        }
        self.resolve(idx, now);
    }

    /// Removes connection `idx` from this loop without closing it (to hand it to another loop).
    fn detach(&mut self, idx: usize) -> Option<Conn> {
        if !self.conns.contains(idx) {
            return None;
        }
        let mut conn = self.conns.remove(idx);
        if let Some(bulk) = self.bulk.remove(&idx) {
            if bulk.buf.len() > 0 {
                // The start of a frame read into the connection's own buffer goes with the connection.
                conn.proto.handle_input(Instant::now(), bulk.buf.as_slice());
            }
            bulk.buf.retire(&mut self.bulk_pool);
        }
        if let Err(e) = self.poll.registry().deregister(&mut conn.stream) {
            tracing::warn!(error = %e, "deregister failed; closing the connection");
            self.shared.open.fetch_sub(1, Ordering::AcqRel);
            metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1.0);
            return None;
        }
        if let Some(key) = conn.timer.take() {
            let _ = self.wheel.cancel(key);
        }
        conn.writable = false;
        Some(conn)
    }

    /// Takes over a connection handed to this loop (the session's home) and resolves its resume here.
    fn adopt(&mut self, mut conn: Conn, session: SessionId, now: Instant) {
        let generation = self.next_generation();
        conn.generation = generation;
        let entry = self.conns.vacant_entry();
        let idx = entry.key();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut conn.stream, Token(idx), Interest::READABLE)
        {
            tracing::warn!(error = %e, "register of a handed-over connection failed");
            self.shared.open.fetch_sub(1, Ordering::AcqRel);
            metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1.0);
            return;
        }
        entry.insert(conn);
        let id = self.id(idx, generation);
        self.resume(idx, id, session, now);
        self.touched.push(idx);
    }

    /// Resolves a pending resume on `idx` against the store.
    fn resolve(&mut self, idx: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        conn.awaiting_resume = false;
        let mut sessions = self.shared.sessions();
        // Resolve before purging, so that resuming an expired session is answered SessionExpired
        // (the core checks expiry after the token) rather than UnknownSession.
        conn.proto.resolve_resume(now, sessions.store.as_mut());
        let before = sessions.store.purge_expired(now);
        if before > 0 {
            tracing::debug!(purged = before, "expired sessions dropped");
        }
        // Route the session to this connection in the same critical section that took it from the
        // store, so that `send_to_session` never finds it in neither place.
        let id = ConnId {
            shard: self.shard,
            index: idx as u32,
            generation: conn.generation,
        };
        route_resumed(conn, id, &mut sessions);
        drop(sessions);
        self.touched.push(idx);
    }

    /// Resolves a pending resume on `idx` with what the fleet's store answered.
    fn resolve_fleet(&mut self, idx: usize, now: Instant, result: Result<Snapshot, SessionError>) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if !conn.awaiting_resume {
            return;
        }
        conn.awaiting_resume = false;
        let Some((sid, token, _)) = conn.proto.pending_resume() else {
            return;
        };
        match result {
            Ok(snap) => {
                // The token was checked by the store (against its digest); the core checks it
                // again against these keys and applies the client's acknowledgement.
                let session = Session::restore(
                    SessionKeys { id: sid, token },
                    self.shared.cfg.proto.session,
                    Seq(snap.in_next),
                    Seq(snap.first_unacked),
                    snap.unacked,
                    now,
                );
                let mut one = MemoryStore::new();
                one.put(session);
                conn.proto.resolve_resume(now, &mut one);
                let id = ConnId {
                    shard: self.shard,
                    index: idx as u32,
                    generation: conn.generation,
                };
                route_resumed(conn, id, &mut self.shared.sessions());
            }
            Err(e) => conn.proto.refuse_resume(e),
        }
        self.touched.push(idx);
    }

    /// Tears down `idx` because its session moved to a new connection.
    fn evict(&mut self, idx: usize, now: Instant) {
        const WHY: &str = "session resumed on a new connection";
        if let Some(conn) = self.conns.get_mut(idx) {
            conn.end(DisconnectReason::LocalClose {
                code: CloseCode::Normal,
                reason: WHY.into(),
            });
            conn.proto.close(CloseCode::Normal, WHY);
            // Best effort: the old connection is most likely dead already.
            self.flush(idx, now);
            self.teardown(idx, now);
        }
    }

    /// Writes what the connection has to send; keeps what the socket refuses.
    fn flush(&mut self, idx: usize, now: Instant) {
        let max_buffer = self.shared.cfg.max_write_buffer;
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.broken {
            return;
        }
        let mut written = 0usize;
        let result = if let Some(tls) = conn.tls.as_mut() {
            flush_tls(
                tls,
                &mut conn.stream,
                &mut conn.proto,
                &mut conn.backlog,
                &mut self.out,
                &mut written,
                now,
                max_buffer,
            )
        } else {
            (|| -> io::Result<()> {
                if let Some(backlog) = conn.backlog.as_mut() {
                    let stream = &mut conn.stream;
                    written += backlog.out.write_with(|iov| write_iov(stream, iov))?;
                    if !backlog.out.is_empty() {
                        return Ok(());
                    }
                    conn.backlog = None;
                }
                loop {
                    if self.outbox.fill(&mut conn.proto, OUT_BATCH) == 0 {
                        return Ok(());
                    }
                    let stream = &mut conn.stream;
                    written += self.outbox.write_with(|iov| write_iov(stream, iov))?;
                    if !self.outbox.is_empty() {
                        // The socket is full: the rest (DATA chunks still shared, not copied)
                        // waits with the connection.
                        conn.backlog = Some(Box::new(Backlog {
                            out: std::mem::take(&mut self.outbox),
                            since: now,
                        }));
                        return Ok(());
                    }
                }
            })()
            .map_err(|e| DisconnectReason::from_io(&e))
        };
        // After an error, what was gathered for this connection must not go to the next one.
        self.outbox.clear();
        self.bytes_out += written as u64;
        if let Err(reason) = result {
            conn.break_with(reason);
            return;
        }
        if conn
            .backlog
            .as_ref()
            .is_some_and(|b| b.out.len() > max_buffer)
        {
            conn.break_with(DisconnectReason::WriteStall);
            return;
        }
        let want_writable = conn.has_backlog();
        if want_writable != conn.writable {
            let interest = if want_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(idx), interest)
            {
                Ok(()) => conn.writable = want_writable,
                Err(e) => conn.break_with(DisconnectReason::from_io(&e)),
            }
        }
    }

    /// Files the connection's next deadline in the wheel: a later one only updates the stored tick.
    fn arm(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        let want = conn.next_deadline(self.stall_limit, self.shared.origin);
        match (conn.timer, want) {
            (Some(key), Some(at)) => {
                let tick = self.wheel.tick_ceil(at);
                // Same deadline: nothing to do. Later: the wheel only stores it (lazy re-filing).
                if self.wheel.deadline_tick(key) != Ok(tick)
                    && self.wheel.reset_to_tick(key, tick).is_err()
                {
                    conn.timer = None;
                }
            }
            (Some(key), None) => {
                let _ = self.wheel.cancel(key);
                conn.timer = None;
            }
            (None, Some(at)) => {
                let tick = self.wheel.tick_ceil(at);
                conn.timer = u32::try_from(idx)
                    .ok()
                    .and_then(|i| self.wheel.insert_at_tick(tick, i).ok());
            }
            (None, None) => {}
        }
    }

    /// Removes a connection: deregisters it, stores its session for a resume (unless the close was
    /// final), and reports why it ended.
    fn teardown(&mut self, idx: usize, now: Instant) {
        if !self.conns.contains(idx) {
            return;
        }
        let mut conn = self.conns.remove(idx);
        if let Some(bulk) = self.bulk.remove(&idx) {
            bulk.buf.retire(&mut self.bulk_pool);
        }
        let id = self.id(idx, conn.generation);
        // The session the application knows of (read before the core gives its session up).
        let reported = conn.session();
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let Some(key) = conn.timer.take() {
            let _ = self.wheel.cancel(key);
        }
        let reason = conn.take_reason().unwrap_or(DisconnectReason::Io(
            "connection closed without a recorded reason".into(),
        ));
        // Park the session for a resume unless the client ended it for good. This includes a new session
        // the client had not confirmed yet: it may have received the WELCOME and will try to resume.
        let final_close = matches!(
            &reason,
            DisconnectReason::PeerClosed {
                code: CloseCode::Normal,
                ..
            }
        );
        self.fleet_waiting.remove(&idx);
        let rtt_us = u64::try_from(conn.proto.rtt().smoothed.as_micros()).unwrap_or(u64::MAX);
        if let Some(session) = conn.proto.take_session(now) {
            let sid = session.id();
            let mut sessions = self.shared.sessions();
            let owner = sessions.route(sid);
            if owner.is_none_or(|o| o == id) {
                if let Some(fleet) = &self.shared.fleet {
                    // Redis holds the session (and sends go through it): park it there for a
                    // resume on any server, or end it; nothing stays in this process.
                    sessions.remove_route(sid);
                    sessions.parked.remove(&sid);
                    drop(sessions);
                    let reason = reason.label();
                    fleet.op(if final_close {
                        Op::Finish {
                            sid,
                            conn: id,
                            reason,
                        }
                    } else {
                        Op::Park {
                            sid,
                            conn: id,
                            reason,
                            rtt_us,
                        }
                    });
                } else if final_close {
                    sessions.remove_route(sid);
                    sessions.parked.remove(&sid);
                } else {
                    // Parked: the route stays on this connection, so that sends for the session keep
                    // coming to this loop (its home) and go into the parked session in order.
                    sessions.store.put(session);
                    sessions.set_route(sid, id);
                    sessions.parked.insert(sid);
                }
            }
        }
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(m::CONNECTIONS_OPEN).decrement(1.0);
        m::disconnect(&reason);
        tracing::debug!(peer = %conn.peer(), session = ?reported, reason = reason.label(), "connection closed");
        // `Connected` was reported at accept (JSON) or when the session was established (binary).
        let connected = self.shared.cfg.codec == Codec::Json || reported.is_some();
        let _ = self.events.send(ServerEvent::Closed {
            conn: id,
            session: reported,
            connected,
            reason,
        });
    }

    /// Runs queued commands. False when the server handle is gone (the loop should exit).
    fn run_commands(&mut self, now: Instant) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.command(cmd, now),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Send {
                conn,
                session,
                payload,
            } => match self.index_of(conn) {
                Some(idx) => self.queue_message(idx, conn, payload, now),
                None => self.send_elsewhere(conn, session, payload, now),
            },
            Command::Close { conn, code, reason } => {
                if let Some(idx) = self.index_of(conn) {
                    self.conns[idx].proto.close(code, &reason);
                    self.touched.push(idx);
                }
            }
            Command::Disconnect { conn } => {
                if let Some(idx) = self.index_of(conn) {
                    self.conns[idx].break_with(DisconnectReason::Disconnected);
                    self.touched.push(idx);
                }
            }
            Command::Adopt { conn, session } => self.adopt(*conn, session, now),
            Command::Fleet(reply) => self.fleet_reply(reply, now),
            Command::Shutdown { deadline } => {
                if let Some(mut listener) = self.listener.take() {
                    let _ = self.poll.registry().deregister(&mut listener);
                }
                self.draining = Some(deadline);
                let idxs: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
                for idx in idxs {
                    self.conns[idx].close_when_flushed(CloseCode::Shutdown);
                    self.touched.push(idx);
                }
            }
        }
    }

    /// Queues `payload` on live connection `idx`, or hands it back as `SendRefused`.
    fn queue_message(&mut self, idx: usize, conn: ConnId, payload: Bytes, now: Instant) {
        let binary = self.shared.cfg.codec == Codec::Binary;
        let c = &mut self.conns[idx];
        if let (Some(fleet), Some(sid)) = (&self.shared.fleet, c.session()) {
            // Written to Redis first (so that it survives this process), then delivered from there
            // in the session's order.
            fleet.op(Op::Publish {
                sid,
                payload,
                reply: None,
            });
            return;
        }
        let reason = match c.proto.room_for(payload.len()) {
            vitals_proto::Room::Now => match c.proto.send(now, payload) {
                Ok(_) => {
                    self.touched.push(idx);
                    return;
                }
                Err(e) => {
                    tracing::debug!(peer = %c.peer(), error = %e, "send refused");
                    self.touched.push(idx);
                    return;
                }
            },
            vitals_proto::Room::Never => "message larger than the send buffer",
            _ if binary && c.session().is_none() => "no session yet",
            _ => "send buffer full",
        };
        let _ = self.events.send(ServerEvent::SendRefused {
            conn,
            payload,
            reason,
        });
        self.touched.push(idx);
    }

    /// `conn` is gone by the time its message arrived. A message for a session follows the session:
    /// to its new connection, or into the stored session (delivered on resume). Otherwise it comes
    /// back as `SendRefused` — never dropped silently.
    fn send_elsewhere(
        &mut self,
        conn: ConnId,
        session: Option<SessionId>,
        payload: Bytes,
        now: Instant,
    ) {
        let mut payload = Some(payload);
        let mut reason = "connection closed";
        if let (Some(fleet), Some(sid)) = (&self.shared.fleet, session) {
            fleet.op(Op::Publish {
                sid,
                payload: payload.take().unwrap_or_default(),
                reply: None,
            });
            return;
        }
        if let Some(sid) = session {
            let mut sessions = self.shared.sessions();
            let route = sessions.route(sid).filter(|r| *r != conn);
            if let Some(to) = route
                && let Some(idx) = self.index_of(to)
            {
                // The session moved to a connection of this loop: queue it now, ahead of anything
                // sent since (which is behind this command in the queue).
                drop(sessions);
                self.queue_message(idx, to, payload.take().unwrap_or_default(), now);
                return;
            }
            if let Some(to) = route {
                drop(sessions);
                let cmd = Command::Send {
                    conn: to,
                    session: Some(sid),
                    payload: payload.take().unwrap_or_default(),
                };
                if self.shared.to_loop_of(to, cmd) {
                    return;
                }
                reason = "server shutting down";
            } else if let Some(mut stored) = sessions.store.take(sid) {
                let p = payload.take().unwrap_or_default();
                if stored.has_room(p.len()) {
                    let _ = stored.push(now, p);
                } else {
                    payload = Some(p);
                    reason = "send buffer full";
                }
                sessions.store.put(stored);
            } else {
                reason = "session gone";
            }
        }
        if let Some(payload) = payload {
            let _ = self.events.send(ServerEvent::SendRefused {
                conn,
                payload,
                reason,
            });
        }
    }

    /// An answer of the fleet's store task.
    fn fleet_reply(&mut self, reply: Reply, now: Instant) {
        match reply {
            Reply::Committed { conn, next } => {
                if let Some(idx) = self.index_of(conn) {
                    self.conns[idx].proto.commit(now, Seq(next));
                    self.touched.push(idx);
                }
            }
            Reply::Resumed { conn, sid, result } => {
                if let Some(idx) = self.index_of(conn)
                    && self.conns[idx]
                        .proto
                        .pending_resume()
                        .is_some_and(|(s, _, _)| s == sid)
                {
                    self.resolve_fleet(idx, now, result);
                }
            }
            Reply::Outbound {
                conn,
                sid,
                seq,
                payload,
            } => {
                let Some(idx) = self.index_of(conn) else {
                    return; // Closed meanwhile: Redis keeps it for the resume.
                };
                if self.conns[idx].proto.session_id() != Some(sid) {
                    return;
                }
                let generation = self.conns[idx].generation;
                let waiting = self
                    .fleet_waiting
                    .entry(idx)
                    .or_insert_with(|| (generation, Default::default()));
                if waiting.0 != generation {
                    *waiting = (generation, Default::default());
                }
                waiting.1.push_back((seq, payload));
                self.retry_fleet_waiting(idx, now);
            }
            Reply::Kick { conn, sid } => {
                if let Some(idx) = self.index_of(conn)
                    && self.conns[idx].proto.session_id() == Some(sid)
                {
                    const WHY: &str = "session resumed on another connection";
                    let c = &mut self.conns[idx];
                    c.end(DisconnectReason::LocalClose {
                        code: CloseCode::Normal,
                        reason: WHY.into(),
                    });
                    c.proto.close(CloseCode::Normal, WHY);
                    self.touched.push(idx);
                }
            }
            Reply::Lost { conn, sid } => {
                if let Some(idx) = self.index_of(conn)
                    && self.conns[idx].proto.session_id() == Some(sid)
                {
                    const WHY: &str = "session lost by the session store";
                    tracing::warn!(session = ?sid, "{WHY}: closing; the client starts a new session");
                    let c = &mut self.conns[idx];
                    c.end(DisconnectReason::LocalClose {
                        code: CloseCode::UnknownSession,
                        reason: WHY.into(),
                    });
                    c.proto.close(CloseCode::UnknownSession, WHY);
                    self.touched.push(idx);
                }
            }
        }
    }

    /// Queues the store's outbound messages waiting for connection `idx`, in order, as far as its
    /// replay buffer takes them (the rest waits for the client's acknowledgements).
    fn retry_fleet_waiting(&mut self, idx: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        let Some((generation, waiting)) = self.fleet_waiting.get_mut(&idx) else {
            return;
        };
        if *generation != conn.generation {
            self.fleet_waiting.remove(&idx);
            return;
        }
        while let Some((seq, payload)) = waiting.front() {
            let Some(next) = conn.proto.send_next() else {
                break;
            };
            if *seq < next.0 {
                waiting.pop_front(); // Already in the session (a resume's snapshot had it).
                continue;
            }
            if *seq > next.0 {
                // The store skipped a message: never deliver out of order. The client resumes and
                // the takeover's snapshot is whole, or says the session is lost.
                tracing::error!(
                    expected = next.0,
                    got = *seq,
                    "fleet: outbound message out of order; dropping the connection"
                );
                conn.break_with(DisconnectReason::LocalClose {
                    code: CloseCode::Normal,
                    reason: "outbound messages out of order".into(),
                });
                break;
            }
            if conn.proto.room_for(payload.len()) != vitals_proto::Room::Now {
                break;
            }
            let payload = payload.clone();
            if conn.proto.send(now, payload).is_err() {
                break;
            }
            waiting.pop_front();
        }
        if waiting.is_empty() {
            self.fleet_waiting.remove(&idx);
        }
        self.touched.push(idx);
    }

    /// Fleet: refreshes the lease and presence of this loop's sessions in the store, every third of
    /// the lease (so that a crashed node's sessions expire, and presence shows the last RTT).
    fn touch_sessions(&mut self, now: Instant) {
        let Some(fleet) = &self.shared.fleet else {
            return;
        };
        if now < self.next_touch {
            return;
        }
        self.next_touch = now + fleet.cfg.lease / 3;
        for (idx, conn) in self.conns.iter() {
            if let Some(sid) = conn.session()
                && !conn.proto.is_closed()
            {
                let rtt_us = u64::try_from(conn.proto.rtt().smoothed.as_micros()).unwrap_or(0);
                fleet.op(Op::Touch {
                    sid,
                    conn: ConnId {
                        shard: self.shard,
                        index: idx as u32,
                        generation: conn.generation,
                    },
                    rtt_us,
                });
            }
        }
    }

    /// Loop 0 drops parked sessions expired for [`EXPIRED_GRACE`] at most every `ttl / 4` (between
    /// 100 ms and 10 s), on
    /// whatever wake-up comes next, so that a server that sees no resumes does not accumulate them.
    /// Sessions are only parked when connections end, which wakes the loop; an idle loop is not woken
    /// for this.
    fn purge_sessions(&mut self, now: Instant) {
        if self.shard != 0 || now < self.next_purge {
            return;
        }
        let every = (self.shared.cfg.proto.session.ttl / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
        self.next_purge = now + every;
        let mut sessions = self.shared.sessions();
        if sessions.store.is_empty() {
            return;
        }
        // Keep an expired session `EXPIRED_GRACE` longer, so that a late resume is told
        // `SessionExpired` rather than `UnknownSession`.
        let purged = sessions
            .store
            .purge_expired(now.checked_sub(EXPIRED_GRACE).unwrap_or(now));
        if purged > 0 {
            sessions.forget_purged();
        }
        let left = sessions.store.len();
        drop(sessions);
        if purged > 0 {
            tracing::debug!(purged, left, "expired sessions dropped");
        }
    }

    /// Final: tears every remaining connection down.
    fn close_all(&mut self, now: Instant) {
        let idxs: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for idx in idxs {
            if let Some(c) = self.conns.get_mut(idx) {
                c.end(DisconnectReason::Shutdown);
            }
            self.teardown(idx, now);
        }
        self.end_turn(now);
    }
}

/// Writes a TLS connection's output: first the records rustls still holds, then — only once those have
/// left — more of the protocol core's output, encrypted. Records the socket refuses stay in rustls and
/// make `backlog` exist (it carries the stall clock; its byte buffer stays empty); more than
/// `max_buffer` of them is a write stall, as for a plaintext backlog. Once the core is closed and
/// everything has been handed over, `close_notify` follows.
#[allow(clippy::too_many_arguments)]
fn flush_tls(
    tls: &mut rustls::ServerConnection,
    stream: &mut mio::net::TcpStream,
    proto: &mut Connection,
    backlog: &mut Option<Box<Backlog>>,
    out: &mut Vec<u8>,
    written: &mut usize,
    now: Instant,
    max_buffer: usize,
) -> Result<(), DisconnectReason> {
    let io_err = |e: io::Error| DisconnectReason::from_io(&e);
    loop {
        *written += write_out(tls, stream).map_err(io_err)?;
        if tls.wants_write() {
            // With no new input, this only reports the state: here, how many record bytes wait.
            let queued = tls
                .process_new_packets()
                .map_or(0, |state| state.tls_bytes_to_write());
            if queued > max_buffer {
                return Err(DisconnectReason::WriteStall);
            }
            backlog.get_or_insert_with(|| {
                Box::new(Backlog {
                    out: Outbox::default(),
                    since: now,
                })
            });
            return Ok(());
        }
        *backlog = None;
        if !crate::tls::encrypt_next(tls, proto, out, OUT_BATCH).map_err(io_err)? {
            return Ok(());
        }
    }
}

/// Writes `iov` to `stream`: one buffer (a heartbeat's PONG, any small frame) with a plain `send`,
/// several with `writev` (a `writev` of one buffer costs the kernel an iovec import more).
fn write_iov(stream: &mut mio::net::TcpStream, iov: &[io::IoSlice<'_>]) -> io::Result<usize> {
    match iov {
        [one] => stream.write(one),
        _ => stream.write_vectored(iov),
    }
}

/// After a resume resolved on `conn` (`id`): routes its session to it, unless the resume failed.
fn route_resumed(conn: &mut Conn, id: ConnId, sessions: &mut super::shared::Sessions) {
    if !conn.proto.is_closed()
        && let Some(session) = conn.proto.session_id()
    {
        conn.session_reported();
        sessions.set_route(session, id);
        sessions.parked.remove(&session);
    }
}

/// A new session id and a 128-bit resume token from the OS random source.
pub(crate) fn fresh_keys() -> SessionKeys {
    let mut bytes = [0u8; 24];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS random source failing is not something to serve through: refuse resumption by making
        // the token unguessable-but-unknown is impossible, so abort the process loudly.
        tracing::error!("OS random source failed");
        std::process::abort();
    }
    let mut id = [0u8; 8];
    let mut token = [0u8; 16];
    id.copy_from_slice(&bytes[..8]);
    token.copy_from_slice(&bytes[8..]);
    SessionKeys {
        id: SessionId(u64::from_le_bytes(id)),
        token: ResumeToken::from_bytes(token),
    }
}
