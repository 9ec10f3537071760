//! `d1sync status`, `d1sync failed` and `d1sync conflicts`: looking at and operating an outbox.

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use d1_sync::Selection;

use crate::error::CliError;
use crate::target::open_app_db;
use crate::DbArgs;

#[derive(Subcommand)]
pub enum FailedAction {
    /// List dead letters with their errors.
    List {
        #[command(flatten)]
        db: DbArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put dead letters back in line (pending, attempts reset).
    Retry(Which),
    /// Delete dead letters for good.
    Drop(Which),
}

#[derive(Args)]
#[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
pub struct Which {
    #[command(flatten)]
    db: DbArgs,
    /// One dead letter, by queue id.
    #[arg(long)]
    id: Option<i64>,
    /// Every dead letter.
    #[arg(long)]
    all: bool,
}

/// `3h 12m`, `45s`, `120ms`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        format!("{}ms", d.as_millis())
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
    }
}

#[derive(serde::Serialize)]
struct StatusReport {
    database: String,
    queue_table: String,
    #[serde(flatten)]
    counts: d1_sync::Counts,
    oldest_unsynced_age_ms: Option<i64>,
    last_error: Option<String>,
    lease: Option<d1_sync::outbox::Lease>,
    /// Tables whose raw SQL writes are captured into this queue.
    captured_tables: Vec<String>,
    /// Captured tables whose triggers are gone (a migration rebuilt the table): their raw
    /// writes are not queued until the next install makes the triggers again.
    capture_lost: Vec<String>,
    /// Captured tables whose capture no longer fits them, with the reason.
    capture_gaps: Vec<CaptureGap>,
}

/// A captured table whose capture no longer fits it.
#[derive(serde::Serialize)]
struct CaptureGap {
    table: String,
    reason: String,
}

