//! Memory per idle connection on the server, measured with a counting allocator: the connection's share
//! of the slab, its protocol core and anything they keep allocated between heartbeats.
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
    const N: usize = 500;
    let mut cfg = server_config();
    cfg.loops = 1;
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
    let per_conn = (after - before) as f64 / N as f64;
    eprintln!("heap bytes per idle connection: {per_conn:.0}");
    drop(peers);
    let mut buf = [0u8; 64];
    let _ = warm.write_all(b"");
    let _ = warm.read(&mut buf);
    assert!(per_conn > 0.0);
}
