//! Issue 12, item 1, over real sockets: `vitals serve --codec json` with classic clients pinging
//! `{"ping":N}` every second is frozen (SIGSTOP) for 5 s, longer than its 3 s timeout, and continued.
//! The stall guard convicts nobody for the silence it could not see, and the pings the kernel queued
//! meanwhile (read in one go) are not ping abuse: every client is still connected and answered.

mod serve_util;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serve_util::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 300;
const STOP: Duration = Duration::from_secs(5);

/// What the crowd of classic clients saw.
#[derive(Default)]
struct Crowd {
    connected: AtomicUsize,
    /// Clients whose connection the server closed (EOF or reset).
    closed: AtomicUsize,
    /// Clients that read a pong after the server was continued.
    answered_after: AtomicUsize,
}

/// One classic client: `{"ping":N}` every second until `stop`, counting pongs after `resumed`.
async fn classic(
    addr: std::net::SocketAddr,
    crowd: Arc<Crowd>,
    resumed: Arc<tokio::sync::Notify>,
    stop: tokio::time::Instant,
) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        crowd.closed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    crowd.connected.fetch_add(1, Ordering::Relaxed);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 4096];
    let mut after = false;
    let mut counted = false;
    let resumed = resumed.notified();
    tokio::pin!(resumed);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(stop) => return,
            _ = &mut resumed, if !after => after = true,
            _ = tick.tick() => {
                n += 1;
                if s.write_all(format!("{{\"ping\":{n}}}").as_bytes()).await.is_err() {
                    crowd.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    crowd.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(k) => {
                    if after && !counted && buf[..k].windows(7).any(|w| w == b"\"pong\":") {
                        counted = true;
                        crowd.answered_after.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

#[test]
fn a_stalled_json_server_closes_none_of_its_classic_clients() {
    let d = Daemon::start(&[
        "--codec",
        "json",
        "--interval",
        "1s",
        "--timeout",
        "3s",
        "--http",
        "127.0.0.1:0",
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let crowd = Arc::new(Crowd::default());
    let resumed = Arc::new(tokio::sync::Notify::new());
    let stop = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (crowd, resumed) = (crowd.clone(), resumed.clone());
        tasks.push(rt.spawn(classic(d.addr, crowd, resumed, stop)));
    }
    let up = d.wait_status(Duration::from_secs(15), |s| {
        s["connections"]["open"].as_u64() == Some(CLIENTS as u64)
    });
    assert_eq!(
        up["connections"]["open"].as_u64(),
        Some(CLIENTS as u64),
        "{up}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let pid = d.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(STOP);
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    resumed.notify_waiters();
    // Four more intervals: the queued pings are read, the stall is seen, pings go on.
    std::thread::sleep(Duration::from_secs(4));
    let (code, metrics) = d.get("/metrics");
    assert_eq!(code, 200);
    let status = d.status();
    let closed = crowd.closed.load(Ordering::Relaxed);
    let answered = crowd.answered_after.load(Ordering::Relaxed);
    let abuse: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("vitals_disconnects_total") && !l.ends_with(" 0"))
        .collect();
    assert_eq!(closed, 0, "clients closed by the server; {abuse:?}");
    assert!(abuse.is_empty(), "disconnects counted: {abuse:?}");
    assert_eq!(
        status["connections"]["open"].as_u64(),
        Some(CLIENTS as u64),
        "{status}"
    );
    assert_eq!(answered, CLIENTS, "clients not answered after the stall");
    assert_eq!(crowd.connected.load(Ordering::Relaxed), CLIENTS);
    // The stall was seen (no conviction for it), not merely missed.
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vitals_local_stalls_total") && !l.ends_with(" 0")),
        "no local stall recorded:\n{metrics}"
    );
    rt.shutdown_timeout(Duration::from_secs(1));
}
