//! Hostile peers over loopback: each is closed with its typed reason, and the server keeps serving.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use vitals::vitals_proto::frame::{self, FrameType};
use vitals::{Client, ClientEvent, ConnId, DisconnectReason, Server, ServerEvent};

async fn closed_reason(server: &mut Server, conn: Option<ConnId>) -> DisconnectReason {
    server_event(server, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed {
            conn: c, reason, ..
        } if conn.is_none_or(|id| id == *c) => Some(reason.clone()),
        _ => None,
    })
    .await
}

async fn assert_still_serving(server: &mut Server) {
    let mut client = Client::connect(client_config(server));
    client_event(&mut client, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    client.send(b"ok?".to_vec()).await.unwrap();
    let got = server_event(server, Duration::from_secs(5), |e| match e {
        ServerEvent::Message { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"ok?");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_a_protocol_error() {
    let mut server = Server::bind(server_config()).unwrap();
    let _peer = raw_peer(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let reason = closed_reason(&mut server, None).await;
    assert!(
        matches!(reason, DisconnectReason::ProtocolError(_)),
        "{reason:?}"
    );
    assert_still_serving(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_length_prefix_is_refused_before_buffering() {
    let mut server = Server::bind(server_config()).unwrap();
    let mut bytes = hello_bytes();
    // A DATA header announcing a 4 GiB payload.
    bytes.push(FrameType::Data as u8);
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let _peer = raw_peer(&server, &bytes);
    let reason = closed_reason(&mut server, None).await;
    match &reason {
        DisconnectReason::ProtocolError(detail) => {
            assert!(detail.contains("LimitExceeded"), "{detail}")
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    assert_still_serving(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_frame_then_silence_is_convicted() {
    let mut server = Server::bind(server_config()).unwrap();
    let hello = hello_bytes();
    let _peer = raw_peer(&server, &hello[..hello.len() / 2]);
    let started = tokio::time::Instant::now();
    let reason = closed_reason(&mut server, None).await;
    assert_eq!(reason, DisconnectReason::SilenceTimeout);
    assert!(started.elapsed() >= TIMEOUT - Duration::from_millis(20));
    assert_still_serving(&mut server).await;
}

/// Two flooders at 100 pings/s (10 per granted interval), one with honest timestamps and one
/// whose timestamps are forged a full interval apart, are both closed as ping abuse within a
/// bounded time (burst and strikes take ~80 ms at this rate; allowed: 2 s), while a client whose
/// pings bunch (its owed pings in one write after a pause under the timeout) and a vitals client
/// heartbeating beside them are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_closed_as_ping_abuse() {
    let mut server = Server::bind(server_config()).unwrap();
    let mut live = Client::connect(client_config(&server));
    let live_conn = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    let mut bunched = raw_peer(&server, &hello_bytes());
    let bunched_conn = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    let bunching = std::thread::spawn(move || {
        let ping = |n: u32| {
            let mut v = Vec::new();
            frame::encode_ping(&mut v, FrameType::Ping, n, u64::from(n) * 100_000);
            v
        };
        for round in 0..4u32 {
            // On time for a while, then silent for 3/4 of the timeout and the owed pings at once.
            for n in 0..5 {
                bunched.write_all(&ping(round * 100 + n)).unwrap();
                std::thread::sleep(INTERVAL);
            }
            std::thread::sleep(TIMEOUT * 3 / 4 - INTERVAL);
            let owed = (TIMEOUT.as_millis() / INTERVAL.as_millis()) as u32;
            let burst: Vec<u8> = (0..owed).flat_map(|k| ping(round * 100 + 50 + k)).collect();
            bunched.write_all(&burst).unwrap();
        }
        bunched
    });
    let started = tokio::time::Instant::now();
    let mut flooders = Vec::new();
    for forged in [false, true] {
        let mut peer = raw_peer(&server, &hello_bytes());
        let conn = server_event(&mut server, Duration::from_secs(5), |e| match e {
            ServerEvent::Connected { conn, .. } => Some(*conn),
            _ => None,
        })
        .await;
        let flood = std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            for nonce in 0..500u32 {
                let ts = if forged {
                    u64::from(nonce) * INTERVAL.as_micros() as u64
                } else {
                    t0.elapsed().as_micros() as u64
                };
                let mut ping = Vec::new();
                frame::encode_ping(&mut ping, FrameType::Ping, nonce, ts);
                if peer.write_all(&ping).is_err() {
                    return Some(t0.elapsed()); // the server closed us
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        });
        flooders.push((conn, flood));
    }
    let mut abusers = Vec::new();
    while abusers.len() < flooders.len() {
        let (conn, reason) = server_event(&mut server, Duration::from_secs(5), |e| match e {
            ServerEvent::Closed { conn, reason, .. } => Some((*conn, reason.clone())),
            _ => None,
        })
        .await;
        assert!(
            conn != live_conn && conn != bunched_conn,
            "a compliant peer was closed: {reason:?}"
        );
        assert_eq!(reason, DisconnectReason::PingAbuse);
        abusers.push(conn);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for (conn, flood) in flooders {
        assert!(abusers.contains(&conn));
        let cut = flood.join().unwrap();
        assert!(cut.is_some(), "a flooder was never cut off");
    }
    let bunched = tokio::task::spawn_blocking(move || bunching.join().unwrap())
        .await
        .unwrap();
    // The bunching peer and the live client are still there.
    assert_eq!(server.handle().connections(), 2);
    drop(bunched);
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(1), live.next_event()).await
    {
        assert!(
            !matches!(
                e,
                ClientEvent::Dead { .. } | ClientEvent::Reconnecting { .. }
            ),
            "{e:?}"
        );
    }
    live.close().await;
    assert_still_serving(&mut server).await;
}
