//! TLS over loopback, with a CA and a server certificate made by the test itself (rcgen): messages both
//! ways, RTT, lossless resume through forced disconnects, both codecs; an untrusting client, a plaintext
//! peer and a silent TLS peer are each closed with their typed reason while others are unaffected.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use vitals::rustls;
use vitals::{
    Client, ClientConfig, ClientEvent, ClientTls, Codec, DisconnectReason, Server, ServerConfig,
    ServerEvent, tls,
};

/// A private CA and a server certificate it signed, all as PEM.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// Makes a CA called `ca_name` and a server certificate for `localhost` and `127.0.0.1` signed by it.
/// (Two CAs with the same name would make verification fail with `BadSignature` rather than
/// `UnknownIssuer`.)
fn make_pki(ca_name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "vitals test server");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// The test server configuration with TLS from `pki`.
fn tls_server_config(pki: &Pki) -> ServerConfig {
    let mut cfg = server_config();
    cfg.tls =
        Some(tls::server_config_from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap());
    cfg
}

/// The test client configuration trusting `ca_pem`, verifying the server as `name`.
fn tls_client_config(server: &Server, ca_pem: &str, name: &str) -> ClientConfig {
    let mut cfg = client_config(server);
    cfg.tls = Some(tls::client_config_from_ca_pem(ca_pem.as_bytes(), name).unwrap());
    cfg
}

async fn connected(server: &mut Server) -> vitals::ConnId {
    server_event(server, Duration::from_secs(5), |e| match e {
        ServerEvent::Connected { conn, .. } => Some(*conn),
        _ => None,
    })
    .await
}

async fn client_connected(client: &mut Client) {
    client_event(client, Duration::from_secs(5), |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
}

/// A unique scratch directory for PEM files.
fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vitals-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The configuration helpers read PEM files: certificate chain + key for the server, the CA for the
/// client. Over those: messages both ways, RTT samples on both sides, and a resume through forced
/// disconnects that loses and duplicates nothing; the client's orderly close reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_rtt_and_lossless_resume_over_tls() {
    let pki = make_pki("vitals test CA");
    let dir = scratch_dir("files");
    let (cert, key, ca) = (
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
    );
    std::fs::write(&cert, &pki.cert_pem).unwrap();
    std::fs::write(&key, &pki.key_pem).unwrap();
    std::fs::write(&ca, &pki.ca_pem).unwrap();

    let mut cfg = server_config();
    cfg.tls = Some(tls::server_config_from_pem_files(&cert, &key).unwrap());
    let mut server = Server::bind(cfg).unwrap();
    let mut ccfg = client_config(&server);
    ccfg.tls = Some(tls::client_config_from_ca_file(&ca, "localhost").unwrap());
    ccfg.backoff.base = Duration::from_millis(10);
    ccfg.backoff.cap = Duration::from_millis(50);
    let _ = std::fs::remove_dir_all(&dir);
    let mut client = Client::connect(ccfg);

    let conn = connected(&mut server).await;
    client_connected(&mut client).await;
    client.send(b"hello over tls".to_vec()).await.unwrap();
    let got = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Message { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"hello over tls");
    server.handle().send(conn, b"hello back".to_vec()).unwrap();
    let got = client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Message(p) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"hello back");
    // Pings go out after an interval of silence; each pong is an RTT sample, on both sides.
    let rtt = client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Rtt(r) => Some(*r),
        _ => None,
    })
    .await;
    assert!(rtt.samples >= 1 && rtt.latest < Duration::from_secs(1));
    server_event(&mut server, Duration::from_secs(5), |e| {
        matches!(e, ServerEvent::Rtt { .. }).then_some(())
    })
    .await;

    // A stream of sequenced messages through forced disconnects (no CLOSE, session kept): every
    // reconnect is a new TCP connection and a new TLS handshake, then a resume.
    const N: u64 = 5_000;
    const EVERY: usize = 1_200;
    // The sender stays at most `AHEAD` messages ahead of what the test has read, so that the
    // application (behind an unbounded event channel) does not lag the connections by thousands.
    const AHEAD: u64 = 500;
    let read = ReadCount::default();
    let sender = client.sender();
    let sending = tokio::spawn({
        let read = read.clone();
        async move {
            for i in 0..N {
                read.wait_until_within(i, AHEAD).await;
                sender.send(i.to_be_bytes().to_vec()).await.unwrap();
            }
        }
    });
    let handle = server.handle();
    let mut received = Vec::new();
    // Messages of a connection may still be queued for the application after it was disconnected:
    // disconnect each connection once (the first message at or past the next mark that comes from
    // a connection not yet disconnected), so that every disconnect really breaks a live connection.
    let mut disconnected = Vec::new();
    let mut next_mark = EVERY;
    while received.len() < N as usize {
        let event = tokio::time::timeout(Duration::from_secs(10), server.next_event())
            .await
            .unwrap_or_else(|_| panic!("stalled after {} messages", received.len()))
            .expect("server stopped");
        if let ServerEvent::Message { conn, payload, .. } = event {
            received.push(u64::from_be_bytes(payload[..8].try_into().unwrap()));
            read.add(1);
            if received.len() >= next_mark && !disconnected.contains(&conn) {
                handle.disconnect(conn).unwrap();
                disconnected.push(conn);
                next_mark = received.len() + EVERY;
            }
        }
    }
    tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .unwrap()
        .unwrap();
    let disconnects = disconnected.len();
    assert!(disconnects >= 2, "only {disconnects} forced disconnects");
    assert!(
        received.iter().copied().eq(0..N),
        "lost, duplicated or reordered"
    );
    let mut resumed = 0;
    let mut dead_reasons = Vec::new();
    while resumed < disconnects {
        match client_event(&mut client, Duration::from_secs(5), |e| match e {
            ClientEvent::Resumed { .. } => Some(None),
            ClientEvent::Dead { reason } => Some(Some(reason.clone())),
            ClientEvent::SessionLost { .. } => panic!("session lost"),
            _ => None,
        })
        .await
        {
            None => resumed += 1,
            Some(reason) => dead_reasons.push(reason),
        }
    }
    // The server dropped the TCP connection without close_notify: EOF or reset, never a TLS failure.
    assert!(
        dead_reasons
            .iter()
            .all(|r| matches!(r, DisconnectReason::Eof | DisconnectReason::Reset)),
        "{dead_reasons:?}"
    );

    // After the resumes, the current connection still carries messages both ways.
    client.send(b"after the resumes".to_vec()).await.unwrap();
    let conn = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Message { conn, payload, .. } if payload[..] == b"after the resumes"[..] => {
            Some(*conn)
        }
        _ => None,
    })
    .await;
    server.handle().send(conn, b"and back".to_vec()).unwrap();
    let got = client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Message(p) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"and back");
    client.close().await;
    let reason = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(reason, DisconnectReason::PeerClosed { .. }),
        "{reason:?}"
    );
}

