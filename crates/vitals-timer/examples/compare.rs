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
//! all the churn operations (stale list indices, purges and grown buffers included).

use std::future::poll_fn;
use std::hint::black_box;
use std::ops::Range;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio_util::time::DelayQueue;
use vitals_timer::{Key, Wheel};

#[path = "../benches/support/heap_timers.rs"]
mod heap_timers;
#[path = "../benches/support/splitmix.rs"]
mod splitmix;

use heap_timers::HeapTimers;
use splitmix::SplitMix64;

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

/// The operations of one implementation, with deadlines given in ms after its base instant (each converts
/// them the way its users would: `Instant` for the wheel and the heap, tokio's `Instant` for `DelayQueue`).
trait Timers {
    type Key: Copy;
    /// Inserts `value` due `ms` after the base instant.
    fn insert(&mut self, ms: u64, value: u64) -> Self::Key;
    /// Cancels a live timer and returns its payload.
    fn cancel(&mut self, key: Self::Key) -> u64;
    /// Moves a live timer's deadline to `ms` after the base instant.
    fn reset(&mut self, key: Self::Key, ms: u64);
    /// Advances through the 1 ms steps `steps`, draining what is due at each; returns the drain time (only
    /// the draining is timed) and how many timers fired.
    fn expire(&mut self, steps: Range<u64>) -> (Duration, usize);
    /// Timers held.
    fn len(&self) -> usize;
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
    /// See [`Timers::expire`].
    fn expire(&mut self, steps: Range<u64>) -> (Duration, usize);
    /// Timers held.
    fn len(&self) -> usize;
}

/// An implementation and the keys of its resident timers: the same loops for all three.
struct Run<S: Timers> {
    timers: S,
    keys: Vec<S::Key>,
}

impl<S: Timers> Run<S> {
    fn new(timers: S) -> Self {
        Run {
            timers,
            keys: Vec::new(),
        }
    }

    /// Untimed: inserts `deadlines`, then runs the `churn` operations, if any.
    fn fill(&mut self, deadlines: &[u64], churn: Option<&[(u32, u64)]>) {
        self.insert(deadlines, 0);
        if let Some(ops) = churn {
            self.churn(ops, 0);
        }
    }
}

impl<S: Timers> Contender for Run<S> {
    fn churn(&mut self, ops: &[(u32, u64)], first: usize) -> Duration {
        let (timers, keys) = (&mut self.timers, &mut self.keys);
        let t = Instant::now();
        for (j, &(victim, ms)) in ops.iter().enumerate() {
            let key = &mut keys[victim as usize];
            black_box(timers.cancel(*key));
            *key = timers.insert(ms, (first + j) as u64);
        }
        t.elapsed()
    }

    fn reset_later(&mut self, ops: &[(u32, u64)]) -> Duration {
        let (timers, keys) = (&mut self.timers, &self.keys);
        let t = Instant::now();
        for &(victim, ms) in ops {
            timers.reset(keys[victim as usize], ms);
        }
        t.elapsed()
    }

    fn insert(&mut self, deadlines: &[u64], first: usize) -> Duration {
        let (timers, keys) = (&mut self.timers, &mut self.keys);
        let t = Instant::now();
        for (i, &ms) in deadlines.iter().enumerate() {
            keys.push(timers.insert(ms, (first + i) as u64));
        }
        t.elapsed()
    }

    fn expire(&mut self, steps: Range<u64>) -> (Duration, usize) {
        self.timers.expire(steps)
    }

    fn len(&self) -> usize {
        self.timers.len()
    }
}

/// `Timers::expire` for the two that are polled with a `std::time::Instant`: `poll` is called with each
/// step's instant until it hands out nothing.
fn expire_polled(
    steps: Range<u64>,
    base: Instant,
    mut poll: impl FnMut(Instant) -> Option<u64>,
) -> (Duration, usize) {
    let mut drain = Duration::ZERO;
    let mut fired = 0;
    for ms in steps {
        let now = at(base, ms);
        let t = Instant::now();
        while let Some(value) = poll(now) {
            black_box(value);
            fired += 1;
        }
        drain += t.elapsed();
    }
    (drain, fired)
}

// ---- vitals Wheel ----

struct WheelTimers {
    base: Instant,
    wheel: Wheel<u64>,
}

impl WheelTimers {
    /// A wheel with the default tick; `capacity` entries reserved up front.
    fn new(capacity: usize) -> Self {
        let base = Instant::now();
        WheelTimers {
            base,
            wheel: Wheel::with_tick(base, TICK, capacity).expect("tick"),
        }
    }
}

impl Timers for WheelTimers {
    type Key = Key;

    fn insert(&mut self, ms: u64, value: u64) -> Key {
        self.wheel.insert(at(self.base, ms), value).expect("insert")
    }

    fn cancel(&mut self, key: Key) -> u64 {
        self.wheel.cancel(key).expect("cancel")
    }

    fn reset(&mut self, key: Key, ms: u64) {
        self.wheel.reset(key, at(self.base, ms)).expect("reset");
    }

