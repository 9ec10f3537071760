//! Model test of the arrangement (`d1_sync::pack::pack_arranged`): inside a request, changes
//! that commute trade places so that the changes of one shape share a statement. Random
//! writes over a schema with every kind of tie between tables (cascades two deep, `SET NULL`,
//! `RESTRICT`, a plain foreign key, a partial `UNIQUE` index, a trigger that writes another
//! table, a versioned table with its tombstones, an unrelated table) are packed twice with the
//! same request boundaries: in the queue's order and arranged. Applied request by request to
//! two copies of one database (SQLite, as D1 runs them: one transaction each, foreign keys
//! deferred), every request must succeed or fail alike, and the two must end identical.

use std::sync::Arc;

use d1_sync::change::{Change, Op};
use d1_sync::commute::Commute;
use d1_sync::ledger::RequestId;
use d1_sync::pack::{pack_arranged, pack_with, PackLimits, Request};
use d1_sync::{TableDef, Value};
use proptest::prelude::*;
use rusqlite::{params_from_iter, Connection};

const SCHEMA: &str = "
  CREATE TABLE p (id INTEGER PRIMARY KEY, v TEXT);
  CREATE TABLE c (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p (id) ON DELETE CASCADE, v TEXT);
  CREATE TABLE g (id INTEGER PRIMARY KEY, c INTEGER REFERENCES c (id) ON DELETE CASCADE, v TEXT);
  CREATE TABLE n (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p (id) ON DELETE SET NULL, v TEXT);
  CREATE TABLE r (id INTEGER PRIMARY KEY, v TEXT);
  CREATE TABLE k (id INTEGER PRIMARY KEY, r INTEGER REFERENCES r (id) ON DELETE RESTRICT, v TEXT);
  CREATE TABLE f (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p (id), v TEXT);
  CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT, v TEXT);
  CREATE UNIQUE INDEX u_email ON u (email) WHERE email IS NOT NULL;
  CREATE TABLE x (id INTEGER PRIMARY KEY, v TEXT);
  CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
  CREATE TRIGGER t_touches_x AFTER INSERT ON t BEGIN UPDATE x SET v = v || new.v; END;
  CREATE TABLE w (id INTEGER PRIMARY KEY, v TEXT, version INTEGER NOT NULL);
";

/// Rows every test starts from.
const SEED: &str = "
  INSERT INTO p VALUES (1, 'p1'), (2, 'p2'), (3, 'p3');
  INSERT INTO c VALUES (1, 1, 'c1'), (2, 2, 'c2');
  INSERT INTO g VALUES (1, 1, 'g1'), (2, 2, 'g2');
  INSERT INTO n VALUES (1, 1, 'n1');
  INSERT INTO r VALUES (1, 'r1'), (2, 'r2');
  INSERT INTO k VALUES (1, 1, 'k1');
  INSERT INTO f VALUES (1, 1, 'f1');
  INSERT INTO u VALUES (1, 'a', 'u1'), (2, 'b', 'u2');
  INSERT INTO x VALUES (1, 'x'), (2, 'y');
  INSERT INTO w VALUES (1, 'w1', 1);
";

/// Each table's columns besides `id`.
const TABLES: [(&str, &[&str]); 11] = [
    ("p", &["v"]),
    ("c", &["p", "v"]),
    ("g", &["c", "v"]),
    ("n", &["p", "v"]),
    ("r", &["v"]),
    ("k", &["r", "v"]),
    ("f", &["p", "v"]),
    ("u", &["email", "v"]),
    ("x", &["v"]),
    ("t", &["v"]),
    ("w", &["v", "version"]),
];

fn defs() -> Vec<Arc<TableDef>> {
    TABLES
        .iter()
        .map(|(name, cols)| {
            Arc::new(TableDef {
                name: name.to_string(),
                columns: std::iter::once("id")
                    .chain(cols.iter().copied())
                    .map(String::from)
                    .collect(),
                primary_key: vec!["id".into()],
                insert_only: vec![],
                version: (*name == "w").then(|| "version".to_string()),
            })
        })
        .collect()
}

