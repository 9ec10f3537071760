//! Sorting a claimed batch before it ships: the changes to send, the records that can never
//! ship (dead-lettered with the reason), and the records that must wait, uncharged, because
//! a row they depend on waits: an earlier record of their own row, or the parent row their
//! foreign key names (in backoff or dead-lettered). A child sent while its parent is held back
//! would fail D1's foreign-key check, and be charged for a fault that is not its own.

use std::collections::HashMap;

use rusqlite::Connection;

use crate::change::{self, Change, Op, RawRecord};
use crate::outbox::{Refusal, Setback};
use crate::registry::{Definitions, Registry};

/// A foreign key that points at its parent's primary key: the child's columns, in the order
/// of the parent's key, and the parent table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParentKey {
    columns: Vec<String>,
    parent: String,
}

/// Which tables depend on which, from the schema's foreign keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deps {
    by_table: HashMap<String, Vec<ParentKey>>,
}

impl Deps {
    /// Reads the foreign keys of every registered table from the application's own file
    /// (the same migrations as D1's). A foreign key that names columns other than its
    /// parent's primary key is not tracked (such a child is charged if its parent is held).
    pub(crate) fn read(conn: &Connection, registry: &Registry) -> Deps {
        let mut by_table = HashMap::new();
        for name in registry.names() {
            let Ok(table) = d1_sync_schema::load::read_table(conn, name) else {
                continue;
            };
            let mut keys = Vec::new();
            for fk in &table.foreign_keys {
                let parent_key = match registry.get(&fk.table) {
                    Some(def) => def.primary_key.clone(),
                    None => match d1_sync_schema::load::read_table(conn, &fk.table) {
                        Ok(t) => t.primary_key,
                        Err(_) => continue,
                    },
                };
                if parent_key.is_empty() {
                    continue;
                }
                // `to` is empty when the key names the parent's primary key implicitly.
                let to = if fk.to.is_empty() {
                    parent_key.clone()
                } else {
                    fk.to.clone()
                };
                let mut columns = Vec::with_capacity(parent_key.len());
                for k in &parent_key {
                    match to.iter().position(|t| t == k) {
                        Some(i) if to.len() == parent_key.len() => columns.push(fk.from[i].clone()),
                        _ => break,
                    }
                }
                if columns.len() == parent_key.len() {
                    keys.push(ParentKey {
                        columns,
                        parent: fk.table.clone(),
                    });
                }
            }
            if !keys.is_empty() {
                by_table.insert(name.to_string(), keys);
            }
        }
        Deps { by_table }
    }

    /// Whether any table depends on another.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_table.is_empty()
    }

    /// The parent rows `c` needs in D1, as `(digest, table, stored key)`: one for each foreign
    /// key whose columns `c` writes, all non-NULL. A delete needs none.
    pub(crate) fn parents(&self, c: &Change) -> Vec<(u64, String, String)> {
        if c.op == Op::Delete {
            return Vec::new();
        }
        let Some(keys) = self.by_table.get(&c.table.name) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let texts = c.stored_texts();
        'keys: for k in keys {
            let mut key = String::from("[");
            for (n, col) in k.columns.iter().enumerate() {
                match c
                    .columns
                    .iter()
                    .position(|x| x == col)
                    .and_then(|i| texts.get(i))
                {
                    Some(t) if t != "null" => {
                        if n > 0 {
                            key.push(',');
                        }
                        key.push_str(t);
                    }
                    _ => continue 'keys,
                }
            }
            key.push(']');
            out.push((change::row_digest(&k.parent, &key), k.parent.clone(), key));
        }
        out
    }
}

/// A row that waits, as far as the records after it are concerned.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    /// The id of its first waiting record: only records after it wait behind it.
    pub(crate) first_id: i64,
    /// When that record is due again (`i64::MAX` for a dead letter).
    pub(crate) due: i64,
}

/// A claimed batch, sorted.
#[derive(Debug, Default)]
pub(crate) struct Sorted {
    /// To ship, in queue order.
    pub(crate) changes: Vec<Change>,
    /// The records to dead-letter.
    pub(crate) invalid: Vec<Refusal>,
    /// The records to hold back, uncharged.
    pub(crate) held: Vec<Setback>,
    /// The last claimed id: a read-ahead continues after it.
    pub(crate) cursor: i64,
}

