use d1_sync::D1Sync;

#[derive(D1Sync)]
struct Note {
    id: i64,
    body: String,
}

fn main() {}
