//! Tests of the timer task manager on a manual clock (and a few on the real driver thread).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

const MS: Duration = Duration::from_millis(1);

fn counter() -> (
    Arc<AtomicU64>,
    impl Fn(&Ctx<'_>) -> Flow + Send + Sync + 'static,
) {
    let n = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&n);
    (n, move |_: &Ctx<'_>| {
        c.fetch_add(1, Ordering::SeqCst);
        Flow::Continue
    })
}

fn manual() -> (Timer, Instant) {
    let start = Instant::now();
    (Timer::manual(start).unwrap(), start)
}

#[test]
fn once_fires_once_after_its_delay() {
    let (timer, start) = manual();
    let (n, job) = counter();
    let e = timer.add_once(10 * MS, job).unwrap();
    assert_eq!(timer.advance_to(start + 9 * MS), 0);
    assert_eq!(n.load(Ordering::SeqCst), 0);
    assert_eq!(e.status(), Status::Ready);
    assert_eq!(timer.advance_to(start + 10 * MS), 1);
    timer.advance_to(start + 1000 * MS);
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(e.status(), Status::Closed);
    assert!(timer.is_empty());
}

#[test]
fn n_times_runs_exactly_n_times_then_closes() {
    let (timer, start) = manual();
    let (n, job) = counter();
    let e = timer.add_times(5 * MS, 3, job).unwrap();
    for i in 1..=20 {
        timer.advance_to(start + i * 5 * MS);
    }
    assert_eq!(n.load(Ordering::SeqCst), 3);
    assert_eq!(e.runs(), 3);
    assert_eq!(e.status(), Status::Closed);
}

#[test]
fn forever_runs_every_interval() {
    let (timer, start) = manual();
    let (n, job) = counter();
    let e = timer.add(10 * MS, job).unwrap();
    for i in 1..=100 {
        timer.advance_to(start + i * MS);
    }
    assert_eq!(n.load(Ordering::SeqCst), 10);
    assert_eq!(e.status(), Status::Ready);
    assert_eq!(e.times_left(), None);
}

#[test]
fn delayed_start_of_each_kind() {
    let (timer, start) = manual();
    let (forever, job) = counter();
    timer.delay_add(50 * MS, 10 * MS, job).unwrap();
    let (once, job) = counter();
    timer
        .job(10 * MS)
        .delay(50 * MS)
        .times(1)
        .start(job)
        .unwrap();
    let (thrice, job) = counter();
    timer
        .job(10 * MS)
        .delay(50 * MS)
        .times(3)
        .start(job)
        .unwrap();
    let (single, job) = counter();
    timer
        .job(10 * MS)
        .delay(50 * MS)
        .singleton()
        .start(job)
        .unwrap();
    timer.advance_to(start + 59 * MS);
    for c in [&forever, &once, &thrice, &single] {
        assert_eq!(
            c.load(Ordering::SeqCst),
            0,
            "nothing runs before delay + interval"
        );
    }
    for i in 60..=200 {
        timer.advance_to(start + i * MS);
    }
    assert_eq!(forever.load(Ordering::SeqCst), 15); // 60, 70, ..., 200
    assert_eq!(once.load(Ordering::SeqCst), 1);
    assert_eq!(thrice.load(Ordering::SeqCst), 3);
    assert_eq!(single.load(Ordering::SeqCst), 15);
}

#[test]
fn job_exits_from_inside() {
    let (timer, start) = manual();
    let n = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&n);
    let e = timer
        .add(MS, move |_| {
            if c.fetch_add(1, Ordering::SeqCst) + 1 == 4 {
                Flow::Exit
            } else {
                Flow::Continue
            }
        })
        .unwrap();
    for i in 1..=50 {
        timer.advance_to(start + i * MS);
    }
    assert_eq!(n.load(Ordering::SeqCst), 4);
    assert_eq!(e.status(), Status::Closed);
}

#[test]
fn stop_start_reset_close() {
    let (timer, start) = manual();
    let (n, job) = counter();
    let e = timer.add(10 * MS, job).unwrap();
    timer.advance_to(start + 10 * MS);
    assert_eq!(n.load(Ordering::SeqCst), 1);

    e.stop().unwrap();
    assert_eq!(e.status(), Status::Stopped);
    assert_eq!(e.next_deadline(), None);
    timer.advance_to(start + 100 * MS);
    assert_eq!(n.load(Ordering::SeqCst), 1, "a stopped entry does not fire");

    e.start().unwrap(); // next firing one interval from now (110 ms)
    assert_eq!(e.next_deadline(), Some(start + 110 * MS));
    timer.advance_to(start + 109 * MS);
    assert_eq!(n.load(Ordering::SeqCst), 1);
    timer.advance_to(start + 110 * MS);
    assert_eq!(n.load(Ordering::SeqCst), 2);

    timer.advance_to(start + 115 * MS);
    e.reset().unwrap(); // restart the period: next at 125, not 120
    timer.advance_to(start + 124 * MS);
    assert_eq!(n.load(Ordering::SeqCst), 2);
    timer.advance_to(start + 125 * MS);
    assert_eq!(n.load(Ordering::SeqCst), 3);

    e.stop().unwrap();
    e.reset().unwrap(); // reset also restarts a stopped entry
    assert_eq!(e.status(), Status::Ready);
    timer.advance_to(start + 135 * MS);
    assert_eq!(n.load(Ordering::SeqCst), 4);

    e.close();
    assert_eq!(e.status(), Status::Closed);
    assert_eq!(e.start(), Err(Error::Closed));
    assert_eq!(e.reset(), Err(Error::Closed));
    assert_eq!(e.stop(), Err(Error::Closed));
    assert_eq!(e.run(), Err(Error::Closed));
    timer.advance_to(start + 1000 * MS);
    assert_eq!(n.load(Ordering::SeqCst), 4);
    assert!(timer.is_empty());
}

