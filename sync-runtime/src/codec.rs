//! JSON encodings of values: the outbox's stored payloads, and the rows sent to D1.
//!
//! **Stored** (outbox payloads and row keys) must give back exactly the [`Value`] that was
//! written: integers as JSON integers (read back as `i64`), finite reals always with a `.` or
//! an exponent (read back as `f64`), text as strings, and the two kinds JSON lacks as tagged
//! objects: `{"blob": "<hex>"}` and `{"real": "inf" | "-inf" | "nan"}`.
//!
//! **Wire** (the rows of a `json_each` statement) is what SQLite reads back with
//! `json_extract`: integers stay 64-bit, reals stay reals, text stays text; blobs go as hex
//! text turned back with `unhex()` ([`JsonEncoding::Hex`]); infinities as `±9e999`, which
//! SQLite reads as ±Inf; NaN as `null` (SQLite stores NaN as NULL anyway).

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

/// Appends the stored form of `v`.
pub fn push_stored(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Real(f) if f.is_finite() => push_finite_real(out, *f),
        Value::Real(f) => {
            let tag = if f.is_nan() {
                "nan"
            } else if *f > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            let _ = write!(out, "{{\"real\":\"{tag}\"}}");
        }
        Value::Text(s) => push_json_string(out, s),
        Value::Blob(b) => {
            out.push_str("{\"blob\":\"");
            push_hex(out, b);
            out.push_str("\"}");
        }
    }
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

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Reads one stored value back; `Err` says what is wrong with it.
pub fn parse_stored(v: &serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    match v {
        J::Null => Ok(Value::Null),
        J::Bool(b) => Ok(Value::Integer(i64::from(*b))),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(Value::Integer(i))
            } else if n.is_u64() {
                Err(format!("integer {n} does not fit in 64 signed bits"))
            } else {
                n.as_f64()
                    .map(Value::Real)
                    .ok_or_else(|| format!("number {n} is not a 64-bit float"))
            }
        }
        J::String(s) => Ok(Value::Text(s.clone())),
        J::Object(map) if map.len() == 1 => {
            if let Some(J::String(hex)) = map.get("blob") {
                return unhex(hex)
                    .map(Value::Blob)
                    .ok_or_else(|| "blob is not an even-length hex string".to_string());
            }
            match map.get("real").and_then(J::as_str) {
                Some("inf") => Ok(Value::Real(f64::INFINITY)),
                Some("-inf") => Ok(Value::Real(f64::NEG_INFINITY)),
                Some("nan") => Ok(Value::Real(f64::NAN)),
                _ => Err(format!("an object value must be {{\"blob\": hex}} or {{\"real\": \"inf\"|\"-inf\"|\"nan\"}}, not {v}")),
            }
        }
        J::Object(_) => Err(format!(
            "an object value must be {{\"blob\": hex}} or {{\"real\": ...}}, not {v}"
        )),
        J::Array(_) => Err("an array is not a column value".to_string()),
    }
}

/// One stored value as decoded: the value, or what is wrong with it.
struct Stored(Result<Value, String>);

impl<'de> serde::Deserialize<'de> for Stored {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StoredVisitor)
    }
}

struct StoredVisitor;

impl<'de> serde::de::Visitor<'de> for StoredVisitor {
    type Value = Stored;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a stored column value")
    }
    fn visit_unit<E>(self) -> Result<Stored, E> {
        Ok(Stored(Ok(Value::Null)))
    }
    fn visit_bool<E>(self, b: bool) -> Result<Stored, E> {
        Ok(Stored(Ok(Value::Integer(i64::from(b)))))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Stored, E> {
        Ok(Stored(Ok(Value::Integer(i))))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Stored, E> {
        Ok(Stored(i64::try_from(u).map(Value::Integer).map_err(|_| {
            format!("integer {u} does not fit in 64 signed bits")
        })))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Stored, E> {
        Ok(Stored(Ok(Value::Real(f))))
    }
    fn visit_str<E>(self, s: &str) -> Result<Stored, E> {
        Ok(Stored(Ok(Value::Text(s.to_string()))))
    }
    fn visit_string<E>(self, s: String) -> Result<Stored, E> {
        Ok(Stored(Ok(Value::Text(s))))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Stored, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Stored(Err("an array is not a column value".to_string())))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Stored, A::Error> {
        // Only the two tagged forms: {"blob": hex} and {"real": "inf" | "-inf" | "nan"}.
        let mut entries: Vec<(String, serde_json::Value)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
            entries.push((k, v));
        }
        let object = serde_json::Value::Object(entries.into_iter().collect());
        Ok(Stored(parse_stored(&object)))
    }
}

/// A column of a decoded payload: its name, and its value or what is wrong with it.
pub type DecodedColumn = (String, Result<Value, String>);

/// A stored payload: the pairs of a JSON object, each value decoded (or what is wrong with
/// it), in document order. `Err` when the bytes are not a JSON object.
pub fn decode_payload(bytes: &[u8]) -> Result<Vec<DecodedColumn>, String> {
    let mut out = Vec::new();
    for_each_pair(bytes, &mut |name, value| {
        out.push((name.to_string(), value))
    })?;
    Ok(out)
}

/// [`decode_payload`] without collecting: hands each pair to `f` in document order, the name
/// borrowed from `bytes` where it has no escapes. `Err` when the bytes are not a JSON object
/// (after `f` may have seen some pairs).
pub(crate) fn for_each_pair(
    bytes: &[u8],
    f: &mut dyn FnMut(&str, Result<Value, String>),
) -> Result<(), String> {
    use serde::de::DeserializeSeed as _;

    struct Pairs<'f>(&'f mut dyn FnMut(&str, Result<Value, String>));
    impl<'de> serde::de::DeserializeSeed<'de> for Pairs<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> serde::de::Visitor<'de> for Pairs<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object of column values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                let v: Stored = map.next_value()?;
                (self.0)(&k, v.0);
            }
            Ok(())
        }
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        return Pairs(f)
            .deserialize(&mut de)
            .and_then(|()| de.end())
            .map_err(|e| format!("payload is not JSON: {e}"));
    }
    // Not an object: say what it is, or why it is not JSON.
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => Err(format!(
            "payload must be a JSON object of column values, not {}",
            match v {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::Object(_) => "an object",
            }
        )),
        Err(e) => Err(format!("payload is not JSON: {e}")),
    }
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
        let mut s = String::new();
        push_stored(&mut s, &v);
        let json: serde_json::Value = serde_json::from_str(&s).unwrap();
        let back = parse_stored(&json).unwrap();
        match (&v, &back) {
            (Value::Real(a), Value::Real(b)) if a.is_nan() => assert!(b.is_nan(), "{s}"),
            _ => assert_eq!(back, v, "{s}"),
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
        let p = |s: &str| parse_stored(&serde_json::from_str(s).unwrap());
        assert!(p("18446744073709551615")
            .unwrap_err()
            .contains("64 signed bits"));
        assert!(p(r#"{"blob":"abc"}"#).unwrap_err().contains("hex"));
        assert!(p(r#"{"blob":"zz"}"#).unwrap_err().contains("hex"));
        assert!(p(r#"{"x":1}"#).is_err());
        assert!(p("[1]").is_err());
        assert_eq!(p("true").unwrap(), Value::Integer(1));
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
