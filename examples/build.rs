//! Embeds the migrations folder: `MIGRATIONS` lists every `.sql` file of `migrations/` in the
//! order wrangler applies them, so a new migration is added once, as a file.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let files = d1_sync_schema::load::schema_files(&dir).expect("the example migrations");
    let mut out = String::from(
        "/// The migrations, in the order D1 applies them: `(file name, SQL)`.\npub const MIGRATIONS: &[(&str, &str)] = &[\n",
    );
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a migration's file name is UTF-8");
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            f.display().to_string()
        );
    }
    out.push_str("];\n");
    let target = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("migrations.rs");
    std::fs::write(target, out).expect("write migrations.rs");
}
