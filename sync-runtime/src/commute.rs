//! Which changes of one request may trade places, read from the schema: the foreign keys'
//! actions, `UNIQUE` indexes and triggers of the application's file (the same migrations as
//! D1's).
//!
//! A request is one transaction in D1, with foreign keys deferred to its end
//! ([`crate::pack::DEFER_FOREIGN_KEYS`]). So the order of two changes in it matters only where
//! one can change what the other does:
//!
//! - two changes of **one row**: always kept in order;
//! - a **delete** of a row of a table that is the parent of a foreign key with
//!   `ON DELETE CASCADE` or `RESTRICT`: kept in order with every change of the tables the
//!   action reaches, followed transitively (a cascaded delete cascades on). Which child rows
//!   the action meets depends on what D1 holds, which the worker does not know. (Under
//!   `defer_foreign_keys` SQLite checks a `RESTRICT` at the end too; it is kept in order all
//!   the same.) Two deletes whose actions reach one table stay in order with each other:
//!   one may null a key the other cascades on;
//! - two foreign keys of one child sharing a column, both acting on delete: tracked table by
//!   table (not row by row as below), since what one does to the column decides what the
//!   other finds;
//! - a delete of a parent row under `ON DELETE CASCADE` on its primary key, when the child
//!   table is a *leaf* (no foreign key names it, no `UNIQUE` index, no triggers): kept in order
//!   with every child write before it, and with the child writes after it that set the key to
//!   that row. A later child write that sets the key to another row (or leaves it) may move
//!   ahead of the delete: the packer then sends, before it, the cascade the delete would have
//!   done to that row ([`d1_sync_schema::cascade::cascade_ahead_sql`]), since only D1 knows
//!   whether the row pointed at the deleted parent. That cascade counts a delete only if its
//!   parent row is there, so a child write stays after every earlier write of the parent's
//!   table (the parent row is then there exactly when its delete ran in the queue's order),
//!   and a child delete after every earlier delete of the parent's table (which may have
//!   cascaded the row away first);
//! - a delete of a parent row under `ON DELETE SET NULL` or `SET DEFAULT` on its primary key:
//!   kept in order only with the child writes that set the key to that row. A child write that
//!   sets the key to another row, or leaves it alone, ends the same either way (the action
//!   clears a value the write replaces, or one it keeps), as does a child delete;
//! - a foreign key that names columns other than its parent's primary key: any write of the
//!   parent may change them and fire `ON UPDATE`, so every write of the parent is kept in order
//!   with the tables its actions reach;
//! - two rows of a table with a `UNIQUE` index besides its key (partial and expression
//!   indexes included): kept in order, since a write moved past another could take a value the
//!   order had freed first;
//! - a table with triggers of its own (capture's aside: in D1 they may write anything), or a
//!   table the file does not have: kept in order with everything.
//!
//! A foreign key without an action is checked when the request commits, on the end state,
//! which the order does not change. Everything else commutes: upserts of different rows,
//! writes of tables no action ties together. [`crate::pack::pack_arranged`] uses this to put
//! the changes of one shape into one statement.
//!
//! Only inside one request: across requests a child written before its parent would fail the
//! foreign key at the end of the first, so requests are always cut in queue order.

use std::collections::{HashMap, HashSet, VecDeque};

use rusqlite::Connection;

use crate::change::Op;

/// What the order of a batch's changes may ignore, per table.
#[derive(Debug, Clone, Default)]
pub struct Commute {
    tables: HashMap<String, Facts>,
    unindexed: Vec<Unindexed>,
    /// The tombstone trigger of each versioned table (lower-case name), which a request that
    /// deletes a parent row creates before the delete can cascade into the table.
    tombstones: HashMap<String, String>,
}

/// A foreign key whose child columns no index leads with: every delete of a parent row (and
/// every change of its key) makes SQLite, locally and in D1 alike, scan the whole child table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unindexed {
    /// The child table.
    pub child: String,
    /// Its columns of the key.
    pub columns: Vec<String>,
    /// The parent table.
    pub parent: String,
}

