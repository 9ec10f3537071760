//! The queue's tests: ordering, leases, charges, the log, migration, and query plans.

use std::time::Duration;

use rusqlite::Connection;

use super::install::QUEUE_VERSION;
use super::protocol::{id_runs, newest_runs};
use super::*;
use crate::change::Op;
use crate::error::Error;

fn setback(id: i64, reason: impl Into<String>, until: i64) -> Setback {
    Setback {
        id,
        reason: reason.into(),
        until,
    }
}

fn refusal(id: i64, reason: impl Into<String>) -> Refusal {
    Refusal {
        id,
        table: "t".into(),
        reason: reason.into(),
    }
}

fn setup() -> (Connection, Outbox) {
    let conn = Connection::open_in_memory().unwrap();
    let o = Outbox::new();
    o.install(&conn).unwrap();
    o.install(&conn).unwrap();
    (conn, o)
}

fn put(conn: &Connection, o: &Outbox, key: &str) -> i64 {
    o.enqueue_raw(
        conn,
        "t",
        &format!("[\"{key}\"]"),
        Op::Upsert.as_str(),
        &format!("{{\"id\":\"{key}\"}}"),
    )
    .unwrap()
}

const LEASE: Duration = Duration::from_secs(60);

/// A typed row for the tests of typed writes, with an insert-only column.
#[derive(crate::D1Sync, Debug, Clone)]
#[d1(table = "notes")]
struct Note {
    #[d1(primary_key)]
    id: i64,
    body: String,
    #[d1(insert_only)]
    created_at: i64,
}

/// A queue, and the `notes` table of [`Note`].
fn notes() -> (Connection, Outbox) {
    let (conn, o) = setup();
    conn.execute_batch(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, created_at INTEGER NOT NULL)",
    )
    .unwrap();
    (conn, o)
}

fn who() -> Claimant<'static> {
    Claimant {
        owner: "w",
        now: now_ms(),
        lease: LEASE,
        limit: 10,
    }
}

fn claim(conn: &mut Connection, o: &Outbox, owner: &str, now: i64) -> Vec<i64> {
    match o.claim(conn, owner, now, LEASE, 10).unwrap() {
        Claim::Records(r) => r.iter().map(|r| r.id).collect(),
        Claim::HeldBy(h) => panic!("lease held by {h}"),
    }
}

#[test]
fn records_of_a_row_are_claimed_in_order_together() {
    let (mut conn, o) = setup();
    let a1 = put(&conn, &o, "a");
    let b1 = put(&conn, &o, "b");
    let a2 = put(&conn, &o, "a");
    assert_eq!(claim(&mut conn, &o, "w", now_ms()), [a1, b1, a2]);
}

#[test]
fn one_worker_at_a_time_holds_the_queue() {
    let (mut conn, o) = setup();
    put(&conn, &o, "a");
    let t0 = now_ms();
    assert_eq!(claim(&mut conn, &o, "w1", t0).len(), 1);
    assert!(
        matches!(o.claim(&mut conn, "w2", t0 + 10, LEASE, 10).unwrap(), Claim::HeldBy(h) if h == "w1")
    );
    assert_eq!(o.lease(&conn).unwrap().unwrap().owner, "w1");
    // The holder renews at will; after the lease runs out another worker takes over.
    assert_eq!(claim(&mut conn, &o, "w1", t0 + 20).len(), 1);
    let later = t0 + 20 + 60_000;
    assert_eq!(
        claim(&mut conn, &o, "w2", later).len(),
        1,
        "the expired lease is taken over"
    );
    // A released lease is free at once.
    o.release_lease(&conn, "w2").unwrap();
    assert_eq!(claim(&mut conn, &o, "w3", later + 1).len(), 1);
    assert!(o.lease(&conn).unwrap().is_some());
}

#[test]
fn a_record_in_backoff_holds_back_its_row_only() {
    let (mut conn, o) = setup();
    let a1 = put(&conn, &o, "a");
    let a2 = put(&conn, &o, "a");
    let b1 = put(&conn, &o, "b");
    o.charge(&mut conn, &[setback(a1, "boom", now_ms() + 60_000)], 10)
        .unwrap();
    assert_eq!(
        claim(&mut conn, &o, "w", now_ms()),
        [b1],
        "a2 waits behind a1; b is free"
    );
    o.mark_synced(&mut conn, &[b1], None).unwrap();
    // When a1 is due again, a1 then a2 go out, in order.
    assert_eq!(claim(&mut conn, &o, "w", now_ms() + 61_000), [a1, a2]);
}

#[test]
fn a_prefetch_never_passes_a_record_that_waited() {
    let (mut conn, o) = setup();
    let a1 = put(&conn, &o, "a");
    let b1 = put(&conn, &o, "b");
    let a2 = put(&conn, &o, "a");
    let b2 = put(&conn, &o, "b");
    // a1 was charged and is due again, but it is not in the batch in flight (b1 is):
    // a prefetch after b1 must not send a2 ahead of it.
    o.charge(&mut conn, &[setback(a1, "boom", 1)], 10).unwrap();
    let next = match o.claim_after(&mut conn, &who(), b1).unwrap().0 {
        Claim::Records(r) => r.iter().map(|r| r.id).collect::<Vec<_>>(),
        Claim::HeldBy(_) => unreachable!(),
    };
    assert!(
        next.is_empty(),
        "a2 must not pass a1, and nothing after a2 may go either: {next:?}"
    );
    // Once a1 is applied, a prefetch after b1 (still in flight) takes the rest: it is sent
    // only once b1 is applied too.
    o.mark_synced(&mut conn, &[a1], None).unwrap();
    let next = match o.claim_after(&mut conn, &who(), b1).unwrap().0 {
        Claim::Records(r) => r.iter().map(|r| r.id).collect::<Vec<_>>(),
        Claim::HeldBy(_) => unreachable!(),
    };
    assert_eq!(next, [a2, b2]);
    // A retried dead letter counts as having waited too.
    let a3 = put(&conn, &o, "a");
    o.fail(&mut conn, &[refusal(a2, "dead")]).unwrap();
    o.retry(&conn, Selection::Id(a2)).unwrap();
    let next = match o.claim_after(&mut conn, &who(), a2).unwrap().0 {
        Claim::Records(r) => r.iter().map(|r| r.id).collect::<Vec<_>>(),
        Claim::HeldBy(_) => unreachable!(),
    };
    assert!(
        !next.contains(&a3),
        "a3 must not pass the retried a2: {next:?}"
    );
    // A plain claim takes them all, in order.
    assert_eq!(claim(&mut conn, &o, "w", now_ms()), [b1, a2, b2, a3]);
}

