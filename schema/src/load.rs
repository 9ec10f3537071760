//! Loading schema files (D1 migrations) into the [`Schema`] model.
//!
//! The files are applied, in name order, to an in-memory SQLite and the result is read back
//! with `PRAGMA table_list / table_xinfo / index_list / index_info / foreign_key_list`.
//! SQLite is the parser: whatever SQLite (and so D1) accepts is accepted, and later
//! migrations that `ALTER TABLE` or rebuild a table just work.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::{Batch, Connection};

use crate::model::{Affinity, Column, ForeignKey, Schema, Table};
use crate::sql::quote_ident;

/// Why schema files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A file or folder could not be read.
    #[error("cannot read schema path `{}`: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A folder holds no `.sql` file.
    #[error("no `.sql` files in `{}`", path.display())]
    NoFiles {
        /// The folder.
        path: PathBuf,
    },
    /// A file is not valid UTF-8.
    #[error("schema file `{}` is not valid UTF-8", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// SQLite refused a statement of a file.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Sql {
        /// The file.
        file: PathBuf,
        /// 1-based line of the error (of the statement's start if SQLite gave no offset).
        line: usize,
        /// 1-based column.
        column: usize,
        /// SQLite's message.
        message: String,
    },
    /// Reading the applied schema back failed (an internal error of SQLite or this crate).
    #[error("cannot read the schema back from SQLite: {0}")]
    Inspect(#[from] rusqlite::Error),
}

/// The `.sql` files `path` names: the file itself, or a folder's `*.sql` files (not
/// recursive) in the order wrangler applies D1 migrations: by the number their name starts
/// with (`0002_x.sql` before `10_y.sql`), then by name.
pub fn schema_files(path: &Path) -> Result<Vec<PathBuf>, SchemaError> {
    let io = |source| SchemaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("sql")) && p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(SchemaError::NoFiles {
            path: path.to_path_buf(),
        });
    }
    files.sort_by(|a, b| crate::migrations::order(file_name(a), file_name(b)));
    Ok(files)
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

/// Loads the schema that the files at `path` (a `.sql` file or a folder of them) leave.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("0001_init.sql"), "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER NOT NULL);").unwrap();
/// std::fs::write(dir.path().join("0002_more.sql"), "ALTER TABLE t ADD COLUMN note TEXT;").unwrap();
/// let schema = d1_sync_schema::load_schema(dir.path()).unwrap();
/// let t = schema.table("t").unwrap();
/// assert_eq!(t.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "n", "note"]);
/// assert_eq!(t.primary_key, ["id"]);
/// ```
pub fn load_schema(path: &Path) -> Result<Schema, SchemaError> {
    let files = schema_files(path)?;
    let conn = Connection::open_in_memory()?;
    let mut created_in: HashMap<String, PathBuf> = HashMap::new();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|source| SchemaError::Io {
            path: file.clone(),
            source,
        })?;
        let text =
            String::from_utf8(bytes).map_err(|_| SchemaError::NotUtf8 { path: file.clone() })?;
        apply_file(&conn, file, &text)?;
        for name in table_names(&conn)? {
            created_in.entry(name).or_insert_with(|| file.clone());
        }
    }
    let mut tables = Vec::new();
    for name in table_names(&conn)? {
        let mut table = read_table(&conn, &name)?;
        table.defined_in = created_in.get(&name).cloned();
        tables.push(table);
    }
    let ddl = conn
        .prepare("SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Schema { tables, files, ddl })
}

/// [`load_schema`], once per process for each distinct set of files (keyed by the paths,
/// sizes and modification times), so a crate with many derives reads its migrations once.
pub fn load_schema_cached(path: &Path) -> Result<Arc<Schema>, SchemaError> {
    type Key = Vec<(PathBuf, u64, Option<SystemTime>)>;
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Schema>>>> = OnceLock::new();
    let files = schema_files(path)?;
    let mut key = Vec::with_capacity(files.len());
    for f in &files {
        let meta = std::fs::metadata(f).map_err(|source| SchemaError::Io {
            path: f.clone(),
            source,
        })?;
        key.push((f.clone(), meta.len(), meta.modified().ok()));
    }
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(hit);
    }
    let schema = Arc::new(load_schema(path)?);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, schema.clone());
    }
    Ok(schema)
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Runs every statement of one file; on failure reports where in the file it was.
fn apply_file(conn: &Connection, file: &Path, text: &str) -> Result<(), SchemaError> {
    apply_statements(conn, file, text, &mut |_| {})
}

