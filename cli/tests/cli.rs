//! The `d1sync` binary, run as a user runs it.

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use d1_sync_tests::d1peer::D1Peer;

fn d1sync() -> Command {
    let mut c = Command::cargo_bin("d1sync").unwrap();
    for k in [
        "CLOUDFLARE_ACCOUNT_ID",
        "CLOUDFLARE_API_TOKEN",
        "D1_DATABASE_ID",
        "D1_BASE_URL",
    ] {
        c.env_remove(k);
    }
    c
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// `d1sync push` of the app file `app`, with the schema files `schema`, to the SQLite file
/// `mirror`.
fn push_to_sqlite(app: &Path, schema: &Path, mirror: &Path) -> Command {
    let mut c = d1sync();
    c.args(["push", "--db"])
        .arg(app)
        .arg("--schema")
        .arg(schema)
        .arg("--target")
        .arg(format!("sqlite:{}", mirror.display()));
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let o: Output = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        text(&o.stdout),
        text(&o.stderr),
    )
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        vec!["generate"],
        vec!["status"],
        vec!["failed"],
        vec!["push"],
        vec!["run"],
        vec!["demo"],
        vec!["migrate"],
        vec!["capture"],
    ] {
        let (code, out, _) = run(d1sync().args(&cmd).arg("--help"));
        assert_eq!(code, 0, "{cmd:?}");
        assert!(
            out.contains("Example"),
            "{cmd:?} --help has no example:\n{out}"
        );
    }
}

#[test]
fn demo_on_a_small_workload_verifies_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let (code, out, err) = run(d1sync()
        .args(["demo", "--changes", "600", "--dir"])
        .arg(&demo));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("wrote      600 changes"), "{out}");
    // Every queued record is synced; coalescing makes them fewer than the changes.
    let queued: u64 = figure(&out, "queued     ");
    assert!(queued > 0 && queued < 600, "{out}");
    assert!(
        out.contains(&format!("synced     {queued} records")),
        "{out}"
    );
    assert!(out.contains("failed     0 records"), "{out}");
    assert!(out.contains("verified   all 7 tables equal"), "{out}");
    // It may run again in its own folder...
    let (code, out, err) = run(d1sync()
        .args(["demo", "--changes", "50", "--dir"])
        .arg(&demo));
    assert_eq!(code, 0, "{err}");
    let queued = figure(&out, "queued     ");
    // ...and the outbox it leaves can be inspected.
    let (code, out, _) = run(d1sync()
        .args(["status", "--json", "--db"])
        .arg(demo.join("app.db")));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["pending"].as_u64(), v["failed"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(v["synced"].as_u64(), Some(queued));
}

#[test]
fn demo_refuses_a_folder_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
    let (code, _, err) = run(d1sync()
        .args(["demo", "--changes", "10", "--dir"])
        .arg(dir.path()));
    assert_eq!(code, 2);
    assert!(err.contains("refusing to write into"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("precious.txt")).unwrap(),
        "keep me"
    );
}

/// `d1sync demo --target d1` against `db` of the local D1, with `extra` arguments.
fn demo_on_d1(db: &d1_sync_tests::d1peer::TestDb, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    run(d1sync()
        .args([
            "demo",
            "--target",
            "d1",
            "--d1-base-url",
            &D1Peer::shared().base_url,
        ])
        .args(extra)
        .arg("--dir")
        .arg(dir.path().join("d"))
        .env("CLOUDFLARE_ACCOUNT_ID", "test-account")
        .env("CLOUDFLARE_API_TOKEN", "test-token")
        .env("D1_DATABASE_ID", &db.id))
}

#[test]
fn demo_against_local_d1() {
    let peer = D1Peer::shared();
    let db = peer.database();
    let (code, out, err) = demo_on_d1(&db, &["--changes", "400"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("D1 database"), "{out}");
    assert!(out.contains("verified   all 7 tables equal"), "{out}");
}

/// What a new user met with the first version: a local D1 answering a fifth of its requests
/// with 429, 500, an HTML 503 or "committed, then 500", from the very first request (the one
/// creating the tables) to the last. The demo finishes, and every table is equal.
#[test]
fn demo_against_local_d1_under_a_steady_fifth_of_faults() {
    let peer = D1Peer::shared();
    let db = peer.database();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A fixed plan for the first requests (the set-up among them), so every kind is served
    // whatever the dice say; then a fifth at random for the rest of the run.
    let plan = [
        "503", "ok", "ok", "after", "ok", "500", "ok", "ok", "after", "ok", "429", "ok", "503",
        "ok", "after",
    ];
    rt.block_on(peer.set_plan_then_random_faults(
        &db,
        &plan,
        0.2,
        &["429", "500", "503", "after", "after"],
    ));
    let (code, out, err) = demo_on_d1(&db, &["--changes", "3000", "--batch-size", "100"]);
    let stats = rt.block_on(peer.stats(&db));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("failed     0 records"), "{out}");
    assert!(out.contains("verified   all 7 tables equal"), "{out}");
    let served = |k: &str| stats.faults.get(k).copied().unwrap_or(0);
    assert!(
        served("503") >= 2 && served("after") >= 3 && served("500") >= 1 && served("429") >= 1,
        "the planned faults were served: {:?}",
        stats.faults
    );
}

