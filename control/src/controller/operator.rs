//! The admin API's operator actions without etcd (SPEC §10): each one does in-process what the
//! `cutover ctl` command of the same name does in etcd — the same weights, phase, refusals and
//! event — as an [`Override`] in the data plane. It holds until the config file's weights for
//! the route change (the override's source revision moves on), and every action that writes
//! weights is a new operator write, so it starts a fresh evaluation window even with equal
//! weights (SPEC §11).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cutover_config::operator::{Action, ActionError, ActionRequest, BoxFuture, Operator};
use cutover_config::{Phase, RouteId, Weights};
use serde_json::{json, Value};

use super::{ControlView, DataPlane, LiveRoute, Override};
use crate::ctl::ramp::{self, PausePlan, ResumePlan};
use crate::model::{Event, EventKind, RollbackRecord};

/// [`Operator`] in-process, for a proxy whose routes come from its config file.
pub struct LocalOperator {
    dp: Arc<dyn DataPlane>,
    view: Arc<ControlView>,
    /// The last operator write's number (the overrides' [`Override::write`]).
    writes: AtomicU64,
    /// One action at a time: each reads the route and writes on what it read.
    acting: Mutex<()>,
}

impl std::fmt::Debug for LocalOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalOperator").finish_non_exhaustive()
    }
}

/// What an action puts in effect: weights and phase, and the event.
struct Decision {
    weights: Weights,
    phase: Phase,
    kind: EventKind,
    reason: String,
    /// A new operator write (weights written), rather than a phase change on the same ones.
    writes_weights: bool,
    rollback: bool,
}

impl LocalOperator {
    pub fn new(dp: Arc<dyn DataPlane>, view: Arc<ControlView>) -> Self {
        LocalOperator {
            dp,
            view,
            writes: AtomicU64::new(0),
            acting: Mutex::new(()),
        }
    }

    fn route(&self, id: &RouteId) -> Result<LiveRoute, ActionError> {
        self.dp
            .routes()
            .into_iter()
            .find(|r| &r.id == id)
            .ok_or_else(|| {
                ActionError::NoRoute(format!(
                    "no route {id}; routes come from the config file's [[routes]] (list them \
                     with GET /api/v1/routes)"
                ))
            })
    }

    fn act_now(&self, request: ActionRequest) -> Result<Value, ActionError> {
        let _one = self.acting.lock().unwrap_or_else(|p| p.into_inner());
        let route = self.route(&request.route)?;
        let id = route.id.as_str();
        let by = request.by.as_str();
        let decision = match decide(&route, &request)? {
            Decided::Write(decision) => decision,
            Decided::Nothing(message) => {
                return Ok(json!({
                    "route": id,
                    "written": false,
                    "phase": phase(&route).as_str(),
                    "message": message,
                }))
            }
        };
        let write = if decision.writes_weights {
            self.writes.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            route.overridden.as_ref().map_or(0, |o| o.write)
        };
        let event = Event::now(decision.kind, decision.reason.clone(), by)
            .weights(Some(&route.weights), &decision.weights);
        let rollback = decision.rollback.then(|| RollbackRecord {
            at: event.at.clone(),
            rule: "operator".to_string(),
            reason: decision.reason.clone(),
            by: by.to_string(),
            evidence: None,
            gate: None,
        });
        self.dp.set_override(
            id,
            Override {
                weights_revision: route.weights_revision,
                weights: decision.weights,
                phase: decision.phase,
                rollback,
                write,
            },
        );
        self.view.push_event(id, &event);
        Ok(json!({
            "route": id,
            "written": true,
            "from": route.weights.to_json(),
            "to": decision.weights.to_json(),
            "phase": decision.phase.as_str(),
            "weights_revision": route.weights_revision,
            "in_process": true,
            "event": event,
        }))
    }
}

/// The phase the route is in: `paused` and `rolled_back` as its override says, anything else
/// as its weights imply (as `cutover ctl` reads the status).
fn phase(route: &LiveRoute) -> Phase {
    match &route.overridden {
        Some(o) if matches!(o.phase, Phase::Paused | Phase::RolledBack) => o.phase,
        _ => route.weights.implied_phase(),
    }
}

/// What an action comes to.
enum Decided {
    Write(Decision),
    /// Nothing to write (pause of a paused route, resume of a ramp in progress): why.
    Nothing(String),
}

