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
//! The three implementations hold their resident sets side by side and take turns in chunks
//! ([`CHUNK`] operations, or [`STEP_CHUNK`] 1 ms steps of expiry), the order rotating from chunk to chunk,
//! so that all three see the same machine: a neighbour's burst of memory traffic on a shared machine lands
//! on each of them, not on whichever happened to be running. (Chunks are long because each turn starts
//! with caches full of the other two's data; at 50,000 operations that cost every implementation 10-20 %.)
//! Each workload runs [`ROUNDS`] times and the median per implementation is printed.
//!
//! The last line checks the figures against the targets of docs/PERFORMANCE.md (churn and reset_later at
//! least 3x `DelayQueue`, expiry at least 2x, faster than the heap on every workload, at most 48 bytes per
//! timer, also after churn). It only reports; timings never fail a build.
//!
//! Every implementation gets the same deadlines (as `Instant`s, converted the same way) and the same
//! operation sequence, generated up front by a fixed-seed SplitMix64. Setup (filling the resident set) is
//! never timed. The heap purges stale entries when they outnumber live ones (part of its timed cost).
//!
//! `memory` is measured on a wheel just filled; `context memory_after_churn` on each implementation after
//! all the churn operations (tombstones, purges and grown buffers included).

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
/// Each workload runs this many times per implementation; the median is printed.
const ROUNDS: usize = 3;
/// Operations each implementation runs per turn in `churn` and `reset_later` (and inserts per turn when
/// filling for `expiry`).
const CHUNK: usize = 500_000;
/// 1 ms steps each implementation drains per turn in `expiry`.
const STEP_CHUNK: u64 = 500;

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

/// One implementation under test, holding its resident set. Each method runs one chunk and returns the
/// time it took; setup is untimed.
trait Contender {
    /// Cancels each victim and inserts its replacement (`first` numbers the payloads).
    fn churn(&mut self, ops: &[(u32, u64)], first: usize) -> Duration;
    /// Moves each victim's deadline to the given, later one.
    fn reset_later(&mut self, ops: &[(u32, u64)]) -> Duration;
    /// Inserts timers `first..` with the given deadlines.
    fn insert(&mut self, deadlines: &[u64], first: usize) -> Duration;
    /// Advances through the 1 ms steps `steps`, draining what is due at each; returns the drain time and
    /// how many timers fired.
    fn expire(&mut self, steps: std::ops::Range<u64>) -> (Duration, usize);
    /// Timers held.
    fn len(&self) -> usize;
}

// ---- vitals Wheel ----

struct WheelRun {
    base: Instant,
    wheel: Wheel<u64>,
    keys: Vec<Key>,
}

impl WheelRun {
    fn new() -> Self {
        let base = Instant::now();
        WheelRun {
            base,
            wheel: Wheel::new(base),
            keys: Vec::new(),
        }
    }
}

impl Contender for WheelRun {
    fn churn(&mut self, ops: &[(u32, u64)], first: usize) -> Duration {
        let (base, wheel, keys) = (self.base, &mut self.wheel, &mut self.keys);
        let t = Instant::now();
        for (j, &(victim, ms)) in ops.iter().enumerate() {
            let key = &mut keys[victim as usize];
            black_box(wheel.cancel(*key).expect("cancel"));
            *key = wheel
                .insert(at(base, ms), (first + j) as u64)
                .expect("insert");
        }
        t.elapsed()
    }

    fn reset_later(&mut self, ops: &[(u32, u64)]) -> Duration {
        let (base, wheel, keys) = (self.base, &mut self.wheel, &self.keys);
        let t = Instant::now();
        for &(victim, ms) in ops {
            wheel
                .reset(keys[victim as usize], at(base, ms))
                .expect("reset");
        }
        t.elapsed()
    }

    fn insert(&mut self, deadlines: &[u64], first: usize) -> Duration {
        let (base, wheel, keys) = (self.base, &mut self.wheel, &mut self.keys);
        let t = Instant::now();
        for (i, &ms) in deadlines.iter().enumerate() {
            keys.push(
                wheel
                    .insert(at(base, ms), (first + i) as u64)
                    .expect("insert"),
            );
        }
        t.elapsed()
    }

