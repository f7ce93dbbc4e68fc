//! The `vitals` command: `demo`, `serve`, `connect`, `probe`, `bench`.
//!
//! Layout: one file per command (`demo.rs`, `serve.rs`, `connect.rs`, `probe.rs`, `bench.rs`; a
//! command's parts in the directory of its name), the shared configuration in `config.rs` (TOML file +
//! environment + flags), what is read from the system in `sys.rs`, logging setup in `logging.rs`, the
//! HTTP status page / Prometheus endpoint under `http/`, and the RTT histogram's text form (how
//! worker processes report it) in `hist.rs`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod child;
mod config;
mod connect;
mod demo;
mod hist;
mod http;
mod logging;
mod probe;
mod redis_server;
mod serve;
mod sys;

/// Long-lived TCP connections that know when they are dead, and lose nothing when they die.
#[derive(Debug, Parser)]
#[command(name = "vitals", version, about)]
struct Cli {
    /// More log output (-v: debug, -vv: trace); `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Logs as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A server and ~50 clients on loopback: heartbeats, a frozen client convicted, cut connections
    /// resumed with nothing lost. Ends by itself in under 30 s. With `--fleet`: three servers sharing
    /// sessions through Redis, one SIGKILLed and one drained, clients resuming on the others.
    Demo(demo::DemoArgs),
    /// Run the server (the daemon).
    Serve(serve::ServeArgs),
    /// Connect to a server: stdin lines become messages, received messages go to stdout.
    Connect(connect::ConnectArgs),
    /// Like ping(8) for a vitals or JSON-heartbeat server.
    Probe(probe::ProbeArgs),
    /// Open many connections and measure heartbeats, RTT and the server's cost.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.verbose, cli.log_json) {
        eprintln!("vitals: cannot set up logging: {e:#}");
        return ExitCode::from(2);
    }
    // A bench child (one of many processes of `vitals bench --processes`) and a worker of
    // `vitals serve --processes` run their tokio side on one thread: dozens of them share the
    // machine's cores (a worker's event loops have threads of their own).
    let one_thread = matches!(&cli.command, Command::Bench(b) if b.child)
        || matches!(&cli.command, Command::Serve(_) if serve::supervisor::Worker::is_this_process());
    let built = if one_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vitals: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Connect(args) => connect::run(args).await,
            Command::Probe(args) => probe::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vitals: {e:#}");
            ExitCode::from(2)
        }
    }
}
