//! What a config source publishes ([`ConfigState`]): the contract between the control plane,
//! which produces it, and the data plane, which builds its routing snapshot from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{RouteConfig, RouteId};

/// The routes of a state ([`ConfigState::routes`]): a persistent vector, so the next state after
/// a write to one route of 10,000 shares all but a path of 64-route chunks with this one — a
/// clone is one reference count, a change copies O(log n), and dropping the old state frees
/// only what it does not share.
pub type RouteList = imbl::Vector<RouteConfig>;

/// Per route id, the revision its weights were last written at
/// ([`ConfigState::weights_revisions`]); persistent like [`RouteList`].
pub type WeightsRevisions = imbl::HashMap<RouteId, i64>;

/// What a config source says right now: the last valid routes (with their weights) and the last
/// rejections, if recent inputs were invalid.
///
/// A rejected input never replaces `routes`: the last valid state stays live.
#[derive(Debug, Clone)]
pub struct ConfigState {
    /// Increases with every applied (valid and different) change. The file source counts from
    /// 1; the etcd source uses etcd's revision, and 0 while serving a cold-start fallback.
    pub revision: u64,
    /// The routes of the last valid input, in a stable order.
    pub routes: RouteList,
    /// Per route id, the revision its weights were last written at: the etcd mod_revision of
    /// the `weights` key (0 when the key is missing); for the file source, the revision at which
    /// the route's weights last changed. A local override (a rollback decided before etcd
    /// heard of it, or an in-process ramp step) holds until this moves past it.
    pub weights_revisions: WeightsRevisions,
    /// Why the latest input of the whole source was rejected (the file source); `None` once a
    /// valid input has been applied since.
    pub last_error: Option<Arc<str>>,
    /// Why the latest value of one route's key was rejected (the etcd source), by route id.
    pub route_errors: Arc<BTreeMap<String, Arc<str>>>,
    /// How many inputs have been rejected since start (monotonic).
    pub errors_total: u64,
    /// A valid routing state exists. `false` only when nothing valid was ever loaded (etcd
    /// unreachable at cold start with no last-known-good and no fallback routes): the proxy is
    /// then not ready and answers 503 — it never serves an empty table as if it were valid.
    pub loaded: bool,
    /// Whether the source's connection is healthy, for sources that have one (etcd).
    pub connected: Option<bool>,
    /// Which routes changed since an earlier state, when the source knows (the etcd source
    /// after a watch event): the data plane then rebuilds those and shares the rest.
    pub delta: Option<Arc<Delta>>,
}

/// The only routes in which a state can differ from the state at `base_revision`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    /// The revision of the state it was made from.
    pub base_revision: u64,
    /// Changed, added or removed.
    pub routes: Vec<RouteId>,
}

impl ConfigState {
    /// The first state of a source, from routes that were already validated.
    pub fn initial(routes: Vec<RouteConfig>) -> Self {
        Self {
            revision: 1,
            weights_revisions: routes.iter().map(|r| (r.id.clone(), 1)).collect(),
            routes: routes.into_iter().collect(),
            last_error: None,
            route_errors: Arc::default(),
            errors_total: 0,
            loaded: true,
            connected: None,
            delta: None,
        }
    }

    /// The state after a valid input: a new revision when the routes changed, and the
    /// rejection cleared either way.
    #[must_use]
    pub fn applied(&self, routes: Vec<RouteConfig>) -> Self {
        let changed = !self.routes.iter().eq(routes.iter());
        let revision = if changed {
            self.revision + 1
        } else {
            self.revision
        };
        let weights_revisions = if changed {
            let before: BTreeMap<&str, &RouteConfig> =
                self.routes.iter().map(|r| (r.id.as_str(), r)).collect();
            let revisions = routes
                .iter()
                .map(|r| {
                    let same = before
                        .get(r.id.as_str())
                        .is_some_and(|b| b.weights == r.weights);
                    let rev = match self.weights_revisions.get(&r.id) {
                        Some(&rev) if same => rev,
                        _ => revision as i64,
                    };
                    (r.id.clone(), rev)
                })
                .collect();
            revisions
        } else {
            self.weights_revisions.clone()
        };
        Self {
            revision,
            weights_revisions,
            routes: if changed {
                routes.into_iter().collect()
            } else {
                self.routes.clone()
            },
            last_error: None,
            delta: None,
            ..self.clone()
        }
    }

    /// The state after an invalid input: same routes and revision, the reason recorded.
    #[must_use]
    pub fn rejected(&self, reason: impl Into<Arc<str>>) -> Self {
        Self {
            last_error: Some(reason.into()),
            errors_total: self.errors_total + 1,
            delta: None,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(toml: &str) -> Vec<RouteConfig> {
        crate::parse_config_toml(toml).unwrap().routes
    }

    /// One route at 90/10.
    const ONE: &str = r#"
        [[routes]]
        id = "orders"
        match = { path_prefix = "/" }
        legacy = { endpoints = ["127.0.0.1:9001"] }
        new = { endpoints = ["127.0.0.1:9002"] }
        weights = { legacy = 90, new = 10 }
    "#;

    #[test]
    fn applied_bumps_revision_only_on_change() {
        let s = ConfigState::initial(routes(ONE));
        let same = s.applied(routes(ONE));
        assert_eq!(same.revision, 1);
        let changed = s.applied(routes(&ONE.replace("new = 10", "new = 20")));
        assert_eq!(changed.revision, 2);
        assert_eq!(changed.routes[0].weights.new, 20.0);
        assert_eq!(changed.weights_revisions["orders"], 2);
        let spec_only = changed.applied(routes(
            &ONE.replace("new = 10", "new = 20")
                .replace("path_prefix = \"/\"", "path_prefix = \"/o\""),
        ));
        assert_eq!(spec_only.revision, 3);
        assert_eq!(
            spec_only.weights_revisions["orders"], 2,
            "a spec change is not a weights write"
        );
    }

    #[test]
    fn rejected_keeps_routes_and_counts() {
        let s = ConfigState::initial(routes(ONE));
        let r = s.rejected("routes[0].weights: legacy + new must be > 0");
        assert_eq!(r.revision, 1);
        assert_eq!(r.errors_total, 1);
        assert_eq!(r.routes, s.routes);
        assert!(r.last_error.is_some());
        let ok = r.applied(routes(ONE));
        assert!(ok.last_error.is_none());
        assert_eq!(ok.errors_total, 1);
    }
}
