use d1_sync::D1Sync;

#[derive(D1Sync)]
#[d1(rename_all = "camelcase")]
struct Note {
    #[d1(primary_key)]
    note_id: i64,
}

fn main() {}
