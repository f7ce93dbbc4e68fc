//! `vitals connect` (being written).

use std::process::ExitCode;

/// Arguments of `vitals connect`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {}

/// Runs `vitals connect`.
pub(crate) async fn run(_args: ConnectArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vitals connect` is not built yet")
}
