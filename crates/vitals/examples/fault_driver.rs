//! The driver of the fault-injection suite (`tests/faults/`): a vitals server, a crowd of vitals
//! clients, or a delaying TCP proxy, each printing timestamped event lines for the suite's scripts.
//!
//! ```text
//! fault_driver server  --listen ADDR --interval D --timeout D [--client-driven] [--max-age D]
//!                      [--kill-every D] [--echo] [--loops N] [--codec json] --duration D
//! fault_driver clients --server ADDR --n N --interval D --timeout D [--bind IP] [--connect-rate N/s]
//!                      [--seq-rate N/s --seq-until-deads K] [--backoff-base D --backoff-cap D]
//!                      --duration D
//! fault_driver classic --server ADDR --n N --interval D [--bind IP] --duration D
//! fault_driver proxy   --listen ADDR --to ADDR --delay D --jitter D --duration D
//! ```
//!
//! Every mode stops by itself after `--duration` (and on SIGTERM), so no run outlives its scenario.
//! Times are wall-clock microseconds since the Unix epoch (`date +%s%6N` in the scripts), so that lines
//! of different processes (and the moment a script injected a fault) compare directly.
//!
//! Output lines, one event each, fields separated by spaces (`t` = wall-clock µs):
//! - server: `READY t addr`, `CONN t peer_ip resumed`, `CLOSED t peer_ip reason`,
//!   `CONVICTED t peer_ip silent_us` (the engine's own measure of the silence, from its log event),
//!   `STALL t late_us`, `REFUSED t`, `KILLED t n`, and at the end `SEQ sessions received gaps dups`,
//!   `SUMMARY ...`.
//! - clients: `C t idx` connected, `D t idx reason last_rtt_t` dead (with the wall time of the last
//!   PONG that client heard, 0 if none), `R t idx attempt delay_us` reconnecting, `M t idx replayed`
//!   resumed, `L t idx resent` session lost, `X t idx reason` closed for good, `UP t n` every time all
//!   `n` clients are connected at once, `STALL t late_us`, and at the end `RTT count p50 p99 max` (µs)
//!   and `SEQ clients sent echoed gaps dups flushed`.
//! - classic (plain TCP clients of the JSON codec, writing `{"ping":N}` every interval as GoFrame/gnet
//!   peers do, never giving up on their server): `UP t n` once all are connected, `MARK t` on SIGUSR1,
//!   `X t idx` when the server closed one, and at the end `CLASSIC n connected closed answered`, where
//!   `answered` counts the clients that read a pong after the last `MARK`.
//! - proxy: `READY t addr`, and at the end `PROXY conns chunks bytes`.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use vitals::{Client, ClientConfig, ClientEvent, Codec, ConnId, Server, ServerConfig, ServerEvent};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return Err("usage: fault_driver server|clients|proxy [--flag value]...".into());
    }
    let mode = args.remove(0);
    let opts = Opts::parse(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match mode.as_str() {
        "server" => {
            Capture::install();
            rt.block_on(server(opts))
        }
        "clients" => {
            Capture::install();
            rt.block_on(clients(opts))
        }
        "classic" => rt.block_on(classic(opts)),
        "proxy" => rt.block_on(proxy(opts)),
        other => Err(format!("unknown mode {other}").into()),
    }
}

/// Wall-clock microseconds since the Unix epoch.
fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Prints one line at once (stdout is line-buffered; a script may read it while we run).
fn out(line: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_fmt(line);
    let _ = o.write_all(b"\n");
    let _ = o.flush();
}

macro_rules! emit {
    ($($t:tt)*) => { out(format_args!($($t)*)) };
}

