//! The routing snapshot: every route with its backends, weights, split and telemetry, built and
//! validated off the hot path and published as one immutable value in one `ArcSwap`.
//!
//! Match precedence (SPEC §3): routes with an exact host first; then routes with a wildcard host
//! or none; within each group the longest `path_prefix` wins (a plain byte prefix, as Envoy's
//! `prefix` and Traefik's `PathPrefix`); at equal prefix length a wildcard host beats no host.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cutover_config::dataplane::Override;
use cutover_config::ConfigState;
use cutover_config::{Backend, HostMatch, RouteConfig, RouteId, RouteSpec, Weights};

use crate::compare::{compared_header_names, Difference, DivergenceLog, Groups, NoiseLearner};
use crate::resolve::{AddrCell, Resolver};
use crate::split::Split;
use crate::stats::{BackendKind, Role};
use crate::telemetry::{Outcome, RouteTelemetry, Telemetry};

/// One endpoint of a backend.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// As written in the config (`host:port`).
    pub name: String,
    /// Its address as the resolver last found it (shared by every snapshot's endpoint of the
    /// same `host:port`, refreshed in place; see [`crate::resolve`]).
    cell: Arc<AddrCell>,
}

impl Endpoint {
    /// `None` when the name does not resolve: requests to it fail over or get 502.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.cell.get()
    }
}

/// A backend (`legacy` or `new`): its endpoints, picked round robin.
#[derive(Debug)]
pub struct Upstream {
    pub endpoints: Vec<Endpoint>,
    pub tls: bool,
    pub sni: String,
    pub protocol: cutover_config::BackendProtocol,
    next: AtomicUsize,
}

impl Upstream {
    fn build(backend: &Backend, resolver: &Resolver) -> Self {
        let endpoints = backend
            .endpoints
            .iter()
            .map(|e| Endpoint {
                name: e.to_string(),
                cell: resolver.cell(e),
            })
            .collect();
        let sni = backend.sni.clone().unwrap_or_else(|| {
            backend
                .endpoints
                .first()
                .map(|e| e.host.clone())
                .unwrap_or_default()
        });
        Upstream {
            endpoints,
            tls: backend.tls,
            sni,
            protocol: backend.protocol,
            next: AtomicUsize::new(0),
        }
    }

    /// Where a request's round robin starts; attempt `k` uses `start + k`.
    pub fn start_index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The endpoint for attempt `attempt` of a request whose round robin started at `start`.
    pub fn endpoint(&self, start: usize, attempt: usize) -> &Endpoint {
        &self.endpoints[(start + attempt) % self.endpoints.len()]
    }
}

/// One route of the snapshot.
#[derive(Debug)]
pub struct Route {
    pub id: RouteId,
    pub spec: Arc<RouteSpec>,
    /// The weights in effect: the source's, or the override's.
    pub weights: Weights,
    /// The source's weights revision (`ConfigState::weights_revisions`).
    pub weights_revision: i64,
    /// What the controller put in effect ahead of the source (a rollback, an in-process ramp
    /// step), until the source's weights revision moves past it.
    pub overridden: Option<Override>,
    /// The evaluation window these weights belong to: requests routed by this snapshot count
    /// in it, and only in it (SPEC §11).
    pub window: u64,
    pub split: Split,
    /// Shared with the previous snapshot's route while the spec is the same one (no DNS
    /// lookup, round robin continues).
    pub legacy: Arc<Upstream>,
    pub new: Arc<Upstream>,
    /// `shadow.strip_headers` as header names, parsed once here: each copy removes them by
    /// name, not by text parsed again per copy.
    pub shadow_strip: Box<[http::HeaderName]>,
    /// The headers a comparison reads (`compare.headers` without `compare.ignore_headers`), as
    /// header names: a shadowed answer keeps only these while it waits for its comparison.
    pub compared_headers: Box<[http::HeaderName]>,
    pub telemetry: Arc<RouteTelemetry>,
    /// Shared with the previous snapshot's route of the same id.
    pub state: Arc<RouteState>,
}

/// Distinct endpoint groups tracked per route; later ones are counted as `{other}`.
const MAX_GROUPS: usize = 256;
/// Recent diverging pairs kept per route.
const DIVERGENCE_LOG: usize = 256;

