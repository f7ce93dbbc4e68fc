//! A short tour of the timer task manager on the real clock: once, N times, forever, singleton and
//! delayed jobs fire for about two seconds, then their run counts are printed.
//! Needs the default `tokio` feature (jobs run on a runtime's blocking pool).
//!
//! Run: `cargo run --release -p vitals-timer --example tour`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vitals_timer::{Flow, Timer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Jobs run on a tokio runtime's blocking pool, so a slow job does not hold up the others
    // (the default executor runs jobs inline on the timer's own thread).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()?;
    let timer = Timer::builder().runtime(runtime.handle().clone()).build()?;
    let t0 = Instant::now();
    let ms = |d: Duration| d.as_millis();

    let once = timer.add_once(Duration::from_millis(300), move |ctx| {
        println!("[{:>5} ms] once: fired once after 300 ms", ms(ctx.now - t0));
        Flow::Continue
    })?;

    let thrice = timer.add_times(Duration::from_millis(400), 3, move |ctx| {
        let left = ctx.entry.times_left().unwrap_or(0);
        println!("[{:>5} ms] times(3): run, {left} left", ms(ctx.now - t0));
        Flow::Continue
    })?;

    let forever = timer.add(Duration::from_millis(250), move |ctx| {
        println!(
            "[{:>5} ms] forever: every 250 ms (due at {} ms)",
            ms(ctx.now - t0),
            ms(ctx.scheduled - t0)
        );
        Flow::Continue
    })?;

    let singleton = timer.add_singleton(Duration::from_millis(100), move |ctx| {
        // Sleeps longer than its interval: the firings that come meanwhile are skipped, not stacked.
        println!(
            "[{:>5} ms] singleton: a 350 ms job every 100 ms",
            ms(ctx.now - t0)
        );
        std::thread::sleep(Duration::from_millis(350));
        Flow::Continue
    })?;

    let delayed = timer.delay_add(
        Duration::from_millis(1000),
        Duration::from_millis(200),
        move |ctx| {
            println!(
                "[{:>5} ms] delayed: starts after 1 s, then every 200 ms",
                ms(ctx.now - t0)
            );
            Flow::Continue
        },
    )?;

    let countdown = Arc::new(AtomicU64::new(4));
    let c = Arc::clone(&countdown);
    let exits = timer.add(Duration::from_millis(150), move |ctx| {
        let left = c.fetch_sub(1, Ordering::SeqCst) - 1;
        println!("[{:>5} ms] self-exiting: {left} to go", ms(ctx.now - t0));
        if left == 0 {
            Flow::Exit
        } else {
            Flow::Continue
        }
    })?;

    std::thread::sleep(Duration::from_millis(2000));
    for e in [&forever, &singleton, &delayed] {
        e.close();
    }

    println!();
    println!("{:<14} {:>5} {:>8}  status", "job", "runs", "skipped");
    for (name, e) in [
        ("once", &once),
        ("times(3)", &thrice),
        ("forever", &forever),
        ("singleton", &singleton),
        ("delayed", &delayed),
        ("self-exiting", &exits),
    ] {
        println!(
            "{name:<14} {:>5} {:>8}  {:?}",
            e.runs(),
            e.skipped(),
            e.status()
        );
    }
    println!("driver wake-ups in 2 s: {}", timer.wakeups());
    Ok(())
}