/// What `request` does to `route`.
fn decide(route: &LiveRoute, request: &ActionRequest) -> Result<Decided, ActionError> {
    let id = route.id.as_str();
    let current = route.weights;
    let weights = |legacy: f64, new: f64, shadow: f64| {
        Weights::new(legacy, new, shadow).map_err(|e| ActionError::Refused(e.to_string()))
    };
    let new_weights = |weights: Weights, kind: EventKind, reason: String| Decision {
        phase: weights.implied_phase(),
        weights,
        kind,
        reason,
        writes_weights: true,
        rollback: false,
    };
    let reason = request.reason.clone();
    let by = request.by.as_str();
    let decision = match &request.action {
        Action::Set {
            legacy,
            new,
            shadow,
        } => new_weights(
            weights(*legacy, *new, shadow.unwrap_or(current.shadow))?,
            EventKind::Weights,
            reason.unwrap_or_else(|| "set on the admin API".to_string()),
        ),
        Action::Promote => new_weights(
            weights(0.0, 100.0, current.shadow)?,
            EventKind::Weights,
            reason.unwrap_or_else(|| "promote".to_string()),
        ),
        Action::Rollback => Decision {
            phase: Phase::RolledBack,
            rollback: true,
            ..new_weights(
                weights(100.0, 0.0, current.shadow)?,
                EventKind::Rollback,
                reason.unwrap_or_else(|| "operator rollback".to_string()),
            )
        },
        Action::Pause | Action::Resume => {
            let verb = request.action.name();
            let first_step = route
                .spec
                .ramp
                .as_ref()
                .and_then(|r| r.steps.first().copied())
                .ok_or_else(|| ActionError::Refused(ramp::no_ramp(id, verb)))?;
            let now = phase(route);
            if request.action == Action::Pause {
                match ramp::plan_pause(now) {
                    PausePlan::Refuse => {
                        return Err(ActionError::Refused(ramp::cannot_pause(
                            id, now, first_step,
                        )))
                    }
                    PausePlan::AlreadyPaused => {
                        return Ok(Decided::Nothing(format!(
                            "{id} is already paused; nothing written — resume it with POST \
                             /api/v1/routes/{id}/resume"
                        )))
                    }
                    PausePlan::Pause => Decision {
                        weights: current,
                        phase: Phase::Paused,
                        kind: EventKind::Pause,
                        reason: reason.unwrap_or_else(|| format!("paused by {by}")),
                        writes_weights: false,
                        rollback: false,
                    },
                }
            } else {
                if let Some(breach) = gate_breach(route) {
                    return Err(ActionError::Refused(ramp::blocked_by_gate(
                        id, breach, &current,
                    )));
                }
                match ramp::plan_resume(now, &current, first_step) {
                    ResumePlan::Nothing => {
                        return Ok(Decided::Nothing(ramp::nothing_to_resume(id, now)))
                    }
                    ResumePlan::Unpause(implied) => Decision {
                        weights: current,
                        phase: implied,
                        kind: EventKind::Resume,
                        reason: reason.unwrap_or_else(|| format!("resumed by {by}")),
                        writes_weights: false,
                        rollback: false,
                    },
                    ResumePlan::Start(step) => new_weights(
                        weights(100.0 - step, step, current.shadow)?,
                        EventKind::Resume,
                        reason.unwrap_or_else(|| format!("ramp started at {step}% by {by}")),
                    ),
                }
            }
        }
    };
    Ok(Decided::Write(decision))
}

/// The shadow-phase gate's breach of the weights in effect, which blocks a ramp start until an
/// operator writes the weights (SPEC §11).
fn gate_breach(route: &LiveRoute) -> Option<&RollbackRecord> {
    route
        .overridden
        .as_ref()
        .filter(|o| o.weights_revision == route.weights_revision && o.phase == Phase::RolledBack)
        .and_then(|o| o.rollback.as_ref())
        .filter(|r| r.is_gate())
}

