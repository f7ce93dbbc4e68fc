//! Compares `vitals_timer::Wheel<u64>` with tokio-util's `DelayQueue` and a lazily cancelled `BinaryHeap`
//! on the same workloads in one run, and measures the wheel's memory per timer.
//!
//! Run with `cargo run --release -p vitals-timer --example compare`. Output, one line per workload:
//!
//! ```text
//! <workload> vitals_ns=<x> delayqueue_ns=<y> heap_ns=<z> ratio_vs_delayqueue=<y/x>
//! memory bytes_per_timer=<n> ...
//! ```
//!
//! followed by context lines. All figures are nanoseconds per operation:
//! - `churn`: 1,000,000 resident timers (deadlines uniform over 1..=60,000 ms, 1 ms ticks); one operation
//!   cancels a random resident timer and inserts a new one in its place (so one op = cancel + insert).
//! - `reset_later`: 1,000,000 resident timers; one operation pushes a random resident timer's deadline
//!   later by 1..=30,000 ms (a heartbeat deadline pushed back).
//! - `expiry`: 1,000,000 timers inserted (deadlines uniform over 1..=60,000 ms), then time advances 1 ms
//!   at a time and each step drains everything due. Per expired timer, the drain only: the insert cost is
//!   excluded (it is reported on the `context expiry_incl_insert` line). For `DelayQueue` the clock advance
//!   (`tokio::time::advance`) is outside the timed region; only `poll_expired` calls are timed.
//!
//! Each workload runs [`ROUNDS`] times, the three implementations interleaved (vitals, DelayQueue, heap,
//! vitals, ...), and the median per implementation is printed, to damp noise from a shared machine.
//!
//! Every implementation gets the same deadlines (as `Instant`s, converted the same way) and the same
//! operation sequence, generated up front by a fixed-seed SplitMix64. Setup (filling the resident set) is
//! never timed. The heap purges stale entries when they outnumber live ones (part of its timed cost).

use std::future::poll_fn;
use std::hint::black_box;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio_util::time::DelayQueue;
use vitals_timer::{Key, Wheel};

#[path = "../benches/support/heap_timers.rs"]
mod heap_timers;

use heap_timers::HeapTimers;

mod counting {
    //! A global allocator that counts the bytes currently allocated while counting is switched on.
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

    static ON: AtomicBool = AtomicBool::new(false);
    static BYTES: AtomicIsize = AtomicIsize::new(0);

    /// The system allocator plus a byte counter (off by default, so timings pay one relaxed load).
    pub(crate) struct Counting;

    // SAFETY: every call is forwarded unchanged to `System`; only a counter is updated on the side.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: same contract as the caller's.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() && ON.load(Relaxed) {
                BYTES.fetch_add(layout.size() as isize, Relaxed);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: same contract as the caller's.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() && ON.load(Relaxed) {
                BYTES.fetch_add(layout.size() as isize, Relaxed);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if ON.load(Relaxed) {
                BYTES.fetch_sub(layout.size() as isize, Relaxed);
            }
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: same contract as the caller's.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() && ON.load(Relaxed) {
                BYTES.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
            }
            p
        }
    }

    /// Switches counting on and returns the current count.
    pub(crate) fn start() -> isize {
        ON.store(true, Relaxed);
        BYTES.load(Relaxed)
    }

    /// The current count.
    pub(crate) fn current() -> isize {
        BYTES.load(Relaxed)
    }

    /// Switches counting off.
    pub(crate) fn stop() {
        ON.store(false, Relaxed);
    }
}

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Resident timers in every workload.
const RESIDENT: usize = 1_000_000;
/// Operations timed in `churn` and `reset_later`.
const OPS: usize = 2_000_000;
/// Deadlines are spread over 1..=SPREAD_MS milliseconds.
const SPREAD_MS: u64 = 60_000;
/// `reset_later` pushes a deadline back by 1..=PUSH_MS milliseconds.
const PUSH_MS: u64 = 30_000;
const TICK: Duration = Duration::from_millis(1);
/// Each workload runs this many times per implementation, interleaved; the median is printed.
const ROUNDS: usize = 3;

/// SplitMix64: a tiny deterministic PRNG.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is negligible for these ranges).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Deadlines (ms after the base instant) and operation sequences shared by all implementations.
struct Plan {
    /// Deadline of resident timer `i`.
    initial: Vec<u64>,
    /// `churn`: (victim, deadline of the replacement).
    churn: Vec<(u32, u64)>,
    /// `reset_later`: (victim, its new, later deadline).
    reset_later: Vec<(u32, u64)>,
}

