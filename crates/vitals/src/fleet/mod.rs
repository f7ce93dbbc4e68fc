//! A fleet: servers that share sessions, presence and messages through Redis (docs/FLEET.md).
//!
//! - [`RedisStore`]: what [`Server::bind_with_store`](crate::Server::bind_with_store) takes to join
//!   a fleet (the Redis URL and the [`FleetConfig`]);
//! - [`FleetKeys`]: the key layout, for backends that read presence, events and messages;
//! - [`Backend`]: a small async client for such a backend (send to a session, read presence);
//! - `task`: the node's store task — its own thread and tokio runtime, batches of Redis function
//!   calls, the doorbell subscription. The event loops never wait on it: they queue operations and
//!   it answers through their command queues.
//!
//! The Redis side is a function library (`vitals.lua`, loaded with `FUNCTION LOAD REPLACE` on
//! every connect): each function touches one session and its partition, fenced by the session's
//! epoch.

mod backend;
mod keys;
pub(crate) mod task;

use std::time::Duration;

pub use backend::{Backend, Presence};
pub use keys::FleetKeys;
use vitals_proto::{MemoryStore, SessionStore};

use crate::error::Error;

/// The Redis function library every node loads (`#!lua name=vitals`).
pub const FUNCTIONS: &str = include_str!("vitals.lua");

/// How a node takes part in a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// This node's id, unique in the fleet (default: host name, process id and a random suffix).
    pub node: String,
    /// Prefix of every key and channel (default `vitals`): several fleets can share one Redis.
    pub prefix: String,
    /// Partitions sessions are spread over (default 16): each has its own inbound and event stream
    /// and its own Redis Cluster slot. Every node of a fleet must use the same value.
    pub partitions: u16,
    /// How long a resume waits for Redis before the client is told `Unavailable` (it keeps its
    /// session and retries). Default 5 s.
    pub resume_wait: Duration,
    /// How long a send to a session waits for Redis before it is refused. Default 5 s.
    pub send_wait: Duration,
    /// Entries kept per partition's inbound stream (approximate `MAXLEN ~`; default 1,000,000): a
    /// backend must consume within that window.
    pub inbound_maxlen: u64,
    /// How long Redis keeps an attached session whose node stopped refreshing it (a crashed
    /// node's sessions expire after this). Each node refreshes its sessions every third of it.
    /// Default 60 s.
    pub lease: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            node: default_node_id(),
            prefix: "vitals".into(),
            partitions: 16,
            resume_wait: Duration::from_secs(5),
            send_wait: Duration::from_secs(5),
            inbound_maxlen: 1_000_000,
            lease: Duration::from_secs(60),
        }
    }
}

impl FleetConfig {
    /// The key names this configuration uses.
    pub fn keys(&self) -> FleetKeys {
        FleetKeys::new(&self.prefix, self.partitions)
    }
}

/// `host-pid-xxxx`: unique per process (the suffix tells apart a restarted process that got the
/// same pid).
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    let mut r = [0u8; 2];
    let _ = getrandom::fill(&mut r);
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        u16::from_le_bytes(r)
    )
}

/// Sessions kept in Redis, shared by every server of a fleet (docs/FLEET.md).
#[derive(Debug, Clone)]
pub struct RedisStore {
    pub(crate) client: redis::Client,
    pub(crate) cfg: FleetConfig,
}

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`, `redis+unix:///path`) with the default
    /// [`FleetConfig`]. Only checks the URL: Redis is reached when the server starts, and an
    /// outage then is handled as any other (docs/FLEET.md).
    pub fn new(url: &str) -> Result<RedisStore, Error> {
        Self::with_config(url, FleetConfig::default())
    }

    /// A store at `url` with `cfg`.
    pub fn with_config(url: &str, cfg: FleetConfig) -> Result<RedisStore, Error> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("bad Redis URL {url:?}: {e}")))?;
        if cfg.node.is_empty() || cfg.node.contains(char::is_whitespace) {
            return Err(Error::Config(format!(
                "fleet node id {:?} must be non-empty and have no spaces",
                cfg.node
            )));
        }
        Ok(RedisStore { client, cfg })
    }

    /// Its configuration.
    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }
}

/// Where a server keeps sessions: in this process ([`SessionStore`], e.g. [`MemoryStore`]), or in
/// Redis, shared by a fleet ([`RedisStore`]).
pub enum Store {
    /// In this process, behind the [`SessionStore`] trait.
    Local(Box<dyn SessionStore + Send>),
    /// In Redis.
    Redis(Box<RedisStore>),
}

impl From<Box<dyn SessionStore + Send>> for Store {
    fn from(s: Box<dyn SessionStore + Send>) -> Store {
        Store::Local(s)
    }
}

impl<S: SessionStore + Send + 'static> From<Box<S>> for Store {
    fn from(s: Box<S>) -> Store {
        Store::Local(s)
    }
}

impl From<MemoryStore> for Store {
    fn from(s: MemoryStore) -> Store {
        Store::Local(Box::new(s))
    }
}

impl From<RedisStore> for Store {
    fn from(s: RedisStore) -> Store {
        Store::Redis(Box::new(s))
    }
}
