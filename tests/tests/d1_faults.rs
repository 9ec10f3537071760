//! What the worker does when D1 fails: every outcome class of DESIGN.md, against Cloudflare's
//! local D1 engine with scripted faults.

use std::time::{Duration, Instant};

use d1_sync::{D1Http, SyncRow, SyncWorker, WorkerState};
use d1_sync_example::rows::{ConversationLink, LocalConversation, Message};
use d1_sync_tests::d1peer::D1Peer;
use d1_sync_tests::fixture::{conversation, link, Fixture, Person};
use d1_sync_tests::targets::TestTarget;

fn message(i: usize) -> Message {
    d1_sync_tests::fixture::message(
        &format!("m{i:05}"),
        &format!("message number {i}"),
        1_700_000_000_000,
    )
}

async fn d1_fixture(messages: usize) -> Fixture {
    let mut f = Fixture::new(|_| TestTarget::d1()).await;
    f.write(|o, tx| {
        for i in 0..messages {
            o.save(tx, &message(i)).unwrap();
        }
    });
    f
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_waits_for_retry_after_and_charges_nothing() {
    let f = d1_fixture(20).await;
    let db = f.target.test_db().unwrap().clone();
    D1Peer::shared().set_faults(&db, &["429:1"]).await;
    let worker = f.worker().build().unwrap();
    let start = Instant::now();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "resent before Retry-After"
    );
    assert_eq!(f.max_attempts_charged(), 0, "a 429 charges no record");
    let s = worker.stats().await.unwrap();
    assert_eq!((s.records_synced, s.requests_failed), (20, 1));
    assert_eq!(
        D1Peer::shared().stats(&db).await.faults.get("429:1"),
        Some(&1)
    );
    f.assert_in_step(&Message::table_def()).await;
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_html_bodies_and_lost_responses_are_retried() {
    let f = d1_fixture(50).await;
    let db = f.target.test_db().unwrap().clone();
    // 500 with JSON, 503 with an HTML body, and a response lost after D1 committed.
    D1Peer::shared()
        .set_faults(&db, &["500", "503", "after"])
        .await;
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    assert_eq!(f.max_attempts_charged(), 0);
    let s = worker.stats().await.unwrap();
    assert_eq!((s.records_synced, s.requests_failed), (50, 3));
    assert!(s.last_error.unwrap().contains("internal error"));
    f.assert_in_step(&Message::table_def()).await;
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_pause_the_worker_and_dead_letter_nothing() {
    let f = d1_fixture(10).await;
    let db = f.target.test_db().unwrap().clone();
    // A token D1 refuses on every request.
    let target = D1Http::new(db.with_token("wrong-token")).unwrap();
    let worker = SyncWorker::builder(&f.app_path, target)
        .registry(d1_sync_tests::fixture::registry())
        .pause(Duration::from_millis(100))
        .build()
        .unwrap();
    worker.start().unwrap();
    let start = Instant::now();
    let reason = loop {
        let s = worker.stats().await.unwrap();
        if let WorkerState::Paused { reason, .. } = s.state {
            break reason;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the worker never paused: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = worker.stats().await.unwrap();
    assert!(reason.contains("Authentication error"), "{reason}");
    assert_eq!(
        (s.queue.failed, s.queue.pending),
        (0, 10),
        "nothing dead-lettered, nothing lost"
    );
    assert_eq!(f.max_attempts_charged(), 0);
    assert!(s.requests >= 2, "it tries again after the pause");
    worker.shutdown().await.unwrap();

    // The right token: the same queue drains.
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    f.assert_in_step(&Message::table_def()).await;
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_in_the_middle_pauses_then_resumes() {
    let f = d1_fixture(10).await;
    let db = f.target.test_db().unwrap().clone();
    D1Peer::shared().set_faults(&db, &["403"]).await;
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    let s = worker.stats().await.unwrap();
    assert_eq!((s.records_synced, s.queue.failed), (10, 0));
    assert!(s
        .last_error
        .unwrap()
        .contains("authentication failed (HTTP 403)"));
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_constraint_violation_in_500_fails_alone() {
    let mut f = Fixture::new(|_| TestTarget::d1()).await;
    // D1 already holds the email one local row will use.
    f.target
        .exec(&[
            "INSERT INTO people (id, email, name) VALUES (100000, 'taken@example.com', 'remote')",
        ])
        .await
        .unwrap();
    f.write(|o, tx| {
        for i in 1..=500i64 {
            let email = if i == 250 {
                "taken@example.com".to_string()
            } else {
                format!("p{i}@example.com")
            };
            o.save(
                tx,
                &Person {
                    id: i,
                    email,
                    name: Some(format!("P{i}")),
                },
            )
            .unwrap();
        }
    });
    let worker = f.worker().max_attempts(2).build().unwrap();
    worker.start().unwrap();
    wait_until(
        "the bad record is dead-lettered",
        Duration::from_secs(60),
        || {
            let w = worker.clone();
            async move {
                w.flush().await.unwrap();
                let s = w.stats().await.unwrap();
                s.queue.failed == 1 && s.queue.pending == 0
            }
        },
    )
    .await;
    let s = worker.stats().await.unwrap();
    assert_eq!(s.records_synced, 499);
    let dead = f.outbox.failed(&f.app, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].row_key, "[250]");
    assert_eq!(dead[0].attempts, 2);
    assert!(
        dead[0]
            .last_error
            .contains("UNIQUE constraint failed: people.email"),
        "{}",
        dead[0].last_error
    );
    let remote = f.target.dump(&Person::table_def()).await;
    assert_eq!(remote.len(), 500, "499 rows shipped beside the remote one");
    // Finding one record in 500 takes about two requests per halving, per attempt.
    assert!(s.requests <= 40, "{} requests", s.requests);
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_record_naming_an_unknown_column_is_dead_lettered_with_the_reason() {
    let mut f = d1_fixture(30).await;
    f.write(|o, tx| {
        o.enqueue_raw(
            tx,
            "messages",
            r#"["bad"]"#,
            "upsert",
            r#"{"id":"bad","nope":1}"#,
        )
        .unwrap();
        o.save(tx, &message(999)).unwrap();
    });
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    let dead = f.outbox.failed(&f.app, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].last_error,
        "`nope` is not a column of table `messages`"
    );
    assert_eq!(worker.stats().await.unwrap().records_synced, 31);
    f.assert_in_step(&Message::table_def()).await;
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_after_an_outage_without_new_writes() {
    let f = d1_fixture(40).await;
    let db = f.target.test_db().unwrap().clone();
    D1Peer::shared()
        .set_faults(&db, &["503", "503", "503", "503", "503"])
        .await;
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    assert_eq!(worker.stats().await.unwrap().records_synced, 40);
    assert!(D1Peer::shared().stats(&db).await.requests >= 6);
    f.assert_in_step(&Message::table_def()).await;
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_on_restart() {
    let mut f = d1_fixture(25).await;
    // Written while no worker ran.
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    assert!(!worker.start().unwrap(), "a second start is a no-op");
    worker.flush().await.unwrap();
    worker.shutdown().await.unwrap();
    worker.shutdown().await.unwrap();
    assert!(
        f.outbox.lease(&f.app).unwrap().is_none(),
        "a clean shutdown releases the lease"
    );
    f.assert_in_step(&Message::table_def()).await;

    f.write(|o, tx| {
        for i in 100..110 {
            o.save(tx, &message(i)).unwrap();
        }
    });
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    f.assert_in_step(&Message::table_def()).await;
    worker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_within_its_bound_while_a_request_hangs() {
    let f = d1_fixture(15).await;
    let db = f.target.test_db().unwrap().clone();
    D1Peer::shared().set_faults(&db, &["hang:30000"]).await;
    let worker = f
        .worker()
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    worker.start().unwrap();
    wait_until("a request is in flight", Duration::from_secs(10), || {
        let db = db.clone();
        async move { D1Peer::shared().stats(&db).await.requests >= 1 }
    })
    .await;
    let start = Instant::now();
    worker.shutdown().await.unwrap();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?} while the request hangs for 30 s"
    );
    let c = f.counts();
    assert_eq!(
        (c.pending, c.failed),
        (15, 0),
        "nothing acknowledged, nothing charged"
    );
    assert!(!worker.is_running());
    // A request was cut off, and D1 may still run it: the lease is kept until it runs out,
    // so no successor can send newer changes before it lands.
    assert!(
        f.outbox.lease(&f.app).unwrap().is_some(),
        "the lease outlives a cut-off request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_under_its_request_budget() {
    let db = D1Peer::shared().database();
    let mut config = db.config.clone();
    config.request_budget = Some((3, Duration::from_secs(1)));
    let d1 = D1Http::new(config).unwrap();
    let select = [d1_sync::target::Statement::new("SELECT 1")];
    let start = Instant::now();
    for _ in 0..3 {
        d1.query(&select).await.unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "three fit in the budget"
    );
    d1.query(&select).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "the fourth waited for the window"
    );
    assert_eq!(D1Peer::shared().stats(&db).await.requests, 4);
}

/// The ledger's tables are made once per client, however many ask at once: the worker's
/// `prepare` (beside its first read of the queue) and its first request share one set-up
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_is_made_once_beside_the_first_read() {
    use d1_sync::Target;
    let db = D1Peer::shared().database();
    let d1 = D1Http::new(db.config.clone()).unwrap();
    let made = tokio::join!(d1.prepare(), d1.prepare(), d1.prepare());
    assert_eq!(made, (Ok(()), Ok(()), Ok(())));
    assert_eq!(
        D1Peer::shared().stats(&db).await.requests,
        1,
        "one set-up request"
    );
    d1.prepare().await.unwrap();
    assert_eq!(
        D1Peer::shared().stats(&db).await.requests,
        1,
        "made already"
    );

    // Through a worker: the set-up and one request for the batch, nothing more.
    let f = d1_fixture(20).await;
    let db = f.target.test_db().unwrap().clone();
    let before = D1Peer::shared().stats(&db).await.requests;
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    assert_eq!(worker.stats().await.unwrap().records_synced, 20);
    assert_eq!(D1Peer::shared().stats(&db).await.requests - before, 2);
    worker.shutdown().await.unwrap();
}

/// The regression of the first version: one request holds [upsert child C of parent P, delete
/// P]. D1 commits it (the delete cascades C away) and the answer is lost. Sent again without a
/// ledger, the upsert of C dangles, P's delete no longer cascades, and the commit fails on the
/// foreign key: the worker split the request and charged valid records. With the ledger, the
/// replay is recognised as applied and nothing is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_child_upsert_and_parent_delete_is_recognised_not_applied_twice() {
    let mut f = Fixture::new(|_| TestTarget::d1()).await;
    let db = f.target.test_db().unwrap().clone();
    f.write(|o, tx| o.save(tx, &conversation("p")).map(drop).unwrap());
    let worker = f.worker().build().unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    // Parent P is in D1, and the worker is idle: the next request D1 gets is the one below,
    // and its answer is lost after D1 commits it. (The fault is set first: a running worker
    // may send the records as soon as they are written.)
    D1Peer::shared().set_faults(&db, &["after"]).await;
    // In one transaction: a child of P, then P's delete (which cascades the child away
    // locally, as it will on D1).
    f.write(|o, tx| {
        o.save(tx, &link("c", "p")).unwrap();
        o.remove(tx, &conversation("p")).unwrap();
    });
    worker.flush().await.unwrap();
    let s = worker.stats().await.unwrap();
    worker.shutdown().await.unwrap();
    assert_eq!(
        D1Peer::shared().stats(&db).await.faults.get("after"),
        Some(&1),
        "D1 committed the request and its answer was lost"
    );
    assert_eq!(s.requests_replayed, 1, "the replay was recognised");
    assert_eq!(f.max_attempts_charged(), 0, "no attempt charged");
    let c = f.counts();
    assert_eq!((c.pending, c.failed), (0, 0));
    assert_eq!(s.records_synced, 3);
    f.assert_in_step(&LocalConversation::table_def()).await;
    f.assert_in_step(&ConversationLink::table_def()).await;

    // Without the ledger the same request is not harmless: the very statements, minus the
    // ledger's write, run twice on a fresh D1 database, fail the second time.
    let fresh = Fixture::new(|_| TestTarget::d1()).await;
    let d1 = match &fresh.target {
        TestTarget::D1(d, _) => d.clone(),
        TestTarget::Sqlite(_) => unreachable!(),
    };
    fresh
        .target
        .exec(&["INSERT INTO local_conversations (local_conversation_id, platform, created_at, updated_at) VALUES ('p', 'web', 1, 1)"])
        .await
        .unwrap();
    // Unversioned: a versioned child would be refused by the tombstone its cascade left,
    // which makes this replay harmless on its own; most tables are not versioned.
    let mut unversioned = d1_sync::Registry::new();
    for name in ["conversation_links", "local_conversations"] {
        let mut def = (**d1_sync_tests::fixture::registry().get(name).unwrap()).clone();
        def.version = None;
        unversioned.add(def);
    }
    let changes: Vec<d1_sync::change::Change> = [
        (
            "conversation_links",
            r#"["c"]"#,
            "upsert",
            d1_sync::codec::stored_object(
                ConversationLink::COLUMNS
                    .iter()
                    .copied()
                    .zip(link("c", "p").values().iter()),
            ),
        ),
        (
            "local_conversations",
            r#"["p"]"#,
            "delete",
            r#"{"local_conversation_id":"p"}"#.to_string(),
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (table, key, op, payload))| {
        let raw = d1_sync::change::RawRecord {
            id: i as i64 + 1,
            table: table.into(),
            row_key: key.into(),
            op: op.into(),
            payload: payload.into_bytes(),
            attempts: 0,
            def: None,
        };
        d1_sync::change::check(&raw, &unversioned).unwrap()
    })
    .collect();
    let request = d1_sync::pack::pack(&changes, &d1_sync::target::PackLimits::default()).remove(0);
    let without_ledger = request.statements_without_ledger();
    d1.query(&without_ledger).await.unwrap();
    let again = d1.query(&without_ledger).await.unwrap_err();
    assert!(
        again.to_string().contains("FOREIGN KEY constraint failed"),
        "{again}"
    );
}

/// A child whose parent D1 refuses waits behind the parent, uncharged, even once the parent
/// is dead-lettered; when the parent is fixed and retried, both ship.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_of_a_refused_parent_waits_uncharged_and_ships_after_the_retry() {
    let mut f = Fixture::new(|_| TestTarget::d1()).await;
    // D1 (only) refuses this conversation's title, as it would any record it never takes.
    f.target
        .exec(&["CREATE TRIGGER refuse BEFORE INSERT ON local_conversations WHEN NEW.title = 'refused' BEGIN SELECT RAISE(ABORT, 'title refused'); END"])
        .await
        .unwrap();
    let mut refused = conversation("p");
    refused.title = Some("refused".into());
    f.write(|o, tx| {
        o.save(tx, &refused).unwrap();
        o.save(tx, &link("c", "p")).unwrap();
        o.save(tx, &message(1)).unwrap();
    });
    let worker = f.worker().max_attempts(2).build().unwrap();
    worker.start().unwrap();
    wait_until(
        "the parent is dead-lettered",
        Duration::from_secs(20),
        || async { f.outbox.counts(&f.app).unwrap().failed == 1 },
    )
    .await;
    worker.flush().await.unwrap();
    let (attempts, why): (i64, String) = f
        .app
        .query_row(
            "SELECT attempts, last_error FROM d1_sync_queue WHERE table_name = 'conversation_links'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(attempts, 0, "the child is never charged");
    assert!(
        why.contains("waits for its parent row local_conversations"),
        "{why}"
    );
    assert!(worker.stats().await.unwrap().records_held >= 1);
    f.assert_in_step(&Message::table_def()).await;
    // Fix the cause on D1, retry the dead letter: both ship.
    f.target.exec(&["DROP TRIGGER refuse"]).await.unwrap();
    f.outbox.retry(&f.app, d1_sync::Selection::All).unwrap();
    wait_until("both ship", Duration::from_secs(20), || async {
        let c = f.outbox.counts(&f.app).unwrap();
        c.pending == 0 && c.failed == 0
    })
    .await;
    worker.shutdown().await.unwrap();
    f.assert_all_in_step().await;
}
