//! A `redis-server` of the CLI's own, for the fleet demo: on a free loopback port, in a directory of
//! ours, with no persistence (`--save "" --appendonly no`), stopped when dropped. The same setup as
//! the fleet tests' helper (`crates/vitals/tests/fleet_util`), which panics instead of erroring.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::child::{Child, log_tail};

/// How long `redis-server` may take to answer PING.
const START_WITHIN: Duration = Duration::from_secs(10);
/// Attempts with a fresh port (another process may take the free port before Redis binds it).
const ATTEMPTS: usize = 3;

/// A running `redis-server` on 127.0.0.1, killed on drop.
pub(crate) struct RedisServer {
    _child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one with its files in `dir` (which must exist). Fails with a message naming
    /// `scripts/setup` when `redis-server` is not installed.
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<RedisServer> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match Self::try_start(dir).await? {
                Ok(r) => return Ok(r),
                Err(why) => last = Some(why),
            }
        }
        bail!("redis-server did not start: {}", last.unwrap_or_default())
    }

    /// One attempt: `Err(..)` if it could not be spawned at all, `Ok(Err(why))` if it did not
    /// come up (worth another port).
    async fn try_start(dir: &Path) -> anyhow::Result<Result<RedisServer, String>> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let log = dir.join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args(["--logfile", "redis.log", "--daemonize", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = match Child::spawn(cmd, "redis-server") {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => bail!(
                "redis-server is not installed: run scripts/setup (it installs Debian's \
redis-server), or give --store redis://HOST:PORT/ for a Redis of yours"
            ),
            Err(e) => return Err(e),
        };
        let end = Instant::now() + START_WITHIN;
        while !ping(port) {
            if let Some(status) = child.exited() {
                return Ok(Err(format!("it exited ({status}); {}", log_tail(&log, 5))));
            }
            if Instant::now() >= end {
                return Ok(Err(format!(
                    "no answer to PING within {} s; {}",
                    START_WITHIN.as_secs(),
                    log_tail(&log, 5)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Ok(RedisServer {
            _child: child,
            port,
        }))
    }

    /// `redis://127.0.0.1:PORT/`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// Whether spawning failed because the program does not exist.
fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::NotFound)
}

/// True if a Redis on 127.0.0.1:`port` answers PING.
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 16];
    s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// A directory of our own under the system's temporary directory, removed (with its contents) on
/// drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// Creates `vitals-NAME-PID-NANOS`.
    pub(crate) fn new(name: &str) -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("vitals-{name}-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
