//! The fleet: several proxy instances against one etcd.
//!
//! Each instance holds a lease ([`LEASE_TTL`], kept alive every second) and, bound to it,
//! registers `<prefix>/instances/<id>`, publishes the window statistics the controller evaluated
//! per route under `<prefix>/stats/<route>/<id>` every [`PUBLISH`], and campaigns in etcd's
//! election under `<prefix>/leader`. An instance that dies drops out with its lease: its keys vanish, and if it
//! led, the next campaigner leads. The leader reads every instance's fresh windows for the
//! weights it evaluates and merges them ([`WindowStats::merge`]), and reads each route's
//! `status` (to respect a pause, and to keep it in step with the weights).
//!
//! This task never blocks the controller's tick: the tick reads [`FleetState`], the last thing
//! this task learnt. Every etcd call has a short timeout; while etcd is unreachable the instance
//! is not leader (rollback on local evidence still works; nothing else needs etcd).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_config::{EtcdSettings, RouteId};
use etcd_client::{Client, GetOptions, PutOptions};

use crate::connect::{Backoff, EtcdConnect};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::DataPlane;
use crate::keys::Keys;
use crate::model::{rfc3339_now, unix_millis_now, Status};
use crate::window::{Published, WindowStats};

/// Lifetime of the instance's lease without keep-alives: how long a dead instance stays.
pub const LEASE_TTL: i64 = 3;
/// How often an instance publishes its windows and the leader merges the fleet's (the
/// controller evaluates more often, on the last merge).
pub const PUBLISH: Duration = Duration::from_millis(500);
/// A published window older than this is not merged.
const FRESH: Duration = Duration::from_secs(3);
/// Bound of every etcd call of this task.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// The fleet as this instance last saw it.
#[derive(Debug, Clone, Default)]
pub struct FleetState {
    pub leader: bool,
    pub instances: Vec<String>,
    /// Leader only: the merged window per route.
    pub merged: HashMap<RouteId, Merged>,
    /// Leader only: each route's status and its key's mod_revision.
    /// Kept from round to round (a round copies it only when it read a status), the statuses
    /// boxed so the table of 10,000 stays small enough to look up in cache.
    pub statuses: Arc<HashMap<RouteId, (Arc<Status>, i64)>>,
}

/// The fleet's merged window of one route.
#[derive(Debug, Clone)]
pub struct Merged {
    pub weights_revision: i64,
    pub instances: usize,
    pub stats: WindowStats,
}

/// Handle of the fleet task.
pub struct Fleet {
    connect: EtcdConnect,
    keys: Keys,
    instance: String,
    state: Arc<Mutex<Arc<FleetState>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    lease: Arc<Mutex<Option<(Client, i64)>>>,
    /// Windows the controller evaluated since the last publication, by route: published once
    /// each (the controller computes them anyway; nobody merges windows of routes it does not
    /// evaluate).
    pending: Pending,
    written: Written,
}

type Pending = Arc<Mutex<HashMap<RouteId, (i64, WindowStats)>>>;

/// Statuses this instance wrote itself (route, status, the key's mod_revision): the next
/// round takes them as read instead of reading them back (a leader taking over 10,000 routes
/// writes their statuses, and read them all back afterwards).
pub(super) type Written = Arc<Mutex<Vec<(RouteId, Status, i64)>>>;

impl Fleet {
    pub(super) fn new(settings: &EtcdSettings, keys: Keys, instance: String) -> Self {
        Fleet {
            // No per-request timeout on the channel: the campaign blocks for as long as
            // another instance leads. Every other call is bounded by `call`.
            connect: EtcdConnect::from_settings(settings),
            keys,
            instance,
            state: Arc::default(),
            task: Mutex::new(None),
            lease: Arc::default(),
            pending: Arc::default(),
            written: Arc::default(),
        }
    }

    /// Where the status writer reports the statuses it wrote.
    pub(super) fn written(&self) -> Written {
        self.written.clone()
    }

    /// Hand over `route`'s window (collected under `weights_revision`) for the next publication.
    pub(super) fn offer(&self, route: &RouteId, weights_revision: i64, stats: WindowStats) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(route.clone(), (weights_revision, stats));
    }

    /// The fleet as last seen (shared: a tick reads 10,000 statuses without copying them).
    pub fn state(&self) -> Arc<FleetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn start(&self, dp: Arc<dyn DataPlane>, shutdown: watch::Receiver<bool>) {
        let task = Task {
            connect: self.connect.clone(),
            keys: self.keys.clone(),
            instance: self.instance.clone(),
            state: self.state.clone(),
            lease: self.lease.clone(),
            pending: self.pending.clone(),
            written: self.written.clone(),
            dp,
        };
        let handle = tokio::spawn(task.run(shutdown));
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// Stop publishing and give up the lease, so this instance leaves the fleet (and the
    /// leadership) at once rather than after [`LEASE_TTL`].
    pub(super) async fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        let lease = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((mut client, id)) = lease {
            let _ = tokio::time::timeout(CALL_TIMEOUT, client.lease_revoke(id)).await;
        }
    }
}

