//! Checks of a struct against the project's schema files (`#[d1(schema = "...")]`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use d1_sync_schema::model::{kind_fits, rust_type_for, ValueKind};
use d1_sync_schema::names::did_you_mean;
use d1_sync_schema::Table;

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::ast::{Container, Field};
use crate::ctxt::Ctxt;

/// What checking against the schema files gives the expansion.
#[derive(Default)]
pub struct Checked {
    /// The files read: the expansion includes them, so cargo rebuilds when one changes.
    pub files: Vec<PathBuf>,
    /// The checks of the fields' types, as constants (see [`type_checks`]).
    pub type_checks: TokenStream,
}

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

/// Checks the container against its schema: errors go to `cx`; the files read and the
/// checks of the fields' types go into the expansion.
pub fn check(cx: &mut Ctxt, cont: &Container, upsert_sql: &str, delete_sql: &str) -> Checked {
    let Some(lit) = &cont.attrs.schema else {
        return Checked::default();
    };
    let path = resolve(&lit.value());
    let schema = match d1_sync_schema::load_schema_cached(&path) {
        Ok(s) => s,
        Err(e) => {
            cx.error_spanned_by(lit, format!("cannot load schema files: {e}"));
            return Checked::default();
        }
    };
    let mut checked = Checked {
        files: schema.files.clone(),
        type_checks: TokenStream::new(),
    };

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
        return checked;
    };

    let mut all_fields_are_columns = true;
    for f in cont.columns() {
        all_fields_are_columns &= check_field(cx, cont, table, f, &mut checked.type_checks);
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
    checked
}

/// Checks one field against its column, adding the checks of its type to `checks`; `false`
/// when the table has no such column.
fn check_field(
    cx: &mut Ctxt,
    cont: &Container,
    table: &Table,
    f: &Field,
    checks: &mut TokenStream,
) -> bool {
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
    if f.is_version() && (col.affinity != d1_sync_schema::Affinity::Integer || !col.not_null) {
        cx.error_at(
            f.column_span,
            format!(
                "the version column `{}` of `{}` is declared `{}{}`; the version guard compares integers that every row has: declare it `INTEGER NOT NULL` in a migration",
                col.name,
                table.name,
                col.decl_type,
                if col.not_null { " NOT NULL" } else { "" }
            ),
        );
    }
    checks.extend(type_checks(cont, table, col, f));
    true
}

/// The checks of a field's type against its column, as constants the compiler evaluates:
/// they ask the type itself (`<T as ToValue>::KIND` and `NULLABLE`), so a type alias, a
/// wrapper or the user's own `ToValue` type is checked as surely as `i64`. A failing one is a
/// compile error on the field's type that names the column and the type to use. A field whose
/// type names a generic parameter of the struct is checked at no point before run time.
fn type_checks(
    cont: &Container,
    table: &Table,
    col: &d1_sync_schema::Column,
    f: &Field,
) -> TokenStream {
    if mentions_generic(f.ty, &cont.input.generics) {
        return TokenStream::new();
    }
    let ty = f.ty;
    let to_value = quote_spanned! {ty.span()=> <#ty as ::d1_sync::__private::ToValue> };
    let mut out = TokenStream::new();
    if col.not_null {
        let msg = format!(
            "column `{}` of `{}` is NOT NULL, but `Option` lets the field be None and the write would fail; use the inner type",
            col.name, table.name
        );
        out.extend(quote_spanned! {ty.span()=>
            const _: () = if #to_value::NULLABLE { ::core::panic!(#msg) };
        });
    }
    let arms = [
        (ValueKind::Integer, quote!(Integer)),
        (ValueKind::Real, quote!(Real)),
        (ValueKind::Text, quote!(Text)),
        (ValueKind::Blob, quote!(Blob)),
    ]
    .into_iter()
    .filter(|(kind, _)| !kind_fits(*kind, col.affinity, table.strict))
    .map(|(kind, variant)| {
        let why = if table.strict {
            format!("a STRICT table refuses {} values there", kind.as_str())
        } else {
            format!("SQLite would store {} values there as text", kind.as_str())
        };
        let msg = format!(
            "column `{}` of `{}` is `{}`: {why}; use `{}`",
            col.name,
            table.name,
            col.decl_type,
            rust_type_for(col.affinity, &col.decl_type)
        );
        quote_spanned! {ty.span()=>
            ::d1_sync::__private::ValueKind::#variant => ::core::panic!(#msg),
        }
    })
    .collect::<Vec<_>>();
    if !arms.is_empty() {
        out.extend(quote_spanned! {ty.span()=>
            const _: () = match #to_value::KIND {
                #(#arms)*
                _ => {}
            };
        });
    }
    out
}

/// Whether `ty` names one of the type parameters of `generics`.
fn mentions_generic(ty: &syn::Type, generics: &syn::Generics) -> bool {
    let params: Vec<&syn::Ident> = generics.type_params().map(|p| &p.ident).collect();
    if params.is_empty() {
        return false;
    }
    fn walk(ts: TokenStream, params: &[&syn::Ident]) -> bool {
        ts.into_iter().any(|t| match t {
            proc_macro2::TokenTree::Ident(i) => params.iter().any(|p| **p == i),
            proc_macro2::TokenTree::Group(g) => walk(g.stream(), params),
            _ => false,
        })
    }
    walk(quote!(#ty), &params)
}
