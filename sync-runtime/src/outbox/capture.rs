//! Capture: triggers that queue raw SQL writes (another tool, a data migration, `execute`),
//! built by the schema crate from the same table definition the derive uses.

use rusqlite::{params, Connection, OptionalExtension};
use tracing::{info, warn};

use super::{now_ms, Outbox};
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::row::{SyncRow, TableDef};
use crate::txn::{table_exists, write_unit};
use d1_sync_schema::capture::{self, Capture, TriggerName};
use d1_sync_schema::sql::quote_ident;

impl Outbox {
    /// Installs `AFTER INSERT/UPDATE/DELETE` triggers on `T`'s table, so that any write to it,
    /// raw SQL included, queues its record. Typed writes to a captured table are queued once,
    /// by the trigger. Installing again is a no-op; installing after `T`'s definition changed
    /// replaces the triggers. The table is remembered as captured: triggers a migration drops
    /// with a rebuilt table are made again (see [`Outbox::restore_capture`]) until
    /// [`Outbox::uncapture`].
    ///
    /// Refused, with the reason, when the table is missing, has no primary key or another
    /// one, or has writable columns `T` does not write (a raw write to them would not reach
    /// D1).
    ///
    /// ```
    /// use d1_sync::{D1Sync, Outbox};
    /// # fn main() -> Result<(), d1_sync::Error> {
    /// #[derive(D1Sync)]
    /// #[d1(table = "notes")]
    /// struct Note { #[d1(primary_key)] id: i64, body: String }
    ///
    /// let conn = d1_sync::open(":memory:")?;
    /// conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")?;
    /// let outbox = Outbox::new();
    /// outbox.capture::<Note>(&conn)?;
    /// conn.execute("INSERT INTO notes VALUES (1, 'written by hand')", [])?;
    /// assert_eq!(outbox.counts(&conn)?.pending, 1);
    /// # Ok(()) }
    /// ```
    pub fn capture<T: SyncRow>(&self, conn: &Connection) -> Result<()> {
        self.capture_table(conn, &T::table_def())
    }

    /// Installs capture on every table of `registry` (see [`Outbox::capture`]).
    pub fn capture_all(&self, conn: &Connection, registry: &Registry) -> Result<()> {
        for name in registry.names() {
            if let Some(def) = registry.get(name) {
                self.capture_table(conn, def)?;
            }
        }
        Ok(())
    }

    /// Installs capture on the table `def` describes (see [`Outbox::capture`]).
    pub fn capture_table(&self, conn: &Connection, def: &TableDef) -> Result<()> {
        self.install(conn)?;
        check_capturable(conn, def)?;
        self.install_triggers(conn, def, self.coalesce)
    }

    /// Replaces capture triggers of an earlier form (see [`capture::FORM`]) with this build's
    /// form of the same definition, coalescing as they did (form 1, whose name does not say,
    /// takes this outbox's setting). Their tables were checked when they were installed. Run
    /// by every [`Outbox::install`]: one read of the schema when nothing is out of date.
    ///
    /// `strict` (while migrating the queue): a trigger naming a definition the queue does not
    /// hold is an error; otherwise that trigger is left as it is.
    pub(super) fn upgrade_capture(&self, conn: &Connection, strict: bool) -> Result<()> {
        let old: Vec<(String, TriggerName)> = self
            .insert_triggers(conn)?
            .into_iter()
            .filter_map(|(_, name)| {
                let parsed = TriggerName::parse(&name).filter(|t| t.form < capture::FORM)?;
                Some((name, parsed))
            })
            .collect();
        for (name, old) in old {
            let def = match self.stored_definition(conn, old.definition_id)? {
                Some(def) => def,
                None if strict => {
                    return Err(Error::Capture {
                        table: name,
                        reason: "its trigger names a table definition the queue does not hold; capture it again".into(),
                    })
                }
                None => continue,
            };
            self.install_triggers(conn, &def, old.coalesce.unwrap_or(self.coalesce))?;
        }
        Ok(())
    }

