//! The optional pre-shared authentication token in HELLO: required by a server that has one,
//! ignored by a server that has none, refused with CLOSE `AuthFailed` when missing or wrong.

use crate::sim::{Pair, keys};
use std::time::Duration;
use vitals_proto::{
    AuthToken, CloseCode, Config, Connection, Event, Frame, FrameDecoder, Limits, frame,
};

fn with_token(t: Option<&[u8]>) -> Config {
    Config {
        auth_token: t.map(|t| AuthToken::new(t).unwrap()),
        ..Config::default()
    }
}

fn closed_code(events: &[(std::time::Instant, Event)]) -> Option<(CloseCode, bool)> {
    events.iter().find_map(|(_, e)| match e {
        Event::Closed { code, by_peer, .. } => Some((*code, *by_peer)),
        _ => None,
    })
}

#[test]
fn matching_token_connects_and_exchanges() {
    let mut p = Pair::new(with_token(Some(b"tok")), with_token(Some(b"tok")), 1);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
    let now = p.now;
    p.client.conn.send(now, b"hi".to_vec()).unwrap();
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.server.received, vec![b"hi".to_vec()]);
}

#[test]
fn server_without_token_ignores_the_clients() {
    let mut p = Pair::new(with_token(Some(b"tok")), with_token(None), 2);
    assert!(p.run_until(Duration::from_secs(1), |p| p.connected()));
}

#[test]
fn missing_or_wrong_token_is_refused_with_auth_failed() {
    for (client, seed) in [(None, 3), (Some(&b"toK"[..]), 4), (Some(&b"tok2"[..]), 5)] {
        let mut p = Pair::new(with_token(client), with_token(Some(b"tok")), seed);
        p.run_for(Duration::from_millis(200));
        assert!(!p.connected());
        assert_eq!(
            closed_code(&p.server.events),
            Some((CloseCode::AuthFailed, false)),
            "{client:?}"
        );
        assert_eq!(
            closed_code(&p.client.events),
            Some((CloseCode::AuthFailed, true)),
            "{client:?}"
        );
        // Nothing but the CLOSE went out: no WELCOME, so no session id or token leaked.
        let out = p.server.frames_out();
        assert!(
            matches!(
                out.as_slice(),
                [Frame::Close {
                    code: CloseCode::AuthFailed,
                    ..
                }]
            ),
            "{out:?}"
        );
    }
}

#[test]
fn a_resume_needs_the_auth_token_too() {
    let server_cfg = with_token(Some(b"tok"));
    let now = std::time::Instant::now();
    let mut server = Connection::server(now, server_cfg, keys(7));
    let mut hello = Vec::new();
    frame::encode_hello(
        &mut hello,
        &frame::Hello {
            version: frame::VERSION,
            interval_ms: 1000,
            timeout_ms: 3000,
            resume: Some((keys(8).id, keys(8).token, 0)),
            auth: None,
        },
    );
    server.handle_input(now, &hello);
    // Refused before the session store is consulted (no ResumeRequested).
    assert!(matches!(
        server.poll_event(),
        Some(Event::Closed {
            code: CloseCode::AuthFailed,
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
            code: CloseCode::AuthFailed,
            ..
        })
    ));
}

#[test]
fn config_debug_redacts_the_token() {
    let cfg = with_token(Some(b"very-secret-token"));
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("very-secret"), "{shown}");
    assert!(shown.contains("AuthToken(..)"), "{shown}");
}
