//! Criterion benchmarks of `Wheel<u64>` against tokio-util's `DelayQueue` and a lazily cancelled
//! `BinaryHeap` (see `support/heap_timers.rs`), one group per operation:
//!
//! - `insert_cancel`: with `RESIDENT` timers resident, cancel a random one and insert a replacement.
//! - `reset_later`: push a random resident timer's deadline later (the heartbeat hot path).
//! - `reset_earlier`: move a resident timer's deadline earlier (victims in a fixed random order; between
//!   timed chunks the moved timers are put back late, untimed).
//! - `expiry`: per expired timer, draining timers spread over time (about 16 per 1 ms tick), advancing
//!   1 ms per step; filling and, for `DelayQueue`, `tokio::time::advance` are not timed.
//!
//! The default run is kept short (10 samples, 2 s each); `examples/compare.rs` gives the headline figures
//! at 1,000,000 resident timers.

use std::future::poll_fn;
use std::hint::black_box;
use std::task::Poll;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use tokio_util::time::DelayQueue;
use vitals_timer::{Key, Wheel};

#[path = "support/heap_timers.rs"]
mod heap_timers;
#[path = "support/splitmix.rs"]
mod splitmix;

use heap_timers::{HeapKey, HeapTimers};
use splitmix::SplitMix64;

/// Resident timers in the insert/cancel and reset groups.
const RESIDENT: usize = 100_000;
/// Deadlines are spread over 1..=SPREAD_MS milliseconds.
const SPREAD_MS: u64 = 60_000;
/// Timers expiring per 1 ms step in the expiry group.
const PER_TICK: u64 = 16;
/// Largest batch filled at once in the expiry group.
const EXPIRY_BATCH: u64 = 100_000;
const TICK: Duration = Duration::from_millis(1);

type TokioInstant = tokio::time::Instant;
type DqKey = tokio_util::time::delay_queue::Key;

fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

fn dq_at(base: TokioInstant, ms: u64) -> TokioInstant {
    TokioInstant::from_std(at(base.into_std(), ms))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime")
}

/// Resident deadlines, the same for every implementation.
fn initial(lo: u64, hi: u64) -> Vec<u64> {
    let mut rng = SplitMix64(7);
    (0..RESIDENT).map(|_| lo + rng.below(hi - lo + 1)).collect()
}

fn wheel_filled(base: Instant, deadlines: &[u64]) -> (Wheel<u64>, Vec<Key>) {
    let mut wheel = Wheel::new(base);
    let keys = deadlines
        .iter()
        .enumerate()
        .map(|(i, &ms)| wheel.insert(at(base, ms), i as u64).expect("insert"))
        .collect();
    (wheel, keys)
}

fn dq_filled(base: TokioInstant, deadlines: &[u64]) -> (DelayQueue<u64>, Vec<DqKey>) {
    let mut dq = DelayQueue::new();
    let keys = deadlines
        .iter()
        .enumerate()
        .map(|(i, &ms)| dq.insert_at(i as u64, dq_at(base, ms)))
        .collect();
    (dq, keys)
}

fn heap_filled(base: Instant, deadlines: &[u64]) -> (HeapTimers<u64>, Vec<HeapKey>) {
    let mut heap = HeapTimers::new();
    let keys = deadlines
        .iter()
        .enumerate()
        .map(|(i, &ms)| heap.insert(at(base, ms), i as u64))
        .collect();
    (heap, keys)
}

