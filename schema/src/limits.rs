//! D1's documented limits (<https://developers.cloudflare.com/d1/platform/limits/>).
//!
//! Local D1 enforces them itself. The derive rejects tables wider than the column and parameter
//! limits at compile time, and the runtime dead-letters values and rows over the size limit.
//! D1's limit of 100,000 bytes of SQL text per statement needs no check: rows travel as one
//! JSON parameter, so statement text stays a few hundred bytes.

/// Bound parameters in one statement (`?1` … `?100`).
pub const MAX_BOUND_PARAMETERS: usize = 100;
/// Bytes in one string, blob or row.
pub const MAX_VALUE_BYTES: usize = 2_000_000;
/// Columns in one table.
pub const MAX_COLUMNS: usize = 100;