#[test]
fn run_now_counts_as_a_run_and_keeps_the_schedule() {
    let (timer, start) = manual();
    let (n, job) = counter();
    let e = timer.add_times(10 * MS, 2, job).unwrap();
    assert_eq!(e.run(), Ok(true));
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(e.times_left(), Some(1));
    assert_eq!(e.next_deadline(), Some(start + 10 * MS));
    timer.advance_to(start + 10 * MS);
    assert_eq!(n.load(Ordering::SeqCst), 2);
    assert_eq!(e.status(), Status::Closed);
}

#[test]
fn set_times_limits_a_forever_job_and_zero_closes() {
    let (timer, start) = manual();
    let (n, job) = counter();
    let e = timer.add(MS, job).unwrap();
    for i in 1..=3 {
        timer.advance_to(start + i * MS);
    }
    e.set_times(2).unwrap();
    for i in 4..=100 {
        timer.advance_to(start + i * MS);
    }
    assert_eq!(n.load(Ordering::SeqCst), 5);
    assert_eq!(e.status(), Status::Closed);
    let (_, job) = counter();
    let e2 = timer.add(MS, job).unwrap();
    e2.set_times(0).unwrap();
    assert_eq!(e2.status(), Status::Closed);
    assert_eq!(e2.set_times(3), Err(Error::Closed));
}

#[test]
fn a_panicking_job_closes_only_its_entry() {
    let (timer, start) = manual();
    let bad = timer.add(MS, |_| panic!("job failed on purpose")).unwrap();
    let (n, job) = counter();
    let good = timer.add(MS, job).unwrap();
    for i in 1..=10 {
        timer.advance_to(start + i * MS);
    }
    assert_eq!(bad.status(), Status::Closed);
    assert_eq!(bad.runs(), 1);
    assert_eq!(good.status(), Status::Ready);
    assert_eq!(n.load(Ordering::SeqCst), 10);
}

#[test]
fn no_drift_over_1000_periods_despite_late_polls() {
    let (timer, start) = manual();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    timer
        .add(Duration::from_secs(1), move |ctx| {
            l.lock().unwrap().push((ctx.scheduled, ctx.now));
            Flow::Continue
        })
        .unwrap();
    // Each poll comes 0..=300 ms late (a loaded machine), never a full period.
    let mut lateness = 7u64;
    while log.lock().unwrap().len() < 1000 {
        lateness = (lateness * 48_271) % 301;
        let next = timer.next_deadline().unwrap();
        timer.advance_to(next + Duration::from_millis(lateness));
    }
    let log = log.lock().unwrap();
    let (scheduled, ran) = log[999];
    assert_eq!(scheduled, start + Duration::from_secs(1000));
    assert!(ran - scheduled <= Duration::from_millis(300) + MS);
    for (i, (s, _)) in log.iter().enumerate() {
        assert_eq!(
            *s,
            start + Duration::from_secs(i as u64 + 1),
            "period {i} drifted"
        );
    }
}

fn stalled_runs(policy: MissedTicks) -> (Vec<Instant>, Option<Instant>, Instant) {
    let (timer, start) = manual();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    let e = timer
        .job(10 * MS)
        .missed_ticks(policy)
        .start(move |ctx| {
            l.lock().unwrap().push(ctx.scheduled);
            Flow::Continue
        })
        .unwrap();
    timer.advance_to(start + 55 * MS); // a stall: deadlines 10..50 all missed
    let runs = log.lock().unwrap().clone();
    (runs, e.next_deadline(), start)
}

#[test]
fn missed_tick_policies_after_a_stall() {
    let (runs, next, start) = stalled_runs(MissedTicks::Burst);
    assert_eq!(
        runs,
        (1..=5).map(|i| start + i * 10 * MS).collect::<Vec<_>>()
    );
    assert_eq!(next, Some(start + 60 * MS));

    let (runs, next, start) = stalled_runs(MissedTicks::Skip);
    assert_eq!(runs, [start + 10 * MS]);
    assert_eq!(next, Some(start + 60 * MS), "skip keeps the phase");

    let (runs, next, start) = stalled_runs(MissedTicks::Delay);
    assert_eq!(runs, [start + 10 * MS]);
    assert_eq!(
        next,
        Some(start + 65 * MS),
        "delay restarts the period from now"
    );
}

