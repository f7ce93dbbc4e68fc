//! `vitals demo`: the first command to run. In one process, on loopback, a `vitals::Server` and ~50
//! heartbeating `vitals::Client`s, plus one "puppet" peer that drives the protocol core itself:
//!
//! 1. **heartbeats** — live view of open connections and RTT percentiles (HDR histogram, pings of
//!    either side);
//! 2. **freeze** — the puppet stops reading, writing and timing while its socket stays open (a wedged
//!    process); the server convicts it after the timeout, and the time from freeze to conviction is shown;
//! 3. **cuts** — every client streams sequenced messages while the server drops all connections
//!    (`ServerHandle::disconnect`, sessions kept); clients reconnect and resume, replaying what the
//!    server had not acknowledged;
//! 4. **check** — the server checked every client's sequence numbers: nothing lost, nothing twice.
//!
//! It ends by itself (well under 30 s with the defaults) with a summary line; the exit code is 0 when every
//! check held, 1 otherwise. Output is a live block on a terminal and plain lines otherwise
//! ([`screen`]); the live view, the sequence check and the list of checks are shared with
//! `vitals demo --fleet` ([`live`], [`fleet`]: three server processes sharing sessions in Redis).

mod fleet;
mod live;
mod screen;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vitals::vitals_proto::{Config as ProtoConfig, Connection, Event};
use vitals::{
    Client, ClientEvent, ClientSender, Codec, ConnId, DisconnectReason, Server, ServerConfig,
    ServerEvent,
};

use crate::bench::peer::{self, Mode, Observer};
use crate::config::{TimingArgs, parse_duration};
use live::{Check, Live, Sequence, View, lock, print_checks};

/// The demo must end by itself before this, whatever happens.
const HARD_LIMIT: Duration = Duration::from_secs(28);
/// Pause between two messages of one client while streaming.
const SEND_EVERY: Duration = Duration::from_millis(20);

/// Arguments of `vitals demo`.
#[derive(Debug, clap::Args)]
#[command(
    mut_arg("interval", |a| a.default_value("200ms")),
    mut_arg("timeout", |a| a.default_value("1s")),
    after_help = "With --fleet: a redis-server of its own (unless --store is given; scripts/setup \
installs it), three `vitals serve --store` processes on one port, clients streaming both ways; one \
server is SIGKILLed and one drained while its clients resume on the others; then every message is \
checked in Redis and at the clients. About 10 s.

Exit code: 0 when every check held (all connected, the frozen puppet convicted after the timeout, \
every client resumed, nothing lost or duplicated), 1 otherwise, 2 on bad flags or when the fleet \
cannot start, 130 on Ctrl-C."
)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    timing: TimingArgs,
    /// Heartbeating clients (the frozen puppet comes on top of these) [default: 50; 30 with --fleet].
    #[arg(long)]
    clients: Option<u32>,
    /// How long to show plain heartbeats before freezing the puppet (with --fleet: streaming across
    /// three servers before one is killed).
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    warmup: Duration,
    /// How many times every connection is cut while messages stream.
    #[arg(long, default_value_t = 2, conflicts_with = "fleet")]
    cuts: u32,
    /// The fleet demo: three server processes sharing sessions through Redis; one SIGKILLed, one
    /// drained, their clients resuming on the others; every message checked exactly once, in order,
    /// both ways.
    #[arg(long)]
    fleet: bool,
    /// With --fleet: use this Redis (`redis://HOST:PORT/DB`; keys under `vitals:`, so pick a database
    /// no fleet of yours uses) instead of starting a `redis-server`.
    #[arg(long, value_name = "URL", requires = "fleet")]
    store: Option<String>,
}

impl DemoArgs {
    /// Clients to run: as given, or the mode's default.
    fn clients(&self) -> u32 {
        self.clients.unwrap_or(if self.fleet { 30 } else { 50 })
    }
}

/// How one peer looks in the live view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    Connecting,
    Up,
    Away,
    Frozen,
    Convicted,
}

