//! Packing changes into D1 requests: as few requests as D1's limits allow, with the order of
//! the changes kept exactly.
//!
//! Consecutive changes of the same *shape* (table, operation, columns, blob columns) share one
//! `json_each` statement that carries all their rows in one JSON parameter. Changes are never
//! reordered, not even across rows: reordering could break a UNIQUE constraint or a foreign
//! key that the local order satisfied. Each request opens with `PRAGMA defer_foreign_keys = on`
//! so that a child written before its parent within one request is still accepted, as it would
//! be in one local transaction.

use std::borrow::Cow;
use std::collections::{HashMap as StdMap, HashSet as StdSet};

use d1_sync_schema::cascade::CascadeLink;
use d1_sync_schema::guard;
use d1_sync_schema::sql::{delete_json_sql, update_json_sql, upsert_json_sql, JsonEncoding};

use crate::change::{Change, Op, Special};
use crate::commute::{CascadedBy, Commute, Facts};

/// The packer's maps and sets: keys are the app's own row keys and table names, hashed per
/// change, so a fast hasher (randomly seeded) rather than SipHash.
type HashMap<K, V> = StdMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = StdSet<K, foldhash::fast::RandomState>;

/// The first statement of every request.
pub const DEFER_FOREIGN_KEYS: &str = "PRAGMA defer_foreign_keys = on";

/// A bound parameter: text (D1's REST API documents string parameters), or a real that must
/// be bound as a number to arrive bit for bit (D1 binds JSON numbers as doubles).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Param {
    /// Text (the JSON parameter of the `json_each` forms, or plain text).
    Text(String),
    /// A double.
    Real(f64),
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Param::Text(s) => ValueRef::Text(s.as_bytes()),
            Param::Real(f) => ValueRef::Real(*f),
        }))
    }
}

/// One SQL statement with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// SQL text.
    pub sql: String,
    /// Parameters, `?1..?N`.
    pub params: Vec<Param>,
}

impl Statement {
    /// A statement without parameters.
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            params: Vec::new(),
        }
    }
}

/// Size limits of a request.
///
/// The defaults fill a request up to D1's own limits: a JSON parameter stays under D1's
/// 2,000,000 bytes per string, statement text is a few hundred bytes (D1 allows 100,000), and
/// a request holds at most 10,000 rows, D1's advice for one bulk write, at which the local
/// engine applies a request in well under a second, far from D1's 30 s per request. The
/// worker narrows the rows and bytes further when D1 answers slowly or with 413
/// ([`crate::sizing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Bytes of the JSON parameter of one statement (D1: 2,000,000 per string).
    pub max_param_bytes: usize,
    /// Rows in one statement.
    pub max_rows_per_statement: usize,
    /// Statements in one request.
    pub max_statements: usize,
    /// Bytes of SQL and parameters in one request.
    pub max_request_bytes: usize,
    /// Rows (changes) in one request.
    pub max_rows_per_request: usize,
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits {
            max_param_bytes: 1_900_000,
            max_rows_per_statement: 10_000,
            max_statements: 1_000,
            max_request_bytes: 8_000_000,
            max_rows_per_request: 10_000,
        }
    }
}

/// A request: its statements, and which changes it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Statements: [`DEFER_FOREIGN_KEYS`], the ledger write (its parameters set by
    /// [`Request::stamp`]), then the changes. Empty when packed without SQL.
    pub statements: Vec<Statement>,
    /// Queue ids of the changes, in order.
    pub ids: Vec<i64>,
    /// Where its changes are in the slice given to [`pack`].
    pub range: std::ops::Range<usize>,
    /// The statements that name the rows the version guard will refuse (versioned tables).
    pub checks: Vec<StaleCheck>,
}

/// A statement of a request that lists rows the version guard will refuse, each result row
/// `i` and `v` (the version the target holds): either just before the statement it checks
/// ([`d1_sync_schema::guard::stale_json_sql`]; `i` is the row's position in that statement),
/// or at the request's start for rows of several statements
/// ([`d1_sync_schema::guard::stale_numbered_sql`]; `i` is the change's position in the
/// request, and `first` is 0). Either way the change is `ids[first + i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleCheck {
    /// Its index in the request's statements.
    pub statement: usize,
    /// Which of the request's changes (a position in [`Request::ids`]) its row `0` stands for.
    pub first: usize,
}

impl Request {
    /// Its statements without the ledger's write: the request as it was before exactly-once
    /// delivery, for measuring the ledger's cost and showing why it is needed.
    pub fn statements_without_ledger(&self) -> Vec<Statement> {
        let mut statements = self.statements.clone();
        if statements.len() > LEDGER_STATEMENT {
            statements.remove(LEDGER_STATEMENT);
        }
        statements
    }

    /// Sets the request's id in its ledger statement (the second); a request packed without
    /// SQL has none, and its target writes the ledger itself.
    pub fn stamp(&mut self, id: &crate::ledger::RequestId) {
        if let Some(s) = self.statements.get_mut(LEDGER_STATEMENT) {
            s.params = id.params();
        }
    }
}

/// Where the ledger write stands in a request's statements.
pub const LEDGER_STATEMENT: usize = 1;

struct Shape<'a> {
    table: &'a str,
    op: Op,
    columns: &'a [String],
    encodings: Vec<JsonEncoding>,
    /// Versioned: where the key's columns and the version are in a row.
    guard: Option<GuardShape>,
    /// A write (not a delete) of a leaf table whose `CASCADE` keys are tracked row by row
    /// ([`Facts::cascaded_by`]): its rows may move ahead of parent deletes.
    cascaded_by: &'a [CascadedBy],
}

/// Where a versioned change's key and version are in its row.
struct GuardShape {
    key: Vec<usize>,
    version: usize,
}

impl GuardShape {
    fn of(c: &Change) -> Option<GuardShape> {
        let version = c.table.version_position(&c.columns)?;
        c.version?;
        let key = key_positions(c, &c.columns)?;
        Some(GuardShape { key, version })
    }

    /// The positions of the columns the guard reads: the key's, then the version's.
    fn read(&self) -> impl Iterator<Item = &usize> + '_ {
        self.key.iter().chain(std::iter::once(&self.version))
    }

    /// How those columns are encoded in `s`'s JSON.
    fn encodings(&self, s: &Shape) -> Vec<JsonEncoding> {
        self.read()
            .map(|&i| s.encodings.get(i).copied().unwrap_or(JsonEncoding::Plain))
            .collect()
    }
}

