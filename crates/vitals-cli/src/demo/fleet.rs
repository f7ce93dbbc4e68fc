//! `vitals demo --fleet`: a fleet on loopback, in one command.
//!
//! A `redis-server` of its own (or `--store`), three `vitals serve --store` child processes of this
//! binary on one port (SO_REUSEPORT spreads the connections), ~30 in-process `vitals::Client`s, and
//! a [`Backend`]. Every client streams numbered messages to the fleet, and the backend streams
//! numbered messages to every client's session. Phases:
//!
//! 1. **streaming** — all three servers up; the live view shows, from Redis's presence, which server
//!    holds each session;
//! 2. **kill n1** — SIGKILL: no drain, no park; its clients see the connection die, reconnect and
//!    resume on the others (takeover fenced by the session's epoch);
//! 3. **drain n2** — SIGTERM: a graceful drain (CLOSE `Shutdown`, sessions parked); its clients
//!    resume on n3;
//! 4. **check** — client → server read back from the partitions' inbound streams in Redis, server →
//!    client as the clients received it: every message exactly once and in order, with the counts.
//!
//! It stops everything it started when it ends, fails, or gets Ctrl-C / SIGTERM (and, on Linux, its
//! children get SIGKILL if it is killed itself).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use redis::aio::MultiplexedConnection;
use rustix::process::Signal;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vitals::fleet::{Backend, FleetConfig, FleetKeys};
use vitals::vitals_proto::SessionId;
use vitals::{Client, ClientEvent, ClientSender, Error};

use super::DemoArgs;
use super::live::{self, Check, Live, Sequence, View, lock, print_checks};
use crate::child::{Child, log_tail};
use crate::redis_server::{RedisServer, TempDir};

/// The demo must end by itself before this, whatever happens.
const HARD_LIMIT: Duration = Duration::from_secs(45);
/// Pause between two messages of one stream (each client's, and the backend's to each session).
const SEND_EVERY: Duration = Duration::from_millis(20);
/// Servers in the fleet.
const NODES: usize = 3;
/// Partitions of the demo's fleet (each an inbound and an event stream in Redis).
const PARTITIONS: u16 = 4;
/// How long the view shows the streams going on after a server was killed or drained.
const AFTER: Duration = Duration::from_secs(3);
/// How long, once streaming stops, the last messages may take to be acknowledged and delivered (a
/// loaded machine can be seconds behind).
const SETTLE: Duration = Duration::from_secs(10);
/// How long a drained server gets for its queued bytes (its `--drain`).
const DRAIN: Duration = Duration::from_secs(2);
/// Most entries read from a stream per XRANGE call, and most calls per stream.
const PAGE: usize = 10_000;
const MAX_PAGES: usize = 1_000;

/// How a server looks in the live view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeLook {
    Up,
    Killed,
    Draining,
    Exited,
}

impl NodeLook {
    fn label(self) -> &'static str {
        match self {
            NodeLook::Up => "● up         ",
            NodeLook::Killed => "✖ SIGKILLed  ",
            NodeLook::Draining => "◐ draining   ",
            NodeLook::Exited => "○ drained    ",
        }
    }
}

/// One client as the demo follows it.
#[derive(Debug, Clone, Default)]
struct Peer {
    /// Its session (the first one; a `SessionLost` is counted, not followed).
    sid: Option<SessionId>,
    /// The server holding its session, as Redis's presence says (index into the nodes).
    owner: Option<usize>,
    /// Between a dead connection and the next handshake.
    away: bool,
    /// Messages it queued for the fleet.
    up_sent: u64,
    /// Messages the backend wrote to its session.
    down_sent: u64,
    /// The backend's messages as it received them.
    down: Sequence,
}

/// Everything the demo watches, behind one mutex.
struct State {
    phase: &'static str,
    interval: Duration,
    timeout: Duration,
    addr: Option<SocketAddr>,
    nodes: [NodeLook; NODES],
    peers: Vec<Peer>,
    /// Sessions whose owner changed from one server to another (from, to), seen in presence.
    moved: [[u64; NODES]; NODES],
    /// Entries added to the fleet's inbound streams since the start.
    in_redis: u64,
    resumes: u64,
    replayed: u64,
    sessions_lost: u64,
    up_errors: u64,
    down_errors: u64,
    /// Messages at the clients that were not a number.
    malformed: u64,
}

