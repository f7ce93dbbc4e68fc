//! `vitals bench --processes P`: more connections than one process may open, from one command.
//!
//! The connections are split into P shares, each opened by a child process (this binary in
//! [`child`](super::child) mode) from its own loopback source addresses, so each share has its own
//! open-file limit and ephemeral port ranges. The parent runs the phases in step — ramp (every child
//! connected), measurement window (all children at once), optionally a freeze, then stop — and
//! reports the totals with the server's costs read from /proc (RSS and CPU over the server's process
//! tree, the kernel's slab and socket-buffer memory system-wide).
//!
//! **Freeze** (`--freeze-percent F`): one child holds F % of the connections and nothing else. After
//! the window it is stopped with SIGSTOP — a wedged process whose sockets stay open — and the parent
//! reads the server's convictions from its status page (`--server-status`) every second until all of
//! the frozen connections are convicted (at most `timeout + interval + 30 s`), then resumes it with
//! SIGCONT. The frozen child then reports how its connections ended (the server's CLOSE `Timeout`),
//! and every other child that it lost none.
//!
//! Bounded and clean: every phase has a deadline; children die with the parent (their stdin closes,
//! and they are killed on drop), and a frozen child is resumed on every path.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::child::{ChildReport, Connected};
use super::{BenchArgs, HEARTBEAT_MEANING, bar, fmt_bytes, fmt_us};
use crate::sys::{self, KernelMemory};

/// One child's share.
#[derive(Debug, Clone, PartialEq)]
struct Share {
    n: u32,
    sources: Vec<IpAddr>,
    /// The share that is frozen after the window.
    frozen: bool,
}

/// Splits `n` connections over `processes` children: with `freeze_percent`, one child holds that
/// share (at least one connection) and the others split the rest. Each child gets source addresses
/// of its own, as many as its share needs of a port range of `ports`.
fn shares(
    n: u32,
    processes: u32,
    freeze_percent: Option<f64>,
    ports: (u16, u16),
) -> anyhow::Result<Vec<Share>> {
    let mut counts = Vec::new();
    let mut rest = n;
    let mut live = processes;
    if let Some(pct) = freeze_percent {
        let frozen = ((f64::from(n) * pct / 100.0).round() as u32).clamp(1, n.saturating_sub(1));
        counts.push((frozen, true));
        rest -= frozen;
        live -= 1;
    }
    if live == 0 || rest < live {
        bail!("{n} connections cannot be spread over {processes} processes; use fewer --processes");
    }
    for i in 0..live {
        let share = rest / live + u32::from(i < rest % live);
        counts.push((share, false));
    }
    let per_source = sys::per_source(u32::from(ports.1) - u32::from(ports.0) + 1);
    let mut next = 0u32;
    let mut out = Vec::new();
    for (count, frozen) in counts {
        let k = count.div_ceil(per_source).max(1);
        if next + k > sys::MAX_SOURCES {
            bail!(
                "{n} connections need more than {} loopback source addresses; widen the ephemeral port range (net.ipv4.ip_local_port_range)",
                sys::MAX_SOURCES
            );
        }
        out.push(Share {
            n: count,
            sources: (next..next + k).map(sys::source_address).collect(),
            frozen,
        });
        next += k;
    }
    Ok(out)
}

/// What a child said.
enum Said {
    Line(serde_json::Value),
    Gone,
}

/// A running child.
struct Kid {
    share: Share,
    process: Child,
    pid: u32,
    stdin: ChildStdin,
    progress: u64,
    connected: Option<Connected>,
    report: Option<ChildReport>,
}

impl Kid {
    async fn tell(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .with_context(|| format!("bench child {} is gone", self.pid))
    }
}

/// Resumes the frozen child when dropped, whatever path leaves the freeze.
struct Thaw(u32);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = sys::signal(self.0, sys::Signal::CONT);
    }
}

/// How long the ramp of `n` connections may take in all: they open at whatever rate the machine
/// allows, while the ones already open heartbeat (a bound, not an expectation: 1,000,000 may take
/// 560 s).
fn ramp_bound(n: u32) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(u64::from(n) / 2)
}

