use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(primary_key)]
struct Note {
    #[d1(primary_key, table = "notes")]
    id: i64,
}

fn main() {}
