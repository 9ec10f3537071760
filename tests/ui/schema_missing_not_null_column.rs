use d1_sync::D1Sync;

// `email` and `created_at` are NOT NULL without a default: an insert without them fails.
#[derive(D1Sync)]
#[d1(table = "customers", schema = "ui/schemas/shop")]
struct Customer {
    #[d1(primary_key)]
    id: String,
    name: Option<String>,
}

fn main() {}
