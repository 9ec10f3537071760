use d1_sync::D1Sync;

type Stamp = String;

#[derive(D1Sync)]
struct Note {
    #[d1(primary_key)]
    id: i64,
    body: String,
    #[d1(version)]
    version: Stamp,
}

fn main() {}
