//! Binary frames: types, close codes and encoding (see docs/PROTOCOL.md for the byte layout).
//!
//! Every frame is `type: u8`, `length: u32` big-endian (payload bytes), then the payload.
//! All integers are big-endian.

use crate::auth::AuthToken;
use crate::session::{ResumeToken, SessionId};

/// Magic bytes opening HELLO and WELCOME payloads.
pub const MAGIC: [u8; 4] = *b"VTLS";
/// Protocol version spoken by this crate.
pub const VERSION: u8 = 1;
/// Bytes of a frame header (type + length).
pub const HEADER_LEN: usize = 5;
/// Payload length of WELCOME, and of HELLO without an authentication token.
pub const HANDSHAKE_LEN: usize = 46;
/// Longest HELLO payload: 46 + the token length byte + a 64-byte authentication token.
pub const MAX_HELLO_LEN: usize = HANDSHAKE_LEN + 1 + crate::auth::MAX_AUTH_TOKEN_LEN;
/// Payload length of PING and PONG.
pub const PING_LEN: usize = 12;
/// Bytes of the DATA payload before the message bytes (seq, ack, flags).
pub const DATA_PREFIX_LEN: usize = 17;
/// Bytes of a DATA frame before its chunk: the header and the prefix.
pub const DATA_HEAD_LEN: usize = HEADER_LEN + DATA_PREFIX_LEN;
/// Payload length of ACK.
pub const ACK_LEN: usize = 8;
/// Longest CLOSE reason the encoder writes (longer reasons are truncated at a char boundary).
pub const MAX_REASON_LEN: usize = 256;
/// DATA flag: this chunk ends its message.
pub const DATA_FIN: u8 = 0x01;
/// HELLO flag: resume the session named in the frame.
pub const HELLO_RESUME: u8 = 0x01;
/// WELCOME flag: the session was resumed (not newly created).
pub const WELCOME_RESUMED: u8 = 0x01;

/// The frame type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Client opens (or resumes) a session.
    Hello = 0x01,
    /// Server accepts, with granted timing.
    Welcome = 0x02,
    /// Liveness probe.
    Ping = 0x03,
    /// Answer to a probe.
    Pong = 0x04,
    /// One chunk of an application message.
    Data = 0x05,
    /// Cumulative acknowledgement.
    Ack = 0x06,
    /// Orderly close with a code and a reason.
    Close = 0x07,
}

impl FrameType {
    /// Parse a type byte.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            0x01 => FrameType::Hello,
            0x02 => FrameType::Welcome,
            0x03 => FrameType::Ping,
            0x04 => FrameType::Pong,
            0x05 => FrameType::Data,
            0x06 => FrameType::Ack,
            0x07 => FrameType::Close,
            _ => return None,
        })
    }
}

/// Numeric close code carried by CLOSE (and reported locally in [`Event::Closed`](crate::Event)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 0: orderly close by the application.
    Normal,
    /// 1: the peer broke the protocol (bad frame, unexpected frame, bad sequence).
    ProtocolError,
    /// 2: the peer pinged more often than its granted interval allows.
    TooManyPings,
    /// 3: the session expired (lifetime or replay age exceeded).
    SessionExpired,
    /// 4: the server does not know the session.
    UnknownSession,
    /// 5: the resume token is wrong.
    BadToken,
    /// 6: the protocol version is not supported.
    VersionMismatch,
    /// 7: a configured limit (frame size, buffer, message size) was exceeded.
    LimitExceeded,
    /// 8: the peer was declared dead by the liveness detector (local only; may be sent best-effort).
    Timeout,
    /// 9: the server is shutting down (graceful drain); the client should reconnect elsewhere/later.
    Shutdown,
    /// 10: the server is at its connection limit; the client should back off and retry.
    ServerFull,
    /// 11: the connection reached the server's maximum connection age; reconnect and resume.
    MaxAge,
    /// 12: the server requires an authentication token and the HELLO carried none, or a wrong one.
    AuthFailed,
    /// 13: the server could not reach its shared session store in time; reconnect later and resume.
    Unavailable,
    /// Any other code.
    Other(u16),
}

impl CloseCode {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::ProtocolError => 1,
            CloseCode::TooManyPings => 2,
            CloseCode::SessionExpired => 3,
            CloseCode::UnknownSession => 4,
            CloseCode::BadToken => 5,
            CloseCode::VersionMismatch => 6,
            CloseCode::LimitExceeded => 7,
            CloseCode::Timeout => 8,
            CloseCode::Shutdown => 9,
            CloseCode::ServerFull => 10,
            CloseCode::MaxAge => 11,
            CloseCode::AuthFailed => 12,
            CloseCode::Unavailable => 13,
            CloseCode::Other(c) => c,
        }
    }

    /// From the wire value.
    pub fn from_u16(c: u16) -> CloseCode {
        match c {
            0 => CloseCode::Normal,
            1 => CloseCode::ProtocolError,
            2 => CloseCode::TooManyPings,
            3 => CloseCode::SessionExpired,
            4 => CloseCode::UnknownSession,
            5 => CloseCode::BadToken,
            6 => CloseCode::VersionMismatch,
            7 => CloseCode::LimitExceeded,
            8 => CloseCode::Timeout,
            9 => CloseCode::Shutdown,
            10 => CloseCode::ServerFull,
            11 => CloseCode::MaxAge,
            12 => CloseCode::AuthFailed,
            13 => CloseCode::Unavailable,
            c => CloseCode::Other(c),
        }
    }
}

