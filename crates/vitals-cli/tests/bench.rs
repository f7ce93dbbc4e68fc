//! `vitals bench` end to end: a small self-contained run (text and JSON), a run against a server in
//! another process with `--server-pid` (this test process hosts it) from two source addresses, and the
//! refusals: bad timing, zero connections, more connections than the open-file limit allows,
//! non-loopback servers.

mod serve_util;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use serde_json::Value;
use serve_util::skip_unless_ci;

/// The binary, with a bound on how long it may run.
fn vitals() -> Command {
    let mut cmd = Command::cargo_bin("vitals").expect("the vitals binary is built");
    cmd.timeout(Duration::from_secs(60));
    cmd
}

/// Runs `vitals bench ARGS --json`, asserts exit 0, returns the parsed object.
fn bench_json(args: &[&str]) -> Value {
    let out = vitals()
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("bench ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v:#}"))
}

#[test]
fn small_in_process_run_prints_the_figures() {
    let out = vitals()
        .args([
            "bench",
            "-n",
            "50",
            "--duration",
            "2s",
            "--interval",
            "200ms",
            "--timeout",
            "1s",
        ])
        .output()
        .expect("bench ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for needle in [
        "connect:    50 of 50",
        "connections/s",
        "rtt:        p50",
        "p90",
        "p99",
        "max",
        "heartbeats:",
        "a heartbeat is one PING answered by a PONG",
        "lost connections: 0",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in:\n{stdout}");
    }
}

#[test]
fn json_output_has_the_fields() {
    let v = bench_json(&[
        "-n",
        "50",
        "--duration",
        "2s",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
    ]);
    assert_eq!(v["connections"], 50);
    assert_eq!(v["connections_requested"], 50);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["in_process_server"], true);
    assert!(num(&v, "connect_rate_per_s") > 0.0);
    assert!(num(&v, "duration_s") >= 2.0);
    let rtt = &v["rtt_us"];
    let (p50, p90, p99, max) = (
        num(rtt, "p50"),
        num(rtt, "p90"),
        num(rtt, "p99"),
        num(rtt, "max"),
    );
    assert!(p50 > 0.0 && p50 <= p90 && p90 <= p99 && p99 <= max, "{rtt}");
    // 50 connections at 200 ms make about 250 exchanges a second; over 2 s at least half of that.
    let heartbeats = num(&v, "heartbeats");
    assert!(heartbeats >= 250.0, "{v:#}");
    assert_eq!(
        heartbeats,
        num(&v, "client_pings_answered") + num(&v, "server_pings_answered")
    );
    assert_eq!(num(rtt, "samples"), num(&v, "client_pings_answered"));
    assert!(num(&v, "heartbeats_per_s") > 100.0);
    assert!(v["heartbeat_definition"].as_str().is_some());
    // Without --server-pid the server figures are null, not made up.
    assert!(v["server_rss_per_connection_bytes"].is_null());
    assert!(v["server_cpu_per_heartbeat_us"].is_null());
}

#[test]
fn external_server_with_its_pid_reports_rss_and_cpu() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let mut cfg = vitals::ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        loops: 1,
        ..vitals::ServerConfig::default()
    }
    .with_timing(Duration::from_millis(200), Duration::from_secs(1));
    cfg.proto.policy.min_interval = Duration::from_millis(200);
    cfg.proto.policy.min_timeout = Duration::from_secs(1);
    let mut server = vitals::Server::bind(cfg).expect("server");
    let addr = server.local_addr().to_string();
    // Which source addresses the server saw.
    let peers = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = Arc::clone(&peers);
    rt.spawn(async move {
        while let Some(event) = server.next_event().await {
            if let vitals::ServerEvent::Connected { peer, .. } = event {
                seen.lock().expect("not poisoned").insert(peer.ip());
            }
        }
    });
    let pid = std::process::id().to_string();
    let v = bench_json(&[
        "-n",
        "100",
        "--duration",
        "2s",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--server",
        &addr,
        "--server-pid",
        &pid,
        "--sources",
        "2",
    ]);
    let expected: BTreeSet<IpAddr> = ["127.0.0.1", "127.0.0.2"]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect();
    assert_eq!(*peers.lock().expect("not poisoned"), expected);
    assert_eq!(
        v["source_addresses"],
        serde_json::json!(["127.0.0.1", "127.0.0.2"])
    );
    assert_eq!(v["connections"], 100);
    assert_eq!(v["in_process_server"], false);
    assert_eq!(v["granted_interval_ms"], 200.0);
    assert!(num(&v, "server_rss_before_bytes") > 0.0);
    assert!(num(&v, "server_rss_after_bytes") > 0.0);
    assert!(v["server_rss_per_connection_bytes"].is_number());
    assert!(num(&v, "server_cpu_seconds") >= 0.0);
    assert!(num(&v, "server_cpu_per_heartbeat_us") >= 0.0);
}

