use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(table = "ledger", schema = "ui/schemas/shop")]
struct Entry {
    #[d1(primary_key)]
    entry_id: i64,
    account: i64,
    amount: String,
    rate: Option<f64>,
}

fn main() {}
