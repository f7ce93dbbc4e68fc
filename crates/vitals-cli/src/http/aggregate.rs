//! A supervisor's status page: its workers' `/status.json` and `/metrics`, read when asked (all at
//! once, each within [`READ_TIMEOUT`]) and added up. A worker whose page cannot be read is named in
//! the document (`workers[i].unreadable`) and left out of the sums.

use std::collections::HashMap;
use std::time::Duration;

use super::client;
use super::status::{Snapshot, WorkerState, merge};
use crate::serve::supervisor::Workers;

/// How long a worker's page may take to answer.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// GETs `path` from every running worker's page, concurrently: (index, body or error).
async fn read_all(
    states: &[WorkerState],
    path: &'static str,
) -> Vec<(usize, anyhow::Result<String>)> {
    let mut set = tokio::task::JoinSet::new();
    for s in states.iter().filter(|s| s.state == "up") {
        if let Some(page) = s.status_page {
            let index = s.index;
            set.spawn(async move { (index, client::get(page, path, READ_TIMEOUT).await) });
        }
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok(r) = done {
            out.push(r);
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

/// The supervisor's `/status.json`: the workers' documents added up (see [`merge`]).
pub(crate) async fn status(workers: &Workers) -> anyhow::Result<Snapshot> {
    let mut states = workers.states();
    let mut parts = Vec::new();
    for (index, body) in read_all(&states, "/status.json").await {
        let parsed = body.and_then(|b| Ok(serde_json::from_str::<Snapshot>(&b)?));
        match parsed {
            Ok(p) => parts.push(p),
            Err(e) => {
                if let Some(s) = states.get_mut(index) {
                    s.unreadable = Some(format!("{e:#}"));
                }
            }
        }
    }
    merge(workers.info(), workers.uptime_s(), &parts, states)
}

/// The supervisor's `/metrics`: the workers' samples summed series by series (counters, gauges and
/// histogram buckets all add up), each family's `# HELP` / `# TYPE` once, then the supervisor's own
/// `vitals_workers` (by state) and `vitals_worker_restarts_total`.
pub(crate) async fn metrics(workers: &Workers) -> String {
    let states = workers.states();
    let texts: Vec<String> = read_all(&states, "/metrics")
        .await
        .into_iter()
        .filter_map(|(i, r)| {
            r.map_err(|e| tracing::debug!(worker = i, error = %e, "worker metrics unreadable"))
                .ok()
        })
        .collect();
    let mut out = sum_exposition(&texts);
    out.push_str("# HELP vitals_workers Worker processes of this supervisor, by state.\n");
    out.push_str("# TYPE vitals_workers gauge\n");
    for state in ["up", "starting", "restarting", "failed", "stopping"] {
        let k = states.iter().filter(|s| s.state == state).count();
        out.push_str(&format!("vitals_workers{{state=\"{state}\"}} {k}\n"));
    }
    out.push_str(
        "# HELP vitals_worker_restarts_total Worker processes restarted after they exited.\n",
    );
    out.push_str("# TYPE vitals_worker_restarts_total counter\n");
    let restarts: u64 = states.iter().map(|s| s.restarts).sum();
    out.push_str(&format!("vitals_worker_restarts_total {restarts}\n"));
    out
}

/// Sums Prometheus text expositions: every sample line (`name{labels} value`) is added to the same
/// series of the others; comment lines are kept once; order is that of first appearance.
pub(crate) fn sum_exposition(texts: &[String]) -> String {
    enum Entry {
        Comment(String),
        Sample(String, f64),
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for text in texts {
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            if line.starts_with('#') {
                if !seen.contains_key(line) {
                    seen.insert(line.to_string(), entries.len());
                    entries.push(Entry::Comment(line.to_string()));
                }
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            match seen.get(series) {
                Some(&i) => {
                    if let Some(Entry::Sample(_, sum)) = entries.get_mut(i) {
                        *sum += value;
                    }
                }
                None => {
                    seen.insert(series.to_string(), entries.len());
                    entries.push(Entry::Sample(series.to_string(), value));
                }
            }
        }
    }
    let mut out = String::new();
    for e in entries {
        match e {
            Entry::Comment(c) => out.push_str(&c),
            Entry::Sample(series, v) => out.push_str(&format!("{series} {v}")),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_add_up_series_by_series() {
        let a = "# HELP vitals_connections_open Open connections.\n# TYPE vitals_connections_open gauge\nvitals_connections_open 3\n# TYPE vitals_rtt_seconds histogram\nvitals_rtt_seconds_bucket{le=\"0.001\"} 5\nvitals_rtt_seconds_bucket{le=\"+Inf\"} 7\nvitals_rtt_seconds_sum 0.5\nvitals_rtt_seconds_count 7\n".to_string();
        let b = "# HELP vitals_connections_open Open connections.\n# TYPE vitals_connections_open gauge\nvitals_connections_open 4\n# TYPE vitals_rtt_seconds histogram\nvitals_rtt_seconds_bucket{le=\"0.001\"} 1\nvitals_rtt_seconds_bucket{le=\"+Inf\"} 2\nvitals_rtt_seconds_sum 0.25\nvitals_rtt_seconds_count 2\n# TYPE vitals_resumes_total counter\nvitals_resumes_total 9\n".to_string();
        let sum = sum_exposition(&[a, b]);
        assert_eq!(
            sum,
            "# HELP vitals_connections_open Open connections.\n# TYPE vitals_connections_open gauge\nvitals_connections_open 7\n# TYPE vitals_rtt_seconds histogram\nvitals_rtt_seconds_bucket{le=\"0.001\"} 6\nvitals_rtt_seconds_bucket{le=\"+Inf\"} 9\nvitals_rtt_seconds_sum 0.75\nvitals_rtt_seconds_count 9\n# TYPE vitals_resumes_total counter\nvitals_resumes_total 9\n"
        );
        assert_eq!(sum_exposition(&[]), "");
    }
}
