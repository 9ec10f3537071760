use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(table = "orders", schema = "ui/schemas/shop")]
struct Order {
    #[d1(primary_key)]
    id: i64,
    customer_id: String,
    total_cents: i64,
    note: Option<f64>,
}

fn main() {}