/// One write: table (index into [`TABLES`]), op (0 upsert, 1 update, 2 delete), key, the
/// value of the first column (a row of another table, an e-mail, or text), and the text.
type Op_ = (usize, u8, i64, i64, u8);

fn changes(ops: &[Op_]) -> Vec<Change> {
    let defs = defs();
    let mut out = Vec::new();
    for (n, &(t, op, key, other, text)) in ops.iter().enumerate() {
        let def = &defs[t];
        let id = n as i64 + 1;
        let version = 10 + id;
        let first = match def.columns[1].as_str() {
            "v" => Value::Text(format!("{}{text}", def.name)),
            "email" => match other {
                0 => Value::Null,
                o => Value::Text(format!("{}", (b'a' + o as u8 % 3) as char)),
            },
            _ => match other {
                0 => Value::Null,
                o => Value::Integer(o),
            },
        };
        let mut values = vec![Value::Integer(key), first];
        if def.columns.len() > 2 {
            values.push(if def.version.is_some() {
                Value::Integer(version)
            } else {
                Value::Text(format!("v{text}"))
            });
        }
        let columns: Arc<[String]> = def.columns.clone().into();
        let key_text = format!("[{key}]");
        let change = match op {
            0 => Change::new(id, key_text, def.clone(), Op::Upsert, columns, &values),
            1 => Change::new(id, key_text, def.clone(), Op::Update, columns, &values),
            _ => {
                let (cols, vals): (Vec<String>, Vec<Value>) = match &def.version {
                    Some(v) => (
                        vec!["id".into(), v.clone()],
                        vec![Value::Integer(key), Value::Integer(version)],
                    ),
                    None => (vec!["id".into()], vec![Value::Integer(key)]),
                };
                Change::new(id, key_text, def.clone(), Op::Delete, cols.into(), &vals)
            }
        };
        out.push(change);
    }
    out
}

fn database() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("PRAGMA foreign_keys = on").unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    for s in d1_sync::ledger::create_statements() {
        conn.execute_batch(&s.sql).unwrap();
    }
    conn.execute_batch(SEED).unwrap();
    conn
}

