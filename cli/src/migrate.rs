//! `d1sync migrate`: applies the migrations folder to D1 (or, with `--local`, to the app's
//! file), recorded in `d1_migrations` exactly as wrangler records them; `d1sync migrate list`
//! shows what is applied and pending on both sides.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use d1_sync::migrate::{self, MigrationReport};
use d1_sync::schema::migrations::{self as m, Migration};

use crate::config::ConfigArgs;
use crate::error::CliError;
use crate::target::{d1_client, open_db, schema_dir};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MigrateArgs {
    #[command(subcommand)]
    action: Option<MigrateAction>,
    #[command(flatten)]
    opts: MigrateOpts,
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Each migration of the folder, and whether D1 and the app's file (with --db) have it.
    List(MigrateOpts),
}

#[derive(Args)]
struct MigrateOpts {
    /// The migrations folder (default: the wrangler configuration's migrations_dir, else
    /// `migrations`).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Print what would be applied; apply nothing.
    #[arg(long)]
    dry_run: bool,
    /// Apply to the application's SQLite file (--db) instead of D1.
    #[arg(long, requires = "db")]
    local: bool,
    /// The application's SQLite file.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Another D1 API address (a local D1, for example).
    #[arg(long, env = "D1_BASE_URL")]
    d1_base_url: Option<String>,
    #[command(flatten)]
    config: ConfigArgs,
}

struct Setup {
    files: Vec<Migration>,
    table: String,
    project: Option<crate::config::Database>,
}

fn setup(o: &MigrateOpts) -> Result<Setup, CliError> {
    let project = crate::config::load(&o.config)?;
    let dir = schema_dir(o.schema.as_deref(), project.as_ref());
    let files = m::load(&dir).map_err(|e| CliError::Usage(e.to_string()))?;
    let table = project.as_ref().map_or_else(
        || m::DEFAULT_TABLE.to_string(),
        |p| p.migrations_table.clone(),
    );
    Ok(Setup {
        files,
        table,
        project,
    })
}

fn warn_changed(report: &MigrationReport, target: &str) {
    for name in &report.plan.changed {
        eprintln!(
            "d1sync: warning: `{name}` changed after it was applied to {target}; the change is not applied (wrangler does not notice either): add a new migration instead"
        );
    }
}

fn print(report: &MigrationReport, target: &str, dry_run: bool) {
    warn_changed(report, target);
    if report.applied.is_empty() {
        println!(
            "{target}: no migrations to apply ({} applied)",
            report.plan.applied.len()
        );
        return;
    }
    for name in &report.applied {
        if dry_run {
            println!("{target}: would apply {name}");
        } else {
            println!("{target}: applied {name}");
        }
    }
}

pub async fn run(a: &MigrateArgs) -> Result<ExitCode, CliError> {
    match &a.action {
        Some(MigrateAction::List(o)) => list(o).await,
        None => apply(&a.opts).await,
    }
}

async fn apply(o: &MigrateOpts) -> Result<ExitCode, CliError> {
    let s = setup(o)?;
    if o.local {
        let path = o.db.as_deref().unwrap_or_else(|| std::path::Path::new(""));
        let conn = open_db(path)?;
        let target = format!("`{}`", path.display());
        let report =
            migrate::migrate_local(&conn, &s.files, &s.table, o.dry_run).map_err(CliError::from)?;
        print(&report, &target, o.dry_run);
        return Ok(ExitCode::SUCCESS);
    }
    let d1 = d1_client(o.d1_base_url.as_deref(), s.project.as_ref())?;
    let report = migrate::migrate_d1(&d1, &s.files, &s.table, o.dry_run).await?;
    print(&report, "D1", o.dry_run);
    Ok(ExitCode::SUCCESS)
}

async fn list(o: &MigrateOpts) -> Result<ExitCode, CliError> {
    let s = setup(o)?;
    let local = match &o.db {
        Some(path) => {
            Some(migrate::recorded_local(&open_db(path)?, &s.table).map_err(CliError::from)?)
        }
        None => None,
    };
    let remote = if o.local {
        None
    } else {
        let d1 = d1_client(o.d1_base_url.as_deref(), s.project.as_ref())?;
        Some(migrate::recorded_d1(&d1, &s.table).await?)
    };
    let mark = |side: &Option<migrate::Recorded>, name: &str| match side {
        None => "-",
        Some(r) if r.names.iter().any(|n| n == name) => "applied",
        Some(_) => "pending",
    };
    let width = s
        .files
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(9)
        .max(9);
    println!("{:width$}  {:8}  {:8}", "migration", "D1", "app file");
    for f in &s.files {
        println!(
            "{:width$}  {:8}  {:8}",
            f.name,
            mark(&remote, &f.name),
            mark(&local, &f.name)
        );
    }
    for (side, recorded) in [("D1", &remote), ("the app's file", &local)] {
        if let Some(r) = recorded {
            let plan = m::plan(&s.files, &r.names, &r.checksums);
            for n in &plan.missing_files {
                println!("{n:width$}  recorded on {side}, but no such file in the folder");
            }
            for n in &plan.changed {
                println!("{n:width$}  changed since it was applied on {side}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
