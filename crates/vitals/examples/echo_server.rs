//! An echo server: every message a client sends comes back to it; connections, RTT samples and
//! disconnect reasons are printed.
//!
//! Run: `cargo run -p vitals --example echo_server -- 127.0.0.1:7878`
//! then `cargo run -p vitals --example resilient_client -- 127.0.0.1:7878` in another terminal.

use std::time::Duration;

use vitals::{Server, ServerConfig, ServerEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7878".into())
        .parse()?;
    let cfg = ServerConfig {
        listen,
        ..ServerConfig::default()
    }
    .with_timing(Duration::from_secs(1), Duration::from_secs(3));
    let mut server = Server::bind(cfg)?;
    let handle = server.handle();
    println!("echo server on {}", server.local_addr());
    loop {
        tokio::select! {
            event = server.next_event() => match event {
                Some(ServerEvent::Connected { conn, peer, session, resumed }) => {
                    println!("{conn} connected from {peer} (session {session:?}, resumed: {resumed})");
                }
                Some(ServerEvent::Message { conn, payload, .. }) => {
                    if let Err(e) = handle.send(conn, payload) {
                        eprintln!("{conn}: echo failed: {e}");
                    }
                }
                Some(ServerEvent::Rtt { conn, rtt }) => println!("{conn} rtt {:?}", rtt.latest),
                Some(ServerEvent::Suspect { conn, phi }) => println!("{conn} suspect, phi {phi:.1}"),
                Some(ServerEvent::SendRefused { conn, reason, .. }) => println!("{conn}: echo dropped ({reason})"),
                Some(ServerEvent::SessionSendRefused { session, reason, .. }) => println!("{session:?}: send dropped ({reason})"),
                Some(ServerEvent::Closed { conn, reason, .. }) => println!("{conn} closed: {reason:?}"),
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => {
                println!("draining…");
                let _ = server.shutdown(Duration::from_secs(2)).await;
                return Ok(());
            }
        }
    }
}
