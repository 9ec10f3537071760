use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(table = "customers", schema = "ui/schemas/shop")]
struct Customer {
    #[d1(primary_key)]
    id: String,
    email: String,
    email_domain: Option<String>,
    #[d1(insert_only)]
    created_at: i64,
}

fn main() {}
