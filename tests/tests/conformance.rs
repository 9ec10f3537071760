//! The same behaviour from both targets: the local SQLite file and D1 (Cloudflare's local D1
//! engine behind the REST API). Every test runs once per target.

use d1_sync::{SyncRow, Value};
use d1_sync_example::rows::Message;
use d1_sync_tests::fixture::{Fixture, Val};

fn message(id: &str, text: &str, created_at: i64) -> Message {
    d1_sync_tests::fixture::message(id, text, created_at)
}

macro_rules! both_targets {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(d1_sync_tests::fixture::Fixture::new(TestTarget::sqlite).await).await;
                }
            )*
            use d1_sync_tests::targets::TestTarget;
        }
        mod d1 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(d1_sync_tests::fixture::Fixture::new(|_| TestTarget::d1()).await).await;
                }
            )*
            use d1_sync_tests::targets::TestTarget;
        }
    };
}

both_targets!(
    upsert_update_keeps_created_at_and_delete_removes_the_row,
    per_row_order_within_one_batch,
    per_row_order_across_batches,
    values_round_trip_exactly,
    partial_updates_touch_only_their_columns,
    a_request_applied_before_is_refused_as_a_whole_by_the_ledger,
    the_version_guard_keeps_the_newest_write_of_every_row,
    a_tombstone_made_within_a_request_refuses_an_older_write_after_it,
    a_leafs_write_moved_ahead_of_its_parents_delete_ends_as_in_the_queues_order,
);

/// One batch: a link to `b`, the delete of conversation `a` (its `ON DELETE CASCADE` removes
/// link `l`, locally and in the target), then `l` written again pointing at `b`. Over D1 the
/// worker puts both link writes in one statement, ahead of the delete, and sends first the
/// cascade the delete would have done to `l` (`d1_sync_schema::cascade`): `l` comes back as a
/// new row, with the insert-only `created_at` of its new write, as in the queue's order. One
/// request, none refused: D1's engine runs that statement. (The SQLite file applies rows in the
/// queue's order.)
async fn a_leafs_write_moved_ahead_of_its_parents_delete_ends_as_in_the_queues_order(
    mut f: Fixture,
) {
    use d1_sync_example::rows::{ConversationLink, LocalConversation};
    use d1_sync_tests::fixture::{conversation, link};
    f.write(|o, tx| {
        o.save(tx, &conversation("a")).unwrap();
        o.save(tx, &conversation("b")).unwrap();
        o.save(tx, &link("l", "a")).unwrap();
    });
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    let before = worker.stats().await.unwrap();
    f.write(|o, tx| {
        o.save(tx, &link("m", "b")).unwrap();
        o.remove(tx, &conversation("a")).unwrap();
        let mut again = link("l", "b");
        again.created_at = 777;
        o.save(tx, &again).unwrap();
    });
    worker.flush().await.unwrap();
    let stats = worker.stats().await.unwrap();
    worker.shutdown().await.unwrap();
    assert_eq!(
        (
            stats.requests - before.requests,
            stats.requests_failed,
            stats.records_synced - before.records_synced
        ),
        (1, 0, 3),
        "{stats:?}"
    );
    let links = f.target.dump(&ConversationLink::table_def()).await;
    let l = links
        .iter()
        .find(|r| r.contains("\"l\""))
        .expect("l is back");
    assert!(l.contains("\"integer\",\"777\""), "a new row: {l}");
    f.assert_in_step(&ConversationLink::table_def()).await;
    f.assert_in_step(&LocalConversation::table_def()).await;
}

