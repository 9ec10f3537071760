//! [`Raw`]: a value in the JSON form, borrowed from the text it was read from, and what the
//! scanner hands unescaped text to.

use std::fmt::Write as _;

use super::read::{unescape_into, unhex};
use crate::value::Value;

/// A value in the JSON form, borrowed from the text it was read from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw<'a> {
    /// `null` (and a NaN, which SQLite stores as NULL).
    Null,
    /// An integer (`true` and `false` read as 1 and 0).
    Integer(i64),
    /// A real.
    Real(f64),
    /// A string: its JSON text, quotes and escapes included, and the length in bytes of the
    /// text it holds.
    Text {
        /// The JSON text.
        json: &'a str,
        /// The unescaped length.
        len: usize,
    },
    /// A blob: its hex digits (an even number of them).
    Blob {
        /// The hex digits.
        hex: &'a str,
    },
}

impl Raw<'_> {
    /// What kind of value it is, for messages: `null`, `an integer`, `a real`, `text`, `a blob`.
    pub fn describe(&self) -> &'static str {
        match self {
            Raw::Null => "null",
            Raw::Integer(_) => "an integer",
            Raw::Real(_) => "a real",
            Raw::Text { .. } => "text",
            Raw::Blob { .. } => "a blob",
        }
    }

    /// The bytes it stores, as [`Value::size`] counts them.
    pub fn size(&self) -> usize {
        match self {
            Raw::Null => 0,
            Raw::Integer(_) | Raw::Real(_) => 8,
            Raw::Text { len, .. } => *len,
            Raw::Blob { hex } => hex.len() / 2,
        }
    }

    /// The value, decoded.
    pub fn to_value(&self) -> Value {
        match *self {
            Raw::Null => Value::Null,
            Raw::Integer(i) => Value::Integer(i),
            Raw::Real(f) => Value::Real(f),
            Raw::Text { json, len } => {
                let mut out = String::with_capacity(len);
                // Checked when it was read: it reads again.
                unescape_into(json, &mut out);
                Value::Text(out)
            }
            Raw::Blob { hex } => Value::Blob(unhex(hex).unwrap_or_default()),
        }
    }

    /// Appends its wire text: the JSON form, a blob as its hex text. A string's text is
    /// copied as it stands; numbers are written afresh, so a real always has the shortest
    /// text that reads back exactly.
    pub fn push_wire(&self, out: &mut String) {
        match *self {
            Raw::Null => out.push_str("null"),
            Raw::Integer(i) => {
                let _ = write!(out, "{i}");
            }
            Raw::Real(f) => super::push_wire(out, &Value::Real(f)),
            Raw::Text { json, .. } => out.push_str(json),
            Raw::Blob { hex } => {
                out.push('"');
                out.push_str(hex);
                out.push('"');
            }
        }
    }
}

/// Where unescaped string text goes: a string, or only its length.
pub(super) trait Sink {
    fn put(&mut self, s: &str);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl Sink for usize {
    fn put(&mut self, s: &str) {
        *self += s.len();
    }
}
