//! The `compare` example's churn loop for one implementation alone, for instruction and cache-miss
//! counts under valgrind (`cachegrind`/`callgrind`), where `compare` itself would take too long.
//!
//! ```text
//! cargo build --release -p vitals-timer --example churn_profile
//! valgrind --tool=cachegrind --cache-sim=yes target/release/examples/churn_profile wheel 0
//! valgrind --tool=cachegrind --cache-sim=yes target/release/examples/churn_profile wheel 200000
//! ```
//!
//! The first argument picks the implementation (`wheel` or `heap`), the second the number of churn
//! operations after filling 1,000,000 resident timers (same plan as `compare`: deadlines uniform over
//! 1..=60,000 ms, random victims, fixed-seed SplitMix64). The difference between a run with N operations
//! and one with 0 is the cost of N operations. Prints the wall time per operation too (meaningless under
//! valgrind).

use std::hint::black_box;
use std::time::{Duration, Instant};

use vitals_timer::{Key, Wheel};

#[path = "../benches/support/heap_timers.rs"]
#[allow(dead_code)] // only insert and cancel are used here
mod heap_timers;
#[path = "../benches/support/splitmix.rs"]
mod splitmix;

use heap_timers::HeapTimers;
use splitmix::SplitMix64;

/// Resident timers.
const RESIDENT: usize = 1_000_000;
/// Deadlines are spread over 1..=SPREAD_MS milliseconds.
const SPREAD_MS: u64 = 60_000;
/// Most churn operations a run can do (the plan's length).
const MAX_OPS: usize = 2_000_000;

fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
}

/// What the churn loop needs of an implementation (inlined into it, so that the loop is the one a caller
/// writing it for one implementation would get).
trait Churn {
    type Key: Copy;
    fn insert(&mut self, at: Instant, value: u64) -> Self::Key;
    fn cancel(&mut self, key: Self::Key) -> u64;
}

impl Churn for Wheel<u64> {
    type Key = Key;

    #[inline(always)]
    fn insert(&mut self, at: Instant, value: u64) -> Key {
        Wheel::insert(self, at, value).expect("insert")
    }

    #[inline(always)]
    fn cancel(&mut self, key: Key) -> u64 {
        Wheel::cancel(self, key).expect("cancel")
    }
}

impl Churn for HeapTimers<u64> {
    type Key = heap_timers::HeapKey;

    #[inline(always)]
    fn insert(&mut self, at: Instant, value: u64) -> Self::Key {
        HeapTimers::insert(self, at, value)
    }

    #[inline(always)]
    fn cancel(&mut self, key: Self::Key) -> u64 {
        HeapTimers::cancel(self, key).expect("cancel")
    }
}

/// Fills `timers` with `initial` (untimed), then runs the `churn` operations (each cancels a victim and
/// inserts its replacement, as `compare` does) and returns their time.
fn run<C: Churn>(mut timers: C, base: Instant, initial: &[u64], churn: &[(u32, u64)]) -> Duration {
    let mut keys: Vec<C::Key> = initial
        .iter()
        .enumerate()
        .map(|(i, &ms)| timers.insert(at(base, ms), i as u64))
        .collect();
    let t = Instant::now();
    for (j, &(victim, ms)) in churn.iter().enumerate() {
        let key = &mut keys[victim as usize];
        black_box(timers.cancel(*key));
        *key = timers.insert(at(base, ms), j as u64);
    }
    t.elapsed()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "wheel".into());
    let ops: usize = args
        .next()
        .map(|s| s.parse().expect("ops: a number"))
        .unwrap_or(200_000);

    let mut rng = SplitMix64(0x5EED_0F71_741E_5500);
    let initial: Vec<u64> = (0..RESIDENT).map(|_| 1 + rng.below(SPREAD_MS)).collect();
    // The whole plan is generated whatever `ops` is, so that runs differ only by the operations run.
    let plan: Vec<(u32, u64)> = (0..MAX_OPS)
        .map(|_| (rng.below(RESIDENT as u64) as u32, 1 + rng.below(SPREAD_MS)))
        .collect();
    let churn = &plan[..ops.min(MAX_OPS)];
    let base = Instant::now();
    let elapsed = match which.as_str() {
        "wheel" => run(Wheel::new(base), base, &initial, churn),
        "heap" => run(HeapTimers::new(), base, &initial, churn),
        other => panic!("unknown implementation {other}: wheel or heap"),
    };
    println!(
        "{which} ops={} ns_per_op={:.1}",
        churn.len(),
        elapsed.as_nanos() as f64 / churn.len().max(1) as f64
    );
}
