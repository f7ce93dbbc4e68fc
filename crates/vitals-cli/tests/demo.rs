//! `vitals demo` end to end: it runs to completion on loopback with fast timing, every check holds
//! (puppet convicted, every client resumed, nothing lost or duplicated), and bad flags are refused with
//! exit code 2 and a message saying what to change.

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

/// A value `key=VALUE` from the summary line.
fn field<'a>(summary: &'a str, key: &str) -> Option<&'a str> {
    summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn demo_runs_to_completion_and_loses_nothing() {
    let out = vitals()
        .args([
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
        ])
        .output()
        .expect("demo ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("a summary line");
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
