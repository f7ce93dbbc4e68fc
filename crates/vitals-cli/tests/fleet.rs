//! `vitals serve --store redis://…`: three server processes on one port (SO_REUSEPORT) share their
//! sessions through a `redis-server` the test starts. Clients reach them through a load balancer
//! that cuts 100 connections (each client reconnects to whichever server the kernel picks); one
//! server is killed (SIGKILL) and one drained (SIGTERM) while the clients stream both ways: every
//! message arrives exactly once and in order — in Redis's inbound stream, and at the clients.

#[path = "../../vitals/tests/fleet_util/mod.rs"]
mod fleet_util;
mod serve_util;

use std::time::Duration;

use fleet_util::*;
use serve_util::*;
use vitals::fleet::{Backend, FleetConfig};
use vitals::{Client, ClientConfig, ClientEvent};

const CLIENTS: usize = 6;
const EACH: u64 = 3_000;
/// Connections the balancer cuts (each one a client-confirmed `Dead`).
const CUTS: usize = 100;

#[test]
fn cuts_a_killed_and_a_drained_server_lose_and_duplicate_nothing() {
    let redis = RedisServer::start();
    let url = redis.url();
    let serve = |listen: &str, node: &str| {
        Daemon::start(&[
            "--listen",
            listen,
            "--store",
            &url,
            "--node",
            node,
            "--partitions",
            "4",
            "--interval",
            "500ms",
            "--timeout",
            "2s",
            "--loops",
            "1",
        ])
    };
    let mut first = serve("127.0.0.1:0", "n0");
    let addr = first.addr;
    let mut second = Some(serve(&addr.to_string(), "n1"));
    let third = serve(&addr.to_string(), "n2");
    let cfg = FleetConfig {
        partitions: 4,
        ..FleetConfig::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lb = Balancer::start(vec![addr]).await;
        let deaths = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let backend = Backend::connect(&url, &cfg).await.unwrap();
        let mut tasks = Vec::new();
        let mut sids = Vec::new();
        let mut owners = std::collections::HashMap::<String, usize>::new();
        // SO_REUSEPORT spreads connections by hash: connect until the two servers that will go
        // have at least one session each.
        while sids.len() < CLIENTS || !owners.contains_key("n0") || !owners.contains_key("n1") {
            assert!(
                sids.len() < 40,
                "connections never reached every server: {owners:?}"
            );
            let mut ccfg = ClientConfig::new(lb.addr)
                .with_timing(Duration::from_millis(500), Duration::from_secs(2));
            ccfg.backoff.base = Duration::from_millis(10);
            ccfg.backoff.cap = Duration::from_millis(100);
            let mut client = Client::connect(ccfg);
            let sid = loop {
                match tokio::time::timeout(Duration::from_secs(10), client.next_event()).await {
                    Ok(Some(ClientEvent::Connected {
                        session: Some(s), ..
                    })) => break s,
                    Ok(Some(_)) => {}
                    other => panic!("no connection: {other:?}"),
                }
            };
            // Registered in Redis a round trip after the client's Connected.
            let owner = loop {
                if let Some(p) = backend.presence(sid).await.unwrap() {
                    break p.owner;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            *owners.entry(owner).or_default() += 1;
            sids.push(sid);
            let sender = client.sender();
            let sending = tokio::spawn(async move {
                for n in 0..EACH {
                    sender.send(n.to_be_bytes().to_vec()).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            let deaths = deaths.clone();
            tasks.push(tokio::spawn(async move {
                let mut next = 0;
                let end = tokio::time::Instant::now() + Duration::from_secs(60);
                while next < EACH {
                    match tokio::time::timeout_at(end, client.next_event()).await {
                        Ok(Some(ClientEvent::Message(p))) => {
                            assert_eq!(num(&p), next, "{sid:?}: lost, duplicated or reordered");
                            next += 1;
                        }
                        Ok(Some(
                            e @ (ClientEvent::SessionLost { .. } | ClientEvent::Closed { .. }),
                        )) => {
                            panic!("{sid:?}: {e:?}")
                        }
                        Ok(Some(ClientEvent::Dead { .. })) => {
                            deaths.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(Some(_)) => {}
                        other => panic!("{sid:?}: {next} of {EACH} received; then {other:?}"),
                    }
                }
                sending.await.unwrap();
                client.flush().await.unwrap();
                client
            }));
        }
        let backend = std::sync::Arc::new(backend);
        let mut sends = Vec::new();
        for sid in sids.iter().copied() {
            let backend = backend.clone();
            sends.push(tokio::spawn(async move {
                for n in 0..EACH {
                    backend
                        .send_to_session(sid, &n.to_be_bytes())
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        // The balancer cuts a connection every 15 ms: the client reconnects, the kernel picks a
        // server, the session resumes there. Half way, a SIGKILL (no drain, no park); later a SIGTERM
        // (a graceful drain: CLOSE Shutdown, sessions parked).
        let mut status = None;
        let mut killed = false;
        let started = tokio::time::Instant::now();
        let mut k = 0;
        // Until the clients have seen CUTS connections end (a cut of a connection still in its
        // handshake is not one they count).
        while deaths.load(std::sync::atomic::Ordering::Relaxed) < CUTS {
            assert!(started.elapsed() < Duration::from_secs(30), "cuts not seen by the clients");
            tokio::time::sleep(Duration::from_millis(15)).await;
            lb.cut(k * 7);
            k += 1;
            if k == CUTS / 3 {
                first.child.kill().unwrap();
                let _ = first.child.wait();
                killed = true;
            }
            if k == 2 * CUTS / 3 {
                let mut second = second.take().unwrap();
                status = Some(tokio::task::spawn_blocking(move || {
                    let s = second.signal_and_wait("TERM", Duration::from_secs(20));
                    (s, second)
                }));
            }
        }
        assert!(killed);
        for s in sends {
            s.await.unwrap();
        }
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await.unwrap());
        }
        let (status, _second) = status.unwrap().await.unwrap();
        let deaths = deaths.load(std::sync::atomic::Ordering::Relaxed);
        assert!(deaths >= CUTS, "only {deaths} connections ended at the clients");
        assert!(status.success(), "drained server exit {status:?}");
        let keys = cfg.keys();
        assert_inbound_exactly_once(&url, &keys, &sids, EACH).await;
        // Every session of the killed and of the drained server moved to another one.
        let events = events(&url, &keys).await;
        let moved_from = |node: &str| {
            events
                .iter()
                .filter(|e| e.get("type").map(String::as_str) == Some("resume"))
                .filter(|e| e.get("from").map(String::as_str) == Some(node))
                .count()
        };
        eprintln!(
            "fleet (processes): {deaths} connections ended at the clients; sessions per server {owners:?}; resumed away from n0 {}, from n1 {}",
            moved_from("n0"),
            moved_from("n1")
        );
        assert!(moved_from("n0") >= owners["n0"]);
        assert!(moved_from("n1") >= owners["n1"]);
        for c in clients {
            c.close().await;
        }
    });
    drop(third);
}
