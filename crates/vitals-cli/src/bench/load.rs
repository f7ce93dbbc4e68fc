//! The connections of one bench process: opened at a bounded concurrency from given source addresses,
//! each driven by a [`peer`](super::peer) task, counted in shared [`Stats`]. Used by a single-process
//! `vitals bench` and by each child process of a spread one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use vitals::vitals_proto::{Config as ProtoConfig, Connection, Event, JsonConfig, Role};
use vitals::{Codec, DisconnectReason};

use super::peer::{self, End, Mode, Observer};

/// How long one TCP connect may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters shared by every peer task.
pub(crate) struct Stats {
    pub(crate) connected: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) lost: AtomicU64,
    /// Our pings the server answered (RTT samples).
    pub(crate) client_pings: AtomicU64,
    /// The server's pings we answered.
    pub(crate) server_pings: AtomicU64,
    /// RTT samples are recorded while this is set (the measurement window).
    pub(crate) measuring: AtomicBool,
    /// RTT in µs.
    pub(crate) rtt: Mutex<Histogram<u64>>,
    /// The timing the server granted (first connection).
    pub(crate) granted: Mutex<Option<(Duration, Duration)>>,
    /// First few reasons of lost connections.
    pub(crate) lost_reasons: Mutex<Vec<String>>,
    /// Connections that ended on their own, by reason label (`DisconnectReason::label`, with the
    /// close code for a peer's CLOSE): how a frozen process's connections were ended.
    pub(crate) ended: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn new() -> anyhow::Result<Stats> {
        Ok(Stats {
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            client_pings: AtomicU64::new(0),
            server_pings: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            rtt: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
            granted: Mutex::new(None),
            lost_reasons: Mutex::new(Vec::new()),
            ended: Mutex::new(BTreeMap::new()),
        })
    }

    /// (our pings answered, the server's pings answered) so far.
    pub(crate) fn heartbeats(&self) -> (u64, u64) {
        (
            self.client_pings.load(Ordering::Relaxed),
            self.server_pings.load(Ordering::Relaxed),
        )
    }

    /// Connections that have finished their attempt (connected or failed).
    pub(crate) fn settled(&self) -> u64 {
        self.connected.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// A copy of the RTT histogram.
    pub(crate) fn rtt(&self) -> anyhow::Result<Histogram<u64>> {
        self.rtt
            .lock()
            .map(|h| h.clone())
            .map_err(|_| anyhow::anyhow!("RTT histogram poisoned"))
    }

    /// The first few reasons of lost connections.
    pub(crate) fn lost_reasons(&self) -> Vec<String> {
        self.lost_reasons
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Connections ended on their own, by reason.
    pub(crate) fn ended(&self) -> BTreeMap<String, u64> {
        self.ended.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn record_end(&self, reason: &DisconnectReason) {
        let label = match reason {
            DisconnectReason::PeerClosed { code, .. } => format!("peer_closed:{code:?}"),
            other => other.label().to_string(),
        };
        if let Ok(mut e) = self.ended.lock() {
            *e.entry(label).or_insert(0) += 1;
        }
    }
}

/// One peer's observer: feeds [`Stats`] and releases the handshake permit once connected.
struct PeerObs {
    stats: Arc<Stats>,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    connected: AtomicBool,
}

impl Observer for PeerObs {
    fn connected(&self, granted: Option<(Duration, Duration)>) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            self.stats.connected.fetch_add(1, Ordering::Relaxed);
            if let Some(g) = granted
                && let Ok(mut slot) = self.stats.granted.lock()
            {
                slot.get_or_insert(g);
            }
        }
        if let Ok(mut p) = self.permit.lock() {
            p.take();
        }
    }

    fn event(&self, event: &Event) {
        if let Event::Rtt(rtt) = event {
            self.stats.client_pings.fetch_add(1, Ordering::Relaxed);
            if self.stats.measuring.load(Ordering::Relaxed)
                && let Ok(mut h) = self.stats.rtt.lock()
            {
                h.saturating_record(rtt.latest.as_micros().max(1) as u64);
            }
        }
    }

    fn pongs_sent(&self, n: u64) {
        self.stats.server_pings.fetch_add(n, Ordering::Relaxed);
    }
}

/// What to open.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    /// The server.
    pub(crate) server: SocketAddr,
    /// Connections.
    pub(crate) n: u32,
    /// Source addresses, used round-robin (empty: the system's choice).
    pub(crate) sources: Vec<IpAddr>,
    /// Wire protocol.
    pub(crate) codec: Codec,
    /// Proposed heartbeat interval.
    pub(crate) interval: Duration,
    /// Proposed timeout.
    pub(crate) timeout: Duration,
    /// Most handshakes in flight at once.
    pub(crate) concurrency: usize,
}