impl Plan {
    fn new(seed: u64) -> Plan {
        let mut rng = SplitMix64(seed);
        let initial: Vec<u64> = (0..RESIDENT).map(|_| 1 + rng.below(SPREAD_MS)).collect();
        let churn = (0..OPS)
            .map(|_| (rng.below(RESIDENT as u64) as u32, 1 + rng.below(SPREAD_MS)))
            .collect();
        let mut current = initial.clone();
        let reset_later = (0..OPS)
            .map(|_| {
                let victim = rng.below(RESIDENT as u64) as usize;
                current[victim] += 1 + rng.below(PUSH_MS);
                (victim as u32, current[victim])
            })
            .collect();
        Plan {
            initial,
            churn,
            reset_later,
        }
    }
}

fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

fn ns_per(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// Timings of one workload for the three implementations, in ns per operation.
struct Row {
    vitals: f64,
    delayqueue: f64,
    heap: f64,
}

impl Row {
    fn print(&self, name: &str) {
        println!(
            "{name} vitals_ns={:.1} delayqueue_ns={:.1} heap_ns={:.1} ratio_vs_delayqueue={:.2}",
            self.vitals,
            self.delayqueue,
            self.heap,
            self.delayqueue / self.vitals
        );
    }
}

// ---- vitals Wheel ----

fn wheel_filled(base: Instant, plan: &Plan) -> (Wheel<u64>, Vec<Key>) {
    let mut wheel = Wheel::new(base);
    let keys = plan
        .initial
        .iter()
        .enumerate()
        .map(|(i, &ms)| wheel.insert(at(base, ms), i as u64).expect("insert"))
        .collect();
    (wheel, keys)
}

fn wheel_churn(plan: &Plan) -> Duration {
    let base = Instant::now();
    let (mut wheel, mut keys) = wheel_filled(base, plan);
    let t = Instant::now();
    for (j, &(victim, ms)) in plan.churn.iter().enumerate() {
        let key = &mut keys[victim as usize];
        black_box(wheel.cancel(*key).expect("cancel"));
        *key = wheel.insert(at(base, ms), j as u64).expect("insert");
    }
    let d = t.elapsed();
    assert_eq!(wheel.len(), RESIDENT);
    d
}

fn wheel_reset_later(plan: &Plan) -> Duration {
    let base = Instant::now();
    let (mut wheel, keys) = wheel_filled(base, plan);
    let t = Instant::now();
    for &(victim, ms) in &plan.reset_later {
        wheel
            .reset(keys[victim as usize], at(base, ms))
            .expect("reset");
    }
    let d = t.elapsed();
    assert_eq!(wheel.len(), RESIDENT);
    d
}

/// Returns (insert time, drain time).
fn wheel_expiry(plan: &Plan) -> (Duration, Duration) {
    let base = Instant::now();
    let mut wheel = Wheel::new(base);
    let t = Instant::now();
    for (i, &ms) in plan.initial.iter().enumerate() {
        black_box(wheel.insert(at(base, ms), i as u64).expect("insert"));
    }
    let insert = t.elapsed();
    let mut drain = Duration::ZERO;
    let mut fired = 0usize;
    for ms in 1..=SPREAD_MS {
        let now = at(base, ms);
        let t = Instant::now();
        while let Some(e) = wheel.poll(now) {
            black_box(e.value);
            fired += 1;
        }
        drain += t.elapsed();
    }
    assert_eq!(fired, RESIDENT);
    (insert, drain)
}

// ---- tokio-util DelayQueue (paused clock, current-thread runtime) ----

type TokioInstant = tokio::time::Instant;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
}

fn dq_at(base: TokioInstant, ms: u64) -> TokioInstant {
    TokioInstant::from_std(at(base.into_std(), ms))
}

fn dq_filled(
    base: TokioInstant,
    plan: &Plan,
) -> (DelayQueue<u64>, Vec<tokio_util::time::delay_queue::Key>) {
    let mut dq = DelayQueue::new();
    let keys = plan
        .initial
        .iter()
        .enumerate()
        .map(|(i, &ms)| dq.insert_at(i as u64, dq_at(base, ms)))
        .collect();
    (dq, keys)
}

