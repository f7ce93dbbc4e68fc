//! vitals: long-lived TCP connections that know when they are dead, and lose nothing when they die.
//!
//! # Layout
//! - [`server`]: [`Server`] — one mio event loop per core over a slab of compact connections, every
//!   heartbeat deadline in a vitals-timer wheel; a tokio-facing handle for events and sends.
//! - [`client`]: [`Client`] — a tokio task per connection over the same protocol core, reconnecting with
//!   [`backoff`] and resuming its session.
//! - [`config`], [`event`], [`error`]: settings, what the application is told, what can fail.
//! - [`fleet`]: servers sharing sessions, presence and messages through Redis ([`RedisStore`]), so
//!   that a client resumes on any of them (docs/FLEET.md).
//! - [`socket`]: TCP options derived from the liveness timeout; [`metrics`]: metric names.
//! - [`tls`]: TLS through rustls as a sans-IO state machine on both sides, and helpers that build its
//!   configuration from PEM files (`rustls` is re-exported so that versions match).
//!
//! The protocol itself (frames, liveness, sessions) lives in the sans-IO crate `vitals-proto`; this crate
//! only moves bytes and time in and out of it.

pub mod backoff;
pub mod client;
pub mod config;
pub mod error;
pub mod event;
pub mod fleet;
pub mod metrics;
mod outbox;
pub mod server;
pub mod socket;
pub mod tls;

pub use client::{Client, ClientSender};
pub use config::{ClientConfig, Codec, ServerConfig};
pub use error::Error;
pub use event::{ClientEvent, ConnId, DisconnectReason, ServerEvent};
pub use fleet::{FleetConfig, RedisStore, Store};
pub use rustls;
pub use server::{Server, ServerHandle};
pub use tls::ClientTls;
pub use vitals_proto;
pub use vitals_proto::Bytes;
