//! `d1sync capture`: installs (or, with `--remove`, removes) the triggers that queue raw SQL
//! writes to the schema's tables, so writes by other tools reach D1 too.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::ConfigArgs;
use crate::error::CliError;
use crate::target::{open_db, schema_dir, schema_registry, VersionArgs};

#[derive(Args)]
pub struct CaptureArgs {
    /// The application's SQLite file.
    #[arg(long)]
    db: PathBuf,
    /// Schema files (a `.sql` file or a folder of migrations): the tables to capture
    /// (default: the wrangler configuration's migrations_dir, else `migrations`).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Only these tables.
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// Columns never changed by an update, as the app's structs mark them (default: from the
    /// definitions stored with the queue, else none). The app's worker refuses records whose
    /// definition disagrees with its own, so say the same here.
    #[arg(long, value_delimiter = ',')]
    insert_only: Option<Vec<String>>,
    /// Version columns, as `d1sync generate` marks them (the definitions stored with the
    /// queue win): a captured raw write then carries its row's version, and a typed write of
    /// the generated struct leans on the trigger.
    #[command(flatten)]
    version: VersionArgs,
    /// The outbox table.
    #[arg(long, default_value = d1_sync::Outbox::DEFAULT_TABLE)]
    queue_table: String,
    /// Remove the capture triggers instead.
    #[arg(long)]
    remove: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run(a: &CaptureArgs) -> Result<ExitCode, CliError> {
    let conn = open_db(&a.db)?;
    let outbox = d1_sync::Outbox::with_table(&a.queue_table);
    let stored = outbox.definitions(&conn)?;
    let project = crate::config::load(&a.config)?;
    let dir = schema_dir(a.schema.as_deref(), project.as_ref());
    let registry = schema_registry(&dir, a.insert_only.as_deref(), a.version.names(), &stored)?;
    let mut names: Vec<String> = registry.names().map(str::to_string).collect();
    if !a.tables.is_empty() {
        if let Some(t) = a.tables.iter().find(|t| registry.get(t).is_none()) {
            return Err(CliError::Usage(format!(
                "the schema at `{}` has no table `{t}` with a primary key; it has {}",
                dir.display(),
                names.join(", ")
            )));
        }
        names.retain(|n| a.tables.contains(n));
    }
    for name in &names {
        if a.remove {
            outbox.uncapture(&conn, name)?;
        } else if let Some(def) = registry.get(name) {
            outbox.capture_table(&conn, def)?;
        }
    }
    println!(
        "{} writes to {} table(s) into `{}`: {}",
        if a.remove {
            "no longer capturing"
        } else {
            "capturing"
        },
        names.len(),
        a.queue_table,
        names.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
