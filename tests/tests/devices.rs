//! Model-based property test of many devices writing one target (proptest).
//!
//! Two or three devices, each with its own app file, outbox (coalescing on or off) and worker,
//! and its own hybrid logical clock, up to five minutes apart, write the same few keys of a
//! versioned parent `p` and a versioned child `c` (`ON DELETE CASCADE`) into one target, run
//! once in D1's wire form and once in the SQLite file's one-row form. Their requests meet
//! scripted outcomes: delivered, lost before the target, delivered twice (the second delivery
//! refused by the ledger), or applied with the answer lost (sent again, and recognised). At
//! rest, every row of the target is the write with the highest version of its key across all
//! devices' writes (a delete wins a tie), or it sits under a parent the target deleted; no
//! record is dead-lettered, none stays pending, and every entry of a conflicts log names a
//! version the target held that is not older than the one sent, or the deleted parent that
//! superseded it.
//!
//! `PROPTEST_CASES=500 cargo test -p d1-sync-tests --test devices` for a longer run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use d1_sync::hlc::EPOCH_MS;
use d1_sync::rusqlite::Connection;
use d1_sync::target::{Applied, Batch, BoxFuture, TargetError};
use d1_sync::{Backoff, D1Sync, Hlc, Outbox, SqliteMode, SqliteTarget, Step, SyncWorker, Target};
use proptest::prelude::*;

#[derive(D1Sync, Debug, Clone)]
#[d1(table = "p")]
struct P {
    #[d1(primary_key)]
    k: String,
    v: String,
    #[d1(version)]
    ver: i64,
}

#[derive(D1Sync, Debug, Clone)]
#[d1(table = "c")]
struct C {
    #[d1(primary_key)]
    id: i64,
    p_k: String,
    z: String,
    #[d1(version)]
    ver: i64,
}

const SCHEMA: &str = "CREATE TABLE p (k TEXT PRIMARY KEY, v TEXT NOT NULL, ver INTEGER NOT NULL);
     CREATE TABLE c (id INTEGER PRIMARY KEY, p_k TEXT NOT NULL REFERENCES p (k) ON DELETE CASCADE,
                     z TEXT NOT NULL, ver INTEGER NOT NULL);";

/// The parent a child names: the same on every device.
fn parent_of(id: i64) -> String {
    format!("k{}", id % 2)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Delivered,
    LostBefore,
    /// Delivered twice: the target applies it, then the ledger refuses the copy.
    Twice,
    /// Applied, and the answer lost: the worker sends it again.
    LostAfter,
}

/// The shared target in D1's wire form, meeting a script of outcomes.
struct Flaky {
    inner: SqliteTarget,
    script: Mutex<VecDeque<Outcome>>,
}

impl Target for Flaky {
    fn execute<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<Applied, TargetError>> {
        let outcome = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Outcome::Delivered);
        Box::pin(async move {
            match outcome {
                Outcome::Delivered => self.inner.execute(batch).await,
                Outcome::LostBefore => Err(TargetError::Transient("connection reset".into())),
                Outcome::Twice => {
                    let first = self.inner.execute(batch).await?;
                    let again = self.inner.execute(batch).await?;
                    assert_eq!(again, Applied::Before, "the ledger refuses a copy");
                    Ok(first)
                }
                Outcome::LostAfter => {
                    self.inner.execute(batch).await?;
                    Err(TargetError::Transient("timeout after the commit".into()))
                }
            }
        })
    }

    fn limits(&self) -> d1_sync::target::PackLimits {
        self.inner.limits()
    }

    fn describe(&self) -> String {
        "flaky shared SQLite".into()
    }

    fn deleted<'a>(
        &'a self,
        table: &'a d1_sync::TableDef,
        row_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<i64>, TargetError>> {
        self.inner.deleted(table, row_key)
    }
}

#[derive(Debug, Clone)]
enum Op {
    SaveP { dev: usize, k: u8, v: String },
    SaveC { dev: usize, id: i64, z: String },
    DeleteP { dev: usize, k: u8 },
    DeleteC { dev: usize, id: i64 },
    Tick { ms: i64 },
    Step { dev: usize, outcomes: Vec<Outcome> },
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => Just(Outcome::Delivered),
        1 => Just(Outcome::LostBefore),
        1 => Just(Outcome::Twice),
        2 => Just(Outcome::LostAfter),
    ]
}

