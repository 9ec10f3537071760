//! The SQL the derive generates, run on a real SQLite database for the seed's seven tables,
//! a composite-key table and a table whose names need quoting.

use d1_sync::rusqlite::{params_from_iter, Connection};
use d1_sync::{D1Sync, SyncRow, Value};
use d1_sync_example::rows::*;

fn db() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
    d1_sync_example::apply_migrations(&conn).unwrap();
    conn
}

fn upsert<T: SyncRow>(conn: &Connection, row: &T) {
    conn.execute(T::UPSERT_SQL, params_from_iter(row.values()))
        .unwrap();
}

fn delete<T: SyncRow>(conn: &Connection, row: &T) -> usize {
    conn.execute(T::DELETE_SQL, params_from_iter(row.key_values()))
        .unwrap()
}

/// Every column of every row of `table`, in key order, as values.
fn dump<T: SyncRow>(conn: &Connection) -> Vec<Vec<Value>> {
    let cols = T::COLUMNS
        .iter()
        .map(|c| d1_sync::schema::sql::quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let keys = T::PRIMARY_KEY
        .iter()
        .map(|c| d1_sync::schema::sql::quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {cols} FROM {} ORDER BY {keys}",
        d1_sync::schema::sql::quote_ident(T::TABLE)
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    let n = T::COLUMNS.len();
    stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Insert two rows, upsert a changed first row with another `created_at`, delete the second:
/// the first ends changed with its original `created_at`, the second is gone.
fn lifecycle<T: SyncRow>(conn: &Connection, a: T, a_changed: T, b: T) {
    upsert(conn, &a);
    upsert(conn, &b);
    assert_eq!(
        dump::<T>(conn),
        vec![a.values(), b.values()],
        "{}: insert",
        T::TABLE
    );

    upsert(conn, &a_changed);
    let mut expected = a_changed.values();
    for col in T::INSERT_ONLY {
        let i = T::COLUMNS.iter().position(|c| c == col).unwrap();
        assert_ne!(
            a.values()[i],
            a_changed.values()[i],
            "the test changes {col}"
        );
        expected[i] = a.values()[i].clone();
    }
    if T::COLUMNS.contains(&"created_at") {
        assert!(
            T::INSERT_ONLY.contains(&"created_at"),
            "{}: created_at is insert-only",
            T::TABLE
        );
    }
    assert_eq!(
        dump::<T>(conn),
        vec![expected.clone(), b.values()],
        "{}: upsert",
        T::TABLE
    );

    assert_eq!(delete(conn, &b), 1, "{}: delete removes one row", T::TABLE);
    assert_eq!(
        dump::<T>(conn),
        vec![expected],
        "{}: delete removes that row",
        T::TABLE
    );
}

fn s(v: &str) -> String {
    v.to_string()
}

fn message(id: &str, text: &str, created_at: i64) -> Message {
    Message {
        version: d1_sync_tests::fixture::next_version(),
        id: s(id),
        platform: s("web"),
        conversation_id: Some(s("c1")),
        role: s("user"),
        raw_text: Some(s(text)),
        summary: None,
        observed_at: 1_700_000_000_000,
        static_path: None,
        page_url: Some(s("https://example.com/a?b=c")),
        page_title: Some(s("Ünïcödé \"title\" 'x'")),
        created_at,
        organization_id: None,
    }
}

fn conversation(id: &str, status: &str, created_at: i64) -> LocalConversation {
    LocalConversation {
        version: d1_sync_tests::fixture::next_version(),
        local_conversation_id: s(id),
        platform: s("web"),
        automation_status: s(status),
        last_non_paused_automation_status: None,
        pause_reason: None,
        last_error: None,
        execution_state: s("idle"),
        consecutive_failure_count: 0,
        repeated_message_count: 2,
        repeated_renewal_count: 0,
        last_message_fingerprint: Some(s("fp")),
        last_renewal_fingerprint: None,
        title: Some(s("t")),
        summary: None,
        last_message_id: None,
        last_message_at: Some(5),
        cooldown_until: None,
        paused_at: None,
        created_at,
        updated_at: created_at + 1,
    }
}

#[test]
fn messages() {
    let conn = db();
    lifecycle(
        &conn,
        message("m1", "hello", 10),
        message("m1", "edited", 99),
        message("m2", "x", 11),
    );
}

#[test]
fn executions() {
    let conn = db();
    upsert(&conn, &message("m1", "hello", 10));
    let e = |id: &str, ok: bool, created_at: i64| Execution {
        version: d1_sync_tests::fixture::next_version(),
        instruction_id: s(id),
        message_id: Some(s("m1")),
        target: s("browser"),
        tool: s("click"),
        params: Some(s(r#"{"x":1}"#)),
        params_kind: Some(s("json")),
        result_ok: Some(ok),
        result_data: None,
        result_summary: Some(s("done")),
        result_error: None,
        http_status: Some(200),
        executed_at: 1,
        static_path: None,
        created_at,
    };
    lifecycle(&conn, e("i1", false, 1), e("i1", true, 2), e("i2", true, 3));
}

#[test]
fn sessions() {
    let conn = db();
    let row = |id: &str, n: i64, created_at: i64| Session {
        version: d1_sync_tests::fixture::next_version(),
        id: s(id),
        platform: s("web"),
        conversation_id: None,
        started_at: 1,
        last_activity_at: 2 + n,
        message_count: n,
        execution_count: 0,
        summary: None,
        static_path: Some(s("/s")),
        created_at,
    };
    lifecycle(
        &conn,
        row("s1", 1, 100),
        row("s1", 7, 200),
        row("s2", 1, 100),
    );
}

#[test]
fn local_conversations() {
    let conn = db();
    lifecycle(
        &conn,
        conversation("lc1", "active", 1),
        conversation("lc1", "paused", 2),
        conversation("lc2", "active", 1),
    );
}

#[test]
fn conversation_links() {
    let conn = db();
    upsert(&conn, &conversation("lc1", "active", 1));
    let row = |id: &str, active: bool, created_at: i64| ConversationLink {
        version: d1_sync_tests::fixture::next_version(),
        link_id: s(id),
        local_conversation_id: s("lc1"),
        platform: s("web"),
        remote_conversation_id: Some(s("r")),
        client_id: None,
        page_url: None,
        page_title: None,
        route_path: Some(s("/c/:id")),
        route_pattern: None,
        route_params: Some(s(r#"{"id":"r"}"#)),
        target_kind: None,
        target_id: None,
        target_payload: None,
        is_active: active,
        observed_at: Some(3),
        created_at,
        updated_at: created_at,
    };
    lifecycle(
        &conn,
        row("l1", true, 1),
        row("l1", false, 2),
        row("l2", true, 1),
    );
}

#[test]
fn renewal_jobs() {
    let conn = db();
    upsert(&conn, &conversation("lc1", "active", 1));
    let row = |id: &str, status: &str, created_at: i64| RenewalJob {
        version: d1_sync_tests::fixture::next_version(),
        job_id: s(id),
        local_conversation_id: s("lc1"),
        message_id: None,
        status: s(status),
        payload: s("renew"),
        payload_kind: s("text"),
        target_snapshot: None,
        attempt_count: 0,
        max_attempts: 3,
        next_attempt_at: Some(10),
        last_attempt_at: None,
        last_error: None,
        log_path: None,
        started_at: None,
        finished_at: None,
        created_at,
        updated_at: created_at,
    };
    lifecycle(
        &conn,
        row("j1", "pending", 1),
        row("j1", "done", 5),
        row("j2", "pending", 1),
    );
}

#[test]
fn browser_request_policy_state() {
    let conn = db();
    let row = |k: &str, v: &str| BrowserRequestPolicyState {
        version: d1_sync_tests::fixture::next_version(),
        state_key: s(k),
        value_json: s(v),
        updated_at: 1,
    };
    lifecycle(
        &conn,
        row("a", "{}"),
        row("a", r#"{"b":2}"#),
        row("b", "[]"),
    );
}

#[test]
fn upsert_never_replaces_the_row() {
    // INSERT OR REPLACE would delete the message first and cascade to its executions.
    let conn = db();
    upsert(&conn, &conversation("lc1", "active", 1));
    conn.execute(
        "INSERT INTO renewal_jobs (job_id, local_conversation_id, payload, created_at, updated_at) VALUES ('j', 'lc1', 'p', 1, 1)",
        [],
    )
    .unwrap();
    upsert(&conn, &conversation("lc1", "paused", 2));
    let jobs: i64 = conn
        .query_row("SELECT count(*) FROM renewal_jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jobs, 1, "the child row survives an upsert of its parent");
}

#[derive(D1Sync, Debug, Clone)]
#[d1(table = "select", schema = "schemas/odd_names.sql")]
struct OddNames {
    #[d1(primary_key, rename = "order")]
    order: i64,
    #[d1(rename = "my column")]
    my_column: Option<String>,
    #[d1(rename = "say \"hi\"")]
    say_hi: Option<String>,
    #[d1(rename = "created at", insert_only)]
    created_at: i64,
}

#[test]
fn reserved_words_spaces_and_quotes_in_names() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(include_str!("../schemas/odd_names.sql"))
        .unwrap();
    let row = |order, text: &str, created_at| OddNames {
        order,
        my_column: Some(text.to_string()),
        say_hi: None,
        created_at,
    };
    assert_eq!(
        OddNames::COLUMNS,
        ["order", "my column", "say \"hi\"", "created at"]
    );
    lifecycle(&conn, row(1, "a", 1), row(1, "b", 2), row(2, "c", 1));
}

#[derive(D1Sync, Debug, Clone)]
#[d1(table = "memberships", schema = "schemas/odd_names.sql")]
struct Membership {
    #[d1(primary_key)]
    org_id: String,
    #[d1(primary_key)]
    user_id: i64,
    role: String,
    #[d1(insert_only)]
    joined_at: i64,
}

#[test]
fn composite_key() {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(include_str!("../schemas/odd_names.sql"))
        .unwrap();
    assert_eq!(Membership::PRIMARY_KEY, ["org_id", "user_id"]);
    assert_eq!(
        Membership::DELETE_SQL,
        r#"DELETE FROM "memberships" WHERE "org_id" = ?1 AND "user_id" = ?2"#
    );
    let m = |org: &str, user, role: &str, joined| Membership {
        org_id: org.to_string(),
        user_id: user,
        role: role.to_string(),
        joined_at: joined,
    };
    // Same org, other user: a different row under the composite key.
    lifecycle(
        &conn,
        m("o", 1, "admin", 5),
        m("o", 1, "member", 9),
        m("o", 2, "member", 5),
    );
}

#[derive(D1Sync)]
#[d1(table = "tags")]
struct KeyOnly {
    #[d1(primary_key)]
    name: String,
    #[d1(skip)]
    #[allow(dead_code)]
    cache: Vec<String>,
}

#[test]
fn key_only_rows_do_nothing_on_conflict() {
    assert_eq!(
        KeyOnly::UPSERT_SQL,
        r#"INSERT INTO "tags" ("name") VALUES (?1) ON CONFLICT ("name") DO NOTHING"#
    );
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE tags (name TEXT PRIMARY KEY)")
        .unwrap();
    let row = KeyOnly {
        name: "x".into(),
        cache: vec![],
    };
    upsert(&conn, &row);
    upsert(&conn, &row);
    let n: i64 = conn
        .query_row("SELECT count(*) FROM tags", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[derive(D1Sync)]
#[d1(rename_all = "camelCase")]
struct UserProfile {
    #[d1(primary_key)]
    user_id: i64,
    display_name: String,
    #[d1(rename = "AVATAR")]
    avatar_url: Option<String>,
}

#[test]
fn default_table_name_and_rename_rules() {
    assert_eq!(UserProfile::TABLE, "user_profile");
    assert_eq!(UserProfile::COLUMNS, ["userId", "displayName", "AVATAR"]);
    assert_eq!(
        UserProfile::COLUMN_KINDS,
        [
            d1_sync::ValueKind::Integer,
            d1_sync::ValueKind::Text,
            d1_sync::ValueKind::Text
        ]
    );
    let p = UserProfile {
        user_id: 1,
        display_name: "a".into(),
        avatar_url: None,
    };
    assert_eq!(
        p.values(),
        [Value::Integer(1), Value::Text("a".into()), Value::Null]
    );
}