impl State {
    fn new(clients: usize, interval: Duration, timeout: Duration) -> State {
        State {
            phase: "starting",
            interval,
            timeout,
            addr: None,
            nodes: [NodeLook::Up; NODES],
            peers: vec![Peer::default(); clients],
            moved: [[0; NODES]; NODES],
            in_redis: 0,
            resumes: 0,
            replayed: 0,
            sessions_lost: 0,
            up_errors: 0,
            down_errors: 0,
            malformed: 0,
        }
    }

    /// Sessions per server, as presence says.
    fn per_node(&self) -> [usize; NODES] {
        let mut n = [0; NODES];
        for o in self.peers.iter().filter_map(|p| p.owner) {
            n[o] += 1;
        }
        n
    }

    fn away(&self) -> usize {
        self.peers.iter().filter(|p| p.away).count()
    }

    fn up_sent(&self) -> u64 {
        self.peers.iter().map(|p| p.up_sent).sum()
    }

    fn down_sent(&self) -> u64 {
        self.peers.iter().map(|p| p.down_sent).sum()
    }

    fn down_received(&self) -> u64 {
        self.peers.iter().map(|p| p.down.delivered).sum()
    }

    fn moves(&self) -> u64 {
        self.moved.iter().flatten().sum()
    }
}

/// `n1`, `n2`, `n3`.
fn short(i: usize) -> String {
    format!("n{}", i + 1)
}

impl View for State {
    fn set_phase(&mut self, phase: &'static str) {
        self.phase = phase;
    }

    fn render(&self, t: f64) -> (Vec<String>, String) {
        let per = self.per_node();
        let mut block = vec![format!(
            "── vitals demo --fleet · {} · t={t:.1}s · {NODES} servers on {} · interval {} · timeout {} ──",
            self.phase,
            self.addr.map_or("-".into(), |a| a.to_string()),
            humantime::format_duration(self.interval),
            humantime::format_duration(self.timeout),
        )];
        let glyphs: Vec<char> = self
            .peers
            .iter()
            .map(|p| match (p.away, p.owner) {
                (true, _) => '○',
                (false, Some(o)) => char::from_digit(o as u32 + 1, 10).unwrap_or('?'),
                (false, None) => '·',
            })
            .collect();
        for (k, row) in glyphs.chunks(50).enumerate() {
            let label = if k == 0 { "clients " } else { "        " };
            block.push(format!("  {label} {}", row.iter().collect::<String>()));
        }
        block.push("           (digit: the server holding the session · ○ reconnecting)".into());
        for (i, look) in self.nodes.iter().enumerate() {
            block.push(format!(
                "  {}  {} {:>4} sessions{}",
                short(i),
                look.label(),
                per[i],
                if *look == NodeLook::Killed && per[i] > 0 {
                    "  (its process is gone: Redis still names it until the clients resume)"
                } else {
                    ""
                }
            ));
        }
        let mut moves = String::new();
        for (from, row) in self.moved.iter().enumerate() {
            for (to, n) in row.iter().enumerate().filter(|(_, n)| **n > 0) {
                let _ = write!(moves, "{}→{} {n}  ", short(from), short(to));
            }
        }
        block.push(format!(
            "  moved    {}   resumes {} (replayed {})",
            if moves.is_empty() {
                "none yet  "
            } else {
                &moves
            },
            self.resumes,
            self.replayed
        ));
        block.push(format!(
            "  client→server sent {} (in Redis {})    server→client sent {} received {}",
            self.up_sent(),
            self.in_redis,
            self.down_sent(),
            self.down_received()
        ));
        let line = format!(
            "[{t:5.1}s] {}: {} away={} moved={} resumes={} replayed={} up_sent={} up_in_redis={} down_sent={} down_received={}",
            self.phase,
            (0..NODES)
                .map(|i| format!("{}={}", short(i), per[i]))
                .collect::<Vec<_>>()
                .join(" "),
            self.away(),
            self.moves(),
            self.resumes,
            self.replayed,
            self.up_sent(),
            self.in_redis,
            self.down_sent(),
            self.down_received()
        );
        (block, line)
    }
}

