//! Helpers shared by the loopback tests: fast timing, event waiting with a bound.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::Duration;

use vitals::{ClientConfig, ClientEvent, Server, ServerConfig, ServerEvent};

pub const INTERVAL: Duration = Duration::from_millis(100);
pub const TIMEOUT: Duration = Duration::from_millis(400);

pub fn server_config() -> ServerConfig {
    let mut cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        loops: 2,
        ..ServerConfig::default()
    }
    .with_timing(INTERVAL, TIMEOUT);
    cfg.proto.policy.min_interval = Duration::from_millis(20);
    cfg.proto.policy.min_timeout = Duration::from_millis(100);
    cfg.proto.policy.max_interval = Duration::from_secs(60);
    cfg.proto.policy.max_timeout = Duration::from_secs(600);
    cfg
}

pub fn client_config(server: &Server) -> ClientConfig {
    let mut cfg = ClientConfig::new(server.local_addr()).with_timing(INTERVAL, TIMEOUT);
    cfg.backoff.base = Duration::from_millis(20);
    cfg.backoff.cap = Duration::from_millis(200);
    cfg
}

/// Waits (at most `within`) for a server event matching `f`; panics with what was seen otherwise.
pub async fn server_event<T>(
    server: &mut Server,
    within: Duration,
    mut f: impl FnMut(&ServerEvent) -> Option<T>,
) -> T {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, server.next_event()).await {
            Ok(Some(e)) => {
                if let Some(t) = f(&e) {
                    return t;
                }
                seen.push(e);
            }
            Ok(None) => panic!("server stopped; saw {seen:?}"),
            Err(_) => panic!("no matching server event within {within:?}; saw {seen:?}"),
        }
    }
}

/// Waits (at most `within`) for a client event matching `f`.
pub async fn client_event<T>(
    client: &mut vitals::Client,
    within: Duration,
    mut f: impl FnMut(&ClientEvent) -> Option<T>,
) -> T {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(e)) => {
                if let Some(t) = f(&e) {
                    return t;
                }
                seen.push(e);
            }
            Ok(None) => panic!("client stopped; saw {seen:?}"),
            Err(_) => panic!("no matching client event within {within:?}; saw {seen:?}"),
        }
    }
}

use std::io::Write;
use vitals::vitals_proto::frame::{self, Hello};

/// A valid HELLO proposing the test timing, followed by the ACK(0) with which a client confirms a new
/// session once it has the WELCOME (sent ahead here: the server takes it as that confirmation).
pub fn hello_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_hello(
        &mut out,
        &Hello {
            version: frame::VERSION,
            interval_ms: INTERVAL.as_millis() as u32,
            timeout_ms: TIMEOUT.as_millis() as u32,
            resume: None,
            auth: None,
        },
    );
    frame::encode_ack(&mut out, 0);
    out
}

/// A raw TCP connection to the server that has sent `bytes`.
pub fn raw_peer(server: &Server, bytes: &[u8]) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
    s.write_all(bytes).unwrap();
    s
}

/// Waits for connection `conn` to be closed and asserts it was convicted for silence `TIMEOUT` after
/// `silent_since` (its last sign of life): never before (minus 20 ms of clock slack), and within a
/// tick plus scheduling noise (250 ms on a loaded machine).
pub async fn assert_convicted_at_timeout(
    server: &mut Server,
    conn: vitals::ConnId,
    silent_since: tokio::time::Instant,
) {
    let (reason, elapsed) = server_event(server, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed {
            conn: c, reason, ..
        } if *c == conn => Some((reason.clone(), silent_since.elapsed())),
        _ => None,
    })
    .await;
    assert_eq!(reason, vitals::DisconnectReason::SilenceTimeout);
    assert!(
        elapsed >= TIMEOUT - Duration::from_millis(20),
        "convicted early: {elapsed:?}"
    );
    assert!(
        elapsed < TIMEOUT + Duration::from_millis(250),
        "convicted late: {elapsed:?}"
    );
}

/// Counts the messages a test has read, so that a sender can stay a bounded distance ahead of them:
/// the server's event channel is unbounded, and without pacing the application can lag its event
/// loop by thousands of messages (a "disconnect after message N" then names a connection already
/// replaced).
#[derive(Clone, Default)]
pub struct ReadCount(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl ReadCount {
    /// `n` more messages were read.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Messages read so far.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until message `i` is at most `ahead` past the messages read.
    pub async fn wait_until_within(&self, i: u64, ahead: u64) {
        while i > self.get() + ahead {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