#[test]
fn a_dead_letter_holds_back_its_row_until_retried_or_dropped() {
    let (mut conn, o) = setup();
    let a1 = put(&conn, &o, "a");
    let a2 = put(&conn, &o, "a");
    o.fail(&mut conn, &[refusal(a1, "bad")]).unwrap();
    assert!(claim(&mut conn, &o, "w", now_ms()).is_empty());
    let dead = o.failed(&conn, 10).unwrap();
    assert_eq!(
        (dead.len(), dead[0].id, dead[0].last_error.as_str()),
        (1, a1, "bad")
    );

    assert_eq!(o.retry(&conn, Selection::Id(a1)).unwrap(), 1);
    assert_eq!(claim(&mut conn, &o, "w", now_ms()), [a1, a2]);
    o.fail(&mut conn, &[refusal(a1, "bad again")]).unwrap();
    assert_eq!(o.drop_failed(&conn, Selection::All).unwrap(), 1);
    assert_eq!(claim(&mut conn, &o, "w", now_ms()), [a2]);
}

#[test]
fn attempts_lead_to_failed_at_the_maximum() {
    let (mut conn, o) = setup();
    let a = put(&conn, &o, "a");
    for i in 1..=3 {
        let got = match o
            .claim(&mut conn, "w", now_ms() + i * 1000, LEASE, 10)
            .unwrap()
        {
            Claim::Records(r) => r,
            Claim::HeldBy(_) => unreachable!(),
        };
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attempts as i64, i - 1);
        o.charge(&mut conn, &[setback(a, format!("e{i}"), 0)], 3)
            .unwrap();
    }
    let c = o.counts(&conn).unwrap();
    assert_eq!((c.failed, c.pending), (1, 0));
    assert_eq!(o.failed(&conn, 1).unwrap()[0].last_error, "e3");
    assert_eq!(o.last_error(&conn).unwrap().as_deref(), Some("e3"));
}

#[test]
fn only_pending_records_are_marked() {
    let (mut conn, o) = setup();
    let a = put(&conn, &o, "a");
    let b = put(&conn, &o, "b");
    o.fail(&mut conn, &[refusal(b, "dead")]).unwrap();
    assert_eq!(o.mark_synced(&mut conn, &[a, b], None).unwrap(), 1);
    assert_eq!(o.mark_synced(&mut conn, &[a], None).unwrap(), 0, "once");
    let c = o.counts(&conn).unwrap();
    assert_eq!((c.synced, c.failed), (1, 1));
}

#[test]
fn an_acknowledgement_deletes_exactly_its_records_and_logs_the_newest_keep() {
    let (mut conn, o) = setup();
    let all: Vec<i64> = (0..10).map(|i| put(&conn, &o, &i.to_string())).collect();
    // Runs with gaps, out of order: the records in the gaps stay pending.
    let acked = [all[7], all[0], all[1], all[2], all[5], all[6], all[9]];
    assert_eq!(o.acknowledge(&mut conn, &acked, None, &[], 4).unwrap(), 7);
    let pending: Vec<i64> = column(&conn, "SELECT id FROM d1_sync_queue ORDER BY id");
    assert_eq!(pending, [all[3], all[4], all[8]]);
    let logged: Vec<i64> = column(&conn, "SELECT id FROM d1_sync_queue_synced ORDER BY seq");
    assert_eq!(
        logged,
        [all[5], all[6], all[7], all[9]],
        "the newest 4, in order"
    );
    // Acknowledged again (an answer seen twice): nothing moves, nothing is logged.
    assert_eq!(o.acknowledge(&mut conn, &acked, None, &[], 4).unwrap(), 0);
    assert_eq!(o.counts(&conn).unwrap().synced, 4);
}

#[test]
fn id_runs_and_their_newest_ids() {
    assert_eq!(id_runs(&[]), []);
    assert_eq!(id_runs(&[5, 3, 4, 4, 9, 1]), [(1, 1), (3, 5), (9, 9)]);
    assert_eq!(
        id_runs(&[i64::MAX, i64::MAX - 1]),
        [(i64::MAX - 1, i64::MAX)]
    );
    let runs = [(1, 1), (3, 5), (9, 9)];
    assert_eq!(newest_runs(&runs, 0), []);
    assert_eq!(newest_runs(&runs, 1), [(9, 9)]);
    assert_eq!(newest_runs(&runs, 3), [(4, 5), (9, 9)]);
    assert_eq!(newest_runs(&runs, 5), runs);
    assert_eq!(newest_runs(&runs, usize::MAX), runs);
}

#[test]
fn purge_keeps_the_newest_synced_records() {
    let (mut conn, o) = setup();
    let all: Vec<i64> = (0..10).map(|i| put(&conn, &o, &i.to_string())).collect();
    o.mark_synced(&mut conn, &all[..8], None).unwrap();
    assert_eq!(o.counts(&conn).unwrap().synced, 8);
    assert_eq!(o.purge(&conn, 3).unwrap(), 5);
    let kept: Vec<i64> = column(&conn, "SELECT id FROM d1_sync_queue_synced ORDER BY seq");
    assert_eq!(kept, all[5..8]);
    assert_eq!(
        o.counts(&conn).unwrap().pending,
        2,
        "unsynced records are never purged"
    );
    assert_eq!(o.purge(&conn, 100).unwrap(), 0);
    assert_eq!(o.purge(&conn, 0).unwrap(), 3);
    assert_eq!(o.counts(&conn).unwrap().synced, 0);
}

