//! Reliability under faults and crashes, against Cloudflare's local D1 engine. Each test prints
//! a `reliability:` line with its figures (run with `--nocapture` to see them).
//!
//! - `D1SYNC_CRASH_LOOPS=200` for the long crash loop (20 by default);
//! - `D1SYNC_FAULT_CHANGES=20000` for a longer fault-proxy run (3000 by default).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use d1_sync::{D1Http, SyncWorker};
use d1_sync_example::rows::{Message, Session};
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

fn message(i: u64, text: &str) -> Message {
    d1_sync_tests::fixture::message(&format!("m{i:06}"), text, i as i64)
}

/// Writes `n` changes over a few hundred keys: inserts, updates, deletes, re-inserts.
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut i = 0;
    while i < n && !stop.load(Ordering::SeqCst) {
        let tx = conn.transaction().unwrap();
        for _ in 0..20.min(n - i) {
            let key = rng.random_range(0..400u64);
            match rng.random_range(0..10) {
                0 | 1 => {
                    outbox.remove(&tx, &message(key, "")).unwrap();
                }
                2 => {
                    let s = Session {
                        id: format!("s{}", key % 50),
                        platform: "web".into(),
                        conversation_id: None,
                        started_at: 1,
                        last_activity_at: i as i64,
                        message_count: i as i64,
                        execution_count: 0,
                        summary: Some(format!("n{i}")),
                        static_path: None,
                        created_at: 1,
                    };
                    outbox.save(&tx, &s).unwrap();
                }
                _ => {
                    outbox.save(&tx, &message(key, &format!("v{i}"))).unwrap();
                }
            }
            i += 1;
        }
        tx.commit().unwrap();
        written.store(i, Ordering::SeqCst);
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
async fn twenty_percent_faults_through_a_proxy_converge() {
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
    // Keep the worker busy alongside the producer.
    while !producer.is_finished() {
        worker.notify();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    producer.join().unwrap();
    // The faults stop with the writes; what is left drains (the worker may be in a backoff).
    proxy.set_fault_rate(0.0);
    let backlog = f.counts().pending;
    let calm = Instant::now();
    tokio::time::timeout(Duration::from_secs(120), worker.flush())
        .await
        .expect("drain")
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
        "transport faults charge no record"
    );
    f.assert_all_in_step().await;
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
        "reliability: fault proxy: {} changes, {} requests ({} answered by D1), faults {:?}, lost 0, divergent 0, dead-lettered 0, total {:.1} s, drain of the {} records left after faults stop {} ms",
        written.load(Ordering::SeqCst),
        p.requests,
        p.forwarded_ok,
        p.faults,
        total.as_secs_f64(),
        backlog,
        drain_after.as_millis()
    );
    assert!(s.records_synced > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_with_a_producer_loses_nothing() {
    let f = Fixture::new(|_| TestTarget::d1()).await;
    let db = f.target.test_db().unwrap().clone();
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
    let c = f.counts();
    assert_eq!((c.pending, c.failed), (0, 0));
    f.assert_all_in_step().await;
    println!(
        "reliability: crash loop: {} SIGKILLs of the worker while a producer wrote {} changes; lost 0, divergent 0, dead-lettered 0; final drain {} ms; total {:.1} s",
        loops,
        written.load(Ordering::SeqCst),
        drain.as_millis(),
        started.elapsed().as_secs_f64()
    );
}
