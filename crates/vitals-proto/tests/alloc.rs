//! Heap use of idle, heartbeating connections, measured with a counting allocator (a separate
//! test binary, since a `#[global_allocator]` is per binary):
//! - after the handshake and a few heartbeats, 1000 more heartbeats allocate and free nothing;
//! - a connection keeps nothing on the heap between heartbeats: its state is the `Connection`
//!   value itself (binary: 192 bytes, JSON: 168, inline wherever the runtime keeps it — the server,
//!   in its connection slab), the config being shared.
//!
//! Counters are per thread, so tests running in parallel do not disturb each other.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vitals_proto::{
    Config, Connection, Event, JsonConfig, LivenessConfig, ResumeToken, Role, SessionId,
    SessionKeys,
};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn count(allocs: u64, frees: u64, bytes: i64) {
    // `try_with`: the thread's counters may be gone while it exits.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + allocs));
    let _ = FREES.try_with(|c| c.set(c.get() + frees));
    let _ = LIVE.try_with(|c| c.set(c.get() + bytes));
}

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(1, 0, layout.size() as i64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(0, 1, -(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(1, 1, new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    allocs: u64,
    frees: u64,
    live: i64,
}

fn counts() -> Counts {
    Counts {
        allocs: ALLOCS.with(Cell::get),
        frees: FREES.with(Cell::get),
        live: LIVE.with(Cell::get),
    }
}

const INTERVAL: Duration = Duration::from_secs(1);

fn liveness() -> LivenessConfig {
    LivenessConfig {
        interval: INTERVAL,
        timeout: INTERVAL * 3,
        ..LivenessConfig::default()
    }
}

/// Two connections wired back to back on virtual time, driven in the documented polling order
/// with buffers allocated up front (so that everything the counters see is the connections').
struct Pair {
    now: Instant,
    client: Connection,
    server: Connection,
    wire: Vec<u8>,
    pings: u64,
    rtts: u64,
}

impl Pair {
    fn step(&mut self) {
        let next = [&self.client, &self.server]
            .iter()
            .filter_map(|c| c.poll_timeout())
            .min()
            .expect("both open");
        self.now = self.now.max(next);
        let now = self.now;
        self.client.handle_timeout(now);
        self.server.handle_timeout(now);
        for _ in 0..3 {
            self.wire.clear();
            while self.client.poll_transmit(&mut self.wire) > 0 {}
            if !self.wire.is_empty() {
                self.server.handle_input(now, &self.wire);
            }
            self.wire.clear();
            while self.server.poll_transmit(&mut self.wire) > 0 {}
            if !self.wire.is_empty() {
                self.client.handle_input(now, &self.wire);
            }
            for c in [&mut self.client, &mut self.server] {
                while let Some(e) = c.poll_event() {
                    match e {
                        Event::Rtt(_) => self.rtts += 1,
                        Event::Connected { .. } => {}
                        other => panic!("unexpected event {other:?}"),
                    }
                }
            }
        }
        assert!(!self.client.is_closed() && !self.server.is_closed());
    }

    /// Run until `n` more pings were sent (by either side).
    fn heartbeats(&mut self, n: u64) {
        let goal = self.pings + n;
        while self.pings < goal {
            let before = self.client.pings_sent() as u64 + self.server.pings_sent() as u64;
            self.step();
            let after = self.client.pings_sent() as u64 + self.server.pings_sent() as u64;
            self.pings += after - before;
        }
    }
}

fn keys() -> SessionKeys {
    SessionKeys {
        id: SessionId(42),
        token: ResumeToken::from_bytes([7; 16]),
    }
}

/// Warm up, then check that 1000 heartbeats allocate nothing; returns the pair.
fn no_allocation_per_heartbeat(mut p: Pair) -> Pair {
    p.heartbeats(5);
    let before = counts();
    let rtts = p.rtts;
    p.heartbeats(1000);
    let after = counts();
    assert!(p.rtts - rtts >= 500, "pongs answered the pings");
    assert_eq!(
        (after.allocs - before.allocs, after.frees - before.frees),
        (0, 0),
        "allocations during 1000 heartbeats"
    );
    p
}

/// Runs the pair `make` builds through the handshake and 1000 heartbeats (which must allocate
/// nothing), then drops the client and returns the heap bytes the server alone still holds.
fn heap_kept_by_an_idle_server(make: impl FnOnce(Instant) -> (Connection, Connection)) -> i64 {
    let t0 = Instant::now();
    let wire = Vec::with_capacity(4096);
    let base = counts();
    let (client, server) = make(t0);
    let p = Pair {
        now: t0,
        client,
        server,
        wire,
        pings: 0,
        rtts: 0,
    };
    let Pair {
        client,
        server,
        wire,
        ..
    } = no_allocation_per_heartbeat(p);
    // The server alone: drop the client and count what is left.
    drop(client);
    let kept = counts().live - base.live;
    drop(server);
    assert_eq!(counts().live, base.live, "nothing left behind");
    drop(wire);
    kept
}

#[test]
fn binary_heartbeats_allocate_nothing_and_idle_connections_keep_only_their_state() {
    let cfg = Arc::new(Config {
        liveness: liveness(),
        ..Config::default()
    });
    let kept = heap_kept_by_an_idle_server(|t0| {
        (
            Connection::client(t0, cfg.clone()),
            Connection::server(t0, cfg.clone(), keys()),
        )
    });
    // (Printed only now: captured output allocates.)
    eprintln!("binary server connection: {kept} heap bytes kept while idle");
    assert_eq!(kept, 0, "{kept} heap bytes kept while idle");
}

#[test]
fn json_heartbeats_allocate_nothing_and_idle_connections_keep_only_their_state() {
    let cfg = Arc::new(JsonConfig {
        liveness: liveness(),
        ..JsonConfig::default()
    });
    let kept = heap_kept_by_an_idle_server(|t0| {
        (
            Connection::json(t0, Role::Client, cfg.clone()),
            Connection::json(t0, Role::Server, cfg.clone()),
        )
    });
    eprintln!("JSON server connection: {kept} heap bytes kept while idle");
    assert_eq!(kept, 0, "{kept} heap bytes kept while idle");
}

/// A `Config` passed by value (as a runtime holding a plain `Config` does) is shared between
/// connections too: the second connection costs no heap at all.
#[test]
fn configs_passed_by_value_are_shared() {
    let cfg = Config {
        liveness: liveness(),
        ..Config::default()
    };
    let t0 = Instant::now();
    let first = Connection::server(t0, cfg, keys());
    let base = counts();
    let second = Connection::server(t0, cfg, keys());
    let kept = counts().live - base.live;
    assert_eq!(kept, 0, "{kept} heap bytes");
    drop((first, second));
}
