//! Incremental binary frame decoder with configurable limits.
//!
//! Bytes go in with [`FrameDecoder::push`] (at most [`Limits::max_buffered`] held at once);
//! frames come out with [`FrameDecoder::next_frame`]. A frame split across reads is kept until
//! it is complete; several frames in one read come out one by one.

use crate::auth::AuthToken;
use crate::error::DecodeError;
use crate::frame::{
    ACK_LEN, CloseCode, DATA_FIN, DATA_PREFIX_LEN, Frame, FrameType, HANDSHAKE_LEN, HEADER_LEN,
    HELLO_RESUME, Hello, MAGIC, MAX_HELLO_LEN, PING_LEN, WELCOME_RESUMED, Welcome,
};
use crate::session::{ResumeToken, SessionId};

/// Decoder limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted frame payload (the length field), in bytes. Default 128 KiB
    /// (twice the default chunk size, so the default peer never comes close).
    pub max_frame_size: u32,
    /// Most bytes the decoder holds undecoded. Must be at least `max_frame_size + 5`
    /// for the largest frame to be decodable; default 256 KiB.
    pub max_buffered: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 128 * 1024,
            max_buffered: 256 * 1024,
        }
    }
}

/// Above this capacity an emptied buffer is released, so idle connections hold no big buffer.
const SHRINK_ABOVE: usize = 4096;

/// Incremental decoder of binary frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    limits: Limits,
    buf: Vec<u8>,
    start: usize,
    poisoned: bool,
}

