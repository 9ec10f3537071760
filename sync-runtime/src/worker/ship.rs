//! One shipping path: a tick sends one request and settles its outcome.
//!
//! A claimed batch is packed once into requests (segments of the batch, in order) that form the
//! *plan*. Before a request is sent it is journaled in the local file with its [`RequestId`];
//! from then on it is sent again *unchanged* until its outcome is certain:
//!
//! - applied (now, or before: the ledger in D1 refused a replay) → its records move to the
//!   synced log and the journal entry goes, in one local transaction;
//! - refused with an SQL error (D1 rolled the whole batch back) → the journal entry goes and
//!   the request is split in halves at the front of the plan, until the records at fault are
//!   found; only those are charged;
//! - anything else (transport, 5xx, 429, auth) may or may not have been applied → it stays
//!   journaled and at the front of the plan, and goes again after the worker's backoff.
//!
//! The plan outlives the tick, so a split under a steady fault rate goes on where it was
//! instead of starting over; records already found at fault are charged and stay found. A
//! worker that takes the queue over (or restarts) first sends again what the journal holds.
//!
//! In the background loop the last request of a batch overlaps the queue's bookkeeping: while
//! it is at the target, the previous acknowledgement is written and the next batch is read,
//! checked, packed and its first request journaled.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

use super::prepare::{self, Waiting};
use super::read::{segments, spawn_read_ahead, Next};
use super::{db, lock, Inner};
use crate::change::{self, Change};
use crate::error::Result;
use crate::ledger::{Applied, RequestId};
use crate::outbox::{now_ms, Setback, Stale};
use crate::pack::{pack_one, Request};
use crate::target::{Batch, TargetError};

/// One request of the plan.
pub(super) struct Segment {
    pub(super) changes: Vec<Change>,
    /// Packed on first use.
    pub(super) request: Option<Request>,
    /// Set once journaled: from then on it is sent again unchanged until resolved.
    pub(super) id: Option<RequestId>,
}

/// The batch the plan came from: a read-ahead continues after it.
pub(super) struct BatchInfo {
    pub(super) cursor: i64,
}

/// What a worker keeps between ticks.
#[derive(Default)]
pub(super) struct ShipState {
    pub(super) plan: VecDeque<Segment>,
    /// Rows held back while this plan is sent (charged, or waiting on a charged parent).
    pub(super) blocked: HashMap<u64, Waiting>,
    pub(super) batch: Option<BatchInfo>,
    /// The next batch, read while the last request of this one was at the target.
    pub(super) prefetched: Option<Next>,
    /// Writing the last acknowledgement: `true` once written.
    marking: Option<JoinHandle<bool>>,
    /// The target getting ready ([`crate::Target::prepare`]), until the first request.
    pub(super) preparing: Option<AbortOnDropHandle<std::result::Result<(), TargetError>>>,
}

impl ShipState {
    /// Waits until the last acknowledgement is written.
    pub(super) async fn settle(&mut self) {
        if let Some(m) = self.marking.take() {
            let _ = m.await;
        }
    }

    /// Whether a batch is half-sent (its plan goes on at the next tick).
    pub(super) fn busy(&self) -> bool {
        !self.plan.is_empty()
    }

    /// Forgets what was planned (the lease was lost, or the loop ends): the journal keeps
    /// whatever may be in flight.
    pub(super) fn forget(&mut self) {
        self.plan.clear();
        self.blocked.clear();
        self.batch = None;
        self.prefetched = None;
    }
}

/// How a tick ended.
pub(super) enum TickEnd {
    /// Nothing eligible to send.
    Idle,
    /// Something moved: records acknowledged (`acked`), or charged, held or dead-lettered.
    Progress { acked: bool },
    /// Another worker holds the queue's lease.
    Standby(String),
    /// The request failed in a way that backs the whole worker off or pauses it; it stays
    /// journaled and goes again, unchanged.
    Failed(TargetError),
    /// The local queue could not be read or written: the worker backs off, as after a
    /// transient failure of the target; nothing was marked.
    Local(crate::Error),
}