fn op(devices: usize) -> impl Strategy<Value = Op> {
    let dev = 0..devices;
    prop_oneof![
        4 => (dev.clone(), 0u8..3, "[a-z]{1,4}").prop_map(|(dev, k, v)| Op::SaveP { dev, k, v }),
        3 => (dev.clone(), 0i64..4, "[a-z]{1,4}").prop_map(|(dev, id, z)| Op::SaveC { dev, id, z }),
        2 => (dev.clone(), 0u8..3).prop_map(|(dev, k)| Op::DeleteP { dev, k }),
        1 => (dev.clone(), 0i64..4).prop_map(|(dev, id)| Op::DeleteC { dev, id }),
        2 => (0i64..400_000).prop_map(|ms| Op::Tick { ms }),
        4 => (dev, prop::collection::vec(outcome(), 1..4))
            .prop_map(|(dev, outcomes)| Op::Step { dev, outcomes }),
    ]
}

/// One write as the model logs it: table, key, delete or not, version, values.
#[derive(Debug, Clone)]
struct Logged {
    table: &'static str,
    key: String,
    delete: bool,
    version: i64,
    value: String,
}

struct Device {
    app: Connection,
    app_path: std::path::PathBuf,
    outbox: Outbox,
    hlc: Hlc,
    worker: SyncWorker,
}

fn worker(app: &std::path::Path, target: &Arc<Flaky>) -> SyncWorker {
    SyncWorker::builder(app, target.clone())
        .register::<P>()
        .register::<C>()
        .max_attempts(3)
        .lease(Duration::from_millis(1))
        .backoff(Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            floor: Duration::from_millis(1),
        })
        .build()
        .unwrap()
}

struct World {
    _dir: tempfile::TempDir,
    target: Arc<Flaky>,
    devices: Vec<Device>,
    /// The shared wall clock (ms); each device reads it with its own skew.
    wall: Arc<AtomicI64>,
    log: Vec<Logged>,
}

impl World {
    fn new(skews: &[i64], coalesce: bool, mode: SqliteMode) -> World {
        let dir = tempfile::tempdir().unwrap();
        let inner = SqliteTarget::open(dir.path().join("target.db"))
            .unwrap()
            .with_mode(mode);
        inner.with_connection(|c| c.execute_batch(SCHEMA)).unwrap();
        let target = Arc::new(Flaky {
            inner,
            script: Mutex::new(VecDeque::new()),
        });
        let wall = Arc::new(AtomicI64::new(EPOCH_MS + 86_400_000));
        let devices = skews
            .iter()
            .enumerate()
            .map(|(i, skew)| {
                let app_path = dir.path().join(format!("device-{i}.db"));
                let app = d1_sync::open(&app_path).unwrap();
                app.execute_batch(SCHEMA).unwrap();
                let (wall, skew) = (wall.clone(), *skew);
                Device {
                    worker: worker(&app_path, &target),
                    app,
                    app_path,
                    outbox: Outbox::new().coalescing(coalesce),
                    hlc: Hlc::new().with_physical_clock(move || wall.load(Ordering::SeqCst) + skew),
                }
            })
            .collect();
        World {
            _dir: dir,
            target,
            devices,
            wall,
            log: Vec::new(),
        }
    }

    fn has(&self, dev: usize, sql: &str, key: &dyn d1_sync::rusqlite::ToSql) -> bool {
        self.devices[dev]
            .app
            .query_row(sql, [key], |r| r.get::<_, i64>(0))
            .unwrap()
            > 0
    }