/// Server `i`'s node id in Redis (unique per demo run, short in the view).
fn node_id(i: usize) -> String {
    format!("demo{}-{}", std::process::id(), short(i))
}

/// A `vitals serve --store` child process.
struct Node {
    child: Child,
    /// Its stderr.
    log: std::path::PathBuf,
}

/// Starts server `i` (`vitals serve --store URL --node ID …` on `listen`) and waits for its
/// "listening on ADDR" line.
async fn start_node(
    i: usize,
    listen: &str,
    url: &str,
    args: &DemoArgs,
    dir: &Path,
) -> anyhow::Result<(Node, SocketAddr)> {
    let id = node_id(i);
    let log = dir.join(format!("{}.log", short(i)));
    let exe = std::env::current_exe().context("cannot find this program to start the servers")?;
    let mut cmd = Command::new(exe);
    // Only the flags below count: no VITALS_* setting of the caller's (TLS, a config file…).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("VITALS_") {
            cmd.env_remove(k);
        }
    }
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    cmd.arg("serve")
        .args(["--listen", listen, "--store", url, "--node", &id])
        .args(["--partitions", &PARTITIONS.to_string(), "--loops", "1"])
        .args(["--interval", &fmt(args.timing.interval)])
        .args(["--timeout", &fmt(args.timing.timeout)])
        .args(["--drain", &fmt(DRAIN)])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).context("cannot create a server's log file")?);
    let mut child = Child::spawn(cmd, &format!("server {}", short(i)))?;
    let stdout = child
        .take_stdout()
        .context("the server's stdout is not piped")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let banner = match tokio::time::timeout(Duration::from_secs(20), rx).await {
        Ok(Ok(line)) => line,
        _ => bail!(
            "server {} did not start ({}); {}",
            short(i),
            child
                .exited()
                .map_or("no listening line within 20 s".into(), |s| s.to_string()),
            log_tail(&log, 8)
        ),
    };
    let addr = banner
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in server {}'s line {banner:?}", short(i)))?;
    tracing::debug!(node = %id, %addr, "server started");
    Ok((Node { child, log }, addr))
}

/// Follows client `i`'s events into the state until `stop`, then closes it (its session ends).
async fn client_events(
    i: usize,
    client: Client,
    st: Arc<Mutex<State>>,
    stop: watch::Receiver<bool>,
) {
    live::follow(client, stop, |event| {
        let mut s = lock(&st);
        match event {
            ClientEvent::Connected { session, .. } => {
                let p = &mut s.peers[i];
                p.away = false;
                if p.sid.is_none() {
                    p.sid = session;
                }
            }
            ClientEvent::Resumed { replayed, .. } => {
                s.peers[i].away = false;
                s.resumes += 1;
                s.replayed += replayed as u64;
            }
            ClientEvent::Message(payload) => match number(&payload) {
                Some(n) => s.peers[i].down.see(n),
                None => s.malformed += 1,
            },
            ClientEvent::Dead { .. } | ClientEvent::Closed { .. } => s.peers[i].away = true,
            ClientEvent::SessionLost { session, .. } => {
                s.sessions_lost += 1;
                tracing::warn!(client = i, ?session, "session lost");
            }
            ClientEvent::Rtt(_)
            | ClientEvent::Suspect { .. }
            | ClientEvent::Reconnecting { .. } => {}
        }
    })
    .await;
}

/// A message's number (8 bytes, big-endian).
fn number(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.try_into().ok()?))
}

