//! Bulk transfer: 64 KiB messages through vitals versus raw TCP on loopback, for a bounded time each,
//! with RTT probes (PINGs on the same connection, every 100 ms) running during the vitals transfer.
//!
//! Run: `cargo run --release -p vitals --example bulk [seconds]` (default 5 s per phase).
//! Prints one line: throughput of each, their ratio, and the probe RTT percentiles during the transfer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vitals::{Bytes, Client, ClientConfig, ClientEvent, Server, ServerConfig, ServerEvent};

const MESSAGE: usize = 64 * 1024;

/// Raw TCP: one writer of 64 KiB chunks, one reader counting bytes, for `secs`.
async fn raw_tcp(secs: Duration) -> Result<f64, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; MESSAGE];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    let mut w = tokio::net::TcpStream::connect(addr).await?;
    w.set_nodelay(true)?;
    let chunk = vec![7u8; MESSAGE];
    let start = Instant::now();
    let before = received.load(Ordering::Relaxed);
    while start.elapsed() < secs {
        w.write_all(&chunk).await?;
    }
    let bytes = received.load(Ordering::Relaxed) - before;
    let elapsed = start.elapsed().as_secs_f64();
    drop(w);
    let _ = reader.await;
    Ok(bytes as f64 / elapsed)
}

/// vitals: a client sends 64 KiB messages as fast as back-pressure allows and probes RTT every
/// 100 ms on the same connection; the server application counts delivered bytes.
async fn through_vitals(
    secs: Duration,
) -> Result<(f64, Histogram<u64>), Box<dyn std::error::Error>> {
    let interval = Duration::from_millis(100);
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        loops: 1,
        ..ServerConfig::default()
    }
    .with_timing(interval, Duration::from_secs(2));
    let mut server = Server::bind(cfg)?;
    let addr = server.local_addr();
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&delivered);
    let app = tokio::spawn(async move {
        while let Some(e) = server.next_event().await {
            if let ServerEvent::Message { payload, .. } = e {
                counter.fetch_add(payload.len() as u64, Ordering::Relaxed);
            }
        }
    });
    let mut client =
        Client::connect(ClientConfig::new(addr).with_timing(interval, Duration::from_secs(2)));
    loop {
        match client.next_event().await {
            Some(ClientEvent::Connected { .. }) => break,
            Some(_) => {}
            None => return Err("client stopped before connecting".into()),
        }
    }
    let sender = client.sender();
    let start = Instant::now();
    let before = delivered.load(Ordering::Relaxed);
    let sending = tokio::spawn(async move {
        // One buffer sent again and again, as the raw TCP writer does: `Bytes` shares it (the
        // replay buffer holds a reference until the server acknowledges the message).
        let chunk = Bytes::from(vec![7u8; MESSAGE]);
        while start.elapsed() < secs {
            if sender.send(chunk.clone()).await.is_err() {
                break;
            }
        }
    });
    let mut rtt = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut probe = tokio::time::interval(interval);
    // A late tick must not be followed by an early one: probes closer than half the interval
    // collect ping strikes (the server's rate rule).
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while start.elapsed() < secs {
        tokio::select! {
            _ = probe.tick() => client.ping()?,
            e = client.next_event() => match e {
                Some(ClientEvent::Rtt(r)) => {
                    rtt.saturating_record(u64::try_from(r.latest.as_micros()).unwrap_or(u64::MAX));
                }
                Some(ClientEvent::Dead { reason }) => return Err(format!("connection died: {reason:?}").into()),
                Some(_) => {}
                None => return Err("client stopped".into()),
            },
        }
    }
    let bytes = delivered.load(Ordering::Relaxed) - before;
    let elapsed = start.elapsed().as_secs_f64();
    sending.abort();
    drop(client);
    app.abort();
    Ok((bytes as f64 / elapsed, rtt))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs = Duration::from_secs(
        std::env::args()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    let raw = raw_tcp(secs).await?;
    let (vitals, rtt) = through_vitals(secs).await?;
    println!(
        "bulk message_bytes={MESSAGE} seconds={} raw_tcp_mib_s={:.1} vitals_mib_s={:.1} ratio={:.3} \
         probe_rtt_us p50={} p90={} p99={} max={} samples={}",
        secs.as_secs(),
        raw / (1 << 20) as f64,
        vitals / (1 << 20) as f64,
        vitals / raw,
        rtt.value_at_quantile(0.5),
        rtt.value_at_quantile(0.9),
        rtt.value_at_quantile(0.99),
        rtt.max(),
        rtt.len()
    );
    Ok(())
}
