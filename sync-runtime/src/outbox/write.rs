//! The application's write API: each method's name says what it writes where. `save`,
//! `patch` and `remove` write the local row and queue its record in the caller's
//! transaction; the `enqueue_*` methods only queue.

use rusqlite::{params, Connection, Transaction, TransactionBehavior};

use super::{now_ms, Outbox};
use crate::change::Op;
use crate::codec;
use crate::error::{Error, Result};
use crate::row::SyncRow;
use crate::value::Value;

impl Outbox {
    /// Enqueues a record as stored text (no checks), without a stored table definition: the
    /// drainer applies it with its registry's definition of the table. The typed methods
    /// below are the normal way; this one exists for tools and tests that need to write
    /// arbitrary records.
    pub fn enqueue_raw(
        &self,
        conn: &Connection,
        table: &str,
        row_key: &str,
        op: &str,
        payload: &str,
    ) -> Result<i64> {
        self.insert(conn, table, row_key, op, payload, Under::Raw)
    }

    /// Queues a record, merged into the row's pending record when `under` lets it and the
    /// rules allow (see [`d1_sync_schema::queue`]).
    fn insert(
        &self,
        conn: &Connection,
        table: &str,
        row_key: &str,
        op: &str,
        payload: &str,
        under: Under,
    ) -> Result<i64> {
        let (def, merge) = match under {
            Under::Raw => (None, false),
            Under::Definition { id, merge } => (Some(id), merge),
        };
        // The merge target is looked up, merged into and the run moved in one transaction: the
        // caller's, or one of its own (taking the write lock first) when the caller has none.
        let own = if conn.is_autocommit() {
            Some(Transaction::new_unchecked(
                conn,
                TransactionBehavior::Immediate,
            )?)
        } else {
            None
        };
        let now = now_ms();
        let target: Option<i64> = match self.merge_target_sql.as_ref().filter(|_| merge) {
            Some(sql) => conn
                .prepare_cached(sql)
                .and_then(|mut s| {
                    s.query_row(params![table, row_key, op, payload, now, def], |r| r.get(0))
                })
                .map_err(|e| self.map_missing(e))?,
            None => None,
        };
        conn.prepare_cached(&self.insert_sql)
            .and_then(|mut s| s.execute(params![table, row_key, op, payload, now, def, target]))
            .map_err(|e| self.map_missing(e))?;
        // A merge keeps the target's id; an append made a new row.
        let id = target.unwrap_or_else(|| conn.last_insert_rowid());
        conn.prepare_cached(&self.run_sql)?
            .execute(params![table, id])?;
        if let Some(tx) = own {
            tx.commit()?;
        }
        Ok(id)
    }

    /// Stores `T`'s definition if it is not stored yet. An `INSERT`, so it also makes the
    /// caller's transaction a write transaction before anything in it is read: a read first
    /// would pin a snapshot that a concurrent writer (the worker) can make stale, and the
    /// write after it would fail with `SQLITE_BUSY_SNAPSHOT` instead of waiting its turn.
    fn define<T: SyncRow>(&self, conn: &Connection) -> Result<()> {
        conn.prepare_cached(&self.define_sql)
            .and_then(|mut s| {
                s.execute(params![T::DEFINITION_ID, T::TABLE, T::DEFINITION, now_ms()])
            })
            .map_err(|e| self.map_missing(e))?;
        Ok(())
    }

    /// Queues a record of `T`, with `T`'s definition stored (once) beside it.
    fn enqueue<T: SyncRow>(
        &self,
        conn: &Connection,
        row_key: &str,
        op: Op,
        payload: String,
    ) -> Result<i64> {
        self.define::<T>(conn)?;
        self.record::<T>(conn, row_key, op, payload, true)
    }

    /// Queues a record of `T` whose definition is stored already; `merge` as in [`Under`].
    fn record<T: SyncRow>(
        &self,
        conn: &Connection,
        row_key: &str,
        op: Op,
        payload: String,
        merge: bool,
    ) -> Result<i64> {
        let under = Under::Definition {
            id: T::DEFINITION_ID,
            merge,
        };
        self.insert(conn, T::TABLE, row_key, op.as_str(), &payload, under)
    }

    /// Writes the row to the local file (upsert) **and** queues its upsert for D1, in the
    /// caller's transaction. Returns the id of the record that carries it (appended, or the
    /// row's pending record it coalesced into), or `None` when the local row already held
    /// these values: a save that changes nothing writes and queues nothing.
    ///
    /// Locally it runs `T::SAVE_SQL` (insert-only columns kept on update); D1 gets the same
    /// upsert. On a captured table ([`Outbox::capture`]) the trigger queues the record, once.
    pub fn save<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<Option<i64>> {
        let values = row.values();
        let key = codec::stored_array(&row.key_values());
        self.write_and_queue::<T>(
            tx,
            &key,
            |tx| {
                tx.prepare_cached(T::SAVE_SQL)?
                    .execute(rusqlite::params_from_iter(values.iter()))
            },
            Op::Upsert,
            || upsert_payload::<T>(&values),
        )
    }