impl Shape<'_> {
    /// Whether two rows of one key must go in separate statements: an update's (SQLite would
    /// apply one of them) and a versioned write's (the check before it sees the table as it
    /// was before the statement), and a row that may move ahead of a parent's delete (the
    /// early cascade reads the row as it was before the statement).
    fn distinct_keys(&self) -> bool {
        self.op == Op::Update || self.guard.is_some() || !self.cascaded_by.is_empty()
    }

    /// Whether `c`, whose value encodings are `encodings`, has this shape. Changes of one
    /// shape share their column list, so the pointer check settles most comparisons.
    fn fits(&self, c: &Change, encodings: &[JsonEncoding]) -> bool {
        self.op == c.op
            && self.table == c.table.name
            && (std::ptr::eq(self.columns, &*c.columns) || self.columns == &*c.columns)
            && self.encodings == encodings
    }
}

/// The encodings of a change's values into `encodings`, and the values bound outside the
/// JSON (reals SQLite's JSON parser would not read back exactly), numbered from `?2`, into
/// `bound`. Both are cleared first.
fn encode_shape(c: &Change, encodings: &mut Vec<JsonEncoding>, bound: &mut Vec<Param>) {
    encodings.clear();
    bound.clear();
    encodings.resize(c.columns.len(), JsonEncoding::Plain);
    for (n, s) in &c.special {
        if let Some(e) = encodings.get_mut(*n) {
            *e = match s {
                Special::Blob => JsonEncoding::Hex,
                Special::Real(f) => {
                    bound.push(Param::Real(*f));
                    JsonEncoding::Param(u16::try_from(bound.len() + 1).unwrap_or(u16::MAX))
                }
            };
        }
    }
}

/// The statements that apply a shape's rows (two for a versioned delete: its tombstones, then
/// the deletes), all with the same parameters.
fn statement_sql(s: &Shape, c: &Change) -> Vec<String> {
    let cols: Vec<&str> = s.columns.iter().map(String::as_str).collect();
    let pk: Vec<&str> = c.table.primary_key.iter().map(String::as_str).collect();
    let io: Vec<&str> = c.table.insert_only.iter().map(String::as_str).collect();
    let key_len = pk.len().min(cols.len());
    match (
        s.op,
        c.table.version.as_deref().filter(|_| s.guard.is_some()),
    ) {
        (Op::Upsert, None) => vec![upsert_json_sql(s.table, &cols, &s.encodings, &pk, &io)],
        (Op::Update, None) => vec![update_json_sql(
            s.table,
            &pk,
            &cols[key_len..],
            &s.encodings,
        )],
        (Op::Delete, None) => vec![delete_json_sql(s.table, &cols, &s.encodings)],
        (Op::Upsert, Some(v)) => vec![guard::upsert_json_sql(
            s.table,
            &cols,
            &s.encodings,
            &pk,
            &io,
            v,
        )],
        (Op::Update, Some(v)) => vec![guard::update_json_sql(
            s.table,
            &pk,
            &cols[key_len..],
            &s.encodings,
            v,
        )],
        (Op::Delete, Some(v)) => guard::delete_json_sql(s.table, &pk, &s.encodings, v).to_vec(),
    }
}

/// The check sent before a versioned shape's statement, and whether its JSON holds whole rows
/// (`false`: each row's key and version only, which is all it reads).
fn check_sql(s: &Shape, c: &Change, single_row: bool) -> Option<(String, bool)> {
    let g = s.guard.as_ref()?;
    let v = c.table.version.as_deref()?;
    let pk: Vec<&str> = c.table.primary_key.iter().map(String::as_str).collect();
    let write = s.op.guarded();
    // A delete's row is its key and version already; a row with a bound real is checked
    // whole, with the same parameters.
    let whole = s.op == Op::Delete || single_row;
    let sql = if whole {
        let cols: Vec<&str> = s.columns.iter().map(String::as_str).collect();
        guard::stale_json_sql(write, s.table, &cols, &s.encodings, &pk, v)
    } else {
        let mut cols: Vec<&str> = pk.clone();
        cols.push(v);
        let encodings = g.encodings(s);
        guard::stale_json_sql(write, s.table, &cols, &encodings, &pk, v)
    };
    Some((sql, whole))
}

/// The statement that makes a versioned table's deletes leave tombstones (see
/// [`guard::tombstone_trigger_sql`]).
fn tombstone_trigger(s: &Shape, c: &Change) -> Option<String> {
    s.guard.as_ref()?;
    let v = c.table.version.as_deref()?;
    let pk: Vec<&str> = c.table.primary_key.iter().map(String::as_str).collect();
    Some(guard::tombstone_trigger_sql(s.table, &pk, v))
}

/// Appends a row's key and version (`[k1, ..., v]`) to a check's JSON.
fn push_key_and_version(json: &mut String, row: &str, g: &GuardShape) {
    json.push('[');
    push_elements(json, row, g.read());
    json.push(']');
}

/// Appends the elements `at` of the JSON array `row`, comma-separated (`null` for one it
/// lacks).
fn push_elements<'i>(json: &mut String, row: &str, at: impl IntoIterator<Item = &'i usize>) {
    let spans = crate::codec::element_spans(row).unwrap_or_default();
    for (n, &i) in at.into_iter().enumerate() {
        if n > 0 {
            json.push(',');
        }
        match spans.get(i) {
            Some(span) => json.push_str(&row[span.clone()]),
            None => json.push_str("null"),
        }
    }
}

/// Where the columns of `c`'s primary key are in `columns`.
fn key_positions(c: &Change, columns: &[String]) -> Option<Vec<usize>> {
    c.table
        .primary_key
        .iter()
        .map(|k| columns.iter().position(|x| x == k))
        .collect()
}

