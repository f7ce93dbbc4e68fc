//! `vitals probe ADDR`: ping(8) for a vitals or JSON-heartbeat server.
//!
//! Binary codec: HELLO/WELCOME over a raw TCP stream (frames from `vitals_proto::frame`), then one
//! PING every *granted* interval (the server closes peers that ping faster with `TooManyPings`),
//! one line per PONG with its RTT. JSON codec: `{"ping":N}` every `--interval` (no negotiation in
//! that protocol, so pass the server's interval), and a `{"pong":N}` or `{"pong":N+1}` answers it.
//! A summary follows; exit code 0 when every ping was answered, 1 when some were not, 2 on error
//! (unresolvable, unreachable, refused, handshake or protocol failure, connection lost).
//!
//! A pong counts if it arrives before the probe ends (one interval after the last ping, or as soon
//! as every ping is answered); late pongs for earlier pings still count, as in ping(8).

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vitals::Codec;
use vitals_proto::frame::{self, Frame, FrameType, Hello};
use vitals_proto::{CloseCode, FrameDecoder, JsonDecoder, JsonLimits, JsonMessage, Limits};

use crate::config::{TimingArgs, codec_name, parse_duration};

/// Arguments of `vitals probe`.
#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {
    /// Server address, `host:port`.
    addr: String,
    /// Pings to send.
    #[arg(short = 'c', long, default_value_t = 4)]
    count: u32,
    /// Give up if connecting (and, for binary, the handshake) takes longer than this.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    connect_timeout: Duration,
    #[command(flatten)]
    timing: TimingArgs,
}

/// Counts of one probe run.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Tally {
    /// Pings sent.
    pub(crate) sent: u32,
    /// RTT of each answered ping.
    pub(crate) rtts: Vec<Duration>,
}