    fn run(&mut self, op: &Op, rt: &tokio::runtime::Runtime) {
        match op {
            Op::Tick { ms } => {
                self.wall.fetch_add(*ms, Ordering::SeqCst);
            }
            Op::SaveP { dev, k, v } => self.save_p(*dev, format!("k{k}"), v.clone()),
            Op::SaveC { dev, id, z } => {
                let pk = parent_of(*id);
                if !self.has(*dev, "SELECT count(*) FROM p WHERE k = ?1", &pk) {
                    self.save_p(*dev, pk.clone(), "made for a child".into());
                }
                let d = &mut self.devices[*dev];
                let tx = d.app.transaction().unwrap();
                let mut row = C {
                    id: *id,
                    p_k: pk,
                    z: z.clone(),
                    ver: 0,
                };
                let version = d.hlc.stamp(&tx, &mut row).unwrap();
                let queued = d.outbox.save(&tx, &row).unwrap();
                tx.commit().unwrap();
                assert!(queued.is_some(), "a newer version always changes the row");
                self.log.push(Logged {
                    table: "c",
                    key: id.to_string(),
                    delete: false,
                    version,
                    value: z.clone(),
                });
            }
            Op::DeleteP { dev, k } => {
                let key = format!("k{k}");
                if !self.has(*dev, "SELECT count(*) FROM p WHERE k = ?1", &key) {
                    return;
                }
                let d = &mut self.devices[*dev];
                let version: i64 = d
                    .app
                    .query_row("SELECT ver FROM p WHERE k = ?1", [&key], |r| r.get(0))
                    .unwrap();
                let tx = d.app.transaction().unwrap();
                let row = P {
                    k: key.clone(),
                    v: String::new(),
                    ver: version,
                };
                d.outbox.remove(&tx, &row).unwrap();
                tx.commit().unwrap();
                self.log.push(Logged {
                    table: "p",
                    key,
                    delete: true,
                    version,
                    value: String::new(),
                });
            }
            Op::DeleteC { dev, id } => {
                if !self.has(*dev, "SELECT count(*) FROM c WHERE id = ?1", id) {
                    return;
                }
                let d = &mut self.devices[*dev];
                let version: i64 = d
                    .app
                    .query_row("SELECT ver FROM c WHERE id = ?1", [id], |r| r.get(0))
                    .unwrap();
                let tx = d.app.transaction().unwrap();
                let row = C {
                    id: *id,
                    p_k: parent_of(*id),
                    z: String::new(),
                    ver: version,
                };
                d.outbox.remove(&tx, &row).unwrap();
                tx.commit().unwrap();
                self.log.push(Logged {
                    table: "c",
                    key: id.to_string(),
                    delete: true,
                    version,
                    value: String::new(),
                });
            }
            Op::Step { dev, outcomes } => {
                self.target
                    .script
                    .lock()
                    .unwrap()
                    .extend(outcomes.iter().copied());
                for _ in 0..outcomes.len() {
                    rt.block_on(self.devices[*dev].worker.step()).unwrap();
                }
                self.target.script.lock().unwrap().clear();
            }
        }
    }

    fn save_p(&mut self, dev: usize, key: String, v: String) {
        let d = &mut self.devices[dev];
        let tx = d.app.transaction().unwrap();
        let mut row = P {
            k: key.clone(),
            v: v.clone(),
            ver: 0,
        };
        let version = d.hlc.stamp(&tx, &mut row).unwrap();
        d.outbox.save(&tx, &row).unwrap();
        tx.commit().unwrap();
        self.log.push(Logged {
            table: "p",
            key,
            delete: false,
            version,
            value: v,
        });
    }

    /// Every device drains what it has, every request delivered.
    fn settle(&mut self, rt: &tokio::runtime::Runtime) {
        for d in &mut self.devices {
            d.worker = worker(&d.app_path, &self.target);
            std::thread::sleep(Duration::from_millis(2));
            let mut idle = 0;
            for _ in 0..500 {
                match rt.block_on(d.worker.step()).unwrap() {
                    Step::Idle => idle += 1,
                    _ => idle = 0,
                }
                if idle >= 5 {
                    break;
                }
            }
        }
    }