/// Client `i` sends 0, 1, 2… every [`SEND_EVERY`] while `streaming`, then waits (≤ 5 s) until the
/// fleet acknowledged everything ([`SETTLE`]). True if it did.
async fn stream_up(
    i: usize,
    sender: ClientSender,
    st: Arc<Mutex<State>>,
    mut streaming: watch::Receiver<bool>,
) -> bool {
    if streaming.wait_for(|on| *on).await.is_err() {
        return false;
    }
    let mut tick = live::ticker(SEND_EVERY);
    let mut n = 0u64;
    while *streaming.borrow() {
        tick.tick().await;
        if let Err(e) = sender.send(n.to_be_bytes().to_vec()).await {
            tracing::warn!(client = i, error = %e, "send failed");
            lock(&st).up_errors += 1;
            return false;
        }
        n += 1;
        lock(&st).peers[i].up_sent = n;
    }
    matches!(
        tokio::time::timeout(SETTLE, sender.flush()).await,
        Ok(Ok(()))
    )
}

/// The backend sends 0, 1, 2… to client `i`'s session every [`SEND_EVERY`] while `streaming`, from
/// the moment Redis knows the session.
async fn stream_down(
    i: usize,
    backend: Arc<Backend>,
    st: Arc<Mutex<State>>,
    mut streaming: watch::Receiver<bool>,
) {
    if streaming.wait_for(|on| *on).await.is_err() {
        return;
    }
    let mut tick = live::ticker(SEND_EVERY);
    let mut n = 0u64;
    while *streaming.borrow() {
        tick.tick().await;
        let Some(sid) = ({
            let s = lock(&st);
            s.peers[i].sid.filter(|_| s.peers[i].owner.is_some())
        }) else {
            continue;
        };
        match backend.send_to_session(sid, &n.to_be_bytes()).await {
            Ok(()) => {
                n += 1;
                lock(&st).peers[i].down_sent = n;
            }
            // Nothing was written: the same number goes again on the next tick.
            Err(Error::Backpressure(_)) => {}
            Err(e) => {
                tracing::warn!(client = i, error = %e, "send to the session failed");
                lock(&st).down_errors += 1;
                return;
            }
        }
    }
}

/// Redis as the demo reads it: presence, stream lengths, stream contents.
struct Watcher {
    backend: Arc<Backend>,
    conn: MultiplexedConnection,
    keys: FleetKeys,
    /// The node ids, in order.
    ids: Vec<String>,
    /// Stream entries from this id on are the demo's.
    from: String,
    /// Inbound entries before the demo.
    baseline: u64,
}

impl Watcher {
    /// Reads the presence of every known session and the inbound streams' length into the state.
    async fn refresh(&self, st: &Mutex<State>) -> Result<(), Error> {
        let sids: Vec<(usize, SessionId)> = lock(st)
            .peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.sid?)))
            .collect();
        // All at once: the multiplexed connection pipelines them (one by one, a busy Redis would
        // make the view lag by seconds).
        let mut asked = tokio::task::JoinSet::new();
        for (i, sid) in sids {
            let backend = Arc::clone(&self.backend);
            asked.spawn(async move { (i, backend.presence(sid).await) });
        }
        while let Some(answer) = asked.join_next().await {
            let Ok((i, presence)) = answer else { continue };
            let owner = presence?.and_then(|p| self.ids.iter().position(|id| *id == p.owner));
            let mut s = lock(st);
            if let (Some(from), Some(to)) = (s.peers[i].owner, owner)
                && from != to
            {
                s.moved[from][to] += 1;
            }
            if owner.is_some() {
                s.peers[i].owner = owner;
            }
        }
        let len = self.inbound_len().await?;
        lock(st).in_redis = len.saturating_sub(self.baseline);
        Ok(())
    }

    /// Entries in the fleet's inbound streams.
    async fn inbound_len(&self) -> Result<u64, Error> {
        let mut total = 0;
        for p in 0..self.keys.partitions() {
            let n: u64 = redis::cmd("XLEN")
                .arg(self.keys.inbound(p))
                .query_async(&mut self.conn.clone())
                .await
                .map_err(store_error)?;
            total += n;
        }
        Ok(total)
    }

    /// Calls `each` with the fields of every entry of `key` added since the start, in order.
    async fn entries(
        &self,
        key: &str,
        mut each: impl FnMut(&HashMap<String, Vec<u8>>),
    ) -> Result<(), Error> {
        let mut start = self.from.clone();
        for _ in 0..MAX_PAGES {
            let page: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
                .arg(key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(store_error)?;
            for (_, fields) in &page {
                each(fields);
            }
            match page.last() {
                Some((id, _)) if page.len() == PAGE => start = format!("({id}"),
                _ => return Ok(()),
            }
        }
        Ok(())
    }
}

