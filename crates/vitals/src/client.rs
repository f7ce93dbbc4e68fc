//! The client: one tokio task per connection over the protocol core, that reconnects with jittered
//! backoff and resumes its session so that no message is lost or duplicated.
//!
//! The task owns the socket, the [`Connection`] core and its one deadline (a single tokio sleep: a
//! client holds one connection, so there is nothing for a wheel to share; the server keeps all of its
//! connections' deadlines in timing wheels). Between connections the session (with every message not yet
//! acknowledged) is kept, and [`Client::send`] keeps queueing into it; on reconnect the core replays what
//! the server has not acknowledged.
//!
//! TLS ([`ClientConfig::tls`]): a rustls client state machine sits between the socket and the core, in
//! the same readiness-driven loop — socket bytes are fed to rustls and its plaintext to the core; the
//! core's output is encrypted into rustls and its records written as the socket takes them. Back-pressure,
//! reconnect and resume work as over plaintext; each reconnect makes a new TLS handshake.
//!
//! Guarantees: with a server that keeps the session (a resume succeeds), every message arrives exactly
//! once, in order, both ways. If the server lost the session (restart with the in-memory store, expiry),
//! the client is told ([`ClientEvent::SessionLost`]), opens a new session and re-sends its unacknowledged
//! messages in order: a message the server had received but not yet acknowledged can then arrive twice
//! (at-least-once across a lost session), and messages the server had queued for us are gone.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::{IpAddr, SocketAddr};
use tokio::io::Interest;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;
use vitals_proto::{
    Bytes, BytesMut, CloseCode, Config as ProtoConfig, Connection, Event, Role, Room, SendError,
    Session,
};

use crate::backoff::Backoff;
use crate::config::{ClientConfig, Codec};
use crate::error::Error;
use crate::event::{ClientEvent, DisconnectReason};
use crate::metrics as m;
use crate::outbox::Outbox;
use crate::socket::SocketOptions;
use crate::tls::{Fed, feed, write_out};

/// First size of a connection's read buffer; it doubles while reads fill it, up to [`READ_BUF_MAX`], so
/// that an idle heartbeating client holds 2 KiB, not 256.
const READ_BUF_MIN: usize = 2 * 1024;
/// Largest read buffer.
const READ_BUF_MAX: usize = 256 * 1024;
/// Largest read buffer of a TLS connection (ciphertext; records are at most 16 KiB).
const TLS_READ_BUF_MAX: usize = 64 * 1024;
/// Most bytes gathered from the core per write.
const OUT_BATCH: usize = 256 * 1024;

/// Where the task answers one `send`.
type Reply = oneshot::Sender<Result<(), Error>>;

/// Messages queued between `send` and the task (besides the replay buffer).
const SEND_QUEUE: usize = 32;

#[derive(Debug)]
enum Cmd {
    /// A message. `done` is answered once the core took it (JSON codec, whose validity check
    /// happens there); binary sends are not answered: `send` returns once the message is queued
    /// here, and the queue's bound carries the back-pressure (see [`Client::send`]).
    Send { payload: Bytes, done: Option<Reply> },
}

/// Answers a `send` that waits for its answer; an unanswered one that failed is logged (it cannot
/// happen: `send` checks the size first, and room is waited for).
fn answer(done: Option<Reply>, r: Result<(), Error>) {
    match (done, r) {
        (Some(done), r) => {
            let _ = done.send(r);
        }
        (None, Err(e)) => tracing::error!(error = %e, "a queued message could not be sent"),
        (None, Ok(())) => {}
    }
}

/// What `send` checks before queueing, from the configuration.
#[derive(Debug, Clone, Copy)]
struct SendCheck {
    /// Largest message the send buffer can ever hold.
    max_len: usize,
    /// Wait for the task's answer (JSON codec: the core checks the payload is one JSON object).
    confirm: bool,
}

impl SendCheck {
    fn new(cfg: &ClientConfig) -> SendCheck {
        match cfg.codec {
            Codec::Binary => SendCheck {
                max_len: cfg.proto.session.max_replay_bytes,
                confirm: false,
            },
            Codec::Json => SendCheck {
                max_len: cfg.json.max_send_queue,
                confirm: true,
            },
        }
    }
}

