//! What the data plane, the admin API and the control loop share: the one snapshot swap, the
//! telemetry, the fixed settings and the lifecycle flags.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use cutover_config::dataplane::{DataPlane, LiveRoute, Override};
use cutover_config::window::WindowStats;
use cutover_config::ConfigState;
use cutover_config::{Config, Phase, UnderscoreHeaders};
use tracing::info;

use crate::compare::ComparisonQueue;
use crate::hygiene::Limits;
use crate::resolve::Resolver;
use crate::routing::Snapshot;
use crate::stats::WindowShape;
use crate::telemetry::Telemetry;

/// Settings fixed at start (a change needs a restart).
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: Limits,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub write_timeout: Duration,
    /// `Upgrade` protocols relayed as tunnels, lowercased (SPEC §8).
    pub upgrades: Vec<String>,
    pub tunnel_idle_timeout: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        let p = &config.proxy;
        Settings {
            limits: Limits {
                max_header_bytes: p.max_header_bytes,
                max_headers: p.max_headers,
                max_uri_bytes: p.max_uri_bytes,
                max_body_bytes: p.max_body_bytes,
                reject_underscores: p.underscore_headers == UnderscoreHeaders::Reject,
            },
            connect_timeout: p.connect_timeout,
            upstream_timeout: p.upstream_timeout,
            upstream_idle_timeout: Duration::from_secs(60),
            body_read_timeout: p.body_read_timeout,
            write_timeout: p.write_timeout,
            upgrades: p.upgrades.clone(),
            tunnel_idle_timeout: p.tunnel_idle_timeout,
        }
    }
}

/// State shared by the data plane, the admin API and the control loop.
#[derive(Debug)]
pub struct Shared {
    /// The whole routing state: ONE swap. Requests load it once.
    pub snapshot: ArcSwap<Snapshot>,
    pub telemetry: Telemetry,
    pub settings: Settings,
    /// The queue shadow comparisons run from, one for the process (each worker has its own
    /// shadow pool: [`crate::pipeline::Worker::shadow`]).
    pub comparisons: ComparisonQueue,
    /// Backend names to addresses: looked up before a snapshot is built, refreshed in place.
    pub resolver: Arc<Resolver>,
    /// Requests being processed right now (for draining).
    inflight: Arc<AtomicUsize>,
    /// A valid config is loaded and the listeners accept connections.
    pub ready: AtomicBool,
    /// SIGTERM/SIGINT received: stop taking new work, finish what is in flight.
    pub draining: AtomicBool,
    /// The last state the source published and the controller's overrides on top of it; the
    /// snapshot is always built from both, under this lock.
    source: Mutex<Source>,
}

#[derive(Debug)]
struct Source {
    state: Arc<ConfigState>,
    overrides: HashMap<String, Override>,
}

