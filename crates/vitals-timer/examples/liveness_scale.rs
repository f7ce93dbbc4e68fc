//! In-process scale bench: the liveness deadlines of 1,000,000 simulated connections on one timing wheel,
//! with no sockets — what a server's event loop spends on timer work per heartbeat, and how many bytes of
//! liveness state a connection costs.
//!
//! Run: `cargo run --release -p vitals-timer --example liveness_scale [connections] [seconds]`
//!
//! Model (the same as the server engine's): each connection has one deadline in the wheel and a
//! `last_heard` tick. A heartbeat from the peer stores `last_heard = now` and pushes the deadline to
//! `now + interval` (a reset to later: the wheel only stores the new tick). When a deadline fires, the
//! connection is convicted if it has been silent for `timeout`; otherwise it "pings" (counted) and re-arms
//! at `last_heard + timeout` or `now + interval`, whichever is first. Every connection has a random phase
//! and heartbeats every `interval · (0.6..1.0)` (random per heartbeat); 1 % of them die (stop
//! heartbeating) at a random moment, and must be convicted — the others never.
//!
//! The baseline, in the same run, is the same model on a `BinaryHeap` with lazy cancellation (a reset
//! pushes a new entry). Printed: ns of timer work per heartbeat for both (the event generation is not
//! timed); bytes per connection of liveness state (everything the run allocates for it: the wheel or
//! heap, the keys, `last_heard`); and, counted for each, the convictions, the false ones (a
//! connection convicted less than `timeout` after its last heartbeat: every conviction of a
//! connection that never dies is one) and the missed ones (a dead connection silent for `timeout`
//! before the end and not convicted). Exits 1 if any conviction is false or missed.
#![allow(unsafe_code)] // the counting global allocator below

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vitals_timer::{Jitter, Key, Wheel};

#[path = "../benches/support/heap_timers.rs"]
#[allow(dead_code, unreachable_pub)]
mod heap_timers;
use heap_timers::{HeapKey, HeapTimers};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const INTERVAL_MS: u64 = 10_000;
const TIMEOUT_MS: u64 = 30_000;

/// One heartbeat to deliver: (tick, connection).
type Beat = (u64, u32);

/// The heartbeats of the whole run, bucketed per 1 ms step, generated ahead of the timed loop.
struct Plan {
    /// Heartbeats per 1 ms step, in order.
    steps: Vec<Vec<u32>>,
}

/// Who dies, and when each connection last heartbeat.
struct Truth {
    /// The connection stops heartbeating at a random moment of the run.
    dead: Vec<bool>,
    /// Tick of its last heartbeat (0, the start, if it never sent one).
    last_beat: Vec<u64>,
}

/// Builds every heartbeat of the run: `(tick, conn)` sorted by tick, plus who dies.
fn plan(n: usize, seconds: u64, rng: &mut Jitter) -> (Vec<Beat>, Truth) {
    let end = seconds * 1000;
    let mut beats = Vec::with_capacity(n * (end / (INTERVAL_MS * 6 / 10)) as usize + n);
    let mut truth = Truth {
        dead: vec![false; n],
        last_beat: vec![0; n],
    };
    for c in 0..n {
        let dies = rng.next_u64().is_multiple_of(100);
        let death = if dies { rng.next_u64() % end } else { u64::MAX };
        truth.dead[c] = dies;
        let mut t = rng.next_u64() % INTERVAL_MS;
        while t < end && t < death {
            beats.push((t, c as u32));
            truth.last_beat[c] = t;
            let gap = INTERVAL_MS * 6 / 10 + rng.next_u64() % (INTERVAL_MS * 4 / 10);
            t += gap;
        }
    }
    beats.sort_unstable();
    (beats, truth)
}

impl Plan {
    fn new(beats: &[Beat], end: u64) -> Plan {
        let mut steps = vec![Vec::new(); end as usize + 1];
        for &(t, c) in beats {
            steps[t as usize].push(c);
        }
        Plan { steps }
    }
}

/// What a run observed.
struct Outcome {
    timer_work: Duration,
    heartbeats: u64,
    pings: u64,
    /// (connection, tick) of each conviction.
    convicted: Vec<(u32, u64)>,
}

fn run_wheel(n: usize, plan: &Plan) -> (Outcome, usize) {
    // Everything allocated from here to `bytes` is liveness state: the wheel, `last_heard`, the keys.
    let before = LIVE.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut wheel: Wheel<u32> = Wheel::new(start);
    let mut last_heard = vec![0u64; n];
    let mut keys: Vec<Option<Key>> = (0..n as u32)
        .map(|c| wheel.insert_at_tick(INTERVAL_MS, c).ok())
        .collect();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let mut out = Outcome {
        timer_work: Duration::ZERO,
        heartbeats: 0,
        pings: 0,
        convicted: Vec::new(),
    };
    for (now, beats) in plan.steps.iter().enumerate() {
        let now = now as u64;
        let t = Instant::now();
        for &c in beats {
            last_heard[c as usize] = now;
            if let Some(key) = keys[c as usize] {
                let _ = wheel.reset_to_tick(key, now + INTERVAL_MS);
            }
        }
        while let Some(expired) = wheel.poll_tick(now) {
            let c = expired.value as usize;
            let silent = now - last_heard[c];
            if silent >= TIMEOUT_MS {
                out.convicted.push((c as u32, now));
                keys[c] = None;
            } else {
                out.pings += 1;
                let next = (last_heard[c] + TIMEOUT_MS).min(now + INTERVAL_MS);
                keys[c] = wheel.insert_at_tick(next, c as u32).ok();
            }
        }
        out.timer_work += t.elapsed();
        out.heartbeats += beats.len() as u64;
    }
    (out, bytes)
}

