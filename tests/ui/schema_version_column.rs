use d1_sync::D1Sync;

// The version column must be INTEGER NOT NULL in the schema: `edited` is TEXT...
#[derive(D1Sync)]
#[d1(table = "notes", schema = "ui/schemas/versions")]
struct Edited {
    #[d1(primary_key)]
    id: i64,
    body: Option<String>,
    #[d1(version)]
    edited: i64,
}

// ...and `revision` may be NULL.
#[derive(D1Sync)]
#[d1(table = "notes", schema = "ui/schemas/versions")]
struct Revised {
    #[d1(primary_key)]
    id: i64,
    body: Option<String>,
    #[d1(version)]
    revision: i64,
}

fn main() {}
