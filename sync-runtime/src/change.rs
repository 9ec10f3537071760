//! A queued record read back and checked against the registry: a [`Change`] ready to ship, or
//! the reason it can never ship.

use std::sync::Arc;

use d1_sync_schema::limits::{MAX_COLUMNS, MAX_VALUE_BYTES};

use crate::codec;
use crate::registry::Registry;
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
}

/// A checked change: whitelisted columns in the table's order, values decoded.
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
    /// then the columns set. Delete: the key columns.
    pub columns: Vec<String>,
    /// The values, in `columns` order.
    pub values: Vec<Value>,
    /// Attempts charged so far.
    pub attempts: u32,
}

/// Checks a record; `Err` is the reason it can never ship (it goes to `failed`).
pub fn check(record: &RawRecord, registry: &Registry) -> Result<Change, String> {
    let table = registry.get(&record.table).ok_or_else(|| {
        let known: Vec<&str> = registry.names().collect();
        format!(
            "unknown table `{}`: the worker syncs {}",
            record.table,
            if known.is_empty() {
                "no tables".to_string()
            } else {
                known.join(", ")
            }
        )
    })?;
    let op = Op::parse(&record.op).ok_or_else(|| {
        format!(
            "unknown operation `{}`: expected `upsert`, `update` or `delete`",
            record.op
        )
    })?;
    let payload: serde_json::Value =
        serde_json::from_slice(&record.payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let serde_json::Value::Object(map) = payload else {
        return Err(format!(
            "payload must be a JSON object of column values, not {}",
            kind_of(&payload)
        ));
    };
    if map.len() > MAX_COLUMNS {
        return Err(format!(
            "payload has {} columns; D1 allows at most {MAX_COLUMNS}",
            map.len()
        ));
    }
    for col in map.keys() {
        if !table.has_column(col) {
            let shown: String = col.chars().take(80).collect();
            return Err(format!(
                "`{shown}` is not a column of table `{}`",
                table.name
            ));
        }
    }
    for key in &table.primary_key {
        match map.get(key) {
            None => return Err(format!("payload lacks primary-key column `{key}`")),
            Some(serde_json::Value::Null) => {
                return Err(format!("primary-key column `{key}` is NULL"))
            }
            Some(_) => {}
        }
    }
    let columns: Vec<String> = match op {
        Op::Upsert => table
            .columns
            .iter()
            .filter(|c| map.contains_key(*c))
            .cloned()
            .collect(),
        Op::Update => {
            let set: Vec<String> = table
                .columns
                .iter()
                .filter(|c| {
                    map.contains_key(*c)
                        && !table.primary_key.contains(c)
                        && !table.insert_only.contains(c)
                })
                .cloned()
                .collect();
            if set.is_empty() {
                return Err(
                    "an update must set at least one column that is not in the key or insert-only"
                        .into(),
                );
            }
            table.primary_key.iter().cloned().chain(set).collect()
        }
        Op::Delete => table.primary_key.clone(),
    };
    let mut values = Vec::with_capacity(columns.len());
    let mut row_bytes = 0usize;
    for col in &columns {
        let v = map
            .get(col)
            .map(codec::parse_stored)
            .transpose()
            .map_err(|e| format!("column `{col}`: {e}"))?
            .unwrap_or(Value::Null);
        if v.size() > MAX_VALUE_BYTES {
            return Err(format!(
                "column `{col}` holds {} bytes; D1 stores at most {MAX_VALUE_BYTES} bytes in one value",
                v.size()
            ));
        }
        row_bytes += v.size();
        values.push(v);
    }
    if row_bytes > MAX_VALUE_BYTES {
        return Err(format!(
            "the row holds {row_bytes} bytes; D1 stores at most {MAX_VALUE_BYTES} bytes in one row"
        ));
    }
    Ok(Change {
        id: record.id,
        row_key: record.row_key.clone(),
        table: table.clone(),
        op,
        columns,
        values,
        attempts: record.attempts,
    })
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
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
        }
    }

    #[test]
    fn good_records_take_the_tables_column_order() {
        let c = check(&rec("t", "upsert", r#"{"b":"x","id":1}"#), &registry()).unwrap();
        assert_eq!(c.columns, ["id", "b"]);
        assert_eq!(c.values, [Value::Integer(1), Value::Text("x".into())]);
        let u = check(&rec("t", "update", r#"{"b":"x","id":1}"#), &registry()).unwrap();
        assert_eq!(
            (u.op, u.columns.as_slice()),
            (Op::Update, ["id".to_string(), "b".to_string()].as_slice())
        );
        let d = check(&rec("t", "delete", r#"{"id":1}"#), &registry()).unwrap();
        assert_eq!(
            (d.op, d.columns.as_slice()),
            (Op::Delete, ["id".to_string()].as_slice())
        );
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
        assert!(reason("t", "upsert", r#"{"a":1}"#).contains("lacks primary-key column `id`"));
        assert!(reason("t", "delete", r#"{"id":null}"#).contains("is NULL"));
        assert!(reason("t", "upsert", r#"{"id":1,"a":{"x":1}}"#).contains("column `a`"));
        let big = format!(r#"{{"id":1,"a":"{}"}}"#, "x".repeat(MAX_VALUE_BYTES + 1));
        assert!(reason("t", "upsert", &big).contains("at most 2000000 bytes in one value"));
        let half = "y".repeat(MAX_VALUE_BYTES / 2 + 1);
        let row = format!(r#"{{"id":1,"a":"{half}","b":"{half}"}}"#);
        assert!(reason("t", "upsert", &row).contains("in one row"));
    }
}
