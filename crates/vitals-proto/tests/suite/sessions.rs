//! Sessions: exactly once, in order, across partitions and resumes; typed resume errors;
//! back-pressure; chunking with control frames first.

use crate::sim::{Pair, Side, keys};
use proptest::prelude::*;
use std::time::Duration;
use vitals_proto::{
    CloseCode, Config, Connection, Event, Frame, FrameDecoder, FrameType, Limits, LivenessConfig,
    SendError, Session, SessionStore, frame,
};

fn cfg() -> Config {
    Config {
        liveness: LivenessConfig {
            interval: Duration::from_millis(1000),
            timeout: Duration::from_millis(3000),
            stall_tolerance: Duration::from_millis(500),
            phi: None,
        },
        ..Config::default()
    }
}

fn msg(i: u32) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.resize(4 + (i % 7) as usize * 13, (i % 251) as u8);
    v
}

/// Send `n` messages each way while `fault(p, sent)` may inject faults; reconnect whenever a
/// side closes (as a runtime would); finish when everything was delivered.
fn pump(p: &mut Pair, n: u32, mut fault: impl FnMut(&mut Pair, u32)) -> u32 {
    let (mut c, mut s, mut reconnects) = (0u32, 0u32, 0u32);
    let limit = p.now + Duration::from_secs(3600);
    while p.server.received.len() < n as usize || p.client.received.len() < n as usize {
        assert!(
            p.now < limit,
            "no progress: {} / {}",
            p.server.received.len(),
            p.client.received.len()
        );
        if p.client.conn.is_closed() || p.server.conn.is_closed() {
            p.reconnect();
            reconnects += 1;
        }
        let now = p.now;
        for _ in 0..16 {
            if c < n && p.client.conn.send(now, msg(c)).is_ok() {
                c += 1;
            }
            if s < n && p.server.conn.send(now, msg(s)).is_ok() {
                s += 1;
            }
        }
        fault(p, c);
        p.run_for(Duration::from_millis(2));
    }
    reconnects
}

fn expected(n: u32) -> Vec<Vec<u8>> {
    (0..n).map(msg).collect()
}

#[test]
fn partition_during_10000_messages_then_resume_loses_nothing_duplicates_nothing() {
    let mut c = cfg();
    c.session.max_replay_messages = 2000;
    let mut p = Pair::new(c, c, 11);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    let mut cut = false;
    let reconnects = pump(&mut p, 10_000, |p, sent| {
        if sent >= 5000 && !cut {
            cut = true;
            p.c2s.blackhole = true;
            p.s2c.blackhole = true;
        }
    });
    assert!(cut);
    assert!(reconnects >= 1);
    assert_eq!(p.server.received, expected(10_000));
    assert_eq!(p.client.received, expected(10_000));
    let resumed = p
        .client
        .count(|e| matches!(e, Event::Connected { resumed: true, .. }));
    assert!(resumed >= 1);
}