/// Applies a request as D1 does: one transaction, every statement run, rows read and dropped.
fn apply(conn: &mut Connection, r: &Request, seq: i64) -> Result<(), String> {
    let mut r = r.clone();
    r.stamp(&RequestId::new("0000000000model0", seq));
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    for s in &r.statements {
        let mut stmt = tx.prepare(&s.sql).map_err(|e| e.to_string())?;
        let mut rows = stmt
            .query(params_from_iter(s.params.iter()))
            .map_err(|e| e.to_string())?;
        while rows.next().map_err(|e| e.to_string())?.is_some() {}
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Every row of every table, in key order.
fn dump(conn: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    for t in [
        "p",
        "c",
        "g",
        "n",
        "r",
        "k",
        "f",
        "u",
        "x",
        "t",
        "w",
        "d1_sync_tombstones",
    ] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {t} ORDER BY 1, 2"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let vals: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(format!("{t}: {}", vals.join(", ")))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        out.extend(rows);
    }
    out
}

/// Tables tied together: the cascades and keys of `p`, `r` and `k`, the `UNIQUE` index, the
/// trigger's two tables, the versioned table.
const FAMILIES: [&[usize]; 5] = [&[0, 1, 2, 3, 6], &[4, 5], &[7], &[8, 9], &[10]];

/// Writes over one family of tables and one table more, so that the ties come up often.
fn ops() -> impl Strategy<Value = Vec<Op_>> {
    (0..FAMILIES.len(), 0..TABLES.len()).prop_flat_map(|(family, extra)| {
        let mut palette = FAMILIES[family].to_vec();
        palette.push(extra);
        prop::collection::vec(
            (
                prop::sample::select(palette),
                0u8..3,
                1i64..4,
                0i64..4,
                0u8..4,
            ),
            1..50,
        )
    })
}

/// Packs `ops` both ways, with at most `rows` per request, applies both and compares.
fn check(ops: &[Op_], rows: usize) -> Result<(usize, usize), TestCaseError> {
    let limits = PackLimits {
        max_rows_per_request: rows,
        max_statements: usize::MAX,
        max_request_bytes: usize::MAX,
        ..PackLimits::default()
    };
    let (mut a, mut b) = (database(), database());
    let commute = Commute::read(&a, TABLES.iter().map(|(t, _)| *t)).unwrap();
    let plain = changes(ops);
    let in_order = pack_with(&plain, &limits, true);
    let mut moved = changes(ops);
    let arranged = pack_arranged(&mut moved, &limits, true, &commute);
    prop_assert_eq!(
        in_order.iter().map(|r| r.range.clone()).collect::<Vec<_>>(),
        arranged.iter().map(|r| r.range.clone()).collect::<Vec<_>>(),
        "requests are cut in the queue's order"
    );
    for (i, (r1, r2)) in in_order.iter().zip(&arranged).enumerate() {
        let mut ids = r2.ids.clone();
        ids.sort();
        prop_assert_eq!(&r1.ids, &ids, "a request carries the same changes");
        let ranged: Vec<i64> = moved[r2.range.clone()].iter().map(|c| c.id).collect();
        prop_assert_eq!(&r2.ids, &ranged, "the changes follow the request's order");
        let (x, y) = (
            apply(&mut a, r1, i as i64 + 1),
            apply(&mut b, r2, i as i64 + 1),
        );
        prop_assert_eq!(x.is_ok(), y.is_ok(), "request {}: {:?} / {:?}", i, x, y);
        prop_assert_eq!(dump(&a), dump(&b), "after request {}", i);
    }
    let count = |rs: &[Request]| rs.iter().map(|r| r.statements.len()).sum::<usize>();
    Ok((count(&in_order), count(&arranged)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn an_arranged_request_ends_where_the_queues_order_does(
        ops in ops(),
        rows in prop_oneof![Just(usize::MAX), 1usize..12],
    ) {
        check(&ops, rows)?;
    }
}

/// The arrangement does what it is for: a mixed workload of tables that commute shares
/// statements, and a delete of a parent stays before the child writes it reaches.
#[test]
fn mixed_tables_share_statements_and_a_cascading_delete_stays_in_place() {
    // p, x, c, x, p, c, ... upserts: three shapes.
    let ops: Vec<Op_> = (0..30)
        .map(|i| ([0, 8, 1][i % 3], 0, (i % 4 + 1) as i64, 1, (i % 4) as u8))
        .collect();
    let (plain, arranged) = check(&ops, usize::MAX).unwrap();
    assert_eq!(
        plain,
        2 + 30,
        "one statement per change in the queue's order"
    );
    assert_eq!(arranged, 2 + 3, "one statement per shape");

    // Upsert c 1 under p 1, delete p 1 (cascades to c 1), upsert c 2, upsert c 1 again.
    let ops: Vec<Op_> = vec![
        (1, 0, 1, 1, 0),
        (0, 2, 1, 0, 0),
        (1, 0, 2, 2, 0),
        (1, 0, 1, 2, 1),
    ];
    let mut moved = changes(&ops);
    let commute = Commute::read(&database(), TABLES.iter().map(|(t, _)| *t)).unwrap();
    let r = pack_arranged(&mut moved, &PackLimits::default(), true, &commute);
    assert_eq!(
        r[0].ids,
        [1, 2, 3, 4],
        "nothing crosses the delete that cascades"
    );
    check(&ops, usize::MAX).unwrap();
}
