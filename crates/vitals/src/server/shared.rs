//! State the event loops and the application handle share: the session table, the connection count,
//! and a way to reach each loop (command queue + waker).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use vitals_proto::{CloseCode, SessionId, SessionStore};

use crate::config::ServerConfig;
use crate::event::ConnId;

/// A request from the application (or another loop) to one event loop.
#[derive(Debug)]
pub(crate) enum Command {
    /// Queue a message on a connection (following `session` elsewhere if the connection is gone).
    Send {
        conn: ConnId,
        session: Option<SessionId>,
        payload: vitals_proto::Bytes,
    },
    /// Close a connection with a code and reason.
    Close {
        conn: ConnId,
        code: CloseCode,
        reason: String,
    },
    /// Drop the TCP connection without a CLOSE, keeping its session for a resume.
    Disconnect { conn: ConnId },
    /// A connection asks to resume a session whose home is this loop: take it over (register its
    /// socket here) and resolve the resume here, so that every send for a session goes through one
    /// loop's queue, in order.
    Adopt {
        conn: Box<super::conn::Conn>,
        session: SessionId,
    },
    /// Stop accepting, close every connection with `Shutdown`, drain until `deadline`, exit.
    Shutdown { deadline: Instant },
}

/// How to reach one event loop.
#[derive(Debug)]
pub(crate) struct Remote {
    pub(crate) tx: std::sync::mpsc::Sender<Command>,
    pub(crate) waker: Arc<mio::Waker>,
}

impl Remote {
    /// Queues a command and wakes the loop. False if the loop has exited.
    pub(crate) fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok() && self.waker.wake().is_ok()
    }
}

/// Detached sessions and where attached ones live.
pub(crate) struct Sessions {
    pub(crate) store: Box<dyn SessionStore + Send>,
    /// Where sends for a session go: its live connection, or — while it is parked — the connection it
    /// last had, whose loop (the session's home) queues them into the parked session in order.
    pub(crate) routes: HashMap<SessionId, ConnId>,
    /// Sessions whose route points at a closed connection (parked in the store).
    pub(crate) parked: HashSet<SessionId>,
}

/// Shared by all loops of one server and its handles.
pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    pub(crate) open: AtomicUsize,
    pub(crate) sessions: Mutex<Sessions>,
    pub(crate) remotes: Vec<Remote>,
}

impl Shared {
    pub(crate) fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a command to the loop that owns `conn`.
    pub(crate) fn to_loop_of(&self, conn: ConnId, cmd: Command) -> bool {
        self.remotes
            .get(conn.shard as usize)
            .is_some_and(|r| r.send(cmd))
    }
}