/// A route's shadow and comparison state, kept apart from its metrics ([`RouteTelemetry`]):
/// the shadow limiter, the endpoint groups, the noise learner and the recent divergences. It
/// lives as long as the route does: a snapshot takes it over from the previous one by id (a
/// route removed and added again learns its noise again).
#[derive(Debug)]
pub struct RouteState {
    /// Shadow copies in flight (`shadow.max_in_flight` bounds them).
    pub shadow_in_flight: AtomicUsize,
    pub groups: Groups,
    pub noise: NoiseLearner,
    pub divergences: DivergenceLog,
}

impl RouteState {
    /// Fresh state; `noise_ttl` (`compare.noise_ttl`) applies from creation on.
    pub fn new(noise_ttl: std::time::Duration) -> Self {
        RouteState {
            shadow_in_flight: AtomicUsize::new(0),
            groups: Groups::new(MAX_GROUPS),
            noise: NoiseLearner::new(noise_ttl, NoiseLearner::DEFAULT_MIN_SEEN),
            divergences: DivergenceLog::new(DIVERGENCE_LOG),
        }
    }
}

impl Route {
    pub fn upstream(&self, kind: BackendKind) -> &Upstream {
        match kind {
            BackendKind::Legacy => &self.legacy,
            BackendKind::New => &self.new,
        }
    }

    /// Record a finished request (primary or shadow copy) routed by this snapshot: it counts
    /// in this snapshot's evaluation window.
    pub fn record(
        &self,
        backend: BackendKind,
        role: Role,
        outcome: Outcome,
        started: std::time::Instant,
        now: std::time::Instant,
    ) {
        self.telemetry
            .record(self.window, backend, role, outcome, started, now);
    }

    /// Count a compared pair of a request routed by this snapshot.
    pub fn record_comparison(&self, diff: &Difference, now: std::time::Instant) {
        self.telemetry.record_comparison(self.window, diff, now);
    }

    /// Count a pair of legacy answers to a request routed by this snapshot, compared like a
    /// legacy/new pair (the divergence rule's baseline).
    pub fn record_baseline(&self, diverged: bool, now: std::time::Instant) {
        self.telemetry.record_baseline(self.window, diverged, now);
    }

    fn matches_path(&self, path: &[u8]) -> bool {
        path.starts_with(self.spec.matcher.path_prefix.as_bytes())
    }

    fn prefix_len(&self) -> usize {
        self.spec.matcher.path_prefix.len()
    }
}

/// What a snapshot is built from.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    state: &'a ConfigState,
    telemetry: &'a Telemetry,
    resolver: &'a Resolver,
    overrides: &'a HashMap<String, Override>,
    now: std::time::Instant,
}

/// The whole routing state at one config revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: u64,
    /// A valid routing state exists (false only before anything valid was ever loaded).
    pub loaded: bool,
    /// Why the latest config input was rejected, if it was (whole source).
    pub last_error: Option<Arc<str>>,
    /// Why a route's latest key value was rejected, by route id.
    pub route_errors: Arc<std::collections::BTreeMap<String, Arc<str>>>,
    /// All routes in config order; persistent like [`ConfigState::routes`], so the snapshot
    /// after a write to one route of 10,000 shares the others' tree with this one.
    pub routes: imbl::Vector<Arc<Route>>,
    /// Where each route is matched (positions in `routes`): rebuilt only when a route's spec,
    /// or the routes' order, changed.
    index: Arc<Index>,
}

#[derive(Debug, Default)]
struct Index {
    exact: HashMap<String, Vec<usize>>,
    /// Wildcard-host and host-less routes, best match first.
    others: Vec<usize>,
    by_id: HashMap<String, usize>,
}

impl Index {
    fn build(routes: &imbl::Vector<Arc<Route>>) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut others = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match &r.spec.matcher.host {
                Some(HostMatch::Exact(h)) => exact.entry(h.clone()).or_default().push(i),
                _ => others.push(i),
            }
        }
        for list in exact.values_mut() {
            list.sort_by_key(|&i| std::cmp::Reverse(routes[i].prefix_len()));
        }
        others.sort_by_key(|&i| {
            let r = &routes[i];
            let wildcard_len = match &r.spec.matcher.host {
                Some(HostMatch::Wildcard(suffix)) => suffix.len() + 1,
                _ => 0,
            };
            (
                std::cmp::Reverse(r.prefix_len()),
                std::cmp::Reverse(wildcard_len),
            )
        });
        let by_id = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str().to_string(), i))
            .collect();
        Index {
            exact,
            others,
            by_id,
        }
    }
}

