//! `vitals serve`: the daemon. Settings come from flags > `VITALS_*` environment > TOML file
//! (`--config`) > defaults; SIGINT/SIGTERM drain gracefully and exit 0.
//!
//! The application side counts what happens (messages, sessions, RTTs, disconnects by reason,
//! resumes) for the status page (`--http ADDR`) and echoes messages back with `--echo`.
//!
//! With `--processes N` (N > 1) this process is a [`supervisor`] of N worker processes on one port
//! (each this same command, told so by its environment) and serves one status page for all.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use vitals::{Codec, Server, ServerConfig, ServerEvent};

use crate::config::{
    FileValue, Layers, Names, ServeFile, Sourced, codec_name, parse_addr, parse_bool, parse_codec,
    parse_count, parse_duration, parse_opt_addr, parse_opt_duration, parse_opt_store,
};
use crate::http::{self, status::Info, status::Status};
use crate::sys;

pub(crate) mod supervisor;

/// Arguments of `vitals serve`. Every setting can also come from a `VITALS_*` environment variable
/// or the TOML file given with `--config`; flags win over the environment, which wins over the file.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on [env: VITALS_LISTEN] [default: 127.0.0.1:7878].
    #[arg(long, value_parser = parse_addr)]
    listen: Option<SocketAddr>,
    /// Ping after this much silence from a peer; also the shortest interval granted to clients
    /// [env: VITALS_INTERVAL] [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    /// Declare a peer dead after this much silence (must exceed the interval)
    /// [env: VITALS_TIMEOUT] [default: 3s].
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Wire protocol: `binary` (sessions, resume) or `json` (classic `{"ping":N}` peers)
    /// [env: VITALS_CODEC] [default: binary].
    #[arg(long, value_parser = parse_codec)]
    codec: Option<Codec>,
    /// Most open connections [env: VITALS_MAX_CONNECTIONS] [default: 100000].
    #[arg(long, value_parser = parse_count)]
    max_connections: Option<u64>,
    /// Event-loop threads [env: VITALS_LOOPS] [default: available cores].
    #[arg(long, value_parser = parse_count)]
    loops: Option<u64>,
    /// Server processes sharing the port (SO_REUSEPORT): more than one makes this process their
    /// supervisor — it starts, watches (restarts) and drains them, passes every other setting on
    /// (`--max-connections` is split between them; a store gives each its own node id) and serves one
    /// status page for all. For more connections than one process may open files
    /// [env: VITALS_PROCESSES] [default: 1].
    #[arg(long, value_parser = parse_count)]
    processes: Option<u64>,
    /// Close connections after this age (±10 %) so load rebalances; clients resume. `off` disables
    /// [env: VITALS_MAX_CONNECTION_AGE] [default: off].
    #[arg(long, value_parser = |s: &str| parse_opt_duration(s).map(Switch))]
    max_connection_age: Option<Switch<Duration>>,
    /// Serve the status page, /status.json and /metrics on this address (`off` disables)
    /// [env: VITALS_HTTP] [default: off].
    #[arg(long, value_parser = |s: &str| parse_opt_addr(s).map(Switch))]
    http: Option<Switch<SocketAddr>>,
    /// Echo every message back to its sender [env: VITALS_ECHO].
    #[arg(long)]
    echo: bool,
    /// Client-driven heartbeats: answer clients' pings and probe only after 1.25 × interval of
    /// silence, instead of also pinging after `interval` (one ping/pong per interval instead of up to
    /// two; see docs/LIVENESS.md for when not to). With `--codec json` the server never pings anyway
    /// (classic clients drive their heartbeat and do not answer) [env: VITALS_CLIENT_DRIVEN].
    #[arg(long)]
    client_driven: bool,
    /// Keep sessions in Redis, shared by every server given the same URL (a fleet, docs/FLEET.md):
    /// `redis://host:port/db`, or `memory` for this process only
    /// [env: VITALS_STORE] [default: memory].
    #[arg(long, value_parser = |s: &str| parse_opt_store(s).map(Switch))]
    store: Option<Switch<String>>,
    /// This server's node id in a fleet, unique among its servers
    /// [env: VITALS_NODE] [default: host name, process id and a random suffix].
    #[arg(long)]
    node: Option<String>,
    /// Partitions of a fleet's sessions (each an inbound and an event stream in Redis); every server
    /// of a fleet must use the same value [env: VITALS_PARTITIONS] [default: 16].
    #[arg(long, value_parser = parse_count)]
    partitions: Option<u64>,
    /// On SIGINT/SIGTERM, give queued bytes this long to leave [env: VITALS_DRAIN] [default: 5s].
    #[arg(long, value_parser = parse_duration)]
    drain: Option<Duration>,
    /// TLS: PEM certificate chain to serve (with `--tls-key`; both or neither).
    #[arg(long, env = "VITALS_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// TLS: PEM private key of the certificate.
    #[arg(long, env = "VITALS_TLS_KEY", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Require this pre-shared token (the file's bytes without a trailing newline, 1 to 64 bytes) in
    /// every client's HELLO; others are refused with close code AuthFailed. Use with TLS: the token
    /// travels in clear otherwise.
    #[arg(long, env = "VITALS_AUTH_TOKEN_FILE", value_name = "PATH")]
    auth_token_file: Option<PathBuf>,
    /// TOML file with any of the settings above (keys spelled like the flags, with `_`)
    /// [env: VITALS_CONFIG].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// A flag value that can also be `off` (clap treats `Option<Option<T>>` as an optional value, so the
