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

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

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
