//! A queued record read back and checked against the registry: a [`Change`] ready to ship, or
//! the reason it can never ship.

use std::collections::HashMap;
use std::sync::Arc;

use d1_sync_schema::limits::{MAX_COLUMNS, MAX_VALUE_BYTES};

use crate::codec::{self, Raw};
use crate::registry::{Definitions, Registry};
use crate::row::TableDef;
use crate::value::Value;

/// What a record asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Insert the row, or update it if its key exists (insert-only columns kept).
    Upsert,
    /// Update some columns of an existing row; no row is created.
    Update,
    /// Delete the row by primary key.
    Delete,
}

impl Op {
    /// As stored in the queue.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }

    /// The write the version guard judges (see [`d1_sync_schema::guard`]).
    pub fn guarded(self) -> d1_sync_schema::guard::Write {
        use d1_sync_schema::guard::Write;
        match self {
            Op::Upsert => Write::Upsert,
            Op::Update => Write::Update,
            Op::Delete => Write::Delete,
        }
    }

    /// From the stored text.
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "upsert" => Some(Op::Upsert),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// A queue record as claimed, before it is checked.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Queue id.
    pub id: i64,
    /// Table name as stored.
    pub table: String,
    /// Row key as stored (JSON array): what per-row ordering goes by.
    pub row_key: String,
    /// Operation as stored.
    pub op: String,
    /// Payload as stored (JSON object, column → value), as bytes: a hand-written record may
    /// hold anything.
    pub payload: Vec<u8>,
    /// Attempts charged so far.
    pub attempts: u32,
    /// The id of the table definition it was written under, if it was stored with it.
    pub def: Option<i64>,
}

/// A 64-bit digest of a row (table and stored key), for sets of rows that are only ever used
/// to hold records back: two rows sharing a digest (rare) hold back more, never less.
pub(crate) fn row_digest(table: &str, row_key: &str) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::quality::FixedState::default().build_hasher();
    table.hash(&mut h);
    row_key.hash(&mut h);
    h.finish()
}

/// A checked change: whitelisted columns in the table's order, and its values as one wire row,
/// copied from the stored text without decoding them (one allocation per change, however
/// many values it has).
#[derive(Debug, Clone)]
pub struct Change {
    /// Queue id.
    pub id: i64,
    /// Row key as stored.
    pub row_key: String,
    /// The table.
    pub table: Arc<TableDef>,
    /// Upsert or delete.
    pub op: Op,
    /// Upsert: the columns written, in the table's column order. Update: the key columns,
    /// then the columns set. Delete: the key columns. Shared by changes of one shape.
    pub columns: Arc<[String]>,
    /// The values, in `columns` order, as one wire row: a JSON array in the one JSON form
    /// (see [`crate::codec`]), a blob as its hex text.
    pub row: String,
    /// The values that are not plain JSON on the wire, by position in `columns`: blobs, and
    /// reals SQLite's JSON parser would not read back exactly. Empty for most changes.
    pub special: Vec<(usize, Special)>,
    /// Attempts charged so far.
    pub attempts: u32,
    /// The version it carries, for a table with a version column (see [`TableDef::version`]).
    /// A delete's columns then end with the version column.
    pub version: Option<i64>,
}

/// A value that is not plain JSON on the wire (see [`Change::special`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Special {
    /// A blob: the row holds its hex text, which the statement turns back with `unhex()`.
    Blob,
    /// A real outside the band SQLite's JSON parser reads back exactly: bound on its own.
    Real(f64),
}

impl Change {
    /// A change of `values` (in `columns` order), as [`check`] would make it from a record.
    pub fn new(
        id: i64,
        row_key: String,
        table: Arc<TableDef>,
        op: Op,
        columns: Arc<[String]>,
        values: &[Value],
    ) -> Change {
        let mut row = String::from("[");
        let mut special = Vec::new();
        for (n, v) in values.iter().enumerate() {
            if n > 0 {
                row.push(',');
            }
            codec::push_wire(&mut row, v);
            match v {
                Value::Blob(_) => special.push((n, Special::Blob)),
                Value::Real(f) if !codec::fits_json(v) => special.push((n, Special::Real(*f))),
                _ => {}
            }
        }
        row.push(']');
        let version = table
            .version_position(&columns)
            .and_then(|i| match values.get(i) {
                Some(Value::Integer(v)) => Some(*v),
                _ => None,
            });
        Change {
            id,
            row_key,
            table,
            op,
            columns,
            version,
            row,
            special,
            attempts: 0,
        }
    }

