//! The original TypeScript worker (`bench/seed-baseline/`), run against the bench's local D1
//! so its rows/s stand beside the port's in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;

use d1_sync_tests::d1peer::D1Peer;

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seed-baseline")
}

fn work_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("seed-baseline")
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("could not run {what}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies the sources into `target/seed-baseline`, installs its packages on first use and
/// builds it. Returns the folder to run it from.
pub fn prepare() -> Result<PathBuf, String> {
    let dir = work_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let entries = std::fs::read_dir(source()).map_err(|e| format!("{e}"))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(entry.file_name()))
                .map_err(|e| format!("copy {}: {e}", path.display()))?;
        }
    }
    let installed = dir.join("node_modules/better-sqlite3/build/Release/better_sqlite3.node");
    if !installed.exists() || !dir.join("node_modules/.bin/tsc").exists() {
        eprintln!(
            "d1sync-bench: installing the original worker's npm packages into {} (first run only; better-sqlite3 compiles, about 2 minutes)",
            dir.display()
        );
        let mut npm = Command::new("npm");
        npm.args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir);
        // better-sqlite3 compiles against this node's headers when no prebuilt binary is
        // reachable; point node-gyp at them if npm has no `nodedir` of its own.
        if std::env::var_os("npm_config_nodedir").is_none() {
            if let Ok(node) = run(Command::new("sh").args(["-c", "command -v node"]), "node") {
                let prefix = Path::new(node.trim()).parent().and_then(Path::parent);
                if let Some(p) = prefix.filter(|p| p.join("include/node/node_version.h").exists()) {
                    npm.env("npm_config_nodedir", p);
                }
            }
        }
        run(&mut npm, "npm ci")?;
    }
    run(
        Command::new(dir.join("node_modules/.bin/tsc"))
            .args(["-p", "tsconfig.json"])
            .current_dir(&dir),
        "tsc",
    )?;
    Ok(dir)
}

/// Runs the original worker on `n` rows into a fresh database of `peer`: its rows/s.
pub async fn rows_per_s(dir: &Path, peer: &D1Peer, n: u64) -> Result<f64, String> {
    let db = peer.database();
    let c = &db.config;
    let base = c.base_url.trim_end_matches('/').to_string();
    let mut cmd = Command::new("node");
    cmd.arg("dist/bench.js")
        .arg(n.to_string())
        .current_dir(dir)
        .env("D1PEER_URL", base)
        .env("D1PEER_TOKEN", &c.api_token)
        .env("D1PEER_ACCOUNT_ID", &c.account_id)
        .env("D1PEER_DATABASE_ID", &c.database_id);
    let out = tokio::task::spawn_blocking(move || run(&mut cmd, "the original worker"))
        .await
        .map_err(|e| e.to_string())??;
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("rows_per_s="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no rows_per_s in its output: {out}"))
}
