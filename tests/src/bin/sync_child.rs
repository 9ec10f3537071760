//! A worker in its own process, for tests that kill it: drains `<app.db>` to the local D1 at
//! `<base-url>`, database `<db-id>`, until killed (or, with `--until-empty`, until nothing is
//! left to send).

use std::time::Duration;

use d1_sync::{D1Config, D1Http, SyncWorker};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: sync_child <app.db> <base-url> <db-id> [--until-empty]");
        std::process::exit(2);
    }
    let mut config = D1Config::new("test-account", &args[3], "test-token");
    config.base_url = args[2].clone();
    config.timeout = Duration::from_secs(10);
    // A local D1: no API budget to keep under.
    config.request_budget = None;
    let target = match D1Http::new(config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sync_child: {e}");
            std::process::exit(1);
        }
    };
    let worker = SyncWorker::builder(&args[1], target)
        .registry(d1_sync_tests::fixture::registry())
        .batch_size(50)
        .poll_interval(Duration::from_millis(20))
        .lease(Duration::from_secs(1))
        .backoff(d1_sync_tests::fixture::fast_backoff())
        .build();
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            eprintln!("sync_child: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = worker.start() {
        eprintln!("sync_child: {e}");
        std::process::exit(1);
    }
    println!("started");
    if args.iter().any(|a| a == "--until-empty") {
        loop {
            if worker.flush().await.is_err() {
                std::process::exit(1);
            }
            match worker.stats().await {
                Ok(s) if s.queue.pending == 0 => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    eprintln!("sync_child: {e}");
                    std::process::exit(1);
                }
            }
        }
        let _ = worker.shutdown().await;
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