    /// Runs the local write `write` and queues its record (`op`, `payload`) for the row
    /// `row_key`, unless the write changed nothing (see [`Outbox::queue_written`]).
    fn write_and_queue<T: SyncRow>(
        &self,
        tx: &Transaction<'_>,
        row_key: &str,
        write: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<usize>,
        op: Op,
        payload: impl FnOnce() -> String,
    ) -> Result<Option<i64>> {
        let w = self.write_locally::<T>(tx, write)?;
        if w.changed == 0 {
            return Ok(None);
        }
        self.queue_written::<T>(tx, row_key, &w, op, payload)
            .map(Some)
    }

    /// Runs the local write `write` of a `T` row.
    ///
    /// The definition is stored first: an `INSERT`, so the caller's transaction is a write
    /// transaction before anything in it reads (see [`Outbox::define`]).
    fn write_locally<T: SyncRow>(
        &self,
        tx: &Transaction<'_>,
        write: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<usize>,
    ) -> Result<Written> {
        self.define::<T>(tx)?;
        let (before, rowid) = (tx.total_changes(), tx.last_insert_rowid());
        let changed = write(tx)?;
        Ok(Written {
            changed,
            triggered: tx.total_changes() - before > changed as u64,
            // An upsert that updated leaves the last rowid alone; one that inserted sets it
            // (a trigger's inserts do not outlast the trigger). The same rowid by chance
            // reads as "not new", which only costs a lookup.
            new_row: tx.last_insert_rowid() != rowid,
        })
    }

    /// Queues the record of a local write just done, unless a capture trigger queued it during
    /// the write: then the id of the row's record that carries it. Only a write that changed
    /// more rows than its own (a trigger or a cascade ran) can have fired a capture trigger,
    /// and only then is the schema asked.
    ///
    /// The record of a row the write inserted is appended without looking for a record to
    /// merge into: a new row rarely has one (only after an `enqueue_*` of it), and appending
    /// is always correct.
    fn queue_written<T: SyncRow>(
        &self,
        tx: &Transaction<'_>,
        row_key: &str,
        w: &Written,
        op: Op,
        payload: impl FnOnce() -> String,
    ) -> Result<i64> {
        if w.triggered && self.captured_now::<T>(tx)? {
            if let Some(id) = self.newest_of_row::<T>(tx, row_key)? {
                return Ok(id);
            }
        }
        self.record::<T>(tx, row_key, op, payload(), !w.new_row)
    }

    /// Updates the named columns of the row in the local file **and** queues the same
    /// `UPDATE` for D1, in the caller's transaction. On a captured table the trigger queues
    /// an upsert of the row instead. Returns the record's id, or `None` when nothing changed:
    /// the row is not in the local file, or already holds these values.
    ///
    /// Other columns are left alone on both sides, and a row that does not exist is not
    /// created. Key and insert-only columns cannot be set; at least one other column must be.
    ///
    /// ```
    /// use d1_sync::{D1Sync, Outbox};
    /// # fn main() -> Result<(), d1_sync::Error> {
    /// #[derive(D1Sync)]
    /// #[d1(table = "notes")]
    /// struct Note { #[d1(primary_key)] id: i64, body: String, pinned: bool }
    ///
    /// let mut conn = d1_sync::open(":memory:")?;
    /// conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, pinned INTEGER)")?;
    /// let outbox = Outbox::new();
    /// let tx = conn.transaction()?;
    /// outbox.save(&tx, &Note { id: 1, body: "hello".into(), pinned: false })?;
    /// outbox.patch(&tx, &Note { id: 1, body: "not written".into(), pinned: true }, &["pinned"])?;
    /// tx.commit()?;
    /// let (body, pinned): (String, bool) =
    ///     conn.query_row("SELECT body, pinned FROM notes", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    /// assert_eq!((body.as_str(), pinned), ("hello", true));
    /// // The save and the patch coalesced into one upsert of the row.
    /// assert_eq!(outbox.counts(&conn)?.pending, 1);
    /// # Ok(()) }
    /// ```
    pub fn patch<T: SyncRow>(
        &self,
        tx: &Transaction<'_>,
        row: &T,
        columns: &[&str],
    ) -> Result<Option<i64>> {
        check_patch::<T>(columns)?;
        let set: Vec<&str> = T::COLUMNS
            .iter()
            .copied()
            .filter(|c| columns.contains(c))
            .collect();
        let sql = match T::VERSION {
            Some(v) => d1_sync_schema::guard::update_local_sql(T::TABLE, T::PRIMARY_KEY, &set, v),
            None => d1_sync_schema::sql::update_changed_sql(T::TABLE, T::PRIMARY_KEY, &set),
        };
        let values = row.values();
        let key = codec::stored_array(&row.key_values());
        let value_of = |c: &str| T::COLUMNS.iter().position(|x| *x == c).map(|i| &values[i]);
        let params: Vec<&Value> = T::PRIMARY_KEY
            .iter()
            .chain(set.iter())
            .filter_map(|c| value_of(c))
            .collect();
        self.write_and_queue::<T>(
            tx,
            &key,
            |tx| {
                tx.prepare_cached(&sql)?
                    .execute(rusqlite::params_from_iter(params))
            },
            Op::Update,
            || update_payload::<T>(&values, columns),
        )
    }

