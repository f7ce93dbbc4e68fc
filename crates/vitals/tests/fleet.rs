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
    assert_inbound_exactly_once(&redis.url(), &keys, &sids, EACH).await;
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

mod race {
    //! Raw peers that race to resume one session on two servers.
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use vitals::vitals_proto::frame::{self, Frame, Hello};
    use vitals::vitals_proto::{FrameDecoder, Limits, ResumeToken};

    pub(super) fn hello(resume: Option<(SessionId, ResumeToken, u64)>) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode_hello(
            &mut out,
            &Hello {
                version: frame::VERSION,
                interval_ms: 1000,
                timeout_ms: 3000,
                resume,
                auth: None,
            },
        );
        out
    }

    /// Frames read from `s` for `window` (or until it closes).
    pub(super) fn frames_for(s: &mut TcpStream, window: Duration) -> Vec<Frame> {
        let end = std::time::Instant::now() + window;
        let mut d = FrameDecoder::new(Limits::default());
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            s.set_read_timeout(Some(left)).unwrap();
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return out,
                Ok(n) => {
                    d.push(&buf[..n]).unwrap();
                    while let Some(f) = d.next_frame().unwrap() {
                        out.push(f);
                    }
                }
            }
        }
    }

    /// Opens a new session on `addr` the way a client does; returns its id and token.
    pub(super) fn new_session(addr: std::net::SocketAddr) -> (TcpStream, SessionId, ResumeToken) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello(None)).unwrap();
        let mut d = FrameDecoder::new(Limits::default());
        let mut buf = [0u8; 4096];
        s.set_read_timeout(Some(WITHIN)).unwrap();
        loop {
            let n = s.read(&mut buf).unwrap();
            d.push(&buf[..n]).unwrap();
            if let Some(Frame::Welcome(w)) = d.next_frame().unwrap() {
                let mut ack = Vec::new();
                frame::encode_ack(&mut ack, 0);
                s.write_all(&ack).unwrap();
                return (s, w.session_id, w.token);
            }
        }
    }
}

/// Two clients that hold one session's id and token race to resume it, on two servers, at the same
/// moment: both takeovers are fenced by the session's epoch, so exactly one connection keeps the
/// session (the later takeover; the other is closed) and Redis names its server as the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_racing_to_take_over_one_session_leave_exactly_one_owner() {
    let redis = RedisServer::start();
    let make = |node: &str| {
        let store = RedisStore::with_config(&redis.url(), fleet_cfg(node)).unwrap();
        let cfg = server_config().with_timing(Duration::from_secs(1), Duration::from_secs(3));
        Server::bind_with_store(cfg, store).unwrap()
    };
    let servers = [make("a"), make("b")];
    let addrs = [servers[0].local_addr(), servers[1].local_addr()];
    let backend = Backend::connect(&redis.url(), &fleet_cfg("a"))
        .await
        .unwrap();
    for round in 0..5 {
        let (first, sid, token) =
            tokio::task::spawn_blocking(move || race::new_session(addrs[round % 2]))
                .await
                .unwrap();
        let end = tokio::time::Instant::now() + WITHIN;
        while backend.presence(sid).await.unwrap().is_none() {
            assert!(tokio::time::Instant::now() < end);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = (0..2)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut s = std::net::TcpStream::connect(addrs[i]).unwrap();
                    barrier.wait();
                    std::io::Write::write_all(&mut s, &race::hello(Some((sid, token, 0)))).unwrap();
                    let frames = race::frames_for(&mut s, Duration::from_millis(1500));
                    (frames, s)
                })
            })
            .collect();
        // The sockets stay open until presence is read (a closed survivor would park the session).
        let (seen, _sockets): (Vec<Vec<_>>, Vec<_>) =
            racers.into_iter().map(|r| r.join().unwrap()).unzip();
        let closed: Vec<bool> = seen
            .iter()
            .map(|f| {
                f.iter()
                    .any(|f| matches!(f, vitals::vitals_proto::Frame::Close { .. }))
            })
            .collect();
        assert_eq!(
            closed.iter().filter(|c| !**c).count(),
            1,
            "round {round}: exactly one racer keeps the session: {seen:?}"
        );
        let winner = closed.iter().position(|c| !c).unwrap();
        let p = backend.presence(sid).await.unwrap().unwrap();
        assert_eq!(p.owner, ["a", "b"][winner], "round {round}");
        assert!(p.live);
        assert_eq!(p.epoch, 3, "one register and two takeovers");
    }
}

