//! `payrail`: the node, migrations, the load generator and the journal benchmark.

mod cluster_node;
mod config;
mod dlq;
mod node;
mod status;

use clap::{Parser, Subcommand};

/// How long the process waits for the async runtime's threads once a command is done.
const RUNTIME_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// mimalloc instead of glibc's malloc: a profile of the node under load spent ~17 % of its
/// CPU in glibc's allocator (`_int_malloc`, `malloc_consolidate`, `unlink_chunk`); see
/// BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::io::IsTerminal;
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
    /// Recompute every read model from the journal, print the differences (none expected)
    /// and the ledger's balance per currency. Exit status 1 on any difference.
    Audit,
    /// Reset a pool's read model (analytics or ledger) and replay the journal into it.
    /// Run it with the nodes stopped.
    Rebuild {
        /// analytics | ledger
        pool: String,
    },
    /// A pool's dead letters: records it gave up on after every attempt.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Run the PSP sandbox: a stand-in card processor that calls the node back with signed
    /// webhooks (see psp_sandbox/src/lib.rs for the test payment methods).
    PspSandbox(SandboxArgs),
    /// Generate HTTP load against a node and report throughput, errors and latency.
    Loadtest(payrail_loadtest::LoadtestArgs),
    /// Reference benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A node's status (GET /v1/admin/status) as tables: health, breaker, partitions, lag,
    /// dead letters. Exit 0 when ready, 1 when not ready, 2 when it cannot be read.
    Status(status::StatusArgs),
    /// The cluster: nodes, partitions, owners, epochs, lease expiry, pools' lag per node.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Reads the lease table from PostgreSQL and asks every live node what it serves.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List a pool's dead letters, oldest first.
    List {
        /// analytics | ledger | settlement | notification
        pool: String,
    },
    /// Apply a pool's dead letters (not replayed yet) through its handler, each exactly once.
    Replay {
        /// analytics | ledger | settlement | notification
        pool: String,
        /// Replay only the dead letter of this event.
        #[arg(long)]
        event_id: Option<uuid::Uuid>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Append payment.created records with the node's journal producer and options (no HTTP,
    /// no actors) to a topic of its own: the ceiling of the write path.
    Journal(payrail_loadtest::BenchJournalArgs),
}

#[derive(clap::Args)]
struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    bind: std::net::SocketAddr,
    /// The node's webhook endpoint, e.g. http://127.0.0.1:8080/webhooks/psp/sandbox.
    #[arg(long)]
    webhook_url: String,
    /// Shared secret for webhook signatures (the node's psp.webhook_secret).
    #[arg(long, env = "PAYRAIL_SANDBOX_WEBHOOK_SECRET")]
    webhook_secret: String,
    /// Delay before a final outcome's webhook is sent (ms).
    #[arg(long, default_value_t = 50)]
    webhook_delay_ms: u64,
    /// Delay before pm_card_delayed / pm_card_lost_webhook reach their outcome (ms).
    #[arg(long, default_value_t = 2_000)]
    outcome_delay_ms: u64,
    /// HTTP 500 answers per idempotency key for pm_card_psp_error.
    #[arg(long, default_value_t = 2)]
    error_count: u32,
    /// Webhook delivery attempts at most.
    #[arg(long, default_value_t = 5)]
    webhook_attempts: u32,
}

/// Installs the tracing subscriber: `RUST_LOG` (default `info`) in `log.format`. warp's own
/// two lines per request are silenced (unless `RUST_LOG` names warp): the access log is the
/// one line per request. Text is coloured only on a terminal without `NO_COLOR`.
fn init_logging(options: &config::LogOptions, to_stderr: bool) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let mut filter = tracing_subscriber::EnvFilter::new(&directives);
    if !directives.contains("warp") {
        if let Ok(quiet) = "warp::filters::trace=warn".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let writer = move || -> Box<dyn std::io::Write> {
        if to_stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        }
    };
    // Colour codes only on a terminal: a log written to a file or a pipe (a service manager,
    // a log shipper, `grep key=value`) gets plain text. `NO_COLOR` turns them off anywhere.
    let terminal = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let ansi = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match options.format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The load generator and the sandbox talk to a node over HTTP and need none of the
    // node's config. Config errors are printed before logging starts.
    let config = match &cli.command {
        Command::Loadtest(_) | Command::PspSandbox(_) => None,
        _ => {
            let explicit = cli.config.is_some();
            let path = cli
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from("config.toml"));
            match config::Config::load(&path, explicit) {
                Ok(config) => Some(config),
                Err(message) => {
                    eprintln!("payrail: configuration error: {message}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    // `payrail cluster status --json` and `payrail status --json` print JSON on stdout: their
    // logs go to stderr.
    let logs_to_stderr = matches!(cli.command, Command::Cluster(_) | Command::Status(_));
    let log = config.as_ref().map(|c| c.log.clone()).unwrap_or_default();
    init_logging(&log, logs_to_stderr);
    payrail_http::set_access_log(log.access_log);
    if let Command::PspSandbox(args) = cli.command {
        return run_sandbox(args);
    }
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
    if let (Command::Status(args), Some(config)) = (&cli.command, &config) {
        return runtime.block_on(status::run(config, args));
    }
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
            (Command::Audit, Some(config)) => {
                let pool = node::connect(&config).await?;
                let topic = config.journal.topic(node::PAYMENT_EVENTS);
                if payrail_pools::audit::audit(&config.journal, &topic, &pool).await? {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("the audit found differences"))
                }
            }
            (Command::Dlq(command), Some(config)) => {
                let db = node::connect(&config).await?;
                node::migrate(&db).await?;
                match command {
                    DlqCommand::List { pool } => dlq::list(&config, &db, &pool).await,
                    DlqCommand::Replay { pool, event_id } => {
                        dlq::replay(&config, &db, &pool, event_id).await
                    }
                }
            }
            (Command::Rebuild { pool }, Some(config)) => {
                let db = node::connect(&config).await?;
                node::migrate(&db).await?;
                let topic = config.journal.topic(node::PAYMENT_EVENTS);
                payrail_pools::audit::rebuild(
                    &config.journal,
                    &topic,
                    config.supervisor.restart,
                    &db,
                    &pool,
                )
                .await?;
                Ok(())
            }
            (Command::Cluster(ClusterCommand::Status { json }), Some(config)) => {
                let db = node::connect(&config).await?;
                node::migrate(&db).await?;
                cluster_node::print_status(&config, db, json).await
            }
            (Command::PspSandbox(_), _) | (Command::Status(_), _) => Ok(()),
            (_, None) => Err(anyhow::anyhow!("no configuration loaded")),
        }
    });
    // Dropping the runtime would wait without bound for its blocking threads (librdkafka
    // clients torn down against an unreachable broker among them); the node has flushed
    // and stopped what matters by now, so the exit is bounded instead.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("payrail: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_sandbox(args: SandboxArgs) -> ExitCode {
    if args.webhook_secret.len() < 16 {
        eprintln!("payrail psp-sandbox: --webhook-secret must be at least 16 characters");
        return ExitCode::from(2);
    }
    let options = payrail_psp_sandbox::SandboxOptions {
        bind: args.bind,
        webhook_url: args.webhook_url,
        webhook_secret: args.webhook_secret,
        webhook_delay_ms: args.webhook_delay_ms,
        outcome_delay_ms: args.outcome_delay_ms,
        error_count: args.error_count,
        webhook_attempts: args.webhook_attempts,
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
    match runtime.block_on(payrail_psp_sandbox::run(options, node::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("payrail psp-sandbox: {e}");
            ExitCode::FAILURE
        }
    }
}