    /// Installs (or replaces) the triggers of `def`, without checks.
    fn install_triggers(&self, conn: &Connection, def: &TableDef, coalesce: bool) -> Result<()> {
        let columns: Vec<&str> = def.columns.iter().map(String::as_str).collect();
        let key: Vec<&str> = def.primary_key.iter().map(String::as_str).collect();
        let c = Capture {
            queue: &self.table,
            table: &def.name,
            columns: &columns,
            primary_key: &key,
            definition_id: def.definition_id(),
            coalesce,
            version: def.version.as_deref(),
        };
        let names = capture::trigger_names(&c);
        let prefix = capture::trigger_prefix(&self.table, &def.name);
        write_unit(conn, "d1_sync_capture", || {
            conn.execute_batch(&capture::create_paused_table_sql())?;
            conn.execute_batch(&capture::create_captured_table_sql())?;
            conn.execute(
                &self.define_sql,
                params![c.definition_id, def.name, def.definition(), now_ms()],
            )?;
            conn.execute(
                &capture::remember_captured_sql(),
                params![self.table, def.name, c.definition_id, coalesce],
            )?;
            let existing = triggers_with_prefix(conn, &def.name, &prefix)?;
            for old in existing.iter().filter(|n| !names.contains(n)) {
                conn.execute_batch(&format!("DROP TRIGGER {}", quote_ident(old)))?;
            }
            if !names.iter().all(|n| existing.contains(n)) {
                for n in &names {
                    conn.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", quote_ident(n)))?;
                }
                for sql in capture::create_triggers_sql(&c) {
                    conn.execute_batch(&sql)?;
                }
            }
            Ok(())
        })
    }

    /// Removes the capture triggers of `table` (any definition) from the app's file, and
    /// forgets that it was captured. Writes to it are then queued only by the typed methods.
    pub fn uncapture(&self, conn: &Connection, table: &str) -> Result<()> {
        let prefix = capture::trigger_prefix(&self.table, table);
        write_unit(conn, "d1_sync_uncapture", || {
            for name in triggers_with_prefix(conn, table, &prefix)? {
                conn.execute_batch(&format!("DROP TRIGGER {}", quote_ident(&name)))?;
            }
            if table_exists(conn, capture::CAPTURED_TABLE)? {
                conn.execute(
                    &format!(
                        "DELETE FROM {} WHERE queue = ?1 AND table_name = ?2",
                        quote_ident(capture::CAPTURED_TABLE)
                    ),
                    params![self.table, table],
                )?;
            }
            Ok(())
        })
    }

    /// Makes again, in the app's file, the capture triggers of tables captured into this queue
    /// that have none now: a migration that rebuilt the table (SQLite's way to change a
    /// column: a new table, the rows copied, the old one dropped) dropped them with it. Each
    /// is checked against its definition first; a table that no longer fits it (a column the
    /// struct does not write) stays uncaptured, with a warning, until `capture` is called with
    /// a struct that fits. Returns the tables whose capture was made again. Run by every [`Outbox::install`] and
    /// after [`crate::migrate()`] applied a file.
    ///
    /// ```
    /// use d1_sync::{D1Sync, Outbox};
    /// # fn main() -> Result<(), d1_sync::Error> {
    /// #[derive(D1Sync)]
    /// #[d1(table = "notes")]
    /// struct Note { #[d1(primary_key)] id: i64, body: String }
    ///
    /// let conn = d1_sync::open(":memory:")?;
    /// conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")?;
    /// let outbox = Outbox::new();
    /// outbox.capture::<Note>(&conn)?;
    /// // Another tool's migration rebuilds the table; the triggers go with the old one.
    /// conn.execute_batch(
    ///     "CREATE TABLE notes_new (id INTEGER PRIMARY KEY, body TEXT NOT NULL DEFAULT '');
    ///      INSERT INTO notes_new SELECT id, coalesce(body, '') FROM notes;
    ///      DROP TABLE notes;
    ///      ALTER TABLE notes_new RENAME TO notes;",
    /// )?;
    /// assert_eq!(outbox.lost_capture(&conn)?, ["notes"]);
    /// assert_eq!(outbox.restore_capture(&conn)?, ["notes"]); // or the next `d1_sync::open`
    /// conn.execute("INSERT INTO notes VALUES (1, 'queued')", [])?;
    /// assert_eq!(outbox.counts(&conn)?.pending, 1);
    /// # Ok(()) }
    /// ```
    pub fn restore_capture(&self, conn: &Connection) -> Result<Vec<String>> {
        let mut restored = Vec::new();
        for (table, id, coalesce) in self.lost(conn)? {
            let Some(def) = self.stored_definition(conn, id)? else {
                warn!(table = %table, queue = %self.table, "capture cannot be made again: the queue does not hold its definition; capture the table again");
                continue;
            };
            if let Err(e) = check_capturable(conn, &def) {
                warn!(table = %table, queue = %self.table, "capture was dropped with the table and cannot be made again: {e}; capture it again with a struct that fits");
                continue;
            }
            self.install_triggers(conn, &def, coalesce)?;
            info!(table = %table, queue = %self.table, "capture made again: its triggers were gone (the table was rebuilt)");
            restored.push(table);
        }
        Ok(restored)
    }