fn run_heap(n: usize, plan: &Plan) -> (Outcome, usize) {
    // Everything allocated from here to `bytes` is liveness state: the heap, `last_heard`, the keys.
    let before = LIVE.load(Ordering::Relaxed);
    let base = Instant::now();
    let at = |tick: u64| base + Duration::from_millis(tick);
    let mut heap: HeapTimers<u32> = HeapTimers::new();
    let mut last_heard = vec![0u64; n];
    let mut keys: Vec<Option<HeapKey>> = (0..n as u32)
        .map(|c| Some(heap.insert(at(INTERVAL_MS), c)))
        .collect();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let mut out = Outcome {
        timer_work: Duration::ZERO,
        heartbeats: 0,
        pings: 0,
        convicted: Vec::new(),
    };
    for (now, beats) in plan.steps.iter().enumerate() {
        let now = now as u64;
        let t = Instant::now();
        for &c in beats {
            last_heard[c as usize] = now;
            if let Some(key) = keys[c as usize] {
                heap.reset(key, at(now + INTERVAL_MS));
            }
        }
        while let Some((c, _)) = heap.poll(at(now)) {
            let c = c as usize;
            let silent = now - last_heard[c];
            if silent >= TIMEOUT_MS {
                out.convicted.push((c as u32, now));
                keys[c] = None;
            } else {
                out.pings += 1;
                let next = (last_heard[c] + TIMEOUT_MS).min(now + INTERVAL_MS);
                keys[c] = Some(heap.insert(at(next), c as u32));
            }
        }
        out.timer_work += t.elapsed();
        out.heartbeats += beats.len() as u64;
    }
    (out, bytes)
}

/// Convictions judged against the plan.
#[derive(Debug, Clone, Copy)]
struct Verdicts {
    /// Connections convicted.
    convicted: usize,
    /// Convicted less than `timeout` after their last heartbeat (any conviction of a connection that
    /// never dies is one: it heartbeats every `interval` at most).
    false_convictions: usize,
    /// Dead, silent for `timeout` before the end of the run, and not convicted.
    missed: usize,
}

/// Counts what a run got right and wrong.
fn judge(out: &Outcome, truth: &Truth, end: u64) -> Verdicts {
    let mut convicted = vec![false; truth.dead.len()];
    let mut false_convictions = 0;
    for &(c, at) in &out.convicted {
        let c = c as usize;
        convicted[c] = true;
        if !truth.dead[c] || at < truth.last_beat[c] + TIMEOUT_MS {
            false_convictions += 1;
        }
    }
    let missed = (0..truth.dead.len())
        .filter(|&c| truth.dead[c] && truth.last_beat[c] + TIMEOUT_MS <= end && !convicted[c])
        .count();
    Verdicts {
        convicted: out.convicted.len(),
        false_convictions,
        missed,
    }
}

/// Dead connections silent for `timeout` before the end: the convictions due.
fn due(truth: &Truth, end: u64) -> usize {
    (0..truth.dead.len())
        .filter(|&c| truth.dead[c] && truth.last_beat[c] + TIMEOUT_MS <= end)
        .count()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let end = seconds * 1000;
    let mut rng = Jitter::from_seed(0x5eed);
    let (beats, truth) = plan(n, seconds, &mut rng);
    let plan = Plan::new(&beats, end);
    drop(beats);

    let (wheel, wheel_bytes) = run_wheel(n, &plan);
    let (heap, heap_bytes) = run_heap(n, &plan);
    let (w, h) = (judge(&wheel, &truth, end), judge(&heap, &truth, end));

    let per = |o: &Outcome| o.timer_work.as_nanos() as f64 / o.heartbeats.max(1) as f64;
    println!(
        "setup connections={n} simulated_s={seconds} interval_ms={INTERVAL_MS} timeout_ms={TIMEOUT_MS} \
         heartbeats={} dead={}",
        wheel.heartbeats,
        truth.dead.iter().filter(|d| **d).count()
    );
    println!(
        "timer_work vitals_ns_per_heartbeat={:.1} heap_ns_per_heartbeat={:.1} ratio_vs_heap={:.2}",
        per(&wheel),
        per(&heap),
        per(&heap) / per(&wheel)
    );
    println!(
        "liveness_state vitals_bytes_per_conn={:.1} heap_bytes_per_conn={:.1}",
        wheel_bytes as f64 / n as f64,
        heap_bytes as f64 / n as f64
    );
    println!(
        "outcome convictions_due={} vitals_convicted={} vitals_false_convictions={} vitals_missed={} \
         vitals_pings={} heap_convicted={} heap_false_convictions={} heap_missed={} heap_pings={}",
        due(&truth, end),
        w.convicted,
        w.false_convictions,
        w.missed,
        wheel.pings,
        h.convicted,
        h.false_convictions,
        h.missed,
        heap.pings,
    );
    if w.false_convictions + w.missed + h.false_convictions + h.missed > 0 {
        std::process::exit(1);
    }
}
