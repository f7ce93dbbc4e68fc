//! Liveness on virtual time: detection at `timeout`, no pings while data flows, no false
//! conviction under jitter, the stall guard, RTT.

use crate::sim::Pair;
use std::time::Duration;
use vitals_proto::{Config, Event, Frame, LivenessConfig};

fn cfg(interval_ms: u64, timeout_ms: u64) -> Config {
    let mut c = Config {
        liveness: LivenessConfig {
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            stall_tolerance: Duration::from_millis(500),
            phi: None,
        },
        ..Config::default()
    };
    c.policy.min_interval = Duration::from_millis(100);
    c.policy.min_timeout = Duration::from_millis(300);
    c
}

fn pings(frames: &[Frame]) -> usize {
    frames
        .iter()
        .filter(|f| matches!(f, Frame::Ping { .. }))
        .count()
}

#[test]
fn detects_a_crashed_peer_at_timeout_within_one_tick() {
    for tick_ms in [1, 10] {
        let mut p = Pair::new(cfg(1000, 3000), cfg(1000, 3000), 1);
        p.tick = Duration::from_millis(tick_ms);
        assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
        p.run_for(Duration::from_secs(7));
        // The server dies silently: no FIN, nothing more on the wire.
        p.server.crashed = true;
        p.s2c.blackhole = true;
        assert!(p.run_until(Duration::from_secs(20), |p| p.client.dead_at().is_some()));
        let last = p.client.last_rx.unwrap();
        let dead = p.client.dead_at().unwrap();
        let timeout = Duration::from_secs(3);
        assert!(dead >= last + timeout, "convicted early: {:?}", dead - last);
        assert!(
            dead <= last + timeout + Duration::from_millis(tick_ms),
            "convicted late: {:?} (tick {tick_ms} ms)",
            dead - last
        );
        assert!(p.client.conn.is_closed());
    }
}

#[test]
fn no_ping_while_data_flows_both_ways_then_pings_when_idle() {
    let mut p = Pair::new(cfg(1000, 3000), cfg(1000, 3000), 2);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    for i in 0..150u32 {
        let now = p.now;
        p.client.conn.send(now, i.to_be_bytes().to_vec()).unwrap();
        p.server.conn.send(now, i.to_be_bytes().to_vec()).unwrap();
        p.run_for(Duration::from_millis(200));
    }
    assert_eq!(p.server.received.len(), 150);
    assert_eq!(pings(&p.client.frames_out()), 0);
    assert_eq!(pings(&p.server.frames_out()), 0);
    // Idle now: pings must appear, and nobody is convicted.
    p.run_for(Duration::from_secs(10));
    assert!(pings(&p.client.frames_out()) + pings(&p.server.frames_out()) >= 5);
    assert!(p.connected());
}

#[test]
fn ping_goes_out_interval_after_last_byte_read_not_after_last_ping() {
    let mut p = Pair::new(cfg(1000, 3000), cfg(1000, 3000), 3);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    // Server goes quiet but alive-silent (stalled), so the client's only traffic is its pings.
    p.server.stalled_until = Some(p.now + Duration::from_secs(100));
    p.run_for(Duration::from_millis(100));
    let before = pings(&p.client.frames_out());
    let last = p.client.last_rx.unwrap();
    let until = last + Duration::from_millis(999);
    p.run_for(until - p.now);
    assert_eq!(
        pings(&p.client.frames_out()),
        before,
        "pinged before interval"
    );
    assert!(
        p.run_until(Duration::from_secs(1), |p| pings(&p.client.frames_out())
            > before)
    );
    assert_eq!(p.now - last, Duration::from_secs(1));
}

#[test]
fn no_false_conviction_with_jitter_up_to_half_the_timeout() {
    for seed in 0..3 {
        let mut p = Pair::new(cfg(1000, 4000), cfg(1000, 4000), 100 + seed);
        p.c2s.jitter = Duration::from_millis(2000);
        p.s2c.jitter = Duration::from_millis(2000);
        assert!(p.run_until(Duration::from_secs(10), |p| p.connected()));
        for i in 0..60u32 {
            p.run_for(Duration::from_secs(5));
            let now = p.now;
            if i % 3 == 0 {
                p.client.conn.send(now, vec![1; 10]).unwrap();
            }
        }
        assert_eq!(
            p.client.count(|e| matches!(e, Event::Dead { .. })),
            0,
            "seed {seed}"
        );
        assert_eq!(
            p.server.count(|e| matches!(e, Event::Dead { .. })),
            0,
            "seed {seed}"
        );
        assert!(p.connected());
        assert!(p.client.conn.rtt().samples > 10);
    }
}