#[test]
fn demo_against_d1_without_credentials_names_the_missing_variables() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(d1sync()
        .args(["demo", "--target", "d1", "--dir"])
        .arg(dir.path().join("d")));
    assert_eq!(code, 2);
    assert!(
        err.contains("CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_TOKEN, D1_DATABASE_ID"),
        "{err}"
    );
    assert!(
        !dir.path().join("d").exists(),
        "nothing is created before the settings are checked"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn generate_then_check_then_a_new_migration_makes_it_stale() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("migrations");
    copy_dir(&d1_sync_example::migrations_dir(), &migrations);
    let out = dir.path().join("src/rows.rs");
    let gen = |extra: &[&str]| {
        let mut c = d1sync();
        c.current_dir(dir.path())
            .args(["generate", "--schema", "migrations", "--out", "src/rows.rs"])
            .args(extra);
        run(&mut c)
    };
    let (code, stdout, err) = gen(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("wrote src/rows.rs (7 structs)"), "{stdout}");
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .starts_with("// @generated"));
    let (code, stdout, _) = gen(&["--check"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("up to date"));

    std::fs::write(
        migrations.join("0006_add_language.sql"),
        "ALTER TABLE messages ADD COLUMN language TEXT;",
    )
    .unwrap();
    let (code, diff, err) = gen(&["--check"]);
    assert_eq!(code, 1);
    assert!(
        diff.contains("+    pub language: Option<String>,"),
        "{diff}"
    );
    assert!(
        diff.contains("-// inputs: "),
        "the hash changes too:\n{diff}"
    );
    assert!(err.contains("is stale"), "{err}");

    let (code, _, _) = gen(&[]);
    assert_eq!(code, 0);
    assert_eq!(gen(&["--check"]).0, 0);

    let (code, _, err) = gen(&["--type", "nonsense"]);
    assert_eq!(code, 2);
    assert!(err.contains("table.column=Type"), "{err}");
    let (code, _, err) = gen(&["--tables", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("no table `nope`"), "{err}");
    let missing = run(d1sync().args(["generate", "--schema", "/no/such/dir", "--out", "x.rs"]));
    assert_eq!(missing.0, 1);
    assert!(
        missing.2.contains("cannot read schema path `/no/such/dir`"),
        "{}",
        missing.2
    );
}

/// An app database with one record that can never ship and two that can.
fn app_with_a_dead_letter(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("app.db");
    let conn = d1_sync::open(&path).unwrap();
    d1_sync_example::apply_migrations(&conn).unwrap();
    let o = d1_sync::Outbox::new();
    o.enqueue_raw(
        &conn,
        "messages",
        r#"["bad"]"#,
        "upsert",
        r#"{"id":"bad","nope":1}"#,
    )
    .unwrap();
    o.enqueue_raw(
        &conn,
        "browser_request_policy_state",
        r#"["a"]"#,
        "upsert",
        r#"{"state_key":"a","value_json":"{}","updated_at":1}"#,
    )
    .unwrap();
    o.enqueue_raw(
        &conn,
        "browser_request_policy_state",
        r#"["b"]"#,
        "upsert",
        r#"{"state_key":"b","value_json":"[]","updated_at":2}"#,
    )
    .unwrap();
    path
}

#[test]
fn push_status_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_a_dead_letter(dir.path());
    let mirror = dir.path().join("mirror.db");
    let conn = d1_sync::rusqlite::Connection::open(&mirror).unwrap();
    d1_sync_example::apply_migrations(&conn).unwrap();
    drop(conn);
    let schema = d1_sync_example::migrations_dir();

    let (code, out, err) = run(&mut push_to_sqlite(&app, &schema, &mirror));
    assert_eq!(code, 1, "a dead letter makes push fail:\n{out}\n{err}");
    assert!(out.contains("pushed 2 rows"), "{out}");
    assert!(err.contains("1 record(s) failed"), "{err}");

    let (code, out, _) = run(d1sync().args(["status", "--db"]).arg(&app));
    assert_eq!(code, 0);
    assert!(out.contains("failed      1"), "{out}");
    assert!(
        out.contains("last error: `nope` is not a column of table `messages`"),
        "{out}"
    );

    let (code, out, _) = run(d1sync().args(["failed", "list", "--db"]).arg(&app));
    assert_eq!(code, 0);
    assert!(out.contains("`nope` is not a column"), "{out}");
    let (_, json, _) = run(d1sync()
        .args(["failed", "list", "--json", "--db"])
        .arg(&app));
    let dead: serde_json::Value = serde_json::from_str(&json).unwrap();
    let id = dead[0]["id"].as_i64().unwrap();

    let (code, out, _) = run(d1sync()
        .args(["failed", "retry", "--id", &id.to_string(), "--db"])
        .arg(&app));
    assert_eq!((code, out.trim()), (0, "retried 1 dead letter"));
    let (code, _, err) = run(d1sync()
        .args(["failed", "retry", "--id", "999999", "--db"])
        .arg(&app));
    assert_eq!(code, 1);
    assert!(err.contains("no dead letter with id 999999"), "{err}");
    let (code, _, err) = run(d1sync().args(["failed", "drop", "--db"]).arg(&app));
    assert_eq!(code, 2, "--id or --all is required: {err}");

    // Retried, it fails again on the next push; then it is dropped for good.
    assert_eq!(run(&mut push_to_sqlite(&app, &schema, &mirror)).0, 1);
    let (code, out, _) = run(d1sync().args(["failed", "drop", "--all", "--db"]).arg(&app));
    assert_eq!((code, out.trim()), (0, "dropped 1 dead letter"));
    let (code, out, _) = run(d1sync().args(["failed", "list", "--db"]).arg(&app));
    assert_eq!((code, out.trim()), (0, "no dead letters"));
}