/// The JSON codec over TLS: the server answers pings, messages go both ways, RTT samples arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_codec_works_over_tls() {
    let pki = make_pki("vitals test CA");
    let mut cfg = tls_server_config(&pki);
    cfg.codec = Codec::Json;
    let mut server = Server::bind(cfg).unwrap();
    let mut ccfg = tls_client_config(&server, &pki.ca_pem, "127.0.0.1");
    ccfg.codec = Codec::Json;
    let mut client = Client::connect(ccfg);
    let conn = connected(&mut server).await;
    client_connected(&mut client).await;
    client
        .send(br#"{"hello":"server"}"#.to_vec())
        .await
        .unwrap();
    let got = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Message { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], br#"{"hello":"server"}"#);
    server
        .handle()
        .send(conn, br#"{"hello":"client"}"#.to_vec())
        .unwrap();
    let got = client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Message(p) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], br#"{"hello":"client"}"#);
    client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Rtt(r) => Some(*r),
        _ => None,
    })
    .await;
    // Several timeouts later the pings have kept the connection alive on both sides.
    tokio::time::sleep(TIMEOUT * 3).await;
    while let Some(e) = client.try_next_event() {
        assert!(!matches!(e, ClientEvent::Dead { .. }), "{e:?}");
    }
    while let Some(e) = server.try_next_event() {
        assert!(!matches!(e, ServerEvent::Closed { .. }), "{e:?}");
    }
}

/// A client that does not trust the server's CA (or expects another name) fails the handshake: the
/// server reports a typed TLS reason, so does the client, and a trusting client on the same server is
/// unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusting_client_fails_the_handshake_and_others_are_unaffected() {
    let pki = make_pki("vitals test CA");
    let mut server = Server::bind(tls_server_config(&pki)).unwrap();
    let mut good = Client::connect(tls_client_config(&server, &pki.ca_pem, "localhost"));
    let good_conn = connected(&mut server).await;
    client_connected(&mut good).await;

    let other_ca = make_pki("another CA").ca_pem;
    for (ca, name, client_says) in [
        (other_ca.as_str(), "localhost", "UnknownIssuer"),
        (
            pki.ca_pem.as_str(),
            "not-this-server.example",
            "not valid for name",
        ),
    ] {
        let mut ccfg = tls_client_config(&server, ca, name);
        ccfg.reconnect = false;
        let mut bad = Client::connect(ccfg);
        let reason = client_event(&mut bad, Duration::from_secs(5), |e| match e {
            ClientEvent::Dead { reason } => Some(reason.clone()),
            _ => None,
        })
        .await;
        match &reason {
            DisconnectReason::Tls(detail) => assert!(detail.contains(client_says), "{detail}"),
            other => panic!("client: expected a TLS reason, got {other:?}"),
        }
        let reason = server_event(&mut server, Duration::from_secs(5), |e| match e {
            ServerEvent::Closed { conn, reason, .. } if *conn != good_conn => Some(reason.clone()),
            ServerEvent::Connected { .. } => panic!("an untrusting client got connected"),
            _ => None,
        })
        .await;
        // The client's alert tells the server why (rustls sends BadCertificate / UnknownCA).
        match &reason {
            DisconnectReason::Tls(detail) => assert!(detail.contains("alert"), "{detail}"),
            other => panic!("server: expected a TLS reason, got {other:?}"),
        }
    }

    // The trusting client saw nothing of it and still talks.
    while let Some(e) = good.try_next_event() {
        assert!(!matches!(e, ClientEvent::Dead { .. }), "{e:?}");
    }
    good.send(b"unaffected".to_vec()).await.unwrap();
    let got = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Message { conn, payload, .. } if *conn == good_conn => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"unaffected");
}