fn dq_churn(rt: &tokio::runtime::Runtime, plan: &Plan) -> Duration {
    rt.block_on(async {
        let base = TokioInstant::now();
        let (mut dq, mut keys) = dq_filled(base, plan);
        let t = Instant::now();
        for (j, &(victim, ms)) in plan.churn.iter().enumerate() {
            let key = &mut keys[victim as usize];
            black_box(dq.remove(key).into_inner());
            *key = dq.insert_at(j as u64, dq_at(base, ms));
        }
        let d = t.elapsed();
        assert_eq!(dq.len(), RESIDENT);
        d
    })
}

fn dq_reset_later(rt: &tokio::runtime::Runtime, plan: &Plan) -> Duration {
    rt.block_on(async {
        let base = TokioInstant::now();
        let (mut dq, keys) = dq_filled(base, plan);
        let t = Instant::now();
        for &(victim, ms) in &plan.reset_later {
            dq.reset_at(&keys[victim as usize], dq_at(base, ms));
        }
        let d = t.elapsed();
        assert_eq!(dq.len(), RESIDENT);
        d
    })
}

/// Drains everything `poll_expired` hands out now; returns how many.
async fn dq_drain(dq: &mut DelayQueue<u64>) -> usize {
    let mut n = 0;
    loop {
        match poll_fn(|cx| Poll::Ready(dq.poll_expired(cx))).await {
            Poll::Ready(Some(e)) => {
                black_box(e.into_inner());
                n += 1;
            }
            Poll::Ready(None) | Poll::Pending => return n,
        }
    }
}

fn dq_expiry(rt: &tokio::runtime::Runtime, plan: &Plan) -> (Duration, Duration) {
    rt.block_on(async {
        let base = TokioInstant::now();
        let mut dq = DelayQueue::new();
        let t = Instant::now();
        for (i, &ms) in plan.initial.iter().enumerate() {
            black_box(dq.insert_at(i as u64, dq_at(base, ms)));
        }
        let insert = t.elapsed();
        let mut drain = Duration::ZERO;
        let mut fired = 0usize;
        let mut steps = 0u64;
        while fired < RESIDENT {
            tokio::time::advance(TICK).await;
            steps += 1;
            let t = Instant::now();
            fired += dq_drain(&mut dq).await;
            drain += t.elapsed();
        }
        assert_eq!(steps, SPREAD_MS, "DelayQueue needed extra steps");
        assert!(dq.is_empty());
        (insert, drain)
    })
}

// ---- BinaryHeap with lazy cancellation ----

fn heap_filled(base: Instant, plan: &Plan) -> (HeapTimers<u64>, Vec<heap_timers::HeapKey>) {
    let mut heap = HeapTimers::new();
    let keys = plan
        .initial
        .iter()
        .enumerate()
        .map(|(i, &ms)| heap.insert(at(base, ms), i as u64))
        .collect();
    (heap, keys)
}

fn heap_churn(plan: &Plan) -> Duration {
    let base = Instant::now();
    let (mut heap, mut keys) = heap_filled(base, plan);
    let t = Instant::now();
    for (j, &(victim, ms)) in plan.churn.iter().enumerate() {
        let key = &mut keys[victim as usize];
        black_box(heap.cancel(*key).expect("cancel"));
        *key = heap.insert(at(base, ms), j as u64);
    }
    let d = t.elapsed();
    assert_eq!(heap.len(), RESIDENT);
    d
}

fn heap_reset_later(plan: &Plan) -> Duration {
    let base = Instant::now();
    let (mut heap, keys) = heap_filled(base, plan);
    let t = Instant::now();
    for &(victim, ms) in &plan.reset_later {
        assert!(heap.reset(keys[victim as usize], at(base, ms)));
    }
    let d = t.elapsed();
    assert_eq!(heap.len(), RESIDENT);
    d
}

fn heap_expiry(plan: &Plan) -> (Duration, Duration) {
    let base = Instant::now();
    let mut heap = HeapTimers::new();
    let t = Instant::now();
    for (i, &ms) in plan.initial.iter().enumerate() {
        black_box(heap.insert(at(base, ms), i as u64));
    }
    let insert = t.elapsed();
    let mut drain = Duration::ZERO;
    let mut fired = 0usize;
    for ms in 1..=SPREAD_MS {
        let now = at(base, ms);
        let t = Instant::now();
        while let Some((value, _)) = heap.poll(now) {
            black_box(value);
            fired += 1;
        }
        drain += t.elapsed();
    }
    assert_eq!(fired, RESIDENT);
    (insert, drain)
}

