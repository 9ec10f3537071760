//! Shared helpers of d1-sync's cross-crate tests: the local D1 harness ([`d1peer`]) and the
//! targets the conformance tests run against ([`targets`]).

pub mod d1peer;
pub mod fixture;
pub mod fleet;
pub mod proxy;
pub mod targets;