#[test]
fn stall_guard_does_not_convict_for_our_own_pause() {
    let mut p = Pair::new(cfg(1000, 3000), cfg(1000, 3000), 4);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    p.run_for(Duration::from_secs(5));
    // Our (client) process is paused for 20 s: far more than the timeout. The peer keeps
    // pinging; its bytes pile up in our socket.
    p.client.stalled_until = Some(p.now + Duration::from_secs(20));
    p.run_for(Duration::from_secs(30));
    // We convicted nobody; the peer rightly convicted *us* (we were silent for 20 s) and
    // told us so.
    assert_eq!(p.client.count(|e| matches!(e, Event::Dead { .. })), 0);
    assert_eq!(p.server.count(|e| matches!(e, Event::Dead { .. })), 1);
    assert!(p.client.events.iter().any(|(_, e)| matches!(
        e,
        Event::Closed {
            code: vitals_proto::CloseCode::Timeout,
            by_peer: true,
            ..
        }
    )));
}

#[test]
fn short_stall_with_timer_before_input_keeps_the_connection() {
    // A 5 s pause (> timeout) of the client's process while the server keeps talking; after the
    // pause the runtime handles the overdue timer first, then reads what piled up.
    let mut p = Pair::new(cfg(1000, 3000), cfg(1000, 10_000), 8);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    p.run_for(Duration::from_secs(5));
    let late = p.now + Duration::from_secs(5);
    p.client.conn.handle_timeout(late);
    let ev: Vec<Event> = std::iter::from_fn(|| p.client.conn.poll_event()).collect();
    assert!(ev.iter().any(|e| matches!(e, Event::Stalled { .. })));
    assert!(!ev.iter().any(|e| matches!(e, Event::Dead { .. })));
    assert!(!p.client.conn.is_closed());
}

#[test]
fn stall_guard_when_input_is_not_read_first_still_gives_the_peer_a_chance() {
    // A runtime that handles the timer before reading the socket after a pause: the guard alone
    // must prevent the conviction, and a real death is still found afterwards.
    let mut p = Pair::new(cfg(1000, 3000), cfg(1000, 3000), 5);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    let now = p.now + Duration::from_secs(30);
    p.client.conn.handle_timeout(now);
    let events: Vec<Event> = std::iter::from_fn(|| p.client.conn.poll_event()).collect();
    assert!(events.iter().any(|e| matches!(e, Event::Stalled { .. })));
    assert!(!events.iter().any(|e| matches!(e, Event::Dead { .. })));
    // The peer is in fact gone: conviction after timeout - interval of observed silence.
    let dead = loop {
        let t = p.client.conn.poll_timeout().unwrap();
        p.client.conn.handle_timeout(t);
        let ev: Vec<Event> = std::iter::from_fn(|| p.client.conn.poll_event()).collect();
        if ev.iter().any(|e| matches!(e, Event::Dead { .. })) {
            break t;
        }
        assert!(t < now + Duration::from_secs(10));
    };
    assert_eq!(dead - now, Duration::from_secs(2));
}

#[test]
fn rtt_is_measured_from_ping_pong() {
    let mut p = Pair::new(cfg(1000, 3000), cfg(1000, 3000), 6);
    p.c2s.delay = Duration::from_millis(30);
    p.s2c.delay = Duration::from_millis(20);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    p.run_for(Duration::from_secs(10));
    let rtt = p.client.conn.rtt();
    assert!(rtt.samples >= 3);
    assert_eq!(rtt.latest, Duration::from_millis(50));
    assert_eq!(rtt.min, Duration::from_millis(50));
    assert_eq!(rtt.smoothed, Duration::from_millis(50));
    assert!(p.client.count(|e| matches!(e, Event::Rtt(_))) >= 3);
}