    fn expire(&mut self, steps: std::ops::Range<u64>) -> (Duration, usize) {
        let mut drain = Duration::ZERO;
        let mut fired = 0;
        for ms in steps {
            let now = at(self.base, ms);
            let t = Instant::now();
            while let Some(e) = self.wheel.poll(now) {
                black_box(e.value);
                fired += 1;
            }
            drain += t.elapsed();
        }
        (drain, fired)
    }

    fn len(&self) -> usize {
        self.wheel.len()
    }
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

/// Inserts, removes and resets run inside the runtime's context (`enter`), which is all `DelayQueue` needs
/// for them; expiry advances the paused clock inside `block_on`.
struct DqRun<'r> {
    rt: &'r tokio::runtime::Runtime,
    base: TokioInstant,
    dq: DelayQueue<u64>,
    keys: Vec<tokio_util::time::delay_queue::Key>,
}

impl<'r> DqRun<'r> {
    fn new(rt: &'r tokio::runtime::Runtime) -> Self {
        let _context = rt.enter();
        DqRun {
            rt,
            base: TokioInstant::now(),
            dq: DelayQueue::new(),
            keys: Vec::new(),
        }
    }
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

impl Contender for DqRun<'_> {
    fn churn(&mut self, ops: &[(u32, u64)], first: usize) -> Duration {
        let _context = self.rt.enter();
        let (base, dq, keys) = (self.base, &mut self.dq, &mut self.keys);
        let t = Instant::now();
        for (j, &(victim, ms)) in ops.iter().enumerate() {
            let key = &mut keys[victim as usize];
            black_box(dq.remove(key).into_inner());
            *key = dq.insert_at((first + j) as u64, dq_at(base, ms));
        }
        t.elapsed()
    }

    fn reset_later(&mut self, ops: &[(u32, u64)]) -> Duration {
        let _context = self.rt.enter();
        let (base, dq, keys) = (self.base, &mut self.dq, &self.keys);
        let t = Instant::now();
        for &(victim, ms) in ops {
            dq.reset_at(&keys[victim as usize], dq_at(base, ms));
        }
        t.elapsed()
    }

    fn insert(&mut self, deadlines: &[u64], first: usize) -> Duration {
        let _context = self.rt.enter();
        let (base, dq, keys) = (self.base, &mut self.dq, &mut self.keys);
        let t = Instant::now();
        for (i, &ms) in deadlines.iter().enumerate() {
            keys.push(dq.insert_at((first + i) as u64, dq_at(base, ms)));
        }
        t.elapsed()
    }

    fn expire(&mut self, steps: std::ops::Range<u64>) -> (Duration, usize) {
        let dq = &mut self.dq;
        self.rt.block_on(async {
            let mut drain = Duration::ZERO;
            let mut fired = 0;
            for _ in steps {
                tokio::time::advance(TICK).await;
                let t = Instant::now();
                fired += dq_drain(dq).await;
                drain += t.elapsed();
            }
            (drain, fired)
        })
    }

    fn len(&self) -> usize {
        self.dq.len()
    }
}

// ---- BinaryHeap with lazy cancellation ----

struct HeapRun {
    base: Instant,
    heap: HeapTimers<u64>,
    keys: Vec<heap_timers::HeapKey>,
}

impl HeapRun {
    fn new() -> Self {
        HeapRun {
            base: Instant::now(),
            heap: HeapTimers::new(),
            keys: Vec::new(),
        }
    }
}

impl Contender for HeapRun {
    fn churn(&mut self, ops: &[(u32, u64)], first: usize) -> Duration {
        let (base, heap, keys) = (self.base, &mut self.heap, &mut self.keys);
        let t = Instant::now();
        for (j, &(victim, ms)) in ops.iter().enumerate() {
            let key = &mut keys[victim as usize];
            black_box(heap.cancel(*key).expect("cancel"));
            *key = heap.insert(at(base, ms), (first + j) as u64);
        }
        t.elapsed()
    }