#[test]
fn push_to_local_d1_and_the_errors_of_a_bad_token_and_an_unreachable_d1() {
    let peer = D1Peer::shared();
    let db = peer.database();
    let dir = tempfile::tempdir().unwrap();
    let app = app_with_a_dead_letter(dir.path());
    d1_sync::rusqlite::Connection::open(&app)
        .unwrap()
        .execute(
            "DELETE FROM d1_sync_queue WHERE table_name = 'messages'",
            [],
        )
        .unwrap();
    let schema = d1_sync_example::migrations_dir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t =
            d1_sync_tests::targets::TestTarget::D1(std::sync::Arc::new(db.client()), db.clone());
        t.apply_schema(&schema).await;
    });
    let push = |token: &str, url: &str| {
        let mut c = d1sync();
        c.args([
            "push",
            "--target",
            "d1",
            "--give-up-after",
            "1",
            "--d1-base-url",
            url,
            "--db",
        ])
        .arg(&app)
        .arg("--schema")
        .arg(&schema)
        .env("CLOUDFLARE_ACCOUNT_ID", "test-account")
        .env("CLOUDFLARE_API_TOKEN", token)
        .env("D1_DATABASE_ID", &db.id);
        run(&mut c)
    };
    let (code, _, err) = push("wrong-token", &peer.base_url);
    assert_eq!(code, 1);
    assert!(
        err.contains("the worker paused, sending nothing") && err.contains("Authentication error"),
        "{err}"
    );

    let (code, _, err) = push("test-token", "http://127.0.0.1:9");
    assert_eq!(code, 1);
    assert!(
        err.contains("gave up after 1 s without progress") && err.contains("cannot connect"),
        "{err}"
    );

    let (code, out, err) = push("test-token", &peer.base_url);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("pushed 2 rows to D1 database"), "{out}");
}

#[test]
fn clear_errors_for_bad_databases_and_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(d1sync()
        .args(["status", "--db"])
        .arg(dir.path().join("missing.db")));
    assert_eq!(code, 2);
    assert!(err.starts_with("d1sync: error: no database at"), "{err}");
    assert!(err.contains("with `d1_sync::open`"), "{err}");
    assert!(
        !dir.path().join("missing.db").exists(),
        "status must not create a database"
    );
    // `migrate --local` says the same, and creates nothing either.
    let (code, _, err) = run(d1sync()
        .args(["migrate", "--local", "--schema"])
        .arg(d1_sync_example::migrations_dir())
        .arg("--db")
        .arg(dir.path().join("missing.db")));
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("d1sync: error: no database at"), "{err}");
    assert!(!dir.path().join("missing.db").exists());

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();
    let (code, _, err) = run(d1sync().args(["status", "--db"]).arg(&junk));
    assert_eq!(code, 1);
    assert!(err.contains("is not an SQLite database"), "{err}");
    // So does `migrate --local` (it said "cannot open" or failed on the first statement).
    let (code, _, err) = run(d1sync()
        .args(["migrate", "--local", "--schema"])
        .arg(d1_sync_example::migrations_dir())
        .arg("--db")
        .arg(&junk));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not an SQLite database"), "{err}");

    let plain = dir.path().join("plain.db");
    d1_sync::rusqlite::Connection::open(&plain)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let (code, _, err) = run(d1sync().args(["failed", "list", "--db"]).arg(&plain));
    assert_eq!(code, 1);
    assert!(err.contains("has no outbox table `d1_sync_queue`"), "{err}");

    let newer = dir.path().join("newer.db");
    let conn = d1_sync::open(&newer).unwrap();
    conn.execute("UPDATE d1_sync_meta SET value = 7", [])
        .unwrap();
    drop(conn);
    let (code, _, err) = run(d1sync().args(["status", "--db"]).arg(&newer));
    assert_eq!(code, 1);
    assert!(err.contains("newer than this d1-sync understands"), "{err}");
    let (code, _, err) = run(d1sync()
        .args(["push", "--target", "sqlite:x.db", "--db"])
        .arg(&newer));
    assert_eq!(code, 1, "{err}");

    let (code, _, err) = run(d1sync().args(["push", "--db", "x.db", "--target", "postgres"]));
    assert_eq!(code, 2);
    assert!(err.contains("use `d1` or `sqlite:PATH`"), "{err}");
}

