//! The project's wrangler configuration (`wrangler.toml`, `wrangler.jsonc` or `wrangler.json`):
//! which D1 database to use and where its migrations are, so that commands need only the
//! account id and the API token from the environment.
//!
//! Read as wrangler reads it: the top-level `d1_databases[]` entries (`binding`,
//! `database_name`, `database_id`, `migrations_dir`, `migrations_table`), or those of
//! `[env.NAME]`, which does not inherit them. `migrations_dir` is relative to the file.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use crate::error::CliError;

/// The file names looked for in the current folder, in this order.
pub const FILE_NAMES: &[&str] = &["wrangler.toml", "wrangler.jsonc", "wrangler.json"];

/// How to find the project's configuration.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// The wrangler configuration (default: wrangler.toml, wrangler.jsonc or wrangler.json in
    /// the current folder, if there is one).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The D1 database's binding (or name) in the configuration, when it has several.
    #[arg(long)]
    pub binding: Option<String>,
    /// The configuration's environment (`[env.NAME]`).
    #[arg(long)]
    pub env: Option<String>,
}

/// One D1 database of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// The file it was read from.
    pub file: PathBuf,
    /// Its binding.
    pub binding: String,
    /// Its `database_id`, if given.
    pub database_id: Option<String>,
    /// The migrations folder, resolved against the file's folder.
    pub migrations_dir: PathBuf,
    /// The migrations table.
    pub migrations_table: String,
}

/// The database the arguments select: `None` when there is no configuration file (and none
/// was asked for), so commands behave as without one.
pub fn load(args: &ConfigArgs) -> Result<Option<Database>, CliError> {
    let file = match &args.config {
        Some(f) => {
            if !f.is_file() {
                return Err(CliError::Usage(format!(
                    "no configuration file at `{}`",
                    f.display()
                )));
            }
            f.clone()
        }
        None => match FILE_NAMES.iter().map(PathBuf::from).find(|p| p.is_file()) {
            Some(f) => f,
            None if args.binding.is_some() || args.env.is_some() => {
                return Err(CliError::Usage(format!(
                    "--binding and --env need a wrangler configuration, and there is no {} here (or pass --config)",
                    FILE_NAMES.join(", ")
                )))
            }
            None => return Ok(None),
        },
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| CliError::Usage(format!("cannot read `{}`: {e}", file.display())))?;
    let root = parse(&file, &text)?;
    let asked = args.env.is_some() || args.binding.is_some() || args.config.is_some();
    if !asked && root.get("d1_databases").is_none() {
        // A Worker's configuration without D1: nothing for d1sync in it.
        return Ok(None);
    }
    select(&file, &root, args.env.as_deref(), args.binding.as_deref()).map(Some)
}

/// Parses a configuration by its file name: TOML, or JSON with comments and trailing commas.
pub fn parse(file: &Path, text: &str) -> Result<Value, CliError> {
    let shown = file.display();
    if file.extension().is_some_and(|e| e == "toml") {
        let v: toml::Table = toml::from_str(text).map_err(|e| {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("").trim().to_string();
            CliError::Usage(format!("`{shown}` is not valid TOML: {first}"))
        })?;
        serde_json::to_value(v)
            .map_err(|e| CliError::Usage(format!("`{shown}` cannot be read: {e}")))
    } else {
        serde_json::from_str(&strip_jsonc(text)).map_err(|e| {
            CliError::Usage(format!(
                "`{shown}` is not valid JSON (comments and trailing commas allowed): {e}"
            ))
        })
    }
}

/// JSON with comments (`//`, `/* */`) and trailing commas, as plain JSON: comments become
/// spaces (so line and column numbers in errors still point into the original), trailing
/// commas are dropped. Strings are left alone.
pub fn strip_jsonc(text: &str) -> String {
    drop_trailing_commas(&blank_comments(text))
}

/// Calls `f` for each byte of `b` with whether it is inside a string (quotes included).
fn scan(b: &[u8], mut f: impl FnMut(usize, bool)) {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            (start..i).for_each(|k| f(k, true));
        } else {
            f(i, false);
            i += 1;
        }
    }
}

