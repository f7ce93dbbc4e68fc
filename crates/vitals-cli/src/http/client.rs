//! A minimal HTTP/1.1 GET over loopback, for reading a status page: a `vitals serve --processes N`
//! supervisor reads its workers' pages, `vitals bench` reads the server's convictions. One request
//! per connection, bounded in time and size.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response read (a worker's `/metrics` or `/status.json` is a few tens of KiB).
const MAX_RESPONSE: usize = 16 << 20;

/// GETs `path` from the HTTP server at `addr` within `timeout`; the body of a 200 response.
pub(crate) async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut buf)
            .await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("http://{addr}{path} did not answer within {timeout:?}"))??;
    let text = String::from_utf8(buf)
        .map_err(|_| anyhow::anyhow!("http://{addr}{path}: the response is not UTF-8"))?;
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        anyhow::bail!("http://{addr}{path}: no end of the response head");
    };
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        anyhow::bail!("http://{addr}{path}: {status}");
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_body_and_refuses_other_statuses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for reply in [
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                "HTTP/1.1 404 Not Found\r\n\r\nnope",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = [0u8; 1024];
                let _ = s.read(&mut head).await;
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let t = Duration::from_secs(5);
        assert_eq!(get(addr, "/status.json", t).await.unwrap(), "hello");
        let err = get(addr, "/x", t).await.unwrap_err().to_string();
        assert!(err.contains("404"), "{err}");
    }
}