/// Sorts `raw` (in queue order). `waiting` holds the rows that wait in the queue and the rows
/// held back so far by this batch's sending; a dead parent is looked at again after
/// `recheck_at` (ms).
pub(crate) fn sort(
    raw: Vec<RawRecord>,
    defs: &Definitions<'_>,
    deps: &Deps,
    waiting: &HashMap<u64, Waiting>,
    recheck_at: i64,
) -> Sorted {
    let mut out = Sorted {
        cursor: raw.last().map_or(0, |r| r.id),
        ..Sorted::default()
    };
    let mut columns = change::ColumnsCache::default();
    // Rows held back by this batch: later records of them wait too.
    let mut blocked: HashMap<u64, Waiting> = HashMap::new();
    for r in &raw {
        let row = change::row_digest(&r.table, &r.row_key);
        match change::check_with(r, defs, &mut columns) {
            // A record that can never ship is dead-lettered at once, wherever it stands.
            Err(reason) => {
                blocked.entry(row).or_insert(Waiting {
                    first_id: r.id,
                    due: i64::MAX,
                });
                out.invalid.push(Refusal {
                    id: r.id,
                    table: r.table.clone(),
                    reason,
                });
            }
            Ok(c) => match place(&c, row, deps, waiting, &mut blocked, recheck_at) {
                Place::Send => out.changes.push(c),
                Place::Wait => {}
                Place::Hold(h) => out.held.push(h),
            },
        }
    }
    out
}

/// Where a checked change goes.
pub(crate) enum Place {
    /// Out, in this batch.
    Send,
    /// Nowhere: it waits in the queue, as it is, behind an earlier record of its row.
    Wait,
    /// Held back, uncharged, because its parent row waits.
    Hold(Setback),
}

/// Where `c` (of row `row`) goes, given the rows that wait in the queue (`waiting`) and those
/// held back so far by this batch (`blocked`, which a held change joins). A parent held behind
/// a dead letter is looked at again after `recheck_at` (ms).
pub(crate) fn place(
    c: &Change,
    row: u64,
    deps: &Deps,
    waiting: &HashMap<u64, Waiting>,
    blocked: &mut HashMap<u64, Waiting>,
    recheck_at: i64,
) -> Place {
    if blocked.contains_key(&row) {
        return Place::Wait;
    }
    let Some((due, table, key)) =
        held_by(c, deps, waiting, blocked).map(|(w, table, key)| (w.due, table, key))
    else {
        return Place::Send;
    };
    let due = if due == i64::MAX { recheck_at } else { due };
    blocked.insert(
        row,
        Waiting {
            first_id: c.id,
            due,
        },
    );
    Place::Hold(Setback {
        id: c.id,
        reason: format!("waits for its parent row {table} {key}, which is held back"),
        until: due,
    })
}

