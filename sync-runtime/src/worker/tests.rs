//! The worker's own tests, on a local SQLite target that meets a script of outcomes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use crate::ledger::{Applied, RequestId};
use crate::target::{Batch, BoxFuture, PackLimits, SqliteTarget, Target, TargetError};
use crate::{Backoff, D1Sync, Outbox, Step, SyncWorker};

#[derive(D1Sync, Debug, Clone)]
#[d1(table = "parent")]
struct Parent {
    #[d1(primary_key)]
    id: i64,
    v: String,
}

#[derive(D1Sync, Debug, Clone)]
#[d1(table = "child")]
struct Child {
    #[d1(primary_key)]
    id: i64,
    parent_id: i64,
}

const SCHEMA: &str = "CREATE TABLE parent (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
    CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL REFERENCES parent (id) ON DELETE CASCADE);";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    /// A 503 before anything was applied.
    Fail,
    /// Applied, then the answer is lost.
    Lost,
}

/// What the target saw: each request's id, its records, and what it answered.
#[derive(Debug, Clone)]
struct Seen {
    id: RequestId,
    ids: Vec<i64>,
    answer: Result<Applied, TargetError>,
}

struct Scripted {
    inner: SqliteTarget,
    script: Mutex<VecDeque<Outcome>>,
    seen: Mutex<Vec<Seen>>,
}

impl Target for Scripted {
    fn execute<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            let outcome = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Outcome::Ok);
            let answer = match outcome {
                Outcome::Fail => Err(TargetError::Transient("HTTP 503".into())),
                Outcome::Ok => self.inner.execute(batch).await,
                Outcome::Lost => match self.inner.execute(batch).await {
                    Ok(_) => Err(TargetError::Transient("answer lost after commit".into())),
                    Err(e) => Err(e),
                },
            };
            self.seen.lock().unwrap().push(Seen {
                id: batch.request.clone(),
                ids: batch.changes.iter().map(|c| c.id).collect(),
                answer: answer.clone(),
            });
            answer
        })
    }

    fn limits(&self) -> PackLimits {
        self.inner.limits()
    }

    fn wants_statements(&self) -> bool {
        self.inner.wants_statements()
    }

    fn describe(&self) -> String {
        "scripted".into()
    }
}

struct World {
    _dir: tempfile::TempDir,
    app: Connection,
    target: Arc<Scripted>,
    worker: SyncWorker,
}

impl World {
    fn new(script: &[Outcome]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let app = crate::open(&path).unwrap();
        app.execute_batch(SCHEMA).unwrap();
        let inner = SqliteTarget::open(dir.path().join("target.db")).unwrap();
        // The target refuses the value `poison`, as D1 refuses a record it will never take.
        inner
            .with_connection(|c| {
                c.execute_batch(SCHEMA)?;
                c.execute_batch(
                    "CREATE TRIGGER poison BEFORE INSERT ON parent WHEN NEW.v = 'poison'
                     BEGIN SELECT RAISE(ABORT, 'poison refused'); END",
                )
            })
            .unwrap();
        let target = Arc::new(Scripted {
            inner,
            script: Mutex::new(script.iter().copied().collect()),
            seen: Mutex::new(Vec::new()),
        });
        let worker = SyncWorker::builder(&path, target.clone())
            .register::<Parent>()
            .register::<Child>()
            .max_attempts(2)
            .backoff(Backoff {
                base: Duration::from_secs(60),
                cap: Duration::from_secs(60),
                floor: Duration::from_secs(60),
            })
            .build()
            .unwrap();
        World {
            _dir: dir,
            app,
            target,
            worker,
        }
    }

