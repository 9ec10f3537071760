//! Model-based property test of the worker (proptest).
//!
//! Random upserts, partial updates and deletes over a few keys of two tables; worker steps
//! whose requests meet scripted outcomes — ok, 5xx, 429, a timeout before or after the target
//! applied the request, 403, a crash before or after applying — and a poison value the target
//! refuses. The application database is the model.
//!
//! After every step: the records newly marked synced are no more than the rows the target
//! acknowledged. At rest: for every key without a dead letter the target equals the local
//! row; every dead letter has a reason; whatever is still pending waits behind a dead letter
//! of its own row.
//!
//! `PROPTEST_CASES=1000 cargo test -p d1-sync-tests --test model` for a longer run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use d1_sync::rusqlite::Connection;
use d1_sync::target::{Batch, BoxFuture, Param, Statement};
use d1_sync::{
    Backoff, D1Sync, Outbox, SqliteTarget, Step, SyncRow, SyncWorker, Target, TargetError,
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
    x: Option<f64>,
    y: Option<String>,
}

const LOCAL_SCHEMA: &str =
    "CREATE TABLE a (k TEXT PRIMARY KEY, v TEXT, n INTEGER NOT NULL DEFAULT 0);
                            CREATE TABLE b (id INTEGER PRIMARY KEY, x REAL, y TEXT);";
/// The target refuses the value `poison` (a stand-in for any record D1 will never take).
const TARGET_SCHEMA: &str = "CREATE TABLE a (k TEXT PRIMARY KEY, v TEXT CHECK (v IS NULL OR v <> 'poison'), n INTEGER NOT NULL DEFAULT 0);
                             CREATE TABLE b (id INTEGER PRIMARY KEY, x REAL, y TEXT);";

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

/// A SQLite target whose requests meet a script of outcomes; counts acknowledged rows.
struct Scripted {
    inner: SqliteTarget,
    script: Mutex<VecDeque<Outcome>>,
    acked_rows: AtomicU64,
}

fn rows_in(statements: &[Statement]) -> u64 {
    statements
        .iter()
        .filter_map(|s| match s.params.first() {
            Some(Param::Text(json)) => serde_json::from_str::<Vec<serde_json::Value>>(json).ok(),
            _ => None,
        })
        .map(|rows| rows.len() as u64)
        .sum()
}

