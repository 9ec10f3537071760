//! The one JSON form of values: what the outbox stores (payloads, row keys) and what goes to
//! D1 in the rows of a `json_each` statement.
//!
//! It gives back exactly the [`Value`] that was written, and it is what SQLite reads back with
//! `json_extract`: `null`; integers as JSON integers (64-bit); finite reals always with a `.`
//! or an exponent (read back as reals); infinities as `±9e999`, which SQLite (and this
//! reader) read as ±infinity; NaN as `null`, since SQLite stores NaN as NULL anyway; text as
//! strings. JSON has no bytes, so a blob is the one tagged value: `{"blob": "<hex>"}` where it
//! is stored. On the wire the column's statement says it holds blobs
//! ([`JsonEncoding::Hex`], turned back with `unhex()`), so a blob travels as its hex string
//! alone. Every other value's stored text *is* its wire text.
//!
//! Records of older queues may hold `{"real": "inf" | "-inf" | "nan"}`; they still read.

mod raw;
mod read;

pub use read::Raw;
pub(crate) use read::{element_spans, for_each_element, for_each_pair, unescape, unhex};

use std::fmt::Write as _;

use d1_sync_schema::sql::JsonEncoding;

use crate::value::Value;

/// Appends `s` as a JSON string: quotes, backslashes and control characters escaped, the
/// rest (any unicode) as is.
fn push_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

fn push_finite_real(out: &mut String, f: f64) {
    let text =
        serde_json::Number::from_f64(f).map_or_else(|| "null".to_string(), |n| n.to_string());
    out.push_str(&text);
    // serde_json prints 1e300 as "1e300" and 3.0 as "3.0": both parse back as f64.
    if !text.contains(['.', 'e', 'E']) {
        out.push_str(".0");
    }
}

/// Appends the stored form of `v` (see the module docs).
pub fn push_stored(out: &mut String, v: &Value) {
    match v {
        Value::Blob(b) => {
            out.push_str("{\"blob\":\"");
            push_hex(out, b);
            out.push_str("\"}");
        }
        other => push_wire(out, other),
    }
}

/// The stored text of a value whose wire text is `wire` (one value of a wire row): the same
/// text, but for a blob (`blob`: tagged again) and a string with escapes other than this
/// writer's (written again as this writer writes it).
pub(crate) fn stored_text(wire: &str, blob: bool) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    if blob {
        return Cow::Owned(format!("{{\"blob\":{wire}}}"));
    }
    if wire.starts_with('"') && wire.contains('\\') {
        if let Some(text) = unescape(wire) {
            let mut out = String::with_capacity(wire.len());
            push_json_string(&mut out, &text);
            return Cow::Owned(out);
        }
    }
    Cow::Borrowed(wire)
}

/// The stored form of `values` as a JSON array (row keys).
pub fn stored_array(values: &[Value]) -> String {
    let mut out = String::from("[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_stored(&mut out, v);
    }
    out.push(']');
    out
}

/// The stored form of a row as a JSON object, column → value.
pub fn stored_object<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a Value)>) -> String {
    let mut out = String::from("{");
    for (i, (col, v)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, col);
        out.push(':');
        push_stored(&mut out, v);
    }
    out.push('}');
    out
}

/// A column of a decoded payload: its name, and its value or what is wrong with it.
pub type DecodedColumn = (String, Result<Value, String>);

/// A stored payload: the pairs of a JSON object, each value decoded (or what is wrong with
/// it), in document order. `Err` when the bytes are not a JSON object.
pub fn decode_payload(bytes: &[u8]) -> Result<Vec<DecodedColumn>, String> {
    let mut out = Vec::new();
    for_each_pair(bytes, &mut |name, value| {
        out.push((name.to_string(), value.map(|r| r.to_value())))
    })?;
    Ok(out)
}

/// A stored row key: the values of a JSON array, each decoded (or what is wrong with it).
/// `Err` when the bytes are not a JSON array.
pub fn decode_array(bytes: &[u8]) -> Result<Vec<Result<Value, String>>, String> {
    let mut out = Vec::new();
    for_each_element(bytes, &mut |v| out.push(v.map(|r| r.to_value())))?;
    Ok(out)
}

/// Whether SQLite's JSON number parser reads the shortest text of `f` back bit for bit.
///
/// It does not everywhere: with the decimal exponent beyond about −83 or +117, some values
/// come back one unit in the last place off (measured on SQLite 3.50 and on Cloudflare's local
/// D1 alike). Inside `1e-70 ≤ |f| < 1e100` (and for ±0) it does; a test keeps checking that
/// band against the bundled SQLite. Infinities travel as `±9e999`, which parse exactly.
pub fn real_is_json_exact(f: f64) -> bool {
    let a = f.abs();
    a == 0.0 || !a.is_finite() || (1e-70..1e100).contains(&a)
}

