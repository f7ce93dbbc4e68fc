//! Output gathered from a protocol core for vectored writes: control frames and DATA heads are
//! copied into one small buffer, DATA chunks stay where they are (shared slices of the replay
//! buffer), and `writev` sends them in order — message bytes are not copied on their way out.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use vitals_proto::{Bytes, Connection};

/// Most slices handed to one `writev` (well below `IOV_MAX`; 64 KiB chunks make a batch of a few).
const MAX_IOV: usize = 64;

/// One piece of output, in wire order.
#[derive(Debug)]
enum Seg {
    /// `head[start..end]`: control frames and DATA heads.
    Head { start: usize, end: usize },
    /// A DATA chunk, shared with the replay buffer.
    Body(Bytes),
}

/// Bytes waiting to be written, in order, as a list of slices.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    head: Vec<u8>,
    segs: VecDeque<Seg>,
    /// Bytes of the first segment already written.
    off: usize,
    /// Bytes not yet written.
    len: usize,
}

impl Outbox {
    /// True when nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes waiting.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Drops everything waiting.
    pub(crate) fn clear(&mut self) {
        self.head.clear();
        self.segs.clear();
        self.off = 0;
        self.len = 0;
    }

    /// Gathers the core's output until at least `batch` bytes wait or it has nothing more.
    /// Returns the bytes added.
    pub(crate) fn fill(&mut self, proto: &mut Connection, batch: usize) -> usize {
        let before = self.len;
        while self.len < batch {
            let start = self.head.len();
            let body = proto.poll_transmit_parts(&mut self.head);
            let end = self.head.len();
            if end == start && body.is_none() {
                break;
            }
            self.push_head(start, end);
            if let Some(body) = body.filter(|b| !b.is_empty()) {
                self.len += body.len();
                self.segs.push_back(Seg::Body(body));
            }
        }
        self.len - before
    }

    /// Appends bytes to send (after everything already waiting).
    #[cfg(test)]
    pub(crate) fn push_bytes(&mut self, bytes: &[u8]) {
        let start = self.head.len();
        self.head.extend_from_slice(bytes);
        self.push_head(start, self.head.len());
    }

    /// Appends a shared chunk to send (after everything already waiting).
    #[cfg(test)]
    pub(crate) fn push_body(&mut self, body: Bytes) {
        if !body.is_empty() {
            self.len += body.len();
            self.segs.push_back(Seg::Body(body));
        }
    }

    /// Records `head[start..end]` as the next segment (merged with a head segment just before it).
    fn push_head(&mut self, start: usize, end: usize) {
        if end == start {
            return;
        }
        self.len += end - start;
        if let Some(Seg::Head { end: last, .. }) = self.segs.back_mut()
            && *last == start
        {
            *last = end;
            return;
        }
        self.segs.push_back(Seg::Head { start, end });
    }

