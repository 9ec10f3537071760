use d1_sync::D1Sync;

// Two mistakes, both reported in one build: an attribute that did not mean `primary_key`
// does not hide the missing key.
#[derive(D1Sync)]
struct Note {
    id: i64,
    #[d1(rname = "body_text")]
    body: String,
}

fn main() {}
