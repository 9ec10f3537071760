//! Model test of the arrangement (`d1_sync::pack::pack_arranged`): inside a request, changes
//! that commute trade places so that the changes of one shape share a statement. Random
//! writes over a schema with every kind of tie between tables (cascades two deep, a cascade
//! to a versioned leaf with an insert-only column, `SET NULL`, `RESTRICT`, a plain foreign
//! key, one column two keys share (one cascades, one nulls), a partial `UNIQUE` index, a
//! trigger that writes two other tables, a versioned table with its tombstones, an
//! unrelated table; versions mostly rising, some older) are packed
//! twice with the same request boundaries: in the queue's order and arranged. Applied request
//! by request to two copies of one database (SQLite, as D1 runs them: one transaction each,
//! foreign keys deferred), every request must succeed or fail alike, name the same changes as
//! superseded by a newer version, and the two must end identical.

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
  CREATE TRIGGER t_touches_x AFTER INSERT ON t BEGIN
    UPDATE x SET v = v || new.v;
    UPDATE w SET version = version + 100 WHERE id = new.id;
  END;
  CREATE TABLE w (id INTEGER PRIMARY KEY, v TEXT, version INTEGER NOT NULL);
  CREATE TABLE l (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p (id) ON DELETE CASCADE,
                  made TEXT, version INTEGER NOT NULL);
  CREATE TABLE z (id INTEGER PRIMARY KEY,
                  x INTEGER REFERENCES p (id) ON DELETE CASCADE REFERENCES r (id) ON DELETE SET NULL,
                  made TEXT);
  CREATE TABLE j (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p (id) ON DELETE CASCADE,
                  f INTEGER REFERENCES f (id) ON DELETE RESTRICT, made TEXT);
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
  INSERT INTO l VALUES (1, 1, 'm0', 1), (2, 2, 'm0', 1), (3, 1, 'm0', 100);
  INSERT INTO z VALUES (1, 2, 'm0');
  INSERT INTO j VALUES (1, 2, 1, 'm0');
";