#[test]
fn bad_timing_and_zero_connections_exit_2_saying_what_to_change() {
    vitals()
        .args(["bench", "--interval", "1s", "--timeout", "1s"])
        .assert()
        .code(2)
        .stderr(contains(
            "--timeout (1s) must be greater than --interval (1s)",
        ));
    vitals()
        .args(["bench", "-n", "0"])
        .assert()
        .code(2)
        .stderr(contains("--connections must be at least 1"));
    vitals()
        .args(["bench", "--duration", "0s"])
        .assert()
        .code(2)
        .stderr(contains("--duration must be greater than zero"));
}

#[test]
fn more_connections_than_open_files_is_a_clear_error() {
    // Far above any open-file limit.
    vitals()
        .args(["bench", "-n", "4000000000", "--duration", "1s"])
        .assert()
        .code(2)
        .stderr(
            contains("open files")
                .and(contains("use --connections"))
                .and(contains("or fewer")),
        );
}

#[test]
fn open_file_limit_is_read_from_the_process() {
    // With the limit lowered to 200 for the child (prlimit, util-linux), 100 in-process connections need
    // about 264 descriptors: refused, and the message names the limit.
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        skip_unless_ci(
            "open_file_limit_is_read_from_the_process",
            "no prlimit on PATH",
            "install Debian's util-linux",
        );
        return;
    }
    let bin = assert_cmd::cargo::cargo_bin("vitals");
    let mut cmd = Command::new("prlimit");
    cmd.timeout(Duration::from_secs(30));
    cmd.arg("--nofile=200:200")
        .arg(bin)
        .args(["bench", "-n", "100", "--duration", "1s"])
        .assert()
        .code(2)
        .stderr(contains("may open at most 200").and(contains("--connections 68 or fewer")));
}

#[test]
fn only_loopback_servers_and_pid_needs_server() {
    vitals()
        .args(["bench", "--server", "192.0.2.1:7878"])
        .assert()
        .code(2)
        .stderr(contains("not a loopback address"));
    vitals()
        .args(["bench", "--server-pid", "1"])
        .assert()
        .code(2)
        .stderr(contains("--server-pid needs --server"));
}

#[test]
fn spread_over_processes_with_a_frozen_share_that_the_server_convicts() {
    // 40 connections over 3 child processes (each its own source address), one holding 25 %: after
    // the window it is frozen (SIGSTOP) until the server has convicted its 10 connections, and none
    // of the other 30 may be lost meanwhile.
    let d = serve_util::Daemon::start(&[
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--loops",
        "1",
        "--http",
        "127.0.0.1:0",
    ]);
    let http = d.http.expect("status page").to_string();
    let v = bench_json(&[
        "-n",
        "40",
        "--processes",
        "3",
        "--freeze-percent",
        "25",
        "--server",
        &d.addr.to_string(),
        "--server-pid",
        &d.child.id().to_string(),
        "--server-status",
        &http,
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--duration",
        "1s",
    ]);
    assert_eq!(v["connections"], 40, "{v:#}");
    assert_eq!(v["processes"], 3);
    assert_eq!(v["source_addresses"], 3);
    assert_eq!(v["lost"], 0);
    assert!(num(&v, "heartbeats") > 0.0);
    assert!(v["kernel_per_connection_bytes_both_ends"].is_number());
    assert!(v["server_cpu_per_connection_second_ns"].is_number());
    let f = &v["freeze"];
    assert_eq!(f["frozen"], 10, "{f:#}");
    assert_eq!(f["convicted"], 10, "{f:#}");
    assert_eq!(f["extra_convictions"], 0, "{f:#}");
    assert_eq!(f["live_lost"], 0, "{f:#}");
    let ended: u64 = f["frozen_ended"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(ended, 10, "{f:#}");
    let s = d.status();
    assert_eq!(s["convictions"], 10, "{s}");
}

#[test]
fn spread_flags_are_checked() {
    vitals()
        .args(["bench", "--processes", "2", "-n", "10"])
        .assert()
        .code(2)
        .stderr(contains("--processes needs --server"));
    vitals()
        .args([
            "bench",
            "--server",
            "127.0.0.1:9",
            "--processes",
            "1",
            "--freeze-percent",
            "1",
        ])
        .assert()
        .code(2)
        .stderr(contains("--freeze-percent needs --processes 2 or more"));
}
