//! `vitals bench` (being written).

use std::process::ExitCode;

/// Arguments of `vitals bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {}

/// Runs `vitals bench`.
pub(crate) async fn run(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vitals bench` is not built yet")
}
