//! Helpers of the fleet tests: a `redis-server` of the test's own (free loopback port, temporary
//! directory, stopped on drop), a TCP load balancer that sends each new connection to a server of its
//! choosing, and readers of the fleet's streams.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vitals::fleet::FleetKeys;
use vitals::vitals_proto::SessionId;

/// A `redis-server` child on 127.0.0.1, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    /// Extra `redis-server` arguments (persistence settings) reused on restart.
    args: Vec<String>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts one without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts one with these extra arguments (e.g. `--appendonly yes --appendfsync always`).
    pub fn start_with(args: &[&str]) -> RedisServer {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vitals-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(["--logfile", "redis.log", "--daemonize", "no"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not start ({e}): install it with scripts/setup")
            });
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < end,
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// True if it answers PING.
    pub fn ping(&self) -> bool {
        self.command(&["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    /// Sends one command (RESP), returns the raw first reply chunk.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Kills it (SIGKILL): what it had not written to disk is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (SIGSTOP) or continues (SIGCONT) it: an outage that keeps connections open.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }

    /// Starts it again on the same port and directory (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP load balancer on 127.0.0.1: each new connection goes to one of its backends (round robin),
/// and lives as long as both sides do — or until [`cut`](Self::cut) drops it (both sides see it end).
#[derive(Clone)]
pub struct Balancer {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<Option<SocketAddr>>>>,
    next: Arc<AtomicU64>,
    /// The proxied connections still open, oldest first.
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Balancer {
    /// Starts one on the current tokio runtime.
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Balancer {
            addr: listener.local_addr().unwrap(),
            backends: Arc::new(Mutex::new(backends.into_iter().map(Some).collect())),
            next: Arc::new(AtomicU64::new(0)),
            live: Arc::new(Mutex::new(Vec::new())),
        };
        let me = b.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(to) = me.pick() else { continue };
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut live = me.live.lock().unwrap();
                live.retain(|t| !t.is_finished());
                live.push(task.abort_handle());
            }
        });
        b
    }

    /// Drops the `k`-th (modulo) proxied connection still open: its client and its server both see
    /// the connection end. False if none is open.
    pub fn cut(&self, k: usize) -> bool {
        let mut live = self.live.lock().unwrap();
        live.retain(|t| !t.is_finished());
        if live.is_empty() {
            return false;
        }
        let i = k % live.len();
        live.swap_remove(i).abort();
        true
    }

    /// The next live backend, round robin.
    fn pick(&self) -> Option<SocketAddr> {
        let backends = self.backends.lock().unwrap();
        let live: Vec<SocketAddr> = backends.iter().flatten().copied().collect();
        if live.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        Some(live[i % live.len()])
    }

    /// Stops sending new connections to backend `i` (a server being drained or gone).
    pub fn remove(&self, i: usize) {
        self.backends.lock().unwrap()[i] = None;
    }
}

/// Every inbound message of the fleet, per session, in stream order: (seq, payload).
pub async fn inbound(url: &str, keys: &FleetKeys) -> HashMap<SessionId, Vec<(u64, Vec<u8>)>> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut out: HashMap<SessionId, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for p in 0..keys.partitions() {
        let entries: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XRANGE")
            .arg(keys.inbound(p))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for (_, fields) in entries {
            let text = |k: &str| match fields.get(k) {
                Some(redis::Value::BulkString(b)) => b.clone(),
                other => panic!("field {k}: {other:?}"),
            };
            let sid =
                FleetKeys::parse_session(std::str::from_utf8(&text("session")).unwrap()).unwrap();
            let seq: u64 = std::str::from_utf8(&text("seq")).unwrap().parse().unwrap();
            out.entry(sid).or_default().push((seq, text("data")));
        }
    }
    out
}

/// The number a test message carries in its first 8 bytes.
pub fn num(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().unwrap())
}

/// Waits (≤ 10 s) until Redis's inbound streams hold `each` messages of every session in `sids`, then
/// asserts that each holds exactly sequence numbers `0..each`, in order, carrying the numbers
/// `0..each`: every message exactly once, in order.
pub async fn assert_inbound_exactly_once(
    url: &str,
    keys: &FleetKeys,
    sids: &[SessionId],
    each: u64,
) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = inbound(url, keys).await;
        let done = sids
            .iter()
            .all(|s| stored.get(s).is_some_and(|v| v.len() as u64 >= each));
        if done || Instant::now() > end {
            for sid in sids {
                let entries = stored.get(sid).cloned().unwrap_or_default();
                let seqs: Vec<u64> = entries.iter().map(|(s, _)| *s).collect();
                assert_eq!(
                    seqs,
                    (0..each).collect::<Vec<_>>(),
                    "inbound stream of {sid:?}"
                );
                let data: Vec<u64> = entries.iter().map(|(_, d)| num(d)).collect();
                assert_eq!(
                    data,
                    (0..each).collect::<Vec<_>>(),
                    "inbound payloads of {sid:?}"
                );
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every event of the fleet (all partitions), as field maps.
pub async fn events(url: &str, keys: &FleetKeys) -> Vec<HashMap<String, String>> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut out = Vec::new();
    for p in 0..keys.partitions() {
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(keys.events(p))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        out.extend(entries.into_iter().map(|(_, f)| f));
    }
    out
}
