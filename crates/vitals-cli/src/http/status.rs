//! What `vitals serve` counts, and the `/status.json` document built from it.
//!
//! The serve loop feeds every [`ServerEvent`] to [`Status::record`] and calls [`Status::tick`] once a
//! second; the HTTP side calls [`Status::snapshot`]. RTT samples go into an HDR histogram (µs, 3
//! significant figures); the last [`SERIES_LEN`] seconds are kept as per-second buckets for the
//! status page's charts.
//!
//! A worker of `vitals serve --processes N` also exports its whole RTT histogram in its snapshot
//! ([`Status::exporting_rtt`]); its supervisor adds the workers' snapshots up with [`merge`] into the
//! one document its own page serves.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use vitals::{DisconnectReason, ServerEvent};

/// Seconds of history kept for the charts.
pub(crate) const SERIES_LEN: usize = 120;

/// Largest RTT the histogram holds (longer samples are clamped to it): one hour, in µs.
const RTT_MAX_US: u64 = 3_600_000_000;

/// Upper edges (µs) of the RTT histogram bars on the status page; the last bar takes the rest.
const RTT_EDGES_US: [u64; 14] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000,
];

/// The server's settings shown on the page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Info {
    /// Address the server listens on.
    pub(crate) listen: SocketAddr,
    /// `binary` or `json`.
    pub(crate) codec: String,
    /// Heartbeat interval in milliseconds.
    pub(crate) interval_ms: u64,
    /// Dead timeout in milliseconds.
    pub(crate) timeout_ms: u64,
    /// Event-loop threads (all processes together).
    pub(crate) loops: usize,
    /// Server processes sharing the port (`--processes`; 1 for one process).
    #[serde(default = "one")]
    pub(crate) processes: usize,
    /// Connection limit (all processes together).
    pub(crate) max_connections: usize,
    /// Whether messages are echoed back.
    pub(crate) echo: bool,
    /// Where sessions live: `memory`, or `redis` with this node's id in the fleet
    /// (`/fleet.json` and `vitals_fleet_up` say more).
    pub(crate) store: String,
}

fn one() -> usize {
    1
}

/// Is this ending a conviction (the server judged the peer dead) rather than an orderly or
/// peer-initiated end?
pub(crate) fn is_conviction(reason: &DisconnectReason) -> bool {
    matches!(
        reason,
        DisconnectReason::SilenceTimeout | DisconnectReason::WriteStall
    )
}

/// One second of history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Bucket {
    /// Unix time (s) at the start of the bucket.
    t: u64,
    /// Open connections when the bucket was started.
    open: usize,
    /// New sessions (or JSON connections) established.
    connects: u64,
    /// Sessions resumed (a reconnecting client came back).
    resumes: u64,
    /// Connections ended, any reason.
    disconnects: u64,
    /// Connections ended by conviction (silence timeout, write stall).
    convictions: u64,
    /// Application messages received.
    messages: u64,
}

#[derive(Debug)]
struct Inner {
    established: usize,
    connects: u64,
    resumes: u64,
    messages: u64,
    message_bytes: u64,
    echoed: u64,
    send_refused: u64,
    suspects: u64,
    disconnects: BTreeMap<&'static str, u64>,
    rtt: Histogram<u64>,
    series: VecDeque<Bucket>,
}

/// Counters of one running server, shared between the serve loop and the HTTP side.
#[derive(Debug)]
pub(crate) struct Status {
    info: Info,
    started: Instant,
    inner: Mutex<Inner>,
    /// Snapshots carry the whole RTT histogram (a worker's, for its supervisor).
    export_rtt: bool,
}

