//! `vitals serve --processes N`: one port, N server processes, one status page.
//!
//! A process may open only so many files (20,000 here, a hard limit), and a connection is one; more
//! connections need more processes. The supervisor starts N workers — this same command, with every
//! setting it was given, told by the environment variable `VITALS_WORKER` which one it is — that each
//! bind the port with SO_REUSEPORT (the kernel spreads new connections over them by a hash of the
//! address pair). It:
//! - **starts** worker 0 first (so a port of 0 becomes a real port that the others then share), then
//!   the rest; each announces its listening line with its own status page (loopback, ephemeral port)
//!   on its stdout, and a worker that does not within 30 s fails the start;
//! - **watches** them: a worker that exits is restarted (its clients reconnect and resume, through
//!   the store when there is one), after 1 s, doubling to 30 s while it keeps exiting within 10 s of
//!   its start; after 5 such exits in a row it is left `failed`. The state, pid and restarts of every
//!   worker are on the status page;
//! - **drains** them on SIGTERM/SIGINT: each gets SIGTERM and drains as a single server does; those
//!   not gone after `drain + 10 s` are killed. A worker also drains when its stdin ends, which is when
//!   the supervisor is gone, however it died;
//! - **aggregates**: its `/status.json` and `/metrics` are the sums of the workers' own, read when
//!   asked ([`crate::http::aggregate`]).
//!
//! Every setting goes to every worker, except: `--max-connections` is split (each gets
//! `ceil(max / N)`), `--http` is the supervisor's (workers serve their own pages on 127.0.0.1:0), and
//! with a store each worker is a node of its own (`--node X` becomes `X-w0`, `X-w1`, …; without
//! `--node` each worker's default id is its own already).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::Settings;
use crate::config::codec_name;
use crate::http::status::{Info, WorkerState};
use crate::http::{self, App, View};
use crate::sys;

/// Most worker processes.
pub(crate) const MAX_PROCESSES: u64 = 512;

/// The environment variable that makes `vitals serve` a worker (JSON: a [`Worker`]).
const WORKER_ENV: &str = "VITALS_WORKER";

/// How long a worker may take to announce that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A worker that ran this long before exiting is restarted after the shortest delay.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Exits within [`STABLE_AFTER`] of their start in a row after which a worker is not restarted.
const MAX_QUICK_EXITS: u32 = 5;

/// Longest delay before a restart.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// What a worker is told by its supervisor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Worker {
    /// Its index, from 0.
    pub(crate) index: usize,
    /// The address to listen on (SO_REUSEPORT; port 0 only for worker 0's first start).
    listen: SocketAddr,
    /// Its share of `--max-connections`.
    max_connections: u64,
}

impl Worker {
    /// Whether a supervisor started this process as its worker.
    pub(crate) fn is_this_process() -> bool {
        std::env::var_os(WORKER_ENV).is_some()
    }

    /// The worker this process is, if its supervisor said so.
    pub(crate) fn from_env() -> anyhow::Result<Option<Worker>> {
        match std::env::var(WORKER_ENV) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("${WORKER_ENV} is not a worker description: {text}")),
            Err(_) => Ok(None),
        }
    }

    /// Makes `settings` this worker's: its address, its share of the connections, its own status
    /// page on loopback, one process, its own node id in a fleet.
    pub(crate) fn apply(&self, settings: &mut Settings) {
        settings.listen.value = self.listen;
        settings.max_connections.value = self.max_connections;
        settings.http.value = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        settings.processes.value = 1;
        if let Some(node) = &mut settings.node.value {
            *node = format!("{node}-w{}", self.index);
        }
    }
}

/// Resolves when a worker's supervisor is gone (its stdin ends); never for a process that is not a
/// worker. A plain thread reads stdin (a blocking read would hold up the runtime's shutdown).
pub(crate) fn orphaned(worker: bool) -> impl std::future::Future<Output = ()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    if worker {
        let spawned = std::thread::Builder::new()
            .name("supervisor-watch".into())
            .spawn(move || {
                use std::io::Read as _;
                let mut buf = [0u8; 64];
                let mut stdin = std::io::stdin();
                while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
                let _ = tx.send(());
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot watch the supervisor");
        }
    }
    async move {
        if !worker || rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The workers as the status page sees them.
pub(crate) struct Workers {
    info: Info,
    started: Instant,
    states: Mutex<Vec<WorkerState>>,
}

impl Workers {
    /// The supervisor's settings (loops and limits of all workers together).
    pub(crate) fn info(&self) -> Info {
        self.info.clone()
    }

    /// Seconds since the supervisor started.
    pub(crate) fn uptime_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Every worker's state now.
    pub(crate) fn states(&self) -> Vec<WorkerState> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WorkerState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut WorkerState)) {
        if let Some(s) = self.lock().get_mut(index) {
            f(s);
        }
    }
}