#[test]
fn superseded_records_are_logged_as_conflicts_and_trimmed_with_the_log() {
    let (mut conn, o) = setup();
    let all: Vec<i64> = (0..6).map(|i| put(&conn, &o, &i.to_string())).collect();
    let stale: Vec<Stale> = all[..4]
        .iter()
        .map(|&id| Stale {
            id,
            sent: Some(id),
            held: Some(id + 100),
            parent: (id == all[3]).then(|| "p [\"k\"]".to_string()),
        })
        .collect();
    assert_eq!(
        o.acknowledge(&mut conn, &all, None, &stale, usize::MAX)
            .unwrap(),
        6
    );
    let c = o.counts(&conn).unwrap();
    assert_eq!((c.pending, c.synced, c.superseded), (0, 6, 4));
    let listed = o.conflicts(&conn, 10).unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[0].id, all[3], "newest first");
    assert_eq!(listed[0].reason, "parent deleted: p [\"k\"]");
    assert_eq!(
        (
            listed[3].sent_version,
            listed[3].held_version,
            listed[3].reason.as_str()
        ),
        (Some(all[0]), Some(all[0] + 100), "newer version")
    );
    o.purge(&conn, 2).unwrap();
    let kept: Vec<i64> = o
        .conflicts(&conn, 10)
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(kept, [all[3], all[2]], "the newest kept");
}