#[test]
fn large_messages_are_chunked_and_control_frames_go_first() {
    let t0 = std::time::Instant::now();
    let c = cfg();
    let mut client = Connection::client(t0, c);
    let mut server = Connection::server(t0, c, keys(9));
    let mut wire = Vec::new();
    for _ in 0..2 {
        while client.poll_transmit(&mut wire) > 0 {}
        server.handle_input(t0, &wire);
        wire.clear();
        while server.poll_transmit(&mut wire) > 0 {}
        client.handle_input(t0, &wire);
        wire.clear();
    }
    let big: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 253) as u8).collect();
    client.send(t0, big.clone()).unwrap();
    assert!(client.poll_transmit(&mut wire) > 0);
    // A PING arrives while the big message is half out: the PONG must precede the next chunk.
    let mut ping = Vec::new();
    frame::encode_ping(&mut ping, FrameType::Ping, 77, 1234);
    client.handle_input(t0, &ping);
    let first_len = wire.len();
    assert!(client.poll_transmit(&mut wire) > 0);
    let mut d = FrameDecoder::new(Limits::default());
    d.push(&wire[first_len..]).unwrap();
    assert_eq!(
        d.next_frame().unwrap(),
        Some(Frame::Pong {
            nonce: 77,
            timestamp_us: 1234
        })
    );
    while client.poll_transmit(&mut wire) > 0 {}
    let mut d = FrameDecoder::new(Limits {
        max_frame_size: u32::MAX,
        max_buffered: usize::MAX,
    });
    d.push(&wire).unwrap();
    let frames: Vec<Frame> = std::iter::from_fn(|| d.next_frame().unwrap()).collect();
    let data: Vec<usize> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Data { payload, .. } => Some(payload.len()),
            _ => None,
        })
        .collect();
    assert_eq!(data.len(), big.len().div_ceil(c.chunk_size));
    assert!(data.iter().all(|&l| l <= c.chunk_size));
    server.handle_input(t0, &wire);
    let got: Vec<Vec<u8>> = std::iter::from_fn(|| server.poll_event())
        .filter_map(|e| match e {
            Event::Message { payload, .. } => Some(payload.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![big]);
}

fn connected_then_parked(seed: u64) -> (Pair, Session) {
    let mut p = Pair::new(cfg(), cfg(), seed);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    let now = p.now;
    p.client.conn.send(now, b"one".to_vec()).unwrap();
    p.run_for(Duration::from_secs(1));
    // Cut before the ack of "two" can come back.
    p.c2s.blackhole = true;
    p.s2c.blackhole = true;
    let now = p.now;
    p.client.conn.send(now, b"two".to_vec()).unwrap();
    p.run_for(Duration::from_millis(100));
    let now = p.now;
    let s = p.server.conn.take_session(now).unwrap();
    p.store.put(s);
    let cs = p.client.conn.take_session(now).unwrap();
    (p, cs)
}

fn client_close(p: &Pair) -> Option<CloseCode> {
    p.client.events.iter().find_map(|(_, e)| match e {
        Event::Closed {
            code,
            by_peer: true,
            ..
        } => Some(*code),
        _ => None,
    })
}

fn restart(p: &mut Pair, client: Connection) {
    let now = p.now;
    p.client = Side::new(client);
    p.server.conn = Connection::server(now, cfg(), keys(51));
    p.reset_links();
}

#[test]
fn resume_with_wrong_token_is_rejected_and_the_session_survives() {
    let (mut p, real) = connected_then_parked(12);
    // An attacker knows the session id but not the token.
    let now = p.now;
    let mut server = Connection::server(now, cfg(), keys(60));
    let mut hello = Vec::new();
    frame::encode_hello(
        &mut hello,
        &frame::Hello {
            version: frame::VERSION,
            interval_ms: 1000,
            timeout_ms: 3000,
            resume: Some((real.id(), keys(999).token, 0)),
            auth: None,
        },
    );
    server.handle_input(now, &hello);
    assert!(
        matches!(server.poll_event(), Some(Event::ResumeRequested { session }) if session == real.id())
    );
    server.resolve_resume(now, &mut p.store);
    assert!(matches!(
        server.poll_event(),
        Some(Event::Closed {
            code: CloseCode::BadToken,
            by_peer: false,
            ..
        })
    ));
    let mut out = Vec::new();
    while server.poll_transmit(&mut out) > 0 {}
    let mut d = FrameDecoder::new(Limits::default());
    d.push(&out).unwrap();
    assert!(matches!(
        d.next_frame().unwrap(),
        Some(Frame::Close {
            code: CloseCode::BadToken,
            ..
        })
    ));
    assert_eq!(p.store.len(), 1, "a bad token must not destroy the session");
    // The real client still resumes, and "two" arrives exactly once.
    let before = p.server.received.len();
    let now = p.now;
    restart(&mut p, Connection::client_resume(now, cfg(), real));
    p.run_for(Duration::from_millis(100));
    assert!(p.connected());
    let after: Vec<Vec<u8>> = p.server.received[before..].to_vec();
    assert_eq!(after, vec![b"two".to_vec()]);
}

#[test]
fn unknown_session_is_a_typed_close_and_unacked_messages_are_handed_back() {
    let (mut p, real) = connected_then_parked(13);
    // The server restarted: its in-memory store is empty.
    p.store = vitals_proto::MemoryStore::new();
    let now = p.now;
    restart(&mut p, Connection::client_resume(now, cfg(), real));
    p.run_for(Duration::from_millis(100));
    assert_eq!(client_close(&p), Some(CloseCode::UnknownSession));
    let now = p.now;
    let s = p.client.conn.take_session(now).unwrap();
    assert_eq!(s.into_unacked(), vec![b"two".to_vec()]);
}

#[test]
fn expired_session_is_a_typed_close() {
    let (mut p, real) = connected_then_parked(14);
    p.now += cfg().session.ttl;
    let now = p.now;
    restart(&mut p, Connection::client_resume(now, cfg(), real));
    p.run_for(Duration::from_millis(100));
    assert_eq!(client_close(&p), Some(CloseCode::SessionExpired));
    assert_eq!(
        p.store.purge_expired(p.now),
        0,
        "taken, so no longer stored"
    );
}

#[test]
fn full_replay_buffer_reports_backpressure_and_recovers_after_acks() {
    let mut c = cfg();
    c.session.max_replay_bytes = 1000;
    let mut p = Pair::new(c, c, 15);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    p.server.stalled_until = Some(p.now + Duration::from_millis(500));
    let now = p.now;
    let mut accepted = 0;
    let err = loop {
        match p.client.conn.send(now, vec![7; 100]) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(accepted, 10);
    assert!(matches!(err, SendError::Backpressure(b) if b.buffered == 1000 && b.len == 100));
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.server.received.len(), 10);
    let now = p.now;
    assert!(p.client.conn.send(now, vec![7; 100]).is_ok());
}

#[derive(Debug, Clone)]
enum Fault {
    Run(u16),
    Send(u8),
    Cut,
    Hold(u16),
    Stall(bool, u16),
    Jitter(u16),
    /// Both sides drop the connection at once, whatever its state (a runtime told to
    /// disconnect, or a middlebox reset); in-flight bytes are lost; the client resumes.
    Reconnect,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (1u16..3000).prop_map(Fault::Run),
        (1u8..40).prop_map(Fault::Send),
        Just(Fault::Cut),
        (1u16..5000).prop_map(Fault::Hold),
        (any::<bool>(), 1u16..8000).prop_map(|(s, d)| Fault::Stall(s, d)),
        (0u16..800).prop_map(Fault::Jitter),
    ]
}