impl Look {
    fn glyph(self) -> char {
        match self {
            Look::Connecting => '·',
            Look::Up => '●',
            Look::Away => '○',
            Look::Frozen => '❄',
            Look::Convicted => '✖',
        }
    }
}

/// Everything the demo watches, behind one mutex (a few thousand updates a second at most).
struct State {
    phase: &'static str,
    interval: Duration,
    timeout: Duration,
    /// RTT samples in µs, from pings of either side.
    rtt: Histogram<u64>,
    /// Clients first, the puppet last.
    looks: Vec<Look>,
    granted: Option<(Duration, Duration)>,
    // Server side.
    open: HashMap<ConnId, SocketAddr>,
    puppet_addr: Option<SocketAddr>,
    puppet_conn: Option<ConnId>,
    conviction: Option<(Instant, DisconnectReason)>,
    /// Healthy peers convicted for silence (must stay 0).
    wrongly_convicted: u64,
    /// Per client: its messages as the server saw them.
    seqs: Vec<Sequence>,
    malformed: u64,
    // Client side.
    sent: Vec<u64>,
    send_errors: u64,
    connected: u64,
    resumes: u64,
    replayed: u64,
    reconnects: u64,
    sessions_lost: u64,
}

impl State {
    fn new(clients: usize, interval: Duration, timeout: Duration) -> anyhow::Result<State> {
        Ok(State {
            phase: "connecting",
            interval,
            timeout,
            rtt: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            looks: vec![Look::Connecting; clients + 1],
            granted: None,
            open: HashMap::new(),
            puppet_addr: None,
            puppet_conn: None,
            conviction: None,
            wrongly_convicted: 0,
            seqs: vec![Sequence::default(); clients],
            malformed: 0,
            sent: vec![0; clients],
            send_errors: 0,
            connected: 0,
            resumes: 0,
            replayed: 0,
            reconnects: 0,
            sessions_lost: 0,
        })
    }

    fn record_rtt(&mut self, rtt: Duration) {
        self.rtt
            .saturating_record(rtt.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
    }

    fn pct(&self, q: f64) -> Option<Duration> {
        (!self.rtt.is_empty()).then(|| Duration::from_micros(self.rtt.value_at_quantile(q)))
    }

    /// The server received `payload` ("CLIENT SEQ"): check it against the client's sequence.
    fn on_message(&mut self, payload: &[u8]) {
        let parsed = std::str::from_utf8(payload).ok().and_then(|s| {
            let (c, q) = s.split_once(' ')?;
            Some((c.parse::<usize>().ok()?, q.parse::<u64>().ok()?))
        });
        let Some((c, seq)) = parsed.filter(|(c, _)| *c < self.seqs.len()) else {
            self.malformed += 1;
            return;
        };
        self.seqs[c].see(seq);
    }

    fn total_sent(&self) -> u64 {
        self.sent.iter().sum()
    }

    fn total_delivered(&self) -> u64 {
        self.seqs.iter().map(|q| q.delivered).sum()
    }

    fn duplicated(&self) -> u64 {
        self.seqs.iter().map(|q| q.duplicated).sum()
    }

    fn reordered(&self) -> u64 {
        self.seqs.iter().map(|q| q.reordered).sum()
    }

    fn lost(&self) -> u64 {
        self.sent
            .iter()
            .zip(&self.seqs)
            .map(|(s, q)| s.saturating_sub(q.delivered))
            .sum()
    }
}

/// Checks the flags; the errors say what to change.
fn validate(args: &DemoArgs) -> anyhow::Result<()> {
    let t = &args.timing;
    t.validate()?;
    if t.codec != Codec::Binary {
        bail!(
            "the demo shows session resume, which needs the binary codec: drop --codec json (or use --codec binary)"
        );
    }
    if t.timeout > Duration::from_secs(5) {
        bail!(
            "--timeout {} is too long for a demo that ends in under 30 s: use at most 5s (e.g. --interval 200ms --timeout 1s)",
            humantime::format_duration(t.timeout)
        );
    }
    let most = if args.fleet { 300 } else { 1000 };
    if args.clients() == 0 || args.clients() > most {
        bail!(
            "--clients must be between 1 and {most}{} (e.g. --clients {})",
            if args.fleet { " with --fleet" } else { "" },
            if args.fleet { 30 } else { 50 }
        );
    }
    if args.warmup > Duration::from_secs(8) {
        bail!("--warmup must be at most 8s (e.g. --warmup 3s)");
    }
    if args.cuts == 0 || args.cuts > 3 {
        bail!("--cuts must be between 1 and 3 (e.g. --cuts 2)");
    }
    Ok(())
}

/// The puppet's observer: its RTT samples and connection show in the live view.
struct PuppetObs {
    st: Arc<Mutex<State>>,
}

impl Observer for PuppetObs {
    fn connected(&self, _granted: Option<(Duration, Duration)>) {
        let mut s = lock(&self.st);
        let last = s.looks.len() - 1;
        s.looks[last] = Look::Up;
    }