/// Starts one child for `share`.
fn spawn(
    args: &BenchArgs,
    server: SocketAddr,
    share: Share,
    concurrency: usize,
    index: usize,
    tx: mpsc::UnboundedSender<(usize, Said)>,
) -> anyhow::Result<Kid> {
    let exe = std::env::current_exe().context("cannot find this executable to start children")?;
    let sources: Vec<String> = share.sources.iter().map(|a| a.to_string()).collect();
    let codec = match args.timing.codec {
        vitals::Codec::Binary => "binary",
        vitals::Codec::Json => "json",
    };
    let mut cmd = Command::new(exe);
    cmd.arg("bench")
        .arg("--child")
        .args(["--server", &server.to_string()])
        .args(["--connections", &share.n.to_string()])
        .args([
            "--interval",
            &humantime::format_duration(args.timing.interval).to_string(),
        ])
        .args([
            "--timeout",
            &humantime::format_duration(args.timing.timeout).to_string(),
        ])
        .args(["--codec", codec])
        .args(["--connect-concurrency", &concurrency.to_string()])
        .args(["--child-sources", &sources.join(",")])
        .args([
            "--child-ramp",
            &humantime::format_duration(ramp_bound(args.connections)).to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut process = cmd.spawn().context("cannot start a bench child process")?;
    let pid = process.id().context("a bench child exited at once")?;
    let stdin = process.stdin.take().context("no stdin for a bench child")?;
    let stdout = process
        .stdout
        .take()
        .context("no stdout for a bench child")?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str(&line) {
                Ok(v) => {
                    let _ = tx.send((index, Said::Line(v)));
                }
                Err(_) => tracing::warn!(child = index, line, "bench child: not a JSON line"),
            }
        }
        let _ = tx.send((index, Said::Gone));
    });
    Ok(Kid {
        share,
        process,
        pid,
        stdin,
        progress: 0,
        connected: None,
        report: None,
    })
}

/// Receives what children say until `done(kids)` holds or `deadline` passes; a child that exits is an
/// error. Calls `tick` at least every 200 ms.
async fn gather(
    kids: &mut [Kid],
    rx: &mut mpsc::UnboundedReceiver<(usize, Said)>,
    deadline: Instant,
    done: impl Fn(&[Kid]) -> bool,
    mut tick: impl FnMut(&[Kid]),
) -> anyhow::Result<()> {
    loop {
        tick(kids);
        if done(kids) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("bench children did not answer in time");
        }
        let wait = (deadline - now).min(Duration::from_millis(200));
        let Ok(msg) = tokio::time::timeout(wait, rx.recv()).await else {
            continue;
        };
        let Some((i, said)) = msg else {
            bail!("every bench child is gone");
        };
        let Some(kid) = kids.get_mut(i) else { continue };
        match said {
            Said::Gone => bail!("bench child {} (pid {}) exited early", i, kid.pid),
            Said::Line(v) => {
                if let Some(p) = v.get("progress").and_then(|p| p.as_u64()) {
                    kid.progress = p;
                } else if v.get("connected").is_some() {
                    let c: Connected = serde_json::from_value(v)?;
                    kid.progress = c.connected;
                    kid.connected = Some(c);
                } else if v.get("client_pings").is_some() {
                    kid.report = Some(serde_json::from_value(v)?);
                }
            }
        }
    }
}

/// Asks every child in `which` to report and waits (≤ 30 s) for the answers.
async fn reports(
    kids: &mut [Kid],
    rx: &mut mpsc::UnboundedReceiver<(usize, Said)>,
    which: impl Fn(&Kid) -> bool,
) -> anyhow::Result<()> {
    for kid in kids.iter_mut().filter(|k| which(k)) {
        kid.report = None;
        kid.tell("report").await?;
    }
    gather(
        kids,
        rx,
        Instant::now() + Duration::from_secs(30),
        |ks| ks.iter().filter(|k| which(k)).all(|k| k.report.is_some()),
        |_| {},
    )
    .await
}

/// The server's convictions so far, from its status page.
async fn convictions(status: SocketAddr) -> anyhow::Result<u64> {
    let body = crate::http::client::get(status, "/status.json", Duration::from_secs(5)).await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v.get("convictions")
        .and_then(|c| c.as_u64())
        .context("no `convictions` in the server's /status.json")
}