/// RTT summary in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RttSummary {
    /// Samples recorded.
    pub(crate) samples: u64,
    /// Smallest sample.
    pub(crate) min_ms: f64,
    /// Mean.
    pub(crate) mean_ms: f64,
    /// Median.
    pub(crate) p50_ms: f64,
    /// 90th percentile.
    pub(crate) p90_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// Largest sample.
    pub(crate) max_ms: f64,
    /// Histogram bars: samples with RTT up to `le_us` (µs; `null` for the last, open-ended bar).
    pub(crate) buckets: Vec<RttBucket>,
    /// The whole histogram ([`crate::hist`] text), in a worker's snapshot only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hdr: Option<String>,
}

/// One bar of the RTT histogram.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RttBucket {
    /// Upper edge in µs, inclusive; `None` for the last bar.
    pub(crate) le_us: Option<u64>,
    /// Samples in the bar.
    pub(crate) count: u64,
}

/// Connection counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Connections {
    /// TCP connections open now (including those still in their handshake).
    pub(crate) open: usize,
    /// Connections with an established session (binary) or accepted (JSON).
    pub(crate) established: usize,
    /// Sessions established since start (new and resumed).
    pub(crate) total: u64,
    /// Of those, resumed sessions.
    pub(crate) resumed: u64,
}

/// Message counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Messages {
    /// Application messages received.
    pub(crate) received: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// Echoed back (with `--echo`).
    pub(crate) echoed: u64,
    /// Sends the server refused (buffer full, session unconfirmed, session mid-resume).
    pub(crate) refused: u64,
}

/// One worker process of a supervisor, as its page shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct WorkerState {
    /// Its index (0-based; a restarted worker keeps its index).
    pub(crate) index: usize,
    /// Its pid while it runs.
    pub(crate) pid: Option<u32>,
    /// `starting`, `up`, `restarting`, `failed` (exited too often; not restarted) or `stopped`.
    pub(crate) state: String,
    /// Times it was restarted after exiting.
    pub(crate) restarts: u64,
    /// Its own status page (loopback, ephemeral port).
    pub(crate) status_page: Option<SocketAddr>,
    /// How it last exited.
    pub(crate) last_exit: Option<String>,
    /// Why its page could not be read for this document, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unreadable: Option<String>,
}

