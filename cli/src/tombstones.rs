//! `d1sync tombstones prune`: forget the deletes the target remembers for versioned tables
//! (see `d1_sync::schema::guard`), once they are older than any device stays offline.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use d1_sync::schema::guard;
use d1_sync::target::{Param, Statement};
use d1_sync::SqliteTarget;

use crate::config::ConfigArgs;
use crate::error::CliError;
use crate::target::{d1_client, TargetSpec};

#[derive(Subcommand)]
pub enum TombstonesAction {
    /// Delete the tombstones written more than --older-than-days ago. A device that comes back
    /// later than that with a write older than such a delete brings the deleted row back.
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct PruneArgs {
    /// Keep the tombstones of this many days.
    #[arg(long)]
    older_than_days: u64,
    /// `d1` (with CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_TOKEN, D1_DATABASE_ID) or `sqlite:PATH`.
    #[arg(long, default_value = "d1")]
    target: TargetSpec,
    /// Another D1 API address (a local D1, for example).
    #[arg(long, env = "D1_BASE_URL")]
    d1_base_url: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

/// What a prune did: tombstones deleted, and kept.
fn report(pruned: u64, kept: u64, days: u64) -> ExitCode {
    println!("pruned {pruned} tombstones older than {days} days; {kept} kept");
    ExitCode::SUCCESS
}

pub async fn run(action: &TombstonesAction) -> Result<ExitCode, CliError> {
    let TombstonesAction::Prune(a) = action;
    let seconds = a.older_than_days.saturating_mul(86_400);
    let count = format!(
        "SELECT count(*) AS kept FROM {}",
        d1_sync::schema::sql::quote_ident(guard::TOMBSTONES)
    );
    let no_table = |m: &str| m.contains(&format!("no such table: {}", guard::TOMBSTONES));
    match &a.target {
        TargetSpec::Sqlite(path) => {
            if !path.exists() {
                return Err(CliError::Usage(format!("no file {}", path.display())));
            }
            let target = SqliteTarget::open(path)?;
            let done = target.with_connection(|c| -> d1_sync::rusqlite::Result<(u64, u64)> {
                let pruned = c.execute(&guard::prune_tombstones_sql(), [seconds as i64])?;
                let kept: i64 = c.query_row(&count, [], |r| r.get(0))?;
                Ok((pruned as u64, kept as u64))
            });
            match done {
                Ok((pruned, kept)) => Ok(report(pruned, kept, a.older_than_days)),
                Err(e) if no_table(&e.to_string()) => Ok(report(0, 0, a.older_than_days)),
                Err(e) => Err(CliError::Failed(format!("{}: {e}", path.display()))),
            }
        }
        TargetSpec::D1 => {
            let project = crate::config::load(&a.config)?;
            let d1 = d1_client(a.d1_base_url.as_deref(), project.as_ref())?;
            let statements = [
                Statement {
                    sql: guard::prune_tombstones_sql(),
                    params: vec![Param::Text(seconds.to_string())],
                },
                Statement::new(count),
            ];
            // Harmless to run twice: a lost answer is retried.
            match d1
                .query_retrying(&statements, Duration::from_secs(60))
                .await
            {
                Ok(result) => {
                    let pruned = result[0]["meta"]["changes"].as_u64().unwrap_or(0);
                    let kept = result[1]["results"][0]["kept"].as_u64().unwrap_or(0);
                    Ok(report(pruned, kept, a.older_than_days))
                }
                Err(d1_sync::TargetError::Rejected(m)) if no_table(&m) => {
                    Ok(report(0, 0, a.older_than_days))
                }
                Err(e) => Err(CliError::Failed(format!("D1: {e}"))),
            }
        }
    }
}
