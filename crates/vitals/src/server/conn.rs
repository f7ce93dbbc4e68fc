//! One server-side connection: its socket, its protocol core, and the little runtime state around them.
//!
//! Kept compact: while idle a connection owns no buffer of its own (reads go through the loop's scratch
//! buffer, writes through the loop's output buffer); `pending` gets capacity only while the socket
//! refuses bytes.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use vitals_proto::{Connection, SessionId};
use vitals_timer::Key;

use crate::event::DisconnectReason;

/// A server connection in an event loop's slab.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) proto: Connection,
    pub(crate) peer: SocketAddr,
    pub(crate) generation: u32,
    pub(crate) session: Option<SessionId>,
    /// The wheel entry holding this connection's next deadline.
    pub(crate) timer: Option<Key>,
    /// The deadline (in wheel ticks) that entry was filed for.
    pub(crate) timer_tick: u64,
    /// Bytes the socket has not taken yet.
    pub(crate) pending: Vec<u8>,
    /// When `pending` last became non-empty without draining.
    pub(crate) stalled_since: Option<Instant>,
    /// Closing: flush `pending` until this instant, then drop.
    pub(crate) linger_until: Option<Instant>,
    /// Max-age deadline, if configured.
    pub(crate) expires: Option<Instant>,
    /// Why it is ending, once known.
    pub(crate) reason: Option<DisconnectReason>,
    /// The socket is unusable (EOF, error, stalled writes): tear down without writing more.
    pub(crate) broken: bool,
    /// WRITABLE interest is registered.
    pub(crate) writable: bool,
    /// Waiting for another loop to hand over a session being resumed.
    pub(crate) awaiting_resume: bool,
    /// Close with this code once everything queued has been written (graceful drain).
    pub(crate) close_when_flushed: Option<vitals_proto::CloseCode>,
}

impl Conn {
    pub(crate) fn new(
        stream: TcpStream,
        proto: Connection,
        peer: SocketAddr,
        generation: u32,
        expires: Option<Instant>,
    ) -> Self {
        Conn {
            stream,
            proto,
            peer,
            generation,
            session: None,
            timer: None,
            timer_tick: 0,
            pending: Vec::new(),
            stalled_since: None,
            linger_until: None,
            expires,
            reason: None,
            broken: false,
            writable: false,
            awaiting_resume: false,
            close_when_flushed: None,
        }
    }

    /// Records why the connection ends (the first reason only: later ones are consequences).
    pub(crate) fn end(&mut self, reason: DisconnectReason) {
        self.reason.get_or_insert(reason);
    }

    /// The socket is unusable for `reason`: nothing more is written.
    pub(crate) fn break_with(&mut self, reason: DisconnectReason) {
        self.end(reason);
        self.broken = true;
    }

    /// The earliest instant this connection needs attention: protocol timer, max age, write stall,
    /// linger end.
    pub(crate) fn next_deadline(&self, stall_limit: std::time::Duration) -> Option<Instant> {
        [
            self.proto.poll_timeout(),
            self.expires,
            self.stalled_since.map(|t| t + stall_limit),
            self.linger_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Reads into `buf` until the socket is drained, feeding each chunk to `sink`. Returns the bytes read
/// and, if the connection ended, why. A read shorter than `buf` means the socket was drained (the
/// edge-triggered poller signals new data), so no second `read` is spent to see `WouldBlock` — unless
/// the peer's FIN was flagged (`read_closed`), in which case we read on to see the EOF.
pub(crate) fn read_into(
    stream: &mut TcpStream,
    buf: &mut [u8],
    read_closed: bool,
    mut sink: impl FnMut(&[u8]) -> bool,
) -> (usize, Option<DisconnectReason>) {
    let mut total = 0;
    loop {
        match stream.read(buf) {
            Ok(0) => return (total, Some(DisconnectReason::Eof)),
            Ok(n) => {
                total += n;
                let keep_going = sink(&buf[..n]);
                if !keep_going || (n < buf.len() && !read_closed) {
                    return (total, None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (total, None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (total, Some(DisconnectReason::from_io(&e))),
        }
    }
}

/// Writes as much of `buf` as the socket takes. Returns the bytes written.
pub(crate) fn write_some(stream: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
    let mut off = 0;
    while off < buf.len() {
        match stream.write(&buf[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(off)
}
