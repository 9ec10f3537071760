//! D1's documented limits (<https://developers.cloudflare.com/d1/platform/limits/>).
//!
//! Local D1 enforces the first three itself; the derive rejects tables that cannot fit them at
//! compile time and the runtime packs requests so that no statement crosses them.

/// Bound parameters in one statement (`?1` … `?100`).
pub const MAX_BOUND_PARAMETERS: usize = 100;
/// Bytes of SQL text in one statement.
pub const MAX_SQL_BYTES: usize = 100_000;
/// Bytes in one string, blob or row.
pub const MAX_VALUE_BYTES: usize = 2_000_000;
/// Columns in one table.
pub const MAX_COLUMNS: usize = 100;
