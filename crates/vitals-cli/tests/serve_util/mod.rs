//! Helpers shared by the CLI tests: start `vitals serve` on free loopback ports, wait for its
//! "listening" line, talk HTTP to its status page, and kill whatever was started.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The `vitals` binary under test.
pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vitals"))
}

/// A fresh path under the test scratch directory.
pub(crate) fn scratch(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "vitals-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// True under CI: `CI` is set to anything but empty, `0` or `false` (CI services set `CI=true`).
/// There a test that cannot run must fail, not skip.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// `test` cannot run here because `missing` is missing; `fix` says how to get it. Under CI
/// ([`in_ci`]) this panics: a skip there would count as a pass. Elsewhere it writes a `SKIPPED:`
/// line straight to the process's stderr, past the test harness's output capture, so that a passing
/// run still shows it (and `.ci/run` counts it); the caller then returns.
pub(crate) fn skip_unless_ci(test: &str, missing: &str, fix: &str) {
    assert!(
        !in_ci(),
        "{test} cannot run: {missing} (CI={:?}: a skip is a failure under CI); {fix}",
        std::env::var("CI").unwrap_or_default()
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED: {test}: {missing}; {fix} (under CI=true this fails)"
    );
}

/// A running `vitals serve`, killed on drop.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    /// The address it listens on.
    pub(crate) addr: SocketAddr,
    /// The status page address, if `--http` was given.
    pub(crate) http: Option<SocketAddr>,
    /// The "listening" line.
    pub(crate) banner: String,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `vitals serve --listen 127.0.0.1:0 ARGS…` (ARGS may give their own `--listen`) and waits
    /// (≤ 20 s) for its listening line.
    pub(crate) fn start(args: &[&str]) -> Daemon {
        Self::start_with_env(args, &[])
    }

    /// Same, with extra environment variables.
    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let stderr = scratch("serve.stderr");
        let mut cmd = Command::new(bin());
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn vitals serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the daemon never blocks on a full pipe.
            for _ in lines {}
        });
        let banner = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "vitals serve printed no listening line; stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        let addr = word_after(&banner, "listening on ")
            .parse()
            .unwrap_or_else(|_| panic!("no address in {banner:?}"));
        let http = banner.split("http://").nth(1).map(|rest| {
            rest.trim_end_matches('/')
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .unwrap_or_else(|_| panic!("no http address in {banner:?}"))
        });
        Daemon {
            child,
            addr,
            http,
            banner,
            stderr,
        }
    }

    /// Sends `signal` (e.g. "TERM") and waits up to `within` for the exit.
    pub(crate) fn signal_and_wait(&mut self, signal: &str, within: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill(1)");
        assert!(ok.success(), "kill -{signal} {pid} failed");
        wait_within(&mut self.child, within)
            .unwrap_or_else(|| panic!("vitals serve did not exit within {within:?} of SIG{signal}"))
    }

    /// What it wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// GET `path` on the status page.
    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        http_request(
            self.http.expect("started without --http"),
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
    }

    /// `/status.json`, parsed.
    pub(crate) fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status.json");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status.json is JSON")
    }

    /// Polls `/status.json` until `pred` holds (≤ `within`); returns the last document.
    pub(crate) fn wait_status(
        &self,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + within;
        loop {
            let s = self.status();
            if pred(&s) || Instant::now() > end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vitals connect ADDR` with the tests' timing (200 ms interval, 1 s timeout) and warnings-only logs;
/// stdin piped (the client stays while it is open), stdout and stderr discarded unless the caller
/// sets them.
pub(crate) fn connect_command(addr: SocketAddr) -> Command {
    let mut c = Command::new(bin());
    c.args([
        "connect",
        &addr.to_string(),
        "--interval",
        "200ms",
        "--timeout",
        "1s",
    ])
    .env("RUST_LOG", "warn")
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

/// A child process killed on drop (clients started by a test).
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` up to `within`.
pub(crate) fn wait_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The whitespace-delimited word after `marker` in `line`.
pub(crate) fn word_after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
}

/// Sends a raw request, returns (status code, body).
pub(crate) fn http_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).expect("write request");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (code, body)
}

/// A free loopback port (bound then released; good enough for tests that need a closed port).
pub(crate) fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