/// Each table's columns besides `id`.
const TABLES: [(&str, &[&str]); 14] = [
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
    ("l", &["p", "made", "version"]),
    ("z", &["x", "made"]),
    ("j", &["p", "f", "made"]),
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
                // Insert-only columns in the leaves of `p`'s cascades: a row the cascade removed
                // and a write brought back differs from one the write updated.
                insert_only: match *name {
                    "l" | "z" | "j" => vec!["made".into()],
                    "g" => vec!["v".into()],
                    _ => vec![],
                },
                version: matches!(*name, "w" | "l").then(|| "version".to_string()),
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
        // Versions rise with the queue, except a quarter of the writes (text 3), which carry
        // an older one: an app's clock is not always right.
        let version = if text == 3 { 10 + id / 2 } else { 10 + id };
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
        for column in &def.columns[2..] {
            values.push(match column.as_str() {
                "version" => Value::Integer(version),
                // An insert-only column: a row the cascade removed comes back with the value
                // of the write that brings it back, and an updated one keeps its own.
                "made" => Value::Text(format!("m{id}")),
                // A second key, to `f`.
                "f" => match other {
                    0 => Value::Null,
                    o => Value::Integer(o),
                },
                _ => Value::Text(format!("v{text}")),
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
    let conn = database_without_triggers();
    // D1 keeps a versioned table's tombstone trigger once any request wrote the table: the
    // model starts from one that has, so a cascade leaves tombstones whichever request comes
    // first.
    for (table, _) in TABLES.iter().filter(|(t, _)| matches!(*t, "w" | "l")) {
        conn.execute_batch(&d1_sync_schema::guard::tombstone_trigger_sql(
            table,
            &["id"],
            "version",
        ))
        .unwrap();
    }
    conn
}

/// A D1 no request has written yet.
fn database_without_triggers() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("PRAGMA foreign_keys = on").unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    for s in d1_sync::ledger::create_statements() {
        conn.execute_batch(&s.sql).unwrap();
    }
    conn.execute_batch(SEED).unwrap();
    conn
}

/// Applies a request as D1 does: one transaction, every statement run. Returns the changes
/// the version checks name as superseded (id, the version that refuses it), sorted.
fn apply(conn: &mut Connection, r: &Request, seq: i64) -> Result<Vec<(i64, i64)>, String> {
    let mut r = r.clone();
    r.stamp(&RequestId::new("0000000000model0", seq));
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let mut superseded = Vec::new();
    for (n, s) in r.statements.iter().enumerate() {
        let check = r.checks.iter().find(|c| c.statement == n);
        let mut stmt = tx.prepare(&s.sql).map_err(|e| e.to_string())?;
        let mut rows = stmt
            .query(params_from_iter(s.params.iter()))
            .map_err(|e| e.to_string())?;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            if let Some(c) = check {
                let i: i64 = row.get(0).map_err(|e| e.to_string())?;
                let v: String = row.get(1).map_err(|e| e.to_string())?;
                superseded.push((r.ids[c.first + i as usize], v.parse().unwrap()));
            }
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    superseded.sort();
    Ok(superseded)
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
        "l",
        "z",
        "j",
        "d1_sync_tombstones",
    ] {
        // A tombstone's `deleted_at` is the clock's second, which two copies may read apart.
        let columns = if t == "d1_sync_tombstones" {
            "table_name, row_key, version"
        } else {
            "*"
        };
        let mut stmt = conn
            .prepare(&format!("SELECT {columns} FROM {t} ORDER BY 1, 2"))
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

/// Tables tied together: the cascades and keys of `p` (with its versioned leaf `l`, whose
/// writes move ahead of `p`'s deletes), `r` and `k`, the `UNIQUE` index, the trigger's
/// tables (it raises versions of `w`), the versioned table, `z`, whose one column `p`'s
/// delete cascades on and `r`'s nulls, and `j`, which `p`'s delete cascades on (row by row)
/// and `f`'s is restricted by.
const FAMILIES: [&[usize]; 6] = [
    &[0, 1, 2, 3, 6, 11],
    &[4, 5],
    &[7],
    &[8, 9, 10],
    &[10],
    &[0, 4, 6, 12, 13],
];

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
        if let (Ok(x), Ok(y)) = (&x, &y) {
            prop_assert_eq!(x, y, "request {}: the same changes are superseded", i);
        }
        prop_assert_eq!(dump(&a), dump(&b), "after request {}", i);
    }
    let count = |rs: &[Request]| rs.iter().map(|r| r.statements.len()).sum::<usize>();
    Ok((count(&in_order), count(&arranged)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        // Rare orders find the bugs here (a random seed in CI found the early cascade's):
        // 4,096 cases take about 40 s in a debug build.
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(4096)
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

/// The cases that caught each bound of the arrangement, and of the version checks sent at a
/// request's start, left out by hand (shrunk by proptest;
/// its seeds file replays seeds, which draw other cases once the generator changes).
#[test]
fn the_cases_that_caught_a_missing_bound_still_end_alike() {
    let cases: Vec<(Vec<Op_>, usize)> = vec![
        (
            vec![(8, 1, 3, 0, 0), (9, 0, 1, 0, 0), (8, 1, 1, 0, 0)],
            usize::MAX,
        ),
        (
            vec![
                (7, 0, 2, 2, 0),
                (7, 1, 2, 0, 0),
                (7, 0, 1, 2, 0),
                (6, 0, 1, 0, 0),
            ],
            usize::MAX,
        ),
        (
            vec![
                (8, 0, 1, 0, 0),
                (8, 0, 1, 0, 0),
                (8, 0, 1, 0, 0),
                (8, 1, 3, 0, 0),
                (9, 0, 1, 0, 0),
                (9, 0, 1, 0, 0),
                (8, 2, 3, 0, 0),
                (8, 0, 1, 0, 0),
                (8, 0, 1, 0, 0),
                (8, 0, 1, 0, 0),
            ],
            usize::MAX,
        ),
        (
            vec![
                (2, 0, 2, 0, 0),
                (2, 1, 3, 0, 0),
                (0, 2, 2, 0, 0),
                (2, 0, 1, 2, 0),
            ],
            usize::MAX,
        ),
        (
            vec![
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 2, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (3, 0, 3, 3, 0),
                (0, 2, 3, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
            ],
            usize::MAX,
        ),
        (
            vec![
                (7, 0, 2, 0, 0),
                (7, 0, 1, 3, 0),
                (7, 0, 1, 3, 0),
                (7, 0, 2, 1, 0),
                (7, 0, 1, 0, 0),
                (7, 0, 3, 0, 0),
                (7, 0, 3, 0, 0),
                (3, 0, 1, 0, 0),
                (7, 1, 2, 0, 0),
                (3, 0, 1, 0, 0),
                (7, 1, 1, 1, 0),
                (7, 0, 1, 0, 0),
            ],
            6,
        ),
        (
            vec![(0, 2, 3, 0, 0), (1, 0, 1, 2, 0), (0, 2, 2, 0, 0)],
            usize::MAX,
        ),
        (
            vec![(8, 0, 1, 0, 0), (9, 0, 1, 0, 0), (8, 0, 1, 0, 0)],
            usize::MAX,
        ),
        (
            vec![(1, 0, 1, 0, 0), (0, 2, 2, 0, 0), (1, 0, 2, 0, 0)],
            usize::MAX,
        ),
        (
            vec![
                (3, 2, 1, 0, 1),
                (3, 1, 3, 0, 3),
                (10, 2, 3, 1, 0),
                (10, 1, 2, 1, 0),
                (3, 0, 2, 3, 1),
                (3, 1, 3, 2, 3),
                (10, 2, 1, 0, 3),
                (10, 1, 1, 3, 1),
                (10, 1, 3, 1, 0),
                (10, 2, 1, 3, 0),
                (3, 2, 1, 1, 2),
                (10, 1, 3, 0, 0),
                (10, 0, 2, 2, 1),
                (10, 2, 2, 1, 1),
                (10, 1, 3, 0, 2),
                (3, 1, 3, 3, 1),
                (10, 2, 2, 2, 1),
                (10, 0, 3, 0, 1),
                (3, 0, 3, 2, 0),
                (3, 0, 2, 2, 3),
                (10, 1, 3, 0, 2),
                (3, 1, 3, 0, 3),
                (10, 0, 3, 0, 1),
                (3, 0, 1, 2, 3),
                (3, 0, 3, 3, 1),
                (3, 2, 2, 2, 3),
                (10, 1, 3, 2, 3),
                (10, 2, 3, 1, 3),
                (10, 0, 3, 2, 0),
                (3, 0, 3, 2, 0),
                (10, 0, 2, 3, 0),
                (10, 2, 3, 3, 0),
                (10, 2, 2, 3, 1),
                (10, 2, 2, 2, 1),
                (10, 0, 3, 0, 3),
                (10, 2, 2, 0, 3),
                (3, 2, 2, 2, 3),
            ],
            usize::MAX,
        ),
        (
            vec![
                (9, 1, 3, 1, 3),
                (10, 2, 1, 0, 2),
                (9, 0, 1, 3, 2),
                (10, 1, 3, 3, 0),
                (10, 2, 1, 2, 0),
                (10, 0, 2, 3, 3),
                (10, 2, 2, 1, 3),
                (10, 0, 3, 1, 2),
                (10, 1, 3, 2, 3),
                (10, 1, 2, 3, 0),
                (9, 2, 1, 3, 2),
                (9, 0, 3, 2, 3),
                (9, 1, 2, 0, 3),
                (9, 2, 3, 2, 0),
                (10, 2, 2, 2, 0),
                (9, 1, 3, 1, 1),
                (10, 2, 3, 0, 1),
                (9, 2, 2, 1, 0),
                (9, 2, 3, 3, 1),
                (10, 1, 3, 3, 3),
                (9, 2, 2, 2, 1),
                (10, 0, 1, 0, 0),
                (10, 2, 2, 1, 3),
                (10, 2, 2, 0, 3),
                (10, 0, 3, 1, 3),
                (10, 1, 2, 1, 3),
                (10, 1, 3, 3, 3),
                (10, 1, 3, 0, 1),
                (9, 1, 1, 2, 1),
                (9, 2, 1, 1, 2),
                (10, 0, 3, 0, 0),
                (10, 2, 3, 1, 0),
                (9, 0, 1, 0, 0),
            ],
            usize::MAX,
        ),
        (
            vec![
                (3, 0, 1, 0, 0),
                (0, 2, 2, 0, 0),
                (0, 0, 1, 0, 0),
                (1, 0, 1, 0, 0),
                (3, 0, 1, 2, 0),
            ],
            usize::MAX,
        ),
        (
            vec![(11, 1, 3, 0, 0), (0, 2, 2, 0, 0), (11, 1, 2, 0, 0)],
            usize::MAX,
        ),
        (
            vec![
                (0, 2, 1, 0, 0),
                (11, 0, 2, 0, 0),
                (0, 2, 2, 0, 0),
                (0, 0, 1, 0, 0),
            ],
            usize::MAX,
        ),
        (
            vec![(2, 0, 3, 2, 0), (1, 2, 2, 0, 0), (2, 0, 3, 0, 1)],
            usize::MAX,
        ),
        // A leaf's column that one key cascades on and another nulls: `r 2`'s delete nulls
        // `z 1`'s key first, so `p 2`'s delete leaves `z 1` alone; moved ahead of both, the
        // early cascade would find it still pointing at `p 2`.
        (
            vec![
                (12, 0, 3, 0, 0),
                (4, 2, 2, 0, 0),
                (0, 2, 2, 0, 0),
                (12, 0, 1, 1, 0),
            ],
            usize::MAX,
        ),
        // Two deletes reaching one table: `r 2`'s, which nulls `z 1`'s key, joined the delete
        // of `r 3` ahead of `p 2`'s, which in the queue's order cascades `z 1` away through
        // that key first.
        (
            vec![(4, 2, 3, 0, 0), (0, 2, 2, 0, 0), (4, 2, 2, 0, 0)],
            usize::MAX,
        ),
        // The version checks sent at the start of a request, when they must not be.
        (
            vec![(0, 2, 1, 0, 0), (11, 1, 3, 0, 0), (0, 0, 1, 0, 0)],
            usize::MAX,
        ),
        (vec![(9, 0, 1, 0, 0), (10, 1, 1, 0, 0)], usize::MAX),
        // With a leaf's writes moved ahead of its parent's deletes (the early cascade): a leaf
        // row pointing at a parent row that was never there was removed (until the early
        // cascade asked that the parent row be there)...
        (
            vec![
                (2, 0, 3, 3, 0),
                (2, 1, 1, 0, 0),
                (1, 2, 3, 0, 0),
                (2, 1, 3, 0, 0),
            ],
            usize::MAX,
        ),
        // ...and a leaf's delete moved ahead of its parent's was named superseded where the
        // queue's order found the row cascaded away (a leaf's deletes now stay after its
        // parents' deletes).
        (
            vec![
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (0, 0, 1, 0, 0),
                (1, 0, 1, 0, 0),
                (1, 0, 1, 0, 0),
                (11, 0, 1, 2, 0),
                (11, 2, 2, 0, 0),
                (0, 2, 2, 0, 0),
                (11, 2, 1, 0, 3),
                (0, 0, 1, 0, 0),
            ],
            usize::MAX,
        ),
    ];
    for (ops, rows) in cases {
        check(&ops, rows).unwrap_or_else(|e| panic!("{ops:?}: {e}"));
    }
}

/// A leaf's writes move ahead of its parent's delete, and the cascade the delete would have
/// done to them is sent first: `l 2` points at `p 2` in D1, `p 2` is deleted, then `l 2` is
/// written pointing elsewhere (an update finds no row; an upsert inserts it afresh, with its
/// own insert-only value).
#[test]
fn a_leafs_writes_move_ahead_of_its_parents_delete_with_the_cascade_sent_first() {
    for op in [0, 1] {
        let ops: Vec<Op_> = vec![(11, op, 3, 0, 0), (0, 2, 2, 0, 0), (11, op, 2, 3, 0)];
        let mut moved = changes(&ops);
        let commute = Commute::read(&database(), TABLES.iter().map(|(t, _)| *t)).unwrap();
        let r = pack_arranged(&mut moved, &PackLimits::default(), true, &commute);
        assert_eq!(
            r[0].ids,
            [1, 3, 2],
            "op {op}: the second write joins the first"
        );
        assert!(
            r[0].statements
                .iter()
                .any(|s| s.sql.starts_with(r#"DELETE FROM "l" WHERE "id" IN (WITH"#)),
            "op {op}: the early cascade is sent"
        );
        check(&ops, usize::MAX).unwrap();
    }
}

/// A leaf's write does not move ahead of an earlier write of its parent's table, so that the
/// early cascade finds the parent row there exactly when its delete did. Here `p 3` is deleted,
/// `l 1` pointed at it, `p 3` written back (joining `p 1`'s statement) and deleted again, which
/// cascades `l 1`; then `l 1` is written anew. Had that write joined the second statement of
/// `l`, the early cascade would have run before `p 3` was back, found no parent, and kept the
/// old `l 1` (with its old insert-only value).
#[test]
fn a_leafs_write_stays_after_its_parents_earlier_writes() {
    let ops: Vec<Op_> = vec![
        (0, 2, 3, 0, 0),
        (11, 0, 2, 0, 0),
        (11, 0, 1, 3, 0),
        (11, 0, 2, 0, 0),
        (0, 0, 1, 0, 0),
        (0, 0, 3, 0, 0),
        (0, 2, 3, 0, 0),
        (11, 0, 1, 1, 0),
    ];
    check(&ops, usize::MAX).unwrap();
    let mut moved = changes(&ops);
    let commute = Commute::read(&database(), TABLES.iter().map(|(t, _)| *t)).unwrap();
    let r = pack_arranged(&mut moved, &PackLimits::default(), true, &commute);
    assert_eq!(
        r[0].ids,
        [1, 2, 3, 4, 5, 6, 7, 8],
        "the last write of l 1 stays after p 3's upsert"
    );
}

/// A request that only deletes a parent creates, before the delete, the tombstone trigger of
/// the versioned table its cascade reaches: the cascaded rows leave tombstones even in D1's
/// first request, which writes nothing else of that table.
#[test]
fn a_parents_delete_creates_the_tombstone_trigger_of_what_it_cascades_to() {
    let mut d1 = database_without_triggers();
    let defs = defs();
    let commute = Commute::read(&d1, TABLES.iter().map(|(t, _)| *t))
        .unwrap()
        .with_tombstones(defs.iter().map(|d| &**d));
    // Delete p 1: l 1 and l 3 point at it.
    let mut moved = changes(&[(0, 2, 1, 0, 0)]);
    let r = pack_arranged(&mut moved, &PackLimits::default(), true, &commute);
    assert!(
        r[0].statements
            .iter()
            .any(|s| s.sql.contains(r#"AFTER DELETE ON "l""#)),
        "the trigger of l"
    );
    // f 1 points at p 1 with no action: point it elsewhere first, so the request commits.
    d1.execute_batch("UPDATE f SET p = 2").unwrap();
    apply(&mut d1, &r[0], 1).unwrap();
    let tombstones: Vec<(String, i64)> = d1
        .prepare(
            "SELECT row_key, version FROM d1_sync_tombstones WHERE table_name = 'l' ORDER BY 1",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        tombstones,
        [("[\"1\"]".to_string(), 1), ("[\"3\"]".to_string(), 100)]
    );
}