impl std::fmt::Display for Unindexed {
    /// What it costs and the index that fixes it.
    ///
    /// ```
    /// let u = d1_sync::commute::Unindexed {
    ///     child: "links".into(),
    ///     columns: vec!["conversation_id".into()],
    ///     parent: "conversations".into(),
    /// };
    /// assert_eq!(
    ///     u.to_string(),
    ///     "every delete of a conversations row scans all of links: no index leads with its \
    ///      foreign key's columns; add one, e.g. `CREATE INDEX links_conversation_id ON links \
    ///      (conversation_id);`"
    /// );
    /// ```
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "every delete of a {} row scans all of {}: no index leads with its foreign key's \
             columns; add one, e.g. `CREATE INDEX {}_{} ON {} ({});`",
            self.parent,
            self.child,
            self.child,
            self.columns.join("_"),
            self.child,
            self.columns.join(", ")
        )
    }
}

/// One table's facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The tables a delete of one of its rows may write through foreign-key actions.
    pub(crate) delete_reach: Vec<String>,
    /// The tables any write of one of its rows may write (`ON UPDATE` of a key that names
    /// columns other than its primary key).
    pub(crate) write_reach: Vec<String>,
    /// Two of its rows must stay in order (a `UNIQUE` index besides the key).
    pub(crate) rows_ordered: bool,
    /// Its changes stay in order with every change (triggers of its own).
    pub(crate) barrier: bool,
    /// Its foreign keys to a parent's primary key that `SET NULL` (or `SET DEFAULT`) when the
    /// parent row is deleted: the parent, and the key's columns in the parent key's order.
    pub(crate) nulled_by: Vec<(String, Vec<String>)>,
    /// Whether some table's key to this one's primary key is `SET NULL` on delete.
    pub(crate) nulls: bool,
    /// Its foreign keys to a parent's primary key that `CASCADE` on delete and are tracked
    /// row by row (this table is a leaf).
    pub(crate) cascaded_by: Vec<CascadedBy>,
    /// The leaf tables whose keys to this one's primary key `CASCADE` row by row.
    pub(crate) cascades_rows: Vec<String>,
    /// Some foreign key of it acts when its parent row is deleted: a delete earlier in a
    /// request may have removed or changed one of its rows.
    pub(crate) acted_on: bool,
}

/// A leaf's foreign key to its parent's primary key, `ON DELETE CASCADE`, tracked row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CascadedBy {
    /// The parent table (lower-case).
    pub(crate) parent: String,
    /// The child's columns, in the order of the parent's key.
    pub(crate) columns: Vec<String>,
    /// The parent's primary key.
    pub(crate) parent_key: Vec<String>,
}

/// A foreign key as far as the order goes: from the child's table to its parent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The child table.
    pub child: String,
    /// The parent table.
    pub parent: String,
    /// Deleting a parent row acts on the child (`CASCADE`, `SET NULL`, `SET DEFAULT`,
    /// `RESTRICT`).
    pub on_delete: bool,
    /// Updating the parent's referenced columns acts on the child, and those columns are not
    /// the parent's primary key (which the runtime's writes never change).
    pub on_update: bool,
    /// The delete's action is `SET NULL` or `SET DEFAULT`, on the parent's primary key: the
    /// child's columns, in the order of the parent's key. Such a key is tracked row by row
    /// instead of in `on_delete`.
    pub nulls: Option<Vec<String>>,
    /// The delete's action is `CASCADE`, on the parent's primary key: the child's columns, in
    /// the order of the parent's key. When the child is a leaf (see [`Commute::from_parts`])
    /// such a key is tracked row by row.
    pub cascades: Option<Vec<String>>,
    /// The parent's primary key (empty when the file does not have the parent).
    pub parent_key: Vec<String>,
    /// The child's columns of the key.
    pub columns: Vec<String>,
}