/// A plaintext vitals peer at a TLS server is closed with a typed TLS reason (its HELLO is not a TLS
/// record); a TLS client at a plaintext server is a protocol error there. Both servers keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_do_not_mix_and_say_why() {
    let pki = make_pki("vitals test CA");
    let mut server = Server::bind(tls_server_config(&pki)).unwrap();
    let mut peer = raw_peer(&server, &hello_bytes());
    let reason = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed { reason, .. } => Some(reason.clone()),
        ServerEvent::Connected { .. } => panic!("a plaintext peer got connected"),
        _ => None,
    })
    .await;
    assert!(matches!(reason, DisconnectReason::Tls(_)), "{reason:?}");
    // The plaintext peer sees its connection end (after whatever alert bytes rustls sent).
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let end = peer.read_to_end(&mut rest);
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
    let mut good = Client::connect(tls_client_config(&server, &pki.ca_pem, "localhost"));
    client_connected(&mut good).await;

    // The other way round: TLS client, plaintext server.
    let mut plain = Server::bind(server_config()).unwrap();
    let mut ccfg = tls_client_config(&plain, &pki.ca_pem, "localhost");
    ccfg.reconnect = false;
    let _tls_client = Client::connect(ccfg);
    let reason = server_event(&mut plain, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(
        matches!(reason, DisconnectReason::ProtocolError(_)),
        "{reason:?}"
    );
}

/// A raw TLS peer (rustls over a blocking socket) that completes the handshake, sends a HELLO, then
/// neither writes nor answers: convicted after the timeout, not before, with the same bound as over
/// plaintext. Handshake records do not count as signs of life, so a TCP peer that never starts the
/// handshake is convicted at the timeout too. The conviction's CLOSE ends with a TLS close_notify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_peer_is_convicted_at_the_timeout() {
    let pki = make_pki("vitals test CA");
    let mut server = Server::bind(tls_server_config(&pki)).unwrap();
    let mut good = Client::connect(tls_client_config(&server, &pki.ca_pem, "localhost"));
    let good_conn = connected(&mut server).await;
    client_connected(&mut good).await;

    let addr = server.local_addr();
    let ClientTls {
        config,
        server_name,
    } = tls::client_config_from_ca_pem(pki.ca_pem.as_bytes(), "localhost").unwrap();
    let silent = tokio::task::spawn_blocking(move || {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let conn = rustls::ClientConnection::new(Arc::clone(&config), server_name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        // Handshake, then the HELLO (+ ACK(0)), then silence: from here on it only reads.
        tls.write_all(&hello_bytes()).unwrap();
        tls.flush().unwrap();
        let mut seen = Vec::new();
        // Ok only if the server ended the TLS session with close_notify (else: UnexpectedEof).
        let end = tls.read_to_end(&mut seen).map_err(|e| e.kind());
        (end, seen.len())
    });
    let silent_conn = connected(&mut server).await;
    // Its last sign of life was the HELLO, just before `Connected`.
    let connected_at = tokio::time::Instant::now();
    assert_convicted_at_timeout(&mut server, silent_conn, connected_at).await;
    let (end, seen) = silent.await.unwrap();
    assert_eq!(end, Ok(seen), "no close_notify after the CLOSE");
    assert!(seen > 0, "the WELCOME, pings and CLOSE reached the peer");

    // A TCP peer that never sends a ClientHello.
    let _mute = std::net::TcpStream::connect(addr).unwrap();
    let accepted_at = tokio::time::Instant::now();
    let (reason, elapsed) = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed { conn, reason, .. } if *conn != good_conn => {
            Some((reason.clone(), accepted_at.elapsed()))
        }
        _ => None,
    })
    .await;
    assert_eq!(reason, DisconnectReason::SilenceTimeout);
    assert!(
        elapsed >= TIMEOUT - Duration::from_millis(20),
        "{elapsed:?}"
    );

    // The healthy TLS client was never disturbed.
    while let Some(e) = good.try_next_event() {
        assert!(!matches!(e, ClientEvent::Dead { .. }), "{e:?}");
    }
    good.send(b"still here".to_vec()).await.unwrap();
    let got = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Message { payload, .. } => Some(payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&got[..], b"still here");
}

