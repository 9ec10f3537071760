//! The table model: what d1-sync knows about a table, whether it came from a derive or from
//! schema files.

use std::path::PathBuf;

/// SQLite's column affinity, decided from the declared type by SQLite's own rules
/// (<https://www.sqlite.org/datatype3.html#determination_of_column_affinity>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Affinity {
    /// Declared type contains `INT`.
    Integer,
    /// Contains `CHAR`, `CLOB` or `TEXT`.
    Text,
    /// Contains `BLOB`, or no type at all (values are stored as given); also STRICT `ANY`.
    Blob,
    /// Contains `REAL`, `FLOA` or `DOUB`.
    Real,
    /// Anything else (`NUMERIC`, `DECIMAL`, `BOOLEAN`, `DATETIME`, ...).
    Numeric,
}

impl Affinity {
    /// The affinity SQLite gives a column declared with `decl_type`.
    ///
    /// ```
    /// use d1_sync_schema::Affinity;
    /// assert_eq!(Affinity::from_declared_type("BIGINT"), Affinity::Integer);
    /// assert_eq!(Affinity::from_declared_type("VARCHAR(20)"), Affinity::Text);
    /// assert_eq!(Affinity::from_declared_type(""), Affinity::Blob);
    /// assert_eq!(Affinity::from_declared_type("DOUBLE PRECISION"), Affinity::Real);
    /// assert_eq!(Affinity::from_declared_type("BOOLEAN"), Affinity::Numeric);
    /// ```
    pub fn from_declared_type(decl_type: &str) -> Affinity {
        let t = decl_type.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.trim().is_empty() || t.trim() == "ANY" {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    /// The name SQLite's documentation uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::Integer => "INTEGER",
            Affinity::Text => "TEXT",
            Affinity::Blob => "BLOB",
            Affinity::Real => "REAL",
            Affinity::Numeric => "NUMERIC",
        }
    }
}

/// The kind of value a Rust type stores, as far as the schema checks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// Signed 64-bit integers, and `bool` as 0/1.
    Integer,
    /// 64-bit floats.
    Real,
    /// UTF-8 text (also JSON documents).
    Text,
    /// Bytes.
    Blob,
    /// Decided at run time (a user type, or a value that varies).
    Any,
}

impl ValueKind {
    /// Lower-case name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueKind::Integer => "integer",
            ValueKind::Real => "real",
            ValueKind::Text => "text",
            ValueKind::Blob => "blob",
            ValueKind::Any => "any",
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name, as declared.
    pub name: String,
    /// Declared type, as written (`""` when none).
    pub decl_type: String,
    /// Affinity derived from the declared type.
    pub affinity: Affinity,
    /// `NOT NULL` was declared, or the column is an `INTEGER PRIMARY KEY` (never NULL).
    pub not_null: bool,
    /// Default expression, as SQLite reports it.
    pub default: Option<String>,
    /// Position in the primary key, 1-based; `None` when not part of it.
    pub pk_position: Option<usize>,
    /// A generated column (`GENERATED ALWAYS AS ...`), which cannot be written.
    pub generated: bool,
}

impl Column {
    /// An insert must give this column a value: NOT NULL, no default, not generated and not
    /// a rowid alias (which SQLite fills in).
    pub fn is_required(&self, table: &Table) -> bool {
        self.not_null
            && self.default.is_none()
            && !self.generated
            && table.rowid_alias() != Some(self.name.as_str())
    }

    /// Whether this column can be a table's version (`#[d1(version)]`): `INTEGER NOT NULL`,
    /// written, and not in the primary key. `d1sync generate` and `d1sync capture` make the
    /// first such column whose name they are given (by default `version`) the version.
    pub fn can_be_version(&self) -> bool {
        self.pk_position.is_none()
            && self.not_null
            && !self.generated
            && self.affinity == crate::Affinity::Integer
    }
}

/// A foreign key of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// Columns of this table.
    pub from: Vec<String>,
    /// Referenced table.
    pub table: String,
    /// Referenced columns (empty: the referenced table's primary key).
    pub to: Vec<String>,
    /// `ON DELETE` action (`NO ACTION`, `CASCADE`, ...).
    pub on_delete: String,
    /// `ON UPDATE` action.
    pub on_update: String,
}

/// One table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Table name.
    pub name: String,
    /// Columns in declaration order (generated ones included, flagged).
    pub columns: Vec<Column>,
    /// Primary-key columns in key order (empty for a table keyed by rowid only).
    pub primary_key: Vec<String>,
    /// Column sets with a UNIQUE constraint or unique index (primary key excluded).
    pub unique: Vec<Vec<String>>,
    /// Foreign keys.
    pub foreign_keys: Vec<ForeignKey>,
    /// `STRICT` table: values must match the declared type.
    pub strict: bool,
    /// `WITHOUT ROWID` table.
    pub without_rowid: bool,
    /// The schema file whose statements created the table, if known.
    pub defined_in: Option<PathBuf>,
}

impl Table {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The `INTEGER PRIMARY KEY` column that aliases the rowid, if any.
    pub fn rowid_alias(&self) -> Option<&str> {
        if self.without_rowid || self.primary_key.len() != 1 {
            return None;
        }
        let col = self.column(&self.primary_key[0])?;
        col.decl_type
            .eq_ignore_ascii_case("INTEGER")
            .then_some(col.name.as_str())
    }

    /// Names of the columns that can be written (not generated).
    pub fn writable_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.generated)
    }
}

