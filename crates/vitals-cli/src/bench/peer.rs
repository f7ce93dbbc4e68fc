//! A lean client peer: one tokio task drives a `vitals_proto::Connection` over a `TcpStream`, with no
//! reconnect, no event channel and no per-connection read buffer (reads go through a per-thread scratch
//! buffer). `vitals bench` opens thousands of these; `vitals demo` uses one as its "puppet", which can be
//! frozen: it then stops reading, writing and timing while its socket stays open, as a wedged process
//! would.
//!
//! Besides the protocol events, the driver counts the PONGs it writes (answers to the server's PINGs) by
//! walking the frame headers of its own output, so that heartbeats started by either side are counted.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use vitals::vitals_proto::{CloseCode, Connection, Event, FrameType};
use vitals::{Codec, DisconnectReason};

/// Size of the per-thread scratch buffer reads go through.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Read scratch buffer shared by every peer task that runs on this thread (reads never await while
    /// holding it).
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// What the controller wants the peers to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Heartbeat normally.
    Run,
    /// Stop touching the socket (it stays open): a frozen process.
    Freeze,
    /// Close orderly (CLOSE `Normal`) and end.
    Stop,
}

/// Receives what a peer sees. Called from the peer's task; keep it cheap.
pub(crate) trait Observer {
    /// The handshake completed (JSON mode: the TCP connection was made).
    fn connected(&self, _granted: Option<(std::time::Duration, std::time::Duration)>) {}
    /// A protocol event (RTT samples, messages, …).
    fn event(&self, _event: &Event) {}
    /// `n` PONG frames were written: the server's pings answered by us.
    fn pongs_sent(&self, _n: u64) {}
}

/// How a peer's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The controller asked it to stop ([`Mode::Stop`]).
    Stopped,
    /// The connection ended on its own.
    Lost(DisconnectReason),
}

/// Connects to `server`, from source address `bind` if given.
pub(crate) async fn connect(server: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(server).await
}

/// Counts the PONGs in `out` (whole frames or JSON objects, as `poll_transmit` writes them).
fn count_pongs(codec: Codec, out: &[u8]) -> u64 {
    match codec {
        Codec::Binary => {
            let mut n = 0;
            let mut off = 0usize;
            while let (Some(&ty), Some(len)) = (out.get(off), out.get(off + 1..off + 5)) {
                if ty == FrameType::Pong as u8 {
                    n += 1;
                }
                let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                off = off.saturating_add(5).saturating_add(len);
            }
            n
        }
        Codec::Json => out.windows(6).filter(|w| w == b"\"pong\"").count() as u64,
    }
}

