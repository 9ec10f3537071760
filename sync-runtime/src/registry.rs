//! The tables a worker may write: their whitelists, keys and insert-only columns.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::change::RawRecord;
use crate::error::Error;
use crate::row::{SyncRow, TableDef};

/// The set of tables a worker syncs, by name. A queued record naming a table that is not
/// here, or a column that is not in its table's whitelist, is dead-lettered with the reason.
///
/// ```
/// use d1_sync::{D1Sync, Registry};
/// #[derive(D1Sync)]
/// struct Note { #[d1(primary_key)] id: i64, body: String }
/// let registry = Registry::new().with::<Note>();
/// assert!(registry.get("note").unwrap().has_column("body"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tables: BTreeMap<String, Arc<TableDef>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds the table of a row type.
    pub fn with<T: SyncRow>(mut self) -> Registry {
        self.register::<T>();
        self
    }

    /// Adds the table of a row type.
    pub fn register<T: SyncRow>(&mut self) -> &mut Registry {
        self.add(T::table_def())
    }

    /// Adds (or replaces) a table.
    pub fn add(&mut self, def: TableDef) -> &mut Registry {
        self.tables.insert(def.name.clone(), Arc::new(def));
        self
    }

    /// Every table of a schema that has a primary key, with `insert_only` columns (e.g.
    /// `["created_at"]`) wherever a table has them. This is how the CLI drains any project's
    /// outbox from its migrations alone.
    pub fn from_schema(schema: &d1_sync_schema::Schema, insert_only: &[&str]) -> Registry {
        let mut r = Registry::new();
        for t in schema.tables.iter().filter(|t| !t.primary_key.is_empty()) {
            r.add(TableDef::from_schema(t, insert_only));
        }
        r
    }

    /// The table named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<TableDef>> {
        self.tables.get(name)
    }

    /// Table names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    /// Whether no table is registered.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Takes each table's insert-only columns from `stored`, the definitions records were
    /// queued under ([`crate::Outbox::definitions`]), the newest last. For drainers that know
    /// their tables from schema files only, which do not say which columns are insert-only:
    /// `d1sync push` and `d1sync run` do this unless given `--insert-only`.
    pub fn adopt_insert_only(&mut self, stored: &[TableDef]) -> &mut Registry {
        for def in stored {
            if let Some(mine) = self.tables.get_mut(&def.name) {
                if mine.insert_only != def.insert_only {
                    Arc::make_mut(mine).insert_only = def.insert_only.clone();
                }
            }
        }
        self
    }

    /// Makes each table's first column named in `names` that can be a version (`INTEGER NOT
    /// NULL`, not in the key; see [`d1_sync_schema::Column::can_be_version`]) its version
    /// column, as `d1sync generate` marks it `#[d1(version)]`: so a registry read from schema
    /// files describes the tables as the generated structs do.
    pub fn adopt_version_columns(
        &mut self,
        schema: &d1_sync_schema::Schema,
        names: &[&str],
    ) -> &mut Registry {
        for (name, mine) in self.tables.iter_mut() {
            let Some(table) = schema.table(name) else {
                continue;
            };
            let column = table.columns.iter().find(|c| {
                c.can_be_version() && names.contains(&c.name.as_str()) && mine.has_column(&c.name)
            });
            if let Some(c) = column {
                if mine.version.as_deref() != Some(c.name.as_str()) {
                    Arc::make_mut(mine).version = Some(c.name.clone());
                }
            }
        }
        self
    }

    /// Takes the version column (`#[d1(version)]`) of each table from `stored`, the definitions
    /// records were queued under, where this registry's table has that column: a registry read
    /// from schema files alone cannot tell which column is the version.
    pub fn adopt_version(&mut self, stored: &[TableDef]) -> &mut Registry {
        for def in stored {
            if let Some(mine) = self.tables.get_mut(&def.name) {
                let usable = def.version.as_ref().is_none_or(|v| mine.has_column(v));
                if mine.version != def.version && usable {
                    Arc::make_mut(mine).version = def.version.clone();
                }
            }
        }
        self
    }
}

#[doc(hidden)]
/// The definitions a batch of records is checked against: the drainer's registry, and the
/// definitions stored with the records, which decide their SQL.
#[derive(Debug)]
pub struct Definitions<'a> {
    registry: &'a Registry,
    stored: HashMap<i64, Result<Arc<TableDef>, String>>,
}

impl<'a> Definitions<'a> {
    /// The registry alone: for records queued without a stored definition.
    pub fn of(registry: &'a Registry) -> Definitions<'a> {
        Definitions {
            registry,
            stored: HashMap::new(),
        }
    }

    /// The registry and the stored definitions `stored` (id, text). A stored definition of a
    /// table the registry has must agree with it ([`TableDef::difference`]), or this is
    /// [`Error::DefinitionMismatch`]: nothing of the batch is sent.
    pub fn with_stored(
        registry: &'a Registry,
        stored: impl IntoIterator<Item = (i64, String)>,
    ) -> Result<Definitions<'a>, Error> {
        let mut out = Definitions::of(registry);
        for (id, text) in stored {
            let def = TableDef::from_definition(&text);
            if let Ok(def) = &def {
                if let Some(difference) = registry.get(&def.name).and_then(|r| r.difference(def)) {
                    return Err(Error::DefinitionMismatch {
                        table: def.name.clone(),
                        difference,
                    });
                }
            }
            out.stored.insert(id, def.map(Arc::new));
        }
        Ok(out)
    }

