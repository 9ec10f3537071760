//! d1-sync's benchmarks. Each prints its figure beside a baseline measured in the same run, as
//! a ratio: this machine is shared and noisy, so absolute times alone mean little.
//!
//! ```text
//! cargo run --release -p d1-sync-bench               # all of them (a few minutes)
//! cargo run --release -p d1-sync-bench -- --quick    # smaller sizes
//! cargo run --release -p d1-sync-bench -- enqueue capture coalesce drain d1 guard fleet production latency memory schema
//! D1SYNC_BENCH_BATCH=2000 cargo run --release -p d1-sync-bench -- drain   # another batch size
//! ```

mod original;
mod versions;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use d1_sync::change::Change;
use d1_sync::rusqlite::{params_from_iter, Connection, Transaction};
use d1_sync::target::{Applied, Batch, BoxFuture, PackLimits, Statement};
use d1_sync::{D1Config, D1Http, Outbox, SqliteTarget, SyncRow, SyncWorker, Target, TargetError};
use d1_sync_example::rows::Message;
use d1_sync_tests::d1peer::D1Peer;
use d1_sync_tests::proxy::{Proxy, ProxyConfig};

struct Row {
    name: &'static str,
    measured: String,
    baseline: String,
    ratio: String,
    target: &'static str,
}

fn message(i: u64) -> Message {
    Message {
        id: format!("msg-{i:08}"),
        platform: "chatgpt".into(),
        conversation_id: Some(format!("conv-{:05}", i % 5000)),
        role: if i.is_multiple_of(2) { "user" } else { "assistant" }.into(),
        raw_text: Some(format!("Please renew the subscription before Friday — message {i} with some ünïcödé and \"quotes\".")),
        summary: Some("renewal request".into()),
        observed_at: 1_767_225_600_000 + i as i64,
        static_path: None,
        page_url: Some("https://chat.example.com/c/abc123".into()),
        page_title: Some("Renewal".into()),
        created_at: 1_767_225_600_000 + i as i64,
        organization_id: Some("org-1".into()),
        // Versioned rows: a write of row `i % n` at `i` is newer than the ones before it.
        version: i as i64 + 1,
    }
}

/// The table and column list shared by checked upserts of [`Message`], as a batch shares them.
struct MessageShape {
    table: Arc<d1_sync::TableDef>,
    columns: Arc<[String]>,
}

