//! The tables a worker may write: their whitelists, keys and insert-only columns.

use std::collections::BTreeMap;
use std::sync::Arc;

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
}
