//! `vitals serve --processes N`: a supervisor and its workers on one port. Two workers share the
//! load behind one status page whose `/status.json` and `/metrics` add them up; a killed worker is
//! restarted (and shown so); SIGTERM drains every worker and exits 0; a supervisor that dies takes
//! its workers with it.

mod serve_util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serve_util::*;

/// The workers' pids from a supervisor's `/status.json`.
fn worker_pids(s: &serde_json::Value) -> Vec<u32> {
    s["workers"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
                .collect()
        })
        .unwrap_or_default()
}

fn all_up(s: &serde_json::Value, n: usize) -> bool {
    s["workers"]
        .as_array()
        .is_some_and(|w| w.len() == n && w.iter().all(|w| w["state"] == "up"))
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) is gone as far as serving goes.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

fn wait_until(within: Duration, f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn start_two() -> Daemon {
    Daemon::start(&[
        "--processes",
        "2",
        "--loops",
        "1",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--http",
        "127.0.0.1:0",
    ])
}

#[test]
fn two_workers_one_page_a_killed_one_restarted_and_sigterm_drains_all() {
    let mut d = start_two();
    assert!(d.banner.contains("loops 1 × 2 processes"), "{}", d.banner);
    let s = d.wait_status(Duration::from_secs(10), |s| all_up(s, 2));
    assert!(all_up(&s, 2), "{s}");
    assert_eq!(s["server"]["processes"], 2, "{s}");
    let pids = worker_pids(&s);
    assert_eq!(pids.len(), 2, "{s}");
    assert!(!pids.contains(&d.child.id()));

    // 16 clients through the one port, held for 3 s: the page counts them all, whichever worker
    // the kernel gave each to.
    let mut bench = Command::new(bin())
        .args([
            "bench",
            "--server",
            &d.addr.to_string(),
            "-n",
            "16",
            "--interval",
            "200ms",
            "--timeout",
            "1s",
            "--duration",
            "3s",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vitals bench");
    let s = d.wait_status(Duration::from_secs(10), |s| {
        s["connections"]["established"] == 16
    });
    assert_eq!(s["connections"]["established"], 16, "{s}");
    assert_eq!(s["connections"]["open"], 16, "{s}");
    let (code, metrics) = d.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("\nvitals_connections_open 16\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vitals_workers{state=\"up\"} 2"),
        "{metrics}"
    );
    assert_eq!(
        metrics.matches("# TYPE vitals_connections_open ").count(),
        1
    );
    let status = wait_within(&mut bench, Duration::from_secs(20)).expect("bench ended");
    assert!(status.success(), "bench lost connections: {status:?}");
    let s = d.wait_status(Duration::from_secs(5), |s| {
        s["rtt"]["samples"].as_u64() > Some(0)
    });
    assert!(s["rtt"]["samples"].as_u64() > Some(0), "{s}");

    // A worker killed outright is restarted, with a new pid, and the page says so.
    let victim = pids[0];
    assert!(
        Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let s = d.wait_status(Duration::from_secs(15), |s| {
        all_up(s, 2) && s["workers"][0]["restarts"] == 1
    });
    assert!(all_up(&s, 2) && s["workers"][0]["restarts"] == 1, "{s}");
    assert!(
        s["workers"][0]["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("signal 9")),
        "{s}"
    );
    let now = worker_pids(&s);
    assert!(!now.contains(&victim), "{s}");
    let (_, metrics) = d.get("/metrics");
    assert!(
        metrics.contains("vitals_worker_restarts_total 1"),
        "{metrics}"
    );

    // SIGTERM: every worker drains, the supervisor exits 0, nothing is left running.
    let status = d.signal_and_wait("TERM", Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    let err = d.stderr();
    assert!(err.contains("SIGTERM: draining 2 worker(s)"), "{err}");
    assert!(err.contains("stopped; 2 worker(s) drained"), "{err}");
    assert!(err.contains("(worker 0): SIGTERM: draining"), "{err}");
    assert!(err.contains("(worker 1): SIGTERM: draining"), "{err}");
    for pid in now {
        assert!(!alive(pid), "worker {pid} still runs");
    }
}

#[test]
fn workers_drain_when_their_supervisor_dies() {
    let mut d = start_two();
    let s = d.wait_status(Duration::from_secs(10), |s| all_up(s, 2));
    let pids = worker_pids(&s);
    assert_eq!(pids.len(), 2, "{s}");
    // SIGKILL: the supervisor cannot tell them; their stdin ends, and they drain on their own.
    d.child.kill().unwrap();
    let _ = d.child.wait();
    assert!(
        wait_until(Duration::from_secs(15), || pids.iter().all(|p| !alive(*p))),
        "workers {pids:?} outlived their supervisor"
    );
    assert!(
        d.stderr().contains("supervisor gone: draining"),
        "{}",
        d.stderr()
    );
}

#[test]
fn processes_settings_are_checked() {
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--processes", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("processes (0, from --processes) must be at least 1"),
        "{err}"
    );
    let out = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--processes",
            "4",
            "--max-connections",
            "3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeds max_connections"), "{err}");
}