fn store_error(e: redis::RedisError) -> Error {
    Error::StoreUnavailable(e.to_string())
}

/// A field as text.
fn text<'a>(fields: &'a HashMap<String, Vec<u8>>, key: &str) -> Option<&'a str> {
    std::str::from_utf8(fields.get(key)?).ok()
}

/// Refreshes presence every 250 ms until `stop`.
async fn watch_presence(w: Arc<Watcher>, st: Arc<Mutex<State>>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = w.refresh(&st).await {
            tracing::warn!(error = %e, "cannot read presence");
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// What the final read of Redis found.
struct Stored {
    /// Per client: its messages in the inbound streams.
    up: Vec<Sequence>,
    /// Inbound entries of the demo's sessions whose data is not a number.
    malformed: u64,
    /// Resumes that moved a demo session from one server to another: [from][to].
    moved: [[u64; NODES]; NODES],
    /// Per server: the demo's sessions that resumed away from it.
    left: [Vec<SessionId>; NODES],
}

/// Reads the inbound and event streams of every partition.
async fn read_back(w: &Watcher, sids: &[Option<SessionId>]) -> Result<Stored, Error> {
    let index: HashMap<SessionId, usize> = sids
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some(((*s)?, i)))
        .collect();
    let session_of = |f: &HashMap<String, Vec<u8>>| {
        text(f, "session")
            .and_then(FleetKeys::parse_session)
            .and_then(|s| Some((s, *index.get(&s)?)))
    };
    let node_of = |f: &HashMap<String, Vec<u8>>, key: &str| {
        text(f, key).and_then(|id| w.ids.iter().position(|n| n == id))
    };
    let mut out = Stored {
        up: vec![Sequence::default(); sids.len()],
        malformed: 0,
        moved: [[0; NODES]; NODES],
        left: Default::default(),
    };
    for p in 0..w.keys.partitions() {
        w.entries(&w.keys.inbound(p), |f| {
            if let Some((_, i)) = session_of(f) {
                match f.get("data").and_then(|d| number(d)) {
                    Some(n) => out.up[i].see(n),
                    None => out.malformed += 1,
                }
            }
        })
        .await?;
        w.entries(&w.keys.events(p), |f| {
            if text(f, "type") != Some("resume") {
                return;
            }
            if let (Some((sid, _)), Some(from), Some(to)) =
                (session_of(f), node_of(f, "from"), node_of(f, "node"))
                && from != to
            {
                out.moved[from][to] += 1;
                out.left[from].push(sid);
            }
        })
        .await?;
    }
    Ok(out)
}

/// Runs `vitals demo --fleet`; on Ctrl-C or SIGTERM stops everything it started and exits 130.
pub(super) async fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let signal = crate::serve::shutdown_signal()?;
    tokio::select! {
        result = run_fleet(args) => result,
        name = signal => {
            // Dropping `run_fleet` killed the servers and redis-server and removed the temp dir.
            eprintln!("vitals demo: {name}: stopped the servers and the redis-server it started");
            Ok(ExitCode::from(130))
        }
    }
}

/// Which sessions a server holds, as presence says.
fn held_by(st: &State, node: usize) -> Vec<SessionId> {
    st.peers
        .iter()
        .filter(|p| p.owner == Some(node))
        .filter_map(|p| p.sid)
        .collect()
}