    /// Writes with `writev` (as `write_vectored` calls `write`) until everything has left or the
    /// writer would block (`Ok`, with the rest kept). Returns the bytes written.
    pub(crate) fn write_with(
        &mut self,
        mut write_vectored: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut written = 0;
        while !self.is_empty() {
            let result = if self.segs.len() == 1 {
                // The common case (a heartbeat's answer): one buffer, no iovec array to fill.
                let one = self
                    .segs
                    .front()
                    .map_or(&[][..], |seg| self.bytes(seg, self.off));
                write_vectored(&[IoSlice::new(one)])
            } else {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut n_iov = 0;
                for (i, seg) in self.segs.iter().take(MAX_IOV).enumerate() {
                    let skip = if i == 0 { self.off } else { 0 };
                    iov[n_iov] = IoSlice::new(self.bytes(seg, skip));
                    n_iov += 1;
                }
                write_vectored(&iov[..n_iov])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    written += n;
                    self.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    /// The bytes of `seg` after its first `skip`.
    fn bytes<'a>(&'a self, seg: &'a Seg, skip: usize) -> &'a [u8] {
        let all = match seg {
            Seg::Head { start, end } => self.head.get(*start..*end).unwrap_or(&[]),
            Seg::Body(b) => &b[..],
        };
        all.get(skip..).unwrap_or(&[])
    }

    /// `n` bytes from the front have been written.
    fn advance(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(seg) = self.segs.front() else {
                break;
            };
            let seg_len = match seg {
                Seg::Head { start, end } => end - start,
                Seg::Body(b) => b.len(),
            };
            let left = seg_len - self.off;
            if n < left {
                self.off += n;
                return;
            }
            n -= left;
            self.off = 0;
            self.segs.pop_front();
        }
        if self.segs.is_empty() {
            self.head.clear();
            self.off = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call (and refuses once `budget` is spent),
    /// recording what it took.
    struct Partial {
        cap: usize,
        budget: usize,
        got: Vec<u8>,
        calls: usize,
    }

    impl Partial {
        fn write(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for s in iov {
                let take = s.len().min(self.cap - n).min(self.budget);
                self.got.extend_from_slice(&s[..take]);
                n += take;
                self.budget -= take;
                if n == self.cap || self.budget == 0 {
                    break;
                }
            }
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }
    }

    fn sample() -> (Outbox, Vec<u8>) {
        let mut o = Outbox::default();
        let mut expect = Vec::new();
        for i in 0..5u8 {
            let head = vec![i; 3 + usize::from(i)];
            let body = Bytes::from(vec![100 + i; 1000 + 17 * usize::from(i)]);
            o.push_bytes(&head);
            o.push_body(body.clone());
            expect.extend_from_slice(&head);
            expect.extend_from_slice(&body);
        }
        o.push_bytes(b"tail");
        expect.extend_from_slice(b"tail");
        (o, expect)
    }

    #[test]
    fn partial_writes_resume_where_they_stopped_at_every_size() {
        for cap in [1, 2, 3, 7, 999, 1000, 1001, 1003, 4096, 100_000] {
            let (mut o, expect) = sample();
            assert_eq!(o.len(), expect.len());
            let mut w = Partial {
                cap,
                budget: usize::MAX,
                got: Vec::new(),
                calls: 0,
            };
            let n = o.write_with(|iov| w.write(iov)).unwrap();
            assert_eq!(n, expect.len(), "cap {cap}");
            assert_eq!(w.got, expect, "cap {cap}");
            assert!(o.is_empty());
        }
    }

    #[test]
    fn a_full_socket_keeps_the_rest_in_order() {
        let (mut o, expect) = sample();
        let mut w = Partial {
            cap: 700,
            budget: 2500,
            got: Vec::new(),
            calls: 0,
        };
        assert_eq!(o.write_with(|iov| w.write(iov)).unwrap(), 2500);
        assert_eq!(o.len(), expect.len() - 2500);
        // More output queued while blocked goes after what waits.
        o.push_bytes(b"later");
        w.budget = usize::MAX;
        o.write_with(|iov| w.write(iov)).unwrap();
        let mut all = expect.clone();
        all.extend_from_slice(b"later");
        assert_eq!(w.got, all);
        assert!(o.is_empty());
    }

    #[test]
    fn errors_other_than_would_block_are_returned() {
        let (mut o, _) = sample();
        let r = o.write_with(|_| Err(io::ErrorKind::BrokenPipe.into()));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        let r = o.write_with(|_| Ok(0));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WriteZero);
    }

    #[test]
    fn fill_gathers_the_same_bytes_as_poll_transmit() {
        use std::time::Instant;
        use vitals_proto::{Config, ResumeToken, SessionId, SessionKeys};
        let t0 = Instant::now();
        let keys = SessionKeys {
            id: SessionId(1),
            token: ResumeToken::from_bytes([7; 16]),
        };
        // Two identical pairs: one drained with poll_transmit, one through an Outbox.
        let mut plain = (
            Connection::client(t0, Config::default()),
            Connection::server(t0, Config::default(), keys),
        );
        let mut gathered = (
            Connection::client(t0, Config::default()),
            Connection::server(t0, Config::default(), keys),
        );
        let big = Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let mut sent = false;
        for _ in 0..6 {
            let mut a = Vec::new();
            while plain.0.poll_transmit(&mut a) > 0 {}
            let mut o = Outbox::default();
            o.fill(&mut gathered.0, usize::MAX);
            let mut b = Vec::new();
            o.write_with(|iov| {
                let mut n = 0;
                for s in iov {
                    b.extend_from_slice(s);
                    n += s.len();
                }
                Ok(n)
            })
            .unwrap();
            assert_eq!(a, b);
            plain.1.handle_input(t0, &a);
            gathered.1.handle_input(t0, &b);
            let mut a = Vec::new();
            while plain.1.poll_transmit(&mut a) > 0 {}
            let mut b = Vec::new();
            while gathered.1.poll_transmit(&mut b) > 0 {}
            plain.0.handle_input(t0, &a);
            gathered.0.handle_input(t0, &b);
            if !sent && plain.0.send(t0, big.clone()).is_ok() {
                gathered.0.send(t0, big.clone()).unwrap();
                sent = true;
            }
        }
        assert!(sent);
        let got = std::iter::from_fn(|| gathered.1.poll_event()).find_map(|e| match e {
            vitals_proto::Event::Message { payload, .. } => Some(payload),
            _ => None,
        });
        assert_eq!(got.as_deref(), Some(&big[..]));
    }
}