fn acts(action: &str) -> bool {
    !action.eq_ignore_ascii_case("NO ACTION")
}

impl Commute {
    /// Nothing commutes: every change keeps its place (the order of the queue).
    pub fn none() -> Commute {
        Commute::default()
    }

    /// The facts for `tables` (the synced ones), from their foreign keys (`links`, of every
    /// table of the schema), the tables with a `UNIQUE` index besides their key, and the
    /// tables with triggers of their own. A `CASCADE` key is tracked row by row when its child
    /// is a leaf: no foreign key names the child, which has no `UNIQUE` index besides its key
    /// and no triggers (so removing one of its rows early changes nothing but that row). A key
    /// (`CASCADE` or `SET NULL`) sharing a column with another key of its child that acts on
    /// delete is tracked table by table.
    pub fn from_parts<'a>(
        tables: impl IntoIterator<Item = &'a str>,
        links: &[Link],
        unique: &HashSet<String>,
        triggers: &HashSet<String>,
    ) -> Commute {
        let key = |s: &str| s.to_ascii_lowercase();
        let parents: HashSet<String> = links.iter().map(|l| key(&l.parent)).collect();
        let leaf = |child: &str| {
            let c = key(child);
            !parents.contains(&c) && !unique.contains(&c) && !triggers.contains(&c)
        };
        // A key sharing a column with another key of the child that acts on delete: what one
        // action does to the column (null it) decides what the other finds (a row to cascade
        // or to restrict on), so both are tracked table by table, where deletes reaching one
        // table stay in order.
        let shares = |l: &Link| {
            links.iter().any(|o| {
                !std::ptr::eq(o, l)
                    && o.on_delete
                    && key(&o.child) == key(&l.child)
                    && o.columns
                        .iter()
                        .any(|c| l.columns.iter().any(|k| k.eq_ignore_ascii_case(c)))
            })
        };
        let nulls = |l: &Link| l.nulls.clone().filter(|_| !shares(l));
        let by_row = |l: &Link| {
            l.on_delete
                && l.cascades.is_some()
                && !l.parent_key.is_empty()
                && leaf(&l.child)
                && !shares(l)
        };
        let mut rows_cascades: HashMap<String, Vec<String>> = HashMap::new();
        let mut deletes: HashMap<String, Vec<String>> = HashMap::new();
        let mut writes: HashMap<String, Vec<String>> = HashMap::new();
        // A delete's first step, by parent: the children it acts on table by table (cascade,
        // restrict), and those whose keys it nulls (tracked row by row).
        let mut cascades: HashMap<String, Vec<String>> = HashMap::new();
        let mut nulling: HashMap<String, Vec<String>> = HashMap::new();
        for l in links {
            if l.on_delete {
                let first = if nulls(l).is_some() {
                    &mut nulling
                } else if by_row(l) {
                    &mut rows_cascades
                } else {
                    &mut cascades
                };
                first.entry(key(&l.parent)).or_default().push(key(&l.child));
            }
            if l.on_delete {
                deletes
                    .entry(key(&l.parent))
                    .or_default()
                    .push(key(&l.child));
            }
            if l.on_update {
                writes
                    .entry(key(&l.parent))
                    .or_default()
                    .push(key(&l.child));
            }
        }
        // The tables acting on the rows of `first` reaches, those included: past the first
        // step a cascaded delete meets rows nobody named, so every action counts, and a
        // SET NULL is an update of the child's columns.
        let closure = |first: &[String]| -> Vec<String> {
            let mut seen: HashSet<String> = HashSet::new();
            let mut todo: VecDeque<String> = first.iter().cloned().collect();
            while let Some(t) = todo.pop_front() {
                if seen.insert(t.clone()) {
                    for next in [deletes.get(&t), writes.get(&t)].into_iter().flatten() {
                        todo.extend(next.iter().cloned());
                    }
                }
            }
            let mut v: Vec<String> = seen.into_iter().collect();
            v.sort();
            v
        };
        let empty = Vec::new();
        let tables = tables
            .into_iter()
            .map(|t| {
                let k = key(t);
                // A delete reaches the tables its cascades reach, and what nulling a child's
                // key writes on; the nulled child rows themselves are tracked row by row.
                let mut first: Vec<String> = cascades.get(&k).cloned().unwrap_or_default();
                for c in nulling.get(&k).unwrap_or(&empty) {
                    first.extend(writes.get(c).into_iter().flatten().cloned());
                }
                let facts = Facts {
                    delete_reach: closure(&first),
                    write_reach: closure(writes.get(&k).unwrap_or(&empty)),
                    rows_ordered: unique.contains(&k),
                    barrier: triggers.contains(&k),
                    nulled_by: links
                        .iter()
                        .filter(|l| key(&l.child) == k)
                        .filter_map(|l| Some((key(&l.parent), nulls(l)?)))
                        .collect(),
                    nulls: nulling.contains_key(&k),
                    cascaded_by: links
                        .iter()
                        .filter(|l| key(&l.child) == k && by_row(l))
                        .filter_map(|l| {
                            Some(CascadedBy {
                                parent: key(&l.parent),
                                columns: l.cascades.clone()?,
                                parent_key: l.parent_key.clone(),
                            })
                        })
                        .collect(),
                    cascades_rows: rows_cascades.get(&k).cloned().unwrap_or_default(),
                    acted_on: links.iter().any(|l| l.on_delete && key(&l.child) == k),
                };
                (k, facts)
            })
            .collect();
        Commute {
            tables,
            unindexed: Vec::new(),
            tombstones: HashMap::new(),
        }
    }

    /// Reads the facts for `tables` from the application's file. A table the file lacks is
    /// left out, and so keeps its changes in order with every other.
    pub fn read<'a>(
        conn: &Connection,
        tables: impl IntoIterator<Item = &'a str>,
    ) -> rusqlite::Result<Commute> {
        let names: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        // Every table read once: each is a child here and may be a parent of several keys.
        let read: HashMap<String, d1_sync_schema::Table> = names
            .iter()
            .map(|n| {
                Ok((
                    n.to_ascii_lowercase(),
                    d1_sync_schema::load::read_table(conn, n)?,
                ))
            })
            .collect::<rusqlite::Result<_>>()?;
        let mut links = Vec::new();
        let mut unique = HashSet::new();
        let mut unindexed = Vec::new();
        for name in &names {
            let t = &read[&name.to_ascii_lowercase()];
            for fk in &t.foreign_keys {
                if !leads_an_index(conn, name, &fk.from)? {
                    unindexed.push(Unindexed {
                        child: name.clone(),
                        columns: fk.from.clone(),
                        parent: fk.table.clone(),
                    });
                }
                let parent = read.get(&fk.table.to_ascii_lowercase());
                let parent_key = parent.map(|p| p.primary_key.clone()).unwrap_or_default();
                let names_key = fk.to.is_empty()
                    || (fk.to.len() == parent_key.len()
                        && fk
                            .to
                            .iter()
                            .all(|c| parent_key.iter().any(|k| k.eq_ignore_ascii_case(c))));
                // The child's columns in the order of the parent's key.
                let in_key_order: Option<Vec<String>> = if fk.to.is_empty() {
                    (fk.from.len() == parent_key.len()).then(|| fk.from.clone())
                } else {
                    parent_key
                        .iter()
                        .map(|k| {
                            let i = fk.to.iter().position(|t| t.eq_ignore_ascii_case(k))?;
                            fk.from.get(i).cloned()
                        })
                        .collect()
                };
                let nulling = matches!(
                    fk.on_delete.to_ascii_uppercase().as_str(),
                    "SET NULL" | "SET DEFAULT"
                );
                let on_key = names_key && !parent_key.is_empty();
                let nulls = in_key_order.clone().filter(|_| nulling && on_key);
                let cascades = in_key_order.filter(|cols| {
                    on_key
                        && fk.on_delete.eq_ignore_ascii_case("CASCADE")
                        && parent.is_some_and(|p| {
                            compares_as_stored(conn, t, p, &parent_key, cols).unwrap_or(false)
                        })
                });
                links.push(Link {
                    child: name.clone(),
                    parent: fk.table.clone(),
                    on_delete: acts(&fk.on_delete),
                    on_update: acts(&fk.on_update) && !names_key,
                    nulls,
                    cascades,
                    parent_key,
                    columns: fk.from.clone(),
                });
            }
            let has_unique: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_index_list(?1) WHERE \"unique\" AND origin <> 'pk')",
                [name],
                |r| r.get(0),
            )?;
            if has_unique {
                unique.insert(name.to_ascii_lowercase());
            }
        }
        let triggers: HashSet<String> = conn
            .prepare(
                "SELECT lower(tbl_name) FROM sqlite_schema WHERE type = 'trigger'
                   AND substr(name, 1, 16) <> 'd1_sync_capture_'
                   AND substr(name, 1, 18) <> 'd1_sync_tombstone_'",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let present: HashSet<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        let known: Vec<&str> = tables
            .into_iter()
            .filter(|t| present.contains(&t.to_ascii_lowercase()))
            .collect();
        let mut commute = Commute::from_parts(known, &links, &unique, &triggers);
        commute.unindexed = unindexed;
        Ok(commute)
    }

    /// The same facts, knowing the versioned tables of `defs`: a request that deletes a row
    /// whose delete reaches one of them creates its tombstone trigger
    /// ([`d1_sync_schema::guard::tombstone_trigger_sql`]) first, so that the rows the cascade
    /// removes leave tombstones even in a request that writes nothing else of that table.
    pub fn with_tombstones<'a>(
        mut self,
        defs: impl IntoIterator<Item = &'a crate::row::TableDef>,
    ) -> Commute {
        for def in defs {
            if let Some(v) = &def.version {
                let pk: Vec<&str> = def.primary_key.iter().map(String::as_str).collect();
                self.tombstones.insert(
                    def.name.to_ascii_lowercase(),
                    d1_sync_schema::guard::tombstone_trigger_sql(&def.name, &pk, v),
                );
            }
        }
        self
    }

    /// The tombstone trigger of `table` (lower-case), when it is versioned.
    pub(crate) fn tombstone_trigger(&self, table: &str) -> Option<&str> {
        self.tombstones.get(table).map(String::as_str)
    }

    /// The foreign keys of the file whose child columns no index leads with (see
    /// [`Unindexed`]); the worker warns about each when it starts.
    pub fn unindexed(&self) -> &[Unindexed] {
        &self.unindexed
    }

    /// The facts of `table`; `None` when it keeps its changes in order with every other.
    pub(crate) fn facts(&self, table: &str) -> Option<&Facts> {
        if self.tables.is_empty() {
            return None;
        }
        match self.tables.get(table) {
            Some(f) => Some(f),
            None => self.tables.get(&table.to_ascii_lowercase()),
        }
        .filter(|f| !f.barrier)
    }

    /// Whether any change may move at all.
    pub(crate) fn is_none(&self) -> bool {
        self.tables.is_empty()
    }
}