#[test]
fn an_acknowledged_record_leaves_the_queue_for_the_log() {
    let (mut conn, o) = setup();
    let a = put(&conn, &o, "a");
    o.mark_synced(&mut conn, &[a], None).unwrap();
    let in_queue: i64 = conn
        .query_row("SELECT count(*) FROM d1_sync_queue", [], |r| r.get(0))
        .unwrap();
    let logged: (i64, String, String, String) = conn
        .query_row(
            "SELECT id, table_name, row_key, op FROM d1_sync_queue_synced",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(in_queue, 0);
    assert_eq!(logged, (a, "t".into(), "[\"a\"]".into(), "upsert".into()));
}

#[test]
fn a_version_1_queue_is_migrated_without_losing_a_record() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(
        "CREATE TABLE d1_sync_meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
         INSERT INTO d1_sync_meta VALUES ('queue_version:d1_sync_queue', 1);
         CREATE TABLE d1_sync_queue (
           id INTEGER PRIMARY KEY, table_name TEXT NOT NULL, row_key TEXT NOT NULL,
           op TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
           attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL DEFAULT 0,
           last_error TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
           synced_at INTEGER);
         CREATE INDEX d1_sync_queue_status_id ON d1_sync_queue (status, id);
         INSERT INTO d1_sync_queue (id, table_name, row_key, op, payload, status, created_at, updated_at, synced_at)
         VALUES (1, 't', '[\"a\"]', 'upsert', '{\"id\":\"a\"}', 'synced', 10, 11, 12),
                (2, 't', '[\"b\"]', 'upsert', '{\"id\":\"b\"}', 'pending', 20, 20, NULL),
                (3, 't', '[\"c\"]', 'upsert', '{\"id\":\"c\"}', 'failed', 30, 31, NULL);",
    )
    .unwrap();
    let o = Outbox::new();
    o.install(&conn).unwrap();
    let c = o.counts(&conn).unwrap();
    assert_eq!((c.pending, c.failed, c.synced), (1, 1, 1));
    let synced_at: i64 = conn
        .query_row(
            "SELECT synced_at FROM d1_sync_queue_synced WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(synced_at, 12);
    let version: i64 = conn
        .query_row("SELECT value FROM d1_sync_meta", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, QUEUE_VERSION);
    let indexes: Vec<String> = column(
        &conn,
        "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'd1_sync_queue' ORDER BY name",
    );
    assert_eq!(
        indexes,
        ["d1_sync_queue_blocking", "d1_sync_queue_rows"],
        "the status index is gone"
    );
    o.install(&conn).unwrap();
    assert_eq!(
        o.counts(&conn).unwrap(),
        c,
        "installing again changes nothing"
    );
    let defs: Vec<Option<i64>> = column(&conn, "SELECT def FROM d1_sync_queue ORDER BY id");
    assert_eq!(
        defs,
        [None, None],
        "old records have no stored definition: the drainer's registry applies"
    );
}

#[test]
fn a_typed_record_carries_its_tables_definition_stored_once() {
    let (mut conn, o) = notes();
    let tx = conn.transaction().unwrap();
    for id in 0..3 {
        let note = Note {
            id,
            body: "b".into(),
            created_at: 1,
        };
        o.save(&tx, &note).unwrap();
    }
    o.enqueue_raw(&tx, "notes", "[9]", "delete", r#"{"id":9}"#)
        .unwrap();
    tx.commit().unwrap();
    let defs: Vec<Option<i64>> = column(&conn, "SELECT def FROM d1_sync_queue ORDER BY id");
    let id = Some(<Note as crate::SyncRow>::DEFINITION_ID);
    assert_eq!(defs, [id, id, id, None]);
    let stored = o.definitions(&conn).unwrap();
    assert_eq!(stored, [<Note as crate::SyncRow>::table_def()]);
    assert_eq!(
        stored[0].definition_id(),
        <Note as crate::SyncRow>::DEFINITION_ID
    );

    let raw = o.records(&conn, &[1, 2, 3, 4]).unwrap();
    let texts = o.definitions_of(&conn, &raw).unwrap();
    assert_eq!(
        texts,
        [(
            <Note as crate::SyncRow>::DEFINITION_ID,
            <Note as crate::SyncRow>::DEFINITION.to_string()
        )]
    );

    // A rolled-back first write leaves neither the record nor the definition.
    conn.execute_batch("DELETE FROM d1_sync_queue_tables")
        .unwrap();
    let tx = conn.transaction().unwrap();
    o.save(
        &tx,
        &Note {
            id: 5,
            body: "b".into(),
            created_at: 1,
        },
    )
    .unwrap();
    drop(tx);
    assert!(o.definitions(&conn).unwrap().is_empty());
}

#[test]
fn install_works_inside_the_callers_transaction() {
    let mut conn = Connection::open_in_memory().unwrap();
    let tx = conn.transaction().unwrap();
    Outbox::new().install(&tx).unwrap();
    tx.commit().unwrap();
    assert_eq!(Outbox::new().counts(&conn).unwrap(), Counts::default());
}

/// The first column of every row of `sql`.
fn column<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<T> {
    conn.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The query plan of `sql`, its parameters bound to NULL.
fn plan(conn: &Connection, sql: &str) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
    stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .join("\n")
}

#[test]
fn the_hot_queries_walk_indexes_without_sorting() {
    // The very statements the queue runs (`sql`), planned with their parameters unbound.
    let (conn, o) = setup();
    let claim = plan(&conn, &sql::claim(&o));
    assert!(
        !claim.contains("TEMP B-TREE"),
        "the claim must not sort the backlog:\n{claim}"
    );
    assert!(
        claim.contains("SEARCH r USING INTEGER PRIMARY KEY (rowid>?)"),
        "the claim walks the queue from the cursor in id order:\n{claim}"
    );
    assert!(
        claim.contains("d1_sync_queue_blocking"),
        "the row check uses the partial index:\n{claim}"
    );
    for dead in [
        sql::failed(&o),
        sql::retry(&o),
        sql::drop_failed(&o),
        sql::waiting_rows(&o),
        sql::waiting(&o),
    ] {
        let dead = plan(&conn, &dead);
        assert!(
            dead.lines()
                .filter(|l| l.contains("d1_sync_queue"))
                .all(|l| l.contains("INDEX d1_sync_queue_blocking")),
            "dead letters and waiting records are found through their partial index, not the backlog:\n{dead}"
        );
    }
    let target = plan(
        &conn,
        o.merge_target_sql.as_deref().expect("coalescing is on"),
    );
    assert!(
        target.contains("SEARCH d1_sync_queue USING COVERING INDEX d1_sync_queue_rows (table_name=? AND row_key=?)")
            && !target.contains("SCAN d1_sync_queue ")
            && !target.contains("TEMP B-TREE"),
        "an enqueue finds the row's newest record through the rows index, and reads nothing else of the backlog:\n{target}"
    );
    let insert = plan(&conn, &o.insert_sql);
    assert!(
        !insert.contains("SCAN d1_sync_queue ") && !insert.contains("TEMP B-TREE"),
        "the insert reads nothing of the backlog:\n{insert}"
    );
    for spans in [sql::spans_only(&o), sql::any_between(&o)] {
        let spans = plan(&conn, &spans);
        assert!(
            spans
                .lines()
                .filter(|l| l.contains("d1_sync_queue"))
                .all(|l| l.starts_with("SEARCH") || l.contains("INDEX d1_sync_queue_blocking")),
            "whether an acknowledgement spans the queue is a few seeks and a look at the dead letters:\n{spans}"
        );
    }
    let purge = plan(&conn, &sql::purge(&o));
    assert!(
        !purge.contains("TEMP B-TREE") && !purge.contains("SCAN d1_sync_queue_synced"),
        "the purge cuts a range of the log:\n{purge}"
    );
    for mark in [sql::delete_synced(&o), sql::log_synced(&o)] {
        let mark = plan(&conn, &mark);
        assert!(
            mark.contains("SEARCH d1_sync_queue ") && !mark.contains("SCAN d1_sync_queue "),
            "the acknowledgement looks records up by id:\n{mark}"
        );
    }
}

#[test]
fn a_rolled_back_transaction_leaves_no_record() {
    let (mut conn, o) = setup();
    let tx = conn.transaction().unwrap();
    o.enqueue_raw(&tx, "t", "[1]", "upsert", "{}").unwrap();
    drop(tx);
    assert_eq!(o.counts(&conn).unwrap(), Counts::default());
}

#[test]
fn a_newer_queue_is_refused_and_a_missing_one_explained() {
    let (conn, o) = setup();
    conn.execute("UPDATE d1_sync_meta SET value = 99", [])
        .unwrap();
    assert!(matches!(
        o.install(&conn),
        Err(Error::QueueTooNew { found: 99, .. })
    ));
    assert!(matches!(
        o.check(&conn),
        Err(Error::QueueTooNew { found: 99, .. })
    ));
    let other = Connection::open_in_memory().unwrap();
    let err = o.counts(&other).unwrap_err();
    assert!(matches!(err, Error::NotInstalled(_)), "{err}");
    assert!(matches!(o.check(&other), Err(Error::NotInstalled(_))));
}

#[test]
fn counts_say_how_many_wait_and_how_many_are_in_flight() {
    let (mut conn, o) = setup();
    let a = put(&conn, &o, "a");
    let b = put(&conn, &o, "b");
    let c = put(&conn, &o, "c");
    let d = put(&conn, &o, "d");
    o.charge(&mut conn, &[setback(a, "boom", now_ms() + 60_000)], 10)
        .unwrap();
    o.hold(&mut conn, &[setback(b, "parent waits", now_ms() + 60_000)])
        .unwrap();
    let request = o.journal(&conn, &[c, d]).unwrap();
    let counts = o.counts(&conn).unwrap();
    assert_eq!(
        (counts.pending, counts.waiting, counts.in_flight),
        (4, 2, 2),
        "{counts:?}"
    );
    o.mark_synced(&mut conn, &[c, d], Some(request.seq))
        .unwrap();
    let counts = o.counts(&conn).unwrap();
    assert_eq!(
        (counts.pending, counts.waiting, counts.in_flight),
        (2, 2, 0)
    );
}

mod coalescing {
    //! Coalescing as the typed writes and the worker's claims meet it.

    use super::*;

    fn save(conn: &mut Connection, o: &Outbox, id: i64, body: &str, at: i64) -> Option<i64> {
        let tx = conn.transaction().unwrap();
        let n = Note {
            id,
            body: body.into(),
            created_at: at,
        };
        let out = o.save(&tx, &n).unwrap();
        tx.commit().unwrap();
        out
    }

    fn queue(conn: &Connection) -> Vec<(i64, String, String)> {
        conn.prepare("SELECT id, op, payload FROM d1_sync_queue ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn edits_of_a_row_merge_and_keep_the_first_insert_only_values() {
        let (mut conn, o) = notes();
        let first = save(&mut conn, &o, 1, "a", 10);
        for i in 0..999 {
            assert_eq!(save(&mut conn, &o, 1, &format!("edit {i}"), 20), first);
        }
        assert_eq!(
            queue(&conn),
            [(
                first.unwrap(),
                "upsert".into(),
                r#"{"body":"edit 998","created_at":10}"#.into()
            )],
            "1,000 saves, one record: the last body, the first created_at (as D1 would keep it)"
        );
        assert_eq!(
            save(&mut conn, &o, 1, "edit 998", 20),
            None,
            "no change, no record"
        );
        let tx = conn.transaction().unwrap();
        let gone = Note {
            id: 9,
            body: String::new(),
            created_at: 0,
        };
        assert_eq!(
            o.patch(&tx, &gone, &["body"]).unwrap(),
            None,
            "a patch of a missing row"
        );
        o.remove(
            &tx,
            &Note {
                id: 1,
                body: String::new(),
                created_at: 0,
            },
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(
            queue(&conn),
            [(first.unwrap(), "delete".into(), "{}".into())]
        );
    }

    #[test]
    fn a_claimed_record_is_never_merged_into() {
        let (mut conn, o) = notes();
        let first = save(&mut conn, &o, 1, "a", 10).unwrap();
        assert_eq!(claim(&mut conn, &o, "w", now_ms()), [first]);
        // The worker holds `first` (in memory, or in a request in flight): a new edit is a new
        // record, and `first` goes out exactly as claimed.
        let second = save(&mut conn, &o, 1, "b", 10).unwrap();
        assert!(second > first);
        assert_eq!(save(&mut conn, &o, 1, "c", 10), Some(second));
        let q = queue(&conn);
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].2, r#"{"body":"a","created_at":10}"#);
        // A read-ahead claims `second` too: from then on it is not merged into either.
        let who = Claimant { limit: 10, ..who() };
        let (next, _) = o.claim_after(&mut conn, &who, first).unwrap();
        assert!(matches!(next, Claim::Records(r) if r.len() == 1));
        let third = save(&mut conn, &o, 1, "d", 10).unwrap();
        assert!(third > second);
    }

    #[test]
    fn a_record_set_back_coalesces_again_once_no_worker_holds_it() {
        let (mut conn, o) = notes();
        let first = save(&mut conn, &o, 1, "a", 10).unwrap();
        assert_eq!(claim(&mut conn, &o, "w", now_ms()), [first]);
        // The request failed: charged, due in an hour.
        let later = now_ms() + 3_600_000;
        o.charge(&mut conn, &[setback(first, "503", later)], 10)
            .unwrap();
        let second = save(&mut conn, &o, 1, "b", 10).unwrap();
        assert!(
            second > first,
            "still claimed until the worker claims afresh"
        );
        // The worker claims from the start: nothing is due, and it holds nothing.
        assert!(claim(&mut conn, &o, "w", now_ms()).is_empty());
        assert_eq!(save(&mut conn, &o, 1, "c", 10), Some(second));
        assert_eq!(queue(&conn).len(), 2);
    }

    #[test]
    fn a_journaled_request_keeps_its_records_out_of_reach() {
        let (mut conn, o) = notes();
        let first = save(&mut conn, &o, 1, "a", 10).unwrap();
        assert_eq!(claim(&mut conn, &o, "w", now_ms()), [first]);
        // Journaled and sent, its answer lost; it waits out a backoff before it goes again.
        o.journal(&conn, &[first]).unwrap();
        let later = now_ms() + 3_600_000;
        o.charge(&mut conn, &[setback(first, "timeout", later)], 10)
            .unwrap();
        // A fresh claim takes nothing, but the journal still names `first`.
        assert!(claim(&mut conn, &o, "w", now_ms()).is_empty());
        let second = save(&mut conn, &o, 1, "b", 10).unwrap();
        assert!(
            second > first,
            "a record of a request that may be in flight is never rewritten"
        );
    }
}

/// A version 4 queue (ids from the rowid, capture triggers of the first form) becomes a
/// version 5 one: records kept, ids never given again, the triggers replaced by the
/// coalescing form of the same definition.
#[test]
fn a_version_4_queue_with_capture_is_migrated() {
    let conn = Connection::open_in_memory().unwrap();
    let def = r#"{"table":"notes","columns":["id","body"],"primary_key":["id"],"insert_only":[]}"#;
    let def_id = d1_sync_schema::definition::definition_id(def);
    let old = format!("d1_sync_capture_d1_sync_queue_notes_{:016x}", def_id as u64);
    conn.execute_batch(&format!(
        "CREATE TABLE d1_sync_meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
         INSERT INTO d1_sync_meta VALUES ('queue_version:d1_sync_queue', 4), ('stream:d1_sync_queue', 7);
         CREATE TABLE d1_sync_queue (
           id INTEGER PRIMARY KEY, table_name TEXT NOT NULL, row_key TEXT NOT NULL,
           op TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
           attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL DEFAULT 0,
           last_error TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, def INTEGER);
         CREATE INDEX d1_sync_queue_blocking ON d1_sync_queue (table_name, row_key, id)
           WHERE status = 'failed' OR next_attempt_at > 0;
         CREATE TABLE d1_sync_queue_synced (seq INTEGER PRIMARY KEY, id INTEGER NOT NULL,
           table_name TEXT NOT NULL, row_key TEXT NOT NULL, op TEXT NOT NULL,
           attempts INTEGER NOT NULL, created_at INTEGER NOT NULL, synced_at INTEGER NOT NULL);
         INSERT INTO d1_sync_queue_synced VALUES (1, 40, 'notes', '[9]', 'upsert', 0, 1, 2);
         CREATE TABLE d1_sync_queue_tables (id INTEGER PRIMARY KEY, table_name TEXT NOT NULL,
           definition TEXT NOT NULL, created_at INTEGER NOT NULL);
         INSERT INTO d1_sync_queue_tables VALUES ({def_id}, 'notes', '{def}', 1);
         INSERT INTO d1_sync_queue (id, table_name, row_key, op, payload, created_at, updated_at, def)
           VALUES (5, 'notes', '[1]', 'upsert', '{{\"body\":\"a\"}}', 1, 1, {def_id});
         CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
         CREATE TABLE d1_sync_capture_paused (queue TEXT PRIMARY KEY NOT NULL);
         CREATE TRIGGER \"{old}_insert\" AFTER INSERT ON notes BEGIN
           INSERT INTO d1_sync_queue (table_name, row_key, op, payload, created_at, updated_at, def)
           SELECT 'notes', json_array(NEW.id), 'upsert', json_object('body', NEW.body), 0, 0, {def_id}; END;
         CREATE TRIGGER \"{old}_update\" AFTER UPDATE ON notes BEGIN SELECT 1; END;
         CREATE TRIGGER \"{old}_delete\" AFTER DELETE ON notes BEGIN SELECT 1; END;"
    ))
    .unwrap();
    let o = Outbox::new();
    o.install(&conn).unwrap();
    assert_eq!(o.counts(&conn).unwrap().pending, 1, "the record is kept");
    let triggers: Vec<String> = column(
        &conn,
        "SELECT name FROM sqlite_schema WHERE type = 'trigger' ORDER BY name",
    );
    assert_eq!(triggers.len(), 3);
    assert!(
        triggers
            .iter()
            .all(|t| t.contains(&format!("_v{}c_", d1_sync_schema::capture::FORM))),
        "the first form is replaced: {triggers:?}"
    );
    conn.execute_batch(
        "INSERT INTO notes VALUES (2, 'x'); UPDATE notes SET body = 'y' WHERE id = 2;",
    )
    .unwrap();
    let ids: Vec<i64> = column(&conn, "SELECT id FROM d1_sync_queue ORDER BY id");
    assert_eq!(
        ids,
        [5, 41],
        "a new id is above every id the queue and its log have seen, and the update merged"
    );
    let payload: String = conn
        .query_row("SELECT payload FROM d1_sync_queue WHERE id = 41", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(payload, r#"{"body":"y"}"#);
}

/// Capture triggers of an earlier form, in a queue of this version, are replaced when the
/// queue is installed, coalescing as they did; triggers of this build's form are left alone.
#[test]
fn capture_triggers_of_an_earlier_form_are_replaced_on_install() {
    use d1_sync_schema::capture::FORM;
    let triggers = |conn: &Connection| -> Vec<String> {
        column(
            conn,
            "SELECT name FROM sqlite_schema WHERE type = 'trigger' ORDER BY name",
        )
    };
    let schema_version = |conn: &Connection| -> i64 {
        conn.query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap()
    };
    for (installed_with, form_tag) in [(true, "c"), (false, "")] {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(CREATE_NOTES.1).unwrap();
        let installer = Outbox::new().coalescing(installed_with);
        installer.capture::<Note>(&conn).unwrap();
        let current = triggers(&conn);
        let tag = format!("_v{FORM}{form_tag}_");
        assert!(current.iter().all(|t| t.contains(&tag)), "{current:?}");

        // What an earlier build left: the same triggers under form 2's names, the insert
        // trigger writing nothing (so the test sees which one runs).
        let earlier = format!("_v2{form_tag}_");
        let sql: Vec<(String, String)> = current
            .iter()
            .map(|name| {
                let sql: String = conn
                    .query_row(
                        "SELECT sql FROM sqlite_schema WHERE name = ?1",
                        [name],
                        |r| r.get(0),
                    )
                    .unwrap();
                (name.clone(), sql)
            })
            .collect();
        for (name, text) in &sql {
            conn.execute_batch(&format!("DROP TRIGGER \"{name}\""))
                .unwrap();
            let old_name = name.replace(&tag, &earlier);
            let text = if name.ends_with("_insert") {
                format!("CREATE TRIGGER \"{old_name}\" AFTER INSERT ON notes BEGIN SELECT 1; END")
            } else {
                text.replace(name.as_str(), &old_name)
            };
            conn.execute_batch(&text).unwrap();
        }
        conn.execute("INSERT INTO notes VALUES (1, 'unseen', 0)", [])
            .unwrap();
        assert_eq!(installer.counts(&conn).unwrap().pending, 0);

        // A build whose own setting differs installs the queue: the form changes, coalescing
        // stays as the triggers had it.
        let opener = Outbox::new().coalescing(!installed_with);
        opener.install(&conn).unwrap();
        assert_eq!(triggers(&conn), current, "replaced by this build's form");
        conn.execute("INSERT INTO notes VALUES (2, 'seen', 0)", [])
            .unwrap();
        assert_eq!(opener.counts(&conn).unwrap().pending, 1);

        // Up to date: installing again changes no schema.
        let before = schema_version(&conn);
        opener.install(&conn).unwrap();
        installer.install(&conn).unwrap();
        assert_eq!(schema_version(&conn), before);
    }
}

/// Rebuilds `notes` the way SQLite changes a column (a new table, the rows copied, the old one
/// dropped), which drops its triggers; `extra` adds columns.
fn rebuild_notes(extra: &str) -> String {
    format!(
        "CREATE TABLE notes_new (id INTEGER PRIMARY KEY, body TEXT, created_at INTEGER{extra});
         INSERT INTO notes_new (id, body, created_at) SELECT id, body, created_at FROM notes;
         DROP TABLE notes;
         ALTER TABLE notes_new RENAME TO notes;"
    )
}

fn capture_triggers(conn: &Connection) -> usize {
    column::<String>(
        conn,
        "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'notes'",
    )
    .len()
}

/// The first migration of `notes`, as a file.
const CREATE_NOTES: (&str, &str) = (
    "0001_notes.sql",
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, created_at INTEGER)",
);

/// `notes` made by [`CREATE_NOTES`] through `migrate`, and captured.
fn migrated_and_captured() -> (Connection, Outbox) {
    let conn = Connection::open_in_memory().unwrap();
    let first = d1_sync_schema::migrations::from_texts(&[CREATE_NOTES]).unwrap();
    crate::migrate::migrate_local(&conn, &first, "d1_migrations", false).unwrap();
    let o = Outbox::new();
    o.capture::<Note>(&conn).unwrap();
    (conn, o)
}

/// A migration that rebuilds a captured table drops its triggers with it: `migrate` makes them
/// again after applying it, and a table rebuilt by another tool gets them back at the next
/// install (`d1_sync::open`, a worker's start).
#[test]
fn capture_dropped_with_a_rebuilt_table_is_made_again() {
    let (conn, o) = migrated_and_captured();
    assert_eq!(capture_triggers(&conn), 3);

    // Through `migrate`.
    let rebuild = rebuild_notes("");
    let files =
        d1_sync_schema::migrations::from_texts(&[CREATE_NOTES, ("0002_rebuild.sql", &rebuild)])
            .unwrap();
    let report = crate::migrate::migrate_local(&conn, &files, "d1_migrations", false).unwrap();
    assert_eq!(report.applied, ["0002_rebuild.sql"]);
    assert_eq!(capture_triggers(&conn), 3, "made again after the migration");
    conn.execute("INSERT INTO notes VALUES (1, 'raw', 0)", [])
        .unwrap();
    assert_eq!(o.counts(&conn).unwrap().pending, 1, "a raw write is queued");

    // By another tool: gone until the next install.
    conn.execute_batch(&rebuild_notes("")).unwrap();
    assert_eq!(capture_triggers(&conn), 0);
    assert_eq!(o.lost_capture(&conn).unwrap(), ["notes"]);
    Outbox::new().install(&conn).unwrap();
    assert_eq!(capture_triggers(&conn), 3, "made again by the install");
    conn.execute("INSERT INTO notes VALUES (2, 'raw', 0)", [])
        .unwrap();
    assert_eq!(o.counts(&conn).unwrap().pending, 2);

    // A column added in place: the triggers stay, but a raw write of it would never reach D1.
    assert!(o.capture_gaps(&conn).unwrap().is_empty());
    conn.execute_batch("ALTER TABLE notes ADD COLUMN tag TEXT")
        .unwrap();
    Outbox::new().install(&conn).unwrap();
    let gaps = o.capture_gaps(&conn).unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0].0, "notes");
    assert!(
        gaps[0].1.contains("the whitelist lacks its column(s) tag"),
        "{gaps:?}"
    );

    // A rebuild that adds a column the struct does not write: not made again (a raw write to
    // it would never reach D1), and the install still succeeds.
    conn.execute_batch(&rebuild_notes(", mood TEXT")).unwrap();
    Outbox::new().install(&conn).unwrap();
    assert_eq!(capture_triggers(&conn), 0);
    assert!(o.restore_capture(&conn).unwrap().is_empty());

    // Removed on purpose: stays removed.
    conn.execute_batch(&rebuild_notes("")).unwrap();
    assert_eq!(o.restore_capture(&conn).unwrap(), ["notes"]);
    o.uncapture(&conn, "notes").unwrap();
    conn.execute_batch(&rebuild_notes("")).unwrap();
    Outbox::new().install(&conn).unwrap();
    assert_eq!(capture_triggers(&conn), 0, "uncapture forgets the table");
    assert!(o.lost_capture(&conn).unwrap().is_empty());
}

/// A migration that fails after an earlier one rebuilt a captured table: the capture is made
/// again before the error is returned.
#[test]
fn capture_is_made_again_when_a_later_migration_fails() {
    let (conn, o) = migrated_and_captured();
    conn.execute("INSERT INTO notes VALUES (1, 'kept', 0)", [])
        .unwrap();
    let rebuild = rebuild_notes("");
    let files = d1_sync_schema::migrations::from_texts(&[
        CREATE_NOTES,
        ("0002_rebuild.sql", &rebuild),
        // Runs on an empty table when the files are checked; fails on this file's row 1.
        ("0003_seed.sql", "INSERT INTO notes VALUES (1, 'seed', 0);"),
    ])
    .unwrap();
    let err = crate::migrate::migrate_local(&conn, &files, "d1_migrations", false).unwrap_err();
    assert!(err.to_string().contains("0003_seed.sql"), "{err}");
    assert_eq!(capture_triggers(&conn), 3, "made again before the error");
    assert!(o.lost_capture(&conn).unwrap().is_empty());
}

/// Capture upkeep that meets another writer's lock past the busy timeout waits for the next
/// install; the install itself succeeds.
#[test]
fn capture_upkeep_behind_a_held_lock_is_deferred_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let conn = crate::open(&path).unwrap();
    conn.execute_batch(CREATE_NOTES.1).unwrap();
    let o = Outbox::new();
    o.capture::<Note>(&conn).unwrap();
    conn.execute_batch(&rebuild_notes("")).unwrap();
    assert_eq!(o.lost_capture(&conn).unwrap(), ["notes"]);

    // A plain connection: `open` would install, and so make the capture again first.
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn.busy_timeout(Duration::from_millis(50)).unwrap();
    o.install(&conn).unwrap();
    assert_eq!(o.lost_capture(&conn).unwrap(), ["notes"], "deferred");
    other.execute_batch("COMMIT").unwrap();
    o.install(&conn).unwrap();
    assert!(o.lost_capture(&conn).unwrap().is_empty(), "made again");
}

/// `notes` as a later version of the app writes it: one column more than [`Note`].
#[derive(crate::D1Sync, Debug, Clone)]
#[d1(table = "notes")]
struct NoteWithMood {
    #[d1(primary_key)]
    id: i64,
    body: String,
    #[d1(insert_only)]
    created_at: i64,
    mood: Option<String>,
}

/// A table captured under an older struct: its triggers do not write the new column, so a
/// typed write of the newer struct queues its own record after the trigger's, and the
/// column reaches D1.
#[test]
fn a_typed_write_does_not_lean_on_a_trigger_of_another_definition() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(CREATE_NOTES.1).unwrap();
    let o = Outbox::new().coalescing(false);
    o.capture::<Note>(&conn).unwrap();
    conn.execute_batch("ALTER TABLE notes ADD COLUMN mood TEXT")
        .unwrap();
    let mut conn = conn;
    let tx = conn.transaction().unwrap();
    let row = NoteWithMood {
        id: 1,
        body: "b".into(),
        created_at: 0,
        mood: Some("glad".into()),
    };
    o.save(&tx, &row).unwrap();
    tx.commit().unwrap();
    let payloads: Vec<String> = column(&conn, "SELECT payload FROM d1_sync_queue ORDER BY id");
    assert_eq!(payloads.len(), 2, "{payloads:?}");
    assert!(!payloads[0].contains("mood"), "the trigger's: {payloads:?}");
    assert!(
        payloads[1].contains(r#""mood":"glad""#),
        "the save's own: {payloads:?}"
    );

    // Under its own definition the trigger queues the write alone.
    o.capture::<NoteWithMood>(&conn).unwrap();
    let tx = conn.transaction().unwrap();
    o.save(
        &tx,
        &NoteWithMood {
            mood: Some("calm".into()),
            ..row
        },
    )
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(o.counts(&conn).unwrap().pending, 3);
}

#[test]
fn a_raw_record_outside_a_transaction_is_queued_in_one_of_its_own() {
    let (conn, o) = setup();
    assert!(conn.is_autocommit());
    let first = put(&conn, &o, "a");
    let second = put(&conn, &o, "b");
    assert!(second > first);
    assert!(conn.is_autocommit(), "the enqueue's own transaction ended");
    let (run_table, run_start): (String, i64) = conn
        .query_row(
            "SELECT run_table, run_start FROM d1_sync_queue_coalesce",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((run_table.as_str(), run_start), ("t", first));
    // A failed enqueue leaves no transaction open either.
    let other = Outbox::with_table("not_installed");
    assert!(matches!(
        other.enqueue_raw(&conn, "t", "[1]", "upsert", "{}"),
        Err(Error::NotInstalled(_))
    ));
    assert!(conn.is_autocommit());
}

#[test]
fn an_acknowledgement_of_everything_queued_empties_the_queue_whole() {
    let (mut conn, o) = setup();
    let all: Vec<i64> = (0..6).map(|i| put(&conn, &o, &i.to_string())).collect();
    // Two runs around a gap that holds nothing any more.
    o.mark_synced(&mut conn, &[all[2]], None).unwrap();
    let rest = [all[0], all[1], all[3], all[4], all[5]];
    assert_eq!(o.mark_synced(&mut conn, &rest, None).unwrap(), 5);
    let c = o.counts(&conn).unwrap();
    assert_eq!((c.pending, c.synced), (0, 6));
    let indexed: i64 = conn
        .query_row(
            "SELECT count(*) FROM d1_sync_queue INDEXED BY d1_sync_queue_rows",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexed, 0, "the rows index is emptied with the table");
    assert!(put(&conn, &o, "next") > all[5], "ids go on growing");
}

#[test]
fn an_acknowledgement_that_spans_the_queue_leaves_what_it_does_not_name() {
    // A record in backoff between acknowledged ones (the queue's first and last ids are the
    // acknowledgement's) stays; records in backoff that it names go like any other.
    let (mut conn, o) = setup();
    let all: Vec<i64> = (0..4).map(|i| put(&conn, &o, &i.to_string())).collect();
    o.charge(&mut conn, &[setback(all[1], "later", i64::MAX)], 10)
        .unwrap();
    assert_eq!(
        o.mark_synced(&mut conn, &[all[0], all[2], all[3]], None)
            .unwrap(),
        3
    );
    assert_eq!(o.counts(&conn).unwrap().pending, 1);
    let b = put(&conn, &o, "b");
    o.charge(&mut conn, &[setback(b, "later", i64::MAX)], 10)
        .unwrap();
    let c = put(&conn, &o, "c");
    assert_eq!(o.mark_synced(&mut conn, &[all[1], b, c], None).unwrap(), 3);
    assert_eq!(o.counts(&conn).unwrap().pending, 0);
}

#[test]
fn a_save_that_inserts_its_row_appends_and_one_that_updates_it_merges() {
    let (mut conn, o) = notes();
    // Not 1: the queue's first id is 1 too, and an insert whose rowid equals the last one
    // reads as "not new" (it then looks for a record to merge into, which is also correct).
    let note = |body: &str| Note {
        id: 7,
        body: body.into(),
        created_at: 5,
    };
    let tx = conn.transaction().unwrap();
    // Queued only: the local file has no such row yet.
    let queued = o.enqueue_upsert(&tx, &note("queued")).unwrap();
    // The save inserts the local row: its record is appended, not looked up to merge.
    let inserted = o.save(&tx, &note("inserted")).unwrap().unwrap();
    assert!(inserted > queued);
    // The next save updates the row: it merges into the record before it.
    assert_eq!(o.save(&tx, &note("updated")).unwrap(), Some(inserted));
    tx.commit().unwrap();
    assert_eq!(o.counts(&conn).unwrap().pending, 2);
}