/// HELLO payload: the client's proposal (and resume request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u8,
    /// Proposed ping interval in milliseconds.
    pub interval_ms: u32,
    /// Proposed dead timeout in milliseconds.
    pub timeout_ms: u32,
    /// `Some` to resume: session id, token, and the client's receive point
    /// (next server-to-client sequence number it expects).
    pub resume: Option<(SessionId, ResumeToken, u64)>,
    /// The pre-shared authentication token, if the client has one (trailing field, see
    /// docs/PROTOCOL.md; `Debug` redacts it).
    pub auth: Option<AuthToken>,
}

/// WELCOME payload: the server's grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version.
    pub version: u8,
    /// True if an existing session was resumed.
    pub resumed: bool,
    /// Granted ping interval in milliseconds.
    pub interval_ms: u32,
    /// Granted dead timeout in milliseconds.
    pub timeout_ms: u32,
    /// Session id.
    pub session_id: SessionId,
    /// Resume token (the secret the client presents to resume).
    pub token: ResumeToken,
    /// The server's receive point: next client-to-server sequence number it expects.
    pub ack: u64,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// HELLO.
    Hello(Hello),
    /// WELCOME.
    Welcome(Welcome),
    /// PING: nonce and the sender's timestamp (µs since its own epoch).
    Ping {
        /// Nonce, echoed in the PONG.
        nonce: u32,
        /// Sender timestamp in microseconds since the sender's epoch.
        timestamp_us: u64,
    },
    /// PONG: echo of a PING.
    Pong {
        /// Echoed nonce.
        nonce: u32,
        /// Echoed timestamp.
        timestamp_us: u64,
    },
    /// DATA chunk.
    Data {
        /// Message sequence number (all chunks of a message share it).
        seq: u64,
        /// Piggybacked cumulative ack (next sequence number the sender expects).
        ack: u64,
        /// True on the last chunk of the message.
        fin: bool,
        /// Chunk bytes.
        payload: Vec<u8>,
    },
    /// Cumulative ACK: every message with seq < `next` was received.
    Ack {
        /// Next expected sequence number.
        next: u64,
    },
    /// CLOSE.
    Close {
        /// Close code.
        code: CloseCode,
        /// Human-readable reason.
        reason: String,
    },
}

impl Frame {
    /// The type of this frame.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::Data { .. } => FrameType::Data,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Close { .. } => FrameType::Close,
        }
    }

    /// Append the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello(h) => encode_hello(out, h),
            Frame::Welcome(w) => encode_welcome(out, w),
            Frame::Ping {
                nonce,
                timestamp_us,
            } => encode_ping(out, FrameType::Ping, *nonce, *timestamp_us),
            Frame::Pong {
                nonce,
                timestamp_us,
            } => encode_ping(out, FrameType::Pong, *nonce, *timestamp_us),
            Frame::Data {
                seq,
                ack,
                fin,
                payload,
            } => encode_data(out, *seq, *ack, *fin, payload),
            Frame::Ack { next } => encode_ack(out, *next),
            Frame::Close { code, reason } => encode_close(out, *code, reason),
        }
    }
}

