//! Model-based property test of the worker (proptest).
//!
//! Random upserts, partial updates and deletes over a few keys of three tables — a parent `a`,
//! a child `b` whose rows cascade away with their parent, and a child `c` whose key to the
//! parent is set NULL — and worker steps whose requests meet scripted outcomes: ok, 5xx, 429,
//! a timeout before or after the target applied the request (so it is sent again after a
//! commit), 403, a crash before or after applying, and a takeover of the queue by a second
//! worker while the first one's request is unresolved. A poison value the target refuses
//! makes dead letters. The parent `a` and the child `c` are captured: half their writes are
//! plain SQL (upserts, key changes, cascading deletes) that the triggers queue. Each case runs
//! with coalescing on or off. The application database is the model: every write applied in
//! order.
//!
//! After every step: the records newly marked synced are no more than the rows the target
//! acknowledged, and no record was ever applied twice (the target counts applications per
//! record). At rest: no queue id was given twice; every record marked synced was applied
//! exactly once; for every key not
//! held back the target equals the local row; every dead letter has a reason; whatever is
//! still pending waits behind a dead letter of its own row or of its parent row.
//!
//! `PROPTEST_CASES=1000 cargo test -p d1-sync-tests --test model` for a longer run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use d1_sync::rusqlite::Connection;
use d1_sync::target::{Applied, Batch, BoxFuture, Param, Statement};
use d1_sync::{
    Backoff, D1Sync, Outbox, SqliteMode, SqliteTarget, Step, SyncRow, SyncWorker, Target,
    TargetError,
};
use proptest::prelude::*;

#[derive(D1Sync, Debug, Clone)]
#[d1(table = "a")]
struct A {
    #[d1(primary_key)]
    k: String,
    v: Option<String>,
    n: i64,
}

#[derive(D1Sync, Debug, Clone)]
#[d1(table = "b")]
struct B {
    #[d1(primary_key)]
    id: i64,
    a_k: Option<String>,
    x: Option<f64>,
    y: Option<String>,
}

#[derive(D1Sync, Debug, Clone)]
#[d1(table = "c")]
struct C {
    #[d1(primary_key)]
    id: i64,
    a_k: Option<String>,
    z: Option<String>,
}

const CHILDREN: &str =
    "CREATE TABLE b (id INTEGER PRIMARY KEY, a_k TEXT REFERENCES a (k) ON DELETE CASCADE, x REAL, y TEXT);
     CREATE TABLE c (id INTEGER PRIMARY KEY, a_k TEXT REFERENCES a (k) ON DELETE SET NULL, z TEXT);";
const LOCAL_PARENT: &str =
    "CREATE TABLE a (k TEXT PRIMARY KEY, v TEXT, n INTEGER NOT NULL DEFAULT 0);";
/// The target refuses the value `poison` (a stand-in for any record D1 will never take).
const TARGET_PARENT: &str = "CREATE TABLE a (k TEXT PRIMARY KEY, v TEXT CHECK (v IS NULL OR v <> 'poison'), n INTEGER NOT NULL DEFAULT 0);";

#[derive(Debug, Clone, Copy, PartialEq)]
enum RawA {
    Rekey,
    Bump,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Ok,
    ServerError,
    RateLimited,
    TimeoutBefore,
    TimeoutAfter,
    Forbidden,
    CrashBefore,
    CrashAfter,
}

/// A SQLite target (in D1's wire form) whose requests meet a script of outcomes; counts
/// acknowledged rows, and how often each record was applied.
struct Scripted {
    inner: SqliteTarget,
    script: Mutex<VecDeque<Outcome>>,
    acked_rows: AtomicU64,
    applied: Mutex<BTreeMap<i64, u32>>,
}