/// Control requests, on their own channel so that they are heard even while a send waits for room.
#[derive(Debug)]
enum Ctl {
    /// Orderly close.
    Close(oneshot::Sender<()>),
    /// Answer once everything sent so far is acknowledged.
    Flush(oneshot::Sender<()>),
    /// Send a PING now (an RTT probe, also while data flows).
    Ping,
}

/// A reconnecting, resuming client. Dropping it stops the task (without an orderly CLOSE; use
/// [`close`](Self::close) for that).
pub struct Client {
    cmds: mpsc::Sender<Cmd>,
    check: SendCheck,
    ctl: mpsc::UnboundedSender<Ctl>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Starts the client task on the current tokio runtime. It connects in the background; watch
    /// [`next_event`](Self::next_event) for [`ClientEvent::Connected`].
    pub fn connect(cfg: ClientConfig) -> Client {
        let (cmd_tx, cmd_rx) = mpsc::channel(SEND_QUEUE);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (ev_tx, events) = mpsc::unbounded_channel();
        let check = SendCheck::new(&cfg);
        let task = tokio::spawn(Task::new(cfg, cmd_rx, ctl_rx, ev_tx).run());
        Client {
            cmds: cmd_tx,
            check,
            ctl: ctl_tx,
            events,
            task,
        }
    }

    /// Queues a message. Waits while the replay buffer is full (back-pressure) — also while
    /// disconnected, once the buffer is full. Errors: [`Error::Rejected`] for a message that can never
    /// fit or is not valid in the codec, [`Error::Shutdown`] after close.
    ///
    /// Binary codec: returns once the message is queued for the connection's task, which moves it
    /// into the replay buffer in order (no round trip per message). Besides the replay buffer, at most
    /// 32 messages wait in that queue; while both are full, `send` waits. A message queued when the
    /// client is dropped or closed is not sent (as for the replay buffer, whose session ends then).
    ///
    /// Takes a `Vec<u8>` or a [`Bytes`](crate::Bytes) without copying it (a `Bytes` can be sent many
    /// times, each send sharing the buffer); its bytes go to the socket from there.
    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<(), Error> {
        send_via(&self.cmds, self.check, payload.into()).await
    }

    /// A cloneable sending handle, for sending from other tasks while this one reads events.
    pub fn sender(&self) -> ClientSender {
        ClientSender {
            cmds: self.cmds.clone(),
            check: self.check,
            ctl: self.ctl.clone(),
        }
    }

    /// The next event; `None` after the client stopped.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// The next event if one is ready.
    pub fn try_next_event(&mut self) -> Option<ClientEvent> {
        self.events.try_recv().ok()
    }

    /// Waits until every message sent so far has been acknowledged by the server (binary codec), or
    /// written to the socket (JSON codec, which has no acknowledgements) — across reconnects. Errors
    /// with [`Error::Shutdown`] if the client stops first.
    pub async fn flush(&self) -> Result<(), Error> {
        flush_via(&self.ctl).await
    }

    /// Sends a PING now, outside the liveness schedule; its PONG arrives as [`ClientEvent::Rtt`]. Useful
    /// to measure RTT while data flows (the schedule pings only after silence). Binary codec; ignored
    /// while offline. Probing more often than the granted interval collects ping strikes.
    pub fn ping(&self) -> Result<(), Error> {
        self.ctl.send(Ctl::Ping).map_err(|_| Error::Shutdown)
    }

    /// Orderly close: sends CLOSE (`Normal`, ending the session on the server) and stops. Heard at
    /// once, also while a send waits for room or the client is offline (then there is no CLOSE to send).
    pub async fn close(mut self) {
        let (done, wait) = oneshot::channel();
        if self.ctl.send(Ctl::Close(done)).is_ok() {
            let _ = wait.await;
        }
        let _ = (&mut self.task).await;
    }
}

/// Sends through a [`Client`] from another task (see [`Client::sender`]).
#[derive(Clone, Debug)]
pub struct ClientSender {
    cmds: mpsc::Sender<Cmd>,
    check: SendCheck,
    ctl: mpsc::UnboundedSender<Ctl>,
}