pub fn status(a: &DbArgs) -> Result<ExitCode, CliError> {
    let (conn, outbox) = open_app_db(&a.db, &a.queue_table)?;
    let fail = |e: d1_sync::Error| CliError::Failed(e.to_string());
    let counts = outbox.counts(&conn).map_err(fail)?;
    let report = StatusReport {
        database: a.db.display().to_string(),
        queue_table: a.queue_table.clone(),
        oldest_unsynced_age_ms: counts
            .oldest_unsynced_ms
            .map(|t| (d1_sync::clock::now_ms() - t).max(0)),
        counts,
        last_error: outbox.last_error(&conn).map_err(fail)?,
        lease: outbox.lease(&conn).map_err(fail)?,
        captured_tables: outbox.captured_tables(&conn).map_err(fail)?,
        capture_lost: outbox.lost_capture(&conn).map_err(fail)?,
        capture_gaps: outbox
            .capture_gaps(&conn)
            .map_err(fail)?
            .into_iter()
            .map(|(table, reason)| CaptureGap { table, reason })
            .collect(),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| CliError::Failed(e.to_string()))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let c = &report.counts;
    println!("outbox `{}` in {}", report.queue_table, report.database);
    println!("  pending     {}", c.pending);
    if c.waiting > 0 {
        println!(
            "    waiting   {} (in backoff, or held behind a parent that waits)",
            c.waiting
        );
    }
    if c.in_flight > 0 {
        println!(
            "    in flight {} (in requests sent or about to be; sent again until D1 answers)",
            c.in_flight
        );
    }
    println!(
        "  synced      {} (the newest, kept in the synced log)",
        c.synced
    );
    println!("  failed      {}", c.failed);
    if c.superseded > 0 {
        println!(
            "  superseded  {} (D1 held a newer version of their row: `d1sync conflicts list`)",
            c.superseded
        );
    }
    match report.oldest_unsynced_age_ms {
        Some(ms) => println!(
            "  oldest unsynced record: {} old",
            human(Duration::from_millis(ms as u64))
        ),
        None => println!("  nothing waiting"),
    }
    if let Some(e) = &report.last_error {
        println!("  last error: {e}");
    }
    match &report.lease {
        None => println!("  no worker holds the queue"),
        Some(l) => {
            let left = Duration::from_millis((l.until_ms - d1_sync::clock::now_ms()).max(0) as u64);
            println!(
                "  worker {} holds the queue (lease for {} more)",
                l.owner,
                human(left)
            );
        }
    }
    if report.captured_tables.is_empty() {
        println!("  capture: off (only typed writes are queued)");
    } else {
        println!(
            "  capture: raw SQL writes to {} are queued",
            report.captured_tables.join(", ")
        );
    }
    if !report.capture_lost.is_empty() {
        println!(
            "  capture lost: {} (the triggers went with a rebuilt table; raw SQL writes to it are not queued until the next `d1_sync::open` or worker start makes them again, if the table still fits its struct; `d1sync capture` says why not)",
            report.capture_lost.join(", ")
        );
    }
    for gap in &report.capture_gaps {
        println!(
            "  capture incomplete: {}: {} (capture it again with a struct that fits)",
            gap.table, gap.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn failed(action: &FailedAction) -> Result<ExitCode, CliError> {
    let fail = |e: d1_sync::Error| CliError::Failed(e.to_string());
    match action {
        FailedAction::List { db, limit } => {
            let (conn, outbox) = open_app_db(&db.db, &db.queue_table)?;
            let dead = outbox.failed(&conn, *limit).map_err(fail)?;
            if db.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&dead)
                        .map_err(|e| CliError::Failed(e.to_string()))?
                );
            } else if dead.is_empty() {
                println!("no dead letters");
            } else {
                println!(
                    "{:>8}  {:<24} {:<7} {:>8}  {:<20} error",
                    "id", "table", "op", "attempts", "key"
                );
                for d in &dead {
                    println!(
                        "{:>8}  {:<24} {:<7} {:>8}  {:<20} {}",
                        d.id, d.table, d.op, d.attempts, d.row_key, d.last_error
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        FailedAction::Retry(w) | FailedAction::Drop(w) => {
            let (conn, outbox) = open_app_db(&w.db.db, &w.db.queue_table)?;
            let which = match w.id {
                Some(id) => Selection::Id(id),
                None => Selection::All,
            };
            let retry = matches!(action, FailedAction::Retry(_));
            let n = if retry {
                outbox.retry(&conn, which)
            } else {
                outbox.drop_failed(&conn, which)
            }
            .map_err(fail)?;
            let verb = if retry { "retried" } else { "dropped" };
            if n == 0 {
                if let Some(id) = w.id {
                    return Err(CliError::Failed(format!("no dead letter with id {id}")));
                }
            }
            println!("{verb} {n} dead letter{}", if n == 1 { "" } else { "s" });
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Subcommand)]
pub enum ConflictsAction {
    /// List the newest records the version guard refused, newest first: D1 held the same or a
    /// newer version of their row (or had deleted their parent).
    List {
        #[command(flatten)]
        db: DbArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

pub fn conflicts(action: &ConflictsAction) -> Result<ExitCode, CliError> {
    let ConflictsAction::List { db, limit } = action;
    let (conn, outbox) = open_app_db(&db.db, &db.queue_table)?;
    let list = outbox
        .conflicts(&conn, *limit)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    if db.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).map_err(|e| CliError::Failed(e.to_string()))?
        );
    } else if list.is_empty() {
        println!("no conflicts: D1 took every write");
    } else {
        let show = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        println!(
            "{:>8}  {:<24} {:<7} {:<20} {:>16} {:>16}  why",
            "id", "table", "op", "key", "sent version", "D1 held"
        );
        for c in &list {
            println!(
                "{:>8}  {:<24} {:<7} {:<20} {:>16} {:>16}  {}",
                c.id,
                c.table,
                c.op,
                c.row_key,
                show(c.sent_version),
                show(c.held_version),
                c.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