    fn reset_later(&mut self, ops: &[(u32, u64)]) -> Duration {
        let (base, heap, keys) = (self.base, &mut self.heap, &self.keys);
        let t = Instant::now();
        for &(victim, ms) in ops {
            assert!(heap.reset(keys[victim as usize], at(base, ms)));
        }
        t.elapsed()
    }

    fn insert(&mut self, deadlines: &[u64], first: usize) -> Duration {
        let (base, heap, keys) = (self.base, &mut self.heap, &mut self.keys);
        let t = Instant::now();
        for (i, &ms) in deadlines.iter().enumerate() {
            keys.push(heap.insert(at(base, ms), (first + i) as u64));
        }
        t.elapsed()
    }

    fn expire(&mut self, steps: std::ops::Range<u64>) -> (Duration, usize) {
        let mut drain = Duration::ZERO;
        let mut fired = 0;
        for ms in steps {
            let now = at(self.base, ms);
            let t = Instant::now();
            while let Some((value, _)) = self.heap.poll(now) {
                black_box(value);
                fired += 1;
            }
            drain += t.elapsed();
        }
        (drain, fired)
    }

    fn len(&self) -> usize {
        self.heap.len()
    }
}

// ---- taking turns ----

/// Fresh, empty contenders: vitals, DelayQueue, heap.
fn contenders(rt: &tokio::runtime::Runtime) -> [Box<dyn Contender + '_>; 3] {
    [
        Box::new(WheelRun::new()),
        Box::new(DqRun::new(rt)),
        Box::new(HeapRun::new()),
    ]
}

/// Runs `turn` for each of the three contenders on each of `chunks` chunks, the order rotating by one
/// from chunk to chunk (and from round to round, by `round`); returns each contender's summed result.
fn take_turns<C, R: Default + std::ops::AddAssign>(
    all: &mut [Box<dyn Contender + '_>; 3],
    chunks: impl Iterator<Item = C>,
    round: usize,
    mut turn: impl FnMut(&mut dyn Contender, &C) -> R,
) -> [R; 3] {
    let mut sums = [R::default(), R::default(), R::default()];
    for (c, chunk) in chunks.enumerate() {
        for k in 0..3 {
            let who = (c + round + k) % 3;
            sums[who] += turn(all[who].as_mut(), &chunk);
        }
    }
    sums
}

/// Fresh contenders filled with the plan's resident set, untimed.
fn filled<'r>(rt: &'r tokio::runtime::Runtime, plan: &Plan) -> [Box<dyn Contender + 'r>; 3] {
    let mut all = contenders(rt);
    for c in &mut all {
        c.insert(&plan.initial, 0);
        assert_eq!(c.len(), RESIDENT);
    }
    all
}

fn churn_round(rt: &tokio::runtime::Runtime, plan: &Plan, round: usize) -> [f64; 3] {
    let mut all = filled(rt, plan);
    let chunks = plan.churn.chunks(CHUNK).enumerate();
    let times = take_turns(&mut all, chunks, round, |c, &(i, ops)| {
        c.churn(ops, i * CHUNK)
    });
    for c in &all {
        assert_eq!(c.len(), RESIDENT);
    }
    times.map(|d| ns_per(d, OPS))
}

fn reset_later_round(rt: &tokio::runtime::Runtime, plan: &Plan, round: usize) -> [f64; 3] {
    let mut all = filled(rt, plan);
    let chunks = plan.reset_later.chunks(CHUNK);
    let times = take_turns(&mut all, chunks, round, |c, ops| c.reset_later(ops));
    for c in &all {
        assert_eq!(c.len(), RESIDENT);
    }
    times.map(|d| ns_per(d, OPS))
}

