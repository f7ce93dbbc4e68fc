//! Connection limit, graceful drain, maximum connection age.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;
use vitals::vitals_proto::decode::{FrameDecoder, Limits};
use vitals::vitals_proto::{CloseCode, Frame};
use vitals::{Client, ClientEvent, DisconnectReason, Server, ServerEvent};

/// Reads frames from a raw socket until a CLOSE arrives; returns its code.
fn read_close(stream: &mut std::net::TcpStream) -> CloseCode {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut buf = [0u8; 4096];
    loop {
        while let Some(frame) = decoder.next_frame().unwrap() {
            if let Frame::Close { code, .. } = frame {
                return code;
            }
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed without a CLOSE frame");
        decoder.push(&buf[..n]).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_limit_a_typed_close_not_a_silent_drop() {
    let mut cfg = server_config();
    cfg.max_connections = 2;
    let mut server = Server::bind(cfg).unwrap();
    // Two well-behaved clients fill the server.
    let a = Client::connect(client_config(&server));
    let _b = Client::connect(client_config(&server));
    for _ in 0..2 {
        server_event(&mut server, Duration::from_secs(5), |e| {
            matches!(e, ServerEvent::Connected { .. }).then_some(())
        })
        .await;
    }
    assert_eq!(server.handle().connections(), 2);
    let mut third = raw_peer(&server, &hello_bytes());
    let code = tokio::task::spawn_blocking(move || read_close(&mut third))
        .await
        .unwrap();
    assert_eq!(code, CloseCode::ServerFull);
    assert_eq!(server.handle().connections(), 2);

    // A vitals client refused this way backs off and retries; it gets in once a slot frees.
    let mut client = Client::connect(client_config(&server));
    client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Dead { reason } => {
            assert_eq!(*reason, DisconnectReason::ServerFull);
            Some(())
        }
        ClientEvent::Connected { .. } => panic!("admitted beyond the limit"),
        _ => None,
    })
    .await;
    a.close().await;
    client_event(&mut client, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sends_close_and_drains_queued_messages() {
    let mut server = Server::bind(server_config()).unwrap();
    let mut client = Client::connect(client_config(&server));
    let conn = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    let handle = server.handle();
    for i in 0..200u32 {
        handle.send(conn, i.to_be_bytes().to_vec()).unwrap();
    }
    let mut events = server.shutdown(Duration::from_secs(2)).await;
    let mut got = Vec::new();
    let reason = client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Message(p) => {
            got.push(u32::from_be_bytes(p[..4].try_into().unwrap()));
            None
        }
        ClientEvent::Dead { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, DisconnectReason::Shutdown);
    assert_eq!(
        got,
        (0..200).collect::<Vec<_>>(),
        "queued messages drained before CLOSE"
    );
    let mut closed = None;
    while let Some(e) = events.recv().await {
        if let ServerEvent::Closed { reason, .. } = e {
            closed = Some(reason);
        }
    }
    assert_eq!(closed, Some(DisconnectReason::Shutdown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_recycled_at_their_maximum_age_and_resume() {
    let mut cfg = server_config();
    let age = Duration::from_millis(300);
    cfg.max_connection_age = Some(age);
    let mut server = Server::bind(cfg).unwrap();
    let mut client = Client::connect(client_config(&server));
    let started = tokio::time::Instant::now();
    client_event(&mut client, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    let (reason, at) = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed { reason, .. } => Some((reason.clone(), started.elapsed())),
        _ => None,
    })
    .await;
    assert_eq!(reason, DisconnectReason::MaxAge);
    assert!(
        at >= age.mul_f64(0.9) - Duration::from_millis(5),
        "closed at {at:?}"
    );
    assert!(
        at <= age.mul_f64(1.1) + Duration::from_millis(200),
        "closed at {at:?}"
    );
    client_event(&mut client, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Resumed { .. }).then_some(())
    })
    .await;
}
