use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(schema = "ui/schemas/trigger")]
struct Items {
    #[d1(primary_key)]
    id: String,
    name: Option<String>,
}

fn main() {}
