use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(table = "customer", schema = "ui/schemas/shop")]
struct Customer {
    #[d1(primary_key)]
    id: String,
}

fn main() {}