/// A statement being filled: the changes of one shape, in queue order, that the arrangement
/// put together.
struct Group<'a> {
    shape: Shape<'a>,
    /// The statements applying the rows (one, or two for a versioned delete).
    sql: Vec<String>,
    /// A versioned shape's check, and whether its JSON is the rows' own.
    check: Option<(String, bool)>,
    /// Its changes (positions in the slice given to the packer).
    members: Vec<usize>,
    /// Bytes of its JSON parameter so far.
    json: usize,
    bound: Vec<Param>,
    /// Row keys in it (kept when they must be distinct: see [`Shape::distinct_keys`]).
    keys: HashSet<&'a str>,
    /// The tombstone triggers it opens with (see [`tombstone_trigger`]): its own table's, in
    /// the first group of a versioned table in the request, and, for a delete, those of the
    /// versioned tables its cascades reach that the request has not created yet.
    triggers: Vec<String>,
    /// The early cascade sent before it, when its rows moved ahead of parent deletes.
    ahead: Option<Ahead>,
    /// Its table's facts (`None`: kept in order with everything).
    facts: Option<&'a Facts>,
}

/// The early cascade of a group of a leaf's writes
/// ([`d1_sync_schema::cascade::cascade_ahead_sql`]) and where a row's key is.
struct Ahead {
    sql: String,
    key: Vec<usize>,
}

/// A leaf's writes may move ahead of its parents' deletes: the statement that does, before
/// them, the cascade those deletes would have done.
fn ahead_sql(s: &Shape, c: &Change) -> Option<Ahead> {
    if s.cascaded_by.is_empty() {
        return None;
    }
    let key = key_positions(c, s.columns).filter(|k| !k.is_empty())?;
    let encodings: Vec<JsonEncoding> = key
        .iter()
        .map(|&i| s.encodings.get(i).copied().unwrap_or(JsonEncoding::Plain))
        .collect();
    if encodings
        .iter()
        .any(|e| matches!(e, JsonEncoding::Param(_)))
    {
        return None;
    }
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let pk = strs(&c.table.primary_key);
    let keys: Vec<(Vec<&str>, Vec<&str>)> = s
        .cascaded_by
        .iter()
        .map(|l| (strs(&l.parent_key), strs(&l.columns)))
        .collect();
    let links: Vec<CascadeLink<'_>> = s
        .cascaded_by
        .iter()
        .zip(&keys)
        .map(|(l, (parent_key, columns))| CascadeLink {
            parent: &l.parent,
            parent_key,
            columns,
        })
        .collect();
    Some(Ahead {
        sql: d1_sync_schema::cascade::cascade_ahead_sql(s.table, &pk, &encodings, &links),
        key,
    })
}

impl Group<'_> {
    /// Bytes a row adds: its JSON in each statement, and in the check.
    fn row_bytes(&self, row: usize) -> usize {
        (row + 1) * (self.sql.len() + usize::from(self.check.is_some()))
    }
}