    fn event(&self, event: &Event) {
        if let Event::Rtt(rtt) = event {
            lock(&self.st).record_rtt(rtt.latest);
        }
    }
}

/// Drains the server's events into the state.
async fn server_events(mut server: Server, st: Arc<Mutex<State>>) {
    while let Some(event) = server.next_event().await {
        let mut s = lock(&st);
        match event {
            ServerEvent::Connected { conn, peer, .. } => {
                s.open.insert(conn, peer);
                if s.puppet_addr == Some(peer) {
                    s.puppet_conn = Some(conn);
                }
            }
            ServerEvent::Message { payload, .. } => s.on_message(&payload),
            ServerEvent::Rtt { rtt, .. } => s.record_rtt(rtt.latest),
            ServerEvent::Closed { conn, reason, .. } => {
                s.open.remove(&conn);
                if Some(conn) == s.puppet_conn {
                    let last = s.looks.len() - 1;
                    s.looks[last] = Look::Convicted;
                    s.conviction.get_or_insert((Instant::now(), reason));
                } else if reason == DisconnectReason::SilenceTimeout {
                    s.wrongly_convicted += 1;
                    tracing::warn!(%conn, "a healthy client was convicted");
                }
            }
            ServerEvent::Suspect { .. }
            | ServerEvent::SendRefused { .. }
            | ServerEvent::SessionSendRefused { .. } => {}
        }
    }
}

/// Follows client `i`'s events into the state until `stop`, then closes the client orderly.
async fn client_events(
    i: usize,
    client: Client,
    st: Arc<Mutex<State>>,
    stop: watch::Receiver<bool>,
) {
    live::follow(client, stop, |event| {
        let mut s = lock(&st);
        match event {
            ClientEvent::Connected {
                interval, timeout, ..
            } => {
                s.granted.get_or_insert((interval, timeout));
                s.looks[i] = Look::Up;
                s.connected += 1;
            }
            ClientEvent::Resumed { replayed, .. } => {
                s.resumes += 1;
                s.replayed += replayed as u64;
            }
            ClientEvent::Rtt(rtt) => s.record_rtt(rtt.latest),
            ClientEvent::Dead { reason } => {
                s.looks[i] = Look::Away;
                if reason == DisconnectReason::SilenceTimeout {
                    s.wrongly_convicted += 1;
                }
            }
            ClientEvent::Reconnecting { .. } => s.reconnects += 1,
            ClientEvent::SessionLost { .. } => s.sessions_lost += 1,
            ClientEvent::Closed { .. } => s.looks[i] = Look::Away,
            ClientEvent::Message(_) | ClientEvent::Suspect { .. } => {}
        }
    })
    .await;
}

/// Client `i` sends "i SEQ" every [`SEND_EVERY`] while `streaming` is true, then stops.
async fn stream_messages(
    i: usize,
    sender: ClientSender,
    st: Arc<Mutex<State>>,
    mut streaming: watch::Receiver<bool>,
) {
    if streaming.wait_for(|on| *on).await.is_err() {
        return;
    }
    let mut tick = live::ticker(SEND_EVERY);
    let mut seq = 0u64;
    loop {
        tick.tick().await;
        if !*streaming.borrow() {
            return;
        }
        match sender.send(format!("{i} {seq}").into_bytes()).await {
            Ok(()) => {
                seq += 1;
                lock(&st).sent[i] = seq;
            }
            Err(e) => {
                tracing::warn!(client = i, error = %e, "send failed");
                lock(&st).send_errors += 1;
                return;
            }
        }
    }
}

impl View for State {
    fn set_phase(&mut self, phase: &'static str) {
        self.phase = phase;
    }