    /// The stored text of each value (what a row key made of them holds), in `columns` order.
    pub(crate) fn stored_texts(&self) -> Vec<std::borrow::Cow<'_, str>> {
        codec::element_spans(&self.row)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(n, span)| {
                let blob = self
                    .special
                    .iter()
                    .any(|(i, s)| *i == n && *s == Special::Blob);
                codec::stored_text(&self.row[span], blob)
            })
            .collect()
    }

    /// The values, decoded from the row (for targets that bind them one by one).
    pub fn values(&self) -> Vec<Value> {
        let mut values: Vec<Value> = codec::decode_array(self.row.as_bytes())
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.unwrap_or(Value::Null))
            .collect();
        for (n, s) in &self.special {
            if let (Special::Blob, Some(v)) = (s, values.get_mut(*n)) {
                if let Value::Text(hex) = v {
                    *v = Value::Blob(codec::unhex(hex).unwrap_or_default());
                }
            }
        }
        values
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

/// What checking a batch of records keeps between records: column lists shared between
/// changes of one shape (so a batch holds one copy of each), and scratch space.
#[derive(Default)]
pub struct ColumnsCache {
    shared: HashMap<(usize, Op, u128), Arc<[String]>>,
    wide: HashMap<(usize, Op, Vec<usize>), Arc<[String]>>,
}

/// Checks a record against a registry alone; `Err` is the reason it can never ship (it goes
/// to `failed`).
pub fn check(record: &RawRecord, registry: &Registry) -> Result<Change, String> {
    check_with(
        record,
        &Definitions::of(registry),
        &mut ColumnsCache::default(),
    )
}

/// Checks a record against `defs` (the stored definition it was written under, else the
/// registry's), sharing column lists through `cache`.
pub fn check_with(
    record: &RawRecord,
    defs: &Definitions<'_>,
    cache: &mut ColumnsCache,
) -> Result<Change, String> {
    let table = defs.table(record)?;
    let op = Op::parse(&record.op).ok_or_else(|| {
        format!(
            "unknown operation `{}`: expected `upsert`, `update` or `delete`",
            record.op
        )
    })?;
    // Each value at its column's position in the table (a repeated key: the last one wins),
    // read in one pass and borrowed from the record: nothing is decoded.
    let mut by_col = vec![None; table.columns.len()];
    check_values(record, table, op, &mut by_col, cache)
}

