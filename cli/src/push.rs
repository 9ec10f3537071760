//! `d1sync push` (drain once) and `d1sync run` (until Ctrl-C), for any project's outbox: the
//! tables come from its schema files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use d1_sync::{SyncWorker, Target};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::ConfigArgs;
use crate::error::CliError;
use crate::outbox_cmds::human;
use crate::target::{open_app_db, open_target, schema_dir, schema_registry, TargetSpec};

#[derive(Args)]
pub struct PushArgs {
    /// The application's SQLite file.
    #[arg(long)]
    db: PathBuf,
    /// Schema files (a `.sql` file or a folder of migrations): the tables the worker may write
    /// (default: the wrangler configuration's migrations_dir, else `migrations`).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// `d1` (with CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_TOKEN, D1_DATABASE_ID) or `sqlite:PATH`.
    #[arg(long, default_value = "d1")]
    target: TargetSpec,
    /// Another D1 API address (a local D1, for example).
    #[arg(long, env = "D1_BASE_URL")]
    d1_base_url: Option<String>,
    /// The outbox table.
    #[arg(long, default_value = d1_sync::Outbox::DEFAULT_TABLE)]
    queue_table: String,
    /// Columns never changed by an update. Not needed: records carry the definition of their
    /// table they were queued under, which says. Given, it must agree with those definitions
    /// (the worker pauses and names the difference otherwise); it also applies to records
    /// queued without one (by `Outbox::enqueue_raw`, or by d1-sync before queue version 4).
    #[arg(long, value_delimiter = ',')]
    insert_only: Option<Vec<String>>,
    /// `push`: give up when the target stays unreachable this long (seconds).
    #[arg(long, default_value_t = 30)]
    give_up_after: u64,
    #[command(flatten)]
    config: ConfigArgs,
}

fn worker(a: &PushArgs) -> Result<(SyncWorker, Arc<dyn Target>), CliError> {
    // Refuses a missing file, a non-SQLite file or a too new queue before anything is created.
    let stored = {
        let (conn, outbox) = open_app_db(&a.db, &a.queue_table)?;
        outbox.definitions(&conn)?
    };
    let project = crate::config::load(&a.config)?;
    let dir = schema_dir(a.schema.as_deref(), project.as_ref());
    let registry = schema_registry(&dir, a.insert_only.as_deref(), &[], &stored)?;
    let target = open_target(&a.target, a.d1_base_url.as_deref(), project.as_ref())?;
    let mut w = SyncWorker::builder(&a.db, target.clone()).registry(registry);
    if let Some(p) = &project {
        w = w.migrations_table(&p.migrations_table);
    }
    let w = w
        .outbox(d1_sync::Outbox::with_table(&a.queue_table))
        .poll_interval(Duration::from_millis(200))
        .build()?;
    Ok((w, target))
}

pub async fn push(a: &PushArgs) -> Result<ExitCode, CliError> {
    let (worker, target) = worker(a)?;
    let before = worker.stats().await?;
    let total = before.queue.pending;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} rows  {per_sec}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    worker.start()?;
    let started = Instant::now();
    let outcome = crate::progress::follow(
        &worker,
        &bar,
        total,
        &target.describe(),
        Some(Duration::from_secs(a.give_up_after)),
    )
    .await;
    bar.finish_and_clear();
    let s = worker.stats().await?;
    worker.shutdown().await?;
    outcome?;
    let took = started.elapsed();
    println!(
        "pushed {} rows to {} in {} requests ({:.0} rows/request) in {}; {} pending, {} failed{}",
        s.records_synced,
        target.describe(),
        s.requests,
        s.rows_per_request(),
        human(took),
        s.queue.pending,
        s.queue.failed,
        superseded(s.records_superseded)
    );
    if s.records_failed > 0 || s.queue.failed > before.queue.failed {
        eprintln!(
            "d1sync: {} record(s) failed; see `d1sync failed list --db {}`",
            s.records_failed,
            a.db.display()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(a: &PushArgs) -> Result<ExitCode, CliError> {
    let (worker, target) = worker(a)?;
    worker.start()?;
    eprintln!(
        "d1sync: syncing {} to {}; Ctrl-C to stop",
        a.db.display(),
        target.describe()
    );
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen for Ctrl-C: {e}")))?;
    eprintln!("d1sync: stopping");
    let s = worker.stats().await?;
    worker.shutdown().await?;
    println!(
        "synced {} rows in {} requests; {} pending, {} failed{}",
        s.records_synced,
        s.requests,
        s.queue.pending,
        s.queue.failed,
        superseded(s.records_superseded)
    );
    Ok(ExitCode::SUCCESS)
}

/// `, N superseded (...)` when D1's version guard refused records, else nothing.
fn superseded(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {n} superseded by newer versions in D1 (`d1sync conflicts list`)")
    }
}
