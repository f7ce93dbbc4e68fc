//! The status page in a real headless Chromium: `vitals serve --http` with a few `vitals connect`
//! clients (one of them frozen with SIGSTOP until the server convicts it, then thawed so that it
//! resumes), the page loaded with `--dump-dom`, its numbers checked against `/status.json`, and a
//! screenshot kept at `<target>/test-artifacts/status.png`.
//!
//! Without a chromium binary on PATH it fails under CI (`CI=true`) and elsewhere skips, saying so
//! on stderr past the output capture (`SKIPPED: …`); `scripts/setup` (through
//! `scripts/install-chromium`) installs Debian's package.

mod serve_util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serve_util::*;

/// The first chromium-like browser on PATH.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Runs chromium headless on `url` with `extra` flags (≤ 90 s); returns stdout.
fn run_chromium(browser: &Path, url: &str, extra: &[&str]) -> String {
    let profile = scratch("chromium-profile");
    let log = scratch("chromium.log");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--virtual-time-budget=4000")
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start chromium");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let status = wait_within(&mut child, Duration::from_secs(90));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "chromium did not finish within 90 s; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let out = reader.join().unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium failed ({status:?}); log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    out
}

/// The text of the element with `id` in a dumped DOM (`<… id="ID">TEXT<`).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\">");
    dom.split(&marker)
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no element #{id} in the DOM"))
}

fn connect_client(d: &Daemon) -> Guard {
    Guard(
        connect_command(d.addr)
            .spawn()
            .expect("start vitals connect"),
    )
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(ok.success());
}

#[test]
fn status_page_in_headless_chromium_shows_the_live_numbers() {
    let Some(browser) = chromium() else {
        skip_unless_ci(
            "status_page_in_headless_chromium_shows_the_live_numbers",
            "no chromium, chromium-browser or google-chrome on PATH",
            "scripts/install-chromium installs Debian's chromium",
        );
        return;
    };
    let d = Daemon::start(&[
        "--http",
        "127.0.0.1:0",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--echo",
    ]);
    let mut clients: Vec<Guard> = (0..4).map(|_| connect_client(&d)).collect();
    let s = d.wait_status(Duration::from_secs(15), |s| {
        s["connections"]["established"] == 4
    });
    assert_eq!(s["connections"]["established"], 4, "{s}");
    for i in 0..5 {
        let stdin = clients[0].0.stdin.as_mut().unwrap();
        writeln!(stdin, "hello {i}").unwrap();
    }
    // Freeze one client: the server convicts it after its 1 s timeout. Thaw it: it resumes.
    let frozen = clients[3].0.id();
    signal(frozen, "STOP");
    let s = d.wait_status(Duration::from_secs(10), |s| s["convictions"] == 1);
    signal(frozen, "CONT");
    assert_eq!(s["convictions"], 1, "{s}");
    assert_eq!(s["disconnects"]["silence_timeout"], 1, "{s}");
    let s = d.wait_status(Duration::from_secs(15), |s| {
        s["connections"]["resumed"] == 1
            && s["connections"]["established"] == 4
            && s["messages"]["received"] == 5
    });
    assert_eq!(s["connections"]["resumed"], 1, "{s}");
    assert_eq!(s["messages"]["received"], 5, "{s}");
    // A few RTT samples for the histogram.
    let s = d.wait_status(Duration::from_secs(10), |s| {
        s["rtt"]["samples"].as_u64() >= Some(10)
    });

    let url = format!("http://{}/", d.http.unwrap());
    let dom = run_chromium(&browser, &url, &["--dump-dom"]);
    let after = d.status();
    let shown = |id: &str| text_of(&dom, id).to_string();
    assert!(
        shown("live-text").starts_with("live"),
        "the page could not load /status.json: {}",
        shown("live-text")
    );
    // Steady state: the numbers the page shows are the ones /status.json gives before and after.
    for (id, path) in [
        ("conn-open", ["connections", "open"]),
        ("conn-established", ["connections", "established"]),
        ("conn-resumed", ["connections", "resumed"]),
        ("msg-received", ["messages", "received"]),
    ] {
        let before = &s[path[0]][path[1]];
        let now = &after[path[0]][path[1]];
        assert_eq!(before, now, "{id} moved while the page loaded");
        assert_eq!(
            shown(id),
            now.to_string(),
            "#{id} on the page vs /status.json"
        );
    }
    assert_eq!(shown("conn-open"), "4");
    assert_eq!(shown("convictions"), "1");
    assert_eq!(shown("convictions"), after["convictions"].to_string());
    assert!(
        dom.contains("silence_timeout"),
        "disconnect reasons table lacks the conviction"
    );
    let p50: f64 = shown("rtt-p50").parse().expect("p50 is a number");
    assert!(p50 > 0.0, "p50 shown as {p50}");
    assert!(
        dom.matches("<rect").count() >= 2,
        "histogram/chart bars drawn"
    );
    assert!(dom.contains("<polyline"), "connections chart drawn");

    // The screenshot, kept as an artefact (not committed).
    let artefacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    let png = artefacts.join("status.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(
        &browser,
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 10_000, "screenshot suspiciously small");
    eprintln!("status page screenshot: {}", png.display());
    drop(clients);
}