#[test]
fn phi_accrual_suspects_then_convicts_before_timeout() {
    let mut c = cfg(1000, 10_000);
    c.liveness.phi = Some(vitals_proto::PhiConfig::default());
    let mut p = Pair::new(c, c, 7);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    p.run_for(Duration::from_secs(30));
    assert_eq!(p.client.count(|e| matches!(e, Event::Dead { .. })), 0);
    p.server.crashed = true;
    p.s2c.blackhole = true;
    let last = p.client.last_rx.unwrap();
    assert!(p.run_until(Duration::from_secs(20), |p| p.client.dead_at().is_some()));
    let dead = p.client.dead_at().unwrap();
    let suspect = p
        .client
        .events
        .iter()
        .find(|(t, e)| *t > last && matches!(e, Event::Suspect { .. }))
        .map(|(t, _)| *t)
        .expect("suspected first");
    assert!(suspect < dead);
    assert!(
        dead - last < Duration::from_secs(10),
        "phi convicted at {:?}",
        dead - last
    );
}

/// `ServerPolicy::client_driven`: with a client pinging every interval on a clean path, the server only
/// answers (no PING of its own, half the heartbeat traffic of the default), yet a client that goes
/// silent is still probed and convicted at the timeout.
#[test]
fn client_driven_server_answers_instead_of_pinging_and_still_convicts() {
    let mut server_cfg = cfg(1000, 3000);
    server_cfg.policy.client_driven = true;
    let mut p = Pair::new(cfg(1000, 3000), server_cfg, 11);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    p.run_for(Duration::from_secs(60));
    let client_pings = pings(&p.client.frames_out());
    assert!(
        client_pings >= 55,
        "client pinged {client_pings} times in 60 s"
    );
    assert_eq!(
        pings(&p.server.frames_out()),
        0,
        "a client-driven server does not ping"
    );

    // The default server pings too.
    let mut q = Pair::new(cfg(1000, 3000), cfg(1000, 3000), 11);
    assert!(q.run_until(Duration::from_secs(1), |q| q.connected()));
    q.run_for(Duration::from_secs(60));
    assert!(pings(&q.server.frames_out()) > 0);

    // The client goes silent: the server probes after 1.25 × interval and convicts at the timeout.
    let before = pings(&p.server.frames_out());
    p.client.crashed = true;
    p.c2s.blackhole = true;
    let silent_from = p.now;
    assert!(p.run_until(Duration::from_secs(10), |p| p.server.dead_at().is_some()));
    assert!(
        pings(&p.server.frames_out()) > before,
        "no probe before conviction"
    );
    let detected = p.server.dead_at().unwrap() - silent_from;
    assert!(
        detected <= Duration::from_millis(3000 + 1),
        "convicted {detected:?} after the silence began"
    );
}

/// `ping_now` probes RTT while bulk data flows (the schedule sends no ping then): the PONG is not
/// queued behind the peer's pending DATA chunks, so each probe is answered within a few link delays.
#[test]
fn ping_now_measures_rtt_during_bulk_transfer() {
    // Probes every 100 ms respect the granted 100 ms interval (the server's ping-strike rule).
    let mut c = cfg(100, 1000);
    c.chunk_size = 1024;
    let mut p = Pair::new(c, c, 5);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    // Links have a 5 ms delay each way. The server streams 64 KiB messages to the client while the client probes every 100 ms.
    for _ in 0..20 {
        let now = p.now;
        for _ in 0..4 {
            let _ = p.server.conn.send(now, vec![9; 64 * 1024]);
        }
        let probed = p.client.conn.ping_now(now);
        assert!(probed, "ping_now refused: the connection closed");
        p.run_for(Duration::from_millis(100));
    }
    let samples: Vec<Duration> = p
        .client
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Rtt(r) => Some(r.latest),
            _ => None,
        })
        .collect();
    assert!(
        samples.len() >= 15,
        "{} RTT samples from 20 probes",
        samples.len()
    );
    assert!(
        samples.iter().all(|r| *r <= Duration::from_millis(30)),
        "a probe waited behind bulk data: {samples:?}"
    );
}
