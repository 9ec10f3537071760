//! Compile errors are a user interface: each `tests/ui/<mistake>.rs` must fail to build with
//! the message in its `.stderr`. Regenerate after a deliberate change with
//! `TRYBUILD=overwrite cargo test -p d1-sync-tests --test ui`, then read every diff.

#[test]
fn ui() {
    // trybuild builds the cases in a copy of this crate under `target/`; schema paths in the
    // cases are relative to this crate, so tell the derive where that is.
    std::env::set_var("D1_SYNC_MANIFEST_DIR", env!("CARGO_MANIFEST_DIR"));
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
