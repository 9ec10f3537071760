//! [`SyncRow`]: what `#[derive(D1Sync)]` implements, and [`TableDef`], its run-time form.

use crate::value::{Value, ValueKind};

/// A row type that d1-sync can write to D1. Implement it with `#[derive(D1Sync)]`.
///
/// Every constant is computed at compile time; the SQL is checked against the schema files
/// when the derive names them with `#[d1(schema = "...")]`.
///
/// ```
/// use d1_sync::{D1Sync, SyncRow, Value};
///
/// #[derive(D1Sync)]
/// #[d1(table = "notes")]
/// struct Note {
///     #[d1(primary_key)]
///     id: i64,
///     body: String,
///     #[d1(insert_only)]
///     created_at: i64,
/// }
///
/// assert_eq!(Note::COLUMNS, ["id", "body", "created_at"]);
/// assert_eq!(
///     Note::UPSERT_SQL,
///     r#"INSERT INTO "notes" ("id", "body", "created_at") VALUES (?1, ?2, ?3) ON CONFLICT ("id") DO UPDATE SET "body" = excluded."body""#
/// );
/// assert_eq!(Note::DELETE_SQL, r#"DELETE FROM "notes" WHERE "id" = ?1"#);
/// let n = Note { id: 7, body: "hi".into(), created_at: 1 };
/// assert_eq!(n.key_values(), [Value::Integer(7)]);
/// ```
pub trait SyncRow {
    /// The table's name.
    const TABLE: &'static str;
    /// The column whitelist, in field order.
    const COLUMNS: &'static [&'static str];
    /// The primary-key columns, in key order.
    const PRIMARY_KEY: &'static [&'static str];
    /// Columns written on insert and never changed by an update (`created_at`).
    const INSERT_ONLY: &'static [&'static str];
    /// The kind of value each column stores, in `COLUMNS` order.
    const COLUMN_KINDS: &'static [ValueKind];
    /// `INSERT ... ON CONFLICT (pk) DO UPDATE ...` with `?1..?N` in `COLUMNS` order.
    const UPSERT_SQL: &'static str;
    /// The local write of [`Outbox::save`](crate::Outbox::save): `UPSERT_SQL` whose update
    /// changes the row only when a value differs, so a save that changes nothing writes and
    /// queues nothing.
    const SAVE_SQL: &'static str;
    /// `DELETE ... WHERE pk = ?1 ...` with the key in `PRIMARY_KEY` order.
    const DELETE_SQL: &'static str;
    /// The table's definition as stored beside its queued records (see
    /// [`d1_sync_schema::definition`]): whoever drains the queue applies a record with the
    /// SQL of the definition it was written under.
    const DEFINITION: &'static str;
    /// The id of [`SyncRow::DEFINITION`], which each queued record carries.
    const DEFINITION_ID: i64;
    /// The version column (`#[d1(version)]`), if the table has one: then no write carrying an
    /// older version overwrites a newer one, locally or in D1 (see [`d1_sync_schema::guard`]).
    const VERSION: Option<&'static str> = None;

    /// Sets the version field to `version` (what [`crate::Hlc::stamp`] does): `false` when the
    /// table has no version, or `version` does not fit the field's type.
    fn set_version(&mut self, version: i64) -> bool {
        let _ = version;
        false
    }

    /// The row's values, in `COLUMNS` order.
    fn values(&self) -> Vec<Value>;
    /// The row's primary-key values, in `PRIMARY_KEY` order.
    fn key_values(&self) -> Vec<Value>;

    /// The table's description for a worker's registry.
    fn table_def() -> TableDef {
        TableDef {
            name: Self::TABLE.to_string(),
            columns: Self::COLUMNS.iter().map(|c| c.to_string()).collect(),
            primary_key: Self::PRIMARY_KEY.iter().map(|c| c.to_string()).collect(),
            insert_only: Self::INSERT_ONLY.iter().map(|c| c.to_string()).collect(),
            version: Self::VERSION.map(str::to_string),
        }
    }
}

/// What the worker knows of a table: its name, the columns it may write (the whitelist),
/// its primary key and its insert-only columns. Built from a [`SyncRow`] type or from a
/// table loaded from schema files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    /// Table name.
    pub name: String,
    /// Writable columns.
    pub columns: Vec<String>,
    /// Primary-key columns, in key order.
    pub primary_key: Vec<String>,
    /// Insert-only columns.
    pub insert_only: Vec<String>,
    /// The version column (`#[d1(version)]`), if any: every write of the table is guarded by it.
    pub version: Option<String>,
}

impl TableDef {
    /// From a table loaded from schema files: every writable column, the table's key, and
    /// the columns named in `insert_only` that the table has.
    pub fn from_schema(table: &d1_sync_schema::Table, insert_only: &[&str]) -> TableDef {
        TableDef {
            name: table.name.clone(),
            columns: table.writable_columns().map(|c| c.name.clone()).collect(),
            primary_key: table.primary_key.clone(),
            insert_only: insert_only
                .iter()
                .filter(|c| table.column(c).is_some())
                .map(|c| c.to_string())
                .collect(),
            version: None,
        }
    }

