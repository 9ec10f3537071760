use d1_sync::D1Sync;

#[derive(D1Sync)]
enum Status {
    Active,
    Paused,
}

fn main() {}
