//! `vitals serve --config FILE`: unknown keys, bad values and unreadable files are rejected with
//! exit code 2 and a message saying what to change; `$VITALS_CONFIG` names the file too.

mod serve_util;

use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use serve_util::*;

fn serve_with(file_text: &str) -> assert_cmd::assert::Assert {
    let file = scratch("vitals.toml");
    std::fs::write(&file, file_text).unwrap();
    Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .timeout(Duration::from_secs(20))
        .assert()
}

#[test]
fn unknown_key_exits_2_with_line_and_fix() {
    serve_with("interval = \"1s\"\nintervall = \"2s\"\n")
        .code(2)
        .stderr(predicate::str::contains("line 2"))
        .stderr(predicate::str::contains("unknown field `intervall`"))
        .stderr(predicate::str::contains("remove or rename that key"));
}

#[test]
fn bad_value_in_file_names_file_and_key() {
    serve_with("timeout = \"forever\"\n")
        .code(2)
        .stderr(predicate::str::contains("key `timeout`"))
        .stderr(predicate::str::contains("not a duration"));
}

#[test]
fn timing_error_from_the_file_says_so() {
    serve_with("interval = \"5s\"\n")
        .code(2)
        .stderr(predicate::str::contains(
            "timeout (3s, the default) must be greater than interval (5s, from",
        ))
        .stderr(predicate::str::contains("vitals.toml"));
}

#[test]
fn missing_file_exits_2() {
    Command::new(bin())
        .args(["serve", "--config", "/nonexistent/vitals.toml"])
        .timeout(Duration::from_secs(20))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot read config file /nonexistent/vitals.toml",
        ));
}

#[test]
fn config_file_from_the_environment_is_used() {
    let file = scratch("vitals.toml");
    std::fs::write(
        &file,
        "interval = \"250ms\"\ntimeout = \"2s\"\necho = true\n",
    )
    .unwrap();
    let mut d = Daemon::start_with_env(&[], &[("VITALS_CONFIG", &file.to_string_lossy())]);
    assert!(
        d.banner.contains("interval 250ms, timeout 2s") && d.banner.contains(", echo)"),
        "{}",
        d.banner
    );
    assert!(d.signal_and_wait("TERM", Duration::from_secs(10)).success());
}
