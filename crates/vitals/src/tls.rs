//! TLS with rustls, used as a sans-IO state machine: the event loops (and the client task) move socket
//! bytes into rustls and plaintext out of it, exactly as they move bytes in and out of the protocol core.
//!
//! This module holds the configuration helpers (server certificate chain and key, client trust anchors,
//! all from PEM) and the two byte-moving steps both sides share: [`feed`] (ciphertext in, plaintext to
//! the protocol core) and [`write_out`] (buffered TLS records to a socket). The crypto provider is
//! rustls' `ring` provider, chosen explicitly so that no process-wide default is needed.

use std::io::{self, BufRead, Read};
use std::path::Path;
use std::sync::Arc;

use rustls::ConnectionCommon;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::Error;

/// What a client needs for TLS: the rustls configuration (trust anchors, versions) and the name the
/// server's certificate must carry.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// rustls client configuration (build one with [`client_config_from_ca_file`] or by hand).
    pub config: Arc<rustls::ClientConfig>,
    /// The name to verify the server certificate against (a DNS name or an IP address).
    pub server_name: ServerName<'static>,
}

impl ClientTls {
    /// Pairs a rustls configuration with the server name to verify. Errors: [`Error::Tls`] when
    /// `server_name` is neither a valid DNS name nor an IP address.
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: &str) -> Result<Self, Error> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| Error::Tls(format!("invalid server name {server_name:?}: {e}")))?;
        Ok(ClientTls {
            config,
            server_name,
        })
    }
}

/// The crypto provider vitals uses: rustls' `ring` provider (no cmake, no C toolchain beyond cc).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from PEM files: `cert_chain` (the server certificate first, then any
/// intermediates) and `key` (PKCS#8, PKCS#1 or SEC1). No client authentication.
pub fn server_config_from_pem_files(
    cert_chain: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let (cert_chain, key) = (cert_chain.as_ref(), key.as_ref());
    let certs = read_file(cert_chain)?;
    let key_pem = read_file(key)?;
    server_config_from_pem(&certs, &key_pem).map_err(|e| match e {
        Error::Tls(msg) => Error::Tls(format!(
            "{msg} (certificates {}, key {})",
            cert_chain.display(),
            key.display()
        )),
        other => other,
    })
}

/// A server configuration from PEM text in memory (see [`server_config_from_pem_files`]).
pub fn server_config_from_pem(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let certs = certificates(cert_chain_pem)?;
    // The error of a failed key parse is not shown: it could echo key material.
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| Error::Tls("no usable private key in the PEM key input".into()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("certificate and key do not make a TLS server: {e}")))?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts exactly the CA certificates in the PEM file `ca` (a private CA
/// or a self-signed server certificate), verifying the server as `server_name`.
pub fn client_config_from_ca_file(
    ca: impl AsRef<Path>,
    server_name: &str,
) -> Result<ClientTls, Error> {
    let ca = ca.as_ref();
    let pem = read_file(ca)?;
    client_config_from_ca_pem(&pem, server_name).map_err(|e| match e {
        Error::Tls(msg) => Error::Tls(format!("{msg} (CA file {})", ca.display())),
        other => other,
    })
}

/// A client configuration that trusts exactly the CA certificates in `ca_pem` (see
/// [`client_config_from_ca_file`]).
pub fn client_config_from_ca_pem(ca_pem: &[u8], server_name: &str) -> Result<ClientTls, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("unusable CA certificate: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClientTls::new(Arc::new(config), server_name)
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Tls(format!("cannot read {}: {e}", path.display())))
}

/// Every certificate in a PEM input; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("no certificate in the PEM input".into()));
    }
    Ok(certs)
}

/// What feeding ciphertext to rustls led to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// Everything was consumed; the connection goes on.
    Open,
    /// The plaintext sink asked to stop (the protocol core closed).
    Stopped,
    /// The peer sent `close_notify`: no more data will come.
    PeerClosed,
    /// The TLS layer failed (bad record, failed handshake, alert from the peer). rustls has queued an
    /// alert for the peer, if one is due: write it with [`write_out`] before dropping the socket.
    Failed(String),
}

/// Feeds `ciphertext` (bytes just read from the socket) to `tls` and hands every decrypted byte to
/// `plain`, which returns false to stop. Handshake progress happens here too; its output waits in
/// rustls until [`write_out`].
pub(crate) fn feed<D>(
    tls: &mut ConnectionCommon<D>,
    mut ciphertext: &[u8],
    mut plain: impl FnMut(&[u8]) -> bool,
) -> Fed {
    while !ciphertext.is_empty() {
        match tls.read_tls(&mut ciphertext as &mut dyn Read) {
            // Only after close_notify: rustls takes nothing more.
            Ok(0) => return Fed::PeerClosed,
            Ok(_) => {}
            Err(e) => return Fed::Failed(e.to_string()),
        }
        if let Err(e) = tls.process_new_packets() {
            return Fed::Failed(e.to_string());
        }
        loop {
            let mut reader = tls.reader();
            match reader.fill_buf() {
                Ok([]) => return Fed::PeerClosed,
                Ok(chunk) => {
                    let n = chunk.len();
                    let go_on = plain(chunk);
                    reader.consume(n);
                    if !go_on {
                        return Fed::Stopped;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Fed::Failed(e.to_string()),
            }
        }
    }
    Fed::Open
}

/// Writes the TLS records rustls holds to `socket` until it refuses (`WouldBlock`) or nothing is left.
/// Returns the bytes written; `wants_write()` on the connection tells whether some are still waiting.
pub(crate) fn write_out<D>(
    tls: &mut ConnectionCommon<D>,
    socket: &mut dyn io::Write,
) -> io::Result<usize> {
    let mut written = 0;
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Hands the protocol core's next batch of output (at most about `batch` bytes) to rustls, which
/// encrypts it into records it then holds for `write_out`; once the core is closed and has nothing
/// left, queues `close_notify` (idempotent in rustls: sent once). True when records were queued (the
/// caller writes them and comes back), false when there is nothing more to send.
pub(crate) fn encrypt_next<D>(
    tls: &mut ConnectionCommon<D>,
    proto: &mut vitals_proto::Connection,
    out: &mut Vec<u8>,
    batch: usize,
) -> io::Result<bool> {
    out.clear();
    while out.len() < batch && proto.poll_transmit(out) > 0 {}
    if out.is_empty() {
        if proto.is_closed() {
            tls.send_close_notify();
            return Ok(tls.wants_write());
        }
        return Ok(false);
    }
    // Before the handshake completes rustls keeps this as plaintext and sends it afterwards.
    io::Write::write_all(&mut tls.writer(), out)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_inputs_are_typed_errors() {
        assert!(matches!(
            server_config_from_pem(b"", b""),
            Err(Error::Tls(m)) if m.contains("no certificate")
        ));
        assert!(matches!(
            client_config_from_ca_pem(b"not pem at all", "localhost"),
            Err(Error::Tls(_))
        ));
        assert!(matches!(
            client_config_from_ca_file("/nonexistent/vitals-ca.pem", "localhost"),
            Err(Error::Tls(m)) if m.contains("/nonexistent/vitals-ca.pem")
        ));
    }
}
