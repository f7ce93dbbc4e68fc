//! JSON compatibility mode, in both roles, against scripted classic peers and against itself.

use crate::sim::Pair;
use std::time::{Duration, Instant};
use vitals_proto::{CloseCode, Connection, Event, JsonConfig, JsonMessage, Role};

fn cfg() -> JsonConfig {
    let mut c = JsonConfig::default();
    c.liveness.interval = Duration::from_secs(1);
    c.liveness.timeout = Duration::from_secs(3);
    c
}

fn out(c: &mut Connection) -> Vec<u8> {
    let mut v = Vec::new();
    while c.poll_transmit(&mut v) > 0 {}
    v
}

#[test]
fn serves_a_classic_client_split_reads_newlines_and_data() {
    let t0 = Instant::now();
    let mut s = Connection::json(t0, Role::Server, cfg());
    let stream = b"{\"ping\":10}\n{\"pi";
    s.handle_input(t0, stream);
    // Classic servers answer `{"ping":N}` with `{"pong":N+1}`.
    assert_eq!(out(&mut s), b"{\"pong\":11}");
    s.handle_input(
        t0 + Duration::from_secs(1),
        b"ng\":11}{\"chat\":\"hi }{\"}\r\n",
    );
    assert_eq!(out(&mut s), b"{\"pong\":12}");
    let ev: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert_eq!(
        ev,
        vec![Event::Message {
            seq: vitals_proto::Seq(0),
            payload: vitals_proto::Bytes::from_static(b"{\"chat\":\"hi }{\"}")
        }]
    );
    // A server never pings a classic client; it convicts after timeout of silence.
    let t = s.poll_timeout().unwrap();
    s.handle_timeout(t);
    assert!(out(&mut s).is_empty());
    let mut now = t;
    while !s.is_closed() {
        now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
    }
    assert_eq!(now - (t0 + Duration::from_secs(1)), Duration::from_secs(3));
}

#[test]
fn a_server_of_pinging_classic_clients_arms_only_the_conviction() {
    // Classic clients drive their heartbeat and never answer a server's ping, so a JSON server's
    // only deadline is the conviction: while the client pings every interval, no timer is due
    // before `timeout` of silence (a runtime's timer never fires for a live classic client).
    let t0 = Instant::now();
    let mut s = Connection::json(t0, Role::Server, cfg());
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(3)));
    for i in 1..=100u64 {
        let at = t0 + Duration::from_millis(i * 1000 + i % 7);
        s.handle_input(at, format!("{{\"ping\":{i}}}").as_bytes());
        assert_eq!(out(&mut s), format!("{{\"pong\":{}}}", i + 1).as_bytes());
        assert_eq!(
            s.poll_timeout(),
            Some(at + Duration::from_secs(3)),
            "ping {i}"
        );
    }
    // Opted in (`send_pings`), a JSON server pings after `interval` of silence as before.
    let mut c = cfg();
    c.send_pings = Some(true);
    let mut s = Connection::json(t0, Role::Server, c);
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    s.handle_timeout(t0 + Duration::from_secs(1));
    assert!(out(&mut s).starts_with(b"{\"ping\":"));
}

#[test]
fn acts_as_a_classic_client_and_measures_rtt_from_echoed_pongs() {
    let t0 = Instant::now();
    let mut c = Connection::json(t0, Role::Client, cfg());
    let t1 = c.poll_timeout().unwrap();
    assert_eq!(t1 - t0, Duration::from_secs(1));
    c.handle_timeout(t1);
    let ping = out(&mut c);
    let mut d = vitals_proto::JsonDecoder::new(Default::default());
    d.push(&ping).unwrap();
    let Some(JsonMessage::Ping(n)) = d.next_message().unwrap() else {
        panic!("expected a ping, got {ping:?}");
    };
    let pong = format!("{{ \"pong\" : {n} }}\n");
    c.handle_input(t1 + Duration::from_millis(40), pong.as_bytes());
    assert_eq!(c.rtt().latest, Duration::from_millis(40));
    // A classic server that answers with another number is still a sign of life.
    c.handle_input(t1 + Duration::from_millis(900), b"{\"pong\":11}");
    assert_eq!(c.rtt().samples, 1);
    assert!(!c.is_closed());
}

#[test]
fn json_pair_stays_up_carries_data_and_detects_a_crash() {
    let t0 = Instant::now();
    let mut p = Pair::with(
        Connection::json(t0, Role::Client, cfg()),
        Connection::json(t0, Role::Server, cfg()),
        31,
    );
    p.c2s.jitter = Duration::from_millis(300);
    p.s2c.jitter = Duration::from_millis(300);
    for i in 0..30 {
        let now = p.now;
        p.client
            .conn
            .send(now, format!("{{\"n\":{i}}}").into_bytes())
            .unwrap();
        p.run_for(Duration::from_secs(2));
    }
    assert_eq!(p.server.received.len(), 30);
    assert_eq!(p.server.received[7], b"{\"n\":7}".to_vec());
    assert!(!p.client.conn.is_closed() && !p.server.conn.is_closed());
    assert!(p.client.conn.rtt().samples > 5);
    p.server.crashed = true;
    p.s2c.blackhole = true;
    assert!(p.run_until(Duration::from_secs(10), |p| p.client.dead_at().is_some()));
    let silent = p.client.dead_at().unwrap() - p.client.last_rx.unwrap();
    assert!(silent >= Duration::from_secs(3) && silent <= Duration::from_secs(4));
    assert!(p.client.events.iter().any(|(_, e)| matches!(
        e,
        Event::Closed {
            code: CloseCode::Timeout,
            ..
        }
    )));
}

#[test]
fn sending_something_other_than_one_object_is_refused() {
    let t0 = Instant::now();
    let mut c = Connection::json(t0, Role::Client, cfg());
    assert!(c.send(t0, b"[1]".to_vec()).is_err());
    assert!(c.send(t0, b"{}{}".to_vec()).is_err());
    assert!(c.send(t0, b"{\"a\":1}".to_vec()).is_ok());
}
