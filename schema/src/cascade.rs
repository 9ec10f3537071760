//! The cascade a parent's delete does to a child row, sent early: when a child write moves
//! ahead of a parent's delete inside one request (so that the child writes share a
//! statement), the child row that the delete would have removed first is removed first.
//!
//! In the queue's order, `DELETE p` then `UPSERT child c (parent q)` removes `c` if D1's `c`
//! pointed at `p` (the `ON DELETE CASCADE`), then inserts it afresh: its insert-only columns
//! and its tombstone come from that. Moved ahead, the upsert would update the old row and the
//! delete would then miss it. Only D1 knows where its `c` points, so the request carries, before
//! the moved writes, [`cascade_ahead_sql`]: it deletes each moved row whose key column points
//! at a parent row deleted *earlier in the queue* than that write, which is exactly what the
//! cascade would have deleted. It is only sound for a *leaf* child table (nothing refers to
//! it, no `UNIQUE` index, no triggers of its own), whose rows' removal touches nothing else;
//! the runtime's packer checks that (`d1_sync::commute`).
//!
//! A delete removes nothing when its parent row is not there (a child may point at a parent
//! row that a later write of the request inserts: foreign keys are checked at the end), so a
//! parent delete counts only when its row exists as the early cascade runs. The runtime keeps
//! every earlier write of the parent's table ahead of the moved writes, so the parent row
//! exists then exactly when it existed before its delete.
//!
//! Parameters: `?1` a JSON array of the moved writes, each `[n, k1, ..., kK]` (its place in
//! the queue, then its key); `?2` a JSON array of the parent deletes they moved past, each
//! `[link, n, p1, ..., pM]` (which foreign key of `links`, its place in the queue, then the
//! parent's key in the order of the parent's primary key).
//!
//! The keys are compared as stored, without the child column's affinity: a child key must
//! hold values of its parent key's type (a text `'7'` pointing at an integer `7` is matched by
//! SQLite's foreign key, not here), and compare with `BINARY`. The runtime tracks a key row by
//! row only when its columns have their parent columns' affinities and the parent's key is
//! `BINARY`.

use crate::sql::{join_quoted, json_expr, quote_ident, JsonEncoding};

/// A child's foreign key to its parent's primary key, with `ON DELETE CASCADE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CascadeLink<'a> {
    /// The parent table.
    pub parent: &'a str,
    /// The parent's primary key.
    pub parent_key: &'a [&'a str],
    /// The child's columns of the key, in the order of `parent_key`.
    pub columns: &'a [&'a str],
}

