//! One server-side connection: its socket, its protocol core, and the little runtime state around them.
//!
//! Kept compact: while idle a connection owns no buffer of its own (reads go through the loop's scratch
//! buffer, writes through the loop's output buffer); `pending` gets capacity only while the socket
//! refuses bytes. A TLS connection adds its boxed rustls state; a plaintext one pays one null pointer.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use vitals_proto::BytesMut;
use vitals_proto::{Connection, SessionId};
use vitals_timer::Key;

use crate::event::DisconnectReason;
use crate::outbox::Outbox;

/// A server connection in an event loop's slab. Only what every connection needs is inline; state that
/// exists only while writes are blocked or the connection is ending lives behind `Option<Box<…>>`, so an
/// idle heartbeating connection is this struct, protocol core included (size checked in a test).
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) generation: u32,
    /// The socket is unusable (EOF, error, stalled writes): tear down without writing more.
    pub(crate) broken: bool,
    /// WRITABLE interest is registered.
    pub(crate) writable: bool,
    /// Waiting for another loop to hand over a session being resumed.
    pub(crate) awaiting_resume: bool,
    /// The application was told of the protocol core's session (`Connected`): from then on
    /// [`session`](Self::session) is the core's session id (not stored twice).
    has_session: bool,
    pub(crate) proto: Connection,
    /// The wheel entry holding this connection's next deadline.
    pub(crate) timer: Option<Key>,
    /// Max-age deadline, if configured: nanoseconds since the server's origin (8 bytes, where an
    /// `Option<Instant>` takes 16).
    expires: Option<NonZeroU64>,
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
    /// Everything, CLOSE included, has been written and our FIN sent: waiting for the peer's.
    pub(crate) fin_sent: bool,
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
        tls: Option<Box<rustls::ServerConnection>>,
    ) -> Self {
        Conn {
            stream,
            generation,
            broken: false,
            writable: false,
            awaiting_resume: false,
            has_session: false,
            proto,
            timer: None,
            expires: None,
            backlog: None,
            ending: None,
            tls,
        }
    }

    /// The session, once the handshake established (or resumed) one and the application was told.
    pub(crate) fn session(&self) -> Option<SessionId> {
        if self.has_session {
            self.proto.session_id()
        } else {
            None
        }
    }

    /// The application has been told of the core's session.
    pub(crate) fn session_reported(&mut self) {
        self.has_session = true;
    }

    /// The max-age deadline, given the server's `origin`.
    pub(crate) fn expires(&self, origin: Instant) -> Option<Instant> {
        self.expires
            .map(|ns| origin + Duration::from_nanos(ns.get()))
    }

    /// Sets (or with `None` clears) the max-age deadline, given the server's `origin`.
    pub(crate) fn set_expires(&mut self, origin: Instant, at: Option<Instant>) {
        self.expires = at.map(|at| {
            let ns =
                u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX);
            NonZeroU64::new(ns).unwrap_or(NonZeroU64::MIN)
        });
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

    /// The recorded reason, if the connection is ending.
    pub(crate) fn reason(&self) -> Option<&DisconnectReason> {
        self.ending.as_ref().and_then(|e| e.reason.as_ref())
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

    /// Our FIN went out after the last bytes (see [`Ending::fin_sent`]).
    pub(crate) fn fin_sent(&self) -> bool {
        self.ending.as_ref().is_some_and(|e| e.fin_sent)
    }

    pub(crate) fn set_fin_sent(&mut self) {
        self.ending_mut().fin_sent = true;
    }

    pub(crate) fn has_backlog(&self) -> bool {
        self.backlog.is_some()
    }

    /// The earliest instant this connection needs attention: protocol timer, max age, write stall,
    /// linger end.
    pub(crate) fn next_deadline(&self, stall_limit: Duration, origin: Instant) -> Option<Instant> {
        [
            self.proto.poll_timeout(),
            self.expires(origin),
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

/// Size of a streaming connection's input allocations.
const BULK_ALLOC: usize = 256 * 1024;
/// Room below which a streaming connection's input buffer is given more before a read.
const BULK_MIN_ROOM: usize = 64 * 1024;
/// Most allocations a loop keeps for reuse by its streaming connections (32 × 256 KiB).
pub(crate) const BULK_POOL: usize = 32;

/// The input buffer of a connection that data is streaming into. Large DATA chunks are delivered as
/// shared slices of its allocation, so an allocation can be reused only once the application has
/// dropped those messages: when the current one is full, reading goes on in the loop's pooled
/// allocations that are free again, and only otherwise in a new one — so a steady stream reads into
/// the same memory (no page faults on fresh memory) instead of one new allocation per 256 KiB.
#[derive(Debug, Default)]
pub(crate) struct BulkBuf {
    /// Being read into; holds the start of a frame not complete yet.
    cur: BytesMut,
    /// `cur` has an allocation (it is not the initial empty buffer).
    allocated: bool,
}

/// Allocations that held a streaming connection's input, oldest first (empty views, possibly still
/// shared with messages the application holds), for reuse once they are free again.
#[derive(Debug, Default)]
pub(crate) struct BulkPool {
    allocs: std::collections::VecDeque<BytesMut>,
}

impl BulkPool {
    /// Keeps `b`'s allocation for reuse (dropping the oldest beyond [`BULK_POOL`]). `b` may be an
    /// empty view at the very end of its allocation (capacity 0): reclaiming looks at the allocation.
    fn put(&mut self, mut b: BytesMut) {
        b.clear();
        if self.allocs.len() >= BULK_POOL {
            self.allocs.pop_front();
        }
        self.allocs.push_back(b);
    }

    /// An allocation with room for `want` bytes that no message shares any more, if there is one.
    fn take(&mut self, want: usize) -> Option<BytesMut> {
        let i = self.allocs.iter_mut().position(|b| b.try_reclaim(want))?;
        self.allocs.remove(i)
    }

    /// Releases every kept allocation.
    pub(crate) fn clear(&mut self) {
        self.allocs.clear();
    }

    /// True when nothing is kept.
    pub(crate) fn is_empty(&self) -> bool {
        self.allocs.is_empty()
    }
}

impl BulkBuf {
    /// Bytes held (the start of a frame not complete yet).
    pub(crate) fn len(&self) -> usize {
        self.cur.len()
    }

    /// The buffer as a byte slice.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.cur
    }

    /// Gives the (empty) buffer's allocation to the pool when the stream has ebbed.
    pub(crate) fn retire(self, pool: &mut BulkPool) {
        if self.allocated {
            pool.put(self.cur);
        }
    }

    /// Ensures at least [`BULK_MIN_ROOM`] of room after what `cur` holds.
    fn make_room(&mut self, pool: &mut BulkPool) {
        let len = self.cur.len();
        if self.cur.capacity() - len >= BULK_MIN_ROOM {
            return;
        }
        let want = BULK_MIN_ROOM.max(BULK_ALLOC.saturating_sub(len));
        // The current allocation, if every message sharing it is gone (moves the held bytes to its front).
        if self.cur.try_reclaim(want) {
            return;
        }
        let mut next = pool
            .take(len + want)
            .unwrap_or_else(|| BytesMut::with_capacity(len + want));
        next.extend_from_slice(&self.cur);
        let full = std::mem::replace(&mut self.cur, next);
        if std::mem::replace(&mut self.allocated, true) {
            pool.put(full);
        }
    }
}

/// Most bytes read from one streaming connection per turn of the event loop: then its messages go to
/// the application, its acknowledgements out, and the other connections get their turn, before it
/// reads again (a socket buffer can hold megabytes).
const BULK_BUDGET: usize = 256 * 1024;

/// Reads into `buf`, a streaming connection's own input buffer, until the socket is drained (as
/// [`read_into`] does) or [`BULK_BUDGET`] bytes were read, handing the buffer to `sink` after each
/// read; `sink` takes the complete frames from its front and leaves an incomplete one in place.
/// Returns the bytes read, why the connection ended if it did, and whether the budget stopped it
/// (read again later: the edge-triggered poller will not say so).
pub(crate) fn read_bulk(
    stream: &mut TcpStream,
    buf: &mut BulkBuf,
    pool: &mut BulkPool,
    read_closed: bool,
    mut sink: impl FnMut(&mut BytesMut) -> bool,
) -> (usize, Option<DisconnectReason>, bool) {
    let mut total = 0;
    loop {
        buf.make_room(pool);
        let room = buf.cur.capacity() - buf.cur.len();
        match read_spare(stream, &mut buf.cur) {
            Ok(0) => return (total, Some(DisconnectReason::Eof), false),
            Ok(n) => {
                total += n;
                let keep_going = sink(&mut buf.cur);
                if !keep_going || (n < room && !read_closed) {
                    return (total, None, false);
                }
                if total >= BULK_BUDGET {
                    return (total, None, true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (total, None, false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (total, Some(DisconnectReason::from_io(&e)), false),
        }
    }
}

/// One `read` into the spare capacity of `buf` (not zeroed first), appending what was read.
#[allow(unsafe_code)]
fn read_spare(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let (filled, _) = rustix::io::read(stream, buf.spare_capacity_mut())?;
    let n = filled.len();
    // SAFETY: `read` initialised the first `n` bytes of the spare capacity (rustix hands back
    // exactly the initialised part), so the first `len + n` bytes of the buffer are initialised.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
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

    /// Fills what room `b` has (as a read would) and takes it all out as one shared message.
    fn fill_and_share(b: &mut BulkBuf, pool: &mut BulkPool) -> vitals_proto::Bytes {
        b.make_room(pool);
        let room = b.cur.capacity() - b.cur.len();
        b.cur.extend_from_slice(&vec![1; room]);
        b.cur.split().freeze()
    }

    #[test]
    fn streaming_input_reuses_allocations_once_the_application_dropped_their_messages() {
        let mut pool = BulkPool::default();
        let mut b = BulkBuf::default();
        let first = fill_and_share(&mut b, &mut pool);
        let first_alloc = first.as_ptr();
        // While a message shares it, the allocation is not reused: a second one is made.
        let second = fill_and_share(&mut b, &mut pool);
        assert_ne!(second.as_ptr(), first_alloc);
        assert_eq!(second.len(), BULK_ALLOC);
        // Once its messages are dropped, the first allocation is read into again.
        drop(first);
        let third = fill_and_share(&mut b, &mut pool);
        assert_eq!(third.as_ptr(), first_alloc);
        // The start of an incomplete frame moves along with the reading.
        b.make_room(&mut pool);
        b.cur.extend_from_slice(b"partial");
        let room = b.cur.capacity() - b.cur.len();
        b.cur.extend_from_slice(&vec![2; room - 10]);
        let _shared = b.cur.split_to(7 + room - 10 - 5).freeze();
        b.make_room(&mut pool);
        assert_eq!(b.as_slice(), &[2; 5]);
        assert!(b.cur.capacity() - b.len() >= BULK_MIN_ROOM);
    }

    #[test]
    fn the_pool_is_bounded() {
        let mut pool = BulkPool::default();
        for _ in 0..BULK_POOL + 5 {
            pool.put(BytesMut::with_capacity(1024));
        }
        assert_eq!(pool.allocs.len(), BULK_POOL);
        pool.clear();
        assert!(pool.is_empty());
    }

    #[test]
    fn the_inline_connection_state_stays_small() {
        // stream (fd), generation, flags, the protocol core itself (192 bytes, inline), wheel key,
        // max-age deadline, and three optional boxes (backlog, ending, TLS).
        // (mio's stream is 16 bytes in debug builds, 4 in release: 264 here is 248 in release.)
        eprintln!(
            "Conn: {} bytes inline; with TLS + boxed rustls::ServerConnection: {} bytes",
            std::mem::size_of::<Conn>(),
            std::mem::size_of::<rustls::ServerConnection>()
        );
        assert!(
            std::mem::size_of::<Conn>() <= 264,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
