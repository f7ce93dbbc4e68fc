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

/// Messages each way in `restarts_and_forced_disconnects_lose_and_duplicate_nothing`.
const TOTAL: u64 = 100_000;

/// How far each sender of that test may run ahead of the messages the other side has read: `send`
/// returns once a message is queued, so without this the server's event queue (unbounded) could hold
/// thousands of messages of a connection the test already disconnected, and a server-side sender
/// could fill the session's replay buffer (a refused send would break the order).
const AHEAD: u64 = 1_000;

/// Forced disconnects that test needs the server to confirm (a `Closed` with reason `Disconnected`).
const DISCONNECTS: usize = 100;

/// Messages (both directions together) between forced disconnects: `2 * TOTAL / SPACING` = 133 are
/// due. Each one takes a round of its own (the application sees the `Closed`, the client reconnects,
/// the application sees the new `Connected`), during which the application works off up to
/// [`AHEAD`] messages per direction, so a late disconnect catches up only at that pace; the margin
/// covers it and disconnects that find their connection already gone (the next round asks again).
const SPACING: usize = 1_500;

/// Messages a test has read so far (across server instances).
type Read = ReadCount;

/// The sequence number a test message carries in its first 8 bytes.
fn seq(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().unwrap())
}

/// The application side of the server in the two-way test, across server instances: what it
/// received (checked in order as it arrives), what it sent to the session, and the forced
/// disconnects it asked for and saw confirmed.
#[derive(Default)]
struct ServerApp {
    /// Client → server messages received, in order (`received[i] == i`).
    received: Vec<u64>,
    /// Shared with the client's sender, which stays within [`AHEAD`] of it.
    read: Read,
    /// Server → client messages handed to `send_to_session` (`0..sent`).
    sent: u64,
    /// The session (one for the whole test: every reconnection resumes it).
    session: Option<SessionId>,
    /// The connection the application last saw connect and not yet close.
    live: Option<vitals::ConnId>,
    /// A message came on `live`, so a disconnect now cuts a stream, not just a handshake. (The
    /// client may still be waiting for its WELCOME: a resuming client sends right after its HELLO.)
    live_carried: bool,
    /// A disconnect asked for whose `Closed` has not arrived yet.
    pending: Option<vitals::ConnId>,
    /// Disconnects the server confirmed (`Closed` with reason `Disconnected`).
    confirmed: usize,
    /// Disconnects that found their connection already gone (it closed for another reason first).
    missed: Vec<vitals::DisconnectReason>,
}

impl ServerApp {
    /// Takes one server event.
    fn on_event(&mut self, event: ServerEvent) {
        match event {
            ServerEvent::Connected {
                conn,
                session: Some(s),
                ..
            } => {
                assert!(
                    self.session.is_none_or(|old| old == s),
                    "a second session: the first was lost"
                );
                self.session = Some(s);
                self.live = Some(conn);
                self.live_carried = false;
            }
            ServerEvent::Message { conn, payload, .. } => {
                self.live_carried |= self.live == Some(conn);
                let n = seq(&payload);
                assert_eq!(
                    n,
                    self.received.len() as u64,
                    "client → server: message {n} arrived after {:?} (lost, doubled or reordered)",
                    self.received.last()
                );
                self.received.push(n);
                self.read.add(1);
            }
            ServerEvent::Closed { conn, reason, .. } => {
                if self.live == Some(conn) {
                    self.live = None;
                }
                if self.pending == Some(conn) {
                    self.pending = None;
                    if reason == vitals::DisconnectReason::Disconnected {
                        self.confirmed += 1;
                    } else {
                        self.missed.push(reason);
                    }
                } else {
                    assert_ne!(
                        reason,
                        vitals::DisconnectReason::Disconnected,
                        "{conn} reported disconnected, but no disconnect named it"
                    );
                }
            }
            ServerEvent::SendRefused { reason, .. } => panic!("send refused: {reason}"),
            _ => {}
        }
    }

    /// Drops the live connection when the next disconnect is due (by the messages moved both ways),
    /// none is outstanding and the connection has carried a message.
    fn disconnect_if_due(&mut self, handle: &vitals::ServerHandle, client_read: &Read) {
        let moved = self.received.len() + client_read.get() as usize;
        if let (Some(conn), None, true) = (self.live, self.pending, self.live_carried)
            && moved >= (self.confirmed + 1) * SPACING
        {
            handle.disconnect(conn).unwrap();
            self.pending = Some(conn);
        }
    }