impl Tally {
    /// Loss in percent.
    pub(crate) fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * f64::from(self.sent - self.received()) / f64::from(self.sent)
    }

    /// Pongs received.
    pub(crate) fn received(&self) -> u32 {
        u32::try_from(self.rtts.len()).unwrap_or(u32::MAX)
    }

    /// The summary lines (statistics and, if anything was answered, min/avg/max).
    pub(crate) fn summary(&self, addr: &str) -> String {
        let mut out = format!(
            "--- {addr} probe statistics ---\n{} pings sent, {} pongs received, {:.1}% loss\n",
            self.sent,
            self.received(),
            self.loss_pct()
        );
        if let (Some(min), Some(max)) = (self.rtts.iter().min(), self.rtts.iter().max()) {
            let total: Duration = self.rtts.iter().sum();
            let avg = total / self.received().max(1);
            out.push_str(&format!(
                "rtt min/avg/max = {:.3}/{:.3}/{:.3} ms\n",
                ms(*min),
                ms(avg),
                ms(*max)
            ));
        }
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What arrived, as far as the probe cares.
#[derive(Debug, PartialEq)]
enum Incoming {
    /// An answer to our ping `seq` (0-based).
    Pong(u32),
    /// The server sent its own ping: these bytes answer it.
    Reply(Vec<u8>),
    /// The server closed.
    Close(String),
    /// Anything else (acks, data): ignored.
    Other,
}

/// The wire protocol of the probe: how a ping looks and how answers are recognised.
enum Wire {
    Binary(FrameDecoder),
    Json(JsonDecoder),
}

impl Wire {
    /// The JSON ping number for 0-based ping `seq`: 10, 20, 30, … so that both `N` and `N + 1`
    /// (classic servers answer `N + 1`) identify it.
    fn json_number(seq: u32) -> u64 {
        (u64::from(seq) + 1) * 10
    }

    fn encode_ping(&self, seq: u32, epoch: Instant, out: &mut Vec<u8>) {
        match self {
            Wire::Binary(_) => {
                let ts = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                frame::encode_ping(out, FrameType::Ping, seq, ts);
            }
            Wire::Json(_) => vitals_proto::json::encode_json_ping(out, Self::json_number(seq)),
        }
    }

    /// Feeds bytes read; returns what they held.
    fn feed(&mut self, mut data: &[u8]) -> anyhow::Result<Vec<Incoming>> {
        let mut got = Vec::new();
        while !data.is_empty() {
            let take = match self {
                Wire::Binary(d) => d.space(),
                Wire::Json(d) => d.space(),
            }
            .min(data.len());
            if take == 0 {
                anyhow::bail!("protocol error: the server sent more than the decoder can hold");
            }
            let (now, rest) = data.split_at(take);
            data = rest;
            match self {
                Wire::Binary(d) => {
                    d.push(now)
                        .map_err(|e| anyhow::anyhow!("protocol error: {e}"))?;
                    while let Some(f) = d
                        .next_frame()
                        .map_err(|e| anyhow::anyhow!("protocol error: {e}"))?
                    {
                        got.push(match f {
                            Frame::Pong { nonce, .. } => Incoming::Pong(nonce),
                            Frame::Ping {
                                nonce,
                                timestamp_us,
                            } => {
                                let mut out = Vec::new();
                                frame::encode_ping(&mut out, FrameType::Pong, nonce, timestamp_us);
                                Incoming::Reply(out)
                            }
                            Frame::Close { code, reason } => {
                                Incoming::Close(format!("{code:?}: {reason}"))
                            }
                            _ => Incoming::Other,
                        });
                    }
                }
                Wire::Json(d) => {
                    d.push(now)
                        .map_err(|e| anyhow::anyhow!("protocol error: {e}"))?;
                    while let Some(m) = d
                        .next_message()
                        .map_err(|e| anyhow::anyhow!("protocol error: {e}"))?
                    {
                        got.push(match m {
                            JsonMessage::Pong(n) => {
                                // 10·(seq+1) or 10·(seq+1)+1.
                                let base = n - n % 10;
                                match (n % 10, base.checked_div(10).and_then(|k| k.checked_sub(1)))
                                {
                                    (0 | 1, Some(seq)) => {
                                        u32::try_from(seq).map_or(Incoming::Other, Incoming::Pong)
                                    }
                                    _ => Incoming::Other,
                                }
                            }
                            JsonMessage::Ping(n) => {
                                let mut out = Vec::new();
                                vitals_proto::json::encode_json_pong(&mut out, n.saturating_add(1));
                                Incoming::Reply(out)
                            }
                            JsonMessage::Data(_) => Incoming::Other,
                        });
                    }
                }
            }
        }
        Ok(got)
    }
}

/// Resolves `addr` (an IP address or a host name, with a port).
async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve `{addr}` (expected host:port)"))?;
    addrs
        .next()
        .with_context(|| format!("`{addr}` resolves to no address"))
}

/// An open probe connection.
struct Probe {
    stream: TcpStream,
    wire: Wire,
    buf: Vec<u8>,
}

impl Probe {
    /// Reads once (waiting until `deadline`); `Ok(None)` at the deadline.
    async fn read(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Option<Vec<Incoming>>> {
        let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut self.buf)).await {
            Err(_) => return Ok(None),
            Ok(r) => r.context("connection lost")?,
        };
        if n == 0 {
            anyhow::bail!("connection closed by the server");
        }
        let data = self.buf[..n].to_vec();
        self.wire.feed(&data).map(Some)
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream
            .write_all(bytes)
            .await
            .context("connection lost while sending")
    }
}

