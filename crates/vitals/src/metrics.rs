//! Metric names and the few helpers that record them, through the `metrics` facade.
//!
//! Install any `metrics` recorder (e.g. a Prometheus exporter) to collect them; without one they cost a
//! relaxed atomic load each. Every name lives here so that dashboards have one list to read. Call
//! [`describe`] once after installing the recorder to give each metric its help text and unit
//! (Prometheus `# HELP` lines); `vitals serve` does.
//!
//! Which end records what: the server's event loops and the client tasks share some names (a
//! process that runs both, such as `vitals demo`, adds the two up); each description says which.

use std::time::Duration;

use metrics::Unit;

use crate::event::DisconnectReason;

/// Gauge: open connections (server side).
pub const CONNECTIONS_OPEN: &str = "vitals_connections_open";
/// Counter: connections accepted (server side).
pub const CONNECTIONS_ACCEPTED: &str = "vitals_connections_accepted_total";
/// Counter: connections refused at the connection limit (server side).
pub const CONNECTIONS_REFUSED: &str = "vitals_connections_refused_total";
/// Histogram: RTT samples in seconds (server and client).
pub const RTT_SECONDS: &str = "vitals_rtt_seconds";
/// Counter: pings sent (server and client).
pub const PINGS_SENT: &str = "vitals_pings_sent_total";
/// Counter: pongs received, each one an RTT sample (server and client).
pub const PONGS_RECEIVED: &str = "vitals_pongs_received_total";
/// Counter: connections ended, labelled `reason` (silence_timeout, reset, eof, ping_abuse, …;
/// [`DisconnectReason::label`]) (server and client).
pub const DISCONNECTS: &str = "vitals_disconnects_total";
/// Counter: reconnect attempts (client side).
pub const RECONNECTS: &str = "vitals_reconnects_total";
/// Counter: sessions resumed (server and client).
pub const RESUMES: &str = "vitals_resumes_total";
/// Counter: messages the client re-sent on a resume because the server had not acknowledged them
/// (client side).
pub const REPLAYED: &str = "vitals_replayed_messages_total";
/// Counter: bytes read from peers, on the wire (ciphertext over TLS) (server and client).
pub const BYTES_IN: &str = "vitals_bytes_in_total";
/// Counter: bytes written to peers, on the wire (server and client).
pub const BYTES_OUT: &str = "vitals_bytes_out_total";
/// Counter: connections closed for bad input — a protocol error, ping abuse or a TLS failure —
/// labelled `reason` (`protocol_error`, `ping_abuse`, `tls`): one per connection, not per frame; the
/// same closes are also in [`DISCONNECTS`] (server and client).
pub const BAD_INPUT_DISCONNECTS: &str = "vitals_bad_input_disconnects_total";
/// Counter: ping strikes given to clients that ping too often (server side).
pub const PING_STRIKES: &str = "vitals_ping_strikes_total";
/// Counter: HELLOs this server refused because the pre-shared authentication token was missing or
/// wrong (server side only; a client's refusals are [`CLIENT_AUTH_REFUSED`]).
pub const AUTH_FAILURES: &str = "vitals_auth_failures_total";
/// Counter: connections of a client that a server refused for its authentication token (client side
/// only; the client then stops).
pub const CLIENT_AUTH_REFUSED: &str = "vitals_client_auth_refused_total";
/// Counter: local stalls detected — our own timer fired late, so nobody was convicted for the silence
/// (server and client).
pub const LOCAL_STALLS: &str = "vitals_local_stalls_total";

/// Counter: calls a fleet node made to Redis (docs/FLEET.md), labelled `call` (register, commit,
/// takeover, publish, ack, park, finish, touch, fetch, heartbeat).
pub const FLEET_CALLS: &str = "vitals_fleet_calls_total";
/// Counter: pipelines (round trips) a fleet node sent to Redis.
pub const FLEET_BATCHES: &str = "vitals_fleet_batches_total";
/// Gauge: 1 while the fleet node's last batch reached Redis, 0 during an outage.
pub const FLEET_UP: &str = "vitals_fleet_up";

