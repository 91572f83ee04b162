//! The etcd config source (SPEC §3): routes and weights from `<prefix>/routes/<id>/{spec,weights}`.
//!
//! One session: read the whole prefix in one request at revision R, publish, then watch from
//! R + 1. Every watch response is applied to an in-memory copy of the keys (only the changed
//! keys are parsed again), responses already waiting are folded in (bursts coalesce without a
//! timer), and one state is published per batch. A compacted or cancelled watch, an ended
//! stream, a failed request or a silent server (no answer to a progress request within
//! [`LIVENESS`]) ends the session; the next one starts with a fresh read, after a jittered
//! exponential backoff when the connection failed. Nothing is lost: the fresh read is the whole
//! truth at its revision.
//!
//! An invalid value never replaces the last valid one of that route: it is logged at WARN,
//! counted, shown as the route's error, and recorded as a `rejected` event in etcd.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_config::{
    Delta, DescriptorSet, EtcdSettings, RouteConfig, RouteId, RouteList, RouteSpec, Weights,
    WeightsRevisions,
};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};

use crate::connect::{Backoff, EtcdConnect};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::keys::{Keys, RouteKeyKind};
use crate::model::{Event, EventKind};
use crate::{lkg, ConfigSource, ConfigState};

/// A watch that has not answered anything (events, progress) for this long is dead.
const LIVENESS: Duration = Duration::from_secs(3);
/// How often to ask the server for a progress notification.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Time limit of one unary request (the initial read, event writes).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Routes and weights from etcd, with the config file's routes and the on-disk last-known-good
/// snapshot as the cold-start fallbacks.
#[derive(Debug)]
pub struct EtcdSource {
    settings: EtcdSettings,
    keys: Keys,
    instance: String,
    initial: ConfigState,
}

impl EtcdSource {
    /// A source for `settings`; `fallback` are the config file's `[[routes]]`; `instance` names
    /// this proxy in events.
    pub fn new(settings: EtcdSettings, fallback: Vec<RouteConfig>, instance: String) -> Self {
        let initial = cold_start(settings.last_known_good.as_deref(), fallback);
        EtcdSource {
            keys: Keys::new(&settings.prefix),
            settings,
            instance,
            initial,
        }
    }
}

/// What to serve before etcd answers: the last-known-good snapshot, else the file's routes,
/// else nothing (not ready).
fn cold_start(lkg_path: Option<&std::path::Path>, fallback: Vec<RouteConfig>) -> ConfigState {
    let mut state = ConfigState::initial(Vec::new());
    state.revision = 0;
    state.connected = Some(false);
    state.loaded = false;
    if let Some(path) = lkg_path {
        match lkg::read(path) {
            Ok(Some((revision, routes))) => {
                info!(path = %path.display(), revision, routes = routes.len(), "cold start from the last-known-good snapshot");
                state.routes = routes.into();
                state.loaded = true;
                return state;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "ignoring an unreadable last-known-good snapshot"),
        }
    }
    if !fallback.is_empty() {
        info!(
            routes = fallback.len(),
            "cold start from the config file's [[routes]] until etcd answers"
        );
        state.routes = fallback.into();
        state.loaded = true;
    }
    state
}

/// A key's value as last seen, parsed once.
#[derive(Debug, Clone)]
struct Parsed<T> {
    mod_revision: i64,
    value: Result<T, String>,
}

#[derive(Debug, Default, Clone)]
struct RouteKeys {
    spec: Option<Parsed<Arc<RouteSpec>>>,
    weights: Option<Parsed<Weights>>,
}

/// The route keys under the prefix, as of some revision, and which routes changed since the
/// state last published from it.
#[derive(Debug)]
struct Store {
    routes: BTreeMap<String, RouteKeys>,
    /// `<prefix>/descriptors/<name>`, decoded (or why not).
    descriptors: BTreeMap<String, Result<DescriptorSet, String>>,
    /// Nothing was published from this store yet (a fresh read): resolve every route.
    whole: bool,
    /// The routes whose spec or weights changed since the last publish: with 10,000 routes a
    /// write to one resolves that one ([`resolve_changed`]).
    changed: BTreeSet<String>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            routes: BTreeMap::new(),
            descriptors: BTreeMap::new(),
            whole: true,
            changed: BTreeSet::new(),
        }
    }
}

