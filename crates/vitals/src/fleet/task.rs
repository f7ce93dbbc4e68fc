//! The node's store task: turns the event loops' operations into batches of Redis function calls,
//! and the answers (and the node's doorbell) into commands for the loops. It runs on its own thread
//! with its own tokio runtime, so that the loops never wait on Redis and the server needs no runtime
//! of the caller's.
//!
//! Order: operations are called in the order they were queued (one pipeline at a time on one
//! connection), so a session's register, commits, acks and park reach Redis in order. A batch that
//! fails (Redis down, timeout) is retried whole, first; every function is idempotent for such a
//! retry (commits skip what is committed, publishes carry a per-node counter). Resumes and sends
//! wait at most their bound (`resume_wait`, `send_wait`), then fail with a typed error.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, oneshot};
use vitals_proto::{Bytes, ResumeToken, SessionError, SessionId};

use super::{FUNCTIONS, FleetConfig, FleetKeys, RedisStore};
use crate::error::Error;
use crate::event::{ConnId, ServerEvent};
use crate::metrics as m;
use crate::server::shared::{Command, Shared};

/// Most function calls in one pipeline.
const MAX_BATCH_CALLS: usize = 512;
/// Most payload bytes in one pipeline (a batch over it closes early).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Outbound messages fetched per call.
const FETCH_COUNT: usize = 512;
/// How long one pipeline may take before the connection is dropped and the batch retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the node writes its heartbeat into the nodes hash.
const NODE_HEARTBEAT: Duration = Duration::from_secs(2);

/// What a loop (or a handle) asks of the store.
#[derive(Debug)]
pub(crate) enum Op {
    /// A new session was confirmed on `conn`.
    Register {
        sid: SessionId,
        token: ResumeToken,
        conn: ConnId,
    },
    /// Message `seq` of `sid` arrived on `conn`: append it to the inbound stream, then report it.
    Commit {
        sid: SessionId,
        conn: ConnId,
        seq: u64,
        payload: Bytes,
    },
    /// A client on `conn` resumes `sid` with `token`, having received our messages below `client_ack`;
    /// it waits at most `wait` (then it is told `Unavailable`).
    Takeover {
        sid: SessionId,
        token: ResumeToken,
        client_ack: u64,
        conn: ConnId,
        wait: Duration,
    },
    /// The client acknowledged our messages below `next`.
    Acked { sid: SessionId, next: u64 },
    /// `conn` ended without the client ending the session: park it for a resume anywhere.
    Park {
        sid: SessionId,
        conn: ConnId,
        reason: &'static str,
        rtt_us: u64,
    },
    /// The client ended the session for good.
    Finish {
        sid: SessionId,
        conn: ConnId,
        reason: &'static str,
    },
    /// `sid` is still attached to `conn`: refresh its lease and presence.
    Touch {
        sid: SessionId,
        conn: ConnId,
        rtt_us: u64,
    },
    /// Send `payload` to session `sid` wherever it is (written through before it counts as sent).
    Publish {
        sid: SessionId,
        payload: Bytes,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
    },
    /// Finish what is queued (within a bound) and exit.
    Stop,
}

/// What the store tells a loop (through its command queue).
#[derive(Debug)]
pub(crate) enum Reply {
    /// Every inbound message of the connection's session below `next` is committed.
    Committed { conn: ConnId, next: u64 },
    /// The answer to a takeover.
    Resumed {
        conn: ConnId,
        sid: SessionId,
        result: Result<Snapshot, SessionError>,
    },
    /// Outbound message `seq` of `sid`, in order.
    Outbound {
        conn: ConnId,
        sid: SessionId,
        seq: u64,
        payload: Bytes,
    },
    /// The session was taken over by another connection (or node): close, do not park.
    Kick { conn: ConnId, sid: SessionId },
    /// The store lost the session: close with `UnknownSession` (the client says `SessionLost`).
    Lost { conn: ConnId, sid: SessionId },
}

/// A session as a takeover found it.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Inbound messages below this are committed.
    pub(crate) in_next: u64,
    /// The first outbound message the client has not acknowledged (its resume ack).
    pub(crate) first_unacked: u64,
    /// Outbound messages from `first_unacked` on, in order.
    pub(crate) unacked: Vec<Bytes>,
}

/// The loops' side of the store task.
pub(crate) struct FleetHandle {
    tx: mpsc::UnboundedSender<Op>,
    pub(crate) cfg: FleetConfig,
    up: Arc<AtomicBool>,
}

impl std::fmt::Debug for FleetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetHandle")
            .field("node", &self.cfg.node)
            .finish()
    }
}

/// What starts the task once the server's shared state exists.
pub(crate) struct Starter {
    rx: mpsc::UnboundedReceiver<Op>,
    client: redis::Client,
    cfg: FleetConfig,
    up: Arc<AtomicBool>,
}

