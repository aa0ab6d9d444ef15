//! `payrail`: the node, migrations, and (later) the load generator and sandbox.

mod config;
mod node;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "payrail",
    version,
    about = "payrail: a payment-processing runtime on a Kafka journal"
)]
struct Cli {
    /// Configuration file; every key can be overridden by PAYRAIL__<SECTION>__<KEY>.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: create missing topics, apply migrations, serve the API.
    Node,
    /// Apply database migrations and exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let explicit = cli.config.is_some();
    let path = cli.config.unwrap_or_else(|| PathBuf::from("config.toml"));
    let config = match config::Config::load(&path, explicit) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("payrail: configuration error: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("payrail: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node => node::run(config).await,
            Command::Migrate => node::migrate_only(&config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("payrail: {e:#}");
            ExitCode::FAILURE
        }
    }
}