/// inner option is wrapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Switch<T>(pub(crate) Option<T>);

/// The settings in force after layering, each with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Listen address.
    pub(crate) listen: Sourced<SocketAddr>,
    /// Heartbeat interval.
    pub(crate) interval: Sourced<Duration>,
    /// Dead timeout.
    pub(crate) timeout: Sourced<Duration>,
    /// Wire protocol.
    pub(crate) codec: Sourced<Codec>,
    /// Connection limit.
    pub(crate) max_connections: Sourced<u64>,
    /// Event loops.
    pub(crate) loops: Sourced<u64>,
    /// Server processes.
    pub(crate) processes: Sourced<u64>,
    /// Maximum connection age.
    pub(crate) max_connection_age: Sourced<Option<Duration>>,
    /// Status page address.
    pub(crate) http: Sourced<Option<SocketAddr>>,
    /// Echo messages.
    pub(crate) echo: Sourced<bool>,
    /// Client-driven heartbeats.
    pub(crate) client_driven: Sourced<bool>,
    /// Drain time at shutdown.
    pub(crate) drain: Sourced<Duration>,
    /// Redis URL of the fleet's session store (`None`: in this process).
    pub(crate) store: Sourced<Option<String>>,
    /// Node id in the fleet (`None`: the default).
    pub(crate) node: Sourced<Option<String>>,
    /// Partitions of the fleet.
    pub(crate) partitions: Sourced<u64>,
}

/// `--name`, `VITALS_NAME`, `name`.
macro_rules! names {
    ($flag:literal, $env:literal, $key:literal) => {
        Names {
            flag: $flag,
            env: $env,
            key: $key,
        }
    };
}

/// A file's string value, to be parsed like the flag.
fn file_text<T>(v: &Option<String>) -> Option<FileValue<T>> {
    v.clone().map(FileValue::Text)
}

