//! The server: event-loop threads (see [`engine`]) behind a tokio-facing handle.
//!
//! [`Server::bind`] starts `loops` threads, each with its own SO_REUSEPORT listener on the same address,
//! its own slab of connections and its own timing wheel. The application receives [`ServerEvent`]s from
//! [`Server::next_event`] and sends through a [`ServerHandle`] (a command queue plus the loop's waker).
//!
//! Sessions: when a connection ends without a final CLOSE, its session (with everything not yet
//! acknowledged) goes to the session store, where a reconnecting client resumes it — on any loop. A
//! message sent with [`ServerHandle::send_to_session`] while the client is away is queued in the stored
//! session and delivered on resume.
//!
//! TLS: with [`ServerConfig::tls`](crate::ServerConfig::tls) set, every connection carries a boxed
//! rustls server state machine between its socket and its protocol core (see [`engine`]).

pub(crate) mod conn;
pub(crate) mod engine;
pub(crate) mod shared;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Poll;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use vitals_proto::{Bytes, CloseCode, MemoryStore, SessionId};

use crate::config::ServerConfig;
use crate::error::Error;
use crate::event::{ConnId, ServerEvent};
use crate::fleet::Store;
use crate::fleet::task::{self as fleet_task, Op};
use engine::{Loop, WAKER};
use shared::{Command, Remote, Sessions, Shared};

/// A running server. Drop it (or call [`shutdown`](Self::shutdown)) to stop.
pub struct Server {
    handle: ServerHandle,
    events: UnboundedReceiver<ServerEvent>,
    threads: Vec<JoinHandle<()>>,
    /// The fleet's store task (docs/FLEET.md), joined after the loops at shutdown.
    fleet_thread: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

/// A cloneable handle for sending to connections and sessions of a [`Server`].
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("open", &self.shared.open.load(Ordering::Relaxed))
            .finish()
    }
}

impl Server {
    /// Binds and starts the event loops, with the in-memory session store.
    pub fn bind(cfg: ServerConfig) -> Result<Server, Error> {
        Self::bind_with_store(cfg, MemoryStore::new())
    }

    /// Binds and starts the event loops with a session store of your choice: one in this process
    /// (a `Box<dyn SessionStore + Send>`, e.g. [`MemoryStore`]), or Redis shared by a fleet
    /// ([`RedisStore`](crate::RedisStore), docs/FLEET.md), which makes every message committed to
    /// Redis before it is acknowledged and written to Redis before it counts as sent.
    pub fn bind_with_store(
        mut cfg: ServerConfig,
        store: impl Into<Store>,
    ) -> Result<Server, Error> {
        validate(&cfg)?;
        let (store, fleet) = match store.into() {
            Store::Local(s) => (s, None),
            Store::Redis(redis) => {
                if cfg.codec != crate::config::Codec::Binary {
                    return Err(Error::Config(
                        "a fleet store needs the binary codec (the JSON codec has no sessions)"
                            .into(),
                    ));
                }
                cfg.proto.session.commit_acks = true;
                let (handle, starter) = fleet_task::channel(*redis);
                let empty: Box<dyn vitals_proto::SessionStore + Send> =
                    Box::new(MemoryStore::new());
                (empty, Some((handle, starter)))
            }
        };
        let (fleet, starter) = match fleet {
            Some((h, s)) => (Some(h), Some(s)),
            None => (None, None),
        };
        let loops = cfg.loops.clamp(1, u16::MAX as usize);
        // The first listener fixes the port (which may have been 0); the others share it.
        let mut addr = cfg.listen;
        let mut parts = Vec::with_capacity(loops);
        for _ in 0..loops {
            let listener = reuseport_listener(addr)?;
            addr = listener.local_addr()?;
            let poll = Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = std::sync::mpsc::channel();
            parts.push((listener, poll, rx, Remote { tx, waker }));
        }
        let (events_tx, events) = unbounded_channel();
        let mut remotes = Vec::with_capacity(loops);
        let mut rest = Vec::with_capacity(loops);
        for (listener, poll, rx, remote) in parts {
            remotes.push(remote);
            rest.push((listener, poll, rx));
        }
        let shared = Arc::new(Shared {
            cfg,
            origin: std::time::Instant::now(),
            open: AtomicUsize::new(0),
            sessions: Mutex::new(Sessions::new(store, loops)),
            remotes,
            fleet,
        });
        let fleet_thread = match starter {
            Some(s) => Some(s.spawn(
                Arc::downgrade(&shared),
                events_tx.clone(),
                shared.cfg.proto.session.ttl,
            )?),
            None => None,
        };
        let mut threads = Vec::with_capacity(loops);
        for (shard, (listener, poll, rx)) in rest.into_iter().enumerate() {
            let event_loop = Loop::new(
                shard as u16,
                poll,
                listener,
                rx,
                Arc::clone(&shared),
                events_tx.clone(),
            )?;
            let thread = std::thread::Builder::new()
                .name(format!("vitals-loop-{shard}"))
                .spawn(move || event_loop.run())?;
            threads.push(thread);
        }
        tracing::info!(%addr, loops, codec = ?shared.cfg.codec, tls = shared.cfg.tls.is_some(), "vitals server listening");
        Ok(Server {
            handle: ServerHandle { shared },
            events,
            threads,
            fleet_thread,
            local_addr: addr,
        })
    }

