//! Lossless resume over real sockets: forced disconnects and server restarts under a stream of
//! sequenced messages.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use vitals::vitals_proto::{MemoryStore, Session, SessionId, SessionStore};
use vitals::{Client, ClientEvent, Server, ServerEvent};

/// A session store that outlives a server instance (what a shared engine such as Redis gives a
/// deployment), so a restarted server can resume the sessions of the one before.
#[derive(Clone, Default)]
struct SharedStore(Arc<Mutex<MemoryStore>>);

impl SessionStore for SharedStore {
    fn take(&mut self, id: SessionId) -> Option<Session> {
        self.0.lock().unwrap().take(id)
    }
    fn put(&mut self, session: Session) {
        self.0.lock().unwrap().put(session)
    }
    fn purge_expired(&mut self, now: Instant) -> usize {
        self.0.lock().unwrap().purge_expired(now)
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn contains(&self, id: SessionId) -> bool {
        self.0.lock().unwrap().contains(id)
    }
}

const TOTAL: u64 = 100_000;

/// How far the sender of `restarts_and_forced_disconnects_lose_and_duplicate_nothing` may run ahead
/// of the messages the test has read: `send` returns once a message is queued, so without this the
/// server's event queue could hold thousands of messages of a connection the test already
/// disconnected, and a "disconnect after every N" would hit a connection that is gone.
const AHEAD: u64 = 2_000;

/// Messages a test has read so far (across server instances).
type Read = ReadCount;

/// What one server instance saw.
struct Seen {
    received: Vec<u64>,
    disconnects: usize,
}

/// Collects `count` messages from `server`, disconnecting the client's connection after every `every`.
/// Fails (never hangs) if they have not all arrived within a minute: RTT events keep arriving while
/// messages do not, so the per-event timeout alone would not end the wait.
async fn serve(server: &mut Server, count: usize, every: usize, read: &Read) -> Seen {
    let handle = server.handle();
    let mut seen = Seen {
        received: Vec::new(),
        disconnects: 0,
    };
    let started = Instant::now();
    while seen.received.len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} of {count} messages within a minute ({} disconnects; last {:?})",
            seen.received.len(),
            seen.disconnects,
            seen.received.last()
        );
        let Ok(event) = tokio::time::timeout(Duration::from_secs(10), server.next_event()).await
        else {
            panic!(
                "stream stalled for 10 s after {} of {count} messages ({} disconnects)",
                seen.received.len(),
                seen.disconnects
            );
        };
        let event = event.expect("server stopped");
        if let ServerEvent::Message { conn, payload, .. } = event {
            seen.received
                .push(u64::from_be_bytes(payload[..8].try_into().unwrap()));
            read.add(1);
            if seen.received.len().is_multiple_of(every) {
                handle.disconnect(conn).unwrap();
                seen.disconnects += 1;
            }
        }
    }
    seen
}

