use d1_sync::D1Sync;

#[derive(D1Sync)]
struct Message {
    #[d1(primary_key)]
    id: String,
    text: String,
    #[d1(rename = "text")]
    raw_text: String,
}

fn main() {}