/// What a metric is, for [`describe`].
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric with its kind, unit and help text.
const DESCRIPTIONS: &[(&str, Kind, Unit, &str)] = &[
    (
        CONNECTIONS_OPEN,
        Kind::Gauge,
        Unit::Count,
        "Connections open now (server side).",
    ),
    (
        CONNECTIONS_ACCEPTED,
        Kind::Counter,
        Unit::Count,
        "Connections accepted (server side).",
    ),
    (
        CONNECTIONS_REFUSED,
        Kind::Counter,
        Unit::Count,
        "Connections refused at the connection limit (server side).",
    ),
    (
        RTT_SECONDS,
        Kind::Histogram,
        Unit::Seconds,
        "Round-trip times measured by PING/PONG, in seconds (server and client).",
    ),
    (
        PINGS_SENT,
        Kind::Counter,
        Unit::Count,
        "PINGs sent (server and client).",
    ),
    (
        PONGS_RECEIVED,
        Kind::Counter,
        Unit::Count,
        "PONGs received, each one an RTT sample (server and client).",
    ),
    (
        DISCONNECTS,
        Kind::Counter,
        Unit::Count,
        "Connections ended, by reason (server and client).",
    ),
    (
        RECONNECTS,
        Kind::Counter,
        Unit::Count,
        "Reconnect attempts (client side).",
    ),
    (
        RESUMES,
        Kind::Counter,
        Unit::Count,
        "Sessions resumed after a reconnect (server and client).",
    ),
    (
        REPLAYED,
        Kind::Counter,
        Unit::Count,
        "Messages re-sent on a resume because the server had not acknowledged them (client side).",
    ),
    (
        BYTES_IN,
        Kind::Counter,
        Unit::Bytes,
        "Bytes read from peers, on the wire: ciphertext over TLS (server and client).",
    ),
    (
        BYTES_OUT,
        Kind::Counter,
        Unit::Bytes,
        "Bytes written to peers, on the wire: ciphertext over TLS (server and client).",
    ),
    (
        BAD_INPUT_DISCONNECTS,
        Kind::Counter,
        Unit::Count,
        "Connections closed for bad input (protocol error, ping abuse, TLS failure), by reason; \
         one per connection, also counted in vitals_disconnects_total (server and client).",
    ),
    (
        PING_STRIKES,
        Kind::Counter,
        Unit::Count,
        "Strikes given to clients that ping more often than granted (server side).",
    ),
    (
        AUTH_FAILURES,
        Kind::Counter,
        Unit::Count,
        "HELLOs refused for a missing or wrong authentication token (server side).",
    ),
    (
        CLIENT_AUTH_REFUSED,
        Kind::Counter,
        Unit::Count,
        "Connections of a client refused by the server for its authentication token (client side).",
    ),
    (
        LOCAL_STALLS,
        Kind::Counter,
        Unit::Count,
        "Local stalls: our own timer fired late, so silence was not held against peers (server and \
         client).",
    ),
    (
        FLEET_CALLS,
        Kind::Counter,
        Unit::Count,
        "Calls a fleet node made to Redis, by call (register, commit, takeover, publish, ack, park, \
         finish, touch, fetch, heartbeat).",
    ),
    (
        FLEET_BATCHES,
        Kind::Counter,
        Unit::Count,
        "Pipelines (round trips) a fleet node sent to Redis.",
    ),
    (
        FLEET_UP,
        Kind::Gauge,
        Unit::Count,
        "1 while a fleet node's last batch reached Redis, 0 during an outage.",
    ),
];

/// Gives every vitals metric its help text and unit in the installed recorder (a Prometheus exporter
/// prints them as `# HELP` lines). Call it after installing the recorder; calling it again is
/// harmless.
pub fn describe() {
    for &(name, kind, unit, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
}

/// Records one connection of the server that ended, under its reason.
pub(crate) fn disconnect(reason: &DisconnectReason) {
    ended(reason, AUTH_FAILURES);
}

/// Records one connection of a client that ended, under its reason.
pub(crate) fn client_disconnect(reason: &DisconnectReason) {
    ended(reason, CLIENT_AUTH_REFUSED);
}

/// Counts an ended connection: by reason, as a bad-input close when it was one, and under `auth`
/// (the side's own series) when the authentication token was refused.
fn ended(reason: &DisconnectReason, auth: &'static str) {
    metrics::counter!(DISCONNECTS, "reason" => reason.label()).increment(1);
    if let DisconnectReason::ProtocolError(_)
    | DisconnectReason::PingAbuse
    | DisconnectReason::Tls(_) = reason
    {
        metrics::counter!(BAD_INPUT_DISCONNECTS, "reason" => reason.label()).increment(1);
    }
    if let DisconnectReason::AuthFailed = reason {
        metrics::counter!(auth).increment(1);
    }
}

/// Records an RTT sample.
pub(crate) fn rtt(latest: Duration) {
    metrics::counter!(PONGS_RECEIVED).increment(1);
    metrics::histogram!(RTT_SECONDS).record(latest.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_described_once() {
        // Every name this module declares (`pub const …: &str = "vitals_…";`), read from its source.
        let declared: Vec<&str> = include_str!("metrics.rs")
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \"vitals_"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        let described: Vec<&str> = DESCRIPTIONS.iter().map(|d| d.0).collect();
        assert!(declared.len() >= 17, "{declared:?}");
        for name in &declared {
            let times = described.iter().filter(|d| *d == name).count();
            assert_eq!(times, 1, "{name} described {times} times");
        }
        assert_eq!(described.len(), declared.len(), "{described:?}");
    }
}