/// Stops a server instance abruptly (no drain: connections are dropped without CLOSE) and returns the
/// messages it had already handed to the application but the test had not read yet.
async fn stop_abruptly(server: Server, read: &Read) -> Vec<u64> {
    let mut rest = server.shutdown(Duration::ZERO).await;
    let mut got = Vec::new();
    while let Some(e) = rest.recv().await {
        if let ServerEvent::Message { payload, .. } = e {
            got.push(u64::from_be_bytes(payload[..8].try_into().unwrap()));
            read.add(1);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_forced_disconnects_lose_and_duplicate_nothing() {
    let store = SharedStore::default();
    let mut cfg = server_config();
    let mut server = Server::bind_with_store(cfg.clone(), Box::new(store.clone())).unwrap();
    cfg.listen = server.local_addr();

    let mut client_cfg = client_config(&server);
    client_cfg.backoff.base = Duration::from_millis(10);
    client_cfg.backoff.cap = Duration::from_millis(80);
    let mut client = Client::connect(client_cfg.clone());
    let read = Read::default();
    let sender = tokio::spawn({
        let sender = client.sender();
        let read = read.clone();
        async move {
            for i in 0..TOTAL {
                read.wait_until_within(i, AHEAD).await;
                sender.send(i.to_be_bytes().to_vec()).await.unwrap();
            }
        }
    });
    // The client's events, until told to stop (and a resume has been seen): every reconnection must
    // resume the session (a `SessionLost` fails the test).
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let events = tokio::spawn(async move {
        let mut reconnects = Vec::new();
        let (mut connected, mut resumed) = (0, 0);
        let mut stopping = false;
        loop {
            let e = tokio::select! {
                e = client.next_event() => e,
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    continue;
                }
            };
            match e {
                Some(ClientEvent::Reconnecting { attempt, delay }) => {
                    reconnects.push((attempt, delay))
                }
                Some(ClientEvent::Connected { .. }) => connected += 1,
                Some(ClientEvent::Resumed { .. }) => resumed += 1,
                Some(ClientEvent::SessionLost { .. }) => {
                    panic!("session lost despite the shared store")
                }
                Some(_) => {}
                None => break,
            }
            // `Resumed` follows its `Connected` at once: stop between pairs.
            if stopping && resumed >= 1 && resumed == connected - 1 {
                break;
            }
        }
        (reconnects, connected, resumed, client)
    });

    // First instance: 40,000 messages with a forced disconnect after every 7,000 (5), then it is stopped
    // abruptly (what it had already delivered still counts). The sender stays a bounded distance
    // ahead of what the test has read, but the application can still lag its event loop (the event
    // channel is unbounded), so the instance may have delivered more by then, and a forced
    // disconnect may name a connection that has already been replaced (a no-op).
    let mut first = serve(&mut server, 40_000, 7_000, &read).await;
    first.received.extend(stop_abruptly(server, &read).await);
    // Second instance on the same port and store: up to 30,000 more, a disconnect every 9,000.
    let mut server = Server::bind_with_store(cfg.clone(), Box::new(store.clone())).unwrap();
    let second_count = 30_000.min((TOTAL as usize).saturating_sub(first.received.len()));
    let mut second = serve(&mut server, second_count, 9_000, &read).await;
    second.received.extend(stop_abruptly(server, &read).await);
    // Third instance: the rest.
    let mut server = Server::bind_with_store(cfg, Box::new(store.clone())).unwrap();
    let rest = (TOTAL as usize).saturating_sub(first.received.len() + second.received.len());
    let third = serve(&mut server, rest, usize::MAX, &read).await;
    tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .expect("sender finished")
        .unwrap();

    let all: Vec<u64> = [first.received, second.received, third.received].concat();
    assert_eq!(all.len(), TOTAL as usize, "duplicates or losses");
    assert!(
        all.iter().copied().eq(0..TOTAL),
        "out of order or wrong content"
    );
    assert_eq!(first.disconnects, 5);

    let _ = stop_tx.send(());
    let (reconnects, connected, resumed, client) =
        tokio::time::timeout(Duration::from_secs(10), events)
            .await
            .expect("client events")
            .unwrap();
    // The first instance's connection was dropped (forced, then the stop), so the client reconnected
    // at least once, and every reconnection resumed the session.
    assert!(resumed >= 1, "no resume");
    assert_eq!(resumed, connected - 1, "a reconnection did not resume");
    // Every delay lies within its full-jitter bound, min(cap, base * 2^(attempt - 1)).
    for &(attempt, delay) in &reconnects {
        let bound = client_cfg
            .backoff
            .base
            .saturating_mul(1 << (attempt - 1).min(20))
            .min(client_cfg.backoff.cap);
        assert!(delay <= bound, "attempt {attempt}: {delay:?} > {bound:?}");
    }
    let distinct: std::collections::HashSet<_> = reconnects.iter().map(|(_, d)| *d).collect();
    assert!(
        distinct.len() > reconnects.len() / 2,
        "delays are not jittered: {reconnects:?}"
    );
    drop(client);
}

/// A restart that loses the sessions (the default in-memory store dies with the server): the client is
/// told (`SessionLost`), starts a new session and re-sends what the old server never acknowledged.
/// Nothing is lost; the only duplicates are messages the old server had received but not yet
/// acknowledged, and they come right after the point where the old server stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_the_sessions_loses_nothing_and_says_so() {
    const N: u64 = 20_000;
    let mut cfg = server_config();
    let mut server = Server::bind(cfg.clone()).unwrap();
    cfg.listen = server.local_addr();
    let mut client = Client::connect(client_config(&server));
    let sender = client.sender();
    let sending = tokio::spawn(async move {
        for i in 0..N {
            sender.send(i.to_be_bytes().to_vec()).await.unwrap();
        }
    });
    let read = Read::default();
    let mut first = serve(&mut server, 8_000, usize::MAX, &read).await.received;
    first.extend(stop_abruptly(server, &read).await);
    let mut server = Server::bind(cfg).unwrap(); // a fresh in-memory store
    let lost = client_event(&mut client, Duration::from_secs(10), |e| match e {
        ClientEvent::SessionLost { resent, .. } => Some(*resent),
        ClientEvent::Resumed { .. } => panic!("resumed a session the new server cannot know"),
        _ => None,
    })
    .await;
    let last_first = *first.last().unwrap();
    let mut second = Vec::new();
    while second.last() != Some(&(N - 1)) {
        second.extend(serve(&mut server, 1, usize::MAX, &read).await.received);
    }
    tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .unwrap()
        .unwrap();
    assert!(
        first.iter().copied().eq(0..first.len() as u64),
        "first instance in order"
    );
    let resumed_from = second[0];
    assert!(
        second.iter().copied().eq(resumed_from..N),
        "second instance in order, nothing lost"
    );
    assert!(
        resumed_from <= last_first + 1,
        "a gap: {last_first} then {resumed_from}"
    );
    let duplicates = last_first + 1 - resumed_from;
    assert!(
        duplicates as usize <= lost,
        "{duplicates} duplicates, {lost} re-sent"
    );
}

/// Messages for a session sent while its connection is being torn down follow the session into the
/// store and arrive after the resume: none lost, none doubled, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_a_session_follow_it_across_a_disconnect() {
    let mut server = Server::bind(server_config()).unwrap();
    let mut client = Client::connect(client_config(&server));
    let (conn, session) = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected {
            conn,
            session: Some(s),
            ..
        } => Some((*conn, *s)),
        _ => None,
    })
    .await;
    let handle = server.handle();
    handle.disconnect(conn).unwrap();
    for i in 0..500u32 {
        // Some of these reach the loop before the teardown, some after; all must arrive.
        match handle.send_to_session(session, i.to_be_bytes().to_vec()) {
            Ok(()) => {}
            Err(e) => panic!("message {i}: {e}"),
        }
    }
    let mut got = Vec::new();
    while got.len() < 500 {
        let p = client_event(&mut client, Duration::from_secs(10), |e| match e {
            ClientEvent::Message(p) => Some(p.clone()),
            _ => None,
        })
        .await;
        got.push(u32::from_be_bytes(p[..4].try_into().unwrap()));
    }
    assert!(got.iter().copied().eq(0..500), "lost, doubled or reordered");
    while let Some(e) = server.try_next_event() {
        assert!(!matches!(e, ServerEvent::SendRefused { .. }), "{e:?}");
    }
}

/// Parked sessions that nobody resumes are dropped (30 s after their `ttl` ran out, so that a late
/// resume is still told `SessionExpired`) even if no resume ever comes: a server only seeing new
/// clients does not accumulate them. The test rewinds nothing: it waits the real 30 s grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_sessions_expire_without_resumes() {
    let mut cfg = server_config();
    cfg.loops = 1;
    cfg.proto.session.ttl = Duration::from_millis(200);
    let mut server = Server::bind(cfg).unwrap();
    let handle = server.handle();
    let peers: Vec<_> = (0..20).map(|_| raw_peer(&server, &hello_bytes())).collect();
    for _ in 0..20 {
        server_event(&mut server, Duration::from_secs(5), |e| {
            matches!(e, ServerEvent::Connected { .. }).then_some(())
        })
        .await;
    }
    drop(peers); // EOF without CLOSE: every session is parked for a resume
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while handle.parked_sessions() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions were not parked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A healthy client keeps the loop busy; no resume happens.
    let _client = Client::connect(client_config(&server));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while handle.parked_sessions() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} parked sessions outlived their ttl",
            handle.parked_sessions()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
