//! A realistic workload over the seed's seven tables: inserts, full and partial updates, and
//! deletes that cascade (`ON DELETE CASCADE`) or set NULL (`ON DELETE SET NULL`), parents
//! before children, written through the typed outbox API. Deterministic for a given seed.
//! `d1sync demo`, the reliability tests and the benchmarks all write it.
//!
//! ```
//! use d1_sync_example::workload::Workload;
//! # fn main() -> Result<(), d1_sync::Error> {
//! let mut conn = d1_sync::open(":memory:")?;
//! d1_sync_example::apply_migrations(&conn)?;
//! let mut w = Workload::new(7);
//! let written = w.write_tx(&mut conn, &d1_sync::Outbox::new(), 100)?; // one transaction
//! assert_eq!(written.total(), 100);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use crate::rows::*;
use d1_sync::rusqlite::Connection;
use d1_sync::{Hlc, Outbox};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How many changes of each kind were written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// New rows.
    pub inserts: u64,
    /// Full and partial updates.
    pub updates: u64,
    /// Deletes (some cascade).
    pub deletes: u64,
}

impl Written {
    /// All changes.
    pub fn total(&self) -> u64 {
        self.inserts + self.updates + self.deletes
    }
}

struct Conversation {
    row: LocalConversation,
    links: Vec<String>,
    jobs: Vec<String>,
}

/// The application's state as the workload sees it: every live row, to change or delete.
struct State {
    rng: StdRng,
    clock: i64,
    seq: u64,
    conversations: BTreeMap<String, Conversation>,
    links: BTreeMap<String, ConversationLink>,
    jobs: BTreeMap<String, RenewalJob>,
    messages: BTreeMap<String, Message>,
    executions: BTreeMap<String, Execution>,
    sessions: BTreeMap<String, Session>,
    policies: std::collections::BTreeSet<String>,
    hlc: Hlc,
}

const PLATFORMS: &[&str] = &["chatgpt", "claude", "gemini", "web"];
const WORDS: &[&str] = &[
    "renew",
    "the",
    "subscription",
    "before",
    "friday",
    "ünïcödé",
    "quote's",
    "\"q\"",
    "résumé",
    "summary",
    "🦀",
    "deploy",
    "report",
    "ok",
];

impl State {
    fn next(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{:07}", self.seq)
    }

    fn tick(&mut self) -> i64 {
        self.clock += self.rng.random_range(1..5_000);
        self.clock
    }

    fn text(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| WORDS[self.rng.random_range(0..WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn platform(&mut self) -> String {
        PLATFORMS[self.rng.random_range(0..PLATFORMS.len())].to_string()
    }
}

/// A random key of `map`.
fn pick<'a, V>(rng: &mut StdRng, map: &'a BTreeMap<String, V>) -> Option<&'a String> {
    if map.is_empty() {
        return None;
    }
    let i = rng.random_range(0..map.len());
    map.keys().nth(i)
}

/// A workload in progress: it remembers the rows it wrote, to update and delete them later.
/// Write it to one database only.
pub struct Workload {
    st: State,
    written: Written,
}

impl Workload {
    /// A workload from `seed`; the same seed writes the same changes.
    pub fn new(seed: u64) -> Workload {
        Workload {
            st: State {
                rng: StdRng::seed_from_u64(seed),
                clock: 1_767_225_600_000,
                seq: 0,
                conversations: BTreeMap::new(),
                links: BTreeMap::new(),
                jobs: BTreeMap::new(),
                messages: BTreeMap::new(),
                executions: BTreeMap::new(),
                sessions: BTreeMap::new(),
                policies: Default::default(),
                hlc: Hlc::new(),
            },
            written: Written::default(),
        }
    }

    /// The same workload stamping versions with `clock` (default: the file's [`Hlc::new`]).
    pub fn with_clock(mut self, clock: Hlc) -> Workload {
        self.st.hlc = clock;
        self
    }

    /// Writes `n` changes in one transaction of `conn`. Returns what this call wrote.
    pub fn write_tx(
        &mut self,
        conn: &mut Connection,
        outbox: &Outbox,
        n: u64,
    ) -> Result<Written, d1_sync::Error> {
        let mut w = Written::default();
        let tx = conn.transaction()?;
        while w.total() < n {
            one_change(&mut self.st, outbox, &tx, &mut w)?;
        }
        tx.commit()?;
        self.written.inserts += w.inserts;
        self.written.updates += w.updates;
        self.written.deletes += w.deletes;
        Ok(w)
    }