/// [`fault`] plus forced reconnects at any moment (mid-handshake, mid-chunk, mid-resume), and
/// short runs so that they land in those windows.
fn fault_or_reconnect() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => fault(),
        1 => (1u16..40).prop_map(Fault::Run),
        1 => Just(Fault::Reconnect),
    ]
}

/// Apply `faults`, reconnecting whenever a side closed (as a runtime would), then heal and
/// drain: every message either side's `send` accepted arrives exactly once and in order.
fn exactly_once_under(faults: Vec<Fault>, seed: u64) -> Result<(), TestCaseError> {
    let mut c = cfg();
    c.chunk_size = 16;
    c.session.max_replay_messages = 64;
    let mut p = Pair::new(c, c, seed);
    let (mut sc, mut ss) = (0u32, 0u32);
    for f in faults {
        if p.client.conn.is_closed() || p.server.conn.is_closed() {
            p.reconnect();
        }
        match f {
            Fault::Run(ms) => p.run_for(Duration::from_millis(ms.into())),
            Fault::Send(k) => {
                let now = p.now;
                for _ in 0..k {
                    if p.client.conn.send(now, msg(sc)).is_ok() {
                        sc += 1;
                    }
                    if p.server.conn.send(now, msg(ss)).is_ok() {
                        ss += 1;
                    }
                }
            }
            Fault::Cut => {
                p.c2s.blackhole = true;
                p.s2c.blackhole = true;
            }
            Fault::Hold(ms) => {
                let until = p.now + Duration::from_millis(ms.into());
                p.c2s.hold_until = Some(until);
                p.s2c.hold_until = Some(until);
            }
            Fault::Stall(client, ms) => {
                let until = Some(p.now + Duration::from_millis(ms.into()));
                if client {
                    p.client.stalled_until = until
                } else {
                    p.server.stalled_until = until
                }
            }
            Fault::Jitter(ms) => {
                p.c2s.jitter = Duration::from_millis(ms.into());
                p.s2c.jitter = Duration::from_millis(ms.into());
            }
            Fault::Reconnect => p.reconnect(),
        }
        // Invariant at every point: what was delivered is a prefix, in order, no duplicates.
        prop_assert_eq!(
            &p.server.received[..],
            &expected(sc)[..p.server.received.len()]
        );
        prop_assert_eq!(
            &p.client.received[..],
            &expected(ss)[..p.client.received.len()]
        );
    }
    // Heal and drain: everything sent arrives.
    p.c2s.jitter = Duration::ZERO;
    p.s2c.jitter = Duration::ZERO;
    let limit = p.now + Duration::from_secs(600);
    while (p.server.received.len() < sc as usize || p.client.received.len() < ss as usize)
        && p.now < limit
    {
        if p.client.conn.is_closed() || p.server.conn.is_closed() {
            p.reconnect();
        }
        p.run_for(Duration::from_millis(500));
    }
    prop_assert_eq!(p.server.received.clone(), expected(sc));
    prop_assert_eq!(p.client.received.clone(), expected(ss));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_faults_keep_exactly_once_in_order(faults in prop::collection::vec(fault(), 1..25), seed in any::<u64>()) {
        exactly_once_under(faults, seed)?;
    }

    #[test]
    fn random_faults_and_forced_reconnects_keep_exactly_once_in_order(faults in prop::collection::vec(fault_or_reconnect(), 1..40), seed in any::<u64>()) {
        exactly_once_under(faults, seed)?;
    }
}

