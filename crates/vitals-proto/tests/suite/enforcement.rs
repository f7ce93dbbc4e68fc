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
    let mut server = open_binary_server(t0);
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
/// them) are not ping abuse: pings of one input count once, and a stall refills the budget.
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

/// A binary server that has confirmed a client proposing `interval` / `timeout` (the default policy
/// grants 1 s / 3 s), at `t0`.
fn open_binary_server(t0: Instant) -> Connection {
    let mut server = Connection::server(t0, Config::default(), keys(1));
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
    frame::encode_ack(&mut bytes, 0);
    server.handle_input(t0, &bytes);
    assert!(matches!(events(&mut server)[..], [Event::Connected { .. }]));
    server
}

/// A classic JSON server (interval 1 s, timeout 3 s).
fn json_server(t0: Instant) -> Connection {
    let mut cfg = JsonConfig::default();
    cfg.liveness.interval = Duration::from_secs(1);
    cfg.liveness.timeout = Duration::from_secs(3);
    Connection::json(t0, Role::Server, cfg)
}

fn binary_ping(n: u64, timestamp_us: u64) -> Vec<u8> {
    let mut v = Vec::new();
    frame::encode_ping(&mut v, FrameType::Ping, n as u32, timestamp_us);
    v
}

fn json_ping(n: u64, _timestamp_us: u64) -> Vec<u8> {
    format!("{{\"ping\":{n}}}").into_bytes()
}

/// Feeds `inputs` (offset from `t0`, bytes) to `server`, answering nothing; returns the strikes
/// seen and, if it closed, the close code and the offset of the input that closed it.
fn feed(
    server: &mut Connection,
    t0: Instant,
    inputs: impl IntoIterator<Item = (Duration, Vec<u8>)>,
) -> (usize, Option<(CloseCode, Duration)>) {
    let mut strikes = 0;
    for (at, bytes) in inputs {
        let now = t0 + at;
        if server.poll_timeout().is_some_and(|d| d <= now) {
            server.handle_timeout(now);
        }
        server.handle_input(now, &bytes);
        let mut out = Vec::new();
        while server.poll_transmit(&mut out) > 0 {}
        for e in events(server) {
            match e {
                Event::PingStrike { .. } => strikes += 1,
                Event::Closed { code, .. } => return (strikes, Some((code, at))),
                _ => {}
            }
        }
    }
    (strikes, None)
}

type PingFn = fn(u64, u64) -> Vec<u8>;
/// A case: its name, a server opened at the given time, and how its client writes a ping.
type Case = (&'static str, fn(Instant) -> Connection, PingFn);

/// Both codecs, each with its own way to write a ping.
fn both_codecs() -> [Case; 2] {
    [
        ("binary", open_binary_server, binary_ping),
        ("json", json_server, json_ping),
    ]
}

/// A client whose own loop lagged: a regular ping every second, then silence for 2.9 s (under the
/// 3 s timeout: a longer lag is a conviction for silence) and the three pings it owes (timeout /
/// interval, as a ticker that bursts missed ticks sends them) in one write, then on time again; and
/// later the same lag with the owed pings in separate writes 1 ms apart. Neither is ping abuse.
#[test]
fn a_client_whose_pings_bunch_after_a_pause_is_not_closed() {
    const OWED: u64 = 3;
    for (name, make, ping) in both_codecs() {
        let t0 = Instant::now();
        let mut server = make(t0);
        let at_s = |i: u64| Duration::from_secs(i);
        let at_ms = Duration::from_millis;
        // On time at 1..=10 s; lag; the owed pings in one write at 12.9 s; on time at 13..=20 s.
        let mut inputs: Vec<(Duration, Vec<u8>)> =
            (1..=10).map(|i| (at_s(i), ping(i, 0))).collect();
        inputs.push((
            at_ms(12_900),
            (0..OWED).flat_map(|k| ping(100 + k, 0)).collect(),
        ));
        inputs.extend((13..=20).map(|i| (at_s(i), ping(i, 0))));
        // Lag again; the owed pings in separate writes at 22.9 s; on time at 23..=40 s.
        inputs.extend((0..OWED).map(|k| (at_ms(22_900 + k), ping(200 + k, 0))));
        inputs.extend((23..=40).map(|i| (at_s(i), ping(i, 0))));
        let (strikes, closed) = feed(&mut server, t0, inputs);
        assert_eq!((strikes, closed), (0, None), "{name}");
    }
}

/// A flooder at 100 pings/s is closed with `TooManyPings` within a bounded time (burst and
/// strikes: under 100 ms at this rate), whether its timestamps are honest or forged to look an
/// interval apart (binary), or it speaks the classic JSON codec.
#[test]
fn a_flooder_is_closed_whatever_its_timestamps_say() {
    let forged: PingFn = |n, _| binary_ping(n, n * 1_000_000);
    let cases: [Case; 3] = [
        ("binary, honest timestamps", open_binary_server, binary_ping),
        ("binary, forged timestamps", open_binary_server, forged),
        ("json", json_server, json_ping),
    ];
    for (name, make, ping) in cases {
        let t0 = Instant::now();
        let mut server = make(t0);
        let inputs = (1..1000u64).map(|i| {
            let at = Duration::from_millis(10 * i);
            (at, ping(i, at.as_micros() as u64))
        });
        let (strikes, closed) = feed(&mut server, t0, inputs);
        let (code, at) = closed.unwrap_or_else(|| panic!("{name}: never closed"));
        assert_eq!(code, CloseCode::TooManyPings, "{name}");
        assert_eq!(strikes, 2, "{name}: two strikes, closed at the third");
        assert!(
            at <= Duration::from_millis(100),
            "{name}: closed only after {at:?}"
        );
    }
}

/// The scenario in the simulator: a classic JSON client pings every second while the server
/// is frozen for 5 s, longer than its 3 s timeout; the server convicts nobody for the silence it
/// could not see (stall guard) and the five queued pings are not ping abuse.
#[test]
fn json_pings_queued_during_a_stall_longer_than_the_timeout_are_not_abuse() {
    let t0 = Instant::now();
    let mut ccfg = JsonConfig::default();
    // A classic client that never gives up on its server.
    ccfg.liveness.interval = Duration::from_secs(1);
    ccfg.liveness.timeout = Duration::from_secs(60);
    let mut p = Pair::with(
        Connection::json(t0, Role::Client, ccfg),
        json_server(t0),
        32,
    );
    p.run_for(Duration::from_secs(5));
    p.server.stalled_until = Some(p.now + Duration::from_secs(5));
    p.run_for(Duration::from_secs(15));
    assert_eq!(p.server.count(|e| matches!(e, Event::PingStrike { .. })), 0);
    assert_eq!(
        p.server
            .count(|e| matches!(e, Event::Closed { .. } | Event::Dead { .. })),
        0
    );
    assert!(!p.server.conn.is_closed() && !p.client.conn.is_closed());
}
