//! Migrations: one set of files for the app's file and D1, recorded as wrangler records them,
//! and a queue that waits for D1 to catch up instead of charging records it cannot take yet.

use std::time::{Duration, Instant};

use d1_sync::schema::migrations as m;
use d1_sync::{Registry, SyncWorker, TableDef, WorkerState};
use d1_sync_tests::d1peer::D1Peer;
use d1_sync_tests::fixture::fast_backoff;

/// The example migrations plus `extra` files, in a folder of their own.
fn folder(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(d1_sync_example::migrations_dir()).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    for (name, sql) in extra {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    dir
}

fn message_payload(id: &str, topic: Option<&str>) -> String {
    let mut v = serde_json::json!({
        "id": id, "platform": "web", "role": "user", "observed_at": 1, "created_at": 1,
    });
    if let Some(t) = topic {
        v["topic"] = serde_json::Value::String(t.into());
    }
    v.to_string()
}

async fn wait_until<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    what: &str,
    mut check: F,
) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_wait_uncharged_while_d1_lacks_a_migration_and_drain_once_it_has_it() {
    let dir = folder(&[(
        "0008_topic.sql",
        "ALTER TABLE messages ADD COLUMN topic TEXT;",
    )]);
    let app_dir = tempfile::tempdir().unwrap();
    let app_path = app_dir.path().join("app.db");
    let app = d1_sync::open(&app_path).unwrap();
    let report = d1_sync::migrate(&app, dir.path()).unwrap();
    assert_eq!(report.applied.len(), 8);

    // D1 has the first seven migrations only.
    let db = D1Peer::shared().database();
    let d1 = db.client();
    let all = m::load(dir.path()).unwrap();
    d1_sync::migrate::migrate_d1(&d1, &all[..7], m::DEFAULT_TABLE, false)
        .await
        .unwrap();

    // A record for the new column, and one that does not need it.
    let outbox = d1_sync::Outbox::new();
    outbox
        .enqueue_raw(
            &app,
            "messages",
            r#"["m1"]"#,
            "upsert",
            &message_payload("m1", Some("news")),
        )
        .unwrap();
    app.execute(
        "INSERT INTO messages (id, platform, role, observed_at, created_at, topic) VALUES ('m1', 'web', 'user', 1, 1, 'news')",
        [],
    )
    .unwrap();
    let schema = d1_sync::schema::load_schema(dir.path()).unwrap();
    let worker = SyncWorker::builder(&app_path, db.client())
        .registry(Registry::from_schema(&schema, &["created_at"]))
        .backoff(fast_backoff())
        .pause(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    worker.start().unwrap();
    wait_until("the worker pauses for the migration", || async {
        matches!(
            worker.stats().await.unwrap().state,
            WorkerState::Paused { .. }
        )
    })
    .await;
    let s = worker.stats().await.unwrap();
    let WorkerState::Paused { reason, .. } = &s.state else {
        unreachable!()
    };
    assert_eq!(
        reason,
        "D1 lacks migration 0008_topic.sql; run `d1sync migrate`"
    );
    let charged: i64 = app
        .query_row(
            "SELECT coalesce(max(attempts), 0) FROM d1_sync_queue",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(charged, 0, "no record is charged for D1 being behind");
    assert_eq!(s.queue.pending, 1);

    // The operator migrates D1; the worker goes on by itself.
    let applied = d1_sync::migrate::migrate_d1(&d1, &all, m::DEFAULT_TABLE, false)
        .await
        .unwrap();
    assert_eq!(applied.applied, ["0008_topic.sql"]);
    wait_until("the queue drains", || async {
        worker.stats().await.unwrap().queue.pending == 0
    })
    .await;
    let s = worker.stats().await.unwrap();
    worker.shutdown().await.unwrap();
    assert_eq!((s.queue.failed, s.records_synced), (0, 1));
    let def = Registry::from_schema(&schema, &["created_at"]);
    let messages = def.get("messages").unwrap();
    assert_eq!(
        d1_sync::verify::dump_d1(&d1, messages).await.unwrap(),
        d1_sync::verify::dump_local(&app, messages).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_typo_is_still_charged_and_dead_lettered_with_d1s_message() {
    let dir = folder(&[]);
    let app_dir = tempfile::tempdir().unwrap();
    let app_path = app_dir.path().join("app.db");
    let app = d1_sync::open(&app_path).unwrap();
    d1_sync::migrate(&app, dir.path()).unwrap();
    let db = D1Peer::shared().database();
    let d1 = db.client();
    let all = m::load(dir.path()).unwrap();
    d1_sync::migrate::migrate_d1(&d1, &all, m::DEFAULT_TABLE, false)
        .await
        .unwrap();
    // The worker's registry knows a column that no migration has (a typo in a hand-made
    // table definition): D1 and the app's file have the same migrations, so it is the record's
    // fault.
    let mut registry = Registry::new();
    registry.add(TableDef {
        name: "messages".into(),
        columns: [
            "id",
            "platform",
            "role",
            "observed_at",
            "created_at",
            "topcis",
        ]
        .map(String::from)
        .to_vec(),
        primary_key: vec!["id".into()],
        insert_only: vec![],
        version: None,
    });
    let mut payload: serde_json::Value =
        serde_json::from_str(&message_payload("m1", None)).unwrap();
    payload["topcis"] = "oops".into();
    d1_sync::Outbox::new()
        .enqueue_raw(
            &app,
            "messages",
            r#"["m1"]"#,
            "upsert",
            &payload.to_string(),
        )
        .unwrap();
    let worker = SyncWorker::builder(&app_path, db.client())
        .registry(registry)
        .max_attempts(2)
        .backoff(fast_backoff())
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    worker.start().unwrap();
    wait_until("the record is dead-lettered", || async {
        worker.stats().await.unwrap().queue.failed == 1
    })
    .await;
    worker.shutdown().await.unwrap();
    let dead = d1_sync::Outbox::new().failed(&app, 10).unwrap();
    assert!(
        dead[0].last_error.contains("topcis"),
        "{}",
        dead[0].last_error
    );
    assert_eq!(dead[0].attempts, 2);
}

/// Processes that start at once (the app, a `d1sync run`, a second instance) each open the same
/// new file and apply the same migrations: every one succeeds, each migration is applied and
/// recorded once, and the outbox is installed once.
#[test]
fn processes_starting_at_once_open_and_migrate_one_file_without_errors() {
    const OPENERS: usize = 6;
    let dir = folder(&[]);
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    for round in 0..10 {
        let app_dir = tempfile::tempdir().unwrap();
        let app_path = app_dir.path().join("app.db");
        let start = std::sync::Barrier::new(OPENERS);
        let applied: Vec<Vec<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..OPENERS)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let conn = d1_sync::open(&app_path)
                            .unwrap_or_else(|e| panic!("round {round}: open: {e}"));
                        d1_sync::migrate(&conn, dir.path())
                            .unwrap_or_else(|e| panic!("round {round}: migrate: {e}"))
                            .applied
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<String> = applied.into_iter().flatten().collect();
        all.sort();
        let conn = d1_sync::open(&app_path).unwrap();
        let recorded = d1_sync::migrate::recorded_local(&conn, m::DEFAULT_TABLE).unwrap();
        assert_eq!(
            all.len(),
            files,
            "round {round}: each applied once: {all:?}"
        );
        all.dedup();
        assert_eq!(all.len(), files, "round {round}: by one opener each");
        assert_eq!(recorded.names.len(), files, "round {round}");
    }
}
