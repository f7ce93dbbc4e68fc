//! Where a server keeps detached, resumable sessions: a small trait and an in-memory store.
//!
//! The in-memory store lives and dies with the process: after a server restart every resume
//! is answered with `UnknownSession` (see docs/PROTOCOL.md, "Sessions and restarts"). A
//! shared engine (e.g. Redis) can implement the trait so any server can resume any session.

use crate::session::{Session, SessionId};
use std::collections::HashMap;
use std::time::Instant;

/// Storage of detached sessions, keyed by id.
pub trait SessionStore {
    /// Remove and return the session `id`, if stored.
    fn take(&mut self, id: SessionId) -> Option<Session>;
    /// Store a detached session (replacing one with the same id).
    fn put(&mut self, session: Session);
    /// Drop every session expired at `now`; returns how many were dropped.
    fn purge_expired(&mut self, now: Instant) -> usize;
    /// Sessions held.
    fn len(&self) -> usize;
    /// True if session `id` is held.
    fn contains(&self, id: SessionId) -> bool;
    /// True if no session is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The default store: a `HashMap` in this process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: HashMap<SessionId, Session>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if no session is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl SessionStore for MemoryStore {
    fn take(&mut self, id: SessionId) -> Option<Session> {
        self.map.remove(&id)
    }

    fn put(&mut self, session: Session) {
        self.map.insert(session.id(), session);
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn contains(&self, id: SessionId) -> bool {
        self.map.contains_key(&id)
    }

    fn purge_expired(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        self.map.retain(|_, s| !s.is_expired(now));
        before - self.map.len()
    }
}