impl Scripted {
    /// Applies the batch for real, counting each record's application.
    async fn apply(&self, batch: Batch<'_>) -> Result<Applied, TargetError> {
        let applied = self.inner.execute(batch).await?;
        if matches!(applied, Applied::Now { .. }) {
            assert_eq!(rows_in(batch.statements), batch.changes.len() as u64);
            let mut counts = self.applied.lock().unwrap();
            for c in batch.changes {
                *counts.entry(c.id).or_default() += 1;
            }
        }
        Ok(applied)
    }

    /// Records applied more than once.
    fn applied_twice(&self) -> Vec<(i64, u32)> {
        let counts = self.applied.lock().unwrap();
        counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| (*id, *n))
            .collect()
    }
}

fn rows_in(statements: &[Statement]) -> u64 {
    statements
        .iter()
        .filter_map(|s| match &s.params[..] {
            // The early cascade of a leaf's moved writes names rows in two JSON parameters;
            // it writes none of its own.
            [Param::Text(_), Param::Text(_), ..] => None,
            [Param::Text(json), ..] => serde_json::from_str::<Vec<serde_json::Value>>(json).ok(),
            _ => None,
        })
        .map(|rows| rows.len() as u64)
        .sum()
}

impl Target for Scripted {
    fn execute<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<Applied, TargetError>> {
        // D1's wire form, run on SQLite: the json_each statements, bound reals and all.
        let outcome = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Outcome::Ok);
        Box::pin(async move {
            match outcome {
                Outcome::Ok => {
                    let applied = self.apply(batch).await?;
                    self.acked_rows
                        .fetch_add(batch.changes.len() as u64, Ordering::SeqCst);
                    Ok(applied)
                }
                Outcome::ServerError => Err(TargetError::Transient("HTTP 503".into())),
                Outcome::RateLimited => Err(TargetError::RateLimited {
                    retry_after: Some(Duration::ZERO),
                    message: "429".into(),
                }),
                Outcome::TimeoutBefore => Err(TargetError::Transient("timeout".into())),
                Outcome::TimeoutAfter => {
                    self.apply(batch).await?;
                    Err(TargetError::Transient(
                        "timeout after the target applied it".into(),
                    ))
                }
                Outcome::Forbidden => Err(TargetError::Auth {
                    status: 403,
                    message: "Authentication error".into(),
                }),
                Outcome::CrashBefore => std::future::pending().await,
                Outcome::CrashAfter => {
                    self.apply(batch).await?;
                    std::future::pending().await
                }
            }
        })
    }

    fn describe(&self) -> String {
        "scripted SQLite".into()
    }
}

#[derive(Debug, Clone)]
enum Op {
    UpsertA {
        key: u8,
        v: Option<String>,
        n: i64,
    },
    UpdateA {
        key: u8,
        v: Option<String>,
    },
    DeleteA {
        key: u8,
    },
    UpsertB {
        id: i64,
        a: Option<u8>,
        x: Option<f64>,
        y: Option<String>,
    },
    DeleteB {
        id: i64,
    },
    /// `raw`: by plain SQL (`INSERT ... ON CONFLICT`), which the capture trigger queues.
    UpsertC {
        id: i64,
        a: Option<u8>,
        z: Option<String>,
        raw: bool,
    },
    DeleteC {
        id: i64,
        raw: bool,
    },
    /// Plain SQL on the captured parent: a key change (refused locally while children name
    /// the old key), an update of `n`, or a delete that cascades.
    RawA {
        key: u8,
        to: u8,
        what: RawA,
    },
    Step(Vec<Outcome>),
    Crash {
        after: bool,
    },
    /// The worker's request times out after the target applied it; a second worker takes
    /// the queue over, then the first one steps once more before it goes.
    Takeover,
}

fn value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => "[a-z]{0,6}".prop_map(Some),
        1 => Just(None),
        1 => Just(Some("poison".to_string())),
        1 => Just(Some("ünï \"q\" 'x' 🦀".to_string())),
    ]
}

