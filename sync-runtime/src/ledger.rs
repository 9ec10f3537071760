//! Exactly-once delivery: request ids, and the ledger D1 keeps of the requests it applied.
//!
//! A request whose answer is lost may have been committed, and re-sending it is not harmless
//! once the schema has foreign keys: [upsert child, delete parent] cascades the first time, and
//! the second time the child's upsert dangles and the whole batch fails. So every request
//! carries a [`RequestId`], persisted in the local queue file before it is sent, and its batch
//! opens with one write to the ledger table in D1 (see [`d1_sync_schema::ledger`]). A request
//! that D1 applied before is refused by the ledger as a whole, and the worker reads that refusal
//! as [`Applied::Before`]: its records are marked synced, nothing is applied twice.

use d1_sync_schema::ledger;

use crate::pack::{Param, Statement};
use crate::target::TargetError;

pub use d1_sync_schema::ledger::{DEFAULT_TABLE, SLOTS};

/// Who sent a request, and which one: the queue's stream (random, made once per queue), the
/// request's sequence number in that stream, and a random nonce (so a queue restored from a
/// backup, whose sequence numbers repeat, never looks like a replay).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId {
    /// The queue's stream id (16 hex digits).
    pub stream: String,
    /// The request's number in its stream, increasing.
    pub seq: i64,
    /// Random, per request (16 hex digits).
    pub nonce: String,
}

impl RequestId {
    /// A new request of `stream` numbered `seq`, with a fresh random nonce.
    pub fn new(stream: impl Into<String>, seq: i64) -> RequestId {
        RequestId {
            stream: stream.into(),
            seq,
            nonce: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// The ledger slot this request writes.
    pub fn slot(&self) -> i64 {
        self.seq.rem_euclid(SLOTS as i64)
    }

    /// The ledger statement that opens this request's batch (after the `PRAGMA`).
    pub fn statement(&self) -> Statement {
        Statement {
            sql: ledger::record_sql(DEFAULT_TABLE),
            params: self.params(),
        }
    }

    /// The parameters of [`RequestId::statement`], as text (D1's REST API documents string
    /// parameters; the columns' affinity turns the numbers back into integers).
    pub fn params(&self) -> Vec<Param> {
        vec![
            Param::Text(self.stream.clone()),
            Param::Text(self.slot().to_string()),
            Param::Text(self.seq.to_string()),
            Param::Text(self.nonce.clone()),
            Param::Text(crate::outbox::now_ms().to_string()),
        ]
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.stream, self.seq, self.nonce)
    }
}

/// How a request that the target took was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Applied by this delivery. `superseded`: the records of versioned tables that the version
    /// guard refused, because the target holds the same or a newer version of their row (see
    /// [`d1_sync_schema::guard`]); they are done, not failed.
    Now {
        /// The records the guard refused.
        superseded: Vec<Superseded>,
    },
    /// Applied by an earlier delivery of the same request (whose answer was lost): the
    /// ledger refused this one as a whole, and nothing was applied twice. Which of its records
    /// the version guard refused went with the lost answer.
    Before,
}

impl Applied {
    /// Applied now, every record taken.
    pub fn now() -> Applied {
        Applied::Now {
            superseded: Vec::new(),
        }
    }
}

/// A record the version guard refused: the target holds its row at `held` (or a delete of it
/// at `held`), the same as or newer than the version the record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superseded {
    /// The record's queue id.
    pub id: i64,
    /// The version the target holds, where it could be read.
    pub held: Option<i64>,
}

/// The statements that create the ledger, and the tombstones of versioned tables, in a
/// target, if missing.
pub fn create_statements() -> Vec<Statement> {
    ledger::create_sql(DEFAULT_TABLE)
        .into_iter()
        .chain(std::iter::once(
            d1_sync_schema::guard::create_tombstones_sql(),
        ))
        .map(Statement::new)
        .collect()
}

/// Reads a target's answer to a request: a refusal by the ledger is [`Applied::Before`];
/// `Ok` carries the records the version guard refused.
pub fn outcome(result: Result<Vec<Superseded>, TargetError>) -> Result<Applied, TargetError> {
    match result {
        Ok(superseded) => Ok(Applied::Now { superseded }),
        Err(TargetError::Rejected(m)) if ledger::is_replay(&m) => Ok(Applied::Before),
        Err(e) => Err(e),
    }
}

/// Whether an error says the ledger table (or the tombstones') is missing (dropped by hand, or
/// a database reset): the target creates them again and the request is retried, uncharged.
pub fn is_missing(message: &str) -> bool {
    [DEFAULT_TABLE, d1_sync_schema::guard::TOMBSTONES]
        .iter()
        .any(|t| message.contains(&format!("no such table: {t}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_refusal_reads_as_applied_before() {
        let replay = TargetError::Rejected(format!(
            "{}: SQLITE_CONSTRAINT (code 7500)",
            ledger::REPLAY_MESSAGE
        ));
        assert_eq!(outcome(Err(replay)), Ok(Applied::Before));
        assert_eq!(outcome(Ok(Vec::new())), Ok(Applied::now()));
        let other = TargetError::Rejected("UNIQUE constraint failed: people.email".into());
        assert_eq!(outcome(Err(other.clone())), Err(other));
        let id = RequestId {
            stream: "00ff".into(),
            seq: 19,
            nonce: "ab".into(),
        };
        assert_eq!(id.slot(), 19 % SLOTS as i64);
        assert_eq!(id.statement().params.len(), 5);
        assert!(is_missing("no such table: d1_sync_ledger: SQLITE_ERROR"));
    }
}
