//! The cutover data plane on hyper: workers that route, split legacy/new by weight, shadow and
//! compare, and record per-backend statistics; plus the admin API and `cutover serve`/`demo`.
//! Start at [`server::serve`]; the request phases are charted in `docs/architecture.md`.

pub mod admin;
pub mod body;
pub mod compare;
pub mod demo;
pub mod grpc;
pub mod h1;
pub mod handover;
pub mod hygiene;
pub mod listen;
pub mod pipeline;
pub mod resolve;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod split;
pub mod state;
pub mod stats;
pub mod telemetry;
pub mod timeline;
pub mod tls;
pub mod tunnel;
pub mod upstream;

/// What the in-crate property tests share (`hygiene::fuzz`, `h1::fuzz`, `h1::server::fuzz`).
#[cfg(test)]
pub(crate) mod fuzzing {
    /// proptest's defaults (`PROPTEST_CASES` honoured: `make fuzz` runs more), with failures
    /// not persisted to files (a regression found becomes a plain test beside its property).
    pub(crate) fn cases() -> proptest::prelude::ProptestConfig {
        proptest::prelude::ProptestConfig {
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        }
    }
}