fn header(out: &mut Vec<u8>, ty: FrameType, len: usize) {
    out.push(ty as u8);
    // Payloads we encode are bounded by the chunk size and MAX_REASON_LEN, far below 4 GiB.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

/// The 46 bytes common to HELLO and WELCOME, after a header announcing `len` payload bytes.
#[allow(clippy::too_many_arguments)]
fn encode_handshake(
    out: &mut Vec<u8>,
    ty: FrameType,
    len: usize,
    flags: u8,
    version: u8,
    timing: (u32, u32),
    (id, token): (SessionId, &ResumeToken),
    ack: u64,
) {
    header(out, ty, len);
    out.extend_from_slice(&MAGIC);
    out.push(version);
    out.push(flags);
    out.extend_from_slice(&timing.0.to_be_bytes());
    out.extend_from_slice(&timing.1.to_be_bytes());
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(&ack.to_be_bytes());
}

/// Append a HELLO (46 payload bytes, plus `1 + n` when it carries an `n`-byte auth token).
pub fn encode_hello(out: &mut Vec<u8>, h: &Hello) {
    let (flags, id, token, ack) = match &h.resume {
        Some((id, token, ack)) => (HELLO_RESUME, *id, *token, *ack),
        None => (0, SessionId(0), ResumeToken::from_bytes([0; 16]), 0),
    };
    let auth = h.auth.as_ref().map(AuthToken::as_bytes);
    let len = HANDSHAKE_LEN + auth.map_or(0, |a| 1 + a.len());
    encode_handshake(
        out,
        FrameType::Hello,
        len,
        flags,
        h.version,
        (h.interval_ms, h.timeout_ms),
        (id, &token),
        ack,
    );
    if let Some(a) = auth {
        // AuthToken holds 1..=64 bytes, so the length fits a u8.
        out.push(u8::try_from(a.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(a);
    }
}

/// Append a WELCOME.
pub fn encode_welcome(out: &mut Vec<u8>, w: &Welcome) {
    let flags = if w.resumed { WELCOME_RESUMED } else { 0 };
    encode_handshake(
        out,
        FrameType::Welcome,
        HANDSHAKE_LEN,
        flags,
        w.version,
        (w.interval_ms, w.timeout_ms),
        (w.session_id, &w.token),
        w.ack,
    );
}

/// Append a PING or PONG (`ty` must be one of the two).
pub fn encode_ping(out: &mut Vec<u8>, ty: FrameType, nonce: u32, timestamp_us: u64) {
    header(out, ty, PING_LEN);
    out.extend_from_slice(&nonce.to_be_bytes());
    out.extend_from_slice(&timestamp_us.to_be_bytes());
}

/// Append one DATA chunk.
pub fn encode_data(out: &mut Vec<u8>, seq: u64, ack: u64, fin: bool, chunk: &[u8]) {
    encode_data_head(out, seq, ack, fin, chunk.len());
    out.extend_from_slice(chunk);
}

/// Append the first [`DATA_HEAD_LEN`] bytes of a DATA frame whose chunk is `len` bytes long: the
/// frame header and the seq/ack/flags prefix. The chunk itself follows on the wire (a vectored
/// write sends it from where it is, without copying it behind the head).
pub fn encode_data_head(out: &mut Vec<u8>, seq: u64, ack: u64, fin: bool, len: usize) {
    header(out, FrameType::Data, DATA_PREFIX_LEN + len);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ack.to_be_bytes());
    out.push(if fin { DATA_FIN } else { 0 });
}

/// Append an ACK.
pub fn encode_ack(out: &mut Vec<u8>, next: u64) {
    header(out, FrameType::Ack, ACK_LEN);
    out.extend_from_slice(&next.to_be_bytes());
}

/// Append a CLOSE; the reason is truncated to [`MAX_REASON_LEN`] bytes at a char boundary.
pub fn encode_close(out: &mut Vec<u8>, code: CloseCode, reason: &str) {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = reason.get(..end).unwrap_or("");
    header(out, FrameType::Close, 2 + reason.len());
    out.extend_from_slice(&code.to_u16().to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn doc_examples_match_the_encoder() {
        let mut v = Vec::new();
        encode_ping(&mut v, FrameType::Ping, 5, 1_500_000);
        assert_eq!(
            hex(&v),
            "03 00 00 00 0c 00 00 00 05 00 00 00 00 00 16 e3 60"
        );
        v.clear();
        encode_data(&mut v, 3, 7, true, b"hi");
        assert_eq!(
            hex(&v),
            "05 00 00 00 13 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 07 01 68 69"
        );
        v.clear();
        encode_ack(&mut v, 4);
        assert_eq!(hex(&v), "06 00 00 00 08 00 00 00 00 00 00 00 04");
        v.clear();
        encode_close(&mut v, CloseCode::TooManyPings, "slow down");
        assert_eq!(hex(&v), "07 00 00 00 0b 00 02 73 6c 6f 77 20 64 6f 77 6e");
        v.clear();
        let token: [u8; 16] = std::array::from_fn(|i| 0x10 + i as u8);
        encode_hello(
            &mut v,
            &Hello {
                version: 1,
                interval_ms: 15_000,
                timeout_ms: 45_000,
                resume: Some((SessionId(0x2a), ResumeToken::from_bytes(token), 7)),
                auth: None,
            },
        );
        assert_eq!(
            hex(&v),
            "01 00 00 00 2e 56 54 4c 53 01 01 00 00 3a 98 00 00 af c8 00 00 00 00 00 00 00 2a \
             10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 00 00 00 00 00 00 00 07"
        );
        v.clear();
        encode_hello(
            &mut v,
            &Hello {
                version: 1,
                interval_ms: 15_000,
                timeout_ms: 45_000,
                resume: None,
                auth: Some(AuthToken::new(b"s3cr3t").unwrap()),
            },
        );
        assert_eq!(
            hex(&v),
            "01 00 00 00 35 56 54 4c 53 01 00 00 00 3a 98 00 00 af c8 00 00 00 00 00 00 00 00 \
             00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
             06 73 33 63 72 33 74"
        );
    }

    #[test]
    fn long_close_reason_is_truncated_at_a_char_boundary() {
        let reason = "é".repeat(200); // 400 bytes
        let mut v = Vec::new();
        encode_close(&mut v, CloseCode::Normal, &reason);
        let len = u32::from_be_bytes([v[1], v[2], v[3], v[4]]) as usize;
        assert_eq!(len - 2, MAX_REASON_LEN);
        assert!(std::str::from_utf8(&v[7..]).is_ok());
    }
}