/// What the watchers tell the supervisor's loop.
enum Note {
    /// A start attempt ended: listening (address, status page) or not.
    Started {
        index: usize,
        generation: u64,
        result: anyhow::Result<(u32, SocketAddr, Option<SocketAddr>)>,
    },
    /// A worker process exited.
    Exited {
        index: usize,
        generation: u64,
        how: String,
    },
    /// Time to start worker `index` again.
    Restart { index: usize },
}

/// One slot's bookkeeping in the supervisor's loop.
struct Slot {
    generation: u64,
    pid: Option<u32>,
    started: Instant,
    quick_exits: u32,
    /// Listening (or starting) and not yet seen to exit.
    alive: bool,
    failed: bool,
}

/// How a worker exited, in words.
fn describe(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => format!("{s}"),
        },
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// The address after `listening on ` and the status page after `status page http://` in a
/// listening line.
fn parse_listening(line: &str) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let rest = line.split("listening on ").nth(1)?;
    let addr = rest.split([' ', ',']).next()?.parse().ok()?;
    let page = line
        .split("status page http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok());
    Some((addr, page))
}

/// How to start a worker.
#[derive(Clone)]
struct Launch {
    exe: PathBuf,
    args: Vec<OsString>,
    max_connections: u64,
    notes: mpsc::UnboundedSender<Note>,
}

impl Launch {
    /// Starts worker `index` listening on `listen`; reports through `notes` when it listens (or
    /// could not) and when it exits.
    fn start(&self, index: usize, generation: u64, listen: SocketAddr) {
        let me = self.clone();
        tokio::spawn(async move {
            let worker = Worker {
                index,
                listen,
                max_connections: me.max_connections,
            };
            let spawned = serde_json::to_string(&worker)
                .map_err(anyhow::Error::from)
                .and_then(|env| {
                    Command::new(&me.exe)
                        .args(&me.args)
                        .env(WORKER_ENV, env)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::inherit())
                        .kill_on_drop(true)
                        .spawn()
                        .context("cannot start a worker process")
                });
            let mut child = match spawned {
                Ok(c) => c,
                Err(e) => {
                    let _ = me.notes.send(Note::Started {
                        index,
                        generation,
                        result: Err(e),
                    });
                    return;
                }
            };
            let pid = child.id().unwrap_or(0);
            // Its stdin stays open as long as we hold it: its end tells the worker we are gone.
            let _stdin = child.stdin.take();
            let mut lines = child.stdout.take().map(|o| BufReader::new(o).lines());
            let listening = async {
                let lines = lines.as_mut()?;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(found) = parse_listening(&line) {
                        return Some(found);
                    }
                }
                None
            };
            let result = match tokio::time::timeout(START_TIMEOUT, listening).await {
                Ok(Some((addr, page))) => Ok((pid, addr, page)),
                Ok(None) => Err(anyhow::anyhow!(
                    "worker {index} exited before listening (its messages are above)"
                )),
                Err(_) => Err(anyhow::anyhow!(
                    "worker {index} did not listen within {START_TIMEOUT:?}"
                )),
            };
            let up = result.is_ok();
            let _ = me.notes.send(Note::Started {
                index,
                generation,
                result,
            });
            if !up {
                let _ = child.start_kill();
            }
            // Keep reading its stdout (so it never blocks on a full pipe) until it exits.
            let drain = async {
                if let Some(lines) = lines.as_mut() {
                    while let Ok(Some(_)) = lines.next_line().await {}
                }
            };
            let (status, ()) = tokio::join!(child.wait(), drain);
            let _ = me.notes.send(Note::Exited {
                index,
                generation,
                how: describe(status),
            });
        });
    }
}

