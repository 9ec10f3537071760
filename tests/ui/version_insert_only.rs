use d1_sync::D1Sync;

#[derive(D1Sync)]
struct Note {
    #[d1(primary_key)]
    id: i64,
    body: String,
    #[d1(version, insert_only)]
    version: i64,
}

fn main() {}