/// The handle and the starter of a new store task.
pub(crate) fn channel(store: RedisStore) -> (FleetHandle, Starter) {
    let (tx, rx) = mpsc::unbounded_channel();
    let up = Arc::new(AtomicBool::new(false));
    (
        FleetHandle {
            tx,
            cfg: store.cfg.clone(),
            up: Arc::clone(&up),
        },
        Starter {
            rx,
            client: store.client,
            cfg: store.cfg,
            up,
        },
    )
}

impl FleetHandle {
    /// Queues an operation (never blocks). False once the task has exited.
    pub(crate) fn op(&self, op: Op) -> bool {
        self.tx.send(op).is_ok()
    }

    /// True while the last batch reached Redis.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

impl Starter {
    /// Starts the task on its own thread.
    pub(crate) fn spawn(
        self,
        shared: Weak<Shared>,
        events: mpsc::UnboundedSender<ServerEvent>,
        session_ttl: Duration,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let keys = self.cfg.keys();
        let (door_tx, door_rx) = mpsc::unbounded_channel();
        let task = Task {
            node: self.cfg.node.clone(),
            chan_prefix: keys.channel_prefix(),
            keys,
            client: self.client,
            cfg: self.cfg,
            conn: None,
            rx: self.rx,
            pending: VecDeque::new(),
            owned: HashMap::new(),
            acks: HashMap::new(),
            fetch: Vec::new(),
            fetching: HashSet::new(),
            door_rx,
            door_tx,
            shared,
            events,
            counter: 0,
            up: self.up,
            stopping: None,
            session_ttl,
            backoff: Duration::from_millis(50),
            next_heartbeat: Instant::now(),
        };
        std::thread::Builder::new()
            .name("vitals-fleet".into())
            .spawn(move || rt.block_on(task.run()))
    }
}

/// A session this node owns.
#[derive(Debug, Clone, Copy)]
struct Owned {
    epoch: u64,
    /// The next outbound message to hand to the loop.
    next_out: u64,
    conn: ConnId,
}

/// A doorbell: a message on this node's channel, or a (re)subscription.
#[derive(Debug)]
enum Door {
    /// New outbound messages for a session.
    Outbound(SessionId),
    /// A session was taken over elsewhere at `epoch`.
    Kick(SessionId, u64),
    /// Subscribed (again): doorbells may have been missed; fetch for every owned session.
    Resync,
}

/// One function call (or read) of a batch.
#[derive(Debug)]
enum Call {
    Register {
        sid: SessionId,
        token: ResumeToken,
        conn: ConnId,
    },
    Commit {
        sid: SessionId,
        conn: ConnId,
        first: u64,
        payloads: Vec<Bytes>,
    },
    Takeover {
        sid: SessionId,
        token: ResumeToken,
        client_ack: u64,
        conn: ConnId,
        deadline: Instant,
        /// The loop was told `Unavailable` while this call was in flight.
        answered: bool,
    },
    Publish {
        sid: SessionId,
        payload: Bytes,
        counter: u64,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
        deadline: Instant,
    },
    Ack {
        sid: SessionId,
        next: u64,
    },
    Park {
        sid: SessionId,
        conn: ConnId,
        reason: &'static str,
        rtt_us: u64,
    },
    Finish {
        sid: SessionId,
        conn: ConnId,
        reason: &'static str,
    },
    Touch {
        sid: SessionId,
        conn: ConnId,
        rtt_us: u64,
    },
    Fetch {
        sid: SessionId,
        from: u64,
    },
    Heartbeat,
}

impl Call {
    fn bytes(&self) -> usize {
        match self {
            Call::Commit { payloads, .. } => payloads.iter().map(Bytes::len).sum(),
            Call::Publish { payload, .. } => payload.len(),
            _ => 0,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Call::Register { .. } => "register",
            Call::Commit { .. } => "commit",
            Call::Takeover { .. } => "takeover",
            Call::Publish { .. } => "publish",
            Call::Ack { .. } => "ack",
            Call::Park { .. } => "park",
            Call::Finish { .. } => "finish",
            Call::Touch { .. } => "touch",
            Call::Fetch { .. } => "fetch",
            Call::Heartbeat => "heartbeat",
        }
    }
}

struct Task {
    client: redis::Client,
    cfg: FleetConfig,
    keys: FleetKeys,
    node: String,
    chan_prefix: String,
    conn: Option<MultiplexedConnection>,
    rx: mpsc::UnboundedReceiver<Op>,
    /// Calls not yet answered, in order (a failed batch goes back to the front).
    pending: VecDeque<Call>,
    owned: HashMap<SessionId, Owned>,
    /// The newest client acknowledgement per session, not yet written (trimmed in batches).
    acks: HashMap<SessionId, u64>,
    /// Sessions with outbound messages to fetch, in doorbell order (deduplicated by `fetching`).
    fetch: Vec<SessionId>,
    fetching: HashSet<SessionId>,
    door_rx: mpsc::UnboundedReceiver<Door>,
    door_tx: mpsc::UnboundedSender<Door>,
    shared: Weak<Shared>,
    events: mpsc::UnboundedSender<ServerEvent>,
    /// This node's publish counter (idempotent retries).
    counter: u64,
    up: Arc<AtomicBool>,
    /// Set by `Stop`: finish by then.
    stopping: Option<Instant>,
    session_ttl: Duration,
    backoff: Duration,
    next_heartbeat: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// SHA-1 of a resume token, in hex: what Redis keeps instead of the token.
fn token_digest(token: &ResumeToken) -> String {
    let digest = sha1_smol::Sha1::from(token.as_bytes()).digest();
    digest.to_string()
}

fn status(v: &Value) -> &str {
    match v {
        Value::Array(a) => match a.first() {
            Some(Value::BulkString(s)) => std::str::from_utf8(s).unwrap_or("?"),
            Some(Value::SimpleString(s)) => s,
            _ => "?",
        },
        Value::ServerError(_) => "error",
        _ => "?",
    }
}

fn int_at(v: &Value, i: usize) -> Option<u64> {
    let Value::Array(a) = v else {
        return None;
    };
    match a.get(i)? {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(s) => std::str::from_utf8(s).ok()?.parse().ok(),
        _ => None,
    }
}

fn bytes_of(v: &Value) -> Option<Bytes> {
    match v {
        Value::BulkString(s) => Some(Bytes::from(s.clone())),
        Value::SimpleString(s) => Some(Bytes::from(s.clone().into_bytes())),
        _ => None,
    }
}

impl Task {
    async fn run(mut self) {
        tokio::spawn(doorbell(
            self.client.clone(),
            self.keys.channel(&self.node),
            self.door_tx.clone(),
        ));
        loop {
            if self.idle() {
                if self.stopping.is_some() {
                    break;
                }
                self.shrink();
                let tick = tokio::time::sleep_until(self.next_heartbeat.into());
                tokio::select! {
                    op = self.rx.recv() => self.take_or_stop(op),
                    door = self.door_rx.recv() => {
                        if let Some(d) = door {
                            self.door(d);
                        }
                    }
                    _ = tick => {}
                }
            }
            while let Ok(op) = self.rx.try_recv() {
                self.take(op);
                if self.pending.len() >= 4 * MAX_BATCH_CALLS {
                    break;
                }
            }
            while let Ok(d) = self.door_rx.try_recv() {
                self.door(d);
            }
            if Instant::now() >= self.next_heartbeat {
                self.next_heartbeat = Instant::now() + NODE_HEARTBEAT;
                self.pending.push_back(Call::Heartbeat);
            }
            if let Some(by) = self.stopping
                && Instant::now() >= by
            {
                tracing::warn!(
                    left = self.pending.len(),
                    "fleet: stopping with operations not written"
                );
                break;
            }
            self.batch().await;
        }
    }