/// A table name, lower-cased only when it must be (the schema's facts are kept lower-case).
fn folded(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether a row key holds a real: two texts of one real are one row, so such a row is kept
/// in order with every change of its table.
fn key_has_real(key: &str) -> bool {
    key.bytes().any(|b| matches!(b, b'.' | b'e' | b'E' | b'"'))
        && crate::codec::element_spans(key).map_or(true, |spans| {
            spans.iter().any(|sp| {
                let v = &key[sp.clone()];
                !v.starts_with('"') && v.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
            })
        })
}

/// The parent rows a change meets through the keys tracked row by row (`SET NULL`,
/// [`Facts::nulled_by`], and a leaf's `CASCADE`, [`Facts::cascaded_by`]), as (parent table,
/// parent row key): the row it deletes, and the rows its child keys point at.
#[derive(Default)]
struct RowTies {
    deletes: Option<(String, String)>,
    points_at: Vec<(String, String)>,
    /// A delete whose key the early cascade cannot read (not plain JSON): the leaf children
    /// it cascades to keep their writes after it, table by table.
    opaque_delete: bool,
}

impl RowTies {
    fn of(c: &Change, facts: Option<&Facts>, encodings: &[JsonEncoding]) -> RowTies {
        let Some(facts) = facts else {
            return RowTies::default();
        };
        if c.op == Op::Delete {
            let cascades = !facts.cascades_rows.is_empty();
            return RowTies {
                deletes: (facts.nulls || cascades)
                    .then(|| (c.table.name.to_ascii_lowercase(), c.row_key.clone())),
                points_at: Vec::new(),
                opaque_delete: cascades
                    && encodings
                        .iter()
                        .take(c.table.primary_key.len())
                        .any(|e| *e != JsonEncoding::Plain),
            };
        }
        if facts.nulled_by.is_empty() && facts.cascaded_by.is_empty() {
            return RowTies::default();
        }
        let texts = c.stored_texts();
        let points_at = facts
            .nulled_by
            .iter()
            .map(|(parent, columns)| (parent, columns))
            .chain(facts.cascaded_by.iter().map(|l| (&l.parent, &l.columns)))
            .filter_map(|(parent, columns)| {
                let mut key = String::from("[");
                for (n, col) in columns.iter().enumerate() {
                    let i = c.columns.iter().position(|x| x.eq_ignore_ascii_case(col))?;
                    let t = texts.get(i)?;
                    if t == "null" {
                        return None;
                    }
                    if n > 0 {
                        key.push(',');
                    }
                    key.push_str(t);
                }
                key.push(']');
                Some((parent.clone(), key))
            })
            .collect();
        RowTies {
            deletes: None,
            points_at,
            opaque_delete: false,
        }
    }
}

/// One request being filled.
struct Building<'a> {
    groups: Vec<Group<'a>>,
    /// Position of its first change.
    start: usize,
    rows: usize,
    statements: usize,
    bytes: usize,
    /// Versioned tables (lower-case) whose tombstone trigger it creates.
    triggered: HashSet<Cow<'a, str>>,
    /// The last group holding a change of each row, of each table, reaching each table, of a
    /// real-keyed row of each table, and of a change kept in order with everything.
    last_row: HashMap<(&'a str, &'a str), usize>,
    last_table: HashMap<Cow<'a, str>, usize>,
    last_reaching: HashMap<&'a str, usize>,
    last_real: HashMap<Cow<'a, str>, usize>,
    last_barrier: Option<usize>,
    /// Under the keys tracked row by row ([`RowTies`]), by (parent table, parent row key): the
    /// last group deleting that parent row, and the last group pointing a child at it.
    last_nulling: HashMap<(String, String), usize>,
    last_pointing: HashMap<(String, String), usize>,
    /// Of each table whose `CASCADE` keys are tracked row by row ([`Facts::cascades_rows`]):
    /// the last group writing one of its rows (not deleting), and the last deleting one.
    last_parent_write: HashMap<Cow<'a, str>, usize>,
    last_parent_delete: HashMap<Cow<'a, str>, usize>,
    /// The last group holding a delete whose actions reach each table.
    last_deleting_into: HashMap<&'a str, usize>,
    /// The groups of each table and operation, oldest first (the candidates to join).
    by_shape: HashMap<(&'a str, Op), Vec<usize>>,
}

impl<'a> Building<'a> {
    fn new(start: usize) -> Building<'a> {
        Building {
            groups: Vec::new(),
            start,
            rows: 0,
            statements: 2,
            bytes: request_overhead(),
            triggered: HashSet::default(),
            last_row: HashMap::default(),
            last_table: HashMap::default(),
            last_reaching: HashMap::default(),
            last_real: HashMap::default(),
            last_barrier: None,
            last_nulling: HashMap::default(),
            last_pointing: HashMap::default(),
            last_parent_write: HashMap::default(),
            last_parent_delete: HashMap::default(),
            last_deleting_into: HashMap::default(),
            by_shape: HashMap::default(),
        }
    }

    /// The first group `c` may go in: after every group holding a change it must follow, or
    /// in that group when it has `c`'s shape (a statement applies its rows in order).
    fn lower(
        &self,
        c: &'a Change,
        encodings: &[JsonEncoding],
        facts: Option<&'a Facts>,
        distinct: bool,
        nulling: &RowTies,
    ) -> usize {
        let after = |g: usize, may_join: bool| -> usize {
            if may_join && self.groups[g].shape.fits(c, encodings) {
                g
            } else {
                g + 1
            }
        };
        let mut lower = 0;
        if let Some(&g) = self
            .last_row
            .get(&(c.table.name.as_str(), c.row_key.as_str()))
        {
            lower = lower.max(after(g, !distinct));
        }
        let Some(facts) = facts else {
            // Kept in order with everything.
            return match self.groups.len() {
                0 => lower,
                n => lower.max(after(n - 1, true)),
            };
        };
        let own = folded(&c.table.name);
        let mut take = |g: Option<&usize>| {
            if let Some(&g) = g {
                lower = lower.max(after(g, true));
            }
        };
        take(self.last_barrier.as_ref());
        take(self.last_reaching.get(own.as_ref()));
        for t in facts.reach(c.op) {
            take(self.last_table.get(t));
        }
        if c.op == Op::Delete {
            // A leaf's earlier writes stay ahead of its parent's delete: D1's row may point at
            // the parent, and the delete would remove what those writes made.
            for t in &facts.cascades_rows {
                take(self.last_table.get(t.as_str()));
            }
            // Deletes whose actions reach one table stay in order: one may null a key the
            // other cascades on (such keys are tracked table by table: `commute`).
            for t in facts.deletes_reach() {
                take(self.last_deleting_into.get(t));
            }
        }
        // A leaf's writes stay after every write of its parents' tables before them, so that
        // the early cascade finds a parent row there exactly when its delete did; its deletes
        // stay after its parents' deletes, which may have cascaded the row away first.
        for l in &facts.cascaded_by {
            let parents = if c.op == Op::Delete {
                &self.last_parent_delete
            } else {
                &self.last_parent_write
            };
            take(parents.get(l.parent.as_str()));
        }
        if facts.rows_ordered || key_has_real(&c.row_key) {
            take(self.last_table.get(own.as_ref()));
        } else {
            take(self.last_real.get(own.as_ref()));
        }
        if let Some(row) = &nulling.deletes {
            take(self.last_pointing.get(row));
        }
        for row in &nulling.points_at {
            take(self.last_nulling.get(row));
        }
        lower
    }

    /// Notes that `c` went into group `g`.
    fn placed(&mut self, c: &'a Change, facts: Option<&'a Facts>, g: usize, nulling: RowTies) {
        let up = |slot: &mut usize| *slot = (*slot).max(g);
        if nulling.opaque_delete {
            for t in facts.map_or(&[][..], |f| &f.cascades_rows[..]) {
                up(self.last_reaching.entry(t.as_str()).or_insert(g));
            }
        }
        if let Some(row) = nulling.deletes {
            up(self.last_nulling.entry(row).or_insert(g));
        }
        for row in nulling.points_at {
            up(self.last_pointing.entry(row).or_insert(g));
        }
        up(self
            .last_row
            .entry((c.table.name.as_str(), c.row_key.as_str()))
            .or_insert(g));
        let own = folded(&c.table.name);
        match facts {
            None => {
                self.last_barrier = Some(self.last_barrier.map_or(g, |b| b.max(g)));
            }
            Some(facts) => {
                for t in facts.reach(c.op) {
                    up(self.last_reaching.entry(t).or_insert(g));
                }
                if c.op == Op::Delete {
                    for t in facts.deletes_reach() {
                        up(self.last_deleting_into.entry(t).or_insert(g));
                    }
                }
                if !facts.cascades_rows.is_empty() {
                    let parents = if c.op == Op::Delete {
                        &mut self.last_parent_delete
                    } else {
                        &mut self.last_parent_write
                    };
                    up(parents.entry(own.clone()).or_insert(g));
                }
                if key_has_real(&c.row_key) {
                    up(self.last_real.entry(own.clone()).or_insert(g));
                }
            }
        }
        up(self.last_table.entry(own).or_insert(g));
    }
}

/// Packs `changes` (in queue order) into requests, each change in its place: consecutive
/// changes of one shape share a statement. Changes too large for any statement cannot reach
/// here: [`crate::change::check`] refuses values and rows over D1's limits, and the default
/// limits leave room for one such row.
pub fn pack(changes: &[Change], limits: &PackLimits) -> Vec<Request> {
    pack_with(changes, limits, true)
}