/// A project folder: the example migrations (with `extra` files) and a wrangler
/// configuration file `config_name` holding `config`.
fn project(config_name: &str, config: &str, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("db/migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    for f in std::fs::read_dir(d1_sync_example::migrations_dir()).unwrap() {
        let p = f.unwrap().path();
        std::fs::copy(&p, migrations.join(p.file_name().unwrap())).unwrap();
    }
    for (name, sql) in extra {
        std::fs::write(migrations.join(name), sql).unwrap();
    }
    std::fs::write(dir.path().join(config_name), config).unwrap();
    dir
}

/// `d1sync` in `dir`, with the credentials of the local D1 and nothing else.
fn in_project(dir: &Path) -> Command {
    let mut c = d1sync();
    c.current_dir(dir)
        .env("CLOUDFLARE_ACCOUNT_ID", "test-account")
        .env("CLOUDFLARE_API_TOKEN", "test-token")
        .env("D1_BASE_URL", &D1Peer::shared().base_url);
    c
}

fn d1_names(db: &d1_sync_tests::d1peer::TestDb) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(d1_sync::migrate::recorded_d1(&db.client(), "d1_migrations"))
        .unwrap()
        .names
}

/// wrangler.jsonc, a wrangler-written `d1_migrations` on D1, migrate twice, then list.
#[test]
fn migrate_continues_where_wrangler_left_off_and_a_second_run_does_nothing() {
    let db = D1Peer::shared().database();
    let dir = project(
        "wrangler.jsonc",
        &format!(
            r#"{{
              // the project
              "name": "app",
              "d1_databases": [
                {{ "binding": "DB", "database_name": "app", "database_id": "{}", "migrations_dir": "db/migrations", }},
              ],
            }}"#,
            db.id
        ),
        &[],
    );
    // What `wrangler d1 migrations apply` leaves after the first file: its table, the file's
    // effects, and its row.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first =
        std::fs::read_to_string(dir.path().join("db/migrations/0001_messages.sql")).unwrap();
    let wrangler = format!(
        "CREATE TABLE IF NOT EXISTS d1_migrations(\n  id INTEGER PRIMARY KEY AUTOINCREMENT,\n  name TEXT UNIQUE,\n  applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL\n);\n{first}\nINSERT INTO d1_migrations (name) values ('0001_messages.sql');"
    );
    rt.block_on(
        db.client()
            .query(&[d1_sync::target::Statement::new(wrangler)]),
    )
    .unwrap();

    let (code, out, err) = run(in_project(dir.path()).args(["migrate", "--dry-run"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("D1: would apply 0002_sessions.sql"), "{out}");
    assert!(!out.contains("0001_messages.sql"), "{out}");
    assert_eq!(
        d1_names(&db),
        ["0001_messages.sql"],
        "a dry run applies nothing"
    );

    let (code, out, err) = run(in_project(dir.path()).arg("migrate"));
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.matches("D1: applied").count(), 6, "{out}");
    assert_eq!(
        d1_names(&db),
        [
            "0001_messages.sql",
            "0002_sessions.sql",
            "0003_conversations.sql",
            "0004_policy_state.sql",
            "0005_message_organization.sql",
            "0006_versions.sql",
            "0007_foreign_key_indexes.sql"
        ]
    );
    let (code, out, _) = run(in_project(dir.path()).arg("migrate"));
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "D1: no migrations to apply (7 applied)");

    // The app's file, from the same folder.
    let app = dir.path().join("app.db");
    drop(d1_sync::open(&app).unwrap());
    let (code, out, err) = run(in_project(dir.path())
        .args(["migrate", "--local", "--db"])
        .arg(&app));
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.matches("applied").count(), 7, "{out}");
    let (code, out, err) = run(in_project(dir.path())
        .args(["migrate", "list", "--db"])
        .arg(&app));
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("applied   applied"))
            .count(),
        7,
        "{out}"
    );
}