struct Task {
    connect: EtcdConnect,
    keys: Keys,
    instance: String,
    state: Arc<Mutex<Arc<FleetState>>>,
    lease: Arc<Mutex<Option<(Client, i64)>>>,
    pending: Pending,
    written: Written,
    dp: Arc<dyn DataPlane>,
}

async fn call<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!(
            "{what}: {}",
            crate::connect::describe(&e.to_string())
        )),
        Err(_) => Err(format!("{what}: no answer within {CALL_TIMEOUT:?}")),
    }
}

impl Task {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), BACKOFF_CAP);
        loop {
            let reason = tokio::select! {
                _ = shutdown.changed() => return,
                r = self.session() => r,
            };
            self.set_state(FleetState::default());
            let wait = backoff.next_wait();
            warn!(%reason, retry_in = ?wait, "fleet: lost etcd; this instance is not leader until it is back (local rollback still works)");
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn set_state(&self, s: FleetState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }

    /// One lease's life: register, publish, campaign, until something fails.
    async fn session(&self) -> String {
        let mut client = match self.connect.connect().await {
            Ok(c) => c,
            Err(e) => return format!("connect: {e}"),
        };
        let lease = match call("lease grant", client.lease_grant(LEASE_TTL, None)).await {
            Ok(l) => l.id(),
            Err(e) => return e,
        };
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = Some((client.clone(), lease));
        let (mut keeper, mut alive) = match call("keep-alive", client.lease_keep_alive(lease)).await
        {
            Ok(k) => k,
            Err(e) => return e,
        };
        let me = json!({"id": self.instance, "host": crate::model::hostname(),
                        "pid": std::process::id(), "since": rfc3339_now()});
        if let Err(e) = call(
            "register",
            client.put(
                self.keys.instance(&self.instance),
                me.to_string(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await
        {
            return e;
        }
        info!(instance = %self.instance, lease, "fleet: registered; campaigning for leader");
        // The campaign blocks until this instance leads; it ends with the lease.
        let mut campaigner = client.clone();
        let (name, value) = (self.keys.leader(), self.instance.clone());
        let campaign = tokio::spawn(async move {
            loop {
                match campaigner
                    .campaign(name.clone(), value.clone(), lease)
                    .await
                {
                    Ok(_) => return,
                    Err(e) => {
                        debug!(error = %e, "campaign interrupted; campaigning again");
                        tokio::time::sleep(KEEPALIVE_EVERY).await;
                    }
                }
            }
        });
        let _abort = AbortOnDrop(campaign);
        // The lease is kept alive by its own task, never behind a round: a leader's round can
        // take longer than the lease's TTL (taking over 10,000 routes reads every status), and a
        // keep-alive waiting for it let the lease expire — the instance lost leadership, started
        // over and read them all again, for ever.
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<String>();
        // Why the lease was lost, once it is.
        let mut lost = std::pin::pin!(async move {
            lost_rx
                .await
                .unwrap_or_else(|_| "the keep-alive task ended".into())
        });
        let _keeper = AbortOnDrop(tokio::spawn(async move {
            let mut keepalive = tokio::time::interval(KEEPALIVE_EVERY);
            let reason = loop {
                tokio::select! {
                    _ = keepalive.tick() => {
                        if let Err(e) = call("keep-alive", keeper.keep_alive()).await {
                            break e;
                        }
                    }
                    msg = alive.message() => match msg {
                        Ok(Some(r)) if r.ttl() > 0 => {}
                        Ok(Some(_)) => break "the lease expired".into(),
                        Ok(None) => break "the keep-alive stream ended".into(),
                        Err(e) => break format!("keep-alive: {e}"),
                    },
                }
            };
            let _ = lost_tx.send(reason);
        }));
        let mut tick = tokio::time::interval(PUBLISH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_leader = false;
        loop {
            tokio::select! {
                reason = &mut lost => return reason,
                _ = tick.tick() => {
                    let round = tokio::select! {
                        reason = &mut lost => return reason,
                        round = self.round(&mut client, lease) => round,
                    };
                    match round {
                        Ok(state) => {
                            if state.leader != was_leader {
                                info!(instance = %self.instance, leader = state.leader, "fleet: leadership changed");
                                was_leader = state.leader;
                            }
                            self.set_state(state);
                        }
                        Err(e) => {
                            debug!(error = %e, "fleet round failed");
                            // Unsure whether still leader: act as a follower.
                            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                            let s = Arc::make_mut(&mut s);
                            s.leader = false;
                            s.merged.clear();
                        }
                    }
                }
            }
        }
    }

    /// Publish this instance's windows; learn the leader, the instances and (as leader) the
    /// merged windows and statuses.
    async fn round(&self, client: &mut Client, lease: i64) -> Result<FleetState, String> {
        let offered = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for (route, (weights_revision, stats)) in offered {
            let published = Published {
                instance: self.instance.clone(),
                at_ms: unix_millis_now(),
                weights_revision,
                stats: stats.to_wire(),
            };
            let body = serde_json::to_string(&published).map_err(|e| e.to_string())?;
            call(
                "publish stats",
                client.put(
                    self.keys.stats(&route, &self.instance),
                    body,
                    Some(PutOptions::new().with_lease(lease)),
                ),
            )
            .await?;
        }
        let leader = call("leader", client.leader(self.keys.leader()))
            .await
            .ok()
            .and_then(|r| r.kv().map(|kv| kv.lease() == lease))
            .unwrap_or(false);
        let instances = call(
            "instances",
            client.get(
                self.keys.instances(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await?
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok())
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .collect();
        let mut state = FleetState {
            leader,
            instances,
            ..FleetState::default()
        };
        if !leader {
            return Ok(state);
        }
        let routes = self.dp.routes();
        let now_ms = unix_millis_now();
        // Every instance's published windows in one read (only routes with traffic publish).
        let stats_prefix = format!("{}/stats/", self.keys.prefix());
        let published = call(
            "read stats",
            client.get(stats_prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut by_route: HashMap<&str, Vec<&[u8]>> = HashMap::new();
        for kv in published.kvs() {
            let route = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(stats_prefix.as_str()))
                .and_then(|rest| rest.split_once('/'))
                .map(|(route, _instance)| route);
            if let Some(route) = route {
                by_route.entry(route).or_default().push(kv.value());
            }
        }
        // Statuses known from earlier rounds: read again only what may have moved (routes with
        // a ramp, whose pause matters each tick; statuses older than the weights; missing ones).
        let mut statuses = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .statuses
            .clone();
        let written = std::mem::take(&mut *self.written.lock().unwrap_or_else(|p| p.into_inner()));
        if !written.is_empty() {
            let known = Arc::make_mut(&mut statuses);
            for (id, status, mod_revision) in written {
                if known.get(&id).is_none_or(|(_, r)| *r < mod_revision) {
                    known.insert(id, (Arc::new(status), mod_revision));
                }
            }
        }
        let mut to_read = Vec::new();
        for route in &routes {
            if let Some(values) = by_route.get(route.id.as_str()) {
                let mut merged = WindowStats::default();
                let mut n = 0;
                for value in values {
                    let Ok(p) = serde_json::from_slice::<Published>(value) else {
                        warn!(route = %route.id, "fleet: unreadable published stats ignored");
                        continue;
                    };
                    let fresh = now_ms.saturating_sub(p.at_ms) <= FRESH.as_millis() as u64;
                    if !fresh || p.weights_revision != route.weights_revision {
                        continue;
                    }
                    match p.stats.decode() {
                        Ok(s) => {
                            merged.merge(&s);
                            n += 1;
                        }
                        Err(e) => {
                            warn!(instance = %p.instance, error = %e, "fleet: undecodable stats ignored")
                        }
                    }
                }
                state.merged.insert(
                    route.id.clone(),
                    Merged {
                        weights_revision: route.weights_revision,
                        instances: n,
                        stats: merged,
                    },
                );
            }
            let current = statuses
                .get(&route.id)
                .is_some_and(|(s, _)| s.weights_revision >= route.weights_revision);
            if route.spec.ramp.is_some() || (route.weights_revision > 0 && !current) {
                to_read.push(route.id.clone());
            }
        }
        if statuses.len() > routes.len() {
            // Routes were deleted: forget their statuses.
            let live: HashSet<&RouteId> = routes.iter().map(|r| &r.id).collect();
            Arc::make_mut(&mut statuses).retain(|id, _| live.contains(id));
        }
        if to_read.is_empty() {
            state.statuses = statuses;
            return Ok(state);
        }
        let known = Arc::make_mut(&mut statuses);
        for id in &to_read {
            known.remove(id);
        }
        // The statuses to read, a few dozen requests in flight (a leader taking over 10,000
        // routes reads them all once).
        let mut reads = tokio::task::JoinSet::new();
        let mut ids = to_read.into_iter();
        loop {
            while reads.len() < STATUS_READS_IN_FLIGHT {
                let Some(id) = ids.next() else { break };
                let (mut client, key) = (client.clone(), self.keys.status(&id));
                reads.spawn(async move { (id, call("read status", client.get(key, None)).await) });
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            let (id, status) = done.map_err(|e| e.to_string())?;
            if let Some(kv) = status?.kvs().first() {
                if let Ok(s) = serde_json::from_slice::<Status>(kv.value()) {
                    known.insert(id, (Arc::new(s), kv.mod_revision()));
                }
            }
        }
        state.statuses = statuses;
        Ok(state)
    }
}

/// Status reads in flight at most in one round.
const STATUS_READS_IN_FLIGHT: usize = 32;

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