/// [`pack`], or, with `sql` false, only the request boundaries (for targets that apply the
/// changes themselves): one request of up to `max_statements` (and `max_rows_per_request`)
/// changes.
pub fn pack_with(changes: &[Change], limits: &PackLimits, sql: bool) -> Vec<Request> {
    if !sql {
        let step = limits
            .max_statements
            .min(limits.max_rows_per_request)
            .max(1);
        return (0..changes.len())
            .step_by(step)
            .map(|start| {
                let range = start..start.saturating_add(step).min(changes.len());
                Request {
                    statements: Vec::new(),
                    ids: changes[range.clone()].iter().map(|c| c.id).collect(),
                    range,
                    checks: Vec::new(),
                }
            })
            .collect();
    }
    packed(changes, limits, &Commute::none())
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// Packs `changes` (in queue order) into requests cut in queue order, and inside each request
/// lets the changes that commute ([`Commute`]) trade places so that the changes of one shape
/// share one statement: a workload spread over several tables then costs about as few
/// statements as one table's. `changes` is reordered to match: each request's
/// [`Request::range`] and [`Request::ids`] follow the new order. Without `sql`, as
/// [`pack_with`] (nothing moves).
pub fn pack_arranged(
    changes: &mut Vec<Change>,
    limits: &PackLimits,
    sql: bool,
    commute: &Commute,
) -> Vec<Request> {
    if !sql || commute.is_none() {
        return pack_with(changes, limits, sql);
    }
    let packed = packed(changes, limits, commute);
    let moved = packed
        .iter()
        .any(|(_, order)| order.windows(2).any(|w| w[0] + 1 != w[1]));
    if moved {
        let mut slots: Vec<Option<Change>> =
            std::mem::take(changes).into_iter().map(Some).collect();
        for (_, order) in &packed {
            changes.extend(order.iter().filter_map(|&i| slots[i].take()));
        }
    }
    packed.into_iter().map(|(r, _)| r).collect()
}

/// [`pack_arranged`] into exactly one request, whatever its size: for sending again a request
/// that was sent before (it fitted then; a target that now refuses its size answers with an
/// error that splits it like any refused request).
pub fn pack_one(
    changes: &mut Vec<Change>,
    limits: &PackLimits,
    sql: bool,
    commute: &Commute,
) -> Request {
    let limits = PackLimits {
        max_statements: usize::MAX,
        max_request_bytes: usize::MAX,
        max_rows_per_request: usize::MAX,
        ..*limits
    };
    pack_arranged(changes, &limits, sql, commute)
        .pop()
        .unwrap_or_else(|| new_request(0, sql))
}

/// The requests, each with the positions of its changes in the order it applies them.
fn packed(
    changes: &[Change],
    limits: &PackLimits,
    commute: &Commute,
) -> Vec<(Request, Vec<usize>)> {
    let mut out = Vec::new();
    let mut b = Building::new(0);
    let (mut encodings, mut bound) = (Vec::new(), Vec::new());
    for (n, c) in changes.iter().enumerate() {
        encode_shape(c, &mut encodings, &mut bound);
        let facts = commute.facts(&c.table.name);
        // A row with a bound real stands alone. So does an update of a table whose rows are
        // ordered, or that the schema does not vouch for: one `UPDATE ... FROM json_each`
        // updates its rows in the table's order, not the JSON's, which a `UNIQUE` index or a
        // trigger could tell apart.
        let single = encodings
            .iter()
            .any(|e| matches!(e, JsonEncoding::Param(_)))
            || (c.op == Op::Update && facts.is_none_or(|f| f.rows_ordered));
        let cascaded_by: &[CascadedBy] = match facts {
            Some(f) if c.op != Op::Delete => &f.cascaded_by,
            _ => &[],
        };
        let distinct = c.op == Op::Update || c.version.is_some() || !cascaded_by.is_empty();
        let nulling = RowTies::of(c, facts, &encodings);
        // Bytes the early cascade may carry for it: a moved row's key, or a parent delete's
        // key once per leaf it cascades to.
        let ahead_bytes = match facts {
            Some(f) if c.op == Op::Delete => (c.row_key.len() + 16) * f.cascades_rows.len(),
            _ if !cascaded_by.is_empty() => c.row_key.len() + 16,
            _ => 0,
        };
        loop {
            let lower = b.lower(c, &encodings, facts, distinct, &nulling);
            let candidate = b
                .by_shape
                .get(&(c.table.name.as_str(), c.op))
                .filter(|_| !single)
                .and_then(|groups| {
                    groups
                        .iter()
                        .rev()
                        .take_while(|&&g| g >= lower)
                        .copied()
                        .find(|&g| {
                            let o = &b.groups[g];
                            o.shape.fits(c, &encodings)
                                && o.members.len() < limits.max_rows_per_statement
                                && o.json + 1 + c.row.len() < limits.max_param_bytes
                                && !(o.shape.distinct_keys() && o.keys.contains(c.row_key.as_str()))
                        })
                });
            // What the change adds to the request.
            let (more_statements, more_bytes, fresh) = match candidate {
                Some(g) => (0, b.groups[g].row_bytes(c.row.len()) + ahead_bytes, None),
                None => {
                    let shape = Shape {
                        table: &c.table.name,
                        op: c.op,
                        columns: &c.columns,
                        encodings: encodings.clone(),
                        guard: GuardShape::of(c),
                        cascaded_by,
                    };
                    let sql = statement_sql(&shape, c);
                    let ahead = ahead_sql(&shape, c);
                    let check = check_sql(&shape, c, single);
                    let mut triggers = Vec::new();
                    let mut triggering = Vec::new();
                    let own = folded(shape.table);
                    if !b.triggered.contains(&own) {
                        if let Some(sql) = tombstone_trigger(&shape, c) {
                            triggers.push(sql);
                            triggering.push(own);
                        }
                    }
                    if c.op == Op::Delete {
                        for t in facts.into_iter().flat_map(Facts::deletes_reach) {
                            let reached = Cow::Borrowed(t);
                            if b.triggered.contains(&reached) || triggering.contains(&reached) {
                                continue;
                            }
                            if let Some(sql) = commute.tombstone_trigger(t) {
                                triggers.push(sql.to_string());
                                triggering.push(reached);
                            }
                        }
                    }
                    let group = Group {
                        shape,
                        sql,
                        check,
                        members: Vec::new(),
                        json: 1,
                        bound: std::mem::take(&mut bound),
                        keys: HashSet::default(),
                        triggers,
                        ahead,
                        facts,
                    };
                    let statements = group.sql.len()
                        + usize::from(group.check.is_some())
                        + group.triggers.len()
                        + usize::from(group.ahead.is_some());
                    let bytes = group.sql.iter().map(String::len).sum::<usize>()
                        + group.check.as_ref().map_or(0, |(s, _)| s.len())
                        + group.triggers.iter().map(String::len).sum::<usize>()
                        + group.ahead.as_ref().map_or(0, |a| a.sql.len())
                        + group.bound.len() * 24
                        + group.row_bytes(c.row.len() + 1)
                        + ahead_bytes;
                    (statements, bytes, Some((group, triggering)))
                }
            };
            let full = b.rows + 1 > limits.max_rows_per_request
                || b.statements + more_statements > limits.max_statements
                || b.bytes + more_bytes > limits.max_request_bytes;
            if full && b.rows > 0 {
                let next = Building::new(n);
                out.push(finish(std::mem::replace(&mut b, next), changes));
                if let Some((group, _)) = fresh {
                    bound = group.bound;
                }
                continue;
            }
            let g = match fresh {
                None => candidate.unwrap_or_default(),
                Some((group, triggering)) => {
                    b.triggered.extend(triggering);
                    b.groups.push(group);
                    b.groups.len() - 1
                }
            };
            b.rows += 1;
            b.statements += more_statements;
            b.bytes += more_bytes;
            let group = &mut b.groups[g];
            group.members.push(n);
            group.json += c.row.len() + 1;
            if group.shape.distinct_keys() {
                group.keys.insert(&c.row_key);
            }
            if !single && candidate.is_none() {
                b.by_shape
                    .entry((c.table.name.as_str(), c.op))
                    .or_default()
                    .push(g);
            }
            b.placed(c, facts, g, nulling);
            break;
        }
    }
    if b.rows > 0 {
        out.push(finish(b, changes));
    }
    out
}

/// The request a [`Building`] stands for, with the positions of its changes in their new
/// order.
fn finish(b: Building<'_>, changes: &[Change]) -> (Request, Vec<usize>) {
    let mut req = new_request(b.start, true);
    req.range = b.start..b.start + b.rows;
    req.ids.reserve(b.rows);
    let mut order = Vec::with_capacity(b.rows);
    let mut early: Vec<Option<Statement>> = (0..b.groups.len())
        .map(|g| early_cascade(&b.groups, g, changes))
        .collect();
    // The checks that can run at the start, one per table and write ([`Upfront`]), and the
    // statements after them, whose own checks' indices count from the first.
    let mut upfront = Upfront::default();
    let mut body: Vec<Statement> = Vec::new();
    let mut own_checks: Vec<StaleCheck> = Vec::new();
    for (g, mut group) in b.groups.into_iter().enumerate() {
        let first = order.len();
        for sql in std::mem::take(&mut group.triggers) {
            body.push(Statement::new(sql));
        }
        if let Some(statement) = early[g].take() {
            body.push(statement);
        }
        let at_start = group.check.is_some() && upfront.reads_alike(&group, changes);
        let mut json = String::with_capacity(group.json + 1);
        json.push('[');
        let mut keys = group
            .check
            .as_ref()
            .filter(|(_, whole)| !whole && !at_start)
            .map(|_| String::from("["));
        for (i, &m) in group.members.iter().enumerate() {
            let c = &changes[m];
            if i > 0 {
                json.push(',');
            }
            json.push_str(&c.row);
            if let Some(g) = group.shape.guard.as_ref() {
                if at_start {
                    upfront.add(&group, first + i, c, g);
                } else if let Some(k) = keys.as_mut() {
                    if i > 0 {
                        k.push(',');
                    }
                    push_key_and_version(k, &c.row, g);
                }
            }
            upfront.wrote(c);
            req.ids.push(c.id);
            order.push(m);
        }
        json.push(']');
        upfront.barrier |= group.facts.is_none();
        let mut params = vec![Param::Text(json)];
        params.extend(group.bound);
        if let Some((sql, _)) = group.check.filter(|_| !at_start) {
            own_checks.push(StaleCheck {
                statement: body.len(),
                first,
            });
            let params = match keys {
                Some(mut k) => {
                    k.push(']');
                    vec![Param::Text(k)]
                }
                None => params.clone(),
            };
            body.push(Statement { sql, params });
        }
        let n = group.sql.len();
        for (i, sql) in group.sql.into_iter().enumerate() {
            let params = if i + 1 == n {
                std::mem::take(&mut params)
            } else {
                params.clone()
            };
            body.push(Statement { sql, params });
        }
    }
    for (_, sql, mut json) in upfront.checks {
        json.push(']');
        req.checks.push(StaleCheck {
            statement: req.statements.len(),
            first: 0,
        });
        req.statements.push(Statement {
            sql,
            params: vec![Param::Text(json)],
        });
    }
    let offset = req.statements.len();
    req.checks
        .extend(own_checks.into_iter().map(|c| StaleCheck {
            statement: c.statement + offset,
            ..c
        }));
    req.statements.extend(body);
    (req, order)
}

/// One check at a request's start: its table, write and encodings; its SQL; its JSON so far.
type UpfrontCheck<'a> = ((&'a str, Op, Vec<JsonEncoding>), String, String);