impl MessageShape {
    fn new() -> MessageShape {
        MessageShape {
            table: Arc::new(Message::table_def()),
            columns: Message::COLUMNS.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// An upsert of `m` as the worker hands it to a target, without a queue.
    fn upsert(&self, id: i64, m: &Message) -> Change {
        Change::new(
            id,
            // The row key as the queue stores it: a versioned table's statement takes each
            // key once.
            format!("[{:?}]", m.id),
            self.table.clone(),
            d1_sync::change::Op::Upsert,
            self.columns.clone(),
            &m.values(),
        )
    }
}

fn app_db(dir: &Path, name: &str) -> (PathBuf, Connection) {
    let path = dir.join(name);
    let conn = d1_sync::open(&path).expect("open app db");
    d1_sync_example::apply_migrations(&conn).expect("migrations");
    (path, conn)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn fmt_rate(r: f64) -> String {
    if r >= 1000.0 {
        format!("{:.1}k rows/s", r / 1000.0)
    } else {
        format!("{r:.1} rows/s")
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The worker's batch size: its default, or `D1SYNC_BENCH_BATCH`.
fn batch_size() -> usize {
    std::env::var("D1SYNC_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d1_sync::WorkerConfig::default().batch_size)
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs per throughput figure: each figure is the median of this many, each beside its own
/// baseline run, so one noisy second on this shared machine does not decide it.
const ROUNDS: usize = 3;

/// `n` writes of the `messages` workload, `per_tx` to a commit, on a fresh app file, timed
/// with and without a variant ([`ROUNDS`] of each, in turns): `setup(on, conn)` prepares the
/// file, `write(on, outbox, tx, i)` makes write `i`. The row reports the medians.
fn write_ratio(
    dir: &Path,
    tag: &str,
    (name, baseline, target): (&'static str, &str, &'static str),
    n: u64,
    per_tx: u64,
    setup: impl Fn(bool, &Connection),
    write: impl Fn(bool, &Outbox, &Transaction<'_>, u64),
) -> Row {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for on in [false, true] {
            let (_, mut conn) = app_db(dir, &format!("{tag}-{per_tx}-{round}-{on}.db"));
            setup(on, &conn);
            let outbox = Outbox::new();
            let t = Instant::now();
            let mut i = 0;
            while i < n {
                let tx = conn.transaction().unwrap();
                for _ in 0..per_tx {
                    write(on, &outbox, &tx, i);
                    i += 1;
                }
                tx.commit().unwrap();
            }
            if on {
                with.push(t.elapsed())
            } else {
                without.push(t.elapsed())
            }
        }
    }
    let (w, wo) = (median(with), median(without));
    Row {
        name,
        measured: fmt_rate(rate(n, w)),
        baseline: format!("{} ({baseline})", fmt_rate(rate(n, wo))),
        ratio: format!("{:.2}x the time", w.as_secs_f64() / wo.as_secs_f64()),
        target,
    }
}

/// The row write alone: the baseline of the write benchmarks.
fn bare_write(tx: &Transaction<'_>, i: u64) {
    tx.prepare_cached(Message::UPSERT_SQL)
        .unwrap()
        .execute(params_from_iter(message(i).values()))
        .unwrap();
}

/// 1. The application's row write plus its outbox record, against the row write alone.
fn bench_enqueue(quick: bool) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    [
        (
            "enqueue, 1 durable commit per change",
            if quick { 300 } else { 1_000 },
            1,
        ),
        (
            "enqueue, 1,000 changes per commit",
            if quick { 20_000 } else { 100_000 },
            1_000,
        ),
    ]
    .into_iter()
    .map(|(name, n, per_tx)| {
        write_ratio(
            dir.path(),
            "enq",
            (name, "row write alone", "≤ 1.5x"),
            n,
            per_tx,
            |_, _| {},
            |on, outbox, tx, i| {
                if on {
                    outbox.save(tx, &message(i)).unwrap();
                } else {
                    bare_write(tx, i);
                }
            },
        )
    })
    .chain(std::iter::once({
        // The README's way on a versioned table: each write stamped by the clock, then saved.
        let clock = d1_sync::Hlc::new();
        write_ratio(
            dir.path(),
            "stamped",
            (
                "stamped save (`Hlc::stamp`, then `save`), 1,000 per commit",
                "row write alone",
                "report",
            ),
            if quick { 20_000 } else { 100_000 },
            1_000,
            |_, _| {},
            move |on, outbox, tx, i| {
                if on {
                    let mut m = message(i);
                    clock.stamp(tx, &mut m).unwrap();
                    outbox.save(tx, &m).unwrap();
                } else {
                    bare_write(tx, i);
                }
            },
        )
    }))
    .chain(floors(dir.path(), if quick { 20_000 } else { 100_000 }))
    .collect()
}

/// The floors under the enqueue figure, 1,000 writes per commit: the row write plus a plain
/// `INSERT` of a record of it, with no coalescing, definitions or run, in five forms: the
/// payload as today's JSON object (named columns), the same without the queue's index on
/// (table, key) that coalescing looks rows up by, as a JSON array (values in the definition's
/// order), no payload at all (a record that names the row, and is read from it when sent), and
/// no payload with the triggers that would keep such a record exact (before the row changes
/// again or is deleted, they copy its old values into its records that have none yet). What
/// each form could reach at best, for planning: none is what the outbox does.
fn floors(dir: &Path, n: u64) -> Vec<Row> {
    let formats: [(&'static str, &'static str); 5] = [
        (
            "floor: the row write plus a plain INSERT of its record as today's format (payload a JSON object), 1,000 per commit",
            "object",
        ),
        (
            "floor: the same without the index on (table, key) that coalescing looks rows up by, 1,000 per commit",
            "unindexed",
        ),
        (
            "floor: the same with the payload a JSON array of the values (no column names), 1,000 per commit",
            "array",
        ),
        (
            "floor: the same with no payload (the record names the row; it would be read when sent), 1,000 per commit",
            "key",
        ),
        (
            "floor: no payload, with the triggers that keep such a record exact (the row's old values copied into its records before it changes again), 1,000 per commit",
            "copied",
        ),
    ];
    formats
        .into_iter()
        .map(|(name, format)| {
            write_ratio(
                dir,
                &format!("floor-{format}"),
                (name, "row write alone", "report"),
                n,
                1_000,
                |on, conn| {
                    if on {
                        // The queue's columns and its rows index, without AUTOINCREMENT.
                        conn.execute_batch(
                            "CREATE TABLE floor_queue (id INTEGER PRIMARY KEY, table_name TEXT NOT NULL,
                               row_key TEXT NOT NULL, op TEXT NOT NULL, payload TEXT,
                               status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
                               next_attempt_at INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL,
                               updated_at INTEGER NOT NULL, def INTEGER);",
                        )
                        .unwrap();
                        if format != "unindexed" {
                            conn.execute_batch(
                                "CREATE INDEX floor_queue_rows ON floor_queue (table_name, row_key);",
                            )
                            .unwrap();
                        }
                        if format == "copied" {
                            conn.execute_batch(&copy_on_change_triggers()).unwrap();
                            // The triggers do what the row says: a change fills the record.
                            conn.execute_batch(
                                "SAVEPOINT probe;
                                 INSERT INTO messages (id, platform, role, observed_at, created_at, version)
                                   VALUES ('probe', 'p', 'user', 1, 1, 1);
                                 INSERT INTO floor_queue (table_name, row_key, op, created_at, updated_at)
                                   VALUES ('messages', '[\"probe\"]', 'upsert', 1, 1);
                                 UPDATE messages SET platform = 'q' WHERE id = 'probe';",
                            )
                            .unwrap();
                            let copied: String = conn
                                .query_row("SELECT json_extract(payload, '$.platform') FROM floor_queue", [], |r| r.get(0))
                                .unwrap();
                            assert_eq!(copied, "p");
                            conn.execute_batch("ROLLBACK TO probe; RELEASE probe;").unwrap();
                        }
                    }
                },
                move |on, _, tx, i| {
                    bare_write(tx, i);
                    if on {
                        let m = message(i);
                        let values = m.values();
                        let columns = || {
                            Message::COLUMNS
                                .iter()
                                .copied()
                                .zip(values.iter())
                                .filter(|(c, _)| !Message::PRIMARY_KEY.contains(c))
                        };
                        let payload = match format {
                            "object" | "unindexed" => Some(d1_sync::codec::stored_object(columns())),
                            "array" => Some(d1_sync::codec::stored_array(
                                &columns().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
                            )),
                            _ => None,
                        };
                        tx.prepare_cached(
                            "INSERT INTO floor_queue (table_name, row_key, op, payload, created_at, updated_at, def)
                             VALUES ('messages', ?1, 'upsert', ?2, ?3, ?3, 1)",
                        )
                        .unwrap()
                        .execute(d1_sync::rusqlite::params![
                            d1_sync::codec::stored_array(&m.key_values()),
                            payload,
                            1_767_225_600_000_i64
                        ])
                        .unwrap();
                    }
                },
            )
        })
        .collect()
}

/// The triggers of the `copied` floor: before a `messages` row changes or goes, its old values
/// fill the payload of its records that have none, so a record that named the row when it was
/// queued still ships the row as it was then.
fn copy_on_change_triggers() -> String {
    let old = Message::COLUMNS
        .iter()
        .filter(|c| !Message::PRIMARY_KEY.contains(c))
        .map(|c| format!("'{c}', OLD.\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    ["UPDATE", "DELETE"]
        .iter()
        .map(|event| {
            format!(
                "CREATE TRIGGER floor_copy_{event} BEFORE {event} ON messages BEGIN
                   UPDATE floor_queue SET payload = json_object({old})
                   WHERE table_name = 'messages' AND row_key = json_array(OLD.id) AND payload IS NULL;
                 END;"
            )
        })
        .collect()
}

/// 1b. A raw write to a captured table (the trigger queues its record) against the same write
/// to the table uncaptured, one durable commit per write and 1,000 per commit.
fn bench_capture(quick: bool) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    [
        (
            "captured raw write, 1 durable commit per write",
            if quick { 300 } else { 1_000 },
            1,
            "≤ 1.5x",
        ),
        (
            "captured raw write, 1,000 writes per commit",
            if quick { 20_000 } else { 100_000 },
            1_000,
            "≤ 2.5x",
        ),
    ]
    .into_iter()
    .map(|(name, n, per_tx, target)| {
        write_ratio(
            dir.path(),
            "cap",
            (name, "the same write, not captured", target),
            n,
            per_tx,
            |on, conn| {
                if on {
                    Outbox::new().capture::<Message>(conn).unwrap();
                }
            },
            |_, _, tx, i| bare_write(tx, i),
        )
    })
    .collect()
}

/// 1c. An offline backlog of `n` updates over 1,000 rows (1,000 writes per commit), coalesced
/// against not coalesced: the queue's records and bytes, the time to write it, and the requests
/// and time to drain it to a local SQLite file.
async fn bench_coalesce(quick: bool) -> Vec<Row> {
    let n: u64 = if quick { 20_000 } else { 100_000 };
    let rows = 1_000;
    let edit = |i: u64| {
        let mut m = message(i % rows);
        m.raw_text = Some(format!("edit {i} of {}", m.id));
        // Each edit newer than the last: the local version guard keeps a write that is not.
        m.version = i as i64 + 1;
        m
    };
    let mut out = Vec::new();
    for coalesce in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut conn) = app_db(dir.path(), "backlog.db");
        let t = Instant::now();
        save_all(
            &mut conn,
            &Outbox::new().coalescing(coalesce),
            n,
            1_000,
            edit,
        );
        let wrote = t.elapsed();
        let (records, bytes): (u64, u64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(length(payload) + length(row_key)), 0) FROM d1_sync_queue",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        drop(conn);
        let target = SqliteTarget::open(dir.path().join("target.db")).unwrap();
        target
            .with_connection(d1_sync_example::apply_migrations)
            .unwrap();
        let (took, stats) = drain(&path, Arc::new(target), batch_size()).await;
        assert_eq!(stats.records_synced, records);
        out.push((records, bytes, wrote, stats.requests, took));
    }
    let (c, p) = (out[0], out[1]);
    // Every write changed its row: not coalesced, each is a record; coalesced, one per row.
    assert_eq!((c.0, p.0), (rows, n), "records coalesced and not");
    let show = |(records, bytes, wrote, requests, took): (u64, u64, Duration, u64, Duration)| {
        format!(
            "{records} records, {:.1} MiB, {requests} requests; written in {:.2} s, drained in {:.2} s",
            bytes as f64 / (1024.0 * 1024.0),
            wrote.as_secs_f64(),
            took.as_secs_f64()
        )
    };
    vec![Row {
        name: "backlog of updates over 1,000 rows, coalesced",
        measured: format!("{n} updates: {}", show(c)),
        baseline: format!("not coalesced: {}", show(p)),
        ratio: format!(
            "{:.3}x the records, {:.3}x the requests, {:.2}x the write time",
            c.0 as f64 / p.0 as f64,
            c.3 as f64 / p.3.max(1) as f64,
            c.2.as_secs_f64() / p.2.as_secs_f64()
        ),
        target: "report",
    }]
}

fn backlog(conn: &mut Connection, n: u64) {
    save_all(conn, &Outbox::new(), n, 10_000, message);
}

/// Saves `row(0..n)` through `outbox`, `per_tx` to a commit.
fn save_all<T: SyncRow>(
    conn: &mut Connection,
    outbox: &Outbox,
    n: u64,
    per_tx: u64,
    row: impl Fn(u64) -> T,
) {
    let mut i = 0;
    while i < n {
        let tx = conn.transaction().unwrap();
        for _ in 0..per_tx.min(n - i) {
            outbox.save(&tx, &row(i)).unwrap();
            i += 1;
        }
        tx.commit().unwrap();
    }
}

async fn drain(path: &Path, target: Arc<dyn Target>, batch: usize) -> (Duration, d1_sync::Stats) {
    drain_with(path, target, batch, d1_sync_example::registry()).await
}

/// [`drain`] with the tables of `registry`.
async fn drain_with(
    path: &Path,
    target: Arc<dyn Target>,
    batch: usize,
    registry: d1_sync::Registry,
) -> (Duration, d1_sync::Stats) {
    let (_, took, stats) = drain_from(path, target, batch, registry).await;
    (took, stats)
}

/// [`drain_with`], and when the worker was started.
async fn drain_from(
    path: &Path,
    target: Arc<dyn Target>,
    batch: usize,
    registry: d1_sync::Registry,
) -> (Instant, Duration, d1_sync::Stats) {
    let worker = SyncWorker::builder(path, target)
        .registry(registry)
        .batch_size(batch)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let t = Instant::now();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    let took = t.elapsed();
    let stats = worker.stats().await.unwrap();
    worker.shutdown().await.unwrap();
    (t, took, stats)
}

/// 2. Draining to a local SQLite file, against the same upserts applied straight to it.
async fn bench_drain(quick: bool) -> Vec<Row> {
    let n = if quick { 20_000 } else { 100_000 };
    let batch = batch_size() as u64;
    let (mut ours, mut raws, mut requests) = (Vec::new(), Vec::new(), 0);
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut conn) = app_db(dir.path(), "drain.db");
        backlog(&mut conn, n);
        let target = SqliteTarget::open(dir.path().join("target.db")).unwrap();
        target
            .with_connection(d1_sync_example::apply_migrations)
            .unwrap();
        let (took, stats) = drain(&path, Arc::new(target), batch as usize).await;
        assert_eq!(stats.records_synced, n);
        requests = stats.requests;
        ours.push(rate(n, took));

        // Raw: the same rows, one transaction per batch, straight into a fresh file.
        let raw = Connection::open(dir.path().join("raw.db")).unwrap();
        raw.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )
        .unwrap();
        d1_sync_example::apply_migrations(&raw).unwrap();
        let mut raw = raw;
        let t = Instant::now();
        let mut i = 0;
        while i < n {
            let tx = raw.transaction().unwrap();
            for _ in 0..batch.min(n - i) {
                tx.prepare_cached(Message::UPSERT_SQL)
                    .unwrap()
                    .execute(params_from_iter(message(i).values()))
                    .unwrap();
                i += 1;
            }
            tx.commit().unwrap();
        }
        raws.push(rate(n, t.elapsed()));
    }
    let (ours, raw) = (median_f64(ours), median_f64(raws));
    vec![Row {
        name: "drain to SqliteTarget",
        measured: format!(
            "{} ({n} rows, {requests} requests; median of {ROUNDS})",
            fmt_rate(ours)
        ),
        baseline: format!("{} (raw upserts, 1 tx per {batch})", fmt_rate(raw)),
        ratio: format!("{:.2}x the raw rate", ours / raw),
        target: "≥ 0.4x",
    }]
}

/// A queue of `n` records for the seed's way, in a file of its own.
fn seed_queue(dir: &Path, n: u64) -> Connection {
    let (path, mut conn) = app_db(dir, "seed.db");
    backlog(&mut conn, n);
    drop(conn);
    // The same settings as d1-sync's own queue connection: WAL, synchronous = NORMAL.
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .unwrap();
    conn
}

/// The seed's way, as `sync-worker.ts` does it: take a batch of pending records from the
/// queue; for each, parse its payload, bind its values to the seed's upsert, send that one
/// statement in a request of its own, then mark the record synced in the local queue.
async fn seed_way(
    d1: &D1Http,
    queue: &Connection,
    n: u64,
    deadline: Option<Duration>,
) -> (u64, Duration, u64) {
    let cols = Message::COLUMNS.join(", ");
    let placeholders = vec!["?"; Message::COLUMNS.len()].join(", ");
    let updates = Message::COLUMNS
        .iter()
        .map(|c| {
            if *c == "created_at" {
                "created_at = COALESCE(messages.created_at, excluded.created_at)".to_string()
            } else {
                format!("{c} = excluded.{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("INSERT INTO messages ({cols}) VALUES ({placeholders}) ON CONFLICT DO UPDATE SET {updates};");
    let t = Instant::now();
    let (mut done, mut requests) = (0, 0);
    'batches: while done < n {
        // Batches of 50 (the seed imports its default from a file not in the seed); the size
        // only sets how often the queue is read.
        let batch: Vec<(i64, String, String)> = queue
            .prepare_cached(
                "SELECT id, row_key, payload FROM d1_sync_queue WHERE status = 'pending' ORDER BY id LIMIT 50",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for (id, row_key, payload) in batch {
            if done >= n || deadline.is_some_and(|d| t.elapsed() >= d) {
                break 'batches;
            }
            let mut payload: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&payload).unwrap();
            // The queue stores the key once, in the row key (`["<id>"]`).
            let key: Vec<serde_json::Value> = serde_json::from_str(&row_key).unwrap();
            payload.insert("id".into(), key[0].clone());
            let params: Vec<d1_sync::target::Param> = Message::COLUMNS
                .iter()
                .map(|c| match &payload[*c] {
                    serde_json::Value::String(s) => d1_sync::target::Param::Text(s.clone()),
                    serde_json::Value::Number(x) => d1_sync::target::Param::Text(x.to_string()),
                    _ => d1_sync::target::Param::Text(String::new()),
                })
                .collect();
            loop {
                requests += 1;
                match d1
                    .query(&[Statement {
                        sql: sql.clone(),
                        params: params.clone(),
                    }])
                    .await
                {
                    Ok(_) => break,
                    Err(TargetError::RateLimited { retry_after, .. }) => {
                        // Kinder than the seed, which charged the record: wait as asked.
                        tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1))).await;
                    }
                    Err(e) => panic!("seed-way request failed: {e}"),
                }
            }
            queue
                .prepare_cached(
                    "UPDATE d1_sync_queue SET status = 'synced', updated_at = ?1 WHERE id = ?2",
                )
                .unwrap()
                .execute(d1_sync::rusqlite::params![1_i64, id])
                .unwrap();
            done += 1;
        }
    }
    (done, t.elapsed(), requests)
}

async fn d1_table(peer: &D1Peer) -> d1_sync_tests::d1peer::TestDb {
    let db = peer.database();
    let t = d1_sync_tests::targets::TestTarget::D1(Arc::new(db.client()), db.clone());
    t.apply_schema(&d1_sync_example::migrations_dir()).await;
    db
}

/// Where one drain's time went (see `bench_d1`).
struct Split {
    before: Duration,
    requests: Duration,
    between: Duration,
    after: Duration,
    /// The engine alone with the same requests.
    alone: Duration,
}

impl Split {
    fn total(&self) -> Duration {
        self.before + self.requests + self.between + self.after
    }

