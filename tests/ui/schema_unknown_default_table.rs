use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(schema = "ui/schemas/shop")]
struct Invoice {
    #[d1(primary_key)]
    id: String,
}

fn main() {}