    /// The definition `record` is applied with: the stored one it was written under, else
    /// the registry's. `Err` is why it can never ship.
    pub fn table(&self, record: &RawRecord) -> Result<&Arc<TableDef>, String> {
        let registered = self.registry.get(&record.table).ok_or_else(|| {
            let known: Vec<&str> = self.registry.names().collect();
            format!(
                "unknown table `{}`: the worker syncs {}",
                record.table,
                if known.is_empty() {
                    "no tables".to_string()
                } else {
                    known.join(", ")
                }
            )
        })?;
        let Some(id) = record.def else {
            return Ok(registered);
        };
        match self.stored.get(&id) {
            Some(Ok(def)) if def.name == record.table => Ok(def),
            Some(Ok(def)) => Err(format!(
                "the record names table `{}` but its stored definition is of `{}`",
                record.table, def.name
            )),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!(
                "its table definition (id {id}) is missing from the queue's definitions"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{check_with, ColumnsCache};

    fn def(columns: &[&str], insert_only: &[&str]) -> TableDef {
        TableDef {
            name: "notes".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            primary_key: vec!["id".into()],
            insert_only: insert_only.iter().map(|c| c.to_string()).collect(),
            version: None,
        }
    }

    #[test]
    fn a_version_column_is_adopted_by_generates_rule() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("0001.sql"),
            "CREATE TABLE a (id INTEGER PRIMARY KEY, version INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE b (id INTEGER PRIMARY KEY, version INTEGER);
             CREATE TABLE c (id INTEGER PRIMARY KEY, version TEXT NOT NULL);
             CREATE TABLE d (version INTEGER PRIMARY KEY, x TEXT);
             CREATE TABLE e (id INTEGER PRIMARY KEY, rev INTEGER NOT NULL);",
        )
        .unwrap();
        let schema = d1_sync_schema::load_schema(dir.path()).unwrap();
        let mut r = Registry::from_schema(&schema, &[]);
        r.adopt_version_columns(&schema, &["version"]);
        let versioned: Vec<&str> = r
            .names()
            .filter(|n| r.get(n).is_some_and(|d| d.version.is_some()))
            .collect();
        assert_eq!(versioned, ["a"], "INTEGER NOT NULL and not the key");
        r.adopt_version_columns(&schema, &["rev"]);
        assert_eq!(r.get("e").unwrap().version.as_deref(), Some("rev"));
    }

    fn record(def: Option<i64>) -> RawRecord {
        RawRecord {
            id: 1,
            table: "notes".into(),
            row_key: "[1]".into(),
            op: "upsert".into(),
            payload: br#"{"id":1,"body":"b","created_at":5}"#.to_vec(),
            attempts: 0,
            def,
        }
    }

    #[test]
    fn a_record_is_applied_with_the_definition_it_was_written_under() {
        let now = def(
            &["id", "body", "created_at", "added_later"],
            &["created_at"],
        );
        let then = def(&["id", "body", "created_at"], &["created_at"]);
        let mut registry = Registry::new();
        registry.add(now);
        let defs = Definitions::with_stored(&registry, [(then.definition_id(), then.definition())])
            .unwrap();
        let c = check_with(
            &record(Some(then.definition_id())),
            &defs,
            &mut ColumnsCache::default(),
        )
        .unwrap();
        assert_eq!(*c.table, then, "the stored definition, not the registry's");
        let legacy = check_with(&record(None), &defs, &mut ColumnsCache::default()).unwrap();
        assert_eq!(
            legacy.table.columns.len(),
            4,
            "no stored definition: the registry's"
        );
        let missing = check_with(&record(Some(7)), &defs, &mut ColumnsCache::default());
        assert!(
            missing
                .unwrap_err()
                .contains("definition (id 7) is missing"),
            "a record whose definition is gone is refused with the reason"
        );
    }

    #[test]
    fn a_registry_that_disagrees_is_an_error_naming_the_table_and_the_difference() {
        let mut registry = Registry::new();
        registry.add(def(&["id", "body"], &[]));
        let stored = def(&["id", "body", "created_at"], &["created_at"]);
        let e = Definitions::with_stored(&registry, [(1, stored.definition())]).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, Error::DefinitionMismatch { table, .. } if table == "notes"),
            "{e:?}"
        );
        assert!(
            text.contains(
                "insert-only columns: the queued records have created_at, this registry has none"
            ) && text
                .contains("columns the queued records write and this registry lacks: created_at"),
            "{text}"
        );
        let mut keyed = def(&["id", "body"], &[]);
        keyed.primary_key = vec!["body".into()];
        let e = Definitions::with_stored(&registry, [(1, keyed.definition())]).unwrap_err();
        assert!(
            e.to_string()
                .contains("primary key: the queued records have (body), this registry has (id)"),
            "{e}"
        );
    }

    #[test]
    fn adopting_insert_only_columns_makes_a_schema_registry_agree() {
        let stored = def(&["id", "body", "created_at"], &["created_at"]);
        let mut registry = Registry::new();
        registry.add(def(&["id", "body", "created_at"], &[]));
        assert!(Definitions::with_stored(&registry, [(1, stored.definition())]).is_err());
        registry.adopt_insert_only(std::slice::from_ref(&stored));
        assert!(Definitions::with_stored(&registry, [(1, stored.definition())]).is_ok());
    }
}
