//! One child process of a spread `vitals bench` (see [`spread`](super::spread)): opens its share of the
//! connections from its own source addresses and answers its parent, one JSON object per line.
//!
//! To the parent (stdout): `{"progress":…}` every 500 ms while connecting, then one `{"connected":…}`.
//! From the parent (stdin, one word a line): `measure` opens the measurement window (RTT samples are
//! recorded from now on, heartbeats counted from here); `report` answers with a [`ChildReport`] (counts
//! since `measure`) and closes the window; `stop` — or the end of stdin, so that a parent that dies
//! takes its children with it — closes every connection and exits.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use super::BenchArgs;
use super::load::{Load, LoadSpec};
use crate::sys;

/// What a child says when asked to `report`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ChildReport {
    /// Our pings the server answered since `measure`.
    pub(crate) client_pings: u64,
    /// The server's pings we answered since `measure`.
    pub(crate) server_pings: u64,
    /// Connections that ended on their own since the start.
    pub(crate) lost: u64,
    /// Connections that never opened.
    pub(crate) failed: u64,
    /// The first few reasons of lost connections.
    pub(crate) lost_reasons: Vec<String>,
    /// Lost connections by reason.
    pub(crate) ended: std::collections::BTreeMap<String, u64>,
    /// RTT samples recorded since `measure` ([`hist`](crate::hist) text).
    pub(crate) rtt: String,
    /// This process's RSS in bytes.
    pub(crate) rss: u64,
    /// CPU seconds (user + system) this process used since `measure`.
    pub(crate) cpu_s: f64,
}

/// What a child says once its connect phase is over.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Connected {
    /// Connections open.
    pub(crate) connected: u64,
    /// Connections that failed to open.
    pub(crate) failed: u64,
    /// Seconds the connect phase took.
    pub(crate) connect_s: f64,
    /// The timing the server granted, in ms (interval, timeout).
    pub(crate) granted_ms: Option<(u64, u64)>,
}

/// One line to the parent (stdout is line-buffered: each line leaves at once).
fn say(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let line = serde_json::to_string(value)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Runs one child: connect, then obey the parent until `stop`.
pub(crate) async fn run(args: &BenchArgs, sources: Vec<IpAddr>) -> anyhow::Result<ExitCode> {
    let Some(server) = args.server else {
        anyhow::bail!("a bench child needs --server");
    };
    let spec = LoadSpec {
        server,
        n: args.connections,
        sources,
        codec: args.timing.codec,
        interval: args.timing.interval,
        timeout: args.timing.timeout,
        concurrency: args.connect_concurrency,
    };
    let started = Instant::now();
    let load = Load::start(&spec)?;
    let stats = std::sync::Arc::clone(&load.stats);
    let mut last_progress = Instant::now();
    let deadline = args
        .child_ramp
        .map_or_else(|| spec.connect_deadline(started), |r| started + r);
    load.wait_settled(spec.n, deadline, || {
        if last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            let _ = say(&serde_json::json!({
                "progress": stats.connected.load(Ordering::Relaxed),
                "failed": stats.failed.load(Ordering::Relaxed),
            }));
        }
    })
    .await;
    let granted = stats.granted.lock().ok().and_then(|g| *g);
    say(&Connected {
        connected: stats.connected.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        connect_s: started.elapsed().as_secs_f64(),
        granted_ms: granted.map(|(i, t)| (i.as_millis() as u64, t.as_millis() as u64)),
    })?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut base = stats.heartbeats();
    let me = std::process::id();
    let mut cpu_base = sys::cpu_time(me).unwrap_or_default();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => break,
        };
        match line.trim() {
            "measure" => {
                base = stats.heartbeats();
                cpu_base = sys::cpu_time(me).unwrap_or_default();
                stats.measuring.store(true, Ordering::Relaxed);
            }
            "report" => {
                stats.measuring.store(false, Ordering::Relaxed);
                let (c, s) = stats.heartbeats();
                say(&ChildReport {
                    client_pings: c - base.0,
                    server_pings: s - base.1,
                    lost: stats.lost.load(Ordering::Relaxed),
                    failed: stats.failed.load(Ordering::Relaxed),
                    lost_reasons: stats.lost_reasons(),
                    ended: stats.ended(),
                    rtt: crate::hist::encode(&stats.rtt()?)?,
                    rss: sys::rss_bytes(me).unwrap_or(0),
                    cpu_s: sys::cpu_time(me)
                        .unwrap_or_default()
                        .saturating_sub(cpu_base)
                        .as_secs_f64(),
                })?;
            }
            "stop" => break,
            other => tracing::warn!(command = other, "bench child: unknown command"),
        }
    }
    load.stop().await;
    say(&serde_json::json!({ "stopped": true }))?;
    Ok(ExitCode::SUCCESS)
}
