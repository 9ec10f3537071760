//! The local D1 harness: Cloudflare's local D1 engine (npm `miniflare`, on Node 20) behind
//! D1's REST API shape (`d1peer/worker.js`).
//!
//! On first use it installs miniflare with npm into `target/d1peer/` (once per machine; a
//! file lock keeps parallel test binaries from racing), then starts one peer per test binary
//! on `127.0.0.1`, port 0. The peer serves 64 databases (`db0`..`db63`); each test takes its
//! own with [`D1Peer::database`], so tests run in parallel. The peer exits when the test
//! binary's end closes its standard input; [`D1Peer`]'s `Drop` also ends its process group.
//! With `D1PEER_CPUS` set (a `taskset` CPU list, e.g. `1`), the peer runs on those CPUs only.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use d1_sync::{D1Config, D1Http};

/// The miniflare release the harness installs: the last one that runs on Node 20.
pub const MINIFLARE_VERSION: &str = "4.20260426.0";
const DATABASES: usize = 64;
const TOKEN: &str = "test-token";

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn install_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"));
    target.join("d1peer")
}

fn peer_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("d1peer")
}

fn check_node() {
    let out = Command::new("node").arg("--version").output().unwrap_or_else(|e| {
        panic!("the local D1 harness needs Node.js >= 20.18.1 on PATH (`node --version` failed: {e})")
    });
    let v = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches('v')
        .to_string();
    let parts: Vec<u32> = v.split('.').filter_map(|p| p.parse().ok()).collect();
    let ok =
        matches!(parts.as_slice(), [maj, min, patch, ..] if (*maj, *min, *patch) >= (20, 18, 1));
    assert!(
        ok,
        "the local D1 harness needs Node.js >= 20.18.1, found {v:?}"
    );
}

/// Installs miniflare into `target/d1peer/node_modules` unless it is there already.
pub fn ensure_installed() -> PathBuf {
    check_node();
    let dir = install_dir();
    std::fs::create_dir_all(&dir).expect("create target/d1peer");
    let lock = std::fs::File::create(dir.join(".install.lock")).expect("create the install lock");
    lock.lock().expect("take the install lock");
    let marker = dir
        .join("node_modules")
        .join("miniflare")
        .join("package.json");
    let installed = std::fs::read_to_string(&marker)
        .map(|s| s.contains(&format!("\"version\": \"{MINIFLARE_VERSION}\"")))
        .unwrap_or(false);
    if !installed {
        std::fs::copy(peer_src().join("package.json"), dir.join("package.json"))
            .expect("copy the harness package.json");
        eprintln!(
            "d1peer: installing miniflare@{MINIFLARE_VERSION} with npm into {} (first run only)",
            dir.display()
        );
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .expect("run npm (the local D1 harness installs miniflare with it)");
        assert!(
            out.status.success() && marker.exists(),
            "npm install of miniflare failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir.join("node_modules")
}

/// A running peer.
pub struct D1Peer {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    child: Child,
    next_db: AtomicUsize,
    http: reqwest::Client,
}

/// One database of the peer, for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// `dbN`.
    pub id: String,
    /// A config that reaches it.
    pub config: D1Config,
}

impl TestDb {
    /// A D1 client for it.
    pub fn client(&self) -> D1Http {
        D1Http::new(self.config.clone()).expect("build a D1 client")
    }

    /// The same database with a wrong token.
    pub fn with_token(&self, token: &str) -> D1Config {
        let mut c = self.config.clone();
        c.api_token = token.to_string();
        c
    }
}

/// What the peer counted for one database.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct PeerStats {
    /// Requests received (faults included).
    pub requests: u64,
    /// Statements run.
    pub statements: u64,
    /// Faults served, by kind.
    #[serde(default)]
    pub faults: std::collections::BTreeMap<String, u64>,
}

