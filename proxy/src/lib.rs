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