    fn expire(&mut self, steps: Range<u64>) -> (Duration, usize) {
        let wheel = &mut self.wheel;
        expire_polled(steps, self.base, |now| wheel.poll(now).map(|e| e.value))
    }

    fn len(&self) -> usize {
        self.wheel.len()
    }
}

// ---- tokio-util DelayQueue (paused clock, current-thread runtime) ----

type TokioInstant = tokio::time::Instant;
type DqKey = tokio_util::time::delay_queue::Key;

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

/// Inserts, removes and resets run inside the runtime's context (`main` enters it once), which is all
/// `DelayQueue` needs for them; expiry advances the paused clock inside `block_on`.
struct DqTimers<'r> {
    rt: &'r tokio::runtime::Runtime,
    base: TokioInstant,
    dq: DelayQueue<u64>,
}

impl<'r> DqTimers<'r> {
    fn new(rt: &'r tokio::runtime::Runtime) -> Self {
        DqTimers {
            rt,
            base: TokioInstant::now(),
            dq: DelayQueue::new(),
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

impl Timers for DqTimers<'_> {
    type Key = DqKey;

    fn insert(&mut self, ms: u64, value: u64) -> DqKey {
        self.dq.insert_at(value, dq_at(self.base, ms))
    }

    fn cancel(&mut self, key: DqKey) -> u64 {
        self.dq.remove(&key).into_inner()
    }

    fn reset(&mut self, key: DqKey, ms: u64) {
        self.dq.reset_at(&key, dq_at(self.base, ms));
    }

    fn expire(&mut self, steps: Range<u64>) -> (Duration, usize) {
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

struct HeapTimersRun {
    base: Instant,
    heap: HeapTimers<u64>,
}

impl HeapTimersRun {
    fn new() -> Self {
        HeapTimersRun {
            base: Instant::now(),
            heap: HeapTimers::new(),
        }
    }
}

impl Timers for HeapTimersRun {
    type Key = heap_timers::HeapKey;

    fn insert(&mut self, ms: u64, value: u64) -> Self::Key {
        self.heap.insert(at(self.base, ms), value)
    }

    fn cancel(&mut self, key: Self::Key) -> u64 {
        self.heap.cancel(key).expect("cancel")
    }

    fn reset(&mut self, key: Self::Key, ms: u64) {
        assert!(self.heap.reset(key, at(self.base, ms)));
    }

    fn expire(&mut self, steps: Range<u64>) -> (Duration, usize) {
        let heap = &mut self.heap;
        expire_polled(steps, self.base, |now| {
            heap.poll(now).map(|(value, _)| value)
        })
    }

    fn len(&self) -> usize {
        self.heap.len()
    }
}

// ---- taking turns ----

/// Fresh, empty contenders: vitals, DelayQueue, heap.
fn contenders(rt: &tokio::runtime::Runtime) -> [Box<dyn Contender + '_>; 3] {
    [
        Box::new(Run::new(WheelTimers::new(0))),
        Box::new(Run::new(DqTimers::new(rt))),
        Box::new(Run::new(HeapTimersRun::new())),
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

/// Bytes per timer of an implementation made by `make`, holding `RESIDENT` timers, after all churn
/// operations too when `churn` is given: what it allocated plus its inline size (its keys, the caller's,
/// left out).
fn memory<S: Timers + 'static>(make: impl FnOnce() -> S, plan: &Plan, churn: bool) -> f64 {
    counted(|| {
        let mut run = Run::new(make());
        run.fill(&plan.initial, churn.then_some(plan.churn.as_slice()));
        Built {
            inline: std::mem::size_of_val(&run.timers) as isize,
            keys: vec_bytes(&run.keys),
            keep: Box::new(run),
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
    // Leaked so that `DelayQueue`s may hold it in memory measurements ('static); one per process anyway.
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime()));
    let _context = rt.enter();

    let churn = measure(|r| churn_round(rt, &plan, r));
    churn.print("churn");
    let reset_later = measure(|r| reset_later_round(rt, &plan, r));
    reset_later.print("reset_later");

    // Drain only, and insert + drain, from the same rounds.
    let mut with_insert = Vec::new();
    let expiry = measure(|r| {
        let (drain, both) = expiry_round(rt, &plan, r);
        with_insert.push(both);
        drain
    });
    expiry.print("expiry");

    let natural = memory(|| WheelTimers::new(0), &plan, false);
    let presized = memory(|| WheelTimers::new(RESIDENT), &plan, false);
    println!("memory bytes_per_timer={natural:.1} presized_bytes_per_timer={presized:.1}");

    println!(
        "context memory delayqueue_bytes_per_timer={:.1} heap_bytes_per_timer={:.1}",
        memory(|| DqTimers::new(rt), &plan, false),
        memory(HeapTimersRun::new, &plan, false)
    );
    let after_churn = memory(|| WheelTimers::new(0), &plan, true);
    println!(
        "context memory_after_churn vitals_bytes_per_timer={after_churn:.1} delayqueue_bytes_per_timer={:.1} \
         heap_bytes_per_timer={:.1}",
        memory(|| DqTimers::new(rt), &plan, true),
        memory(HeapTimersRun::new, &plan, true)
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