    /// Reads (writes nothing): the tables captured into this queue whose triggers are gone (a
    /// migration rebuilt the table and [`Outbox::restore_capture`] has not run since, or the
    /// table no longer fits its definition), sorted. `d1sync status` lists them.
    pub fn lost_capture(&self, conn: &Connection) -> Result<Vec<String>> {
        Ok(self.lost(conn)?.into_iter().map(|(t, _, _)| t).collect())
    }

    /// Reads (writes nothing): captured tables whose capture no longer fits them, each with the
    /// reason, sorted: a migration added a column the struct does not write (raw writes of it
    /// never reach D1), or changed the key. Capture the table again with a struct that fits.
    /// Every install logs them as warnings, and `d1sync status` lists them.
    pub fn capture_gaps(&self, conn: &Connection) -> Result<Vec<(String, String)>> {
        let mut gaps = Vec::new();
        for (table, trigger) in self.insert_triggers(conn)? {
            let def = match TriggerName::parse(&trigger) {
                Some(t) => self.stored_definition(conn, t.definition_id)?,
                None => None,
            };
            let Some(def) = def else {
                gaps.push((
                    table,
                    "its trigger names a table definition the queue does not hold".to_string(),
                ));
                continue;
            };
            match check_capturable(conn, &def) {
                Ok(()) => {}
                Err(Error::Capture { reason, .. }) => gaps.push((table, reason)),
                Err(e) => return Err(e),
            }
        }
        Ok(gaps)
    }

    /// The lost captures, each with its definition's id and coalescing.
    fn lost(&self, conn: &Connection) -> Result<Vec<(String, i64, bool)>> {
        if !table_exists(conn, capture::CAPTURED_TABLE)? {
            return Ok(Vec::new());
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT table_name, definition_id, coalescing FROM {} WHERE queue = ?1 ORDER BY table_name",
            quote_ident(capture::CAPTURED_TABLE)
        ))?;
        let remembered: Vec<(String, i64, bool)> = stmt
            .query_map([&self.table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let captured = self.insert_triggers(conn)?;
        let mut lost = Vec::new();
        for (table, id, coalesce) in remembered {
            if !captured.iter().any(|(t, _)| *t == table) && table_exists(conn, &table)? {
                lost.push((table, id, coalesce));
            }
        }
        Ok(lost)
    }

    /// The insert triggers capturing into this queue, each with its table, sorted by table:
    /// one per captured table (and definition, while an install replaces them).
    fn insert_triggers(&self, conn: &Connection) -> Result<Vec<(String, String)>> {
        let prefix = capture::queue_prefix(&self.table);
        let mut stmt = conn.prepare_cached(
            "SELECT tbl_name, name FROM sqlite_schema WHERE type = 'trigger'
             AND substr(name, 1, length(?1)) = ?1 AND name LIKE '%\\_insert' ESCAPE '\\'
             ORDER BY tbl_name, name",
        )?;
        let triggers = stmt
            .query_map([&prefix], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(triggers)
    }

    /// The table definition the queue stores under `id`, if any.
    fn stored_definition(&self, conn: &Connection, id: i64) -> Result<Option<TableDef>> {
        let text: Option<String> = conn
            .query_row(
                &format!("SELECT definition FROM {} WHERE id = ?1", self.tables),
                [id],
                |r| r.get(0),
            )
            .optional()?;
        text.as_deref()
            .map(TableDef::from_definition)
            .transpose()
            .map_err(Error::Config)
    }

    /// The tables whose writes are captured into this queue (under any definition), sorted.
    pub fn captured_tables(&self, conn: &Connection) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .insert_triggers(conn)?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        names.dedup();
        Ok(names)
    }

    /// Runs `f` with capture paused for this queue, in the caller's transaction: for rows that
    /// came from D1 and must not go back to it. Other connections never see the pause (it is
    /// written and removed inside the transaction).
    ///
    /// ```
    /// use d1_sync::{D1Sync, Outbox};
    /// # fn main() -> Result<(), d1_sync::Error> {
    /// # #[derive(D1Sync)]
    /// # #[d1(table = "notes")]
    /// # struct Note { #[d1(primary_key)] id: i64, body: String }
    /// let mut conn = d1_sync::open(":memory:")?;
    /// conn.execute_batch("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")?;
    /// let outbox = Outbox::new();
    /// outbox.capture::<Note>(&conn)?;
    /// let tx = conn.transaction()?;
    /// outbox.without_capture(&tx, |tx| {
    ///     tx.execute("INSERT INTO notes VALUES (1, 'pulled from D1')", [])?;
    ///     Ok(())
    /// })?;
    /// tx.commit()?;
    /// assert_eq!(outbox.counts(&conn)?.pending, 0);
    /// # Ok(()) }
    /// ```
    pub fn without_capture<R>(
        &self,
        tx: &rusqlite::Transaction<'_>,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R>,
    ) -> Result<R> {
        let paused = quote_ident(capture::PAUSED_TABLE);
        tx.execute_batch(&capture::create_paused_table_sql())?;
        tx.execute(
            &format!("INSERT INTO {paused} (queue) VALUES (?1) ON CONFLICT DO NOTHING"),
            [&self.table],
        )?;
        let out = f(tx);
        tx.execute(
            &format!("DELETE FROM {paused} WHERE queue = ?1"),
            [&self.table],
        )?;
        out
    }
}

/// Makes again, for every queue, the capture triggers a migration dropped with their tables
/// (see [`Outbox::restore_capture`]): after [`crate::migrate()`] applied files.
pub(crate) fn restore_capture_of_every_queue(conn: &Connection) -> Result<()> {
    if !table_exists(conn, capture::CAPTURED_TABLE)? {
        return Ok(());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT DISTINCT queue FROM {} ORDER BY queue",
        quote_ident(capture::CAPTURED_TABLE)
    ))?;
    let queues: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for queue in queues {
        Outbox::with_table(queue).restore_capture(conn)?;
    }
    Ok(())
}