impl Settings {
    /// Layers `args` over the environment (`env`) and the config file, then validates.
    pub(crate) fn resolve(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Settings> {
        let config_path = args.config.clone().or_else(|| {
            env("VITALS_CONFIG")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        });
        let (file, path) = match &config_path {
            Some(p) => (ServeFile::load(p)?, Some(p.display().to_string())),
            None => (ServeFile::default(), None),
        };
        let l = Layers::new(env, path);
        let default_loops = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        let s = Settings {
            listen: l.pick(
                names!("--listen", "VITALS_LISTEN", "listen"),
                args.listen,
                file_text(&file.listen),
                parse_addr,
                SocketAddr::from(([127, 0, 0, 1], 7878)),
            )?,
            interval: l.pick(
                names!("--interval", "VITALS_INTERVAL", "interval"),
                args.interval,
                file_text(&file.interval),
                parse_duration,
                Duration::from_secs(1),
            )?,
            timeout: l.pick(
                names!("--timeout", "VITALS_TIMEOUT", "timeout"),
                args.timeout,
                file_text(&file.timeout),
                parse_duration,
                Duration::from_secs(3),
            )?,
            codec: l.pick(
                names!("--codec", "VITALS_CODEC", "codec"),
                args.codec,
                file_text(&file.codec),
                parse_codec,
                Codec::Binary,
            )?,
            max_connections: l.pick(
                names!(
                    "--max-connections",
                    "VITALS_MAX_CONNECTIONS",
                    "max_connections"
                ),
                args.max_connections,
                file.max_connections.map(FileValue::Typed),
                parse_count,
                100_000,
            )?,
            loops: l.pick(
                names!("--loops", "VITALS_LOOPS", "loops"),
                args.loops,
                file.loops.map(FileValue::Typed),
                parse_count,
                default_loops,
            )?,
            processes: l.pick(
                names!("--processes", "VITALS_PROCESSES", "processes"),
                args.processes,
                file.processes.map(FileValue::Typed),
                parse_count,
                1,
            )?,
            max_connection_age: l.pick(
                names!(
                    "--max-connection-age",
                    "VITALS_MAX_CONNECTION_AGE",
                    "max_connection_age"
                ),
                args.max_connection_age.map(|s| s.0),
                file_text(&file.max_connection_age),
                parse_opt_duration,
                None,
            )?,
            http: l.pick(
                names!("--http", "VITALS_HTTP", "http"),
                args.http.map(|s| s.0),
                file_text(&file.http),
                parse_opt_addr,
                None,
            )?,
            echo: l.pick(
                names!("--echo", "VITALS_ECHO", "echo"),
                args.echo.then_some(true),
                file.echo.map(FileValue::Typed),
                parse_bool,
                false,
            )?,
            client_driven: l.pick(
                names!("--client-driven", "VITALS_CLIENT_DRIVEN", "client_driven"),
                args.client_driven.then_some(true),
                file.client_driven.map(FileValue::Typed),
                parse_bool,
                false,
            )?,
            drain: l.pick(
                names!("--drain", "VITALS_DRAIN", "drain"),
                args.drain,
                file_text(&file.drain),
                parse_duration,
                Duration::from_secs(5),
            )?,
            store: l.pick(
                names!("--store", "VITALS_STORE", "store"),
                args.store.clone().map(|s| s.0),
                file_text(&file.store),
                parse_opt_store,
                None,
            )?,
            node: l.pick(
                names!("--node", "VITALS_NODE", "node"),
                args.node.clone().map(Some),
                file_text(&file.node),
                |s: &str| Ok(Some(s.to_string())),
                None,
            )?,
            partitions: l.pick(
                names!("--partitions", "VITALS_PARTITIONS", "partitions"),
                args.partitions,
                file.partitions.map(FileValue::Typed),
                parse_count,
                16,
            )?,
        };
        s.validate()?;
        Ok(s)
    }

    /// Rejects combinations that cannot work, saying which setting to change and how.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        let show = humantime::format_duration;
        if self.interval.value.is_zero() {
            anyhow::bail!(
                "interval (0s, {}) must be greater than zero; e.g. --interval 1s",
                self.interval.source
            );
        }
        if self.timeout.value <= self.interval.value {
            anyhow::bail!(
                "timeout ({}, {}) must be greater than interval ({}, {}); e.g. --timeout {} (three intervals)",
                show(self.timeout.value),
                self.timeout.source,
                show(self.interval.value),
                self.interval.source,
                show(self.interval.value * 3)
            );
        }
        for (what, flag, v) in [
            (
                "max_connections",
                "--max-connections",
                &self.max_connections,
            ),
            ("loops", "--loops", &self.loops),
            ("processes", "--processes", &self.processes),
            ("partitions", "--partitions", &self.partitions),
        ] {
            if v.value == 0 {
                anyhow::bail!(
                    "{what} (0, {}) must be at least 1; e.g. {flag} 1 (or leave it out for the default)",
                    v.source
                );
            }
        }
        if self.loops.value > u64::from(u16::MAX) {
            anyhow::bail!(
                "loops ({}, {}) is too large; use at most the number of cores",
                self.loops.value,
                self.loops.source
            );
        }
        if self.processes.value > supervisor::MAX_PROCESSES {
            anyhow::bail!(
                "processes ({}, {}) is too large; at most {}",
                self.processes.value,
                self.processes.source,
                supervisor::MAX_PROCESSES
            );
        }
        if self.processes.value > self.max_connections.value {
            anyhow::bail!(
                "processes ({}, {}) exceeds max_connections ({}, {}): each process needs room for a connection",
                self.processes.value,
                self.processes.source,
                self.max_connections.value,
                self.max_connections.source
            );
        }
        if self.partitions.value > u64::from(u16::MAX) {
            anyhow::bail!(
                "partitions ({}, {}) is too large; 16 suits most fleets",
                self.partitions.value,
                self.partitions.source
            );
        }
        if self.store.value.is_some() && self.codec.value != Codec::Binary {
            anyhow::bail!(
                "store ({}) needs the binary codec ({}): JSON peers have no sessions to share; drop --store or use --codec binary",
                self.store.source,
                self.codec.source
            );
        }
        if let Some(node) = &self.node.value
            && (node.is_empty() || node.contains(char::is_whitespace))
        {
            anyhow::bail!(
                "node ({node:?}, {}) must be non-empty and without spaces",
                self.node.source
            );
        }
        if self.max_connection_age.value == Some(Duration::ZERO) {
            anyhow::bail!(
                "max_connection_age (0s, {}) must be greater than zero; give e.g. 10m, or `off` to never age connections",
                self.max_connection_age.source
            );
        }
        if self.http.value == Some(self.listen.value) && self.listen.value.port() != 0 {
            anyhow::bail!(
                "the status page ({}) and the server ({}) cannot share {}; pick another --http port",
                self.http.source,
                self.listen.source,
                self.listen.value
            );
        }
        Ok(())
    }