    /// The address the server listens on (with the actual port if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for sending.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// The next event; `None` once every loop has exited.
    pub async fn next_event(&mut self) -> Option<ServerEvent> {
        self.events.recv().await
    }

    /// The next event if one is ready.
    pub fn try_next_event(&mut self) -> Option<ServerEvent> {
        self.events.try_recv().ok()
    }

    /// Graceful shutdown: stop accepting, send CLOSE (`Shutdown`) to every connection, give queued bytes
    /// up to `drain` to leave, then close what remains. Events of the closing connections stay readable
    /// from [`next_event`](Self::next_event) on the returned receiver.
    pub async fn shutdown(mut self, drain: Duration) -> UnboundedReceiver<ServerEvent> {
        let deadline = Instant::now() + drain;
        for remote in &self.handle.shared.remotes {
            remote.send(Command::Shutdown { deadline });
        }
        let threads = std::mem::take(&mut self.threads);
        let fleet_thread = self.fleet_thread.take();
        let shared = Arc::clone(&self.handle.shared);
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            // The loops have parked every session they closed: let the store write that (and what
            // else is queued) before the process may exit.
            if let (Some(fleet), Some(t)) = (&shared.fleet, fleet_thread) {
                fleet.op(Op::Stop);
                let _ = t.join();
            }
        });
        let _ = joined.await;
        let (_, empty) = unbounded_channel();
        std::mem::replace(&mut self.events, empty)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Loops exit when they see the shutdown; do not block the dropping thread on them.
        let deadline = Instant::now();
        for remote in &self.handle.shared.remotes {
            remote.send(Command::Shutdown { deadline });
        }
        if let Some(fleet) = &self.handle.shared.fleet {
            fleet.op(Op::Stop);
        }
    }
}

impl ServerHandle {
    /// Queues `payload` on connection `conn`. If the message cannot be queued (the connection closed
    /// meanwhile, or its send buffer is full), it comes back as [`ServerEvent::SendRefused`].
    ///
    /// Takes a `Vec<u8>` or a [`Bytes`](crate::Bytes) without copying it.
    pub fn send(&self, conn: ConnId, payload: impl Into<Bytes>) -> Result<(), Error> {
        let cmd = Command::Send {
            conn,
            session: None,
            payload: payload.into(),
        };
        if self.shared.to_loop_of(conn, cmd) {
            Ok(())
        } else {
            Err(Error::Shutdown)
        }
    }

    /// Queues `payload` for session `session`: on its connection if attached, else in the stored session
    /// (delivered when the client resumes). If the connection ends before the message is queued, it
    /// follows the session the same way. Errors: [`Error::NotFound`] for an unknown session,
    /// [`Error::Backpressure`] when a detached session's replay buffer is full; a message that cannot
    /// be queued later comes back as [`ServerEvent::SendRefused`].
    pub fn send_to_session(
        &self,
        session: SessionId,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let payload = payload.into();
        if let Some(fleet) = &self.shared.fleet {
            // Written to Redis first, wherever the session is; a refusal comes back as
            // `ServerEvent::SessionSendRefused`.
            let op = Op::Publish {
                sid: session,
                payload,
                reply: None,
            };
            return if fleet.op(op) {
                Ok(())
            } else {
                Err(Error::Shutdown)
            };
        }
        let mut sessions = self.shared.sessions();
        if let Some(conn) = sessions.route(session) {
            drop(sessions);
            let cmd = Command::Send {
                conn,
                session: Some(session),
                payload,
            };
            return if self.shared.to_loop_of(conn, cmd) {
                Ok(())
            } else {
                Err(Error::Shutdown)
            };
        }
        let mut stored = sessions.store.take(session).ok_or(Error::NotFound)?;
        let result = stored
            .push(Instant::now(), payload)
            .map(|_| ())
            .map_err(|e| Error::Backpressure(e.to_string()));
        sessions.store.put(stored);
        result
    }