/// The version checks sent once, at the start of a request, for every group whose rows the
/// writes before it in the request cannot decide differently: one statement per table, write
/// and encoding ([`guard::stale_numbered_sql`]), each row numbered by its place in the request.
///
/// A group keeps its own check, just before it, when an earlier write of the request could
/// change its answer: a table with triggers (or unknown to the schema) wrote before it; it
/// updates or deletes rows of a table that foreign-key actions act on (a cascade earlier in
/// the request may have removed a row it would name); or an earlier write of one of its rows
/// carried a newer version, or the same one unless it is a delete (which carries the version
/// of the row it deleted, and names only rows held newer). Otherwise its rows' versions in
/// the table are the same at the start as before it, or were raised by earlier writes to
/// versions below its own, and a tombstone a cascade leaves holds the row's version: the
/// answer is the same. The model test (`tests/tests/arrange.rs`) compares the rows named
/// against checks sent just before each statement.
#[derive(Default)]
struct Upfront<'a> {
    /// By table, write and encodings (in the order first met): the check's SQL and its JSON
    /// so far (without the `]`).
    checks: Vec<UpfrontCheck<'a>>,
    /// The newest version written to each row so far.
    written: HashMap<(&'a str, &'a str), i64>,
    /// A group of a table with triggers, or unknown to the schema, came before.
    barrier: bool,
}

