//! What both demos share: a state behind a mutex that renders itself ([`View`]), redrawn on the
//! [`Screen`] while a phase waits for a condition, never past the demo's hard limit ([`Live`]); the
//! clients and their tasks ([`client`], [`follow`], [`ticker`], [`join_within`]); a per-stream sequence check
//! ([`Sequence`]); and the closing list of checks ([`Check`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};
use vitals::{Client, ClientConfig, ClientEvent};

use super::screen::Screen;

/// A demo's state as the live view shows it.
pub(crate) trait View {
    /// The live block (terminal) and its one-line form (not a terminal), `t` seconds in.
    fn render(&self, t: f64) -> (Vec<String>, String);
    /// Names the current phase (shown in the view).
    fn set_phase(&mut self, phase: &'static str);
}

/// Locks a demo's state (a poisoned lock still holds usable counters).
pub(crate) fn lock<S>(st: &Mutex<S>) -> MutexGuard<'_, S> {
    st.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a demo's phases over its state and keeps the live view fresh.
pub(crate) struct Live<S> {
    /// The state, shared with the demo's tasks.
    pub(crate) st: Arc<Mutex<S>>,
    /// Where the view goes.
    pub(crate) screen: Screen,
    t0: Instant,
    /// No wait goes past `t0 + limit`.
    limit: Duration,
    last_draw: Option<Instant>,
}

impl<S: View> Live<S> {
    /// A view of `st`, starting now; no phase waits past `limit` from now.
    pub(crate) fn new(st: Arc<Mutex<S>>, limit: Duration) -> Live<S> {
        Live {
            st,
            screen: Screen::new(),
            t0: Instant::now(),
            limit,
            last_draw: None,
        }
    }

    /// Time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    /// The state, locked.
    pub(crate) fn lock(&self) -> MutexGuard<'_, S> {
        lock(&self.st)
    }

    /// A permanent line, stamped with the time since the start.
    pub(crate) fn note(&mut self, line: &str) {
        let t = self.elapsed().as_secs_f64();
        self.screen.note(&format!("[{t:5.1}s] {line}"));
    }

    /// Enters `phase` and redraws.
    pub(crate) fn set_phase(&mut self, phase: &'static str) {
        self.lock().set_phase(phase);
        self.draw(true);
    }

    /// Redraws the live view if it is time (every 250 ms on a terminal, every second otherwise).
    pub(crate) fn draw(&mut self, force: bool) {
        let every = if self.screen.is_live() {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        if !force && self.last_draw.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let t = self.elapsed().as_secs_f64();
        let (block, line) = self.lock().render(t);
        self.screen.status(&block, &line);
    }

    /// Keeps the view fresh until `done` holds or `within` passes (never past the hard limit).
    /// True if `done` held.
    pub(crate) async fn wait_until(&mut self, within: Duration, done: impl Fn(&S) -> bool) -> bool {
        let deadline = (Instant::now() + within).min(self.t0 + self.limit);
        loop {
            if done(&self.lock()) {
                self.draw(false);
                return true;
            }
            if Instant::now() >= deadline {
                self.draw(true);
                return false;
            }
            self.draw(false);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shows the live view for `d`.
    pub(crate) async fn show_for(&mut self, d: Duration) {
        self.wait_until(d, |_| false).await;
    }
}

/// A demo client of `addr` with the demo's timing; it retries quickly (backoff from 100 ms, at most
/// 1 s) so that resumes show within the phase.
pub(crate) fn client(addr: SocketAddr, interval: Duration, timeout: Duration) -> Client {
    let mut cc = ClientConfig::new(addr).with_timing(interval, timeout);
    cc.backoff.base = Duration::from_millis(100);
    cc.backoff.cap = Duration::from_secs(1);
    Client::connect(cc)
}

/// Hands `client`'s events to `on_event` until `stop` changes (or the client stops), then closes it
/// orderly (its session ends; at most 1 s).
pub(crate) async fn follow(
    mut client: Client,
    mut stop: watch::Receiver<bool>,
    mut on_event: impl FnMut(ClientEvent),
) {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            event = client.next_event() => match event {
                Some(event) => on_event(event),
                None => return,
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
}

/// The pace of a message stream: a tick every `every`; after a stall, later ticks are delayed
/// rather than bunched.
pub(crate) fn ticker(every: Duration) -> Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// The results of `tasks` (`None` for one that panicked or was cancelled), or `None` if they did not
/// all finish within `within`.
pub(crate) async fn join_within<T>(
    tasks: Vec<JoinHandle<T>>,
    within: Duration,
) -> Option<Vec<Option<T>>> {
    tokio::time::timeout(within, async {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.ok());
        }
        out
    })
    .await
    .ok()
}

/// One numbered stream as its receiver saw it: each number should come exactly once, in order, from 0.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sequence {
    /// The next number expected.
    next: u64,
    /// Numbers seen for the first time.
    pub(crate) delivered: u64,
    /// Numbers seen again.
    pub(crate) duplicated: u64,
    /// Times a number came before one below it (a gap: something lost or late).
    pub(crate) reordered: u64,
}

impl Sequence {
    /// Number `seq` arrived.
    pub(crate) fn see(&mut self, seq: u64) {
        if seq < self.next {
            self.duplicated += 1;
            return;
        }
        if seq > self.next {
            self.reordered += 1;
        }
        self.next = seq + 1;
        self.delivered += 1;
    }
}

/// One check of the closing list.
pub(crate) struct Check {
    /// Whether it held.
    pub(crate) ok: bool,
    /// What was checked, with the numbers.
    pub(crate) what: String,
}

/// Prints the checks, the summary line and the verdict; the exit code: 0 if every check held, 1
/// otherwise.
pub(crate) fn print_checks(checks: &[Check], summary: &str) -> ExitCode {
    println!();
    for c in checks {
        println!("  {} {}", if c.ok { "✓" } else { "✗" }, c.what);
    }
    println!("{summary}");
    let ok = checks.iter().all(|c| c.ok);
    println!(
        "{}",
        if ok {
            "all checks passed"
        } else {
            "SOME CHECKS FAILED"
        }
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
