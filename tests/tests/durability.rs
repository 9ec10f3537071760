//! A worker process killed with SIGKILL mid-drain, again and again, then restarted: nothing
//! is lost and D1 ends equal to the local rows.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use d1_sync_example::rows::Message;
use d1_sync_tests::fixture::Fixture;
use d1_sync_tests::targets::TestTarget;

fn message(i: usize) -> Message {
    d1_sync_tests::fixture::message(&format!("m{i:05}"), &format!("text {i}"), i as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_drain_loses_nothing() {
    let mut f = Fixture::new(|_| TestTarget::d1()).await;
    let db = f.target.test_db().unwrap().clone();
    // Inserts, then updates and deletes of the same rows, so order matters.
    f.write(|o, tx| {
        for i in 0..2000 {
            o.save(tx, &message(i)).unwrap();
        }
        for i in (0..2000).step_by(3) {
            let mut m = message(i);
            m.summary = Some(format!("updated {i}"));
            o.save(tx, &m).unwrap();
        }
        for i in (0..2000).step_by(7) {
            o.remove(tx, &message(i)).unwrap();
        }
    });
    let total = f.counts().pending;
    let child = env!("CARGO_BIN_EXE_sync_child");
    let base = db.config.base_url.clone();
    let spawn = |extra: &[&str]| {
        Command::new(child)
            .args([f.app_path.to_str().unwrap(), &base, &db.id])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the child worker")
    };

    let mut kills = 0;
    let mut last_synced = 0;
    for round in 0..4 {
        let mut c = spawn(&[]);
        // Let it ship some more, then kill it without warning.
        let start = Instant::now();
        loop {
            let synced = f.counts().synced;
            if synced >= last_synced + 150 || start.elapsed() > Duration::from_secs(20) {
                last_synced = synced;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.kill().expect("SIGKILL the child");
        c.wait().unwrap();
        kills += 1;
        let counts = f.counts();
        assert!(
            counts.pending > 0,
            "round {round}: the kill should land mid-drain ({counts:?})"
        );
    }
    // Restart and let it finish (claims of the killed workers come back after their lease).
    let status = spawn(&["--until-empty"]).wait().unwrap();
    assert!(status.success());
    let c = f.counts();
    assert_eq!((c.pending, c.failed), (0, 0), "after {kills} kills");
    assert!(c.synced > 0 && total > 0);
    f.assert_all_in_step().await;
}