#[test]
fn jitter_spreads_firings_without_drift() {
    let (timer, start) = manual();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    timer
        .job(100 * MS)
        .jitter(20 * MS)
        .start(move |ctx| {
            l.lock().unwrap().push((ctx.scheduled, ctx.now));
            Flow::Continue
        })
        .unwrap();
    // The 100th firing is due at 10 s + up to 20 ms of jitter; the 101st not before 10.1 s.
    for i in 1..=10_050 {
        timer.advance_to(start + i * MS);
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 100);
    let offsets: Vec<Duration> = log.iter().map(|(s, now)| *now - *s).collect();
    for (i, (s, _)) in log.iter().enumerate() {
        assert_eq!(*s, start + (i as u32 + 1) * 100 * MS);
    }
    assert!(offsets.iter().all(|o| *o <= 21 * MS));
    let distinct: std::collections::HashSet<_> = offsets.iter().collect();
    assert!(distinct.len() > 5, "jitter should vary: {offsets:?}");
}

#[test]
fn zero_interval_and_zero_times_are_rejected() {
    let (timer, _) = manual();
    assert_eq!(
        timer.add(Duration::ZERO, |_| Flow::Continue).err(),
        Some(Error::ZeroInterval)
    );
    assert_eq!(
        timer.add_times(MS, 0, |_| Flow::Continue).err(),
        Some(Error::Closed)
    );
    assert!(timer.add_once(Duration::ZERO, |_| Flow::Continue).is_ok());
}

#[test]
fn handles_outliving_the_timer_report_it() {
    let (timer, _) = manual();
    let e = timer.add(MS, |_| Flow::Continue).unwrap();
    drop(timer);
    assert_eq!(e.stop(), Err(Error::TimerGone));
    assert_eq!(e.run(), Err(Error::TimerGone));
}

#[cfg(feature = "tokio")]
#[test]
fn singleton_skips_firings_while_running() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let start = Instant::now();
    let timer = Timer::builder()
        .manual(start)
        .runtime(rt.handle().clone())
        .build()
        .unwrap();
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let make_job = |gate: Arc<(Mutex<bool>, std::sync::Condvar)>| {
        move |_: &Ctx<'_>| {
            let (open, cv) = &*gate;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
            Flow::Continue
        }
    };
    let single = timer
        .add_singleton(10 * MS, make_job(Arc::clone(&gate)))
        .unwrap();
    let plain = timer.add(10 * MS, make_job(Arc::clone(&gate))).unwrap();
    timer.advance_to(start + 10 * MS);
    wait_until(|| single.status() == Status::Running && plain.status() == Status::Running);
    for i in 2..=5 {
        timer.advance_to(start + i * 10 * MS);
    }
    assert_eq!(
        single.skipped(),
        4,
        "four firings came while the first run was blocked"
    );
    assert_eq!(plain.skipped(), 0);
    assert_eq!(single.run(), Ok(false), "run-now respects singleton too");
    {
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
    wait_until(|| single.runs() == 1 && plain.runs() == 5);
    assert_eq!(single.status(), Status::Ready);
}

fn wait_until(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in 10 s");
        std::thread::sleep(MS);
    }
}

#[test]
fn driver_thread_runs_jobs_on_the_real_clock() {
    let timer = Timer::new().unwrap();
    let (n, job) = counter();
    let e = timer.add_times(5 * MS, 3, job).unwrap();
    let (once, job) = counter();
    timer.add_once(20 * MS, job).unwrap();
    wait_until(|| e.status() == Status::Closed && once.load(Ordering::SeqCst) == 1);
    assert_eq!(n.load(Ordering::SeqCst), 3);
}

#[test]
fn idle_driver_does_not_tick() {
    let timer = Timer::new().unwrap();
    let (n, job) = counter();
    timer.add(Duration::from_secs(3600), job).unwrap();
    std::thread::sleep(100 * MS);
    let before = timer.wakeups();
    std::thread::sleep(300 * MS);
    assert_eq!(
        timer.wakeups(),
        before,
        "the driver woke while nothing was due"
    );
    assert_eq!(n.load(Ordering::SeqCst), 0);
}

#[test]
fn an_earlier_job_wakes_a_parked_driver() {
    let timer = Timer::new().unwrap();
    timer
        .add(Duration::from_secs(3600), |_| Flow::Continue)
        .unwrap();
    std::thread::sleep(20 * MS);
    let (n, job) = counter();
    timer.add_once(5 * MS, job).unwrap();
    wait_until(|| n.load(Ordering::SeqCst) == 1);
}