    /// Nothing to call now.
    fn idle(&self) -> bool {
        self.pending.is_empty() && self.acks.is_empty() && self.fetch.is_empty()
    }

    /// Gives back what a burst (thousands of connections registering at once, say) grew the queues
    /// to, once they are empty: the task's memory follows its sessions, not its busiest moment.
    fn shrink(&mut self) {
        const KEEP: usize = 64;
        if self.pending.is_empty() && self.pending.capacity() > 16 * KEEP {
            self.pending.shrink_to(KEEP);
        }
        if self.acks.is_empty() && self.acks.capacity() > 16 * KEEP {
            self.acks.shrink_to(KEEP);
        }
        if self.fetch.is_empty() && self.fetch.capacity() > 16 * KEEP {
            self.fetch.shrink_to(KEEP);
            self.fetching.shrink_to(KEEP);
        }
    }

    /// Takes a received operation; `None` (every sender gone) means stop now.
    fn take_or_stop(&mut self, op: Option<Op>) {
        match op {
            Some(op) => self.take(op),
            None => self.stopping = Some(Instant::now()),
        }
    }

    /// Turns an operation into a call (merging a commit into the one before when it continues it).
    fn take(&mut self, op: Op) {
        let now = Instant::now();
        let call = match op {
            Op::Register { sid, token, conn } => Call::Register { sid, token, conn },
            Op::Commit {
                sid,
                conn,
                seq,
                payload,
            } => {
                if let Some(Call::Commit {
                    sid: s,
                    conn: c,
                    first,
                    payloads,
                }) = self.pending.back_mut()
                    && *s == sid
                    && *c == conn
                    && *first + payloads.len() as u64 == seq
                    && payloads.len() < 256
                {
                    payloads.push(payload);
                    return;
                }
                Call::Commit {
                    sid,
                    conn,
                    first: seq,
                    payloads: vec![payload],
                }
            }
            Op::Takeover {
                sid,
                token,
                client_ack,
                conn,
                wait,
            } => Call::Takeover {
                sid,
                token,
                client_ack,
                conn,
                deadline: now + wait,
                answered: false,
            },
            Op::Acked { sid, next } => {
                let e = self.acks.entry(sid).or_insert(next);
                *e = (*e).max(next);
                return;
            }
            Op::Park {
                sid,
                conn,
                reason,
                rtt_us,
            } => {
                self.flush_ack(sid);
                Call::Park {
                    sid,
                    conn,
                    reason,
                    rtt_us,
                }
            }
            Op::Finish { sid, conn, reason } => Call::Finish { sid, conn, reason },
            Op::Touch { sid, conn, rtt_us } => Call::Touch { sid, conn, rtt_us },
            Op::Publish {
                sid,
                payload,
                reply,
            } => {
                self.counter += 1;
                Call::Publish {
                    sid,
                    payload,
                    counter: self.counter,
                    reply,
                    deadline: now + self.cfg.send_wait,
                }
            }
            Op::Stop => {
                self.stopping = Some(now + Duration::from_secs(5));
                return;
            }
        };
        self.pending.push_back(call);
    }