    /// Queues server → client messages up to [`AHEAD`] past what the client has read.
    fn send_more(&mut self, handle: &vitals::ServerHandle, client_read: &Read) {
        let Some(session) = self.session else {
            return;
        };
        while self.sent < TOTAL && self.sent < client_read.get() + AHEAD {
            handle
                .send_to_session(session, self.sent.to_be_bytes().to_vec())
                .unwrap();
            self.sent += 1;
        }
    }
}

/// Runs one server instance for `app` until `done` holds: takes its events, forces disconnects,
/// and sends to the session as the client reads. Fails (never hangs) after a minute, or when
/// neither direction moved for 10 s.
async fn serve_both_ways(
    server: &mut Server,
    app: &mut ServerApp,
    client_read: &Read,
    done: impl Fn(&ServerApp, u64) -> bool,
) {
    let handle = server.handle();
    let started = Instant::now();
    let mut progress = (app.received.len(), client_read.get(), Instant::now());
    while !done(app, client_read.get()) {
        app.send_more(&handle, client_read);
        app.disconnect_if_due(&handle, client_read);
        let now = (app.received.len(), client_read.get());
        if now != (progress.0, progress.1) {
            progress = (now.0, now.1, Instant::now());
        }
        let state = || {
            format!(
                "{} received, {} sent, {} read by the client, {} disconnects confirmed, missed {:?}",
                app.received.len(),
                app.sent,
                client_read.get(),
                app.confirmed,
                app.missed
            )
        };
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not done within a minute: {}",
            state()
        );
        assert!(
            progress.2.elapsed() < Duration::from_secs(10),
            "no progress for 10 s: {}",
            state()
        );
        // The sleep wakes the loop to send when the client read (it reports no server event).
        tokio::select! {
            e = server.next_event() => app.on_event(e.expect("server stopped")),
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
}

/// Stops a server instance (`drain` ZERO: abruptly, connections dropped without CLOSE) and hands
/// `app` the events it had not taken yet (messages it had already delivered still count).
async fn stop_both_ways(server: Server, app: &mut ServerApp, drain: Duration) {
    let mut rest = server.shutdown(drain).await;
    while let Some(e) = rest.recv().await {
        app.on_event(e);
    }
}

/// What the client side of the two-way test saw.
#[derive(Default)]
struct ClientSide {
    /// Server → client messages, in order (`received[i] == i`).
    received: Vec<u64>,
    reconnects: Vec<(u32, Duration)>,
    connected: usize,
    resumed: usize,
}

/// Every message exactly once and in order, both ways, through ≥ [`DISCONNECTS`] forced disconnects
/// the server confirmed and two abrupt restarts of the server (the store outlives them, as a shared
/// engine would). The application lags its event loop by up to [`AHEAD`] messages, so a disconnect
/// can name a connection that is already gone: it is then counted as missed, not as done, and the
/// next message asks again.
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
    let mut app = ServerApp::default();
    // Server → client messages the client has read (the server-side sender stays within AHEAD).
    let client_read = Read::default();
    let sender = tokio::spawn({
        let sender = client.sender();
        let read = app.read.clone();
        async move {
            for i in 0..TOTAL {
                read.wait_until_within(i, AHEAD).await;
                sender.send(i.to_be_bytes().to_vec()).await.unwrap();
            }
            // Every message acknowledged by the server.
            sender.flush().await.unwrap();
        }
    });
    // The client's events until told to stop: messages checked in order as they arrive; every
    // reconnection must resume the session (a `SessionLost` fails the test).
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    let events = tokio::spawn({
        let client_read = client_read.clone();
        async move {
            let mut seen = ClientSide::default();
            loop {
                let e = tokio::select! {
                    e = client.next_event() => e,
                    _ = &mut stop => break,
                };
                match e {
                    Some(ClientEvent::Message(p)) => {
                        let n = seq(&p);
                        assert_eq!(
                            n,
                            seen.received.len() as u64,
                            "server → client: message {n} arrived after {:?} (lost, doubled or \
                             reordered)",
                            seen.received.last()
                        );
                        seen.received.push(n);
                        client_read.add(1);
                    }
                    Some(ClientEvent::Reconnecting { attempt, delay }) => {
                        seen.reconnects.push((attempt, delay))
                    }
                    Some(ClientEvent::Connected { .. }) => seen.connected += 1,
                    Some(ClientEvent::Resumed { .. }) => seen.resumed += 1,
                    Some(ClientEvent::SessionLost { .. }) => {
                        panic!("session lost despite the shared store")
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            (seen, client)
        }
    });

    // First instance: until 35,000 messages have reached the server, then an abrupt stop; the
    // second: until 70,000; each time the client resumes on the next instance (same port, same
    // store). The third: until both directions are complete and no disconnect is outstanding.
    serve_both_ways(&mut server, &mut app, &client_read, |a, _| {
        a.received.len() >= 35_000
    })
    .await;
    stop_both_ways(server, &mut app, Duration::ZERO).await;
    let mut server = Server::bind_with_store(cfg.clone(), Box::new(store.clone())).unwrap();
    serve_both_ways(&mut server, &mut app, &client_read, |a, _| {
        a.received.len() >= 70_000
    })
    .await;
    stop_both_ways(server, &mut app, Duration::ZERO).await;
    let mut server = Server::bind_with_store(cfg, Box::new(store.clone())).unwrap();
    serve_both_ways(&mut server, &mut app, &client_read, |a, client_read| {
        a.received.len() as u64 == TOTAL && client_read == TOTAL && a.pending.is_none()
    })
    .await;
    tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .expect("sender finished")
        .unwrap();
    // An orderly stop: anything still delivered to the application goes through the same checks.
    stop_both_ways(server, &mut app, Duration::from_secs(1)).await;
    let _ = stop_tx.send(());
    let (seen, client) = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("client events")
        .unwrap();
    eprintln!(
        "{TOTAL} messages each way; disconnects: {} confirmed, {} missed {:?}; client: {} \
         reconnections, {} resumes",
        app.confirmed,
        app.missed.len(),
        app.missed,
        seen.reconnects.len(),
        seen.resumed
    );

    // Each message was checked on arrival (its number is the count before it), so these counts
    // mean every message exactly once, in order.
    assert_eq!(app.received.len() as u64, TOTAL, "client → server");
    assert_eq!(seen.received.len() as u64, TOTAL, "server → client");
    assert!(
        app.confirmed >= DISCONNECTS,
        "{} disconnects confirmed by the server; missed: {:?}",
        app.confirmed,
        app.missed
    );
    // Each confirmed disconnect ended a connection of the client's, which then went reconnecting
    // (one dropped before the client read its WELCOME was never `Connected` there, so resumes can
    // be fewer), and every reconnection that got through resumed the session.
    assert!(
        seen.reconnects.len() >= app.confirmed,
        "{} reconnections for {} disconnects",
        seen.reconnects.len(),
        app.confirmed
    );
    assert!(seen.resumed >= 1, "no resume");
    assert_eq!(
        seen.resumed,
        seen.connected - 1,
        "a reconnection did not resume"
    );
    // Every delay lies within its full-jitter bound, min(cap, base * 2^(attempt - 1)).
    for &(attempt, delay) in &seen.reconnects {
        let bound = client_cfg
            .backoff
            .base
            .saturating_mul(1 << (attempt - 1).min(20))
            .min(client_cfg.backoff.cap);
        assert!(delay <= bound, "attempt {attempt}: {delay:?} > {bound:?}");
    }
    let distinct: std::collections::HashSet<_> = seen.reconnects.iter().map(|(_, d)| *d).collect();
    assert!(
        distinct.len() > seen.reconnects.len() / 2,
        "delays are not jittered: {:?}",
        seen.reconnects
    );
    drop(client);
}

/// Collects `count` client → server messages from `server` (in arrival order; the caller checks
/// them). Fails (never hangs) if they have not all arrived within a minute.
async fn receive(server: &mut Server, count: usize, read: &Read) -> Vec<u64> {
    let mut got = Vec::new();
    let started = Instant::now();
    while got.len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} of {count} messages within a minute (last {:?})",
            got.len(),
            got.last()
        );
        let Ok(event) = tokio::time::timeout(Duration::from_secs(10), server.next_event()).await
        else {
            panic!(
                "stream stalled for 10 s after {} of {count} messages",
                got.len()
            );
        };
        if let ServerEvent::Message { payload, .. } = event.expect("server stopped") {
            got.push(seq(&payload));
            read.add(1);
        }
    }
    got
}

/// Stops a server instance abruptly (no drain: connections are dropped without CLOSE) and returns the
/// messages it had already handed to the application but the test had not read yet.
async fn stop_abruptly(server: Server, read: &Read) -> Vec<u64> {
    let mut rest = server.shutdown(Duration::ZERO).await;
    let mut got = Vec::new();
    while let Some(e) = rest.recv().await {
        if let ServerEvent::Message { payload, .. } = e {
            got.push(seq(&payload));
            read.add(1);
        }
    }
    got
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
    let mut first = receive(&mut server, 8_000, &read).await;
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
        second.extend(receive(&mut server, 1, &read).await);
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