fn blank_comments(text: &str) -> String {
    #[derive(PartialEq)]
    enum In {
        Code,
        Text,
        Line,
        Block,
    }
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let mut state = In::Code;
    let mut i = 0;
    while i < b.len() {
        let next = b.get(i + 1).copied();
        match state {
            In::Code => match (b[i], next) {
                (b'"', _) => state = In::Text,
                (b'/', Some(b'/')) => state = In::Line,
                (b'/', Some(b'*')) => {
                    state = In::Block;
                    out[i] = b' ';
                    out[i + 1] = b' ';
                    i += 1;
                }
                _ => {}
            },
            In::Text => match b[i] {
                b'\\' => i += 1,
                b'"' => state = In::Code,
                _ => {}
            },
            In::Line => {
                if b[i] == b'\n' {
                    state = In::Code;
                }
            }
            In::Block => {
                if b[i] == b'*' && next == Some(b'/') {
                    out[i] = b' ';
                    out[i + 1] = b' ';
                    i += 2;
                    state = In::Code;
                    continue;
                }
            }
        }
        if matches!(state, In::Line | In::Block) && b[i] != b'\n' {
            out[i] = b' ';
        }
        i += 1;
    }
    // Only bytes of comments were replaced, each by a space; a character of several bytes
    // inside a comment became several spaces, so the text is still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

fn drop_trailing_commas(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    scan(b, |i, in_string| {
        if !in_string && b[i] == b',' {
            let next = b[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
            if matches!(next, Some(b'}') | Some(b']')) {
                out[i] = b' ';
            }
        }
    });
    String::from_utf8(out).unwrap_or_default()
}

/// The database of `root` that `env` and `binding` select.
pub fn select(
    file: &Path,
    root: &Value,
    env: Option<&str>,
    binding: Option<&str>,
) -> Result<Database, CliError> {
    let shown = file.display();
    let scope = match env {
        Some(name) => root
            .get("env")
            .and_then(|e| e.get(name))
            .ok_or_else(|| CliError::Usage(format!("`{shown}` has no environment `{name}`")))?,
        None => root,
    };
    let where_ = env.map_or(String::new(), |e| format!(" in environment `{e}`"));
    let entries = scope
        .get("d1_databases")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "`{shown}` defines no d1_databases{where_} (environments do not inherit them)"
            ))
        })?;
    let field = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).map(str::to_string);
    let entry = match binding {
        Some(b) => entries
            .iter()
            .find(|e| {
                field(e, "binding").as_deref() == Some(b)
                    || field(e, "database_name").as_deref() == Some(b)
            })
            .ok_or_else(|| {
                let known: Vec<String> =
                    entries.iter().filter_map(|e| field(e, "binding")).collect();
                CliError::Usage(format!(
                    "`{shown}` has no D1 database with binding or name `{b}`{where_} (it has: {})",
                    known.join(", ")
                ))
            })?,
        None if entries.len() == 1 => &entries[0],
        None => {
            let known: Vec<String> = entries.iter().filter_map(|e| field(e, "binding")).collect();
            return Err(CliError::Usage(format!(
                "`{shown}` has {} D1 databases{where_} ({}): pick one with --binding",
                entries.len(),
                known.join(", ")
            )));
        }
    };
    let binding = field(entry, "binding").ok_or_else(|| {
        CliError::Usage(format!(
            "`{shown}`: a d1_databases entry{where_} has no binding"
        ))
    })?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Database {
        file: file.to_path_buf(),
        database_id: field(entry, "database_id"),
        migrations_dir: base.join(
            field(entry, "migrations_dir")
                .unwrap_or_else(|| d1_sync::schema::migrations::DEFAULT_DIR.to_string()),
        ),
        migrations_table: field(entry, "migrations_table")
            .unwrap_or_else(|| d1_sync::schema::migrations::DEFAULT_TABLE.to_string()),
        binding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonc_comments_and_trailing_commas_are_read() {
        let text = r#"{
          // a comment, with "quotes", a comma, and don't "
          /* ünïcödé in a comment */
          "name": "app", /* block
             comment */
          "url": "https://x//y", "s": "a /* not a comment */ \" ,]",
          "d1_databases": [ { "binding": "DB", }, ],
        }"#;
        let v: Value = serde_json::from_str(&strip_jsonc(text)).unwrap();
        assert_eq!(v["url"], "https://x//y");
        assert_eq!(v["s"], "a /* not a comment */ \" ,]");
        assert_eq!(v["d1_databases"][0]["binding"], "DB");
    }

    #[test]
    fn databases_are_selected_by_env_and_binding() {
        let file = Path::new("/p/wrangler.toml");
        let root = parse(
            file,
            r#"
            name = "app"
            [[d1_databases]]
            binding = "DB"
            database_name = "main"
            database_id = "id-main"
            [[d1_databases]]
            binding = "LOGS"
            database_id = "id-logs"
            migrations_dir = "db/logs"
            migrations_table = "log_migrations"
            [env.staging]
            [[env.staging.d1_databases]]
            binding = "DB"
            database_id = "id-staging"
            "#,
        )
        .unwrap();
        let logs = select(file, &root, None, Some("LOGS")).unwrap();
        assert_eq!(logs.database_id.as_deref(), Some("id-logs"));
        assert_eq!(logs.migrations_dir, Path::new("/p/db/logs"));
        assert_eq!(logs.migrations_table, "log_migrations");
        let by_name = select(file, &root, None, Some("main")).unwrap();
        assert_eq!(by_name.binding, "DB");
        assert_eq!(by_name.migrations_dir, Path::new("/p/migrations"));
        let staging = select(file, &root, Some("staging"), None).unwrap();
        assert_eq!(staging.database_id.as_deref(), Some("id-staging"));
        let several = select(file, &root, None, None).unwrap_err().to_string();
        assert!(
            several.contains("2 D1 databases (DB, LOGS): pick one with --binding"),
            "{several}"
        );
        let none = select(file, &root, None, Some("NOPE"))
            .unwrap_err()
            .to_string();
        assert!(
            none.contains("no D1 database with binding or name `NOPE` (it has: DB, LOGS)"),
            "{none}"
        );
        let env = select(file, &root, Some("prod"), None)
            .unwrap_err()
            .to_string();
        assert!(env.contains("no environment `prod`"), "{env}");
    }

    #[test]
    fn malformed_files_are_one_clear_line() {
        let toml = parse(Path::new("wrangler.toml"), "[[d1_databases]\nbinding =").unwrap_err();
        assert!(
            toml.to_string()
                .starts_with("`wrangler.toml` is not valid TOML: "),
            "{toml}"
        );
        assert!(!toml.to_string().contains('\n'), "{toml}");
        let json = parse(Path::new("wrangler.jsonc"), "{ \"a\": }").unwrap_err();
        assert!(json.to_string().contains("is not valid JSON"), "{json}");
    }
}
