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

use vitals_timer::Wheel;

#[path = "../benches/support/heap_timers.rs"]
#[allow(dead_code)] // only insert and cancel are used here
mod heap_timers;

/// Resident timers.
const RESIDENT: usize = 1_000_000;
/// Deadlines are spread over 1..=SPREAD_MS milliseconds.
const SPREAD_MS: u64 = 60_000;
/// Most churn operations a run can do (the plan's length).
const MAX_OPS: usize = 2_000_000;

/// SplitMix64, as in `compare`.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn at(base: Instant, ms: u64) -> Instant {
    base + Duration::from_millis(ms)
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
        "wheel" => {
            let mut wheel = Wheel::new(base);
            let mut keys: Vec<_> = initial
                .iter()
                .enumerate()
                .map(|(i, &ms)| wheel.insert(at(base, ms), i as u64).expect("insert"))
                .collect();
            let t = Instant::now();
            for (j, &(victim, ms)) in churn.iter().enumerate() {
                let key = &mut keys[victim as usize];
                black_box(wheel.cancel(*key).expect("cancel"));
                *key = wheel.insert(at(base, ms), j as u64).expect("insert");
            }
            t.elapsed()
        }
        "heap" => {
            let mut heap = heap_timers::HeapTimers::new();
            let mut keys: Vec<_> = initial
                .iter()
                .enumerate()
                .map(|(i, &ms)| heap.insert(at(base, ms), i as u64))
                .collect();
            let t = Instant::now();
            for (j, &(victim, ms)) in churn.iter().enumerate() {
                let key = &mut keys[victim as usize];
                black_box(heap.cancel(*key).expect("cancel"));
                *key = heap.insert(at(base, ms), j as u64);
            }
            t.elapsed()
        }
        other => panic!("unknown implementation {other}: wheel or heap"),
    };
    println!(
        "{which} ops={} ns_per_op={:.1}",
        churn.len(),
        elapsed.as_nanos() as f64 / churn.len().max(1) as f64
    );
}