    /// The share of the drain spent in requests.
    fn share(&self) -> f64 {
        self.requests.as_secs_f64() / self.total().as_secs_f64().max(1e-9)
    }
}

/// 3. Over the D1 REST API to the local D1, against the seed's way in the same run.
async fn bench_d1(peer: &D1Peer, quick: bool) -> Vec<Row> {
    let n = std::env::var("D1_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 5_000 } else { 30_000 });
    let (mut ours, mut seeds, mut per_1000) = (Vec::new(), Vec::new(), Vec::new());
    let (mut engine, mut engine_bare, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    // Where each drain's time went: before the first request, in requests, between them,
    // after the last; and the engine's time alone.
    let mut splits: Vec<Split> = Vec::new();
    let mut originals = Vec::new();
    let original = original::prepare();
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut conn) = app_db(dir.path(), "d1.db");
        backlog(&mut conn, n);
        let db = d1_table(peer).await;
        let (timed, log) = Watched::spans(db.client());
        let (start, took, stats) = drain_from(
            &path,
            Arc::new(timed),
            batch_size(),
            d1_sync_example::registry(),
        )
        .await;
        assert_eq!(stats.records_synced, n);
        per_1000.push(peer.stats(&db).await.requests as f64 * 1000.0 / n as f64);
        ours.push(rate(n, took));

        // The engine alone: the same rows in requests of the same size, built in advance and
        // sent back to back. No queue, no checks: the most any worker could get.
        let engine_db = d1_table(peer).await;
        let client = engine_db.client();
        let shape = MessageShape::new();
        let changes: Vec<Change> = (0..n)
            .map(|i| shape.upsert(i as i64 + 1, &message(i)))
            .collect();
        let mut seq = 0;
        let requests: Vec<_> = changes
            .chunks(batch_size())
            .flat_map(|chunk| {
                d1_sync::pack::pack(chunk, &client.limits())
                    .into_iter()
                    .map(move |r| (chunk, r))
            })
            .map(|(chunk, mut r)| {
                seq += 1;
                let id = d1_sync::ledger::RequestId::new("0000000000bench0", seq);
                r.stamp(&id);
                (chunk, r, id)
            })
            .collect();
        // The same requests without the ledger's write, to a database of their own: what the
        // ledger costs the engine. The two kinds go in turns, request by request, whichever
        // first alternating, so the engine's warming up and the machine's noise fall on both.
        // The ledger is made before the clock starts (a worker makes it once, on first use).
        client
            .query(&d1_sync::ledger::create_statements())
            .await
            .unwrap();
        let bare_db = d1_table(peer).await;
        let bare = bare_db.client();
        // Versioned rows read the tombstones, which the ledger's set-up makes.
        bare.query(&[Statement::new(
            d1_sync::schema::guard::create_tombstones_sql(),
        )])
        .await
        .unwrap();
        let (mut with_ledger, mut without) = (Duration::ZERO, Duration::ZERO);
        for (i, (chunk, r, id)) in requests.iter().enumerate() {
            let stripped = r.statements_without_ledger();
            for ledger_first in [i % 2 == 0, i % 2 == 1] {
                let t = Instant::now();
                if ledger_first {
                    let applied = client
                        .execute(Batch {
                            request: id,
                            statements: &r.statements,
                            changes: &chunk[r.range.clone()],
                            checks: &r.checks,
                        })
                        .await
                        .unwrap();
                    assert_eq!(applied, d1_sync::ledger::Applied::now());
                    with_ledger += t.elapsed();
                } else {
                    bare.query(&stripped).await.unwrap();
                    without += t.elapsed();
                }
            }
        }
        engine.push(rate(n, with_ledger));
        engine_bare.push(rate(n, without));
        let spans = std::mem::take(&mut *log.lock().unwrap());
        if let (Some(first), Some(last)) = (spans.first(), spans.last()) {
            let in_requests = spans.iter().map(|(s, e)| *e - *s).sum();
            let (before, after) = (
                first.0 - start,
                (start + took).saturating_duration_since(last.1),
            );
            splits.push(Split {
                before,
                requests: in_requests,
                between: took.saturating_sub(before + in_requests + after),
                after,
                alone: with_ledger,
            });
        }
        // The worker against the engine in the same round, one right after the other.
        ratios.push(rate(n, took) / rate(n, with_ledger));
        let seed_db = d1_table(peer).await;
        let seed_n = if quick { 200 } else { 500 };
        let queue = seed_queue(dir.path(), seed_n);
        let (done, seed_took, _) = seed_way(&seed_db.client(), &queue, seed_n, None).await;
        seeds.push(rate(done, seed_took));
        if let Ok(dir) = &original {
            match original::rows_per_s(dir, peer, seed_n * 2).await {
                Ok(r) => originals.push(r),
                Err(e) => eprintln!("d1sync-bench: the original worker: {e}"),
            }
        }
    }
    let (ours, seed, engine) = (median_f64(ours), median_f64(seeds), median_f64(engine));
    let engine_bare = median_f64(engine_bare);
    // The round with the median share of the drain in requests.
    splits.sort_by(|a, b| a.share().total_cmp(&b.share()));
    let split_row = splits.get(splits.len() / 2).map(|sp| {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let total = sp.total();
        Row {
            name: "where the worker's drain time goes, over local D1",
            measured: format!(
                "{:.0} ms before the first request (claim, check, pack), {:.0} ms in requests, {:.0} ms between them, {:.0} ms after the last answer (its acknowledgement); {:.0} ms in all",
                ms(sp.before),
                ms(sp.requests),
                ms(sp.between),
                ms(sp.after),
                ms(total)
            ),
            baseline: format!("{:.0} ms: the engine alone with the same requests", ms(sp.alone)),
            ratio: format!(
                "requests {:.2}x the engine's time (the worker's work beside them on this machine's cores); before, between and after {:.0}% of the drain (the round with the median split)",
                sp.requests.as_secs_f64() / sp.alone.as_secs_f64().max(1e-9),
                (sp.before + sp.between + sp.after).as_secs_f64() * 100.0
                    / total.as_secs_f64().max(1e-9)
            ),
            target: "report",
        }
    });
    let original_row = match (&original, originals.is_empty()) {
        (Ok(_), false) => {
            let o = median_f64(originals);
            Row {
                name: "the original TypeScript worker (the seed itself) over local D1",
                measured: format!(
                    "{} (its own queue and client, 1 request per record; median of {ROUNDS})",
                    fmt_rate(o)
                ),
                baseline: format!("{} (the bench's Rust port of its way)", fmt_rate(seed)),
                ratio: format!("the port {:.1}x it; d1-sync {:.0}x it", seed / o, ours / o),
                target: "reported, with the port beside it",
            }
        }
        (Err(e), _) => Row {
            name: "the original TypeScript worker (the seed itself) over local D1",
            measured: format!("not run: {e}"),
            baseline: String::new(),
            ratio: String::new(),
            target: "reported, with the port beside it",
        },
        (Ok(_), true) => Row {
            name: "the original TypeScript worker (the seed itself) over local D1",
            measured: "not run: every run failed (see above)".into(),
            baseline: String::new(),
            ratio: String::new(),
            target: "reported, with the port beside it",
        },
    };
    vec![
        original_row,
        Row {
            name: "drain over D1's REST API (local D1)",
            measured: format!(
                "{} ({:.2} requests per 1,000 rows; median of {ROUNDS})",
                fmt_rate(ours),
                median_f64(per_1000)
            ),
            baseline: format!(
                "{} (the seed: 1 request per record, 1,000 per 1,000 rows)",
                fmt_rate(seed)
            ),
            ratio: format!("{:.0}x the rows/s", ours / seed),
            target: "≥ 100x, ≤ 2 requests / 1,000 rows",
        },
        Row {
            name: "the local D1 engine alone (the ceiling)",
            measured: format!(
                "{} (the same rows, requests built in advance, sent back to back)",
                fmt_rate(engine)
            ),
            baseline: format!("{} (the seed's way)", fmt_rate(seed)),
            ratio: format!(
                "{:.0}x the seed; the worker reaches {:.0}% of it (median of the rounds' ratios, each measured back to back)",
                engine / seed,
                median_f64(ratios) * 100.0
            ),
            target: "the worker ≥ 95% of it",
        },
        Row {
            name: "the ledger's cost to the engine",
            measured: format!(
                "{} with the ledger write (one row per request)",
                fmt_rate(engine)
            ),
            baseline: format!("{} without it (the same requests)", fmt_rate(engine_bare)),
            ratio: format!("{:.3}x the time", engine_bare / engine),
            target: "one row written per request, no extra request",
        },
    ]
    .into_iter()
    .chain(split_row)
    .collect()
}

/// 4. Production-like: 50 ms added per request, and D1's budget of 4 requests/s (429 beyond).
async fn bench_production(peer: &D1Peer, quick: bool) -> Vec<Row> {
    let n = if quick { 10_000 } else { 40_000 };
    let config = ProxyConfig {
        latency: Duration::from_millis(50),
        budget_per_sec: Some(4.0),
        ..ProxyConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (path, mut conn) = app_db(dir.path(), "prod.db");
    backlog(&mut conn, n);
    let db = d1_table(peer).await;
    let proxy = Proxy::start(&db.config.base_url, config.clone()).await;
    let mut c = db.config.clone();
    c.base_url = proxy.base_url.clone();
    let (took, stats) = drain(&path, Arc::new(D1Http::new(c).unwrap()), batch_size()).await;
    assert_eq!(stats.records_synced, n);
    let refused = proxy.stats().over_budget;

    let seed_db = d1_table(peer).await;
    let seed_proxy = Proxy::start(&seed_db.config.base_url, config).await;
    let mut c = seed_db.config.clone();
    c.base_url = seed_proxy.base_url.clone();
    // At about 4 rows/s, 200 records outlast the time allowed.
    let queue = seed_queue(dir.path(), 200);
    let (done, seed_took, seed_requests) = seed_way(
        &D1Http::new(c).unwrap(),
        &queue,
        u64::MAX,
        Some(Duration::from_secs(if quick { 5 } else { 15 })),
    )
    .await;
    let ours = rate(n, took);
    let seed = rate(done, seed_took);
    vec![Row {
        name: "production-like: +50 ms/request, 4 requests/s budget",
        measured: format!(
            "{} sustained over {n} rows ({} requests, {refused} refused with 429)",
            fmt_rate(ours),
            stats.requests
        ),
        baseline: format!(
            "{} (the seed's way, {seed_requests} requests)",
            fmt_rate(seed)
        ),
        ratio: format!("{:.0}x", ours / seed),
        target: "the seed's way is about 4 rows/s",
    }]
}

/// The time span of each request a target was given, as `(start, end)`.
type SpanLog = Arc<std::sync::Mutex<Vec<(Instant, Instant)>>>;

/// What [`Watched`] is told after each request: its start, its end, and whether it applied.
type Watch = Box<dyn Fn(Instant, Instant, bool) + Send + Sync>;

/// A target that tells `watch` about each request it is given.
struct Watched<T: Target> {
    inner: T,
    watch: Watch,
}

impl<T: Target> Watched<T> {
    /// Logs the span of every request.
    fn spans(inner: T) -> (Watched<T>, SpanLog) {
        let log = SpanLog::default();
        let spans = log.clone();
        let watch: Watch = Box::new(move |start, end, _| spans.lock().unwrap().push((start, end)));
        (Watched { inner, watch }, log)
    }

    /// Sends when each request was applied.
    fn applied(inner: T, tx: tokio::sync::mpsc::UnboundedSender<Instant>) -> Watched<T> {
        let watch: Watch = Box::new(move |_, end, ok| {
            if ok {
                let _ = tx.send(end);
            }
        });
        Watched { inner, watch }
    }
}

impl<T: Target> Target for Watched<T> {
    fn execute<'a>(&'a self, batch: Batch<'a>) -> BoxFuture<'a, Result<Applied, TargetError>> {
        Box::pin(async move {
            let start = Instant::now();
            let r = self.inner.execute(batch).await;
            (self.watch)(start, Instant::now(), r.is_ok());
            r
        })
    }
    fn prepare<'a>(&'a self) -> BoxFuture<'a, Result<(), TargetError>> {
        self.inner.prepare()
    }
    fn limits(&self) -> PackLimits {
        self.inner.limits()
    }
    fn wants_statements(&self) -> bool {
        self.inner.wants_statements()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Rows per request of the fault row: enough requests for a fifth of them to fail.
const FAULT_BATCH: usize = 2_000;

/// 4b. The seven-table demo workload over local D1, with a fifth of the requests failing for
/// the whole drain (429, 500, an HTML 503, and "committed, then 500"), against the same drain
/// without faults, in the same run. The mix runs with the worker's defaults; the faults with
/// requests of [`FAULT_BATCH`] rows (and beside a drain without faults at that size), so that
/// a fifth of the requests is a handful of faults, not a draw of zero or one. D1 is checked
/// against the local file after each drain.
async fn bench_faults(peer: &D1Peer, quick: bool) -> Vec<Row> {
    let n = if quick { 5_000 } else { 40_000 };
    let mut results: [Vec<(f64, u64, u64, u64)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let (mut bursts, mut statements) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // A single-table burst of as many rows, the same round: what the mix is held to.
        let dir = tempfile::tempdir().unwrap();
        let (path, mut conn) = app_db(dir.path(), "burst.db");
        backlog(&mut conn, n);
        let db = d1_table(peer).await;
        let (took, stats) = drain(&path, Arc::new(db.client()), batch_size()).await;
        assert_eq!(stats.records_synced, n);
        bursts.push(rate(n, took));
        let runs = [(0.0, batch_size()), (0.0, FAULT_BATCH), (0.2, FAULT_BATCH)];
        for (i, (rate_of_faults, batch)) in runs.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let (path, mut conn) = app_db(dir.path(), "faults.db");
            d1_sync_example::workload::write(
                &mut conn,
                &Outbox::new(),
                n,
                round as u64 + 1,
                1_000,
                |_| {},
            )
            .unwrap();
            let db = d1_table(peer).await;
            if rate_of_faults > 0.0 {
                peer.set_random_faults(&db, rate_of_faults, &["429", "500", "503", "after"])
                    .await;
            }
            let client = Arc::new(db.client());
            let (took, stats) = drain(&path, client.clone(), batch).await;
            // The drain's faults (the read-back below meets faults too, and retries them).
            let peer_stats = peer.stats(&db).await;
            let compared = d1_sync::verify::compare(&conn, &*client, &d1_sync_example::registry())
                .await
                .unwrap();
            assert!(
                compared.agrees(),
                "differs after the drain: {:?}",
                compared.differing
            );
            assert_eq!(stats.queue.failed, 0);
            if i == 0 {
                statements.push(stats.statements as f64 * 1000.0 / stats.records_synced as f64);
            }
            results[i].push((
                rate(stats.records_synced, took),
                stats.requests,
                stats.requests_replayed,
                peer_stats.faults.values().sum(),
            ));
        }
    }
    let pick = |v: &[(f64, u64, u64, u64)]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[v.len() / 2]
    };
    let (calm, calm_small, faulty) = (pick(&results[0]), pick(&results[1]), pick(&results[2]));
    let burst = median_f64(bursts);
    vec![
        Row {
            name: "seven-table demo workload against a single-table burst, over local D1",
            measured: format!(
                "{} ({n} changes over seven tables, {} requests, {:.0} statements per 1,000 rows; median of {ROUNDS})",
                fmt_rate(calm.0),
                calm.1,
                median_f64(statements)
            ),
            baseline: format!("{} ({n} `messages` rows)", fmt_rate(burst)),
            ratio: format!("{:.0}%", calm.0 / burst * 100.0),
            target: "≥ 50%",
        },Row {
        name: "seven-table demo workload over local D1, 20% faults for the whole drain",
        measured: format!(
            "{} ({n} changes in requests of {FAULT_BATCH} rows: {} requests, {} faults, {} replays recognised by the ledger; median of {ROUNDS})",
            fmt_rate(faulty.0),
            faulty.1,
            faulty.3,
            faulty.2
        ),
        baseline: format!(
            "{} without faults, the same request size ({} requests)",
            fmt_rate(calm_small.0),
            calm_small.1
        ),
        ratio: format!("{:.2}x the rows/s", faulty.0 / calm_small.0),
        target: "drains, D1 equals the local file, 0 dead letters",
    }]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency_for(label: &'static str, target: impl Target + Clone, samples: u64) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut conn) = app_db(dir.path(), "lat.db");
    let (tx_applied, mut applied) = tokio::sync::mpsc::unbounded_channel();
    let worker = SyncWorker::builder(&path, Watched::applied(target.clone(), tx_applied))
        .registry(d1_sync_example::registry())
        .poll_interval(Duration::from_secs(30))
        .build()
        .unwrap();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    let outbox = Outbox::new();
    let shape = MessageShape::new();
    let mut lat = Vec::new();
    let mut direct = Vec::new();
    for i in 0..samples {
        // Baseline: the same one-row request sent straight to the target.
        let m = message(1_000_000 + i);
        let stmt = Statement {
            sql: Message::UPSERT_SQL.to_string(),
            params: m
                .values()
                .into_iter()
                .map(|v| match v {
                    d1_sync::Value::Integer(x) => d1_sync::target::Param::Text(x.to_string()),
                    d1_sync::Value::Text(s) => d1_sync::target::Param::Text(s),
                    _ => d1_sync::target::Param::Text(String::new()),
                })
                .collect(),
        };
        let change = shape.upsert(0, &m);
        let id = d1_sync::ledger::RequestId::new("000000000direct0", i as i64);
        let t = Instant::now();
        target
            .execute(Batch {
                request: &id,
                statements: &[stmt],
                changes: &[change],
                checks: &[],
            })
            .await
            .unwrap();
        direct.push(t.elapsed());

        let tx = conn.transaction().unwrap();
        outbox.save(&tx, &message(i)).unwrap();
        tx.commit().unwrap();
        let committed = Instant::now();
        worker.notify();
        let done = applied.recv().await.unwrap();
        lat.push(done.duration_since(committed));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.shutdown().await.unwrap();
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    let (d50, d99) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.99));
    Row {
        name: label,
        measured: format!(
            "p50 {:.2} ms, p99 {:.2} ms ({samples} changes, poll interval 30 s)",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        ),
        baseline: format!(
            "p50 {:.2} ms, p99 {:.2} ms (one request straight to the target)",
            d50.as_secs_f64() * 1e3,
            d99.as_secs_f64() * 1e3
        ),
        ratio: format!("{:.1}x at p50", p50.as_secs_f64() / d50.as_secs_f64()),
        target: "notify, not poll",
    }
}