impl D1Peer {
    /// Starts a peer (installing miniflare first if needed).
    pub fn start() -> D1Peer {
        let node_modules = ensure_installed();
        prune_logs(&install_dir());
        let log = install_dir().join(format!("peer-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create the peer log");
        // `D1PEER_CPUS=1`: the peer (node and the engine it starts) on those CPUs only, with
        // `taskset`; run the client under `taskset -c 0` and the two no longer share cores,
        // as a client and a remote D1 do not.
        let mut cmd = match std::env::var("D1PEER_CPUS") {
            Ok(cpus) if !cpus.is_empty() => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpus, "node"]);
                c
            }
            _ => Command::new("node"),
        };
        cmd.arg(peer_src().join("serve.mjs"))
            .env("NODE_PATH", &node_modules)
            .env("D1PEER_PORT", "0")
            .env("D1PEER_TOKEN", TOKEN)
            .env("D1PEER_DATABASES", DATABASES.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().expect("start node for the D1 peer");
        let stdout = child.stdout.take().expect("peer stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("d1peer ready at ") {
                    let _ = tx.send(url.trim_end_matches('/').to_string());
                    break;
                }
            }
            // Keep draining so the peer never blocks on a full pipe.
            for _ in lines {}
        });
        let base_url = match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the D1 peer did not start within 90 s; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        D1Peer {
            base_url,
            child,
            next_db: AtomicUsize::new(0),
            // No idle connections kept: the peer (node) closes them after 5 s, and a test may
            // ask again later from another runtime.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("an HTTP client"),
        }
    }

    /// The peer of this test binary, started on first use.
    pub fn shared() -> &'static D1Peer {
        static PEER: OnceLock<D1Peer> = OnceLock::new();
        PEER.get_or_init(D1Peer::start)
    }

    /// A database no other test of this binary uses.
    pub fn database(&self) -> TestDb {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        assert!(
            n < DATABASES,
            "this test binary uses more than {DATABASES} peer databases"
        );
        let id = format!("db{n}");
        let mut config = D1Config::new("test-account", id.clone(), TOKEN);
        config.base_url = self.base_url.clone();
        config.timeout = Duration::from_secs(10);
        // The local peer has no API budget to protect (a test that wants one sets it).
        config.request_budget = None;
        TestDb { id, config }
    }

    /// Scripts the next responses for `db`: one fault kind per request (see `worker.js`).
    pub async fn set_faults(&self, db: &TestDb, plan: &[&str]) {
        self.post_faults(db, serde_json::json!({ "plan": plan }))
            .await;
    }

    /// Serves `plan` first, then answers a share `rate` of `db`'s requests with a fault of
    /// `kinds`, at random.
    pub async fn set_plan_then_random_faults(
        &self,
        db: &TestDb,
        plan: &[&str],
        rate: f64,
        kinds: &[&str],
    ) {
        self.post_faults(
            db,
            serde_json::json!({ "plan": plan, "random": { "rate": rate, "kinds": kinds } }),
        )
        .await;
    }

    /// Answers a share `rate` of `db`'s requests with a fault of `kinds`, at random.
    pub async fn set_random_faults(&self, db: &TestDb, rate: f64, kinds: &[&str]) {
        self.post_faults(
            db,
            serde_json::json!({ "plan": [], "random": { "rate": rate, "kinds": kinds } }),
        )
        .await;
    }

    async fn post_faults(&self, db: &TestDb, body: serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/__peer/faults/{}", self.base_url, db.id))
            .json(&body)
            .send()
            .await
            .expect("reach the peer");
        assert!(
            r.status().is_success(),
            "the peer refused a fault plan: {}",
            r.status()
        );
    }

    /// What the peer counted for `db`.
    pub async fn stats(&self, db: &TestDb) -> PeerStats {
        self.http
            .get(format!("{}/__peer/stats/{}", self.base_url, db.id))
            .send()
            .await
            .expect("reach the peer")
            .json()
            .await
            .expect("peer stats")
    }
}

/// Removes the logs of peers whose test binaries have ended (each log is named after its
/// binary's process id), so `target/d1peer` does not grow by one file per test run. Where
/// there is no `/proc` to ask, logs older than a day go.
fn prune_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let proc_fs = Path::new("/proc/self").exists();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("peer-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let ended = if proc_fs {
            !Path::new("/proc").join(pid.to_string()).exists()
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(24 * 3600))
        };
        if ended && pid != std::process::id() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Drop for D1Peer {
    fn drop(&mut self) {
        // The peer leads its own process group (node and workerd): end the group. Not with
        // the `kill` command: procps-ng 4.0.2 reads `kill -TERM -<pgid>` as `kill(-1, SIGTERM)`
        // and ends every process of the user.
        #[cfg(unix)]
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            if pgid > 1 {
                // SAFETY: kill(2) takes plain integers and touches no memory of ours; a
                // negative pid names exactly the peer's process group.
                unsafe {
                    libc::kill(-pgid, libc::SIGTERM);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
