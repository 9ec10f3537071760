use d1_sync::D1Sync;

#[derive(D1Sync)]
struct Note {
    #[d1(primary_key = true)]
    id: i64,
}

fn main() {}
