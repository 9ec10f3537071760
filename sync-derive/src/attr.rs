//! `#[d1(...)]` attribute parsing, with "did you mean" for unknown keys.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::LitStr;

use crate::ctxt::Ctxt;

const CONTAINER_KEYS: &[&str] = &["table", "rename_all", "schema"];
const FIELD_KEYS: &[&str] = &["primary_key", "rename", "insert_only", "skip", "version"];

/// `#[d1(...)]` on the struct.
#[derive(Default)]
pub struct ContainerAttrs {
    pub table: Option<LitStr>,
    pub rename_all: Option<LitStr>,
    pub schema: Option<LitStr>,
}

/// `#[d1(...)]` on a field. Flags keep their span for errors.
#[derive(Default)]
pub struct FieldAttrs {
    /// An attribute of the field that could not be understood may have meant `primary_key`
    /// (a near miss like `primary_kye`, or one that did not parse): the missing-key error
    /// would only repeat it. Any other mistake leaves the missing key reported in the same
    /// build.
    pub maybe_key: bool,
    pub primary_key: Option<Span>,
    pub rename: Option<LitStr>,
    pub insert_only: Option<Span>,
    pub skip: Option<Span>,
    /// `#[d1(version)]`: the column the version guard compares.
    pub version: Option<Span>,
}

/// Reports an unknown key; returns the key it probably meant, if any.
fn unknown_key(
    cx: &mut Ctxt,
    meta: &ParseNestedMeta,
    here: &[&'static str],
    other: &[&str],
    place: &str,
) -> Option<&'static str> {
    let name = meta
        .path
        .get_ident()
        .map(|i| i.to_string())
        .unwrap_or_else(|| {
            let path = &meta.path;
            quote::quote!(#path).to_string().replace(' ', "")
        });
    let mut meant = None;
    let msg = if other.contains(&name.as_str()) {
        let elsewhere = if place == "struct" { "field" } else { "struct" };
        format!("`{name}` goes on the {elsewhere}, not on a {place}")
    } else {
        let mut m = format!("unknown d1 attribute `{name}`");
        match d1_sync_schema::names::did_you_mean(&name, here.iter().copied()) {
            Some(s) => {
                meant = Some(s);
                m.push_str(&format!("; did you mean `{s}`?"));
            }
            None => m.push_str(&format!("; expected one of: {}", here.join(", "))),
        }
        m
    };
    cx.error_spanned_by(&meta.path, msg);
    meant
}

/// Parses the `d1` attributes of a struct; errors go to `cx`.
pub fn container(cx: &mut Ctxt, attrs: &[syn::Attribute]) -> ContainerAttrs {
    let mut out = ContainerAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("d1")) {
        let res = attr.parse_nested_meta(|meta| {
            let slot = if meta.path.is_ident("table") {
                &mut out.table
            } else if meta.path.is_ident("rename_all") {
                &mut out.rename_all
            } else if meta.path.is_ident("schema") {
                &mut out.schema
            } else {
                let _ = unknown_key(cx, &meta, CONTAINER_KEYS, FIELD_KEYS, "struct");
                // Skip a value, if any, so parsing goes on to the next key.
                if meta.input.peek(syn::Token![=]) {
                    let _: syn::Expr = meta.value()?.parse()?;
                }
                return Ok(());
            };
            let value: LitStr = meta.value()?.parse()?;
            if slot.is_some() {
                cx.error_spanned_by(&meta.path, "duplicate d1 attribute");
            }
            *slot = Some(value);
            Ok(())
        });
        if let Err(e) = res {
            cx.syn_error(e);
        }
    }
    out
}

/// Parses the `d1` attributes of a field; errors go to `cx`.
pub fn field(cx: &mut Ctxt, attrs: &[syn::Attribute]) -> FieldAttrs {
    let mut out = FieldAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("d1")) {
        let res = attr.parse_nested_meta(|meta| {
            let span = meta
                .path
                .get_ident()
                .map_or_else(Span::call_site, |i| i.span());
            let flag = if meta.path.is_ident("primary_key") {
                Some(&mut out.primary_key)
            } else if meta.path.is_ident("insert_only") {
                Some(&mut out.insert_only)
            } else if meta.path.is_ident("skip") {
                Some(&mut out.skip)
            } else if meta.path.is_ident("version") {
                Some(&mut out.version)
            } else {
                None
            };
            if let Some(slot) = flag {
                if meta.input.peek(syn::Token![=]) {
                    let name = meta
                        .path
                        .get_ident()
                        .map(|i| i.to_string())
                        .unwrap_or_default();
                    cx.error_spanned_by(
                        &meta.path,
                        format!("`{name}` takes no value: write `#[d1({name})]`"),
                    );
                    let _: syn::Expr = meta.value()?.parse()?;
                }
                if slot.is_some() {
                    cx.error_at(span, "duplicate d1 attribute");
                }
                *slot = Some(span);
                return Ok(());
            }
            if meta.path.is_ident("rename") {
                let value: LitStr = meta.value()?.parse()?;
                if out.rename.is_some() {
                    cx.error_at(span, "duplicate d1 attribute");
                }
                out.rename = Some(value);
                return Ok(());
            }
            if unknown_key(cx, &meta, FIELD_KEYS, CONTAINER_KEYS, "field") == Some("primary_key") {
                out.maybe_key = true;
            }
            if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
        if let Err(e) = res {
            out.maybe_key = true;
            cx.syn_error(e);
        }
    }
    out
}
