//! Many devices, one D1: device processes (`src/bin/fleet_device.rs`), each with its own app
//! file, outbox and worker, write the same keys of the seven example tables (cascades and
//! `SET NULL` included) into one local D1, with clocks up to ±10 minutes apart, under a steady
//! 20% of faults (answers lost after commit included), going offline and coming back with
//! backlogs. At the end each row in D1 is the highest-version write of its key across every
//! device's log (see `d1_sync_tests::fleet::judge`): no stale overwrite, no resurrection, and
//! no dead letter.
//!
//! CI runs 4 devices of 600 writes (enough that, with the tombstone check or the version guard
//! left out of the SQL, the run ends with resurrections or stale overwrites: checked by hand). `D1SYNC_FLEET_DEVICES=16 D1SYNC_FLEET_WRITES=1000` (and
//! `D1SYNC_FLEET_SEED`) run a larger fleet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use d1_sync::schema::migrations as m;
use d1_sync::target::Statement;
use d1_sync_tests::d1peer::D1Peer;
use d1_sync_tests::fleet::{judge, key_column, Write, KEYS};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_never_overwrite_newer_writes_or_resurrect_deleted_rows() {
    let devices: u32 = env_or("D1SYNC_FLEET_DEVICES", 4);
    let writes: usize = env_or("D1SYNC_FLEET_WRITES", 600);
    let seed: u64 = env_or("D1SYNC_FLEET_SEED", 1);
    let peer = D1Peer::shared();
    let db = peer.database();
    let d1 = db.client();
    let files = m::load(&d1_sync_example::migrations_dir()).expect("the example migrations");
    d1_sync::migrate::migrate_d1(&d1, &files, m::DEFAULT_TABLE, false)
        .await
        .expect("migrate D1");
    peer.set_random_faults(&db, 0.2, &["429", "500", "503", "after", "after"])
        .await;

    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let children: Vec<_> = (0..devices)
        .map(|i| {
            let home = dir.path().join(format!("device-{i}"));
            std::fs::create_dir_all(&home).unwrap();
            // Clocks spread over ±10 minutes.
            let skew = if devices > 1 {
                -600_000 + 1_200_000 * i64::from(i) / i64::from(devices - 1)
            } else {
                0
            };
            let child = std::process::Command::new(env!("CARGO_BIN_EXE_fleet_device"))
                .env("D1_BASE_URL", &db.config.base_url)
                .env("D1_DATABASE_ID", &db.config.database_id)
                .env("CLOUDFLARE_ACCOUNT_ID", &db.config.account_id)
                .env("CLOUDFLARE_API_TOKEN", &db.config.api_token)
                .env("FLEET_DIR", &home)
                .env("FLEET_DEVICE", i.to_string())
                .env("FLEET_SEED", seed.to_string())
                .env("FLEET_WRITES", writes.to_string())
                .env("FLEET_SKEW_MS", skew.to_string())
                .env("RUST_LOG", "error")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start a device");
            (home, child)
        })
        .collect();
    let mut reports = Vec::new();
    let mut log: Vec<Write> = Vec::new();
    for (home, child) in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .expect("a device ran");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "a device failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("its figures");
        reports.push(report);
        let written: Vec<Write> =
            serde_json::from_slice(&std::fs::read(home.join("writes.json")).unwrap()).unwrap();
        log.extend(written);
    }
    let elapsed = started.elapsed();
    peer.set_random_faults(&db, 0.0, &[]).await;

    // D1 as it ended, and the keys it holds tombstones of.
    let mut held = BTreeMap::new();
    for (table, _) in KEYS {
        let result = d1
            .query(&[Statement::new(format!("SELECT * FROM {table}"))])
            .await
            .expect("read D1");
        let rows = result[0]["results"].as_array().cloned().unwrap_or_default();
        let by_key: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = rows
            .into_iter()
            .filter_map(|r| {
                let obj = r.as_object()?.clone();
                let key = obj.get(key_column(table))?.as_str()?.to_string();
                Some((key, obj))
            })
            .collect();
        held.insert(table.to_string(), by_key);
    }
    let result = d1
        .query(&[Statement::new(
            "SELECT table_name, json_extract(row_key, '$[0]') AS k FROM d1_sync_tombstones",
        )])
        .await
        .expect("read the tombstones");
    let tombstoned: BTreeSet<(String, String)> = result[0]["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            let quoted = r["k"].as_str()?;
            let key = quoted
                .strip_prefix('\'')?
                .strip_suffix('\'')?
                .replace("''", "'");
            Some((r["table_name"].as_str()?.to_string(), key))
        })
        .collect();

    let verdict = judge(&log, &held, &tombstoned);
    let sum = |k: &str| -> u64 { reports.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum() };
    let faults = peer.stats(&db).await;
    println!(
        "fleet: {devices} devices, {} writes over {} keys, {} superseded, {} requests ({} faults served, {} replays recognised), {} offline spells, {:.0} rows/s in aggregate over {:.1} s",
        log.len(),
        verdict.keys,
        sum("superseded"),
        faults.requests,
        faults.faults.values().sum::<u64>(),
        sum("replayed"),
        sum("offline_spells"),
        sum("synced") as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
    );
    println!(
        "fleet: D1 holds {} rows as their newest write, {} keys deleted as their newest write says, {} under a deleted parent",
        verdict.matched, verdict.deleted, verdict.under_deleted_parent
    );
    assert!(
        verdict.holds(),
        "stale overwrites: {:?}\nresurrections: {:?}\nwrong values: {:?}\nlost: {:?}",
        verdict.stale,
        verdict.resurrected,
        verdict.wrong,
        verdict.lost
    );
    assert_eq!(sum("failed"), 0, "no dead letters: {reports:?}");
    assert_eq!(sum("pending"), 0, "every record synced: {reports:?}");
    assert!(
        sum("superseded") > 0,
        "devices wrote the same keys, so some writes were stale: {reports:?}"
    );
    assert!(verdict.matched > 0 && verdict.deleted > 0, "{verdict:?}");
}