/// What the freeze showed.
#[derive(Debug, Clone, serde::Serialize)]
struct Freeze {
    /// Connections frozen.
    frozen: u64,
    /// The server's new convictions when the watch ended (`None` without `--server-status`).
    convicted: Option<u64>,
    /// Seconds from SIGSTOP to the first conviction seen, to half of the frozen convicted, to all.
    first_s: Option<f64>,
    half_s: Option<f64>,
    all_s: Option<f64>,
    /// Seconds from SIGSTOP until 90 % and 99 % of the frozen were convicted.
    p90_s: Option<f64>,
    p99_s: Option<f64>,
    /// Convicted within the window where a conviction is right (`expected_s`).
    in_window: Option<u64>,
    /// (seconds after SIGSTOP, convictions so far), one reading a second.
    timeline: Vec<(f64, u64)>,
    /// The window in which a conviction is right: `timeout − interval` to `timeout` after the freeze
    /// (the last heartbeat was at most one interval before it), plus the 1 s the watch polls at.
    expected_s: (f64, f64),
    /// How the frozen connections ended, seen by the frozen process once resumed (`peer_closed:Timeout`:
    /// it read the server's CLOSE; `reset`: its first write after resuming met the closed socket).
    frozen_ended: BTreeMap<String, u64>,
    /// Live (not frozen) connections lost meanwhile: false convictions among others.
    live_lost: u64,
    /// Server convictions beyond the frozen connections.
    extra_convictions: Option<u64>,
    /// Seconds the watch lasted.
    watched_s: f64,
}

