//! Loopback tests of the server and client: messages both ways, RTT, silence conviction.

mod common;

use std::time::Duration;

use common::*;
use vitals::{Client, ClientEvent, DisconnectReason, Server, ServerEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_both_ways_and_rtt_samples_arrive() {
    let mut server = Server::bind(server_config()).unwrap();
    let mut client = Client::connect(client_config(&server));
    let (conn, session) = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected {
            conn,
            session,
            resumed: false,
            ..
        } => Some((*conn, *session)),
        _ => None,
    })
    .await;
    assert!(session.is_some());
    client_event(&mut client, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;

    client.send(b"hello server".to_vec()).await.unwrap();
    let got = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Message { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"hello server");

    server
        .handle()
        .send(conn, b"hello client".to_vec())
        .unwrap();
    let got = client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Message(p) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"hello client");

    // Silence of one interval makes each side ping; each pong is an RTT sample.
    let rtt = client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Rtt(r) => Some(*r),
        _ => None,
    })
    .await;
    assert!(rtt.samples >= 1);
    assert!(rtt.latest < Duration::from_secs(1));
    server_event(&mut server, Duration::from_secs(5), |e| {
        matches!(e, ServerEvent::Rtt { .. }).then_some(())
    })
    .await;
    client.close().await;
    let reason = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(reason, DisconnectReason::PeerClosed { .. }),
        "{reason:?}"
    );
}

/// A raw TCP peer that completes the handshake and then neither reads nor writes is convicted within
/// timeout + one tick; a healthy client on the same server is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_convicted_and_others_are_unaffected() {
    let mut server = Server::bind(server_config()).unwrap();
    let mut healthy = Client::connect(client_config(&server));
    client_event(&mut healthy, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    server_event(&mut server, Duration::from_secs(5), |e| {
        matches!(e, ServerEvent::Connected { .. }).then_some(())
    })
    .await;

    // The silent peer: a raw socket that sends a valid HELLO, then goes quiet.
    let _raw = raw_peer(&server, &hello_bytes());
    let silent = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    // Its last sign of life was the HELLO, just before `Connected`.
    let connected_at = tokio::time::Instant::now();
    assert_convicted_at_timeout(&mut server, silent, connected_at).await;

    // The healthy client saw no disconnect and still exchanges messages.
    while let Some(e) = healthy.try_next_event() {
        assert!(
            !matches!(e, ClientEvent::Dead { .. }),
            "healthy client disturbed: {e:?}"
        );
    }
    healthy.send(b"still here".to_vec()).await.unwrap();
    let got = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Message { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"still here");
}

/// A client bound to another loopback source address (how `vitals bench` gets past the ephemeral port
/// range) connects from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_can_connect_from_a_chosen_source_address() {
    let mut server = Server::bind(server_config()).unwrap();
    let mut cfg = client_config(&server);
    cfg.bind = Some("127.0.0.2".parse().unwrap());
    let _client = Client::connect(cfg);
    let peer = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { peer, .. } => Some(*peer),
        _ => None,
    })
    .await;
    assert_eq!(peer.ip().to_string(), "127.0.0.2");
}

/// `flush` returns once everything sent was acknowledged — so the server has delivered it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_until_the_server_acknowledged_everything() {
    let mut server = Server::bind(server_config()).unwrap();
    let client = Client::connect(client_config(&server));
    for i in 0..1000u32 {
        client.send(i.to_be_bytes().to_vec()).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), client.flush())
        .await
        .expect("flush finished")
        .unwrap();
    // Acknowledged means delivered to the application: all 1,000 are already in the event queue.
    let mut got = 0;
    while let Some(e) = server.try_next_event() {
        if matches!(e, ServerEvent::Message { .. }) {
            got += 1;
        }
    }
    assert_eq!(got, 1000);
}

/// `close` is heard at once even while a send waits for room and the client is offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_does_not_hang_while_offline_with_a_blocked_send() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener); // nothing listens: the client stays offline
    let mut cfg = vitals::ClientConfig::new(addr).with_timing(INTERVAL, TIMEOUT);
    cfg.backoff.base = Duration::from_millis(20);
    let client = Client::connect(cfg);
    let sender = client.sender();
    // Offline without a session, nothing goes into a replay buffer: the first message waits in
    // the task, the next ones fill the send queue, and then a send waits for room.
    let blocked = tokio::spawn(async move {
        let mut queued = 0;
        loop {
            if let Err(e) = sender.send(b"waits".to_vec()).await {
                return (queued, e);
            }
            queued += 1;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!blocked.is_finished(), "sends did not wait for room");
    tokio::time::timeout(Duration::from_secs(2), client.close())
        .await
        .expect("close returned while a send was blocked");
    let (queued, result) = tokio::time::timeout(Duration::from_secs(2), blocked)
        .await
        .expect("the blocked send was answered")
        .unwrap();
    assert!(matches!(result, vitals::Error::Shutdown), "{result:?}");
    // One held by the task, the queue's 32.
    assert_eq!(queued, 33);
}

/// A message sent to a connection that is gone comes back as `SendRefused`, never dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_a_closed_connection_comes_back() {
    let mut server = Server::bind(server_config()).unwrap();
    let client = Client::connect(client_config(&server));
    let conn = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    client.close().await;
    server_event(&mut server, Duration::from_secs(5), |e| {
        matches!(e, ServerEvent::Closed { .. }).then_some(())
    })
    .await;
    server.handle().send(conn, b"too late".to_vec()).unwrap();
    let (payload, reason) = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::SendRefused {
            payload, reason, ..
        } => Some((payload.clone(), *reason)),
        _ => None,
    })
    .await;
    assert_eq!(&payload[..], b"too late");
    assert_eq!(reason, "connection closed");
}

/// A message that arrives in the same read as the connection's end (DATA, then FIN) still reaches the
/// application: the client's core has accepted it and would tell the server so on resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arriving_with_the_fin_is_delivered() {
    use std::io::{Read, Write};
    use vitals::vitals_proto::frame::{self, Welcome};
    use vitals::vitals_proto::{ResumeToken, SessionId};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = [0u8; 64];
        let _ = s.read(&mut hello).unwrap();
        let mut out = Vec::new();
        frame::encode_welcome(
            &mut out,
            &Welcome {
                version: frame::VERSION,
                resumed: false,
                interval_ms: INTERVAL.as_millis() as u32,
                timeout_ms: TIMEOUT.as_millis() as u32,
                session_id: SessionId(42),
                token: ResumeToken::from_bytes([9; 16]),
                ack: 0,
            },
        );
        frame::encode_data(&mut out, 0, 0, true, b"last words");
        s.write_all(&out).unwrap(); // WELCOME + DATA, then FIN: one read for the client
        drop(s);
    });
    let mut cfg = vitals::ClientConfig::new(addr).with_timing(INTERVAL, TIMEOUT);
    cfg.reconnect = false;
    let mut client = Client::connect(cfg);
    let got = client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Message(p) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"last words");
    server.join().unwrap();
}
