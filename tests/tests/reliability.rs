//! Reliability under faults and crashes, against Cloudflare's local D1 engine, with the
//! seven-table workload of the example app (foreign keys, cascades, SET NULL, partial updates,
//! deletes) and faults at a steady 20% for the *whole* run, lost-after-commit answers included:
//! faults never stop to let a drain finish. Each test prints a `reliability:` line with its
//! figures (run with `--nocapture` to see them).
//!
//! - `D1SYNC_CRASH_LOOPS=200` for the long crash loop (20 by default);
//! - `D1SYNC_FAULT_CHANGES=20000` for a longer fault-proxy run (3000 by default).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use d1_sync::{D1Http, SyncWorker};
use d1_sync_example::workload::Workload;
use d1_sync_tests::d1peer::D1Peer;
use d1_sync_tests::fixture::{fast_backoff, registry, Fixture};
use d1_sync_tests::proxy::{Fault, Proxy, ProxyConfig};
use d1_sync_tests::targets::TestTarget;
use rand::{Rng, SeedableRng};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `n` changes of the seven-table workload (20 per transaction, a pause after each),
/// until `stop`.
fn produce(
    path: &std::path::Path,
    n: u64,
    seed: u64,
    pause: Duration,
    written: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut conn = d1_sync::open(path).unwrap();
    let outbox = d1_sync::Outbox::new();
    let mut workload = Workload::new(seed);
    while workload.written().total() < n && !stop.load(Ordering::SeqCst) {
        let step = 20.min(n - workload.written().total());
        workload.write_tx(&mut conn, &outbox, step).unwrap();
        written.store(workload.written().total(), Ordering::SeqCst);
        std::thread::sleep(pause);
    }
}