/// 5. Enqueue-to-applied latency with the worker idle.
async fn bench_latency(peer: &D1Peer, quick: bool) -> Vec<Row> {
    let samples = if quick { 50 } else { 200 };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteTarget::open(dir.path().join("t.db")).unwrap();
    sqlite
        .with_connection(d1_sync_example::apply_migrations)
        .unwrap();
    let db = d1_table(peer).await;
    vec![
        latency_for(
            "enqueue → applied, SqliteTarget",
            Arc::new(sqlite) as Arc<dyn Target>,
            samples,
        )
        .await,
        latency_for(
            "enqueue → applied, local D1",
            Arc::new(db.client()) as Arc<dyn Target>,
            samples,
        )
        .await,
    ]
}

/// A `kB` field of `/proc/self/status` (`VmHWM`, `VmRSS`); 0 where there is none.
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(str::to_string))
        })
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// The child of `memory`: drains the backlog in `dir` and prints its memory figures.
async fn memory_child(dir: &Path, d1: Option<D1Config>) {
    let target: Arc<dyn Target> = match d1 {
        Some(config) => Arc::new(D1Http::new(config).unwrap()),
        None => Arc::new(SqliteTarget::open(dir.join("target.db")).unwrap()),
    };
    let worker = SyncWorker::builder(dir.join("app.db"), target)
        .registry(d1_sync_example::registry())
        .build()
        .unwrap();
    let before = proc_status_kib("VmRSS");
    let t = Instant::now();
    worker.start().unwrap();
    worker.flush().await.unwrap();
    let s = worker.stats().await.unwrap();
    worker.shutdown().await.unwrap();
    println!(
        "{} {} {} {}",
        before,
        proc_status_kib("VmHWM"),
        s.records_synced,
        t.elapsed().as_millis()
    );
}