impl Store {
    /// The state was published from this store: later changes are resolved alone.
    fn published(&mut self) {
        self.whole = false;
        self.changed.clear();
    }

    /// Take a put; true when it was a route's spec or weights (what the routes are made of:
    /// a `status` or `events` key changes nothing the source publishes).
    fn put(&mut self, keys: &Keys, key: &[u8], value: &[u8], rev: i64) -> bool {
        if let Some(name) = keys.parse_descriptor_key(key) {
            let set = decode_descriptor(&name, value);
            if let Err(reason) = &set {
                warn!(key = %keys.descriptor(&name), %reason, "descriptor set rejected");
            }
            self.descriptors.insert(name, set);
            // Rare, and any route may name it: resolve them all.
            self.whole = true;
            return true;
        }
        let Some(key) = keys.parse_route_key(key) else {
            return false;
        };
        if matches!(key.kind, RouteKeyKind::Status | RouteKeyKind::Event(_)) {
            return false;
        }
        self.changed.insert(key.route.clone());
        let entry = self.routes.entry(key.route).or_default();
        let text = String::from_utf8_lossy(value);
        match key.kind {
            RouteKeyKind::Spec => {
                if entry.spec.as_ref().is_none_or(|p| p.mod_revision != rev) {
                    entry.spec = Some(Parsed {
                        mod_revision: rev,
                        value: cutover_config::parse_route_spec_json(&text)
                            .map(Arc::new)
                            .map_err(|e| one_line(&e)),
                    });
                }
            }
            RouteKeyKind::Weights => {
                if entry.weights.as_ref().is_none_or(|p| p.mod_revision != rev) {
                    entry.weights = Some(Parsed {
                        mod_revision: rev,
                        value: cutover_config::parse_weights_json(&text).map_err(|e| one_line(&e)),
                    });
                }
            }
            RouteKeyKind::Status | RouteKeyKind::Event(_) => {}
        }
        true
    }

    /// Take a delete; true when it was a route's spec or weights.
    fn delete(&mut self, keys: &Keys, key: &[u8]) -> bool {
        if let Some(name) = keys.parse_descriptor_key(key) {
            self.descriptors.remove(&name);
            self.whole = true;
            return true;
        }
        let Some(key) = keys.parse_route_key(key) else {
            return false;
        };
        if matches!(key.kind, RouteKeyKind::Status | RouteKeyKind::Event(_)) {
            return false;
        }
        self.changed.insert(key.route.clone());
        if let Some(entry) = self.routes.get_mut(&key.route) {
            match key.kind {
                RouteKeyKind::Spec => entry.spec = None,
                RouteKeyKind::Weights => entry.weights = None,
                _ => {}
            }
            if entry.spec.is_none() && entry.weights.is_none() {
                self.routes.remove(&key.route);
            }
        }
        true
    }
}

/// A `<prefix>/descriptors/<name>` value: the base64 of a `FileDescriptorSet`.
fn decode_descriptor(name: &str, value: &[u8]) -> Result<DescriptorSet, String> {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(value);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64 (write `base64 -w0 set.pb`): {e}"))?;
    DescriptorSet::decode(name, &bytes)
}