    /// Moves a session's pending acknowledgement into the call queue (before its park).
    fn flush_ack(&mut self, sid: SessionId) {
        if let Some(next) = self.acks.remove(&sid) {
            self.pending.push_back(Call::Ack { sid, next });
        }
    }

    fn door(&mut self, d: Door) {
        match d {
            Door::Outbound(sid) => self.want_fetch(sid),
            Door::Kick(sid, epoch) => {
                if let Some(o) = self.owned.get(&sid).copied()
                    && o.epoch < epoch
                {
                    self.owned.remove(&sid);
                    self.reply_to(o.conn, Reply::Kick { conn: o.conn, sid });
                }
            }
            Door::Resync => {
                let all: Vec<SessionId> = self.owned.keys().copied().collect();
                for sid in all {
                    self.want_fetch(sid);
                }
            }
        }
    }

    fn want_fetch(&mut self, sid: SessionId) {
        if self.owned.contains_key(&sid) && self.fetching.insert(sid) {
            self.fetch.push(sid);
        }
    }

    /// Sends one batch and applies its answers; on failure puts it back and waits a little.
    async fn batch(&mut self) {
        // Acknowledgements and fetches join the batch behind what is queued.
        let acks: Vec<(SessionId, u64)> = self.acks.drain().collect();
        for (sid, next) in acks {
            self.pending.push_back(Call::Ack { sid, next });
        }
        for sid in std::mem::take(&mut self.fetch) {
            self.fetching.remove(&sid);
            if let Some(o) = self.owned.get(&sid) {
                let from = o.next_out;
                self.pending.push_back(Call::Fetch { sid, from });
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let Some(mut conn) = self.connection().await else {
            self.fail_expired();
            self.wait_backoff().await;
            return;
        };
        let mut calls = Vec::new();
        let mut bytes = 0;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        while let Some(call) = self.pending.pop_front() {
            bytes += call.bytes();
            if self.encode(&call, &mut pipe) {
                calls.push(call);
            }
            if calls.len() >= MAX_BATCH_CALLS || bytes >= MAX_BATCH_BYTES {
                break;
            }
        }
        if calls.is_empty() {
            return;
        }
        let query = pipe.query_async::<Vec<Value>>(&mut conn);
        tokio::pin!(query);
        let give_up = Instant::now() + CALL_TIMEOUT;
        let answer = loop {
            // A resume waits at most its bound, even while its call is in flight.
            let wake = self
                .earliest_deadline(&calls)
                .map_or(give_up, |d| d.min(give_up));
            tokio::select! {
                r = &mut query => break Ok(r),
                // New operations are queued meanwhile, so that their bounds are watched too.
                op = self.rx.recv(), if self.stopping.is_none() => self.take_or_stop(op),
                _ = tokio::time::sleep_until(wake.into()) => {
                    if Instant::now() >= give_up {
                        break Err(());
                    }
                    self.answer_expired(&mut calls);
                    self.fail_expired();
                }
            }
        };
        match answer {
            Ok(Ok(values)) if values.len() == calls.len() => {
                if values.iter().any(is_missing_function) {
                    // Redis restarted without the library: load it and call again.
                    tracing::warn!("fleet: Redis lost the function library; reloading");
                    self.conn = None;
                    self.requeue(calls);
                    return;
                }
                self.mark_up(true);
                metrics::counter!(m::FLEET_BATCHES).increment(1);
                for (call, value) in calls.into_iter().zip(values) {
                    metrics::counter!(m::FLEET_CALLS, "call" => call.name()).increment(1);
                    self.apply(call, value);
                }
            }
            other => {
                let why = match other {
                    Ok(Ok(_)) => "answer count mismatch".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {CALL_TIMEOUT:?}"),
                };
                tracing::warn!(error = %why, calls = calls.len(), "fleet: Redis batch failed; retrying");
                self.conn = None;
                self.mark_up(false);
                self.requeue(calls);
                self.fail_expired();
                self.wait_backoff().await;
            }
        }
    }

    fn requeue(&mut self, calls: Vec<Call>) {
        for call in calls.into_iter().rev() {
            match call {
                // Read again from where the session is then.
                Call::Fetch { sid, .. } => self.want_fetch(sid),
                other => self.pending.push_front(other),
            }
        }
    }

    fn mark_up(&mut self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            metrics::gauge!(m::FLEET_UP).set(if up { 1.0 } else { 0.0 });
            if up {
                tracing::info!("fleet: Redis reachable");
            }
        }
        if up {
            self.backoff = Duration::from_millis(50);
        }
    }

    async fn wait_backoff(&mut self) {
        let pause = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.guarded(tokio::time::sleep(pause)).await;
    }

    /// The connection, (re)made and with the function library loaded.
    async fn connection(&mut self) -> Option<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Some(c.clone());
        }
        let client = self.client.clone();
        let made = self
            .guarded(tokio::time::timeout(CALL_TIMEOUT, async move {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("FUNCTION")
                    .arg("LOAD")
                    .arg("REPLACE")
                    .arg(FUNCTIONS)
                    .query_async::<String>(&mut c)
                    .await?;
                Ok::<_, redis::RedisError>(c)
            }))
            .await;
        match made {
            Ok(Ok(c)) => {
                self.conn = Some(c.clone());
                // Doorbells may have been missed while the connection was down.
                let _ = self.door_tx.send(Door::Resync);
                Some(c)
            }
            Ok(Err(e)) => {
                self.mark_up(false);
                tracing::warn!(error = %e, "fleet: cannot reach Redis");
                None
            }
            Err(_) => {
                self.mark_up(false);
                tracing::warn!("fleet: Redis did not answer within {CALL_TIMEOUT:?}");
                None
            }
        }
    }

