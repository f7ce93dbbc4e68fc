//! The fleet's costs, measured against a `redis-server` it starts itself (docs/PERFORMANCE.md, "Fleet"):
//!
//! 1. messages/s client → server and server → client, through a 3-server fleet (clients connected to
//!    the servers round robin) and through one server with the in-memory store, in the same run;
//! 2. Redis commands per message (from `INFO commandstats`, both directions);
//! 3. resume latency across servers (a forced disconnect to the client's `Resumed`, through a load
//!    balancer that sends each new connection to the next server) and Redis commands per resume,
//!    beside the same with one in-memory server;
//! 4. Redis memory per parked session and per live session (`INFO memory`).
//!
//! Run: `cargo run --release -p vitals --example fleet_bench` (about 40 s; `redis-server` on PATH,
//! installed by `scripts/setup`). Every phase is bounded in count and time.

#[path = "../tests/fleet_util/mod.rs"]
mod fleet_util;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_util::{Balancer, RedisServer};
use hdrhistogram::Histogram;
use vitals::vitals_proto::SessionId;
use vitals::{
    Client, ClientConfig, ClientEvent, ConnId, FleetConfig, RedisStore, Server, ServerConfig,
    ServerEvent, ServerHandle,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Clients of the throughput phase, and messages each sends (and receives).
const CLIENTS: usize = 8;
const MESSAGES: u64 = 20_000;
/// Payload size.
const SIZE: usize = 64;
/// Sends to one session in flight at once (server → client phase).
const WINDOW: usize = 64;
/// Clients of the resume phase, and resumes measured.
const RESUME_CLIENTS: usize = 50;
const RESUMES: usize = 300;
/// Sessions of the memory phase.
const PARKED: usize = 2_000;

fn server_config() -> ServerConfig {
    let mut cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        loops: 1,
        ..ServerConfig::default()
    }
    .with_timing(Duration::from_secs(1), Duration::from_secs(3));
    cfg.proto.session.ttl = Duration::from_secs(300);
    cfg
}

fn fleet(redis: &RedisServer, node: &str) -> Result<Server, BoxError> {
    let cfg = FleetConfig {
        node: node.into(),
        ..FleetConfig::default()
    };
    let store = RedisStore::with_config(&redis.url(), cfg)?;
    Ok(Server::bind_with_store(server_config(), store)?)
}

fn client_config(addr: std::net::SocketAddr) -> ClientConfig {
    let mut cfg =
        ClientConfig::new(addr).with_timing(Duration::from_secs(1), Duration::from_secs(3));
    cfg.backoff.base = Duration::from_millis(1);
    cfg.backoff.cap = Duration::from_millis(1);
    cfg
}

/// A client connected to `addr`, and its session.
async fn connect(addr: std::net::SocketAddr) -> Result<(Client, SessionId), BoxError> {
    let mut c = Client::connect(client_config(addr));
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next_event()).await? {
            Some(ClientEvent::Connected {
                session: Some(s), ..
            }) => return Ok((c, s)),
            Some(_) => {}
            None => return Err("client ended".into()),
        }
    }
}

/// Redis's per-command call counts and its used memory.
fn redis_stats(redis: &RedisServer) -> (HashMap<String, u64>, u64) {
    let text = redis.command(&["INFO", "all"]).unwrap_or_default();
    let mut calls = HashMap::new();
    let mut memory = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_")
            && let Some((name, fields)) = rest.split_once(':')
            && let Some(n) = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
        {
            calls.insert(name.to_string(), n);
        }
        if let Some(m) = line.strip_prefix("used_memory:") {
            memory = m.trim().parse().unwrap_or(0);
        }
    }
    (calls, memory)
}

/// Commands called between two `redis_stats` (leaving out INFO itself), total and by name.
fn calls_between(a: &HashMap<String, u64>, b: &HashMap<String, u64>) -> (u64, String) {
    let mut by: Vec<(String, u64)> = b
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    by.sort_by_key(|x| std::cmp::Reverse(x.1));
    let total = by.iter().map(|(_, v)| v).sum();
    let text = by
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    (total, text)
}

/// Drains a server's events in a task: counts messages, tracks where each session is connected.
fn watch(
    mut server: Server,
    i: usize,
    received: Arc<std::sync::atomic::AtomicU64>,
    at: Arc<Mutex<HashMap<SessionId, (usize, ConnId)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(e) = server.next_event().await {
            match e {
                ServerEvent::Message { .. } => {
                    received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                ServerEvent::Connected {
                    conn,
                    session: Some(s),
                    ..
                } => {
                    at.lock().expect("at").insert(s, (i, conn));
                }
                _ => {}
            }
        }
    })
}