/// `--flag value` options.
struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, BoxError> {
        let mut m = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let Some(name) = k.strip_prefix("--") else {
                return Err(format!("unexpected argument {k}").into());
            };
            let flag = matches!(name, "client-driven" | "echo");
            let v = if flag {
                "true".to_string()
            } else {
                it.next().ok_or(format!("--{name} needs a value"))?.clone()
            };
            m.insert(name.to_string(), v);
        }
        Ok(Opts(m))
    }
    fn str(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }
    fn addr(&self, k: &str) -> Result<SocketAddr, BoxError> {
        Ok(self.str(k).ok_or(format!("--{k} is required"))?.parse()?)
    }
    fn dur(&self, k: &str, default: Option<Duration>) -> Result<Duration, BoxError> {
        match self.str(k) {
            Some(s) => parse_duration(s),
            None => default.ok_or_else(|| format!("--{k} is required").into()),
        }
    }
    fn opt_dur(&self, k: &str) -> Result<Option<Duration>, BoxError> {
        self.str(k).map(parse_duration).transpose()
    }
    fn num(&self, k: &str, default: u64) -> Result<u64, BoxError> {
        Ok(match self.str(k) {
            Some(s) => s.parse()?,
            None => default,
        })
    }
}

/// `250ms`, `2s`, `1.5s`, `90us`, `100ns`.
fn parse_duration(s: &str) -> Result<Duration, BoxError> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .map(|i| s.split_at(i))
        .ok_or(format!("duration {s} has no unit"))?;
    let v: f64 = num.parse()?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        "m" => v * 60.0,
        _ => return Err(format!("unknown unit in {s}").into()),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Resolves when SIGTERM or SIGINT arrives, or after `limit`.
async fn stop_signal(limit: Duration) {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = tokio::time::sleep(limit) => {}
    }
}

// ---------------------------------------------------------------------------------------------------
// A minimal tracing subscriber: the engine logs each conviction with the silence it measured
// (`silent_for`) and each local stall (`late_by`); we turn those two into event lines.

struct Capture;

/// INFO, or DEBUG with `FAULT_DRIVER_DEBUG=1` (then debug events that mention "refused" or
/// "dropped" are printed as `LOG` lines too).
fn max_level() -> tracing::Level {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *DEBUG.get_or_init(|| std::env::var_os("FAULT_DRIVER_DEBUG").is_some()) {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    }
}

impl Capture {
    fn install() {
        let _ = tracing::subscriber::set_global_default(Capture);
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    silent_for: Option<Duration>,
    late_by: Option<Duration>,
    peer: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "message" => self.message = text,
            "silent_for" => self.silent_for = parse_duration(&text).ok(),
            "late_by" => self.late_by = parse_duration(&text).ok(),
            "peer" => self.peer = text,
            _ => {}
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.is_event() && *meta.level() <= max_level()
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(max_level()))
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let t = wall_us();
        let mut f = Fields::default();
        event.record(&mut f);
        if let Some(s) = f.silent_for {
            let ip = f
                .peer
                .parse::<SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| "-".into());
            emit!("CONVICTED {t} {ip} {}", s.as_micros());
        } else if let Some(l) = f.late_by {
            emit!("STALL {t} {}", l.as_micros());
        } else if *event.metadata().level() <= tracing::Level::WARN
            || (f.message.contains("refused") || f.message.contains("dropped"))
        {
            emit!("LOG {t} {}", f.message.replace('\n', " "));
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// ---------------------------------------------------------------------------------------------------
// server

/// Per-session check of a sequenced stream `s<n>`: each number must be the next one.
#[derive(Default)]
struct SeqCheck {
    next: HashMap<u64, u64>,
    received: u64,
    gaps: u64,
    dups: u64,
}

impl SeqCheck {
    fn see(&mut self, session: u64, n: u64) {
        self.received += 1;
        let next = self.next.entry(session).or_insert(0);
        if n == *next {
            *next += 1;
        } else if n > *next {
            self.gaps += n - *next;
            *next = n + 1;
        } else {
            self.dups += 1;
        }
    }
}

fn seq_number(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload.strip_prefix(b"s")?)
        .ok()?
        .parse()
        .ok()
}