fn real() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        3 => (-1e6..1e6f64).prop_map(Some),
        1 => Just(Some(1e-300)),
        1 => Just(Some(f64::MAX)),
        1 => Just(None),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Ok),
        1 => Just(Outcome::ServerError),
        1 => Just(Outcome::RateLimited),
        1 => Just(Outcome::TimeoutBefore),
        1 => Just(Outcome::TimeoutAfter),
        1 => Just(Outcome::Forbidden),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, value(), any::<i64>()).prop_map(|(key, v, n)| Op::UpsertA { key, v, n }),
        2 => (0u8..3, value()).prop_map(|(key, v)| Op::UpdateA { key, v }),
        2 => (0u8..3).prop_map(|key| Op::DeleteA { key }),
        3 => (0i64..3, prop::option::of(0u8..3), real(), "[a-z]{0,3}".prop_map(Some)).prop_map(|(id, a, x, y)| Op::UpsertB { id, a, x, y }),
        1 => (0i64..3).prop_map(|id| Op::DeleteB { id }),
        2 => (0i64..3, prop::option::of(0u8..3), "[a-z]{0,3}".prop_map(Some), any::<bool>()).prop_map(|(id, a, z, raw)| Op::UpsertC { id, a, z, raw }),
        1 => (0i64..3, any::<bool>()).prop_map(|(id, raw)| Op::DeleteC { id, raw }),
        2 => (0u8..3, 0u8..3, prop_oneof![Just(RawA::Rekey), Just(RawA::Bump), Just(RawA::Delete)]).prop_map(|(key, to, what)| Op::RawA { key, to, what }),
        4 => prop::collection::vec(outcome(), 1..4).prop_map(Op::Step),
        1 => any::<bool>().prop_map(|after| Op::Crash { after }),
        1 => Just(Op::Takeover),
    ]
}

struct World {
    _dir: tempfile::TempDir,
    app_path: std::path::PathBuf,
    app: Connection,
    outbox: Outbox,
    target: Arc<Scripted>,
    worker: SyncWorker,
}

fn worker(app: &std::path::Path, target: &Arc<Scripted>) -> SyncWorker {
    SyncWorker::builder(app, target.clone())
        .register::<A>()
        .register::<B>()
        .register::<C>()
        .max_attempts(3)
        .lease(Duration::from_millis(1))
        .purge_keep(1_000_000)
        .backoff(Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            floor: Duration::from_millis(1),
        })
        .build()
        .unwrap()
}

impl World {
    /// The parent `a` and the child `c` are captured: their raw writes are queued by
    /// triggers, their typed ones once. `coalesce`: whether records merge.
    fn new(coalesce: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let app_path = dir.path().join("app.db");
        let app = d1_sync::open(&app_path).unwrap();
        app.execute_batch(LOCAL_PARENT).unwrap();
        app.execute_batch(CHILDREN).unwrap();
        let inner = SqliteTarget::open(dir.path().join("target.db"))
            .unwrap()
            .with_mode(SqliteMode::Statements);
        inner
            .with_connection(|c| {
                c.execute_batch(TARGET_PARENT)?;
                c.execute_batch(CHILDREN)
            })
            .unwrap();
        let target = Arc::new(Scripted {
            inner,
            script: Mutex::new(VecDeque::new()),
            acked_rows: AtomicU64::new(0),
            applied: Mutex::new(BTreeMap::new()),
        });
        let worker = worker(&app_path, &target);
        let outbox = Outbox::new().coalescing(coalesce);
        outbox.capture::<A>(&app).unwrap();
        outbox.capture::<C>(&app).unwrap();
        World {
            _dir: dir,
            app_path,
            app,
            outbox,
            target,
            worker,
        }
    }

    fn synced(&self) -> u64 {
        self.outbox.counts(&self.app).unwrap().synced
    }

    /// `Some("k<a>")` if that parent row exists locally (a child may only name one that does).
    fn parent(&self, a: Option<u8>) -> Option<String> {
        let k = format!("k{}", a?);
        let n: i64 = self
            .app
            .query_row("SELECT count(*) FROM a WHERE k = ?1", [&k], |r| r.get(0))
            .unwrap();
        (n > 0).then_some(k)
    }