impl Snapshot {
    /// Build the snapshot for `state` with the controller's `overrides` in effect, reusing
    /// each route's telemetry by id. Routes that did not change since `previous` (the same
    /// shared spec, weights, revision and override) are taken over as they are, so a write to
    /// one route of 10,000 rebuilds one. When the state says which routes changed since
    /// `previous` ([`ConfigState::delta`]) and none was added or removed, only those are even
    /// looked at.
    pub fn build(
        state: &ConfigState,
        telemetry: &Telemetry,
        resolver: &Resolver,
        overrides: &HashMap<String, Override>,
        previous: Option<&Snapshot>,
    ) -> Self {
        let now = std::time::Instant::now();
        let inputs = Inputs {
            state,
            telemetry,
            resolver,
            overrides,
            now,
        };
        if let Some(snapshot) = previous.and_then(|p| Self::build_delta(&inputs, p)) {
            return snapshot;
        }
        let mut same_layout = previous.is_some_and(|p| p.routes.len() == state.routes.len());
        let routes: imbl::Vector<Arc<Route>> = state
            .routes
            .iter()
            .enumerate()
            .map(|(i, rc)| {
                let (route, in_place) = Self::build_route(&inputs, i, rc, previous);
                same_layout &= in_place;
                route
            })
            .collect();
        let index = match previous {
            Some(p) if same_layout => p.index.clone(),
            _ => Arc::new(Index::build(&routes)),
        };
        Self::with_routes(state, routes, index)
    }

    /// [`Snapshot::build`] from `previous` when `state` names the only routes that changed
    /// since it and they keep their places; `None` when it cannot tell.
    fn build_delta(inputs: &Inputs<'_>, previous: &Snapshot) -> Option<Self> {
        let state = inputs.state;
        let delta = state.delta.as_ref()?;
        if delta.base_revision != previous.revision || previous.routes.len() != state.routes.len() {
            return None;
        }
        let mut routes = previous.routes.clone();
        for id in &delta.routes {
            let i = *previous.index.by_id.get(id.as_str())?;
            let rc = state.routes.get(i).filter(|rc| rc.id == *id)?;
            let (route, in_place) = Self::build_route(inputs, i, rc, Some(previous));
            if !in_place {
                return None;
            }
            routes.set(i, route);
        }
        Some(Self::with_routes(state, routes, previous.index.clone()))
    }

    /// Route `rc` at position `i`: the previous snapshot's own when nothing about it changed.
    /// Also whether it keeps the previous snapshot's place and spec (the index still holds).
    fn build_route(
        inputs: &Inputs<'_>,
        i: usize,
        rc: &RouteConfig,
        previous: Option<&Snapshot>,
    ) -> (Arc<Route>, bool) {
        let Inputs {
            state,
            telemetry,
            resolver,
            overrides,
            now,
        } = *inputs;
        let weights_revision = state
            .weights_revisions
            .get(rc.id.as_str())
            .copied()
            .unwrap_or(0);
        let overridden = if overrides.is_empty() {
            None
        } else {
            overrides.get(rc.id.as_str()).cloned()
        };
        let weights = overridden.as_ref().map_or(rc.weights, |o| o.weights);
        let prev = previous.and_then(|p| {
            p.routes
                .get(i)
                .filter(|r| r.id == rc.id)
                .or_else(|| p.route(rc.id.as_str()))
        });
        let same_spec = prev.is_some_and(|p| Arc::ptr_eq(&p.spec, &rc.spec));
        let in_place =
            same_spec && previous.is_some_and(|p| p.routes.get(i).is_some_and(|r| r.id == rc.id));
        if let Some(prev) = prev.filter(|_| same_spec) {
            if prev.weights == weights
                && prev.weights_revision == weights_revision
                && prev.overridden == overridden
            {
                return (prev.clone(), in_place);
            }
        }
        let split = Split::new(&weights);
        let (route_telemetry, route_state) = match prev {
            Some(p) => (p.telemetry.clone(), p.state.clone()),
            None => (
                telemetry.route(rc.id.as_str()),
                Arc::new(RouteState::new(rc.spec.compare.noise_ttl)),
            ),
        };
        route_telemetry.set_weight_percent(100.0 - split.new_percent(), split.new_percent());
        let write = overridden.as_ref().map_or(0, |o| o.write);
        let window = route_telemetry.note_weights(weights, (weights_revision, write), now);
        let (legacy, new) = match prev.filter(|_| same_spec) {
            Some(p) => (p.legacy.clone(), p.new.clone()),
            None => (
                Arc::new(Upstream::build(&rc.spec.legacy, resolver)),
                Arc::new(Upstream::build(&rc.spec.new, resolver)),
            ),
        };
        let route = Arc::new(Route {
            id: rc.id.clone(),
            spec: rc.spec.clone(),
            weights,
            weights_revision,
            overridden,
            window,
            split,
            legacy,
            new,
            shadow_strip: header_names(&rc.spec.shadow.strip_headers),
            compared_headers: header_names(compared_header_names(&rc.spec.compare)),
            telemetry: route_telemetry,
            state: route_state,
        });
        (route, in_place)
    }

