//! The cutover data plane: one pingora `ProxyHttp` that routes, splits legacy/new by weight and
//! records per-backend statistics, plus the admin API and `cutover serve`/`demo`.
//! Start at [`server::serve`]; the request phases are charted in `docs/architecture.md`.

pub mod admin;
pub mod compare;
pub mod connections;
pub mod demo;
pub mod hygiene;
pub mod routing;
pub mod server;
pub mod service;
pub mod shadow;
pub mod split;
pub mod state;
pub mod stats;
pub mod telemetry;
