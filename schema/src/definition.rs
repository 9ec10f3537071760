//! A table's definition as d1-sync stores it beside queued records: the table, its column
//! whitelist, its primary key, its insert-only columns and, with `#[d1(version)]`, its version
//! column, as one line of JSON, and a 64-bit id of that text.
//!
//! The derive computes both at compile time; the runtime writes the definition into the
//! queue's `<queue>_tables` the first time a record of it is queued, and every record carries
//! the id. Whoever drains the queue (the app's worker, `d1sync push`) so applies a record with
//! the SQL of the definition it was written under.
//!
//! ```
//! use d1_sync_schema::definition::{definition_id, definition_json};
//! let json = definition_json("notes", &["id", "body", "created_at"], &["id"], &["created_at"], None);
//! assert_eq!(
//!     json,
//!     r#"{"table":"notes","columns":["id","body","created_at"],"primary_key":["id"],"insert_only":["created_at"]}"#
//! );
//! assert_eq!(definition_id(&json), definition_id(&json.clone()));
//! assert_ne!(definition_id(&json), definition_id(&definition_json("notes", &["id"], &["id"], &[], None)));
//! // A version column is named last; a table without one keeps the text (and id) it had.
//! assert!(definition_json("notes", &["id", "v"], &["id"], &[], Some("v")).ends_with(r#","version":"v"}"#));
//! ```

/// The stored text of a table's definition: a JSON object with `table`, `columns`,
/// `primary_key`, `insert_only` and, for a versioned table, `version`, in that order, names in
/// the order given.
pub fn definition_json(
    table: &str,
    columns: &[&str],
    primary_key: &[&str],
    insert_only: &[&str],
    version: Option<&str>,
) -> String {
    let mut out = String::from("{\"table\":");
    push_string(&mut out, table);
    for (name, list) in [
        ("columns", columns),
        ("primary_key", primary_key),
        ("insert_only", insert_only),
    ] {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":[");
        for (i, c) in list.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_string(&mut out, c);
        }
        out.push(']');
    }
    if let Some(v) = version {
        out.push_str(",\"version\":");
        push_string(&mut out, v);
    }
    out.push('}');
    out
}

/// The id of a stored definition: FNV-1a (64 bits) of its text, as an `i64` (SQLite's
/// integer).
pub fn definition_id(json: &str) -> i64 {
    i64::from_ne_bytes(fnv1a(json.as_bytes()).to_ne_bytes())
}

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Appends `s` as a JSON string.
fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_need_escaping_stay_json() {
        let json = definition_json("a\"b", &["c\\d", "e\nf"], &["c\\d"], &[], None);
        assert_eq!(
            json,
            r#"{"table":"a\"b","columns":["c\\d","e\u000af"],"primary_key":["c\\d"],"insert_only":[]}"#
        );
    }

    #[test]
    fn the_id_is_fnv1a_of_the_text() {
        // FNV-1a test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let json = definition_json("t", &["id"], &["id"], &[], None);
        assert_eq!(definition_id(&json) as u64, fnv1a(json.as_bytes()));
    }
}