/// Every table of a schema, as the schema files leave it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    /// Tables in the order they were created.
    pub tables: Vec<Table>,
    /// The files applied, in order.
    pub files: Vec<PathBuf>,
    /// The schema's DDL as SQLite keeps it (`sqlite_schema.sql`), in creation order: enough
    /// to rebuild the schema in a fresh database.
    pub ddl: Vec<String>,
}

impl Schema {
    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Table names, in creation order.
    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.iter().map(|t| t.name.as_str())
    }

    /// Asks SQLite to prepare `sql` against this schema; `Err` holds SQLite's message.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// std::fs::write(dir.path().join("s.sql"), "CREATE TABLE t (id TEXT PRIMARY KEY)").unwrap();
    /// let schema = d1_sync_schema::load_schema(dir.path()).unwrap();
    /// assert!(schema.check_statement("DELETE FROM t WHERE id = ?1").is_ok());
    /// assert_eq!(schema.check_statement("DELETE FROM t WHERE nope = ?1").unwrap_err(), "no such column: nope");
    /// ```
    ///
    /// When the statement is fine but a trigger it fires is not, the message names the
    /// trigger: SQLite compiles a table's triggers into every statement that writes it.
    pub fn check_statement(&self, sql: &str) -> Result<(), String> {
        let Err(msg) = self.prepare_without(sql, None)? else {
            return Ok(());
        };
        let triggers: Vec<String> = self.ddl.iter().filter_map(|d| trigger_name(d)).collect();
        for t in &triggers {
            if let Ok(Ok(())) = self.prepare_without(sql, Some(t)) {
                return Err(format!(
                    "trigger `{t}`, which it fires, fails: {msg}; the statement itself is fine, so fix the trigger in the schema files"
                ));
            }
        }
        Err(msg)
    }

    /// Prepares `sql` on the schema rebuilt in memory, leaving out the trigger `without`.
    /// The outer error is the rebuild's, the inner one the statement's.
    fn prepare_without(
        &self,
        sql: &str,
        without: Option<&str>,
    ) -> Result<Result<(), String>, String> {
        let conn = rusqlite::Connection::open_in_memory().map_err(|e| e.to_string())?;
        for ddl in &self.ddl {
            if without.is_some() && trigger_name(ddl).as_deref() == without {
                continue;
            }
            conn.execute_batch(ddl)
                .map_err(|e| format!("rebuilding the schema: {e}"))?;
        }
        let prepared = conn.prepare(sql).map(drop);
        Ok(prepared.map_err(|e| match e {
            rusqlite::Error::SqlInputError { msg, .. } => msg,
            rusqlite::Error::SqliteFailure(_, Some(msg)) => msg,
            e => e.to_string(),
        }))
    }
}

/// The name of the trigger a `CREATE TRIGGER` statement (as `sqlite_schema` keeps it) makes.
fn trigger_name(ddl: &str) -> Option<String> {
    let rest = ddl.trim_start();
    let head: String = rest.chars().take(14).collect();
    if !head.eq_ignore_ascii_case("CREATE TRIGGER") {
        return None;
    }
    let mut words = rest[14..].split_whitespace();
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("IF") {
        words.next(); // NOT
        words.next(); // EXISTS
        name = words.next()?;
    }
    Some(
        name.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']')
            .to_string(),
    )
}

/// Whether a value of `kind` can be stored in `column` of `table` and read back as it was.
///
/// STRICT tables need the declared type (`REAL` also takes integers, `ANY` takes all).
/// Ordinary tables take most things, but a TEXT column turns numbers into text, so numbers
/// there are refused; and a REAL column in a STRICT table is the only place an integer is
/// widened on purpose.
///
/// ```
/// use d1_sync_schema::model::{kind_fits, ValueKind};
/// use d1_sync_schema::Affinity;
/// assert!(kind_fits(ValueKind::Text, Affinity::Numeric, false));   // DATETIME columns
/// assert!(!kind_fits(ValueKind::Integer, Affinity::Text, false));
/// assert!(!kind_fits(ValueKind::Text, Affinity::Integer, true));    // STRICT
/// ```
pub fn kind_fits(kind: ValueKind, affinity: Affinity, strict: bool) -> bool {
    use Affinity as A;
    use ValueKind as K;
    if kind == K::Any || affinity == A::Blob {
        return true;
    }
    if strict {
        return matches!(
            (kind, affinity),
            (K::Integer, A::Integer)
                | (K::Integer, A::Real)
                | (K::Real, A::Real)
                | (K::Text, A::Text)
                | (K::Integer, A::Numeric)
                | (K::Real, A::Numeric)
                | (K::Text, A::Numeric)
        );
    }
    !matches!((kind, affinity), (K::Integer | K::Real, A::Text))
}

/// The Rust type of a column of this affinity: what `d1sync generate` writes, and what the
/// derive suggests when a field's type does not fit. One map for both.
///
/// ```
/// use d1_sync_schema::{model::rust_type_for, Affinity};
/// assert_eq!(rust_type_for(Affinity::Integer, "INTEGER"), "i64");
/// assert_eq!(rust_type_for(Affinity::Numeric, "BOOLEAN"), "bool");
/// // NUMERIC (DECIMAL, DATETIME, ...) keeps text as text and numbers as numbers.
/// assert_eq!(rust_type_for(Affinity::Numeric, "DATETIME"), "d1_sync::Value");
/// ```
pub fn rust_type_for(affinity: Affinity, decl_type: &str) -> &'static str {
    match affinity {
        Affinity::Integer => "i64",
        Affinity::Real => "f64",
        Affinity::Text => "String",
        Affinity::Blob => "Vec<u8>",
        Affinity::Numeric if decl_type.to_ascii_uppercase().contains("BOOL") => "bool",
        Affinity::Numeric => "d1_sync::Value",
    }
}
