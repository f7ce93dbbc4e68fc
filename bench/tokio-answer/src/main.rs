//! `tokio-answer PORT [THREADS]`: a baseline for the classic JSON heartbeat, the way most Rust servers
//! are written — a tokio task per connection that reads and answers every `{"ping":N}` with
//! `{"pong":N+1}` (what `vitals serve --codec json` answers), and does nothing else: no liveness, no
//! timers, no limits, no heap buffer (the task's 256-byte read buffer and reply live in its future).
//!
//! THREADS (default 1) is the runtime's worker count: 1 is a current-thread runtime, the shape of the
//! other single-loop servers in `bench/compare-mosquitto.sh`. Not a server to use: it trusts its input
//! (it only talks to a load generator on loopback) and assumes an object is never split across reads
//! (true on loopback at one small object per second per connection).

use std::io::Write as _;
use std::process::ExitCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Read buffer and reply size (in the task's future, not on the heap).
const BUF: usize = 256;

/// Writes into `out` a `{"pong":N+1}` for every `{"ping":N}` in `input`; returns the bytes written.
fn answer(input: &[u8], out: &mut [u8; BUF]) -> usize {
    const KEY: &[u8] = b"\"ping\"";
    let mut len = 0;
    let mut p = 0;
    while p + KEY.len() <= input.len() {
        if &input[p..p + KEY.len()] != KEY {
            p += 1;
            continue;
        }
        p += KEY.len();
        while p < input.len() && matches!(input[p], b' ' | b':') {
            p += 1;
        }
        let mut v: u64 = 0;
        while p < input.len() && input[p].is_ascii_digit() {
            v = v.wrapping_mul(10).wrapping_add(u64::from(input[p] - b'0'));
            p += 1;
        }
        let mut w = &mut out[len..];
        let room = w.len();
        if write!(w, "{{\"pong\":{}}}", v.wrapping_add(1)).is_err() {
            break;
        }
        len += room - w.len();
    }
    len
}

/// Serves one connection until it closes.
async fn serve(mut stream: TcpStream) {
    let mut buf = [0u8; BUF];
    let mut out = [0u8; BUF];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let len = answer(&buf[..n], &mut out);
        if len > 0 && stream.write_all(&out[..len]).await.is_err() {
            return;
        }
    }
}

/// Listen backlog (as the C floor's): a load generator opens connections in batches of hundreds.
const BACKLOG: u32 = 4096;

async fn run(port: u16) -> std::io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
    let listener = socket.listen(BACKLOG)?;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
            // EMFILE and the like: the connection stays queued; try again.
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let port = args.next().and_then(|p| p.parse::<u16>().ok());
    let threads = args.next().map_or(Some(1), |t| t.parse::<usize>().ok());
    let (Some(port), Some(threads)) = (port, threads.filter(|t| *t > 0)) else {
        eprintln!("usage: tokio-answer PORT [THREADS]");
        return ExitCode::from(2);
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_io()
            .build()
    };
    let result = runtime.and_then(|rt| rt.block_on(run(port)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-answer: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_every_ping_with_n_plus_one() {
        let mut out = [0u8; BUF];
        let n = answer(br#"{"ping":10}{"ping": 41}{"other":1}"#, &mut out);
        assert_eq!(&out[..n], br#"{"pong":11}{"pong":42}"#);
        assert_eq!(answer(b"", &mut out), 0);
    }
}
