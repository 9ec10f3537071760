use d1_sync::D1Sync;
use std::collections::HashMap;

#[derive(D1Sync)]
struct Note {
    #[d1(primary_key)]
    id: u64,
    tags: HashMap<String, String>,
}

fn main() {}
