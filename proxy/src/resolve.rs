//! Backend names to addresses, outside snapshot building.
//!
//! Every `host:port` of a backend has one shared [`AddrCell`]; the snapshot's endpoints hold
//! the cells, never an address of their own. A name is looked up (asynchronously, bounded by
//! [`LOOKUP_TIMEOUT`]) before the first snapshot that uses it is built ([`Resolver::prepare`],
//! called by the control loop; [`Resolver::prepare_blocking`] at start), and again every
//! [`REFRESH_EVERY`] ([`Resolver::refresh`]): a backend whose address moved (a Kubernetes
//! Service behind DNS, a fail-over record) is followed without a config change, a name that
//! did not resolve is retried, and a failed lookup keeps the last address. Building a snapshot never waits for DNS. An IP literal is
//! its own address and is never looked up.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use cutover_config::{ConfigState, Endpoint, RouteConfig};
use tracing::{info, warn};

/// How long one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often every name in use is looked up again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// The address of one `host:port`, as last resolved (`None`: it does not resolve, or was
/// not looked up yet).
#[derive(Debug, Default)]
pub struct AddrCell {
    addr: ArcSwapOption<SocketAddr>,
    looked_up: AtomicBool,
}

impl AddrCell {
    fn fixed(addr: SocketAddr) -> Self {
        AddrCell {
            addr: ArcSwapOption::from_pointee(addr),
            looked_up: AtomicBool::new(true),
        }
    }

    pub fn get(&self) -> Option<SocketAddr> {
        self.addr.load().as_deref().copied()
    }

    fn set(&self, addr: Option<SocketAddr>) {
        self.addr.store(addr.map(Arc::new));
        self.looked_up.store(true, Ordering::Release);
    }
}

/// The cells of every name in use.
#[derive(Debug, Default)]
pub struct Resolver {
    names: Mutex<HashMap<(String, u16), Arc<AddrCell>>>,
    /// Names no snapshot held at the last refresh: forgotten if still unheld at the next
    /// (one refresh of grace covers a name prepared for a snapshot not built yet).
    unheld: Mutex<HashSet<(String, u16)>>,
    /// The revision of the last state whose names were all looked up: a state with a delta
    /// from it only brings the names of the routes the delta names.
    prepared: Mutex<Option<u64>>,
}

/// `host` as an IP address, when it is one (`[::1]` included).
fn literal(host: &str, port: u16) -> Option<SocketAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

/// Every endpoint of `routes` that is a name.
fn names<'a>(routes: impl Iterator<Item = &'a RouteConfig>) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = routes
        .flat_map(|r| r.spec.legacy.endpoints.iter().chain(&r.spec.new.endpoints))
        .filter(|e| literal(&e.host, e.port).is_none())
        .map(|e| (e.host.clone(), e.port))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The address to use of a name's: the first IPv4 one, else the first (Envoy's default,
/// `V4_PREFERRED`: `localhost` is `127.0.0.1` whether or not `::1` comes first).
fn preferred(addrs: impl Iterator<Item = SocketAddr>) -> Option<SocketAddr> {
    let mut first = None;
    for addr in addrs {
        if addr.is_ipv4() {
            return Some(addr);
        }
        first = first.or(Some(addr));
    }
    first
}

async fn lookup(host: &str, port: u16) -> Option<SocketAddr> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => preferred(addrs),
        Ok(Err(e)) => {
            warn!(endpoint = %format!("{host}:{port}"), error = %e, "backend name does not resolve; retried every {REFRESH_EVERY:?}");
            None
        }
        Err(_) => {
            warn!(endpoint = %format!("{host}:{port}"), "backend name lookup timed out; retried every {REFRESH_EVERY:?}");
            None
        }
    }
}

/// Look `names` up, [`LOOKUPS_IN_FLIGHT`] at a time.
async fn lookup_all(names: Vec<(String, u16)>) -> Vec<((String, u16), Option<SocketAddr>)> {
    let mut out = Vec::with_capacity(names.len());
    let mut pending = names.into_iter();
    let mut lookups = tokio::task::JoinSet::new();
    loop {
        while lookups.len() < LOOKUPS_IN_FLIGHT {
            let Some((host, port)) = pending.next() else {
                break;
            };
            lookups.spawn(async move {
                let addr = lookup(&host, port).await;
                ((host, port), addr)
            });
        }
        match lookups.join_next().await {
            Some(Ok(done)) => out.push(done),
            Some(Err(_)) => {}
            None => return out,
        }
    }
}

/// Lookups at once (a config with thousands of new names is not looked up one by one).
const LOOKUPS_IN_FLIGHT: usize = 32;

