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
    /// An answer of the fleet's store task (docs/FLEET.md).
    Fleet(crate::fleet::task::Reply),
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
    /// Read and written through [`route`](Self::route) and [`set_route`](Self::set_route).
    routes: HashMap<SessionId, Route>,
    /// Bits of a generation that name its loop (see [`Route`]).
    shard_mask: u32,
    /// Sessions whose route points at a closed connection (parked in the store).
    pub(crate) parked: HashSet<SessionId>,
}

/// A [`ConnId`] in 8 bytes (a route entry is then 16 bytes, not 24: one per session): slab index
/// and generation. The loop is not stored: each loop hands out generations whose low bits are its
/// shard (see [`generation_stride`]), so the generation names it.
#[derive(Debug, Clone, Copy)]
struct Route(u64);

/// The step between the generations one loop hands out: the smallest power of two ≥ `loops`. Loop
/// `shard` hands out `shard`, `shard + stride`, … (wrapping, which keeps the low bits), so
/// `generation & (stride - 1)` is its shard.
pub(crate) fn generation_stride(loops: usize) -> u32 {
    u32::try_from(loops.max(1).next_power_of_two()).unwrap_or(1 << 16)
}

impl Sessions {
    /// An empty table over `store`, for a server of `loops` event loops.
    pub(crate) fn new(store: Box<dyn SessionStore + Send>, loops: usize) -> Sessions {
        Sessions {
            store,
            routes: HashMap::new(),
            shard_mask: generation_stride(loops) - 1,
            parked: HashSet::new(),
        }
    }

    /// The step between the generations one loop hands out (see [`generation_stride`]).
    pub(crate) fn generation_stride(&self) -> u32 {
        self.shard_mask + 1
    }

    /// Where sends for `session` go, if anywhere.
    pub(crate) fn route(&self, session: SessionId) -> Option<ConnId> {
        self.routes.get(&session).map(|r| ConnId {
            shard: (r.0 as u32 & self.shard_mask) as u16,
            index: (r.0 >> 32) as u32,
            generation: r.0 as u32,
        })
    }

    /// Routes `session` to `conn`.
    pub(crate) fn set_route(&mut self, session: SessionId, conn: ConnId) {
        debug_assert_eq!(conn.generation & self.shard_mask, u32::from(conn.shard));
        let packed = (u64::from(conn.index) << 32) | u64::from(conn.generation);
        self.routes.insert(session, Route(packed));
    }

    /// Forgets where `session` goes.
    pub(crate) fn remove_route(&mut self, session: SessionId) {
        self.routes.remove(&session);
    }

    /// After the store purged sessions: forgets the parked ones it no longer holds, and their routes.
    pub(crate) fn forget_purged(&mut self) {
        let Sessions {
            store,
            routes,
            parked,
            ..
        } = self;
        parked.retain(|sid| {
            let keep = store.contains(*sid);
            if !keep {
                routes.remove(sid);
            }
            keep
        });
    }
}

/// Shared by all loops of one server and its handles.
pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    /// When the server started: connections keep instants as nanoseconds since it (8 bytes each).
    pub(crate) origin: Instant,
    pub(crate) open: AtomicUsize,
    pub(crate) sessions: Mutex<Sessions>,
    pub(crate) remotes: Vec<Remote>,
    /// The fleet's store task, when sessions live in Redis (docs/FLEET.md).
    pub(crate) fleet: Option<crate::fleet::task::FleetHandle>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use vitals_proto::MemoryStore;

    #[test]
    fn a_route_keeps_every_field_of_the_connection_id() {
        for loops in [1usize, 2, 3, 8, 100] {
            let stride = generation_stride(loops);
            let mut sessions = Sessions::new(Box::new(MemoryStore::default()), loops);
            for shard in 0..loops as u16 {
                // A loop's generations, including ones that wrapped around.
                for generation in [
                    u32::from(shard),
                    u32::from(shard) + 7 * stride,
                    u32::from(shard).wrapping_sub(stride),
                ] {
                    let id = ConnId {
                        shard,
                        index: 0xdead_beef,
                        generation,
                    };
                    let sid = SessionId(u64::from(generation) ^ 0x5555);
                    sessions.set_route(sid, id);
                    assert_eq!(sessions.route(sid), Some(id), "loops {loops}");
                    sessions.remove_route(sid);
                    assert_eq!(sessions.route(sid), None);
                }
            }
        }
    }
}
