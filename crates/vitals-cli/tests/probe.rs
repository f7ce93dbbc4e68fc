//! `vitals probe`: one line per pong and a summary; exit 0 when all answered, 1 when some were
//! not, 2 on error. Against the real server (both codecs) and against hand-made peers that lose
//! pongs or speak the wrong protocol.

mod serve_util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use serve_util::*;
use vitals_proto::frame::{self, Frame, FrameType, Welcome};
use vitals_proto::{FrameDecoder, Limits, ResumeToken, SessionId};

fn probe(addr: &str) -> Command {
    let mut c = Command::new(bin());
    c.args(["probe", addr]).timeout(Duration::from_secs(30));
    c
}

#[test]
fn live_binary_server_answers_every_ping() {
    let d = Daemon::start(&["--interval", "200ms", "--timeout", "1s"]);
    let out = probe(&d.addr.to_string())
        .args(["--count", "3", "--interval", "200ms"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "3 pings sent, 3 pongs received, 0.0% loss",
        ))
        .stdout(predicate::str::contains("rtt min/avg/max = "))
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let pongs: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pong from"))
        .collect();
    assert_eq!(pongs.len(), 3, "{text}");
    for (i, line) in pongs.iter().enumerate() {
        assert!(line.contains(&format!("seq={} rtt=", i + 1)), "{line}");
        assert!(line.ends_with(" ms"), "{line}");
    }
    assert!(
        text.starts_with(&format!(
            "PROBE {} (binary): granted interval 200ms",
            d.addr
        )),
        "{text}"
    );
}

#[test]
fn the_granted_interval_is_respected() {
    // The server grants no less than 400ms; a probe asking for 100ms must slow down, or the
    // server would close it for pinging too often (3 strikes) and the probe would fail.
    let d = Daemon::start(&["--interval", "400ms", "--timeout", "2s"]);
    let start = Instant::now();
    probe(&d.addr.to_string())
        .args(["--count", "5", "--interval", "100ms", "--timeout", "1s"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("granted interval 400ms"))
        .stdout(predicate::str::contains("5 pings sent, 5 pongs received"));
    assert!(
        start.elapsed() >= Duration::from_millis(1600),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn live_json_server_answers_every_ping() {
    let d = Daemon::start(&["--codec", "json", "--interval", "200ms", "--timeout", "1s"]);
    probe(&d.addr.to_string())
        .args(["--codec", "json", "--count", "3", "--interval", "200ms"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("(json): interval 200ms"))
        .stdout(predicate::str::contains("pong from").count(3))
        .stdout(predicate::str::contains(
            "3 pings sent, 3 pongs received, 0.0% loss",
        ));
}

#[test]
fn closed_port_exits_2() {
    let addr = closed_port().to_string();
    probe(&addr)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "cannot connect to {addr}"
        )))
        .stderr(predicate::str::contains("refused"));
}

#[test]
fn bad_arguments_exit_2() {
    probe("127.0.0.1:1")
        .args(["--count", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--count must be at least 1"));
    probe("no-port-here")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot resolve `no-port-here`"));
    probe("127.0.0.1:1")
        .args(["--interval", "1s", "--timeout", "1s"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--timeout (1s) must be greater than --interval (1s)",
        ));
}

/// A vitals peer by hand: WELCOME with a 100ms grant, then PONG only for the nonces `answer` allows.
fn lossy_server(answer: fn(u32) -> bool) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut dec = FrameDecoder::new(Limits::default());
        let mut buf = [0u8; 4096];
        loop {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            dec.push(&buf[..n]).unwrap();
            while let Ok(Some(f)) = dec.next_frame() {
                let mut out = Vec::new();
                match f {
                    Frame::Hello(_) => frame::encode_welcome(
                        &mut out,
                        &Welcome {
                            version: frame::VERSION,
                            resumed: false,
                            interval_ms: 100,
                            timeout_ms: 1000,
                            session_id: SessionId(1),
                            token: ResumeToken::from_bytes([1; 16]),
                            ack: 0,
                        },
                    ),
                    Frame::Ping {
                        nonce,
                        timestamp_us,
                    } if answer(nonce) => {
                        frame::encode_ping(&mut out, FrameType::Pong, nonce, timestamp_us)
                    }
                    Frame::Close { .. } => return,
                    _ => {}
                }
                let _ = s.write_all(&out);
            }
        }
    });
    (addr, t)
}

#[test]
fn lost_pongs_exit_1_with_the_loss() {
    let (addr, t) = lossy_server(|nonce| nonce == 0);
    probe(&addr.to_string())
        .args(["--count", "3", "--interval", "100ms"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("seq=1 rtt="))
        .stdout(predicate::str::contains("seq=2").not())
        .stdout(predicate::str::contains(
            "3 pings sent, 1 pongs received, 66.7% loss",
        ));
    t.join().unwrap();
}

#[test]
fn a_server_that_speaks_something_else_exits_2() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _): (TcpStream, _) = l.accept().unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        std::thread::sleep(Duration::from_millis(500));
    });
    probe(&addr.to_string())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("protocol error in the handshake"));
    t.join().unwrap();
}

#[test]
fn a_silent_json_peer_means_100_percent_loss_and_exit_1() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1024];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    probe(&addr.to_string())
        .args(["--codec", "json", "--count", "2", "--interval", "100ms"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "2 pings sent, 0 pongs received, 100.0% loss",
        ));
    t.join().unwrap();
}
