//! A client that sends a numbered message every 200 ms and survives anything: kill the server, restart
//! it, and watch it reconnect (with jittered backoff) and resume — every event is printed.
//!
//! Run: `cargo run -p vitals --example resilient_client -- 127.0.0.1:7878`
//! (with `echo_server` running), for `--count N` messages (default 50).

use std::time::Duration;

use vitals::{Client, ClientConfig, ClientEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7878".into())
        .parse()?;
    let count: u64 = match (args.next().as_deref(), args.next()) {
        (Some("--count"), Some(n)) => n.parse()?,
        _ => 50,
    };
    let cfg = ClientConfig::new(server).with_timing(Duration::from_secs(1), Duration::from_secs(3));
    let mut client = Client::connect(cfg);
    let sender = client.sender();
    tokio::spawn(async move {
        for i in 0..count {
            if sender
                .send(format!("message {i}").into_bytes())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut echoed = 0;
    while let Some(event) = client.next_event().await {
        match event {
            ClientEvent::Message(payload) => {
                echoed += 1;
                println!("echo: {}", String::from_utf8_lossy(&payload));
                if echoed == count {
                    println!("all {count} messages came back");
                    client.close().await;
                    return Ok(());
                }
            }
            ClientEvent::Rtt(rtt) => println!("rtt {:?} (smoothed {:?})", rtt.latest, rtt.smoothed),
            other => println!("{other:?}"),
        }
    }
    Ok(())
}
