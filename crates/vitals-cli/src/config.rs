//! Configuration shared by the commands: TOML file + environment + flags.
//!
//! [`TimingArgs`] are the liveness flags every command that opens connections takes (`serve`, `demo`,
//! `connect`, `probe`, `bench`), so they spell the same everywhere. Durations are humantime strings
//! ("250ms", "30s").

use std::time::Duration;

use vitals::Codec;

/// Heartbeat timing and wire protocol.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TimingArgs {
    /// Ping after this much silence from the peer.
    #[arg(long, env = "VITALS_INTERVAL", value_parser = parse_duration, default_value = "1s")]
    pub(crate) interval: Duration,
    /// Declare the peer dead after this much silence (must exceed the interval).
    #[arg(long, env = "VITALS_TIMEOUT", value_parser = parse_duration, default_value = "3s")]
    pub(crate) timeout: Duration,
    /// Wire protocol: `binary` (sessions, resume) or `json` (classic `{"ping":N}` peers).
    #[arg(long, env = "VITALS_CODEC", value_parser = parse_codec, default_value = "binary")]
    pub(crate) codec: Codec,
}

impl TimingArgs {
    /// Rejects combinations that cannot work, saying what to change.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if self.interval.is_zero() {
            anyhow::bail!("--interval must be greater than zero (e.g. --interval 1s)");
        }
        if self.timeout <= self.interval {
            anyhow::bail!(
                "--timeout ({}) must be greater than --interval ({}); e.g. --timeout {}",
                humantime::format_duration(self.timeout),
                humantime::format_duration(self.interval),
                humantime::format_duration(self.interval * 3)
            );
        }
        Ok(())
    }
}

/// Parses a humantime duration ("250ms", "30s", "1m").
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); try e.g. 250ms, 30s, 1m"))
}

/// Parses `binary` or `json`.
pub(crate) fn parse_codec(s: &str) -> Result<Codec, String> {
    match s {
        "binary" => Ok(Codec::Binary),
        "json" => Ok(Codec::Json),
        other => Err(format!("unknown codec `{other}`: use `binary` or `json`")),
    }
}