    fn write(&mut self, f: impl FnOnce(&Outbox, &rusqlite::Transaction<'_>)) {
        let tx = self.app.transaction().unwrap();
        f(&Outbox::new(), &tx);
        tx.commit().unwrap();
    }

    async fn step(&self) -> Step {
        self.worker.step().await.unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.target.seen.lock().unwrap().clone()
    }

    fn column(&self, sql: &str) -> Vec<i64> {
        self.app
            .prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

fn parent(id: i64, v: &str) -> Parent {
    Parent { id, v: v.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_answer_was_lost_goes_again_unchanged_and_is_recognised() {
    let mut w = World::new(&[Outcome::Lost]);
    w.write(|o, tx| {
        o.save(tx, &parent(1, "a")).unwrap();
        o.save(tx, &parent(2, "b")).unwrap();
    });
    assert!(matches!(
        w.step().await,
        Step::Failed(TargetError::Transient(_))
    ));
    assert_eq!(w.step().await, Step::Progress);
    let seen = w.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].id, seen[0].id, "the same request, with the same id");
    assert_eq!(seen[1].ids, seen[0].ids);
    assert_eq!(seen[1].answer, Ok(Applied::Before));
    assert_eq!(w.column("SELECT count(*) FROM d1_sync_queue"), [0]);
    assert_eq!(
        w.column("SELECT count(*) FROM d1_sync_queue_requests"),
        [0],
        "journal emptied"
    );
    let stats = w.worker.stats().await.unwrap();
    assert_eq!((stats.records_synced, stats.requests_replayed), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_goes_on_where_it_was_after_a_transient_failure() {
    // Every other request fails before the target sees it.
    let script: Vec<Outcome> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                Outcome::Fail
            } else {
                Outcome::Ok
            }
        })
        .collect();
    let mut w = World::new(&script);
    w.write(|o, tx| {
        for i in 0..64 {
            let v = if i == 37 { "poison" } else { "ok" };
            o.save(tx, &parent(i, v)).unwrap();
        }
    });
    let mut steps = 0;
    while w.step().await != Step::Idle {
        steps += 1;
        assert!(steps < 100, "the split never finished");
    }
    let seen = w.seen();
    // A failed request is followed by the very same request: nothing starts over.
    for pair in seen.windows(2) {
        if pair[0].answer == Err(TargetError::Transient("HTTP 503".into())) {
            assert_eq!((&pair[1].id, &pair[1].ids), (&pair[0].id, &pair[0].ids));
        }
    }
    let sent_whole = seen.iter().filter(|s| s.ids.len() == 64).count();
    assert_eq!(
        sent_whole, 2,
        "the whole batch went once, and once more after its failure"
    );
    // 64 → 32 → 16 → 8 → 4 → 2 → 1 finds the record at fault: 13 requests, each twice.
    assert!(seen.len() <= 2 * 14, "{} requests", seen.len());
    assert_eq!(
        w.column("SELECT attempts FROM d1_sync_queue"),
        [1],
        "only the poison is charged"
    );
    assert_eq!(w.column("SELECT count(*) FROM d1_sync_queue_synced"), [63]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_of_a_refused_parent_waits_uncharged() {
    let mut w = World::new(&[]);
    w.write(|o, tx| {
        o.save(tx, &parent(1, "poison")).unwrap();
        o.save(
            tx,
            &Child {
                id: 10,
                parent_id: 1,
            },
        )
        .unwrap();
        o.save(tx, &parent(2, "fine")).unwrap();
        o.save(
            tx,
            &Child {
                id: 20,
                parent_id: 2,
            },
        )
        .unwrap();
    });
    while w.step().await != Step::Idle {}
    // The parent is charged; its child waits behind it without an attempt; the rest ships.
    assert_eq!(
        w.column("SELECT attempts FROM d1_sync_queue ORDER BY id"),
        [1, 0]
    );
    let why: String = w
        .app
        .query_row(
            "SELECT last_error FROM d1_sync_queue WHERE table_name = 'child'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(why.contains("waits for its parent row parent [1]"), "{why}");
    assert_eq!(w.column("SELECT count(*) FROM d1_sync_queue_synced"), [2]);
    assert_eq!(w.worker.stats().await.unwrap().records_held, 1);
    // Even when the parent is dead-lettered, the child is never charged.
    w.app
        .execute("UPDATE d1_sync_queue SET next_attempt_at = 1", [])
        .unwrap();
    while w.step().await != Step::Idle {}
    w.app
        .execute(
            "UPDATE d1_sync_queue SET next_attempt_at = 1 WHERE status = 'pending'",
            [],
        )
        .unwrap();
    while w.step().await != Step::Idle {}
    assert_eq!(
        w.column("SELECT attempts FROM d1_sync_queue ORDER BY id"),
        [2, 0]
    );
    assert_eq!(
        w.column("SELECT count(*) FROM d1_sync_queue WHERE status = 'failed'"),
        [1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_the_queue_plans_again_from_the_journal() {
    let mut w = World::new(&[Outcome::Lost]);
    w.write(|o, tx| o.save(tx, &parent(1, "a")).map(drop).unwrap());
    assert!(matches!(w.step().await, Step::Failed(_)));
    // Another worker on the same file takes the queue over once the lease is free, and sends
    // the journaled request first.
    let path = w._dir.path().join("app.db");
    w.app
        .execute("UPDATE d1_sync_leases SET until = 0", [])
        .unwrap();
    let other = SyncWorker::builder(&path, w.target.clone())
        .register::<Parent>()
        .register::<Child>()
        .build()
        .unwrap();
    assert_eq!(other.step().await.unwrap(), Step::Progress);
    other.shutdown().await.unwrap();
    w.write(|o, tx| o.save(tx, &parent(2, "b")).map(drop).unwrap());
    // The first worker comes back: its old plan is gone, the new record ships.
    w.app
        .execute("UPDATE d1_sync_leases SET until = 0", [])
        .unwrap();
    while w.step().await != Step::Idle {}
    let seen = w.seen();
    assert_eq!(
        seen[1].id, seen[0].id,
        "the successor sent the journaled request"
    );
    assert_eq!(seen[1].answer, Ok(Applied::Before));
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_ne!(seen[2].id, seen[0].id, "a new request for the new record");
    assert_eq!(seen[2].answer, Ok(Applied::now()));
    assert_eq!(w.column("SELECT count(*) FROM d1_sync_queue_synced"), [2]);
    let on_target: Vec<i64> = w.target.inner.with_connection(|c| {
        c.prepare("SELECT id FROM parent ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    });
    assert_eq!(on_target, [1, 2]);
}

/// The running worker reads the next batch while a request is at the target, records of the
/// rows in flight included. When the request is refused, that batch is dropped without a
/// trace: here the refused record is dead-lettered, and the later record of its row must stay
/// behind it, never sent (a read-ahead left in the journal would go out first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_ahead_dropped_after_a_refusal_never_sends_a_later_record_of_the_row() {
    let mut w = World::new(&[]);
    w.write(|o, tx| {
        o.save(tx, &parent(1, "poison")).unwrap();
        o.save(tx, &parent(2, "fine")).unwrap();
        // Another table between: the later record of row 1 is a record of its own.
        o.save(
            tx,
            &Child {
                id: 10,
                parent_id: 2,
            },
        )
        .unwrap();
        o.save(tx, &parent(1, "later")).unwrap();
        o.save(tx, &parent(3, "fine")).unwrap();
    });
    let path = w._dir.path().join("app.db");
    w.app
        .execute("UPDATE d1_sync_leases SET until = 0", [])
        .unwrap();
    let worker = SyncWorker::builder(&path, w.target.clone())
        .register::<Parent>()
        .register::<Child>()
        .batch_size(2)
        .max_attempts(1)
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    worker.start().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w.column("SELECT count(*) FROM d1_sync_queue_synced") != [3] {
        assert!(std::time::Instant::now() < deadline, "{:#?}", w.seen());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a wrongly kept read-ahead every chance to go out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.shutdown().await.unwrap();
    let sent: Vec<i64> = w.seen().iter().flat_map(|s| s.ids.clone()).collect();
    let later = w.column("SELECT id FROM d1_sync_queue WHERE status = 'pending'");
    assert_eq!(later.len(), 1, "the later record of row 1 waits");
    assert!(!sent.contains(&later[0]), "sent {sent:?}");
    assert_eq!(
        w.column("SELECT count(*) FROM d1_sync_queue WHERE status = 'failed'"),
        [1]
    );
    let on_target: Vec<i64> = w.target.inner.with_connection(|c| {
        c.prepare("SELECT id FROM parent ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    });
    assert_eq!(on_target, [2, 3]);
}
