//! Metric names and the few helpers that record them, through the `metrics` facade.
//!
//! Install any `metrics` recorder (e.g. a Prometheus exporter) to collect them; without one they cost a
//! relaxed atomic load each. Every name lives here so that dashboards have one list to read.

use std::time::Duration;

use crate::event::DisconnectReason;

/// Gauge: open connections (server side).
pub const CONNECTIONS_OPEN: &str = "vitals_connections_open";
/// Counter: connections accepted (server side).
pub const CONNECTIONS_ACCEPTED: &str = "vitals_connections_accepted_total";
/// Counter: connections refused at the connection limit.
pub const CONNECTIONS_REFUSED: &str = "vitals_connections_refused_total";
/// Histogram: RTT samples in seconds.
pub const RTT_SECONDS: &str = "vitals_rtt_seconds";
/// Counter: pings sent.
pub const PINGS_SENT: &str = "vitals_pings_sent_total";
/// Counter: pongs received (each one an RTT sample).
pub const PONGS_RECEIVED: &str = "vitals_pongs_received_total";
/// Counter: connections ended, labelled `reason` (silence_timeout, reset, eof, ping_abuse, …).
pub const DISCONNECTS: &str = "vitals_disconnects_total";
/// Counter: client reconnect attempts.
pub const RECONNECTS: &str = "vitals_reconnects_total";
/// Counter: sessions resumed.
pub const RESUMES: &str = "vitals_resumes_total";
/// Counter: messages replayed on resume.
pub const REPLAYED: &str = "vitals_replayed_messages_total";
/// Counter: bytes read from peers.
pub const BYTES_IN: &str = "vitals_bytes_in_total";
/// Counter: bytes written to peers.
pub const BYTES_OUT: &str = "vitals_bytes_out_total";
/// Counter: connections closed for bad input (protocol errors, ping abuse, TLS failures), labelled
/// `reason`.
pub const FRAMES_REJECTED: &str = "vitals_frames_rejected_total";
/// Counter: ping strikes given to clients that ping too often.
pub const PING_STRIKES: &str = "vitals_ping_strikes_total";
/// Counter: HELLOs refused because the pre-shared authentication token was missing or wrong (server
/// side; a client counts the refusals it receives).
pub const AUTH_FAILURES: &str = "vitals_auth_failures_total";
/// Counter: local stalls detected (our own timer fired late; nobody convicted).
pub const LOCAL_STALLS: &str = "vitals_local_stalls_total";

/// Counter: calls a fleet node made to Redis (docs/FLEET.md), labelled `call` (register, commit,
/// takeover, publish, ack, park, finish, touch, fetch, heartbeat).
pub const FLEET_CALLS: &str = "vitals_fleet_calls_total";
/// Counter: pipelines (round trips) a fleet node sent to Redis.
pub const FLEET_BATCHES: &str = "vitals_fleet_batches_total";
/// Gauge: 1 while the fleet node's last batch reached Redis, 0 during an outage.
pub const FLEET_UP: &str = "vitals_fleet_up";

/// Records one ended connection under its reason (and as a rejected frame when input was bad).
pub(crate) fn disconnect(reason: &DisconnectReason) {
    metrics::counter!(DISCONNECTS, "reason" => reason.label()).increment(1);
    if let DisconnectReason::ProtocolError(_)
    | DisconnectReason::PingAbuse
    | DisconnectReason::Tls(_) = reason
    {
        metrics::counter!(FRAMES_REJECTED, "reason" => reason.label()).increment(1);
    }
    if let DisconnectReason::AuthFailed = reason {
        metrics::counter!(AUTH_FAILURES).increment(1);
    }
}

/// Records an RTT sample.
pub(crate) fn rtt(latest: Duration) {
    metrics::counter!(PONGS_RECEIVED).increment(1);
    metrics::histogram!(RTT_SECONDS).record(latest.as_secs_f64());
}