fn local(e: crate::Error) -> TickEnd {
    TickEnd::Local(e)
}

/// One tick: send the next request of the plan (making a plan first if there is none).
pub(super) async fn tick(inner: &Arc<Inner>, st: &mut ShipState, pipelined: bool) -> TickEnd {
    if st.plan.is_empty() {
        match super::plan::plan(inner, st).await {
            Ok(Some(end)) => return end,
            Ok(None) => {}
            Err(e) => return local(e),
        }
    } else if let Some(end) = renew(inner, st).await {
        return end;
    }
    let Some(mut seg) = st.plan.pop_front() else {
        return TickEnd::Idle;
    };
    if seg.id.is_none() && !st.blocked.is_empty() {
        match hold_blocked(inner, st, &mut seg).await {
            Ok(true) => {}
            Ok(false) => return TickEnd::Progress { acked: false },
            Err(e) => return local(e),
        }
    }
    let (limits, with_sql) = (inner.limits(), inner.target.wants_statements());
    let commute = &inner.commute;
    let mut request = match seg.request.take() {
        Some(r) => r,
        None if seg.id.is_some() => pack_one(&mut seg.changes, &limits, with_sql, commute),
        None => {
            // A half of a split, or a segment some changes were held out of: packed again, and
            // if it no longer fits one request, the rest goes back to the front of the plan.
            let mut parts =
                segments(std::mem::take(&mut seg.changes), &limits, with_sql, commute).into_iter();
            let Some(first) = parts.next() else {
                return TickEnd::Progress { acked: false };
            };
            for p in parts.rev() {
                st.plan.push_front(p);
            }
            seg = first;
            seg.request
                .take()
                .unwrap_or_else(|| pack_one(&mut seg.changes, &limits, with_sql, commute))
        }
    };
    let id = match seg.id.clone() {
        Some(id) => id,
        None => {
            let ids = request.ids.clone();
            match db(inner, move |o, c| o.journal(c, &ids)).await {
                Ok(id) => id,
                Err(e) => return local(e),
            }
        }
    };
    request.stamp(&id);
    seg.id = Some(id.clone());

    // The target's set-up failed: this request was not sent, and goes after the worker
    // reacts to that failure as to its own. (A set-up that panicked counts for nothing: the
    // request sets up again.)
    let set_up = match st.preparing.take() {
        Some(p) => p.await.ok(),
        None => None,
    };
    if let Some(Err(e)) = set_up {
        {
            let mut live = lock(&inner.live);
            live.requests += 1;
            live.requests_failed += 1;
        }
        seg.request = Some(request);
        st.plan.push_front(seg);
        return TickEnd::Failed(e);
    }

    // The last request of a batch: read the next batch meanwhile.
    let read_ahead = match (&st.batch, pipelined && st.plan.is_empty()) {
        (Some(b), true) => Some(spawn_read_ahead(inner, st.marking.take(), b.cursor)),
        _ => None,
    };
    {
        let mut live = lock(&inner.live);
        live.requests += 1;
        live.statements += request.statements.len() as u64;
    }
    let batch = Batch {
        request: &id,
        statements: &request.statements,
        changes: &seg.changes,
        checks: &request.checks,
    };
    let sent = std::time::Instant::now();
    let result = inner.target.execute(batch).await;
    let took = sent.elapsed();
    let result = {
        let mut sizing = lock(&inner.sizing);
        let rows = request.ids.len();
        match result {
            Ok(a) => {
                sizing.applied(rows, took, &inner.target.limits());
                Ok(a)
            }
            // Not applied, for its size: split like a rejection, and smaller from now on.
            Err(TargetError::TooLarge(m)) => {
                sizing.too_large(crate::sizing::request_bytes(&request.statements));
                Err(TargetError::Rejected(m))
            }
            Err(e) => {
                if !matches!(e, TargetError::Rejected(_)) {
                    sizing.failed(rows, took);
                }
                Err(e)
            }
        }
    };
    let mut next = match read_ahead {
        Some(h) => h.await.ok().flatten(),
        None => None,
    };
    match result {
        Ok(applied) => {
            if let Some(next) = next.as_mut() {
                journal_first(inner, next).await;
            }
            let stale = match applied {
                Applied::Before => {
                    lock(&inner.live).requests_replayed += 1;
                    debug!(request = %id, "D1 had applied this request before (its answer was lost): marking it synced");
                    Vec::new()
                }
                Applied::Now { superseded } => stale_records(&seg.changes, &superseded),
            };
            let ids = request.ids;
            let seq = id.seq;
            let spent = (seg.changes, request.statements);
            let previous = st.marking.take();
            let inner2 = inner.clone();
            let marking = tokio::spawn(async move {
                let earlier = match previous {
                    Some(p) => p.await.unwrap_or(false),
                    None => true,
                };
                let superseded = stale.len() as u64;
                let keep = inner2.config.purge_keep;
                let marked = db(&inner2, move |o, c| {
                    o.acknowledge(c, &ids, Some(seq), &stale, keep)
                })
                .await;
                // The finished batch is freed on a blocking thread: off the path to the next
                // request, and off the queue's thread, where the next claim waits.
                drop(tokio::task::spawn_blocking(move || drop(spent)));
                match marked {
                    Ok(n) => {
                        let mut live = lock(&inner2.live);
                        live.records_synced += n as u64;
                        live.records_superseded += superseded;
                        live.last_success = Some(SystemTime::now());
                        earlier
                    }
                    Err(e) => {
                        // D1 has the rows; the request stays journaled, goes again, and the
                        // ledger answers "applied before".
                        warn!(error = %e, "could not mark records synced; their request goes again and D1's ledger recognises it");
                        false
                    }
                }
            });
            if pipelined {
                st.marking = Some(marking);
            } else {
                let _ = marking.await;
            }
            if st.plan.is_empty() {
                st.blocked.clear();
                st.batch = None;
                st.prefetched = next;
            }
            TickEnd::Progress { acked: true }
        }
        Err(TargetError::Rejected(message)) => {
            lock(&inner.live).requests_failed += 1;
            // The batch read ahead is not sent: nothing of it was written but the claimed mark.
            drop(next);
            if crate::target::is_schema_error(&message) {
                match missing_migrations(inner).await {
                    Ok(missing) if !missing.is_empty() => {
                        // Not the records' fault: D1 is behind the app's migrations. The
                        // request waits, unchanged and uncharged, until they are applied.
                        seg.request = Some(request);
                        st.plan.push_front(seg);
                        return TickEnd::Failed(TargetError::MissingMigrations(missing));
                    }
                    Ok(_) => {}
                    Err(end) => {
                        seg.request = Some(request);
                        st.plan.push_front(seg);
                        return end;
                    }
                }
            }
            // D1 rolled the whole request back: it is certainly not applied.
            if let Err(e) = db(inner, move |o, c| o.unjournal(c, id.seq)).await {
                return local(e);
            }
            if seg.changes.len() == 1 {
                if crate::target::is_foreign_key_error(&message) {
                    match supersede_under_deleted_parent(inner, &seg.changes[0]).await {
                        Ok(true) => return TickEnd::Progress { acked: true },
                        Ok(false) => {}
                        Err(end) => {
                            if matches!(end, TickEnd::Failed(_)) {
                                // Not known yet: the record goes again, uncharged.
                                st.plan.push_front(seg);
                            }
                            return end;
                        }
                    }
                }
                if let Err(e) = charge(inner, st, &seg.changes[0], message).await {
                    return local(e);
                }
            } else {
                debug!(records = seg.changes.len(), error = %message, "request refused; splitting it to find the records at fault");
                // Halves of the queue's order: a request may apply its changes in another
                // order (see `pack_arranged`), but only the queue's order can be cut anywhere
                // (a child sent in a request before its parent's would fail its foreign key).
                let mut left = seg.changes;
                left.sort_unstable_by_key(|c| c.id);
                let right = left.split_off(left.len() / 2);
                for half in [right, left] {
                    st.plan.push_front(Segment {
                        changes: half,
                        request: None,
                        id: None,
                    });
                }
            }
            TickEnd::Progress { acked: false }
        }
        Err(e) => {
            lock(&inner.live).requests_failed += 1;
            // The batch read ahead is not sent: nothing of it was written but the claimed mark.
            drop(next);
            seg.request = Some(request);
            st.plan.push_front(seg);
            TickEnd::Failed(e)
        }
    }
}

