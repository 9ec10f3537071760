//! `d1sync demo`: the whole flow on the embedded default — a local app database built from the
//! example migrations, a realistic workload written through the typed API, drained to a local
//! SQLite file standing in for D1 (or to D1 itself), and every table verified.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use d1_sync::{Outbox, SqliteTarget, SyncWorker, Target};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::CliError;
use crate::target::d1_from_env;
use d1_sync_example::workload;

const MARKER: &str = ".d1sync-demo";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoTarget {
    /// A local SQLite file standing in for D1 (no account needed).
    Sqlite,
    /// D1 over its REST API (CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_TOKEN, D1_DATABASE_ID).
    D1,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for the demo's files; made if missing, and never one it did not make.
    #[arg(long, default_value = "d1sync-demo")]
    dir: PathBuf,
    /// How many changes to write.
    #[arg(long, default_value_t = 20_000)]
    changes: u64,
    /// Where to sync.
    #[arg(long, value_enum, default_value_t = DemoTarget::Sqlite)]
    target: DemoTarget,
    /// Another D1 API address (a local D1, for example).
    #[arg(long, env = "D1_BASE_URL")]
    d1_base_url: Option<String>,
    /// Records claimed per worker tick.
    #[arg(long, default_value_t = d1_sync::WorkerConfig::default().batch_size)]
    batch_size: usize,
    /// Seed of the workload.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn prepare_dir(dir: &Path) -> Result<(), CliError> {
    let io = |what: &str, e: std::io::Error| {
        CliError::Failed(format!("cannot {what} `{}`: {e}", dir.display()))
    };
    if dir.exists() {
        if !dir.is_dir() {
            return Err(CliError::Usage(format!(
                "`{}` exists and is not a folder",
                dir.display()
            )));
        }
        if !dir.join(MARKER).exists() {
            let empty = std::fs::read_dir(dir)
                .map_err(|e| io("read", e))?
                .next()
                .is_none();
            if !empty {
                return Err(CliError::Usage(format!(
                    "refusing to write into `{}`: it exists and was not made by `d1sync demo`; pass another --dir",
                    dir.display()
                )));
            }
        }
        for name in [
            "app.db",
            "app.db-wal",
            "app.db-shm",
            "target.db",
            "target.db-wal",
            "target.db-shm",
        ] {
            let p = dir.join(name);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| io("remove a file in", e))?;
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
    std::fs::write(
        dir.join(MARKER),
        "made by `d1sync demo`; the demo rewrites this folder's files\n",
    )
    .map_err(|e| io("write into", e))?;
    Ok(())
}

/// The example migrations, embedded in the binary.
fn demo_migrations() -> Result<Vec<d1_sync::schema::migrations::Migration>, CliError> {
    d1_sync::schema::migrations::from_texts(d1_sync_example::MIGRATIONS)
        .map_err(|e| CliError::Failed(format!("the demo's migrations: {e}")))
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

pub async fn run(a: &DemoArgs) -> Result<ExitCode, CliError> {
    if a.changes == 0 {
        return Err(CliError::Usage("--changes must be at least 1".into()));
    }
    let remote = match a.target {
        DemoTarget::Sqlite => None,
        DemoTarget::D1 => Some(d1_from_env(a.d1_base_url.as_deref())?),
    };
    prepare_dir(&a.dir)?;
    let app_path = a.dir.join("app.db");
    // One set of migrations for the app's file and the target, recorded as wrangler does.
    let migrations = demo_migrations()?;
    let table = d1_sync::schema::migrations::DEFAULT_TABLE;
    let mut app = d1_sync::open(&app_path)?;
    d1_sync::migrate::migrate_local(&app, &migrations, table, false)?;
    let target: Arc<dyn Target> = match remote {
        None => {
            let t = SqliteTarget::open(a.dir.join("target.db"))?;
            t.with_connection(|c| d1_sync::migrate::migrate_local(c, &migrations, table, false))?;
            Arc::new(t)
        }
        Some(d1) => {
            // Set-up requests retry transient failures and rate limits.
            d1_sync::migrate::migrate_d1(&d1, &migrations, table, false)
                .await
                .map_err(|e| CliError::Failed(format!("migrating the demo's D1: {e}")))?;
            d1
        }
    };
    println!(
        "d1sync demo: {} changes from {} to {}",
        a.changes,
        app_path.display(),
        target.describe()
    );

    // 1. The application writes.
    let bar = ProgressBar::new(a.changes);
    bar.set_style(style(
        "  writing  [{elapsed_precise}] {bar:40} {pos}/{len} changes  {per_sec}",
    ));
    let outbox = Outbox::new();
    let t0 = Instant::now();
    let written = workload::write(&mut app, &outbox, a.changes, a.seed, 250, |n| {
        bar.set_position(n)
    })?;
    let write_time = t0.elapsed();
    bar.finish_and_clear();
    println!(
        "  wrote      {} changes ({} inserts, {} updates, {} deletes) in {:.2} s, each with its outbox record in the same transaction",
        written.total(),
        written.inserts,
        written.updates,
        written.deletes,
        write_time.as_secs_f64()
    );
    let queued = outbox.counts(&app)?.pending;
    println!(
        "  queued     {queued} records ({} changes coalesced into their row's pending record)",
        written.total().saturating_sub(queued)
    );

    // 2. The worker drains.
    let worker = SyncWorker::builder(&app_path, target.clone())
        .registry(d1_sync_example::registry())
        .batch_size(a.batch_size)
        .poll_interval(Duration::from_millis(50))
        .build()?;
    let total = worker.stats().await?.queue.pending;
    let bar = ProgressBar::new(total);
    bar.set_style(style(
        "  syncing  [{elapsed_precise}] {bar:40} {pos}/{len} rows  {per_sec}  {msg}",
    ));
    let t1 = Instant::now();
    worker.start()?;
    if let Err(e) = crate::progress::follow(&worker, &bar, total, &target.describe(), None).await {
        bar.finish_and_clear();
        worker.shutdown().await?;
        return Err(e);
    }
    let drain_time = t1.elapsed();
    let s = worker.stats().await?;
    worker.shutdown().await?;
    bar.finish_and_clear();
    let statements = if s.statements > 0 {
        format!(", {} statements", s.statements)
    } else {
        String::new()
    };
    println!(
        "  synced     {} records in {} requests ({:.0} rows/request{statements})",
        s.records_synced,
        s.requests,
        s.rows_per_request(),
    );
    println!(
        "  throughput {:.0} rows/s (drained in {:.2} s)",
        s.records_synced as f64 / drain_time.as_secs_f64().max(1e-9),
        drain_time.as_secs_f64()
    );
    println!("  failed     {} records", s.queue.failed);
    if s.records_superseded > 0 {
        println!(
            "  superseded {} records (D1 held a newer version of their row)",
            s.records_superseded
        );
    }

    // 3. Every table on the target equals the local one.
    let registry = d1_sync_example::registry();
    let compared = d1_sync::verify::compare(&app, &*target, &registry)
        .await
        .map_err(|e| CliError::Failed(format!("reading the tables back: {e}")))?;
    if !compared.agrees() {
        let tables: Vec<String> = compared.differing.iter().map(|d| d.to_string()).collect();
        eprintln!(
            "d1sync: error: the target differs from the local database in: {}",
            tables.join(", ")
        );
        return Ok(ExitCode::from(1));
    }
    println!(
        "  verified   all {} tables equal on the target ({} rows, every value and storage class)",
        compared.tables, compared.rows
    );
    if s.queue.failed > 0 {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