impl Shared {
    pub fn new(config: &Config, state: &ConfigState) -> Self {
        let telemetry = Telemetry::new(WindowShape {
            window: config.stats.window,
            slices: config.stats.slices,
        });
        let resolver = Arc::new(Resolver::default());
        resolver.prepare_blocking(state);
        let snapshot = Snapshot::build(state, &telemetry, &resolver, &HashMap::new(), None);
        telemetry.metrics.config_revision.set(state.revision as i64);
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            telemetry,
            settings: Settings::from_config(config),
            comparisons: ComparisonQueue::start(config.proxy.threads),
            resolver,
            inflight: Arc::new(AtomicUsize::new(0)),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            source: Mutex::new(Source {
                state: Arc::new(state.clone()),
                overrides: HashMap::new(),
            }),
        }
    }

    /// Apply a state published by the config source: build the next snapshot off the hot path
    /// and swap it in (one store). Rejections are counted.
    pub fn apply(&self, state: &ConfigState) {
        let metrics = &self.telemetry.metrics;
        metrics
            .etcd_connected
            .set(i64::from(state.connected.unwrap_or(false)));
        let new_errors = state
            .errors_total
            .saturating_sub(metrics.config_errors.get());
        metrics.config_errors.inc_by(new_errors);
        let mut source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot.load();
        if state.revision < current.revision {
            // Never go back to an older revision.
            return;
        }
        // Unchanged only when the routes are the ones applied: a source that published new
        // routes at the revision already live (the etcd source did, when a progress
        // notification's older revision came last in a batch) must not be ignored. Shared
        // trees compare by pointer; a small table (inline, never pointer-equal) by value.
        let (routes, revisions) = (&source.state.routes, &source.state.weights_revisions);
        let unchanged = state.revision == current.revision
            && (state.routes.ptr_eq(routes) || state.routes == *routes)
            && (state.weights_revisions.ptr_eq(revisions) || state.weights_revisions == *revisions)
            && state.loaded == current.loaded
            && state.last_error == current.last_error
            && state.route_errors == current.route_errors;
        if unchanged {
            return;
        }
        // An override holds until the source's weights move past the revision it overrode:
        // the controller's own write landed, or an operator's newer write wins.
        // A rollback whose own write landed (the source now has its weights) stays shown as
        // `rolled_back` until the next write of the weights, as the etcd status does. A
        // shadow-phase gate writes no weights: any newer write of them ends it.
        source.overrides.retain(|id, o| {
            let Some(&rev) = state.weights_revisions.get(id.as_str()) else {
                return false;
            };
            if rev <= o.weights_revision {
                return true;
            }
            let landed = o.phase == Phase::RolledBack
                && o.writes_weights()
                && state
                    .routes
                    .iter()
                    .any(|r| r.id.as_str() == id && r.weights == o.weights);
            if landed {
                o.weights_revision = rev;
            } else {
                info!(route = %id, "override ends: the source's weights moved past it");
            }
            landed
        });
        let next = Snapshot::build(
            state,
            &self.telemetry,
            &self.resolver,
            &source.overrides,
            Some(&current),
        );
        metrics.config_revision.set(next.revision as i64);
        if next.revision != current.revision {
            info!(
                revision = next.revision,
                routes = next.routes.len(),
                "routing snapshot swapped"
            );
        }
        self.snapshot.store(Arc::new(next));
        // The state it replaces is dropped once the new snapshot serves (10,000 routes take
        // a while to let go of).
        let _replaced = std::mem::replace(&mut source.state, Arc::new(state.clone()));
    }

    /// Put `o` in effect for `route` at once: the next request already uses its weights.
    pub fn set_override(&self, route: &str, o: Override) {
        let mut source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        let current_rev = source.state.weights_revisions.get(route).copied();
        if current_rev.is_none_or(|rev| rev > o.weights_revision) {
            // The source already moved on: the decision was about weights no longer live.
            return;
        }
        source.overrides.insert(route.to_string(), o);
        let current = self.snapshot.load();
        let next = Snapshot::build(
            &source.state,
            &self.telemetry,
            &self.resolver,
            &source.overrides,
            Some(&current),
        );
        self.snapshot.store(Arc::new(next));
    }

    /// Whether the process should receive traffic: a valid config is loaded, the listeners
    /// accept connections, and it is not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && self.snapshot.load().loaded
    }

    pub fn inflight_guard(&self) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(self.inflight.clone())
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

/// What the controller sees of a route of the snapshot.
fn live_route(r: &Arc<crate::routing::Route>) -> LiveRoute {
    LiveRoute {
        id: r.id.clone(),
        spec: r.spec.clone(),
        weights: r.weights,
        weights_revision: r.weights_revision,
        overridden: r.overridden.clone(),
        window: r.window,
        traffic: r.telemetry.traffic_if_any().is_some(),
    }
}

impl DataPlane for Shared {
    fn routes(&self) -> Vec<LiveRoute> {
        self.snapshot.load().routes.iter().map(live_route).collect()
    }

    fn route(&self, id: &str) -> Option<LiveRoute> {
        self.snapshot.load().route(id).map(live_route)
    }

    fn window(&self, route: &str, window: u64) -> Option<WindowStats> {
        let snapshot = self.snapshot.load();
        let r = snapshot.route(route)?;
        // A route that never had traffic has no statistics to judge (and making empty ones —
        // four latency histograms — for each of 10,000 idle routes every tick cost ~1 GB).
        r.telemetry.traffic_if_any()?;
        let learning = r.spec.compare.learn_noise_percent > 0.0;
        Some(
            r.telemetry
                .window_stats(std::time::Instant::now(), window, learning),
        )
    }

    fn set_override(&self, route: &str, o: Override) {
        Shared::set_override(self, route, o);
    }

    fn count_rollback(&self, route: &str, rule: &str) {
        self.telemetry.metrics.rollback(route, rule);
    }
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
        [[routes]]
        id = "orders"
        match = { path_prefix = "/" }
        legacy = { endpoints = ["127.0.0.1:9001"] }
        new = { endpoints = ["127.0.0.1:9002"] }
        weights = { legacy = 90, new = 10 }
    "#;

