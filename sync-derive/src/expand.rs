//! The model → the `SyncRow` impl.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use crate::ast::{Container, Field};
use crate::ctxt::Ctxt;
use crate::{fallback, schema_check, valid};

pub fn derive(input: &syn::DeriveInput) -> TokenStream {
    let mut cx = Ctxt::default();
    let Some(cont) = Container::from_ast(&mut cx, input) else {
        let stub = fallback::stub(input);
        let errors = cx.into_compile_errors();
        return quote! { #errors #stub };
    };
    valid::check(&mut cx, &cont);

    let columns: Vec<&str> = cont.columns().map(|f| f.column.as_str()).collect();
    let keys: Vec<&str> = cont.key_fields().map(|f| f.column.as_str()).collect();
    let insert_only: Vec<&str> = cont
        .columns()
        .filter(|f| f.is_insert_only())
        .map(|f| f.column.as_str())
        .collect();
    let version = cont.version_field().map(|f| f.column.as_str());
    let upsert = match version {
        // The local upsert guards the row: only a newer version overwrites it.
        Some(v) => d1_sync_schema::guard::save_sql(&cont.table, &columns, &keys, &insert_only, v),
        None => d1_sync_schema::sql::upsert_sql(&cont.table, &columns, &keys, &insert_only),
    };
    let delete = d1_sync_schema::sql::delete_sql(&cont.table, &keys);

    let checked = schema_check::check(&mut cx, &cont, &upsert, &delete);
    if cx.has_errors() {
        let stub = fallback::stub(input);
        let errors = cx.into_compile_errors();
        return quote! { #errors #stub };
    }
    impl_sync_row(
        &cont,
        &columns,
        &keys,
        &insert_only,
        &upsert,
        &delete,
        &checked,
    )
}

/// The version field's members: `VERSION`, and `set_version` through the field type's
/// `VersionField` (an integer: a compile error on the field's type otherwise, alias or not).
fn version_items(cont: &Container) -> TokenStream {
    let Some(f) = cont.version_field() else {
        return quote! {};
    };
    let (ident, ty, column) = (f.ident, f.ty, &f.column);
    let from = quote_spanned! {ty.span()=>
        <#ty as ::d1_sync::__private::VersionField>::from_version(version)
    };
    quote! {
        const VERSION: ::core::option::Option<&'static str> = ::core::option::Option::Some(#column);
        fn set_version(&mut self, version: i64) -> bool {
            match #from {
                ::core::option::Option::Some(v) => {
                    self.#ident = v;
                    true
                }
                ::core::option::Option::None => false,
            }
        }
    }
}

fn value_expr(f: &Field) -> TokenStream {
    let ident = f.ident;
    let ty = f.ty;
    // Spanned on the type, so a type without `ToValue` is reported on the field.
    quote_spanned! {ty.span()=>
        <#ty as ::d1_sync::__private::ToValue>::to_value(&self.#ident)
    }
}

fn impl_sync_row(
    cont: &Container,
    columns: &[&str],
    keys: &[&str],
    insert_only: &[&str],
    upsert: &str,
    delete: &str,
    checked: &schema_check::Checked,
) -> TokenStream {
    let ident = &cont.input.ident;
    let (impl_g, ty_g, where_c) = cont.input.generics.split_for_impl();
    let table = &cont.table;
    let version = cont.version_field().map(|f| f.column.as_str());
    let definition =
        d1_sync_schema::definition::definition_json(table, columns, keys, insert_only, version);
    let definition_id = d1_sync_schema::definition::definition_id(&definition);
    let save = match version {
        Some(_) => upsert.to_string(),
        None => d1_sync_schema::sql::save_sql(table, columns, keys, insert_only),
    };
    let version_items = version_items(cont);
    let kinds = cont.columns().map(|f| {
        let ty = f.ty;
        quote_spanned! {ty.span()=> <#ty as ::d1_sync::__private::ToValue>::KIND }
    });
    let values = cont.columns().map(value_expr);
    let key_values = cont.key_fields().map(value_expr);
    // Cargo rebuilds a crate when a file it `include_bytes!`es changes.
    let type_checks = &checked.type_checks;
    let deps = checked.files.iter().filter_map(|p| p.to_str()).map(|p| {
        quote! { const _: &[u8] = ::core::include_bytes!(#p); }
    });
    quote! {
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_attributes, unused_qualifications)]
        const _: () = {
            #(#deps)*
            #type_checks
            #[automatically_derived]
            impl #impl_g ::d1_sync::__private::SyncRow for #ident #ty_g #where_c {
                const TABLE: &'static str = #table;
                const COLUMNS: &'static [&'static str] = &[#(#columns),*];
                const PRIMARY_KEY: &'static [&'static str] = &[#(#keys),*];
                const INSERT_ONLY: &'static [&'static str] = &[#(#insert_only),*];
                const COLUMN_KINDS: &'static [::d1_sync::__private::ValueKind] = &[#(#kinds),*];
                const UPSERT_SQL: &'static str = #upsert;
                const SAVE_SQL: &'static str = #save;
                const DELETE_SQL: &'static str = #delete;
                const DEFINITION: &'static str = #definition;
                const DEFINITION_ID: i64 = #definition_id;
                #version_items
                fn values(&self) -> ::d1_sync::__private::Vec<::d1_sync::__private::Value> {
                    ::std::vec![#(#values),*]
                }
                fn key_values(&self) -> ::d1_sync::__private::Vec<::d1_sync::__private::Value> {
                    ::std::vec![#(#key_values),*]
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(src: &str) -> String {
        let input: syn::DeriveInput = syn::parse_str(src).unwrap();
        derive(&input).to_string()
    }

    #[test]
    fn the_expansion_includes_every_schema_file_so_cargo_rebuilds_on_change() {
        let out = expand(
            r#"#[d1(table = "messages", schema = "../examples/migrations")]
               struct M { #[d1(primary_key)] id: String, platform: String, role: String,
                          observed_at: i64, #[d1(insert_only)] created_at: i64 }"#,
        );
        assert!(!out.contains("compile_error"), "{out}");
        for f in [
            "0001_messages.sql",
            "0002_sessions.sql",
            "0003_conversations.sql",
            "0004_policy_state.sql",
            "0005_message_organization.sql",
        ] {
            assert!(
                out.contains("include_bytes") && out.contains(f),
                "{f} is not included: {out}"
            );
        }
    }

    #[test]
    fn without_schema_nothing_is_included_and_sql_is_const_text() {
        let out = expand("struct T { #[d1(primary_key)] id: i64, v: String }");
        assert!(!out.contains("include_bytes"));
        assert!(
            out.contains(r#"const UPSERT_SQL : & 'static str = "INSERT INTO \"t\""#),
            "{out}"
        );
    }

    #[test]
    fn errors_come_with_a_fallback_impl() {
        let out = expand("struct T { v: String }");
        assert!(out.contains("compile_error"));
        assert!(
            out.contains("unreachable"),
            "the stub impl keeps other uses compiling: {out}"
        );
    }
}