    fn render(&self, t: f64) -> (Vec<String>, String) {
        let s = self;
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| {
                format!("{:.2}ms", d.as_secs_f64() * 1e3)
            })
        };
        let (p50, p99) = (ms(s.pct(0.5)), ms(s.pct(0.99)));
        let up = s.looks.iter().filter(|l| **l == Look::Up).count();
        let mut block = vec![format!(
            "── vitals demo · {} · t={t:.1}s · interval {} · timeout {} ──",
            s.phase,
            humantime::format_duration(s.interval),
            humantime::format_duration(s.timeout),
        )];
        let clients: Vec<char> = s.looks[..s.looks.len() - 1]
            .iter()
            .map(|l| l.glyph())
            .collect();
        for (k, row) in clients.chunks(50).enumerate() {
            let label = if k == 0 { "clients " } else { "        " };
            block.push(format!("  {label} {}", row.iter().collect::<String>()));
        }
        if let Some(p) = s.looks.last() {
            block.push(format!(
                "  puppet   {}   (● up  ○ reconnecting  ❄ frozen  ✖ convicted)",
                p.glyph()
            ));
        }
        block.push(format!(
            "  server   {} connections open    rtt p50 {p50}  p99 {p99}  ({} samples)",
            s.open.len(),
            s.rtt.len()
        ));
        block.push(format!(
            "  messages sent {}  received {}  duplicated {}    resumes {} (replayed {})",
            s.total_sent(),
            s.total_delivered(),
            s.duplicated(),
            s.resumes,
            s.replayed
        ));
        let line = format!(
            "[{t:5.1}s] {}: open={} up={up}/{} rtt_p50={p50} rtt_p99={p99} samples={} sent={} received={} duplicated={} resumes={} replayed={}",
            s.phase,
            s.open.len(),
            s.looks.len(),
            s.rtt.len(),
            s.total_sent(),
            s.total_delivered(),
            s.duplicated(),
            s.resumes,
            s.replayed
        );
        (block, line)
    }
}

