//! An application database with the example tables and an outbox, a target, and a worker
//! between them — what most runtime tests start from.

use std::path::PathBuf;
use std::time::Duration;

use d1_sync::rusqlite::Connection;
use d1_sync::{Backoff, Outbox, Registry, SyncWorker, TableDef, WorkerBuilder};

use crate::targets::TestTarget;

/// Backoff fast enough for tests.
pub fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        floor: Duration::from_millis(5),
    }
}

/// A version above every one this process gave before: the example's tables are versioned
/// (`#[d1(version)]`), so each write of a row carries a newer one.
pub fn next_version() -> i64 {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A `messages` row with some unicode and quotes in it, at a new version.
pub fn message(id: &str, text: &str, created_at: i64) -> d1_sync_example::rows::Message {
    d1_sync_example::rows::Message {
        id: id.to_string(),
        platform: "web".into(),
        conversation_id: Some("c1".into()),
        role: "user".into(),
        raw_text: Some(text.to_string()),
        summary: None,
        observed_at: 1_700_000_000_000,
        static_path: None,
        page_url: None,
        page_title: Some("Ünïcödé \"t\" 'q'".into()),
        created_at,
        organization_id: None,
        version: next_version(),
    }
}

/// A `local_conversations` row, at a new version.
pub fn conversation(id: &str) -> d1_sync_example::rows::LocalConversation {
    d1_sync_example::rows::LocalConversation {
        version: next_version(),
        local_conversation_id: id.into(),
        platform: "web".into(),
        automation_status: "active".into(),
        last_non_paused_automation_status: None,
        pause_reason: None,
        last_error: None,
        execution_state: "idle".into(),
        consecutive_failure_count: 0,
        repeated_message_count: 0,
        repeated_renewal_count: 0,
        last_message_fingerprint: None,
        last_renewal_fingerprint: None,
        title: Some("a conversation".into()),
        summary: None,
        last_message_id: None,
        last_message_at: None,
        cooldown_until: None,
        paused_at: None,
        created_at: 1,
        updated_at: 1,
    }
}

/// A `conversation_links` row of `conversation`, created at 2, at a new version.
pub fn link(id: &str, conversation: &str) -> d1_sync_example::rows::ConversationLink {
    d1_sync_example::rows::ConversationLink {
        version: next_version(),
        link_id: id.into(),
        local_conversation_id: conversation.into(),
        platform: "web".into(),
        remote_conversation_id: None,
        client_id: None,
        page_url: Some("https://example.com/c/1".into()),
        page_title: None,
        route_path: None,
        route_pattern: None,
        route_params: None,
        target_kind: None,
        target_id: None,
        target_payload: None,
        is_active: true,
        observed_at: None,
        created_at: 2,
        updated_at: 2,
    }
}

/// The example tables plus `schemas/values.sql`'s.
pub fn registry() -> Registry {
    let mut r = d1_sync_example::registry();
    r.register::<Val>();
    r.register::<Person>();
    r
}

/// A row of `vals`: any value in `v`.
#[derive(Debug, Clone, PartialEq, d1_sync::D1Sync)]
#[d1(table = "vals", schema = "schemas/values.sql")]
pub struct Val {
    /// Key.
    #[d1(primary_key)]
    pub id: i64,
    /// What the value is.
    pub note: Option<String>,
    /// The value.
    pub v: d1_sync::Value,
}

/// A row of `people` (UNIQUE email).
#[derive(Debug, Clone, PartialEq, d1_sync::D1Sync)]
#[d1(table = "people", schema = "schemas/values.sql")]
pub struct Person {
    /// Key.
    #[d1(primary_key)]
    pub id: i64,
    /// Unique.
    pub email: String,
    /// Name.
    pub name: Option<String>,
}

/// The application side of a test.
pub struct Fixture {
    /// Keeps the files.
    pub dir: tempfile::TempDir,
    /// The application database file.
    pub app_path: PathBuf,
    /// The application's connection.
    pub app: Connection,
    /// The outbox.
    pub outbox: Outbox,
    /// The target.
    pub target: TestTarget,
}

fn schema_paths() -> [PathBuf; 2] {
    [
        d1_sync_example::migrations_dir(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/values.sql"),
    ]
}

impl Fixture {
    /// A fresh app database and `target`, both with every test table.
    pub async fn new(make_target: impl FnOnce(&std::path::Path) -> TestTarget) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let app_path = dir.path().join("app.db");
        let app = d1_sync::open(&app_path).expect("open the app database");
        let target = make_target(dir.path());
        for p in schema_paths() {
            let schema = d1_sync::schema::load_schema(&p).expect("load the schema");
            for ddl in &schema.ddl {
                app.execute_batch(ddl).expect("create the app schema");
            }
            target.apply_schema(&p).await;
        }
        Fixture {
            dir,
            app_path,
            app,
            outbox: Outbox::new(),
            target,
        }
    }

    /// A worker builder over this fixture with test-friendly timings.
    pub fn worker(&self) -> WorkerBuilder {
        SyncWorker::builder(&self.app_path, self.target.shared())
            .registry(registry())
            .poll_interval(Duration::from_millis(50))
            .backoff(fast_backoff())
            .pause(Duration::from_millis(300))
            .lease(Duration::from_secs(5))
            .shutdown_timeout(Duration::from_secs(2))
    }

    /// Runs `f` in one transaction of the app database.
    pub fn write<R>(
        &mut self,
        f: impl FnOnce(&Outbox, &d1_sync::rusqlite::Transaction<'_>) -> R,
    ) -> R {
        let tx = self.app.transaction().expect("begin");
        let out = f(&self.outbox, &tx);
        tx.commit().expect("commit");
        out
    }

    /// Asserts the target holds exactly the app's rows in `table`.
    pub async fn assert_in_step(&self, table: &TableDef) {
        let local = d1_sync::verify::dump_local(&self.app, table).expect("dump local");
        let remote = self.target.dump(table).await;
        assert_eq!(
            remote, local,
            "table `{}` differs between target and app",
            table.name
        );
    }

    /// Asserts every registered table is in step (`d1_sync::verify::compare`, as the demo
    /// checks).
    pub async fn assert_all_in_step(&self) {
        let compared = d1_sync::verify::compare(&self.app, &*self.target.shared(), &registry())
            .await
            .expect("compare the tables");
        assert!(
            compared.agrees(),
            "the target differs from the app: {:?}",
            compared.differing
        );
    }

    /// The queue's counts.
    pub fn counts(&self) -> d1_sync::Counts {
        self.outbox.counts(&self.app).expect("counts")
    }

    /// Highest attempts charged to any record.
    pub fn max_attempts_charged(&self) -> i64 {
        self.app
            .query_row(
                "SELECT coalesce(max(attempts), 0) FROM d1_sync_queue",
                [],
                |r| r.get(0),
            )
            .expect("attempts")
    }
}
