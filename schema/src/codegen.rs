//! Rust row structs rendered from a [`Schema`]: what `d1sync generate` writes and what a
//! build script can keep fresh.
//!
//! One struct per table, with `#[derive(D1Sync)]` and `#[d1(table = ..., schema = ...)]` so
//! the compiler checks it against the same files again. The file starts with an `@generated`
//! header carrying a hash of its inputs; [`check`] says whether a file on disk is stale and
//! shows the unified diff.
//!
//! ```
//! use d1_sync_schema::codegen::{generate, Options};
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("0001.sql"),
//!     "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, created_at INTEGER NOT NULL)").unwrap();
//! let code = generate(dir.path(), &Options::new("migrations")).unwrap();
//! assert!(code.starts_with("// @generated"));
//! assert!(code.contains("pub struct Note {"));
//! assert!(code.contains("#[d1(insert_only)]\n    pub created_at: i64,"));
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::load::{load_schema, schema_files, SchemaError};
use crate::model::{Column, Schema, Table};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The schema path as the generated `#[d1(schema = "...")]` says it: relative to the
    /// manifest directory of the crate that will hold the file.
    pub schema_attr: String,
    /// Tables to generate, in schema order; empty: all of them.
    pub tables: Vec<String>,
    /// Extra derives for every struct, as paths (`serde::Serialize`).
    pub derives: Vec<String>,
    /// Field types by `table.column` (`messages.observed_at` → `i32`); the type is used as
    /// written, wrapped in `Option` when the column is nullable.
    pub type_overrides: BTreeMap<String, String>,
    /// Column names made `#[d1(insert_only)]` wherever they appear (default: `created_at`).
    pub insert_only: Vec<String>,
    /// Column names made `#[d1(version)]` where they are `INTEGER NOT NULL` and not in the key
    /// (default: `version`).
    pub version: Vec<String>,
}

impl Options {
    /// Defaults: every table, no extra derives, no overrides, `created_at` insert-only, a column
    /// `version INTEGER NOT NULL` the version.
    pub fn new(schema_attr: impl Into<String>) -> Options {
        Options {
            schema_attr: schema_attr.into(),
            tables: Vec::new(),
            derives: Vec::new(),
            type_overrides: BTreeMap::new(),
            insert_only: vec!["created_at".to_string()],
            version: vec!["version".to_string()],
        }
    }
}

/// Why code could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// The schema files could not be loaded.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A table named in [`Options::tables`] does not exist.
    #[error("no table `{0}` in the schema")]
    UnknownTable(String),
    /// A table has no primary key, so it cannot be upserted.
    #[error("table `{0}` has no primary key: d1-sync upserts and deletes by primary key")]
    NoPrimaryKey(String),
    /// An override or derive is not valid Rust.
    #[error("`{text}` is not a valid Rust {what}")]
    BadRust {
        /// What was expected (type, path).
        what: &'static str,
        /// The text given.
        text: String,
    },
    /// A type override names a column that does not exist.
    #[error("type override for `{0}`: no such table.column")]
    UnknownOverride(String),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Loads the schema at `schema_path` and renders the row structs.
pub fn generate(schema_path: &Path, opts: &Options) -> Result<String, CodegenError> {
    let schema = load_schema(schema_path)?;
    let hash = inputs_hash(schema_path, opts)?;
    render(&schema, opts, &hash)
}