/// Journals the first request of a batch read ahead, once the batch before it is applied: now,
/// before that batch's acknowledgement takes the queue's thread, so that the next request is
/// not held up behind it. If it cannot be written, the tick journals it before sending.
async fn journal_first(inner: &Arc<Inner>, next: &mut Next) {
    let Some(first) = next.segments.first_mut() else {
        return;
    };
    let Some(ids) = first.request.as_ref().map(|r| r.ids.clone()) else {
        return;
    };
    if first.id.is_some() {
        return;
    }
    match db(inner, move |o, c| o.journal(c, &ids)).await {
        Ok(id) => first.id = Some(id),
        Err(e) => warn!(error = %e, "could not journal the next request yet"),
    }
}

/// A record the target refused for its foreign key: when the target recorded a delete of a
/// parent row it needs and lacks (another device deleted it), the record can never apply and
/// is superseded by that delete, as the cascade would have taken it. `true` when so: marked
/// synced and logged as a conflict.
async fn supersede_under_deleted_parent(inner: &Arc<Inner>, c: &Change) -> Result<bool, TickEnd> {
    for (_, parent, key) in inner.deps.parents(c) {
        let Some(def) = inner.registry.get(&parent) else {
            continue;
        };
        let Some(held) = inner
            .target
            .deleted(def, &key)
            .await
            .map_err(TickEnd::Failed)?
        else {
            continue;
        };
        let stale = vec![Stale {
            id: c.id,
            sent: c.version,
            held: Some(held),
            parent: Some(format!("{parent} {key}")),
        }];
        let (ids, keep) = ([c.id], inner.config.purge_keep);
        db(inner, move |o, conn| {
            o.acknowledge(conn, &ids, None, &stale, keep)
        })
        .await
        .map_err(local)?;
        let mut live = lock(&inner.live);
        live.records_synced += 1;
        live.records_superseded += 1;
        return Ok(true);
    }
    Ok(false)
}

