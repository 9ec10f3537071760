//! Reading the next batch: claimed, sorted, packed once into requests, its first request
//! journaled, in one call on the queue connection; and, in the background loop, read ahead
//! while the last request of the batch before it is at the target.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::task::AbortOnDropHandle;
use tracing::warn;

use super::prepare::{self, Sorted, Waiting};
use super::ship::{recheck_at, Segment};
use super::{db, Inner};
use crate::change::{self, Change};
use crate::commute::Commute;
use crate::error::Result;
use crate::outbox::{now_ms, Claim, Claimant, Outbox};
use crate::pack::pack_arranged;
use crate::registry::Definitions;

/// A batch read, sorted and packed, its first request journaled.
pub(super) struct Next {
    pub(super) sorted: Sorted,
    pub(super) segments: Vec<Segment>,
}

/// What reading a batch needs, taken from the worker to move onto the queue connection's
/// thread.
pub(super) struct Reading {
    pub(super) owner: String,
    pub(super) lease: std::time::Duration,
    pub(super) limit: usize,
    pub(super) registry: crate::Registry,
    pub(super) deps: Arc<prepare::Deps>,
    pub(super) commute: Arc<Commute>,
    pub(super) limits: crate::pack::PackLimits,
    pub(super) with_sql: bool,
    pub(super) recheck: i64,
}

impl Reading {
    pub(super) fn of(inner: &Inner) -> Reading {
        let limits = inner.limits();
        Reading {
            owner: inner.owner.clone(),
            lease: inner.config.lease,
            // No more than the target takes in one request: the rest would wait in memory.
            limit: inner
                .config
                .batch_size
                .min(limits.max_rows_per_request)
                .max(1),
            registry: inner.registry.clone(),
            deps: inner.deps.clone(),
            commute: inner.commute.clone(),
            limits,
            with_sql: inner.target.wants_statements(),
            recheck: recheck_at(inner),
        }
    }
}

/// Reads, sorts and packs a batch, and with `journal` journals its first request (one call
/// on the queue connection). `None` when nothing is left to send or hold.
pub(super) fn read_next(
    o: &Outbox,
    c: &mut rusqlite::Connection,
    raw: Vec<change::RawRecord>,
    r: &Reading,
    journal: bool,
) -> Result<Option<Next>> {
    let waiting: HashMap<u64, Waiting> = if r.deps.is_empty() {
        HashMap::new()
    } else {
        o.waiting_rows(c, now_ms())?
            .into_iter()
            .map(|(row, (first_id, due))| (row, Waiting { first_id, due }))
            .collect()
    };
    let defs = Definitions::with_stored(&r.registry, o.definitions_of(c, &raw)?)?;
    let mut sorted = prepare::sort(raw, &defs, &r.deps, &waiting, r.recheck);
    let changes = std::mem::take(&mut sorted.changes);
    let mut segments = segments(changes, &r.limits, r.with_sql, &r.commute);
    if let Some(first) = segments.first_mut().filter(|_| journal) {
        if let Some(r) = &first.request {
            first.id = Some(o.journal(c, &r.ids)?);
        }
    }
    Ok(Some(Next { sorted, segments }))
}

/// Packs `changes` once into requests, one segment each, in order (inside a request, in the
/// order it applies them: see [`pack_arranged`]).
pub(super) fn segments(
    mut changes: Vec<Change>,
    limits: &crate::pack::PackLimits,
    with_sql: bool,
    commute: &Commute,
) -> Vec<Segment> {
    let requests = pack_arranged(&mut changes, limits, with_sql, commute);
    let mut it = changes.into_iter();
    requests
        .into_iter()
        .map(|r| Segment {
            changes: it.by_ref().take(r.range.len()).collect(),
            request: Some(r),
            id: None,
        })
        .collect()
}

/// Reads the next batch while the last request of this one is at the target: the previous
/// acknowledgement is awaited, the synced log trimmed, and what a fresh claim after this batch
/// would take once it is applied is read, sorted and packed. Its first request is journaled
/// only when it is sent (after this batch is applied), so a read-ahead dropped because this
/// batch failed leaves nothing behind: one left in the journal would go first after a
/// restart, ahead of this batch's records of the same rows.
pub(super) fn spawn_read_ahead(
    inner: &Arc<Inner>,
    previous: Option<JoinHandle<bool>>,
    cursor: i64,
) -> AbortOnDropHandle<Option<Next>> {
    let inner = inner.clone();
    // Aborted if the tick is dropped (the worker's task stopped mid-tick), so a read-ahead
    // never outlives the loop that would use it. Its own task: a target that works in place
    // (`block_in_place`) holds this task's thread.
    AbortOnDropHandle::new(tokio::spawn(async move {
        let inner = &inner;
        // Records whose acknowledgement could not be written are still pending below the
        // cursor, their request journaled: the journal goes first, not a read-ahead.
        if let Some(m) = previous {
            if !m.await.unwrap_or(false) {
                return None;
            }
        }
        let keep = inner.config.purge_keep;
        if let Err(e) = db(inner, move |o, c| o.purge(c, keep)).await {
            warn!(error = %e, "could not purge synced records");
        }
        let r = Reading::of(inner);
        db(inner, move |o, c| {
            let who = Claimant {
                owner: &r.owner,
                now: now_ms(),
                lease: r.lease,
                limit: r.limit,
            };
            let (next, cut) = o.claim_after(c, &who, cursor)?;
            // A read-ahead cut short (at a row that waited) is dropped when less than half
            // full: the claim after this batch takes a full one, and requests stay large.
            match next {
                Claim::Records(raw) if !(raw.is_empty() || cut && raw.len() < r.limit / 2) => {
                    read_next(o, c, raw, &r, false)
                }
                _ => Ok(None),
            }
        })
        .await
        .ok()
        .flatten()
    }))
}