/// wrangler.toml with an environment; a migration D1 refuses; files that changed or vanished.
#[test]
fn migrate_reads_toml_environments_and_refuses_what_it_cannot_apply() {
    let (main, staging) = (D1Peer::shared().database(), D1Peer::shared().database());
    let config = format!(
        r#"
        name = "app"
        [[d1_databases]]
        binding = "DB"
        database_id = "{}"
        migrations_dir = "db/migrations"

        [env.staging]
        [[env.staging.d1_databases]]
        binding = "DB"
        database_id = "{}"
        migrations_dir = "db/migrations"
        "#,
        main.id, staging.id
    );
    let dir = project(
        "wrangler.toml",
        &config,
        &[(
            "0006_seed.sql",
            "CREATE TABLE seeds (id INTEGER PRIMARY KEY); INSERT INTO seeds VALUES (1);",
        )],
    );
    let (code, out, err) = run(in_project(dir.path()).args(["migrate", "--env", "staging"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(d1_names(&staging).len(), 8);
    assert!(
        d1_names(&main).is_empty(),
        "the environment does not touch the top level"
    );

    // D1 already has a table the next migration creates: it fails, and nothing of it stays.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(main.client().query(&[d1_sync::target::Statement::new(
        "CREATE TABLE seeds (x TEXT)",
    )]))
    .unwrap();
    let (code, out, err) = run(in_project(dir.path()).arg("migrate"));
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("migration `0006_seed.sql` failed on D1") && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(
        d1_names(&main).len(),
        5,
        "the failing migration is not recorded"
    );

    // A changed file is a warning; a recorded file missing from the folder is an error.
    std::fs::write(
        dir.path()
            .join("db/migrations/0005_message_organization.sql"),
        "-- edited after it was applied\n",
    )
    .unwrap();
    let (code, _, err) = run(in_project(dir.path()).args(["migrate", "--env", "staging"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: `0005_message_organization.sql` changed after it was applied"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("db/migrations/0006_seed.sql")).unwrap();
    let (code, _, err) = run(in_project(dir.path()).args(["migrate", "--env", "staging"]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("D1 records migration(s) 0006_seed.sql that the migrations folder lacks"),
        "{err}"
    );

    // Bad configuration: one clear line each, exit 2.
    for (args, says) in [
        (
            vec!["migrate", "--binding", "NOPE"],
            "no D1 database with binding or name `NOPE` (it has: DB)",
        ),
        (
            vec!["migrate", "--env", "prod"],
            "has no environment `prod`",
        ),
    ] {
        let (code, _, err) = run(in_project(dir.path()).args(&args));
        assert_eq!((code, err.lines().count()), (2, 1), "{err}");
        assert!(err.contains(says), "{err}");
    }
    std::fs::write(
        dir.path().join("wrangler.toml"),
        "[[d1_databases]\nbinding =",
    )
    .unwrap();
    let (code, _, err) = run(in_project(dir.path()).arg("migrate"));
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
    assert!(err.contains("`wrangler.toml` is not valid TOML"), "{err}");
}

/// `push` and `generate` take the database and the migrations folder from the project's
/// configuration: only the account and the token come from the environment.
#[test]
fn push_and_generate_read_the_project_configuration() {
    let db = D1Peer::shared().database();
    let dir = project(
        "wrangler.toml",
        &format!(
            "[[d1_databases]]\nbinding = \"DB\"\ndatabase_id = \"{}\"\nmigrations_dir = \"db/migrations\"\n",
            db.id
        ),
        &[],
    );
    let (code, out, err) = run(in_project(dir.path()).args(["generate", "--out", "rows.rs"]));
    assert_eq!(code, 0, "{out}\n{err}");
    let rows = std::fs::read_to_string(dir.path().join("rows.rs")).unwrap();
    assert!(rows.contains(r#"schema = "db/migrations""#), "{rows}");

    let (code, out, err) = run(in_project(dir.path()).arg("migrate"));
    assert_eq!(code, 0, "{out}\n{err}");
    let app = dir.path().join("app.db");
    let queued = {
        let mut conn = d1_sync::open(&app).unwrap();
        d1_sync::migrate(&conn, dir.path().join("db/migrations")).unwrap();
        d1_sync_example::workload::write(&mut conn, &d1_sync::Outbox::new(), 300, 3, 100, |_| {})
            .unwrap();
        d1_sync::Outbox::new().counts(&conn).unwrap().pending
    };
    assert!(queued > 0 && queued <= 300);
    let (code, out, err) = run(in_project(dir.path())
        .args(["push", "--target", "d1", "--db"])
        .arg(&app));
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, _) = run(d1sync()
        .current_dir(dir.path())
        .args(["status", "--json", "--db"])
        .arg(&app));
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["pending"], 0, "{out}");
    assert_eq!(status["synced"], queued, "{out}");
    // Without the token, the error names what is missing and where the database came from.
    let (code, _, err) = run(d1sync()
        .current_dir(dir.path())
        .args(["push", "--target", "d1", "--db"])
        .arg(&app));
    assert_eq!(code, 2);
    assert!(
        err.contains("CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_API_TOKEN")
            && !err.contains("D1_DATABASE_ID"),
        "{err}"
    );
}

/// Logging follows RUST_LOG on every command, and `--log-format json` writes a JSON object a
/// line.
#[test]
fn logs_follow_rust_log_and_can_be_json() {
    let dir = project("wrangler.toml", "name = \"app\"\n", &[]);
    let app = dir.path().join("app.db");
    drop(d1_sync::open(&app).unwrap());
    let (code, _, err) = run(d1sync()
        .current_dir(dir.path())
        .env("RUST_LOG", "d1_sync=info")
        .args([
            "--log-format",
            "json",
            "migrate",
            "--local",
            "--schema",
            "db/migrations",
            "--db",
        ])
        .arg(&app));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 7, "{err}");
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[0]["fields"]["migration"], "0001_messages.sql");
    // Without RUST_LOG, only warnings and errors: nothing here.
    let (code, _, err) = run(d1sync()
        .current_dir(dir.path())
        .args(["migrate", "--local", "--schema", "db/migrations", "--db"])
        .arg(&app));
    assert_eq!((code, err.as_str()), (0, ""));
}

/// Records carry the definition of their table they were queued under: `push` applies them
/// with it (here an insert-only column the CLI could not guess), and refuses, sending
/// nothing, when told otherwise.
#[test]
fn push_applies_records_with_the_definition_they_were_queued_under() {
    #[derive(d1_sync::D1Sync)]
    #[d1(table = "notes")]
    struct Note {
        #[d1(primary_key)]
        id: i64,
        body: String,
        #[d1(insert_only)]
        first_seen: i64,
    }
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("migrations");
    std::fs::create_dir(&schema).unwrap();
    let ddl = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, first_seen INTEGER NOT NULL);";
    std::fs::write(schema.join("0001_notes.sql"), ddl).unwrap();
    let (app, mirror) = (dir.path().join("app.db"), dir.path().join("mirror.db"));
    let mut conn = d1_sync::open(&app).unwrap();
    conn.execute_batch(ddl).unwrap();
    let m = d1_sync::rusqlite::Connection::open(&mirror).unwrap();
    m.execute_batch(ddl).unwrap();
    let save = |conn: &mut d1_sync::rusqlite::Connection, body: &str, first_seen: i64| {
        let tx = conn.transaction().unwrap();
        let note = Note {
            id: 1,
            body: body.into(),
            first_seen,
        };
        d1_sync::Outbox::new().save(&tx, &note).unwrap();
        tx.commit().unwrap();
    };
    let push = |extra: &[&str]| run(push_to_sqlite(&app, &schema, &mirror).args(extra));
    let in_mirror = || -> (String, i64) {
        m.query_row("SELECT body, first_seen FROM notes WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    };

    save(&mut conn, "first", 10);
    save(&mut conn, "second", 20);
    let (code, out, err) = push(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        in_mirror(),
        ("second".to_string(), 10),
        "first_seen is kept"
    );

    save(&mut conn, "third", 30);
    let (code, out, err) = push(&["--insert-only", "body"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("the worker paused, sending nothing")
            && err.contains("table `notes`: insert-only columns: the queued records have first_seen, this registry has body"),
        "{err}"
    );
    assert_eq!(in_mirror(), ("second".to_string(), 10), "nothing was sent");
    let (code, out, _) = run(d1sync().args(["status", "--db"]).arg(&app));
    assert!(
        code == 0 && out.contains("failed      0"),
        "nothing dead-lettered: {out}"
    );

    let (code, out, err) = push(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(in_mirror(), ("third".to_string(), 10));
}

/// `capture` makes raw SQL writes by any tool reach the target; `--remove` stops it.
#[test]
fn capture_queues_raw_writes_that_push_then_sends() {
    let dir = tempfile::tempdir().unwrap();
    let (app, mirror) = (dir.path().join("app.db"), dir.path().join("mirror.db"));
    let conn = d1_sync::rusqlite::Connection::open(&app).unwrap();
    d1_sync_example::apply_migrations(&conn).unwrap();
    let m = d1_sync::rusqlite::Connection::open(&mirror).unwrap();
    d1_sync_example::apply_migrations(&m).unwrap();
    let schema = d1_sync_example::migrations_dir();
    let capture = |extra: &[&str]| {
        run(d1sync()
            .args(["capture", "--db"])
            .arg(&app)
            .arg("--schema")
            .arg(&schema)
            .args(extra))
    };
    let (code, out, err) = capture(&["--insert-only", "created_at"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("capturing writes to 7 table(s)"), "{out}");
    let (_, out, _) = run(d1sync().args(["status", "--db"]).arg(&app));
    assert!(
        out.contains(
            "capture: raw SQL writes to browser_request_policy_state, conversation_links,"
        ),
        "{out}"
    );
    let (code, _, err) = capture(&["--tables", "nope"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no table `nope`"), "{err}");

    // A migration tool rebuilds a table (SQLite's way to change a column): its triggers go
    // with it, `status` says so, and the next worker (here `push`'s) makes them again.
    conn.execute_batch(
        "CREATE TABLE policy_new (state_key TEXT PRIMARY KEY NOT NULL, value_json TEXT NOT NULL,
           updated_at INTEGER NOT NULL, version INTEGER NOT NULL DEFAULT 0);
         INSERT INTO policy_new SELECT state_key, value_json, updated_at, version FROM browser_request_policy_state;
         DROP TABLE browser_request_policy_state;
         ALTER TABLE policy_new RENAME TO browser_request_policy_state;",
    )
    .unwrap();
    let (_, out, _) = run(d1sync().args(["status", "--db"]).arg(&app));
    assert!(
        out.contains("capture lost: browser_request_policy_state (the triggers went"),
        "{out}"
    );
    let (code, out, err) = run(&mut push_to_sqlite(&app, &schema, &mirror));
    assert_eq!(code, 0, "{out}\n{err}");
    let (_, out, _) = run(d1sync().args(["status", "--db"]).arg(&app));
    assert!(!out.contains("capture lost"), "{out}");

    // Another tool writes with plain SQL.
    conn.execute_batch(
        "INSERT INTO browser_request_policy_state VALUES ('a', '{}', 1, 1);
         INSERT INTO browser_request_policy_state VALUES ('b', '[]', 2, 1);
         UPDATE browser_request_policy_state SET value_json = '{\"x\":1}', version = version + 1 WHERE state_key = 'a';
         DELETE FROM browser_request_policy_state WHERE state_key = 'b';",
    )
    .unwrap();
    let (code, out, err) = run(&mut push_to_sqlite(&app, &schema, &mirror));
    assert_eq!(code, 0, "{out}\n{err}");
    // Four writes, two rows: the update of `a` coalesced into its insert, the delete of `b`
    // replaced its insert.
    assert!(out.contains("pushed 2 rows"), "{out}");
    let rows: Vec<(String, String)> = m
        .prepare("SELECT state_key, value_json FROM browser_request_policy_state")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [("a".to_string(), "{\"x\":1}".to_string())]);

    let (code, out, _) = capture(&["--remove"]);
    assert!(code == 0 && out.contains("no longer capturing"), "{out}");
    conn.execute(
        "INSERT INTO browser_request_policy_state VALUES ('c', '{}', 3, 1)",
        [],
    )
    .unwrap();
    let (_, out, _) = run(d1sync().args(["status", "--db"]).arg(&app));
    assert!(
        out.contains("pending     0") && out.contains("capture: off"),
        "{out}"
    );

    // A migration adds a column the schema's structs do not write: `status` says the capture
    // no longer fits.
    let (code, out, err) = capture(&["--insert-only", "created_at"]);
    assert_eq!(code, 0, "{out}\n{err}");
    conn.execute_batch("ALTER TABLE sessions ADD COLUMN mood TEXT")
        .unwrap();
    let (_, out, _) = run(d1sync().args(["status", "--db"]).arg(&app));
    assert!(
        out.contains("capture incomplete: sessions: the whitelist lacks its column(s) mood"),
        "{out}"
    );
}

/// The number after `label` in `out`.
fn figure(out: &str, label: &str) -> u64 {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(label.trim_start()))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` figure in:\n{out}"))
}

/// Two devices' writes of one row: the older one pushed last is superseded, not failed, and
/// the operator sees it in `status` and `conflicts list`.
#[test]
fn a_stale_write_is_superseded_and_listed_as_a_conflict() {
    use d1_sync::{Outbox, SyncRow};
    let dir = tempfile::tempdir().unwrap();
    let schema = d1_sync_example::migrations_dir();
    let (app, mirror) = (dir.path().join("app.db"), dir.path().join("mirror.db"));
    let row = |text: &str, version: i64| d1_sync_example::rows::Message {
        id: "m1".into(),
        platform: "web".into(),
        conversation_id: None,
        role: "user".into(),
        raw_text: Some(text.into()),
        summary: None,
        observed_at: 1,
        static_path: None,
        page_url: None,
        page_title: None,
        created_at: 1,
        organization_id: None,
        version,
    };
    // The other device already put version 9 in the mirror.
    let other = d1_sync::open(&mirror).unwrap();
    d1_sync_example::apply_migrations(&other).unwrap();
    other
        .execute(
            d1_sync_example::rows::Message::UPSERT_SQL,
            d1_sync::rusqlite::params_from_iter(row("newer, elsewhere", 9).values()),
        )
        .unwrap();
    drop(other);
    let mut conn = d1_sync::open(&app).unwrap();
    d1_sync_example::apply_migrations(&conn).unwrap();
    let tx = conn.transaction().unwrap();
    Outbox::new().save(&tx, &row("older, here", 5)).unwrap();
    tx.commit().unwrap();

    let (code, out, err) = run(&mut push_to_sqlite(&app, &schema, &mirror));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("pushed 1 rows") && out.contains("1 superseded by newer versions in D1"),
        "{out}"
    );
    let (code, out, _) = run(d1sync().args(["status", "--db"]).arg(&app));
    assert_eq!(code, 0);
    assert!(out.contains("failed      0"), "{out}");
    assert!(out.contains("superseded  1"), "{out}");
    let (code, out, _) = run(d1sync().args(["conflicts", "list", "--db"]).arg(&app));
    assert_eq!(code, 0);
    let line = out.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[1..],
        ["messages", "upsert", "[\"m1\"]", "5", "9", "newer", "version"],
        "{out}"
    );
    let (_, out, _) = run(d1sync()
        .args(["conflicts", "list", "--json", "--db"])
        .arg(&app));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["held_version"], 9, "{out}");
    let mirror = d1_sync::open(dir.path().join("mirror.db")).unwrap();
    let text: String = mirror
        .query_row("SELECT raw_text FROM messages WHERE id = 'm1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(text, "newer, elsewhere", "the newer write stays");
}

/// `d1sync tombstones prune` forgets old deletes and keeps recent ones, on a SQLite target and
/// on D1, and says so; a target that never had a versioned delete has nothing to prune.
#[test]
fn tombstones_older_than_the_horizon_are_pruned() {
    let seed = [
        d1_sync::schema::guard::create_tombstones_sql(),
        "INSERT INTO d1_sync_tombstones VALUES
           ('messages', '[''old'']', 5, unixepoch() - 100 * 86400),
           ('messages', '[''new'']', 9, unixepoch() - 86400)"
            .to_string(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror.db");
    let conn = d1_sync::rusqlite::Connection::open(&mirror).unwrap();
    for s in &seed {
        conn.execute_batch(s).unwrap();
    }
    drop(conn);
    let prune = |target: &str| {
        let mut c = d1sync();
        c.args([
            "tombstones",
            "prune",
            "--older-than-days",
            "30",
            "--target",
            target,
        ]);
        c
    };
    let (code, out, err) = run(&mut prune(&format!("sqlite:{}", mirror.display())));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "pruned 1 tombstones older than 30 days; 1 kept");
    let (_, out, _) = run(&mut prune(&format!("sqlite:{}", mirror.display())));
    assert_eq!(out.trim(), "pruned 0 tombstones older than 30 days; 1 kept");

    let db = D1Peer::shared().database();
    let with_db = |c: &mut Command| {
        c.env("CLOUDFLARE_ACCOUNT_ID", &db.config.account_id)
            .env("CLOUDFLARE_API_TOKEN", &db.config.api_token)
            .env("D1_DATABASE_ID", &db.id)
            .env("D1_BASE_URL", &db.config.base_url);
    };
    let mut fresh = prune("d1");
    with_db(&mut fresh);
    let (code, out, err) = run(&mut fresh);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "pruned 0 tombstones older than 30 days; 0 kept");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let statements: Vec<d1_sync::target::Statement> = seed
        .iter()
        .map(|s| d1_sync::target::Statement::new(s.as_str()))
        .collect();
    rt.block_on(db.client().query(&statements)).unwrap();
    let mut c = prune("d1");
    with_db(&mut c);
    let (code, out, err) = run(&mut c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "pruned 1 tombstones older than 30 days; 1 kept");
}

/// A new app file at `app` with the example's tables, captured by `d1sync capture
/// --insert-only created_at` and `extra`.
fn captured_new_app(app: &std::path::Path, extra: &[&str]) -> d1_sync::rusqlite::Connection {
    let conn = d1_sync::rusqlite::Connection::open(app).unwrap();
    d1_sync_example::apply_migrations(&conn).unwrap();
    let (code, out, err) = run(d1sync()
        .args(["capture", "--db"])
        .arg(app)
        .arg("--schema")
        .arg(d1_sync_example::migrations_dir())
        .args(["--insert-only", "created_at"])
        .args(extra));
    assert_eq!(code, 0, "{out}\n{err}");
    conn
}

/// `d1sync capture` on a new app file describes each table as the generated structs do
/// (`examples/src/rows.rs`, from `d1sync generate`): the same definition, version column
/// included. So a captured raw write of a versioned table carries its version, and a typed
/// write of the struct leans on the trigger instead of queueing a second record.
#[test]
fn capture_describes_the_tables_as_the_generated_structs_do() {
    let dir = tempfile::tempdir().unwrap();
    let conn = captured_new_app(&dir.path().join("app.db"), &[]);
    let registry = d1_sync_example::rows::registry();
    let mut checked = 0;
    for name in registry.names() {
        let def = registry.get(name).unwrap();
        let prefix = format!(
            "{}{:016x}_",
            d1_sync::schema::capture::trigger_prefix(d1_sync::Outbox::DEFAULT_TABLE, name),
            def.definition_id()
        );
        let triggers: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?1
                 AND substr(name, 1, length(?2)) = ?2",
                [name, prefix.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(triggers, 3, "{name}: captured under {}", def.definition());
        checked += 1;
    }
    assert_eq!(checked, 7);

    // `--no-version` on another new file: captured without one.
    let conn = captured_new_app(
        &dir.path().join("other.db"),
        &["--no-version", "--tables", "messages"],
    );
    let stored = d1_sync::Outbox::new().definitions(&conn).unwrap();
    assert!(
        stored
            .iter()
            .any(|d| d.name == "messages" && d.version.is_none()),
        "{stored:?}"
    );
}