/// The freeze phase: SIGSTOP the frozen child, watch the server's convictions, SIGCONT, gather.
async fn freeze(
    args: &BenchArgs,
    kids: &mut [Kid],
    rx: &mut mpsc::UnboundedReceiver<(usize, Said)>,
) -> anyhow::Result<Option<Freeze>> {
    let Some(pos) = kids.iter().position(|k| k.share.frozen) else {
        return Ok(None);
    };
    let frozen = kids[pos].connected.as_ref().map_or(0, |c| c.connected);
    let (interval, timeout) = (args.timing.interval, args.timing.timeout);
    let before = match args.server_status {
        Some(s) => Some(convictions(s).await?),
        None => None,
    };
    let progress = bar(
        frozen,
        "frozen     {bar:30.red/blue} {pos}/{len} convicted {msg}",
    );
    sys::signal(kids[pos].pid, sys::Signal::STOP).context("cannot freeze a bench child")?;
    let thaw = Thaw(kids[pos].pid);
    let t0 = Instant::now();
    let deadline = t0 + timeout + interval + Duration::from_secs(30);
    let (mut first, mut half, mut all, mut last) = (None, None, None, None);
    let mut timeline = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = t0.elapsed().as_secs_f64();
        if let (Some(s), Some(b)) = (args.server_status, before) {
            match convictions(s).await {
                Ok(c) => {
                    let new = c.saturating_sub(b);
                    last = Some(new);
                    timeline.push((t, new));
                    progress.set_position(new.min(frozen));
                    progress.set_message(format!("{t:.0} s after SIGSTOP"));
                    if new > 0 && first.is_none() {
                        first = Some(t);
                    }
                    if new * 2 >= frozen && half.is_none() {
                        half = Some(t);
                    }
                    if new >= frozen {
                        all = Some(t);
                        break;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the server's convictions"),
            }
        } else if Instant::now() >= t0 + timeout + Duration::from_secs(5) {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let watched_s = t0.elapsed().as_secs_f64();
    drop(thaw);
    progress.finish_and_clear();
    // Give the resumed child time to read what the server sent it (the CLOSE, the FIN).
    tokio::time::sleep(Duration::from_secs(3)).await;
    reports(kids, rx, |_| true).await?;
    let frozen_ended = kids[pos]
        .report
        .as_ref()
        .map(|r| r.ended.clone())
        .unwrap_or_default();
    let live_lost = kids
        .iter()
        .filter(|k| !k.share.frozen)
        .filter_map(|k| k.report.as_ref())
        .map(|r| r.lost)
        .sum();
    let slack = 1.0;
    let expected_s = (
        (timeout.saturating_sub(interval)).as_secs_f64() - slack,
        timeout.as_secs_f64() + slack,
    );
    let reached = |share: f64| {
        timeline
            .iter()
            .find(|(_, c)| *c as f64 >= share * frozen as f64)
            .map(|(t, _)| *t)
    };
    let by = |limit: f64| {
        timeline
            .iter()
            .take_while(|(t, _)| *t <= limit)
            .last()
            .map_or(0, |(_, c)| *c)
    };
    let in_window = (!timeline.is_empty()).then(|| by(expected_s.1) - by(expected_s.0));
    Ok(Some(Freeze {
        frozen,
        convicted: last,
        first_s: first,
        half_s: half,
        all_s: all,
        p90_s: reached(0.9),
        p99_s: reached(0.99),
        in_window,
        timeline,
        expected_s,
        frozen_ended,
        live_lost,
        extra_convictions: last.map(|c| c.saturating_sub(frozen)),
        watched_s,
    }))
}

/// Runs a spread bench.
pub(crate) async fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let Some(server) = args.server else {
        bail!("--processes needs --server");
    };
    let processes = args.processes.unwrap_or(2);
    if args.sources.is_some() {
        bail!(
            "--sources is for one process; with --processes each child gets source addresses of its own"
        );
    }
    let plan = shares(
        args.connections,
        processes,
        args.freeze_percent,
        sys::ephemeral_ports(),
    )?;
    let n = args.connections;
    let concurrency = (args.connect_concurrency / plan.len()).max(1);
    let kernel_before = sys::kernel_memory().ok();
    let slab_before = sys::slab_caches();
    let rss_before = match args.server_pid {
        Some(pid) => Some(sys::tree_rss_bytes(pid)?),
        None => None,
    };

    // Ramp.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut kids = Vec::new();
    for (i, share) in plan.into_iter().enumerate() {
        kids.push(spawn(args, server, share, concurrency, i, tx.clone())?);
    }
    drop(tx);
    let ramp_deadline = started + ramp_bound(n) + Duration::from_secs(30);
    let progress = bar(
        u64::from(n),
        "connecting {bar:30.cyan/blue} {pos}/{len} {per_sec}",
    );
    gather(
        &mut kids,
        &mut rx,
        ramp_deadline,
        |ks| ks.iter().all(|k| k.connected.is_some()),
        |ks| progress.set_position(ks.iter().map(|k| k.progress).sum()),
    )
    .await?;
    progress.finish_and_clear();
    let ramp_s = started.elapsed().as_secs_f64();
    let connected: u64 = kids
        .iter()
        .filter_map(|k| k.connected.as_ref())
        .map(|c| c.connected)
        .sum();
    let failed: u64 = kids
        .iter()
        .filter_map(|k| k.connected.as_ref())
        .map(|c| c.failed)
        .sum();
    let granted = kids.iter().find_map(|k| k.connected.as_ref()?.granted_ms);
    // Let the handshakes' transient allocations settle before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kernel_after = sys::kernel_memory().ok();
    let slab_after = sys::slab_caches();
    let rss_after = match args.server_pid {
        Some(pid) => Some(sys::tree_rss_bytes(pid)?),
        None => None,
    };

    // Measurement window, all children at once.
    let cpu_before = match args.server_pid {
        Some(pid) => Some(sys::tree_cpu_time(pid)?),
        None => None,
    };
    for kid in &mut kids {
        kid.tell("measure").await?;
    }
    let window_start = Instant::now();
    let progress = bar(
        args.duration.as_millis() as u64,
        "measuring  {bar:30.green/blue} {elapsed}/{duration}",
    );
    while window_start.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        progress.set_position(window_start.elapsed().as_millis() as u64);
    }
    let window_s = window_start.elapsed().as_secs_f64();
    let cpu_after = match args.server_pid {
        Some(pid) => Some(sys::tree_cpu_time(pid)?),
        None => None,
    };
    progress.finish_and_clear();
    reports(&mut kids, &mut rx, |_| true).await?;
    let window: Vec<ChildReport> = kids.iter().filter_map(|k| k.report.clone()).collect();

    let freeze = freeze(args, &mut kids, &mut rx).await?;

    // Stop: every child closes its connections and exits (bounded; the rest are killed).
    for kid in &mut kids {
        let _ = kid.tell("stop").await;
    }
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    for kid in &mut kids {
        let left = stop_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, kid.process.wait())
            .await
            .is_err()
        {
            let _ = kid.process.start_kill();
        }
    }

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for r in &window {
        hist.add(crate::hist::decode(&r.rtt)?)?;
    }
    let report = SpreadReport {
        requested: n,
        processes: kids.len(),
        sources: kids.iter().map(|k| k.share.sources.len()).sum(),
        connected,
        failed,
        lost_in_window: window.iter().map(|r| r.lost).sum(),
        lost_reasons: window
            .iter()
            .flat_map(|r| r.lost_reasons.clone())
            .take(5)
            .collect(),
        server,
        interval: args.timing.interval,
        timeout: args.timing.timeout,
        granted_ms: granted,
        ramp_s,
        window_s,
        client_pings: window.iter().map(|r| r.client_pings).sum(),
        server_pings: window.iter().map(|r| r.server_pings).sum(),
        hist,
        server_pid: args.server_pid,
        rss_before,
        rss_after,
        cpu: cpu_before.zip(cpu_after).map(|(a, b)| b.saturating_sub(a)),
        kernel_before,
        kernel_after,
        slab_growth: slab_growth(slab_before, slab_after),
        bench_rss: window.iter().map(|r| r.rss).sum(),
        bench_cpu_s: window.iter().map(|r| r.cpu_s).sum(),
        freeze,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        report.print();
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The slab caches whose objects grew most between two readings (at most 10, largest first).
fn slab_growth(
    before: Option<BTreeMap<String, u64>>,
    after: Option<BTreeMap<String, u64>>,
) -> Vec<(String, i64)> {
    let (Some(before), Some(after)) = (before, after) else {
        return Vec::new();
    };
    let mut grown: Vec<(String, i64)> = after
        .iter()
        .map(|(name, b)| {
            let a = before.get(name).copied().unwrap_or(0);
            (name.clone(), *b as i64 - a as i64)
        })
        .filter(|(_, d)| *d > 0)
        .collect();
    grown.sort_by_key(|g| std::cmp::Reverse(g.1));
    grown.truncate(10);
    grown
}

/// Everything a spread run measured.
struct SpreadReport {
    requested: u32,
    processes: usize,
    sources: usize,
    connected: u64,
    failed: u64,
    lost_in_window: u64,
    lost_reasons: Vec<String>,
    server: SocketAddr,
    interval: Duration,
    timeout: Duration,
    granted_ms: Option<(u64, u64)>,
    ramp_s: f64,
    window_s: f64,
    client_pings: u64,
    server_pings: u64,
    hist: Histogram<u64>,
    server_pid: Option<u32>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    cpu: Option<Duration>,
    kernel_before: Option<KernelMemory>,
    kernel_after: Option<KernelMemory>,
    /// The slab caches that grew most over the ramp: (name, bytes).
    slab_growth: Vec<(String, i64)>,
    bench_rss: u64,
    /// CPU seconds the bench children used in the window.
    bench_cpu_s: f64,
    freeze: Option<Freeze>,
}

impl SpreadReport {
    fn heartbeats(&self) -> u64 {
        self.client_pings + self.server_pings
    }

    fn per_conn(&self, bytes: i64) -> f64 {
        bytes as f64 / self.connected.max(1) as f64
    }

    fn rss_per_conn(&self) -> Option<f64> {
        Some(self.per_conn(self.rss_after? as i64 - self.rss_before? as i64))
    }

    /// Kernel memory (slab + TCP buffers) added per connection, both ends (client and server socket).
    fn kernel_per_conn(&self) -> Option<f64> {
        let (a, b) = (self.kernel_before?, self.kernel_after?);
        let total = |k: KernelMemory| (k.slab + k.tcp_buffers) as i64;
        Some(self.per_conn(total(b) - total(a)))
    }

    fn cpu_per_heartbeat_us(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (self.heartbeats() > 0).then(|| cpu.as_secs_f64() * 1e6 / self.heartbeats() as f64)
    }

    fn cpu_per_connection_second_ns(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (self.connected > 0)
            .then(|| cpu.as_secs_f64() * 1e9 / (self.connected as f64 * self.window_s.max(1e-9)))
    }

    fn pct(&self, q: f64) -> Option<u64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(q))
    }

    fn ok(&self) -> bool {
        let all = self.connected == u64::from(self.requested) && self.failed == 0;
        // Every frozen connection convicted by the server (when its page was read) and found ended by
        // the resumed process — by the server's CLOSE `Timeout`, or by a reset when the resumed peer
        // wrote to the closed socket before reading that CLOSE — and no live connection lost.
        let freeze_ok = self.freeze.as_ref().is_none_or(|f| {
            f.live_lost == 0
                && f.convicted.is_none_or(|c| c == f.frozen)
                && f.frozen_ended.values().sum::<u64>() == f.frozen
        });
        all && self.lost_in_window == 0 && freeze_ok
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "connections_requested": self.requested,
            "connections": self.connected,
            "failed": self.failed,
            "lost": self.lost_in_window,
            "lost_reasons": self.lost_reasons,
            "processes": self.processes,
            "source_addresses": self.sources,
            "server": self.server.to_string(),
            "interval_ms": self.interval.as_millis() as u64,
            "timeout_ms": self.timeout.as_millis() as u64,
            "granted_ms": self.granted_ms,
            "ramp_seconds": self.ramp_s,
            "duration_s": self.window_s,
            "rtt_us": {
                "samples": self.hist.len(),
                "p50": self.pct(0.50),
                "p90": self.pct(0.90),
                "p99": self.pct(0.99),
                "max": (!self.hist.is_empty()).then(|| self.hist.max()),
            },
            "heartbeats": self.heartbeats(),
            "heartbeats_per_s": self.heartbeats() as f64 / self.window_s.max(1e-9),
            "client_pings_answered": self.client_pings,
            "server_pings_answered": self.server_pings,
            "heartbeat_definition": HEARTBEAT_MEANING,
            "server_pid": self.server_pid,
            "server_rss_before_bytes": self.rss_before,
            "server_rss_after_bytes": self.rss_after,
            "server_rss_per_connection_bytes": self.rss_per_conn(),
            "server_cpu_seconds": self.cpu.map(|c| c.as_secs_f64()),
            "server_cpu_per_heartbeat_us": self.cpu_per_heartbeat_us(),
            "server_cpu_per_connection_second_ns": self.cpu_per_connection_second_ns(),
            "kernel_before": self.kernel_before,
            "kernel_after": self.kernel_after,
            "kernel_per_connection_bytes_both_ends": self.kernel_per_conn(),
            "slab_growth_per_connection_bytes": self
                .slab_growth
                .iter()
                .map(|(name, d)| (name.clone(), serde_json::json!(self.per_conn(*d))))
                .collect::<serde_json::Map<_, _>>(),
            "bench_rss_bytes": self.bench_rss,
            "bench_cpu_seconds": self.bench_cpu_s,
            "freeze": self.freeze,
        })
    }

    fn print(&self) {
        let us = |v: Option<u64>| v.map_or("-".to_string(), fmt_us);
        println!(
            "vitals bench: {} connections to {} over {} processes and {} source addresses, interval {}, timeout {}",
            self.requested,
            self.server,
            self.processes,
            self.sources,
            humantime::format_duration(self.interval),
            humantime::format_duration(self.timeout),
        );
        println!(
            "  ramp:       {} of {} connected in {:.1} s = {:.0} connections/s (failed {})",
            self.connected,
            self.requested,
            self.ramp_s,
            self.connected as f64 / self.ramp_s.max(1e-9),
            self.failed
        );
        println!(
            "  rtt:        p50 {}  p90 {}  p99 {}  max {}  ({} samples)",
            us(self.pct(0.50)),
            us(self.pct(0.90)),
            us(self.pct(0.99)),
            us((!self.hist.is_empty()).then(|| self.hist.max())),
            self.hist.len()
        );
        println!(
            "  heartbeats: {} in {:.1} s = {:.0}/s ({} our pings answered + {} server pings answered)",
            self.heartbeats(),
            self.window_s,
            self.heartbeats() as f64 / self.window_s.max(1e-9),
            self.client_pings,
            self.server_pings
        );
        if let (Some(a), Some(b), Some(per)) =
            (self.rss_before, self.rss_after, self.rss_per_conn())
        {
            println!(
                "  server RSS (process tree): {} before → {} after = {per:.0} bytes per connection",
                fmt_bytes(a),
                fmt_bytes(b)
            );
        }
        if let (Some(a), Some(b), Some(per)) = (
            self.kernel_before,
            self.kernel_after,
            self.kernel_per_conn(),
        ) {
            println!(
                "  kernel: slab {} → {}, TCP buffers {} → {}: {per:.0} bytes per connection (both ends)",
                fmt_bytes(a.slab),
                fmt_bytes(b.slab),
                fmt_bytes(a.tcp_buffers),
                fmt_bytes(b.tcp_buffers)
            );
            if !self.slab_growth.is_empty() {
                let top: Vec<String> = self
                    .slab_growth
                    .iter()
                    .take(6)
                    .map(|(name, d)| format!("{name} {:.0}", self.per_conn(*d)))
                    .collect();
                println!(
                    "          grown most, bytes per connection: {}",
                    top.join(", ")
                );
            }
        }
        if let Some(cpu) = self.cpu {
            println!(
                "  server CPU (process tree): {:.2} s over {:.1} s = {} per heartbeat, {} per connection-second",
                cpu.as_secs_f64(),
                self.window_s,
                self.cpu_per_heartbeat_us()
                    .map_or("-".into(), |v| format!("{v:.2} µs")),
                self.cpu_per_connection_second_ns()
                    .map_or("-".into(), |v| format!("{v:.1} ns")),
            );
        }
        println!(
            "  bench processes: RSS {} ({:.0} bytes per connection), CPU {:.2} s in the window ({:.2} µs per heartbeat)",
            fmt_bytes(self.bench_rss),
            self.per_conn(self.bench_rss as i64),
            self.bench_cpu_s,
            self.bench_cpu_s * 1e6 / self.heartbeats().max(1) as f64
        );
        println!("  lost connections in the window: {}", self.lost_in_window);
        for r in &self.lost_reasons {
            println!("    e.g. {r}");
        }
        if let Some(f) = &self.freeze {
            let s = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} s"));
            println!(
                "  freeze: {} connections frozen (SIGSTOP); the server convicted {} (first {}, half {}, 90 % {}, 99 % {}, all {} after the freeze; right between {:.0} and {:.0} s: {}), watched {:.0} s",
                f.frozen,
                f.convicted.map_or("?".to_string(), |c| c.to_string()),
                s(f.first_s),
                s(f.half_s),
                s(f.p90_s),
                s(f.p99_s),
                s(f.all_s),
                f.expected_s.0,
                f.expected_s.1,
                f.in_window.map_or("?".to_string(), |c| c.to_string()),
                f.watched_s
            );
            println!(
                "          live connections lost meanwhile: {}; extra convictions: {}; the frozen process found its connections ended: {:?}",
                f.live_lost,
                f.extra_convictions
                    .map_or("?".to_string(), |c| c.to_string()),
                f.frozen_ended
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_evenly_with_a_frozen_one_and_own_sources() {
        let ports = (32768, 60999); // 9,410 connections per source address
        let s = shares(1_000_000, 52, Some(1.0), ports).unwrap();
        assert_eq!(s.len(), 52);
        assert!(s[0].frozen && s[0].n == 10_000);
        assert!(
            s[1..]
                .iter()
                .all(|x| !x.frozen && (19_411..=19_412).contains(&x.n))
        );
        assert_eq!(s.iter().map(|x| u64::from(x.n)).sum::<u64>(), 1_000_000);
        // Each share has addresses of its own, enough for it.
        let mut all: Vec<IpAddr> = s.iter().flat_map(|x| x.sources.clone()).collect();
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count);
        assert!(s.iter().all(|x| x.sources.len() as u32 * 9_410 >= x.n));
        // Without a freeze: an even split.
        let s = shares(10, 3, None, ports).unwrap();
        assert_eq!(s.iter().map(|x| x.n).collect::<Vec<_>>(), vec![4, 3, 3]);
        assert!(shares(2, 3, None, ports).is_err());
    }
}
