//! Bulk data paths: large DATA chunks arriving whole or in pieces, through `handle_input` (copied
//! into place) and `handle_input_buf` (shared slices of the runtime's buffer); the buffer limit on
//! both; vectored transmit; acknowledgements by bytes.

use crate::sim::keys;
use std::time::Instant;
use vitals_proto::{
    Bytes, BytesMut, CloseCode, Config, Connection, Event, FrameDecoder, FrameType, Limits, frame,
};

/// A connected (client, server) pair on one instant, with nothing left in flight.
fn connected(cfg: Config) -> (Connection, Connection, Instant) {
    let t0 = Instant::now();
    let mut c = Connection::client(t0, cfg);
    let mut s = Connection::server(t0, cfg, keys(1));
    for _ in 0..4 {
        let mut w = Vec::new();
        while c.poll_transmit(&mut w) > 0 {}
        s.handle_input(t0, &w);
        let mut w = Vec::new();
        while s.poll_transmit(&mut w) > 0 {}
        c.handle_input(t0, &w);
    }
    let connected = |conn: &mut Connection| {
        std::iter::from_fn(|| conn.poll_event()).any(|e| matches!(e, Event::Connected { .. }))
    };
    assert!(connected(&mut c) && connected(&mut s));
    (c, s, t0)
}

fn messages(conn: &mut Connection) -> Vec<Bytes> {
    std::iter::from_fn(|| conn.poll_event())
        .filter_map(|e| match e {
            Event::Message { payload, .. } => Some(payload),
            _ => None,
        })
        .collect()
}

fn closed(conn: &mut Connection) -> Option<CloseCode> {
    std::iter::from_fn(|| conn.poll_event()).find_map(|e| match e {
        Event::Closed { code, .. } => Some(code),
        _ => None,
    })
}

/// Three 64 KiB messages (one chunk each, with the default 64 KiB chunk size), a small one
/// between them, as the client puts them on the wire.
fn wire_of_big_messages(c: &mut Connection, t0: Instant) -> (Vec<u8>, Vec<Vec<u8>>) {
    let sent: Vec<Vec<u8>> = vec![
        (0..65_536u32).map(|i| (i % 251) as u8).collect(),
        b"small one".to_vec(),
        (0..65_536u32).map(|i| (i % 13) as u8).collect(),
        (0..65_536u32).map(|i| (i % 7) as u8).collect(),
    ];
    for m in &sent {
        c.send(t0, m.clone()).unwrap();
    }
    let mut wire = Vec::new();
    while c.poll_transmit(&mut wire) > 0 {}
    (wire, sent)
}

/// Piece sizes to cut the wire into: single bytes, inside and around the 5-byte header and the 17-byte
/// DATA head (22, 23), a page, around a whole 64 KiB frame (65,558 = 5 + 17 + 65,536), and whole.
const SPLITS: [usize; 12] = [
    1,
    5,
    21,
    22,
    23,
    1000,
    4096,
    65_535,
    65_558,
    65_559,
    100_000,
    usize::MAX,
];

#[test]
fn a_64k_message_arrives_whole_and_in_pieces_through_handle_input() {
    for split in SPLITS {
        let (mut c, mut s, t0) = connected(Config::default());
        let (wire, sent) = wire_of_big_messages(&mut c, t0);
        for piece in wire.chunks(split.min(wire.len())) {
            s.handle_input(t0, piece);
        }
        let got: Vec<Vec<u8>> = messages(&mut s).iter().map(|b| b.to_vec()).collect();
        assert_eq!(got, sent, "pieces of {split}");
        assert!(!s.is_closed());
    }
}

#[test]
fn a_64k_message_arrives_whole_and_in_pieces_through_handle_input_buf() {
    for split in SPLITS {
        let (mut c, mut s, t0) = connected(Config::default());
        let (wire, sent) = wire_of_big_messages(&mut c, t0);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(split.min(wire.len())) {
            buf.extend_from_slice(piece);
            s.handle_input_buf(t0, &mut buf);
            got.extend(messages(&mut s));
        }
        assert!(
            buf.is_empty(),
            "pieces of {split}: {} bytes left",
            buf.len()
        );
        let got: Vec<Vec<u8>> = got.iter().map(|b| b.to_vec()).collect();
        assert_eq!(got, sent, "pieces of {split}");
    }
}

#[test]
fn handle_input_buf_shares_large_chunks_and_copies_small_ones() {
    let (mut c, mut s, t0) = connected(Config::default());
    let (wire, _) = wire_of_big_messages(&mut c, t0);
    let mut buf = BytesMut::with_capacity(wire.len());
    buf.extend_from_slice(&wire);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    s.handle_input_buf(t0, &mut buf);
    let got = messages(&mut s);
    assert_eq!(got.len(), 4);
    // The 64 KiB messages are slices of the input buffer: no copy was made.
    let first = got[0].as_ptr() as usize;
    assert_eq!(first, range.start + frame::DATA_HEAD_LEN);
    for big in [&got[0], &got[2], &got[3]] {
        assert!(range.contains(&(big.as_ptr() as usize)));
    }
    // The small one has its own allocation (it must not keep the input buffer alive).
    assert!(!range.contains(&(got[1].as_ptr() as usize)));
}

