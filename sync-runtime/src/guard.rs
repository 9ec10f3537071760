//! Locking a mutex whatever happened to its last holder.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`. A holder that panicked leaves the data as it was (a connection, counters), which
/// is still usable here, so the poison is ignored rather than spread.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
