//! Malformed records written straight into the queue table — the seed marked such records
//! synced; here each one ends `failed` with a reason naming its problem, none is synced, the
//! valid records around them all reach D1, and nothing panics.

use d1_sync::rusqlite::params;
use d1_sync::SyncRow;
use d1_sync_example::rows::Message;
use d1_sync_tests::fixture::Fixture;
use d1_sync_tests::targets::TestTarget;

fn message(i: usize) -> Message {
    d1_sync_tests::fixture::message(&format!("ok-{i}"), &format!("valid {i}"), 1)
}

/// (table, row key, operation, payload, what the reason must say)
fn malformed() -> Vec<(String, String, String, Vec<u8>, &'static str)> {
    let big = "x".repeat(2_000_001);
    let half = "y".repeat(1_100_000);
    let wide: String = (0..101)
        .map(|i| format!("\"c{i}\":1"))
        .collect::<Vec<_>>()
        .join(",");
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = |t: &str, k: &str, op: &str, p: &str, why: &'static str| {
        (
            t.to_string(),
            k.to_string(),
            op.to_string(),
            p.as_bytes().to_vec(),
            why,
        )
    };
    vec![
        r(
            "nope",
            "[1]",
            "upsert",
            r#"{"id":"x"}"#,
            "unknown table `nope`",
        ),
        r("", "[1]", "upsert", r#"{"id":"x"}"#, "unknown table ``"),
        r(
            "MESSAGES",
            "[1]",
            "upsert",
            r#"{"id":"x"}"#,
            "unknown table `MESSAGES`",
        ),
        r(
            "messages; DROP TABLE messages",
            "[1]",
            "upsert",
            r#"{"id":"x"}"#,
            "unknown table `messages; DROP TABLE messages`",
        ),
        r(
            "messages\"; --",
            "[1]",
            "delete",
            r#"{"id":"x"}"#,
            "unknown table",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":"x","nope":1}"#,
            "`nope` is not a column of table `messages`",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":"x","raw_text\" = 1; --":1}"#,
            "is not a column of table `messages`",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":"x","a\"b":1}"#,
            "is not a column",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":"x","ID":1}"#,
            "`ID` is not a column",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "delete",
            r#"{"id":"x","zz":1}"#,
            "`zz` is not a column",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            "{oops",
            "payload is not JSON",
        ),
        r("messages", r#"["x"]"#, "upsert", "", "payload is not JSON"),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            &nested,
            "payload is not JSON",
        ),
        r("messages", r#"["x"]"#, "upsert", "null", "not null"),
        r("messages", r#"["x"]"#, "upsert", "[1,2]", "not an array"),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#""text""#,
            "not a string",
        ),
        r("messages", r#"["x"]"#, "upsert", "42", "not a number"),
        r("messages", r#"["x"]"#, "upsert", "true", "not a boolean"),
        r(
            "messages",
            r#"["x"]"#,
            "insert",
            r#"{"id":"x"}"#,
            "unknown operation `insert`",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "",
            r#"{"id":"x"}"#,
            "unknown operation ``",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "DELETE",
            r#"{"id":"x"}"#,
            "unknown operation `DELETE`",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert; --",
            r#"{"id":"x"}"#,
            "unknown operation",
        ),
        // The key is stored once, in the row key: one of the wrong arity gives no key.
        r(
            "messages",
            r#"["x","y"]"#,
            "upsert",
            r#"{"platform":"web"}"#,
            "lacks primary-key column `id`",
        ),
        r(
            "messages",
            r#"["x""#,
            "upsert",
            r#"{"platform":"web"}"#,
            "row key [\"x\": not JSON",
        ),
        r(
            "messages",
            "[]",
            "delete",
            "{}",
            "lacks primary-key column `id`",
        ),
        r(
            "messages",
            "[null]",
            "upsert",
            r#"{"id":null,"platform":"web"}"#,
            "primary-key column `id` is NULL",
        ),
        r(
            "messages",
            "[null]",
            "delete",
            r#"{"id":null}"#,
            "primary-key column `id` is NULL",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":{"x":1}}"#,
            "column `id`: an object value",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":"x","raw_text":{"a":1}}"#,
            "column `raw_text`: an object value",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":"x","raw_text":[1]}"#,
            "column `raw_text`: an array is not a column value",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":"x","raw_text":{"blob":"zz"}}"#,
            "hex",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":"x","raw_text":{"blob":"abc"}}"#,
            "hex",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":"x","raw_text":{"real":"big"}}"#,
            "column `raw_text`",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            r#"{"id":"x","observed_at":18446744073709551615}"#,
            "does not fit in 64 signed bits",
        ),
        r(
            "messages",
            "[1]",
            "delete",
            r#"{"id":18446744073709551615}"#,
            "column `id`: integer 18446744073709551615 does not fit in 64 signed bits",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            &format!(r#"{{"id":"x","raw_text":"{big}"}}"#),
            "at most 2000000 bytes in one value",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            &format!(
                r#"{{"id":"x","raw_text":{{"blob":"{}"}}}}"#,
                "ab".repeat(2_000_001)
            ),
            "at most 2000000 bytes in one value",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            &format!(r#"{{"id":"x","raw_text":"{half}","summary":"{half}"}}"#),
            "in one row",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "upsert",
            &format!("{{{wide}}}"),
            "payload has 101 columns",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "update",
            r#"{"id":"x"}"#,
            "must set at least one column",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "update",
            r#"{"id":"x","created_at":5}"#,
            "must set at least one column",
        ),
        r(
            "messages",
            r#"["x"]"#,
            "update",
            r#"{"id":"x","nope":5}"#,
            "`nope` is not a column",
        ),
        r(
            "messages",
            &format!("[\"{big}\"]"),
            "delete",
            &format!(r#"{{"id":"{big}"}}"#),
            "at most 2000000 bytes",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_record_fails_with_its_reason_and_the_rest_ship() {
    let mut f = Fixture::new(|_| TestTarget::d1()).await;
    let bad = malformed();
    assert!(bad.len() >= 40);
    let bad_ids: Vec<(i64, &'static str)> = f.write(|o, tx| {
        let mut ids = Vec::new();
        for (i, (table, key, op, payload, why)) in bad.iter().enumerate() {
            o.save(tx, &message(i)).unwrap();
            tx.execute(
                "INSERT INTO d1_sync_queue (table_name, row_key, op, payload, created_at, updated_at) VALUES (?1, ?2, ?3, CAST(?4 AS TEXT), 0, 0)",
                params![table, key, op, payload],
            )
            .unwrap();
            ids.push((tx.last_insert_rowid(), *why));
        }
        // Bytes that are not UTF-8, and a payload of another storage class.
        tx.execute(
            "INSERT INTO d1_sync_queue (table_name, row_key, op, payload, created_at, updated_at) VALUES ('messages', '[\"u\"]', 'upsert', CAST(x'7b226964223a22ff227d' AS TEXT), 0, 0)",
            [],
        )
        .unwrap();
        ids.push((tx.last_insert_rowid(), "payload is not JSON"));
        tx.execute(
            "INSERT INTO d1_sync_queue (table_name, row_key, op, payload, attempts, created_at, updated_at) VALUES ('messages', '[\"n\"]', 'upsert', 12345, 'many', 0, 0)",
            [],
        )
        .unwrap();
        ids.push((tx.last_insert_rowid(), "not a number"));
        o.save(tx, &message(9999)).unwrap();
        ids
    });
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();

    let dead = f.outbox.failed(&f.app, 1000).unwrap();
    let not_failed: Vec<_> = bad_ids
        .iter()
        .filter(|(id, _)| !dead.iter().any(|d| d.id == *id))
        .collect();
    assert!(
        not_failed.is_empty(),
        "these malformed records did not fail: {not_failed:?}"
    );
    assert_eq!(
        dead.len(),
        bad_ids.len(),
        "every malformed record, and only those, failed"
    );
    for (id, why) in &bad_ids {
        let d = dead
            .iter()
            .find(|d| d.id == *id)
            .unwrap_or_else(|| panic!("record {id} did not fail"));
        assert!(
            d.last_error.contains(why),
            "record {id}: `{}` does not say `{why}`",
            d.last_error
        );
    }
    let c = f.counts();
    assert_eq!(c.pending, 0);
    assert_eq!(
        c.synced as usize,
        bad.len() + 1,
        "every valid record shipped"
    );
    f.assert_in_step(&Message::table_def()).await;
    worker.shutdown().await.unwrap();
}
