//! The contract between the data plane and the rollback/ramp controller: what the controller
//! reads from the data plane ([`DataPlane`], [`LiveRoute`], [`crate::window::WindowStats`]) and
//! what it puts in effect there ([`Override`], [`RollbackRecord`]). It lives in the model so
//! that the data plane's request path imports nothing from the control plane.

use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::window::WindowStats;
use crate::{Phase, RouteId, RouteSpec, Weights};

/// Why and when a route was rolled back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRecord {
    /// RFC 3339 with milliseconds, UTC.
    pub at: String,
    /// The rule (`error_rate`, `latency_p99`, `divergence`) or `operator`.
    pub rule: String,
    /// Why, with the numbers (`new error rate 7.9% > 5.0% (n=1843) for 60s`).
    pub reason: String,
    /// The instance (or operator) that decided.
    pub by: String,
    /// The numbers the rule saw (automatic rollbacks): rates, counts, test statistic, window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
    /// `shadow` when the shadow-phase gate breached (SPEC §11): the weights were left as they
    /// were, and `resume` and ramp starts are refused until an operator writes the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Phase>,
}

impl RollbackRecord {
    /// Whether this is a shadow-phase gate's breach (weights kept, ramp blocked).
    pub fn is_gate(&self) -> bool {
        self.gate.is_some()
    }
}

/// Now as RFC 3339 with milliseconds (`2026-11-21T14:03:07.120Z`).
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A route as the data plane applies it right now.
#[derive(Debug, Clone)]
pub struct LiveRoute {
    /// The route's id.
    pub id: RouteId,
    /// What the route is.
    pub spec: Arc<RouteSpec>,
    /// The weights in effect (the source's, or an override's).
    pub weights: Weights,
    /// The source's weights revision ([`crate::ConfigState::weights_revisions`]).
    pub weights_revision: i64,
    /// The override in effect, if any.
    pub overridden: Option<Override>,
    /// The evaluation window the data plane collects this route's statistics in: a new one
    /// starts with every change of the weights in effect or their revision.
    pub window: u64,
    /// The route has served a request since the proxy started (its window statistics exist):
    /// of 10,000 routes most may never have, and a tick skips them cheaply.
    pub traffic: bool,
}

/// Weights the controller put in effect ahead of the config source: a rollback decided before
/// etcd heard of it, or (without etcd) a ramp step or rollback. It holds until the source's
/// weights revision moves past `weights_revision` — the controller's own write landing, or an
/// operator's newer write, which wins.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The source's weights revision it overrides.
    pub weights_revision: i64,
    /// The weights in effect instead.
    pub weights: Weights,
    /// The phase it puts the route in (`rolled_back`, or what a ramp step implies).
    pub phase: Phase,
    /// The rollback's record, for a rollback.
    pub rollback: Option<RollbackRecord>,
    /// Which in-process operator write this is (the admin API without etcd, SPEC §10),
    /// numbered per process; 0 for the controller's own decisions. It is part of what starts
    /// an evaluation window, so an operator's write of equal weights starts a fresh one too
    /// (SPEC §11).
    pub write: u64,
}

impl Override {
    /// Whether the controller writes these weights to the source (a rollback, a ramp step), so
    /// the same weights arriving at a newer revision are its own write landing. A shadow-phase
    /// gate keeps the weights: any later write of them is an operator's, which ends it.
    pub fn writes_weights(&self) -> bool {
        !self.rollback.as_ref().is_some_and(RollbackRecord::is_gate)
    }
}

/// What the controller needs from the data plane.
pub trait DataPlane: Send + Sync + 'static {
    /// The live routes.
    fn routes(&self) -> Vec<LiveRoute>;
    /// One live route, by id.
    fn route(&self, id: &str) -> Option<LiveRoute> {
        self.routes().into_iter().find(|r| *r.id == *id)
    }
    /// The route's statistics of evaluation window `window` ([`LiveRoute::window`]) within
    /// the stats window: only requests that started under it. `None` for an unknown route, or
    /// one that never had traffic.
    fn window(&self, route: &str, window: u64) -> Option<WindowStats>;
    /// Put `o` in effect for `route` at once.
    fn set_override(&self, route: &str, o: Override);
    /// Count a rollback in `cutover_rollbacks_total{route,rule}`.
    fn count_rollback(&self, route: &str, rule: &str);
}