    fn with_routes(
        state: &ConfigState,
        routes: imbl::Vector<Arc<Route>>,
        index: Arc<Index>,
    ) -> Self {
        Snapshot {
            revision: state.revision,
            loaded: state.loaded,
            last_error: state.last_error.clone(),
            route_errors: state.route_errors.clone(),
            routes,
            index,
        }
    }

    /// The route for a request to `host` (lowercase, without port) and `path`.
    pub fn find(&self, host: Option<&str>, path: &[u8]) -> Option<&Arc<Route>> {
        if let Some(found) = host.and_then(|h| self.index.exact.get(h)).and_then(|list| {
            list.iter()
                .map(|&i| &self.routes[i])
                .find(|r| r.matches_path(path))
        }) {
            return Some(found);
        }
        self.index
            .others
            .iter()
            .map(|&i| &self.routes[i])
            .find(|r| {
                r.matches_path(path)
                    && match &r.spec.matcher.host {
                        Some(HostMatch::Wildcard(suffix)) => host.is_some_and(|h| {
                            h.len() > suffix.len() && h.ends_with(suffix.as_str())
                        }),
                        _ => true,
                    }
            })
    }

    /// The error to show for route `id`: its own rejection, else the source's.
    pub fn error_for(&self, id: &str) -> Option<&Arc<str>> {
        self.route_errors.get(id).or(self.last_error.as_ref())
    }

    /// The route with id `id`.
    pub fn route(&self, id: &str) -> Option<&Arc<Route>> {
        self.index
            .by_id
            .get(id)
            .and_then(|&i| self.routes.get(i))
            .filter(|r| r.id.as_str() == id)
    }
}