    /// The same table, versioned by `column` (see [`SyncRow::VERSION`]).
    pub fn with_version(mut self, column: impl Into<String>) -> TableDef {
        self.version = Some(column.into());
        self
    }

    /// Where the version column is in `columns`, if the table is versioned and it is there.
    pub fn version_position(&self, columns: &[String]) -> Option<usize> {
        let v = self.version.as_deref()?;
        columns.iter().position(|c| c == v)
    }

    /// Whether `column` is in the whitelist.
    pub fn has_column(&self, column: &str) -> bool {
        self.columns.iter().any(|c| c == column)
    }

    /// The definition as stored beside queued records (see [`SyncRow::DEFINITION`]).
    pub fn definition(&self) -> String {
        fn names(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        d1_sync_schema::definition::definition_json(
            &self.name,
            &names(&self.columns),
            &names(&self.primary_key),
            &names(&self.insert_only),
            self.version.as_deref(),
        )
    }

    /// The id of [`TableDef::definition`].
    pub fn definition_id(&self) -> i64 {
        d1_sync_schema::definition::definition_id(&self.definition())
    }

    /// A definition read back from its stored text; `Err` says what is wrong with it.
    pub fn from_definition(json: &str) -> Result<TableDef, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Stored {
            table: String,
            columns: Vec<String>,
            primary_key: Vec<String>,
            insert_only: Vec<String>,
            #[serde(default)]
            version: Option<String>,
        }
        let s: Stored = serde_json::from_str(json)
            .map_err(|e| format!("a stored table definition is not readable: {e}"))?;
        Ok(TableDef {
            name: s.table,
            columns: s.columns,
            primary_key: s.primary_key,
            insert_only: s.insert_only,
            version: s.version,
        })
    }

    /// How `stored` (the definition records were queued under) differs from this one in what
    /// would change the SQL a drainer sends, or `None` when it does not: another key, other
    /// insert-only columns, or a column this one lacks. A column only this one has is no
    /// difference: records written before it was added simply do not set it.
    ///
    /// ```
    /// use d1_sync::TableDef;
    /// let def = |cols: &[&str], io: &[&str]| TableDef {
    ///     name: "notes".into(),
    ///     columns: cols.iter().map(|c| c.to_string()).collect(),
    ///     primary_key: vec!["id".into()],
    ///     insert_only: io.iter().map(|c| c.to_string()).collect(),
    ///     version: None,
    /// };
    /// let now = def(&["id", "body", "created_at"], &["created_at"]);
    /// assert_eq!(now.difference(&def(&["id", "body"], &[])), Some(
    ///     "insert-only columns: the queued records have none, this registry has created_at".into()));
    /// assert_eq!(now.difference(&def(&["id", "body", "created_at"], &["created_at"])), None);
    /// ```
    pub fn difference(&self, stored: &TableDef) -> Option<String> {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let mut diffs = Vec::new();
        if self.primary_key != stored.primary_key {
            diffs.push(format!(
                "primary key: the queued records have ({}), this registry has ({})",
                stored.primary_key.join(", "),
                self.primary_key.join(", ")
            ));
        }
        let mut mine = self.insert_only.clone();
        let mut theirs = stored.insert_only.clone();
        mine.sort();
        theirs.sort();
        if mine != theirs {
            diffs.push(format!(
                "insert-only columns: the queued records have {}, this registry has {}",
                list(&stored.insert_only),
                list(&self.insert_only)
            ));
        }
        if self.version != stored.version {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
            diffs.push(format!(
                "version column: the queued records have {}, this registry has {}",
                show(&stored.version),
                show(&self.version)
            ));
        }
        let missing: Vec<String> = stored
            .columns
            .iter()
            .filter(|c| !self.has_column(c))
            .cloned()
            .collect();
        if !missing.is_empty() {
            diffs.push(format!(
                "columns the queued records write and this registry lacks: {}",
                missing.join(", ")
            ));
        }
        (!diffs.is_empty()).then(|| diffs.join("; "))
    }
}

/// A type a `#[d1(version)]` field can have: a signed or small unsigned integer, which takes
/// the version [`crate::Hlc::stamp`] gives it (`None` when it does not fit).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold a version: `#[d1(version)]` needs an integer type",
    label = "not an integer",
    note = "a version is an i64 (a counter, a hybrid logical clock from `d1_sync::Hlc`, or a time in ms); i32, i16, i8, u32, u16 and u8 work too"
)]
pub trait VersionField: Sized {
    /// `version` in this type, if it fits.
    fn from_version(version: i64) -> Option<Self>;
}

macro_rules! version_field {
    ($($t:ty),*) => {$(
        impl VersionField for $t {
            fn from_version(version: i64) -> Option<Self> {
                <$t>::try_from(version).ok()
            }
        }
    )*};
}
version_field!(i64, i32, i16, i8, u32, u16, u8);