/// Whether a value can travel inside the JSON parameter (else it is bound on its own).
pub fn fits_json(v: &Value) -> bool {
    match v {
        Value::Real(f) => real_is_json_exact(*f),
        _ => true,
    }
}

/// How a value travels inside the JSON parameter: `Hex` for blobs, `Plain` for the rest.
pub fn wire_encoding(v: &Value) -> JsonEncoding {
    match v {
        Value::Blob(_) => JsonEncoding::Hex,
        _ => JsonEncoding::Plain,
    }
}

/// Appends the wire form of `v` (see the module docs).
pub fn push_wire(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Real(f) if f.is_nan() => out.push_str("null"),
        Value::Real(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "9e999" } else { "-9e999" })
        }
        Value::Real(f) => push_finite_real(out, *f),
        Value::Text(s) => push_json_string(out, s),
        Value::Blob(b) => {
            out.push('"');
            push_hex(out, b);
            out.push('"');
        }
    }
}

/// Appends one wire row: a JSON array of the values.
pub fn push_wire_row(out: &mut String, values: &[Value]) {
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_wire(out, v);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: Value) {
        let s = stored_array(std::slice::from_ref(&v));
        let back = decode_array(s.as_bytes()).unwrap().remove(0).unwrap();
        match &v {
            // SQLite stores NaN as NULL: so does the stored form.
            Value::Real(a) if a.is_nan() => assert_eq!(back, Value::Null, "{s}"),
            _ => assert_eq!(back, v, "{s}"),
        }
        if !matches!(v, Value::Blob(_)) {
            let mut wire = String::new();
            push_wire(&mut wire, &v);
            assert_eq!(
                wire,
                s[1..s.len() - 1],
                "one form: the stored text is the wire text"
            );
        }
    }

    #[test]
    fn stored_values_round_trip_exactly() {
        for v in [
            Value::Null,
            Value::Integer(0),
            Value::Integer(i64::MAX),
            Value::Integer(i64::MIN),
            Value::Integer(9_007_199_254_740_993),
            Value::Real(3.0),
            Value::Real(-0.0),
            Value::Real(1e300),
            Value::Real(f64::MIN_POSITIVE),
            Value::Real(0.1 + 0.2),
            Value::Real(f64::INFINITY),
            Value::Real(f64::NEG_INFINITY),
            Value::Real(f64::NAN),
            Value::Text(String::new()),
            Value::Text("quote \" backslash \\ tab \t nul \0 emoji 🦀 'x'".into()),
            Value::Blob(vec![]),
            Value::Blob((0..=255).collect()),
        ] {
            round_trip(v);
        }
    }

    #[test]
    fn strings_escape_like_serde_json() {
        for t in [
            "",
            "plain",
            "q\"b\\s",
            "nl\ncr\rtab\t",
            "\u{0}\u{1f}\u{7f}",
            "é🦀日本",
            "a\u{2028}b",
        ] {
            let mut s = String::new();
            push_json_string(&mut s, t);
            assert_eq!(s, serde_json::to_string(t).unwrap(), "{t:?}");
            assert_eq!(serde_json::from_str::<String>(&s).unwrap(), t);
        }
        // serde_json writes \b and \f here; \u0008 and \u000c read back the same.
        let mut s = String::new();
        push_json_string(&mut s, "\u{8}\u{c}");
        assert_eq!(s, r#""\u0008\u000c""#);
        assert_eq!(serde_json::from_str::<String>(&s).unwrap(), "\u{8}\u{c}");
    }

    #[test]
    fn random_reals_round_trip_through_the_stored_form() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for i in 0..200_000 {
            let f = if i % 2 == 0 {
                f64::from_bits(rng.random::<u64>())
            } else {
                rng.random_range(-1e7..1e7)
            };
            if f.is_nan() {
                continue;
            }
            round_trip(Value::Real(f));
        }
    }

    #[test]
    fn payloads_decode_pair_by_pair() {
        let p = decode_payload(br#" {"a":1,"b":"x\"y","c":{"blob":"00ff"},"d":[1],"e":18446744073709551615,"f":2.5,"g":null}"#).unwrap();
        let get = |k: &str| {
            p.iter()
                .find(|(c, _)| c == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get("a"), Ok(Value::Integer(1)));
        assert_eq!(get("b"), Ok(Value::Text("x\"y".into())));
        assert_eq!(get("c"), Ok(Value::Blob(vec![0, 255])));
        assert!(get("d").unwrap_err().contains("array"));
        assert!(get("e").unwrap_err().contains("64 signed bits"));
        assert_eq!(get("f"), Ok(Value::Real(2.5)));
        assert_eq!(get("g"), Ok(Value::Null));
        assert!(decode_payload(b"[1]").unwrap_err().contains("not an array"));
        assert!(decode_payload(b"{oops").unwrap_err().contains("not JSON"));
        assert!(decode_payload(b"").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn bad_stored_values_are_reported() {
        let p = |s: &str| decode_array(format!("[{s}]").as_bytes()).unwrap().remove(0);
        assert!(p("18446744073709551615")
            .unwrap_err()
            .contains("64 signed bits"));
        assert!(p(r#"{"blob":"abc"}"#).unwrap_err().contains("hex"));
        assert!(p(r#"{"blob":"zz"}"#).unwrap_err().contains("hex"));
        assert!(p(r#"{"x":1}"#).is_err());
        assert!(p(r#"{"blob":"00","x":1}"#).is_err());
        assert!(p("[1]").is_err());
        assert_eq!(p("true").unwrap(), Value::Integer(1));
        // An older queue's reals, and the form this one writes, read alike.
        assert_eq!(p(r#"{"real":"inf"}"#).unwrap(), Value::Real(f64::INFINITY));
        assert_eq!(p("-9e999").unwrap(), Value::Real(f64::NEG_INFINITY));
        assert_eq!(
            p(r#"{"real":"nan"}"#).unwrap(),
            Value::Null,
            "NaN reads as SQLite stores it"
        );
    }

    #[test]
    fn not_json_is_refused_as_a_whole() {
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":\"x}",
            "{\"a\":\"\\q\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":1} x",
            "{\"a\":nul}",
            "{\"a\":[1,}",
            "{\"a\":\"\u{1}\"}",
        ] {
            let e = decode_payload(bad.as_bytes()).unwrap_err();
            assert!(e.contains("not JSON"), "{bad:?}: {e}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad:?} is JSON"
            );
        }
        assert!(decode_payload(b"{\"a\":\"\xff\"}")
            .unwrap_err()
            .contains("UTF-8"));
        assert!(decode_array(b"{}").unwrap_err().contains("not an object"));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode_payload(deep.as_bytes())
            .unwrap_err()
            .contains("nested more than 128"));
        let fine = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(decode_payload(fine.as_bytes()).unwrap()[0].1.is_err());
    }

    #[test]
    fn strings_read_back_as_serde_json_reads_them() {
        for t in [
            r#""plain""#,
            r#""\u00e9\ud83e\udd80 \/ \b\f\n\r\t \"q\" \\""#,
            "\"é🦀日本\"",
        ] {
            let want: String = serde_json::from_str(t).unwrap();
            let got = decode_array(format!("[{t}]").as_bytes()).unwrap().remove(0);
            assert_eq!(got, Ok(Value::Text(want)), "{t}");
        }
    }

    #[test]
    fn reals_in_the_json_band_parse_back_exactly_in_sqlite() {
        use rand::{Rng, SeedableRng};
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut stmt = conn.prepare("SELECT json_extract(?1, '$')").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut checked = 0;
        for exp in -70..100 {
            for _ in 0..300 {
                let f: f64 = format!("{}e{exp}", rng.random_range(1.0..10.0f64))
                    .parse()
                    .unwrap();
                let f = if rng.random() { -f } else { f };
                if !real_is_json_exact(f) {
                    continue;
                }
                let mut text = String::new();
                push_wire(&mut text, &Value::Real(f));
                let back: f64 = stmt.query_row([&text], |r| r.get(0)).unwrap();
                assert_eq!(back.to_bits(), f.to_bits(), "{text}");
                checked += 1;
            }
        }
        assert!(checked > 40_000);
        assert!(!real_is_json_exact(1e-300) && !real_is_json_exact(1.7e300));
        assert!(
            real_is_json_exact(0.1)
                && real_is_json_exact(-0.0)
                && real_is_json_exact(f64::INFINITY)
        );
    }

    #[test]
    fn wire_rows() {
        let mut s = String::new();
        push_wire_row(
            &mut s,
            &[
                Value::Integer(-9_223_372_036_854_775_808),
                Value::Real(2.0),
                Value::Real(f64::NEG_INFINITY),
                Value::Real(f64::NAN),
                Value::Text("a\"b".into()),
                Value::Blob(vec![0, 0xAB]),
                Value::Null,
            ],
        );
        assert_eq!(
            s,
            r#"[-9223372036854775808,2.0,-9e999,null,"a\"b","00ab",null]"#
        );
        assert_eq!(
            stored_array(&[Value::Text("k".into()), Value::Integer(1)]),
            r#"["k",1]"#
        );
        assert_eq!(
            stored_object([("a", &Value::Integer(1)), ("b \"c\"", &Value::Null)]),
            r#"{"a":1,"b \"c\"":null}"#
        );
    }
}