    /// The library configuration.
    pub(crate) fn server_config(&self) -> ServerConfig {
        let (interval, timeout) = (self.interval.value, self.timeout.value);
        let mut cfg = ServerConfig {
            listen: self.listen.value,
            codec: self.codec.value,
            max_connections: usize::try_from(self.max_connections.value).unwrap_or(usize::MAX),
            loops: usize::try_from(self.loops.value).unwrap_or(1),
            max_connection_age: self.max_connection_age.value,
            ..ServerConfig::default()
        }
        .with_timing(interval, timeout);
        // The server's interval is the fastest it grants (and enforces: pings closer than half of
        // it collect strikes); slower proposals are granted up to the library's caps.
        let policy = &mut cfg.proto.policy;
        policy.min_interval = interval;
        policy.min_timeout = timeout;
        policy.max_interval = policy.max_interval.max(interval);
        policy.max_timeout = policy.max_timeout.max(timeout);
        policy.client_driven = self.client_driven.value;
        cfg
    }
}

/// Installs the Prometheus recorder as the global `metrics` recorder (RTT as a histogram with
/// buckets from 100 µs to 10 s), with every vitals metric's help text.
fn install_prometheus() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(vitals::metrics::RTT_SECONDS.to_string()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ],
        )
        .context("prometheus buckets")?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    vitals::metrics::describe();
    Ok(handle)
}