/// Benchmark 6, peak memory while draining a backlog in a child process of its own:
/// 1,000,000 records to a SQLite file, or with `d1` 200,000 over local D1 (requests of
/// 10,000 rows).
fn bench_memory(quick: bool, d1: Option<&d1_sync_tests::d1peer::TestDb>) -> Vec<Row> {
    let n: u64 = match (quick, d1.is_some()) {
        (true, false) => 200_000,
        (false, false) => 1_000_000,
        (true, true) => 50_000,
        (false, true) => 200_000,
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, mut conn) = app_db(dir.path(), "app.db");
    backlog(&mut conn, n);
    drop(conn);
    let target = Connection::open(dir.path().join("target.db")).unwrap();
    d1_sync_example::apply_migrations(&target).unwrap();
    drop(target);
    let size: u64 = ["app.db", "app.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
        .map(|m| m.len())
        .sum();
    let mut child = Command::new(std::env::current_exe().unwrap());
    child.arg("memory-child").arg(dir.path());
    if let Some(db) = d1 {
        child.args([&db.config.base_url, &db.id, &db.config.api_token]);
    }
    let out = child.output().expect("run the memory child");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        panic!(
            "memory child failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (before, peak, synced, ms) = (v[0], v[1], v[2], v[3]);
    assert_eq!(synced, n);
    vec![Row {
        name: if d1.is_some() {
            "peak memory draining a backlog over local D1 (requests of 10,000 rows)"
        } else {
            "peak memory draining a backlog"
        },
        measured: format!(
            "{:.1} MiB peak RSS over {n} records ({:.1}k rows/s)",
            peak as f64 / 1024.0,
            n as f64 / ms as f64
        ),
        baseline: format!(
            "{:.1} MiB at start; backlog file {:.0} MiB",
            before as f64 / 1024.0,
            size as f64 / 1048576.0
        ),
        ratio: format!(
            "{:.2}x the start, {:.2}x the backlog",
            peak as f64 / before.max(1) as f64,
            peak as f64 * 1024.0 / size as f64
        ),
        target: "not loaded into memory",
    }]
}

/// The schema check's share of one derive expansion (issue: measure what `schema` adds).
fn bench_schema(quick: bool) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, sql) in d1_sync_example::MIGRATIONS {
        files.push((name.to_string(), sql.to_string()));
    }
    // 20 migrations in all: indexes and new columns, as a real project accumulates them.
    let tables = [
        "messages",
        "executions",
        "sessions",
        "local_conversations",
        "conversation_links",
        "renewal_jobs",
        "browser_request_policy_state",
    ];
    for i in files.len()..20 {
        let t = tables[i % tables.len()];
        let sql = if i % 2 == 0 {
            format!("ALTER TABLE {t} ADD COLUMN extra_{i} TEXT;")
        } else {
            format!("CREATE INDEX idx_{i} ON {t} (created_at);").replace(
                "browser_request_policy_state (created_at)",
                "browser_request_policy_state (updated_at)",
            )
        };
        files.push((format!("{i:04}_more.sql"), sql));
    }
    for (name, sql) in &files {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    let reps = if quick { 20 } else { 100 };
    let mut cold = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let schema = d1_sync::schema::load_schema(dir.path()).unwrap();
        for name in tables {
            let table = schema.table(name).unwrap();
            let cols: Vec<&str> = table.writable_columns().map(|c| c.name.as_str()).collect();
            let pk: Vec<&str> = table.primary_key.iter().map(String::as_str).collect();
            schema
                .check_statement(&d1_sync::schema::sql::upsert_sql(name, &cols, &pk, &[]))
                .unwrap();
            schema
                .check_statement(&d1_sync::schema::sql::delete_sql(name, &pk))
                .unwrap();
        }
        cold.push(t.elapsed());
    }
    let _ = d1_sync::schema::load_schema_cached(dir.path()).unwrap();
    let mut warm = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let schema = d1_sync::schema::load_schema_cached(dir.path()).unwrap();
        let table = schema.table("messages").unwrap();
        let cols: Vec<&str> = table.writable_columns().map(|c| c.name.as_str()).collect();
        schema
            .check_statement(&d1_sync::schema::sql::upsert_sql(
                "messages",
                &cols,
                &["id"],
                &[],
            ))
            .unwrap();
        schema
            .check_statement(&d1_sync::schema::sql::delete_sql("messages", &["id"]))
            .unwrap();
        warm.push(t.elapsed());
        let t = Instant::now();
        let _ = std::hint::black_box(d1_sync::schema::sql::upsert_sql(
            "messages",
            &cols,
            &["id"],
            &[],
        ));
        let _ = std::hint::black_box(d1_sync::schema::sql::delete_sql("messages", &["id"]));
        bare.push(t.elapsed());
    }
    let (c, w, b) = (median(cold), median(warm), median(bare));
    vec![Row {
        name: "schema check per derive (7 tables, 20 migrations)",
        measured: format!(
            "first derive of a crate {:.2} ms (loads the files, checks 7 tables); each later one {:.3} ms",
            c.as_secs_f64() * 1e3 / 1.0,
            w.as_secs_f64() * 1e3
        ),
        baseline: format!("{:.4} ms (the SQL text alone, no schema)", b.as_secs_f64() * 1e3),
        ratio: format!("+{:.2} ms per later derive", (w.as_secs_f64() - b.as_secs_f64()) * 1e3),
        target: "report",
    }]
}

