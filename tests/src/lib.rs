//! Shared helpers of d1-sync's cross-crate tests.
