//! Many devices, one D1: what a device of the fleet test writes, the log it keeps of its writes,
//! and the oracle that checks D1 against every device's log.
//!
//! Each device writes the seven example tables over a small key space shared by all devices,
//! through the README's flow (`Hlc::stamp`, `Outbox::save` / `remove`, a `SyncWorker`). A child
//! row's parent is a function of its key (`conversation_links` and `renewal_jobs` of a
//! conversation, `executions` of a message), so every device agrees on it.
//!
//! The oracle, per key: the write with the highest version across all logs wins (a delete
//! wins a tie with an upsert). D1 must then hold the winner: absent for a delete (else a
//! *resurrection*), the winning row at its version for an upsert (an older one is a *stale
//! overwrite*). The one exception is a row whose parent D1 deleted (the parent's key has a
//! tombstone): the delete cascaded over it, or it was superseded for its parent, so it may be
//! absent or older; with `ON DELETE SET NULL` its reference may be NULL.

use std::collections::BTreeMap;

use d1_sync::rusqlite::Transaction;
use d1_sync::{Hlc, Outbox, SyncRow, Value};
use d1_sync_example::rows::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Keys per table: small, so devices write the same rows.
pub const KEYS: [(&str, u32); 7] = [
    ("local_conversations", 6),
    ("conversation_links", 14),
    ("renewal_jobs", 12),
    ("messages", 20),
    ("executions", 16),
    ("sessions", 10),
    ("browser_request_policy_state", 8),
];

/// One write as a device logged it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Write {
    /// Which device.
    pub device: u32,
    /// Table.
    pub table: String,
    /// The key's text (every example table has one text key).
    pub key: String,
    /// `upsert` or `delete`.
    pub op: String,
    /// The version it carried.
    pub version: i64,
    /// An upsert's values by column (JSON); empty for a delete.
    pub row: BTreeMap<String, serde_json::Value>,
}

/// The parent a child row's foreign key names, by the child's key: `(parent table, parent
/// key)`. The same on every device.
pub fn parent_of(table: &str, key: &str) -> Option<(&'static str, String)> {
    let n: u32 = key.rsplit('-').next()?.parse().ok()?;
    match table {
        "conversation_links" | "renewal_jobs" => {
            Some(("local_conversations", format!("conv-{}", n % 6)))
        }
        "executions" if !n.is_multiple_of(4) => Some(("messages", format!("msg-{}", n % 20))),
        _ => None,
    }
}

fn json_of(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => serde_json::json!(i),
        Value::Real(f) => serde_json::json!(f),
        Value::Text(t) => serde_json::json!(t),
        Value::Blob(b) => serde_json::json!(b),
    }
}

fn logged<T: SyncRow>(device: u32, op: &str, version: i64, row: &T) -> Write {
    let values = row.values();
    let key = match row.key_values().first() {
        Some(Value::Text(k)) => k.clone(),
        other => format!("{other:?}"),
    };
    Write {
        device,
        table: T::TABLE.to_string(),
        key,
        op: op.to_string(),
        version,
        row: if op == "delete" {
            BTreeMap::new()
        } else {
            T::COLUMNS
                .iter()
                .zip(&values)
                .map(|(c, v)| (c.to_string(), json_of(v)))
                .collect()
        },
    }
}

/// A device's writer: its random choices, its clock, and the log of what it queued.
pub struct Device {
    /// Which device.
    pub id: u32,
    rng: StdRng,
    hlc: Hlc,
    outbox: Outbox,
    /// Everything queued so far.
    pub log: Vec<Write>,
}

impl Device {
    /// Device `id`, its random choices from `seed`, its versions from `hlc`.
    pub fn new(id: u32, seed: u64, hlc: Hlc) -> Device {
        Device {
            id,
            rng: StdRng::seed_from_u64(seed ^ (u64::from(id) << 32)),
            hlc,
            outbox: Outbox::new(),
            log: Vec::new(),
        }
    }