    #[test]
    fn apply_swaps_forward_counts_rejections_and_never_goes_back() {
        let config = cutover_config::parse_config_toml(ONE).unwrap();
        let v1 = ConfigState::initial(config.routes.clone());
        let shared = Shared::new(&config, &v1);
        let v2 = v1.applied(
            cutover_config::parse_config_toml(&ONE.replace("new = 10", "new = 40"))
                .unwrap()
                .routes,
        );
        shared.apply(&v2);
        assert_eq!(shared.snapshot.load().revision, 2);
        assert_eq!(shared.snapshot.load().routes[0].weights.new, 40.0);

        let rejected = v2.rejected("routes[0].weights: legacy + new must be > 0");
        shared.apply(&rejected);
        shared.apply(&rejected);
        let live = shared.snapshot.load();
        assert_eq!(live.revision, 2, "a rejection keeps the live routes");
        assert_eq!(live.routes[0].weights.new, 40.0);
        assert!(live.last_error.is_some());
        assert_eq!(
            shared.telemetry.metrics.config_errors.get(),
            1,
            "counted once"
        );

        shared.apply(&v1);
        assert_eq!(
            shared.snapshot.load().revision,
            2,
            "an older revision is never applied"
        );

        // Other routes at the revision already live are applied, not taken for no change.
        shared.apply(&v2);
        assert!(shared.snapshot.load().last_error.is_none());
        let mut same_revision = v2.applied(
            cutover_config::parse_config_toml(&ONE.replace("new = 10", "new = 70"))
                .unwrap()
                .routes,
        );
        same_revision.revision = v2.revision;
        shared.apply(&same_revision);
        assert_eq!(shared.snapshot.load().routes[0].weights.new, 70.0);
        assert_eq!(shared.telemetry.metrics.config_revision.get(), 2);
    }

    #[test]
    fn an_override_holds_until_the_source_moves_past_it() {
        let config = cutover_config::parse_config_toml(ONE).unwrap();
        let v1 = ConfigState::initial(config.routes.clone());
        let shared = Shared::new(&config, &v1);
        let rolled_back = Override {
            weights_revision: 1,
            weights: shared.snapshot.load().routes[0].weights.rolled_back(),
            phase: Phase::RolledBack,
            rollback: None,
            write: 0,
        };
        shared.set_override("orders", rolled_back.clone());
        let live = shared.snapshot.load();
        assert_eq!(live.routes[0].weights.new, 0.0, "in effect at once");
        assert_eq!(
            live.routes[0].overridden.as_ref().unwrap().phase,
            Phase::RolledBack
        );
        assert_eq!(live.revision, 1, "same source revision");

        // A rejected input does not end it.
        shared.apply(&v1.rejected("bad"));
        assert_eq!(shared.snapshot.load().routes[0].weights.new, 0.0);

        // A spec-only change keeps the weights revision: still overridden.
        let spec_only = v1.applied(
            cutover_config::parse_config_toml(&ONE.replace("9001", "9003"))
                .unwrap()
                .routes,
        );
        assert_eq!(spec_only.weights_revisions["orders"], 1);
        shared.apply(&spec_only);
        assert_eq!(shared.snapshot.load().routes[0].weights.new, 0.0);

        // The operator's newer weights win.
        let operator = spec_only.applied(
            cutover_config::parse_config_toml(
                &ONE.replace("9001", "9003").replace("new = 10", "new = 30"),
            )
            .unwrap()
            .routes,
        );
        shared.apply(&operator);
        let live = shared.snapshot.load();
        assert_eq!(live.routes[0].weights.new, 30.0);
        assert!(live.routes[0].overridden.is_none());

        // A decision about weights no longer live is ignored.
        shared.set_override("orders", rolled_back);
        assert_eq!(shared.snapshot.load().routes[0].weights.new, 30.0);
    }

    #[test]
    fn a_landed_rollback_stays_shown_until_the_next_write() {
        let config = cutover_config::parse_config_toml(ONE).unwrap();
        let v1 = ConfigState::initial(config.routes.clone());
        let shared = Shared::new(&config, &v1);
        let to = shared.snapshot.load().routes[0].weights.rolled_back();
        shared.set_override(
            "orders",
            Override {
                weights_revision: 1,
                weights: to,
                phase: Phase::RolledBack,
                rollback: None,
                write: 0,
            },
        );
        // The rollback's own write lands: same weights at a newer revision.
        let landed = v1.applied(
            cutover_config::parse_config_toml(
                &ONE.replace("legacy = 90, new = 10", "legacy = 100, new = 0"),
            )
            .unwrap()
            .routes,
        );
        shared.apply(&landed);
        let route = &shared.snapshot.load().routes[0];
        assert_eq!(
            route.overridden.as_ref().map(|o| o.phase),
            Some(Phase::RolledBack)
        );
        assert_eq!(route.weights, to);
    }