/// Another device's newer rows are in the target: older upserts, an older patch and an old
/// write of a row deleted since are superseded, not applied and not failed; newer ones apply.
async fn the_version_guard_keeps_the_newest_write_of_every_row(mut f: Fixture) {
    let at = |id: &str, text: &str, version: i64| {
        let mut m = message(id, text, 1);
        m.version = version;
        m
    };
    // The other device's writes, already in the target.
    f.target
        .exec(&[
            "INSERT INTO messages (id, platform, role, raw_text, observed_at, created_at, version) VALUES
               ('m1', 'web', 'user', 'theirs', 1, 1, 100),
               ('m3', 'web', 'user', 'theirs', 1, 1, 5),
               ('m4', 'web', 'user', 'theirs', 1, 1, 20)",
        ])
        .await
        .unwrap();
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    f.write(|o, tx| {
        o.save(tx, &at("m1", "older, ours", 50)).unwrap(); // refused: 100 is newer
        o.save(tx, &at("m2", "new, ours", 10)).unwrap(); // applies: the target has no m2
        o.remove(tx, &at("m3", "", 7)).unwrap(); // applies: 7 is not older than 5
        o.save(tx, &at("m4", "older, ours", 15)).unwrap(); // refused: 20 is newer
    });
    worker.flush().await.unwrap();
    f.write(|o, tx| {
        o.enqueue_upsert(tx, &at("m3", "from before the delete", 6))
            .unwrap(); // refused: deleted at 7
        let mut newer = at("m4", "ignored", 30);
        newer.summary = Some("patched".into());
        o.patch(tx, &newer, &["summary", "version"]).unwrap(); // applies over 20
    });
    worker.flush().await.unwrap();
    let stats = worker.stats().await.unwrap();
    worker.shutdown().await.unwrap();
    assert_eq!(stats.records_superseded, 3, "{stats:?}");
    assert_eq!(f.counts().failed, 0);
    let rows = f.target.dump(&Message::table_def()).await;
    let find = |id: &str| {
        rows.iter()
            .find(|r| r.contains(&format!("\"{id}\"")))
            .cloned()
    };
    let m1 = find("m1").expect("m1 stays");
    assert!(m1.contains("\"theirs\"") && m1.contains("\"100\""), "{m1}");
    assert!(find("m2").is_some_and(|r| r.contains("new, ours")));
    assert_eq!(
        find("m3"),
        None,
        "an old write never brings back a deleted row"
    );
    let m4 = find("m4").expect("m4 stays");
    assert!(
        m4.contains("\"theirs\"") && m4.contains("\"patched\"") && m4.contains("\"30\""),
        "{m4}"
    );
    assert_eq!(
        conflicts(&f),
        [
            ("[\"m1\"]".to_string(), Some(50), Some(100)),
            ("[\"m3\"]".to_string(), Some(6), Some(7)),
            ("[\"m4\"]".to_string(), Some(15), Some(20)),
        ]
    );
}

