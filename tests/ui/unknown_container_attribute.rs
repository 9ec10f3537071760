use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(tabel = "notes")]
struct Note {
    #[d1(primary_key)]
    id: i64,
}

fn main() {}
