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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_closed_as_ping_abuse() {
    let mut server = Server::bind(server_config()).unwrap();
    let mut peer = raw_peer(&server, &hello_bytes());
    let conn = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    let flood = std::thread::spawn(move || {
        for nonce in 0..2000u32 {
            let mut ping = Vec::new();
            frame::encode_ping(&mut ping, FrameType::Ping, nonce, u64::from(nonce));
            if peer.write_all(&ping).is_err() {
                return true; // the server closed us
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    });
    let reason = closed_reason(&mut server, Some(conn)).await;
    assert_eq!(reason, DisconnectReason::PingAbuse);
    assert!(flood.join().unwrap(), "the flooder was never cut off");
    assert_still_serving(&mut server).await;
}