/// Lowers `max_connections` to what this process's open-file limit (raised to its hard limit first)
/// can hold, with a warning: past it `accept` fails and connections would wait in the backlog
/// unanswered, where below it a connection over the limit is refused at once (`ServerFull`).
fn fit_file_limit(settings: &mut Settings) {
    let files = sys::raise_file_limit();
    let most = files.soft.saturating_sub(sys::FD_OVERHEAD).max(1);
    if settings.max_connections.value > most {
        tracing::warn!(
            max_connections = settings.max_connections.value,
            open_file_limit = files.soft,
            "max_connections lowered to {most}: this process may open at most {} files (use --processes for more)",
            files.soft
        );
        settings.max_connections.value = most;
    }
}

/// Watches SIGINT and SIGTERM from the moment it is called (the handlers are installed before it
/// returns); the returned future resolves with the signal's name.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Runs `vitals serve`.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    let mut settings = Settings::resolve(&args, &env)?;
    let worker = supervisor::Worker::from_env()?;
    match &worker {
        Some(w) => w.apply(&mut settings),
        None if settings.processes.value > 1 => return supervisor::run(settings).await,
        None => {}
    }
    let who = worker.as_ref().map_or("vitals serve".to_string(), |w| {
        format!("vitals serve (worker {})", w.index)
    });
    fit_file_limit(&mut settings);
    let prometheus = match settings.http.value {
        Some(_) => Some(install_prometheus()?),
        None => None,
    };
    // Watch signals before anything is announced, so a script that signals right after the
    // "listening" line is not killed by the default handler. A worker also drains when its
    // supervisor is gone (its stdin ends).
    let signal = shutdown_signal()?;
    let orphaned = supervisor::orphaned(worker.is_some());
    let mut cfg = settings.server_config();
    cfg.tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            vitals::tls::server_config_from_pem_files(cert, key).with_context(|| {
                format!(
                    "cannot load --tls-cert {} / --tls-key {}",
                    cert.display(),
                    key.display()
                )
            })?,
        ),
        (None, None) => None,
        _ => anyhow::bail!(
            "give both --tls-cert and --tls-key (a PEM certificate chain and its key), or neither"
        ),
    };
    let tls = cfg.tls.is_some();
    if let Some(path) = &args.auth_token_file {
        cfg.proto.auth_token = Some(crate::config::read_auth_token(path)?);
        if settings.codec.value != vitals::Codec::Binary {
            anyhow::bail!("--auth-token-file needs the binary codec (JSON peers send no HELLO)");
        }
        tracing::info!("clients must present the authentication token");
        if !tls {
            tracing::warn!(
                "the authentication token travels in clear without TLS (--tls-cert/--tls-key)"
            );
        }
    }
    let fleet_cfg = settings.store.value.as_ref().map(|url| {
        let mut fleet = vitals::FleetConfig::default();
        if let Some(node) = &settings.node.value {
            fleet.node = node.clone();
        }
        fleet.partitions = u16::try_from(settings.partitions.value).unwrap_or(u16::MAX);
        (url.clone(), fleet)
    });
    let mut server = match &fleet_cfg {
        None => Server::bind(cfg),
        Some((url, fleet)) => {
            let store = vitals::RedisStore::with_config(url, fleet.clone())?;
            tracing::info!(node = %store.config().node, "sessions kept in Redis (a fleet)");
            Server::bind_with_store(cfg, store)
        }
    }
    .with_context(|| format!("cannot listen on {}", settings.listen.value))?;
    if tls {
        tracing::info!("TLS enabled");
    }
    let addr = server.local_addr();
    let handle = server.handle();
    let status = Arc::new(Status::new(Info {
        listen: addr,
        codec: codec_name(settings.codec.value).to_string(),
        interval_ms: u64::try_from(settings.interval.value.as_millis()).unwrap_or(u64::MAX),
        timeout_ms: u64::try_from(settings.timeout.value.as_millis()).unwrap_or(u64::MAX),
        loops: usize::try_from(settings.loops.value).unwrap_or(1),
        processes: 1,
        max_connections: usize::try_from(settings.max_connections.value).unwrap_or(usize::MAX),
        echo: settings.echo.value,
        store: match &fleet_cfg {
            None => "memory".into(),
            Some((_, fleet)) => format!("redis (node {})", fleet.node),
        },
    })?);
    let status = match Arc::try_unwrap(status) {
        // A worker's page carries its whole RTT histogram, for the supervisor to add up.
        Ok(s) if worker.is_some() => Arc::new(s.exporting_rtt()),
        Ok(s) => Arc::new(s),
        Err(shared) => shared,
    };
    let mut http_task = None;
    let mut http_note = String::new();
    if let (Some(http_addr), Some(prometheus)) = (settings.http.value, prometheus) {
        let listener = tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("cannot serve the status page on {http_addr}"))?;
        let bound = listener.local_addr()?;
        let counted = handle.clone();
        let app = Arc::new(http::App {
            view: http::View::Server {
                status: Arc::clone(&status),
                open: Box::new(move || counted.connections()),
                prometheus,
            },
            fleet: fleet_cfg.clone(),
        });
        http_task = Some(tokio::spawn(http::serve(listener, app)));
        http_note = format!(", status page http://{bound}/");
    }
    println!(
        "{who}: listening on {addr} (codec {}, interval {}, timeout {}, loops {}{}){http_note}",
        codec_name(settings.codec.value),
        humantime::format_duration(settings.interval.value),
        humantime::format_duration(settings.timeout.value),
        settings.loops.value,
        if settings.echo.value { ", echo" } else { "" },
    );
    let _ = std::io::stdout().flush();
    tracing::debug!(?settings, "settings in force");

    let echo = settings.echo.value;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker.tick().await;
    tokio::pin!(signal);
    tokio::pin!(orphaned);
    let which = loop {
        tokio::select! {
            event = server.next_event() => match event {
                Some(event) => on_event(&event, &status, &handle, echo),
                None => break "server stopped",
            },
            _ = ticker.tick() => status.tick(handle.connections()),
            name = &mut signal => break name,
            () = &mut orphaned => break "supervisor gone",
        }
    };
    eprintln!(
        "{who}: {which}: draining {} connection(s) (up to {})",
        handle.connections(),
        humantime::format_duration(settings.drain.value)
    );
    let mut rest = server.shutdown(settings.drain.value).await;
    while let Some(event) = rest.recv().await {
        status.record(&event);
    }
    if let Some(task) = http_task {
        task.abort();
    }
    let snap = status.snapshot(0);
    eprintln!(
        "{who}: stopped; {} session(s) ({} resumed), {} message(s) received, {} conviction(s)",
        snap.connections.total, snap.connections.resumed, snap.messages.received, snap.convictions
    );
    Ok(ExitCode::SUCCESS)
}