/// Connects, and for the binary codec performs the handshake. Returns the probe and the interval to
/// ping at (the granted one for binary).
async fn open(
    addr: SocketAddr,
    args: &ProbeArgs,
) -> anyhow::Result<(Probe, Duration, Option<Duration>)> {
    let deadline = tokio::time::Instant::now() + args.connect_timeout;
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot connect to {addr}: no answer within {}",
                humantime::format_duration(args.connect_timeout)
            )
        })?
        .with_context(|| format!("cannot connect to {addr}"))?;
    let _ = stream.set_nodelay(true);
    let wire = match args.timing.codec {
        Codec::Binary => Wire::Binary(FrameDecoder::new(Limits::default())),
        Codec::Json => Wire::Json(JsonDecoder::new(JsonLimits::default())),
    };
    let mut probe = Probe {
        stream,
        wire,
        buf: vec![0; 16 * 1024],
    };
    if args.timing.codec == Codec::Json {
        return Ok((probe, args.timing.interval, None));
    }
    let mut hello = Vec::new();
    frame::encode_hello(
        &mut hello,
        &Hello {
            version: frame::VERSION,
            interval_ms: u32::try_from(args.timing.interval.as_millis()).unwrap_or(u32::MAX),
            timeout_ms: u32::try_from(args.timing.timeout.as_millis()).unwrap_or(u32::MAX),
            resume: None,
            auth: None,
        },
    );
    probe.write(&hello).await?;
    // The WELCOME is decoded by the same decoder as everything else; look at it as a frame.
    let Wire::Binary(decoder) = &mut probe.wire else {
        anyhow::bail!("internal: binary codec expected");
    };
    loop {
        let n = tokio::time::timeout_at(deadline, probe.stream.read(&mut probe.buf))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no WELCOME from {addr} within {} (is it a vitals server? try --codec json)",
                    humantime::format_duration(args.connect_timeout)
                )
            })?
            .context("connection lost during the handshake")?;
        if n == 0 {
            anyhow::bail!("{addr} closed the connection during the handshake");
        }
        decoder
            .push(&probe.buf[..n])
            .map_err(|e| anyhow::anyhow!("protocol error in the handshake: {e}"))?;
        match decoder.next_frame().map_err(|e| {
            anyhow::anyhow!(
                "protocol error in the handshake (not a vitals server? try --codec json): {e}"
            )
        })? {
            None => continue,
            Some(Frame::Welcome(w)) => {
                let interval = Duration::from_millis(u64::from(w.interval_ms));
                let timeout = Duration::from_millis(u64::from(w.timeout_ms));
                if interval.is_zero() {
                    anyhow::bail!("protocol error: the server granted a zero interval");
                }
                return Ok((probe, interval, Some(timeout)));
            }
            Some(Frame::Close { code, reason }) => {
                anyhow::bail!("{addr} refused the session: {code:?}: {reason}")
            }
            Some(other) => anyhow::bail!(
                "protocol error: expected WELCOME, got {:?}",
                other.frame_type()
            ),
        }
    }
}

/// Sends the pings and collects pongs into `tally`. Returns early (Ok) on Ctrl-C.
async fn ping_loop(
    probe: &mut Probe,
    addr: SocketAddr,
    count: u32,
    interval: Duration,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let mut sent_at: Vec<Instant> = Vec::with_capacity(count as usize);
    let mut answered = vec![false; count as usize];
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut next = tokio::time::Instant::now();
    let mut out = Vec::new();
    loop {
        let done_sending = tally.sent >= count;
        if done_sending && tally.received() >= tally.sent {
            return Ok(());
        }
        if !done_sending && tokio::time::Instant::now() >= next {
            out.clear();
            probe.wire.encode_ping(tally.sent, epoch, &mut out);
            sent_at.push(Instant::now());
            probe.write(&out).await?;
            tally.sent += 1;
            next += interval;
            continue;
        }
        // After the last ping, one more interval for the answers.
        let wait_until = next;
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            got = probe.read(wait_until) => {
                let Some(items) = got? else {
                    if done_sending {
                        return Ok(());
                    }
                    continue;
                };
                let now = Instant::now();
                for item in items {
                    match item {
                        Incoming::Pong(seq) => {
                            let i = seq as usize;
                            if let (Some(at), Some(false)) = (sent_at.get(i), answered.get(i).copied()) {
                                answered[i] = true;
                                let rtt = now.saturating_duration_since(*at);
                                tally.rtts.push(rtt);
                                println!("pong from {addr}: seq={} rtt={:.3} ms", seq + 1, ms(rtt));
                                let _ = std::io::stdout().flush();
                            }
                        }
                        Incoming::Reply(bytes) => probe.write(&bytes).await?,
                        Incoming::Close(why) => anyhow::bail!("the server closed the connection: {why}"),
                        Incoming::Other => {}
                    }
                }
            }
        }
    }
}