/// A value's problems on one line; a whole-document problem is shown without its `(root)` path
/// (the key already names the document).
fn one_line(errors: &cutover_config::ConfigErrors) -> String {
    errors
        .0
        .iter()
        .map(|e| {
            if e.path == "(root)" {
                e.reason.clone()
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One rejected key value, to log, count and record once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Rejection {
    route: String,
    key: String,
    mod_revision: i64,
    reason: String,
}

/// One route of the store, resolved: what to serve (nothing: no spec, or a new route whose
/// spec is invalid), its weights revision, and the rejected values.
struct OneRoute {
    config: Option<RouteConfig>,
    weights_revision: i64,
    error: Option<Arc<str>>,
    rejections: Vec<Rejection>,
}

/// Route `id` as its keys `entry` say (none: deleted), keeping its last good spec and weights
/// (`previous`, served at `last_revision`) where a current value is invalid.
fn resolve_route(
    keys: &Keys,
    id: &str,
    entry: Option<&RouteKeys>,
    descriptors: &BTreeMap<String, Result<DescriptorSet, String>>,
    previous: Option<&RouteConfig>,
    last_revision: Option<i64>,
) -> OneRoute {
    let mut one = OneRoute {
        config: None,
        weights_revision: 0,
        error: None,
        rejections: Vec::new(),
    };
    let reject = |one: &mut OneRoute, key: String, mod_revision: i64, reason: &str| {
        one.error = Some(Arc::from(format!(
            "{}: {reason}",
            key.trim_start_matches(keys.prefix())
                .trim_start_matches('/')
        )));
        one.rejections.push(Rejection {
            route: id.to_string(),
            key,
            mod_revision,
            reason: reason.to_string(),
        });
    };
    let Some(entry) = entry else {
        return one;
    };
    let route_id = match RouteId::parse(id) {
        Ok(r) => r,
        Err(reason) => {
            let rev = entry.spec.as_ref().map_or(0, |p| p.mod_revision);
            reject(
                &mut one,
                keys.spec(id),
                rev,
                &format!("invalid route id {id:?} in the key: {reason}"),
            );
            return one;
        }
    };
    let spec = match &entry.spec {
        // No spec (deleted, or weights written first): the route is not served.
        None => return one,
        Some(Parsed {
            value: Ok(spec),
            mod_revision,
        }) => match with_descriptors(keys, spec, descriptors, previous) {
            Ok(spec) => spec,
            Err(reason) => {
                reject(&mut one, keys.spec(id), *mod_revision, &reason);
                match previous {
                    Some(prev) => prev.spec.clone(),
                    None => return one,
                }
            }
        },
        Some(Parsed {
            value: Err(reason),
            mod_revision,
        }) => {
            reject(&mut one, keys.spec(id), *mod_revision, reason);
            match previous {
                Some(prev) => prev.spec.clone(),
                None => return one,
            }
        }
    };
    let (weights, weights_revision) = match &entry.weights {
        None => (Weights::default(), 0),
        Some(Parsed {
            value: Ok(w),
            mod_revision,
        }) => (*w, *mod_revision),
        Some(Parsed {
            value: Err(reason),
            mod_revision,
        }) => {
            reject(&mut one, keys.weights(id), *mod_revision, reason);
            (
                previous.map_or_else(Weights::default, |p| p.weights),
                last_revision.unwrap_or(0),
            )
        }
    };
    one.weights_revision = weights_revision;
    one.config = Some(RouteConfig {
        id: route_id,
        spec,
        weights,
    });
    one
}

/// `spec` with the descriptor set it names attached (the previous route's spec, shared, when
/// that is the same); an error when the set is missing or invalid.
fn with_descriptors(
    keys: &Keys,
    spec: &Arc<RouteSpec>,
    descriptors: &BTreeMap<String, Result<DescriptorSet, String>>,
    previous: Option<&RouteConfig>,
) -> Result<Arc<RouteSpec>, String> {
    let Some(name) = spec.descriptor_set_name() else {
        return Ok(spec.clone());
    };
    let set = match descriptors.get(name) {
        Some(Ok(set)) => set.clone(),
        Some(Err(reason)) => {
            return Err(format!(
                "compare.descriptor_set: {}: {reason}",
                keys.descriptor(name)
            ))
        }
        None => {
            return Err(format!(
                "compare.descriptor_set: no descriptor set {name:?}: write the base64 of a \
                 FileDescriptorSet to {}",
                keys.descriptor(name)
            ))
        }
    };
    let attached = (**spec).clone().with_descriptors(set);
    Ok(match previous {
        Some(prev) if *prev.spec == attached => prev.spec.clone(),
        _ => Arc::new(attached),
    })
}

/// The routes to serve for the whole `store`, keeping each route's last good spec and weights
/// (from `previous`) where the current value is invalid. Returns the routes (in id order), the
/// error per route, and the rejections seen.
fn resolve(keys: &Keys, store: &Store, previous: &ConfigState) -> Resolved {
    let last_good: HashMap<&str, &RouteConfig> =
        previous.routes.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut resolved = Resolved::default();
    for (id, entry) in &store.routes {
        let one = resolve_route(
            keys,
            id,
            Some(entry),
            &store.descriptors,
            last_good.get(id.as_str()).copied(),
            previous.weights_revisions.get(id.as_str()).copied(),
        );
        resolved.take(id, one, None);
    }
    resolved.changed = !same_routes(&previous.routes, &resolved.routes)
        || previous.weights_revisions != resolved.weights_revisions;
    resolved
}

/// [`resolve`] for a store of which only `store.changed` changed since `previous` was
/// resolved from it: those routes are resolved again, the others shared with `previous` (the
/// route list and the weights revisions are persistent: a write to one route of 10,000 copies a
/// path of their trees, not the table).
fn resolve_changed(keys: &Keys, store: &Store, previous: &ConfigState) -> Resolved {
    let mut resolved = Resolved {
        routes: previous.routes.clone(),
        errors: (*previous.route_errors).clone(),
        rejections: Vec::new(),
        weights_revisions: previous.weights_revisions.clone(),
        changed: false,
    };
    for id in &store.changed {
        let position = resolved
            .routes
            .binary_search_by(|r| r.id.as_str().cmp(id.as_str()));
        let before = position.ok().map(|i| resolved.routes[i].clone());
        let last_revision = resolved.weights_revisions.get(id.as_str()).copied();
        let one = resolve_route(
            keys,
            id,
            store.routes.get(id),
            &store.descriptors,
            before.as_ref(),
            last_revision,
        );
        let same = match (&before, &one.config) {
            (None, None) => true,
            (Some(a), Some(b)) => same_route(a, b) && last_revision == Some(one.weights_revision),
            _ => false,
        };
        resolved.changed |= !same;
        resolved.errors.remove(id.as_str());
        if let Some(route) = &before {
            resolved.weights_revisions.remove(&route.id);
        }
        resolved.take(id, one, Some(position));
    }
    resolved
}

/// Whether two route lists are equal, comparing a spec only when it is not the same shared one
/// (an unchanged route keeps its `Arc`: with 10,000 routes a whole resolve compares pointers).
fn same_routes(a: &RouteList, b: &RouteList) -> bool {
    a.ptr_eq(b) || (a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| same_route(x, y)))
}

fn same_route(x: &RouteConfig, y: &RouteConfig) -> bool {
    x.id == y.id && x.weights == y.weights && (Arc::ptr_eq(&x.spec, &y.spec) || x.spec == y.spec)
}

/// The routes a store resolves to, with the rejected values and each route's weights revision.
#[derive(Default)]
struct Resolved {
    /// In id order.
    routes: RouteList,
    errors: BTreeMap<String, Arc<str>>,
    rejections: Vec<Rejection>,
    weights_revisions: WeightsRevisions,
    /// The routes or a weights revision differ from the previous state's.
    changed: bool,
}

impl Resolved {
    /// Take route `id` as resolved: appended (a whole resolve, in id order), or put at
    /// `position` (the result of a binary search for `id` in `routes`).
    fn take(&mut self, id: &str, one: OneRoute, position: Option<Result<usize, usize>>) {
        if let Some(error) = one.error {
            self.errors.insert(id.to_string(), error);
        }
        self.rejections.extend(one.rejections);
        if let Some(config) = &one.config {
            self.weights_revisions
                .insert(config.id.clone(), one.weights_revision);
        }
        match (position, one.config) {
            (None, Some(config)) => self.routes.push_back(config),
            (Some(Ok(i)), Some(config)) => {
                self.routes.set(i, config);
            }
            (Some(Ok(i)), None) => {
                self.routes.remove(i);
            }
            (Some(Err(i)), Some(config)) => self.routes.insert(i, config),
            (_, None) => {}
        }
    }
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    /// The connection failed or went silent: back off, then reconnect.
    Lost(String),
}

/// The state of a running source between sessions.
struct Runner {
    source: EtcdSource,
    tx: watch::Sender<Arc<ConfigState>>,
    shutdown: watch::Receiver<bool>,
    /// Rejections already logged, counted and recorded (key + mod_revision).
    counted: HashSet<(String, i64)>,
    /// The last event key's millis, so two events of one instance never share a key.
    last_event_millis: u64,
    /// Writes the last-known-good snapshot off the publishing path.
    lkg: Arc<LkgWriter>,
}

/// Writes the last-known-good snapshot on a blocking thread, the latest state only: with
/// 10,000 routes a write is tens of milliseconds that a weights change must not wait for.
#[derive(Debug, Default)]
struct LkgWriter {
    pending: Mutex<Option<(u64, RouteList)>>,
    busy: AtomicBool,
}

impl LkgWriter {
    fn write(self: &Arc<Self>, path: &std::path::Path, revision: u64, routes: RouteList) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some((revision, routes));
        if self.busy.swap(true, Ordering::AcqRel) {
            return; // the running writer takes it next
        }
        let (this, path) = (self.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || loop {
            let next = this
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some((revision, routes)) = next {
                if let Err(e) = lkg::write(&path, revision, routes.iter()) {
                    warn!(path = %path.display(), error = %e, "cannot write the last-known-good snapshot");
                }
                continue;
            }
            this.busy.store(false, Ordering::Release);
            // A state that arrived after the take and before the store above is still ours.
            let more = this
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            if !more || this.busy.swap(true, Ordering::AcqRel) {
                break;
            }
        });
    }
}

impl Runner {
    fn current(&self) -> Arc<ConfigState> {
        self.tx.borrow().clone()
    }

    /// Publish the state for `store` at `revision` (never older than what is live).
    fn publish(&mut self, client: &Client, store: &mut Store, revision: i64) {
        let previous = self.current();
        let revision = u64::try_from(revision).unwrap_or(0);
        if revision < previous.revision {
            warn!(revision, live = previous.revision, "etcd answered with an older revision than the one live; ignored (after restoring etcd from a backup, restart the proxies)");
            return;
        }
        let Resolved {
            routes,
            errors: route_errors,
            rejections,
            weights_revisions,
            changed: routes_changed,
        } = if store.whole {
            resolve(&self.source.keys, store, &previous)
        } else {
            resolve_changed(&self.source.keys, store, &previous)
        };
        // What changed since `previous`, for the data plane to rebuild only that.
        let delta = (!store.whole && routes_changed).then(|| {
            Arc::new(Delta {
                base_revision: previous.revision,
                routes: store
                    .changed
                    .iter()
                    .filter_map(|id| RouteId::parse(id).ok())
                    .collect(),
            })
        });
        store.published();
        let mut new_rejections = 0;
        for r in rejections {
            if self.counted.insert((r.key.clone(), r.mod_revision)) {
                new_rejections += 1;
                warn!(key = %r.key, mod_revision = r.mod_revision, reason = %r.reason, "etcd value rejected; the route keeps its last valid state");
                self.record_rejection(client, r);
            }
        }
        // A rewrite of the same weights is an operator's write too (it overrides a local
        // rollback), so a new weights revision counts as a change (`routes_changed`).
        let state = ConfigState {
            // The revision names the last applied change: a rejected write does not move it.
            revision: if routes_changed || !previous.loaded {
                revision
            } else {
                previous.revision
            },
            routes: if routes_changed {
                routes
            } else {
                previous.routes.clone()
            },
            weights_revisions,
            last_error: None,
            route_errors: Arc::new(route_errors),
            errors_total: previous.errors_total + new_rejections,
            loaded: true,
            connected: Some(true),
            delta,
        };
        if routes_changed || !previous.loaded {
            self.persist(&state);
        }
        self.tx.send_replace(Arc::new(state));
    }

    fn set_connected(&self, connected: bool) {
        let current = self.current();
        if current.connected != Some(connected) {
            let mut next = (*current).clone();
            next.connected = Some(connected);
            self.tx.send_replace(Arc::new(next));
        }
    }

    fn persist(&self, state: &ConfigState) {
        if let Some(path) = &self.source.settings.last_known_good {
            self.lkg.write(path, state.revision, state.routes.clone());
        }
    }

    /// Append a `rejected` event for `r` (detached: never delays applying the next state).
    fn record_rejection(&mut self, client: &Client, r: Rejection) {
        let millis = crate::model::unix_millis_now().max(self.last_event_millis + 1);
        self.last_event_millis = millis;
        let key = self
            .source
            .keys
            .event(&r.route, millis, &self.source.instance);
        let mut event = Event::now(
            EventKind::Rejected,
            format!("{}: {}", r.key, r.reason),
            self.source.instance.clone(),
        );
        event.to = Some(serde_json::json!({"key": r.key, "mod_revision": r.mod_revision}));
        let Ok(value) = serde_json::to_vec(&event) else {
            return;
        };
        let mut client = client.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, client.put(key.clone(), value, None)).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(%key, error = %e, "cannot record the rejection event"),
                Err(_) => warn!(%key, "timed out recording the rejection event"),
            }
        });
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP);
        loop {
            match self.session(&mut backoff).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Lost(reason) => {
                    self.set_connected(false);
                    let wait = backoff.next_wait();
                    warn!(%reason, retry_in = ?wait, endpoints = ?self.source.settings.endpoints, "etcd unavailable; serving the last good routes");
                    tokio::select! {
                        _ = self.shutdown.changed() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Connect, then read + watch until the connection fails or shutdown.
    async fn session(&mut self, backoff: &mut Backoff) -> SessionEnd {
        // The files are read again at every connect: rotated certificates are picked up here.
        let connect = EtcdConnect::from_settings(&self.source.settings)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let mut client = match connect.connect().await {
            Ok(c) => c,
            Err(e) => return SessionEnd::Lost(format!("connect: {e}")),
        };
        loop {
            // The whole prefix at one revision: the truth to start (or restart) from.
            let (start, end) = self.source.keys.source_range();
            let read = client.get(start, Some(GetOptions::new().with_range(end)));
            let resp = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let e = crate::connect::describe(&e.to_string());
                    return SessionEnd::Lost(format!("read {}: {e}", self.source.keys.routes()));
                }
                Err(_) => return SessionEnd::Lost("read timed out".into()),
            };
            let revision = resp.header().map_or(0, |h| h.revision());
            let mut store = Store::default();
            for kv in resp.kvs() {
                store.put(&self.source.keys, kv.key(), kv.value(), kv.mod_revision());
            }
            self.publish(&client, &mut store, revision);
            backoff.reset();
            match self.watch(&mut client, &mut store, revision).await {
                WatchEnd::Reread(reason) => info!(%reason, "re-reading the whole prefix"),
                WatchEnd::Session(end) => return end,
            }
        }
    }

    /// Watch from `revision + 1`, applying every change to `store`.
    async fn watch(&mut self, client: &mut Client, store: &mut Store, revision: i64) -> WatchEnd {
        let (start, end) = self.source.keys.source_range();
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let (mut watcher, mut stream) =
            match tokio::time::timeout(REQUEST_TIMEOUT, client.watch(start, Some(options))).await {
                Ok(Ok(w)) => w.split(),
                Ok(Err(e)) => {
                    let e = crate::connect::describe(&e.to_string());
                    return WatchEnd::Session(SessionEnd::Lost(format!("watch: {e}")));
                }
                Err(_) => return WatchEnd::Session(SessionEnd::Lost("watch timed out".into())),
            };
        let mut last_heard = Instant::now();
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return WatchEnd::Session(SessionEnd::Shutdown),
                _ = progress.tick() => {
                    if last_heard.elapsed() > LIVENESS {
                        return WatchEnd::Session(SessionEnd::Lost(format!("no answer from etcd for {:?}", last_heard.elapsed())));
                    }
                    if let Err(e) = watcher.request_progress().await {
                        return WatchEnd::Session(SessionEnd::Lost(format!("progress request: {e}")));
                    }
                }
                msg = stream.message() => {
                    let mut msg = msg;
                    let mut latest = None;
                    let mut dirty = false;
                    // Fold in every response already waiting: one state per burst.
                    loop {
                        match msg {
                            Ok(Some(resp)) => {
                                last_heard = Instant::now();
                                self.set_connected(true);
                                if resp.compact_revision() > 0 || resp.canceled() {
                                    let why = format!("watch cancelled (compact_revision {}, reason {:?})", resp.compact_revision(), resp.cancel_reason());
                                    return WatchEnd::Reread(why);
                                }
                                for event in resp.events() {
                                    let Some(kv) = event.kv() else { continue };
                                    latest = latest.max(Some(kv.mod_revision()));
                                    // Status and event keys (a fleet writes many) change no route.
                                    dirty |= match event.event_type() {
                                        EventType::Put => store.put(&self.source.keys, kv.key(), kv.value(), kv.mod_revision()),
                                        EventType::Delete => store.delete(&self.source.keys, kv.key()),
                                    };
                                }
                                // The newest revision seen, not the last header's: a progress
                                // notification can carry an older revision than events already
                                // delivered (etcd issue 15220), and a state published at the
                                // revision already live was taken for no change at all.
                                if let Some(h) = resp.header() {
                                    latest = latest.max(Some(h.revision()));
                                }
                            }
                            Ok(None) => return WatchEnd::Session(SessionEnd::Lost("watch stream ended".into())),
                            Err(e) => return WatchEnd::Session(SessionEnd::Lost(format!("watch: {e}"))),
                        }
                        match tokio::time::timeout(Duration::ZERO, stream.message()).await {
                            Ok(next) => msg = next,
                            Err(_) => break,
                        }
                    }
                    if dirty {
                        if let Some(rev) = latest {
                            self.publish(client, store, rev);
                        }
                    }
                }
            }
        }
    }
}