/// Where `sessions` are now: per server, how many.
fn spread(st: &State, sessions: &[SessionId]) -> String {
    let mut n = [0usize; NODES];
    for p in st
        .peers
        .iter()
        .filter(|p| p.sid.is_some_and(|s| sessions.contains(&s)))
    {
        if let Some(o) = p.owner {
            n[o] += 1;
        }
    }
    (0..NODES)
        .filter(|i| n[*i] > 0)
        .map(|i| format!("{} {}", short(i), n[i]))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn run_fleet(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let (interval, timeout) = (args.timing.interval, args.timing.timeout);
    let n = args.clients() as usize;
    let st = Arc::new(Mutex::new(State::new(n, interval, timeout)));
    let mut demo = Live::new(Arc::clone(&st), HARD_LIMIT);
    let dir = TempDir::new("demo")?;

    // Redis (ours, or --store), the backend and our reader of Redis; then three servers on one port.
    let (url, _redis) = match &args.store {
        Some(url) => {
            demo.note(&format!("using the Redis at {url}"));
            (url.clone(), None)
        }
        None => {
            let redis = RedisServer::start(dir.path()).await?;
            demo.note(&format!(
                "started redis-server on {} (temporary directory, no persistence)",
                redis.url()
            ));
            (redis.url(), Some(redis))
        }
    };
    let fleet = FleetConfig {
        partitions: PARTITIONS,
        ..FleetConfig::default()
    };
    let backend = Arc::new(
        Backend::connect(&url, &fleet)
            .await
            .with_context(|| format!("cannot reach Redis at {url}"))?,
    );
    let conn = redis::Client::open(url.as_str())
        .context("bad Redis URL")?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot reach Redis at {url}"))?;
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut conn.clone())
        .await
        .context("Redis TIME")?;
    let mut watcher = Watcher {
        backend: Arc::clone(&backend),
        conn,
        keys: fleet.keys(),
        ids: (0..NODES).map(node_id).collect(),
        from: format!("{}-0", secs * 1000 + micros / 1000),
        baseline: 0,
    };
    watcher.baseline = watcher.inbound_len().await?;
    let watcher = Arc::new(watcher);

    let mut nodes = Vec::with_capacity(NODES);
    let (first, addr) = start_node(0, "127.0.0.1:0", &url, args, dir.path()).await?;
    nodes.push(first);
    for i in 1..NODES {
        nodes.push(
            start_node(i, &addr.to_string(), &url, args, dir.path())
                .await?
                .0,
        );
    }
    lock(&st).addr = Some(addr);
    demo.note(&format!(
        "started {NODES} `vitals serve --store` processes on {addr} (SO_REUSEPORT; pids {}), sessions in Redis",
        nodes
            .iter()
            .map(|n| n.child.id().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // Clients, their event drains, their senders, the backend's senders to them, the presence watch.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stream_tx, stream_rx) = watch::channel(false);
    let mut client_tasks: Vec<JoinHandle<()>> = Vec::with_capacity(n);
    let mut up_tasks: Vec<JoinHandle<bool>> = Vec::with_capacity(n);
    let mut down_tasks: Vec<JoinHandle<()>> = Vec::with_capacity(n);
    for i in 0..n {
        let client = live::client(addr, interval, timeout);
        up_tasks.push(tokio::spawn(stream_up(
            i,
            client.sender(),
            Arc::clone(&st),
            stream_rx.clone(),
        )));
        down_tasks.push(tokio::spawn(stream_down(
            i,
            Arc::clone(&backend),
            Arc::clone(&st),
            stream_rx.clone(),
        )));
        client_tasks.push(tokio::spawn(client_events(
            i,
            client,
            Arc::clone(&st),
            stop_rx.clone(),
        )));
    }
    let presence_task = tokio::spawn(watch_presence(
        Arc::clone(&watcher),
        Arc::clone(&st),
        stop_rx.clone(),
    ));
    let mut checks = Vec::new();

    // 1. Everyone connected and registered in Redis; then streaming both ways.
    demo.set_phase("connecting");
    let all_up = demo
        .wait_until(Duration::from_secs(10), |s| {
            s.peers.iter().all(|p| p.owner.is_some())
        })
        .await;
    let per = lock(&st).per_node();
    let spread_at_start = (0..NODES)
        .map(|i| format!("{} {}", short(i), per[i]))
        .collect::<Vec<_>>()
        .join(", ");
    checks.push(Check {
        ok: all_up && per.iter().all(|c| *c > 0),
        what: format!(
            "{} of {n} clients connected, sessions on every server ({spread_at_start})",
            per.iter().sum::<usize>()
        ),
    });
    demo.note(&format!(
        "{n} clients connected; Redis's presence: {spread_at_start}"
    ));
    demo.set_phase("streaming");
    let _ = stream_tx.send(true);
    demo.note(&format!(
        "every client streams a numbered message each {} ms to the fleet, and the backend one to every session (Backend::send_to_session)",
        SEND_EVERY.as_millis()
    ));
    demo.show_for(args.warmup).await;

    // 2. SIGKILL n1: its clients resume on the others.
    let _ = watcher.refresh(&st).await;
    let on_n1 = held_by(&lock(&st), 0);
    demo.set_phase("n1 killed");
    nodes[0].child.kill();
    lock(&st).nodes[0] = NodeLook::Killed;
    let killed_at = Instant::now();
    demo.note(&format!(
        "SIGKILL n1 (no drain, no park): its {} sessions must resume on n2 or n3",
        on_n1.len()
    ));
    let moved_off_n1 = demo
        .wait_until(Duration::from_secs(5) + timeout, |s| {
            held_by(s, 0).is_empty() && s.away() == 0
        })
        .await;
    let took = killed_at.elapsed().as_secs_f64();
    let n1_spread = spread(&lock(&st), &on_n1);
    demo.note(&format!(
        "n1's {} sessions resumed within {took:.2} s: now on {n1_spread}",
        on_n1.len()
    ));
    checks.push(Check {
        ok: moved_off_n1,
        what: format!(
            "n1 SIGKILLed: its {} sessions resumed on the others ({n1_spread}) within {took:.2} s",
            on_n1.len()
        ),
    });
    demo.set_phase("streaming");
    demo.show_for(AFTER).await;

    // 3. SIGTERM n2: a graceful drain; its clients resume on n3.
    let _ = watcher.refresh(&st).await;
    let on_n2 = held_by(&lock(&st), 1);
    demo.set_phase("n2 draining");
    nodes[1].child.signal(Signal::TERM)?;
    lock(&st).nodes[1] = NodeLook::Draining;
    let drained_at = Instant::now();
    demo.note(&format!(
        "SIGTERM n2 (drain: CLOSE Shutdown, sessions parked): its {} sessions must resume on n3",
        on_n2.len()
    ));
    let moved_off_n2 = demo
        .wait_until(DRAIN + Duration::from_secs(5) + timeout, |s| {
            held_by(s, 1).is_empty() && s.away() == 0
        })
        .await;
    let took = drained_at.elapsed().as_secs_f64();
    let exit = nodes[1]
        .child
        .wait_within(DRAIN + Duration::from_secs(3))
        .await;
    lock(&st).nodes[1] = NodeLook::Exited;
    let n2_spread = spread(&lock(&st), &on_n2);
    demo.note(&format!(
        "n2 exited ({}); its {} sessions resumed within {took:.2} s: now on {n2_spread}",
        exit.map_or("not yet".into(), |s| s.to_string()),
        on_n2.len()
    ));
    let exited_ok = exit.is_some_and(|s| s.success());
    checks.push(Check {
        ok: moved_off_n2 && exited_ok,
        what: format!(
            "n2 drained ({}): its {} sessions resumed on n3 ({n2_spread}) within {took:.2} s",
            exit.map_or("did not exit".into(), |s| s.to_string()),
            on_n2.len()
        ),
    });
    if !exited_ok {
        demo.note(&log_tail(&nodes[1].log, 5));
    }
    demo.set_phase("streaming");
    demo.show_for(AFTER).await;

    // 4. Stop streaming, let the last messages arrive, read Redis back, compare.
    demo.set_phase("finishing");
    let _ = stream_tx.send(false);
    // Each up task waits at most SETTLE for its acks; each down task at most one send.
    let flushed = live::join_within(up_tasks, SETTLE + Duration::from_secs(1))
        .await
        .is_some_and(|done| done.into_iter().all(|ok| ok == Some(true)));
    live::join_within(down_tasks, SETTLE).await;
    demo.wait_until(SETTLE, |s| {
        s.in_redis >= s.up_sent() && s.down_received() >= s.down_sent()
    })
    .await;
    let sids: Vec<Option<SessionId>> = lock(&st).peers.iter().map(|p| p.sid).collect();
    let stored = read_back(&watcher, &sids)
        .await
        .context("cannot read the streams back from Redis")?;
    demo.set_phase("done");
    demo.screen.keep();
    let elapsed = demo.elapsed();

    let summary = {
        let s = lock(&st);
        let up_sent = s.up_sent();
        let up_received: u64 = stored.up.iter().map(|q| q.delivered).sum();
        let up_lost: u64 = s
            .peers
            .iter()
            .zip(&stored.up)
            .map(|(p, q)| p.up_sent.saturating_sub(q.delivered))
            .sum();
        let up_dup: u64 = stored.up.iter().map(|q| q.duplicated).sum();
        let up_reord: u64 = stored.up.iter().map(|q| q.reordered).sum();
        let (down_sent, down_received) = (s.down_sent(), s.down_received());
        let down_lost: u64 = s
            .peers
            .iter()
            .map(|p| p.down_sent.saturating_sub(p.down.delivered))
            .sum();
        let down_dup: u64 = s.peers.iter().map(|p| p.down.duplicated).sum();
        let down_reord: u64 = s.peers.iter().map(|p| p.down.reordered).sum();
        checks.push(Check {
            ok: up_lost == 0 && up_dup == 0 && up_reord == 0 && stored.malformed == 0 && up_sent > 0,
            what: format!(
                "client→server: {up_sent} sent, {up_received} in Redis's inbound streams: lost {up_lost}, duplicated {up_dup}, out of order {up_reord}"
            ),
        });
        checks.push(Check {
            ok: down_lost == 0 && down_dup == 0 && down_reord == 0 && s.malformed == 0 && down_sent > 0,
            what: format!(
                "server→client: {down_sent} sent by the backend, {down_received} received: lost {down_lost}, duplicated {down_dup}, out of order {down_reord}"
            ),
        });
        // Every session of a stopped server resumed elsewhere, as Redis's event streams say.
        let left_all = |from: usize, held: &[SessionId]| {
            held.iter().all(|sid| stored.left[from].contains(sid))
        };
        let moves = |from: usize| -> String {
            (0..NODES)
                .filter(|to| stored.moved[from][*to] > 0)
                .map(|to| format!("{}→{} {}", short(from), short(to), stored.moved[from][to]))
                .collect::<Vec<_>>()
                .join(", ")
        };
        checks.push(Check {
            ok: left_all(0, &on_n1) && left_all(1, &on_n2) && !on_n1.is_empty() && !on_n2.is_empty(),
            what: format!(
                "Redis's event streams: every session of n1 ({}) and of n2 ({}) resumed elsewhere: {}; {}",
                on_n1.len(),
                on_n2.len(),
                moves(0),
                moves(1)
            ),
        });
        checks.push(Check {
            ok: s.sessions_lost == 0 && s.up_errors == 0 && s.down_errors == 0 && flushed,
            what: format!(
                "no session lost ({}), every send accepted ({} errors), every client's messages acknowledged",
                s.sessions_lost,
                s.up_errors + s.down_errors
            ),
        });
        format!(
            "summary: servers={NODES} clients={n} resumes={} replayed={} moved_from_n1={} moved_from_n2={} up_sent={up_sent} up_received={up_received} down_sent={down_sent} down_received={down_received} lost={} duplicated={} reordered={} elapsed={:.1}s",
            s.resumes,
            s.replayed,
            stored.moved[0].iter().sum::<u64>(),
            stored.moved[1].iter().sum::<u64>(),
            up_lost + down_lost,
            up_dup + down_dup,
            up_reord + down_reord,
            elapsed.as_secs_f64()
        )
    };
    let code = print_checks(&checks, &summary);

    // Close the clients (their sessions end), drain n3, stop Redis (bounded).
    let _ = stop_tx.send(true);
    live::join_within(client_tasks, Duration::from_secs(2)).await;
    presence_task.abort();
    if nodes[2].child.signal(Signal::TERM).is_ok() {
        let _ = nodes[2]
            .child
            .wait_within(DRAIN + Duration::from_secs(1))
            .await;
    }
    drop(nodes);
    Ok(code)
}