    /// Deletes the row from the local file (by key) **and** queues its delete for D1, in the
    /// caller's transaction; returns the record's id. Foreign keys cascade locally as they will
    /// on D1. On a captured table the trigger queues the record, once. A row the local file
    /// does not have is still deleted in D1.
    ///
    /// On a versioned table (`#[d1(version)]`) the delete carries the version of the local row
    /// it deleted (`row`'s own when the local file has no such row), and D1 deletes its row
    /// only if that row is not newer.
    pub fn remove<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        let key = row.key_values();
        let mut deleted: Option<i64> = None;
        // Queued even when nothing was deleted here: D1 may hold the row.
        let w = self.write_locally::<T>(tx, |tx| match T::VERSION {
            Some(v) => {
                let sql = d1_sync_schema::guard::delete_local_sql(T::TABLE, T::PRIMARY_KEY, v);
                let mut stmt = tx.prepare_cached(&sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(key.iter()))?;
                let mut n = 0;
                while let Some(r) = rows.next()? {
                    deleted = r.get(0)?;
                    n += 1;
                }
                Ok(n)
            }
            None => tx
                .prepare_cached(T::DELETE_SQL)?
                .execute(rusqlite::params_from_iter(key.iter())),
        })?;
        // The key is the record's row key: a delete has nothing else to say but its version.
        let payload = delete_payload(row, deleted)?;
        self.queue_written::<T>(tx, &codec::stored_array(&key), &w, Op::Delete, || payload)
    }

    /// The id of the row's newest record (the one a capture trigger just queued or merged
    /// into).
    fn newest_of_row<T: SyncRow>(&self, conn: &Connection, row_key: &str) -> Result<Option<i64>> {
        conn.prepare_cached(&self.newest_of_row_sql)
            .and_then(|mut s| s.query_row(params![T::TABLE, row_key], |r| r.get(0)))
            .map_err(|e| self.map_missing(e))
    }

    /// Whether a capture trigger of this queue queued `T`'s write just done: the table has
    /// one made from `T`'s own definition, and capture is not paused. Asked every time, never
    /// cached, so a trigger dropped by hand can never leave a write unqueued. A trigger made
    /// from another definition (the struct gained a column since the table was captured)
    /// does not write all of `T`'s columns: the typed write then queues its own record too.
    fn captured_now<T: SyncRow>(&self, conn: &Connection) -> Result<bool> {
        let prefix = format!(
            "{}{:016x}_",
            d1_sync_schema::capture::trigger_prefix(&self.table, T::TABLE),
            T::DEFINITION_ID
        );
        let has_trigger: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1
                 AND substr(name, 1, length(?2)) = ?2)",
            )?
            .query_row(params![T::TABLE, prefix], |r| r.get(0))?;
        if !has_trigger {
            return Ok(false);
        }
        let paused: bool = conn
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE queue = ?1)",
                d1_sync_schema::sql::quote_ident(d1_sync_schema::capture::PAUSED_TABLE)
            ))?
            .query_row([&self.table], |r| r.get(0))?;
        Ok(!paused)
    }

    /// Only queues an upsert of the whole row for D1; writes nothing locally (see
    /// [`Outbox::save`]). For rows you write yourself in the same transaction.
    pub fn enqueue_upsert<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        let payload = upsert_payload::<T>(&row.values());
        let key = codec::stored_array(&row.key_values());
        self.enqueue::<T>(tx, &key, Op::Upsert, payload)
    }

    /// Only queues an `UPDATE` of some columns for D1; writes nothing locally (see
    /// [`Outbox::patch`]). D1 leaves other columns alone and creates no row. Key and
    /// insert-only columns cannot be set; at least one other column must be.
    pub fn enqueue_update<T: SyncRow>(
        &self,
        tx: &Transaction<'_>,
        row: &T,
        columns: &[&str],
    ) -> Result<i64> {
        check_patch::<T>(columns)?;
        let payload = update_payload::<T>(&row.values(), columns);
        let key = codec::stored_array(&row.key_values());
        self.enqueue::<T>(tx, &key, Op::Update, payload)
    }

    /// Only queues a delete of the row for D1; deletes nothing locally (see
    /// [`Outbox::remove`]).
    ///
    /// On a versioned table the delete carries `row`'s version.
    pub fn enqueue_delete<T: SyncRow>(&self, tx: &Transaction<'_>, row: &T) -> Result<i64> {
        let payload = delete_payload(row, None)?;
        self.enqueue::<T>(
            tx,
            &codec::stored_array(&row.key_values()),
            Op::Delete,
            payload,
        )
    }

    /// Only queues a delete by key values (in `T::PRIMARY_KEY` order) for D1; deletes nothing
    /// locally. Refused on a versioned table, whose delete must carry a version: use
    /// [`Outbox::enqueue_delete`] with the row.
    pub fn enqueue_delete_key<T: SyncRow>(
        &self,
        tx: &Transaction<'_>,
        key: &[Value],
    ) -> Result<i64> {
        if let Some(v) = T::VERSION {
            return Err(Error::Config(format!(
                "`{}` is versioned by `{v}`: a delete must carry the version of the row it deletes; use `enqueue_delete` with the row",
                T::TABLE
            )));
        }
        if key.len() != T::PRIMARY_KEY.len() {
            return Err(Error::KeyArity {
                table: T::TABLE.to_string(),
                want: T::PRIMARY_KEY.len(),
                got: key.len(),
            });
        }
        self.enqueue::<T>(tx, &codec::stored_array(key), Op::Delete, "{}".to_string())
    }
}

