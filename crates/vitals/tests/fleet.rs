//! A fleet over a real `redis-server` (started by the test): sessions, messages and presence shared
//! by servers, resumed on any of them (docs/FLEET.md).

mod common;
mod fleet_util;

use std::time::Duration;

use common::*;
use fleet_util::*;
use vitals::fleet::{Backend, FleetConfig};
use vitals::vitals_proto::SessionId;
use vitals::{Client, ClientEvent, RedisStore, Server, ServerEvent};

const WITHIN: Duration = Duration::from_secs(10);

fn fleet_cfg(node: &str) -> FleetConfig {
    FleetConfig {
        node: node.into(),
        partitions: 4,
        ..FleetConfig::default()
    }
}

fn fleet_server(redis: &RedisServer, node: &str) -> Server {
    let store = RedisStore::with_config(&redis.url(), fleet_cfg(node)).unwrap();
    Server::bind_with_store(server_config(), store).unwrap()
}

async fn connected(client: &mut Client) -> SessionId {
    client_event(client, WITHIN, |e| match e {
        ClientEvent::Connected { session, .. } => *session,
        _ => None,
    })
    .await
}

/// One server: what the client sends is in the inbound stream once, in order, and reported to the
/// application after that; what a backend sends reaches the client; presence says where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_through_redis_both_ways_and_presence_is_readable() {
    let redis = RedisServer::start();
    let mut server = fleet_server(&redis, "a");
    let mut client = Client::connect(client_config(&server));
    let sid = connected(&mut client).await;
    for i in 0..20u32 {
        client.send(i.to_be_bytes().to_vec()).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        let p = server_event(&mut server, WITHIN, |e| match e {
            ServerEvent::Message { payload, .. } => Some(payload.clone()),
            _ => None,
        })
        .await;
        got.push(u32::from_be_bytes(p[..].try_into().unwrap()));
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    let keys = fleet_cfg("a").keys();
    let stored = inbound(&redis.url(), &keys).await;
    let seqs: Vec<u64> = stored[&sid].iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());

    let backend = Backend::connect(&redis.url(), &fleet_cfg("a"))
        .await
        .unwrap();
    for i in 0..10u32 {
        backend
            .send_to_session(sid, &(1000 + i).to_be_bytes())
            .await
            .unwrap();
    }
    let mut back = Vec::new();
    while back.len() < 10 {
        let p = client_event(&mut client, WITHIN, |e| match e {
            ClientEvent::Message(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        back.push(u32::from_be_bytes(p[..].try_into().unwrap()));
    }
    assert_eq!(back, (1000..1010).collect::<Vec<_>>());
    let presence = backend.presence(sid).await.unwrap().unwrap();
    assert_eq!(presence.owner, "a");
    assert!(presence.live);
    assert!(
        backend
            .live_sessions()
            .await
            .unwrap()
            .iter()
            .any(|(s, _)| *s == sid)
    );
    assert!(backend.nodes().await.unwrap().contains_key("a"));
    assert_eq!(
        backend
            .send_to_session(SessionId(sid.0 ^ 1), b"x")
            .await
            .err()
            .map(|e| e.to_string()),
        Some(vitals::Error::NotFound.to_string())
    );
}

/// What the fleet test's servers saw, across servers.
#[derive(Default)]
struct Seen {
    /// Where each session is connected now: (server, connection).
    at: std::collections::HashMap<SessionId, (usize, vitals::ConnId)>,
    /// Client → server messages the applications got, per session.
    messages: std::collections::HashMap<SessionId, Vec<u64>>,
    /// Forced disconnects the servers confirmed.
    confirmed: usize,
}

fn num(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().unwrap())
}

/// The acceptance, in one process: 3 servers on one Redis behind a load balancer, 6 clients
/// streaming 3,000 messages each way (client → server from the client, server → client from a
/// backend through `send_to_session_written` on random servers), at least 100 forced disconnects
/// that land on whichever server holds the connection (confirmed by the server), and one server
/// drained mid-stream. Every message arrives exactly once and in order, both ways: in Redis's
/// inbound stream, in the applications' events (across servers), and at the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_forced_disconnects_and_a_drain_lose_and_duplicate_nothing() {
    const CLIENTS: usize = 6;
    const EACH: u64 = 3_000;
    const DISCONNECTS: usize = 100;
    let redis = RedisServer::start();
    let servers: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|n| fleet_server(&redis, n))
        .collect();
    let handles: Vec<vitals::ServerHandle> = servers.iter().map(Server::handle).collect();
    let addrs: Vec<_> = servers.iter().map(Server::local_addr).collect();
    let lb = Balancer::start(addrs).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let mut server_tasks = Vec::new();
    let mut drains = Vec::new();
    for (i, mut server) in servers.into_iter().enumerate() {
        let seen = seen.clone();
        let (drain_tx, mut drain_rx) = tokio::sync::oneshot::channel::<()>();
        drains.push(Some(drain_tx));
        server_tasks.push(tokio::spawn(async move {
            let record = |e: ServerEvent| {
                let mut s = seen.lock().unwrap();
                match e {
                    ServerEvent::Connected {
                        conn,
                        session: Some(sid),
                        ..
                    } => {
                        s.at.insert(sid, (i, conn));
                    }
                    ServerEvent::Message {
                        session: Some(sid),
                        payload,
                        ..
                    } => s.messages.entry(sid).or_default().push(num(&payload)),
                    ServerEvent::Closed {
                        conn,
                        session: Some(sid),
                        reason,
                        ..
                    } => {
                        if reason == vitals::DisconnectReason::Disconnected {
                            s.confirmed += 1;
                        }
                        if s.at.get(&sid) == Some(&(i, conn)) {
                            s.at.remove(&sid);
                        }
                    }
                    _ => {}
                }
            };
            loop {
                tokio::select! {
                    e = server.next_event() => match e {
                        Some(e) => record(e),
                        None => return,
                    },
                    _ = &mut drain_rx => {
                        // A graceful drain: CLOSE(Shutdown) to every client, then what is left.
                        let mut rest = server.shutdown(Duration::from_secs(2)).await;
                        while let Some(e) = rest.recv().await {
                            record(e);
                        }
                        return;
                    }
                }
            }
        }));
    }

    // Clients: each sends EACH numbered messages (1 per ms) and checks what it receives.
    let mut clients = Vec::new();
    let (sid_tx, mut sid_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..CLIENTS {
        let mut cfg = vitals::ClientConfig::new(lb.addr).with_timing(INTERVAL, TIMEOUT);
        cfg.backoff.base = Duration::from_millis(10);
        cfg.backoff.cap = Duration::from_millis(100);
        let mut client = Client::connect(cfg);
        let sid = connected(&mut client).await;
        sid_tx.send(sid).unwrap();
        let sender = client.sender();
        let send = tokio::spawn(async move {
            for n in 0..EACH {
                sender.send(n.to_be_bytes().to_vec()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        clients.push(tokio::spawn(async move {
            let mut next = 0u64;
            let mut resumed = 0usize;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while next < EACH {
                let e = tokio::time::timeout_at(deadline, client.next_event())
                    .await
                    .unwrap_or_else(|_| panic!("client {sid:?}: only {next} of {EACH} after 60 s"))
                    .expect("client ended");
                match e {
                    ClientEvent::Message(p) => {
                        assert_eq!(
                            num(&p),
                            next,
                            "client {sid:?}: lost, duplicated or reordered"
                        );
                        next += 1;
                    }
                    ClientEvent::Resumed { .. } => resumed += 1,
                    ClientEvent::SessionLost { .. } | ClientEvent::Closed { .. } => {
                        panic!("client {sid:?}: {e:?}")
                    }
                    _ => {}
                }
            }
            send.await.unwrap();
            client.flush().await.unwrap();
            (sid, resumed, client)
        }));
    }
    drop(sid_tx);
    let mut sids = Vec::new();
    while let Some(sid) = sid_rx.recv().await {
        sids.push(sid);
    }
    // A session is in Redis (and can be sent to) once its server registered it, a round trip after
    // the client's Connected: a backend learns of it from the `connect` event, this test waits.
    let backend = Backend::connect(&redis.url(), &fleet_cfg("a"))
        .await
        .unwrap();
    for sid in &sids {
        let end = tokio::time::Instant::now() + WITHIN;
        while backend.presence(*sid).await.unwrap().is_none() {
            assert!(
                tokio::time::Instant::now() < end,
                "{sid:?} never registered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // The backend: EACH messages to every session, each through a random server.
    let mut backends = Vec::new();
    for (k, sid) in sids.iter().copied().enumerate() {
        let handles = handles.clone();
        backends.push(tokio::spawn(async move {
            for n in 0..EACH {
                let h = &handles[(n as usize * 7 + k) % handles.len()];
                let mut tries = 0;
                // A drained server's handle refuses (shut down): use another.
                loop {
                    let h = if tries == 0 {
                        h
                    } else {
                        &handles[(n as usize + tries) % handles.len()]
                    };
                    match h
                        .send_to_session_written(sid, n.to_be_bytes().to_vec())
                        .await
                    {
                        Ok(()) => break,
                        Err(vitals::Error::Shutdown) if tries < 3 => tries += 1,
                        Err(e) => panic!("send {n} to {sid:?}: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }

    // Forced disconnects on whichever server holds a connection, and a drain half way.
    let mut asked = 0usize;
    let mut drained = None;
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let (target, confirmed) = {
            let s = seen.lock().unwrap();
            let live: Vec<(usize, vitals::ConnId)> = s.at.values().copied().collect();
            let t = (!live.is_empty()).then(|| live[asked % live.len()]);
            (t, s.confirmed)
        };
        if confirmed >= DISCONNECTS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {confirmed} disconnects confirmed"
        );
        if let Some((server, conn)) = target
            && Some(server) != drained
        {
            let _ = handles[server].disconnect(conn);
            asked += 1;
        }
        if drained.is_none() && started.elapsed() > Duration::from_millis(1500) {
            // Drain server 2: no new connections, then a graceful shutdown of the ones it has.
            lb.remove(2);
            drained = Some(2);
            if let Some(d) = drains[2].take() {
                let _ = d.send(());
            }
        }
    }
    for b in backends {
        b.await.unwrap();
    }
    let mut resumes = 0;
    for c in clients {
        let (_, resumed, client) = c.await.unwrap();
        resumes += resumed;
        client.close().await;
    }
    // Everything the clients sent is in Redis once, in order; so it is in the applications' events.
    let keys = fleet_cfg("a").keys();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = inbound(&redis.url(), &keys).await;
        let done = sids
            .iter()
            .all(|s| stored.get(s).is_some_and(|v| v.len() as u64 >= EACH));
        if done || tokio::time::Instant::now() > end {
            for sid in &sids {
                let seqs: Vec<u64> = stored
                    .get(sid)
                    .map(|v| v.iter().map(|(s, _)| *s).collect())
                    .unwrap_or_default();
                assert_eq!(
                    seqs,
                    (0..EACH).collect::<Vec<_>>(),
                    "inbound stream of {sid:?}"
                );
                let data: Vec<u64> = stored[sid].iter().map(|(_, d)| num(d)).collect();
                assert_eq!(
                    data,
                    (0..EACH).collect::<Vec<_>>(),
                    "inbound payloads of {sid:?}"
                );
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = seen.lock().unwrap();
    for sid in &sids {
        let mut got = s.messages.get(sid).cloned().unwrap_or_default();
        got.sort_unstable();
        assert_eq!(
            got,
            (0..EACH).collect::<Vec<_>>(),
            "application events of {sid:?}"
        );
    }
    assert!(s.confirmed >= DISCONNECTS);
    assert!(resumes >= DISCONNECTS, "resumes {resumes}");
    eprintln!(
        "fleet: {} confirmed disconnects, {resumes} resumes, drained server 2",
        s.confirmed
    );
}
