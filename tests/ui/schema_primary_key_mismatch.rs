use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(table = "customers", schema = "ui/schemas/shop")]
struct Customer {
    id: String,
    #[d1(primary_key)]
    email: String,
    #[d1(insert_only)]
    created_at: i64,
}

fn main() {}
