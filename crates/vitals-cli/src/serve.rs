//! `vitals serve` (being written).

use std::process::ExitCode;

/// Arguments of `vitals serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {}

/// Runs `vitals serve`.
pub(crate) async fn run(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vitals serve` is not built yet")
}