async fn server(o: Opts) -> Result<(), BoxError> {
    let interval = o.dur("interval", None)?;
    let timeout = o.dur("timeout", None)?;
    let mut cfg = ServerConfig {
        listen: o.addr("listen")?,
        max_connection_age: o.opt_dur("max-age")?,
        ..ServerConfig::default()
    }
    .with_timing(interval, timeout);
    cfg.proto.policy.client_driven = o.flag("client-driven");
    match o.str("codec") {
        None | Some("binary") => {}
        Some("json") => cfg.codec = Codec::Json,
        Some(other) => return Err(format!("unknown codec {other}").into()),
    }
    if let Some(n) = o.str("loops") {
        cfg.loops = n.parse()?;
    }
    let echo = o.flag("echo");
    let kill_every = o.opt_dur("kill-every")?;
    let limit = o.dur("duration", None)?;
    let mut server = Server::bind(cfg)?;
    let handle = server.handle();
    emit!("READY {} {}", wall_us(), server.local_addr());

    let mut peers: HashMap<ConnId, IpAddr> = HashMap::new();
    let mut seq = SeqCheck::default();
    let mut reasons: HashMap<&'static str, u64> = HashMap::new();
    let (mut connects, mut resumes, mut refused, mut kills) = (0u64, 0u64, 0u64, 0u64);
    let stop = stop_signal(limit);
    tokio::pin!(stop);
    let mut killer = kill_every.map(|d| tokio::time::interval_at(Instant::now() + d, d));
    loop {
        let kill_tick = async {
            match killer.as_mut() {
                Some(k) => k.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => break,
            _ = kill_tick => {
                let n = peers.len();
                for conn in peers.keys() {
                    let _ = handle.disconnect(*conn);
                }
                kills += n as u64;
                emit!("KILLED {} {n}", wall_us());
            }
            ev = server.next_event() => match ev {
                None => break,
                Some(ServerEvent::Connected { conn, peer, resumed, .. }) => {
                    peers.insert(conn, peer.ip());
                    connects += 1;
                    resumes += u64::from(resumed);
                    emit!("CONN {} {} {}", wall_us(), peer.ip(), u8::from(resumed));
                }
                Some(ServerEvent::Closed { conn, reason, .. }) => {
                    let ip = peers.remove(&conn).map(|i| i.to_string()).unwrap_or_else(|| "-".into());
                    *reasons.entry(reason.label()).or_default() += 1;
                    emit!("CLOSED {} {ip} {}", wall_us(), reason.label());
                }
                Some(ServerEvent::Message { session, payload, .. }) => {
                    if let (Some(s), Some(n)) = (session, seq_number(&payload)) {
                        seq.see(s.0, n);
                        if echo && let Err(e) = handle.send_to_session(s, payload) {
                            emit!("SENDERR {} {n} {e}", wall_us());
                        }
                    }
                }
                Some(ServerEvent::SendRefused { .. }) => {
                    refused += 1;
                    emit!("REFUSED {}", wall_us());
                }
                Some(_) => {}
            }
        }
    }
    emit!(
        "SEQ {} {} {} {}",
        seq.next.len(),
        seq.received,
        seq.gaps,
        seq.dups
    );
    let mut rs: Vec<String> = reasons.iter().map(|(k, v)| format!("{k}={v}")).collect();
    rs.sort();
    emit!(
        "SUMMARY connects={connects} resumes={resumes} refused={refused} kills={kills} open={} closed:{}",
        peers.len(),
        rs.join(",")
    );
    drop(server);
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------------
// classic JSON clients

/// What the classic crowd saw.
#[derive(Default)]
struct Classic {
    n: usize,
    connected: AtomicUsize,
    closed: AtomicUsize,
    answered: AtomicUsize,
    /// Bumped by SIGUSR1: pongs read after it count in `answered` (once per client and mark).
    mark: AtomicUsize,
}

async fn classic(o: Opts) -> Result<(), BoxError> {
    let server_addr = o.addr("server")?;
    let n = o.num("n", 1)? as usize;
    let interval = o.dur("interval", None)?;
    let bind: Option<IpAddr> = o.str("bind").map(|s| s.parse()).transpose()?;
    let limit = o.dur("duration", None)?;
    let crowd = Arc::new(Classic {
        n,
        ..Classic::default()
    });
    let mut usr1 = signal(SignalKind::user_defined1())?;
    for idx in 0..n {
        let crowd = Arc::clone(&crowd);
        tokio::spawn(async move {
            if classic_client(server_addr, bind, interval, &crowd)
                .await
                .is_err()
            {
                crowd.closed.fetch_add(1, Ordering::SeqCst);
                emit!("X {} {idx}", wall_us());
            }
        });
        if idx % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let stop = stop_signal(limit);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = usr1.recv() => {
                crowd.mark.fetch_add(1, Ordering::SeqCst);
                crowd.answered.store(0, Ordering::SeqCst);
                emit!("MARK {}", wall_us());
            }
        }
    }
    emit!(
        "CLASSIC {n} {} {} {}",
        crowd.connected.load(Ordering::SeqCst),
        crowd.closed.load(Ordering::SeqCst),
        crowd.answered.load(Ordering::SeqCst)
    );
    std::process::exit(0);
}

/// One classic client: connects once and pings every `interval` for ever; `Err` once the server
/// closed it (or it could not connect).
async fn classic_client(
    server: SocketAddr,
    bind: Option<IpAddr>,
    interval: Duration,
    crowd: &Classic,
) -> std::io::Result<()> {
    let socket = match server {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut s = socket.connect(server).await?;
    if crowd.connected.fetch_add(1, Ordering::SeqCst) + 1 == crowd.n {
        emit!("UP {} {}", wall_us(), crowd.n);
    }
    let mut tick = tokio::time::interval(interval);
    let mut buf = [0u8; 4096];
    let mut answered_mark = 0;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                s.write_all(format!("{{\"ping\":{n}}}").as_bytes()).await?;
            }
            r = s.read(&mut buf) => {
                let k = r?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                let mark = crowd.mark.load(Ordering::SeqCst);
                if mark > answered_mark && buf[..k].windows(7).any(|w| w == b"\"pong\":") {
                    answered_mark = mark;
                    crowd.answered.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// clients

struct Crowd {
    n: usize,
    up: AtomicUsize,
    deads: AtomicU64,
    stop_seq: Notify,
    stopping: AtomicBool,
    rtts: Mutex<Vec<u32>>,
    seq: Mutex<[u64; 5]>,
}

impl Crowd {
    fn connected(&self) {
        let now_up = self.up.fetch_add(1, Ordering::SeqCst) + 1;
        if now_up == self.n {
            emit!("UP {} {}", wall_us(), self.n);
        }
    }
    fn lost(&self) {
        self.up.fetch_sub(1, Ordering::SeqCst);
    }
}

struct SeqPlan {
    rate: u64,
    until_deads: u64,
}

async fn clients(o: Opts) -> Result<(), BoxError> {
    let server_addr = o.addr("server")?;
    let n = o.num("n", 1)? as usize;
    let interval = o.dur("interval", None)?;
    let timeout = o.dur("timeout", None)?;
    let bind: Option<IpAddr> = o.str("bind").map(|s| s.parse()).transpose()?;
    let rate = o.num("connect-rate", 2000)?.max(1);
    let limit = o.dur("duration", None)?;
    let backoff_base = o.opt_dur("backoff-base")?;
    let backoff_cap = o.opt_dur("backoff-cap")?;
    let seq_plan = match o.str("seq-rate") {
        Some(r) => Some(Arc::new(SeqPlan {
            rate: r.parse()?,
            until_deads: o.num("seq-until-deads", 100)?,
        })),
        None => None,
    };
    let crowd = Arc::new(Crowd {
        n,
        up: AtomicUsize::new(0),
        deads: AtomicU64::new(0),
        stop_seq: Notify::new(),
        stopping: AtomicBool::new(false),
        rtts: Mutex::new(Vec::new()),
        seq: Mutex::new([0; 5]),
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let stop = stop_signal(limit);
    tokio::pin!(stop);
    let started = Instant::now();
    let mut spawned = 0usize;
    let mut finished = 0usize;
    loop {
        if spawned < n {
            let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(n);
            while spawned < due {
                let mut cfg = ClientConfig::new(server_addr).with_timing(interval, timeout);
                cfg.bind = bind;
                if let Some(b) = backoff_base {
                    cfg.backoff.base = b;
                }
                if let Some(c) = backoff_cap {
                    cfg.backoff.cap = c;
                }
                let idx = spawned;
                let crowd = Arc::clone(&crowd);
                let plan = seq_plan.clone();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    run_client(idx, cfg, crowd, plan).await;
                    let _ = done.send(());
                });
                spawned += 1;
            }
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(10)), if spawned < n => {}
            Some(()) = done_rx.recv() => {
                finished += 1;
                if seq_plan.is_some() && finished == n {
                    break;
                }
            }
        }
    }
    let mut rtts = std::mem::take(&mut *crowd.rtts.lock().expect("rtts"));
    rtts.sort_unstable();
    let pct = |p: f64| -> u32 {
        if rtts.is_empty() {
            0
        } else {
            rtts[((rtts.len() - 1) as f64 * p).round() as usize]
        }
    };
    emit!(
        "RTT {} {} {} {}",
        rtts.len(),
        pct(0.5),
        pct(0.99),
        rtts.last().copied().unwrap_or(0)
    );
    if seq_plan.is_some() {
        let s = *crowd.seq.lock().expect("seq");
        emit!("SEQ {n} {} {} {} {} {}", s[0], s[1], s[2], s[3], s[4]);
    }
    emit!("END {}", wall_us());
    std::process::exit(0);
}

async fn run_client(idx: usize, cfg: ClientConfig, crowd: Arc<Crowd>, plan: Option<Arc<SeqPlan>>) {
    let mut client = Client::connect(cfg);
    let mut last_rtt_t = 0u64;
    let mut up = false;
    // Sequenced stream: a sender task, and the echoes checked here.
    let sent = Arc::new(AtomicU64::new(0));
    let sender_task = plan.as_ref().map(|p| {
        let sender = client.sender();
        let sent = Arc::clone(&sent);
        let crowd = Arc::clone(&crowd);
        let period = Duration::from_secs_f64(1.0 / p.rate.max(1) as f64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut i = 0u64;
            while !crowd.stopping.load(Ordering::SeqCst) {
                tick.tick().await;
                if sender.send(format!("s{i}").into_bytes()).await.is_err() {
                    break;
                }
                i += 1;
                sent.store(i, Ordering::SeqCst);
            }
        })
    });
    let (mut echoed, mut next, mut gaps, mut dups) = (0u64, 0u64, 0u64, 0u64);
    let mut flushed = false;
    let mut stopping = false;
    let mut drain_until: Option<Instant> = None;
    loop {
        let notified = crowd.stop_seq.notified();
        let drain_at = drain_until;
        let drain = async move {
            match drain_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // The client whose Dead event reached the limit set the flag itself (and its own `notified`
        // was created before the notification): check the flag as well.
        let stop_now = plan.is_some() && !stopping && crowd.stopping.load(Ordering::SeqCst);
        let ev = if stop_now {
            None
        } else {
            tokio::select! {
                ev = client.next_event() => Some(ev),
                _ = notified, if plan.is_some() && !stopping => None,
                _ = drain => break,
            }
        };
        let Some(ev) = ev else {
            stopping = true;
            if let Some(t) = &sender_task {
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while !t.is_finished() {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                })
                .await;
            }
            // Everything sent is acknowledged by the server (across reconnects)?
            flushed = tokio::time::timeout(Duration::from_secs(20), client.flush())
                .await
                .is_ok_and(|r| r.is_ok());
            if !flushed {
                emit!("NOFLUSH {} {idx}", wall_us());
            }
            drain_until = Some(Instant::now() + Duration::from_secs(5));
            continue;
        };
        let Some(ev) = ev else { break };
        let t = wall_us();
        match ev {
            ClientEvent::Connected { .. } => {
                if !up {
                    up = true;
                    crowd.connected();
                }
                emit!("C {t} {idx}");
            }
            ClientEvent::Rtt(r) => {
                last_rtt_t = t;
                let us = r.latest.as_micros().min(u32::MAX as u128) as u32;
                crowd.rtts.lock().expect("rtts").push(us);
            }
            ClientEvent::Dead { reason } => {
                if up {
                    up = false;
                    crowd.lost();
                }
                let deads = crowd.deads.fetch_add(1, Ordering::SeqCst) + 1;
                emit!("D {t} {idx} {} {last_rtt_t}", reason.label());
                if let Some(p) = &plan
                    && deads == p.until_deads
                {
                    crowd.stopping.store(true, Ordering::SeqCst);
                    crowd.stop_seq.notify_waiters();
                }
            }
            ClientEvent::Reconnecting { attempt, delay } => {
                emit!("R {t} {idx} {attempt} {}", delay.as_micros())
            }
            ClientEvent::Resumed { replayed, .. } => emit!("M {t} {idx} {replayed}"),
            ClientEvent::SessionLost { resent, .. } => emit!("L {t} {idx} {resent}"),
            ClientEvent::Closed { reason } => {
                emit!("X {t} {idx} {}", reason.label());
                break;
            }
            ClientEvent::Message(payload) => {
                if let Some(n) = seq_number(&payload) {
                    echoed += 1;
                    if n == next {
                        next += 1;
                    } else if n > next {
                        emit!("GAP {t} {idx} {next} {n}");
                        gaps += n - next;
                        next = n + 1;
                    } else {
                        emit!("DUP {t} {idx} {next} {n}");
                        dups += 1;
                    }
                }
                if stopping && next >= sent.load(Ordering::SeqCst) {
                    break;
                }
            }
            ClientEvent::Suspect { .. } => {}
        }
    }
    if plan.is_some() {
        let mut s = crowd.seq.lock().expect("seq");
        s[0] += sent.load(Ordering::SeqCst);
        s[1] += echoed;
        s[2] += gaps;
        s[3] += dups;
        s[4] += u64::from(flushed);
    }
}

// ---------------------------------------------------------------------------------------------------
// proxy: each chunk is held `delay ± jitter` (uniform), but never overtakes the chunk before it.

async fn proxy(o: Opts) -> Result<(), BoxError> {
    let listen = o.addr("listen")?;
    let to = o.addr("to")?;
    let delay = o.dur("delay", Some(Duration::from_millis(200)))?;
    let jitter = o.dur("jitter", Some(Duration::from_millis(100)))?;
    let limit = o.dur("duration", None)?;
    let listener = TcpListener::bind(listen).await?;
    emit!("READY {} {}", wall_us(), listener.local_addr()?);
    let stats = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let stop = stop_signal(limit);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            acc = listener.accept() => {
                let Ok((down, _)) = acc else { continue };
                let stats = Arc::clone(&stats);
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(to).await else { return };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    stats[0].fetch_add(1, Ordering::Relaxed);
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let a = tokio::spawn(pipe(dr, uw, delay, jitter, Arc::clone(&stats)));
                    let b = tokio::spawn(pipe(ur, dw, delay, jitter, stats));
                    let _ = tokio::join!(a, b);
                });
            }
        }
    }
    emit!(
        "PROXY {} {} {}",
        stats[0].load(Ordering::Relaxed),
        stats[1].load(Ordering::Relaxed),
        stats[2].load(Ordering::Relaxed)
    );
    std::process::exit(0);
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    jitter: Duration,
    stats: Arc<[AtomicU64; 3]>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut rng = vitals_timer::Jitter::seeded();
    let mut last = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // Uniform in [delay - jitter, delay + jitter]; FIFO: never before the previous chunk.
                let d = delay.saturating_sub(jitter) + rng.sample(jitter * 2);
                let at = (Instant::now() + d).max(last);
                last = at;
                stats[1].fetch_add(1, Ordering::Relaxed);
                stats[2].fetch_add(n as u64, Ordering::Relaxed);
                if tx.send((at, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