    /// Everything written so far.
    pub fn written(&self) -> Written {
        self.written
    }
}

/// Writes `changes` changes from `seed` to `conn` through `outbox`, in transactions of
/// `per_tx`; calls `progress` with the count written so far after each transaction.
pub fn write(
    conn: &mut Connection,
    outbox: &Outbox,
    changes: u64,
    seed: u64,
    per_tx: u64,
    mut progress: impl FnMut(u64),
) -> Result<Written, d1_sync::Error> {
    let mut w = Workload::new(seed);
    while w.written().total() < changes {
        let n = per_tx.max(1).min(changes - w.written().total());
        w.write_tx(conn, outbox, n)?;
        progress(w.written().total());
    }
    Ok(w.written())
}

fn one_change(
    st: &mut State,
    o: &Outbox,
    tx: &d1_sync::rusqlite::Transaction<'_>,
    w: &mut Written,
) -> Result<(), d1_sync::Error> {
    // Every write carries a newer version of its row (the example's tables are versioned).
    let hlc = st.hlc.clone();
    let roll = st.rng.random_range(0..100);
    match roll {
        0..=9 => {
            let id = st.next("conv");
            let now = st.tick();
            let mut row = LocalConversation {
                version: 0,
                local_conversation_id: id.clone(),
                platform: st.platform(),
                automation_status: "active".into(),
                last_non_paused_automation_status: None,
                pause_reason: None,
                last_error: None,
                execution_state: "idle".into(),
                consecutive_failure_count: 0,
                repeated_message_count: 0,
                repeated_renewal_count: 0,
                last_message_fingerprint: None,
                last_renewal_fingerprint: None,
                title: Some(st.text(3)),
                summary: None,
                last_message_id: None,
                last_message_at: None,
                cooldown_until: None,
                paused_at: None,
                created_at: now,
                updated_at: now,
            };
            hlc.stamp(tx, &mut row)?;
            o.save(tx, &row)?;
            st.conversations.insert(
                id,
                Conversation {
                    row,
                    links: vec![],
                    jobs: vec![],
                },
            );
            w.inserts += 1;
        }
        10..=15 if !st.conversations.is_empty() => {
            let id = pick(&mut st.rng, &st.conversations)
                .cloned()
                .unwrap_or_default();
            let now = st.tick();
            let paused = st.rng.random_bool(0.3);
            let fingerprint = st.text(1);
            if let Some(c) = st.conversations.get_mut(&id) {
                c.row.automation_status = if paused {
                    "paused".into()
                } else {
                    "active".into()
                };
                c.row.paused_at = paused.then_some(now);
                c.row.consecutive_failure_count += 1;
                c.row.last_message_fingerprint = Some(fingerprint);
                c.row.updated_at = now;
                // created_at is insert-only: a different value here never reaches the row.
                c.row.created_at = now;
                hlc.stamp(tx, &mut c.row)?;
                o.save(tx, &c.row)?;
                w.updates += 1;
            }
        }
        16..=23 if !st.conversations.is_empty() => {
            let conv = pick(&mut st.rng, &st.conversations)
                .cloned()
                .unwrap_or_default();
            let id = st.next("link");
            let now = st.tick();
            let mut row = ConversationLink {
                version: 0,
                link_id: id.clone(),
                local_conversation_id: conv.clone(),
                platform: st.platform(),
                remote_conversation_id: Some(st.next("remote")),
                client_id: None,
                page_url: Some(format!("https://example.com/c/{id}?q=1&r=2")),
                page_title: Some(st.text(4)),
                route_path: Some("/c/:id".into()),
                route_pattern: None,
                route_params: Some(format!("{{\"id\":\"{id}\"}}")),
                target_kind: Some("thread".into()),
                target_id: None,
                target_payload: None,
                is_active: true,
                observed_at: Some(now),
                created_at: now,
                updated_at: now,
            };
            hlc.stamp(tx, &mut row)?;
            o.save(tx, &row)?;
            if let Some(c) = st.conversations.get_mut(&conv) {
                c.links.push(id.clone());
            }
            st.links.insert(id, row);
            w.inserts += 1;
        }
        24..=27 if !st.links.is_empty() => {
            // A partial update: two columns of the link, nothing else.
            let id = pick(&mut st.rng, &st.links).cloned().unwrap_or_default();
            let now = st.tick();
            if let Some(l) = st.links.get_mut(&id) {
                l.is_active = !l.is_active;
                l.updated_at = now;
                hlc.stamp(tx, &mut *l)?;
                o.patch(tx, &*l, &["is_active", "updated_at", "version"])?;
                w.updates += 1;
            }
        }
        28..=33 if !st.conversations.is_empty() => {
            let conv = pick(&mut st.rng, &st.conversations)
                .cloned()
                .unwrap_or_default();
            let id = st.next("job");
            let now = st.tick();
            let mut row = RenewalJob {
                version: 0,
                job_id: id.clone(),
                local_conversation_id: conv.clone(),
                message_id: None,
                status: "pending".into(),
                payload: st.text(6),
                payload_kind: "text".into(),
                target_snapshot: None,
                attempt_count: 0,
                max_attempts: 3,
                next_attempt_at: Some(now + 60_000),
                last_attempt_at: None,
                last_error: None,
                log_path: None,
                started_at: None,
                finished_at: None,
                created_at: now,
                updated_at: now,
            };
            hlc.stamp(tx, &mut row)?;
            o.save(tx, &row)?;
            if let Some(c) = st.conversations.get_mut(&conv) {
                c.jobs.push(id.clone());
            }
            st.jobs.insert(id, row);
            w.inserts += 1;
        }
        34..=38 if !st.jobs.is_empty() => {
            let id = pick(&mut st.rng, &st.jobs).cloned().unwrap_or_default();
            let now = st.tick();
            let failed = st.rng.random_bool(0.2);
            if let Some(j) = st.jobs.get_mut(&id) {
                j.attempt_count += 1;
                j.status = if failed {
                    "failed".into()
                } else {
                    "done".into()
                };
                j.last_error = failed.then(|| "timeout: page did not load".to_string());
                j.last_attempt_at = Some(now);
                j.finished_at = Some(now);
                j.updated_at = now;
                hlc.stamp(tx, &mut *j)?;
                o.save(tx, &*j)?;
                w.updates += 1;
            }
        }
        39..=58 => {
            let id = st.next("msg");
            let now = st.tick();
            let mut row = Message {
                version: 0,
                id: id.clone(),
                platform: st.platform(),
                conversation_id: pick(&mut st.rng, &st.conversations).cloned(),
                role: if st.rng.random_bool(0.5) {
                    "user"
                } else {
                    "assistant"
                }
                .into(),
                raw_text: Some(st.text(12)),
                summary: None,
                observed_at: now,
                static_path: None,
                page_url: Some("https://example.com/chat".into()),
                page_title: Some(st.text(2)),
                created_at: now,
                organization_id: st.rng.random_bool(0.3).then(|| "org-1".to_string()),
            };
            hlc.stamp(tx, &mut row)?;
            o.save(tx, &row)?;
            st.messages.insert(id, row);
            w.inserts += 1;
        }
        59..=64 if !st.messages.is_empty() => {
            let id = pick(&mut st.rng, &st.messages).cloned().unwrap_or_default();
            let summary = st.text(5);
            if let Some(m) = st.messages.get_mut(&id) {
                m.summary = Some(summary);
                hlc.stamp(tx, &mut *m)?;
                o.save(tx, &*m)?;
                w.updates += 1;
            }
        }
        65..=74 => {
            let id = st.next("instr");
            let now = st.tick();
            let ok = st.rng.random_bool(0.8);
            let mut row = Execution {
                version: 0,
                instruction_id: id.clone(),
                message_id: pick(&mut st.rng, &st.messages).cloned(),
                target: "browser".into(),
                tool: ["click", "type", "navigate", "read"][st.rng.random_range(0..4)].into(),
                params: Some(format!(
                    "{{\"x\":{},\"y\":{}}}",
                    st.rng.random_range(0..1920),
                    st.rng.random_range(0..1080)
                )),
                params_kind: Some("json".into()),
                result_ok: Some(ok),
                result_data: ok.then(|| st.text(3)),
                result_summary: Some(st.text(2)),
                result_error: (!ok).then(|| "element not found".to_string()),
                http_status: Some(if ok { 200 } else { 500 }),
                executed_at: now,
                static_path: None,
                created_at: now,
            };
            hlc.stamp(tx, &mut row)?;
            o.save(tx, &row)?;
            st.executions.insert(id, row);
            w.inserts += 1;
        }
        75..=80 => {
            let now = st.tick();
            let existing = if st.rng.random_bool(0.6) {
                pick(&mut st.rng, &st.sessions).cloned()
            } else {
                None
            };
            match existing.and_then(|id| st.sessions.get_mut(&id)) {
                Some(s) => {
                    s.message_count += 1;
                    s.last_activity_at = now;
                    hlc.stamp(tx, &mut *s)?;
                    o.save(tx, &*s)?;
                    w.updates += 1;
                }
                None => {
                    let id = st.next("sess");
                    let mut row = Session {
                        version: 0,
                        id: id.clone(),
                        platform: st.platform(),
                        conversation_id: pick(&mut st.rng, &st.conversations).cloned(),
                        started_at: now,
                        last_activity_at: now,
                        message_count: 0,
                        execution_count: 0,
                        summary: None,
                        static_path: None,
                        created_at: now,
                    };
                    hlc.stamp(tx, &mut row)?;
                    o.save(tx, &row)?;
                    st.sessions.insert(id, row);
                    w.inserts += 1;
                }
            }
        }
        81..=84 => {
            let key = format!("policy.{}", st.rng.random_range(0..20));
            let now = st.tick();
            if st.policies.insert(key.clone()) {
                w.inserts += 1;
            } else {
                w.updates += 1;
            }
            let mut row = BrowserRequestPolicyState {
                version: 0,
                state_key: key,
                value_json: format!("{{\"allowed\":{},\"at\":{now}}}", st.rng.random_bool(0.5)),
                updated_at: now,
            };
            hlc.stamp(tx, &mut row)?;
            o.save(tx, &row)?;
        }
        85..=89 if !st.messages.is_empty() => {
            let id = pick(&mut st.rng, &st.messages).cloned().unwrap_or_default();
            if let Some(m) = st.messages.remove(&id) {
                o.remove(tx, &m)?;
                // ON DELETE SET NULL, locally and on D1 alike.
                for e in st.executions.values_mut() {
                    if e.message_id.as_deref() == Some(id.as_str()) {
                        e.message_id = None;
                    }
                }
                w.deletes += 1;
            }
        }
        90..=92 if !st.conversations.is_empty() => {
            let id = pick(&mut st.rng, &st.conversations)
                .cloned()
                .unwrap_or_default();
            if let Some(c) = st.conversations.remove(&id) {
                // ON DELETE CASCADE takes its links and jobs, locally and on D1 alike.
                o.remove(tx, &c.row)?;
                for l in &c.links {
                    st.links.remove(l);
                }
                for j in &c.jobs {
                    st.jobs.remove(j);
                }
                w.deletes += 1;
            }
        }
        93..=96 if !st.executions.is_empty() => {
            let id = pick(&mut st.rng, &st.executions)
                .cloned()
                .unwrap_or_default();
            if let Some(e) = st.executions.remove(&id) {
                o.remove(tx, &e)?;
                w.deletes += 1;
            }
        }
        _ => {
            // Not applicable yet (nothing to update or delete): write a message instead.
            let id = st.next("msg");
            let now = st.tick();
            let mut row = Message {
                version: 0,
                id: id.clone(),
                platform: st.platform(),
                conversation_id: None,
                role: "system".into(),
                raw_text: Some(st.text(4)),
                summary: None,
                observed_at: now,
                static_path: Some(format!("/static/{id}.html")),
                page_url: None,
                page_title: None,
                created_at: now,
                organization_id: None,
            };
            hlc.stamp(tx, &mut row)?;
            o.save(tx, &row)?;
            st.messages.insert(id, row);
            w.inserts += 1;
        }
    }
    Ok(())
}
