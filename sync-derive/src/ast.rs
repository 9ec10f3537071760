//! The derive's model of the input: the container and its fields, names resolved.

use proc_macro2::Span;

use crate::attr::{self, ContainerAttrs, FieldAttrs};
use crate::ctxt::Ctxt;

pub struct Container<'a> {
    pub input: &'a syn::DeriveInput,
    pub attrs: ContainerAttrs,
    /// The table name, and the span to report table errors on.
    pub table: String,
    pub table_span: Span,
    /// Every field, skipped ones included.
    pub fields: Vec<Field<'a>>,
}

pub struct Field<'a> {
    pub ident: &'a syn::Ident,
    pub ty: &'a syn::Type,
    pub attrs: FieldAttrs,
    /// The column name after `rename` / `rename_all`.
    pub column: String,
    /// Span to report column-name errors on: the `rename` value, else the field name.
    pub column_span: Span,
}

impl Field<'_> {
    pub fn is_column(&self) -> bool {
        self.attrs.skip.is_none()
    }
    pub fn is_key(&self) -> bool {
        self.attrs.primary_key.is_some()
    }
    pub fn is_insert_only(&self) -> bool {
        self.attrs.insert_only.is_some()
    }
    pub fn is_version(&self) -> bool {
        self.attrs.version.is_some()
    }
}

impl<'a> Container<'a> {
    /// `None` when the input is not a struct with named fields (the error is in `cx`).
    pub fn from_ast(cx: &mut Ctxt, input: &'a syn::DeriveInput) -> Option<Container<'a>> {
        let attrs = attr::container(cx, &input.attrs);
        let named = match &input.data {
            syn::Data::Struct(syn::DataStruct {
                fields: syn::Fields::Named(named),
                ..
            }) => named,
            syn::Data::Struct(s) => {
                let what = match s.fields {
                    syn::Fields::Unit => "a unit struct",
                    _ => "a tuple struct",
                };
                cx.error_spanned_by(
                    &input.ident,
                    format!(
                        "D1Sync needs a struct with named fields, one per column; `{}` is {what}",
                        input.ident
                    ),
                );
                return None;
            }
            syn::Data::Enum(e) => {
                cx.error_at(
                    e.enum_token.span,
                    "D1Sync needs a struct with named fields, one per column; an enum is not a row",
                );
                return None;
            }
            syn::Data::Union(u) => {
                cx.error_at(
                    u.union_token.span,
                    "D1Sync needs a struct with named fields, one per column; a union is not a row",
                );
                return None;
            }
        };

        let rename_all = attrs.rename_all.as_ref().and_then(|lit| {
            let rule = lit.value();
            if d1_sync_schema::names::apply_rename_rule(&rule, "x").is_some() {
                Some(rule)
            } else {
                let hint = match d1_sync_schema::names::did_you_mean(
                    &rule,
                    d1_sync_schema::names::RENAME_RULES.iter().copied(),
                ) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => format!(
                        "expected one of: {}",
                        d1_sync_schema::names::RENAME_RULES.join(", ")
                    ),
                };
                cx.error_spanned_by(lit, format!("unknown rename_all rule \"{rule}\"; {hint}"));
                None
            }
        });

        let mut fields = Vec::new();
        for f in &named.named {
            let Some(ident) = f.ident.as_ref() else {
                continue;
            };
            let fattrs = attr::field(cx, &f.attrs);
            let raw = ident.to_string();
            let raw = raw.strip_prefix("r#").unwrap_or(&raw).to_string();
            let (column, column_span) = match &fattrs.rename {
                Some(lit) => {
                    if lit.value().is_empty() {
                        cx.error_spanned_by(lit, "a column name cannot be empty");
                    }
                    (lit.value(), lit.span())
                }
                None => {
                    let name = rename_all
                        .as_deref()
                        .and_then(|r| d1_sync_schema::names::apply_rename_rule(r, &raw))
                        .unwrap_or(raw);
                    (name, ident.span())
                }
            };
            fields.push(Field {
                ident,
                ty: &f.ty,
                attrs: fattrs,
                column,
                column_span,
            });
        }

        let (table, table_span) = match &attrs.table {
            Some(lit) => {
                if lit.value().is_empty() {
                    cx.error_spanned_by(lit, "a table name cannot be empty");
                }
                (lit.value(), lit.span())
            }
            None => (
                d1_sync_schema::names::snake_case(&input.ident.to_string()),
                input.ident.span(),
            ),
        };
        Some(Container {
            input,
            attrs,
            table,
            table_span,
            fields,
        })
    }

    pub fn columns(&self) -> impl Iterator<Item = &Field<'a>> {
        self.fields.iter().filter(|f| f.is_column())
    }

    pub fn key_fields(&self) -> impl Iterator<Item = &Field<'a>> {
        self.columns().filter(|f| f.is_key())
    }
    /// The version field (`#[d1(version)]`): the first one, if several (that is an error).
    pub fn version_field(&self) -> Option<&Field<'a>> {
        self.columns().find(|f| f.is_version())
    }
}
