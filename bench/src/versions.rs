//! Many devices, one D1: what the version guard costs a drain, and what a fleet of devices
//! draining into one local D1 gets in aggregate as it grows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use d1_sync::{D1Sync, Outbox, Registry, SqliteTarget, SyncWorker, Target};
use d1_sync_tests::d1peer::D1Peer;

use super::{
    app_db, batch_size, d1_table, drain_with, fmt_rate, median_f64, message, rate, save_all, Row,
    ROUNDS,
};

/// `messages` without `#[d1(version)]`: the same columns (its `version` an ordinary one), so
/// the same rows ship, unguarded.
#[derive(D1Sync)]
#[d1(table = "messages")]
struct PlainMessage {
    #[d1(primary_key)]
    id: String,
    platform: String,
    conversation_id: Option<String>,
    role: String,
    raw_text: Option<String>,
    summary: Option<String>,
    observed_at: i64,
    static_path: Option<String>,
    page_url: Option<String>,
    page_title: Option<String>,
    #[d1(insert_only)]
    created_at: i64,
    organization_id: Option<String>,
    version: i64,
}

fn plain(i: u64) -> PlainMessage {
    let m = message(i);
    PlainMessage {
        id: m.id,
        platform: m.platform,
        conversation_id: m.conversation_id,
        role: m.role,
        raw_text: m.raw_text,
        summary: m.summary,
        observed_at: m.observed_at,
        static_path: m.static_path,
        page_url: m.page_url,
        page_title: m.page_title,
        created_at: m.created_at,
        organization_id: m.organization_id,
        version: m.version,
    }
}

/// Writes `n` messages, versioned or not, and drains them to `target`: rows/s of the drain.
async fn drain_messages(versioned: bool, n: u64, target: Arc<dyn Target>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut conn) = app_db(dir.path(), "guard.db");
    let mut registry = Registry::new();
    if versioned {
        save_all(&mut conn, &Outbox::new(), n, 10_000, message);
        registry.register::<d1_sync_example::rows::Message>();
    } else {
        save_all(&mut conn, &Outbox::new(), n, 10_000, plain);
        registry.register::<PlainMessage>();
    }
    let (took, stats) = drain_with(&path, target, batch_size(), registry).await;
    assert_eq!((stats.records_synced, stats.records_superseded), (n, 0));
    rate(n, took)
}

/// A SQLite file with the example's tables, and `tombstones` deletes of `messages` rows the
/// drains never write (their keys are not `message`'s).
fn mirror(dir: &std::path::Path, tombstones: u64) -> SqliteTarget {
    let mirror = SqliteTarget::open(dir.join("mirror.db")).unwrap();
    mirror
        .with_connection(|c| {
            d1_sync_example::apply_migrations(c)?;
            c.execute_batch(&d1_sync::schema::guard::create_tombstones_sql())?;
            let mut insert = c.prepare(&format!(
                "INSERT INTO {} (table_name, row_key, version, deleted_at) VALUES ('messages', ?1, 1, 0)",
                d1_sync::schema::guard::TOMBSTONES
            ))?;
            for i in 0..tombstones {
                insert.execute([format!("[\"gone-{i}\"]")])?;
            }
            Ok::<_, d1_sync::rusqlite::Error>(())
        })
        .unwrap();
    mirror
}

/// The guard's cost: the same messages drained with and without a version column, in turns,
/// to the local D1 and to a SQLite file (empty, and holding 1,000 tombstones of the table).
pub(super) async fn bench_guard(peer: &D1Peer, quick: bool) -> Vec<Row> {
    let n = if quick { 5_000 } else { 30_000 };
    let (mut d1_on, mut d1_off, mut sq_on, mut sq_off) = (vec![], vec![], vec![], vec![]);
    let mut sq_tombstoned = vec![];
    for round in 0..ROUNDS {
        for versioned in [round % 2 == 0, round % 2 == 1] {
            let db = d1_table(peer).await;
            let r = drain_messages(versioned, n, Arc::new(db.client())).await;
            if versioned { &mut d1_on } else { &mut d1_off }.push(r);
            let dir = tempfile::tempdir().unwrap();
            let r = drain_messages(versioned, n, Arc::new(mirror(dir.path(), 0))).await;
            if versioned { &mut sq_on } else { &mut sq_off }.push(r);
            if versioned {
                let dir = tempfile::tempdir().unwrap();
                let r = drain_messages(true, n, Arc::new(mirror(dir.path(), 1_000))).await;
                sq_tombstoned.push(r);
            }
        }
    }
    let row = |name, on: Vec<f64>, off: Vec<f64>| {
        let (on, off) = (median_f64(on), median_f64(off));
        Row {
            name,
            measured: format!("{} with `#[d1(version)]`", fmt_rate(on)),
            baseline: format!("{} without (the same rows)", fmt_rate(off)),
            ratio: format!("{:.2}x the rows/s", on / off),
            target: "≥ 0.9x",
        }
    };
    vec![
        row(
            "the version guard's cost, drain to the local D1",
            d1_on,
            d1_off,
        ),
        row(
            "the version guard's cost, drain to a SQLite file",
            sq_on,
            sq_off.clone(),
        ),
        row(
            "the version guard's cost, drain to a SQLite file holding tombstones of the table (1,000, of other keys)",
            sq_tombstoned,
            sq_off,
        ),
    ]
}

/// Fleet throughput: `devices` workers, each draining its own backlog (its own keys) into one
/// local D1 at the same time, against one device draining the same total.
pub(super) async fn bench_fleet(peer: &D1Peer, quick: bool) -> Vec<Row> {
    let total: u64 = if quick { 8_000 } else { 32_000 };
    let mut rows = Vec::new();
    let mut single = 0.0;
    for devices in [1u64, 4, 16] {
        let mut rates = Vec::new();
        for _ in 0..ROUNDS {
            let db = d1_table(peer).await;
            let dir = tempfile::tempdir().unwrap();
            let per = total / devices;
            let mut workers = Vec::new();
            for d in 0..devices {
                let (path, mut conn) = app_db(dir.path(), &format!("device-{d}.db"));
                save_all(&mut conn, &Outbox::new(), per, 10_000, |i| {
                    let mut m = message(i);
                    m.id = format!("{}-d{d}", m.id);
                    m
                });
                let worker = SyncWorker::builder(&path, db.client())
                    .registry(d1_sync_example::registry())
                    .batch_size(batch_size())
                    .poll_interval(Duration::from_millis(20))
                    .build()
                    .unwrap();
                workers.push(worker);
            }
            let t = Instant::now();
            for w in &workers {
                w.start().unwrap();
            }
            for w in &workers {
                w.flush().await.unwrap();
            }
            let took = t.elapsed();
            let mut synced = 0;
            for w in workers {
                synced += w.stats().await.unwrap().records_synced;
                w.shutdown().await.unwrap();
            }
            assert_eq!(synced, per * devices);
            rates.push(rate(synced, took));
        }
        let r = median_f64(rates);
        if devices == 1 {
            single = r;
        }
        rows.push(Row {
            name: match devices {
                1 => "fleet: 1 device into one local D1",
                4 => "fleet: 4 devices into one local D1",
                _ => "fleet: 16 devices into one local D1",
            },
            measured: format!("{} in aggregate", fmt_rate(r)),
            baseline: format!("{} (1 device, the same total)", fmt_rate(single)),
            ratio: format!("{:.2}x", r / single),
            target: "report",
        });
    }
    rows
}