/// Whether the child columns `child_cols` of `child` (in the order of the parent's key) hold
/// what the parent's key holds, compared as stored: each of the same affinity as its parent
/// column, and the parent's key compared with `BINARY`. The early cascade
/// ([`d1_sync_schema::cascade`]) matches keys that way; SQLite's foreign key applies the
/// parent's affinity and collation, so where they could differ the key is tracked table by
/// table instead.
fn compares_as_stored(
    conn: &Connection,
    child: &d1_sync_schema::Table,
    parent: &d1_sync_schema::Table,
    parent_key: &[String],
    child_cols: &[String],
) -> rusqlite::Result<bool> {
    let affinity = |t: &d1_sync_schema::Table, name: &str| {
        t.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .map(|c| c.affinity)
    };
    let same = parent_key.iter().zip(child_cols).all(
        |(pk, ck)| matches!((affinity(parent, pk), affinity(child, ck)), (Some(a), Some(b)) if a == b),
    );
    if !same {
        return Ok(false);
    }
    // The key's collations, from the index behind it (none for a rowid key: integers).
    let binary: bool = conn.query_row(
        "SELECT NOT EXISTS (
           SELECT 1 FROM pragma_index_list(?1) AS l, pragma_index_xinfo(l.name) AS x
           WHERE l.origin = 'pk' AND x.key AND upper(x.coll) <> 'BINARY')",
        [&parent.name],
        |r| r.get(0),
    )?;
    Ok(binary)
}

