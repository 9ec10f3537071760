use d1_sync::D1Sync;

#[derive(D1Sync)]
struct Pair(i64, String);

fn main() {}