fn print_table(rows: &[Row]) {
    println!();
    println!("| benchmark | measured | baseline (same run) | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name, r.measured, r.baseline, r.ratio, r.target
        );
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("memory-child") {
        let dir = PathBuf::from(
            args.get(1)
                .expect("memory-child <dir> [<base url> <db> <token>]"),
        );
        let d1 = match (args.get(2), args.get(3), args.get(4)) {
            (Some(url), Some(db), Some(token)) => {
                let mut config = D1Config::new("test-account", db.clone(), token.clone());
                config.base_url = url.clone();
                config.request_budget = None;
                Some(config)
            }
            _ => None,
        };
        memory_child(&dir, d1).await;
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let picked: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |name: &str| picked.is_empty() || picked.contains(&name);
    let needs_peer = [
        "d1",
        "guard",
        "fleet",
        "faults",
        "production",
        "latency",
        "memory-d1",
    ]
    .iter()
    .any(|b| want(b));
    let peer = needs_peer.then(D1Peer::start);
    let mut rows = Vec::new();
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    eprintln!(
        "d1sync-bench: {} cores, {machine}{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick { " (quick)" } else { "" }
    );
    let mut run = |name: &str, f: &mut dyn FnMut() -> Vec<Row>| {
        if want(name) {
            eprintln!("d1sync-bench: {name} ...");
            let r = f();
            print_table(&r);
            rows.extend(r);
        }
    };
    run("enqueue", &mut || bench_enqueue(quick));
    run("capture", &mut || bench_capture(quick));
    let handle = tokio::runtime::Handle::current();
    run("coalesce", &mut || {
        tokio::task::block_in_place(|| handle.block_on(bench_coalesce(quick)))
    });
    run("drain", &mut || {
        tokio::task::block_in_place(|| handle.block_on(bench_drain(quick)))
    });
    if let Some(peer) = &peer {
        run("d1", &mut || {
            tokio::task::block_in_place(|| handle.block_on(bench_d1(peer, quick)))
        });
        run("guard", &mut || {
            tokio::task::block_in_place(|| handle.block_on(versions::bench_guard(peer, quick)))
        });
        run("fleet", &mut || {
            tokio::task::block_in_place(|| handle.block_on(versions::bench_fleet(peer, quick)))
        });
        run("faults", &mut || {
            tokio::task::block_in_place(|| handle.block_on(bench_faults(peer, quick)))
        });
        run("production", &mut || {
            tokio::task::block_in_place(|| handle.block_on(bench_production(peer, quick)))
        });
        run("latency", &mut || {
            tokio::task::block_in_place(|| handle.block_on(bench_latency(peer, quick)))
        });
        run("memory-d1", &mut || {
            let db = tokio::task::block_in_place(|| handle.block_on(d1_table(peer)));
            bench_memory(quick, Some(&db))
        });
    }
    run("memory", &mut || bench_memory(quick, None));
    run("schema", &mut || bench_schema(quick));
    println!("\nAll results:");
    print_table(&rows);
}
