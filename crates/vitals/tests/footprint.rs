//! Memory per idle heartbeating connection on the server: heap bytes allocated after start-up (a
//! counting allocator: the session route and whatever else a connection keeps on the heap; the
//! slab, which holds each connection with its protocol core inline, and the wheel are reserved at
//! start-up) and resident memory (VmRSS, which also counts the slab and wheel pages in use).
//!
//! The connections measured are live: raw peers on one thread answer every PING with its PONG, and
//! the figures are taken once each has answered at least two, with every connection still open and
//! no session parked (a silent peer would have been convicted after `timeout` and its session
//! parked, which is a different thing to measure).
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// Frame types and header length of the wire format (docs/PROTOCOL.md).
const PING: u8 = 0x03;
const PONG: u8 = 0x04;
const CLOSE: u8 = 0x07;
const HEADER: usize = 5;

/// What the peers' thread and the test share: how many peers to have, the PONGs each sent, a stop.
struct PeerShared {
    want: AtomicUsize,
    pongs: Vec<AtomicU32>,
    stop: AtomicBool,
}

/// Up to `max` raw peers of `addr`, all on one thread: each sends HELLO (+ the confirming ACK) and
/// then answers every PING with its PONG. Everything is allocated before the thread starts, so the
/// peers add nothing to the heap figure. Ends with `Err` when the server closes or ends a peer.
fn answering_peers(
    addr: SocketAddr,
    max: usize,
) -> (Arc<PeerShared>, std::thread::JoinHandle<Result<(), String>>) {
    let shared = Arc::new(PeerShared {
        want: AtomicUsize::new(0),
        pongs: (0..max).map(|_| AtomicU32::new(0)).collect(),
        stop: AtomicBool::new(false),
    });
    let hello = hello_bytes();
    let mut streams: Vec<TcpStream> = Vec::with_capacity(max);
    // A frame split across reads waits here (the largest frame expected, WELCOME, is 51 bytes).
    let mut carry: Vec<([u8; 64], usize)> = vec![([0; 64], 0); max];
    let thread = std::thread::spawn({
        let shared = Arc::clone(&shared);
        move || {
            let mut buf = [0u8; 4096];
            while !shared.stop.load(Ordering::Relaxed) {
                // Connect in batches, answering the others in between.
                let batch_end = shared.want.load(Ordering::Relaxed).min(streams.len() + 50);
                while streams.len() < batch_end.min(max) {
                    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                    s.write_all(&hello).map_err(|e| format!("hello: {e}"))?;
                    s.set_nonblocking(true).map_err(|e| e.to_string())?;
                    streams.push(s);
                }
                for (i, s) in streams.iter_mut().enumerate() {
                    let (kept, kept_len) = &mut carry[i];
                    loop {
                        buf[..*kept_len].copy_from_slice(&kept[..*kept_len]);
                        let n = match s.read(&mut buf[*kept_len..]) {
                            Ok(0) => return Err(format!("peer {i}: the server ended it")),
                            Ok(n) => n,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => return Err(format!("peer {i}: {e}")),
                        };
                        let len = *kept_len + n;
                        let mut at = 0;
                        while len - at >= HEADER {
                            let size = u32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap());
                            let end = at + HEADER + size as usize;
                            if end > len {
                                break;
                            }
                            match buf[at] {
                                PING => {
                                    buf[at] = PONG;
                                    s.write_all(&buf[at..end])
                                        .map_err(|e| format!("peer {i}: pong: {e}"))?;
                                    shared.pongs[i].fetch_add(1, Ordering::Relaxed);
                                }
                                CLOSE => return Err(format!("peer {i}: closed by the server")),
                                _ => {}
                            }
                            at = end;
                        }
                        let rest = len - at;
                        if rest > kept.len() {
                            return Err(format!("peer {i}: a frame larger than expected"));
                        }
                        kept[..rest].copy_from_slice(&buf[at..len]);
                        *kept_len = rest;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        }
    });
    (shared, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_heartbeating_connections_are_small() {
    const N: usize = 2000;
    let mut cfg = server_config();
    cfg.loops = 1;
    // The slab and wheel reserve room for the limit at start-up (before `before`): the heap figure
    // leaves them out, the RSS figure counts the pages the connections touch in them.
    cfg.max_connections = N + 10;
    let mut server = Server::bind(cfg).unwrap();
    let handle = server.handle();
    // Peer 0 warms up the loop (so that lazily created loop state exists before we measure); peers
    // 1..=N are measured.
    let (peers, thread) = answering_peers(server.local_addr(), N + 1);
    peers.want.store(1, Ordering::Relaxed);
    server_event(&mut server, Duration::from_secs(5), |e| {
        matches!(e, ServerEvent::Connected { .. }).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = LIVE.load(Ordering::Relaxed);
    let rss_before = rss();
    peers.want.store(N + 1, Ordering::Relaxed);
    // Every peer connected and answered at least two PINGs (so the server pinged each after
    // `interval` of silence and heard its PONG), none was closed. The events are taken as they
    // come (a PONG is an RTT event: left in the queue, they would grow the heap).
    let (mut connected, mut rtts) = (1, 0u64);
    let started = Instant::now();
    while connected < N + 1 || peers.pongs.iter().any(|p| p.load(Ordering::Relaxed) < 2) {
        assert!(
            !thread.is_finished(),
            "the peers stopped: {:?}",
            thread.join()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{connected} connected; peers with fewer than 2 PONGs: {}",
            peers
                .pongs
                .iter()
                .filter(|p| p.load(Ordering::Relaxed) < 2)
                .count()
        );
        match tokio::time::timeout(Duration::from_millis(20), server.next_event()).await {
            Ok(Some(ServerEvent::Connected { .. })) => connected += 1,
            Ok(Some(ServerEvent::Rtt { .. })) => rtts += 1,
            Ok(Some(e @ ServerEvent::Closed { .. })) => panic!("a peer was closed: {e:?}"),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("server stopped"),
        }
    }
    let after = LIVE.load(Ordering::Relaxed);
    let rss_after = rss();
    // Still all open and answering: nothing was convicted and no session parked.
    assert_eq!(handle.connections(), N + 1, "open connections");
    assert_eq!(handle.parked_sessions(), 0, "parked sessions");
    while let Some(e) = server.try_next_event() {
        assert!(!matches!(e, ServerEvent::Closed { .. }), "{e:?}");
    }
    let per_conn = (after - before) as f64 / N as f64;
    let rss_per_conn = (rss_after - rss_before) as f64 / N as f64;
    let pongs: u64 = peers
        .pongs
        .iter()
        .map(|p| u64::from(p.load(Ordering::Relaxed)))
        .sum();
    eprintln!(
        "heap bytes per idle connection: {per_conn:.0}; RSS bytes per connection: {rss_per_conn:.0} \
         ({N} live connections, {pongs} PONGs answered, {rtts} RTT samples at the server)"
    );
    peers.stop.store(true, Ordering::Relaxed);
    thread.join().unwrap().unwrap();
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
