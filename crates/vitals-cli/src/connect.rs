//! `vitals connect ADDR`: stdin lines become messages, received messages go to stdout (one per line),
//! events (connected, resumed, dead, reconnecting, session lost) go to stderr.
//!
//! The client reconnects with jittered backoff and resumes its session, so lines typed while the
//! server is away are delivered when it comes back.
//!
//! At stdin EOF: the client waits (up to `--eof-timeout`) until the server has acknowledged every
//! line (`Client::flush`, across reconnects: lines queued while disconnected are replayed); then it
//! stays `--linger` longer so that answers to the last lines (e.g. from `serve --echo`) are printed;
//! then it closes the session in order and exits 0. If not everything is acknowledged in time it
//! exits 1.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use vitals::{Client, ClientConfig, ClientEvent, Codec};

use crate::config::{TimingArgs, parse_duration};

/// Arguments of `vitals connect`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    /// Server address, `host:port`.
    addr: String,
    #[command(flatten)]
    timing: TimingArgs,
    /// After stdin ends and every line is acknowledged, keep running this long so that answers to the
    /// last lines are printed.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    linger: Duration,
    /// After stdin ends, wait at most this long for every line to be acknowledged (across
    /// reconnects) before giving up (exit 1).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    eof_timeout: Duration,
    /// Print RTT samples to stderr too.
    #[arg(long)]
    rtt: bool,
    /// TLS: trust the server certificate issued by this PEM CA (enables TLS).
    #[arg(long, env = "VITALS_TLS_CA", value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// TLS: the name to verify in the server's certificate [default: the host part of the address].
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Present this pre-shared token in HELLO (the file's bytes without a trailing newline, 1 to 64
    /// bytes), for a server started with `--auth-token-file`.
    #[arg(long, env = "VITALS_AUTH_TOKEN_FILE", value_name = "PATH")]
    auth_token_file: Option<std::path::PathBuf>,
}

/// One stderr line for a client event (`None` for events not shown).
fn describe(event: &ClientEvent, show_rtt: bool) -> Option<String> {
    let d = humantime::format_duration;
    Some(match event {
        ClientEvent::Connected {
            session,
            interval,
            timeout,
        } => match session {
            Some(s) => format!(
                "connected: session {:016x}, interval {}, timeout {}",
                s.0,
                d(*interval),
                d(*timeout)
            ),
            None => format!(
                "connected: interval {}, timeout {}",
                d(*interval),
                d(*timeout)
            ),
        },
        ClientEvent::Resumed { session, replayed } => {
            format!(
                "resumed session {:016x}: {replayed} message(s) replayed",
                session.0
            )
        }
        ClientEvent::Rtt(r) if show_rtt => format!(
            "rtt {:.3} ms (smoothed {:.3} ms)",
            r.latest.as_secs_f64() * 1e3,
            r.smoothed.as_secs_f64() * 1e3
        ),
        ClientEvent::Suspect { phi } => format!("suspect: phi {phi:.1}"),
        ClientEvent::Dead { reason } => format!("connection lost: {}", reason.label()),
        ClientEvent::Reconnecting { attempt, delay } => {
            // Whole milliseconds read better than humantime's nanoseconds.
            let delay = Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            format!("reconnecting in {} (attempt {attempt})", d(delay))
        }
        ClientEvent::SessionLost { session, resent } => format!(
            "session {:016x} lost on the server; new session, {resent} message(s) re-sent",
            session.0
        ),
        ClientEvent::Closed { reason } => format!("closed: {}", reason.label()),
        ClientEvent::Rtt(_) | ClientEvent::Message(_) => return None,
    })
}