enum WatchEnd {
    /// Start over from a fresh read on the same connection.
    Reread(String),
    Session(SessionEnd),
}

#[async_trait]
impl ConfigSource for EtcdSource {
    fn initial_state(&self) -> ConfigState {
        self.initial.clone()
    }

    async fn run(
        self: Box<Self>,
        tx: watch::Sender<Arc<ConfigState>>,
        shutdown: watch::Receiver<bool>,
    ) {
        Runner {
            source: *self,
            tx,
            shutdown,
            counted: HashSet::new(),
            last_event_millis: 0,
            lkg: Arc::default(),
        }
        .run()
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// A store holding `(route/kind, json, mod_revision)` values, parsed as etcd values are.
    fn kv_store(pairs: &[(&str, &str, i64)]) -> Store {
        let keys = Keys::default();
        let mut store = Store::default();
        for (path, value, rev) in pairs {
            let key = format!("{}{path}", keys.routes());
            store.put(&keys, key.as_bytes(), value.as_bytes(), *rev);
        }
        store
    }

    const SPEC: &str = r#"{"match":{"path_prefix":"/"},"legacy":{"endpoints":["127.0.0.1:1"]},"new":{"endpoints":["127.0.0.1:2"]}}"#;

    fn empty() -> ConfigState {
        let mut s = ConfigState::initial(Vec::new());
        s.revision = 0;
        s
    }

    #[test]
    fn missing_weights_mean_all_legacy_and_weights_alone_serve_nothing() {
        let store = kv_store(&[
            ("a/spec", SPEC, 2),
            ("b/weights", r#"{"legacy":1,"new":1}"#, 3),
        ]);
        let Resolved {
            routes,
            errors,
            rejections,
            weights_revisions,
            ..
        } = resolve(&Keys::default(), &store, &empty());
        assert_eq!(weights_revisions["a"], 0, "no weights key: revision 0");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].id.as_str(), "a");
        assert_eq!(routes[0].weights, Weights::default());
        assert!(errors.is_empty() && rejections.is_empty());
    }

