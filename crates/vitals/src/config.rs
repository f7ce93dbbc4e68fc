//! Configuration of the server and the client, with the defaults an operator would expect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use vitals_proto::{AuthToken, Config as ProtoConfig, JsonConfig, LivenessConfig};

use crate::backoff::BackoffConfig;
use crate::tls::ClientTls;

/// Which wire protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// vitals' binary frames: negotiated timing, sessions, lossless resume.
    #[default]
    Binary,
    /// The classic JSON heartbeat (`{"ping":N}` / `{"pong":N}`): liveness only, no sessions.
    Json,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:7878`.
    pub listen: SocketAddr,
    /// Wire protocol. Default binary.
    pub codec: Codec,
    /// Binary-protocol settings: liveness proposal, limits, sessions, and the timing policy the server
    /// grants and enforces.
    pub proto: ProtoConfig,
    /// JSON-mode settings.
    pub json: JsonConfig,
    /// Most open connections; beyond it a new connection gets a CLOSE (`ServerFull`) and is closed.
    /// Default 100,000.
    pub max_connections: usize,
    /// Event-loop threads (each with its own SO_REUSEPORT listener). Default: available cores.
    pub loops: usize,
    /// Close connections after this age (±10 % jitter) so that load rebalances; clients resume.
    /// Default none.
    pub max_connection_age: Option<Duration>,
    /// Tick of the loops' timer wheels. Default 1 ms.
    pub tick: Duration,
    /// Most bytes queued for a connection whose socket does not drain; beyond it the connection is
    /// closed with [`DisconnectReason::WriteStall`](crate::DisconnectReason::WriteStall). Default 4 MiB.
    pub max_write_buffer: usize,
    /// Serve TLS with this rustls configuration (see
    /// [`tls::server_config_from_pem_files`](crate::tls::server_config_from_pem_files)). Every
    /// connection must then be TLS; a plaintext peer is closed with
    /// [`DisconnectReason::Tls`](crate::DisconnectReason::Tls). Default none (plaintext).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            codec: Codec::Binary,
            proto: ProtoConfig::default(),
            json: JsonConfig::default(),
            max_connections: 100_000,
            loops: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_connection_age: None,
            tick: Duration::from_millis(1),
            max_write_buffer: 4 << 20,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// The liveness settings in force for `codec`.
    pub fn liveness(&self) -> LivenessConfig {
        match self.codec {
            Codec::Binary => self.proto.liveness,
            Codec::Json => self.json.liveness,
        }
    }

    /// Sets interval and timeout for both codecs, and widens the binary codec's grant policy so that
    /// clients proposing these values get them (the policy's bounds are only ever widened here).
    pub fn with_timing(mut self, interval: Duration, timeout: Duration) -> Self {
        self.proto.liveness.interval = interval;
        self.proto.liveness.timeout = timeout;
        self.json.liveness.interval = interval;
        self.json.liveness.timeout = timeout;
        let policy = &mut self.proto.policy;
        policy.min_interval = policy.min_interval.min(interval);
        policy.max_interval = policy.max_interval.max(interval);
        policy.min_timeout = policy.min_timeout.min(timeout);
        policy.max_timeout = policy.max_timeout.max(timeout);
        self
    }

    /// Requires this pre-shared token in every client's HELLO (binary codec; sets
    /// `proto.auth_token`). A HELLO without it or with another one is refused with close code
    /// `AuthFailed` and counted in `vitals_auth_failures_total`. Send it over TLS only: it travels in
    /// clear in HELLO.
    pub fn with_auth_token(mut self, token: AuthToken) -> Self {
        self.proto.auth_token = Some(token);
        self
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server address.
    pub server: SocketAddr,
    /// Wire protocol. Default binary.
    pub codec: Codec,
    /// Binary-protocol settings (the liveness values are a proposal; the server's grant wins).
    pub proto: ProtoConfig,
    /// JSON-mode settings.
    pub json: JsonConfig,
    /// Connect attempt timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Reconnect after the connection dies. Default true.
    pub reconnect: bool,
    /// Local address to connect from (e.g. another 127.0.0.x to get more ephemeral ports). Default: the
    /// system's choice.
    pub bind: Option<std::net::IpAddr>,
    /// Speak TLS with this configuration and server name (see
    /// [`tls::client_config_from_ca_file`](crate::tls::client_config_from_ca_file)). Default none
    /// (plaintext).
    pub tls: Option<ClientTls>,
}

impl ClientConfig {
    /// Defaults for a server at `server`.
    pub fn new(server: SocketAddr) -> Self {
        ClientConfig {
            server,
            codec: Codec::Binary,
            proto: ProtoConfig::default(),
            json: JsonConfig::default(),
            connect_timeout: Duration::from_secs(5),
            backoff: BackoffConfig::default(),
            reconnect: true,
            bind: None,
            tls: None,
        }
    }

    /// Sets the proposed interval and timeout for both codecs.
    pub fn with_timing(mut self, interval: Duration, timeout: Duration) -> Self {
        self.proto.liveness.interval = interval;
        self.proto.liveness.timeout = timeout;
        self.json.liveness.interval = interval;
        self.json.liveness.timeout = timeout;
        self
    }

    /// Presents this pre-shared token in HELLO (binary codec; sets `proto.auth_token`).
    pub fn with_auth_token(mut self, token: AuthToken) -> Self {
        self.proto.auth_token = Some(token);
        self
    }
}
