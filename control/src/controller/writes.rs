//! The controller's writes to etcd: rollback, ramp step, status. Each goes through the guarded
//! writer `cutover ctl` uses too ([`crate::writer`]: one transaction, one event-key scheme),
//! conditioned on the weights key's mod_revision (and the status key's, for status), so an
//! operator's newer write always wins and nothing is lost; each runs in its own task and never
//! blocks the controller's tick.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_config::{EtcdSettings, Phase, RouteId, Weights};
use etcd_client::{Client, Txn, TxnResponse};
use tracing::{info, warn};

use super::{ConfigWriter, LiveRoute, Notifier};
use crate::connect::{Backoff, EtcdConnect};
use crate::keys::Keys;
use crate::model::{Event, RollbackRecord, Status};
use crate::writer::{self, Guard, Outcome, Write};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_START: Duration = Duration::from_millis(250);
const RETRY_CAP: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(super) struct EtcdWriter {
    inner: Arc<Inner>,
}

struct Inner {
    connect: EtcdConnect,
    keys: Keys,
    instance: String,
    client: tokio::sync::Mutex<Option<Client>>,
    /// Status writes in flight or done, by route: the weights revision they describe.
    status_written: Mutex<HashMap<RouteId, i64>>,
    /// The fleet's inbox of statuses written here (so its round need not read them back).
    written: super::fleet::Written,
    /// Bounds the status writes in flight: a leader taking over 10,000 routes writes them a
    /// few dozen at a time, not all at once ("etcdserver: too many requests").
    status_slots: Arc<tokio::sync::Semaphore>,
}

/// Status writes in flight at most.
const STATUS_WRITES_IN_FLIGHT: usize = 32;

/// Why a guarded write did not land.
enum Failure {
    /// The weights (or status) changed since: someone else's newer write wins.
    Superseded(String),
    /// etcd did not answer: try again.
    Unavailable(String),
}

impl EtcdWriter {
    pub(super) fn new(
        settings: &EtcdSettings,
        keys: Keys,
        instance: String,
        written: super::fleet::Written,
    ) -> Self {
        EtcdWriter {
            inner: Arc::new(Inner {
                connect: EtcdConnect::from_settings(settings).with_request_timeout(CALL_TIMEOUT),
                keys,
                instance,
                client: tokio::sync::Mutex::new(None),
                status_written: Mutex::default(),
                written,
                status_slots: Arc::new(tokio::sync::Semaphore::new(STATUS_WRITES_IN_FLIGHT)),
            }),
        }
    }

    /// One attempt of [`EtcdWriter::gate`]: `Ok(None)` when the status already records a
    /// rollback of these weights.
    async fn write_gate(
        &self,
        route: &str,
        read: i64,
        record: &RollbackRecord,
        event: &Event,
    ) -> Result<Option<i64>, Failure> {
        let keys = &self.inner.keys;
        let (wk, sk) = (keys.weights(route), keys.status(route));
        let mut client = self.client().await.map_err(Failure::Unavailable)?;
        if read_key(&mut client, &wk).await?.map_or(0, |(rev, _)| rev) != read {
            return Err(Failure::Superseded(format!(
                "{wk} changed since revision {read}"
            )));
        }
        let current = read_key(&mut client, &sk).await?;
        let status_rev = current.as_ref().map_or(0, |(rev, _)| *rev);
        let recorded = current
            .and_then(|(_, v)| serde_json::from_slice::<Status>(&v).ok())
            .is_some_and(|s| s.phase == Phase::RolledBack && s.weights_revision == read);
        if recorded {
            return Ok(None);
        }
        let status = Status {
            phase: Phase::RolledBack,
            weights_revision: read,
            rollback: Some(record.clone()),
        };
        let landed = self
            .guarded(
                route,
                &[
                    Guard::weights(wk.clone(), read),
                    Guard::status(sk.clone(), status_rev),
                ],
                &[(
                    sk.clone(),
                    serde_json::to_string(&status).expect("status serialises"),
                )],
                Some(event),
            )
            .await
            .map_err(Failure::Unavailable)?;
        match landed {
            Some(_) => Ok(Some(read)),
            // The weights or the status changed since they were read: read them again.
            None => Err(Failure::Unavailable(format!(
                "{wk} or {sk} changed while writing"
            ))),
        }
    }