impl LoadSpec {
    /// When the connect phase gives up: every attempt ends within the connect timeout plus one
    /// liveness timeout for the handshake, and at most `concurrency` run at once.
    pub(crate) fn connect_deadline(&self, started: Instant) -> Instant {
        let waves = u64::from(self.n)
            .div_ceil(self.concurrency.max(1) as u64)
            .max(1);
        started
            + (CONNECT_TIMEOUT + self.timeout).min(Duration::from_secs(10))
            + Duration::from_millis(50).saturating_mul(u32::try_from(waves).unwrap_or(u32::MAX))
            + Duration::from_secs(5)
    }
}

/// Running connections.
pub(crate) struct Load {
    /// Their counters.
    pub(crate) stats: Arc<Stats>,
    mode: watch::Sender<Mode>,
    tasks: JoinSet<()>,
}

impl Load {
    /// Starts opening `spec.n` connections (at most `spec.concurrency` handshakes at once).
    pub(crate) fn start(spec: &LoadSpec) -> anyhow::Result<Load> {
        let stats = Arc::new(Stats::new()?);
        let (mode_tx, mode_rx) = watch::channel(Mode::Run);
        let gate = Arc::new(Semaphore::new(spec.concurrency.max(1)));
        let proto_cfg = Arc::new({
            let mut c = ProtoConfig::default();
            c.liveness.interval = spec.interval;
            c.liveness.timeout = spec.timeout;
            c
        });
        let json_cfg = Arc::new({
            let mut c = JsonConfig::default();
            c.liveness.interval = spec.interval;
            c.liveness.timeout = spec.timeout;
            c
        });
        let mut tasks = JoinSet::new();
        for i in 0..spec.n {
            let bind =
                (!spec.sources.is_empty()).then(|| spec.sources[i as usize % spec.sources.len()]);
            let stats = Arc::clone(&stats);
            let gate = Arc::clone(&gate);
            let mode = mode_rx.clone();
            let (server, codec, timeout) = (spec.server, spec.codec, spec.timeout);
            let (proto_cfg, json_cfg) = (Arc::clone(&proto_cfg), Arc::clone(&json_cfg));
            tasks.spawn(async move {
                let Ok(permit) = gate.acquire_owned().await else {
                    return;
                };
                let stream = match tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    peer::connect(server, bind),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, ?bind, "connect failed");
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(?bind, "connect timed out");
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                if let Err(e) = vitals::socket::SocketOptions::for_timeout(timeout).apply(&stream) {
                    tracing::debug!(error = %e, "socket options not applied");
                }
                let now = Instant::now();
                let proto = match codec {
                    Codec::Binary => Connection::client(now, proto_cfg),
                    Codec::Json => Connection::json(now, Role::Client, json_cfg),
                };
                let obs = PeerObs {
                    stats: Arc::clone(&stats),
                    permit: Mutex::new(Some(permit)),
                    connected: AtomicBool::new(false),
                };
                let end = peer::drive(stream, proto, codec, mode, &obs).await;
                let was_connected = obs.connected.load(Ordering::Relaxed);
                match end {
                    End::Stopped if was_connected => {}
                    End::Stopped => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    End::Lost(reason) => {
                        if was_connected {
                            stats.lost.fetch_add(1, Ordering::Relaxed);
                            stats.record_end(&reason);
                        } else {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(reason = reason.label(), was_connected, "connection lost");
                        if let Ok(mut r) = stats.lost_reasons.lock()
                            && r.len() < 5
                        {
                            r.push(format!("{reason:?}"));
                        }
                    }
                }
            });
        }
        Ok(Load {
            stats,
            mode: mode_tx,
            tasks,
        })
    }

    /// Waits until every connection has settled (connected or failed) or `deadline` passes, calling
    /// `progress` every 20 ms.
    pub(crate) async fn wait_settled(&self, n: u32, deadline: Instant, mut progress: impl FnMut()) {
        loop {
            progress();
            if self.stats.settled() >= u64::from(n) || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes every connection orderly, bounded: tasks still closing after 5 s (plus 1 s per 2,000
    /// connections) are aborted.
    pub(crate) async fn stop(mut self) {
        let _ = self.mode.send(Mode::Stop);
        let bound = Duration::from_secs(5) + Duration::from_millis(self.tasks.len() as u64 / 2);
        let closed = tokio::time::timeout(bound, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if closed.is_err() {
            tracing::warn!(
                left = self.tasks.len(),
                "connections still closing after {bound:?}; aborting them"
            );
            self.tasks.abort_all();
        }
    }
}
