use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(table = "ok", schema = "ui/schemas/broken")]
struct Ok {
    #[d1(primary_key)]
    id: String,
}

fn main() {}