#[test]
fn receiver_drops_a_replayed_duplicate_and_rejects_a_gap() {
    let t0 = std::time::Instant::now();
    let mut server = Connection::server(t0, cfg(), keys(70));
    let mut bytes = Vec::new();
    frame::encode_hello(
        &mut bytes,
        &frame::Hello {
            version: frame::VERSION,
            interval_ms: 1000,
            timeout_ms: 3000,
            resume: None,
            auth: None,
        },
    );
    frame::encode_data(&mut bytes, 0, 0, true, b"a");
    frame::encode_data(&mut bytes, 0, 0, true, b"a"); // replayed duplicate
    frame::encode_data(&mut bytes, 1, 0, true, b"b");
    server.handle_input(t0, &bytes);
    let msgs: Vec<Vec<u8>> = std::iter::from_fn(|| server.poll_event())
        .filter_map(|e| match e {
            Event::Message { payload, .. } => Some(payload.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(msgs, vec![b"a".to_vec(), b"b".to_vec()]);
    let mut gap = Vec::new();
    frame::encode_data(&mut gap, 5, 0, true, b"x");
    server.handle_input(t0, &gap);
    assert!(matches!(
        server.poll_event(),
        Some(Event::Closed {
            code: CloseCode::ProtocolError,
            ..
        })
    ));
}

/// Regression (proptest case `[Hold(2264), Jitter(271), Run(2264), Hold(737), Send(1)]`): the
/// client's HELLO is held, the server opens a new session and sends WELCOME, but the WELCOME is
/// held past the client's timeout. The client convicts the server, and since it never learned
/// the session id it reconnects with a new session. A message the server had accepted into the
/// first session could then never be delivered. Now the server refuses `send` until the client
/// confirmed the session, and everything accepted arrives exactly once.
#[test]
fn server_send_before_the_client_got_welcome_is_refused_not_lost() {
    let mut c = cfg();
    c.chunk_size = 16;
    c.session.max_replay_messages = 64;
    let mut p = Pair::new(c, c, 445_432_325_939_055_222);
    p.c2s.jitter = Duration::from_millis(271);
    p.s2c.jitter = Duration::from_millis(271);
    let until = p.now + Duration::from_millis(2264);
    p.c2s.hold_until = Some(until);
    p.s2c.hold_until = Some(until);
    p.run_for(Duration::from_millis(2264));
    // The server has answered HELLO; its WELCOME now waits behind a new hold until after the
    // client's 3 s timeout.
    let welcome = p.server.frames_out().into_iter().find_map(|f| match f {
        Frame::Welcome(w) => Some(w.session_id),
        _ => None,
    });
    assert!(welcome.is_some(), "the server answered HELLO");
    let until = p.now + Duration::from_millis(737);
    p.c2s.hold_until = Some(until);
    p.s2c.hold_until = Some(until);
    // The application on each side sends one message now (as the proptest did).
    let now = p.now;
    let client_sent = p.client.conn.send(now, msg(0));
    let server_sent = p.server.conn.send(now, msg(0));
    let server_connected_then = p.server.count(|e| matches!(e, Event::Connected { .. }));
    p.c2s.jitter = Duration::ZERO;
    p.s2c.jitter = Duration::ZERO;
    p.run_for(Duration::from_secs(1));
    assert!(
        p.client.dead_at().is_some(),
        "the client convicted the silent server"
    );
    // The runtime reconnects; the client never got the WELCOME, so it starts a new session
    // (keeping its queued message).
    p.reconnect();
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    p.run_for(Duration::from_secs(1));
    // The guarantee: whatever `send` accepted arrives exactly once, in order.
    let accepted = |r: &Result<_, SendError>| if r.is_ok() { expected(1) } else { vec![] };
    assert_eq!(p.server.received, accepted(&client_sent));
    assert_eq!(p.client.received, accepted(&server_sent));
    // How: the client's message was queued and carried into the new session; the server,
    // whose WELCOME had not been confirmed, refused its message with a typed error.
    assert_eq!(client_sent, Ok(vitals_proto::Seq(0)));
    assert_eq!(server_sent, Err(SendError::NoSession));
    assert_eq!(
        server_connected_then, 0,
        "not connected before confirmation"
    );
    // On the new, confirmed connection the server's application sends again.
    let now = p.now;
    assert_eq!(p.server.conn.send(now, msg(0)), Ok(vitals_proto::Seq(0)));
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.client.received, expected(1));
}

/// A client that did receive the WELCOME of a new session, whose confirming ACK never reached
/// the server, resumes that session: the server parks unconfirmed sessions too.
#[test]
fn unconfirmed_new_session_is_still_resumable() {
    let mut p = Pair::new(cfg(), cfg(), 21);
    // Lose the client's ACK (and everything after it), not the WELCOME.
    assert!(p.run_until(Duration::from_secs(1), |p| {
        p.server
            .frames_out()
            .iter()
            .any(|f| matches!(f, Frame::Welcome(_)))
    }));
    p.c2s.blackhole = true;
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.client.count(|e| matches!(e, Event::Connected { .. })), 1);
    assert!(
        p.client
            .frames_out()
            .iter()
            .any(|f| matches!(f, Frame::Ack { next: 0 })),
        "the client confirmed"
    );
    assert_eq!(p.server.count(|e| matches!(e, Event::Connected { .. })), 0);
    let now = p.now;
    assert_eq!(
        p.server.conn.send(now, b"early".to_vec()),
        Err(SendError::NoSession)
    );
    p.client.conn.send(now, b"one".to_vec()).unwrap();
    p.reconnect();
    let resumed = |s: &Side| s.count(|e| matches!(e, Event::Connected { resumed: true, .. }));
    assert!(p.run_until(Duration::from_secs(1), |p| {
        resumed(&p.client) == 1 && resumed(&p.server) == 1
    }));
    assert_eq!(p.server.count(|e| matches!(e, Event::Connected { .. })), 1);
    let now = p.now;
    p.server.conn.send(now, b"two".to_vec()).unwrap();
    p.run_for(Duration::from_secs(1));
    assert_eq!(p.server.received, vec![b"one".to_vec()]);
    assert_eq!(p.client.received, vec![b"two".to_vec()]);
}
