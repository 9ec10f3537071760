//! Checks of a struct against the project's schema files (`#[d1(schema = "...")]`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use d1_sync_schema::model::{kind_fits, rust_type_for, ValueKind};
use d1_sync_schema::names::did_you_mean;
use d1_sync_schema::Table;

use crate::ast::{Container, Field};
use crate::ctxt::Ctxt;

/// A second base directory for schema paths, used when the path does not exist under
/// `CARGO_MANIFEST_DIR`: trybuild compiles test cases in a copy of the crate under
/// `target/tests/trybuild/`, where the test's schema folders are not.
const MANIFEST_DIR_FALLBACK: &str = "D1_SYNC_MANIFEST_DIR";

fn resolve(relative: &str) -> PathBuf {
    let primary = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(relative);
    if primary.exists() {
        return primary;
    }
    match std::env::var_os(MANIFEST_DIR_FALLBACK) {
        Some(base) if PathBuf::from(&base).join(relative).exists() => {
            PathBuf::from(base).join(relative)
        }
        _ => primary,
    }
}

/// Checks the container against its schema; returns the files read, so the expansion can
/// make cargo rebuild when one changes.
pub fn check(cx: &mut Ctxt, cont: &Container, upsert_sql: &str, delete_sql: &str) -> Vec<PathBuf> {
    let Some(lit) = &cont.attrs.schema else {
        return Vec::new();
    };
    let path = resolve(&lit.value());
    let schema = match d1_sync_schema::load_schema_cached(&path) {
        Ok(s) => s,
        Err(e) => {
            cx.error_spanned_by(lit, format!("cannot load schema files: {e}"));
            return Vec::new();
        }
    };
    let files = schema.files.clone();

    let Some(table) = schema.table(&cont.table) else {
        let names: Vec<&str> = schema.table_names().collect();
        let hint = match did_you_mean(&cont.table, names.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if names.is_empty() => "the schema defines no tables".to_string(),
            None => format!("the tables are: {}", names.join(", ")),
        };
        let how = if cont.attrs.table.is_none() {
            " (the default from the struct's name; set it with `#[d1(table = \"...\")]`)"
        } else {
            ""
        };
        cx.error_at(
            cont.table_span,
            format!(
                "no table `{}`{how} in the schema files at `{}`; {hint}",
                cont.table,
                lit.value()
            ),
        );
        return files;
    };

    let mut all_fields_are_columns = true;
    for f in cont.columns() {
        all_fields_are_columns &= check_field(cx, table, f);
    }

    let written: BTreeSet<&str> = cont.columns().map(|f| f.column.as_str()).collect();
    let missing: Vec<&str> = table
        .columns
        .iter()
        .filter(|c| c.is_required(table) && !written.contains(c.name.as_str()))
        .map(|c| c.name.as_str())
        .collect();
    // With a misspelt field, the column it meant would show up here again: say it once.
    if !missing.is_empty() && all_fields_are_columns {
        let list = missing
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let (what, them) = if missing.len() == 1 {
            ("column", "it")
        } else {
            ("columns", "them")
        };
        cx.error_spanned_by(
            &cont.input.ident,
            format!(
                "table `{}` needs a value for {what} {list} (NOT NULL, no default), but no field writes {them}: every insert would fail; add a field for each",
                table.name
            ),
        );
    }

    let ours: BTreeSet<&str> = cont.key_fields().map(|f| f.column.as_str()).collect();
    let theirs: BTreeSet<&str> = table.primary_key.iter().map(String::as_str).collect();
    if !ours.is_empty() && ours != theirs {
        let show = |s: &BTreeSet<&str>| {
            if s.is_empty() {
                "none (the table is keyed by its rowid only)".to_string()
            } else {
                s.iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let first_key = cont.key_fields().next().map(|f| f.column_span);
        cx.error_at(
            first_key.unwrap_or_else(|| cont.input.ident.span()),
            format!(
                "the struct's primary key is {} but table `{}`'s is {}; mark exactly the table's key columns with `#[d1(primary_key)]`",
                show(&ours),
                table.name,
                show(&theirs)
            ),
        );
    }

    if !cx.has_errors() {
        for (what, sql) in [("upsert", upsert_sql), ("delete", delete_sql)] {
            if let Err(msg) = schema.check_statement(sql) {
                cx.error_spanned_by(
                    &cont.input.ident,
                    format!("SQLite refuses the generated {what} of table `{}`: {msg} (the statement: {sql})", table.name),
                );
            }
        }
    }
    files
}

/// Checks one field against its column; `false` when the table has no such column.
fn check_field(cx: &mut Ctxt, table: &Table, f: &Field) -> bool {
    let Some(col) = table.column(&f.column) else {
        let names = table.columns.iter().map(|c| c.name.as_str());
        let hint = match did_you_mean(&f.column, names) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!(
                "its columns are: {}",
                table
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        cx.error_at(
            f.column_span,
            format!(
                "table `{}` has no column `{}`; {hint}",
                table.name, f.column
            ),
        );
        return false;
    };
    if col.generated {
        cx.error_at(
            f.column_span,
            format!(
                "column `{}` of `{}` is generated, so it cannot be written; mark the field `#[d1(skip)]`",
                col.name, table.name
            ),
        );
        return true;
    }
    let ty = TypeInfo::of(f.ty);
    if ty.nullable && col.not_null {
        cx.error_spanned_by(
            f.ty,
            format!(
                "column `{}` of `{}` is NOT NULL, but `Option` lets the field be None and the write would fail; use the inner type",
                col.name, table.name
            ),
        );
    }
    if let Some(kind) = ty.kind {
        if !kind_fits(kind, col.affinity, table.strict) {
            let why = if table.strict {
                format!("a STRICT table refuses {} values there", kind.as_str())
            } else {
                format!("SQLite would store {} values there as text", kind.as_str())
            };
            cx.error_spanned_by(
                f.ty,
                format!(
                    "column `{}` of `{}` is `{}`: {why}; use `{}`",
                    col.name,
                    table.name,
                    col.decl_type,
                    rust_type_for(col.affinity, &col.decl_type)
                ),
            );
        }
    }
    true
}

/// What the derive can tell of a field's type from its syntax. User types give `kind: None`
/// (nothing is checked beyond the `ToValue` bound).
struct TypeInfo {
    nullable: bool,
    kind: Option<ValueKind>,
}

impl TypeInfo {
    fn of(ty: &syn::Type) -> TypeInfo {
        match ty {
            syn::Type::Reference(r) => TypeInfo::of(&r.elem),
            syn::Type::Paren(p) => TypeInfo::of(&p.elem),
            syn::Type::Group(g) => TypeInfo::of(&g.elem),
            syn::Type::Slice(s) if is_ident(&s.elem, "u8") => TypeInfo {
                nullable: false,
                kind: Some(ValueKind::Blob),
            },
            syn::Type::Path(p) if p.qself.is_none() => {
                let Some(last) = p.path.segments.last() else {
                    return TypeInfo {
                        nullable: false,
                        kind: None,
                    };
                };
                let name = last.ident.to_string();
                let arg = match &last.arguments {
                    syn::PathArguments::AngleBracketed(a) => a.args.iter().find_map(|a| match a {
                        syn::GenericArgument::Type(t) => Some(t),
                        _ => None,
                    }),
                    _ => None,
                };
                let kind = match name.as_str() {
                    "Option" => {
                        let inner = arg.map(TypeInfo::of);
                        return TypeInfo {
                            nullable: true,
                            kind: inner.and_then(|i| i.kind),
                        };
                    }
                    "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "isize" | "bool" => {
                        Some(ValueKind::Integer)
                    }
                    "f32" | "f64" => Some(ValueKind::Real),
                    "String" | "str" => Some(ValueKind::Text),
                    "Box" | "Cow" | "Rc" | "Arc" => arg.map(TypeInfo::of).and_then(|i| i.kind),
                    "Vec" if arg.is_some_and(|t| is_ident(t, "u8")) => Some(ValueKind::Blob),
                    "Value"
                        if p.path.segments.len() > 1
                            && p.path.segments[p.path.segments.len() - 2].ident == "serde_json" =>
                    {
                        Some(ValueKind::Text)
                    }
                    _ => None,
                };
                TypeInfo {
                    nullable: false,
                    kind,
                }
            }
            _ => TypeInfo {
                nullable: false,
                kind: None,
            },
        }
    }
}

fn is_ident(ty: &syn::Type, name: &str) -> bool {
    matches!(ty, syn::Type::Path(p) if p.qself.is_none() && p.path.is_ident(name))
}