impl FrameDecoder {
    /// A decoder with the given limits.
    pub fn new(limits: Limits) -> FrameDecoder {
        FrameDecoder {
            limits,
            buf: Vec::new(),
            start: 0,
            poisoned: false,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes held but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// How many more bytes [`push`](Self::push) accepts right now.
    pub fn space(&self) -> usize {
        self.limits.max_buffered.saturating_sub(self.buffered())
    }

    /// Append received bytes. Fails (and poisons the decoder) if this would buffer more than
    /// `max_buffered` bytes; call [`next_frame`](Self::next_frame) until it returns `None`
    /// between pushes, and push at most [`space`](Self::space) bytes at a time.
    pub fn push(&mut self, input: &[u8]) -> Result<(), DecodeError> {
        if self.poisoned {
            return Err(DecodeError::Poisoned);
        }
        let buffered = self.buffered() + input.len();
        if buffered > self.limits.max_buffered {
            self.poisoned = true;
            return Err(DecodeError::BufferFull {
                buffered,
                max: self.limits.max_buffered,
            });
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(input);
        Ok(())
    }

    /// Decode the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.poisoned {
            return Err(DecodeError::Poisoned);
        }
        let avail = self.buf.get(self.start..).unwrap_or(&[]);
        let result = parse(avail, self.limits.max_frame_size);
        match result {
            Ok(Some((frame, used))) => {
                self.start += used;
                if self.start == self.buf.len() {
                    self.start = 0;
                    self.buf.clear();
                    if self.buf.capacity() > SHRINK_ABOVE {
                        self.buf = Vec::new();
                    }
                }
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }
}

/// Reads big-endian integers from a slice that was length-checked by the caller; a short read
/// yields zeros rather than a panic (it cannot happen for checked lengths).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some((head, rest)) = self.0.split_at_checked(N) {
            out.copy_from_slice(head);
            self.0 = rest;
        }
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
}

/// The HELLO lengths accepted (named in `BadLength`).
const HELLO_LENGTHS: &str = "46, or 47 + n where the byte at offset 46 is n (1..=64)";

/// Parse one frame from the front of `buf`: `Ok(Some((frame, bytes used)))`, or `Ok(None)` if
/// incomplete. Limits are checked from the header alone, before the payload arrives.
pub(crate) fn parse(buf: &[u8], max_frame: u32) -> Result<Option<(Frame, usize)>, DecodeError> {
    let Some((head, rest)) = buf.split_at_checked(HEADER_LEN) else {
        // Reject an unknown type as soon as its byte is seen.
        if let Some(&b) = buf.first() {
            FrameType::from_u8(b).ok_or(DecodeError::UnknownFrameType(b))?;
        }
        return Ok(None);
    };
    let mut h = Reader(head);
    let tyb = h.u8();
    let ty = FrameType::from_u8(tyb).ok_or(DecodeError::UnknownFrameType(tyb))?;
    let len = h.u32();
    if len > max_frame {
        return Err(DecodeError::FrameTooLarge {
            ty,
            len,
            max: max_frame,
        });
    }
    let bad = |expected| DecodeError::BadLength { ty, len, expected };
    let ulen = len as usize;
    match ty {
        FrameType::Welcome if ulen != HANDSHAKE_LEN => return Err(bad("46")),
        // 46, or 46 + length byte + a token of 1..=64 bytes (checked against the byte below).
        FrameType::Hello
            if ulen != HANDSHAKE_LEN && !(HANDSHAKE_LEN + 2..=MAX_HELLO_LEN).contains(&ulen) =>
        {
            return Err(bad(HELLO_LENGTHS));
        }
        FrameType::Ping | FrameType::Pong if ulen != PING_LEN => return Err(bad("12")),
        FrameType::Ack if ulen != ACK_LEN => return Err(bad("8")),
        FrameType::Data if ulen < DATA_PREFIX_LEN => return Err(bad(">= 17")),
        FrameType::Close if ulen < 2 => return Err(bad(">= 2")),
        _ => {}
    }
    let Some(payload) = rest.get(..ulen) else {
        return Ok(None);
    };
    let mut r = Reader(payload);
    let frame = match ty {
        FrameType::Hello | FrameType::Welcome => {
            let magic: [u8; 4] = r.take();
            if magic != MAGIC {
                return Err(DecodeError::BadMagic { found: magic });
            }
            let version = r.u8();
            let flags = r.u8();
            let interval_ms = r.u32();
            let timeout_ms = r.u32();
            let id = SessionId(r.u64());
            let token = ResumeToken::from_bytes(r.take());
            let ack = r.u64();
            if ty == FrameType::Hello {
                let auth = if r.0.is_empty() {
                    None
                } else {
                    let n = usize::from(r.u8());
                    if n != r.0.len() {
                        return Err(bad(HELLO_LENGTHS));
                    }
                    Some(AuthToken::new(r.0).map_err(|_| bad(HELLO_LENGTHS))?)
                };
                Frame::Hello(Hello {
                    version,
                    interval_ms,
                    timeout_ms,
                    resume: (flags & HELLO_RESUME != 0).then_some((id, token, ack)),
                    auth,
                })
            } else {
                Frame::Welcome(Welcome {
                    version,
                    resumed: flags & WELCOME_RESUMED != 0,
                    interval_ms,
                    timeout_ms,
                    session_id: id,
                    token,
                    ack,
                })
            }
        }
        FrameType::Ping | FrameType::Pong => {
            let nonce = r.u32();
            let timestamp_us = r.u64();
            if ty == FrameType::Ping {
                Frame::Ping {
                    nonce,
                    timestamp_us,
                }
            } else {
                Frame::Pong {
                    nonce,
                    timestamp_us,
                }
            }
        }
        FrameType::Data => {
            let seq = r.u64();
            let ack = r.u64();
            let flags = r.u8();
            Frame::Data {
                seq,
                ack,
                fin: flags & DATA_FIN != 0,
                payload: r.0.to_vec(),
            }
        }
        FrameType::Ack => Frame::Ack { next: r.u64() },
        FrameType::Close => {
            let code = CloseCode::from_u16(r.u16());
            let reason = std::str::from_utf8(r.0).map_err(|e| DecodeError::BadUtf8 {
                valid_up_to: e.valid_up_to(),
            })?;
            Frame::Close {
                code,
                reason: reason.to_owned(),
            }
        }
    };
    Ok(Some((frame, HEADER_LEN + ulen)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let mut out = Vec::new();
        f.encode(&mut out);
        // Byte by byte, to exercise splitting at every position.
        let mut d = FrameDecoder::new(Limits::default());
        let mut got = Vec::new();
        for b in &out {
            d.push(std::slice::from_ref(b)).unwrap();
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![f]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn every_frame_roundtrips_split_at_every_byte() {
        roundtrip(Frame::Hello(Hello {
            version: 1,
            interval_ms: 15_000,
            timeout_ms: 45_000,
            resume: Some((SessionId(7), ResumeToken::from_bytes([9; 16]), 42)),
            auth: None,
        }));
        roundtrip(Frame::Hello(Hello {
            version: 1,
            interval_ms: 1,
            timeout_ms: 2,
            resume: None,
            auth: None,
        }));
        for len in [1, 17, 64] {
            roundtrip(Frame::Hello(Hello {
                version: 1,
                interval_ms: 1,
                timeout_ms: 2,
                resume: Some((SessionId(7), ResumeToken::from_bytes([9; 16]), 42)),
                auth: Some(AuthToken::new(&vec![0xA5; len]).unwrap()),
            }));
        }
        roundtrip(Frame::Welcome(Welcome {
            version: 1,
            resumed: true,
            interval_ms: 10,
            timeout_ms: 30,
            session_id: SessionId(u64::MAX),
            token: ResumeToken::from_bytes([0xAB; 16]),
            ack: 3,
        }));
        roundtrip(Frame::Ping {
            nonce: 5,
            timestamp_us: 123_456,
        });
        roundtrip(Frame::Pong {
            nonce: 5,
            timestamp_us: 123_456,
        });
        roundtrip(Frame::Data {
            seq: 1,
            ack: 2,
            fin: true,
            payload: b"hello".to_vec(),
        });
        roundtrip(Frame::Ack { next: 99 });
        roundtrip(Frame::Close {
            code: CloseCode::TooManyPings,
            reason: "slow down ✓".into(),
        });
    }

    #[test]
    fn unknown_type_is_rejected_from_its_first_byte() {
        let mut d = FrameDecoder::new(Limits::default());
        d.push(&[0x7f]).unwrap();
        assert_eq!(d.next_frame(), Err(DecodeError::UnknownFrameType(0x7f)));
        assert_eq!(d.next_frame(), Err(DecodeError::Poisoned));
    }

    #[test]
    fn oversized_length_is_rejected_before_payload_arrives() {
        let limits = Limits {
            max_frame_size: 100,
            max_buffered: 1000,
        };
        let mut d = FrameDecoder::new(limits);
        d.push(&[0x05, 0, 0, 0, 101]).unwrap();
        assert_eq!(
            d.next_frame(),
            Err(DecodeError::FrameTooLarge {
                ty: FrameType::Data,
                len: 101,
                max: 100
            })
        );
    }

    #[test]
    fn buffer_limit_is_enforced() {
        let limits = Limits {
            max_frame_size: 100,
            max_buffered: 10,
        };
        let mut d = FrameDecoder::new(limits);
        d.push(&[0x05, 0, 0, 0, 50]).unwrap();
        assert_eq!(d.space(), 5);
        assert_eq!(
            d.push(&[0; 6]),
            Err(DecodeError::BufferFull {
                buffered: 11,
                max: 10
            })
        );
    }

    #[test]
    fn bad_lengths_magic_and_utf8_name_the_detail() {
        let mut d = FrameDecoder::new(Limits::default());
        d.push(&[0x03, 0, 0, 0, 11]).unwrap();
        assert!(matches!(
            d.next_frame(),
            Err(DecodeError::BadLength {
                ty: FrameType::Ping,
                len: 11,
                ..
            })
        ));
        let mut d = FrameDecoder::new(Limits::default());
        let mut hello = Vec::new();
        encode_hello_for_test(&mut hello);
        hello[5] = b'X';
        d.push(&hello).unwrap();
        assert!(matches!(
            d.next_frame(),
            Err(DecodeError::BadMagic { found }) if found == *b"XTLS"
        ));
        let mut d = FrameDecoder::new(Limits::default());
        d.push(&[0x07, 0, 0, 0, 4, 0, 1, b'o', 0xff]).unwrap();
        assert_eq!(d.next_frame(), Err(DecodeError::BadUtf8 { valid_up_to: 1 }));
    }

    #[test]
    fn hello_auth_trailer_must_match_its_length_byte() {
        let hello_with = |tail: &[u8]| {
            let mut v = Vec::new();
            encode_hello_for_test(&mut v);
            v.extend_from_slice(tail);
            let len = u32::try_from(v.len() - HEADER_LEN).unwrap();
            v[1..5].copy_from_slice(&len.to_be_bytes());
            let mut d = FrameDecoder::new(Limits::default());
            d.push(&v).unwrap();
            d.next_frame()
        };
        let bad = |r: Result<Option<Frame>, DecodeError>| {
            matches!(
                r,
                Err(DecodeError::BadLength {
                    ty: FrameType::Hello,
                    ..
                })
            )
        };
        // 47: a length byte with no token; 112: longer than 46 + 1 + 64.
        assert!(bad(hello_with(&[0])));
        assert!(bad(hello_with(&[65; 66])));
        // Length byte disagreeing with the bytes that follow.
        assert!(bad(hello_with(&[3, b'a', b'b'])));
        assert!(bad(hello_with(&[1, b'a', b'b'])));
        // A WELCOME may not carry one.
        let mut d = FrameDecoder::new(Limits::default());
        d.push(&[0x02, 0, 0, 0, 48]).unwrap();
        assert!(matches!(d.next_frame(), Err(DecodeError::BadLength { .. })));
        let Ok(Some(Frame::Hello(h))) = hello_with(&[2, b'o', b'k']) else {
            panic!("a well-formed trailer decodes");
        };
        assert_eq!(h.auth.unwrap().as_bytes(), b"ok");
    }

    fn encode_hello_for_test(out: &mut Vec<u8>) {
        Frame::Hello(Hello {
            version: 1,
            interval_ms: 1,
            timeout_ms: 2,
            resume: None,
            auth: None,
        })
        .encode(out);
    }
}
