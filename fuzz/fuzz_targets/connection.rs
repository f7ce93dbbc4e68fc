//! Whole protocol cores under arbitrary input: a binary server, a binary client and a JSON server are
//! fed the same byte stream in chunks, with virtual time advancing between chunks and timers run when
//! due. No panic, bounded output per step, and the core's contract (`poll_timeout` is `None` once
//! closed) must hold. A pair of binary servers gets the same stream through the two input paths
//! (`handle_input`, `handle_input_buf`) and transmits through the two output paths
//! (`poll_transmit`, `poll_transmit_parts`): they must agree.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vitals_proto::{
    BytesMut, Config, Connection, Event, JsonConfig, JsonLimits, Limits, ResumeToken, Role,
    SessionId, SessionKeys,
};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut cfg = Config::default();
    cfg.limits = Limits {
        max_frame_size: 256,
        max_buffered: 512,
    };
    cfg.chunk_size = 64;
    let mut json_cfg = JsonConfig::default();
    json_cfg.limits = JsonLimits {
        max_object_size: 256,
        max_depth: 8,
        max_buffered: 512,
    };
    let keys = SessionKeys {
        id: SessionId(1),
        token: ResumeToken::from_bytes([7; 16]),
    };
    let mut cores = [
        Connection::server(t0, cfg, keys),
        Connection::client(t0, cfg),
        Connection::json(t0, Role::Server, json_cfg),
    ];
    // Larger limits for the pair, so that DATA chunks reach the size that is shared, not copied.
    let mut big = Config::default();
    big.limits = Limits {
        max_frame_size: 8192,
        max_buffered: 12_288,
    };
    big.chunk_size = 5000;
    let mut pair = [
        Connection::server(t0, big, keys),
        Connection::server(t0, big, keys),
    ];
    let mut buf = BytesMut::new();
    let mut now = t0;
    let mut out = Vec::new();
    // Each chunk: one byte of time step (x 10 ms), one byte of chunk length, then the bytes.
    let mut rest = data;
    while let [step, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        now += Duration::from_millis(u64::from(*step) * 10);
        for core in &mut cores {
            core.handle_input(now, chunk);
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            if *step % 7 == 0 {
                let _ = core.send(now, chunk.to_vec());
            }
            let mut rounds = 0;
            while core.poll_transmit(&mut out) > 0 {
                rounds += 1;
                assert!(rounds < 10_000, "poll_transmit never runs dry");
                out.clear();
            }
            while core.poll_event().is_some() {}
            if core.is_closed() {
                assert!(
                    core.poll_timeout().is_none(),
                    "a closed core still asks for a timer"
                );
            }
        }
        // The same bytes through the two input paths (`handle_input` and `handle_input_buf`, whose
        // large DATA chunks are shared slices of the buffer), and the same output through
        // `poll_transmit` and `poll_transmit_parts`: the same events, the same bytes, the buffer
        // never above its limit.
        let [a, b] = &mut pair;
        a.handle_input(now, chunk);
        buf.extend_from_slice(chunk);
        b.handle_input_buf(now, &mut buf);
        assert!(
            buf.len() <= big.limits.max_buffered,
            "input buffer above its limit"
        );
        for core in [&mut *a, &mut *b] {
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            if *step % 7 == 0 {
                let _ = core.send(now, chunk.repeat(usize::from(*step % 64) + 1));
            }
        }
        let mut plain = Vec::new();
        while a.poll_transmit(&mut plain) > 0 {}
        let mut parts = Vec::new();
        loop {
            let mut head = Vec::new();
            let body = b.poll_transmit_parts(&mut head);
            if head.is_empty() && body.is_none() {
                break;
            }
            parts.extend_from_slice(&head);
            parts.extend_from_slice(body.as_deref().unwrap_or(&[]));
        }
        assert_eq!(
            plain, parts,
            "poll_transmit_parts differs from poll_transmit"
        );
        assert_eq!(outcome(a), outcome(b), "the input paths disagree");
    }
});

/// A core's events, reduced to what must not depend on how its input was buffered.
fn outcome(c: &mut Connection) -> Vec<String> {
    std::iter::from_fn(|| c.poll_event())
        .map(|e| match e {
            Event::Message { payload, .. } => format!("message {payload:?}"),
            Event::Closed { code, by_peer, .. } => format!("closed {code:?} {by_peer}"),
            other => format!("{other:?}"),
        })
        .collect()
}
