//! A peer process that is frozen (SIGSTOP) keeps its socket open but says nothing: the server must convict
//! it within timeout + one tick, while a healthy client on the same server is unaffected.
//!
//! The frozen peer is this test binary itself, re-run as a child with `VITALS_CHILD_SERVER` set: it then
//! runs the `child_client` test, which is a plain vitals client.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use vitals::{Client, ClientEvent, DisconnectReason, Server, ServerEvent};

const CHILD_ENV: &str = "VITALS_CHILD_SERVER";

/// The child's body: connect to the server named in the environment and heartbeat for at most 30 s.
#[tokio::test]
async fn child_client() {
    let Ok(addr) = std::env::var(CHILD_ENV) else {
        return; // Only does something when the parent below starts it.
    };
    let cfg = vitals::ClientConfig::new(addr.parse().unwrap()).with_timing(INTERVAL, TIMEOUT);
    let mut client = Client::connect(cfg);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while client.next_event().await.is_some() {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_peer_process_is_convicted_and_others_are_unaffected() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let mut server = Server::bind(server_config()).unwrap();
    let mut healthy = Client::connect(client_config(&server));
    client_event(&mut healthy, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    let healthy_conn = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_client", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, server.local_addr().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child_conn = server_event(&mut server, Duration::from_secs(10), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    // Let it heartbeat for a few intervals, then freeze it.
    tokio::time::sleep(INTERVAL * 3).await;
    let stopped = Command::new("kill")
        .args(["-STOP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let frozen_at = tokio::time::Instant::now();
    let (reason, after) = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed { conn, reason, .. } if *conn == child_conn => {
            Some((reason.clone(), frozen_at.elapsed()))
        }
        ServerEvent::Closed { conn, reason, .. } if *conn == healthy_conn => {
            panic!("the healthy client was closed: {reason:?}")
        }
        _ => None,
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reason, DisconnectReason::SilenceTimeout);
    // Its last sign of life came at most one interval before the freeze (it pings after `interval` of
    // silence), so conviction lands between `timeout - interval` and `timeout` after the freeze, plus a
    // tick and scheduling noise.
    assert!(
        after >= TIMEOUT - INTERVAL - Duration::from_millis(20),
        "convicted early: {after:?}"
    );
    assert!(
        after <= TIMEOUT + Duration::from_millis(150),
        "convicted late: {after:?}"
    );

    while let Some(e) = healthy.try_next_event() {
        assert!(
            !matches!(e, ClientEvent::Dead { .. }),
            "healthy client disturbed: {e:?}"
        );
    }
    healthy.send(b"unaffected".to_vec()).await.unwrap();
    let got = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Message { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"unaffected");
}