/// The functions themselves fence a stale owner: after a takeover, a commit, ack, park or touch
/// with the old epoch changes nothing and says `fenced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_is_fenced_by_the_epoch() {
    let redis = RedisServer::start();
    let _backend = Backend::connect(&redis.url(), &fleet_cfg("a"))
        .await
        .unwrap(); // loads the functions
    let keys = fleet_cfg("a").keys();
    let sid = SessionId(0x1234);
    let p = keys.partition(sid);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let field = vitals::fleet::FleetKeys::session_field(sid);
    let call = |f: &str, k: Vec<String>, a: Vec<String>| {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(f).arg(k.len()).arg(k).arg(a);
        cmd
    };
    let status = |v: Vec<redis::Value>| match v.first() {
        Some(redis::Value::BulkString(s)) => String::from_utf8(s.clone()).unwrap(),
        other => panic!("{other:?}"),
    };
    let s = |x: &str| x.to_string();
    let reg: Vec<redis::Value> = call(
        "vitals_register",
        vec![keys.session(sid), keys.live(p), keys.events(p)],
        vec![field.clone(), s("tok"), s("a"), s("1"), s("60000")],
    )
    .query_async(&mut c)
    .await
    .unwrap();
    assert_eq!(status(reg), "ok");
    let take: Vec<redis::Value> = call(
        "vitals_takeover",
        vec![
            keys.session(sid),
            keys.outbound(sid),
            keys.live(p),
            keys.events(p),
        ],
        vec![
            field.clone(),
            s("tok"),
            s("b"),
            s("0"),
            s("2"),
            s("60000"),
            keys.channel_prefix(),
        ],
    )
    .query_async(&mut c)
    .await
    .unwrap();
    assert_eq!(status(take), "ok");
    let commit: Vec<redis::Value> = call(
        "vitals_commit",
        vec![keys.session(sid), keys.inbound(p)],
        vec![field.clone(), s("1"), s("a"), s("0"), s("1000"), s("late")],
    )
    .query_async(&mut c)
    .await
    .unwrap();
    assert_eq!(status(commit), "fenced");
    for (f, k, a) in [
        (
            "vitals_ack",
            vec![keys.session(sid), keys.outbound(sid)],
            vec![s("1"), s("0")],
        ),
        (
            "vitals_park",
            vec![
                keys.session(sid),
                keys.outbound(sid),
                keys.live(p),
                keys.events(p),
            ],
            vec![
                field.clone(),
                s("1"),
                s("a"),
                s("eof"),
                s("60000"),
                s("0"),
                s("3"),
            ],
        ),
        (
            "vitals_touch",
            vec![keys.session(sid), keys.outbound(sid)],
            vec![s("1"), s("60000"), s("0")],
        ),
    ] {
        let v: Vec<redis::Value> = call(f, k, a).query_async(&mut c).await.unwrap();
        assert_eq!(status(v), "fenced", "{f}");
    }
    assert!(
        inbound(&redis.url(), &keys).await.is_empty(),
        "the stale commit wrote nothing"
    );
    let backend = Backend::connect(&redis.url(), &fleet_cfg("a"))
        .await
        .unwrap();
    let presence = backend.presence(sid).await.unwrap().unwrap();
    assert_eq!(
        (presence.owner.as_str(), presence.live, presence.epoch),
        ("b", true, 2)
    );
}

