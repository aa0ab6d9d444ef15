//! `payrail`: the node, migrations, the load generator and the journal benchmark.

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
    /// Generate HTTP load against a node and report throughput, errors and latency.
    Loadtest(payrail_loadtest::LoadtestArgs),
    /// Reference benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Append payment.created records with the node's journal producer and options (no HTTP,
    /// no actors) to a topic of its own: the ceiling of the write path.
    Journal(payrail_loadtest::BenchJournalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // The load generator talks to a node over HTTP and needs none of the node's config.
    let config = match &cli.command {
        Command::Loadtest(_) => None,
        _ => {
            let explicit = cli.config.is_some();
            let path = cli.config.unwrap_or_else(|| PathBuf::from("config.toml"));
            match config::Config::load(&path, explicit) {
                Ok(config) => Some(config),
                Err(message) => {
                    eprintln!("payrail: configuration error: {message}");
                    return ExitCode::from(2);
                }
            }
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
        match (cli.command, config) {
            (Command::Node, Some(config)) => node::run(config).await,
            (Command::Migrate, Some(config)) => node::migrate_only(&config).await,
            (Command::Loadtest(args), _) => {
                let report = payrail_loadtest::http_load::run(&args).await?;
                payrail_loadtest::print_report(&report, args.json)?;
                Ok(())
            }
            (Command::Bench(BenchCommand::Journal(args)), Some(config)) => {
                let report = payrail_loadtest::bench::run(&config.journal, &args).await?;
                payrail_loadtest::print_report(&report, args.json)?;
                Ok(())
            }
            (_, None) => Err(anyhow::anyhow!("no configuration loaded")),
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