/// The held-back parent row `c` waits for, if any: a row in `waiting` or `blocked` whose first
/// waiting record came before `c`.
fn held_by<'a>(
    c: &Change,
    deps: &Deps,
    waiting: &'a HashMap<u64, Waiting>,
    blocked: &'a HashMap<u64, Waiting>,
) -> Option<(&'a Waiting, String, String)> {
    if waiting.is_empty() && blocked.is_empty() {
        return None;
    }
    deps.parents(c)
        .into_iter()
        .find_map(|(digest, table, key)| {
            blocked
                .get(&digest)
                .or_else(|| waiting.get(&digest))
                .filter(|w| w.first_id < c.id)
                .map(|w| (w, table, key))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::TableDef;

    fn setup() -> (Registry, Deps) {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE p (id TEXT PRIMARY KEY, v TEXT);
             CREATE TABLE c (id TEXT PRIMARY KEY, p_id TEXT REFERENCES p (id) ON DELETE CASCADE, v TEXT);
             CREATE TABLE loose (id TEXT PRIMARY KEY, v TEXT);",
        )
        .unwrap();
        let mut r = Registry::new();
        for (name, cols) in [
            ("p", vec!["id", "v"]),
            ("c", vec!["id", "p_id", "v"]),
            ("loose", vec!["id", "v"]),
        ] {
            r.add(TableDef {
                name: name.into(),
                columns: cols.into_iter().map(String::from).collect(),
                primary_key: vec!["id".into()],
                insert_only: vec![],
                version: None,
            });
        }
        let deps = Deps::read(&conn, &r);
        (r, deps)
    }

    fn rec(id: i64, table: &str, key: &str, payload: &str) -> RawRecord {
        RawRecord {
            id,
            table: table.into(),
            row_key: format!("[\"{key}\"]"),
            op: "upsert".into(),
            payload: payload.as_bytes().to_vec(),
            attempts: 0,
            def: None,
        }
    }

    #[test]
    fn the_schemas_foreign_keys_say_which_rows_a_change_needs() {
        let (r, deps) = setup();
        assert!(!deps.is_empty());
        let c = change::check(&rec(1, "c", "c1", r#"{"id":"c1","p_id":"p1"}"#), &r).unwrap();
        let parents = deps.parents(&c);
        assert_eq!(parents.len(), 1);
        assert_eq!(
            (parents[0].1.as_str(), parents[0].2.as_str()),
            ("p", "[\"p1\"]")
        );
        assert_eq!(parents[0].0, change::row_digest("p", "[\"p1\"]"));
        let orphan = change::check(&rec(2, "c", "c2", r#"{"id":"c2","p_id":null}"#), &r).unwrap();
        assert!(
            deps.parents(&orphan).is_empty(),
            "a NULL key needs no parent"
        );
        let loose = change::check(&rec(3, "loose", "l", r#"{"id":"l"}"#), &r).unwrap();
        assert!(deps.parents(&loose).is_empty());
    }

    #[test]
    fn a_child_waits_uncharged_behind_its_held_parent_and_so_do_its_later_records() {
        let (r, deps) = setup();
        let mut waiting = HashMap::new();
        // p1 has a record in backoff (id 1), due at 5000.
        waiting.insert(
            change::row_digest("p", "[\"p1\"]"),
            Waiting {
                first_id: 1,
                due: 5_000,
            },
        );
        let raw = vec![
            rec(2, "c", "c1", r#"{"id":"c1","p_id":"p1"}"#),
            rec(3, "c", "c2", r#"{"id":"c2","p_id":"p2"}"#),
            rec(4, "c", "c1", r#"{"id":"c1","p_id":"p2"}"#),
            rec(5, "nope", "x", "{}"),
            rec(6, "nope", "x", "{}"),
        ];
        let s = sort(raw, &Definitions::of(&r), &deps, &waiting, 9_999);
        let sent: Vec<i64> = s.changes.iter().map(|c| c.id).collect();
        assert_eq!(
            sent,
            [3],
            "c2 ships; c1's later record waits behind its held one"
        );
        assert_eq!(s.held.len(), 1);
        assert_eq!((s.held[0].id, s.held[0].until), (2, 5_000));
        assert!(
            s.held[0].reason.contains("p [\"p1\"]"),
            "{}",
            s.held[0].reason
        );
        assert_eq!(
            s.invalid.len(),
            2,
            "every record that can never ship is dead-lettered"
        );
        assert_eq!(s.cursor, 6);
    }

    #[test]
    fn a_dead_parent_is_looked_at_again_later_and_a_parent_waiting_after_the_child_holds_nothing() {
        let (r, deps) = setup();
        let raw = vec![
            rec(1, "p", "p1", r#"{"id":"p1","v":1,"bad":2}"#),
            rec(2, "c", "c1", r#"{"id":"c1","p_id":"p1"}"#),
        ];
        let s = sort(raw, &Definitions::of(&r), &deps, &HashMap::new(), 9_999);
        assert!(s.changes.is_empty());
        assert_eq!((s.held.len(), s.held[0].id, s.held[0].until), (1, 2, 9_999));
        // A waiting record of the parent *after* the child (a later update) does not hold it.
        let mut waiting = HashMap::new();
        waiting.insert(
            change::row_digest("p", "[\"p1\"]"),
            Waiting {
                first_id: 7,
                due: 5_000,
            },
        );
        let s = sort(
            vec![rec(2, "c", "c1", r#"{"id":"c1","p_id":"p1"}"#)],
            &Definitions::of(&r),
            &deps,
            &waiting,
            0,
        );
        assert_eq!(s.changes.len(), 1);
    }
}