    /// Like [`send_to_session`](Self::send_to_session), but returns once the message counts as
    /// sent: in a fleet, once Redis holds it (the client gets it wherever it is connected, or on
    /// its resume); with a local store, once it is queued. Errors: [`Error::NotFound`] (unknown or
    /// expired session), [`Error::Backpressure`] (its unacknowledged messages are at the limit),
    /// [`Error::StoreUnavailable`] (Redis did not take it within `FleetConfig::send_wait`).
    pub async fn send_to_session_written(
        &self,
        session: SessionId,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let Some(fleet) = &self.shared.fleet else {
            return self.send_to_session(session, payload);
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let op = Op::Publish {
            sid: session,
            payload: payload.into(),
            reply: Some(tx),
        };
        if !fleet.op(op) {
            return Err(Error::Shutdown);
        }
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// In a fleet: this node's id and whether its last call reached Redis.
    pub fn fleet_status(&self) -> Option<(&str, bool)> {
        self.shared
            .fleet
            .as_ref()
            .map(|f| (f.cfg.node.as_str(), f.is_up()))
    }

    /// Closes connection `conn` with a CLOSE frame (`Normal`) and `reason`.
    pub fn close(&self, conn: ConnId, reason: &str) -> Result<(), Error> {
        let cmd = Command::Close {
            conn,
            code: CloseCode::Normal,
            reason: reason.to_string(),
        };
        if self.shared.to_loop_of(conn, cmd) {
            Ok(())
        } else {
            Err(Error::Shutdown)
        }
    }

    /// Drops connection `conn` without a CLOSE frame, keeping its session: the client sees the
    /// connection break, reconnects and resumes (nothing lost). For rebalancing and fault drills.
    ///
    /// The drop happens on the connection's event loop, after this returns: `Ok(())` means the
    /// request was queued, not that a connection was dropped. The confirmation is the connection's
    /// [`ServerEvent::Closed`]: every connection reported as `Connected` ends with exactly one, and
    /// its reason is [`DisconnectReason::Disconnected`](crate::DisconnectReason::Disconnected) when
    /// this call dropped it. A connection that had already ended, or ends first for another reason,
    /// is left alone (its `Closed` carries that other reason; nothing else is reported), and a
    /// `conn` that was never a connection of this server is ignored.
    ///
    /// Errors: [`Error::Shutdown`] when the server's loops have stopped.
    pub fn disconnect(&self, conn: ConnId) -> Result<(), Error> {
        if self.shared.to_loop_of(conn, Command::Disconnect { conn }) {
            Ok(())
        } else {
            Err(Error::Shutdown)
        }
    }

    /// Sessions parked in the session store (detached, waiting for a resume or their expiry).
    pub fn parked_sessions(&self) -> usize {
        self.shared.sessions().store.len()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }
}

/// Rejects configurations that cannot work, saying what to change.
fn validate(cfg: &ServerConfig) -> Result<(), Error> {
    let live = cfg.liveness();
    if live.interval.is_zero() {
        return Err(Error::Config("interval must be greater than zero".into()));
    }
    if live.timeout <= live.interval {
        return Err(Error::Config(format!(
            "timeout ({:?}) must be greater than interval ({:?})",
            live.timeout, live.interval
        )));
    }
    if cfg.max_connections == 0 {
        return Err(Error::Config("max_connections must be at least 1".into()));
    }
    if cfg.tick.is_zero() {
        return Err(Error::Config("tick must be greater than zero".into()));
    }
    if let Some(tls) = &cfg.tls {
        // Fail at bind, not at each accept, when the rustls configuration cannot serve.
        rustls::ServerConnection::new(Arc::clone(tls))
            .map_err(|e| Error::Tls(format!("the server TLS configuration is unusable: {e}")))?;
    }
    Ok(())
}

/// A non-blocking listener with SO_REUSEPORT (so several loops, or processes, share the port).
fn reuseport_listener(addr: SocketAddr) -> Result<mio::net::TcpListener, Error> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}