    #[test]
    fn invalid_values_keep_the_last_good_ones() {
        let good = kv_store(&[
            ("a/spec", SPEC, 2),
            ("a/weights", r#"{"legacy":75,"new":25}"#, 3),
        ]);
        let resolved = resolve(&Keys::default(), &good, &empty());
        assert_eq!(resolved.weights_revisions["a"], 3);
        let mut previous = empty();
        previous.routes = resolved.routes;
        previous.weights_revisions = resolved.weights_revisions;

        let bad = kv_store(&[
            ("a/spec", r#"{"match":{}}"#, 4),
            ("a/weights", r#"{"legacy":0,"new":0}"#, 5),
        ]);
        let Resolved {
            routes,
            errors,
            rejections,
            weights_revisions,
            ..
        } = resolve(&Keys::default(), &bad, &previous);
        assert_eq!(
            weights_revisions["a"], 3,
            "the revision of the weights still applied"
        );
        assert_eq!(routes.len(), 1, "the route stays with its last good spec");
        assert_eq!(routes[0].weights.new, 25.0, "and its last good weights");
        assert_eq!(rejections.len(), 2);
        let err = errors.get("a").unwrap();
        assert!(err.starts_with("routes/a/weights:"), "{err}");

        // A brand-new route with an invalid spec is simply not served.
        let Resolved { routes, errors, .. } =
            resolve(&Keys::default(), &kv_store(&[("n/spec", "{", 6)]), &empty());
        assert!(routes.is_empty());
        assert!(errors.get("n").unwrap().starts_with("routes/n/spec:"));
    }

    /// The state `publish` makes of `resolved` after `previous` (the parts `resolve` decides):
    /// new routes only when they changed, errors and revisions always.
    fn state_of(previous: &ConfigState, resolved: Resolved) -> ConfigState {
        let mut state = previous.clone();
        if resolved.changed {
            state.routes = resolved.routes;
        }
        state.weights_revisions = resolved.weights_revisions;
        state.route_errors = Arc::new(resolved.errors);
        state
    }

    /// Resolving only the changed routes gives what resolving every route gives, through random
    /// puts (valid and invalid specs and weights, equal values rewritten) and deletes.
    #[test]
    fn resolving_the_changed_routes_equals_resolving_all() {
        let keys = Keys::default();
        let ids = ["a", "b", "c", "d", "Bad Id"];
        let specs = [SPEC, r#"{"match":{}}"#, &SPEC.replace(":2", ":3")];
        let weights = [r#"{"legacy":1,"new":1}"#, r#"{"legacy":9,"new":1}"#, "{"];
        let mut rng = rand::rng();
        for _ in 0..200 {
            let mut store = Store::default();
            let mut state = empty();
            let mut rev = 1;
            for _ in 0..20 {
                for _ in 0..rng.random_range(1..4) {
                    rev += 1;
                    let id = ids[rng.random_range(0..ids.len())];
                    let kind = if rng.random_bool(0.5) {
                        "spec"
                    } else {
                        "weights"
                    };
                    let key = format!("{}{id}/{kind}", keys.routes());
                    if rng.random_bool(0.15) {
                        store.delete(&keys, key.as_bytes());
                    } else {
                        let value = if kind == "spec" {
                            specs[rng.random_range(0..specs.len())]
                        } else {
                            weights[rng.random_range(0..weights.len())]
                        };
                        store.put(&keys, key.as_bytes(), value.as_bytes(), rev);
                    }
                }
                let whole = store.whole;
                let all = resolve(&keys, &store, &state);
                let some = if whole {
                    resolve(&keys, &store, &state)
                } else {
                    resolve_changed(&keys, &store, &state)
                };
                store.published();
                assert_eq!(some.routes, all.routes);
                assert_eq!(some.errors, all.errors);
                assert_eq!(some.weights_revisions, all.weights_revisions);
                assert_eq!(some.changed, all.changed, "{:?}", all.routes);
                state = state_of(&state, some);
            }
        }
    }

    #[test]
    fn bad_route_id_in_a_key_is_rejected() {
        let Resolved { routes, errors, .. } = resolve(
            &Keys::default(),
            &kv_store(&[("Bad Id/spec", SPEC, 2)]),
            &empty(),
        );
        assert!(routes.is_empty());
        assert!(errors.contains_key("Bad Id"));
    }

    #[test]
    fn cold_start_prefers_lkg_then_fallback_else_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lkg.json");
        let fallback = cutover_config::parse_config_toml(crate::tests::ONE)
            .unwrap()
            .routes;
        let s = cold_start(Some(&path), Vec::new());
        assert!(!s.loaded, "nothing to serve: not loaded");
        let s = cold_start(Some(&path), fallback.clone());
        assert!(s.loaded);
        assert_eq!(s.routes.len(), 1);
        assert_eq!(s.revision, 0);
        let mut lkg_routes = fallback.clone();
        lkg_routes[0].weights.new = 50.0;
        lkg::write(&path, 9, &lkg_routes).unwrap();
        let s = cold_start(Some(&path), fallback);
        assert_eq!(
            s.routes[0].weights.new, 50.0,
            "the snapshot wins over the file's routes"
        );
        assert_eq!(s.connected, Some(false));
    }
}