/// [`check_with`] once the table and operation are known; `by_col` is empty scratch space
/// with one slot per column of the table.
fn check_values<'a>(
    record: &'a RawRecord,
    table: &Arc<TableDef>,
    op: Op,
    by_col: &mut [Option<Result<Raw<'a>, String>>],
    cache: &mut ColumnsCache,
) -> Result<Change, String> {
    let mut pairs = 0usize;
    let mut unknown: Option<String> = None;
    // Payloads are written in the table's column order: the column after the last one found
    // is tried first.
    let mut next = 0usize;
    codec::for_each_pair(&record.payload, &mut |col, v| {
        pairs += 1;
        let at = match table.columns.get(next) {
            Some(c) if c == col => Some(next),
            _ => table.columns.iter().position(|c| c == col),
        };
        next = at.map_or(next, |i| i + 1);
        match at {
            Some(i) => by_col[i] = Some(v),
            None => {
                if unknown.is_none() {
                    unknown = Some(col.chars().take(80).collect());
                }
            }
        }
    })?;
    if pairs > MAX_COLUMNS {
        return Err(format!(
            "payload has {pairs} columns; D1 allows at most {MAX_COLUMNS}"
        ));
    }
    if let Some(shown) = unknown {
        return Err(format!(
            "`{shown}` is not a column of table `{}`",
            table.name
        ));
    }
    let position = |name: &str| table.columns.iter().position(|c| c == name);
    let mut key_positions = Vec::with_capacity(table.primary_key.len());
    let mut row_key: Option<Vec<Result<Raw<'a>, String>>> = None;
    for (k, key) in table.primary_key.iter().enumerate() {
        let i = position(key).ok_or_else(|| {
            format!(
                "primary-key column `{key}` is not a column of table `{}`",
                table.name
            )
        })?;
        if by_col[i].is_none() {
            // The key is stored once, in the row key (in the key's column order); a payload
            // may repeat it (records of older queues, or written by hand).
            let values = match &mut row_key {
                Some(v) => v,
                None => {
                    let mut read = Vec::with_capacity(table.primary_key.len());
                    codec::for_each_element(record.row_key.as_bytes(), &mut |v| read.push(v))
                        .map_err(|e| format!("row key {}: {e}", shorten(&record.row_key)))?;
                    row_key.insert(read)
                }
            };
            if values.len() == table.primary_key.len() {
                by_col[i] = Some(std::mem::replace(&mut values[k], Ok(Raw::Null)));
            }
        }
        match &by_col[i] {
            None => return Err(format!("payload lacks primary-key column `{key}`")),
            Some(Ok(Raw::Null)) => return Err(format!("primary-key column `{key}` is NULL")),
            Some(_) => key_positions.push(i),
        }
    }
    let mut positions: Vec<usize> = match op {
        Op::Upsert => (0..table.columns.len())
            .filter(|i| by_col[*i].is_some())
            .collect(),
        Op::Update => {
            let set: Vec<usize> = (0..table.columns.len())
                .filter(|i| {
                    by_col[*i].is_some()
                        && !table.primary_key.contains(&table.columns[*i])
                        && !table.insert_only.contains(&table.columns[*i])
                })
                .collect();
            if set.is_empty() {
                return Err(
                    "an update must set at least one column that is not in the key or insert-only"
                        .into(),
                );
            }
            key_positions.iter().copied().chain(set).collect()
        }
        Op::Delete => key_positions,
    };
    // A missing or malformed version is reported after the values' own errors, which say more.
    let (version, unversioned) = match table.version.as_deref() {
        None => (None, None),
        Some(v) => match versioned(table, op, &mut positions, by_col, v) {
            Ok(version) => (Some(version), None),
            Err(e) => (None, Some(e)),
        },
    };
    let mut row = String::with_capacity(record.payload.len() + record.row_key.len());
    row.push('[');
    let mut special = Vec::new();
    let mut row_bytes = 0usize;
    for (n, &i) in positions.iter().enumerate() {
        let col = &table.columns[i];
        let v = match by_col[i].take() {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(format!("column `{col}`: {e}")),
            None => Raw::Null,
        };
        if v.size() > MAX_VALUE_BYTES {
            return Err(format!(
                "column `{col}` holds {} bytes; D1 stores at most {MAX_VALUE_BYTES} bytes in one value",
                v.size()
            ));
        }
        row_bytes += v.size();
        if n > 0 {
            row.push(',');
        }
        v.push_wire(&mut row);
        match v {
            Raw::Blob { .. } => special.push((n, Special::Blob)),
            Raw::Real(f) if !codec::real_is_json_exact(f) => special.push((n, Special::Real(f))),
            _ => {}
        }
    }
    row.push(']');
    if row_bytes > MAX_VALUE_BYTES {
        return Err(format!(
            "the row holds {row_bytes} bytes; D1 stores at most {MAX_VALUE_BYTES} bytes in one row"
        ));
    }
    if let Some(e) = unversioned {
        return Err(e);
    }
    let make = || -> Arc<[String]> {
        positions
            .iter()
            .map(|&i| table.columns[i].clone())
            .collect()
    };
    let at = Arc::as_ptr(table) as usize;
    // A change's columns follow from the set of positions it writes: a bit mask when the table
    // has at most 128 columns (D1 allows 100), the positions themselves for a wider table (a
    // SQLite mirror may have up to 2,000).
    let columns = if table.columns.len() <= 128 {
        let mask = positions.iter().fold(0u128, |m, &i| m | (1u128 << i));
        cache
            .shared
            .entry((at, op, mask))
            .or_insert_with(make)
            .clone()
    } else {
        cache
            .wide
            .entry((at, op, positions.clone()))
            .or_insert_with(make)
            .clone()
    };
    Ok(Change {
        id: record.id,
        row_key: record.row_key.clone(),
        table: table.clone(),
        op,
        columns,
        row,
        special,
        attempts: record.attempts,
        version,
    })
}

