//! `vitals serve` as a process: configuration errors (exit 2, a message naming the fix), layering
//! of flags > environment > file, graceful drain on SIGTERM/SIGINT (exit 0), the HTTP endpoints.

mod serve_util;

use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use serve_util::*;

fn serve() -> Command {
    let mut c = Command::new(bin());
    c.arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .timeout(Duration::from_secs(20));
    c
}

#[test]
fn timeout_not_above_interval_exits_2_naming_the_fix() {
    serve()
        .args(["--interval", "2s", "--timeout", "1s"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "timeout (1s, from --timeout) must be greater than interval (2s, from --interval)",
        ))
        .stderr(predicate::str::contains("e.g. --timeout 6s"));
}

#[test]
fn zero_sizes_exit_2_naming_the_setting_and_its_origin() {
    serve()
        .env("VITALS_MAX_CONNECTIONS", "0")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "max_connections (0, from $VITALS_MAX_CONNECTIONS) must be at least 1",
        ));
    serve()
        .args(["--loops", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "loops (0, from --loops) must be at least 1",
        ));
    serve()
        .args(["--max-connection-age", "0s"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`off` to never age connections"));
}

#[test]
fn unparsable_values_exit_2() {
    serve()
        .args(["--interval", "soon"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a duration"));
    serve()
        .env("VITALS_CODEC", "xml")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "$VITALS_CODEC: unknown codec `xml`: use `binary` or `json`",
        ));
}

#[test]
fn a_busy_port_exits_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // SO_REUSEPORT on a listener without it still conflicts.
    Command::new(bin())
        .args(["serve", "--listen", &addr])
        .timeout(Duration::from_secs(20))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("cannot listen on {addr}")));
}

#[test]
fn flags_beat_env_beat_file_beat_defaults() {
    let file = scratch("vitals.toml");
    std::fs::write(
        &file,
        "interval = \"3s\"\ntimeout = \"9s\"\ncodec = \"json\"\nloops = 1\n",
    )
    .unwrap();
    let file = file.to_string_lossy().to_string();
    let mut d = Daemon::start_with_env(
        &["--config", &file, "--interval", "200ms"],
        &[("VITALS_TIMEOUT", "6s")],
    );
    // interval from the flag, timeout from the environment, codec and loops from the file.
    assert!(
        d.banner
            .contains("(codec json, interval 200ms, timeout 6s, loops 1)"),
        "{}",
        d.banner
    );
    let status = d.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn sigterm_drains_connections_and_exits_0() {
    let mut d = Daemon::start(&[
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--http",
        "127.0.0.1:0",
    ]);
    // A connected client that stays (stdin kept open).
    let client = connect_command(d.addr).spawn().unwrap();
    let _client = Guard(client);
    let s = d.wait_status(Duration::from_secs(10), |s| {
        s["connections"]["established"] == 1
    });
    assert_eq!(s["connections"]["established"], 1, "{s}");
    let status = d.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    let err = d.stderr();
    assert!(err.contains("SIGTERM: draining 1 connection(s)"), "{err}");
    assert!(err.contains("stopped; 1 session(s)"), "{err}");
}

#[test]
fn sigint_exits_0_too() {
    let mut d = Daemon::start(&[]);
    let status = d.signal_and_wait("INT", Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    assert!(d.stderr().contains("SIGINT: draining"), "{}", d.stderr());
}

#[test]
fn http_endpoints_answer_and_refuse_what_they_should() {
    let d = Daemon::start(&[
        "--http",
        "127.0.0.1:0",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
    ]);
    let http = d.http.expect("status page address in the banner");
    // A probe makes the server count a connection, pings and RTT samples.
    std::process::Command::new(bin())
        .args([
            "probe",
            &d.addr.to_string(),
            "--count",
            "2",
            "--interval",
            "200ms",
        ])
        .output()
        .unwrap();
    let (code, page) = d.get("/");
    assert_eq!(code, 200);
    assert!(
        page.contains("<svg id=\"rtt-hist\""),
        "page is the status page"
    );
    let s = d.wait_status(Duration::from_secs(5), |s| s["connections"]["total"] == 1);
    assert_eq!(s["connections"]["total"], 1, "{s}");
    assert_eq!(s["server"]["codec"], "binary");
    assert_eq!(s["server"]["interval_ms"], 200);
    assert!(s["series"].as_array().is_some_and(|a| !a.is_empty()), "{s}");
    let (code, metrics) = d.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("vitals_connections_accepted_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("vitals_connections_open"), "{metrics}");
    // Every series the exporter prints has its help text (vitals::metrics::describe).
    let families: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
        })
        .collect();
    assert!(families.contains(&"vitals_connections_accepted_total"));
    for name in families {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{metrics}"
        );
    }
    assert_eq!(d.get("/nope").0, 404);
    assert_eq!(
        http_request(http, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
        405
    );
    assert_eq!(http_request(http, "garbage\r\n\r\n").0, 400);
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(http_request(http, &huge).0, 431);
    let (code, body) = http_request(http, "HEAD /status.json HTTP/1.1\r\n\r\n");
    assert_eq!((code, body.as_str()), (200, ""));
}
