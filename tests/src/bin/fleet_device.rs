//! One device of the fleet test (`tests/tests/fleet.rs`): its own app file, outbox and worker,
//! writing the seven example tables over keys every device shares, into one local D1, with a
//! clock `FLEET_SKEW_MS` off, going offline now and then. It prints its figures as one JSON
//! line; its writes go to `<FLEET_DIR>/writes.json`.
//!
//! Configured by environment: `D1_BASE_URL`, `D1_DATABASE_ID`, `CLOUDFLARE_ACCOUNT_ID`,
//! `CLOUDFLARE_API_TOKEN` (as `d1sync`), and `FLEET_DIR`, `FLEET_DEVICE`, `FLEET_SEED`,
//! `FLEET_WRITES`, `FLEET_SKEW_MS`.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use d1_sync::{Backoff, D1Config, D1Http, Hlc, SyncWorker};
use d1_sync_tests::fleet::Device;
use rand::{Rng, SeedableRng};

fn var<T: std::str::FromStr>(name: &str) -> Result<T, String> {
    std::env::var(name)
        .map_err(|_| format!("{name} is not set"))?
        .parse()
        .map_err(|_| format!("{name} is not a valid value"))
}

fn worker(app: &PathBuf, config: &D1Config) -> Result<SyncWorker, Box<dyn std::error::Error>> {
    Ok(SyncWorker::builder(app, D1Http::new(config.clone())?)
        .registry(d1_sync_example::registry())
        .poll_interval(Duration::from_millis(20))
        .backoff(Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(300),
            floor: Duration::from_millis(5),
        })
        .pause(Duration::from_millis(200))
        .shutdown_timeout(Duration::from_secs(5))
        .build()?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = var("FLEET_DIR")?;
    let id: u32 = var("FLEET_DEVICE")?;
    let seed: u64 = var("FLEET_SEED")?;
    let writes: usize = var("FLEET_WRITES")?;
    let skew: i64 = var("FLEET_SKEW_MS")?;
    let config = D1Config::from_env()?;

    // The README's flow: open the file, apply the migrations, write through the outbox, and a
    // worker drains it.
    let app = dir.join("app.db");
    let mut conn = d1_sync::open(&app)?;
    d1_sync_example::apply_migrations(&conn)?;
    let hlc = Hlc::new().with_physical_clock(move || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        now + skew
    });
    let mut device = Device::new(id, seed, hlc);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(u64::from(id)));

    let started = Instant::now();
    let mut online = Some(worker(&app, &config)?);
    if let Some(w) = &online {
        w.start()?;
    }
    let mut offline_spells = 0;
    let mut written = 0;
    while written < writes {
        let n = rng.random_range(1..8).min(writes - written);
        // It reads (does the row exist?) before it writes: an immediate transaction, so the
        // worker's writes in between cannot make its snapshot stale.
        let tx =
            conn.transaction_with_behavior(d1_sync::rusqlite::TransactionBehavior::Immediate)?;
        for _ in 0..n {
            device.write_one(&tx)?;
        }
        tx.commit()?;
        written += n;
        match &online {
            Some(w) => {
                w.notify();
                // Now and then the device goes offline: the worker stops, writes pile up.
                if rng.random_bool(0.04) {
                    if let Some(w) = online.take() {
                        w.shutdown().await?;
                        offline_spells += 1;
                    }
                }
            }
            None if rng.random_bool(0.15) => {
                let w = worker(&app, &config)?;
                w.start()?;
                online = Some(w);
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..60))).await;
    }
    let w = match online {
        Some(w) => w,
        None => {
            let w = worker(&app, &config)?;
            w.start()?;
            w
        }
    };
    tokio::time::timeout(Duration::from_secs(600), w.flush()).await??;
    let stats = w.stats().await?;
    w.shutdown().await?;
    let counts = d1_sync::Outbox::new().counts(&conn)?;
    std::fs::write(dir.join("writes.json"), serde_json::to_vec(&device.log)?)?;
    println!(
        "{}",
        serde_json::json!({
            "device": id,
            "writes": device.log.len(),
            "offline_spells": offline_spells,
            "synced": stats.records_synced,
            "superseded": stats.records_superseded,
            "requests": stats.requests,
            "replayed": stats.requests_replayed,
            "pending": counts.pending,
            "failed": counts.failed,
            "conflicts_logged": counts.superseded,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
