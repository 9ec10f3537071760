use d1_sync::D1Sync;

#[derive(D1Sync)]
struct Note {
    #[d1(primary_key, version)]
    id: i64,
    body: String,
}

fn main() {}
