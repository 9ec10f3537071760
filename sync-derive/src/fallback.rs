//! On error: a stub impl beside the errors, so uses of the type elsewhere in the crate do not
//! add "trait `SyncRow` is not implemented" errors to the real one. It never runs: the crate
//! does not compile while the errors stand.

use proc_macro2::TokenStream;
use quote::quote;

pub fn stub(input: &syn::DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_g, ty_g, where_c) = input.generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_g ::d1_sync::__private::SyncRow for #ident #ty_g #where_c {
            const TABLE: &'static str = "";
            const COLUMNS: &'static [&'static str] = &[];
            const PRIMARY_KEY: &'static [&'static str] = &[];
            const INSERT_ONLY: &'static [&'static str] = &[];
            const COLUMN_KINDS: &'static [::d1_sync::__private::ValueKind] = &[];
            const UPSERT_SQL: &'static str = "";
            const SAVE_SQL: &'static str = "";
            const DELETE_SQL: &'static str = "";
            const DEFINITION: &'static str = "";
            const DEFINITION_ID: i64 = 0;
            fn values(&self) -> ::d1_sync::__private::Vec<::d1_sync::__private::Value> {
                ::core::unreachable!()
            }
            fn key_values(&self) -> ::d1_sync::__private::Vec<::d1_sync::__private::Value> {
                ::core::unreachable!()
            }
        }
    }
}
