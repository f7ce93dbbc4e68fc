//! `vitals bench`: open N heartbeating connections to a server on loopback, measure for a bounded time,
//! and report connect rate, RTT percentiles, heartbeats per second and — given the server's pid — its
//! RSS per connection and CPU per heartbeat (summed over the server's process tree, so a
//! `vitals serve --processes N` supervisor counts with its workers).
//!
//! **What a heartbeat is here.** In vitals either side pings after `interval` of silence from the other,
//! and any byte received resets that silence, so each idle connection makes about one PING→PONG
//! exchange per interval, started by whichever side's timer fires first. A heartbeat is one such
//! exchange, counted on the bench (client) side: a PING of ours answered by the server (an RTT sample)
//! plus a PING of the server's answered by us (a PONG we wrote). Both counts are reported separately;
//! RTT percentiles come from our own pings only.
//!
//! **More connections than one process may open** (`--processes P`): the connections are spread over
//! P child processes of this one, each with its own open-file limit and its own loopback source
//! addresses (127.0.0.x: each adds an ephemeral port range); see [`spread`]. With `--freeze-percent`
//! one child holding that share is frozen (SIGSTOP) after the window, and the server's convictions
//! are watched.
//!
//! Layout: [`peer`] drives one connection (a lean task per connection, no reconnect), [`load`] opens a
//! process's connections and counts them, [`child`] is one child process of a spread run, [`spread`]
//! the parent; this file checks the flags and limits and runs the single-process case.

pub(crate) mod child;
pub(crate) mod load;
pub(crate) mod peer;
pub(crate) mod spread;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vitals::{Codec, Server, ServerConfig};

use crate::config::{TimingArgs, parse_duration};
use crate::sys;
use load::{Load, LoadSpec};

/// What the output says a heartbeat is.
const HEARTBEAT_MEANING: &str = "one PING answered by a PONG, either direction, counted at the bench clients: \
     our pings the server answered (= RTT samples) + the server's pings we answered";

/// Arguments of `vitals bench`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "A heartbeat is one PING answered by a PONG, in either direction, counted at the \
bench clients: our pings the server answered (RTT samples) plus the server's pings we answered. \
RTT percentiles come from our own pings.\n\n\
Exit code: 0 when every connection opened and none was lost (with --freeze-percent: and every frozen \
connection was convicted by the server and no other), 1 otherwise, 2 on bad flags or limits."
)]
pub(crate) struct BenchArgs {
    /// Connections to open.
    #[arg(
        short = 'n',
        long = "connections",
        visible_alias = "clients",
        default_value_t = 1000
    )]
    connections: u32,
    /// Server to load (a loopback address). Without it, a server is started in this process.
    #[arg(long)]
    server: Option<SocketAddr>,
    /// How long to measure once all connections are up (humantime: 10s, 1m).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    #[command(flatten)]
    timing: TimingArgs,
    /// Pid of the server process: report its RSS per connection and CPU per heartbeat (from /proc,
    /// summed over its process tree).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Use this many source addresses (127.0.0.1, .2, …) instead of deciding from the port range.
    #[arg(long)]
    sources: Option<u32>,
    /// Most connection handshakes in flight at once (with --processes: in all processes together).
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Spread the connections over this many child processes (each with its own open-file limit and
    /// source addresses); needs --server.
    #[arg(long)]
    processes: Option<u32>,
    /// With --processes: after the window, freeze (SIGSTOP) one process holding this percentage of
    /// the connections until the server has convicted them (at most timeout + interval + 30 s), and
    /// report how accurately it did.
    #[arg(long)]
    freeze_percent: Option<f64>,
    /// The server's status page (e.g. 127.0.0.1:9100): read its convictions while a process is frozen.
    #[arg(long)]
    server_status: Option<SocketAddr>,
    /// Internal: run as one child process of a spread run (commands on stdin, reports on stdout).
    #[arg(long, hide = true)]
    pub(crate) child: bool,
    /// Internal: a child's source addresses, comma-separated.
    #[arg(long, hide = true, value_delimiter = ',')]
    child_sources: Vec<IpAddr>,
    /// Internal: how long a child's connect phase may last (the ramp of all children together).
    #[arg(long, hide = true, value_parser = parse_duration)]
    child_ramp: Option<Duration>,
}

