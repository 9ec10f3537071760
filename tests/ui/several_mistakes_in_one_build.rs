use d1_sync::D1Sync;

// Every mistake of a struct is reported in one build, each on its own span.
#[derive(D1Sync)]
struct Note {
    #[d1(rename = "body")]
    id: i64,
    #[d1(skp)]
    body: String,
    #[d1(rename = "")]
    title: String,
}

// A type whose derive failed still works elsewhere in the crate: no cascade of errors.
fn table_of_note() -> &'static str {
    <Note as d1_sync::SyncRow>::TABLE
}

fn main() {
    let _ = table_of_note();
}
