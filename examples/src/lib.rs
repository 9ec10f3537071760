//! The seed's seven tables: D1 migrations in `migrations/` and their row structs in [`rows`].
//!
//! The structs are checked against the migrations at compile time (`#[d1(schema = ...)]`).

pub mod rows;
pub mod workload;

/// The migrations, in the order D1 applies them: `(file name, SQL)`.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_messages.sql",
        include_str!("../migrations/0001_messages.sql"),
    ),
    (
        "0002_sessions.sql",
        include_str!("../migrations/0002_sessions.sql"),
    ),
    (
        "0003_conversations.sql",
        include_str!("../migrations/0003_conversations.sql"),
    ),
    (
        "0004_policy_state.sql",
        include_str!("../migrations/0004_policy_state.sql"),
    ),
    (
        "0005_message_organization.sql",
        include_str!("../migrations/0005_message_organization.sql"),
    ),
];

/// Applies [`MIGRATIONS`] to a connection.
pub fn apply_migrations(conn: &d1_sync::rusqlite::Connection) -> d1_sync::rusqlite::Result<()> {
    for (_, sql) in MIGRATIONS {
        conn.execute_batch(sql)?;
    }
    Ok(())
}

/// A registry of the seven tables, for a worker.
pub fn registry() -> d1_sync::Registry {
    use rows::*;
    d1_sync::Registry::new()
        .with::<Message>()
        .with::<Execution>()
        .with::<Session>()
        .with::<LocalConversation>()
        .with::<ConversationLink>()
        .with::<RenewalJob>()
        .with::<BrowserRequestPolicyState>()
}

/// The migrations folder, for tools that load it from disk.
pub fn migrations_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
}
