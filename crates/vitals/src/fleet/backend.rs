//! A backend's view of a fleet: send to a session wherever its client is, and read presence —
//! without linking a server. (Messages and events are plain Redis streams: read them with
//! `XREADGROUP` on [`FleetKeys::inbound`] and [`FleetKeys::events`].)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::MultiplexedConnection;
use vitals_proto::SessionId;

use super::{FUNCTIONS, FleetConfig, FleetKeys};
use crate::error::Error;

/// Where a session is, as Redis has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The node that owns it (its client is connected there, or was last).
    pub owner: String,
    /// True while its client is connected; false while it is parked, waiting for a resume.
    pub live: bool,
    /// Since when (ms since the Unix epoch): attached, or parked.
    pub since_ms: u64,
    /// The last RTT its owner reported (µs; 0 before the first report).
    pub rtt_us: u64,
    /// Takeovers so far plus one: the owner's fence.
    pub epoch: u64,
}

/// A connection to a fleet's Redis for a backend.
pub struct Backend {
    conn: MultiplexedConnection,
    keys: FleetKeys,
    channel_prefix: String,
    /// `backend-xxxxxxxx`: this backend's origin for idempotent publishes.
    origin: String,
    counter: AtomicU64,
}

fn store_error(e: redis::RedisError) -> Error {
    Error::StoreUnavailable(e.to_string())
}

impl Backend {
    /// Connects to `url` for the fleet that `cfg` describes (its prefix and partitions), and loads
    /// the function library if Redis does not have it yet.
    pub async fn connect(url: &str, cfg: &FleetConfig) -> Result<Backend, Error> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("bad Redis URL {url:?}: {e}")))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(store_error)?;
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(FUNCTIONS)
            .query_async::<String>(&mut conn)
            .await
            .map_err(store_error)?;
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        let keys = cfg.keys();
        Ok(Backend {
            conn,
            channel_prefix: keys.channel_prefix(),
            keys,
            origin: format!("backend-{:08x}", u32::from_le_bytes(r)),
            counter: AtomicU64::new(0),
        })
    }

    /// The key layout.
    pub fn keys(&self) -> &FleetKeys {
        &self.keys
    }

    /// Sends `payload` to session `session`: written to Redis (so it counts as sent) and delivered
    /// to the client wherever it is connected, or on its resume. Errors: [`Error::NotFound`] for an
    /// unknown or expired session, [`Error::Backpressure`] when the session already holds its
    /// limit of unacknowledged messages, [`Error::StoreUnavailable`] when Redis cannot be reached.
    pub async fn send_to_session(&self, session: SessionId, payload: &[u8]) -> Result<(), Error> {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let k = &self.keys;
        let mut conn = self.conn.clone();
        let answer: Vec<redis::Value> = redis::cmd("FCALL")
            .arg("vitals_publish")
            .arg(2)
            .arg(k.session(session))
            .arg(k.outbound(session))
            .arg(FleetKeys::session_field(session))
            .arg(&self.origin)
            .arg(counter)
            .arg(65_536)
            .arg(&self.channel_prefix)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        match answer.first() {
            Some(redis::Value::BulkString(s)) if s == b"ok" => Ok(()),
            Some(redis::Value::BulkString(s)) if s == b"unknown" => Err(Error::NotFound),
            Some(redis::Value::BulkString(s)) if s == b"full" => Err(Error::Backpressure(
                "session's unacknowledged messages full".into(),
            )),
            other => Err(Error::StoreUnavailable(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Where `session` is, if Redis knows it.
    pub async fn presence(&self, session: SessionId) -> Result<Option<Presence>, Error> {
        let mut conn = self.conn.clone();
        let f: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.session(session))
            .arg(&["owner", "state", "since", "rtt_us", "epoch"])
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        let num = |i: usize| {
            f.get(i)
                .and_then(|v| v.as_deref())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        };
        Ok(f.first().cloned().flatten().map(|owner| Presence {
            owner,
            live: f.get(1).and_then(|v| v.as_deref()) == Some("live"),
            since_ms: num(2),
            rtt_us: num(3),
            epoch: num(4),
        }))
    }

    /// The live sessions of every partition (those whose owner's node is alive: see
    /// [`nodes`](Self::nodes)), with since when (ms since the Unix epoch).
    pub async fn live_sessions(&self) -> Result<Vec<(SessionId, u64)>, Error> {
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        for p in 0..self.keys.partitions() {
            let members: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg(self.keys.live(p))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            out.extend(
                members
                    .into_iter()
                    .filter_map(|(s, t)| FleetKeys::parse_session(&s).map(|s| (s, t))),
            );
        }
        Ok(out)
    }

    /// The fleet's nodes and their last heartbeat (ms since the Unix epoch; every 2 s while alive).
    pub async fn nodes(&self) -> Result<HashMap<String, u64>, Error> {
        let mut conn = self.conn.clone();
        redis::cmd("HGETALL")
            .arg(self.keys.nodes())
            .query_async(&mut conn)
            .await
            .map_err(store_error)
    }
}