/// A hash (64-bit FNV-1a, hex) of everything the output depends on: the schema files' names
/// and contents, the options, and this generator's version.
pub fn inputs_hash(schema_path: &Path, opts: &Options) -> Result<String, CodegenError> {
    let mut h = Fnv::default();
    h.write(env!("CARGO_PKG_VERSION").as_bytes());
    for f in schema_files(schema_path)? {
        let bytes = std::fs::read(&f).map_err(|source| CodegenError::Io {
            path: f.clone(),
            source,
        })?;
        h.write(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.write(&[0]);
        h.write(&bytes);
        h.write(&[0]);
    }
    h.write(format!("{opts:?}").as_bytes());
    Ok(format!("{:016x}", h.0))
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Renders the row structs of `schema`, formatted, with the `@generated` header.
pub fn render(schema: &Schema, opts: &Options, inputs_hash: &str) -> Result<String, CodegenError> {
    for t in &opts.tables {
        if schema.table(t).is_none() {
            return Err(CodegenError::UnknownTable(t.clone()));
        }
    }
    for key in opts.type_overrides.keys() {
        let known = key
            .split_once('.')
            .and_then(|(t, c)| schema.table(t).and_then(|t| t.column(c)))
            .is_some();
        if !known {
            return Err(CodegenError::UnknownOverride(key.clone()));
        }
    }
    let derives = opts
        .derives
        .iter()
        .map(|d| {
            syn::parse_str::<syn::Path>(d).map_err(|_| CodegenError::BadRust {
                what: "path",
                text: d.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let tables: Vec<&Table> = schema
        .tables
        .iter()
        .filter(|t| opts.tables.is_empty() || opts.tables.contains(&t.name))
        .collect();
    let mut used_names = HashSet::new();
    let mut items = Vec::new();
    let mut idents = Vec::new();
    for table in tables {
        if table.primary_key.is_empty() {
            return Err(CodegenError::NoPrimaryKey(table.name.clone()));
        }
        let mut name = struct_name(&table.name, true);
        if !used_names.insert(name.clone()) {
            name = struct_name(&table.name, false);
            used_names.insert(name.clone());
        }
        items.push(render_table(table, &name, opts, &derives)?);
        idents.push(format_ident!("{}", name));
    }
    // The worker's registry of every struct above, so that no one writes the list by hand.
    items.push(quote!(
        /// A registry of every table above, for a worker.
        pub fn registry() -> d1_sync::Registry {
            d1_sync::Registry::new() #( .with::<#idents>() )*
        }
    ));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// @generated by d1sync generate: do not edit by hand."
    );
    let _ = writeln!(
        out,
        "// inputs: {inputs_hash} (schema `{}`)",
        opts.schema_attr
    );
    let _ = writeln!(
        out,
        "// Regenerate with `d1sync generate`; CI checks it with `d1sync generate --check`."
    );
    // One item at a time, so items are separated by a blank line.
    for tokens in std::iter::once(quote!(
        use d1_sync::D1Sync;
    ))
    .chain(items)
    {
        let file: syn::File = syn::parse2(tokens).map_err(|e| CodegenError::BadRust {
            what: "item (an internal error of the generator)",
            text: e.to_string(),
        })?;
        out.push('\n');
        out.push_str(&prettyplease::unparse(&file));
    }
    Ok(out)
}

fn render_table(
    table: &Table,
    name: &str,
    opts: &Options,
    derives: &[syn::Path],
) -> Result<TokenStream, CodegenError> {
    let ident = format_ident!("{}", name);
    let table_name = &table.name;
    let schema_attr = &opts.schema_attr;
    let mut doc = vec![format!(" A row of table `{}`.", table.name)];
    if let Some(file) = table.defined_in.as_ref().and_then(|f| f.file_name()) {
        doc.push(String::new());
        doc.push(format!(" Created in `{}`.", file.to_string_lossy()));
    }
    let mut flags = Vec::new();
    if table.strict {
        flags.push("STRICT");
    }
    if table.without_rowid {
        flags.push("WITHOUT ROWID");
    }
    if !flags.is_empty() {
        doc.push(format!(" A {} table.", flags.join(", ")));
    }
    let mut used = HashSet::new();
    let mut fields = Vec::new();
    for col in table.writable_columns() {
        fields.push(render_column(table, col, opts, &mut used)?);
    }
    Ok(quote! {
        #(#[doc = #doc])*
        #[derive(Debug, Clone, PartialEq, D1Sync #(, #derives)*)]
        #[d1(table = #table_name, schema = #schema_attr)]
        pub struct #ident {
            #(#fields)*
        }
    })
}

fn render_column(
    table: &Table,
    col: &Column,
    opts: &Options,
    used: &mut HashSet<String>,
) -> Result<TokenStream, CodegenError> {
    let mut field = field_name(&col.name);
    while !used.insert(field.clone()) {
        field.push('_');
    }
    let ident: syn::Ident = syn::parse_str(&field).map_err(|_| CodegenError::BadRust {
        what: "identifier",
        text: field.clone(),
    })?;
    let base = match opts
        .type_overrides
        .get(&format!("{}.{}", table.name, col.name))
    {
        Some(t) => t.clone(),
        None => rust_type(col).to_string(),
    };
    // A key is never NULL in practice (SQLite allows it outside INTEGER and WITHOUT ROWID keys,
    // but such a row could never be upserted or deleted by key).
    let ty_text = if col.not_null || col.pk_position.is_some() {
        base
    } else {
        format!("Option<{base}>")
    };
    let ty: syn::Type = syn::parse_str(&ty_text).map_err(|_| CodegenError::BadRust {
        what: "type",
        text: ty_text.clone(),
    })?;

    let mut d1 = Vec::new();
    if col.pk_position.is_some() {
        d1.push(quote!(primary_key));
    }
    let unraw = field.strip_prefix("r#").unwrap_or(&field);
    if unraw != col.name {
        let column = &col.name;
        d1.push(quote!(rename = #column));
    }
    if col.pk_position.is_none() && opts.insert_only.contains(&col.name) {
        d1.push(quote!(insert_only));
    }
    if col.can_be_version() && opts.version.contains(&col.name) {
        d1.push(quote!(version));
    }
    let attr = (!d1.is_empty()).then(|| quote!(#[d1(#(#d1),*)]));

    let mut doc = format!(
        " `{}`",
        if col.decl_type.is_empty() {
            "(no type)"
        } else {
            &col.decl_type
        }
    );
    if col.not_null && table.rowid_alias() != Some(col.name.as_str()) {
        doc.push_str(", NOT NULL");
    }
    if let Some(d) = &col.default {
        let _ = write!(doc, ", default `{d}`");
    }
    if let Some(fk) = table
        .foreign_keys
        .iter()
        .find(|fk| fk.from.contains(&col.name))
    {
        let _ = write!(doc, ", references `{}`", fk.table);
    }
    if table.rowid_alias() == Some(col.name.as_str()) {
        doc.push_str(" (the rowid)");
    }
    doc.push('.');
    Ok(quote! {
        #[doc = #doc]
        #attr
        pub #ident: #ty,
    })
}

/// The Rust type for a column, by affinity (`BOOLEAN` → `bool`).
pub fn rust_type(col: &Column) -> &'static str {
    crate::model::rust_type_for(col.affinity, &col.decl_type)
}

/// `renewal_jobs` → `RenewalJob` (singular when `singular`).
fn struct_name(table: &str, singular: bool) -> String {
    let mut name: String = table
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect();
    if singular {
        if let Some(stem) = name.strip_suffix("ies") {
            name = format!("{stem}y");
        } else if name.ends_with("sses") || name.ends_with("xes") || name.ends_with("ches") {
            name.truncate(name.len() - 2);
        } else if name.ends_with('s') && !name.ends_with("ss") && name.len() > 1 {
            name.pop();
        }
    }
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert_str(0, "Table");
    }
    name
}

/// A Rust field name for a column: snake_case ASCII, raw identifiers for keywords.
fn field_name(column: &str) -> String {
    let mut s = String::new();
    for c in column.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('_') {
            s.push('_');
        }
    }
    let s = s.trim_matches('_').to_string();
    let s = if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("c_{s}")
    } else {
        s
    };
    match s.as_str() {
        "self" | "super" | "crate" | "_" => format!("{s}_"),
        kw if syn::parse_str::<syn::Ident>(kw).is_err() => format!("r#{kw}"),
        _ => s,
    }
}

/// How a file on disk compares with what would be generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Identical.
    Fresh,
    /// The file does not exist.
    Missing,
    /// Different: the unified diff from the file to the fresh output.
    Stale(String),
}

/// Compares `path` with `expected` without writing.
pub fn check(path: &Path, expected: &str) -> Result<Freshness, CodegenError> {
    match std::fs::read_to_string(path) {
        Ok(old) if old == expected => Ok(Freshness::Fresh),
        Ok(old) => Ok(Freshness::Stale(unified_diff(&old, expected, path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Freshness::Missing),
        Err(source) => Err(CodegenError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A unified diff from `old` to `new`, labelled with `path`.
pub fn unified_diff(old: &str, new: &str, path: &Path) -> String {
    let shown = path.display().to_string();
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("{shown} (on disk)"),
            &format!("{shown} (generated)"),
        )
        .to_string()
}

/// For `build.rs`: generates the row structs of `schema` (relative to the crate's manifest
/// directory) into `$OUT_DIR/<file_name>`, and tells cargo to run again when a schema file
/// changes or one is added. Returns the file written. A build script writes only into
/// `OUT_DIR`; to keep the structs in `src/` under version control, run `d1sync generate` (and
/// `--check` in CI) instead.
///
/// ```no_run
/// // build.rs, in `fn main()`, with `d1-sync-schema = { version = "0.1", features = ["codegen"] }`
/// // under [build-dependencies]:
/// let opts = d1_sync_schema::codegen::Options::new("migrations");
/// d1_sync_schema::codegen::build_rs("migrations", "rows.rs", &opts).expect("d1-sync codegen");
/// // src/lib.rs:
/// // pub mod rows { include!(concat!(env!("OUT_DIR"), "/rows.rs")); }
/// ```
pub fn build_rs(schema: &str, file_name: &str, opts: &Options) -> Result<PathBuf, CodegenError> {
    let base = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_default();
    let out_dir = std::env::var_os("OUT_DIR")
        .map(PathBuf::from)
        .ok_or_else(|| CodegenError::Io {
            path: PathBuf::from("$OUT_DIR"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "OUT_DIR is not set: call build_rs from a build script",
            ),
        })?;
    let schema_path = base.join(schema);
    let out_path = out_dir.join(file_name);
    // The folder itself: cargo then notices a new migration file too.
    println!("cargo:rerun-if-changed={}", schema_path.display());
    for f in schema_files(&schema_path)? {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    write_if_stale(&schema_path, &out_path, opts)?;
    Ok(out_path)
}

/// Generates the row structs of `schema_path` into `out_path` unless the file there is fresh
/// already (so its time stamp, and what depends on it, stays put). Returns whether it wrote.
pub fn write_if_stale(
    schema_path: &Path,
    out_path: &Path,
    opts: &Options,
) -> Result<bool, CodegenError> {
    let code = generate(schema_path, opts)?;
    if check(out_path, &code)? == Freshness::Fresh {
        return Ok(false);
    }
    std::fs::write(out_path, code).map_err(|source| CodegenError::Io {
        path: out_path.to_path_buf(),
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(struct_name("renewal_jobs", true), "RenewalJob");
        assert_eq!(
            struct_name("browser_request_policy_state", true),
            "BrowserRequestPolicyState"
        );
        assert_eq!(struct_name("categories", true), "Category");
        assert_eq!(struct_name("addresses", true), "Address");
        assert_eq!(struct_name("my table", false), "MyTable");
        assert_eq!(field_name("type"), "r#type");
        assert_eq!(field_name("my column"), "my_column");
        assert_eq!(field_name("say \"hi\""), "say_hi");
        assert_eq!(field_name("1st"), "c_1st");
        assert_eq!(field_name("self"), "self_");
        assert_eq!(field_name("createdAt"), "createdat");
    }

    fn schema(sql: &str) -> (tempfile::TempDir, Schema) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0001.sql"), sql).unwrap();
        let s = load_schema(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn renders_types_keys_renames_and_docs() {
        let (_d, s) = schema(
            "CREATE TABLE \"odd things\" (\"type\" TEXT NOT NULL, n INTEGER, r REAL NOT NULL DEFAULT 1.5, b BLOB, ok BOOLEAN NOT NULL, \"weird name\" TEXT, \
             created_at INTEGER NOT NULL, g INTEGER GENERATED ALWAYS AS (n + 1), PRIMARY KEY (\"type\", n)) WITHOUT ROWID;",
        );
        let code = render(&s, &Options::new("migrations"), "h").unwrap();
        assert!(
            code.contains("#[d1(table = \"odd things\", schema = \"migrations\")]"),
            "{code}"
        );
        assert!(code.contains("pub struct OddThing {"), "{code}");
        assert!(
            code.contains("#[d1(primary_key)]\n    pub r#type: String,"),
            "{code}"
        );
        assert!(
            code.contains("#[d1(primary_key)]\n    pub n: i64,"),
            "{code}"
        );
        assert!(
            code.contains("#[d1(rename = \"weird name\")]\n    pub weird_name: Option<String>,"),
            "{code}"
        );
        assert!(
            code.contains("/// `REAL`, NOT NULL, default `1.5`.\n    pub r: f64,"),
            "{code}"
        );
        assert!(code.contains("pub b: Option<Vec<u8>>,"), "{code}");
        assert!(code.contains("pub ok: bool,"), "{code}");
        assert!(
            code.contains("#[d1(insert_only)]\n    pub created_at: i64,"),
            "{code}"
        );
        assert!(
            !code.contains("pub g:"),
            "generated columns are not fields: {code}"
        );
        assert!(code.contains("/// A WITHOUT ROWID table."), "{code}");
    }

    #[test]
    fn an_integer_not_null_version_column_becomes_the_version() {
        let (_d, s) = schema(
            "CREATE TABLE a (id INTEGER PRIMARY KEY, version INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE b (id INTEGER PRIMARY KEY, version INTEGER);
             CREATE TABLE c (id INTEGER PRIMARY KEY, version TEXT NOT NULL);",
        );
        let code = render(&s, &Options::new("m"), "h").unwrap();
        assert_eq!(code.matches("#[d1(version)]").count(), 1, "{code}");
        assert!(
            code.contains("#[d1(version)]\n    pub version: i64,"),
            "{code}"
        );
        let mut o = Options::new("m");
        o.version.clear();
        assert!(!render(&s, &o, "h").unwrap().contains("#[d1(version)]"));
    }

    #[test]
    fn options_select_tables_add_derives_and_override_types() {
        let (_d, s) = schema("CREATE TABLE a (id INTEGER PRIMARY KEY, t INTEGER); CREATE TABLE b (id TEXT PRIMARY KEY);");
        let mut o = Options::new("m");
        o.tables = vec!["a".into()];
        o.derives = vec!["serde::Serialize".into()];
        o.type_overrides.insert("a.t".into(), "i32".into());
        o.insert_only.clear();
        let code = render(&s, &o, "h").unwrap();
        assert!(
            code.contains("#[derive(Debug, Clone, PartialEq, D1Sync, serde::Serialize)]"),
            "{code}"
        );
        assert!(code.contains("pub t: Option<i32>,"), "{code}");
        assert!(!code.contains("struct B"), "{code}");

        o.tables = vec!["nope".into()];
        assert!(matches!(
            render(&s, &o, "h"),
            Err(CodegenError::UnknownTable(_))
        ));
        o.tables.clear();
        o.type_overrides.insert("a.zzz".into(), "i32".into());
        assert!(matches!(
            render(&s, &o, "h"),
            Err(CodegenError::UnknownOverride(_))
        ));
        o.type_overrides.clear();
        o.derives = vec!["not a path!".into()];
        assert!(matches!(
            render(&s, &o, "h"),
            Err(CodegenError::BadRust { .. })
        ));
    }

    #[test]
    fn table_without_primary_key_is_an_error() {
        let (_d, s) = schema("CREATE TABLE log (line TEXT);");
        let err = render(&s, &Options::new("m"), "h").unwrap_err();
        assert_eq!(
            err.to_string(),
            "table `log` has no primary key: d1-sync upserts and deletes by primary key"
        );
    }

    #[test]
    fn check_reports_fresh_missing_and_stale_with_a_diff() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rows.rs");
        assert_eq!(check(&p, "a\n").unwrap(), Freshness::Missing);
        std::fs::write(&p, "a\nb\n").unwrap();
        assert_eq!(check(&p, "a\nb\n").unwrap(), Freshness::Fresh);
        let Freshness::Stale(diff) = check(&p, "a\nc\n").unwrap() else {
            panic!()
        };
        assert!(diff.contains("-b\n+c\n"), "{diff}");
        assert!(
            diff.contains("(on disk)") && diff.contains("(generated)"),
            "{diff}"
        );
    }

    #[test]
    fn hash_changes_with_files_and_options() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("1.sql"),
            "CREATE TABLE t (id TEXT PRIMARY KEY);",
        )
        .unwrap();
        let o = Options::new("m");
        let h1 = inputs_hash(dir.path(), &o).unwrap();
        assert_eq!(h1, inputs_hash(dir.path(), &o).unwrap());
        let mut o2 = o.clone();
        o2.derives.push("Hash".into());
        assert_ne!(h1, inputs_hash(dir.path(), &o2).unwrap());
        std::fs::write(dir.path().join("2.sql"), "ALTER TABLE t ADD COLUMN x TEXT;").unwrap();
        assert_ne!(h1, inputs_hash(dir.path(), &o).unwrap());
    }
}