    async fn client(&self) -> Result<Client, String> {
        let mut slot = self.inner.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = self
            .inner
            .connect
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Run one transaction; on no answer, reconnect next time (the channel may be stuck on a
    /// dead endpoint).
    async fn run(&self, txn: Txn) -> Result<TxnResponse, String> {
        let mut client = self.client().await?;
        match tokio::time::timeout(CALL_TIMEOUT, client.txn(txn)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        }
        .inspect_err(|_| {
            if let Ok(mut slot) = self.inner.client.try_lock() {
                *slot = None;
            }
        })
    }

    /// `puts` (and `event`, under this instance's event key) through the shared guarded
    /// writer ([`crate::writer`], as `cutover ctl` writes): the revision it landed at, or
    /// `None` when a guard changed since it was read.
    async fn guarded(
        &self,
        route: &str,
        guards: &[Guard],
        puts: &[(String, String)],
        event: Option<&Event>,
    ) -> Result<Option<i64>, String> {
        let write = Write {
            route,
            guards,
            puts,
            event: event.map(|e| (e, self.inner.instance.as_str())),
            need_spec: false,
        };
        match writer::write(&self.inner.keys, &write, |txn| self.run(txn)).await? {
            Outcome::Landed { revision, .. } => Ok(Some(revision)),
            Outcome::Changed { .. } | Outcome::SpecGone => Ok(None),
            Outcome::NoEventKey => Err(format!("no free event key for {route}")),
        }
    }

    /// Weights + event in one transaction guarded on the weights' `read` revision, then the
    /// status (built for the new revision) guarded on the weights just written.
    async fn write_weights(
        &self,
        route: &str,
        read: i64,
        to: Weights,
        event: &Event,
        status: impl Fn(i64) -> Status,
    ) -> Result<i64, Failure> {
        let keys = &self.inner.keys;
        let wk = keys.weights(route);
        let landed = self
            .guarded(
                route,
                &[Guard::weights(wk.clone(), read)],
                &[(wk.clone(), to.to_json().to_string())],
                Some(event),
            )
            .await
            .map_err(Failure::Unavailable)?;
        let Some(rev) = landed else {
            return Err(Failure::Superseded(format!(
                "{wk} changed since revision {read}"
            )));
        };
        let body = serde_json::to_string(&status(rev)).expect("status serialises");
        let status = self
            .guarded(
                route,
                &[Guard::weights(wk.clone(), rev)],
                &[(keys.status(route), body)],
                None,
            )
            .await;
        // The weights landed; a status that does not is caught up by the leader.
        if let Err(e) = status {
            warn!(%route, error = %e, "status not written after the weights");
        }
        Ok(rev)
    }
}

impl ConfigWriter for EtcdWriter {
    /// Write the rollback of `route` (read at `weights_revision`) in a task that retries until
    /// it lands or an operator's newer write supersedes it.
    fn rollback(
        &self,
        route: &str,
        weights_revision: i64,
        to: Weights,
        record: RollbackRecord,
        event: Event,
    ) {
        let this = self.clone();
        let route = route.to_string();
        tokio::spawn(async move {
            let status = |rev| Status {
                phase: Phase::RolledBack,
                weights_revision: rev,
                rollback: Some(record.clone()),
            };
            let written = retry(&route, "rollback", || {
                this.write_weights(&route, weights_revision, to, &event, status)
            })
            .await;
            if let Some(rev) = written {
                info!(%route, revision = rev, "rollback written to etcd");
            }
        });
    }

    /// Write a shadow-phase gate's breach of `route` (weights read at `weights_revision`):
    /// status `rolled_back` for those weights and the event, in one transaction guarded on the
    /// weights' revision and on the status as read. The weights are not touched; an operator's
    /// newer write wins; when several instances breach on the same weights, the first one's
    /// record stands, and only its instance posts the webhook (`notify`), once it landed.
    /// Retried like a rollback while etcd does not answer.
    fn gate(
        &self,
        route: &str,
        weights_revision: i64,
        record: RollbackRecord,
        event: Event,
        notify: Option<Notifier>,
    ) {
        let this = self.clone();
        let route = route.to_string();
        tokio::spawn(async move {
            let written = retry(&route, "shadow-phase rollback", || {
                this.write_gate(&route, weights_revision, &record, &event)
            })
            .await;
            match written {
                Some(Some(rev)) => {
                    info!(%route, revision = rev, "shadow-phase rollback written to etcd (weights kept)");
                    if let Some(n) = &notify {
                        n.send(&route, &event);
                    }
                }
                Some(None) => {
                    info!(%route, "shadow-phase rollback already recorded in etcd for these weights")
                }
                None => {}
            }
        });
    }

    /// Write a ramp step (one attempt; the next tick decides again if it did not land).
    fn ramp_step(&self, route: &str, weights_revision: i64, to: Weights, event: Event) {
        let this = self.clone();
        let route = route.to_string();
        tokio::spawn(async move {
            let status = |rev| Status {
                phase: to.implied_phase(),
                weights_revision: rev,
                rollback: None,
            };
            match this
                .write_weights(&route, weights_revision, to, &event, status)
                .await
            {
                Ok(rev) => info!(%route, revision = rev, to = %to.to_json(), "ramp step written"),
                Err(Failure::Superseded(why) | Failure::Unavailable(why)) => {
                    warn!(%route, %why, "ramp step not written")
                }
            }
        });
    }

    /// Leader: when `status` describes older weights than the route's (or is missing), write
    /// the phase the weights imply. A status written for the current weights (a rollback, a
    /// pause) is left alone; the write is guarded on both keys.
    fn keep_status_in_step(&self, route: &LiveRoute, status: Option<&(Arc<Status>, i64)>) {
        if route.weights_revision <= 0 || route.overridden.is_some() {
            return;
        }
        if status.is_some_and(|(s, _)| s.weights_revision >= route.weights_revision) {
            return;
        }
        {
            let mut done = self
                .inner
                .status_written
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if done.get(&route.id) == Some(&route.weights_revision) {
                return;
            }
            done.insert(route.id.clone(), route.weights_revision);
        }
        let this = self.clone();
        let (id, rev) = (route.id.clone(), route.weights_revision);
        let status_rev = status.map_or(0, |(_, r)| *r);
        let next = Status {
            phase: route.weights.implied_phase(),
            weights_revision: rev,
            rollback: None,
        };
        tokio::spawn(async move {
            let Ok(_slot) = this.inner.status_slots.clone().acquire_owned().await else {
                return;
            };
            let keys = &this.inner.keys;
            let (wk, sk) = (keys.weights(&id), keys.status(&id));
            let body = serde_json::to_string(&next).expect("status serialises");
            let guards = &[
                Guard::weights(wk.clone(), rev),
                Guard::status(sk.clone(), status_rev),
            ];
            match this.guarded(&id, guards, &[(sk.clone(), body)], None).await {
                Ok(Some(mod_revision)) => {
                    info!(route = %id, phase = %next.phase, weights_revision = rev, "status kept in step with the weights");
                    this.inner
                        .written
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((id, next, mod_revision));
                }
                Ok(None) => {}
                Err(e) => {
                    // Let a later tick try again.
                    this.inner
                        .status_written
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    warn!(route = %id, error = %e, "status not written");
                }
            }
        });
    }
}

/// Runs `attempt` until it lands (`Some`) or a newer write of the weights supersedes it
/// (`None`), backing off from [`RETRY_START`] to [`RETRY_CAP`] while etcd does not answer; the
/// local decision holds meanwhile. `what` names the write in the log.
async fn retry<T, F, Fut>(route: &str, what: &str, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut backoff = Backoff::new(RETRY_START, RETRY_CAP);
    loop {
        match attempt().await {
            Ok(v) => return Some(v),
            Err(Failure::Superseded(why)) => {
                info!(%route, %why, "{what} not written to etcd: a newer write of the weights wins (it starts fresh evaluation windows)");
                return None;
            }
            Err(Failure::Unavailable(why)) => {
                let wait = backoff.next_wait();
                warn!(%route, %why, retry_in = ?wait, "{what} not yet written to etcd; the local decision holds");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// `key`'s mod_revision and value, `None` when it does not exist.
async fn read_key(client: &mut Client, key: &str) -> Result<Option<(i64, Vec<u8>)>, Failure> {
    let got = tokio::time::timeout(CALL_TIMEOUT, client.get(key, None))
        .await
        .map_err(|_| Failure::Unavailable(format!("no answer within {CALL_TIMEOUT:?}")))?
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    Ok(got
        .kvs()
        .first()
        .map(|kv| (kv.mod_revision(), kv.value().to_vec())))
}
