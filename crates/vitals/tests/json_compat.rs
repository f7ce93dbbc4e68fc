//! The JSON heartbeat compatibility mode, against raw sockets playing the classic peers.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::*;
use vitals::{Client, ClientEvent, Codec, Server, ServerEvent};

/// A classic client writes `{"ping":N}` objects back to back (no delimiter) and gets `{"pong":N+1}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_classic_json_pings() {
    let mut cfg = server_config();
    cfg.codec = Codec::Json;
    let mut server = Server::bind(cfg).unwrap();
    let addr = server.local_addr();
    let answers = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Two pings in one write, then a third split across writes.
        s.write_all(br#"{"ping":10}{"ping":11}"#).unwrap();
        s.write_all(br#"{"pi"#).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(br#"ng":12}"#).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains(r#"{"pong":13}"#) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "server closed");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    })
    .await
    .unwrap();
    for n in [11, 12, 13] {
        assert!(answers.contains(&format!(r#"{{"pong":{n}}}"#)), "{answers}");
    }
    server_event(&mut server, Duration::from_secs(5), |e| {
        matches!(e, ServerEvent::Connected { session: None, .. }).then_some(())
    })
    .await;
}

/// vitals as the client of a classic server that only answers `{"ping":N}` with `{"pong":N+1}`: the
/// client's pings keep the connection alive well past the timeout, and RTT samples arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keeps_a_classic_json_server_alive() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let classic = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut reader = BufReader::new(s);
        let mut pongs = 0;
        // The client's pings are single objects; read byte-wise up to each closing brace.
        let mut obj = Vec::new();
        while pongs < 10 {
            let mut byte = Vec::new();
            if reader.read_until(b'}', &mut byte).unwrap_or(0) == 0 {
                break;
            }
            obj.extend_from_slice(&byte);
            let text = String::from_utf8_lossy(&obj).trim().to_string();
            obj.clear();
            let n: u64 = text
                .trim_start_matches(r#"{"ping":"#)
                .trim_end_matches('}')
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a ping: {text}"));
            w.write_all(format!(r#"{{"pong":{}}}"#, n + 1).as_bytes())
                .unwrap();
            pongs += 1;
        }
        pongs
    });
    let mut cfg = vitals::ClientConfig::new(addr).with_timing(INTERVAL, TIMEOUT);
    cfg.codec = Codec::Json;
    cfg.reconnect = false;
    let mut client = Client::connect(cfg);
    for _ in 0..5 {
        client_event(&mut client, Duration::from_secs(5), |e| match e {
            ClientEvent::Rtt(_) => Some(()),
            ClientEvent::Dead { reason } => panic!("convicted a live classic server: {reason:?}"),
            _ => None,
        })
        .await;
    }
    // Five pongs at one per interval: ~500 ms, longer than the 400 ms timeout, without conviction.
    drop(client);
    assert!(classic.join().unwrap() >= 5);
}