/// Runs `vitals connect`.
pub(crate) async fn run(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    args.timing.validate()?;
    let addr: SocketAddr = tokio::net::lookup_host(&args.addr)
        .await
        .with_context(|| format!("cannot resolve `{}` (expected host:port)", args.addr))?
        .next()
        .with_context(|| format!("`{}` resolves to no address", args.addr))?;
    let mut cfg = ClientConfig::new(addr).with_timing(args.timing.interval, args.timing.timeout);
    cfg.codec = args.timing.codec;
    if let Some(ca) = &args.tls_ca {
        let host = args
            .addr
            .rsplit_once(':')
            .map_or(args.addr.as_str(), |(h, _)| h);
        let name = args
            .tls_server_name
            .as_deref()
            .unwrap_or(host.trim_matches(['[', ']']));
        cfg.tls = Some(
            vitals::tls::client_config_from_ca_file(ca, name)
                .with_context(|| format!("cannot use --tls-ca {}", ca.display()))?,
        );
    }
    if let Some(path) = &args.auth_token_file {
        cfg.proto.auth_token = Some(crate::config::read_auth_token(path)?);
    }
    let mut client = Client::connect(cfg);
    let sender = client.sender();

    // stdin → a queue (the reader notices EOF at once) → messages (a sender task, so that a send
    // waiting for room or for a connection does not stop events from being printed).
    let (line_tx, mut line_rx) = mpsc::channel::<Vec<u8>>(256);
    let (eof_tx, mut eof_rx) = mpsc::channel::<anyhow::Result<()>>(1);
    let (sent_tx, mut sent_rx) = mpsc::channel::<anyhow::Result<u64>>(1);
    let codec = args.timing.codec;
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let result = loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    if codec == Codec::Json && line.trim().is_empty() {
                        continue;
                    }
                    if line_tx.send(line.into_bytes()).await.is_err() {
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(anyhow::anyhow!("reading stdin: {e}")),
            }
        };
        drop(line_tx);
        let _ = eof_tx.send(result).await;
    });
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        while let Some(line) = line_rx.recv().await {
            match sender.send(line).await {
                Ok(()) => sent += 1,
                Err(vitals::Error::Rejected(why)) => {
                    eprintln!("vitals connect: line not sent: {why}");
                }
                Err(e) => {
                    let _ = sent_tx.send(Err(anyhow::anyhow!("cannot send: {e}"))).await;
                    return;
                }
            }
        }
        let _ = sent_tx.send(Ok(sent)).await;
    });

    let flusher = client.sender();
    let mut flush: Option<tokio::task::JoinHandle<Result<(), vitals::Error>>> = None;
    let mut eof: Option<tokio::time::Instant> = None; // when stdin ended
    let mut all_sent = false; // every line was handed to the client
    let mut linger_until: Option<tokio::time::Instant> = None;
    let stdout = std::io::stdout();
    let code = loop {
        if all_sent && eof.is_some() && flush.is_none() && linger_until.is_none() {
            let f = flusher.clone();
            flush = Some(tokio::spawn(async move { f.flush().await }));
        }
        let deadline = match (eof, linger_until) {
            (_, Some(l)) => Some(l),
            (Some(e), None) => Some(e + args.eof_timeout),
            (None, None) => None,
        };
        tokio::select! {
            event = client.next_event() => {
                let Some(event) = event else {
                    eprintln!("vitals connect: client stopped");
                    break ExitCode::from(1);
                };
                if let Some(line) = describe(&event, args.rtt) {
                    eprintln!("vitals connect: {line}");
                }
                match event {
                    ClientEvent::Message(payload) => {
                        let mut out = stdout.lock();
                        let _ = out.write_all(&payload);
                        let _ = out.write_all(b"\n");
                        let _ = out.flush();
                    }
                    ClientEvent::Closed { .. } => break ExitCode::from(1),
                    _ => {}
                }
            }
            done = eof_rx.recv(), if eof.is_none() => {
                if let Some(Err(e)) = done {
                    eprintln!("vitals connect: {e:#}");
                    break ExitCode::from(2);
                }
                eof = Some(tokio::time::Instant::now());
            }
            done = sent_rx.recv(), if !all_sent => match done {
                Some(Ok(sent)) => {
                    tracing::debug!(sent, "every line handed to the client");
                    all_sent = true;
                }
                Some(Err(e)) => {
                    eprintln!("vitals connect: {e:#}");
                    break ExitCode::from(2);
                }
                None => all_sent = true,
            },
            flushed = wait_flush(&mut flush), if flush.is_some() => {
                flush = None;
                match flushed {
                    Some(Ok(())) => {
                        tracing::debug!("every line acknowledged");
                        linger_until = Some(tokio::time::Instant::now() + args.linger);
                    }
                    _ => break ExitCode::from(1),
                }
            }
            _ = sleep_until_opt(deadline) => {
                if linger_until.is_some() {
                    break ExitCode::SUCCESS;
                }
                eprintln!(
                    "vitals connect: not everything acknowledged {} after stdin ended",
                    humantime::format_duration(args.eof_timeout)
                );
                break ExitCode::from(1);
            }
        }
    };
    if let Some(f) = flush {
        f.abort();
    }
    writer.abort();
    reader.abort();
    close(client).await;
    Ok(code)
}

/// Closes the session in order, but gives up after a moment (a CLOSE to a dead path cannot be
/// confirmed); dropping the client then stops its task.
async fn close(client: Client) {
    if tokio::time::timeout(Duration::from_secs(2), client.close())
        .await
        .is_err()
    {
        tracing::debug!("orderly close timed out; dropping the client");
    }
}

/// The result of a running flush (`None` if there is none or it failed to run).
async fn wait_flush(
    flush: &mut Option<tokio::task::JoinHandle<Result<(), vitals::Error>>>,
) -> Option<Result<(), vitals::Error>> {
    match flush {
        Some(handle) => handle.await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitals::DisconnectReason;

    #[test]
    fn events_read_well() {
        let e = ClientEvent::Reconnecting {
            attempt: 2,
            delay: Duration::from_millis(250),
        };
        assert_eq!(
            describe(&e, false).as_deref(),
            Some("reconnecting in 250ms (attempt 2)")
        );
        let dead = ClientEvent::Dead {
            reason: DisconnectReason::SilenceTimeout,
        };
        assert_eq!(
            describe(&dead, false).as_deref(),
            Some("connection lost: silence_timeout")
        );
        assert_eq!(
            describe(
                &ClientEvent::Message(vitals::Bytes::from_static(b"x")),
                true
            ),
            None
        );
        let rtt = ClientEvent::Rtt(vitals::vitals_proto::RttStats::default());
        assert_eq!(describe(&rtt, false), None);
        assert!(describe(&rtt, true).is_some());
    }
}