    fn apply(&mut self, op: &Op, rt: &tokio::runtime::Runtime) -> Result<(), TestCaseError> {
        self.run(op, rt)
    }

    fn run(&mut self, op: &Op, rt: &tokio::runtime::Runtime) -> Result<(), TestCaseError> {
        match op {
            Op::UpsertA { key, v, n } => {
                let row = A {
                    k: format!("k{key}"),
                    v: v.clone(),
                    n: *n,
                };
                let tx = self.app.transaction().unwrap();
                self.outbox.save(&tx, &row).unwrap();
                tx.commit().unwrap();
            }
            Op::UpdateA { key, v } => {
                let row = A {
                    k: format!("k{key}"),
                    v: v.clone(),
                    n: 0,
                };
                let tx = self.app.transaction().unwrap();
                self.outbox.patch(&tx, &row, &["v"]).unwrap();
                tx.commit().unwrap();
            }
            Op::DeleteA { key } => {
                let tx = self.app.transaction().unwrap();
                self.outbox
                    .remove(
                        &tx,
                        &A {
                            k: format!("k{key}"),
                            v: None,
                            n: 0,
                        },
                    )
                    .unwrap();
                tx.commit().unwrap();
            }
            Op::UpsertB { id, a, x, y } => {
                let row = B {
                    id: *id,
                    a_k: self.parent(*a),
                    x: *x,
                    y: y.clone(),
                };
                let tx = self.app.transaction().unwrap();
                self.outbox.save(&tx, &row).unwrap();
                tx.commit().unwrap();
            }
            Op::DeleteB { id } => {
                let row = B {
                    id: *id,
                    a_k: None,
                    x: None,
                    y: None,
                };
                let tx = self.app.transaction().unwrap();
                self.outbox.remove(&tx, &row).unwrap();
                tx.commit().unwrap();
            }
            Op::UpsertC { id, a, z, raw } => {
                let row = C {
                    id: *id,
                    a_k: self.parent(*a),
                    z: z.clone(),
                };
                if *raw {
                    self.app
                        .execute(
                            "INSERT INTO c (id, a_k, z) VALUES (?1, ?2, ?3)
                             ON CONFLICT (id) DO UPDATE SET a_k = excluded.a_k, z = excluded.z",
                            d1_sync::rusqlite::params![row.id, row.a_k, row.z],
                        )
                        .unwrap();
                } else {
                    let tx = self.app.transaction().unwrap();
                    self.outbox.save(&tx, &row).unwrap();
                    tx.commit().unwrap();
                }
            }
            Op::DeleteC { id, raw } => {
                let row = C {
                    id: *id,
                    a_k: None,
                    z: None,
                };
                if *raw {
                    self.app
                        .execute("DELETE FROM c WHERE id = ?1", [id])
                        .unwrap();
                } else {
                    let tx = self.app.transaction().unwrap();
                    self.outbox.remove(&tx, &row).unwrap();
                    tx.commit().unwrap();
                }
            }
            Op::RawA { key, to, what } => {
                let (k, to) = (format!("k{key}"), format!("k{to}"));
                let done = match what {
                    RawA::Rekey => self
                        .app
                        .execute("UPDATE a SET k = ?2 WHERE k = ?1", [&k, &to]),
                    RawA::Bump => self
                        .app
                        .execute("UPDATE a SET n = n + 1 WHERE k = ?1", [&k]),
                    RawA::Delete => self.app.execute("DELETE FROM a WHERE k = ?1", [&k]),
                };
                // A key change onto an existing key, or away from a key children name, is
                // refused locally (and so never queued).
                if let Err(e) = done {
                    prop_assert!(
                        e.to_string().contains("constraint failed"),
                        "raw write failed: {e}"
                    );
                }
            }
            Op::Takeover => {
                self.target
                    .script
                    .lock()
                    .unwrap()
                    .push_back(Outcome::TimeoutAfter);
                let first = self.worker.clone();
                self.checked_step(rt)?;
                self.target.script.lock().unwrap().clear();
                // The first worker's lease (1 ms) runs out; a second one takes the queue.
                std::thread::sleep(Duration::from_millis(2));
                self.worker = worker(&self.app_path, &self.target);
                self.checked_step(rt)?;
                self.checked_step(rt)?;
                // The first worker comes back once: it must not send its old plan again.
                std::thread::sleep(Duration::from_millis(2));
                let second = std::mem::replace(&mut self.worker, first);
                self.checked_step(rt)?;
                self.worker = second;
            }
            Op::Step(outcomes) => {
                self.target
                    .script
                    .lock()
                    .unwrap()
                    .extend(outcomes.iter().copied());
                for _ in 0..outcomes.len() {
                    self.checked_step(rt)?;
                }
                self.target.script.lock().unwrap().clear();
            }
            Op::Crash { after } => {
                let outcome = if *after {
                    Outcome::CrashAfter
                } else {
                    Outcome::CrashBefore
                };
                self.target.script.lock().unwrap().push_back(outcome);
                let (before, acked) =
                    (self.synced(), self.target.acked_rows.load(Ordering::SeqCst));
                let w = self.worker.clone();
                let r = rt.block_on(async move {
                    tokio::time::timeout(Duration::from_millis(200), w.step()).await
                });
                // The process "dies": the worker is dropped without shutdown, and a new one
                // opens the same file.
                self.target.script.lock().unwrap().clear();
                self.worker = worker(&self.app_path, &self.target);
                let (after_synced, after_acked) =
                    (self.synced(), self.target.acked_rows.load(Ordering::SeqCst));
                prop_assert!(
                    after_synced - before <= after_acked - acked,
                    "synced without an ack ({r:?})"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }

    fn checked_step(&mut self, rt: &tokio::runtime::Runtime) -> Result<Step, TestCaseError> {
        let before = self.synced();
        let acked = self.target.acked_rows.load(Ordering::SeqCst);
        let step = rt.block_on(self.worker.step()).unwrap();
        let newly_synced = self.synced() - before;
        let newly_acked = self.target.acked_rows.load(Ordering::SeqCst) - acked;
        prop_assert!(
            newly_synced <= newly_acked,
            "{newly_synced} records marked synced but the target acknowledged {newly_acked} rows ({step:?})"
        );
        let twice = self.target.applied_twice();
        prop_assert!(
            twice.is_empty(),
            "records applied more than once (id, times): {twice:?}"
        );
        Ok(step)
    }

    /// Steps with every request succeeding until nothing is left to try.
    fn settle(&mut self, rt: &tokio::runtime::Runtime) -> Result<(), TestCaseError> {
        self.worker = worker(&self.app_path, &self.target);
        std::thread::sleep(Duration::from_millis(2));
        let mut idle = 0;
        for _ in 0..2_000 {
            match self.checked_step(rt)? {
                Step::Idle => idle += 1,
                _ => idle = 0,
            }
            if idle >= 10 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(TestCaseError::fail("the queue never settled"))
    }

    fn check_at_rest(&self) -> Result<(), TestCaseError> {
        // Every record marked synced was applied exactly once (now, or by a delivery whose
        // answer was lost). A record's id is never given again, even after the queue empties.
        let reused: i64 = self
            .app
            .query_row(
                "SELECT count(*) - count(DISTINCT id) FROM d1_sync_queue_synced",
                [],
                |r| r.get(0),
            )
            .unwrap();
        prop_assert_eq!(reused, 0, "a queue id was given to two records");
        let synced: Vec<i64> = self
            .app
            .prepare("SELECT id FROM d1_sync_queue_synced")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        {
            let counts = self.target.applied.lock().unwrap();
            for id in &synced {
                prop_assert_eq!(
                    counts.get(id).copied().unwrap_or(0),
                    1,
                    "record {} is synced",
                    id
                );
            }
        }
        let dead: Vec<(String, String, String)> = self
            .app
            .prepare("SELECT table_name, row_key, coalesce(last_error, '') FROM d1_sync_queue WHERE status = 'failed'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (t, k, reason) in &dead {
            prop_assert!(!reason.is_empty(), "dead letter {t} {k} has no reason");
        }
        // What is still pending waits behind a record of its own row that waits, or behind a
        // dead letter of the parent row it names.
        let unexplained: Vec<(i64, String, String)> = self
            .app
            .prepare(
                "SELECT r.id, r.table_name, r.payload FROM d1_sync_queue r WHERE r.status = 'pending'
                 AND NOT EXISTS (SELECT 1 FROM d1_sync_queue e WHERE e.table_name = r.table_name
                                 AND e.row_key = r.row_key AND e.id < r.id
                                 AND (e.status = 'failed' OR e.next_attempt_at > 0))
                 AND NOT (r.table_name IN ('b', 'c') AND EXISTS (
                     SELECT 1 FROM d1_sync_queue p WHERE p.status = 'failed' AND p.table_name = 'a'
                       AND p.row_key = json_array(json_extract(r.payload, '$.a_k'))))",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert!(
            unexplained.is_empty(),
            "records wait with nothing ahead of them to wait for: {unexplained:?}"
        );

        // Rows with records still in the queue, and the children of such parents (a cascade
        // or SET NULL locally that D1 has not seen yet), are left out of the comparison.
        let stuck: std::collections::BTreeSet<(String, String)> = self
            .app
            .prepare("SELECT DISTINCT table_name, row_key FROM d1_sync_queue")
            .unwrap()
            .query_map([], |r| {
                let key: String = r.get(1)?;
                let v: Vec<serde_json::Value> = serde_json::from_str(&key).unwrap();
                // As the dump renders a key: text.
                let shown = match &v[0] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Ok((r.get::<_, String>(0)?, shown))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let parent_stuck = |row: &[serde_json::Value]| -> bool {
            row.get(3)
                .and_then(|v| v.as_str())
                .is_some_and(|k| stuck.contains(&("a".to_string(), k.to_string())))
        };
        for def in [A::table_def(), B::table_def(), C::table_def()] {
            let rows = |dump: Vec<String>| -> BTreeMap<String, (String, bool)> {
                dump.into_iter()
                    .map(|r| {
                        let v: Vec<serde_json::Value> = serde_json::from_str(&r).unwrap();
                        let key = v[1].as_str().unwrap_or_default().to_string();
                        let child_of_stuck = def.name != "a" && parent_stuck(&v);
                        (key, (r, child_of_stuck))
                    })
                    .collect()
            };
            let local = rows(d1_sync::verify::dump_local(&self.app, &def).unwrap());
            let remote = rows(
                self.target
                    .inner
                    .with_connection(|c| d1_sync::verify::dump_local(c, &def))
                    .unwrap(),
            );
            let keys: std::collections::BTreeSet<&String> =
                local.keys().chain(remote.keys()).collect();
            for k in keys {
                let (l, r) = (local.get(k), remote.get(k));
                if stuck.contains(&(def.name.clone(), k.clone()))
                    || l.is_some_and(|x| x.1)
                    || r.is_some_and(|x| x.1)
                {
                    continue;
                }
                prop_assert_eq!(
                    l.map(|x| &x.0),
                    r.map(|x| &x.0),
                    "table {} key {} differs",
                    def.name,
                    k
                );
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_worker_never_acknowledges_what_the_target_did_not_take(ops in prop::collection::vec(op(), 1..40), coalesce in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut w = World::new(coalesce);
        for op in &ops {
            w.apply(op, &rt)?;
        }
        w.settle(&rt)?;
        w.check_at_rest()?;
    }
}