fn insert_cancel(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = configure(c, "insert_cancel");
    let deadlines = initial(1, SPREAD_MS);
    group.bench_function("vitals", |b| {
        let base = Instant::now();
        let (mut wheel, mut keys) = wheel_filled(base, &deadlines);
        let mut rng = SplitMix64(1);
        b.iter(|| {
            let key = &mut keys[rng.below(RESIDENT as u64) as usize];
            black_box(wheel.cancel(*key).expect("cancel"));
            *key = wheel
                .insert(at(base, 1 + rng.below(SPREAD_MS)), 0)
                .expect("insert");
        });
    });
    group.bench_function("delayqueue", |b| {
        let _guard = rt.enter();
        let base = TokioInstant::now();
        let (mut dq, mut keys) = dq_filled(base, &deadlines);
        let mut rng = SplitMix64(1);
        b.iter(|| {
            let key = &mut keys[rng.below(RESIDENT as u64) as usize];
            black_box(dq.remove(key).into_inner());
            *key = dq.insert_at(0, dq_at(base, 1 + rng.below(SPREAD_MS)));
        });
    });
    group.bench_function("heap", |b| {
        let base = Instant::now();
        let (mut heap, mut keys) = heap_filled(base, &deadlines);
        let mut rng = SplitMix64(1);
        b.iter(|| {
            let key = &mut keys[rng.below(RESIDENT as u64) as usize];
            black_box(heap.cancel(*key).expect("cancel"));
            *key = heap.insert(at(base, 1 + rng.below(SPREAD_MS)), 0);
        });
    });
    group.finish();
}

fn reset_later(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = configure(c, "reset_later");
    let deadlines = initial(1, SPREAD_MS);
    group.bench_function("vitals", |b| {
        let base = Instant::now();
        let (mut wheel, keys) = wheel_filled(base, &deadlines);
        let mut current = deadlines.clone();
        let mut rng = SplitMix64(2);
        b.iter(|| {
            let victim = rng.below(RESIDENT as u64) as usize;
            current[victim] += 1 + rng.below(SPREAD_MS / 2);
            wheel
                .reset(keys[victim], at(base, current[victim]))
                .expect("reset");
        });
    });
    group.bench_function("delayqueue", |b| {
        let _guard = rt.enter();
        let base = TokioInstant::now();
        let (mut dq, keys) = dq_filled(base, &deadlines);
        let mut current = deadlines.clone();
        let mut rng = SplitMix64(2);
        b.iter(|| {
            let victim = rng.below(RESIDENT as u64) as usize;
            current[victim] += 1 + rng.below(SPREAD_MS / 2);
            dq.reset_at(&keys[victim], dq_at(base, current[victim]));
        });
    });
    group.bench_function("heap", |b| {
        let base = Instant::now();
        let (mut heap, keys) = heap_filled(base, &deadlines);
        let mut current = deadlines.clone();
        let mut rng = SplitMix64(2);
        b.iter(|| {
            let victim = rng.below(RESIDENT as u64) as usize;
            current[victim] += 1 + rng.below(SPREAD_MS / 2);
            assert!(heap.reset(keys[victim], at(base, current[victim])));
        });
    });
    group.finish();
}

/// Moves timers earlier in chunks: `reset(victim, early)` timed, then `restore(victim)` untimed.
fn earlier_chunks(
    iters: u64,
    order: &[u32],
    mut reset: impl FnMut(usize),
    mut restore: impl FnMut(usize),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let chunk = &order[..left.min(order.len())];
        let t = Instant::now();
        for &victim in chunk {
            reset(victim as usize);
        }
        total += t.elapsed();
        for &victim in chunk {
            restore(victim as usize);
        }
        left -= chunk.len();
    }
    total
}

