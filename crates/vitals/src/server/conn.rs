//! One server-side connection: its socket, its protocol core, and the little runtime state around them.
//!
//! Kept compact: while idle a connection owns no buffer of its own (reads go through the loop's scratch
//! buffer, writes through the loop's output buffer); `pending` gets capacity only while the socket
//! refuses bytes. A TLS connection adds its boxed rustls state; a plaintext one pays one null pointer.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use vitals_proto::{Connection, SessionId};
use vitals_timer::Key;

use crate::event::DisconnectReason;
use crate::outbox::Outbox;

/// A server connection in an event loop's slab. Only what every connection needs is inline; state that
/// exists only while writes are blocked or the connection is ending lives behind `Option<Box<…>>`, so an
/// idle heartbeating connection is this struct plus its protocol core (size checked in a test).
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) generation: u32,
    /// The socket is unusable (EOF, error, stalled writes): tear down without writing more.
    pub(crate) broken: bool,
    /// WRITABLE interest is registered.
    pub(crate) writable: bool,
    /// Waiting for another loop to hand over a session being resumed.
    pub(crate) awaiting_resume: bool,
    /// `session_id` holds the session (kept as two fields, not an `Option<SessionId>`, which would
    /// cost 8 more bytes of padding per connection).
    has_session: bool,
    session_id: u64,
    pub(crate) proto: Connection,
    /// The wheel entry holding this connection's next deadline.
    pub(crate) timer: Option<Key>,
    /// Max-age deadline, if configured.
    pub(crate) expires: Option<Instant>,
    /// Bytes the socket has not taken yet, and since when.
    pub(crate) backlog: Option<Box<Backlog>>,
    /// Why and how it is ending, once it is.
    pub(crate) ending: Option<Box<Ending>>,
    /// The TLS state machine, on a TLS server. Socket bytes go through it both ways; the protocol core
    /// only ever sees plaintext.
    pub(crate) tls: Option<Box<rustls::ServerConnection>>,
}

/// Output the socket refused.
pub(crate) struct Backlog {
    /// Plaintext connections: the refused output. TLS connections keep refused records inside
    /// rustls (`wants_write()`), so this stays empty and only `since` matters.
    pub(crate) out: Outbox,
    /// When the backlog appeared (a write stall is measured from here).
    pub(crate) since: Instant,
}

/// State of a connection that is closing.
#[derive(Default)]
pub(crate) struct Ending {
    /// Why it ends (the first reason recorded).
    pub(crate) reason: Option<DisconnectReason>,
    /// Flush the backlog until this instant, then drop.
    pub(crate) linger_until: Option<Instant>,
    /// Close with this code once everything queued has been written (graceful drain).
    pub(crate) close_when_flushed: Option<vitals_proto::CloseCode>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("generation", &self.generation)
            .field("session", &self.session())
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub(crate) fn new(
        stream: TcpStream,
        proto: Connection,
        generation: u32,
        expires: Option<Instant>,
        tls: Option<Box<rustls::ServerConnection>>,
    ) -> Self {
        Conn {
            stream,
            generation,
            broken: false,
            writable: false,
            awaiting_resume: false,
            has_session: false,
            session_id: 0,
            proto,
            timer: None,
            expires,
            backlog: None,
            ending: None,
            tls,
        }
    }

    /// The session, once the handshake established (or resumed) one.
    pub(crate) fn session(&self) -> Option<SessionId> {
        self.has_session.then_some(SessionId(self.session_id))
    }

    pub(crate) fn set_session(&mut self, session: SessionId) {
        self.has_session = true;
        self.session_id = session.0;
    }

    /// The peer's address (asked of the socket: not worth storing in every connection).
    pub(crate) fn peer(&self) -> SocketAddr {
        self.stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn ending_mut(&mut self) -> &mut Ending {
        self.ending.get_or_insert_with(Box::default)
    }

    /// Records why the connection ends (the first reason only: later ones are consequences).
    pub(crate) fn end(&mut self, reason: DisconnectReason) {
        self.ending_mut().reason.get_or_insert(reason);
    }

    /// The socket is unusable for `reason`: nothing more is written.
    pub(crate) fn break_with(&mut self, reason: DisconnectReason) {
        self.end(reason);
        self.broken = true;
    }

    /// Takes the recorded reason.
    pub(crate) fn take_reason(&mut self) -> Option<DisconnectReason> {
        self.ending.as_mut().and_then(|e| e.reason.take())
    }

    pub(crate) fn linger_until(&self) -> Option<Instant> {
        self.ending.as_ref().and_then(|e| e.linger_until)
    }

    pub(crate) fn set_linger(&mut self, until: Instant) {
        self.ending_mut().linger_until.get_or_insert(until);
    }

    pub(crate) fn close_when_flushed(&mut self, code: vitals_proto::CloseCode) {
        self.ending_mut().close_when_flushed = Some(code);
    }

    pub(crate) fn take_close_when_flushed(&mut self) -> Option<vitals_proto::CloseCode> {
        self.ending
            .as_mut()
            .and_then(|e| e.close_when_flushed.take())
    }

    pub(crate) fn has_backlog(&self) -> bool {
        self.backlog.is_some()
    }

    /// The earliest instant this connection needs attention: protocol timer, max age, write stall,
    /// linger end.
    pub(crate) fn next_deadline(&self, stall_limit: std::time::Duration) -> Option<Instant> {
        [
            self.proto.poll_timeout(),
            self.expires,
            self.backlog.as_ref().map(|b| b.since + stall_limit),
            self.linger_until(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inline_connection_state_stays_small() {
        // stream (fd), generation, flags, protocol core handle, session id, wheel key, max-age deadline,
        // and three optional boxes (backlog, ending, TLS). Everything else lives in the protocol core.
        // (mio's stream is 16 bytes in debug builds, 4 in release: 104 here is 88 in release.)
        eprintln!(
            "Conn: {} bytes inline; with TLS + boxed rustls::ServerConnection: {} bytes",
            std::mem::size_of::<Conn>(),
            std::mem::size_of::<rustls::ServerConnection>()
        );
        assert!(
            std::mem::size_of::<Conn>() <= 104,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