/// The early cascade for `child`, whose primary key is `primary_key` (carried in `?1` as
/// `key_encodings` say) and whose foreign keys with `ON DELETE CASCADE` are `links`. See the
/// module's text.
///
/// ```
/// use d1_sync_schema::cascade::{cascade_ahead_sql, CascadeLink};
/// use d1_sync_schema::sql::JsonEncoding::Plain;
/// let link = CascadeLink { parent: "conversations", parent_key: &["id"], columns: &["conversation"] };
/// let sql = cascade_ahead_sql("links", &["id"], &[Plain], &[link]);
/// assert!(sql.starts_with(r#"DELETE FROM "links" WHERE "id" IN (WITH "d0" AS MATERIALIZED"#), "{sql}");
/// ```
pub fn cascade_ahead_sql(
    child: &str,
    primary_key: &[&str],
    key_encodings: &[JsonEncoding],
    links: &[CascadeLink<'_>],
) -> String {
    let t = quote_ident(child);
    // `m`: the moved writes, their place and key (element 0 is the place, so the key's
    // encodings move one along).
    let mut encodings = vec![JsonEncoding::Plain];
    encodings.extend_from_slice(key_encodings);
    let moved_cols: Vec<String> =
        std::iter::once("json_extract(value, '$[0]') AS \"n\"".to_string())
            .chain(
                (0..primary_key.len())
                    .map(|i| format!("{} AS \"k{i}\"", json_expr("value", &encodings, i + 1))),
            )
            .collect();
    let picked: Vec<String> = primary_key
        .iter()
        .map(|k| format!("\"t\".{}", quote_ident(k)))
        .collect();
    let on_key: Vec<String> = picked
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} = \"m\".\"k{i}\""))
        .collect();
    let lhs = if primary_key.len() == 1 {
        quote_ident(primary_key[0])
    } else {
        format!("({})", join_quoted(primary_key))
    };
    // Per foreign key, its deletes (`d0`, `d1`, ...) of parent rows that exist: their place
    // and the parent's key, read once. The moved rows are found by key, and each one's
    // deletes by an automatic index on the parent's key (`+` keeps the child column's affinity
    // out of the comparison, which would stop SQLite from using that index): the cost grows
    // with the rows, not with rows × deletes.
    let mut ctes = Vec::new();
    let mut selects = Vec::new();
    for (l, link) in links.iter().enumerate() {
        let columns = link.columns;
        let parent_cols: Vec<String> =
            std::iter::once("json_extract(value, '$[1]') AS \"n\"".to_string())
                .chain(
                    (0..columns.len())
                        .map(|i| format!("json_extract(value, '$[{}]') AS \"p{i}\"", i + 2)),
                )
                .collect();
        // The parent's row, found by its key (the parent column's affinity applies).
        let exists: Vec<String> = link
            .parent_key
            .iter()
            .enumerate()
            .map(|(i, k)| {
                format!(
                    "\"p\".{} = json_extract(value, '$[{}]')",
                    quote_ident(k),
                    i + 2
                )
            })
            .collect();
        ctes.push(format!(
            "\"d{l}\" AS MATERIALIZED (SELECT {} FROM json_each(?2) WHERE json_extract(value, '$[0]') = {l} \
             AND EXISTS (SELECT 1 FROM {} AS \"p\" WHERE {}))",
            parent_cols.join(", "),
            quote_ident(link.parent),
            exists.join(" AND ")
        ));
        let on_parent: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("+\"t\".{} = \"d{l}\".\"p{i}\"", quote_ident(c)))
            .collect();
        selects.push(format!(
            "SELECT {} FROM (SELECT {} FROM json_each(?1)) AS \"m\" \
             CROSS JOIN {t} AS \"t\" ON {} \
             CROSS JOIN \"d{l}\" ON {} AND \"d{l}\".\"n\" < \"m\".\"n\"",
            picked.join(", "),
            moved_cols.join(", "),
            on_key.join(" AND "),
            on_parent.join(" AND "),
        ));
    }
    format!(
        "DELETE FROM {t} WHERE {lhs} IN (WITH {} {})",
        ctes.join(", "),
        selects.join(" UNION ALL ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::JsonEncoding::{Hex, Plain};
    use rusqlite::Connection;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE p (id TEXT PRIMARY KEY);
             CREATE TABLE q (a INTEGER, b INTEGER, PRIMARY KEY (a, b));
             CREATE TABLE c (id TEXT PRIMARY KEY,
                             p TEXT REFERENCES p (id) ON DELETE CASCADE,
                             qa INTEGER, qb INTEGER,
                             FOREIGN KEY (qa, qb) REFERENCES q (a, b) ON DELETE CASCADE);
             INSERT INTO p VALUES ('p1'), ('p2');
             INSERT INTO q VALUES (1, 1), (1, 2);
             INSERT INTO c VALUES ('c1', 'p1', NULL, NULL), ('c2', 'p2', NULL, NULL),
                                  ('c3', 'p1', 1, 2), ('c4', NULL, 1, 1);",
        )
        .unwrap();
        conn
    }

    const P: CascadeLink = CascadeLink {
        parent: "p",
        parent_key: &["id"],
        columns: &["p"],
    };
    const Q: CascadeLink = CascadeLink {
        parent: "q",
        parent_key: &["a", "b"],
        columns: &["qa", "qb"],
    };

    fn left(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT id FROM c ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn removes_a_moved_row_only_where_it_points_at_a_parent_deleted_before_its_write() {
        let conn = db();
        let sql = cascade_ahead_sql("c", &["id"], &[Plain], &[P, Q]);
        // c1 moved past the delete of p1 (place 3 < 5): removed. c2 moved, but p2's delete
        // comes after its write (place 9 > 6): kept. c3 points at a deleted q row (place 2 <
        // 7). c4 points at q (1, 1), whose delete was not moved past.
        let moved = r#"[[5,"c1"],[6,"c2"],[7,"c3"],[8,"c4"]]"#;
        let deletes = r#"[[0,3,"p1"],[0,9,"p2"],[1,2,1,2]]"#;
        conn.execute(&sql, [moved, deletes]).unwrap();
        assert_eq!(left(&conn), ["c2", "c4"]);
    }

    #[test]
    fn a_composite_or_blob_key_is_read_as_carried() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE p (id INTEGER PRIMARY KEY);
             CREATE TABLE c (a BLOB, b INTEGER, p INTEGER, PRIMARY KEY (a, b));
             INSERT INTO p VALUES (7), (8);
             INSERT INTO c VALUES (x'0102', 1, 7), (x'0102', 2, 7), (x'03', 1, 8);",
        )
        .unwrap();
        let sql = cascade_ahead_sql("c", &["a", "b"], &[Hex, Plain], &[P]);
        conn.execute(
            &sql,
            [r#"[[4,"0102",1],[4,"03",1]]"#, r#"[[0,1,7],[0,2,8]]"#],
        )
        .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM c", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "(0102, 1) and (03, 1) removed, (0102, 2) not moved");
        let kept: (Vec<u8>, i64) = conn
            .query_row("SELECT a, b FROM c", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(kept, (vec![1, 2], 2));
    }

    #[test]
    fn a_delete_of_a_parent_row_that_is_not_there_removes_nothing() {
        let conn = db();
        // c1 points at p1 and c3 at q (1, 2), but neither parent row is there: in the queue's
        // order their deletes found nothing to cascade (the children's keys are satisfied by
        // a later write of the request).
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF; DELETE FROM p WHERE id = 'p1';
             DELETE FROM q WHERE a = 1 AND b = 2;",
        )
        .unwrap();
        let sql = cascade_ahead_sql("c", &["id"], &[Plain], &[P, Q]);
        let moved = r#"[[5,"c1"],[6,"c2"],[7,"c3"]]"#;
        let deletes = r#"[[0,3,"p1"],[0,4,"p2"],[1,2,1,2]]"#;
        conn.execute(&sql, [moved, deletes]).unwrap();
        assert_eq!(
            left(&conn),
            ["c1", "c3", "c4"],
            "only c2's parent was there"
        );
    }

    #[test]
    fn reads_the_parent_from_the_row_by_its_index() {
        let conn = db();
        let sql = cascade_ahead_sql("c", &["id"], &[Plain], &[P]);
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([r#"[]"#, r#"[]"#], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|l| l.contains("USING INDEX") || l.contains("PRIMARY KEY")),
            "the moved rows are found by key, not by a scan of the table: {plan:?}"
        );
        assert!(
            plan.iter()
                .any(|l| l.contains("AUTOMATIC") && l.contains("INDEX")),
            "each row's deletes are found by an index, not by a scan per row: {plan:?}"
        );
        assert!(
            !plan.iter().any(|l| l == "SCAN t"),
            "no scan of the child table: {plan:?}"
        );
    }
}