impl Target for Scripted {
    fn execute<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<(), TargetError>> {
        // D1's wire form, run on SQLite: the json_each statements, bound reals and all.
        let statements = batch.statements;
        let outcome = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Outcome::Ok);
        Box::pin(async move {
            match outcome {
                Outcome::Ok => {
                    self.inner.execute_statements(statements).await?;
                    assert_eq!(rows_in(statements), batch.changes.len() as u64);
                    self.acked_rows
                        .fetch_add(batch.changes.len() as u64, Ordering::SeqCst);
                    Ok(())
                }
                Outcome::ServerError => Err(TargetError::Transient("HTTP 503".into())),
                Outcome::RateLimited => Err(TargetError::RateLimited {
                    retry_after: Some(Duration::ZERO),
                    message: "429".into(),
                }),
                Outcome::TimeoutBefore => Err(TargetError::Transient("timeout".into())),
                Outcome::TimeoutAfter => {
                    self.inner.execute_statements(statements).await?;
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
                    self.inner.execute_statements(statements).await?;
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
        x: Option<f64>,
        y: Option<String>,
    },
    DeleteB {
        id: i64,
    },
    Step(Vec<Outcome>),
    Crash {
        after: bool,
    },
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
        3 => (0i64..3, real(), "[a-z]{0,3}".prop_map(Some)).prop_map(|(id, x, y)| Op::UpsertB { id, x, y }),
        1 => (0i64..3).prop_map(|id| Op::DeleteB { id }),
        4 => prop::collection::vec(outcome(), 1..4).prop_map(Op::Step),
        1 => any::<bool>().prop_map(|after| Op::Crash { after }),
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
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let app_path = dir.path().join("app.db");
        let app = d1_sync::open(&app_path).unwrap();
        app.execute_batch(LOCAL_SCHEMA).unwrap();
        let inner = SqliteTarget::open(dir.path().join("target.db")).unwrap();
        inner
            .with_connection(|c| c.execute_batch(TARGET_SCHEMA))
            .unwrap();
        let target = Arc::new(Scripted {
            inner,
            script: Mutex::new(VecDeque::new()),
            acked_rows: AtomicU64::new(0),
        });
        let worker = worker(&app_path, &target);
        World {
            _dir: dir,
            app_path,
            app,
            outbox: Outbox::new(),
            target,
            worker,
        }
    }

    fn synced(&self) -> u64 {
        self.outbox.counts(&self.app).unwrap().synced
    }

    fn apply(&mut self, op: &Op, rt: &tokio::runtime::Runtime) -> Result<(), TestCaseError> {
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
                tx.execute(
                    "UPDATE a SET v = ?1 WHERE k = ?2",
                    d1_sync::rusqlite::params![v, row.k],
                )
                .unwrap();
                self.outbox.update(&tx, &row, &["v"]).unwrap();
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
            Op::UpsertB { id, x, y } => {
                let tx = self.app.transaction().unwrap();
                self.outbox
                    .save(
                        &tx,
                        &B {
                            id: *id,
                            x: *x,
                            y: y.clone(),
                        },
                    )
                    .unwrap();
                tx.commit().unwrap();
            }
            Op::DeleteB { id } => {
                let tx = self.app.transaction().unwrap();
                self.outbox
                    .remove(
                        &tx,
                        &B {
                            id: *id,
                            x: None,
                            y: None,
                        },
                    )
                    .unwrap();
                tx.commit().unwrap();
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
        let waiting: i64 = self
            .app
            .query_row(
                "SELECT count(*) FROM d1_sync_queue r WHERE r.status <> 'synced' AND r.status <> 'failed'
                 AND NOT EXISTS (SELECT 1 FROM d1_sync_queue e WHERE e.table_name = r.table_name
                                 AND e.row_key = r.row_key AND e.id < r.id AND e.status = 'failed')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        prop_assert_eq!(waiting, 0, "records wait with no dead letter ahead of them");

        for def in [A::table_def(), B::table_def()] {
            let key_of = |row: &str| -> String {
                let v: Vec<serde_json::Value> = serde_json::from_str(row).unwrap();
                v[1].to_string()
            };
            let local: BTreeMap<String, String> = d1_sync::verify::dump_local(&self.app, &def)
                .unwrap()
                .into_iter()
                .map(|r| (key_of(&r), r))
                .collect();
            let remote: BTreeMap<String, String> = self
                .target
                .inner
                .with_connection(|c| d1_sync::verify::dump_local(c, &def))
                .unwrap()
                .into_iter()
                .map(|r| (key_of(&r), r))
                .collect();
            let dead_keys: Vec<String> = dead
                .iter()
                .filter(|(t, _, _)| *t == def.name)
                .map(|(_, k, _)| {
                    let v: Vec<serde_json::Value> = serde_json::from_str(k).unwrap();
                    // The dump renders every value as text.
                    match &v[0] {
                        serde_json::Value::String(s) => {
                            serde_json::Value::String(s.clone()).to_string()
                        }
                        other => serde_json::Value::String(other.to_string()).to_string(),
                    }
                })
                .collect();
            let keys: std::collections::BTreeSet<&String> =
                local.keys().chain(remote.keys()).collect();
            for k in keys {
                if dead_keys.contains(k) {
                    continue;
                }
                prop_assert_eq!(
                    local.get(k),
                    remote.get(k),
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
    fn the_worker_never_acknowledges_what_the_target_did_not_take(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut w = World::new();
        for op in &ops {
            w.apply(op, &rt)?;
        }
        w.settle(&rt)?;
        w.check_at_rest()?;
    }
}