/// Runs `vitals probe`.
pub(crate) async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    args.timing.validate()?;
    if args.count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    let addr = resolve(&args.addr).await?;
    let (mut probe, interval, timeout) = open(addr, &args).await?;
    match timeout {
        Some(t) => println!(
            "PROBE {addr} ({}): granted interval {}, timeout {}",
            codec_name(args.timing.codec),
            humantime::format_duration(interval),
            humantime::format_duration(t)
        ),
        None => println!(
            "PROBE {addr} ({}): interval {}",
            codec_name(args.timing.codec),
            humantime::format_duration(interval)
        ),
    }
    let mut tally = Tally::default();
    let result = ping_loop(&mut probe, addr, args.count, interval, &mut tally).await;
    if result.is_ok() && args.timing.codec == Codec::Binary {
        // End the session so the server does not keep it for a resume.
        let mut close = Vec::new();
        frame::encode_close(&mut close, CloseCode::Normal, "probe done");
        let _ = probe.stream.write_all(&close).await;
    }
    let _ = probe.stream.shutdown().await;
    print!("{}", tally.summary(&addr.to_string()));
    let _ = std::io::stdout().flush();
    match result {
        Err(e) => Err(e.context(format!(
            "probe of {addr} failed after {} ping(s)",
            tally.sent
        ))),
        Ok(()) if tally.sent > 0 && tally.received() >= tally.sent => Ok(ExitCode::SUCCESS),
        Ok(()) => Ok(ExitCode::from(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reports_loss_and_rtts() {
        let t = Tally {
            sent: 4,
            rtts: vec![Duration::from_millis(1), Duration::from_millis(3)],
        };
        let s = t.summary("x:1");
        assert!(
            s.contains("4 pings sent, 2 pongs received, 50.0% loss"),
            "{s}"
        );
        assert!(s.contains("rtt min/avg/max = 1.000/2.000/3.000 ms"), "{s}");
        let none = Tally {
            sent: 2,
            rtts: vec![],
        };
        assert!(!none.summary("x:1").contains("rtt"));
        assert_eq!(none.loss_pct(), 100.0);
    }

    #[test]
    fn json_pongs_match_n_and_n_plus_one() {
        let mut w = Wire::Json(JsonDecoder::new(JsonLimits::default()));
        let got = w
            .feed(br#"{"pong":10}{"pong":21}{"pong":37}{"ping":5}{"x":1}"#)
            .unwrap();
        assert_eq!(got[0], Incoming::Pong(0));
        assert_eq!(got[1], Incoming::Pong(1));
        assert_eq!(got[2], Incoming::Other);
        assert_eq!(got[3], Incoming::Reply(br#"{"pong":6}"#.to_vec()));
        assert_eq!(got[4], Incoming::Other);
        assert_eq!(Wire::json_number(0), 10);
    }

    #[test]
    fn binary_pongs_and_pings_are_recognised() {
        let mut bytes = Vec::new();
        frame::encode_ping(&mut bytes, FrameType::Pong, 7, 99);
        frame::encode_ping(&mut bytes, FrameType::Ping, 1, 2);
        frame::encode_close(&mut bytes, CloseCode::Shutdown, "bye");
        let mut w = Wire::Binary(FrameDecoder::new(Limits::default()));
        // Split anywhere: the decoder reassembles.
        let mut got = w.feed(&bytes[..3]).unwrap();
        got.extend(w.feed(&bytes[3..]).unwrap());
        assert_eq!(got[0], Incoming::Pong(7));
        let mut pong = Vec::new();
        frame::encode_ping(&mut pong, FrameType::Pong, 1, 2);
        assert_eq!(got[1], Incoming::Reply(pong));
        assert!(matches!(&got[2], Incoming::Close(why) if why.contains("bye")));
        assert!(w.feed(b"\xff\xff\xff\xff\xff\xff").is_err());
    }
}
