//! The status page of `vitals serve --http ADDR`: a small hand-written HTTP/1.1 responder over tokio.
//!
//! Routes: `/` (a self-contained HTML page that polls `/status.json` every second and draws its
//! charts with inline SVG), `/status.json` (see [`status::Snapshot`]), in a fleet `/fleet.json` (nodes and
//! live sessions with owner, since and RTT, read from Redis), and `/metrics` (Prometheus text
//! format, rendered by the `metrics-exporter-prometheus` recorder the server's library metrics go
//! to). GET and HEAD only; one request per connection (`Connection: close`); the request head is
//! bounded ([`MAX_REQUEST`]) and must arrive within [`REQUEST_TIMEOUT`]; at most
//! [`MAX_CLIENTS`] requests are served at once.
//!
//! A supervisor of worker processes (`vitals serve --processes N`) serves the same routes for all
//! of them ([`View::Supervisor`]): `/status.json` and `/metrics` are the sums of its workers' own
//! pages, read when asked ([`aggregate`]).

pub(crate) mod aggregate;
pub(crate) mod client;
pub(crate) mod status;

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use status::Status;

/// Largest request head accepted (request line + headers).
pub(crate) const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head, and then to take the response.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once; more wait for their turn in the accept queue.
pub(crate) const MAX_CLIENTS: usize = 64;

/// The page itself: HTML, CSS and JS in one file, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// What the responder serves from.
pub(crate) struct App {
    /// Whose numbers.
    pub(crate) view: View,
    /// In a fleet: the Redis URL and fleet configuration, for `/fleet.json` (presence from Redis).
    pub(crate) fleet: Option<(String, vitals::FleetConfig)>,
}

/// Whose numbers a status page shows.
pub(crate) enum View {
    /// This process's server.
    Server {
        /// Counters of the running server.
        status: Arc<Status>,
        /// Open connections now.
        open: Box<dyn Fn() -> usize + Send + Sync>,
        /// The Prometheus recorder's handle.
        prometheus: PrometheusHandle,
    },
    /// The worker processes of a supervisor, added up.
    Supervisor(Arc<crate::serve::supervisor::Workers>),
}

/// Most live sessions `/fleet.json` lists.
const FLEET_SESSIONS_SHOWN: usize = 1000;

/// `/fleet.json`: the fleet's nodes (with their last heartbeat) and its live sessions (owner, since,
/// last RTT), read from Redis as a backend would.
async fn fleet_json(url: &str, cfg: &vitals::FleetConfig) -> Response {
    let read = async {
        let backend = vitals::fleet::Backend::connect(url, cfg).await?;
        let nodes = backend.nodes().await?;
        let live = backend.live_sessions().await?;
        let mut sessions = Vec::new();
        for (sid, since) in live.iter().take(FLEET_SESSIONS_SHOWN) {
            if let Some(p) = backend.presence(*sid).await? {
                sessions.push(serde_json::json!({
                    "session": vitals::fleet::FleetKeys::session_field(*sid),
                    "owner": p.owner,
                    "since_ms": since,
                    "rtt_us": p.rtt_us,
                    "epoch": p.epoch,
                }));
            }
        }
        Ok::<_, vitals::Error>(serde_json::json!({
            "node": cfg.node,
            "nodes": nodes,
            "live_sessions": live.len(),
            "sessions": sessions,
        }))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Ok(v)) => Response::new("200 OK", "application/json", v.to_string()),
        Ok(Err(e)) => Response::text("503 Service Unavailable", &format!("{e}\n")),
        Err(_) => Response::text("503 Service Unavailable", "Redis did not answer in time\n"),
    }
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// `GET` or `HEAD`.
    pub(crate) head_only: bool,
    /// Path without the query string.
    pub(crate) path: String,
}

/// Why a request is not served normally.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Not HTTP (400).
    Malformed,
    /// A method other than GET/HEAD (405).
    Method,
}

/// Parses the request head (everything up to the blank line).
pub(crate) fn parse_request(head: &[u8]) -> Result<Request, Reject> {
    let text = std::str::from_utf8(head).map_err(|_| Reject::Malformed)?;
    let line = text.lines().next().ok_or(Reject::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(Reject::Malformed);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Reject::Method),
    };
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    Ok(Request { head_only, path })
}

/// A response ready to write.
#[derive(Debug)]
pub(crate) struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    extra: &'static str,
}