fn triggers_with_prefix(conn: &Connection, table: &str, prefix: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1
         AND substr(name, 1, length(?2)) = ?2",
    )?;
    let names = stmt
        .query_map(params![table, prefix], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

/// The table exists, has `def`'s key, and every writable column of it is in the whitelist.
fn check_capturable(conn: &Connection, def: &TableDef) -> Result<()> {
    let refuse = |reason: String| Error::Capture {
        table: def.name.clone(),
        reason,
    };
    let mut stmt = conn.prepare("SELECT name, pk, hidden FROM pragma_table_xinfo(?1)")?;
    let cols: Vec<(String, i64, i64)> = stmt
        .query_map([&def.name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    if cols.is_empty() {
        return Err(refuse("no such table in this database".into()));
    }
    let mut key: Vec<(i64, &str)> = cols
        .iter()
        .filter(|c| c.1 > 0)
        .map(|c| (c.1, c.0.as_str()))
        .collect();
    key.sort();
    let key: Vec<&str> = key.into_iter().map(|k| k.1).collect();
    if key.is_empty() {
        return Err(refuse(
            "it has no primary key, so a captured delete could not say which row it removes".into(),
        ));
    }
    if key != def.primary_key {
        return Err(refuse(format!(
            "its primary key is ({}), the definition's is ({})",
            key.join(", "),
            def.primary_key.join(", ")
        )));
    }
    // Hidden 0: an ordinary column; 1: hidden (virtual tables); 2, 3: generated.
    let missing: Vec<&str> = cols
        .iter()
        .filter(|c| c.2 == 0 && !def.has_column(&c.0))
        .map(|c| c.0.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(refuse(format!(
            "the whitelist lacks its column(s) {}: a raw write to them would never reach D1; add them to the struct (or the registry)",
            missing.join(", ")
        )));
    }
    let unknown: Vec<&str> = def
        .columns
        .iter()
        .filter(|c| !cols.iter().any(|t| t.2 == 0 && &t.0 == *c))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(refuse(format!(
            "the whitelist names column(s) {} that the table lacks",
            unknown.join(", ")
        )));
    }
    Ok(())
}