/// Returns (drain, insert + drain) in ns per timer.
fn expiry_round(rt: &tokio::runtime::Runtime, plan: &Plan, round: usize) -> ([f64; 3], [f64; 3]) {
    let mut all = contenders(rt);
    let chunks = plan.initial.chunks(CHUNK).enumerate();
    let inserts = take_turns(&mut all, chunks, round, |c, &(i, deadlines)| {
        c.insert(deadlines, i * CHUNK)
    });
    let steps = (1..=SPREAD_MS)
        .step_by(STEP_CHUNK as usize)
        .map(|from| from..(from + STEP_CHUNK).min(SPREAD_MS + 1));
    let drains = take_turns(&mut all, steps, round, |c, steps| {
        let (d, fired) = c.expire(steps.clone());
        Drained(d, fired)
    })
    .map(|Drained(d, fired)| {
        assert_eq!(fired, RESIDENT, "every timer fires within the spread");
        d
    });
    for c in &all {
        assert_eq!(c.len(), 0);
    }
    let mut with_insert = [0.0; 3];
    for k in 0..3 {
        with_insert[k] = ns_per(inserts[k] + drains[k], RESIDENT);
    }
    (drains.map(|d| ns_per(d, RESIDENT)), with_insert)
}

/// Drain time and timers fired, summed over turns.
#[derive(Default)]
struct Drained(Duration, usize);

impl std::ops::AddAssign for Drained {
    fn add_assign(&mut self, other: Drained) {
        self.0 += other.0;
        self.1 += other.1;
    }
}

// ---- memory ----

fn per_timer(bytes: isize) -> f64 {
    bytes as f64 / RESIDENT as f64
}

/// What a memory measurement built: the structure's inline size, the heap bytes of the caller's keys (not
/// the structure's, left out), and the structure itself, to drop once counted.
struct Built {
    inline: isize,
    keys: isize,
    keep: Box<dyn std::any::Any>,
}

/// Bytes per timer held by a structure built (filled, and maybe churned) while the counting allocator is
/// on: what it allocated plus its inline size.
fn counted(build: impl FnOnce() -> Built) -> f64 {
    let before = counting::start();
    let built = build();
    let after = counting::current();
    drop(built.keep);
    counting::stop();
    per_timer(after - before - built.keys + built.inline)
}

/// Heap bytes of a key vector.
fn vec_bytes<K>(keys: &Vec<K>) -> isize {
    (keys.capacity() * std::mem::size_of::<K>()) as isize
}

/// Bytes per timer of a `Wheel<u64>` holding `RESIDENT` timers; `presized` reserves the slab up front;
/// `churn` runs every churn operation before measuring.
fn wheel_memory(plan: &Plan, presized: bool, churn: bool) -> f64 {
    counted(|| {
        let base = Instant::now();
        let mut wheel = if presized {
            Wheel::with_tick(base, TICK, RESIDENT).expect("tick")
        } else {
            Wheel::new(base)
        };
        let mut keys: Vec<Key> = Vec::new();
        for (i, &ms) in plan.initial.iter().enumerate() {
            keys.push(wheel.insert(at(base, ms), i as u64).expect("insert"));
        }
        if churn {
            for (j, &(victim, ms)) in plan.churn.iter().enumerate() {
                let key = &mut keys[victim as usize];
                black_box(wheel.cancel(*key).expect("cancel"));
                *key = wheel.insert(at(base, ms), j as u64).expect("insert");
            }
        }
        // The wheel's fixed part (its bitmaps, the boxes of its slot lists) lives inline; count it too.
        Built {
            inline: std::mem::size_of_val(&wheel) as isize,
            keys: vec_bytes(&keys),
            keep: Box::new((wheel, keys)),
        }
    })
}