/// A producer thread writing `n` changes (see [`produce`]): its handle, the count written so
/// far, and the flag that stops it.
fn start_producer(
    path: &std::path::Path,
    n: u64,
    seed: u64,
    pause: Duration,
) -> (std::thread::JoinHandle<()>, Arc<AtomicU64>, Arc<AtomicBool>) {
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (path, written, stop) = (path.to_path_buf(), written.clone(), stop.clone());
        std::thread::spawn(move || produce(&path, n, seed, pause, &written, &stop))
    };
    (handle, written, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_faults_through_a_proxy_for_the_whole_run_converge() {
    let f = Fixture::new(|_| TestTarget::d1()).await;
    let db = f.target.test_db().unwrap().clone();
    let proxy = Proxy::start(
        &db.config.base_url,
        ProxyConfig {
            fault_rate: 0.2,
            faults: vec![
                Fault::Drop,
                Fault::Reset,
                Fault::Stall(Duration::from_millis(1500)),
                Fault::Slow(Duration::from_millis(300)),
                Fault::Http500,
                Fault::Http503,
                Fault::Http429,
                Fault::LostAfterCommit,
                Fault::LostAfterCommit,
            ],
            seed: 7,
            ..ProxyConfig::default()
        },
    )
    .await;
    let mut config = db.config.clone();
    config.base_url = proxy.base_url.clone();
    config.timeout = Duration::from_secs(1);
    let worker = SyncWorker::builder(&f.app_path, D1Http::new(config).unwrap())
        .registry(registry())
        .batch_size(25)
        .poll_interval(Duration::from_millis(20))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    worker.start().unwrap();

    let changes = env_or("D1SYNC_FAULT_CHANGES", 3000);
    let started = Instant::now();
    let (producer, written, _stop) =
        start_producer(&f.app_path, changes, 11, Duration::from_millis(40));
    while !producer.is_finished() {
        worker.notify();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    producer.join().unwrap();
    // The faults go on: what is left drains through them.
    let backlog = f.counts().pending;
    let calm = Instant::now();
    tokio::time::timeout(Duration::from_secs(300), worker.flush())
        .await
        .expect("the drain finishes under a steady 20% fault rate")
        .unwrap();
    let drain_after = calm.elapsed();
    let total = started.elapsed();
    let s = worker.stats().await.unwrap();
    worker.shutdown().await.unwrap();

    let p = proxy.stats();
    let faults: u64 = p
        .faults
        .iter()
        .filter(|(k, _)| **k != "slow")
        .map(|(_, v)| v)
        .sum();
    assert_eq!((s.queue.pending, s.queue.failed), (0, 0));
    assert_eq!(
        f.max_attempts_charged(),
        0,
        "transport faults and lost answers charge no record"
    );
    f.assert_all_in_step().await;
    assert!(
        p.faults.get("lost-after-commit").copied().unwrap_or(0) > 0,
        "answers were lost after commit: {:?}",
        p.faults
    );
    assert!(
        s.requests_replayed > 0,
        "D1's ledger recognised requests it had applied"
    );
    // No hot loop: every failure is followed by a backoff of at least its floor (5 ms here),
    // and at most a fault's worth of extra requests goes out per successful one.
    let floor_ms = fast_backoff().floor.as_millis() as u64;
    assert!(
        faults * floor_ms <= total.as_millis() as u64,
        "{faults} faults in {total:?}: a hot loop"
    );
    assert!(
        p.requests <= 2 * p.forwarded_ok + 20,
        "{} requests for {} answered",
        p.requests,
        p.forwarded_ok
    );
    println!(
        "reliability: fault proxy, seven tables: {} changes, {} requests ({} answered by D1, {} applied before and recognised by the ledger), faults {:?} at a steady 20%, lost 0, divergent 0, dead-lettered 0, charged 0, total {:.1} s, drain of the {} records left when the writes stopped {} ms (faults still on)",
        written.load(Ordering::SeqCst),
        p.requests,
        p.forwarded_ok,
        s.requests_replayed,
        p.faults,
        total.as_secs_f64(),
        backlog,
        drain_after.as_millis()
    );
    assert!(s.records_synced > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_under_steady_faults_loses_nothing_and_applies_nothing_twice() {
    let f = Fixture::new(|_| TestTarget::d1()).await;
    let db = f.target.test_db().unwrap().clone();
    let peer = D1Peer::shared();
    // A fifth of the requests, for the whole run: 429, 500, an HTML 503, and "committed, then
    // 500" (the answer lost).
    peer.set_random_faults(&db, 0.2, &["429", "500", "503", "after", "after"])
        .await;
    let loops = env_or("D1SYNC_CRASH_LOOPS", 20);
    let child = env!("CARGO_BIN_EXE_sync_child");
    let spawn = |extra: &[&str]| {
        Command::new(child)
            .args([f.app_path.to_str().unwrap(), &db.config.base_url, &db.id])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the child worker")
    };
    let started = Instant::now();
    let (producer, written, stop) =
        start_producer(&f.app_path, u64::MAX, 5, Duration::from_millis(3));
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..loops {
        let mut c = spawn(&[]);
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..300))).await;
        c.kill().expect("SIGKILL");
        c.wait().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    producer.join().unwrap();
    let settle = Instant::now();
    assert!(spawn(&["--until-empty"]).wait().unwrap().success());
    let drain = settle.elapsed();
    let stats = peer.stats(&db).await;
    let c = f.counts();
    assert_eq!((c.pending, c.failed), (0, 0));
    assert_eq!(f.max_attempts_charged(), 0, "no record was charged");
    f.assert_all_in_step().await;
    let faults: u64 = stats.faults.values().sum();
    assert!(faults > 0, "faults were served: {:?}", stats.faults);
    println!(
        "reliability: crash loop, seven tables: {} SIGKILLs of the worker while a producer wrote {} changes; {} requests, {} faults {:?} at a steady 20%; lost 0, divergent 0, dead-lettered 0, charged 0; final drain {} ms (faults still on); total {:.1} s",
        loops,
        written.load(Ordering::SeqCst),
        stats.requests,
        faults,
        stats.faults,
        drain.as_millis(),
        started.elapsed().as_secs_f64()
    );
}
