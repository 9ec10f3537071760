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
