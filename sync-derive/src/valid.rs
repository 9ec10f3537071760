//! Checks that need no schema files: keys, attribute combinations, duplicates, D1's limits.

use std::collections::HashMap;

use d1_sync_schema::limits::{MAX_BOUND_PARAMETERS, MAX_COLUMNS};

use crate::ast::Container;
use crate::ctxt::Ctxt;

pub fn check(cx: &mut Ctxt, cont: &Container) {
    let name = &cont.input.ident;

    for f in &cont.fields {
        if let (Some(skip), true) = (f.attrs.skip, f.is_key()) {
            cx.error_at(
                skip,
                format!(
                    "`{}` is part of the primary key and cannot be skipped",
                    f.ident
                ),
            );
        }
        if let (Some(io), true) = (f.attrs.insert_only, f.is_key()) {
            cx.error_at(
                io,
                format!(
                    "`{}` is part of the primary key, which an update never changes anyway; remove `insert_only`",
                    f.ident
                ),
            );
        }
        if let Some(skip) = f.attrs.skip {
            if f.attrs.rename.is_some() || f.attrs.insert_only.is_some() && !f.is_key() {
                cx.error_at(
                    skip,
                    format!(
                        "`{}` is skipped, so `rename` and `insert_only` mean nothing on it",
                        f.ident
                    ),
                );
            }
        }
    }

    check_version(cx, cont);

    let mut seen: HashMap<&str, &syn::Ident> = HashMap::new();
    for f in cont.columns() {
        if let Some(first) = seen.get(f.column.as_str()) {
            cx.error_at(
                f.column_span,
                format!(
                    "column `{}` is already written by field `{first}`; rename one of them or skip it",
                    f.column
                ),
            );
        } else {
            seen.insert(&f.column, f.ident);
        }
    }

    // A key field that is skipped, or an attribute that probably meant `primary_key`, has its
    // own error already.
    let key_mentioned = cont.fields.iter().any(|f| f.is_key() || f.attrs.maybe_key);
    if !key_mentioned {
        cx.error_spanned_by(
            name,
            format!(
                "`{name}` has no primary key: mark the key field with `#[d1(primary_key)]` (several fields for a composite key)"
            ),
        );
    }

    let n = cont.columns().count();
    if n > MAX_COLUMNS {
        cx.error_spanned_by(
            name,
            format!(
                "`{name}` maps {n} columns, but D1 allows at most {MAX_COLUMNS} columns per table \
                 and {MAX_BOUND_PARAMETERS} bound parameters per statement; skip some fields or split the table"
            ),
        );
    }
}

/// `#[d1(version)]`: one field at most, a column of its own (not the key, not insert-only,
/// not skipped), and not an `Option` (every write must carry a version). That its type is an
/// integer is checked on the type itself (see `expand`), so aliases are seen through.
fn check_version(cx: &mut Ctxt, cont: &Container) {
    let mut first: Option<&syn::Ident> = None;
    for f in &cont.fields {
        let Some(span) = f.attrs.version else {
            continue;
        };
        if let Some(first) = first {
            cx.error_at(
                span,
                format!(
                    "`{first}` is already the version; a table has one version column, so remove `version` from `{}`",
                    f.ident
                ),
            );
            continue;
        }
        first = Some(f.ident);
        let clash = if f.is_key() {
            Some("part of the primary key: a key never changes, so it cannot tell an older write from a newer one; version another column")
        } else if f.is_insert_only() {
            Some("insert-only, but every write must carry its version to D1; remove `insert_only`")
        } else if f.attrs.skip.is_some() {
            Some("skipped, so it would never reach D1; remove `skip`")
        } else {
            None
        };
        if let Some(why) = clash {
            cx.error_at(span, format!("the version `{}` is {why}", f.ident));
        } else if is_option(f.ty) {
            cx.error_at(
                span,
                format!(
                    "the version `{}` cannot be an `Option`: every write must carry a version for D1 to compare; use an integer such as `i64` (stamp it with `d1_sync::Hlc`)",
                    f.ident
                ),
            );
        }
    }
}

/// Whether `ty` is written `Option<...>` (by any path ending in `Option`).
fn is_option(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Option"),
        syn::Type::Group(g) => is_option(&g.elem),
        syn::Type::Paren(p) => is_option(&p.elem),
        _ => false,
    }
}