    /// The earliest bound of a resume still waiting, in flight (`calls`) or queued, or of a queued
    /// send.
    fn earliest_deadline(&self, calls: &[Call]) -> Option<Instant> {
        let in_flight = calls.iter().filter_map(|c| match c {
            Call::Takeover {
                deadline,
                answered: false,
                ..
            } => Some(*deadline),
            _ => None,
        });
        let queued = self.pending.iter().filter_map(|c| match c {
            Call::Takeover { deadline, .. } | Call::Publish { deadline, .. } => Some(*deadline),
            _ => None,
        });
        in_flight.chain(queued).min()
    }

    /// Awaits `fut` (which must not borrow the task), answering meanwhile the queued resumes and
    /// sends whose bound passes: Redis being slow or away never holds a client past its bound.
    async fn guarded<T>(&mut self, fut: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(fut);
        loop {
            let wake = self.earliest_deadline(&[]);
            tokio::select! {
                r = &mut fut => return r,
                op = self.rx.recv(), if self.stopping.is_none() => self.take_or_stop(op),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now).into()), if wake.is_some() => {
                    self.fail_expired();
                }
            }
        }
    }

    /// Tells the loops `Unavailable` for the resumes in flight whose bound has passed. Their calls
    /// go on: one that succeeds after all is parked at once (its client was told to come back).
    fn answer_expired(&self, calls: &mut [Call]) {
        let now = Instant::now();
        for call in calls {
            if let Call::Takeover {
                sid,
                conn,
                deadline,
                answered,
                ..
            } = call
                && !*answered
                && now >= *deadline
            {
                *answered = true;
                self.reply_to(
                    *conn,
                    Reply::Resumed {
                        conn: *conn,
                        sid: *sid,
                        result: Err(SessionError::Unavailable),
                    },
                );
            }
        }
    }

    /// Gives up on resumes and sends whose bound has passed (Redis unreachable).
    fn fail_expired(&mut self) {
        let now = Instant::now();
        let mut keep = VecDeque::with_capacity(self.pending.len());
        for call in std::mem::take(&mut self.pending) {
            match call {
                Call::Takeover {
                    sid,
                    conn,
                    deadline,
                    ..
                } if now >= deadline => {
                    self.reply_to(
                        conn,
                        Reply::Resumed {
                            conn,
                            sid,
                            result: Err(SessionError::Unavailable),
                        },
                    );
                }
                Call::Publish {
                    sid,
                    payload,
                    reply,
                    deadline,
                    ..
                } if now >= deadline => {
                    self.refuse(sid, payload, reply, "session store unavailable");
                }
                other => keep.push_back(other),
            }
        }
        self.pending = keep;
    }

    /// Adds `call` to `pipe`; false if it needs no call (its session is no longer ours).
    fn encode(&mut self, call: &Call, pipe: &mut redis::Pipeline) -> bool {
        let k = &self.keys;
        let now = now_ms();
        match call {
            Call::Register { sid, token, conn } => {
                // Ours from now on: commits queued behind this carry its epoch.
                self.owned.insert(
                    *sid,
                    Owned {
                        epoch: 1,
                        next_out: 0,
                        conn: *conn,
                    },
                );
                let p = k.partition(*sid);
                pipe.cmd("FCALL")
                    .arg("vitals_register")
                    .arg(3)
                    .arg(k.session(*sid))
                    .arg(k.live(p))
                    .arg(k.events(p))
                    .arg(FleetKeys::session_field(*sid))
                    .arg(token_digest(token))
                    .arg(&self.node)
                    .arg(now)
                    .arg(self.cfg.lease.as_millis() as u64);
            }
            Call::Commit {
                sid,
                conn,
                first,
                payloads,
            } => {
                let Some(o) = self.owned.get(sid).filter(|o| o.conn == *conn) else {
                    // Taken over meanwhile: the client will replay these to the new owner.
                    return false;
                };
                let p = k.partition(*sid);
                let c = pipe
                    .cmd("FCALL")
                    .arg("vitals_commit")
                    .arg(2)
                    .arg(k.session(*sid))
                    .arg(k.inbound(p))
                    .arg(FleetKeys::session_field(*sid))
                    .arg(o.epoch)
                    .arg(&self.node)
                    .arg(*first)
                    .arg(self.cfg.inbound_maxlen);
                for payload in payloads {
                    c.arg(&payload[..]);
                }
            }
            Call::Takeover {
                sid,
                token,
                client_ack,
                ..
            } => {
                let p = k.partition(*sid);
                pipe.cmd("FCALL")
                    .arg("vitals_takeover")
                    .arg(4)
                    .arg(k.session(*sid))
                    .arg(k.outbound(*sid))
                    .arg(k.live(p))
                    .arg(k.events(p))
                    .arg(FleetKeys::session_field(*sid))
                    .arg(token_digest(token))
                    .arg(&self.node)
                    .arg(*client_ack)
                    .arg(now)
                    .arg(self.cfg.lease.as_millis() as u64)
                    .arg(&self.chan_prefix);
            }
            Call::Publish {
                sid,
                payload,
                counter,
                ..
            } => {
                pipe.cmd("FCALL")
                    .arg("vitals_publish")
                    .arg(2)
                    .arg(k.session(*sid))
                    .arg(k.outbound(*sid))
                    .arg(FleetKeys::session_field(*sid))
                    .arg(&self.node)
                    .arg(*counter)
                    .arg(self.shared_max_pending())
                    .arg(&self.chan_prefix)
                    .arg(&payload[..]);
            }
            Call::Ack { sid, next } => {
                let Some(o) = self.owned.get(sid) else {
                    return false;
                };
                pipe.cmd("FCALL")
                    .arg("vitals_ack")
                    .arg(2)
                    .arg(k.session(*sid))
                    .arg(k.outbound(*sid))
                    .arg(o.epoch)
                    .arg(*next);
            }
            Call::Park {
                sid,
                conn,
                reason,
                rtt_us,
            } => {
                let Some(o) = self.owned.get(sid).filter(|o| o.conn == *conn) else {
                    return false;
                };
                let p = k.partition(*sid);
                pipe.cmd("FCALL")
                    .arg("vitals_park")
                    .arg(4)
                    .arg(k.session(*sid))
                    .arg(k.outbound(*sid))
                    .arg(k.live(p))
                    .arg(k.events(p))
                    .arg(FleetKeys::session_field(*sid))
                    .arg(o.epoch)
                    .arg(&self.node)
                    .arg(*reason)
                    .arg(self.session_ttl.as_millis() as u64)
                    .arg(*rtt_us)
                    .arg(now);
            }
            Call::Finish { sid, conn, reason } => {
                let Some(o) = self.owned.get(sid).filter(|o| o.conn == *conn) else {
                    return false;
                };
                let p = k.partition(*sid);
                pipe.cmd("FCALL")
                    .arg("vitals_finish")
                    .arg(4)
                    .arg(k.session(*sid))
                    .arg(k.outbound(*sid))
                    .arg(k.live(p))
                    .arg(k.events(p))
                    .arg(FleetKeys::session_field(*sid))
                    .arg(o.epoch)
                    .arg(&self.node)
                    .arg(*reason)
                    .arg(now);
            }
            Call::Touch { sid, conn, rtt_us } => {
                let Some(o) = self.owned.get(sid).filter(|o| o.conn == *conn) else {
                    return false;
                };
                pipe.cmd("FCALL")
                    .arg("vitals_touch")
                    .arg(2)
                    .arg(k.session(*sid))
                    .arg(k.outbound(*sid))
                    .arg(o.epoch)
                    .arg(self.cfg.lease.as_millis() as u64)
                    .arg(*rtt_us);
            }
            Call::Fetch { sid, from } => {
                pipe.cmd("XRANGE")
                    .arg(k.outbound(*sid))
                    .arg(format!("0-{}", from + 1))
                    .arg("+")
                    .arg("COUNT")
                    .arg(FETCH_COUNT);
            }
            Call::Heartbeat => {
                pipe.cmd("HSET").arg(k.nodes()).arg(&self.node).arg(now);
            }
        }
        true
    }

    /// The most outbound messages a session may hold unacknowledged in Redis: the replay buffer's
    /// message limit, so that everything Redis accepted fits the session on resume.
    fn shared_max_pending(&self) -> u64 {
        self.shared
            .upgrade()
            .map_or(65_536, |s| s.cfg.proto.session.max_replay_messages as u64)
    }

    fn apply(&mut self, call: Call, v: Value) {
        if let Value::ServerError(e) = &v {
            tracing::error!(call = call.name(), error = ?e, "fleet: Redis refused a call");
        }
        match call {
            Call::Register { sid, conn, .. } => match status(&v) {
                "ok" => {
                    if let (Some(epoch), Some(o)) = (int_at(&v, 1), self.owned.get_mut(&sid)) {
                        o.epoch = epoch;
                    }
                }
                other => {
                    tracing::warn!(session = ?sid, answer = other, "fleet: session could not be registered");
                    self.owned.remove(&sid);
                    self.reply_to(conn, Reply::Lost { conn, sid });
                }
            },
            Call::Commit {
                sid,
                conn,
                first,
                payloads,
            } => match status(&v) {
                "ok" => {
                    // Every payload of this call is in the stream now: written by this answer, or
                    // (those below its `first_new`) by an earlier attempt of the same call whose
                    // answer was lost — within one epoch only this node commits, and only once per
                    // message, so the application is told each exactly once here.
                    let next = int_at(&v, 1).unwrap_or(first);
                    for payload in payloads {
                        let _ = self.events.send(ServerEvent::Message {
                            conn,
                            session: Some(sid),
                            payload,
                        });
                    }
                    self.reply_to(conn, Reply::Committed { conn, next });
                }
                "fenced" => {
                    self.owned.remove(&sid);
                    self.reply_to(conn, Reply::Kick { conn, sid });
                }
                _ => {
                    self.owned.remove(&sid);
                    self.reply_to(conn, Reply::Lost { conn, sid });
                }
            },
            Call::Takeover {
                sid,
                client_ack,
                conn,
                answered,
                ..
            } => {
                let result = match status(&v) {
                    "ok" => {
                        let epoch = int_at(&v, 1).unwrap_or(0);
                        let in_next = int_at(&v, 2).unwrap_or(0);
                        let out_next = int_at(&v, 3).unwrap_or(client_ack);
                        let unacked: Vec<Bytes> = match &v {
                            Value::Array(a) => a.iter().skip(4).filter_map(bytes_of).collect(),
                            _ => Vec::new(),
                        };
                        if client_ack + unacked.len() as u64 != out_next {
                            tracing::error!(session = ?sid, "fleet: outbound stream has a hole; session lost");
                            Err(SessionError::Unknown)
                        } else {
                            self.owned.insert(
                                sid,
                                Owned {
                                    epoch,
                                    next_out: out_next,
                                    conn,
                                },
                            );
                            Ok(Snapshot {
                                in_next,
                                first_unacked: client_ack,
                                unacked,
                            })
                        }
                    }
                    "badtoken" => Err(SessionError::BadToken),
                    "error" => Err(SessionError::Unavailable),
                    _ => Err(SessionError::Unknown),
                };
                if answered {
                    // Its client was told `Unavailable` and will resume again: park what we took.
                    if result.is_ok() {
                        self.pending.push_front(Call::Park {
                            sid,
                            conn,
                            reason: "resume_timed_out",
                            rtt_us: 0,
                        });
                    }
                    return;
                }
                self.reply_to(conn, Reply::Resumed { conn, sid, result });
            }
            Call::Publish {
                sid,
                payload,
                reply,
                ..
            } => match status(&v) {
                "ok" => {
                    if let Some(r) = reply {
                        let _ = r.send(Ok(()));
                    }
                    // Ours (no doorbell rings for our own publishes): hand it over at once when it
                    // is the next one, else read the stream from where we are.
                    match (self.owned.get_mut(&sid), int_at(&v, 1)) {
                        (Some(o), Some(seq)) if seq == o.next_out => {
                            o.next_out += 1;
                            let conn = o.conn;
                            self.reply_to(
                                conn,
                                Reply::Outbound {
                                    conn,
                                    sid,
                                    seq,
                                    payload,
                                },
                            );
                        }
                        _ => self.want_fetch(sid),
                    }
                }
                "full" => self.refuse(
                    sid,
                    payload,
                    reply,
                    "session's unacknowledged messages full",
                ),
                "unknown" => self.refuse(sid, payload, reply, "unknown session"),
                _ => self.refuse(sid, payload, reply, "session store refused the message"),
            },
            Call::Ack { .. } | Call::Heartbeat => {}
            Call::Park { sid, .. } | Call::Finish { sid, .. } => {
                self.owned.remove(&sid);
            }
            Call::Touch { sid, conn, .. } => match status(&v) {
                "ok" => {}
                "fenced" => {
                    self.owned.remove(&sid);
                    self.reply_to(conn, Reply::Kick { conn, sid });
                }
                _ => {
                    self.owned.remove(&sid);
                    self.reply_to(conn, Reply::Lost { conn, sid });
                }
            },
            Call::Fetch { sid, from } => self.fetched(sid, from, &v),
        }
    }

    /// Hands fetched outbound messages to the session's loop, in order.
    fn fetched(&mut self, sid: SessionId, from: u64, v: &Value) {
        let Some(o) = self.owned.get(&sid).copied() else {
            return;
        };
        if o.next_out != from {
            // Another fetch moved on meanwhile; this one is stale.
            return;
        }
        let Value::Array(entries) = v else {
            return;
        };
        let mut next = from;
        for e in entries {
            let Value::Array(parts) = e else { continue };
            let seq = parts
                .first()
                .and_then(bytes_of)
                .and_then(|id| {
                    std::str::from_utf8(&id)
                        .ok()?
                        .split_once('-')?
                        .1
                        .parse::<u64>()
                        .ok()
                })
                .and_then(|n| n.checked_sub(1));
            let payload = match parts.get(1) {
                Some(Value::Array(fields)) => fields.get(1).and_then(bytes_of),
                _ => None,
            };
            let (Some(seq), Some(payload)) = (seq, payload) else {
                continue;
            };
            if seq < next {
                continue;
            }
            if seq > next {
                tracing::error!(session = ?sid, expected = next, got = seq, "fleet: outbound stream has a hole; session lost");
                self.owned.remove(&sid);
                self.reply_to(o.conn, Reply::Lost { conn: o.conn, sid });
                return;
            }
            self.reply_to(
                o.conn,
                Reply::Outbound {
                    conn: o.conn,
                    sid,
                    seq,
                    payload,
                },
            );
            next += 1;
        }
        if let Some(o) = self.owned.get_mut(&sid) {
            o.next_out = next;
        }
        if entries.len() >= FETCH_COUNT {
            self.want_fetch(sid);
        }
    }

    fn refuse(
        &self,
        sid: SessionId,
        payload: Bytes,
        reply: Option<oneshot::Sender<Result<(), Error>>>,
        reason: &'static str,
    ) {
        match reply {
            Some(r) => {
                let e = if reason == "unknown session" {
                    Error::NotFound
                } else if reason.starts_with("session's") {
                    Error::Backpressure(reason.into())
                } else {
                    Error::StoreUnavailable(reason.into())
                };
                let _ = r.send(Err(e));
            }
            None => {
                let _ = self.events.send(ServerEvent::SessionSendRefused {
                    session: sid,
                    payload,
                    reason,
                });
            }
        }
    }

    fn reply_to(&self, conn: ConnId, reply: Reply) {
        if let Some(shared) = self.shared.upgrade() {
            shared.to_loop_of(conn, Command::Fleet(reply));
        }
    }
}

