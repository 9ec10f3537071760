//! Capture: raw SQL writes reach the target through the triggers, mixed with typed writes,
//! on the seven example tables (cascades and SET NULL included) and a table of values of
//! every storage class.

use std::time::Duration;

use d1_sync::rusqlite::{params_from_iter, Connection};
use d1_sync::schema::{Affinity, Schema, Table};
use d1_sync::Value;
use d1_sync_tests::d1peer::D1Peer;
use d1_sync_tests::fixture::{message, next_version, registry, Fixture};
use d1_sync_tests::targets::TestTarget;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn schemas() -> Vec<Schema> {
    [
        d1_sync_example::migrations_dir(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/values.sql"),
    ]
    .iter()
    .map(|p| d1_sync::schema::load_schema(p).expect("load the schema"))
    .collect()
}

/// A random value for a column of `affinity`: texts with quotes, newlines and unicode; reals
/// far from 1 and infinite; and, in a column without a type, any storage class.
fn value(rng: &mut StdRng, affinity: Affinity) -> Value {
    let text = |rng: &mut StdRng| {
        let pieces = [
            "plain",
            "q\"uote",
            "back\\slash",
            "new\nline",
            "é🦀",
            "'",
            "{\"j\":1}",
        ];
        (0..rng.random_range(1..4))
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect::<Vec<_>>()
            .join(" ")
    };
    match affinity {
        Affinity::Integer => {
            Value::Integer(rng.random_range(-1_000_000_000_000..1_000_000_000_000))
        }
        Affinity::Real => Value::Real(rng.random_range(-1e6..1e6)),
        Affinity::Text => Value::Text(text(rng)),
        Affinity::Numeric => Value::Integer(rng.random_range(0..2)),
        Affinity::Blob => match rng.random_range(0..7) {
            0 => Value::Null,
            1 => Value::Integer(rng.random()),
            2 => Value::Real(f64::INFINITY),
            3 => Value::Real(1e-60 * rng.random_range(1.0..9.0)),
            4 => Value::Blob((0..rng.random_range(0..6)).map(|_| rng.random()).collect()),
            5 => Value::Real(rng.random_range(-1.0..1.0)),
            _ => Value::Text(text(rng)),
        },
    }
}

/// A key in a small space, so inserts meet existing rows.
fn key(rng: &mut StdRng, t: &Table) -> Value {
    let n = rng.random_range(0..12);
    match t.column(&t.primary_key[0]).map(|c| c.affinity) {
        Some(Affinity::Integer) => Value::Integer(n),
        _ => Value::Text(format!("{}-{n}", t.name)),
    }
}

fn one(conn: &Connection, sql: &str) -> Option<Value> {
    conn.query_row(sql, [], |r| r.get::<_, Value>(0)).ok()
}

/// Whether a raw update may set `column` of `table`: not an insert-only column, which the app
/// writes on insert only (D1 keeps its first value, for raw and typed writes alike).
fn updatable(table: &str, column: &str) -> bool {
    registry()
        .get(table)
        .is_none_or(|d| !d.insert_only.iter().any(|c| c == column))
}

/// Values for every writable column but the key: a parent's key (or NULL) for a foreign
/// key, a random value otherwise. `None` when a NOT NULL foreign key has no parent to name.
fn row(rng: &mut StdRng, conn: &Connection, t: &Table) -> Option<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for c in t
        .writable_columns()
        .filter(|c| !t.primary_key.contains(&c.name))
    {
        let fk = t
            .foreign_keys
            .iter()
            .find(|f| f.from.first() == Some(&c.name));
        // A versioned table's raw writes carry a newer version, as the app's would.
        if c.name == "version" {
            out.push((c.name.clone(), Value::Integer(next_version())));
            continue;
        }
        let v = match fk {
            Some(fk) if c.not_null || rng.random_bool(0.8) => one(
                conn,
                &format!(
                    "SELECT \"{}\" FROM \"{}\" ORDER BY random() LIMIT 1",
                    fk.to.first().map_or("rowid", String::as_str),
                    fk.table
                ),
            )?,
            Some(_) => Value::Null,
            None if !c.not_null && rng.random_bool(0.2) => Value::Null,
            None => value(rng, c.affinity),
        };
        out.push((c.name.clone(), v));
    }
    Some(out)
}