/// The records the version guard refused, with the versions they carried, for the conflicts
/// log.
fn stale_records(changes: &[Change], superseded: &[crate::ledger::Superseded]) -> Vec<Stale> {
    if superseded.is_empty() {
        return Vec::new();
    }
    let sent: HashMap<i64, i64> = changes
        .iter()
        .filter_map(|c| Some((c.id, c.version?)))
        .collect();
    superseded
        .iter()
        .map(|s| Stale {
            id: s.id,
            sent: sent.get(&s.id).copied(),
            held: s.held,
            parent: None,
        })
        .collect()
}

/// Renews the lease before a request of a plan made earlier (one small write, beside a
/// request's round trip). A lease another worker held meanwhile means this plan's records may
/// have been sent: the plan is dropped and the journal is read again.
pub(super) async fn renew(inner: &Arc<Inner>, st: &mut ShipState) -> Option<TickEnd> {
    let (owner, lease) = (inner.owner.clone(), inner.config.lease);
    let until = now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
    match db(inner, move |o, c| o.acquire(c, &owner, now_ms(), until)).await {
        Ok(Ok(true)) => None,
        Ok(Ok(false)) if st.plan.is_empty() => None,
        Ok(Ok(false)) => {
            // Another worker held the queue meanwhile and may have sent this plan's records:
            // plan again from the journal and the queue as they are now.
            debug!("another worker held the queue meanwhile; planning again");
            st.forget();
            Some(TickEnd::Progress { acked: false })
        }
        Ok(Err(holder)) => {
            st.forget();
            Some(TickEnd::Standby(holder))
        }
        Err(e) => Some(local(e)),
    }
}