    fn text(&mut self) -> String {
        const W: &[&str] = &["renew", "é🦀", "q\"uote", "it's", "report", "ok", "device"];
        (0..self.rng.random_range(1..5))
            .map(|_| W[self.rng.random_range(0..W.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Writes one change: a delete of a row the device holds (a third of the time), else an
    /// upsert of a row with new values (its parent written first if the device lacks it).
    pub fn write_one(&mut self, tx: &Transaction<'_>) -> d1_sync::Result<()> {
        let (table, n) = KEYS[self.rng.random_range(0..KEYS.len())];
        let k = self.rng.random_range(0..n);
        let key = match table {
            "local_conversations" => format!("conv-{k}"),
            "conversation_links" => format!("link-{k}"),
            "renewal_jobs" => format!("job-{k}"),
            "messages" => format!("msg-{k}"),
            "executions" => format!("exec-{k}"),
            "sessions" => format!("sess-{k}"),
            _ => format!("policy-{k}"),
        };
        let exists: bool = tx.query_row(
            &format!(
                "SELECT count(*) > 0 FROM {table} WHERE {} = ?1",
                key_column(table)
            ),
            [&key],
            |r| r.get(0),
        )?;
        if exists && self.rng.random_bool(0.35) {
            return self.delete(tx, table, &key);
        }
        if let Some((parent, pk)) = parent_of(table, &key) {
            let has: bool = tx.query_row(
                &format!(
                    "SELECT count(*) > 0 FROM {parent} WHERE {} = ?1",
                    key_column(parent)
                ),
                [&pk],
                |r| r.get(0),
            )?;
            if !has {
                self.upsert(tx, parent, &pk)?;
            }
        }
        self.upsert(tx, table, &key)
    }

    fn delete(&mut self, tx: &Transaction<'_>, table: &str, key: &str) -> d1_sync::Result<()> {
        // The local row's version is what the delete carries (`remove` reads it).
        let version: i64 = tx.query_row(
            &format!(
                "SELECT version FROM {table} WHERE {} = ?1",
                key_column(table)
            ),
            [key],
            |r| r.get(0),
        )?;
        macro_rules! remove {
            ($row:expr) => {{
                let row = $row;
                self.outbox.remove(tx, &row)?;
                self.log.push(logged(self.id, "delete", version, &row));
            }};
        }
        let k = key.to_string();
        match table {
            "local_conversations" => remove!(conversation(k, 0, version)),
            "conversation_links" => remove!(link(k, 0, version)),
            "renewal_jobs" => remove!(job(k, 0, version)),
            "messages" => remove!(message(k, 0, version)),
            "executions" => remove!(execution(k, 0, version)),
            "sessions" => remove!(session(k, 0, version)),
            _ => remove!(policy(k, 0, version)),
        }
        Ok(())
    }

    fn upsert(&mut self, tx: &Transaction<'_>, table: &str, key: &str) -> d1_sync::Result<()> {
        let stamp: i64 = self.rng.random_range(1..1_000_000);
        macro_rules! save {
            ($row:expr) => {{
                let mut row = $row;
                let v = self.hlc.stamp(tx, &mut row)?;
                if self.outbox.save(tx, &row)?.is_some() {
                    self.log.push(logged(self.id, "upsert", v, &row));
                }
            }};
        }
        let k = key.to_string();
        let t = self.text();
        match table {
            "local_conversations" => save!(LocalConversation {
                title: Some(t),
                ..conversation(k, stamp, 0)
            }),
            "conversation_links" => save!(ConversationLink {
                page_title: Some(t),
                ..link(k, stamp, 0)
            }),
            "renewal_jobs" => save!(RenewalJob {
                payload: t,
                ..job(k, stamp, 0)
            }),
            "messages" => save!(Message {
                raw_text: Some(t),
                ..message(k, stamp, 0)
            }),
            "executions" => save!(Execution {
                result_summary: Some(t),
                ..execution(k, stamp, 0)
            }),
            "sessions" => save!(Session {
                summary: Some(t),
                ..session(k, stamp, 0)
            }),
            _ => save!(BrowserRequestPolicyState {
                value_json: format!("{{\"t\":{}}}", serde_json::json!(t)),
                ..policy(k, stamp, 0)
            }),
        }
        Ok(())
    }
}

/// The key column of an example table.
pub fn key_column(table: &str) -> &'static str {
    match table {
        "local_conversations" => "local_conversation_id",
        "conversation_links" => "link_id",
        "renewal_jobs" => "job_id",
        "executions" => "instruction_id",
        "browser_request_policy_state" => "state_key",
        _ => "id",
    }
}

fn conversation(id: String, at: i64, version: i64) -> LocalConversation {
    LocalConversation {
        local_conversation_id: id,
        platform: "web".into(),
        automation_status: "active".into(),
        last_non_paused_automation_status: None,
        pause_reason: None,
        last_error: None,
        execution_state: "idle".into(),
        consecutive_failure_count: at % 7,
        repeated_message_count: 0,
        repeated_renewal_count: 0,
        last_message_fingerprint: None,
        last_renewal_fingerprint: None,
        title: None,
        summary: None,
        last_message_id: None,
        last_message_at: Some(at),
        cooldown_until: None,
        paused_at: None,
        created_at: at,
        updated_at: at,
        version,
    }
}

fn link(id: String, at: i64, version: i64) -> ConversationLink {
    let parent = parent_of("conversation_links", &id).map(|p| p.1);
    ConversationLink {
        local_conversation_id: parent.unwrap_or_default(),
        platform: "web".into(),
        remote_conversation_id: Some(format!("remote-{at}")),
        client_id: None,
        page_url: Some(format!("https://example.com/c/{id}")),
        page_title: None,
        route_path: None,
        route_pattern: None,
        route_params: None,
        target_kind: None,
        target_id: None,
        target_payload: None,
        is_active: at % 2 == 0,
        observed_at: Some(at),
        created_at: at,
        updated_at: at,
        link_id: id,
        version,
    }
}

fn job(id: String, at: i64, version: i64) -> RenewalJob {
    let parent = parent_of("renewal_jobs", &id).map(|p| p.1);
    RenewalJob {
        local_conversation_id: parent.unwrap_or_default(),
        message_id: None,
        status: "pending".into(),
        payload: String::new(),
        payload_kind: "text".into(),
        target_snapshot: None,
        attempt_count: at % 3,
        max_attempts: 3,
        next_attempt_at: Some(at),
        last_attempt_at: None,
        last_error: None,
        log_path: None,
        started_at: None,
        finished_at: None,
        created_at: at,
        updated_at: at,
        job_id: id,
        version,
    }
}

fn message(id: String, at: i64, version: i64) -> Message {
    Message {
        id,
        platform: "chatgpt".into(),
        conversation_id: None,
        role: "user".into(),
        raw_text: None,
        summary: None,
        observed_at: at,
        static_path: None,
        page_url: None,
        page_title: None,
        created_at: at,
        organization_id: None,
        version,
    }
}

fn execution(id: String, at: i64, version: i64) -> Execution {
    let parent = parent_of("executions", &id).map(|p| p.1);
    Execution {
        instruction_id: id,
        message_id: parent,
        target: "browser".into(),
        tool: "click".into(),
        params: None,
        params_kind: None,
        result_ok: Some(at % 2 == 0),
        result_data: None,
        result_summary: None,
        result_error: None,
        http_status: Some(200),
        executed_at: at,
        static_path: None,
        created_at: at,
        version,
    }
}

fn session(id: String, at: i64, version: i64) -> Session {
    Session {
        id,
        platform: "claude".into(),
        conversation_id: None,
        started_at: at,
        last_activity_at: at,
        message_count: at % 11,
        execution_count: 0,
        summary: None,
        static_path: None,
        created_at: at,
        version,
    }
}

fn policy(id: String, at: i64, version: i64) -> BrowserRequestPolicyState {
    BrowserRequestPolicyState {
        state_key: id,
        value_json: "{}".into(),
        updated_at: at,
        version,
    }
}

/// What the oracle found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Keys written.
    pub keys: usize,
    /// Rows present in D1 as their winning write.
    pub matched: usize,
    /// Keys absent in D1 as their winning delete says.
    pub deleted: usize,
    /// Keys whose parent D1 deleted (absent, older, or their reference set NULL).
    pub under_deleted_parent: usize,
    /// A row in D1 whose version is not its winner's (an older write overwrote a newer one, or
    /// a newer write was lost).
    pub stale: Vec<String>,
    /// A row in D1 whose winning write is a delete.
    pub resurrected: Vec<String>,
    /// A row in D1 at the winner's version but with other values.
    pub wrong: Vec<String>,
    /// A winning upsert missing from D1, its parent never deleted.
    pub lost: Vec<String>,
}

impl Verdict {
    /// Whether D1 holds exactly what the writes say.
    pub fn holds(&self) -> bool {
        self.stale.is_empty()
            && self.resurrected.is_empty()
            && self.wrong.is_empty()
            && self.lost.is_empty()
    }
}

/// Checks D1's rows (`d1`: by table, key → columns as D1's JSON gives them) and tombstones
/// (`tombstoned`: `(table, key)` whose delete D1 recorded) against every device's writes.
pub fn judge(
    writes: &[Write],
    d1: &BTreeMap<String, BTreeMap<String, serde_json::Map<String, serde_json::Value>>>,
    tombstoned: &std::collections::BTreeSet<(String, String)>,
) -> Verdict {
    let mut by_key: BTreeMap<(&str, &str), Vec<&Write>> = BTreeMap::new();
    for w in writes {
        by_key
            .entry((w.table.as_str(), w.key.as_str()))
            .or_default()
            .push(w);
    }
    let mut v = Verdict {
        keys: by_key.len(),
        ..Verdict::default()
    };
    let parent_gone = |table: &str, key: &str| {
        parent_of(table, key).is_some_and(|(p, pk)| tombstoned.contains(&(p.to_string(), pk)))
    };
    for ((table, key), ws) in by_key {
        let top = ws.iter().map(|w| w.version).max().unwrap_or(i64::MIN);
        let winners: Vec<&&Write> = ws.iter().filter(|w| w.version == top).collect();
        let deleted = winners.iter().any(|w| w.op == "delete");
        let held = d1.get(table).and_then(|t| t.get(key));
        let name = format!("{table}/{key}@{top}");
        match (deleted, held) {
            (true, None) => v.deleted += 1,
            (true, Some(_)) => v.resurrected.push(name),
            (false, None) if parent_gone(table, key) => v.under_deleted_parent += 1,
            (false, None) => v.lost.push(name),
            (false, Some(row)) => {
                let version = row.get("version").and_then(|x| x.as_i64());
                if version != Some(top) {
                    if parent_gone(table, key) {
                        v.under_deleted_parent += 1;
                    } else {
                        v.stale.push(format!("{name}: D1 holds {version:?}"));
                    }
                    continue;
                }
                let same = winners.iter().any(|w| {
                    w.row.iter().all(|(c, want)| {
                        let got = row.get(c).unwrap_or(&serde_json::Value::Null);
                        c == "created_at"
                            || got == want
                            || (got.is_null() && parent_gone(table, key))
                    })
                });
                if same {
                    v.matched += 1;
                } else {
                    v.wrong.push(format!("{name}: D1 holds {row:?}"));
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn w(device: u32, key: &str, op: &str, version: i64, text: &str) -> Write {
        Write {
            device,
            table: "messages".into(),
            key: key.into(),
            op: op.into(),
            version,
            row: if op == "delete" {
                BTreeMap::new()
            } else {
                [
                    ("id".to_string(), serde_json::json!(key)),
                    ("raw_text".to_string(), serde_json::json!(text)),
                    ("version".to_string(), serde_json::json!(version)),
                ]
                .into_iter()
                .collect()
            },
        }
    }

    type Rows = BTreeMap<String, BTreeMap<String, serde_json::Map<String, serde_json::Value>>>;

    fn d1(rows: &[(&str, &str, i64)]) -> Rows {
        let mut t = BTreeMap::new();
        for (key, text, version) in rows {
            let row = serde_json::json!({"id": key, "raw_text": text, "version": version});
            t.insert(key.to_string(), row.as_object().unwrap().clone());
        }
        [("messages".to_string(), t)].into_iter().collect()
    }

    #[test]
    fn the_oracle_names_every_kind_of_wrong_end() {
        let writes = [
            w(0, "msg-1", "upsert", 5, "old"),
            w(1, "msg-1", "upsert", 9, "new"),
            w(0, "msg-2", "upsert", 5, "x"),
            w(1, "msg-2", "delete", 6, ""),
            w(0, "msg-3", "upsert", 4, "kept"),
            w(1, "msg-4", "upsert", 4, "v"),
        ];
        let none = BTreeSet::new();
        let good = judge(
            &writes,
            &d1(&[("msg-1", "new", 9), ("msg-3", "kept", 4), ("msg-4", "v", 4)]),
            &none,
        );
        assert!(good.holds(), "{good:?}");
        assert_eq!((good.matched, good.deleted), (3, 1));
        let bad = judge(
            &writes,
            &d1(&[
                ("msg-1", "old", 5),
                ("msg-2", "x", 5),
                ("msg-3", "other", 4),
            ]),
            &none,
        );
        assert_eq!(bad.stale.len(), 1, "{bad:?}");
        assert_eq!(bad.resurrected.len(), 1, "{bad:?}");
        assert_eq!(bad.wrong.len(), 1, "{bad:?}");
        assert_eq!(bad.lost.len(), 1, "{bad:?}");
    }
}
