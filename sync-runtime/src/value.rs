//! Values: SQLite's five storage classes, and the conversion from field types.

use std::borrow::Cow;

pub use d1_sync_schema::model::ValueKind;

/// One SQLite value, with its storage class kept exactly.
///
/// ```
/// use d1_sync::{ToValue, Value};
/// assert_eq!(42i32.to_value(), Value::Integer(42));
/// assert_eq!(Some("hi").to_value(), Value::Text("hi".into()));
/// assert_eq!(None::<f64>.to_value(), Value::Null);
/// assert_eq!(true.to_value(), Value::Integer(1));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A signed 64-bit integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Value {
    /// The storage class's kind (`Any` for NULL, which fits every column).
    pub fn kind(&self) -> ValueKind {
        match self {
            Value::Null => ValueKind::Any,
            Value::Integer(_) => ValueKind::Integer,
            Value::Real(_) => ValueKind::Real,
            Value::Text(_) => ValueKind::Text,
            Value::Blob(_) => ValueKind::Blob,
        }
    }

    /// Bytes the value occupies in D1's size limits (text and blobs; numbers count 8).
    pub fn size(&self) -> usize {
        match self {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) => 8,
            Value::Text(s) => s.len(),
            Value::Blob(b) => b.len(),
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl rusqlite::types::FromSql for Value {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        use rusqlite::types::ValueRef;
        Ok(match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(
                std::str::from_utf8(t)
                    .map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))?
                    .to_string(),
            ),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        })
    }
}

/// Converts a field's type into a [`Value`]. The derive calls it for every column.
///
/// Implemented for the integer types that fit `i64` (`i8`–`i64`, `u8`–`u32`, `isize`),
/// `f32`/`f64`, `bool` (0/1), `String`/`&str`/`Box<str>`/`Cow<str>`, `Vec<u8>`/`&[u8]`,
/// `serde_json::Value` (stored as JSON text), [`Value`] itself, and `Option<T>` (NULL for
/// `None`). Implement it for your own types:
///
/// ```
/// use d1_sync::{ToValue, Value, ValueKind};
/// struct Cents(u32);
/// impl ToValue for Cents {
///     const KIND: ValueKind = ValueKind::Integer;
///     fn to_value(&self) -> Value { Value::Integer(i64::from(self.0)) }
/// }
/// assert_eq!(Cents(250).to_value(), Value::Integer(250));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a D1 column",
    label = "no `d1_sync::ToValue` for `{Self}`",
    note = "a column takes i8..i64, u8..u32, f32, f64, bool, String, &str, Vec<u8>, serde_json::Value, d1_sync::Value or an Option of one of them",
    note = "u64, usize and u128 are left out on purpose: SQLite stores signed 64-bit integers, so values above i64::MAX would not fit; use i64 (or String for wider numbers)",
    note = "implement `d1_sync::ToValue` for `{Self}`, or leave the field out with `#[d1(skip)]`"
)]
pub trait ToValue {
    /// The kind of value this type stores.
    const KIND: ValueKind;
    /// Whether the type can hold NULL (`Option<T>`).
    const NULLABLE: bool = false;
    /// The value to store.
    fn to_value(&self) -> Value;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            const KIND: ValueKind = ValueKind::Integer;
            fn to_value(&self) -> Value {
                Value::Integer(i64::from(*self))
            }
        }
    )*};
}
int_to_value!(i8, i16, i32, i64, u8, u16, u32, bool);

impl ToValue for isize {
    const KIND: ValueKind = ValueKind::Integer;
    fn to_value(&self) -> Value {
        // isize is at most 64 bits on every platform Rust supports.
        Value::Integer(*self as i64)
    }
}

impl ToValue for f64 {
    const KIND: ValueKind = ValueKind::Real;
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}

impl ToValue for f32 {
    const KIND: ValueKind = ValueKind::Real;
    fn to_value(&self) -> Value {
        Value::Real(f64::from(*self))
    }
}

impl ToValue for str {
    const KIND: ValueKind = ValueKind::Text;
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}

impl ToValue for String {
    const KIND: ValueKind = ValueKind::Text;
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl ToValue for Box<str> {
    const KIND: ValueKind = ValueKind::Text;
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}

impl ToValue for Cow<'_, str> {
    const KIND: ValueKind = ValueKind::Text;
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}

impl ToValue for [u8] {
    const KIND: ValueKind = ValueKind::Blob;
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}

impl ToValue for Vec<u8> {
    const KIND: ValueKind = ValueKind::Blob;
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}

impl ToValue for serde_json::Value {
    const KIND: ValueKind = ValueKind::Text;
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}

impl ToValue for Value {
    const KIND: ValueKind = ValueKind::Any;
    const NULLABLE: bool = true;
    fn to_value(&self) -> Value {
        self.clone()
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    const KIND: ValueKind = T::KIND;
    const NULLABLE: bool = T::NULLABLE;
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    const KIND: ValueKind = T::KIND;
    const NULLABLE: bool = true;
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_the_storage_class() {
        assert_eq!(i64::MIN.to_value(), Value::Integer(i64::MIN));
        assert_eq!(u32::MAX.to_value(), Value::Integer(4_294_967_295));
        assert_eq!(1.5f32.to_value(), Value::Real(1.5));
        assert_eq!(false.to_value(), Value::Integer(0));
        assert_eq!(vec![0u8, 255].to_value(), Value::Blob(vec![0, 255]));
        assert_eq!(
            serde_json::json!({"a": [1, 2]}).to_value(),
            Value::Text(r#"{"a":[1,2]}"#.into())
        );
        assert_eq!(Box::<str>::from("x").to_value(), Value::Text("x".into()));
        assert_eq!(None::<String>.to_value(), Value::Null);
        const { assert!(<Option<i64> as ToValue>::NULLABLE) };
        const { assert!(!<i64 as ToValue>::NULLABLE) };
    }

    #[test]
    fn round_trips_through_rusqlite() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let vals = [
            Value::Null,
            Value::Integer(i64::MAX),
            Value::Real(-0.25),
            Value::Text("é \"'".into()),
            Value::Blob(vec![1, 2, 3]),
        ];
        for v in vals {
            let back: Value = conn.query_row("SELECT ?1", [&v], |r| r.get(0)).unwrap();
            assert_eq!(back, v);
        }
    }
}