/// An error answer that says the function library is not loaded (Redis restarted without it).
fn is_missing_function(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if format!("{e:?}").contains("Function not found"))
}

/// Listens on this node's doorbell channel; reconnects (with a resync) when the subscription breaks.
async fn doorbell(client: redis::Client, channel: String, tx: mpsc::UnboundedSender<Door>) {
    let mut pause = Duration::from_millis(50);
    loop {
        if let Ok(Ok(mut ps)) = tokio::time::timeout(CALL_TIMEOUT, client.get_async_pubsub()).await
            && ps.subscribe(&channel).await.is_ok()
        {
            pause = Duration::from_millis(50);
            if tx.send(Door::Resync).is_err() {
                return;
            }
            let mut messages = ps.on_message();
            while let Some(msg) = messages.next().await {
                let Ok(text) = msg.get_payload::<String>() else {
                    continue;
                };
                let mut parts = text.split(' ');
                let door = match (parts.next(), parts.next(), parts.next()) {
                    (Some("d"), Some(s), None) => FleetKeys::parse_session(s).map(Door::Outbound),
                    (Some("k"), Some(s), Some(e)) => FleetKeys::parse_session(s)
                        .zip(e.parse().ok())
                        .map(|(s, e)| Door::Kick(s, e)),
                    _ => None,
                };
                if let Some(d) = door
                    && tx.send(d).is_err()
                {
                    return;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}