/// A checked plan for one run.
struct Plan {
    n: u32,
    sources: Vec<IpAddr>,
    files: sys::FileLimit,
}

/// Checks the flags and the limits; the errors say what to change.
fn plan(args: &BenchArgs) -> anyhow::Result<Plan> {
    args.timing.validate()?;
    if args.connections == 0 {
        bail!("--connections must be at least 1 (e.g. --connections 1000)");
    }
    if args.duration.is_zero() {
        bail!("--duration must be greater than zero (e.g. --duration 10s)");
    }
    if args.connect_concurrency == 0 {
        bail!("--connect-concurrency must be at least 1 (e.g. --connect-concurrency 256)");
    }
    if let Some(addr) = args.server
        && !addr.ip().is_loopback()
    {
        bail!(
            "--server {addr} is not a loopback address: vitals bench only loads servers on this machine (e.g. --server 127.0.0.1:7878)"
        );
    }
    if let Some(addr) = args.server_status
        && !addr.ip().is_loopback()
    {
        bail!(
            "--server-status {addr} is not a loopback address (e.g. --server-status 127.0.0.1:9100)"
        );
    }
    if args.server.is_none() && args.server_pid.is_some() {
        bail!(
            "--server-pid needs --server: without it the server runs inside the bench process, whose RSS and CPU include the clients"
        );
    }
    if args.server.is_none() && args.processes.is_some() {
        bail!(
            "--processes needs --server (start the server with `vitals serve`, e.g. with --processes too)"
        );
    }
    if args.processes == Some(0) {
        bail!("--processes must be at least 1");
    }
    if let Some(p) = args.freeze_percent {
        if !(p > 0.0 && p < 100.0) {
            bail!("--freeze-percent must be above 0 and below 100 (e.g. --freeze-percent 1)");
        }
        if args.processes.is_none_or(|k| k < 2) {
            bail!(
                "--freeze-percent needs --processes 2 or more: the frozen connections get a process of their own"
            );
        }
    }
    if let Some(pid) = args.server_pid {
        sys::rss_bytes(pid)
            .with_context(|| format!("--server-pid {pid}: cannot read /proc/{pid}/status"))?;
    }
    if args.sources.is_some_and(|k| k == 0 || k > sys::MAX_SOURCES) {
        bail!("--sources must be between 1 and {}", sys::MAX_SOURCES);
    }
    let n = args.connections;
    let files = sys::raise_file_limit();
    // In-process, every connection costs two descriptors: ours and the server's accepted one.
    let per_conn: u64 = if args.server.is_none() { 2 } else { 1 };
    let processes = u64::from(args.processes.unwrap_or(1));
    let per_process = u64::from(n).div_ceil(processes);
    let needed = per_process * per_conn + sys::FD_OVERHEAD;
    if needed > files.soft && !args.child {
        let most = files.soft.saturating_sub(sys::FD_OVERHEAD) / per_conn;
        let hard = if files.hard == u64::MAX {
            "unlimited".to_string()
        } else {
            files.hard.to_string()
        };
        let split = if args.server.is_none() {
            "; or run the server separately (`vitals serve`) and pass --server, which halves the need"
                .to_string()
        } else {
            format!(
                "; or spread them over processes: --processes {} or more",
                u64::from(n).div_ceil(most.max(1))
            )
        };
        bail!(
            "--connections {n} needs about {needed} open files ({per_process} × {per_conn} sockets + {} spare) per process, but \
             a process may open at most {} (hard limit {hard}); use --connections {} or fewer{split}",
            sys::FD_OVERHEAD,
            files.soft,
            most * processes,
        );
    }
    let sources = if args.child {
        args.child_sources.clone()
    } else {
        sys::source_addresses(n, sys::ephemeral_ports(), args.sources)
    };
    Ok(Plan { n, sources, files })
}

