//! Memory per idle heartbeating connection on the server: heap bytes allocated after start-up (a
//! counting allocator: the session route and whatever else a connection keeps on the heap; the
//! slab, which holds each connection with its protocol core inline, and the wheel are reserved at
//! start-up) and resident memory (VmRSS, which also counts the slab and wheel pages in use).
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use common::*;
use vitals::{Server, ServerEvent};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_heartbeating_connections_are_small() {
    const N: usize = 2000;
    let mut cfg = server_config();
    cfg.loops = 1;
    // The slab and wheel reserve room for the limit at start-up (before `before`): the heap figure
    // leaves them out, the RSS figure counts the pages the connections touch in them.
    cfg.max_connections = N + 10;
    let mut server = Server::bind(cfg).unwrap();
    let addr = server.local_addr();
    // Warm up: one connection so that lazily created loop state exists before we measure.
    let mut warm = raw_peer(&server, &hello_bytes());
    server_event(&mut server, Duration::from_secs(5), |e| {
        matches!(e, ServerEvent::Connected { .. }).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = LIVE.load(Ordering::Relaxed);
    let rss_before = rss();
    let peers = tokio::task::spawn_blocking(move || {
        (0..N)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(&hello_bytes()).unwrap();
                s
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for _ in 0..N {
        server_event(&mut server, Duration::from_secs(5), |e| {
            matches!(e, ServerEvent::Connected { .. }).then_some(())
        })
        .await;
    }
    // Heartbeats: the server pings after `interval` of silence; answer with PONGs by echoing the bytes'
    // frames back is more than we need — a raw peer just lets them arrive. Wait two intervals so pings
    // went out and their buffers were used.
    tokio::time::sleep(INTERVAL * 2 + INTERVAL / 2).await;
    let after = LIVE.load(Ordering::Relaxed);
    let rss_after = rss();
    let per_conn = (after - before) as f64 / N as f64;
    let rss_per_conn = (rss_after - rss_before) as f64 / N as f64;
    eprintln!(
        "heap bytes per idle connection: {per_conn:.0}; RSS bytes per connection: {rss_per_conn:.0}"
    );
    drop(peers);
    let mut buf = [0u8; 64];
    let _ = warm.write_all(b"");
    let _ = warm.read(&mut buf);
    // The design budget is a few hundred bytes (docs/PERFORMANCE.md has the measured figures); this
    // bound catches a regression such as a per-connection buffer kept while idle (4 KiB and up).
    assert!(
        per_conn > 0.0 && per_conn < 1024.0,
        "{per_conn:.0} heap bytes per connection"
    );
}

/// Resident set size of this process, from /proc/self/statm.
fn rss() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