// ---- memory ----

fn per_timer(bytes: isize) -> f64 {
    bytes as f64 / RESIDENT as f64
}

/// Bytes per timer of a `Wheel<u64>` holding `RESIDENT` timers; `presized` reserves the slab up front.
fn wheel_memory(plan: &Plan, presized: bool) -> f64 {
    let base = Instant::now();
    let before = counting::start();
    let mut wheel = if presized {
        Wheel::with_tick(base, TICK, RESIDENT).expect("tick")
    } else {
        Wheel::new(base)
    };
    for (i, &ms) in plan.initial.iter().enumerate() {
        black_box(wheel.insert(at(base, ms), i as u64).expect("insert"));
    }
    let after = counting::current();
    // The wheel's fixed part (its slot heads and bitmaps) lives inline; count it too.
    let inline = std::mem::size_of_val(&wheel) as isize;
    drop(wheel);
    counting::stop();
    per_timer(after - before + inline)
}

fn dq_memory(rt: &tokio::runtime::Runtime, plan: &Plan) -> f64 {
    rt.block_on(async {
        let base = TokioInstant::now();
        let before = counting::start();
        let mut dq = DelayQueue::new();
        for (i, &ms) in plan.initial.iter().enumerate() {
            black_box(dq.insert_at(i as u64, dq_at(base, ms)));
        }
        let after = counting::current();
        let inline = std::mem::size_of_val(&dq) as isize;
        drop(dq);
        counting::stop();
        per_timer(after - before + inline)
    })
}

fn heap_memory(plan: &Plan) -> f64 {
    let base = Instant::now();
    let before = counting::start();
    let mut heap = HeapTimers::new();
    for (i, &ms) in plan.initial.iter().enumerate() {
        black_box(heap.insert(at(base, ms), i as u64));
    }
    let after = counting::current();
    let inline = std::mem::size_of_val(&heap) as isize;
    drop(heap);
    counting::stop();
    per_timer(after - before + inline)
}

/// Median of the rounds.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the three implementations `ROUNDS` times, interleaved, and keeps the median of each.
fn measure(mut run: impl FnMut() -> [f64; 3]) -> Row {
    let mut all = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (samples, x) in all.iter_mut().zip(run()) {
            samples.push(x);
        }
    }
    let [vitals, delayqueue, heap] = all.map(median);
    Row {
        vitals,
        delayqueue,
        heap,
    }
}

fn main() {
    let plan = Plan::new(0x5EED_0F71_741E_5500);
    let rt = runtime();

    measure(|| {
        [
            ns_per(wheel_churn(&plan), OPS),
            ns_per(dq_churn(&rt, &plan), OPS),
            ns_per(heap_churn(&plan), OPS),
        ]
    })
    .print("churn");

    measure(|| {
        [
            ns_per(wheel_reset_later(&plan), OPS),
            ns_per(dq_reset_later(&rt, &plan), OPS),
            ns_per(heap_reset_later(&plan), OPS),
        ]
    })
    .print("reset_later");

    // Drain only, and insert + drain, from the same rounds.
    let mut with_insert = Vec::new();
    let expiry = measure(|| {
        let runs = [
            wheel_expiry(&plan),
            dq_expiry(&rt, &plan),
            heap_expiry(&plan),
        ];
        with_insert.push(runs.map(|(insert, drain)| ns_per(insert + drain, RESIDENT)));
        runs.map(|(_, drain)| ns_per(drain, RESIDENT))
    });
    expiry.print("expiry");

    let natural = wheel_memory(&plan, false);
    let presized = wheel_memory(&plan, true);
    println!("memory bytes_per_timer={natural:.1} presized_bytes_per_timer={presized:.1}");

    println!(
        "context memory delayqueue_bytes_per_timer={:.1} heap_bytes_per_timer={:.1}",
        dq_memory(&rt, &plan),
        heap_memory(&plan)
    );
    let mut rounds = with_insert.into_iter();
    print!("context ");
    measure(|| rounds.next().expect("one per round")).print("expiry_incl_insert");
    println!(
        "context setup resident={RESIDENT} ops={OPS} spread_ms={SPREAD_MS} push_ms=1..={PUSH_MS} tick_ms=1 \
         rounds={ROUNDS} (median of interleaved rounds)"
    );
}