    /// The target's rows: `(table, key)` → (version, value).
    fn target_rows(&self) -> BTreeMap<(&'static str, String), (i64, String)> {
        self.target.inner.with_connection(|c| {
            let mut out = BTreeMap::new();
            for (table, sql) in [
                ("p", "SELECT k, ver, v FROM p"),
                ("c", "SELECT CAST(id AS TEXT), ver, z FROM c"),
            ] {
                let mut st = c.prepare(sql).unwrap();
                let rows = st
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))
                    .unwrap();
                for row in rows {
                    let (k, ver, v) = row.unwrap();
                    out.insert((table, k), (ver, v));
                }
            }
            out
        })
    }

    fn tombstoned_parents(&self) -> BTreeSet<String> {
        self.target.inner.with_connection(|c| {
            // No request reached the target yet: no tombstones either.
            let Ok(mut st) = c.prepare(
                "SELECT json_extract(row_key, '$[0]') FROM d1_sync_tombstones WHERE table_name = 'p'",
            ) else {
                return BTreeSet::new();
            };
            st.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(|k| k.unwrap().trim_matches('\'').to_string())
                .collect()
        })
    }
}

fn check(world: &World) -> Result<(), TestCaseError> {
    let held = world.target_rows();
    let gone = world.tombstoned_parents();
    let mut by_key: BTreeMap<(&str, &str), Vec<&Logged>> = BTreeMap::new();
    for w in &world.log {
        by_key.entry((w.table, w.key.as_str())).or_default().push(w);
    }
    for ((table, key), writes) in &by_key {
        let top = writes.iter().map(|w| w.version).max().unwrap();
        let winners: Vec<&&Logged> = writes.iter().filter(|w| w.version == top).collect();
        let row = held.get(&(*table, key.to_string()));
        let under_deleted_parent = *table == "c"
            && key
                .parse::<i64>()
                .is_ok_and(|id| gone.contains(&parent_of(id)));
        if winners.iter().any(|w| w.delete) {
            prop_assert!(
                row.is_none(),
                "{table}/{key}: deleted at {top}, but held: {row:?}"
            );
        } else if under_deleted_parent {
            // Cascaded away, or superseded for its parent: absent or older, never newer.
            prop_assert!(
                row.is_none_or(|(v, _)| *v <= top),
                "{table}/{key}: {row:?} newer than any write ({top})"
            );
        } else {
            let Some((v, value)) = row else {
                return Err(TestCaseError::fail(format!(
                    "{table}/{key}: the write at {top} is lost"
                )));
            };
            prop_assert_eq!(
                *v,
                top,
                "{}/{}: a stale version overwrote the newest",
                table,
                key
            );
            prop_assert!(
                winners.iter().any(|w| &w.value == value),
                "{table}/{key}: {value} is not the newest write's value"
            );
        }
    }
    // Rows nobody wrote do not appear.
    for (table, key) in held.keys() {
        prop_assert!(
            by_key.contains_key(&(*table, key.as_str())),
            "{table}/{key} was never written"
        );
    }
    for d in &world.devices {
        let c = d.outbox.counts(&d.app).unwrap();
        prop_assert_eq!(
            (c.pending, c.failed),
            (0, 0),
            "every record synced, none failed"
        );
        for conflict in d.outbox.conflicts(&d.app, 10_000).unwrap() {
            match (conflict.sent_version, conflict.held_version) {
                (Some(sent), Some(held)) if conflict.reason == "newer version" => {
                    prop_assert!(
                        held >= sent,
                        "a conflict with an older version held: {conflict:?}"
                    );
                }
                _ => prop_assert!(
                    conflict.reason.starts_with("parent deleted: p [\"k"),
                    "{conflict:?}"
                ),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn devices_converge_on_the_newest_write_of_every_key(
        (skews, ops) in prop::collection::vec(-300_000i64..300_000, 2..4).prop_flat_map(|skews| {
            let devices = skews.len();
            (Just(skews), prop::collection::vec(op(devices), 1..70))
        }),
        coalesce in any::<bool>(),
    ) {
        // D1's wire form, and the SQLite file's one-row statements (which skip the tombstone
        // test while a table has none).
        for mode in [SqliteMode::Statements, SqliteMode::Rows] {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut world = World::new(&skews, coalesce, mode);
            for op in &ops {
                world.run(op, &rt);
            }
            world.settle(&rt);
            check(&world)?;
            // Every version stays exact in JavaScript.
            prop_assert!(world.log.iter().all(|w| w.version < 1 << 53));
        }
    }
}
