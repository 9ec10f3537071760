//! `d1sync`: generate row structs from D1 migrations, inspect and operate an outbox, push it
//! to D1, and run the demo.

mod capture;
mod config;
mod demo;
mod error;
mod generate;
mod migrate;
mod outbox_cmds;
mod progress;
mod push;
mod target;
mod tombstones;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::CliError;

/// Keep Cloudflare D1 in step with a local SQLite database.
#[derive(Parser)]
#[command(name = "d1sync", version, about, long_about = None)]
struct Cli {
    /// How log lines look on stderr: `text`, or `json` for machines. Which lines: `RUST_LOG`
    /// (e.g. `RUST_LOG=d1_sync=debug`); by default info for `run`, warnings for the rest.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Log lines on stderr, filtered by `RUST_LOG` (else `default`).
fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[derive(Subcommand)]
enum Command {
    /// Write Rust row structs from schema files, or check that they are fresh.
    #[command(
        after_help = "Examples:\n  d1sync generate --schema migrations --out src/rows.rs\n  d1sync generate --schema migrations --out src/rows.rs --check   # in CI"
    )]
    Generate(generate::GenerateArgs),
    /// Show the outbox: counts by status, oldest unsynced record, last error, leases.
    #[command(after_help = "Example:\n  d1sync status --db app.db --json")]
    Status(DbArgs),
    /// List, retry or drop dead letters.
    #[command(
        after_help = "Examples:\n  d1sync failed list --db app.db\n  d1sync failed retry --db app.db --id 42\n  d1sync failed drop --db app.db --all"
    )]
    Failed {
        #[command(subcommand)]
        action: outbox_cmds::FailedAction,
    },
    /// List the records D1's version guard refused (`#[d1(version)]`): another device had
    /// written a newer version of their row.
    #[command(after_help = "Example:\n  d1sync conflicts list --db app.db --limit 20")]
    Conflicts {
        #[command(subcommand)]
        action: outbox_cmds::ConflictsAction,
    },
    /// Forget the deletes D1 remembers for versioned tables (tombstones) older than a horizon.
    #[command(after_help = "Example:\n  d1sync tombstones prune --older-than-days 90 --target d1")]
    Tombstones {
        #[command(subcommand)]
        action: tombstones::TombstonesAction,
    },
    /// Drain the outbox once, with a progress bar; exits 1 if a record failed or the target
    /// could not be reached.
    #[command(
        after_help = "Examples:\n  d1sync push --db app.db --schema migrations --target d1\n  d1sync push --db app.db --target sqlite:mirror.db"
    )]
    Push(push::PushArgs),
    /// Run the sync worker until Ctrl-C, then shut down gracefully.
    #[command(
        after_help = "Example:\n  CLOUDFLARE_ACCOUNT_ID=... CLOUDFLARE_API_TOKEN=... D1_DATABASE_ID=... d1sync run --db app.db --target d1"
    )]
    Run(push::PushArgs),
    /// Apply the migrations folder to D1 (or the app's file with --local), recorded as
    /// wrangler records them; `migrate list` shows both sides.
    #[command(
        after_help = "Examples:\n  d1sync migrate --dry-run\n  d1sync migrate                       # D1, from wrangler.toml / wrangler.jsonc and the environment\n  d1sync migrate --local --db app.db\n  d1sync migrate list --db app.db"
    )]
    Migrate(migrate::MigrateArgs),
    /// Build a demo app database from the example migrations, write a realistic workload and
    /// drain it to a local SQLite file (or D1), then verify every table.
    #[command(
        after_help = "Examples:\n  d1sync demo\n  d1sync demo --changes 100000 --dir /tmp/demo\n  d1sync demo --target d1   # with CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_TOKEN, D1_DATABASE_ID"
    )]
    Demo(demo::DemoArgs),
    /// Install triggers that queue raw SQL writes to the schema's tables (other tools, data
    /// migrations), or remove them with --remove.
    #[command(
        after_help = "Examples:\n  d1sync capture --db app.db --schema migrations --insert-only created_at\n  d1sync capture --db app.db --tables messages,sessions\n  d1sync capture --db app.db --remove"
    )]
    Capture(capture::CaptureArgs),
}

/// The database and queue an operator command works on.
#[derive(Args, Clone)]
pub struct DbArgs {
    /// The application's SQLite file.
    #[arg(long)]
    pub db: PathBuf,
    /// The outbox table.
    #[arg(long, default_value = d1_sync::Outbox::DEFAULT_TABLE)]
    pub queue_table: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, level);
    let result = match cli.command {
        Command::Generate(a) => generate::run(&a),
        Command::Status(a) => outbox_cmds::status(&a),
        Command::Failed { action } => outbox_cmds::failed(&action),
        Command::Conflicts { action } => outbox_cmds::conflicts(&action),
        Command::Tombstones { action } => {
            runtime().and_then(|rt| rt.block_on(tombstones::run(&action)))
        }
        Command::Push(a) => runtime().and_then(|rt| rt.block_on(push::push(&a))),
        Command::Run(a) => runtime().and_then(|rt| rt.block_on(push::run(&a))),
        Command::Demo(a) => runtime().and_then(|rt| rt.block_on(demo::run(&a))),
        Command::Migrate(a) => runtime().and_then(|rt| rt.block_on(migrate::run(&a))),
        Command::Capture(a) => capture::run(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("d1sync: error: {e}");
            e.exit_code()
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))
}