/// What a record is written under.
#[derive(Debug, Clone, Copy)]
enum Under {
    /// No stored definition: the record never merges.
    Raw,
    /// The stored definition `id`. With `merge`, the record may merge into its row's pending
    /// record; without, it is appended (always correct, as with coalescing off, and a lookup
    /// less).
    Definition { id: i64, merge: bool },
}

/// What a local write did.
struct Written {
    /// Rows it changed.
    changed: usize,
    /// Whether it changed more than its own (a trigger or a cascade ran).
    triggered: bool,
    /// Whether it inserted a new row.
    new_row: bool,
}

/// The stored payload of an upsert: every column but the key, which the record's row key
/// holds (stored once).
fn upsert_payload<T: SyncRow>(values: &[Value]) -> String {
    codec::stored_object(
        T::COLUMNS
            .iter()
            .copied()
            .zip(values.iter())
            .filter(|(c, _)| !T::PRIMARY_KEY.contains(c)),
    )
}

/// The stored payload of an update: the columns set (the key is the row key).
fn update_payload<T: SyncRow>(values: &[Value], columns: &[&str]) -> String {
    codec::stored_object(
        T::COLUMNS
            .iter()
            .copied()
            .zip(values.iter())
            .filter(|(c, _)| columns.contains(c)),
    )
}

/// The payload of a delete: `{}`, or on a versioned table the version it carries — `deleted`
/// (the local row's) when there was one, else `row`'s.
fn delete_payload<T: SyncRow>(row: &T, deleted: Option<i64>) -> Result<String> {
    let Some(v) = T::VERSION else {
        return Ok("{}".to_string());
    };
    let version = match deleted {
        Some(d) => Value::Integer(d),
        None => {
            let i = T::COLUMNS.iter().position(|c| *c == v);
            match i.map(|i| row.values().swap_remove(i)) {
                Some(Value::Integer(n)) => Value::Integer(n),
                _ => {
                    return Err(Error::Config(format!(
                        "`{}`: the version `{v}` of the row to delete is not an integer",
                        T::TABLE
                    )))
                }
            }
        }
    };
    Ok(codec::stored_object([(v, &version)]))
}

/// The columns a patch may set: named, in the whitelist, not key or insert-only; on a
/// versioned table, the version among them.
fn check_patch<T: SyncRow>(columns: &[&str]) -> Result<()> {
    if columns.is_empty() {
        return Err(Error::Config(format!(
            "an update of `{}` must name at least one column",
            T::TABLE
        )));
    }
    for c in columns {
        if !T::COLUMNS.contains(c) {
            return Err(Error::UnknownColumn {
                table: T::TABLE.to_string(),
                column: (*c).to_string(),
            });
        }
        if T::PRIMARY_KEY.contains(c) || T::INSERT_ONLY.contains(c) {
            return Err(Error::NotUpdatable {
                table: T::TABLE.to_string(),
                column: (*c).to_string(),
            });
        }
    }
    if let Some(v) = T::VERSION.filter(|v| !columns.contains(v)) {
        return Err(Error::Config(format!(
            "an update of `{}` must set its version `{v}` too (stamp a newer one): the guard against stale writes compares it",
            T::TABLE
        )));
    }
    Ok(())
}