/// The positions a change of a versioned table writes, with its version: every write carries
/// one (a delete, the version of the row it deleted), an integer, or the guard could not
/// compare it.
fn versioned(
    table: &TableDef,
    op: Op,
    positions: &mut Vec<usize>,
    by_col: &[Option<Result<Raw<'_>, String>>],
    column: &str,
) -> Result<i64, String> {
    let Some(i) = table.columns.iter().position(|c| c == column) else {
        return Err(format!(
            "version column `{column}` is not a column of table `{}`",
            table.name
        ));
    };
    let version = match &by_col[i] {
        Some(Ok(Raw::Integer(v))) => *v,
        None => {
            return Err(format!(
                "{} of `{}` must carry its version `{column}`: the guard against stale writes compares it",
                match op {
                    Op::Upsert => "an upsert",
                    Op::Update => "an update",
                    Op::Delete => "a delete",
                },
                table.name
            ))
        }
        Some(Err(e)) => return Err(format!("column `{column}`: {e}")),
        Some(Ok(other)) => {
            return Err(format!(
                "version `{column}` of `{}` must be an integer, not {}",
                table.name,
                other.describe()
            ))
        }
    };
    if op == Op::Delete {
        positions.push(i);
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.add(TableDef {
            name: "t".into(),
            columns: vec!["id".into(), "a".into(), "b".into()],
            primary_key: vec!["id".into()],
            insert_only: vec![],
            version: None,
        });
        r
    }

    fn rec(table: &str, op: &str, payload: &str) -> RawRecord {
        RawRecord {
            id: 1,
            table: table.into(),
            row_key: "[1]".into(),
            op: op.into(),
            payload: payload.as_bytes().to_vec(),
            attempts: 0,
            def: None,
        }
    }

    #[test]
    fn good_records_take_the_tables_column_order() {
        let c = check(&rec("t", "upsert", r#"{"b":"x","id":1}"#), &registry()).unwrap();
        assert_eq!(&*c.columns, ["id", "b"]);
        assert_eq!(c.values(), [Value::Integer(1), Value::Text("x".into())]);
        let u = check(&rec("t", "update", r#"{"b":"x","id":1}"#), &registry()).unwrap();
        assert_eq!(
            (u.op, &*u.columns),
            (Op::Update, ["id".to_string(), "b".to_string()].as_slice())
        );
        // The key is stored once, in the row key; a payload may repeat it.
        let k = check(&rec("t", "upsert", r#"{"b":"x"}"#), &registry()).unwrap();
        assert_eq!(&*k.columns, ["id", "b"]);
        assert_eq!(k.values(), [Value::Integer(1), Value::Text("x".into())]);
        let d = check(&rec("t", "delete", "{}"), &registry()).unwrap();
        assert_eq!(d.values(), [Value::Integer(1)]);
        let d = check(&rec("t", "delete", r#"{"id":1}"#), &registry()).unwrap();
        assert_eq!(
            (d.op, &*d.columns),
            (Op::Delete, ["id".to_string()].as_slice())
        );
    }

    #[test]
    fn the_wire_row_is_the_stored_text_with_blobs_untagged() {
        let payload = r#"{"a":"line\nbreak \u00e9","b":{"blob":"00ff"}}"#;
        let c = check(&rec("t", "upsert", payload), &registry()).unwrap();
        assert_eq!(
            c.row, r#"[1,"line\nbreak \u00e9","00ff"]"#,
            "text copied as stored"
        );
        assert_eq!(c.special, [(2, Special::Blob)]);
        let values = [
            Value::Integer(1),
            Value::Text("line\nbreak é".into()),
            Value::Blob(vec![0, 255]),
        ];
        assert_eq!(c.values(), values);
        let made = Change::new(
            1,
            "[1]".into(),
            c.table.clone(),
            Op::Upsert,
            c.columns.clone(),
            &values,
        );
        assert_eq!((made.values(), &made.special), (c.values(), &c.special));
        // A row key made of these values, as the queue stores it: escapes as this writer's.
        let texts: Vec<String> = c
            .stored_texts()
            .into_iter()
            .map(|t| t.into_owned())
            .collect();
        assert_eq!(texts, ["1", r#""line\nbreak é""#, r#"{"blob":"00ff"}"#]);
        assert_eq!(
            format!("[{}]", texts.join(",")),
            codec::stored_array(&values),
            "the same text a row key of these values has"
        );
        // A real SQLite's JSON parser would not read back exactly is bound on its own.
        let far = check(&rec("t", "upsert", r#"{"a":1e-300}"#), &registry()).unwrap();
        assert_eq!(far.special, [(1, Special::Real(1e-300))]);
    }

    #[test]
    fn a_table_wider_than_128_columns_gets_each_changes_own_columns() {
        let mut r = Registry::new();
        r.add(TableDef {
            name: "wide".into(),
            columns: (0..150).map(|i| format!("c{i}")).collect(),
            primary_key: vec!["c0".into()],
            insert_only: vec![],
            version: None,
        });
        let mut cache = ColumnsCache::default();
        // Positions 5 and 133 share a bit modulo 128: they must not share a column list.
        let a = check_with(
            &rec("wide", "upsert", r#"{"c0":1,"c5":"x"}"#),
            &Definitions::of(&r),
            &mut cache,
        )
        .unwrap();
        let b = check_with(
            &rec("wide", "upsert", r#"{"c0":1,"c133":"y"}"#),
            &Definitions::of(&r),
            &mut cache,
        )
        .unwrap();
        assert_eq!(&*a.columns, ["c0", "c5"]);
        assert_eq!(&*b.columns, ["c0", "c133"]);
    }

    #[test]
    fn every_bad_record_has_a_reason() {
        let r = registry();
        let reason = |t: &str, op: &str, p: &str| check(&rec(t, op, p), &r).unwrap_err();
        assert!(reason("nope", "upsert", "{}").contains("unknown table `nope`"));
        assert!(reason("t", "merge", r#"{"id":1}"#).contains("unknown operation `merge`"));
        assert!(reason("t", "update", r#"{"id":1}"#).contains("at least one column"));
        assert!(reason("t", "upsert", "{oops").contains("not JSON"));
        assert!(reason("t", "upsert", "[1]").contains("not an array"));
        assert!(
            reason("t", "upsert", r#"{"id":1,"c":2}"#).contains("`c` is not a column of table `t`")
        );
        assert!(
            reason("t", "upsert", r#"{"id":1,"a; DROP TABLE t":2}"#).contains("is not a column")
        );
        let keyless = RawRecord {
            row_key: "[]".into(),
            ..rec("t", "upsert", r#"{"a":1}"#)
        };
        assert!(check(&keyless, &r)
            .unwrap_err()
            .contains("lacks primary-key column `id`"));
        let bad_key = RawRecord {
            row_key: "[1,".into(),
            ..rec("t", "upsert", r#"{"a":1}"#)
        };
        assert!(check(&bad_key, &r).unwrap_err().contains("row key [1,"));
        assert!(reason("t", "delete", r#"{"id":null}"#).contains("is NULL"));
        assert!(reason("t", "upsert", r#"{"id":1,"a":{"x":1}}"#).contains("column `a`"));
        let big = format!(r#"{{"id":1,"a":"{}"}}"#, "x".repeat(MAX_VALUE_BYTES + 1));
        assert!(reason("t", "upsert", &big).contains("at most 2000000 bytes in one value"));
        let half = "y".repeat(MAX_VALUE_BYTES / 2 + 1);
        let row = format!(r#"{{"id":1,"a":"{half}","b":"{half}"}}"#);
        assert!(reason("t", "upsert", &row).contains("in one row"));
    }
}