fn reset_earlier(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = configure(c, "reset_earlier");
    // Resident timers sit late (30-60 s); each op moves one to an earlier point (1 ms-30 s).
    let late = initial(SPREAD_MS / 2, SPREAD_MS);
    let mut rng = SplitMix64(3);
    let early: Vec<u64> = (0..RESIDENT)
        .map(|_| 1 + rng.below(SPREAD_MS / 2 - 1))
        .collect();
    let mut order: Vec<u32> = (0..RESIDENT as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    group.bench_function("vitals", |b| {
        let base = Instant::now();
        let (wheel, keys) = wheel_filled(base, &late);
        let wheel = std::cell::RefCell::new(wheel);
        b.iter_custom(|iters| {
            earlier_chunks(
                iters,
                &order,
                |v| {
                    wheel
                        .borrow_mut()
                        .reset(keys[v], at(base, early[v]))
                        .expect("reset");
                },
                |v| {
                    wheel
                        .borrow_mut()
                        .reset(keys[v], at(base, late[v]))
                        .expect("reset");
                },
            )
        });
    });
    group.bench_function("delayqueue", |b| {
        let _guard = rt.enter();
        let base = TokioInstant::now();
        let (dq, keys) = dq_filled(base, &late);
        let dq = std::cell::RefCell::new(dq);
        b.iter_custom(|iters| {
            earlier_chunks(
                iters,
                &order,
                |v| dq.borrow_mut().reset_at(&keys[v], dq_at(base, early[v])),
                |v| dq.borrow_mut().reset_at(&keys[v], dq_at(base, late[v])),
            )
        });
    });
    group.bench_function("heap", |b| {
        let base = Instant::now();
        let (heap, keys) = heap_filled(base, &late);
        let heap = std::cell::RefCell::new(heap);
        b.iter_custom(|iters| {
            earlier_chunks(
                iters,
                &order,
                |v| assert!(heap.borrow_mut().reset(keys[v], at(base, early[v]))),
                |v| assert!(heap.borrow_mut().reset(keys[v], at(base, late[v]))),
            )
        });
    });
    group.finish();
}

/// Deadlines (ms) of one expiry batch of `n` timers, about `PER_TICK` per millisecond.
fn expiry_batch(n: u64, seed: u64) -> (Vec<u64>, u64) {
    let spread = n.div_ceil(PER_TICK).max(1);
    let mut rng = SplitMix64(seed);
    ((0..n).map(|_| 1 + rng.below(spread)).collect(), spread)
}

/// Splits `iters` timers into batches and sums `drain(batch)` over them.
fn expiry_total(iters: u64, mut drain: impl FnMut(&[u64], u64) -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut seed = 0;
    while left > 0 {
        let n = left.min(EXPIRY_BATCH);
        let (deadlines, spread) = expiry_batch(n, seed);
        total += drain(&deadlines, spread);
        left -= n;
        seed += 1;
    }
    total
}

fn expiry(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = configure(c, "expiry");
    group.bench_function("vitals", |b| {
        b.iter_custom(|iters| {
            expiry_total(iters, |deadlines, spread| {
                let base = Instant::now();
                let (mut wheel, _) = wheel_filled(base, deadlines);
                let mut drain = Duration::ZERO;
                for ms in 1..=spread {
                    let now = at(base, ms);
                    let t = Instant::now();
                    while let Some(e) = wheel.poll(now) {
                        black_box(e.value);
                    }
                    drain += t.elapsed();
                }
                assert!(wheel.is_empty());
                drain
            })
        });
    });
    group.bench_function("delayqueue", |b| {
        b.iter_custom(|iters| {
            expiry_total(iters, |deadlines, _| {
                rt.block_on(async {
                    let base = TokioInstant::now();
                    let (mut dq, _) = dq_filled(base, deadlines);
                    let mut drain = Duration::ZERO;
                    while !dq.is_empty() {
                        tokio::time::advance(TICK).await;
                        let t = Instant::now();
                        while let Poll::Ready(Some(e)) =
                            poll_fn(|cx| Poll::Ready(dq.poll_expired(cx))).await
                        {
                            black_box(e.into_inner());
                        }
                        drain += t.elapsed();
                    }
                    drain
                })
            })
        });
    });
    group.bench_function("heap", |b| {
        b.iter_custom(|iters| {
            expiry_total(iters, |deadlines, spread| {
                let base = Instant::now();
                let (mut heap, _) = heap_filled(base, deadlines);
                let mut drain = Duration::ZERO;
                for ms in 1..=spread {
                    let now = at(base, ms);
                    let t = Instant::now();
                    while let Some((value, _)) = heap.poll(now) {
                        black_box(value);
                    }
                    drain += t.elapsed();
                }
                assert_eq!(heap.len(), 0);
                drain
            })
        });
    });
    group.finish();
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    insert_cancel(c, &rt);
    reset_later(c, &rt);
    reset_earlier(c, &rt);
    expiry(c, &rt);
}

criterion_group!(wheel, benches);
criterion_main!(wheel);