/// Runs the statements of `text` (the file `file`) one by one, handing each statement's text
/// to `each` once it ran; an error names the file, line and column.
pub(crate) fn apply_statements(
    conn: &Connection,
    file: &Path,
    text: &str,
    each: &mut dyn FnMut(&str),
) -> Result<(), SchemaError> {
    let mut batch = Batch::new(conn, text);
    // Where the statement being run starts, to place errors that carry no offset.
    let mut cursor = 0usize;
    let fail = |offset: usize, message: String| {
        let (line, column) = line_col(text, offset);
        SchemaError::Sql {
            file: file.to_path_buf(),
            line,
            column,
            message,
        }
    };
    loop {
        let mut stmt = match batch.next() {
            Ok(Some(stmt)) => stmt,
            Ok(None) => return Ok(()),
            Err(rusqlite::Error::SqlInputError {
                msg, sql, offset, ..
            }) => {
                // `sql` is the rest of the file from the failing statement on.
                let base = text.len().saturating_sub(sql.len());
                return Err(fail(base + usize::try_from(offset).unwrap_or(0), msg));
            }
            Err(e) => return Err(fail(cursor, sqlite_message(&e))),
        };
        let stmt_text = stmt.expanded_sql().unwrap_or_default();
        let start = text[cursor..]
            .find(stmt_text.trim())
            .map_or(cursor, |p| cursor + p);
        let result = {
            let mut rows = stmt.raw_query();
            loop {
                match rows.next() {
                    Ok(Some(_)) => continue,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        };
        if let Err(e) = result {
            return Err(fail(start, sqlite_message(&e)));
        }
        each(stmt_text.trim());
        cursor = start + stmt_text.trim().len();
    }
}

fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    }
}

fn table_names(conn: &Connection) -> Result<Vec<String>, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
         ORDER BY rowid",
    )?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names)
}