impl ClientSender {
    /// Same as [`Client::send`].
    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<(), Error> {
        send_via(&self.cmds, self.check, payload.into()).await
    }

    /// Same as [`Client::flush`].
    pub async fn flush(&self) -> Result<(), Error> {
        flush_via(&self.ctl).await
    }

    /// Same as [`Client::ping`].
    pub fn ping(&self) -> Result<(), Error> {
        self.ctl.send(Ctl::Ping).map_err(|_| Error::Shutdown)
    }
}

async fn flush_via(ctl: &mpsc::UnboundedSender<Ctl>) -> Result<(), Error> {
    let (done, wait) = oneshot::channel();
    ctl.send(Ctl::Flush(done)).map_err(|_| Error::Shutdown)?;
    wait.await.map_err(|_| Error::Shutdown)
}

async fn send_via(cmds: &mpsc::Sender<Cmd>, check: SendCheck, payload: Bytes) -> Result<(), Error> {
    if payload.len() > check.max_len {
        return Err(Error::Rejected(TOO_LARGE.into()));
    }
    if !check.confirm {
        return cmds
            .send(Cmd::Send {
                payload,
                done: None,
            })
            .await
            .map_err(|_| Error::Shutdown);
    }
    let (done, wait) = oneshot::channel();
    cmds.send(Cmd::Send {
        payload,
        done: Some(done),
    })
    .await
    .map_err(|_| Error::Shutdown)?;
    wait.await.map_err(|_| Error::Shutdown)?
}

const TOO_LARGE: &str = "message larger than the replay buffer";

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one connection ended.
struct Ended {
    reason: DisconnectReason,
    /// The session to resume (binary mode), if it survives.
    session: Option<Session>,
    /// The server said the session is gone: start a new one with these messages.
    lost: Option<(vitals_proto::SessionId, Vec<Vec<u8>>)>,
    /// Timing to use next (doubled after a ping-abuse close).
    next_config: Option<ProtoConfig>,
    connected_at: Option<Instant>,
    /// A TCP connection was made (even if the handshake did not complete).
    established: bool,
    /// The user asked to close: stop.
    closing: bool,
}

struct Task {
    cfg: ClientConfig,
    cmds: mpsc::Receiver<Cmd>,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    events: mpsc::UnboundedSender<ClientEvent>,
    backoff: Backoff,
    /// `flush` callers waiting for everything to be acknowledged.
    flushers: Vec<oneshot::Sender<()>>,
    /// A message waiting for room in the replay buffer.
    blocked: Option<(Bytes, Option<Reply>)>,
    /// Session kept between connections.
    session: Option<Session>,
    /// Messages to re-send in a fresh session after the old one was lost.
    resend: Vec<Vec<u8>>,
    lost_session: Option<vitals_proto::SessionId>,
}