/// Graceful shutdown over TLS: the client is told `Shutdown` (the CLOSE frame got through the TLS layer
/// before the socket closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_reaches_a_tls_client() {
    let pki = make_pki("vitals test CA");
    let mut server = Server::bind(tls_server_config(&pki)).unwrap();
    let mut ccfg = tls_client_config(&server, &pki.ca_pem, "localhost");
    ccfg.reconnect = false;
    let mut client = Client::connect(ccfg);
    connected(&mut server).await;
    client_connected(&mut client).await;
    let _rest = server.shutdown(Duration::from_secs(2)).await;
    let reason = client_event(&mut client, Duration::from_secs(5), |e| match e {
        ClientEvent::Dead { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, DisconnectReason::Shutdown);
}

/// Bulk server-to-client traffic over TLS: 16 MiB in 4 KiB messages queued at once (the replay buffer
/// is raised to hold them), more than the kernel's socket buffers take, so the server's encrypted
/// output waits in rustls behind the socket (WRITABLE interest, backlog) — and every message still
/// arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_output_through_the_tls_backlog_arrives_in_order() {
    const COUNT: u32 = 4096;
    let pki = make_pki("vitals test CA");
    let mut cfg = tls_server_config(&pki);
    cfg.proto.session.max_replay_bytes = 64 << 20;
    let mut server = Server::bind(cfg).unwrap();
    let mut client = Client::connect(tls_client_config(&server, &pki.ca_pem, "localhost"));
    let conn = connected(&mut server).await;
    client_connected(&mut client).await;
    let receiving = tokio::spawn(async move {
        let mut next = 0u32;
        while next < COUNT {
            let got = client_event(&mut client, Duration::from_secs(10), |e| match e {
                ClientEvent::Message(p) => Some(p.clone()),
                ClientEvent::Dead { reason } => panic!("connection died: {reason:?}"),
                _ => None,
            })
            .await;
            assert_eq!(got.len(), 4096);
            assert_eq!(u32::from_be_bytes(got[..4].try_into().unwrap()), next);
            next += 1;
        }
        client
    });
    let handle = server.handle();
    for i in 0..COUNT {
        let mut m = vec![0xA5; 4096];
        m[..4].copy_from_slice(&i.to_be_bytes());
        handle.send(conn, m).unwrap();
    }
    let _client = tokio::time::timeout(Duration::from_secs(60), receiving)
        .await
        .expect("client received everything")
        .unwrap();
    while let Some(e) = server.try_next_event() {
        assert!(
            !matches!(
                e,
                ServerEvent::SendRefused { .. } | ServerEvent::Closed { .. }
            ),
            "{e:?}"
        );
    }
}

/// A TLS peer that stops reading while the server has more to send (16 MiB) than `max_write_buffer`
/// allows behind its socket is closed as a write stall (the records rustls holds count as the
/// backlog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_peer_that_does_not_read_is_a_write_stall() {
    let pki = make_pki("vitals test CA");
    let mut cfg = tls_server_config(&pki);
    cfg.max_write_buffer = 64 * 1024;
    // More than the kernel's socket buffers can absorb (a send buffer autotunes up to 4 MiB here).
    cfg.proto.session.max_replay_bytes = 64 << 20;
    let mut server = Server::bind(cfg).unwrap();
    let addr = server.local_addr();
    let ClientTls {
        config,
        server_name,
    } = tls::client_config_from_ca_pem(pki.ca_pem.as_bytes(), "localhost").unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let peer = tokio::task::spawn_blocking(move || {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        let conn = rustls::ClientConnection::new(Arc::clone(&config), server_name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&hello_bytes()).unwrap();
        tls.flush().unwrap();
        // Never reads again; keeps the socket open until told.
        let _ = stop_rx.recv_timeout(Duration::from_secs(10));
    });
    let conn = connected(&mut server).await;
    let started = tokio::time::Instant::now();
    for _ in 0..256 {
        server.handle().send(conn, vec![7; 64 * 1024]).unwrap();
    }
    let reason = server_event(&mut server, Duration::from_secs(5), |e| match e {
        ServerEvent::Closed { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, DisconnectReason::WriteStall);
    // Caught by the buffer limit, before the silence timeout could have convicted the peer.
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    let _ = stop_tx.send(());
    peer.await.unwrap();
}
