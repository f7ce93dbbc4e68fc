//! `vitals demo` end to end: it runs to completion on loopback with fast timing, every check holds
//! (puppet convicted, every client resumed, nothing lost or duplicated), and bad flags are refused with
//! exit code 2 and a message saying what to change. `vitals demo --fleet` (a redis-server and three
//! server processes of its own) kills one server and drains another, and nothing is lost either way.

use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;

/// The binary, with a bound on how long it may run.
fn vitals() -> Command {
    let mut cmd = Command::cargo_bin("vitals").expect("the vitals binary is built");
    cmd.timeout(Duration::from_secs(60));
    cmd
}

/// Runs `vitals ARGS…`, asserts exit 0; its stdout and summary line.
fn run_demo(args: &[&str]) -> (String, String) {
    let out = vitals().args(args).output().expect("demo ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("a summary line")
        .to_string();
    (stdout, summary)
}

/// A value `key=VALUE` from the summary line.
fn field<'a>(summary: &'a str, key: &str) -> Option<&'a str> {
    summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn demo_runs_to_completion_and_loses_nothing() {
    let (stdout, summary) = run_demo(&[
        "demo",
        "--clients",
        "20",
        "--interval",
        "100ms",
        "--timeout",
        "500ms",
        "--warmup",
        "1s",
        "--cuts",
        "2",
    ]);
    let summary = summary.as_str();
    assert!(summary.contains("lost=0 duplicated=0"), "{summary}");
    assert_eq!(field(summary, "connections"), Some("21"), "{summary}");
    // Both cuts resumed every client; something was replayed or at least resumed.
    let resumes: u64 = field(summary, "resumes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(resumes, 40, "{summary}");
    let sent: u64 = field(summary, "sent")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let received: u64 = field(summary, "received")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    assert!(sent > 0 && sent == received, "{summary}");
    // Conviction after roughly the timeout: at least timeout - interval, within the allowed slack.
    let conviction: f64 = field(summary, "conviction")
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("a conviction time");
    assert!((0.39..=1.0).contains(&conviction), "{summary}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    // Not a terminal: plain status lines, no escape sequences.
    assert!(!stdout.contains('\x1b'), "{stdout}");
}

#[test]
fn demo_refuses_a_timeout_not_above_the_interval() {
    vitals()
        .args(["demo", "--interval", "200ms", "--timeout", "200ms"])
        .assert()
        .code(2)
        .stderr(contains("--timeout").and(contains("must be greater than --interval")));
}

#[test]
fn demo_refuses_json_and_zero_clients() {
    vitals()
        .args(["demo", "--codec", "json"])
        .assert()
        .code(2)
        .stderr(contains("binary codec"));
    vitals()
        .args(["demo", "--clients", "0"])
        .assert()
        .code(2)
        .stderr(contains("--clients must be between 1 and 1000"));
}

/// A number `key=N` from the summary line (0 when absent, so that a missing field fails `> 0`).
fn count(summary: &str, key: &str) -> u64 {
    field(summary, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn fleet_demo_kills_and_drains_a_server_and_loses_nothing() {
    // The default 30 clients: SO_REUSEPORT spreads them by hash, and with 30 the chance that a
    // server gets none (a failed check) is about 2 in 100,000.
    let (stdout, summary) = run_demo(&["demo", "--fleet", "--warmup", "1s"]);
    let summary = summary.as_str();
    assert_eq!(field(summary, "servers"), Some("3"), "{summary}");
    assert_eq!(field(summary, "clients"), Some("30"), "{summary}");
    assert!(
        summary.contains("lost=0 duplicated=0 reordered=0"),
        "{summary}"
    );
    // Messages flowed both ways, and every one sent arrived (in Redis, at the clients).
    let (up_sent, up_received) = (count(summary, "up_sent"), count(summary, "up_received"));
    let (down_sent, down_received) = (count(summary, "down_sent"), count(summary, "down_received"));
    assert!(up_sent > 0 && up_sent == up_received, "{summary}");
    assert!(down_sent > 0 && down_sent == down_received, "{summary}");
    // The killed and the drained server each had sessions, and they resumed elsewhere.
    let (from_n1, from_n2) = (
        count(summary, "moved_from_n1"),
        count(summary, "moved_from_n2"),
    );
    assert!(from_n1 > 0 && from_n2 > 0, "{summary}");
    assert!(count(summary, "resumes") >= from_n1 + from_n2, "{summary}");
    let elapsed: f64 = field(summary, "elapsed")
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("an elapsed time");
    assert!(elapsed < 30.0, "{summary}");
    assert!(stdout.contains("n1 SIGKILLed: its"), "{stdout}");
    assert!(stdout.contains("n2 drained (exit status: 0)"), "{stdout}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "{stdout}");
}

#[test]
fn fleet_demo_without_redis_server_says_how_to_install_it() {
    let empty = std::env::temp_dir().join(format!("vitals-empty-path-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("an empty directory");
    vitals()
        .args(["demo", "--fleet"])
        .env("PATH", &empty)
        .assert()
        .code(2)
        .stderr(contains("redis-server is not installed").and(contains("scripts/setup")));
    let _ = std::fs::remove_dir(&empty);
}

#[test]
fn fleet_flags_are_refused_where_they_make_no_sense() {
    vitals()
        .args(["demo", "--store", "redis://127.0.0.1:6379/"])
        .assert()
        .code(2)
        .stderr(contains("--fleet"));
    vitals()
        .args(["demo", "--fleet", "--cuts", "1"])
        .assert()
        .code(2)
        .stderr(contains("cannot be used with"));
    vitals()
        .args(["demo", "--fleet", "--clients", "301"])
        .assert()
        .code(2)
        .stderr(contains("--clients must be between 1 and 300 with --fleet"));
}