fn dq_memory(rt: &tokio::runtime::Runtime, plan: &Plan, churn: bool) -> f64 {
    let _context = rt.enter();
    counted(|| {
        let base = TokioInstant::now();
        let mut dq = DelayQueue::new();
        let mut keys = Vec::new();
        for (i, &ms) in plan.initial.iter().enumerate() {
            keys.push(dq.insert_at(i as u64, dq_at(base, ms)));
        }
        if churn {
            for (j, &(victim, ms)) in plan.churn.iter().enumerate() {
                let key = &mut keys[victim as usize];
                black_box(dq.remove(key).into_inner());
                *key = dq.insert_at(j as u64, dq_at(base, ms));
            }
        }
        Built {
            inline: std::mem::size_of_val(&dq) as isize,
            keys: vec_bytes(&keys),
            keep: Box::new((dq, keys)),
        }
    })
}

fn heap_memory(plan: &Plan, churn: bool) -> f64 {
    counted(|| {
        let base = Instant::now();
        let mut heap = HeapTimers::new();
        let mut keys = Vec::new();
        for (i, &ms) in plan.initial.iter().enumerate() {
            keys.push(heap.insert(at(base, ms), i as u64));
        }
        if churn {
            for (j, &(victim, ms)) in plan.churn.iter().enumerate() {
                let key = &mut keys[victim as usize];
                black_box(heap.cancel(*key).expect("cancel"));
                *key = heap.insert(at(base, ms), j as u64);
            }
        }
        Built {
            inline: std::mem::size_of_val(&heap) as isize,
            keys: vec_bytes(&keys),
            keep: Box::new((heap, keys)),
        }
    })
}

/// Median of the rounds.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `round` [`ROUNDS`] times and keeps the median of each implementation.
fn measure(mut round: impl FnMut(usize) -> [f64; 3]) -> Row {
    let mut all = [Vec::new(), Vec::new(), Vec::new()];
    for r in 0..ROUNDS {
        for (samples, x) in all.iter_mut().zip(round(r)) {
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

    let churn = measure(|r| churn_round(&rt, &plan, r));
    churn.print("churn");
    let reset_later = measure(|r| reset_later_round(&rt, &plan, r));
    reset_later.print("reset_later");

    // Drain only, and insert + drain, from the same rounds.
    let mut with_insert = Vec::new();
    let expiry = measure(|r| {
        let (drain, both) = expiry_round(&rt, &plan, r);
        with_insert.push(both);
        drain
    });
    expiry.print("expiry");

    let natural = wheel_memory(&plan, false, false);
    let presized = wheel_memory(&plan, true, false);
    println!("memory bytes_per_timer={natural:.1} presized_bytes_per_timer={presized:.1}");

    println!(
        "context memory delayqueue_bytes_per_timer={:.1} heap_bytes_per_timer={:.1}",
        dq_memory(&rt, &plan, false),
        heap_memory(&plan, false)
    );
    let after_churn = wheel_memory(&plan, false, true);
    println!(
        "context memory_after_churn vitals_bytes_per_timer={after_churn:.1} delayqueue_bytes_per_timer={:.1} \
         heap_bytes_per_timer={:.1}",
        dq_memory(&rt, &plan, true),
        heap_memory(&plan, true)
    );
    let mut rounds = with_insert.into_iter();
    print!("context ");
    measure(|_| rounds.next().expect("one per round")).print("expiry_incl_insert");
    println!(
        "context setup resident={RESIDENT} ops={OPS} spread_ms={SPREAD_MS} push_ms=1..={PUSH_MS} tick_ms=1 \
         rounds={ROUNDS} chunk={CHUNK} step_chunk={STEP_CHUNK} (median of rounds; implementations take turns \
         per chunk)"
    );
    let met = |ok: bool| if ok { "yes" } else { "NO" };
    println!(
        "targets churn_3x={} reset_later_3x={} expiry_2x={} beats_heap={} memory_48={}",
        met(churn.delayqueue >= 3.0 * churn.vitals),
        met(reset_later.delayqueue >= 3.0 * reset_later.vitals),
        met(expiry.delayqueue >= 2.0 * expiry.vitals),
        met([&churn, &reset_later, &expiry]
            .iter()
            .all(|row| row.vitals < row.heap)),
        met(natural <= 48.0 && after_churn <= 48.0),
    );
}