/// Counts `event`, logs what an operator wants to see, and echoes messages when asked.
fn on_event(event: &ServerEvent, status: &Status, handle: &vitals::ServerHandle, echo: bool) {
    status.record(event);
    match event {
        ServerEvent::Connected {
            conn,
            peer,
            resumed,
            ..
        } => tracing::debug!(%conn, %peer, resumed, "connected"),
        ServerEvent::Message {
            conn,
            session,
            payload,
        } if echo => {
            // To the session rather than the connection: if the connection is being replaced
            // (max age, a resume elsewhere), the echo waits in the session and is replayed.
            let sent = match session {
                Some(s) => handle.send_to_session(*s, payload.clone()),
                None => handle.send(*conn, payload.clone()),
            };
            match sent {
                Ok(()) => status.echoed(),
                Err(e) => {
                    status.echo_failed();
                    tracing::warn!(%conn, error = %e, "echo not queued");
                }
            }
        }
        ServerEvent::Closed { conn, reason, .. } => {
            if http::status::is_conviction(reason) {
                tracing::info!(%conn, reason = reason.label(), "peer convicted");
            } else {
                tracing::debug!(%conn, ?reason, "closed");
            }
        }
        ServerEvent::SendRefused { conn, reason, .. } => {
            tracing::debug!(%conn, reason, "send refused")
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;
    use std::collections::HashMap;

    fn args() -> ServeArgs {
        ServeArgs {
            listen: None,
            interval: None,
            timeout: None,
            codec: None,
            max_connections: None,
            loops: None,
            processes: None,
            max_connection_age: None,
            http: None,
            echo: false,
            client_driven: false,
            drain: None,
            store: None,
            node: None,
            partitions: None,
            tls_cert: None,
            tls_key: None,
            auth_token_file: None,
            config: None,
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = Settings::resolve(&args(), &env_of(&[])).unwrap();
        assert_eq!(s.listen.value, SocketAddr::from(([127, 0, 0, 1], 7878)));
        assert_eq!(s.interval.value, Duration::from_secs(1));
        assert_eq!(s.timeout.value, Duration::from_secs(3));
        assert_eq!(s.codec.value, Codec::Binary);
        assert_eq!(s.http.value, None);
        assert!(!s.echo.value);
        let cfg = s.server_config();
        assert!(!cfg.proto.policy.client_driven);
        assert_eq!(cfg.proto.policy.min_interval, Duration::from_secs(1));
        assert_eq!(cfg.max_connections, 100_000);
    }

    #[test]
    fn client_driven_heartbeats_from_flag_or_env() {
        let mut a = args();
        a.client_driven = true;
        let s = Settings::resolve(&a, &env_of(&[])).unwrap();
        assert!(s.server_config().proto.policy.client_driven);
        let s = Settings::resolve(&args(), &env_of(&[("VITALS_CLIENT_DRIVEN", "true")])).unwrap();
        assert!(s.server_config().proto.policy.client_driven);
    }

    #[test]
    fn env_layers_under_flags() {
        let env = env_of(&[("VITALS_TIMEOUT", "10s"), ("VITALS_INTERVAL", "2s")]);
        let mut a = args();
        a.interval = Some(Duration::from_millis(500));
        let s = Settings::resolve(&a, &env).unwrap();
        assert_eq!(s.interval.value, Duration::from_millis(500));
        assert_eq!(s.interval.source, Source::Flag("--interval"));
        assert_eq!(s.timeout.value, Duration::from_secs(10));
        assert_eq!(s.timeout.source, Source::Env("VITALS_TIMEOUT"));
        let cfg = s.server_config();
        assert_eq!(cfg.proto.policy.min_interval, Duration::from_millis(500));
        assert_eq!(cfg.proto.liveness.timeout, Duration::from_secs(10));
    }

    #[test]
    fn bad_timing_names_both_sources_and_a_fix() {
        let env = env_of(&[("VITALS_TIMEOUT", "1s")]);
        let mut a = args();
        a.interval = Some(Duration::from_secs(2));
        let err = Settings::resolve(&a, &env).unwrap_err().to_string();
        assert!(err.contains("from $VITALS_TIMEOUT"), "{err}");
        assert!(err.contains("from --interval"), "{err}");
        assert!(err.contains("--timeout 6s"), "{err}");
    }

    #[test]
    fn zero_sizes_are_rejected() {
        let mut a = args();
        a.max_connections = Some(0);
        let err = Settings::resolve(&a, &env_of(&[])).unwrap_err().to_string();
        assert!(
            err.contains("max_connections") && err.contains("at least 1"),
            "{err}"
        );
        let err = Settings::resolve(&args(), &env_of(&[("VITALS_LOOPS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("loops (0, from $VITALS_LOOPS)"), "{err}");
        let err = Settings::resolve(&args(), &env_of(&[("VITALS_MAX_CONNECTION_AGE", "0s")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`off`"), "{err}");
    }
}