impl Resolver {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), Arc<AddrCell>>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cell of `endpoint`, for a snapshot's route: filled for an IP literal and a prepared
    /// name, empty (it does not resolve) for a name never prepared.
    pub fn cell(&self, endpoint: &Endpoint) -> Arc<AddrCell> {
        if let Some(addr) = literal(&endpoint.host, endpoint.port) {
            return Arc::new(AddrCell::fixed(addr));
        }
        self.lock()
            .entry((endpoint.host.clone(), endpoint.port))
            .or_default()
            .clone()
    }

    /// The routes of `state` that may name what no earlier state did: those its delta names
    /// when it comes from the last state prepared (a write to one route of 10,000 looks at
    /// one route, not at every endpoint), else all of them.
    fn candidates<'a>(&self, state: &'a ConfigState) -> Vec<&'a RouteConfig> {
        let prepared = *self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(delta) = state
            .delta
            .as_ref()
            .filter(|d| Some(d.base_revision) == prepared)
        {
            // The etcd source's routes are in id order; a route that is there but not found by
            // a binary search means another order: look at all of them.
            let mut found = Vec::with_capacity(delta.routes.len());
            for id in &delta.routes {
                match state.routes.binary_search_by(|r| r.id.cmp(id)) {
                    Ok(i) => found.push(&state.routes[i]),
                    Err(_) if state.routes.iter().any(|r| r.id == *id) => {
                        return state.routes.iter().collect();
                    }
                    Err(_) => {} // removed: nothing to look up
                }
            }
            return found;
        }
        state.routes.iter().collect()
    }

    /// Names of `state` never looked up.
    fn unknown(&self, state: &ConfigState) -> Vec<(String, u16)> {
        let candidates = names(self.candidates(state).into_iter());
        let known = self.lock();
        candidates
            .into_iter()
            .filter(|k| {
                known
                    .get(k)
                    .is_none_or(|c| !c.looked_up.load(Ordering::Acquire))
            })
            .collect()
    }

    fn store(&self, key: (String, u16), addr: Option<SocketAddr>) {
        self.lock().entry(key).or_default().set(addr);
    }

    /// Look up the names of `state` not looked up yet, before its snapshot is built.
    pub async fn prepare(&self, state: &ConfigState) {
        for (key, addr) in lookup_all(self.unknown(state)).await {
            self.store(key, addr);
        }
        self.prepared_at(state);
    }

    fn prepared_at(&self, state: &ConfigState) {
        *self.prepared.lock().unwrap_or_else(|p| p.into_inner()) = Some(state.revision);
    }

    /// [`Resolver::prepare`] on a thread outside any runtime (the first snapshot, at start).
    pub fn prepare_blocking(&self, state: &ConfigState) {
        for (host, port) in self.unknown(state) {
            let addr = (host.as_str(), port)
                .to_socket_addrs()
                .ok()
                .and_then(preferred);
            if addr.is_none() {
                warn!(endpoint = %format!("{host}:{port}"), "backend name does not resolve; retried every {REFRESH_EVERY:?}");
            }
            self.store((host, port), addr);
        }
        self.prepared_at(state);
    }

    /// Look every name in use up again; forget the names no snapshot holds any more.
    pub async fn refresh(&self) {
        let names: HashMap<(String, u16), Arc<AddrCell>> = {
            let mut known = self.lock();
            let mut unheld = self.unheld.lock().unwrap_or_else(|p| p.into_inner());
            known.retain(|k, cell| Arc::strong_count(cell) > 1 || !unheld.contains(k));
            *unheld = known
                .iter()
                .filter(|(_, cell)| Arc::strong_count(cell) == 1)
                .map(|(k, _)| k.clone())
                .collect();
            known.iter().map(|(k, c)| (k.clone(), c.clone())).collect()
        };
        for ((host, port), addr) in lookup_all(names.keys().cloned().collect()).await {
            let Some(cell) = names.get(&(host.clone(), port)) else {
                continue;
            };
            // A failed lookup keeps the last address: a DNS hiccup must not take a working
            // backend away (a name that never resolved stays without one).
            let before = cell.get();
            if addr.is_some() && addr != before {
                info!(endpoint = %format!("{host}:{port}"), from = ?before, to = ?addr, "backend address changed");
                cell.set(addr);
            }
        }
    }

    /// Refresh every [`REFRESH_EVERY`], for ever (a task of the control runtime).
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            self.refresh().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(endpoints: &[&str]) -> ConfigState {
        let list = endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let toml = format!(
            "[[routes]]\nid = \"r\"\nmatch = {{ path_prefix = \"/\" }}\n\
             legacy = {{ endpoints = [{list}] }}\nnew = {{ endpoints = [\"127.0.0.1:2\"] }}\n"
        );
        ConfigState::initial(cutover_config::parse_config_toml(&toml).unwrap().routes)
    }

    #[tokio::test]
    async fn names_are_looked_up_before_building_and_ip_literals_never() {
        let s = state(&["localhost:8080", "127.0.0.1:9", "[::1]:7"]);
        let resolver = Resolver::default();
        let endpoints = &s.routes[0].spec.legacy.endpoints;
        // Never prepared: the name has no address yet (nothing blocks on DNS while building).
        assert_eq!(resolver.cell(&endpoints[0]).get(), None);
        assert_eq!(
            resolver.cell(&endpoints[1]).get(),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(
            resolver.cell(&endpoints[2]).get(),
            Some("[::1]:7".parse().unwrap())
        );
        assert_eq!(
            names(s.routes.iter()),
            vec![("localhost".to_string(), 8080)]
        );
        resolver.prepare(&s).await;
        let cell = resolver.cell(&endpoints[0]);
        assert!(cell
            .get()
            .is_some_and(|a| a.ip().is_loopback() && a.port() == 8080));
        // Nothing left to look up for the same state.
        assert!(resolver.unknown(&s).is_empty());
    }

    #[test]
    fn a_delta_from_the_state_prepared_brings_only_its_routes_names() {
        let two = |b_host: &str| {
            let toml = format!(
                "[[routes]]\nid = \"a\"\nmatch = {{ host = \"a.test\" }}\n\
                 legacy = {{ endpoints = [\"a-old:1\"] }}\nnew = {{ endpoints = [\"a-new:1\"] }}\n\
                 [[routes]]\nid = \"b\"\nmatch = {{ host = \"b.test\" }}\n\
                 legacy = {{ endpoints = [\"{b_host}:1\"] }}\nnew = {{ endpoints = [\"127.0.0.1:2\"] }}\n"
            );
            ConfigState::initial(cutover_config::parse_config_toml(&toml).unwrap().routes)
        };
        let resolver = Resolver::default();
        let mut first = two("b-one");
        first.revision = 7;
        assert_eq!(resolver.unknown(&first).len(), 3);
        resolver.prepared_at(&first);
        let delta = |base| {
            Some(Arc::new(cutover_config::Delta {
                base_revision: base,
                routes: vec![cutover_config::RouteId::parse("a").unwrap()],
            }))
        };
        let mut next = two("b-two");
        next.revision = 8;
        next.delta = delta(7);
        let looked_at: Vec<String> = resolver.unknown(&next).into_iter().map(|k| k.0).collect();
        assert_eq!(looked_at, ["a-new", "a-old"], "only route a's names");
        next.delta = delta(6);
        assert_eq!(
            resolver.unknown(&next).len(),
            3,
            "another base: every route"
        );
    }

    #[tokio::test]
    async fn a_refresh_moves_every_holder_and_forgets_names_no_one_holds() {
        let resolver = Resolver::default();
        let s = state(&["localhost:8080"]);
        let held = resolver.cell(&s.routes[0].spec.legacy.endpoints[0]);
        // A stale address, as if the name had moved since.
        held.set(Some("10.9.9.9:8080".parse().unwrap()));
        resolver.refresh().await;
        assert!(
            held.get().is_some_and(|a| a.ip().is_loopback()),
            "the holder sees the new address"
        );
        drop(held);
        resolver.refresh().await;
        assert_eq!(resolver.lock().len(), 1, "one refresh of grace");
        resolver.refresh().await;
        assert!(
            resolver.lock().is_empty(),
            "no snapshot holds it: forgotten"
        );
    }

    #[test]
    fn ipv4_is_preferred_and_the_first_start_lookup_blocks() {
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(preferred([v6, v4].into_iter()), Some(v4));
        assert_eq!(preferred([v6].into_iter()), Some(v6));
        assert_eq!(preferred(std::iter::empty()), None);
        let resolver = Resolver::default();
        let s = state(&["localhost:8080"]);
        resolver.prepare_blocking(&s);
        assert_eq!(
            resolver.cell(&s.routes[0].spec.legacy.endpoints[0]).get(),
            Some("127.0.0.1:8080".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_last_address() {
        let resolver = Resolver::default();
        // `.invalid` never resolves (RFC 2606).
        let s = state(&["gone.invalid:8080"]);
        resolver.prepare(&s).await;
        let held = resolver.cell(&s.routes[0].spec.legacy.endpoints[0]);
        assert_eq!(held.get(), None, "never resolved: no address");
        let last: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        held.set(Some(last));
        resolver.refresh().await;
        assert_eq!(held.get(), Some(last));
    }
}
