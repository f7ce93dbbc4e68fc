//! Log setup: tracing-subscriber to stderr, level from `-v` or `RUST_LOG`, optionally as JSON lines.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber.
pub(crate) fn init(verbose: u8, json: bool) -> anyhow::Result<()> {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("{e}"))
}
