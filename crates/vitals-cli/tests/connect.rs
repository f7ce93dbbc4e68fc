//! `vitals connect`: stdin lines become messages, echoes come back on stdout, events go to stderr,
//! a broken connection is resumed with nothing lost or doubled, and stdin EOF exits 0.

mod serve_util;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use serve_util::*;

fn connect(addr: &str) -> Command {
    let mut c = Command::new(bin());
    c.args(["connect", addr, "--interval", "200ms", "--timeout", "1s"])
        .env("RUST_LOG", "warn")
        .timeout(Duration::from_secs(30));
    c
}

#[test]
fn lines_go_out_and_echoes_come_back_then_eof_exits_0() {
    let d = Daemon::start(&["--echo", "--interval", "200ms", "--timeout", "1s"]);
    connect(&d.addr.to_string())
        .write_stdin("one\ntwo\nthree\n")
        .assert()
        .code(0)
        .stdout("one\ntwo\nthree\n")
        .stderr(predicate::str::contains(
            "vitals connect: connected: session ",
        ));
}

#[test]
fn json_codec_sends_objects_and_skips_what_is_not_one() {
    let d = Daemon::start(&[
        "--echo",
        "--codec",
        "json",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
    ]);
    connect(&d.addr.to_string())
        .args(["--codec", "json"])
        .write_stdin("{\"a\":1}\nnot json\n{\"b\":[2]}\n")
        .assert()
        .code(0)
        .stdout("{\"a\":1}\n{\"b\":[2]}\n")
        .stderr(predicate::str::contains("line not sent"));
}

#[test]
fn bad_timing_exits_2() {
    Command::new(bin())
        .args([
            "connect",
            "127.0.0.1:1",
            "--interval",
            "200ms",
            "--timeout",
            "100ms",
        ])
        .timeout(Duration::from_secs(30))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--timeout (100ms) must be greater than --interval (200ms)",
        ));
}

#[test]
fn nothing_to_connect_to_exits_1_after_the_eof_timeout() {
    let addr = closed_port().to_string();
    connect(&addr)
        .args(["--eof-timeout", "1s"])
        .write_stdin("lost\n")
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains("reconnecting in"))
        .stderr(predicate::str::contains(
            "not everything acknowledged 1s after stdin ended",
        ));
}

/// What one `connect` run across max-age cuts produced.
struct CutRun {
    /// Echoes printed on stdout.
    out: Vec<String>,
    /// Event lines on stderr.
    err: Vec<String>,
    /// The server's /status.json afterwards.
    status: serde_json::Value,
}

/// Sends `n` lines, one every 50 ms, through `vitals connect` to an echoing server that ages
/// connections out after ~1 s (±10 %), so the lines cross several cuts and resumes.
fn run_across_max_age_cuts(n: usize) -> CutRun {
    let d = Daemon::start(&[
        "--echo",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--max-connection-age",
        "1s",
        "--http",
        "127.0.0.1:0",
    ]);
    let mut child = connect_command(d.addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut guard = Guard(child);
    let err_lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let out_lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    for i in 0..n {
        writeln!(stdin, "message {i}").unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let status = wait_within(&mut guard.0, Duration::from_secs(20)).expect("connect exits");
    let out = out_lines.join().unwrap();
    let err = err_lines.join().unwrap();
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        err.join("\n")
    );
    CutRun {
        out,
        err,
        status: d.status(),
    }
}

#[test]
fn connections_cut_by_max_age_are_resumed_in_order_without_duplicates() {
    let n = 60;
    let run = run_across_max_age_cuts(n);
    let (s, err) = (&run.status, run.err.join("\n"));
    // Client → server: every line arrived once (the server counts 60 messages, and echoes below
    // come back distinct and in order).
    assert_eq!(s["messages"]["received"], n, "{s}");
    // Each was echoed or, in a window of a resume, refused by the handle (counted, logged).
    let refused = s["messages"]["refused"].as_u64().unwrap_or(0);
    assert_eq!(
        s["messages"]["echoed"].as_u64().map(|e| e + refused),
        Some(n as u64),
        "{s}"
    );
    let cuts = s["disconnects"]["max_age"].as_u64().unwrap_or(0);
    assert!(cuts >= 1, "no max-age cut happened: {s}");
    assert!(s["connections"]["resumed"].as_u64() >= Some(1), "{s}");
    assert!(err.contains("connection lost: max_age"), "{err}");
    assert!(err.contains("resumed session"), "{err}");
    // Server → client: in order, no duplicates. An echo queued to a connection that the server
    // tears down before its loop runs the send is dropped by the library (see the ignored strict
    // test below), so at most one echo per cut may be missing.
    let indices: Vec<usize> = run
        .out
        .iter()
        .map(|l| {
            l.strip_prefix("message ")
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {l:?}"))
        })
        .collect();
    assert!(
        indices.windows(2).all(|w| w[0] < w[1]),
        "echoes out of order or doubled: {indices:?}"
    );
    let missing = n - indices.len();
    assert!(
        missing as u64 <= cuts + refused,
        "{missing} echoes missing with {cuts} cuts: {indices:?}\n{err}"
    );
}

/// The full guarantee, both ways: every line and every echo arrives once, in order, across cuts (a
/// send racing a teardown follows its session into the store).
#[test]
fn connections_cut_by_max_age_lose_no_echo() {
    let n = 60;
    let run = run_across_max_age_cuts(n);
    let expected: Vec<String> = (0..n).map(|i| format!("message {i}")).collect();
    assert_eq!(run.out, expected, "stderr:\n{}", run.err.join("\n"));
}
