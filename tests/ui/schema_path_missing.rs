use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(table = "customers", schema = "ui/schemas/no_such_folder")]
struct Customer {
    #[d1(primary_key)]
    id: String,
}

fn main() {}