struct Throughput {
    up: f64,
    down: f64,
}

/// Phase 1: `CLIENTS` clients on `servers` (round robin) send `MESSAGES` each, then the servers send
/// `MESSAGES` to each session; messages/s each way.
async fn throughput(servers: Vec<Server>) -> Result<Throughput, BoxError> {
    let handles: Vec<ServerHandle> = servers.iter().map(Server::handle).collect();
    let addrs: Vec<_> = servers.iter().map(Server::local_addr).collect();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let at = Arc::new(Mutex::new(HashMap::new()));
    let watchers: Vec<_> = servers
        .into_iter()
        .enumerate()
        .map(|(i, s)| watch(s, i, Arc::clone(&received), Arc::clone(&at)))
        .collect();
    let mut clients = Vec::new();
    let mut sids = Vec::new();
    for i in 0..CLIENTS {
        let (c, s) = connect(addrs[i % addrs.len()]).await?;
        sids.push(s);
        clients.push(c);
    }
    // A session is registered a round trip after the client's Connected.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let payload = vec![7u8; SIZE];
    let start = Instant::now();
    let senders: Vec<_> = clients
        .iter()
        .map(|c| {
            let s = c.sender();
            let p = payload.clone();
            tokio::spawn(async move {
                for _ in 0..MESSAGES {
                    if s.send(p.clone()).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    let total = MESSAGES * CLIENTS as u64;
    let limit = Instant::now() + Duration::from_secs(60);
    while received.load(std::sync::atomic::Ordering::Relaxed) < total {
        if Instant::now() > limit {
            return Err("client → server messages not all delivered within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let up = total as f64 / start.elapsed().as_secs_f64();
    for s in senders {
        s.await?;
    }
    // Server → client: the application sends to every session through its server's handle.
    let start = Instant::now();
    let counters: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut n = 0u64;
                let limit = tokio::time::Instant::now() + Duration::from_secs(60);
                while n < MESSAGES {
                    match tokio::time::timeout_at(limit, c.next_event()).await {
                        Ok(Some(ClientEvent::Message(_))) => n += 1,
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
                c.close().await;
                n
            })
        })
        .collect();
    for (k, sid) in sids.iter().enumerate() {
        let h = handles[k % handles.len()].clone();
        let sid = *sid;
        let p = payload.clone();
        tokio::spawn(async move {
            // A backend keeps a window of sends in flight (each returns once Redis holds it).
            let mut window = tokio::task::JoinSet::new();
            for _ in 0..MESSAGES {
                if window.len() >= WINDOW {
                    let _ = window.join_next().await;
                }
                let (h, p) = (h.clone(), p.clone());
                window.spawn(async move {
                    // Paced by the session's room: retry what the store refuses.
                    while h.send_to_session_written(sid, p.clone()).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
            }
            while window.join_next().await.is_some() {}
        });
    }
    let mut got = 0;
    for c in counters {
        got += c.await?;
    }
    let down = got as f64 / start.elapsed().as_secs_f64();
    if got < total {
        return Err(format!("server → client: {got} of {total} delivered").into());
    }
    drop(handles);
    for w in watchers {
        w.abort();
    }
    Ok(Throughput { up, down })
}

/// Phase 3: `RESUME_CLIENTS` clients through `lb`; `RESUMES` forced disconnects, each timed from the
/// client's `Dead` to its `Resumed`. Returns the latency histogram (µs).
async fn resumes(servers: Vec<Server>, lb: Option<Balancer>) -> Result<Histogram<u64>, BoxError> {
    let handles: Vec<ServerHandle> = servers.iter().map(Server::handle).collect();
    let addr = lb
        .as_ref()
        .map_or_else(|| servers[0].local_addr(), |b| b.addr);
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let at = Arc::new(Mutex::new(HashMap::new()));
    let watchers: Vec<_> = servers
        .into_iter()
        .enumerate()
        .map(|(i, s)| watch(s, i, Arc::clone(&received), Arc::clone(&at)))
        .collect();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let resumed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut sids = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..RESUME_CLIENTS {
        let (mut c, sid) = connect(addr).await?;
        sids.push(sid);
        let hist = Arc::clone(&hist);
        let resumed = Arc::clone(&resumed);
        tasks.push(tokio::spawn(async move {
            let mut dead_at = None;
            while let Some(e) = c.next_event().await {
                match e {
                    ClientEvent::Dead { .. } => dead_at = Some(Instant::now()),
                    ClientEvent::Resumed { .. } => {
                        if let Some(t) = dead_at.take() {
                            let us = t.elapsed().as_micros() as u64;
                            let _ = hist.lock().expect("hist").record(us.max(1));
                            resumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let limit = Instant::now() + Duration::from_secs(60);
    for k in 0..RESUMES {
        let sid = sids[k % sids.len()];
        let target = at.lock().expect("at").get(&sid).copied();
        if let Some((server, conn)) = target {
            let before = resumed.load(std::sync::atomic::Ordering::Relaxed);
            let _ = handles[server].disconnect(conn);
            while resumed.load(std::sync::atomic::Ordering::Relaxed) == before {
                if Instant::now() > limit {
                    return Err("resumes did not complete within 60 s".into());
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    for w in watchers {
        w.abort();
    }
    let h = hist.lock().expect("hist").clone();
    Ok(h)
}

/// Phase 4: `PARKED` sessions connected (live), then their connections dropped (parked); Redis's
/// used memory per session in each state.
async fn memory(redis: &RedisServer) -> Result<(f64, f64), BoxError> {
    let mut server = fleet(redis, "mem")?;
    let addr = server.local_addr();
    let drain = tokio::spawn(async move { while server.next_event().await.is_some() {} });
    let (_, before) = redis_stats(redis);
    let mut clients = Vec::new();
    for _ in 0..PARKED {
        clients.push(connect(addr).await?.0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, live) = redis_stats(redis);
    // Dropping a client ends its connection without a CLOSE: the server parks the session.
    drop(clients);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, parked) = redis_stats(redis);
    drain.abort();
    let per = |m: u64| (m as f64 - before as f64) / PARKED as f64;
    Ok((per(live), per(parked)))
}

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let redis = RedisServer::start();
        println!("fleet_bench: redis-server on port {} (no persistence)", redis.port);

        let mem = throughput(vec![Server::bind(server_config())?]).await?;
        let (a, _) = redis_stats(&redis);
        let fl = throughput(vec![
            fleet(&redis, "t0")?,
            fleet(&redis, "t1")?,
            fleet(&redis, "t2")?,
        ])
        .await?;
        let (b, _) = redis_stats(&redis);
        let (calls, by) = calls_between(&a, &b);
        let messages = 2 * MESSAGES * CLIENTS as u64;
        println!(
            "throughput ({CLIENTS} clients x {MESSAGES} messages of {SIZE} B each way; server->client {WINDOW} sends in flight per session): client->server memory {:.0}/s fleet {:.0}/s (x{:.2}); server->client memory {:.0}/s fleet {:.0}/s (x{:.2})",
            mem.up,
            fl.up,
            fl.up / mem.up,
            mem.down,
            fl.down,
            fl.down / mem.down
        );
        println!(
            "redis commands per message: {:.3} ({calls} for {messages} messages both ways: {by})",
            calls as f64 / messages as f64
        );

        let h_mem = resumes(vec![Server::bind(server_config())?], None).await?;
        let servers = vec![fleet(&redis, "r0")?, fleet(&redis, "r1")?, fleet(&redis, "r2")?];
        let lb = Balancer::start(servers.iter().map(Server::local_addr).collect()).await;
        let (a, _) = redis_stats(&redis);
        let h_fleet = resumes(servers, Some(lb)).await?;
        let (b, _) = redis_stats(&redis);
        let (calls, by) = calls_between(&a, &b);
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "resume ({RESUMES} forced disconnects, {RESUME_CLIENTS} clients; dead -> resumed): memory store p50 {:.2} ms p99 {:.2} ms; fleet across 3 servers p50 {:.2} ms p99 {:.2} ms",
            ms(&h_mem, 0.5),
            ms(&h_mem, 0.99),
            ms(&h_fleet, 0.5),
            ms(&h_fleet, 0.99)
        );
        println!(
            "redis commands per resume: {:.2} ({calls} for {RESUMES} resumes, background included: {by})",
            calls as f64 / RESUMES as f64
        );

        let (live, parked) = memory(&redis).await?;
        println!(
            "redis memory per session ({PARKED} sessions, nothing unacknowledged): live {live:.0} B, parked {parked:.0} B"
        );
        Ok(())
    })
}
