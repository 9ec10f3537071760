//! The queue protocol the worker speaks: the lease, claims (and the read-ahead's claim after a
//! cursor), acknowledgements, charges, holds and dead letters, the journal of requests in
//! flight, and trimming the synced log. Crate-private but for `purge`.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{attempts_of, bytes_of, now_ms, sql, text_at, Outbox};
use crate::change::{row_digest, RawRecord};
use crate::error::Result;
use crate::ledger::RequestId;

/// A record set back: which, why, and until when (ms): charged an attempt, or held behind a
/// record it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setback {
    pub(crate) id: i64,
    pub(crate) reason: String,
    pub(crate) until: i64,
}

/// A record that can never ship: which, of what table, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) id: i64,
    pub(crate) table: String,
    pub(crate) reason: String,
}

/// Who claims, when, for how long, and how many records at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claimant<'a> {
    pub(crate) owner: &'a str,
    pub(crate) now: i64,
    pub(crate) lease: Duration,
    pub(crate) limit: usize,
}

/// What a claim found.
#[derive(Debug)]
pub(crate) enum Claim {
    /// Records to send, in queue order (none if nothing is eligible).
    Records(Vec<RawRecord>),
    /// Another worker holds the queue's lease.
    HeldBy(String),
}

impl Outbox {
    /// Takes or renews the queue's lease for `owner` until `until`; `Err(holder)` when
    /// another worker holds it. `Ok(true)` when no other worker held it since `owner` last did
    /// (so what it planned before is still its own to send), `Ok(false)` when it takes it anew.
    pub(crate) fn acquire(
        &self,
        conn: &Connection,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<Result<bool, String>> {
        // Nobody else sent in between if the lease still names `owner`, even if it ran out:
        // whoever takes a lease writes their name into it.
        let held: bool = conn
            .prepare_cached(
                "SELECT count(*) > 0 FROM d1_sync_leases WHERE queue = ?1 AND owner = ?2",
            )?
            .query_row(params![self.table, owner], |r| r.get(0))?;
        let n = conn
            .prepare_cached(
                "INSERT INTO d1_sync_leases (queue, owner, until) VALUES (?1, ?2, ?3)
                 ON CONFLICT (queue) DO UPDATE SET owner = excluded.owner, until = excluded.until
                 WHERE d1_sync_leases.owner = excluded.owner OR d1_sync_leases.until <= ?4",
            )?
            .execute(params![self.table, owner, until, now])?;
        if n == 1 {
            return Ok(Ok(held));
        }
        let holder: Option<String> = conn
            .query_row(
                "SELECT owner FROM d1_sync_leases WHERE queue = ?1",
                [&self.table],
                |r| r.get(0),
            )
            .optional()?;
        Ok(Err(holder.unwrap_or_default()))
    }

    /// Gives the lease up (on shutdown), if `owner` holds it.
    pub(crate) fn release_lease(&self, conn: &Connection, owner: &str) -> Result<()> {
        conn.execute(
            "UPDATE d1_sync_leases SET until = 0 WHERE queue = ?1 AND owner = ?2",
            params![self.table, owner],
        )?;
        Ok(())
    }

    /// Takes (or renews) the queue's lease and reads up to `limit` eligible records.
    ///
    /// Eligible: pending and due, and no earlier record of the same row is waiting (a dead
    /// letter, or pending but not yet due). Because that looks at *all* earlier records of the
    /// row, a held-back record holds back every later one of its row; other rows go on.
    pub(crate) fn claim(
        &self,
        conn: &mut Connection,
        owner: &str,
        now: i64,
        lease: Duration,
        limit: usize,
    ) -> Result<Claim> {
        let who = Claimant {
            owner,
            now,
            lease,
            limit,
        };
        self.claim_from(conn, &who, 0)
    }

    /// [`Outbox::claim`] of the records after `cursor`, read while the batch up to it is still
    /// in flight (the worker's prefetch); the flag says whether it stopped short (see below).
    ///
    /// It must be exactly the records a claim after that batch would take once that batch is
    /// applied, in order, with nothing passed over that may still go first; so it stops at the
    /// first record whose row has a pending record at or below the cursor that waited
    /// (charged or retried: it may be due again, and only a claim from the start sends it).
    /// Records of rows in flight are taken: the worker sends them only after the batch in
    /// flight is applied, and drops them otherwise (nothing of a read-ahead is written but
    /// the claimed mark, so dropping it is free).
    pub(crate) fn claim_after(
        &self,
        conn: &mut Connection,
        who: &Claimant<'_>,
        cursor: i64,
    ) -> Result<(Claim, bool)> {
        let records = match self.claim_from(conn, who, cursor)? {
            Claim::Records(r) => r,
            held => return Ok((held, false)),
        };
        let waited: std::collections::HashSet<u64> = conn
            .prepare_cached(&sql::waited_up_to(self))?
            .query_map([cursor], |r| {
                Ok(row_digest(&text_at(r, 0)?, &text_at(r, 1)?))
            })?
            .collect::<Result<_, _>>()?;
        let stop = records
            .iter()
            .position(|r| waited.contains(&row_digest(&r.table, &r.row_key)))
            .unwrap_or(records.len());
        let mut records = records;
        let cut = stop < records.len();
        records.truncate(stop);
        Ok((Claim::Records(records), cut))
    }

    fn claim_from(&self, conn: &mut Connection, who: &Claimant<'_>, cursor: i64) -> Result<Claim> {
        let Claimant {
            owner,
            now,
            lease,
            limit,
        } = *who;
        let until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Err(holder) = self.acquire(&tx, owner, now, until)? {
            tx.commit()?;
            return Ok(Claim::HeldBy(holder));
        }
        let records = {
            let mut stmt = tx.prepare_cached(&sql::claim(self))?;
            let rows = stmt
                .query_map(
                    params![now, i64::try_from(limit).unwrap_or(i64::MAX), cursor],
                    raw_record,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        self.raise_claimed(&tx, &records, cursor == 0)?;
        tx.commit()?;
        Ok(Claim::Records(records))
    }

    /// Raises the queue's claimed mark (see [`d1_sync_schema::queue`]) to the highest id just
    /// claimed, in the claim's transaction: from its commit on, no enqueue merges into a
    /// record this worker may send. A claim from the start (`fresh`: the worker holds nothing
    /// else in memory) sets the mark anew, to the highest id it claimed or that a journaled
    /// request carries, so records claimed before and set back (backoff, held) can coalesce
    /// again.
    fn raise_claimed(&self, conn: &Connection, records: &[RawRecord], fresh: bool) -> Result<()> {
        let claimed = records.iter().map(|r| r.id).max().unwrap_or(0);
        // A read-ahead only raises the mark, which already covers the journal.
        let journaled: i64 = if fresh {
            conn.prepare_cached(&format!(
                "SELECT coalesce(max(value), 0) FROM {}, json_each(ids)",
                self.journal
            ))?
            .query_row([], |r| r.get(0))?
        } else {
            0
        };
        conn.prepare_cached(&d1_sync_schema::queue::claim_mark_sql(&self.table))?
            .execute(params![claimed.max(journaled), fresh])?;
        Ok(())
    }

    /// [`Outbox::acknowledge`] with nothing refused and every record logged (tests).
    #[cfg(test)]
    pub(crate) fn mark_synced(
        &self,
        conn: &mut Connection,
        ids: &[i64],
        seq: Option<i64>,
    ) -> Result<usize> {
        self.acknowledge(conn, ids, seq, &[], usize::MAX)
    }

    /// Marks records synced (they must still be pending): moves them from the queue to the
    /// synced log and forgets the journaled request `seq` that carried them, in one
    /// transaction, logging first the records among `ids` that the version guard refused
    /// (`stale`) in the conflicts log. Returns how many moved. Only the newest `keep` of `ids`
    /// are logged: the log keeps its newest `keep` entries (see [`Outbox::purge`]), so the
    /// older ones would only be written to be trimmed (a request of 10,000 rows against the
    /// default 1,000).
    pub(crate) fn acknowledge(
        &self,
        conn: &mut Connection,
        ids: &[i64],
        seq: Option<i64>,
        stale: &[super::Stale],
        keep: usize,
    ) -> Result<usize> {
        let runs = id_runs(ids);
        let logged = newest_runs(&runs, keep);
        let tx = conn.transaction()?;
        if let Some(seq) = seq {
            self.unjournal(&tx, seq)?;
        }
        self.log_conflicts(&tx, stale)?;
        let now = now_ms();
        let mut log = tx.prepare_cached(&sql::log_synced(self))?;
        for (first, last) in logged {
            log.execute(params![now, first, last])?;
        }
        drop(log);
        let n = if self.holds_only(&tx, &runs)? {
            // The worker caught up: the queue is emptied whole, not row by row.
            tx.prepare_cached(&sql::clear(self))?.execute([])?
        } else {
            let mut delete = tx.prepare_cached(&sql::delete_synced(self))?;
            let mut n = 0;
            for &(first, last) in &runs {
                n += delete.execute(params![first, last])?;
            }
            n
        };
        tx.commit()?;
        Ok(n)
    }

    /// Whether every record in the queue is one of `runs`, and none is a dead letter: then
    /// emptying the queue deletes what the row-by-row delete would.
    fn holds_only(&self, conn: &Connection, runs: &[(i64, i64)]) -> Result<bool> {
        let (Some(&(first, _)), Some(&(_, last))) = (runs.first(), runs.last()) else {
            return Ok(false);
        };
        let spans: bool = conn
            .prepare_cached(&sql::spans_only(self))?
            .query_row(params![first, last], |r| r.get(0))?;
        if !spans {
            return Ok(false);
        }
        let mut between = conn.prepare_cached(&sql::any_between(self))?;
        for w in runs.windows(2) {
            if between.exists(params![w[0].1, w[1].0])? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Charges failed records an attempt: due again at their `until`, or `failed` once
    /// `max_attempts` is reached.
    pub(crate) fn charge(
        &self,
        conn: &mut Connection,
        failures: &[Setback],
        max_attempts: u32,
    ) -> Result<()> {
        let now = now_ms();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {} SET attempts = attempts + 1, last_error = ?1, next_attempt_at = ?2, updated_at = ?3,
                   status = CASE WHEN attempts + 1 >= ?4 THEN 'failed' ELSE 'pending' END
                 WHERE id = ?5 AND status = 'pending'",
                self.q
            ))?;
            for f in failures {
                stmt.execute(params![f.reason, f.until.max(1), now, max_attempts, f.id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Dead-letters records that can never ship, with the reason.
    pub(crate) fn fail(&self, conn: &mut Connection, failures: &[Refusal]) -> Result<()> {
        let now = now_ms();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {} SET status = 'failed', last_error = ?1, updated_at = ?2 WHERE id = ?3 AND status = 'pending'",
                self.q
            ))?;
            for f in failures {
                stmt.execute(params![f.reason, now, f.id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub(super) fn stream_key(&self) -> String {
        format!("stream:{}", self.table)
    }

    /// The queue's stream id, as the ledger in D1 names it (16 hex digits).
    pub(crate) fn stream(&self, conn: &Connection) -> Result<String> {
        let v: i64 = conn
            .prepare_cached("SELECT value FROM d1_sync_meta WHERE key = ?1")?
            .query_row([self.stream_key()], |r| r.get(0))
            .map_err(|e| self.map_missing(e))?;
        Ok(format!("{:016x}", v as u64))
    }

    /// Journals a request before it is sent: its records' ids get a new sequence number and
    /// a random nonce. From here until [`Outbox::acknowledge`] or [`Outbox::unjournal`] the
    /// request counts as in flight, and whoever sends this queue next sends it again first.
    ///
    /// The entry is written durably (`synchronous = FULL` for this one commit, which also makes
    /// every earlier commit of the file durable), so not even a power cut loses a request that
    /// may reach D1; marks may stay `NORMAL`: a lost mark leaves its request journaled, and
    /// the ledger answers for it when it goes again.
    pub(crate) fn journal(&self, conn: &Connection, ids: &[i64]) -> Result<RequestId> {
        let stream = self.stream(conn)?;
        let mut id = RequestId::new(stream, 0);
        let level: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous = FULL")?;
        let inserted = conn
            .prepare_cached(&format!(
                "INSERT INTO {} (nonce, ids, created_at) VALUES (?1, ?2, ?3)",
                self.journal
            ))
            .and_then(|mut s| s.execute(params![id.nonce, ids_json(ids), now_ms()]));
        conn.execute_batch(&format!("PRAGMA synchronous = {level}"))?;
        inserted?;
        id.seq = conn.last_insert_rowid();
        Ok(id)
    }

    /// Forgets a journaled request that was definitely not applied (refused as a whole, or
    /// never sent).
    pub(crate) fn unjournal(&self, conn: &Connection, seq: i64) -> Result<()> {
        conn.prepare_cached(&format!("DELETE FROM {} WHERE seq = ?1", self.journal))?
            .execute([seq])?;
        Ok(())
    }

    /// The journaled requests, oldest first, with their records' ids.
    pub(crate) fn journaled(&self, conn: &Connection) -> Result<Vec<(RequestId, Vec<i64>)>> {
        let stream = self.stream(conn)?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT seq, nonce, ids FROM {} ORDER BY seq",
                self.journal
            ))
            .map_err(|e| self.map_missing(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, text_at(r, 1)?, text_at(r, 2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(seq, nonce, ids)| {
                let ids: Vec<i64> = serde_json::from_str(&ids).unwrap_or_default();
                (
                    RequestId {
                        stream: stream.clone(),
                        seq,
                        nonce,
                    },
                    ids,
                )
            })
            .collect())
    }

    /// The stored definitions (id, text) that `records` were written under.
    pub(crate) fn definitions_of(
        &self,
        conn: &Connection,
        records: &[RawRecord],
    ) -> Result<Vec<(i64, String)>> {
        let mut ids: Vec<i64> = records.iter().filter_map(|r| r.def).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id, definition FROM {} WHERE id IN (SELECT value FROM json_each(?1))",
            self.tables
        ))?;
        let rows = stmt
            .query_map([ids_json(&ids)], |r| Ok((r.get(0)?, text_at(r, 1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The pending records with these ids, in queue order (what a journaled request carries).
    pub(crate) fn records(&self, conn: &Connection, ids: &[i64]) -> Result<Vec<RawRecord>> {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id, table_name, row_key, op, payload, attempts, def FROM {}
             WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'pending' ORDER BY id",
            self.q
        ))?;
        let rows = stmt
            .query_map([ids_json(ids)], raw_record)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The rows that have a record waiting (a dead letter, or pending and not due at `now`),
    /// as [`row_digest`]s, each with the id of its first waiting record and the time that
    /// record is due (`i64::MAX` for a dead letter). Read through the partial index that holds
    /// only such records.
    pub(crate) fn waiting_rows(
        &self,
        conn: &Connection,
        now: i64,
    ) -> Result<std::collections::HashMap<u64, (i64, i64)>> {
        let mut stmt = conn.prepare_cached(&sql::waiting_rows(self))?;
        let rows = stmt
            .query_map([now], |r| {
                Ok((
                    row_digest(&text_at(r, 0)?, &text_at(r, 1)?),
                    (r.get::<_, i64>(2)?, r.get::<_, i64>(3)?),
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Holds records back without charging them: they wait until `next_at` (ms) because a
    /// record they depend on waits, and say why in `last_error`. Each entry: id, reason, time.
    pub(crate) fn hold(&self, conn: &mut Connection, held: &[Setback]) -> Result<()> {
        let now = now_ms();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "UPDATE {} SET last_error = ?1, next_attempt_at = ?2, updated_at = ?3
                 WHERE id = ?4 AND status = 'pending'",
                self.q
            ))?;
            for h in held {
                stmt.execute(params![h.reason, h.until.max(1), now, h.id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Trims the synced log to its newest `keep` entries. Returns how many went. Pending
    /// records and dead letters are never touched.
    ///
    /// The conflicts log (see [`Outbox::conflicts`]) is trimmed to its newest `keep` entries too.
    pub fn purge(&self, conn: &Connection, keep: usize) -> Result<usize> {
        let n = conn
            .prepare_cached(&sql::purge(self))?
            .execute([i64::try_from(keep).unwrap_or(i64::MAX)])
            .map_err(|e| self.map_missing(e))?;
        self.purge_conflicts(conn, keep)?;
        Ok(n)
    }
}

/// A record as `SELECT id, table_name, row_key, op, payload, attempts` reads it. Whatever was
/// written into the queue by hand must not stop a claim: any storage class is read, and
/// `change::check` judges the content.
fn raw_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: r.get(0)?,
        table: text_at(r, 1)?,
        row_key: text_at(r, 2)?,
        op: text_at(r, 3)?,
        payload: bytes_of(r.get_ref(4)?),
        attempts: attempts_of(r.get_ref(5)?),
        def: match r.get_ref(6)? {
            rusqlite::types::ValueRef::Integer(i) => Some(i),
            _ => None,
        },
    })
}

/// `ids` as runs of consecutive ids, `(first, last)`, in order (sorted, duplicates dropped).
pub(super) fn id_runs(ids: &[i64]) -> Vec<(i64, i64)> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for id in sorted {
        match runs.last_mut() {
            // Sorted: `id` is at least `last`.
            Some((_, last)) if id <= last.saturating_add(1) => *last = id,
            _ => runs.push((id, id)),
        }
    }
    runs
}

/// The tail of `runs` holding their newest `keep` ids.
pub(super) fn newest_runs(runs: &[(i64, i64)], keep: usize) -> Vec<(i64, i64)> {
    let mut left = keep as u64;
    let mut out = Vec::new();
    for &(first, last) in runs.iter().rev() {
        if left == 0 {
            break;
        }
        let len = last.abs_diff(first).saturating_add(1);
        let take = len.min(left);
        out.push((last.wrapping_sub((take - 1) as i64), last));
        left -= take;
    }
    out.reverse();
    out
}

fn ids_json(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}