/// One random raw write to `t`; SQLite refusing it (a constraint) writes nothing.
fn raw_write(rng: &mut StdRng, conn: &Connection, t: &Table) {
    let q = |s: &str| format!("\"{s}\"");
    let pk = &t.primary_key[0];
    let existing = one(
        conn,
        &format!(
            "SELECT {} FROM {} ORDER BY random() LIMIT 1",
            q(pk),
            q(&t.name)
        ),
    );
    let (sql, params): (String, Vec<Value>) = match (rng.random_range(0..10), existing) {
        (0..=3, _) | (_, None) => {
            let Some(cols) = row(rng, conn, t) else {
                return;
            };
            let names: Vec<String> = std::iter::once(q(pk))
                .chain(cols.iter().map(|(c, _)| q(c)))
                .collect();
            let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
            let set: Vec<String> = cols
                .iter()
                .filter(|(c, _)| updatable(&t.name, c))
                .map(|(c, _)| format!("{} = excluded.{}", q(c), q(c)))
                .collect();
            let conflict = if rng.random_bool(0.5) {
                format!(" ON CONFLICT ({}) DO UPDATE SET {}", q(pk), set.join(", "))
            } else {
                String::new()
            };
            let sql = format!(
                "INSERT INTO {} ({}) VALUES ({}){conflict}",
                q(&t.name),
                names.join(", "),
                marks.join(", ")
            );
            let params = std::iter::once(key(rng, t))
                .chain(cols.into_iter().map(|(_, v)| v))
                .collect();
            (sql, params)
        }
        (4..=6, Some(k)) => {
            let Some(cols) = row(rng, conn, t) else {
                return;
            };
            let pick: Vec<&(String, Value)> = cols
                .iter()
                .filter(|(c, _)| updatable(&t.name, c) && (c == "version" || rng.random_bool(0.4)))
                .collect();
            if pick.iter().all(|(c, _)| c == "version") {
                return;
            }
            if pick.is_empty() {
                return;
            }
            let set: Vec<String> = pick
                .iter()
                .enumerate()
                .map(|(i, (c, _))| format!("{} = ?{}", q(c), i + 2))
                .collect();
            let sql = format!(
                "UPDATE {} SET {} WHERE {} = ?1",
                q(&t.name),
                set.join(", "),
                q(pk)
            );
            let params = std::iter::once(k)
                .chain(pick.iter().map(|(_, v)| v.clone()))
                .collect();
            (sql, params)
        }
        // A key change: a delete of the old key and an upsert of the new one (at a newer
        // version, where the table has one).
        (7, Some(k)) if t.column("version").is_some() => (
            format!(
                "UPDATE {} SET {} = ?2, \"version\" = ?3 WHERE {} = ?1",
                q(&t.name),
                q(pk),
                q(pk)
            ),
            vec![k, key(rng, t), Value::Integer(next_version())],
        ),
        (7, Some(k)) => (
            format!(
                "UPDATE {} SET {} = ?2 WHERE {} = ?1",
                q(&t.name),
                q(pk),
                q(pk)
            ),
            vec![k, key(rng, t)],
        ),
        (_, Some(k)) => (
            format!("DELETE FROM {} WHERE {} = ?1", q(&t.name), q(pk)),
            vec![k],
        ),
    };
    let _ = conn.execute(&sql, params_from_iter(params.iter()));
}

