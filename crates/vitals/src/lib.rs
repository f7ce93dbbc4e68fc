//! vitals: the runtime (server engine, tokio-facing `Server` and `Client`). Being filled in.

pub mod backoff;
pub mod socket;