impl Task {
    fn new(
        cfg: ClientConfig,
        cmds: mpsc::Receiver<Cmd>,
        ctl: mpsc::UnboundedReceiver<Ctl>,
        events: mpsc::UnboundedSender<ClientEvent>,
    ) -> Task {
        Task {
            backoff: Backoff::new(cfg.backoff),
            cfg,
            cmds,
            ctl,
            flushers: Vec::new(),
            events,
            blocked: None,
            session: None,
            resend: Vec::new(),
            lost_session: None,
        }
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    async fn run(mut self) {
        loop {
            let stream = match tokio::time::timeout(
                self.cfg.connect_timeout,
                connect(self.cfg.server, self.cfg.bind),
            )
            .await
            {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    tracing::debug!(server = %self.cfg.server, error = %e, "connect failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(server = %self.cfg.server, "connect timed out");
                    None
                }
            };
            let ended = match stream {
                Some(stream) => {
                    let span = tracing::debug_span!(
                        "vitals_client",
                        server = %self.cfg.server,
                        session = ?self.session.as_ref().map(|s| s.id())
                    );
                    self.run_connection(stream).instrument(span).await
                }
                None => Ended {
                    reason: DisconnectReason::Io("connect failed".into()),
                    session: None,
                    lost: None,
                    next_config: None,
                    connected_at: None,
                    established: false,
                    closing: false,
                },
            };
            if ended.established {
                self.emit(ClientEvent::Dead {
                    reason: ended.reason.clone(),
                });
                m::client_disconnect(&ended.reason);
            }
            if let Some(s) = ended.session {
                self.session = Some(s);
            }
            if let Some((id, msgs)) = ended.lost {
                self.session = None;
                self.lost_session = Some(id);
                self.resend = msgs;
            }
            if let Some(cfg) = ended.next_config {
                tracing::info!(interval = ?cfg.liveness.interval, "server said we ping too often; backing off the interval");
                self.cfg.proto = cfg;
            }
            // A refused authentication token will be refused again: stop rather than retry.
            let auth_failed = ended.reason == DisconnectReason::AuthFailed;
            if ended.closing || !self.cfg.reconnect || auth_failed {
                self.fail_blocked();
                self.emit(ClientEvent::Closed {
                    reason: ended.reason,
                });
                return;
            }
            let now = Instant::now();
            if let Some(at) = ended.connected_at {
                self.backoff.connection_ended(at, now);
            }
            let delay = self.backoff.next_delay();
            metrics::counter!(m::RECONNECTS).increment(1);
            self.emit(ClientEvent::Reconnecting {
                attempt: self.backoff.attempt(),
                delay,
            });
            if self.wait_offline(delay).await {
                self.fail_blocked();
                self.emit(ClientEvent::Closed {
                    reason: DisconnectReason::LocalClose {
                        code: CloseCode::Normal,
                        reason: "client closed".into(),
                    },
                });
                return;
            }
        }
    }

    /// Hands a message to the core if it has room for it now; keeps it as `blocked` otherwise.
    fn offer(&mut self, proto: &mut Connection, payload: Bytes, done: Option<Reply>) {
        match proto.room_for(payload.len()) {
            Room::Now => {
                let r = proto
                    .send(Instant::now(), payload)
                    .map(|_| ())
                    .map_err(send_error);
                answer(done, r);
            }
            Room::Later => self.blocked = Some((payload, done)),
            Room::Never => answer(done, Err(Error::Rejected(TOO_LARGE.into()))),
        }
    }

    fn fail_blocked(&mut self) {
        if let Some((_, Some(done))) = self.blocked.take() {
            let _ = done.send(Err(Error::Shutdown));
        }
    }

    /// Sleeps `delay` while still taking messages into the detached session. True if the user closed.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                cmd = self.cmds.recv(), if self.blocked.is_none() => match cmd {
                    Some(Cmd::Send { payload, done }) => match &mut self.session {
                        // Accept into the stored session while it has room.
                        Some(session) if session.has_room(payload.len()) => {
                            let r = session.push(Instant::now(), payload).map(|_| ()).map_err(|e| Error::Backpressure(e.to_string()));
                            answer(done, r);
                        }
                        _ => self.blocked = Some((payload, done)),
                    },
                    None => return true,
                },
                ctl = self.ctl.recv() => match ctl {
                    Some(Ctl::Close(done)) => { let _ = done.send(()); return true; }
                    Some(Ctl::Flush(done)) => self.flushers.push(done),
                    Some(Ctl::Ping) => {}
                    None => return true,
                },
            }
        }
    }

    /// Drives one connection until it ends.
    async fn run_connection(&mut self, stream: TcpStream) -> Ended {
        let now = Instant::now();
        let timeout = match self.cfg.codec {
            Codec::Binary => self.cfg.proto.liveness.timeout,
            Codec::Json => self.cfg.json.liveness.timeout,
        };
        if let Err(e) = SocketOptions::for_timeout(timeout).apply(&stream) {
            tracing::debug!(error = %e, "socket options not applied");
        }
        let tls = match &self.cfg.tls {
            None => None,
            Some(t) => {
                match rustls::ClientConnection::new(Arc::clone(&t.config), t.server_name.clone()) {
                    Ok(mut tls) => {
                        // Back-pressure is the core's replay buffer: rustls only ever holds one batch.
                        tls.set_buffer_limit(None);
                        Some(Box::new(tls))
                    }
                    Err(e) => {
                        // A configuration that cannot make a TLS session will not get better: stop.
                        tracing::error!(error = %e, "TLS client session not created");
                        return Ended {
                            reason: DisconnectReason::Tls(e.to_string()),
                            session: None,
                            lost: None,
                            next_config: None,
                            connected_at: None,
                            established: false,
                            closing: true,
                        };
                    }
                }
            }
        };
        let resuming = self.session.as_ref().map(|s| (s.id(), s.unacked()));
        let mut proto = match (self.cfg.codec, self.session.take()) {
            (Codec::Json, _) => Connection::json(now, Role::Client, self.cfg.json),
            (Codec::Binary, Some(s)) => Connection::client_resume(now, self.cfg.proto, s),
            (Codec::Binary, None) => Connection::client(now, self.cfg.proto),
        };
        let resent = std::mem::take(&mut self.resend);
        let resent_count = resent.len();
        for payload in resent {
            // A new session has the full buffer: these fit, as they fitted in the old one.
            if let Err(e) = proto.send(now, payload) {
                tracing::warn!(error = %e, "could not re-send a message after a lost session");
            }
        }
        let tls_read_buf = if tls.is_some() {
            vec![0; READ_BUF_MIN]
        } else {
            Vec::new()
        };
        let mut conn = ConnIo {
            stream,
            tls,
            buf: tls_read_buf,
            rbuf: BytesMut::new(),
            read_room: READ_BUF_MIN,
            outbox: Outbox::default(),
            out: Vec::new(),
        };
        let mut connected_at = None;
        let mut closing = false;
        if self.cfg.codec == Codec::Json {
            connected_at = Some(now);
            let live = self.cfg.json.liveness;
            self.emit(ClientEvent::Connected {
                session: None,
                interval: live.interval,
                timeout: live.timeout,
            });
        }
        let mut reason: Option<DisconnectReason> = None;
        loop {
            // Room freed by acks: take the blocked message, then whatever else is queued.
            if let Some((payload, done)) = self.blocked.take() {
                self.offer(&mut proto, payload, done);
            }
            while self.blocked.is_none()
                && let Ok(Cmd::Send { payload, done }) = self.cmds.try_recv()
            {
                self.offer(&mut proto, payload, done);
            }
            if let Err(e) = conn.flush(&mut proto) {
                reason = Some(DisconnectReason::from_io(&e));
                break;
            }
            if !self.flushers.is_empty()
                && self.blocked.is_none()
                && self.cmds.is_empty()
                && proto.unacked() == 0
            {
                for done in self.flushers.drain(..) {
                    let _ = done.send(());
                }
            }
            while let Some(event) = proto.poll_event() {
                match event {
                    Event::Connected {
                        session,
                        resumed,
                        interval,
                        timeout,
                    } => {
                        connected_at = Some(Instant::now());
                        self.emit(ClientEvent::Connected {
                            session: Some(session),
                            interval,
                            timeout,
                        });
                        if resumed {
                            let replayed = resuming.map_or(0, |(_, n)| n);
                            metrics::counter!(m::RESUMES).increment(1);
                            metrics::counter!(m::REPLAYED).increment(replayed as u64);
                            self.emit(ClientEvent::Resumed { session, replayed });
                        } else if let Some(lost) = self.lost_session.take() {
                            self.emit(ClientEvent::SessionLost {
                                session: lost,
                                resent: resent_count,
                            });
                        }
                    }
                    Event::Message { payload, .. } => self.emit(ClientEvent::Message(payload)),
                    Event::Rtt(rtt) => {
                        m::rtt(rtt.latest);
                        self.emit(ClientEvent::Rtt(rtt));
                    }
                    Event::Suspect { phi } => self.emit(ClientEvent::Suspect { phi }),
                    Event::Dead { .. } => {
                        reason.get_or_insert(DisconnectReason::SilenceTimeout);
                    }
                    Event::Closed {
                        code,
                        reason: text,
                        by_peer,
                    } => {
                        reason.get_or_insert(DisconnectReason::from_close(code, &text, by_peer));
                    }
                    Event::Stalled { late_by } => {
                        metrics::counter!(m::LOCAL_STALLS).increment(1);
                        tracing::warn!(?late_by, "local stall: timer fired late; no conviction");
                    }
                    Event::PingStrike { .. }
                    | Event::ResumeRequested { .. }
                    | Event::Acked { .. } => {}
                }
            }
            if proto.is_closed() {
                // Best effort: let the CLOSE leave.
                let _ = conn.flush(&mut proto);
                break;
            }
            let deadline = proto.poll_timeout().map(tokio::time::Instant::from_std);
            let interest = if conn.has_pending() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            tokio::select! {
                ready = conn.stream.ready(interest) => {
                    match ready {
                        Ok(r) if r.is_readable() || r.is_read_closed() => {
                            if let Some(r) = conn.read(&mut proto) {
                                reason = Some(r);
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => { reason = Some(DisconnectReason::from_io(&e)); break; }
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    let before = proto.pings_sent();
                    proto.handle_timeout(Instant::now());
                    let pings = proto.pings_sent().wrapping_sub(before);
                    if pings > 0 {
                        metrics::counter!(m::PINGS_SENT).increment(u64::from(pings));
                    }
                }
                cmd = self.cmds.recv(), if self.blocked.is_none() => match cmd {
                    Some(Cmd::Send { payload, done }) => self.offer(&mut proto, payload, done),
                    None => {
                        closing = true;
                        proto.close(CloseCode::Normal, "client dropped");
                        let _ = conn.flush(&mut proto);
                    }
                },
                ctl = self.ctl.recv() => match ctl {
                    Some(Ctl::Close(done)) => {
                        closing = true;
                        proto.close(CloseCode::Normal, "client closed");
                        let _ = conn.flush(&mut proto);
                        let _ = done.send(());
                    }
                    Some(Ctl::Flush(done)) => self.flushers.push(done),
                    Some(Ctl::Ping) => {
                        proto.ping_now(Instant::now());
                    }
                    None => {
                        closing = true;
                        proto.close(CloseCode::Normal, "client dropped");
                        let _ = conn.flush(&mut proto);
                    }
                },
            }
        }
        // Messages that came with the last read (the one that also saw the EOF or the reset) were
        // accepted by the core, which will tell the server so when it resumes: hand them to the
        // application now, or they would be lost.
        while let Some(event) = proto.poll_event() {
            if let Event::Message { payload, .. } = event {
                self.emit(ClientEvent::Message(payload));
            }
        }
        let now = Instant::now();
        let reason = reason.unwrap_or(DisconnectReason::Eof);
        let next_config = match &reason {
            DisconnectReason::PingAbuse => proto.reconnect_config(),
            _ => None,
        };
        // The server refused the session, or this side found the server's state behind its own.
        let session_gone = matches!(
            &reason,
            DisconnectReason::PeerClosed {
                code: CloseCode::UnknownSession | CloseCode::BadToken | CloseCode::SessionExpired,
                ..
            } | DisconnectReason::LocalClose {
                code: CloseCode::UnknownSession,
                ..
            }
        );
        let taken = proto.take_session(now);
        let (session, lost) = match taken {
            Some(s) if session_gone => {
                let id = s.id();
                (None, Some((id, s.into_unacked())))
            }
            other => (other, None),
        };
        tracing::debug!(reason = reason.label(), "connection ended");
        Ended {
            reason,
            session,
            lost,
            next_config,
            connected_at,
            established: true,
            closing,
        }
    }
}

/// Connects to `server`, from `bind` if given.
async fn connect(server: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(ip) = bind else {
        return TcpStream::connect(server).await;
    };
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(server).await
}

fn send_error(e: SendError) -> Error {
    match e {
        SendError::Backpressure(b) => Error::Backpressure(b.to_string()),
        other => Error::Rejected(other.to_string()),
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The socket side of one client connection.
struct ConnIo {
    stream: TcpStream,
    /// TLS between the socket and the core, when configured.
    tls: Option<Box<rustls::ClientConnection>>,
    /// TLS: the read buffer (ciphertext).
    buf: Vec<u8>,
    /// Plaintext: the input buffer (see `read_plain`).
    rbuf: BytesMut,
    /// Plaintext: room to keep in `rbuf` for one read.
    read_room: usize,
    /// Plaintext output waiting for the socket (DATA chunks uncopied, written with `writev`).
    outbox: Outbox,
    /// TLS: the core's output before encryption.
    out: Vec<u8>,
}

impl ConnIo {
    fn has_pending(&self) -> bool {
        match &self.tls {
            Some(tls) => tls.wants_write(),
            None => !self.outbox.is_empty(),
        }
    }

    /// Writes what the core has to send, as far as the socket takes it.
    fn flush(&mut self, proto: &mut Connection) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            return flush_tls(tls, &self.stream, proto, &mut self.out);
        }
        loop {
            if self.outbox.is_empty() && self.outbox.fill(proto, OUT_BATCH) == 0 {
                return Ok(());
            }
            let stream = &self.stream;
            let n = self
                .outbox
                .write_with(|iov| stream.try_write_vectored(iov))?;
            metrics::counter!(m::BYTES_OUT).increment(n as u64);
            if !self.outbox.is_empty() {
                // The socket is full.
                return Ok(());
            }
        }
    }

    /// Reads what is there into the core. `Some(reason)` when the connection ended.
    fn read(&mut self, proto: &mut Connection) -> Option<DisconnectReason> {
        if self.tls.is_none() {
            return self.read_plain(proto);
        }
        loop {
            match self.stream.try_read(&mut self.buf) {
                Ok(0) => return Some(DisconnectReason::Eof),
                Ok(n) => {
                    metrics::counter!(m::BYTES_IN).increment(n as u64);
                    let now = Instant::now();
                    // Only what reaches the core is a sign of life: with TLS, decrypted bytes.
                    match self.tls.as_mut() {
                        None => proto.handle_input(now, &self.buf[..n]),
                        Some(tls) => match feed(tls, &self.buf[..n], |plain| {
                            proto.handle_input(now, plain);
                            !proto.is_closed()
                        }) {
                            Fed::Open | Fed::Stopped => {}
                            Fed::PeerClosed => return Some(DisconnectReason::Eof),
                            Fed::Failed(detail) => {
                                tracing::debug!(error = %detail, "TLS failure");
                                // Best effort: the alert rustls queued tells the server why.
                                let _ = write_out(tls, &mut TryWriter(&self.stream));
                                return Some(DisconnectReason::Tls(detail));
                            }
                        },
                    }
                    if n == self.buf.len() && n < TLS_READ_BUF_MAX {
                        self.buf.resize(n * 2, 0);
                    }
                    if proto.is_closed() {
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(DisconnectReason::from_io(&e)),
            }
        }
    }
}

impl ConnIo {
    /// Plaintext: reads into `rbuf`, the connection's input buffer, which keeps an incomplete frame
    /// in place and shares large DATA chunks with the application (no copy); its room doubles
    /// while reads fill it, from [`READ_BUF_MIN`] up to [`READ_BUF_MAX`].
    fn read_plain(&mut self, proto: &mut Connection) -> Option<DisconnectReason> {
        loop {
            if self.rbuf.capacity() - self.rbuf.len() < self.read_room {
                self.rbuf.reserve(self.read_room);
            }
            let room = self.rbuf.capacity() - self.rbuf.len();
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Some(DisconnectReason::Eof),
                Ok(n) => {
                    metrics::counter!(m::BYTES_IN).increment(n as u64);
                    proto.handle_input_buf(Instant::now(), &mut self.rbuf);
                    if n == room && self.read_room < READ_BUF_MAX {
                        self.read_room = (self.read_room * 2).min(READ_BUF_MAX);
                    }
                    if proto.is_closed() {
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(DisconnectReason::from_io(&e)),
            }
        }
    }
}

/// Writes a TLS connection's output: the records rustls holds first, then — only once those have left —
/// more of the core's output, encrypted. Once the core is closed and drained, `close_notify` follows.
fn flush_tls(
    tls: &mut rustls::ClientConnection,
    stream: &TcpStream,
    proto: &mut Connection,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        let n = write_out(tls, &mut TryWriter(stream))?;
        metrics::counter!(m::BYTES_OUT).increment(n as u64);
        if tls.wants_write() || !crate::tls::encrypt_next(tls, proto, out, OUT_BATCH)? {
            return Ok(());
        }
    }
}

/// `io::Write` over a tokio socket's non-blocking `try_write` (`WouldBlock` when the socket is full),
/// for rustls' `write_tls`.
struct TryWriter<'a>(&'a TcpStream);

impl io::Write for TryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
