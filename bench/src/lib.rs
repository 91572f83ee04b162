//! cutover's benchmark harness: a load generator with HDR percentiles ([`load`]: closed loop,
//! and open loop without coordinated omission), its own backend process ([`backend`]), the
//! targets it measures ([`targets`]: direct, cutover with and without shadowing, a minimal
//! hyper proxy, nginx, HAProxy), the standard suite ([`suite`]: interleaved rounds, CPU per request, peak RSS,
//! upstream connections, noise checks) and its report ([`report`], [`charts`]: Markdown and
//! SVG). Scenarios: [`propagation`] (etcd write → traffic follows), [`shadow_cost`],
//! [`rollback_time`], [`judgement`] (false and missed rollbacks), [`soak`] (an hour of steady
//! load: resources stay flat) and [`routes_memory`] (memory per route with many routes).
//! `make bench` runs the suite and writes `BENCHMARKS.md`; see `cutover-bench --help`.

pub mod backend;
pub mod charts;
pub mod cli;
pub mod floor;
pub mod judgement;
pub mod load;
pub mod profile;
pub mod propagation;
pub mod protocols;
pub mod report;
pub mod rollback_time;
pub mod routes_memory;
pub mod shadow_cost;
pub mod soak;
pub mod suite;
pub mod sys;
pub mod targets;
pub mod ui;

pub use load::{run_closed_loop, run_open_loop, ClosedLoop, OpenLoop, Report};