/// Header names as a route's spec lists them (the config checked each is a valid name; one
/// that were not could name no header, and is left out).
pub(crate) fn header_names<'n>(
    names: impl IntoIterator<Item = &'n String>,
) -> Box<[http::HeaderName]> {
    names
        .into_iter()
        .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

/// The host a request is for, lowercased and without port: from the URI authority (HTTP/2,
/// absolute-form) or the Host header.
pub fn request_host(authority: Option<&str>, host_header: Option<&[u8]>) -> Option<String> {
    let raw = match authority {
        Some(a) => a,
        None => std::str::from_utf8(host_header?).ok()?,
    };
    let without_port = if raw.starts_with('[') {
        raw.split_once(']')
            .map_or(raw, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    Some(without_port.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::WindowShape;
    use std::time::Duration;

    fn snapshot(toml: &str) -> Snapshot {
        let config = cutover_config::parse_config_toml(toml).unwrap();
        let telemetry = Telemetry::new(WindowShape {
            window: Duration::from_secs(60),
            slices: 12,
        });
        Snapshot::build(
            &ConfigState::initial(config.routes),
            &telemetry,
            &Resolver::default(),
            &HashMap::new(),
            None,
        )
    }

    fn route(id: &str, host: Option<&str>, prefix: &str) -> String {
        let host = host
            .map(|h| format!("host = \"{h}\", "))
            .unwrap_or_default();
        format!(
            "[[routes]]\nid = \"{id}\"\nmatch = {{ {host}path_prefix = \"{prefix}\" }}\n\
             legacy = {{ endpoints = [\"127.0.0.1:1\"] }}\nnew = {{ endpoints = [\"127.0.0.1:2\"] }}\n"
        )
    }

    #[test]
    fn a_write_to_one_route_rebuilds_that_route_only() {
        let toml: String = (0..100)
            .map(|i| route(&format!("r{i}"), Some(&format!("h{i}.test")), "/"))
            .collect();
        let config = cutover_config::parse_config_toml(&toml).unwrap();
        let telemetry = Telemetry::new(WindowShape {
            window: Duration::from_secs(60),
            slices: 12,
        });
        let v1 = ConfigState::initial(config.routes);
        let first = Snapshot::build(&v1, &telemetry, &Resolver::default(), &HashMap::new(), None);

        // Route r7's weights change; every spec stays the same shared one.
        let mut routes = v1.routes.clone();
        routes[7].weights = Weights {
            legacy: 50.0,
            new: 50.0,
            shadow: 0.0,
        };
        let v2 = ConfigState {
            revision: 2,
            routes,
            ..v1.clone()
        };
        let second = Snapshot::build(
            &v2,
            &telemetry,
            &Resolver::default(),
            &HashMap::new(),
            Some(&first),
        );
        for (i, (a, b)) in first.routes.iter().zip(&second.routes).enumerate() {
            assert_eq!(
                Arc::ptr_eq(a, b),
                i != 7,
                "route {i} taken over unless it changed"
            );
        }
        assert!(
            Arc::ptr_eq(&first.index, &second.index),
            "the index is kept"
        );
        let r7 = second.route("r7").unwrap();
        assert_eq!(r7.weights.new, 50.0);
        assert!(
            Arc::ptr_eq(&r7.legacy, &first.routes[7].legacy),
            "no new DNS lookup"
        );
        assert!(Arc::ptr_eq(&r7.telemetry, &first.routes[7].telemetry));
        assert!(
            Arc::ptr_eq(&r7.state, &first.routes[7].state),
            "learned noise and divergences are taken over"
        );
        assert!(
            r7.window > first.routes[7].window,
            "a new evaluation window"
        );
        assert_eq!(
            second.find(Some("h7.test"), b"/x").map(|r| r.weights.new),
            Some(50.0),
            "the kept index finds the rebuilt route"
        );

        // A spec change (another host) rebuilds the index.
        let mut routes = v2.routes.clone();
        let mut spec = (*routes[3].spec).clone();
        spec.matcher.host = Some(cutover_config::HostMatch::Exact("moved.test".into()));
        routes[3].spec = Arc::new(spec);
        let v3 = ConfigState {
            revision: 3,
            routes,
            ..v2.clone()
        };
        let third = Snapshot::build(
            &v3,
            &telemetry,
            &Resolver::default(),
            &HashMap::new(),
            Some(&second),
        );
        assert!(!Arc::ptr_eq(&second.index, &third.index));
        assert_eq!(
            third
                .find(Some("moved.test"), b"/")
                .map(|r| r.id.to_string()),
            Some("r3".to_string())
        );
        assert!(third.find(Some("h3.test"), b"/").is_none());

        // With a delta (the etcd source's), only the named routes are looked at.
        let weights = |new: f64| Weights {
            legacy: 100.0 - new,
            new,
            shadow: 0.0,
        };
        let id = |s: &str| RouteId::parse(s).unwrap();
        let mut routes = v3.routes.clone();
        routes[10].weights = weights(10.0);
        routes[11].weights = weights(11.0);
        let v4 = ConfigState {
            revision: 4,
            routes,
            delta: Some(Arc::new(cutover_config::Delta {
                base_revision: 3,
                routes: vec![id("r10")],
            })),
            ..v3.clone()
        };
        let fourth = Snapshot::build(
            &v4,
            &telemetry,
            &Resolver::default(),
            &HashMap::new(),
            Some(&third),
        );
        assert_eq!(fourth.routes[10].weights.new, 10.0);
        assert!(
            Arc::ptr_eq(&fourth.routes[11], &third.routes[11]),
            "a route the delta does not name is taken over unread"
        );
        assert!(Arc::ptr_eq(&fourth.index, &third.index));
        // A delta from another base than the live snapshot's is not trusted: every route is.
        let stale = ConfigState {
            delta: Some(Arc::new(cutover_config::Delta {
                base_revision: 2,
                routes: vec![id("r10")],
            })),
            ..v4.clone()
        };
        let rebuilt = Snapshot::build(
            &stale,
            &telemetry,
            &Resolver::default(),
            &HashMap::new(),
            Some(&third),
        );
        assert_eq!(rebuilt.routes[11].weights.new, 11.0);
        // A delta whose route moved to another host rebuilds the index.
        let mut routes = v4.routes.clone();
        let mut spec = (*routes[12].spec).clone();
        spec.matcher.host = Some(cutover_config::HostMatch::Exact("twelve.test".into()));
        routes[12].spec = Arc::new(spec);
        let v5 = ConfigState {
            revision: 5,
            routes,
            delta: Some(Arc::new(cutover_config::Delta {
                base_revision: 4,
                routes: vec![id("r12")],
            })),
            ..v4.clone()
        };
        let fifth = Snapshot::build(
            &v5,
            &telemetry,
            &Resolver::default(),
            &HashMap::new(),
            Some(&fourth),
        );
        assert!(!Arc::ptr_eq(&fourth.index, &fifth.index));
        assert_eq!(
            fifth
                .find(Some("twelve.test"), b"/")
                .map(|r| r.id.to_string()),
            Some("r12".to_string())
        );
    }

    #[test]
    fn precedence_exact_then_longest_prefix() {
        let s = snapshot(
            &[
                route("any", None, "/"),
                route("any-api", None, "/api"),
                route("wild", Some("*.example.com"), "/"),
                route("wild-api", Some("*.example.com"), "/api"),
                route("exact", Some("api.example.com"), "/"),
            ]
            .concat(),
        );
        let id = |host: Option<&str>, path: &str| {
            s.find(host, path.as_bytes()).map(|r| r.id.to_string())
        };
        assert_eq!(
            id(Some("api.example.com"), "/api/x").as_deref(),
            Some("exact")
        );
        assert_eq!(
            id(Some("www.example.com"), "/api/x").as_deref(),
            Some("wild-api")
        );
        assert_eq!(id(Some("www.example.com"), "/x").as_deref(), Some("wild"));
        assert_eq!(id(Some("other.org"), "/api/x").as_deref(), Some("any-api"));
        assert_eq!(id(None, "/x").as_deref(), Some("any"));
        // A wildcard needs at least one label in front of it.
        assert_eq!(id(Some("example.com"), "/x").as_deref(), Some("any"));
    }

    #[test]
    fn no_route_when_nothing_matches() {
        let s = snapshot(&route("exact", Some("api.example.com"), "/v1"));
        assert!(s.find(Some("api.example.com"), b"/v2").is_none());
        assert!(s.find(Some("other"), b"/v1").is_none());
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(
            request_host(None, Some(b"API.Example.com:8080")).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(request_host(Some("[::1]:80"), None).as_deref(), Some("::1"));
        assert_eq!(
            request_host(None, Some(b"example.com.")).as_deref(),
            Some("example.com")
        );
        assert_eq!(request_host(None, None), None);
    }

    #[test]
    fn round_robin_and_failover_order() {
        let s = snapshot(
            "[[routes]]\nid = \"r\"\nmatch = { path_prefix = \"/\" }\n\
             legacy = { endpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"] }\n\
             new = { endpoints = [\"127.0.0.1:4\"] }\n",
        );
        let up = &s.routes[0].legacy;
        let a = up.start_index();
        let b = up.start_index();
        assert_ne!(up.endpoint(a, 0).name, up.endpoint(b, 0).name);
        let tried: std::collections::HashSet<_> =
            (0..3).map(|k| up.endpoint(a, k).name.clone()).collect();
        assert_eq!(tried.len(), 3, "a retry visits every endpoint once");
    }
}