/// Sends `from..to` from `client` (1 per ms) and waits until the server's application has them all
/// (after they were committed to Redis), collecting them in `got`.
async fn stream(
    client: &Client,
    server: &mut Server,
    from: u64,
    to: u64,
    got: &mut Vec<u64>,
    within: Duration,
) {
    for n in from..to {
        client.send(n.to_be_bytes().to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = tokio::time::Instant::now() + within;
    while got.last().is_none_or(|l| *l + 1 < to) {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, server.next_event()).await {
            Ok(Some(ServerEvent::Message { payload, .. })) => got.push(num(&payload)),
            Ok(Some(ServerEvent::Closed { reason, .. })) => {
                // A resume's connection may close (e.g. Unavailable during an outage); the client retries.
                let _ = reason;
            }
            Ok(Some(_)) => {}
            _ => panic!("only {got:?} of {from}..{to} within {within:?}"),
        }
    }
}

/// Redis frozen for 3 s (SIGSTOP: connections stay open, nothing answers): heartbeats go on and
/// nobody is convicted; a resume asked meanwhile is refused `Unavailable` within its bound and the
/// client keeps its session; what the client sent meanwhile is committed once Redis is back,
/// exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_convicts_nobody_and_resumes_wait_within_their_bound() {
    let redis = RedisServer::start();
    let mut cfg = fleet_cfg("a");
    cfg.resume_wait = Duration::from_millis(500);
    let store = RedisStore::with_config(&redis.url(), cfg).unwrap();
    let mut server = Server::bind_with_store(server_config(), store).unwrap();
    let handle = server.handle();
    let mut client = Client::connect(client_config(&server));
    connected(&mut client).await;
    let conn = server_event(&mut server, WITHIN, |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    let mut got = Vec::new();
    stream(&client, &mut server, 0, 100, &mut got, WITHIN).await;

    redis.signal("STOP");
    let stopped = tokio::time::Instant::now();
    for n in 100..200u64 {
        client.send(n.to_be_bytes().to_vec()).await.unwrap();
    }
    // 3 s is 7 timeouts: heartbeats go on, nobody is convicted on either side. At 300 ms the
    // connection is cut: the client's resume needs Redis.
    let mut refused_at = None;
    let mut cut = false;
    while stopped.elapsed() < Duration::from_secs(3) {
        if !cut && stopped.elapsed() > Duration::from_millis(300) {
            handle.disconnect(conn).unwrap();
            cut = true;
        }
        tokio::select! {
            e = server.next_event() => match e.unwrap() {
                ServerEvent::Closed { reason, .. } => match reason {
                    vitals::DisconnectReason::LocalClose {
                        code: vitals::vitals_proto::CloseCode::Unavailable,
                        ..
                    } => {
                        refused_at.get_or_insert(stopped.elapsed());
                    }
                    vitals::DisconnectReason::Disconnected => {}
                    other => panic!("closed during the outage at {:?}: {other:?}", stopped.elapsed()),
                },
                ServerEvent::Message { .. } => panic!("a message reported before it was committed"),
                _ => {}
            },
            e = client.next_event() => match e.unwrap() {
                ClientEvent::Dead {
                    reason: vitals::DisconnectReason::SilenceTimeout,
                } => panic!("the client convicted the server"),
                e @ (ClientEvent::SessionLost { .. } | ClientEvent::Closed { .. }) => {
                    panic!("client: {e:?}")
                }
                _ => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    let refused = refused_at.expect("a resume during the outage was refused Unavailable");
    assert!(
        refused < Duration::from_millis(300 + 500 + 1500),
        "refused after {refused:?}"
    );
    redis.signal("CONT");
    stream(
        &client,
        &mut server,
        200,
        300,
        &mut got,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    let keys = fleet_cfg("a").keys();
    let stored = inbound(&redis.url(), &keys).await;
    let all: Vec<u64> = stored.values().flatten().map(|(_, d)| num(d)).collect();
    assert_eq!(all, (0..300).collect::<Vec<_>>());
}

/// Redis killed and restarted empty (no persistence): its sessions are gone, and that is said out
/// loud — the server closes with `UnknownSession`, the client reports `SessionLost`, starts a new
/// session and re-sends what was never acknowledged; nothing arrives twice in a session's stream and
/// no session has a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_session_lost_never_a_silent_gap() {
    let mut redis = RedisServer::start();
    let mut server = fleet_server(&redis, "a");
    let mut client = Client::connect(client_config(&server));
    let first = connected(&mut client).await;
    let mut got = Vec::new();
    stream(&client, &mut server, 0, 100, &mut got, WITHIN).await;
    redis.restart();
    for n in 100..200u64 {
        client.send(n.to_be_bytes().to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The client reconnects with a new session (`Connected`), then says the old one was lost.
    let mut second = None;
    let (lost, resent) = client_event(&mut client, WITHIN, |e| match e {
        ClientEvent::Connected { session, .. } => {
            second = *session;
            None
        }
        ClientEvent::SessionLost { session, resent } => Some((*session, *resent)),
        _ => None,
    })
    .await;
    assert_eq!(lost, first);
    let second = second.expect("a new session");
    assert_ne!(second, first);
    // Whatever the new session holds is a gap-free run of its own sequence numbers, and every
    // message sent after the loss is in it once.
    let end = tokio::time::Instant::now() + WITHIN;
    let keys = fleet_cfg("a").keys();
    loop {
        let stored = inbound(&redis.url(), &keys).await;
        let mine = stored.get(&second).cloned().unwrap_or_default();
        let seqs: Vec<u64> = mine.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "gap in the new session"
        );
        let data: Vec<u64> = mine.iter().map(|(_, d)| num(d)).collect();
        let mut sorted = data.clone();
        sorted.dedup();
        assert_eq!(sorted, data, "a message twice");
        if data.last() == Some(&199) {
            assert!(resent > 0 || data.first() == Some(&100), "resent {resent}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "new session holds {data:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis with `appendfsync always`, killed (SIGKILL) mid-stream and restarted from its append-only
/// file: everything it acknowledged is still there, so sessions go on — every message exactly once
/// and in order, no `SessionLost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_with_appendfsync_always_keeps_exactly_once() {
    let mut redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]);
    let mut server = fleet_server(&redis, "a");
    let mut client = Client::connect(client_config(&server));
    let sid = connected(&mut client).await;
    let backend = Backend::connect(&redis.url(), &fleet_cfg("a"))
        .await
        .unwrap();
    let mut got = Vec::new();
    stream(&client, &mut server, 0, 100, &mut got, WITHIN).await;
    for n in 0..50u64 {
        backend
            .send_to_session(sid, &n.to_be_bytes())
            .await
            .unwrap();
    }
    let sender = client.sender();
    let sending = tokio::spawn(async move {
        for n in 100..300u64 {
            sender.send(n.to_be_bytes().to_vec()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.restart();
    sending.await.unwrap();
    let backend = Backend::connect(&redis.url(), &fleet_cfg("a"))
        .await
        .unwrap();
    for n in 50..100u64 {
        backend
            .send_to_session(sid, &n.to_be_bytes())
            .await
            .unwrap();
    }
    stream(
        &client,
        &mut server,
        300,
        301,
        &mut got,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(got, (0..301).collect::<Vec<_>>());
    let mut back = Vec::new();
    while back.len() < 100 {
        let e = tokio::time::timeout(WITHIN, client.next_event())
            .await
            .unwrap()
            .unwrap();
        match e {
            ClientEvent::Message(p) => back.push(num(&p)),
            ClientEvent::SessionLost { .. } => panic!("session lost across a durable restart"),
            _ => {}
        }
    }
    assert_eq!(back, (0..100).collect::<Vec<_>>());
    let stored = inbound(&redis.url(), &fleet_cfg("a").keys()).await;
    let data: Vec<u64> = stored[&sid].iter().map(|(_, d)| num(d)).collect();
    assert_eq!(data, (0..301).collect::<Vec<_>>());
}

/// A parked session expires in Redis after the session ttl: a resume after that is answered
/// `UnknownSession` (the client says `SessionLost`), one before it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_session_expires_after_the_ttl() {
    use std::io::Write;
    let redis = RedisServer::start();
    let store = RedisStore::with_config(&redis.url(), fleet_cfg("a")).unwrap();
    let mut cfg = server_config().with_timing(Duration::from_secs(1), Duration::from_secs(3));
    cfg.proto.session.ttl = Duration::from_millis(400);
    let server = Server::bind_with_store(cfg, store).unwrap();
    let addr = server.local_addr();
    let backend = Backend::connect(&redis.url(), &fleet_cfg("a"))
        .await
        .unwrap();
    let resume = |sid, token| {
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(&race::hello(Some((sid, token, 0)))).unwrap();
            race::frames_for(&mut s, Duration::from_millis(500))
        })
    };
    for (wait, expect_resumed) in [
        (Duration::from_millis(100), true),
        (Duration::from_millis(900), false),
    ] {
        let (first, sid, token) = tokio::task::spawn_blocking(move || race::new_session(addr))
            .await
            .unwrap();
        let end = tokio::time::Instant::now() + WITHIN;
        while !backend.presence(sid).await.unwrap().is_some_and(|p| p.live) {
            assert!(tokio::time::Instant::now() < end, "never registered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first); // parked: no CLOSE from the client
        let end = tokio::time::Instant::now() + WITHIN;
        while backend.presence(sid).await.unwrap().is_some_and(|p| p.live) {
            assert!(tokio::time::Instant::now() < end, "never parked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(wait).await;
        let frames = resume(sid, token).await.unwrap();
        let resumed = frames
            .iter()
            .any(|f| matches!(f, vitals::vitals_proto::Frame::Welcome(w) if w.resumed));
        let unknown = frames.iter().any(|f| {
            matches!(
                f,
                vitals::vitals_proto::Frame::Close {
                    code: vitals::vitals_proto::CloseCode::UnknownSession,
                    ..
                }
            )
        });
        assert_eq!(
            (resumed, unknown),
            (expect_resumed, !expect_resumed),
            "after {wait:?}: {frames:?}"
        );
    }
    drop(server);
}

/// The event stream tells a backend what happened to a session: `connect` when it registers, `park`
/// with the reason when its connection ends (`silence_timeout`: the server convicted a silent peer),
/// `resume` with the node it came from, `end` when the client closes it — readable with a consumer
/// group, as a backend would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_reports_connect_conviction_resume_and_end() {
    let redis = RedisServer::start();
    let mut server = fleet_server(&redis, "a");
    let keys = fleet_cfg("a").keys();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    for p in 0..keys.partitions() {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(keys.events(p))
            .arg("backend")
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // A raw peer opens a session, then falls silent: convicted after the timeout.
    let addr = server.local_addr();
    let (silent, sid, token) = tokio::task::spawn_blocking(move || race::new_session(addr))
        .await
        .unwrap();
    server_event(&mut server, WITHIN, |e| match e {
        ServerEvent::Closed { reason, .. } => {
            assert_eq!(*reason, vitals::DisconnectReason::SilenceTimeout);
            Some(())
        }
        _ => None,
    })
    .await;
    drop(silent);
    // It comes back (resume), then ends the session for good.
    let mut back = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut s, &race::hello(Some((sid, token, 0)))).unwrap();
        let frames = race::frames_for(&mut s, Duration::from_millis(300));
        assert!(
            frames
                .iter()
                .any(|f| matches!(f, vitals::vitals_proto::Frame::Welcome(w) if w.resumed)),
            "{frames:?}"
        );
        s
    })
    .await
    .unwrap();
    let mut close = Vec::new();
    vitals::vitals_proto::frame::encode_close(
        &mut close,
        vitals::vitals_proto::CloseCode::Normal,
        "bye",
    );
    std::io::Write::write_all(&mut back, &close).unwrap();
    let want = ["connect", "park", "resume", "end"];
    let mut got: Vec<(String, String)> = Vec::new();
    let end = tokio::time::Instant::now() + WITHIN;
    while got.len() < want.len() {
        assert!(tokio::time::Instant::now() < end, "events so far: {got:?}");
        let p = keys.partition(sid);
        type Entries = Vec<(String, std::collections::HashMap<String, String>)>;
        let reply: Option<Vec<(String, Entries)>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("backend")
            .arg("worker-1")
            .arg("COUNT")
            .arg(10)
            .arg("BLOCK")
            .arg(200)
            .arg("STREAMS")
            .arg(keys.events(p))
            .arg(">")
            .query_async(&mut c)
            .await
            .unwrap();
        for (_, entries) in reply.unwrap_or_default() {
            for (id, fields) in entries {
                assert_eq!(
                    fields["session"],
                    vitals::fleet::FleetKeys::session_field(sid)
                );
                let kind = fields["type"].clone();
                let reason = fields.get("reason").cloned().unwrap_or_default();
                got.push((kind, reason));
                let _: u64 = redis::cmd("XACK")
                    .arg(keys.events(p))
                    .arg("backend")
                    .arg(id)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
    let kinds: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, want, "in this order");
    assert_eq!(
        got[1].1, "silence_timeout",
        "the park says why: a conviction"
    );
    drop(back);
}