/// The in-process server, granting exactly the timing asked for.
fn start_server(args: &BenchArgs, n: u32) -> anyhow::Result<Server> {
    let t = &args.timing;
    let mut cfg = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        codec: t.codec,
        max_connections: n as usize + 16,
        ..ServerConfig::default()
    }
    .with_timing(t.interval, t.timeout);
    let p = &mut cfg.proto.policy;
    p.min_interval = p.min_interval.min(t.interval);
    p.max_interval = p.max_interval.max(t.interval);
    p.min_timeout = p.min_timeout.min(t.timeout);
    p.max_timeout = p.max_timeout.max(t.timeout);
    Server::bind(cfg).context("cannot start the in-process server")
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn bar(len: u64, template: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style)
}

/// Runs `vitals bench`.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    if args.child {
        return child::run(&args, plan.sources).await;
    }
    if args.processes.is_some_and(|p| p > 1) {
        return spread::run(&args).await;
    }
    let n = plan.n;
    let codec = args.timing.codec;
    let (interval, timeout) = (args.timing.interval, args.timing.timeout);

    // The server: given, or in this process (its events drained so they do not pile up).
    let mut in_process = None;
    let server_addr = match args.server {
        Some(a) => a,
        None => {
            let mut server = start_server(&args, n)?;
            let addr = server.local_addr();
            let handle = server.handle();
            let drain = tokio::spawn(async move { while server.next_event().await.is_some() {} });
            in_process = Some((handle, drain));
            addr
        }
    };
    tracing::debug!(%server_addr, n, sources = plan.sources.len(), soft = plan.files.soft, "bench plan");

    let rss_before = match args.server_pid {
        Some(pid) => Some(sys::tree_rss_bytes(pid)?),
        None => None,
    };

    // Connect phase.
    let spec = LoadSpec {
        server: server_addr,
        n,
        sources: plan.sources.clone(),
        codec,
        interval,
        timeout,
        concurrency: args.connect_concurrency,
    };
    let started = Instant::now();
    let load = Load::start(&spec)?;
    let stats = std::sync::Arc::clone(&load.stats);
    let progress = bar(
        u64::from(n),
        "connecting {bar:30.cyan/blue} {pos}/{len} {per_sec}",
    );
    load.wait_settled(n, spec.connect_deadline(started), || {
        progress.set_position(stats.connected.load(Ordering::Relaxed));
    })
    .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = stats.connected.load(Ordering::Relaxed);
    progress.finish_and_clear();

    // Measurement window.
    let cpu_before = match args.server_pid {
        Some(pid) => Some(sys::tree_cpu_time(pid)?),
        None => None,
    };
    let hb_before = stats.heartbeats();
    stats.measuring.store(true, Ordering::Relaxed);
    let window_start = Instant::now();
    let progress = bar(
        args.duration.as_millis() as u64,
        "measuring  {bar:30.green/blue} {elapsed}/{duration} {msg}",
    );
    let total_before = hb_before.0 + hb_before.1;
    loop {
        let elapsed = window_start.elapsed();
        if elapsed >= args.duration {
            break;
        }
        tokio::time::sleep((args.duration - elapsed).min(Duration::from_millis(250))).await;
        // Averaged over the window so far: heartbeats come in bursts of one interval.
        let (c, s) = stats.heartbeats();
        let secs = window_start.elapsed().as_secs_f64().max(1e-6);
        let rate = (c + s - total_before) as f64 / secs;
        progress.set_position(window_start.elapsed().as_millis() as u64);
        progress.set_message(format!(
            "{rate:.0} hb/s, lost {}",
            stats.lost.load(Ordering::Relaxed)
        ));
    }
    stats.measuring.store(false, Ordering::Relaxed);
    let window = window_start.elapsed();
    let hb_after = stats.heartbeats();
    let cpu_after = match args.server_pid {
        Some(pid) => Some(sys::tree_cpu_time(pid)?),
        None => None,
    };
    let rss_after = match args.server_pid {
        Some(pid) => Some(sys::tree_rss_bytes(pid)?),
        None => None,
    };
    let bench_rss = sys::rss_bytes(std::process::id()).ok();
    progress.finish_and_clear();
    let lost = stats.lost.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);

    // Close everything (bounded).
    load.stop().await;
    if let Some((_handle, drain)) = in_process {
        drain.abort();
    }

    // Report.
    let client_pings = hb_after.0 - hb_before.0;
    let server_pings = hb_after.1 - hb_before.1;
    let heartbeats = client_pings + server_pings;
    let window_s = window.as_secs_f64();
    let hist = stats.rtt()?;
    let granted = stats.granted.lock().ok().and_then(|g| *g);
    let report = Report {
        requested: n,
        connected,
        failed,
        lost,
        server: server_addr,
        in_process: args.server.is_none(),
        codec,
        interval,
        timeout,
        granted,
        sources: plan.sources.clone(),
        connect_secs,
        window_s,
        hist,
        client_pings,
        server_pings,
        heartbeats,
        server_pid: args.server_pid,
        rss_before,
        rss_after,
        cpu: cpu_before.zip(cpu_after).map(|(a, b)| b.saturating_sub(a)),
        bench_rss,
        lost_reasons: stats.lost_reasons(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print();
    }
    let ok = connected == u64::from(n) && lost == 0 && failed == 0;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Everything measured in one run.
struct Report {
    requested: u32,
    connected: u64,
    failed: u64,
    lost: u64,
    server: SocketAddr,
    in_process: bool,
    codec: Codec,
    interval: Duration,
    timeout: Duration,
    granted: Option<(Duration, Duration)>,
    sources: Vec<IpAddr>,
    connect_secs: f64,
    window_s: f64,
    hist: Histogram<u64>,
    client_pings: u64,
    server_pings: u64,
    heartbeats: u64,
    server_pid: Option<u32>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    cpu: Option<Duration>,
    bench_rss: Option<u64>,
    lost_reasons: Vec<String>,
}

impl Report {
    fn connect_rate(&self) -> f64 {
        self.connected as f64 / self.connect_secs.max(1e-9)
    }

    fn heartbeats_per_s(&self) -> f64 {
        self.heartbeats as f64 / self.window_s.max(1e-9)
    }

    /// What an ideal run would make: one exchange per connection per interval.
    fn expected_per_s(&self) -> f64 {
        let interval = self.granted.map_or(self.interval, |g| g.0);
        self.connected as f64 / interval.as_secs_f64().max(1e-9)
    }

    fn rss_per_conn(&self) -> Option<f64> {
        let (a, b) = (self.rss_before?, self.rss_after?);
        (self.connected > 0).then(|| (b as f64 - a as f64) / self.connected as f64)
    }

    fn cpu_per_heartbeat_us(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (self.heartbeats > 0).then(|| cpu.as_secs_f64() * 1e6 / self.heartbeats as f64)
    }

    fn pct(&self, q: f64) -> Option<u64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(q))
    }

    fn json(&self) -> serde_json::Value {
        let codec = match self.codec {
            Codec::Binary => "binary",
            Codec::Json => "json",
        };
        serde_json::json!({
            "connections_requested": self.requested,
            "connections": self.connected,
            "failed": self.failed,
            "lost": self.lost,
            "lost_reasons": self.lost_reasons,
            "server": self.server.to_string(),
            "in_process_server": self.in_process,
            "codec": codec,
            "interval_ms": self.interval.as_secs_f64() * 1e3,
            "timeout_ms": self.timeout.as_secs_f64() * 1e3,
            "granted_interval_ms": self.granted.map(|g| g.0.as_secs_f64() * 1e3),
            "granted_timeout_ms": self.granted.map(|g| g.1.as_secs_f64() * 1e3),
            "source_addresses": self.sources.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "connect_seconds": self.connect_secs,
            "connect_rate_per_s": self.connect_rate(),
            "duration_s": self.window_s,
            "rtt_us": {
                "samples": self.hist.len(),
                "p50": self.pct(0.50),
                "p90": self.pct(0.90),
                "p99": self.pct(0.99),
                "max": (!self.hist.is_empty()).then(|| self.hist.max()),
            },
            "heartbeats": self.heartbeats,
            "heartbeats_per_s": self.heartbeats_per_s(),
            "heartbeats_expected_per_s": self.expected_per_s(),
            "client_pings_answered": self.client_pings,
            "server_pings_answered": self.server_pings,
            "heartbeat_definition": HEARTBEAT_MEANING,
            "server_pid": self.server_pid,
            "server_rss_before_bytes": self.rss_before,
            "server_rss_after_bytes": self.rss_after,
            "server_rss_per_connection_bytes": self.rss_per_conn(),
            "server_cpu_seconds": self.cpu.map(|c| c.as_secs_f64()),
            "server_cpu_per_heartbeat_us": self.cpu_per_heartbeat_us(),
            "bench_rss_bytes": self.bench_rss,
            "bench_rss_per_connection_bytes": self.bench_rss.map(|r| r as f64 / self.connected.max(1) as f64),
        })
    }

    fn print(&self) {
        let us = |v: Option<u64>| v.map_or("-".to_string(), fmt_us);
        let where_ = if self.in_process {
            "in-process server"
        } else {
            "external server"
        };
        println!(
            "vitals bench: {} connections to {} ({where_}), codec {:?}, interval {}, timeout {}{}",
            self.requested,
            self.server,
            self.codec,
            humantime::format_duration(self.interval),
            humantime::format_duration(self.timeout),
            match self.granted {
                Some((i, t)) if (i, t) != (self.interval, self.timeout) => format!(
                    " (server granted {} / {})",
                    humantime::format_duration(i),
                    humantime::format_duration(t)
                ),
                _ => String::new(),
            }
        );
        if !self.sources.is_empty() {
            let list: Vec<String> = self.sources.iter().map(|a| a.to_string()).collect();
            println!("  source addresses: {}", list.join(", "));
        }
        println!(
            "  connect:    {} of {} in {:.2} s = {:.0} connections/s (failed {})",
            self.connected,
            self.requested,
            self.connect_secs,
            self.connect_rate(),
            self.failed
        );
        println!(
            "  rtt:        p50 {}  p90 {}  p99 {}  max {}  ({} samples: our pings answered by the server)",
            us(self.pct(0.50)),
            us(self.pct(0.90)),
            us(self.pct(0.99)),
            us((!self.hist.is_empty()).then(|| self.hist.max())),
            self.hist.len()
        );
        println!(
            "  heartbeats: {} in {:.2} s = {:.0}/s (ideal {:.0}/s: one per connection per interval)",
            self.heartbeats,
            self.window_s,
            self.heartbeats_per_s(),
            self.expected_per_s()
        );
        println!(
            "              = {} our pings answered (RTT samples) + {} server pings we answered",
            self.client_pings, self.server_pings
        );
        println!("              a heartbeat is {HEARTBEAT_MEANING}");
        if let Some(pid) = self.server_pid {
            if let (Some(a), Some(b), Some(per)) =
                (self.rss_before, self.rss_after, self.rss_per_conn())
            {
                println!(
                    "  server pid {pid}: RSS {} before → {} after = {per:.0} bytes per connection",
                    fmt_bytes(a),
                    fmt_bytes(b)
                );
            }
            if let Some(cpu) = self.cpu {
                println!(
                    "  server pid {pid}: CPU {:.3} s (user+system) over {:.2} s = {} per heartbeat",
                    cpu.as_secs_f64(),
                    self.window_s,
                    self.cpu_per_heartbeat_us()
                        .map_or("-".to_string(), |v| format!("{v:.2} µs"))
                );
            }
        }
        if let Some(r) = self.bench_rss {
            println!(
                "  bench process: RSS {} ({:.0} bytes per connection: {})",
                fmt_bytes(r),
                r as f64 / self.connected.max(1) as f64,
                if self.in_process {
                    "clients and the in-process server"
                } else {
                    "clients only"
                }
            );
        }
        println!("  lost connections: {}", self.lost);
        for r in &self.lost_reasons {
            println!("    e.g. {r}");
        }
    }
}

/// A duration in µs, printed in the unit that reads best.
fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// Bytes as MiB with one decimal.
fn fmt_bytes(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}