async fn raw_and_typed_writes_reach_the_target(target: fn(&std::path::Path) -> TestTarget) {
    let seed = std::env::var("D1SYNC_CAPTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7u64);
    let ops: usize = std::env::var("D1SYNC_CAPTURE_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_500);
    let mut f = Fixture::new(target).await;
    f.outbox
        .capture_all(&f.app, &registry())
        .expect("install capture");
    let tables: Vec<Table> = schemas().into_iter().flat_map(|s| s.tables).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut done = 0;
    while done < ops {
        // Up to 20 writes a transaction; now and then one rolled back.
        let n = rng.random_range(1..20);
        let commit = rng.random_bool(0.9);
        let tx = f.app.transaction().expect("begin");
        for _ in 0..n {
            if rng.random_bool(0.15) {
                let id = format!("messages-{}", rng.random_range(0..12));
                if rng.random_bool(0.8) {
                    let m = message(&id, "typed", rng.random_range(0..1_000));
                    f.outbox.save(&tx, &m).expect("typed save");
                } else {
                    let m = message(&id, "", 0);
                    f.outbox.remove(&tx, &m).expect("typed remove");
                }
            } else {
                let t = &tables[rng.random_range(0..tables.len())];
                raw_write(&mut rng, &tx, t);
            }
        }
        if commit {
            tx.commit().expect("commit");
        }
        done += n;
    }
    let pending = f.counts().pending;
    assert!(pending > 0, "the writes were captured");
    // Against the local D1: a fifth of the requests fail, for the whole drain and the read-back,
    // answers lost after D1 committed included; small batches make many requests.
    let faults = if let Some(db) = f.target.test_db() {
        D1Peer::shared()
            .set_random_faults(db, 0.2, &["429", "500", "503", "after", "after"])
            .await;
        Some(db.clone())
    } else {
        None
    };
    let worker = f.worker().batch_size(50).build().expect("worker");
    worker.start().expect("start");
    tokio::time::timeout(Duration::from_secs(120), worker.flush())
        .await
        .expect("drained in time")
        .expect("flush");
    let stats = worker.stats().await.expect("stats");
    worker.shutdown().await.expect("shutdown");
    assert_eq!(
        stats.queue.failed, 0,
        "no dead letters: {:?}",
        stats.last_error
    );
    assert_eq!(stats.queue.pending, 0);
    f.assert_all_in_step().await;
    let served = match &faults {
        Some(db) => D1Peer::shared().stats(db).await.faults.values().sum(),
        None => 0,
    };
    if faults.is_some() {
        assert!(served > 0, "the faults were on");
    }
    println!(
        "capture: {ops} writes (seed {seed}), {pending} records captured, {} requests, {served} faults, {} replays recognised",
        stats.requests, stats.requests_replayed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sql_and_typed_writes_reach_a_sqlite_target_whole() {
    raw_and_typed_writes_reach_the_target(TestTarget::sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sql_and_typed_writes_reach_d1_whole() {
    raw_and_typed_writes_reach_the_target(|_| TestTarget::d1()).await;
}

#[tokio::test]
async fn a_typed_write_to_a_captured_table_is_queued_once() {
    let mut f = Fixture::new(TestTarget::sqlite).await;
    // Without coalescing, so each record the trigger queues stays one record.
    f.outbox = d1_sync::Outbox::new().coalescing(false);
    f.outbox
        .capture::<d1_sync_example::rows::Message>(&f.app)
        .expect("capture");
    f.outbox
        .capture::<d1_sync_example::rows::Message>(&f.app)
        .expect("installing again is a no-op");
    f.write(|o, tx| o.save(tx, &message("m1", "once", 1)).expect("save"));
    assert_eq!(f.counts().pending, 1);
    let twice = message("m1", "twice", 1);
    f.write(|o, tx| o.save(tx, &twice).expect("save"));
    assert_eq!(
        f.counts().pending,
        2,
        "each typed write queued once, by the trigger"
    );
    let again = f.write(|o, tx| o.save(tx, &twice).expect("save"));
    assert_eq!(
        (again, f.counts().pending),
        (None, 2),
        "a typed save that changes nothing queues nothing"
    );
    f.app
        .execute(
            "UPDATE messages SET raw_text = raw_text WHERE id = 'm1'",
            [],
        )
        .expect("raw update");
    assert_eq!(
        f.counts().pending,
        2,
        "an update that changes nothing queues nothing"
    );
    f.write(|o, tx| o.remove(tx, &message("m1", "", 1)).expect("remove"));
    assert_eq!(f.counts().pending, 3);
    // Rows that came from D1: written without capture, they are not sent back.
    f.write(|o, tx| {
        o.without_capture(tx, |tx| {
            tx.execute(
                "INSERT INTO messages (id, platform, role, observed_at, created_at)
                 VALUES ('from-d1', 'web', 'user', 1, 1)",
                [],
            )?;
            Ok(())
        })
        .expect("without capture")
    });
    assert_eq!(f.counts().pending, 3);
}

/// 1,000 raw updates of one captured row, offline: one queue record, shipped as one row.
#[tokio::test]
async fn a_thousand_raw_updates_of_one_row_ship_as_one_row() {
    let mut f = Fixture::new(TestTarget::sqlite).await;
    f.outbox
        .capture::<d1_sync_example::rows::Message>(&f.app)
        .expect("capture");
    f.write(|o, tx| o.save(tx, &message("m1", "first", 1)).expect("save"));
    for i in 0..1_000 {
        f.app
            .execute(
                "UPDATE messages SET raw_text = ?1 WHERE id = 'm1'",
                [format!("edit {i}")],
            )
            .expect("raw update");
    }
    assert_eq!(
        f.counts().pending,
        1,
        "one record holds the row's net effect"
    );
    let worker = f.worker().build().expect("worker");
    worker.start().expect("start");
    worker.flush().await.expect("flush");
    let stats = worker.stats().await.expect("stats");
    worker.shutdown().await.expect("shutdown");
    assert_eq!((stats.records_synced, stats.requests), (1, 1));
    f.assert_all_in_step().await;
}

#[tokio::test]
async fn capture_is_refused_with_the_reason() {
    let f = Fixture::new(TestTarget::sqlite).await;
    f.app
        .execute_batch(
            "CREATE TABLE nokey (a TEXT, b TEXT);
             CREATE TABLE wider (id INTEGER PRIMARY KEY, body TEXT, secret TEXT);",
        )
        .expect("tables");
    let def = |name: &str, cols: &[&str], key: &[&str]| d1_sync::TableDef {
        name: name.into(),
        columns: cols.iter().map(|c| c.to_string()).collect(),
        primary_key: key.iter().map(|c| c.to_string()).collect(),
        insert_only: vec![],
        version: None,
    };
    let refused =
        |d: d1_sync::TableDef| f.outbox.capture_table(&f.app, &d).unwrap_err().to_string();
    assert!(refused(def("nokey", &["a", "b"], &["a"])).contains("has no primary key"));
    assert!(refused(def("wider", &["id", "body"], &["id"]))
        .contains("the whitelist lacks its column(s) secret"));
    assert!(refused(def("missing", &["id"], &["id"])).contains("no such table"));
    assert!(refused(def("wider", &["id", "body", "secret"], &["body"]))
        .contains("its primary key is (id)"));
    let triggers = |conn: &Connection| -> Vec<String> {
        conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'wider' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(
        triggers(&f.app).is_empty(),
        "nothing installed when refused"
    );
    // A changed definition replaces the triggers.
    let first = def("wider", &["id", "body", "secret"], &["id"]);
    f.outbox.capture_table(&f.app, &first).expect("capture");
    let before = triggers(&f.app);
    let mut second = first.clone();
    second.insert_only = vec!["secret".into()];
    f.outbox
        .capture_table(&f.app, &second)
        .expect("capture again");
    let after = triggers(&f.app);
    assert_eq!((before.len(), after.len()), (3, 3));
    assert!(
        before.iter().all(|b| !after.contains(b)),
        "{before:?} {after:?}"
    );
    f.outbox.uncapture(&f.app, "wider").expect("uncapture");
    assert!(triggers(&f.app).is_empty());
}

/// Only a child table captured: a typed delete of its (uncaptured) parent changes the child
/// (`ON DELETE SET NULL`), whose trigger queues a record; that record does not stand in for
/// the parent's own, which the typed write still queues.
#[tokio::test]
async fn a_cascade_into_a_captured_child_does_not_stand_in_for_the_parents_record() {
    let mut f = Fixture::new(TestTarget::sqlite).await;
    f.outbox
        .capture::<d1_sync_example::rows::Execution>(&f.app)
        .expect("capture the child");
    f.write(|o, tx| o.save(tx, &message("m1", "parent", 1)).expect("save"));
    f.app
        .execute(
            "INSERT INTO executions (instruction_id, message_id, target, tool, executed_at, created_at)
             VALUES ('e1', 'm1', 't', 'tool', 1, 1)",
            [],
        )
        .expect("raw child");
    assert_eq!(f.counts().pending, 2);
    f.write(|o, tx| o.remove(tx, &message("m1", "", 1)).expect("remove"));
    let ops: Vec<(String, String)> = f
        .app
        .prepare("SELECT table_name, op FROM d1_sync_queue ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        ops,
        [
            s("messages", "upsert"),
            s("executions", "upsert"),
            s("messages", "delete"),
        ],
        "the child's SET NULL coalesced into its insert, then the parent's own delete, not merged across the child's record"
    );
    let worker = f.worker().build().expect("worker");
    worker.start().expect("start");
    worker.flush().await.expect("flush");
    worker.shutdown().await.expect("shutdown");
    f.assert_all_in_step().await;
}
