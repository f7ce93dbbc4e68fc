//! Bulk transfer over loopback: many large messages (and small ones between them) arrive whole,
//! exactly once and in order, both ways — through the client's vectored writes and the server's
//! streaming input buffers, and back through the server's vectored writes and the client's.

mod common;

use std::time::Duration;

use common::*;
use vitals::{Bytes, Client, ClientEvent, Server, ServerEvent};

/// Message `i`: a size from a mix around the 4 KiB sharing threshold, the 64 KiB chunk size and
/// beyond (several chunks), filled with a pattern that depends on `i`.
fn message(i: usize) -> Vec<u8> {
    const SIZES: [usize; 8] = [65_536, 10, 200_000, 65_536, 4_095, 4_096, 70_000, 65_535];
    let n = SIZES[i % SIZES.len()];
    (0..n).map(|k| (k.wrapping_mul(31) ^ i) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_messages_arrive_whole_and_in_order_both_ways() {
    let mut cfg = server_config();
    cfg.loops = 1;
    let mut server = Server::bind(cfg).unwrap();
    let mut client = Client::connect(client_config(&server));
    let conn = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    client_event(&mut client, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;

    // Client to server: as fast as back-pressure allows, from another task.
    const UP: usize = 160;
    let sender = client.sender();
    let sending = tokio::spawn(async move {
        for i in 0..UP {
            sender.send(Bytes::from(message(i))).await.unwrap();
        }
    });
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got < UP {
        let e = tokio::time::timeout_at(deadline, server.next_event())
            .await
            .expect("messages stopped arriving")
            .expect("server stopped");
        match e {
            ServerEvent::Message { payload, .. } => {
                assert!(
                    payload[..] == message(got)[..],
                    "message {got} differs ({} bytes)",
                    payload.len()
                );
                got += 1;
            }
            ServerEvent::Closed { reason, .. } => panic!("connection closed: {reason:?}"),
            _ => {}
        }
    }
    sending.await.unwrap();
    client.flush().await.unwrap();

    // Server to client: what fits in the server's replay buffer (4 MiB) at once.
    const DOWN: usize = 40;
    for i in 0..DOWN {
        server.handle().send(conn, message(i)).unwrap();
    }
    let mut got = 0;
    while got < DOWN {
        let e = tokio::time::timeout_at(deadline, client.next_event())
            .await
            .expect("messages stopped arriving")
            .expect("client stopped");
        match e {
            ClientEvent::Message(payload) => {
                assert!(
                    payload[..] == message(got)[..],
                    "message {got} differs ({} bytes)",
                    payload.len()
                );
                got += 1;
            }
            ClientEvent::Dead { reason } => panic!("connection died: {reason:?}"),
            _ => {}
        }
    }
    // Nothing was refused on the way.
    while let Some(e) = server.try_next_event() {
        assert!(!matches!(e, ServerEvent::SendRefused { .. }), "{e:?}");
    }
}

/// A message larger than the whole replay buffer is refused at once (it could never be sent), also
/// before the client has connected; one that fits is queued and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_replay_buffer_is_refused_at_once() {
    let mut server = Server::bind(server_config()).unwrap();
    let mut ccfg = client_config(&server);
    ccfg.proto.session.max_replay_bytes = 100_000;
    let client = Client::connect(ccfg);
    let too_big = client.send(vec![0u8; 100_001]).await;
    assert!(
        matches!(too_big, Err(vitals::Error::Rejected(_))),
        "{too_big:?}"
    );
    client.send(vec![1u8; 100_000]).await.unwrap();
    let got = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Message { payload, .. } => Some(payload.len()),
        _ => None,
    })
    .await;
    assert_eq!(got, 100_000);
    client.flush().await.unwrap();
}