#[test]
fn a_frame_begun_with_handle_input_is_completed_by_handle_input_buf() {
    for first in [3, 22, 30_000, 65_000] {
        let (mut c, mut s, t0) = connected(Config::default());
        let (wire, sent) = wire_of_big_messages(&mut c, t0);
        s.handle_input(t0, &wire[..first]);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&wire[first..]);
        s.handle_input_buf(t0, &mut buf);
        assert!(buf.is_empty());
        let got: Vec<Vec<u8>> = messages(&mut s).iter().map(|b| b.to_vec()).collect();
        assert_eq!(got, sent, "first {first} bytes through handle_input");
    }
}

#[test]
fn the_buffer_limit_holds_for_both_input_paths() {
    let cfg = Config {
        limits: Limits {
            max_frame_size: 64 * 1024,
            max_buffered: 10_000,
        },
        ..Config::default()
    };
    // A DATA frame that fits in `max_buffered` is decoded, one that does not fails the connection
    // once more than `max_buffered` of it is at hand — whichever way the bytes come in.
    for (len, fits) in [(9_000, true), (20_000, false)] {
        let mut wire = Vec::new();
        frame::encode_data(&mut wire, 0, 0, true, &vec![5u8; len]);
        let (_, mut s, t0) = connected(cfg);
        for piece in wire.chunks(3_000) {
            s.handle_input(t0, piece);
        }
        let (_, mut s2, t0) = connected(cfg);
        let mut buf = BytesMut::new();
        for piece in wire.chunks(3_000) {
            buf.extend_from_slice(piece);
            s2.handle_input_buf(t0, &mut buf);
            assert!(buf.len() <= 10_000);
        }
        for conn in [&mut s, &mut s2] {
            if fits {
                let got = messages(conn);
                assert_eq!(got.len(), 1);
                assert_eq!(got[0].len(), len);
            } else {
                assert_eq!(closed(conn), Some(CloseCode::LimitExceeded));
            }
        }
    }
}

#[test]
fn a_bad_data_length_fails_handle_input_buf_from_the_head() {
    let (_, mut s, t0) = connected(Config::default());
    // A DATA frame announcing 10 payload bytes (less than its 17-byte prefix).
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[FrameType::Data as u8, 0, 0, 0, 10]);
    buf.extend_from_slice(&[0; 17]);
    s.handle_input_buf(t0, &mut buf);
    assert_eq!(closed(&mut s), Some(CloseCode::ProtocolError));
    assert!(buf.is_empty());
}

#[test]
fn poll_transmit_parts_puts_the_same_bytes_on_the_wire() {
    let (mut c, _, t0) = connected(Config::default());
    let (mut c2, _, _) = connected(Config::default());
    let big = Bytes::from(vec![3u8; 150_000]);
    c.send(t0, big.clone()).unwrap();
    c2.send(t0, big.clone()).unwrap();
    c.ping_now(t0);
    c2.ping_now(t0);
    let mut plain = Vec::new();
    while c.poll_transmit(&mut plain) > 0 {}
    let mut gathered = Vec::new();
    let mut chunks = 0;
    loop {
        let mut head = Vec::new();
        let body = c2.poll_transmit_parts(&mut head);
        if head.is_empty() && body.is_none() {
            break;
        }
        gathered.extend_from_slice(&head);
        if let Some(body) = body {
            // A DATA chunk is a slice of the message sent, not a copy.
            assert!(big.as_ptr_range().contains(&body.as_ptr()));
            gathered.extend_from_slice(&body);
            chunks += 1;
        }
    }
    assert_eq!(plain, gathered);
    assert_eq!(chunks, 3); // 150,000 bytes in 64 KiB chunks
    // And it decodes: the PING first, then the chunks.
    let mut d = FrameDecoder::new(Limits::default());
    d.push(&gathered[..frame::HEADER_LEN + frame::PING_LEN])
        .unwrap();
    assert!(matches!(
        d.next_frame(),
        Ok(Some(vitals_proto::Frame::Ping { .. }))
    ));
}

#[test]
fn large_messages_are_acknowledged_by_bytes_without_waiting_for_the_delay() {
    let (mut c, mut s, t0) = connected(Config::default());
    let every = Config::default().session.ack_every_bytes;
    // 64 KiB messages: the count rule (64 messages = 4 MiB) would ack only when the default
    // replay buffer is full; the byte rule acks after 1 MiB.
    let n = every / 65_536;
    let mut acks = 0;
    for i in 0..n {
        c.send(t0, vec![i as u8; 65_536]).unwrap();
        let mut wire = Vec::new();
        while c.poll_transmit(&mut wire) > 0 {}
        s.handle_input(t0, &wire);
        let mut back = Vec::new();
        while s.poll_transmit(&mut back) > 0 {}
        let mut d = FrameDecoder::new(Limits::default());
        d.push(&back).unwrap();
        while let Ok(Some(f)) = d.next_frame() {
            if let vitals_proto::Frame::Ack { next } = f {
                acks += 1;
                assert_eq!(next, i as u64 + 1);
                assert_eq!(i + 1, n, "acked after {} messages", i + 1);
            }
        }
        c.handle_input(t0, &back);
    }
    assert_eq!(acks, 1);
    assert_eq!(c.unacked(), 0);
}
