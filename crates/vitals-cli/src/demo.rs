//! `vitals demo` (being written).

use std::process::ExitCode;

/// Arguments of `vitals demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {}

/// Runs `vitals demo`.
pub(crate) async fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vitals demo` is not built yet")
}
