use d1_sync::D1Sync;

#[derive(D1Sync)]
struct Note {
    #[d1(primary_key)]
    id: i64,
    #[d1(version)]
    version: i64,
    #[d1(version)]
    edited_at: i64,
}

fn main() {}
