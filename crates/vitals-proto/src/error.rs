//! Typed errors: decoding (binary and JSON), back-pressure and session resumption.

use crate::frame::{CloseCode, FrameType};

/// A binary frame could not be decoded. Every variant names the offending detail.
///
/// A decoder that returned an error is poisoned: the stream has lost its framing and the
/// connection must be closed (the [`Connection`](crate::Connection) does so with
/// [`CloseCode::ProtocolError`] or [`CloseCode::LimitExceeded`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The type byte is not one of the frame types this version knows.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// The length field exceeds the configured maximum frame size.
    #[error("{ty:?} frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// Type of the frame.
        ty: FrameType,
        /// Announced payload length.
        len: u32,
        /// Configured maximum.
        max: u32,
    },
    /// The length field does not fit the frame type.
    #[error("{ty:?} frame has length {len}, expected {expected}")]
    BadLength {
        /// Type of the frame.
        ty: FrameType,
        /// Announced payload length.
        len: u32,
        /// What this type needs (`"46"`, `">= 17"`, ...).
        expected: &'static str,
    },
    /// A HELLO or WELCOME does not start with the magic bytes `VTLS`.
    #[error("bad magic {found:02x?}, expected \"VTLS\"")]
    BadMagic {
        /// The four bytes found instead.
        found: [u8; 4],
    },
    /// A CLOSE reason is not valid UTF-8.
    #[error("CLOSE reason is not UTF-8 (valid up to byte {valid_up_to})")]
    BadUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// More bytes were pushed than the decoder may buffer.
    #[error("decoder buffer would hold {buffered} bytes, limit is {max}")]
    BufferFull {
        /// Bytes that would be buffered.
        buffered: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The decoder already failed; the stream cannot be resynchronised.
    #[error("decoder already failed")]
    Poisoned,
}

/// The JSON compatibility stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Something other than whitespace or `{` where an object must start.
    #[error("unexpected byte 0x{byte:02x} at stream offset {offset}, expected '{{'")]
    NotAnObject {
        /// The byte found.
        byte: u8,
        /// Offset in the stream (bytes consumed since the decoder was created).
        offset: u64,
    },
    /// An object grew beyond the configured maximum size before it closed.
    #[error("JSON object exceeds {max} bytes")]
    ObjectTooLarge {
        /// Configured maximum.
        max: usize,
    },
    /// Objects/arrays nest deeper than allowed.
    #[error("JSON nesting depth exceeds {max}")]
    TooDeep {
        /// Configured maximum.
        max: u32,
    },
    /// Object boundaries were found but the text is not valid JSON.
    #[error("invalid JSON object: {0}")]
    Invalid(String),
    /// A closing bracket does not match the opening one.
    #[error("mismatched '{found}' at stream offset {offset}")]
    Mismatched {
        /// The closing character found.
        found: char,
        /// Offset in the stream.
        offset: u64,
    },
    /// More bytes were pushed than the decoder may buffer.
    #[error("JSON decoder buffer would hold {buffered} bytes, limit is {max}")]
    BufferFull {
        /// Bytes that would be buffered.
        buffered: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The decoder already failed.
    #[error("JSON decoder already failed")]
    Poisoned,
}

/// `send` refused a message because the replay buffer (or JSON send queue) is full.
/// Nothing was queued; retry after acknowledgements free space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "back-pressure: {buffered} bytes in {messages} messages buffered, message of {len} bytes does not fit (limit {max_bytes} bytes / {max_messages} messages)"
)]
pub struct Backpressure {
    /// Bytes currently held.
    pub buffered: usize,
    /// Messages currently held.
    pub messages: usize,
    /// Length of the refused message.
    pub len: usize,
    /// Configured byte limit.
    pub max_bytes: usize,
    /// Configured message limit.
    pub max_messages: usize,
}

/// Why a session could not be resumed (or continued).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The session existed but is past its lifetime, or its replay buffer aged out:
    /// messages may have been lost, so it cannot continue.
    #[error("session expired")]
    Expired,
    /// The server does not know this session id (never issued, or its state was lost).
    #[error("unknown session")]
    Unknown,
    /// The resume token does not match.
    #[error("bad resume token")]
    BadToken,
    /// The peer acknowledged a sequence number we never sent.
    #[error("peer acknowledged {acked}, but only {sent} messages were sent")]
    BadAck {
        /// Acknowledged (next expected) sequence number.
        acked: u64,
        /// Next sequence number we would send.
        sent: u64,
    },
    /// The peer sent a DATA sequence number beyond the next expected one (a gap).
    #[error("received seq {got}, expected at most {expected}")]
    Gap {
        /// Sequence number received.
        got: u64,
        /// Next expected sequence number.
        expected: u64,
    },
    /// The shared session store could not be reached in time: retry later (the session is kept).
    #[error("session store unavailable; retry")]
    Unavailable,
    /// A reassembled message exceeds the maximum message size.
    #[error("message exceeds {max} bytes")]
    MessageTooLarge {
        /// Configured maximum.
        max: usize,
    },
}

impl SessionError {
    /// The close code that reports this error to the peer.
    pub fn close_code(self) -> CloseCode {
        match self {
            SessionError::Expired => CloseCode::SessionExpired,
            SessionError::Unknown => CloseCode::UnknownSession,
            SessionError::BadToken => CloseCode::BadToken,
            SessionError::BadAck { .. } | SessionError::Gap { .. } => CloseCode::ProtocolError,
            SessionError::MessageTooLarge { .. } => CloseCode::LimitExceeded,
            SessionError::Unavailable => CloseCode::Unavailable,
        }
    }
}
