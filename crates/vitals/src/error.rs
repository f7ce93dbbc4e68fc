//! Errors of the runtime.

use thiserror::Error;

/// What can go wrong in the vitals runtime.
#[derive(Debug, Error)]
pub enum Error {
    /// A socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration is inconsistent; the text says what to change.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The connection (or session) named does not exist (any more).
    #[error("no such connection or session")]
    NotFound,
    /// The replay buffer or send queue is full: wait for acknowledgements and retry.
    #[error("send buffer full: {0}")]
    Backpressure(String),
    /// The payload cannot be sent in this mode (e.g. not one JSON object in JSON mode).
    #[error("cannot send: {0}")]
    Rejected(String),
    /// TLS could not be set up: unreadable or invalid certificate, key or CA input, or a rustls
    /// configuration error. The text names the file or input; it never contains key material.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The shared session store (Redis, docs/FLEET.md) did not answer in time or refused the
    /// operation; the text says which. Nothing was written: retry later.
    #[error("session store unavailable: {0}")]
    StoreUnavailable(String),
    /// The server or client has shut down.
    #[error("shut down")]
    Shutdown,
}