    #[test]
    fn a_weights_write_starts_a_window_holding_only_requests_started_under_it() {
        use crate::stats::{BackendKind, Role};
        use crate::telemetry::Outcome;
        use std::time::Instant;

        let config = cutover_config::parse_config_toml(ONE).unwrap();
        let v1 = ConfigState::initial(config.routes.clone());
        let shared = Shared::new(&config, &v1);
        let before = shared.snapshot.load().routes[0].clone();
        let t0 = Instant::now();
        before.record(
            BackendKind::New,
            Role::Primary,
            Outcome::Status(500),
            t0,
            t0,
        );

        // The same weights written again (in etcd: a new mod_revision).
        let mut again = v1.clone();
        again.revision = 2;
        again.weights_revisions =
            vec![(cutover_config::RouteId::parse("orders").unwrap(), 2)].into();
        shared.apply(&again);
        let after = shared.snapshot.load().routes[0].clone();
        assert_ne!(
            after.window, before.window,
            "an equal write starts a window"
        );
        // A request that started before the write finishes after it; one starts after it.
        let now = Instant::now();
        before.record(
            BackendKind::New,
            Role::Primary,
            Outcome::Status(500),
            t0,
            now,
        );
        after.record(
            BackendKind::New,
            Role::Primary,
            Outcome::Status(200),
            now,
            now,
        );

        let live = &shared.routes()[0];
        assert_eq!(live.window, after.window);
        let w = DataPlane::window(&shared, "orders", live.window).unwrap();
        assert_eq!((w.new.primary.count, w.new.primary.errors), (1, 0));
        let stats = crate::admin::stats_json(&after, Instant::now());
        assert_eq!(stats["backends"]["new"]["primary"]["count"], 1, "{stats}");
        assert_eq!(stats["window_seconds"], 60);
        assert!(
            stats["in_force_seconds"].as_f64().unwrap() < 60.0,
            "{stats}"
        );
        assert!(stats["since"].as_str().unwrap().ends_with('Z'), "{stats}");

        // A spec-only change keeps the window (and its samples).
        let spec_only = again.applied(
            cutover_config::parse_config_toml(&ONE.replace("9001", "9003"))
                .unwrap()
                .routes,
        );
        shared.apply(&spec_only);
        assert_eq!(shared.snapshot.load().routes[0].window, after.window);
    }

    #[test]
    fn a_shadow_gate_holds_until_any_write_of_the_weights() {
        let config =
            cutover_config::parse_config_toml(&ONE.replace("new = 10", "new = 0, shadow = 100"))
                .unwrap();
        let v1 = ConfigState::initial(config.routes.clone());
        let shared = Shared::new(&config, &v1);
        let weights = shared.snapshot.load().routes[0].weights;
        let record = cutover_config::dataplane::RollbackRecord {
            at: "2026-12-06T14:00:00.000Z".into(),
            rule: "divergence".into(),
            reason: "shadow phase: divergence rate 80.0% > 1.0% (n=300) for 1s".into(),
            by: "a".into(),
            evidence: None,
            gate: Some(Phase::Shadow),
        };
        shared.set_override(
            "orders",
            Override {
                weights_revision: 1,
                weights,
                phase: Phase::RolledBack,
                rollback: Some(record),
                write: 0,
            },
        );
        let route = shared.snapshot.load().routes[0].clone();
        assert_eq!(route.weights, weights, "the gate keeps the weights");
        assert_eq!(route.overridden.as_ref().unwrap().phase, Phase::RolledBack);
        // The operator writes the same weights again: that is their write, not the gate's
        // landing, and it ends the mark.
        let mut again = v1.clone();
        again.revision = 2;
        again.weights_revisions =
            vec![(cutover_config::RouteId::parse("orders").unwrap(), 2)].into();
        shared.apply(&again);
        assert!(shared.snapshot.load().routes[0].overridden.is_none());
    }

    #[test]
    fn inflight_guard_counts_until_dropped() {
        let config = cutover_config::parse_config_toml(ONE).unwrap();
        let shared = Shared::new(&config, &ConfigState::initial(config.routes.clone()));
        let a = shared.inflight_guard();
        let b = shared.inflight_guard();
        assert_eq!(shared.inflight(), 2);
        drop(a);
        drop(b);
        assert_eq!(shared.inflight(), 0);
    }
}