impl<'a> Upfront<'a> {
    fn reads_alike(&self, group: &Group<'a>, changes: &[Change]) -> bool {
        // A row with a value bound outside the JSON is checked with its own parameters.
        let bound = !group.bound.is_empty();
        let acted_on = group.facts.is_none_or(|f| f.acted_on);
        let may_be_removed = group.shape.op != Op::Upsert && acted_on;
        !(bound || self.barrier || may_be_removed)
            && group.members.iter().all(|&m| {
                let c = &changes[m];
                match (
                    c.version,
                    self.written
                        .get(&(c.table.name.as_str(), c.row_key.as_str())),
                ) {
                    (_, None) => true,
                    // A delete's version is that of the row it deleted: an earlier write
                    // of the same version leaves its answer alone (it names rows held newer).
                    (Some(v), Some(&held)) => {
                        held < v || (group.shape.op == Op::Delete && held == v)
                    }
                    (None, Some(_)) => false,
                }
            })
    }

    /// Notes a write of the request.
    fn wrote(&mut self, c: &'a Change) {
        if let Some(v) = c.version {
            let held = self
                .written
                .entry((c.table.name.as_str(), c.row_key.as_str()))
                .or_insert(v);
            *held = (*held).max(v);
        }
    }

    /// Adds `c`, the request's change at `place`, to the check of its group's table and write.
    fn add(&mut self, group: &Group<'a>, place: usize, c: &Change, g: &GuardShape) {
        let s = &group.shape;
        let Some(version) = c.table.version.as_deref() else {
            return;
        };
        let encodings = g.encodings(s);
        let key = (s.table, s.op, encodings);
        let at = match self.checks.iter().position(|(k, _, _)| *k == key) {
            Some(at) => at,
            None => {
                let pk: Vec<&str> = c.table.primary_key.iter().map(String::as_str).collect();
                let sql = guard::stale_numbered_sql(s.op.guarded(), s.table, &key.2, &pk, version);
                self.checks.push((key, sql, String::from("[")));
                self.checks.len() - 1
            }
        };
        let json = &mut self.checks[at].2;
        if json.len() > 1 {
            json.push(',');
        }
        json.push_str(&format!("[{place},"));
        push_elements(json, &c.row, g.read());
        json.push(']');
    }
}

