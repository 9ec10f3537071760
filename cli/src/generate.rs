//! `d1sync generate`: row structs from schema files, and `--check` for CI.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use d1_sync_schema::codegen::{self, Freshness, Options};

use crate::error::CliError;

#[derive(Args)]
pub struct GenerateArgs {
    /// A `.sql` file or a folder of migrations, applied in wrangler's order (default: the
    /// wrangler configuration's migrations_dir, else `migrations`).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// The Rust file to write.
    #[arg(long)]
    out: PathBuf,
    /// Compare without writing: print a unified diff and exit 1 when the file is stale.
    #[arg(long)]
    check: bool,
    /// The path the generated `#[d1(schema = "...")]` names, relative to the manifest
    /// directory of the crate holding the file (default: --schema as given).
    #[arg(long)]
    schema_attr: Option<String>,
    /// Only these tables (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// Extra derives for every struct (e.g. serde::Serialize; comma-separated or repeated).
    #[arg(long = "derive", value_delimiter = ',')]
    derives: Vec<String>,
    /// A field type override, `table.column=Type` (repeatable).
    #[arg(long = "type", value_name = "TABLE.COLUMN=TYPE")]
    types: Vec<String>,
    /// Columns made `#[d1(insert_only)]` wherever they appear.
    #[arg(long, value_delimiter = ',', default_value = "created_at")]
    insert_only: Vec<String>,
    /// No insert-only columns.
    #[arg(long, conflicts_with = "insert_only")]
    no_insert_only: bool,
    #[command(flatten)]
    version: crate::target::VersionArgs,
    #[command(flatten)]
    config: crate::config::ConfigArgs,
}

pub fn run(a: &GenerateArgs) -> Result<ExitCode, CliError> {
    let project = crate::config::load(&a.config)?;
    let schema = crate::target::schema_dir(a.schema.as_deref(), project.as_ref());
    let mut type_overrides = BTreeMap::new();
    for t in &a.types {
        let (k, v) = t.split_once('=').ok_or_else(|| {
            CliError::Usage(format!("--type `{t}` must look like table.column=Type"))
        })?;
        type_overrides.insert(k.trim().to_string(), v.trim().to_string());
    }
    let opts = Options {
        schema_attr: a
            .schema_attr
            .clone()
            .unwrap_or_else(|| schema.to_string_lossy().into_owned()),
        tables: a.tables.clone(),
        derives: a.derives.clone(),
        type_overrides,
        insert_only: if a.no_insert_only {
            Vec::new()
        } else {
            a.insert_only.clone()
        },
        version: a.version.names().to_vec(),
    };
    let code = codegen::generate(&schema, &opts).map_err(|e| match e {
        codegen::CodegenError::Schema(s) => CliError::Failed(s.to_string()),
        other => CliError::Usage(other.to_string()),
    })?;
    let structs = code.matches("pub struct ").count();
    if a.check {
        return match codegen::check(&a.out, &code).map_err(|e| CliError::Failed(e.to_string()))? {
            Freshness::Fresh => {
                println!("{} is up to date ({structs} structs)", a.out.display());
                Ok(ExitCode::SUCCESS)
            }
            Freshness::Missing => {
                eprintln!(
                    "d1sync: {} does not exist; run `d1sync generate` without --check",
                    a.out.display()
                );
                Ok(ExitCode::from(1))
            }
            Freshness::Stale(diff) => {
                print!("{diff}");
                eprintln!(
                    "d1sync: {} is stale: the schema or the options changed; run `d1sync generate` without --check",
                    a.out.display()
                );
                Ok(ExitCode::from(1))
            }
        };
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::Failed(format!("cannot create `{}`: {e}", dir.display())))?;
    }
    std::fs::write(&a.out, &code)
        .map_err(|e| CliError::Failed(format!("cannot write `{}`: {e}", a.out.display())))?;
    println!("wrote {} ({structs} structs)", a.out.display());
    Ok(ExitCode::SUCCESS)
}