/// Whether `columns` (in any order) are the leading columns of an index of `table`, or its
/// rowid.
fn leads_an_index(conn: &Connection, table: &str, columns: &[String]) -> rusqlite::Result<bool> {
    let has = |set: &[String]| {
        set.len() >= columns.len()
            && columns.iter().all(|c| {
                set[..columns.len()]
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(c))
            })
    };
    // An `INTEGER PRIMARY KEY` is the rowid: no index of its own, and the fastest lookup.
    let rowid: Vec<String> = conn
        .prepare(
            "SELECT name FROM pragma_table_info(?1) WHERE pk = 1 AND lower(type) = 'integer'
               AND (SELECT count(*) FROM pragma_table_info(?1) WHERE pk > 0) = 1",
        )?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !rowid.is_empty() && has(&rowid) {
        return Ok(true);
    }
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM pragma_index_list(?1)")?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for index in indexes {
        let leading: Vec<String> = conn
            .prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?
            .query_map([&index], |r| r.get::<_, Option<String>>(0))?
            .map(|n| n.map(Option::unwrap_or_default))
            .collect::<rusqlite::Result<_>>()?;
        if has(&leading) {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Facts {
    /// The tables whose rows a delete of one of this table's rows may remove or change, by a
    /// cascade tracked table by table or row by row.
    pub(crate) fn deletes_reach(&self) -> impl Iterator<Item = &str> {
        self.delete_reach
            .iter()
            .chain(&self.cascades_rows)
            .map(String::as_str)
    }

    /// The tables a change of this table by `op` may write besides its own row.
    pub(crate) fn reach(&self, op: Op) -> impl Iterator<Item = &str> {
        let deletes = if op == Op::Delete {
            &self.delete_reach[..]
        } else {
            &[]
        };
        deletes
            .iter()
            .chain(self.write_reach.iter())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(sql: &str) -> Commute {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(sql).unwrap();
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        Commute::read(&conn, names.iter().map(String::as_str)).unwrap()
    }

    fn reach(c: &Commute, t: &str, op: Op) -> Vec<String> {
        let mut v: Vec<String> = c.facts(t).unwrap().reach(op).map(String::from).collect();
        v.sort();
        v.dedup();
        v
    }

    #[test]
    fn deletes_reach_through_actions_transitively_and_plain_keys_reach_nothing() {
        let c = read(
            "CREATE TABLE a (id TEXT PRIMARY KEY);
             CREATE TABLE b (id TEXT PRIMARY KEY, a TEXT REFERENCES a (id) ON DELETE CASCADE);
             CREATE TABLE c (id TEXT PRIMARY KEY, b TEXT REFERENCES b (id) ON DELETE SET NULL);
             CREATE TABLE d (id TEXT PRIMARY KEY, a TEXT REFERENCES a (id));
             CREATE TABLE e (id TEXT PRIMARY KEY, d TEXT REFERENCES d (id) ON DELETE RESTRICT);",
        );
        assert_eq!(reach(&c, "a", Op::Delete), ["b", "c"]);
        assert!(
            reach(&c, "a", Op::Upsert).is_empty(),
            "an upsert never changes a key"
        );
        assert!(
            reach(&c, "b", Op::Delete).is_empty(),
            "SET NULL on a primary key is tracked row by row"
        );
        let facts = c.facts("c").unwrap();
        assert_eq!(facts.nulled_by, [("b".to_string(), vec!["b".to_string()])]);
        assert!(c.facts("b").unwrap().nulls);
        assert!(reach(&c, "c", Op::Delete).is_empty());
        assert_eq!(
            reach(&c, "d", Op::Delete),
            ["e"],
            "RESTRICT is kept in order"
        );
        assert!(!c.facts("a").unwrap().rows_ordered);
    }

    #[test]
    fn a_cascade_to_a_leaf_is_tracked_row_by_row_and_to_anything_else_table_by_table() {
        let c = read(
            "CREATE TABLE a (id TEXT PRIMARY KEY);
             CREATE TABLE leaf (id TEXT PRIMARY KEY, a TEXT REFERENCES a (id) ON DELETE CASCADE);
             CREATE TABLE mid (id TEXT PRIMARY KEY, a TEXT REFERENCES a (id) ON DELETE CASCADE);
             CREATE TABLE under (id TEXT PRIMARY KEY, m TEXT REFERENCES mid (id));
             CREATE TABLE uniq (id TEXT PRIMARY KEY, e TEXT UNIQUE,
                                a TEXT REFERENCES a (id) ON DELETE CASCADE);
             CREATE TABLE trig (id TEXT PRIMARY KEY, a TEXT REFERENCES a (id) ON DELETE CASCADE);
             CREATE TRIGGER trig_t AFTER DELETE ON trig BEGIN SELECT 1; END;
             CREATE TRIGGER d1_sync_tombstone_leaf_0 AFTER DELETE ON leaf BEGIN SELECT 1; END;",
        );
        let a = c.facts("a").unwrap();
        assert_eq!(a.cascades_rows, ["leaf"]);
        assert_eq!(reach(&c, "a", Op::Delete), ["mid", "trig", "uniq"]);
        assert_eq!(
            c.facts("leaf").unwrap().cascaded_by,
            [CascadedBy {
                parent: "a".into(),
                columns: vec!["a".into()],
                parent_key: vec!["id".into()],
            }],
            "d1-sync's own tombstone trigger does not make a table a barrier"
        );
        assert!(c.facts("mid").unwrap().cascaded_by.is_empty(), "a parent");
        assert!(
            c.facts("uniq").unwrap().cascaded_by.is_empty(),
            "a UNIQUE index"
        );
    }

    #[test]
    fn keys_sharing_a_column_are_tracked_table_by_table() {
        let c = read(
            "CREATE TABLE a (id TEXT PRIMARY KEY);
             CREATE TABLE b (id TEXT PRIMARY KEY);
             CREATE TABLE shared (id TEXT PRIMARY KEY,
                                  x TEXT REFERENCES a (id) ON DELETE CASCADE
                                         REFERENCES b (id) ON DELETE SET NULL);
             CREATE TABLE apart (id TEXT PRIMARY KEY,
                                 x TEXT REFERENCES a (id) ON DELETE CASCADE,
                                 y TEXT REFERENCES b (id) ON DELETE SET NULL);",
        );
        assert_eq!(
            c.facts("a").unwrap().cascades_rows,
            ["apart"],
            "b's delete may null `shared.x` under the early cascade"
        );
        assert_eq!(reach(&c, "a", Op::Delete), ["shared"]);
        assert_eq!(
            reach(&c, "b", Op::Delete),
            ["shared"],
            "nulling `shared.x` decides what a's delete cascades"
        );
        assert!(c.facts("shared").unwrap().nulled_by.is_empty());
        assert_eq!(c.facts("apart").unwrap().nulled_by.len(), 1);
    }

    #[test]
    fn a_cascade_whose_keys_could_compare_otherwise_is_tracked_table_by_table() {
        let c = read(
            "CREATE TABLE a (id TEXT PRIMARY KEY);
             CREATE TABLE n (id TEXT PRIMARY KEY COLLATE NOCASE);
             CREATE TABLE i (id INTEGER PRIMARY KEY);
             CREATE TABLE same (id TEXT PRIMARY KEY, a TEXT REFERENCES a (id) ON DELETE CASCADE);
             CREATE TABLE nocase (id TEXT PRIMARY KEY, n TEXT REFERENCES n (id) ON DELETE CASCADE);
             CREATE TABLE typed (id TEXT PRIMARY KEY, i TEXT REFERENCES i (id) ON DELETE CASCADE);",
        );
        assert_eq!(c.facts("a").unwrap().cascades_rows, ["same"]);
        assert!(
            c.facts("n").unwrap().cascades_rows.is_empty(),
            "a NOCASE parent key"
        );
        assert!(
            c.facts("i").unwrap().cascades_rows.is_empty(),
            "a text key pointing at an integer one"
        );
        assert_eq!(reach(&c, "n", Op::Delete), ["nocase"]);
    }

    #[test]
    fn a_foreign_key_no_index_leads_with_is_reported() {
        let c = read(
            "CREATE TABLE p (id TEXT PRIMARY KEY);
             CREATE TABLE bare (id TEXT PRIMARY KEY, p TEXT REFERENCES p (id) ON DELETE CASCADE);
             CREATE TABLE led (id TEXT PRIMARY KEY, p TEXT REFERENCES p (id), at INTEGER);
             CREATE INDEX led_p ON led (p, at);
             CREATE TABLE second (id TEXT PRIMARY KEY, p TEXT REFERENCES p (id), at INTEGER);
             CREATE INDEX second_at ON second (at, p);
             CREATE TABLE pair (a TEXT, b TEXT, PRIMARY KEY (b, a));
             CREATE TABLE keyed (a TEXT, b TEXT, FOREIGN KEY (a, b) REFERENCES pair (a, b));
             CREATE UNIQUE INDEX keyed_ba ON keyed (b, a);
             CREATE TABLE own (id INTEGER PRIMARY KEY REFERENCES p (id));",
        );
        let mut found: Vec<String> = c
            .unindexed()
            .iter()
            .map(|u| format!("{}({}) -> {}", u.child, u.columns.join(","), u.parent))
            .collect();
        found.sort();
        assert_eq!(
            found,
            ["bare(p) -> p", "second(p) -> p"],
            "an index led by the key (in any order) or the rowid serves it; one that only \
             holds it further in does not"
        );
    }

    #[test]
    fn unique_indexes_order_rows_and_triggers_order_everything() {
        let c = read(
            "CREATE TABLE u (id TEXT PRIMARY KEY, email TEXT);
             CREATE UNIQUE INDEX u_email ON u (email) WHERE email IS NOT NULL;
             CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER);
             CREATE TABLE log (x TEXT);
             CREATE TRIGGER t_log AFTER UPDATE ON t BEGIN INSERT INTO log VALUES (new.id); END;
             CREATE TRIGGER d1_sync_capture_u_ins AFTER INSERT ON u BEGIN SELECT 1; END;",
        );
        assert!(c.facts("u").unwrap().rows_ordered, "a partial UNIQUE index");
        assert!(c.facts("t").is_none(), "a trigger of its own");
        assert!(c.facts("missing").is_none(), "unknown to the file");
        assert!(Commute::none().facts("u").is_none());
    }

    #[test]
    fn an_update_action_on_a_key_other_than_the_primary_reaches_on_any_write() {
        let c = read(
            "CREATE TABLE p (id TEXT PRIMARY KEY, code TEXT UNIQUE);
             CREATE TABLE k (id TEXT PRIMARY KEY, p TEXT REFERENCES p (code) ON UPDATE CASCADE);
             CREATE TABLE j (id TEXT PRIMARY KEY, p TEXT REFERENCES p (id) ON UPDATE CASCADE);",
        );
        assert_eq!(reach(&c, "p", Op::Upsert), ["k"]);
    }
}
