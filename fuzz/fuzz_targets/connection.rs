//! Whole protocol cores under arbitrary input: a binary server, a binary client and a JSON server are
//! fed the same byte stream in chunks, with virtual time advancing between chunks and timers run when
//! due. No panic, bounded output per step, and the core's contract (`poll_timeout` is `None` once
//! closed) must hold.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vitals_proto::{
    Config, Connection, JsonConfig, JsonLimits, Limits, ResumeToken, Role, SessionId, SessionKeys,
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
                assert!(core.poll_timeout().is_none(), "a closed core still asks for a timer");
            }
        }
    }
});