/// The `/status.json` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Settings.
    pub(crate) server: Info,
    /// Seconds since start.
    pub(crate) uptime_s: f64,
    /// Connection counts.
    pub(crate) connections: Connections,
    /// Message counts.
    pub(crate) messages: Messages,
    /// RTT statistics.
    pub(crate) rtt: RttSummary,
    /// Convictions since start (silence timeout + write stall).
    pub(crate) convictions: u64,
    /// Phi-accrual suspicions raised.
    pub(crate) suspects: u64,
    /// Connections ended, by reason label.
    pub(crate) disconnects: BTreeMap<String, u64>,
    /// Per-second history, oldest first.
    series: Vec<Bucket>,
    /// A supervisor's worker processes (`--processes N`); absent for one process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) workers: Vec<WorkerState>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Status {
    /// Empty counters for a server with settings `info`.
    pub(crate) fn new(info: Info) -> Result<Status, hdrhistogram::CreationError> {
        let rtt = Histogram::new_with_bounds(1, RTT_MAX_US, 3)?;
        let mut series = VecDeque::with_capacity(SERIES_LEN);
        series.push_back(Bucket {
            t: unix_now(),
            ..Bucket::default()
        });
        Ok(Status {
            info,
            export_rtt: false,
            started: Instant::now(),
            inner: Mutex::new(Inner {
                established: 0,
                connects: 0,
                resumes: 0,
                messages: 0,
                message_bytes: 0,
                echoed: 0,
                send_refused: 0,
                suspects: 0,
                disconnects: BTreeMap::new(),
                rtt,
                series,
            }),
        })
    }

    /// Snapshots carry the whole RTT histogram, for a supervisor to merge (a worker's status).
    pub(crate) fn exporting_rtt(mut self) -> Status {
        self.export_rtt = true;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one server event.
    pub(crate) fn record(&self, event: &ServerEvent) {
        let mut s = self.lock();
        let inner = &mut *s;
        let Some(bucket) = inner.series.back_mut() else {
            return;
        };
        match event {
            ServerEvent::Connected { resumed, .. } => {
                inner.established += 1;
                inner.connects += 1;
                bucket.connects += 1;
                if *resumed {
                    inner.resumes += 1;
                    bucket.resumes += 1;
                }
            }
            ServerEvent::Message { payload, .. } => {
                inner.messages += 1;
                inner.message_bytes += payload.len() as u64;
                bucket.messages += 1;
            }
            ServerEvent::Rtt { rtt, .. } => {
                let us = u64::try_from(rtt.latest.as_micros()).unwrap_or(u64::MAX);
                inner.rtt.saturating_record(us.clamp(1, RTT_MAX_US));
            }
            ServerEvent::Suspect { .. } => inner.suspects += 1,
            ServerEvent::SendRefused { .. } | ServerEvent::SessionSendRefused { .. } => {
                inner.send_refused += 1
            }
            ServerEvent::Closed {
                reason, connected, ..
            } => {
                if *connected {
                    inner.established = inner.established.saturating_sub(1);
                }
                *inner.disconnects.entry(reason.label()).or_insert(0) += 1;
                bucket.disconnects += 1;
                if is_conviction(reason) {
                    bucket.convictions += 1;
                }
            }
        }
    }

    /// Counts one message echoed back.
    pub(crate) fn echoed(&self) {
        self.lock().echoed += 1;
    }

    /// Counts one echo the server handle would not queue (e.g. the session was being resumed).
    pub(crate) fn echo_failed(&self) {
        self.lock().send_refused += 1;
    }

    /// Starts a new one-second bucket, noting `open` connections.
    pub(crate) fn tick(&self, open: usize) {
        let mut s = self.lock();
        if s.series.len() >= SERIES_LEN {
            s.series.pop_front();
        }
        s.series.push_back(Bucket {
            t: unix_now(),
            open,
            ..Bucket::default()
        });
    }

    /// The document for `/status.json`, with `open` TCP connections now.
    pub(crate) fn snapshot(&self, open: usize) -> Snapshot {
        let s = self.lock();
        let mut rtt = summarize(&s.rtt);
        if self.export_rtt {
            match crate::hist::encode(&s.rtt) {
                Ok(text) => rtt.hdr = Some(text),
                Err(e) => tracing::warn!(error = %e, "RTT histogram not exported"),
            }
        }
        let mut series: Vec<Bucket> = s.series.iter().cloned().collect();
        // The current bucket shows the connections open right now.
        if let Some(last) = series.last_mut() {
            last.open = open;
        }
        let disconnects: BTreeMap<String, u64> = s
            .disconnects
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        Snapshot {
            server: self.info.clone(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            connections: Connections {
                open,
                established: s.established,
                total: s.connects,
                resumed: s.resumes,
            },
            messages: Messages {
                received: s.messages,
                bytes: s.message_bytes,
                echoed: s.echoed,
                refused: s.send_refused,
            },
            rtt,
            convictions: convictions(&disconnects),
            suspects: s.suspects,
            disconnects,
            series,
            workers: Vec::new(),
        }
    }
}

/// Convictions among disconnects by reason: silence timeouts and write stalls.
fn convictions(disconnects: &BTreeMap<String, u64>) -> u64 {
    [
        DisconnectReason::SilenceTimeout.label(),
        DisconnectReason::WriteStall.label(),
    ]
    .iter()
    .filter_map(|label| disconnects.get(*label))
    .sum()
}

/// Percentiles and bars of an RTT histogram (µs).
fn summarize(h: &Histogram<u64>) -> RttSummary {
    let samples = h.len();
    let q = |x: f64| {
        if samples == 0 {
            0.0
        } else {
            ms(h.value_at_quantile(x))
        }
    };
    let mut buckets: Vec<RttBucket> = RTT_EDGES_US
        .iter()
        .map(|&le| RttBucket {
            le_us: Some(le),
            count: 0,
        })
        .chain(std::iter::once(RttBucket {
            le_us: None,
            count: 0,
        }))
        .collect();
    for v in h.iter_recorded() {
        let value = v.value_iterated_to();
        let i = RTT_EDGES_US
            .iter()
            .position(|&le| value <= le)
            .unwrap_or(RTT_EDGES_US.len());
        if let Some(b) = buckets.get_mut(i) {
            b.count += v.count_at_value();
        }
    }
    RttSummary {
        samples,
        min_ms: if samples == 0 { 0.0 } else { ms(h.min()) },
        mean_ms: if samples == 0 { 0.0 } else { h.mean() / 1000.0 },
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        max_ms: if samples == 0 { 0.0 } else { ms(h.max()) },
        buckets,
        hdr: None,
    }
}

/// One document for a supervisor's page: the workers' snapshots (`parts`) added up under the
/// supervisor's `info`, with its `uptime_s` and its `workers`. Counts are summed, the RTT
/// statistics come from the sum of the workers' histograms (exact percentiles of the whole), the
/// per-second history is summed by second.
pub(crate) fn merge(
    info: Info,
    uptime_s: f64,
    parts: &[Snapshot],
    workers: Vec<WorkerState>,
) -> anyhow::Result<Snapshot> {
    let mut rtt = Histogram::<u64>::new_with_bounds(1, RTT_MAX_US, 3)?;
    let mut connections = Connections::default();
    let mut messages = Messages::default();
    let mut suspects = 0;
    let mut disconnects = BTreeMap::new();
    let mut series: BTreeMap<u64, Bucket> = BTreeMap::new();
    for p in parts {
        let c = &p.connections;
        connections.open += c.open;
        connections.established += c.established;
        connections.total += c.total;
        connections.resumed += c.resumed;
        let m = &p.messages;
        messages.received += m.received;
        messages.bytes += m.bytes;
        messages.echoed += m.echoed;
        messages.refused += m.refused;
        suspects += p.suspects;
        for (k, v) in &p.disconnects {
            *disconnects.entry(k.clone()).or_insert(0) += v;
        }
        if let Some(text) = &p.rtt.hdr {
            rtt.add(crate::hist::decode(text)?)?;
        }
        for b in &p.series {
            let sum = series.entry(b.t).or_insert_with(|| Bucket {
                t: b.t,
                ..Bucket::default()
            });
            sum.open += b.open;
            sum.connects += b.connects;
            sum.resumes += b.resumes;
            sum.disconnects += b.disconnects;
            sum.convictions += b.convictions;
            sum.messages += b.messages;
        }
    }
    let skip = series.len().saturating_sub(SERIES_LEN);
    Ok(Snapshot {
        server: info,
        uptime_s,
        connections,
        messages,
        rtt: summarize(&rtt),
        convictions: convictions(&disconnects),
        suspects,
        disconnects,
        series: series.into_values().skip(skip).collect(),
        workers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Info {
        Info {
            listen: SocketAddr::from(([127, 0, 0, 1], 1)),
            codec: "binary".into(),
            store: "memory".into(),
            interval_ms: 1000,
            timeout_ms: 3000,
            loops: 1,
            processes: 1,
            max_connections: 10,
            echo: false,
        }
    }

    #[test]
    fn percentiles_and_bars_follow_the_samples() {
        let status = Status::new(info()).unwrap();
        let snap = status.snapshot(0);
        assert_eq!(snap.rtt.samples, 0);
        assert_eq!(snap.rtt.p99_ms, 0.0);
        // `ConnId` has no public constructor, so server events cannot be made here; feed the
        // histogram directly (the event path is covered by the CLI tests over real TCP).
        {
            let mut s = status.lock();
            for v in 1..=100u64 {
                s.rtt.saturating_record(v * 1000);
            }
        }
        let snap = status.snapshot(3);
        assert_eq!(snap.rtt.samples, 100);
        assert!((snap.rtt.p50_ms - 50.0).abs() < 0.1, "{:?}", snap.rtt);
        assert!((snap.rtt.p90_ms - 90.0).abs() < 0.1, "{:?}", snap.rtt);
        assert!((snap.rtt.max_ms - 100.0).abs() < 0.1, "{:?}", snap.rtt);
        let total: u64 = snap.rtt.buckets.iter().map(|b| b.count).sum();
        assert_eq!(total, 100);
        // 1..=2 ms fall under the 2 ms edge (1 ms under the 1 ms edge).
        let le_1ms = snap
            .rtt
            .buckets
            .iter()
            .find(|b| b.le_us == Some(1_000))
            .unwrap();
        assert_eq!(le_1ms.count, 1);
        assert_eq!(snap.connections.open, 3);
    }

    #[test]
    fn series_is_bounded_and_current_bucket_shows_open() {
        let status = Status::new(info()).unwrap();
        for i in 0..(SERIES_LEN + 10) {
            status.tick(i);
        }
        let snap = status.snapshot(42);
        assert_eq!(snap.series.len(), SERIES_LEN);
        assert_eq!(snap.series.last().map(|b| b.open), Some(42));
        assert_eq!(snap.series.first().map(|b| b.open), Some(10));
    }

    #[test]
    fn workers_snapshots_add_up_with_exact_percentiles() {
        // Two workers: RTTs 1..=50 ms and 51..=100 ms; p50 of the whole is 50 ms, which no
        // average of the workers' own p50s (25.5 and 75.5) would give.
        let parts: Vec<Snapshot> = [(1u64, 10usize), (51, 20)]
            .iter()
            .map(|&(from, open)| {
                let status = Status::new(info()).unwrap().exporting_rtt();
                {
                    let mut s = status.lock();
                    for v in from..from + 50 {
                        s.rtt.saturating_record(v * 1000);
                    }
                    s.established = open;
                    s.connects = open as u64;
                    s.disconnects.insert("silence_timeout", 2);
                    s.disconnects.insert("eof", 1);
                }
                status.snapshot(open)
            })
            .collect();
        assert!(parts[0].rtt.hdr.is_some());
        // A snapshot survives its JSON form (the supervisor reads the workers' pages).
        let parts: Vec<Snapshot> = parts
            .iter()
            .map(|p| serde_json::from_str(&serde_json::to_string(p).unwrap()).unwrap())
            .collect();
        let mut sup = info();
        sup.processes = 2;
        let m = merge(sup, 1.0, &parts, Vec::new()).unwrap();
        assert_eq!(m.connections.open, 30);
        assert_eq!(m.connections.established, 30);
        assert_eq!(m.connections.total, 30);
        assert_eq!(m.rtt.samples, 100);
        assert!((m.rtt.p50_ms - 50.0).abs() < 0.1, "{:?}", m.rtt);
        assert!((m.rtt.max_ms - 100.0).abs() < 0.1, "{:?}", m.rtt);
        assert_eq!(m.rtt.hdr, None);
        assert_eq!(m.disconnects.get("silence_timeout"), Some(&4));
        assert_eq!(m.convictions, 4);
        assert_eq!(m.server.processes, 2);
        // The workers' per-second history adds up second by second.
        assert_eq!(m.series.iter().map(|b| b.open).sum::<usize>(), 30);
        // Without the exported histogram (a plain server's page) nothing is exported.
        assert_eq!(Status::new(info()).unwrap().snapshot(0).rtt.hdr, None);
    }

    #[test]
    fn convictions_are_silence_and_write_stall_only() {
        assert!(is_conviction(&DisconnectReason::SilenceTimeout));
        assert!(is_conviction(&DisconnectReason::WriteStall));
        assert!(!is_conviction(&DisconnectReason::Eof));
        assert!(!is_conviction(&DisconnectReason::Shutdown));
    }
}
