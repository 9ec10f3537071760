//! `examples/src/rows.rs` is the generator's output for `examples/migrations/`: it compiles
//! (so it passes its own compile-time schema checks) and it is not stale.

use d1_sync_schema::codegen::{check, generate, Freshness, Options};

#[test]
fn the_example_row_structs_are_generated_and_fresh() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let code = generate(&examples.join("migrations"), &Options::new("migrations")).unwrap();
    match check(&examples.join("src/rows.rs"), &code).unwrap() {
        Freshness::Fresh => {}
        Freshness::Missing => panic!("examples/src/rows.rs is missing"),
        Freshness::Stale(diff) => panic!(
            "examples/src/rows.rs is stale; run `cargo run -p d1-sync-cli -- generate --schema migrations --out src/rows.rs` in examples/:\n{diff}"
        ),
    }
    // The structs in it are the ones the rest of the tests use.
    assert_eq!(
        code.matches("#[derive(Debug, Clone, PartialEq, D1Sync)]")
            .count(),
        7
    );
}

#[test]
fn generated_structs_have_the_schema_attribute_and_keys() {
    use d1_sync::SyncRow;
    use d1_sync_example::rows::*;
    assert_eq!(Message::PRIMARY_KEY, ["id"]);
    assert_eq!(Execution::PRIMARY_KEY, ["instruction_id"]);
    assert_eq!(Session::PRIMARY_KEY, ["id"]);
    assert_eq!(LocalConversation::PRIMARY_KEY, ["local_conversation_id"]);
    assert_eq!(ConversationLink::PRIMARY_KEY, ["link_id"]);
    assert_eq!(RenewalJob::PRIMARY_KEY, ["job_id"]);
    assert_eq!(BrowserRequestPolicyState::PRIMARY_KEY, ["state_key"]);
    assert_eq!(Message::INSERT_ONLY, ["created_at"]);
    assert_eq!(BrowserRequestPolicyState::INSERT_ONLY, [] as [&str; 0]);
    // Every table is versioned (migration 0006), by `version`.
    assert_eq!(Message::VERSION, Some("version"));
    assert_eq!(BrowserRequestPolicyState::VERSION, Some("version"));
    // The seed's whitelists, column for column (organization_id comes from migration 0005,
    // version from 0006).
    assert_eq!(
        Message::COLUMNS,
        [
            "id",
            "platform",
            "conversation_id",
            "role",
            "raw_text",
            "summary",
            "observed_at",
            "static_path",
            "page_url",
            "page_title",
            "created_at",
            "organization_id",
            "version"
        ]
    );
}

/// What a build script's `build_rs` does: write the structs once, then leave a fresh file
/// alone (its time stamp too), and write again when a migration is added.
#[test]
fn a_build_script_writes_into_its_out_dir_only_when_stale() {
    let out = tempfile::tempdir().unwrap();
    let schema = tempfile::tempdir().unwrap();
    std::fs::write(
        schema.path().join("0001_a.sql"),
        "CREATE TABLE a (id INTEGER PRIMARY KEY);",
    )
    .unwrap();
    let file = out.path().join("rows.rs");
    let opts = Options::new("migrations");
    assert!(d1_sync_schema::codegen::write_if_stale(schema.path(), &file, &opts).unwrap());
    assert!(!d1_sync_schema::codegen::write_if_stale(schema.path(), &file, &opts).unwrap());
    std::fs::write(
        schema.path().join("0002_b.sql"),
        "CREATE TABLE b (id INTEGER PRIMARY KEY);",
    )
    .unwrap();
    assert!(d1_sync_schema::codegen::write_if_stale(schema.path(), &file, &opts).unwrap());
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("pub struct B"));
}

/// The example's embedded migrations are the folder's files, in wrangler's order: a new
/// migration is added once, as a file.
#[test]
fn the_embedded_example_migrations_are_the_folders_files() {
    let files = d1_sync::schema::migrations::load(&d1_sync_example::migrations_dir()).unwrap();
    let embedded: Vec<&str> = d1_sync_example::MIGRATIONS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    let on_disk: Vec<&str> = files.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(embedded, on_disk);
    for ((_, sql), m) in d1_sync_example::MIGRATIONS.iter().zip(&files) {
        assert_eq!(
            d1_sync::schema::migrations::checksum(sql.as_bytes()),
            m.checksum
        );
    }
}