/// Drives `proto` over `stream` until the connection ends or `mode` says [`Mode::Stop`].
pub(crate) async fn drive<O: Observer>(
    stream: TcpStream,
    mut proto: Connection,
    codec: Codec,
    mut mode: watch::Receiver<Mode>,
    obs: &O,
) -> End {
    if codec == Codec::Json {
        obs.connected(None);
    }
    let mut out: Vec<u8> = Vec::new();
    let mut out_off = 0usize;
    let mut reason: Option<DisconnectReason> = None;
    let mut stopping = false;
    // One timer for the connection's life, moved only when the core's deadline moves (a new timer per
    // turn would register and cancel one in the runtime's wheel at every wake-up).
    let timer = tokio::time::sleep(FAR);
    tokio::pin!(timer);
    let mut armed: Option<tokio::time::Instant> = None;
    loop {
        // Write what the core has.
        if let Err(e) = flush(&stream, &mut proto, codec, &mut out, &mut out_off, obs) {
            reason.get_or_insert(DisconnectReason::from_io(&e));
            break;
        }
        while let Some(event) = proto.poll_event() {
            match &event {
                Event::Connected {
                    interval, timeout, ..
                } => obs.connected(Some((*interval, *timeout))),
                Event::Dead { .. } => {
                    reason.get_or_insert(DisconnectReason::SilenceTimeout);
                }
                Event::Closed {
                    code,
                    reason: text,
                    by_peer,
                } => {
                    reason.get_or_insert(DisconnectReason::from_close(*code, text, *by_peer));
                }
                _ => {}
            }
            obs.event(&event);
        }
        if proto.is_closed() {
            break;
        }
        let current = *mode.borrow_and_update();
        match current {
            Mode::Run => {}
            Mode::Stop => {
                stopping = true;
                proto.close(CloseCode::Normal, "bench done");
                let _ = flush(&stream, &mut proto, codec, &mut out, &mut out_off, obs);
                break;
            }
            Mode::Freeze => {
                // A wedged process: nothing is read, written or timed until told otherwise.
                if mode.changed().await.is_err() {
                    stopping = true;
                    break;
                }
                continue;
            }
        }
        let deadline = proto.poll_timeout().map(tokio::time::Instant::from_std);
        if deadline != armed {
            let at = deadline.unwrap_or_else(|| tokio::time::Instant::now() + FAR);
            timer.as_mut().reset(at);
            armed = deadline;
        }
        let interest = if out_off < out.len() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    stopping = true;
                    break;
                }
            }
            ready = stream.ready(interest) => match ready {
                Ok(r) if r.is_readable() || r.is_read_closed() => {
                    if let Some(r) = read(&stream, &mut proto) {
                        reason.get_or_insert(r);
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    reason.get_or_insert(DisconnectReason::from_io(&e));
                    break;
                }
            },
            () = &mut timer, if armed.is_some() => {
                armed = None;
                proto.handle_timeout(Instant::now());
            }
        }
    }
    // Events queued by the last input (e.g. the CLOSE that ended it).
    while let Some(event) = proto.poll_event() {
        obs.event(&event);
    }
    if stopping {
        End::Stopped
    } else {
        End::Lost(reason.unwrap_or(DisconnectReason::Eof))
    }
}

/// Writes what the core has to send, as far as the socket takes it.
fn flush<O: Observer>(
    stream: &TcpStream,
    proto: &mut Connection,
    codec: Codec,
    out: &mut Vec<u8>,
    off: &mut usize,
    obs: &O,
) -> io::Result<()> {
    loop {
        if *off >= out.len() {
            out.clear();
            *off = 0;
            while proto.poll_transmit(out) > 0 {}
            if out.is_empty() {
                return Ok(());
            }
            let pongs = count_pongs(codec, out);
            if pongs > 0 {
                obs.pongs_sent(pongs);
            }
        }
        match stream.try_write(&out[*off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads what is there into the core. `Some(reason)` when the connection ended.
fn read(stream: &TcpStream, proto: &mut Connection) -> Option<DisconnectReason> {
    READ_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        loop {
            match stream.try_read(&mut buf) {
                Ok(0) => return Some(DisconnectReason::Eof),
                Ok(n) => {
                    proto.handle_input(Instant::now(), &buf[..n]);
                    if proto.is_closed() || n < buf.len() {
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(DisconnectReason::from_io(&e)),
            }
        }
    })
}

/// A deadline so far away that it stands for none.
const FAR: std::time::Duration = std::time::Duration::from_secs(86_400 * 365);

#[cfg(test)]
mod tests {
    use super::*;
    use vitals::vitals_proto::frame;

    #[test]
    fn counts_pong_frames_among_others() {
        let mut out = Vec::new();
        frame::encode_ping(&mut out, FrameType::Pong, 1, 2);
        frame::encode_ack(&mut out, 3);
        frame::encode_ping(&mut out, FrameType::Ping, 4, 5);
        frame::encode_ping(&mut out, FrameType::Pong, 6, 7);
        assert_eq!(count_pongs(Codec::Binary, &out), 2);
        assert_eq!(count_pongs(Codec::Binary, &[]), 0);
        // A truncated header counts nothing and does not panic.
        assert_eq!(count_pongs(Codec::Binary, &[4, 0]), 0);
    }

    #[test]
    fn counts_json_pongs() {
        assert_eq!(
            count_pongs(Codec::Json, br#"{"pong":2}{"ping":3}{"pong":4}"#),
            2
        );
    }
}