/// One request in which tombstones appear after a write to their table: one left by a trigger
/// of the target's own (a write to `local_conversations` deletes `m5`), and one left by a
/// delete the worker sends of a row the target never had (`c7`). An older write of each row
/// after them is refused, though its table was written in the request before the tombstone
/// existed (the SQLite file reads "no tombstone of this table" once, and must read it again
/// after each).
async fn a_tombstone_made_within_a_request_refuses_an_older_write_after_it(mut f: Fixture) {
    let at = |id: &str, version: i64| {
        let mut m = message(id, "ours", 1);
        m.version = version;
        m
    };
    let conversation = |id: &str, version: i64| {
        let mut c = d1_sync_tests::fixture::conversation(id);
        c.version = version;
        c
    };
    f.target
        .exec(&[
            "INSERT INTO messages (id, platform, role, raw_text, observed_at, created_at, version)
               VALUES ('m5', 'web', 'user', 'theirs', 1, 1, 40)",
            "CREATE TRIGGER drop_m5 AFTER INSERT ON local_conversations BEGIN
               DELETE FROM messages WHERE id = 'm5';
             END",
        ])
        .await
        .unwrap();
    let worker = f.worker().build().unwrap();
    f.write(|o, tx| {
        o.save(tx, &at("m9", 10)).unwrap(); // no tombstone of `messages` yet
        o.save(tx, &conversation("c9", 10)).unwrap(); // the target's trigger deletes m5 (40)
        o.enqueue_upsert(tx, &at("m5", 30)).unwrap(); // refused: deleted at 40
        o.save(tx, &conversation("c6", 10)).unwrap(); // no tombstone of the table yet
        o.remove(tx, &conversation("c7", 7)).unwrap(); // a tombstone at 7, no row deleted
        o.enqueue_upsert(tx, &conversation("c7", 6)).unwrap(); // refused: deleted at 7
    });
    worker.start().unwrap();
    worker.flush().await.unwrap();
    let stats = worker.stats().await.unwrap();
    worker.shutdown().await.unwrap();
    assert_eq!(
        (
            stats.records_synced,
            stats.records_superseded,
            stats.requests
        ),
        (6, 2, 1),
        "{stats:?}"
    );
    let held_ids = |rows: Vec<String>, ids: &[&'static str]| -> Vec<&'static str> {
        ids.iter()
            .copied()
            .filter(|id| rows.iter().any(|r| r.contains(&format!("\"{id}\""))))
            .collect()
    };
    let messages = f.target.dump(&Message::table_def()).await;
    assert_eq!(held_ids(messages, &["m5", "m9"]), ["m9"]);
    let conversations = f
        .target
        .dump(&d1_sync_example::rows::LocalConversation::table_def())
        .await;
    assert_eq!(
        held_ids(conversations, &["c6", "c7", "c9"]),
        ["c6", "c9"],
        "an older write never brings a deleted row back"
    );
    assert_eq!(
        conflicts(&f),
        [
            ("[\"c7\"]".to_string(), Some(6), Some(7)),
            ("[\"m5\"]".to_string(), Some(30), Some(40)),
        ]
    );
}

/// The conflicts log: each refused record's key, the version sent and the version held.
fn conflicts(f: &Fixture) -> Vec<(String, Option<i64>, Option<i64>)> {
    let mut held: Vec<_> = f
        .outbox
        .conflicts(&f.app, 10)
        .unwrap()
        .into_iter()
        .map(|c| (c.row_key, c.sent_version, c.held_version))
        .collect();
    held.sort();
    held
}

async fn upsert_update_keeps_created_at_and_delete_removes_the_row(mut f: Fixture) {
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    f.write(|o, tx| {
        o.save(tx, &message("m1", "hello", 10)).unwrap();
        o.save(tx, &message("m2", "bye", 11)).unwrap();
    });
    worker.flush().await.unwrap();
    f.assert_in_step(&Message::table_def()).await;

    f.write(|o, tx| {
        o.save(tx, &message("m1", "edited", 999)).unwrap();
        o.remove(tx, &message("m2", "bye", 11)).unwrap();
    });
    worker.flush().await.unwrap();
    let rows = f.target.dump(&Message::table_def()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains("\"edited\""), "{}", rows[0]);
    assert!(
        rows[0].contains("\"integer\",\"10\""),
        "created_at kept: {}",
        rows[0]
    );
    f.assert_in_step(&Message::table_def()).await;
    let c = f.counts();
    assert_eq!((c.pending, c.failed), (0, 0));
    worker.shutdown().await.unwrap();
}

/// insert → update → delete → insert of one key, all claimed in one batch.
async fn per_row_order_within_one_batch(mut f: Fixture) {
    f.write(|o, tx| {
        o.save(tx, &message("k", "v1", 1)).unwrap();
        o.save(tx, &message("k", "v2", 1)).unwrap();
        o.remove(tx, &message("k", "", 1)).unwrap();
        o.save(tx, &message("k", "v3", 3)).unwrap();
        o.save(tx, &message("other", "x", 1)).unwrap();
    });
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    let rows = f.target.dump(&Message::table_def()).await;
    assert!(
        rows.iter()
            .any(|r| r.contains("\"v3\"") && r.contains("\"integer\",\"3\"")),
        "{rows:?}"
    );
    f.assert_in_step(&Message::table_def()).await;
    worker.shutdown().await.unwrap();
}

/// The same sequence, one record per batch (coalescing off, so there are four records to
/// order; on, the first three merge into one delete).
async fn per_row_order_across_batches(mut f: Fixture) {
    f.outbox = d1_sync::Outbox::new().coalescing(false);
    f.write(|o, tx| {
        o.save(tx, &message("k", "v1", 1)).unwrap();
        o.save(tx, &message("k", "v2", 1)).unwrap();
        o.remove(tx, &message("k", "", 1)).unwrap();
        o.save(tx, &message("k", "v3", 3)).unwrap();
    });
    let worker = f.worker().batch_size(1).build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    f.assert_in_step(&Message::table_def()).await;
    assert_eq!(worker.stats().await.unwrap().records_synced, 4);
    worker.shutdown().await.unwrap();
}

fn tricky_values() -> Vec<(&'static str, Value)> {
    vec![
        ("zero", Value::Integer(0)),
        ("i64 max", Value::Integer(i64::MAX)),
        ("i64 min", Value::Integer(i64::MIN)),
        ("2^53 + 1", Value::Integer(9_007_199_254_740_993)),
        ("-(2^53 + 1)", Value::Integer(-9_007_199_254_740_993)),
        ("0.1", Value::Real(0.1)),
        ("1/3", Value::Real(1.0 / 3.0)),
        ("integral real", Value::Real(3.0)),
        ("negative zero", Value::Real(-0.0)),
        ("f64 max", Value::Real(f64::MAX)),
        ("smallest subnormal", Value::Real(5e-324)),
        ("1e-300", Value::Real(1e-300)),
        ("inf", Value::Real(f64::INFINITY)),
        ("-inf", Value::Real(f64::NEG_INFINITY)),
        ("empty text", Value::Text(String::new())),
        ("unicode", Value::Text("héllo 🦀 日本語 Ω".into())),
        (
            "quotes",
            Value::Text("it's \"quoted\" \\ back\nline\ttab".into()),
        ),
        ("numeric-looking text", Value::Text("007".into())),
        ("exponent-looking text", Value::Text("1e5".into())),
        (
            "sql-looking text",
            Value::Text("'); DROP TABLE vals; --".into()),
        ),
        ("empty blob", Value::Blob(vec![])),
        ("all bytes", Value::Blob((0..=255).collect())),
        ("null", Value::Null),
        ("true", Value::Integer(1)),
        ("false", Value::Integer(0)),
    ]
}

async fn values_round_trip_exactly(mut f: Fixture) {
    let values = tricky_values();
    f.write(|o, tx| {
        for (i, (note, v)) in values.iter().enumerate() {
            let row = Val {
                id: i as i64,
                note: Some(note.to_string()),
                v: v.clone(),
            };
            o.save(tx, &row).unwrap();
        }
        // Integers across the whole i64 range, in one statement.
        for k in 0..64 {
            let v = (1i64 << k) ^ (k * 0x5DEE_CE66);
            for (j, x) in [v, -v, v.wrapping_sub(1)].into_iter().enumerate() {
                let id = 1000 + k * 3 + j as i64;
                o.save(
                    tx,
                    &Val {
                        id,
                        note: None,
                        v: Value::Integer(x),
                    },
                )
                .unwrap();
            }
        }
    });
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    let local = d1_sync::verify::dump_local(&f.app, &Val::table_def()).unwrap();
    let remote = f.target.dump(&Val::table_def()).await;
    for (l, r) in local.iter().zip(&remote) {
        assert_eq!(r, l, "a value changed on the way");
    }
    assert_eq!(remote.len(), local.len());
    // And the storage classes are the ones written, not just equal on both sides.
    assert!(remote
        .iter()
        .any(|r| r.contains(r#""integer","9223372036854775807""#)));
    assert!(remote
        .iter()
        .any(|r| r.contains(r#""integer","-9007199254740993""#)));
    assert!(
        remote.iter().any(|r| r.contains(r#""real","3.0""#)),
        "{remote:#?}"
    );
    assert!(remote.iter().any(|r| r.contains(r#""text","007""#)));
    assert!(
        remote.iter().any(|r| r.contains(r#""blob","""#)),
        "empty blob stays a blob"
    );
    assert!(
        remote.iter().any(|r| r.contains(r#""real","Inf""#)),
        "{remote:#?}"
    );
    worker.shutdown().await.unwrap();
}

async fn partial_updates_touch_only_their_columns(mut f: Fixture) {
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    f.write(|o, tx| o.save(tx, &message("m", "original", 5)).unwrap());
    worker.flush().await.unwrap();
    // Someone else edits raw_text on the target; our update names summary only.
    f.target
        .exec(&["UPDATE messages SET raw_text = 'edited remotely' WHERE id = 'm'"])
        .await
        .unwrap();
    let mut changed = message("m", "ignored locally", 5);
    changed.summary = Some("a summary".into());
    f.write(|o, tx| {
        // The patch writes summary (and the newer version) locally too, and nothing else.
        o.patch(tx, &changed, &["summary", "version"]).unwrap();
        // A patch of a row neither side has creates nothing.
        o.patch(tx, &message("absent", "x", 1), &["raw_text", "version"])
            .unwrap();
    });
    let local = d1_sync::verify::dump_local(&f.app, &Message::table_def()).unwrap();
    assert_eq!(local.len(), 1, "{local:?}");
    assert!(
        local[0].contains("\"a summary\"") && local[0].contains("\"original\""),
        "{}",
        local[0]
    );
    worker.flush().await.unwrap();
    let rows = f.target.dump(&Message::table_def()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].contains("\"edited remotely\"") && rows[0].contains("\"a summary\""),
        "{}",
        rows[0]
    );
    let c = f.counts();
    assert_eq!((c.pending, c.failed), (0, 0));

    let err = f.write(|o, tx| o.patch(tx, &changed, &["nope"]).unwrap_err());
    assert_eq!(
        err.to_string(),
        "`nope` is not a column of table `messages`"
    );
    let err = f.write(|o, tx| o.patch(tx, &changed, &["created_at"]).unwrap_err());
    assert!(err.to_string().contains("insert-only"), "{err}");
    worker.shutdown().await.unwrap();
}

/// The ledger, on both targets: a request sent again after it was applied is refused as a
/// whole and answered `Applied::Before`; the same sequence number with another nonce (a queue
/// restored from a backup) is a new request; a ledger dropped by hand is made again.
async fn a_request_applied_before_is_refused_as_a_whole_by_the_ledger(f: Fixture) {
    use d1_sync::ledger::{Applied, RequestId};
    use d1_sync::target::{Batch, Target, TargetError};

    let target = f.target.shared();
    let send = |id: RequestId, text: &'static str| {
        let target = target.clone();
        async move {
            let raw = d1_sync::change::RawRecord {
                id: 1,
                table: "messages".into(),
                row_key: r#"["m1"]"#.into(),
                op: "upsert".into(),
                payload: d1_sync::codec::stored_object(
                    Message::COLUMNS
                        .iter()
                        .copied()
                        .zip(message("m1", text, 1).values().iter()),
                )
                .into_bytes(),
                attempts: 0,
                def: None,
            };
            let mut changes =
                vec![d1_sync::change::check(&raw, &d1_sync_tests::fixture::registry()).unwrap()];
            let mut request = d1_sync::pack::pack_one(
                &mut changes,
                &target.limits(),
                target.wants_statements(),
                &d1_sync::commute::Commute::none(),
            );
            request.stamp(&id);
            target
                .execute(Batch {
                    request: &id,
                    statements: &request.statements,
                    changes: &changes,
                    checks: &request.checks,
                })
                .await
        }
    };
    let first = RequestId::new("00000000000000aa", 1);
    assert_eq!(send(first.clone(), "one").await, Ok(Applied::now()));
    // Sent again with other content: refused as a whole, nothing of it applied.
    assert_eq!(send(first.clone(), "two").await, Ok(Applied::Before));
    let rows = f.target.dump(&Message::table_def()).await;
    assert!(rows[0].contains("\"one\""), "{rows:?}");
    // Same stream and seq, another nonce: a new request.
    assert_eq!(
        send(RequestId::new("00000000000000aa", 1), "three").await,
        Ok(Applied::now())
    );
    // A ledger dropped by hand: the request is not charged (a transient error), and the
    // next try makes the ledger again.
    f.target.exec(&["DROP TABLE d1_sync_ledger"]).await.unwrap();
    let again = RequestId::new("00000000000000aa", 2);
    assert!(matches!(
        send(again.clone(), "four").await,
        Err(TargetError::Transient(_))
    ));
    assert_eq!(send(again.clone(), "four").await, Ok(Applied::now()));
    assert_eq!(send(again, "five").await, Ok(Applied::Before));
}