impl Response {
    fn new(status: &'static str, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
            extra: "",
        }
    }

    fn text(status: &'static str, body: &str) -> Self {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// The bytes on the wire (the body left out for HEAD).
    pub(crate) fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            self.extra
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The `/status.json` response for `snapshot`.
fn status_json(snapshot: anyhow::Result<status::Snapshot>) -> Response {
    match snapshot.and_then(|s| Ok(serde_json::to_vec(&s)?)) {
        Ok(body) => Response::new("200 OK", "application/json", body),
        Err(e) => {
            tracing::warn!(error = %e, "status.json unavailable");
            Response::text("500 Internal Server Error", "status unavailable\n")
        }
    }
}

/// The `/metrics` response.
fn metrics_text(body: String) -> Response {
    Response::new("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
}

/// Answers one parsed request.
pub(crate) async fn respond(app: &App, req: &Request) -> Response {
    match (req.path.as_str(), &app.view) {
        ("/" | "/index.html", _) => Response::new("200 OK", "text/html; charset=utf-8", PAGE),
        ("/status.json", View::Server { status, open, .. }) => {
            status_json(Ok(status.snapshot(open())))
        }
        ("/status.json", View::Supervisor(workers)) => {
            status_json(aggregate::status(workers).await)
        }
        ("/metrics", View::Server { prometheus, .. }) => {
            prometheus.run_upkeep();
            metrics_text(prometheus.render())
        }
        ("/metrics", View::Supervisor(workers)) => metrics_text(aggregate::metrics(workers).await),
        (_, _) => Response::text(
            "404 Not Found",
            "not found; try /, /status.json or /metrics\n",
        ),
    }
}

/// Serves `listener` until the task is dropped or aborted.
pub(crate) async fn serve(listener: TcpListener, app: Arc<App>) {
    let permits = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(error = %e, "status page: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &app).await {
                tracing::debug!(%peer, error = %e, "status page request failed");
            }
            drop(permit);
        });
    }
}

/// Reads one request head from `stream` (bounded in size and time), writes the response.
async fn handle(mut stream: TcpStream, app: &App) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream, &mut buf)).await;
    let (response, head_only) = match read {
        Err(_) => (
            Response::text("408 Request Timeout", "request timeout\n"),
            false,
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(false)) => (
            Response::text(
                "431 Request Header Fields Too Large",
                "request head too large\n",
            ),
            false,
        ),
        Ok(Ok(true)) => match parse_request(&buf) {
            Ok(req) => match (&app.fleet, req.path.as_str()) {
                (Some((url, cfg)), "/fleet.json") => (fleet_json(url, cfg).await, req.head_only),
                _ => (respond(app, &req).await, req.head_only),
            },
            Err(Reject::Malformed) => (Response::text("400 Bad Request", "bad request\n"), false),
            Err(Reject::Method) => {
                let mut r = Response::text("405 Method Not Allowed", "only GET and HEAD\n");
                r.extra = "Allow: GET, HEAD\r\n";
                (r, false)
            }
        },
    };
    let bytes = response.to_bytes(head_only);
    tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&bytes))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Reads until the blank line ending the head. False if [`MAX_REQUEST`] bytes came without one.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 1024];
    loop {
        if find_head_end(buf).is_some() {
            return Ok(true);
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(false);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Where the head ends (`\r\n\r\n`, or `\n\n` from lax clients).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse() {
        assert_eq!(
            parse_request(b"GET /status.json?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Request {
                head_only: false,
                path: "/status.json".into()
            })
        );
        assert_eq!(
            parse_request(b"HEAD / HTTP/1.0\r\n\r\n").map(|r| r.head_only),
            Ok(true)
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\n\r\n"),
            Err(Reject::Method)
        );
        assert_eq!(parse_request(b"hello\r\n\r\n"), Err(Reject::Malformed));
        assert_eq!(
            parse_request(b"GET http://x/ HTTP/1.1\r\n\r\n"),
            Err(Reject::Malformed)
        );
        assert_eq!(parse_request(&[0xff, 0xfe]), Err(Reject::Malformed));
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = Response::text("404 Not Found", "nope\n");
        let full = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(full.contains("Content-Length: 5\r\n"));
        assert!(full.contains("Connection: close\r\n"));
        assert!(full.ends_with("\r\n\r\nnope\n"));
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn head_end_is_found() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn the_page_is_self_contained() {
        assert!(PAGE.contains("/status.json"));
        for external in ["http://", "https://", "//cdn", "<link "] {
            assert!(!PAGE.contains(external), "page references {external}");
        }
    }
}