/// The early cascade before group `g` ([`Ahead`]): its rows that moved ahead of deletes of
/// their parents (deletes in later groups, earlier in the queue), with those deletes. `None`
/// when none moved.
fn early_cascade(groups: &[Group<'_>], g: usize, changes: &[Change]) -> Option<Statement> {
    let group = &groups[g];
    let ahead = group.ahead.as_ref()?;
    let last = *group.members.iter().max()?;
    let mut deletes = String::from("[");
    let mut first_delete = usize::MAX;
    for later in &groups[g + 1..] {
        // A delete whose key is not plain JSON was never moved past (see `RowTies`).
        let plain = |d: &usize| {
            later
                .shape
                .encodings
                .iter()
                .take(changes[*d].table.primary_key.len())
                .all(|e| *e == JsonEncoding::Plain)
        };
        if later.shape.op != Op::Delete || !later.members.first().is_some_and(plain) {
            continue;
        }
        let parent = folded(later.shape.table);
        let Some(link) = group
            .shape
            .cascaded_by
            .iter()
            .position(|l| l.parent == parent)
        else {
            continue;
        };
        for &d in later.members.iter().filter(|&&d| d < last) {
            let key = &changes[d].row_key;
            let inner = key
                .strip_prefix('[')
                .and_then(|k| k.strip_suffix(']'))
                .unwrap_or_default();
            if deletes.len() > 1 {
                deletes.push(',');
            }
            deletes.push_str(&format!("[{link},{d},{inner}]"));
            first_delete = first_delete.min(d);
        }
    }
    deletes.push(']');
    let mut moved = String::from("[");
    for &m in group.members.iter().filter(|&&m| m > first_delete) {
        if moved.len() > 1 {
            moved.push(',');
        }
        moved.push_str(&format!("[{m},"));
        push_elements(&mut moved, &changes[m].row, &ahead.key);
        moved.push(']');
    }
    moved.push(']');
    (moved.len() > 2).then(|| Statement {
        sql: ahead.sql.clone(),
        params: vec![Param::Text(moved), Param::Text(deletes)],
    })
}

/// A request's first statements: the PRAGMA and the ledger write (parameters set later).
fn new_request(start: usize, sql: bool) -> Request {
    let statements = if sql {
        vec![
            Statement::new(DEFER_FOREIGN_KEYS),
            Statement::new(d1_sync_schema::ledger::record_sql(
                crate::ledger::DEFAULT_TABLE,
            )),
        ]
    } else {
        Vec::new()
    };
    Request {
        statements,
        ids: Vec::new(),
        range: start..start,
        checks: Vec::new(),
    }
}

/// Bytes of the statements every request opens with, parameters included.
fn request_overhead() -> usize {
    DEFER_FOREIGN_KEYS.len()
        + d1_sync_schema::ledger::record_sql(crate::ledger::DEFAULT_TABLE).len()
        + 96
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::row::TableDef;
    use crate::value::Value;

    fn table(name: &str) -> Arc<TableDef> {
        Arc::new(TableDef {
            name: name.into(),
            columns: vec!["id".into(), "v".into()],
            primary_key: vec!["id".into()],
            insert_only: vec![],
            version: None,
        })
    }

    fn up(id: i64, t: &Arc<TableDef>, v: Value) -> Change {
        Change::new(
            id,
            format!("[{id}]"),
            t.clone(),
            Op::Upsert,
            vec!["id".to_string(), "v".to_string()].into(),
            &[Value::Integer(id), v],
        )
    }

    fn del(id: i64, t: &Arc<TableDef>) -> Change {
        Change::new(
            id,
            format!("[{id}]"),
            t.clone(),
            Op::Delete,
            vec!["id".to_string()].into(),
            &[Value::Integer(id)],
        )
    }

    #[test]
    fn consecutive_changes_of_one_shape_share_a_statement() {
        let a = table("a");
        let changes: Vec<Change> = (1..=1000)
            .map(|i| up(i, &a, Value::Text(format!("v{i}"))))
            .collect();
        let reqs = pack(&changes, &PackLimits::default());
        assert_eq!(reqs.len(), 1);
        assert_eq!(
            reqs[0].statements.len(),
            3,
            "the PRAGMA, the ledger and one upsert"
        );
        assert_eq!(reqs[0].statements[0].sql, DEFER_FOREIGN_KEYS);
        assert!(reqs[0].statements[1].sql.contains("d1_sync_ledger"));
        assert!(reqs[0].statements[2].sql.contains("json_each(?1)"));
        let Param::Text(json) = &reqs[0].statements[2].params[0] else {
            panic!()
        };
        assert!(json.starts_with(r#"[[1,"v1"],[2,"v2"]"#), "{json}");
        assert_eq!(reqs[0].ids.len(), 1000);
    }

    #[test]
    fn order_is_kept_across_tables_and_operations() {
        let (a, b) = (table("a"), table("b"));
        let changes = vec![
            up(1, &a, Value::Null),
            up(2, &a, Value::Null),
            up(3, &b, Value::Null),
            del(4, &a),
            up(5, &a, Value::Null),
            up(6, &a, Value::Blob(vec![1])),
        ];
        let reqs = pack(&changes, &PackLimits::default());
        assert_eq!(reqs.len(), 1);
        let sqls: Vec<&str> = reqs[0].statements.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(sqls.len(), 7, "{sqls:#?}");
        assert!(sqls[2].starts_with("INSERT INTO \"a\""));
        assert!(sqls[3].starts_with("INSERT INTO \"b\""));
        assert!(sqls[4].starts_with("DELETE FROM \"a\""));
        assert!(sqls[5].starts_with("INSERT INTO \"a\"") && !sqls[5].contains("unhex"));
        assert!(sqls[6].contains("unhex"), "a blob value changes the shape");
        assert_eq!(reqs[0].ids, [1, 2, 3, 4, 5, 6]);
        assert_eq!(reqs[0].range, 0..6);
    }

    #[test]
    fn limits_split_statements_and_requests_without_losing_a_change() {
        let a = table("a");
        let changes: Vec<Change> = (1..=100)
            .map(|i| up(i, &a, Value::Text("x".repeat(100))))
            .collect();
        let limits = PackLimits {
            max_param_bytes: 1_000,
            max_rows_per_statement: 5_000,
            max_statements: 4,
            max_request_bytes: 1_000_000,
            max_rows_per_request: 10_000,
        };
        let reqs = pack(&changes, &limits);
        let ids: Vec<i64> = reqs.iter().flat_map(|r| r.ids.clone()).collect();
        assert_eq!(ids, (1..=100).collect::<Vec<_>>());
        for (i, r) in reqs.iter().enumerate() {
            let ids_in_range: Vec<i64> = changes[r.range.clone()].iter().map(|c| c.id).collect();
            assert_eq!(ids_in_range, r.ids, "request {i}");
        }
        let bare = pack_with(
            &changes,
            &PackLimits {
                max_statements: 30,
                ..PackLimits::default()
            },
            false,
        );
        assert_eq!(
            bare.iter().map(|r| r.range.clone()).collect::<Vec<_>>(),
            [0..30, 30..60, 60..90, 90..100]
        );
        assert!(bare.iter().all(|r| r.statements.is_empty()));
        for r in &reqs {
            assert!(r.statements.len() <= 4);
            for s in &r.statements[2..] {
                let Param::Text(json) = &s.params[0] else {
                    panic!()
                };
                assert!(json.len() <= 1_000);
            }
        }
        let rows = pack(
            &changes,
            &PackLimits {
                max_rows_per_statement: 7,
                ..PackLimits::default()
            },
        );
        assert_eq!(
            rows[0].statements.len(),
            2 + 15,
            "100 rows in statements of 7"
        );
    }

    #[test]
    fn reals_outside_the_json_band_are_bound_one_row_per_statement() {
        let a = table("a");
        let changes = vec![
            up(1, &a, Value::Real(0.5)),
            up(2, &a, Value::Real(1e-300)),
            up(3, &a, Value::Real(2e300)),
            up(4, &a, Value::Real(0.25)),
        ];
        let reqs = pack(&changes, &PackLimits::default());
        let st = &reqs[0].statements;
        assert_eq!(st.len(), 6, "{st:#?}");
        assert!(
            st[3].sql.contains(", ?2 FROM json_each(?1)"),
            "{}",
            st[3].sql
        );
        assert_eq!(st[3].params[1], Param::Real(1e-300));
        assert_eq!(st[4].params[1], Param::Real(2e300));
        assert_eq!(st[5].params.len(), 1, "0.25 travels in the JSON");
    }

    #[test]
    fn an_update_statement_never_holds_one_key_twice() {
        let a = table("a");
        let upd = |id: i64, k: i64| {
            Change::new(
                id,
                format!("[{k}]"),
                a.clone(),
                Op::Update,
                vec!["id".to_string(), "v".to_string()].into(),
                &[Value::Integer(k), Value::Integer(id)],
            )
        };
        let known = Commute::from_parts(["a"], &[], &StdSet::new(), &StdSet::new());
        let mut changes = vec![upd(1, 7), upd(2, 8), upd(3, 7)];
        let reqs = pack_arranged(&mut changes, &PackLimits::default(), true, &known);
        assert_eq!(
            reqs[0].statements.len(),
            4,
            "the second update of key 7 starts a statement"
        );
        assert!(reqs[0].statements[2]
            .sql
            .starts_with("UPDATE \"a\" SET \"v\""));
        assert_eq!(
            reqs[0].ids,
            [1, 2, 3],
            "the second update of key 7 stays last"
        );
        let unknown = pack(&[upd(1, 7), upd(2, 8), upd(4, 9)], &PackLimits::default());
        assert_eq!(
            unknown[0].statements.len(),
            5,
            "updates of a table the schema does not vouch for stand alone"
        );
    }

    #[test]
    fn without_sql_a_request_is_up_to_max_statements_changes() {
        let t = table("t");
        let changes: Vec<Change> = (0..5).map(|i| up(i, &t, Value::Integer(i))).collect();
        let limits = |max_statements| PackLimits {
            max_statements,
            ..PackLimits::default()
        };
        let ranges = |reqs: Vec<Request>| reqs.into_iter().map(|r| r.range).collect::<Vec<_>>();
        assert_eq!(
            ranges(pack_with(&changes, &limits(2), false)),
            [0..2, 2..4, 4..5]
        );
        let whole = ranges(pack_with(&changes, &limits(usize::MAX), false));
        assert_eq!(
            (whole.len(), &whole[0]),
            (1, &(0..5)),
            "one request, no overflow"
        );
    }

    #[test]
    fn nothing_to_pack() {
        assert!(pack(&[], &PackLimits::default()).is_empty());
    }
}