/// Leaves out of a segment (not yet sent) the changes of rows held back during this plan, and
/// holds back, uncharged, the changes whose parent row is held. `false` when nothing is left.
async fn hold_blocked(inner: &Arc<Inner>, st: &mut ShipState, seg: &mut Segment) -> Result<bool> {
    let (empty, recheck) = (HashMap::new(), recheck_at(inner));
    let mut held = Vec::new();
    let mut keep = Vec::with_capacity(seg.changes.len());
    for c in std::mem::take(&mut seg.changes) {
        let row = change::row_digest(&c.table.name, &c.row_key);
        match prepare::place(&c, row, &inner.deps, &empty, &mut st.blocked, recheck) {
            prepare::Place::Send => keep.push(c),
            prepare::Place::Wait => {}
            prepare::Place::Hold(h) => held.push(h),
        }
    }
    if !held.is_empty() {
        let n = held.len() as u64;
        db(inner, move |o, c| o.hold(c, &held)).await?;
        lock(&inner.live).records_held += n;
    }
    seg.request = None;
    seg.changes = keep;
    Ok(!seg.changes.is_empty())
}

/// Charges a record the target refused on its own: an attempt and a backoff, or the dead
/// letter at the maximum. Its row, and the rows that depend on it, wait for the rest of
/// this plan.
async fn charge(inner: &Arc<Inner>, st: &mut ShipState, c: &Change, message: String) -> Result<()> {
    let attempts = c.attempts.saturating_add(1);
    let delay = inner.config.backoff.delay(attempts, &mut rand::rng(), None);
    let next_at = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
    let dead = attempts >= inner.config.max_attempts;
    if dead {
        warn!(id = c.id, table = %c.table.name, attempts, error = %message, "dead-lettering a record the target keeps refusing");
    } else {
        debug!(id = c.id, table = %c.table.name, attempts, error = %message, "record refused; retrying later");
    }
    st.blocked.insert(
        change::row_digest(&c.table.name, &c.row_key),
        Waiting {
            first_id: c.id,
            due: if dead { recheck_at(inner) } else { next_at },
        },
    );
    let failures = vec![Setback {
        id: c.id,
        reason: message.clone(),
        until: next_at,
    }];
    let max = inner.config.max_attempts;
    db(inner, move |o, conn| o.charge(conn, &failures, max)).await?;
    let mut live = lock(&inner.live);
    live.last_error = Some(message);
    if dead {
        live.records_failed += 1;
    }
    Ok(())
}

/// The migrations the application's file records and the target lacks (none when the target
/// cannot tell, or the app's file records none).
async fn missing_migrations(inner: &Arc<Inner>) -> Result<Vec<String>, TickEnd> {
    let table = inner.config.migrations_table.clone();
    let local = db(inner, move |_, c| {
        crate::migrate::recorded_local(c, &table).map(|r| r.names)
    })
    .await
    .map_err(TickEnd::Local)?;
    if local.is_empty() {
        return Ok(Vec::new());
    }
    let Some(remote) = inner
        .target
        .applied_migrations(&inner.config.migrations_table)
        .await
        .map_err(TickEnd::Failed)?
    else {
        return Ok(Vec::new());
    };
    Ok(local.into_iter().filter(|n| !remote.contains(n)).collect())
}

/// When a record held behind a dead letter is looked at again.
pub(super) fn recheck_at(inner: &Inner) -> i64 {
    now_ms().saturating_add(i64::try_from(inner.config.backoff.cap.as_millis()).unwrap_or(i64::MAX))
}
