//! Working on a SQLite file that other processes open at the same moment (the app, a
//! `d1sync run`, a second instance): switching it to WAL, one unit of writes (inside the
//! caller's transaction when there is one, or in one of its own that takes the write lock
//! before it reads), and the small schema and lock questions the rest of the crate asks.

use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

/// Whether `table` exists in `conn`'s main schema.
pub(crate) fn table_exists(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
    )?
    .query_row([table], |r| r.get(0))
}

/// Whether `e` says another connection held a lock past the busy timeout.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Puts the file in WAL mode (a file in memory keeps its own mode).
///
/// SQLite answers a change of journal mode that meets another connection's lock with
/// `SQLITE_BUSY` at once, without the busy handler: connections opening a new file together
/// would fail. This waits for that lock instead, as long as `wait`.
pub(crate) fn set_wal(conn: &Connection, wait: Duration) -> rusqlite::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other.map(|_| ()),
        }
    }
}

/// Runs `f` as one unit of writes on `conn`, all of it or none.
///
/// - Inside the caller's transaction: under the savepoint `name`, rolled back to when `f`
///   fails; the caller's transaction goes on.
/// - Outside one: in a transaction begun `IMMEDIATE`. It takes the write lock first, waiting
///   for another writer up to the connection's busy timeout, so what `f` reads is still true
///   when it writes. A deferred transaction that read first would instead fail at its first
///   write (`SQLITE_BUSY`, without waiting) whenever another process wrote in between, as
///   processes that start at once and install the same queue or apply the same migrations do.
pub(crate) fn write_unit<T, E>(
    conn: &Connection,
    name: &str,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E>
where
    E: From<rusqlite::Error>,
{
    let own = conn.is_autocommit();
    if own {
        conn.execute_batch("BEGIN IMMEDIATE")?;
    } else {
        conn.execute_batch(&format!("SAVEPOINT {name}"))?;
    }
    let out = f();
    let end = match (&out, own) {
        (Ok(_), true) => "COMMIT".to_string(),
        (Ok(_), false) => format!("RELEASE {name}"),
        (Err(_), true) => "ROLLBACK".to_string(),
        (Err(_), false) => format!("ROLLBACK TO {name}; RELEASE {name}"),
    };
    if let Err(e) = conn.execute_batch(&end) {
        // A commit that failed leaves the transaction open: end it, so the connection is
        // usable, and report the failure (nothing of `f` was written).
        if own && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(e.into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn on_its_own_it_commits_or_rolls_back_and_leaves_autocommit() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        write_unit(&conn, "u", || {
            conn.execute("INSERT INTO t VALUES (1)", []).map(|_| ())
        })
        .unwrap();
        assert!(conn.is_autocommit());
        let failed: rusqlite::Result<()> = write_unit(&conn, "u", || {
            conn.execute("INSERT INTO t VALUES (2)", [])?;
            conn.execute("INSERT INTO nowhere VALUES (3)", [])?;
            Ok(())
        });
        assert!(failed.is_err());
        assert!(conn.is_autocommit());
        assert_eq!(count(&conn), 1, "the failed unit wrote nothing");
    }

    #[test]
    fn inside_a_transaction_it_is_a_savepoint_the_caller_keeps() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x); BEGIN; INSERT INTO t VALUES (0);")
            .unwrap();
        let failed: rusqlite::Result<()> = write_unit(&conn, "u", || {
            conn.execute("INSERT INTO t VALUES (1)", [])?;
            conn.execute("INSERT INTO nowhere VALUES (2)", [])?;
            Ok(())
        });
        assert!(failed.is_err());
        assert!(!conn.is_autocommit(), "the caller's transaction goes on");
        write_unit(&conn, "u", || {
            conn.execute("INSERT INTO t VALUES (3)", []).map(|_| ())
        })
        .unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
        assert_eq!(
            count(&conn),
            0,
            "the caller's rollback takes the unit with it"
        );
    }

    #[test]
    fn connections_opening_a_new_file_together_all_get_wal() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f.db");
            let start = std::sync::Barrier::new(6);
            std::thread::scope(|s| {
                for _ in 0..6 {
                    s.spawn(|| {
                        start.wait();
                        let c = Connection::open(&path).unwrap();
                        c.busy_timeout(Duration::from_secs(5)).unwrap();
                        set_wal(&c, Duration::from_secs(5)).unwrap();
                        let mode: String = c
                            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                            .unwrap();
                        assert_eq!(mode, "wal");
                    });
                }
            });
        }
    }

    #[test]
    fn on_its_own_it_takes_the_write_lock_before_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let a = Connection::open(&path).unwrap();
        a.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
            .unwrap();
        let b = Connection::open(&path).unwrap();
        b.busy_timeout(std::time::Duration::from_millis(0)).unwrap();
        a.execute_batch("BEGIN IMMEDIATE").unwrap();
        let r: rusqlite::Result<()> = write_unit(&b, "u", || Ok(()));
        assert!(
            r.is_err(),
            "the lock is taken at the start, not at the first write"
        );
        assert!(b.is_autocommit());
        a.execute_batch("COMMIT").unwrap();
        write_unit(&b, "u", || {
            b.execute("INSERT INTO t VALUES (1)", []).map(|_| ())
        })
        .unwrap();
        assert_eq!(count(&a), 1);
    }
}
