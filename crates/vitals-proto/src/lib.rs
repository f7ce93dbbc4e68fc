//! vitals-proto: the sans-IO core of vitals — wire format, JSON compatibility codec, liveness
//! detector and lossless sessions. Nothing here reads a socket or a clock or spawns a thread:
//! every input is `handle_*(now, …)` and every output is `poll_*()`, as in quinn-proto.
//!
//! # Layout (one concept per file)
//! - [`frame`]: frame types, close codes, encoding (byte layout in `docs/PROTOCOL.md`);
//! - [`decode`]: the incremental binary [`FrameDecoder`] and its [`Limits`];
//! - [`json`]: the JSON heartbeat codec ([`JsonDecoder`], `{"ping":N}` / `{"pong":N}`);
//! - `rtt`, `phi`, `liveness`: RTT estimation (RFC 6298), phi-accrual, and the detector that
//!   keeps one deadline per connection (rules in `docs/LIVENESS.md`);
//! - `policy`: the server's timing caps and the ping-strike rule;
//! - `auth`: the optional pre-shared [`AuthToken`] a client presents in HELLO;
//! - `session`, `store`: sequence numbers, replay buffer, resume tokens, and the
//!   [`SessionStore`] trait with its in-memory [`MemoryStore`];
//! - `connection` (facade), `binary` and `json_conn`: the [`Connection`] tying it together;
//! - `error`: typed errors.
//!
//! # Polling order
//! For each [`Connection`]: [`Connection::handle_input`] with bytes read, then
//! [`Connection::handle_timeout`] if [`Connection::poll_timeout`] has passed, then drain
//! [`Connection::poll_transmit`] (control frames first) and [`Connection::poll_event`], then
//! arm the timer from [`Connection::poll_timeout`] again.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use vitals_proto::{Config, Connection, Event, ResumeToken, SessionId, SessionKeys};
//!
//! let t0 = Instant::now(); // a runtime passes its clock; tests pass virtual time
//! let mut client = Connection::client(t0, Config::default());
//! let keys = SessionKeys { id: SessionId(1), token: ResumeToken::from_bytes([7; 16]) };
//! let mut server = Connection::server(t0, Config::default(), keys);
//! client.send(t0, b"hello".to_vec()).unwrap();
//! let mut wire = Vec::new();
//! for _ in 0..3 {
//!     while client.poll_transmit(&mut wire) > 0 {}
//!     server.handle_input(t0, &wire);
//!     wire.clear();
//!     while server.poll_transmit(&mut wire) > 0 {}
//!     client.handle_input(t0, &wire);
//!     wire.clear();
//! }
//! let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
//! assert!(events.iter().any(|e| matches!(e, Event::Message { payload, .. } if payload[..] == b"hello"[..])));
//! assert!(client.poll_timeout().unwrap() > t0 + Duration::from_secs(1));
//! ```

mod auth;
mod binary;
mod connection;
pub mod decode;
mod error;
pub mod frame;
pub mod json;
mod json_conn;
mod liveness;
mod phi;
mod policy;
mod rtt;
mod session;
mod store;

pub use auth::{AuthToken, AuthTokenError, MAX_AUTH_TOKEN_LEN};
pub use bytes::{Bytes, BytesMut};
pub use connection::{Config, Connection, Event, JsonConfig, Role, SendError};
pub use decode::{FrameDecoder, Limits};
pub use error::{Backpressure, DecodeError, JsonError, SessionError};
pub use frame::{CloseCode, Frame, FrameType};
pub use json::{JsonDecoder, JsonLimits, JsonMessage};
pub use liveness::LivenessConfig;
pub use phi::{MIN_SAMPLES as PHI_MIN_SAMPLES, PhiConfig};
pub use policy::{ServerPolicy, backoff_timing};
pub use rtt::RttStats;
pub use session::{ResumeToken, Room, Seq, Session, SessionConfig, SessionId, SessionKeys};
pub use store::{MemoryStore, SessionStore};