impl Operator for LocalOperator {
    fn act(&self, request: ActionRequest) -> BoxFuture<'_, Result<Value, ActionError>> {
        let result = self.act_now(request);
        Box::pin(async move { result })
    }

    fn history(&self, route: RouteId, limit: u32) -> BoxFuture<'_, Result<Value, ActionError>> {
        let result = self.route(&route).map(|_| {
            let events = self.view.snapshot().events;
            let mine: Vec<Value> = events
                .into_iter()
                .rev()
                .filter(|e| e["route"] == route.as_str())
                .take(limit as usize)
                .collect();
            Value::Array(mine)
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::controller::tests::plane_with;
    use crate::controller::Controller;

    const RAMP: &str = r#""ramp": {"steps": [5, 25, 100], "hold": "1s", "auto": true},
        "rollback": {}"#;

    fn act(op: &LocalOperator, action: Action) -> Result<Value, ActionError> {
        op.act_now(ActionRequest {
            route: RouteId::parse("orders").unwrap(),
            action,
            reason: None,
            by: "alice".into(),
        })
    }

    fn weights(legacy: f64, new: f64, shadow: f64) -> Weights {
        Weights::new(legacy, new, shadow).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_ramp_holds_in_process_until_resumed() {
        let dp = plane_with(weights(95.0, 5.0, 0.0), RAMP);
        let view = Arc::new(ControlView::default());
        let op = LocalOperator::new(dp.clone(), view.clone());
        let mut ctl = Controller::local(dp.clone(), view.clone(), "i".into(), None);
        let paused = act(&op, Action::Pause).unwrap();
        assert_eq!(paused["phase"], "paused");
        let o = dp.route.lock().unwrap().overridden.clone().unwrap();
        assert_eq!(
            (o.phase, o.weights, o.write),
            (Phase::Paused, weights(95.0, 5.0, 0.0), 0)
        );
        assert_eq!(act(&op, Action::Pause).unwrap()["written"], false);
        let t0 = tokio::time::Instant::now();
        ctl.tick(t0);
        ctl.tick(t0 + Duration::from_secs(10));
        assert_eq!(dp.route.lock().unwrap().weights.new, 5.0, "paused: no step");
        assert_eq!(act(&op, Action::Resume).unwrap()["phase"], "canary");
        ctl.tick(t0 + Duration::from_secs(20));
        assert_eq!(
            dp.route.lock().unwrap().weights.new,
            25.0,
            "resumed: the next step"
        );
        let kinds: Vec<String> = view
            .snapshot()
            .events
            .iter()
            .map(|e| e["kind"].to_string())
            .collect();
        assert_eq!(kinds, [r#""pause""#, r#""resume""#, r#""ramp_step""#]);
    }

    #[test]
    fn resume_is_refused_after_the_shadow_gate_until_the_weights_are_written() {
        let dp = plane_with(weights(100.0, 0.0, 100.0), RAMP);
        let op = LocalOperator::new(dp.clone(), Arc::new(ControlView::default()));
        let gate = RollbackRecord {
            at: "2026-12-07T00:00:00.000Z".into(),
            rule: "divergence".into(),
            reason: "shadow phase: divergence 40%".into(),
            by: "i".into(),
            evidence: None,
            gate: Some(Phase::Shadow),
        };
        dp.set_override(
            "orders",
            Override {
                weights_revision: 7,
                weights: weights(100.0, 0.0, 100.0),
                phase: Phase::RolledBack,
                rollback: Some(gate),
                write: 0,
            },
        );
        let Err(ActionError::Refused(why)) = act(&op, Action::Resume) else {
            panic!("resume after the gate must be refused")
        };
        assert!(
            why.contains("shadow-phase gate rolled it back (divergence"),
            "{why}"
        );
        let set = Action::Set {
            legacy: 100.0,
            new: 0.0,
            shadow: None,
        };
        assert_eq!(act(&op, set).unwrap()["phase"], "shadow");
        let started = act(&op, Action::Resume).unwrap();
        assert_eq!(
            started["to"],
            serde_json::json!({"legacy": 95, "new": 5, "shadow": 100})
        );
    }

    #[test]
    fn every_weights_write_is_a_new_operator_write() {
        let dp = plane_with(weights(50.0, 50.0, 0.0), RAMP);
        let op = LocalOperator::new(dp.clone(), Arc::new(ControlView::default()));
        let write = || {
            dp.route
                .lock()
                .unwrap()
                .overridden
                .as_ref()
                .map(|o| o.write)
        };
        let set = || Action::Set {
            legacy: 50.0,
            new: 50.0,
            shadow: None,
        };
        act(&op, set()).unwrap();
        assert_eq!(write(), Some(1));
        act(&op, set()).unwrap();
        assert_eq!(
            write(),
            Some(2),
            "equal weights: a new write (a fresh window)"
        );
        act(&op, Action::Pause).unwrap();
        assert_eq!(write(), Some(2), "a pause writes no weights");
        let rolled = act(&op, Action::Rollback).unwrap();
        assert_eq!(rolled["phase"], "rolled_back");
        let o = dp.route.lock().unwrap().overridden.clone().unwrap();
        assert_eq!(
            o.rollback.map(|r| (r.rule, r.by)),
            Some(("operator".into(), "alice".into()))
        );
        assert_eq!(o.write, 3);
    }
}
