//! `vitals probe` (being written).

use std::process::ExitCode;

/// Arguments of `vitals probe`.
#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {}

/// Runs `vitals probe`.
pub(crate) async fn run(_args: ProbeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vitals probe` is not built yet")
}
