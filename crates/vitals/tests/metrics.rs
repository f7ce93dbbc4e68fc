//! The runtime's metrics move as things happen: a recorder installed for this test binary sees
//! connections, pings, pongs, RTT samples, bytes, resumes, reconnects and bad-input closes by reason;
//! and every metric that moved has the help text and unit `vitals::metrics::describe` gives it.

mod common;

use std::time::Duration;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use vitals::{Client, ClientEvent, Server, ServerEvent, metrics as m};

/// One metric: name, labels, value.
type Row = (
    String,
    Vec<(String, String)>,
    Option<metrics::Unit>,
    Option<String>,
    DebugValue,
);

/// Sum of a counter over all label sets, or of samples for a histogram.
fn total(snapshot: &[Row], name: &str) -> f64 {
    snapshot
        .iter()
        .filter(|(n, ..)| n == name)
        .map(|(.., v)| match v {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        })
        .sum()
}

fn labelled(snapshot: &[Row], name: &str, label: &str) -> u64 {
    snapshot
        .iter()
        .filter(|(n, labels, ..)| n == name && labels.iter().any(|(_, v)| v == label))
        .map(|(.., v)| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_what_happens() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    m::describe();

    let mut server = Server::bind(server_config()).unwrap();
    let mut client = Client::connect(client_config(&server));
    let conn = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await;
    // Silence long enough for pings and pongs both ways.
    client_event(&mut client, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Rtt(_)).then_some(())
    })
    .await;
    // A forced disconnect while messages are queued: reconnect, resume, replay.
    server.handle().disconnect(conn).unwrap();
    for i in 0..20u32 {
        client.send(i.to_be_bytes().to_vec()).await.unwrap();
    }
    client_event(&mut client, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Resumed { .. }).then_some(())
    })
    .await;
    // Garbage from a raw peer: a protocol error.
    let _bad = raw_peer(&server, b"not a vitals peer");
    server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed {
            reason: vitals::DisconnectReason::ProtocolError(_),
            ..
        } => Some(()),
        _ => None,
    })
    .await;

    let snapshot: Vec<Row> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, unit, help, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            (
                key.name().to_string(),
                labels,
                unit,
                help.map(|h| h.to_string()),
                value,
            )
        })
        .collect();
    for name in [
        m::CONNECTIONS_ACCEPTED,
        m::PINGS_SENT,
        m::PONGS_RECEIVED,
        m::RTT_SECONDS,
        m::BYTES_IN,
        m::BYTES_OUT,
        m::RESUMES,
        m::RECONNECTS,
    ] {
        assert!(
            total(&snapshot, name) > 0.0,
            "{name} did not move: {snapshot:#?}"
        );
    }
    assert!(total(&snapshot, m::CONNECTIONS_ACCEPTED) >= 3.0);
    assert!(labelled(&snapshot, m::DISCONNECTS, "protocol_error") >= 1);
    assert!(labelled(&snapshot, m::BAD_INPUT_DISCONNECTS, "protocol_error") >= 1);
    assert!(
        labelled(&snapshot, m::DISCONNECTS, "disconnected") >= 1,
        "the forced disconnect"
    );
    // Help text and unit for every metric that moved (a Prometheus exporter prints `# HELP`).
    for (name, _, unit, help, _) in &snapshot {
        assert!(
            name.starts_with("vitals_"),
            "a metric outside vitals: {name}"
        );
        assert!(
            help.as_deref().is_some_and(|h| !h.is_empty()) && unit.is_some(),
            "{name} has no help text or unit"
        );
    }
}
