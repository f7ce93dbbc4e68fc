//! Negotiation and ping-abuse enforcement.

use crate::sim::{Pair, keys};
use std::time::{Duration, Instant};
use vitals_proto::frame::{self, Hello, VERSION};
use vitals_proto::{
    CloseCode, Config, Connection, Event, Frame, FrameDecoder, FrameType, JsonConfig, Limits, Role,
};

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn server_caps_the_proposed_timing_and_both_sides_use_the_grant() {
    let mut client = Config::default();
    client.liveness.interval = Duration::from_millis(10);
    client.liveness.timeout = Duration::from_millis(20);
    let server = Config::default();
    let mut p = Pair::new(client, server, 21);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    let granted = server
        .policy
        .grant(Duration::from_millis(10), Duration::from_millis(20));
    assert_eq!(granted.0, server.policy.min_interval);
    for side in [&p.client, &p.server] {
        let got = side.events.iter().find_map(|(_, e)| match e {
            Event::Connected {
                interval, timeout, ..
            } => Some((*interval, *timeout)),
            _ => None,
        });
        assert_eq!(got, Some(granted));
    }
    // And the client really pings no more often than granted: no strikes over a minute.
    p.run_for(Duration::from_secs(60));
    assert_eq!(p.server.count(|e| matches!(e, Event::PingStrike { .. })), 0);
    assert!(p.connected());
}

#[test]
fn ping_abuse_collects_strikes_then_typed_close() {
    let t0 = Instant::now();
    let cfg = Config::default();
    let mut server = Connection::server(t0, cfg, keys(1));
    let mut bytes = Vec::new();
    frame::encode_hello(
        &mut bytes,
        &Hello {
            version: VERSION,
            interval_ms: 1000,
            timeout_ms: 3000,
            resume: None,
            auth: None,
        },
    );
    // A client answers WELCOME with ACK(0), which confirms the new session.
    frame::encode_ack(&mut bytes, 0);
    server.handle_input(t0, &bytes);
    assert!(matches!(events(&mut server)[..], [Event::Connected { .. }]));
    let mut strikes = Vec::new();
    let mut closed = None;
    for i in 1..20u64 {
        let now = t0 + Duration::from_millis(10 * i);
        let mut ping = Vec::new();
        frame::encode_ping(&mut ping, FrameType::Ping, i as u32, i);
        server.handle_input(now, &ping);
        for e in events(&mut server) {
            match e {
                Event::PingStrike { strikes: s } => strikes.push(s),
                Event::Closed { code, by_peer, .. } => closed = Some((code, by_peer, i)),
                _ => {}
            }
        }
        if closed.is_some() {
            break;
        }
    }
    assert_eq!(strikes, vec![1, 2]);
    assert_eq!(
        closed.map(|c| (c.0, c.1)),
        Some((CloseCode::TooManyPings, false))
    );
    // The CLOSE frame with the typed code is on the wire.
    let mut out = Vec::new();
    while server.poll_transmit(&mut out) > 0 {}
    let mut d = FrameDecoder::new(Limits::default());
    d.push(&out).unwrap();
    let frames: Vec<Frame> = std::iter::from_fn(|| d.next_frame().unwrap()).collect();
    assert!(matches!(
        frames.last(),
        Some(Frame::Close {
            code: CloseCode::TooManyPings,
            ..
        })
    ));
    assert!(server.is_closed());
}

#[test]
fn client_closed_for_too_many_pings_doubles_its_interval_before_reconnecting() {
    let cfg = Config::default();
    let mut p = Pair::new(cfg, cfg, 22);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    let granted = cfg
        .policy
        .grant(cfg.liveness.interval, cfg.liveness.timeout)
        .0;
    assert_eq!(
        p.client.conn.reconnect_config().unwrap().liveness.interval,
        granted
    );
    p.server.conn.close(CloseCode::TooManyPings, "slow down");
    p.run_for(Duration::from_millis(100));
    assert!(p.client.events.iter().any(|(_, e)| matches!(
        e,
        Event::Closed {
            code: CloseCode::TooManyPings,
            by_peer: true,
            ..
        }
    )));
    let next = p.client.conn.reconnect_config().unwrap();
    assert_eq!(next.liveness.interval, granted * 2);
    p.reconnect();
    let before = p.client.events.len();
    let connected = |p: &Pair| {
        p.client.events[before..]
            .iter()
            .any(|(_, e)| matches!(e, Event::Connected { .. }))
    };
    assert!(p.run_until(Duration::from_secs(1), connected));
    let interval = p.client.events[before..].iter().find_map(|(_, e)| match e {
        Event::Connected { interval, .. } => Some(*interval),
        _ => None,
    });
    assert_eq!(interval, Some(granted * 2));
}

#[test]
fn json_server_closes_a_classic_client_that_pings_too_often() {
    let t0 = Instant::now();
    let mut scfg = JsonConfig::default();
    scfg.liveness.interval = Duration::from_secs(1);
    scfg.liveness.timeout = Duration::from_secs(3);
    let mut ccfg = scfg;
    ccfg.liveness.interval = Duration::from_millis(100);
    ccfg.liveness.timeout = Duration::from_millis(300);
    let mut p = Pair::with(
        Connection::json(t0, Role::Client, ccfg),
        Connection::json(t0, Role::Server, scfg),
        23,
    );
    // The client pings every 100 ms of silence; the server answers at once, so pings come
    // roughly every 110 ms, well under half the server's 1 s interval.
    p.run_for(Duration::from_secs(2));
    assert!(p.server.count(|e| matches!(e, Event::PingStrike { .. })) >= 2);
    assert!(p.server.events.iter().any(|(_, e)| matches!(
        e,
        Event::Closed {
            code: CloseCode::TooManyPings,
            ..
        }
    )));
}

/// PINGs sent an interval apart but read in one go (the server was stalled and the kernel queued
/// them) are not ping abuse: the strike rule judges the sender's timestamps, not arrival times.
#[test]
fn pings_queued_during_a_server_stall_are_not_strikes() {
    let mut c = Config::default();
    c.liveness.interval = Duration::from_millis(500);
    c.liveness.timeout = Duration::from_millis(5000);
    c.liveness.stall_tolerance = Duration::from_millis(200);
    c.policy.min_interval = Duration::from_millis(100);
    c.policy.min_timeout = Duration::from_millis(300);
    let mut p = Pair::new(c, c, 31);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    p.run_for(Duration::from_secs(2));
    // The server is frozen for 2.5 s: the client keeps pinging every 500 ms meanwhile.
    p.server.stalled_until = Some(p.now + Duration::from_millis(2500));
    p.run_for(Duration::from_secs(5));
    let strikes = p.server.count(|e| matches!(e, Event::PingStrike { .. }));
    assert_eq!(strikes, 0, "queued pings were counted as strikes");
    assert!(!p.server.conn.is_closed() && !p.client.conn.is_closed());
}
