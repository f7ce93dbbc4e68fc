//! `vitals serve --tls-cert --tls-key` and `vitals connect --tls-ca`: echo over TLS with a CA made by
//! the test; a client that does not trust the CA never gets an echo; half a TLS configuration is refused.

mod serve_util;

use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serve_util::*;

/// Writes `ca.pem`, `cert.pem`, `key.pem` for `127.0.0.1` into a scratch directory named `name`.
fn pki(name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    dir
}

fn connect(addr: &str, ca: &std::path::Path) -> Command {
    let mut c = Command::new(bin());
    c.args([
        "connect",
        addr,
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--tls-ca",
    ])
    .arg(ca)
    .env("RUST_LOG", "warn")
    .timeout(Duration::from_secs(30));
    c
}

#[test]
fn echo_over_tls_with_a_ca_made_by_the_test() {
    let dir = pki("cli-tls");
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    let d = Daemon::start(&[
        "--echo",
        "--interval",
        "200ms",
        "--timeout",
        "1s",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    connect(&d.addr.to_string(), &dir.join("ca.pem"))
        .write_stdin("over\ntls\n")
        .assert()
        .code(0)
        .stdout("over\ntls\n");

    // A client trusting another CA never gets a session (nor an echo).
    let other = pki("cli-tls-other");
    connect(&d.addr.to_string(), &other.join("ca.pem"))
        .args(["--eof-timeout", "2s"])
        .write_stdin("secret\n")
        .assert()
        .code(1)
        .stdout("");
}

#[test]
fn half_a_tls_configuration_is_refused() {
    let dir = pki("cli-tls-half");
    Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(dir.join("cert.pem"))
        .timeout(Duration::from_secs(30))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "give both --tls-cert and --tls-key",
        ));
}