/// Reads one table of a live database into the model: columns, key, unique sets and foreign
/// keys, as `PRAGMA table_xinfo / index_list / foreign_key_list` report them. The worker uses it
/// on the application's own file to learn which tables depend on which.
pub fn read_table(conn: &Connection, name: &str) -> Result<Table, rusqlite::Error> {
    let q = quote_ident(name);
    let (strict, without_rowid): (bool, bool) = conn.query_row(
        "SELECT strict, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
        [name],
        |r| Ok((r.get::<_, i64>(0)? != 0, r.get::<_, i64>(1)? != 0)),
    )?;

    let mut columns = Vec::new();
    let mut stmt = conn.prepare(&format!("PRAGMA table_xinfo({q})"))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let decl_type: String = r.get::<_, Option<String>>(2)?.unwrap_or_default();
        let pk: i64 = r.get(5)?;
        let hidden: i64 = r.get(6)?;
        columns.push(Column {
            name: r.get(1)?,
            affinity: if strict && decl_type.eq_ignore_ascii_case("ANY") {
                Affinity::Blob
            } else {
                Affinity::from_declared_type(&decl_type)
            },
            decl_type,
            not_null: r.get::<_, i64>(3)? != 0,
            default: r.get(4)?,
            pk_position: usize::try_from(pk).ok().filter(|p| *p > 0),
            generated: hidden == 2 || hidden == 3,
        });
    }
    let mut pk: Vec<(usize, String)> = columns
        .iter()
        .filter_map(|c| c.pk_position.map(|p| (p, c.name.clone())))
        .collect();
    pk.sort();
    let primary_key: Vec<String> = pk.into_iter().map(|(_, n)| n).collect();

    let mut unique = Vec::new();
    let mut stmt = conn.prepare(&format!("PRAGMA index_list({q})"))?;
    let indexes = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? != 0,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)? != 0,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (index, is_unique, origin, partial) in indexes {
        if !is_unique || origin == "pk" || partial {
            continue;
        }
        let mut stmt = conn.prepare(&format!("PRAGMA index_info({})", quote_ident(&index)))?;
        let cols = stmt
            .query_map([], |r| r.get::<_, Option<String>>(2))?
            .collect::<Result<Vec<_>, _>>()?;
        // An index on an expression has NULL names: it constrains no plain column set.
        if let Some(cols) = cols.into_iter().collect::<Option<Vec<_>>>() {
            unique.push(cols);
        }
    }

    let mut fks: Vec<(i64, ForeignKey)> = Vec::new();
    let mut stmt = conn.prepare(&format!("PRAGMA foreign_key_list({q})"))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let from: String = r.get(3)?;
        let to: Option<String> = r.get(4)?;
        if let Some((_, fk)) = fks.iter_mut().find(|(i, _)| *i == id) {
            fk.from.push(from);
            fk.to.extend(to);
        } else {
            fks.push((
                id,
                ForeignKey {
                    from: vec![from],
                    table: r.get(2)?,
                    to: to.into_iter().collect(),
                    on_update: r.get(5)?,
                    on_delete: r.get(6)?,
                },
            ));
        }
    }

    let mut table = Table {
        name: name.to_string(),
        columns,
        primary_key,
        unique,
        foreign_keys: fks.into_iter().map(|(_, f)| f).collect(),
        strict,
        without_rowid,
        defined_in: None,
    };
    // PRAGMA says notnull = 0 for an INTEGER PRIMARY KEY, but it is the rowid: never NULL.
    if let Some(alias) = table.rowid_alias().map(str::to_string) {
        if let Some(c) = table.columns.iter_mut().find(|c| c.name == alias) {
            c.not_null = true;
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_every_part_of_the_model() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "0001_init.sql",
            "-- parents\nCREATE TABLE p (id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE);\n\
             CREATE TABLE c (a TEXT NOT NULL, b INTEGER NOT NULL, p_id INTEGER REFERENCES p(id) ON DELETE CASCADE,\n\
               flag BOOLEAN DEFAULT 0, total REAL GENERATED ALWAYS AS (b * 2) VIRTUAL,\n\
               PRIMARY KEY (b, a)) WITHOUT ROWID;\n\
             CREATE TABLE s (k TEXT PRIMARY KEY, v ANY) STRICT;",
        );
        write(
            dir.path(),
            "0002_idx.sql",
            "CREATE UNIQUE INDEX c_pa ON c (p_id, a);",
        );
        let schema = load_schema(dir.path()).unwrap();
        assert_eq!(schema.table_names().collect::<Vec<_>>(), ["p", "c", "s"]);
        assert_eq!(schema.files.len(), 2);

        let p = schema.table("p").unwrap();
        assert_eq!(p.rowid_alias(), Some("id"));
        assert!(
            p.column("id").unwrap().not_null,
            "rowid alias is never NULL"
        );
        assert!(!p.column("id").unwrap().is_required(p));
        assert!(p.column("code").unwrap().is_required(p));
        assert_eq!(p.unique, vec![vec!["code".to_string()]]);
        assert!(p.defined_in.as_ref().unwrap().ends_with("0001_init.sql"));

        let c = schema.table("c").unwrap();
        assert_eq!(c.primary_key, ["b", "a"], "key order, not column order");
        assert!(c.without_rowid && !c.strict);
        assert!(c.column("total").unwrap().generated);
        assert_eq!(c.column("flag").unwrap().affinity, Affinity::Numeric);
        assert_eq!(c.column("flag").unwrap().default.as_deref(), Some("0"));
        assert_eq!(c.unique, vec![vec!["p_id".to_string(), "a".to_string()]]);
        assert_eq!(c.foreign_keys.len(), 1);
        assert_eq!(c.foreign_keys[0].table, "p");
        assert_eq!(c.foreign_keys[0].on_delete, "CASCADE");

        let s = schema.table("s").unwrap();
        assert!(s.strict);
        assert_eq!(s.column("v").unwrap().affinity, Affinity::Blob);
    }

    #[test]
    fn later_migrations_alter_earlier_tables() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "0001.sql",
            "CREATE TABLE t (id TEXT PRIMARY KEY, old TEXT);",
        );
        write(dir.path(), "0002.sql", "ALTER TABLE t RENAME COLUMN old TO new;\nALTER TABLE t ADD COLUMN n INTEGER NOT NULL DEFAULT 0;");
        write(
            dir.path(),
            "0003.sql",
            "CREATE TABLE gone (x); DROP TABLE gone;",
        );
        let schema = load_schema(dir.path()).unwrap();
        let names: Vec<_> = schema.tables[0]
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["id", "new", "n"]);
        assert!(schema.table("gone").is_none());
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "0001.sql",
            "CREATE TABLE ok (id TEXT PRIMARY KEY);\n\nCREATE TABLE bad (id TEXT,, x);\n",
        );
        let err = load_schema(dir.path()).unwrap_err();
        let SchemaError::Sql {
            file,
            line,
            column,
            message,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert!(file.ends_with("0001.sql"));
        assert_eq!((*line, *column), (3, 27), "{err}");
        assert!(message.contains("syntax error"), "{message}");
        assert!(
            err.to_string()
                .contains("0001.sql:3:27: near \",\": syntax error"),
            "{err}"
        );
    }

    #[test]
    fn runtime_error_points_at_the_statement() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.sql",
            "CREATE TABLE t (id TEXT);\n  CREATE TABLE t (id TEXT);",
        );
        let err = load_schema(dir.path()).unwrap_err();
        let SchemaError::Sql {
            line,
            column,
            message,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!((*line, *column), (2, 16), "SQLite points at the name");
        assert_eq!(message, "table t already exists");
    }

    #[test]
    fn error_while_running_points_at_the_statement_start() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.sql",
            "CREATE TABLE t (id TEXT NOT NULL);\n  INSERT INTO t VALUES (NULL);",
        );
        let err = load_schema(dir.path()).unwrap_err();
        let SchemaError::Sql {
            line,
            column,
            message,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!((*line, *column), (2, 3));
        assert_eq!(message, "NOT NULL constraint failed: t.id");
    }

    #[test]
    fn missing_and_empty_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_schema(&dir.path().join("nope")),
            Err(SchemaError::Io { .. })
        ));
        assert!(matches!(
            load_schema(dir.path()),
            Err(SchemaError::NoFiles { .. })
        ));
    }

    #[test]
    fn cache_reloads_when_a_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "1.sql", "CREATE TABLE t (id TEXT PRIMARY KEY);");
        let a = load_schema_cached(dir.path()).unwrap();
        let b = load_schema_cached(dir.path()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        write(
            dir.path(),
            "1.sql",
            "CREATE TABLE t (id TEXT PRIMARY KEY, more TEXT);",
        );
        let c = load_schema_cached(dir.path()).unwrap();
        assert_eq!(c.tables[0].columns.len(), 2);
    }
}
