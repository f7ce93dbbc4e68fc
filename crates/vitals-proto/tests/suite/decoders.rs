//! Random and mutated bytes into both decoders and into connections: no panic, bounded memory.

use proptest::prelude::*;
use std::time::{Duration, Instant};
use vitals_proto::{
    Config, Connection, Frame, FrameDecoder, JsonConfig, JsonDecoder, JsonLimits, Limits, Role,
    frame,
};

fn valid_binary_stream() -> Vec<u8> {
    let mut v = Vec::new();
    frame::encode_ping(&mut v, vitals_proto::FrameType::Ping, 1, 2);
    frame::encode_data(&mut v, 0, 0, true, b"hello");
    frame::encode_ack(&mut v, 1);
    Frame::Close {
        code: vitals_proto::CloseCode::Normal,
        reason: "bye".into(),
    }
    .encode(&mut v);
    v
}

const VALID_JSON: &[u8] = b"{\"ping\":10}{\"pong\":11}\n{\"a\":[1,{\"b\":\"}\\\"\"}]}";

fn mutated(base: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8).prop_map(move |muts| {
        let mut v = base.to_vec();
        for (i, b) in muts {
            let i = i.index(v.len());
            v[i] = b;
        }
        v
    })
}

fn feed_binary(bytes: &[u8], split: usize) {
    let limits = Limits {
        max_frame_size: 64,
        max_buffered: 128,
    };
    let mut d = FrameDecoder::new(limits);
    for piece in bytes.chunks(split.max(1)) {
        let n = piece.len().min(d.space());
        if d.push(&piece[..n]).is_err() {
            return;
        }
        loop {
            assert!(d.buffered() <= limits.max_buffered);
            match d.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn feed_json(bytes: &[u8], split: usize) {
    let limits = JsonLimits {
        max_object_size: 64,
        max_depth: 4,
        max_buffered: 128,
    };
    let mut d = JsonDecoder::new(limits);
    for piece in bytes.chunks(split.max(1)) {
        let n = piece.len().min(d.space());
        if d.push(&piece[..n]).is_err() {
            return;
        }
        loop {
            assert!(d.buffered() <= limits.max_buffered);
            match d.next_message() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn feed_connections(bytes: &[u8], split: usize) {
    let t0 = Instant::now();
    let mut conns = vec![
        Connection::server(t0, Config::default(), crate::sim::keys(1)),
        Connection::client(t0, Config::default()),
        Connection::json(t0, Role::Server, JsonConfig::default()),
        Connection::json(t0, Role::Client, JsonConfig::default()),
    ];
    for c in &mut conns {
        let mut now = t0;
        for piece in bytes.chunks(split.max(1)) {
            now += Duration::from_millis(10);
            c.handle_input(now, piece);
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
            let mut out = Vec::new();
            while c.poll_transmit(&mut out) > 0 {}
            while c.poll_event().is_some() {}
        }
    }
}

/// What a connection reports, reduced to what must not depend on how its input was buffered.
fn outcome(c: &mut Connection) -> Vec<String> {
    std::iter::from_fn(|| c.poll_event())
        .map(|e| match e {
            vitals_proto::Event::Message { payload, .. } => format!("message {payload:?}"),
            vitals_proto::Event::Closed { code, .. } => format!("closed {code:?}"),
            other => format!("{other:?}")
                .split([' ', '(', '{'])
                .next()
                .unwrap_or("")
                .to_owned(),
        })
        .collect()
}

/// The same bytes through `handle_input` (in pieces of `split`) and through `handle_input_buf` (the
/// first `first` bytes through `handle_input`, the rest appended to a buffer in pieces of `split2`),
/// with small limits: the same messages, the same close, and the buffer never above the limit.
fn feed_both_paths(bytes: &[u8], split: usize, split2: usize, first: usize) {
    let cfg = Config {
        limits: Limits {
            max_frame_size: 64,
            max_buffered: 128,
        },
        ..Config::default()
    };
    feed_both_paths_cfg(cfg, bytes, split, split2, first);
}

/// A server that completed its handshake with a client, and the client's bytes carrying
/// `sizes` messages (chunks of at most 8 KiB), after `muts` byte changes.
fn data_stream(
    cfg: Config,
    sizes: &[usize],
    muts: &[(prop::sample::Index, u8)],
) -> (Vec<u8>, Config) {
    let t0 = Instant::now();
    let mut c = Connection::client(t0, cfg);
    let mut s = Connection::server(t0, cfg, crate::sim::keys(1));
    let mut wire = Vec::new();
    for _ in 0..3 {
        let mut w = Vec::new();
        while c.poll_transmit(&mut w) > 0 {}
        s.handle_input(t0, &w);
        wire.extend_from_slice(&w);
        let mut w = Vec::new();
        while s.poll_transmit(&mut w) > 0 {}
        c.handle_input(t0, &w);
    }
    while c.poll_event().is_some() {}
    for (i, &n) in sizes.iter().enumerate() {
        let _ = c.send(t0, vec![i as u8; n]);
    }
    while c.poll_transmit(&mut wire) > 0 {}
    for (i, b) in muts {
        let i = i.index(wire.len());
        wire[i] = *b;
    }
    (wire, cfg)
}

fn feed_both_paths_cfg(cfg: Config, bytes: &[u8], split: usize, split2: usize, first: usize) {
    let t0 = Instant::now();
    let mut a = Connection::server(t0, cfg, crate::sim::keys(1));
    let mut b = Connection::server(t0, cfg, crate::sim::keys(1));
    for piece in bytes.chunks(split.max(1)) {
        a.handle_input(t0, piece);
    }
    let first = first.min(bytes.len());
    b.handle_input(t0, &bytes[..first]);
    let mut buf = vitals_proto::BytesMut::new();
    for piece in bytes[first..].chunks(split2.max(1)) {
        buf.extend_from_slice(piece);
        b.handle_input_buf(t0, &mut buf);
        assert!(buf.len() <= cfg.limits.max_buffered);
    }
    assert_eq!(outcome(&mut a), outcome(&mut b));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn both_input_paths_agree_on_large_data(
        sizes in prop::collection::vec(0usize..20_000, 1..8),
        muts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        split in 1usize..30_000,
        split2 in 1usize..30_000,
        first in 0usize..30_000,
    ) {
        let cfg = Config {
            limits: Limits { max_frame_size: 16 * 1024, max_buffered: 12 * 1024 },
            chunk_size: 8 * 1024,
            ..Config::default()
        };
        let (wire, cfg) = data_stream(cfg, &sizes, &muts);
        feed_both_paths_cfg(cfg, &wire, split, split2, first);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn both_input_paths_agree_on_random_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        split in 1usize..64,
        split2 in 1usize..200,
        first in 0usize..40,
    ) {
        feed_both_paths(&bytes, split, split2, first);
    }

    #[test]
    fn both_input_paths_agree_on_mutated_frames(
        bytes in mutated(Box::leak(valid_binary_stream().into_boxed_slice())),
        split in 1usize..64,
        split2 in 1usize..200,
        first in 0usize..40,
    ) {
        feed_both_paths(&bytes, split, split2, first);
    }

    #[test]
    fn random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), split in 1usize..64) {
        feed_binary(&bytes, split);
        feed_json(&bytes, split);
        feed_connections(&bytes, split);
    }

    #[test]
    fn mutated_binary(bytes in mutated(Box::leak(valid_binary_stream().into_boxed_slice())), split in 1usize..64) {
        feed_binary(&bytes, split);
        feed_connections(&bytes, split);
    }

    #[test]
    fn mutated_json(bytes in mutated(VALID_JSON), split in 1usize..64) {
        feed_json(&bytes, split);
        feed_connections(&bytes, split);
    }
}