/// Runs `vitals demo`.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    if args.fleet {
        return fleet::run(&args).await;
    }
    let (interval, timeout) = (args.timing.interval, args.timing.timeout);
    let n = args.clients() as usize;

    // The server, granting exactly the fast timing asked for.
    let mut cfg = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..ServerConfig::default()
    }
    .with_timing(interval, timeout);
    let p = &mut cfg.proto.policy;
    p.min_interval = p.min_interval.min(interval);
    p.min_timeout = p.min_timeout.min(timeout);
    let server = Server::bind(cfg).context("cannot start the demo server")?;
    let addr = server.local_addr();
    let handle = server.handle();
    let st = Arc::new(Mutex::new(State::new(n, interval, timeout)?));
    let mut demo = Live::new(Arc::clone(&st), HARD_LIMIT);
    let server_task = tokio::spawn(server_events(server, Arc::clone(&st)));
    demo.note(&format!(
        "server on {addr}; starting {n} clients and 1 puppet (ping after {} of silence, dead after {})",
        humantime::format_duration(interval),
        humantime::format_duration(timeout)
    ));

    // Clients, their event drains and their (idle until streaming) senders.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stream_tx, stream_rx) = watch::channel(false);
    let mut client_tasks: Vec<JoinHandle<()>> = Vec::with_capacity(n);
    let mut sender_tasks: Vec<JoinHandle<()>> = Vec::with_capacity(n);
    for i in 0..n {
        let client = live::client(addr, interval, timeout);
        sender_tasks.push(tokio::spawn(stream_messages(
            i,
            client.sender(),
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

    // The puppet: our own driver over the protocol core, so that it can freeze with its socket open.
    let (puppet_tx, puppet_rx) = watch::channel(Mode::Run);
    let puppet_stream = peer::connect(addr, None)
        .await
        .context("the puppet cannot connect")?;
    lock(&st).puppet_addr = puppet_stream.local_addr().ok();
    let puppet_task = {
        let mut pc = ProtoConfig::default();
        pc.liveness.interval = interval;
        pc.liveness.timeout = timeout;
        let obs = PuppetObs {
            st: Arc::clone(&st),
        };
        tokio::spawn(async move {
            let proto = Connection::client(Instant::now(), pc);
            peer::drive(puppet_stream, proto, Codec::Binary, puppet_rx, &obs).await
        })
    };

    let mut checks = Vec::new();

    // 1. Everyone connects, then heartbeats.
    let all_up = demo
        .wait_until(Duration::from_secs(5), |s| {
            s.open.len() == n + 1 && s.puppet_conn.is_some() && s.connected >= n as u64
        })
        .await;
    let open = lock(&st).open.len();
    checks.push(Check {
        ok: all_up,
        what: format!("{open} of {} connections up", n + 1),
    });
    let (g_interval, g_timeout) = lock(&st).granted.unwrap_or((interval, timeout));
    demo.note(&format!(
        "{open} connections up; heartbeating (granted interval {}, timeout {})",
        humantime::format_duration(g_interval),
        humantime::format_duration(g_timeout)
    ));
    demo.set_phase("heartbeats");
    demo.show_for(args.warmup).await;
    let samples = lock(&st).rtt.len();
    checks.push(Check {
        ok: samples > 0,
        what: format!("{samples} RTT samples"),
    });

    // 2. Freeze the puppet; the server must convict it after the timeout, and nobody else.
    demo.set_phase("puppet frozen");
    {
        let mut s = lock(&st);
        let last = s.looks.len() - 1;
        s.looks[last] = Look::Frozen;
    }
    let _ = puppet_tx.send(Mode::Freeze);
    let frozen_at = Instant::now();
    demo.note("froze the puppet: it reads and writes nothing, its socket stays open");
    // Conviction comes at `timeout` of silence counted from the last byte received (up to one interval
    // before the freeze); allow one interval or 500 ms of scheduling slack, whichever is larger.
    let slack = g_interval.max(Duration::from_millis(500));
    demo.wait_until(g_timeout * 2 + Duration::from_secs(1), |s| {
        s.conviction.is_some()
    })
    .await;
    let conviction = lock(&st).conviction.clone();
    let conviction_after = match &conviction {
        Some((at, reason)) => {
            let after = at.saturating_duration_since(frozen_at);
            demo.note(&format!(
                "server convicted the puppet {:.2} s after the freeze (timeout {}): {reason:?}",
                after.as_secs_f64(),
                humantime::format_duration(g_timeout)
            ));
            checks.push(Check {
                ok: *reason == DisconnectReason::SilenceTimeout && after <= g_timeout + slack,
                what: format!(
                    "puppet convicted for silence after {:.2} s (timeout {}, allowed up to {:.2} s)",
                    after.as_secs_f64(),
                    humantime::format_duration(g_timeout),
                    (g_timeout + slack).as_secs_f64()
                ),
            });
            Some(after)
        }
        None => {
            demo.note("the server did not convict the puppet");
            checks.push(Check {
                ok: false,
                what: "puppet convicted".into(),
            });
            None
        }
    };
    let _ = puppet_tx.send(Mode::Stop);
    puppet_task.abort();

    // 3. Stream sequenced messages and cut every connection, `cuts` times.
    demo.set_phase("streaming");
    let _ = stream_tx.send(true);
    demo.note(&format!(
        "every client streams a numbered message each {} ms (data is a sign of life: pings pause)",
        SEND_EVERY.as_millis()
    ));
    demo.show_for(Duration::from_secs(1)).await;
    let mut resumed_ok = true;
    for cut in 1..=args.cuts {
        demo.set_phase("cut");
        let conns: Vec<ConnId> = lock(&st).open.keys().copied().collect();
        let mut cut_count = 0;
        for conn in &conns {
            if handle.disconnect(*conn).is_ok() {
                cut_count += 1;
            }
        }
        let before = lock(&st).replayed;
        demo.note(&format!(
            "cut #{cut}: the server dropped {cut_count} connections (sessions kept)"
        ));
        let target = n as u64 * u64::from(cut);
        let ok = demo
            .wait_until(Duration::from_secs(5) + g_timeout, |s| {
                s.resumes >= target && s.open.len() >= n
            })
            .await;
        resumed_ok &= ok;
        let (resumes, replayed) = {
            let s = lock(&st);
            (s.resumes, s.replayed)
        };
        demo.note(&format!(
            "cut #{cut}: {} of {n} clients reconnected and resumed, replaying {} messages",
            resumes.saturating_sub(target - n as u64),
            replayed - before
        ));
        demo.set_phase("streaming");
        demo.show_for(Duration::from_millis(700)).await;
    }
    checks.push(Check {
        ok: resumed_ok,
        what: format!(
            "every client resumed after each of {} cuts ({} resumes)",
            args.cuts,
            lock(&st).resumes
        ),
    });

    // 4. Stop streaming, let the last messages arrive, compare.
    demo.set_phase("draining");
    let _ = stream_tx.send(false);
    let senders_done = live::join_within(sender_tasks, Duration::from_secs(3))
        .await
        .is_some();
    demo.wait_until(Duration::from_secs(3), |s| {
        s.total_delivered() >= s.total_sent()
    })
    .await;
    demo.set_phase("done");
    demo.screen.keep();

    let elapsed = demo.elapsed();
    let summary = {
        let s = lock(&st);
        let lost = s.lost();
        checks.push(Check {
            ok: senders_done && s.send_errors == 0,
            what: format!("every send accepted ({} errors)", s.send_errors),
        });
        checks.push(Check {
            ok: lost == 0 && s.duplicated() == 0 && s.reordered() == 0 && s.malformed == 0,
            what: format!(
                "{} sent, {} received: lost {lost}, duplicated {}, out of order {}",
                s.total_sent(),
                s.total_delivered(),
                s.duplicated(),
                s.reordered()
            ),
        });
        checks.push(Check {
            ok: s.wrongly_convicted == 0 && s.sessions_lost == 0,
            what: format!(
                "no healthy client convicted ({}), no session lost ({})",
                s.wrongly_convicted, s.sessions_lost
            ),
        });
        checks.push(Check {
            ok: s.total_sent() > 0,
            what: "messages streamed".into(),
        });

        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| {
                format!("{:.2}ms", d.as_secs_f64() * 1e3)
            })
        };
        let mut summary = String::new();
        let _ = write!(
            summary,
            "summary: connections={} rtt_p50={} rtt_p99={} conviction={} timeout={} resumes={} replayed={} sent={} received={} lost={lost} duplicated={} elapsed={:.1}s",
            n + 1,
            ms(s.pct(0.5)),
            ms(s.pct(0.99)),
            conviction_after.map_or("none".to_string(), |d| format!("{:.2}s", d.as_secs_f64())),
            humantime::format_duration(g_timeout),
            s.resumes,
            s.replayed,
            s.total_sent(),
            s.total_delivered(),
            s.duplicated(),
            elapsed.as_secs_f64(),
        );
        summary
    };
    let code = print_checks(&checks, &summary);

    // Close the clients orderly, then the server (bounded).
    let _ = stop_tx.send(true);
    live::join_within(client_tasks, Duration::from_secs(2)).await;
    server_task.abort();
    Ok(code)
}
