//! vitals: the runtime (server engine, tokio-facing `Server` and `Client`). Filled in by a later change.