/// Runs the supervisor until SIGTERM/SIGINT has drained every worker.
pub(crate) async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let n = usize::try_from(settings.processes.value).unwrap_or(1);
    let signal = super::shutdown_signal()?;
    // Workers inherit the raised limit.
    let files = sys::raise_file_limit();
    let per_worker = settings.max_connections.value.div_ceil(n as u64);
    let room = files.soft.saturating_sub(sys::FD_OVERHEAD);
    if per_worker > room {
        tracing::warn!(
            "each of {n} workers would take up to {per_worker} connections but may open only {} files: \
             at most {} connections in all; use --processes {} for {}",
            files.soft,
            room * n as u64,
            settings.max_connections.value.div_ceil(room.max(1)),
            settings.max_connections.value
        );
    }
    let http_listener = match settings.http.value {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve the status page on {addr}"))?,
        ),
        None => None,
    };
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let launch = Launch {
        exe: std::env::current_exe().context("cannot find this executable to start workers")?,
        args: std::env::args_os().skip(1).collect(),
        max_connections: per_worker.min(room.max(1)),
        notes: notes_tx.clone(),
    };
    let loops = usize::try_from(settings.loops.value).unwrap_or(1);
    let store = match (&settings.store.value, &settings.node.value) {
        (None, _) => "memory".to_string(),
        (Some(_), Some(node)) => format!("redis (nodes {node}-w0 … {node}-w{})", n - 1),
        (Some(_), None) => "redis (one node per worker)".to_string(),
    };
    let mut states: Vec<WorkerState> = (0..n)
        .map(|index| WorkerState {
            index,
            pid: None,
            state: "starting".into(),
            restarts: 0,
            status_page: None,
            last_exit: None,
            unreadable: None,
        })
        .collect();
    let mut slots: Vec<Slot> = (0..n)
        .map(|_| Slot {
            generation: 0,
            pid: None,
            started: Instant::now(),
            quick_exits: 0,
            alive: false,
            failed: false,
        })
        .collect();

    // Start: worker 0 first, so that a port of 0 is chosen once; then the others on that port.
    let mut listen = settings.listen.value;
    let mut up = 0;
    launch.start(0, 0, listen);
    slots[0].alive = true;
    let startup = async {
        while let Some(note) = notes.recv().await {
            match note {
                Note::Started {
                    index,
                    result: Ok((pid, addr, page)),
                    ..
                } => {
                    slots[index].pid = Some(pid);
                    states[index].pid = Some(pid);
                    states[index].status_page = page;
                    states[index].state = "up".into();
                    up += 1;
                    if index == 0 {
                        listen = addr;
                        for (i, slot) in slots.iter_mut().enumerate().skip(1) {
                            launch.start(i, 0, listen);
                            slot.alive = true;
                        }
                    }
                    if up == n {
                        return Ok(());
                    }
                }
                Note::Started { result: Err(e), .. } => return Err(e),
                Note::Exited { index, how, .. } => {
                    anyhow::bail!("worker {index} exited while starting ({how})")
                }
                Note::Restart { .. } => {}
            }
        }
        anyhow::bail!("the workers' watchers are gone")
    };
    if let Err(e) = startup.await {
        // Stop what did start (their stdin closes too when their watchers go).
        for pid in slots.iter().filter_map(|s| s.pid) {
            let _ = sys::signal(pid, sys::Signal::TERM);
        }
        return Err(e.context("vitals serve --processes: the workers did not all start"));
    }
    let workers = Arc::new(Workers {
        info: Info {
            listen,
            codec: codec_name(settings.codec.value).to_string(),
            interval_ms: u64::try_from(settings.interval.value.as_millis()).unwrap_or(u64::MAX),
            timeout_ms: u64::try_from(settings.timeout.value.as_millis()).unwrap_or(u64::MAX),
            loops: loops * n,
            processes: n,
            max_connections: usize::try_from(launch.max_connections)
                .unwrap_or(usize::MAX)
                .saturating_mul(n),
            echo: settings.echo.value,
            store,
        },
        started: Instant::now(),
        states: Mutex::new(states),
    });
    let mut http_note = String::new();
    let http_task = match http_listener {
        Some(listener) => {
            let bound = listener.local_addr()?;
            http_note = format!(", status page http://{bound}/");
            let fleet = settings.store.value.as_ref().map(|url| {
                let mut fleet = vitals::FleetConfig::default();
                if let Some(node) = &settings.node.value {
                    fleet.node = node.clone();
                }
                fleet.partitions = u16::try_from(settings.partitions.value).unwrap_or(u16::MAX);
                (url.clone(), fleet)
            });
            let app = Arc::new(App {
                view: View::Supervisor(Arc::clone(&workers)),
                fleet,
            });
            Some(tokio::spawn(http::serve(listener, app)))
        }
        None => None,
    };
    println!(
        "vitals serve: listening on {listen} (codec {}, interval {}, timeout {}, loops {loops} × {n} processes){http_note}",
        codec_name(settings.codec.value),
        humantime::format_duration(settings.interval.value),
        humantime::format_duration(settings.timeout.value),
    );
    {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }

    // Watch.
    tokio::pin!(signal);
    let which = loop {
        let note = tokio::select! {
            name = &mut signal => break name,
            note = notes.recv() => note,
        };
        let Some(note) = note else {
            break "the workers' watchers are gone";
        };
        match note {
            Note::Started {
                index,
                generation,
                result,
            } if slots[index].generation == generation => match result {
                Ok((pid, _, page)) => {
                    slots[index].pid = Some(pid);
                    workers.update(index, |s| {
                        s.pid = Some(pid);
                        s.status_page = page;
                        s.state = "up".into();
                    });
                    tracing::info!(worker = index, pid, "worker restarted");
                }
                Err(e) => tracing::warn!(worker = index, error = %e, "worker did not restart"),
            },
            Note::Exited {
                index,
                generation,
                how,
            } if slots[index].generation == generation => {
                let slot = &mut slots[index];
                slot.alive = false;
                slot.pid = None;
                if slot.started.elapsed() < STABLE_AFTER {
                    slot.quick_exits += 1;
                } else {
                    slot.quick_exits = 0;
                }
                if slot.quick_exits >= MAX_QUICK_EXITS {
                    slot.failed = true;
                    tracing::error!(
                        worker = index,
                        %how,
                        "worker exited {MAX_QUICK_EXITS} times in a row within {STABLE_AFTER:?} of its start; not restarting it"
                    );
                    workers.update(index, |s| {
                        s.pid = None;
                        s.state = "failed".into();
                        s.last_exit = Some(how);
                    });
                    if slots.iter().all(|s| s.failed) {
                        break "every worker failed";
                    }
                    continue;
                }
                let delay = Duration::from_secs(1)
                    .saturating_mul(1 << slot.quick_exits.min(5))
                    .min(MAX_RESTART_DELAY);
                tracing::warn!(worker = index, %how, ?delay, "worker exited; restarting it");
                workers.update(index, |s| {
                    s.pid = None;
                    s.state = "restarting".into();
                    s.last_exit = Some(how);
                });
                let tx = notes_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Note::Restart { index });
                });
            }
            Note::Restart { index } => {
                let slot = &mut slots[index];
                slot.generation += 1;
                slot.started = Instant::now();
                slot.alive = true;
                workers.update(index, |s| s.restarts += 1);
                launch.start(index, slot.generation, listen);
            }
            // A note of an earlier generation of a slot.
            _ => {}
        }
    };

    // Drain.
    let alive = slots.iter().filter(|s| s.alive).count();
    eprintln!(
        "vitals serve: {which}: draining {alive} worker(s) (each up to {})",
        humantime::format_duration(settings.drain.value)
    );
    for (index, slot) in slots.iter().enumerate() {
        if let Some(pid) = slot.pid.filter(|_| slot.alive) {
            if let Err(e) = sys::signal(pid, sys::Signal::TERM) {
                tracing::warn!(worker = index, pid, error = %e, "cannot signal a worker");
            }
            workers.update(index, |s| s.state = "stopping".into());
        }
    }
    let deadline = Instant::now() + settings.drain.value + Duration::from_secs(10);
    let mut killed = false;
    while slots.iter().any(|s| s.alive) {
        let left = deadline.saturating_duration_since(Instant::now());
        let note = if left.is_zero() {
            if killed {
                break;
            }
            killed = true;
            for (index, slot) in slots.iter().enumerate() {
                if let Some(pid) = slot.pid.filter(|_| slot.alive) {
                    tracing::warn!(worker = index, pid, "worker still draining; killing it");
                    let _ = sys::signal(pid, sys::Signal::KILL);
                }
            }
            tokio::time::timeout(Duration::from_secs(5), notes.recv())
                .await
                .ok()
                .flatten()
        } else {
            tokio::time::timeout(left, notes.recv())
                .await
                .ok()
                .flatten()
        };
        if let Some(Note::Exited {
            index, generation, ..
        }) = note
            && slots[index].generation == generation
        {
            slots[index].alive = false;
            workers.update(index, |s| {
                s.pid = None;
                s.state = "stopped".into();
            });
        }
    }
    if let Some(task) = http_task {
        task.abort();
    }
    let left = slots.iter().filter(|s| s.alive).count();
    eprintln!(
        "vitals serve: stopped; {} worker(s) drained{}",
        alive - left,
        if left > 0 {
            format!(", {left} did not exit")
        } else {
            String::new()
        }
    );
    Ok(if which == "every worker failed" {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_are_read() {
        let line = "vitals serve (worker 3): listening on 127.0.0.1:7878 (codec binary, interval 1s, timeout 3s, loops 1), status page http://127.0.0.1:40001/";
        assert_eq!(
            parse_listening(line),
            Some((
                "127.0.0.1:7878".parse().unwrap(),
                Some("127.0.0.1:40001".parse().unwrap())
            ))
        );
        let line = "vitals serve: listening on [::1]:9 (codec json, …)";
        assert_eq!(
            parse_listening(line),
            Some(("[::1]:9".parse().unwrap(), None))
        );
        assert_eq!(parse_listening("something else"), None);
    }

    #[test]
    fn a_worker_description_round_trips() {
        let w = Worker {
            index: 2,
            listen: "127.0.0.1:7878".parse().unwrap(),
            max_connections: 19_000,
        };
        let text = serde_json::to_string(&w).unwrap();
        let back: Worker = serde_json::from_str(&text).unwrap();
        assert_eq!(back, w);
    }
}
