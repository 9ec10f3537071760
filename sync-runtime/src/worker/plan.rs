//! Making a plan, the requests a tick sends next: the batch read ahead, else the journal's
//! requests (sent again first, unchanged), else a fresh claim.

use std::sync::Arc;

use tracing::{debug, warn};

use super::read::{read_next, Next, Reading};
use super::ship::{renew, BatchInfo, Segment, ShipState, TickEnd};
use super::{db, lock, Inner};
use crate::change::{self, Change};
use crate::error::Result;
use crate::outbox::{now_ms, Claim};
use crate::registry::Definitions;

/// Makes a plan: the batch read ahead, else the journal's requests (sent again first), else
/// a fresh claim. `Some` ends the tick.
pub(super) async fn plan(inner: &Arc<Inner>, st: &mut ShipState) -> Result<Option<TickEnd>> {
    if let Some(next) = st.prefetched.take() {
        return adopt(inner, st, next).await;
    }
    // Records of the last request stay pending until their mark is written.
    st.settle().await;
    let registry = inner.registry.clone();
    let resumed = db(inner, move |o, c| {
        let mut out = Vec::new();
        for (id, ids) in o.journaled(c)? {
            let raw = o.records(c, &ids)?;
            let defs = Definitions::with_stored(&registry, o.definitions_of(c, &raw)?)?;
            let mut cache = change::ColumnsCache::default();
            let changes: Vec<Change> = raw
                .iter()
                .filter_map(|r| change::check_with(r, &defs, &mut cache).ok())
                .collect();
            if changes.is_empty() {
                o.unjournal(c, id.seq)?;
            } else {
                out.push((id, changes));
            }
        }
        Ok(out)
    })
    .await?;
    if !resumed.is_empty() {
        debug!(
            requests = resumed.len(),
            "sending again the requests journaled as in flight"
        );
        st.forget();
        if let Some(end) = renew(inner, st).await {
            return Ok(Some(end));
        }
        st.plan
            .extend(resumed.into_iter().map(|(id, changes)| Segment {
                changes,
                request: None,
                id: Some(id),
            }));
        return Ok(None);
    }
    let r = Reading::of(inner);
    let claimed = db(inner, move |o, c| {
        match o.claim(c, &r.owner, now_ms(), r.lease, r.limit)? {
            Claim::HeldBy(h) => Ok(Err(h)),
            Claim::Records(raw) if raw.is_empty() => Ok(Ok(None)),
            Claim::Records(raw) => read_next(o, c, raw, &r, true).map(Ok),
        }
    })
    .await?;
    match claimed {
        Err(holder) => Ok(Some(TickEnd::Standby(holder))),
        Ok(None) => Ok(Some(TickEnd::Idle)),
        Ok(Some(next)) => adopt(inner, st, next).await,
    }
}

/// Takes a read batch as the plan, after writing its dead letters and held records.
async fn adopt(inner: &Arc<Inner>, st: &mut ShipState, next: Next) -> Result<Option<TickEnd>> {
    let Next { sorted, segments } = next;
    debug!(
        records = segments.iter().map(|s| s.changes.len()).sum::<usize>(),
        requests = segments.len(),
        "claimed"
    );
    let wrote = !sorted.invalid.is_empty() || !sorted.held.is_empty();
    if wrote {
        for r in &sorted.invalid {
            warn!(id = r.id, table = %r.table, reason = %r.reason, "dead-lettering a record that can never be sent");
        }
        let (invalid, held) = (sorted.invalid.clone(), sorted.held.clone());
        db(inner, move |o, c| {
            o.fail(c, &invalid)?;
            o.hold(c, &held)
        })
        .await?;
        let mut live = lock(&inner.live);
        live.records_failed += sorted.invalid.len() as u64;
        live.records_held += sorted.held.len() as u64;
        if let Some(r) = sorted.invalid.last() {
            live.last_error = Some(r.reason.clone());
        }
    }
    st.blocked.clear();
    st.batch = Some(BatchInfo {
        cursor: sorted.cursor,
    });
    st.plan.extend(segments);
    if st.plan.is_empty() {
        st.batch = None;
        // Records only held back (their parents wait) are not progress: the worker waits for
        // its next poll rather than claiming again at once.
        return Ok(Some(if sorted.invalid.is_empty() {
            TickEnd::Idle
        } else {
            TickEnd::Progress { acked: false }
        }));
    }
    Ok(None)
}
