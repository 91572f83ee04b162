//! `pause` and `resume`: an operator's hand on a route's `ramp` (SPEC §3). The ramp controller
//! advances weights only while `status.phase` is `canary`; `pause` sets it to `paused` and leaves
//! the weights alone, `resume` sets it back to the phase the weights imply, or starts the ramp at
//! its first step. (`abort` is `rollback` with its own default reason: see `write.rs`.) What to
//! do is decided by pure functions over what was read; every write is one guarded transaction.

use cutover_config::{Phase, Ramp, Weights};
use serde_json::json;

use super::store::Store;
use super::table::{num, percent};
use super::view::{self, Decoded, RouteRead};
use super::write::{self, write_guarded, Guard, Written};
use super::{compact, no_route, route_id, CtlError, Ctx, Result};
use crate::model::{Event, EventKind, RollbackRecord, Status};

/// What `pause` does, given the route's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PausePlan {
    /// Write status `paused`.
    Pause,
    /// Already paused: nothing to write.
    AlreadyPaused,
    /// Not a ramp in progress: refuse.
    Refuse,
}

/// What `resume` does, given the route's phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ResumePlan {
    /// Paused: write status back to the phase the weights imply.
    Unpause(Phase),
    /// No traffic on new yet (or rolled back): start the ramp, new at this percent.
    Start(f64),
    /// A ramp in progress and not paused, or done: nothing to write.
    Nothing,
}

/// The phase pause and resume act on: `paused` and `rolled_back` as the status says (the
/// weights cannot tell them), anything else as the weights imply.
pub(super) fn current_phase(status: &Decoded<Status>, weights: &Weights) -> Phase {
    match status {
        Decoded::Valid(Status {
            phase: phase @ (Phase::Paused | Phase::RolledBack),
            ..
        }) => *phase,
        _ => weights.implied_phase(),
    }
}

pub(crate) fn plan_pause(phase: Phase) -> PausePlan {
    match phase {
        Phase::Canary => PausePlan::Pause,
        Phase::Paused => PausePlan::AlreadyPaused,
        Phase::Legacy | Phase::Shadow | Phase::Promoted | Phase::RolledBack => PausePlan::Refuse,
    }
}

pub(crate) fn plan_resume(phase: Phase, weights: &Weights, first_step: f64) -> ResumePlan {
    match phase {
        Phase::Paused => ResumePlan::Unpause(weights.implied_phase()),
        Phase::Legacy | Phase::Shadow | Phase::RolledBack => ResumePlan::Start(first_step),
        Phase::Canary | Phase::Promoted => ResumePlan::Nothing,
    }
}

/// The shadow-phase gate's breach that blocks a ramp start (SPEC §11): a `rolled_back` status
/// written by the gate for the weights as they are (`weights_revision`). Any write of the
/// weights since lifts it.
pub(super) fn gate_breach(
    status: &Decoded<Status>,
    weights_revision: i64,
) -> Option<&RollbackRecord> {
    match status {
        Decoded::Valid(Status {
            phase: Phase::RolledBack,
            weights_revision: rev,
            rollback: Some(r),
        }) if *rev == weights_revision && r.is_gate() => Some(r),
        _ => None,
    }
}

/// Why `resume` refuses after the shadow-phase gate breached, and what to do instead.
pub(crate) fn blocked_by_gate(id: &str, breach: &RollbackRecord, weights: &Weights) -> String {
    format!(
        "cannot resume {id}: the shadow-phase gate rolled it back ({rule}, at {at}, by {by}): \
         {reason}; nothing written — fix new, then write the weights to say so: `cutover ctl \
         set {id} --legacy 100 --new 0 --shadow {shadow}` watches it in shadow again, `cutover \
         ctl set {id} --legacy 99 --new 1` starts a canary anyway",
        rule = breach.rule,
        at = breach.at,
        by = breach.by,
        reason = breach.reason,
        shadow = num(weights.shadow),
    )
}

/// A route with a ramp, as read.
struct RampRoute {
    read: RouteRead,
    ramp: Ramp,
    first_step: f64,
    /// The current weights (the default all-legacy ones when the key is missing).
    weights: Weights,
}

/// Reads route `route` and checks it has a valid spec with a ramp and valid weights; `verb` is
/// the command (`pause`, `resume`) as used in messages.
async fn read_ramp_route(ctx: &Ctx, store: &Store, route: &str, verb: &str) -> Result<RampRoute> {
    let id = route_id(route)?;
    let read = view::read_route(store, &ctx.keys, &id, None).await?;
    let ramp = match &read.spec.value {
        Decoded::Missing => return Err(no_route(ctx, &id)),
        Decoded::Invalid { error, .. } => {
            return Err(CtlError::Usage(format!(
                "the spec of {id} is invalid ({error}), so its ramp is unknown; nothing written \
                 — fix the spec with `cutover ctl apply FILE`, then re-run"
            )))
        }
        Decoded::Valid(spec) => spec.ramp.clone(),
    };
    let Some((ramp, first_step)) = ramp.and_then(|r| {
        let first = *r.steps.first()?;
        Some((r, first))
    }) else {
        return Err(CtlError::Usage(no_ramp(&id, verb)));
    };
    let weights = match &read.weights.value {
        Decoded::Valid(w) => *w,
        Decoded::Missing => Weights::default(),
        Decoded::Invalid { error, .. } => {
            return Err(CtlError::Usage(format!(
                "the weights of {id} are invalid ({error}); nothing written — set valid ones \
                 with `cutover ctl set {id} --legacy N --new N`, then re-run"
            )))
        }
    };
    Ok(RampRoute {
        read,
        ramp,
        first_step,
        weights,
    })
}

pub(super) async fn pause(ctx: &Ctx, route: &str, reason: Option<String>) -> Result<String> {
    let store = ctx.store().await?;
    let r = read_ramp_route(ctx, &store, route, "pause").await?;
    let id = &r.read.id;
    let phase = current_phase(&r.read.status.value, &r.weights);
    match plan_pause(phase) {
        PausePlan::AlreadyPaused => Ok(unchanged(
            ctx,
            id,
            phase,
            format!(
                "{id} is already paused at {} new; nothing written — resume it with \
                 `cutover ctl resume {id}`",
                percent(r.weights.new_share())
            ),
        )),
        PausePlan::Refuse => Err(CtlError::Usage(cannot_pause(id, phase, r.first_step))),
        PausePlan::Pause => {
            let reason = reason.unwrap_or_else(|| format!("paused by {}", ctx.by));
            let (status, written) = write_phase(
                ctx,
                &store,
                &r.read,
                Phase::Paused,
                EventKind::Pause,
                reason,
            )
            .await?;
            let text = format!(
                "{id}: paused at {} new (weights {}, status revision {}); the ramp stays at \
                 this step until `cutover ctl resume {id}`",
                percent(r.weights.new_share()),
                compact(&r.weights.to_json()),
                written.revision
            );
            Ok(phase_report(ctx, &r, &status, &written, text))
        }
    }
}

pub(super) async fn resume(ctx: &Ctx, route: &str, reason: Option<String>) -> Result<String> {
    let store = ctx.store().await?;
    let r = read_ramp_route(ctx, &store, route, "resume").await?;
    let id = &r.read.id;
    if let Some(breach) = gate_breach(&r.read.status.value, r.read.weights.mod_revision) {
        return Err(CtlError::Usage(blocked_by_gate(id, breach, &r.weights)));
    }
    let phase = current_phase(&r.read.status.value, &r.weights);
    match plan_resume(phase, &r.weights, r.first_step) {
        ResumePlan::Nothing => Ok(unchanged(ctx, id, phase, nothing_to_resume(id, phase))),
        ResumePlan::Unpause(implied) => {
            let reason = reason.unwrap_or_else(|| format!("resumed by {}", ctx.by));
            let (status, written) =
                write_phase(ctx, &store, &r.read, implied, EventKind::Resume, reason).await?;
            let mut text = format!(
                "{id}: resumed at {} new, phase {implied} (weights {}, status revision {})",
                percent(r.weights.new_share()),
                compact(&r.weights.to_json()),
                written.revision
            );
            text.push_str(&next_steps(&r.ramp, r.weights.new_share() * 100.0));
            Ok(phase_report(ctx, &r, &status, &written, text))
        }
        ResumePlan::Start(step) => {
            let reason =
                reason.unwrap_or_else(|| format!("ramp started at {}% by {}", num(step), ctx.by));
            let mut out =
                write::apply(ctx, &store, &r.read, write::Change::Resume { step, reason }).await?;
            if !ctx.json {
                out.push_str(&next_steps(&r.ramp, step));
            }
            Ok(out)
        }
    }
}

/// Status `phase` for the current weights, with its event, in one transaction that compares
/// both the weights and the status key as read.
async fn write_phase(
    ctx: &Ctx,
    store: &Store,
    read: &RouteRead,
    phase: Phase,
    kind: EventKind,
    reason: String,
) -> Result<(Status, Written)> {
    let status = Status {
        phase,
        weights_revision: read.weights.mod_revision,
        rollback: None,
    };
    let mut event = Event::now(kind, reason, ctx.by.as_str());
    event.from = read.weights_json();
    event.to = read.weights_json();
    let guards = [
        Guard::weights(ctx.keys.weights(&read.id), read.weights.mod_revision),
        Guard::status(ctx.keys.status(&read.id), read.status.mod_revision),
    ];
    let put = (
        ctx.keys.status(&read.id),
        serde_json::to_string(&status).expect("status serialises"),
    );
    let written = write_guarded(ctx, store, &read.id, &guards, &[put], event).await?;
    Ok((status, written))
}

fn phase_report(
    ctx: &Ctx,
    r: &RampRoute,
    status: &Status,
    written: &Written,
    text: String,
) -> String {
    if !ctx.json {
        return text;
    }
    compact(&json!({
        "route": r.read.id,
        "written": true,
        "phase": status.phase.as_str(),
        "weights": r.weights.to_json(),
        "weights_revision": status.weights_revision,
        "status_revision": written.revision,
        "event_key": written.event_key,
        "event": written.event,
    }))
}

/// A command that had nothing to write: the message, or `{"route", "written": false, ...}`.
fn unchanged(ctx: &Ctx, id: &str, phase: Phase, message: String) -> String {
    if ctx.json {
        return compact(&json!({
            "route": id,
            "written": false,
            "phase": phase.as_str(),
            "message": message,
        }));
    }
    message
}

/// Why `pause` or `resume` (`verb`) refuses a route without a ramp.
pub(crate) fn no_ramp(id: &str, verb: &str) -> String {
    format!(
        "route {id} has no ramp in its spec; nothing to {verb} — add one to its [[routes]] \
         entry (e.g. ramp = {{ steps = [1, 5, 25, 100], hold = \"5m\", auto = true }}) and \
         `cutover ctl apply FILE`, or move traffic by hand with `cutover ctl set {id}`"
    )
}

pub(crate) fn cannot_pause(id: &str, phase: Phase, first_step: f64) -> String {
    let hint = match phase {
        Phase::Promoted => format!(
            "its ramp is complete (new serves 100%); to send traffic back to legacy use \
             `cutover ctl abort {id}`"
        ),
        _ => format!(
            "no ramp is running; start it with `cutover ctl resume {id}` (new at {}%)",
            num(first_step)
        ),
    };
    format!(
        "cannot pause {id}: its phase is {phase}, and only a ramp in progress (phase canary) can \
         be paused; nothing written — {hint}"
    )
}

pub(crate) fn nothing_to_resume(id: &str, phase: Phase) -> String {
    let why = match phase {
        Phase::Promoted => {
            format!("the ramp of {id} is complete (new serves 100%); nothing written")
        }
        _ => format!(
            "{id} is not paused, its ramp is in progress; nothing written (pause it with \
             `cutover ctl pause {id}`)"
        ),
    };
    format!("nothing to resume: {phase} — {why}")
}

/// `\nnext steps: 5%, 25%, 100%, each held 5m` (or how to advance them when `auto` is off).
pub(super) fn next_steps(ramp: &Ramp, at_percent: f64) -> String {
    let next: Vec<String> = ramp
        .steps
        .iter()
        .filter(|&&s| s > at_percent + 1e-9)
        .map(|&s| format!("{}%", num(s)))
        .collect();
    if next.is_empty() {
        return String::new();
    }
    let hold = humantime::format_duration(ramp.hold);
    if ramp.auto {
        format!("\nnext steps: {}, each held {hold}", next.join(", "))
    } else {
        format!(
            "\nnext steps: {} (ramp.auto is false: advance each with `cutover ctl set`)",
            next.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn w(legacy: f64, new: f64, shadow: f64) -> Weights {
        Weights::new(legacy, new, shadow).unwrap()
    }

    fn status(phase: Phase) -> Decoded<Status> {
        Decoded::Valid(Status {
            phase,
            weights_revision: 7,
            rollback: None,
        })
    }

    #[test]
    fn phase_is_paused_or_rolled_back_from_status_else_implied() {
        let canary = w(95.0, 5.0, 0.0);
        assert_eq!(
            current_phase(&status(Phase::Paused), &canary),
            Phase::Paused
        );
        assert_eq!(
            current_phase(&status(Phase::RolledBack), &w(100.0, 0.0, 0.0)),
            Phase::RolledBack
        );
        // A status that says canary/legacy is not trusted over the weights.
        assert_eq!(
            current_phase(&status(Phase::Legacy), &canary),
            Phase::Canary
        );
        assert_eq!(current_phase(&Decoded::Missing, &canary), Phase::Canary);
        let garbage = Decoded::Invalid {
            raw: "x".into(),
            error: "bad".into(),
        };
        assert_eq!(current_phase(&garbage, &Weights::default()), Phase::Legacy);
        assert_eq!(
            current_phase(&Decoded::Missing, &w(0.0, 1.0, 0.0)),
            Phase::Promoted
        );
    }

    #[test]
    fn pause_plans() {
        assert_eq!(plan_pause(Phase::Canary), PausePlan::Pause);
        assert_eq!(plan_pause(Phase::Paused), PausePlan::AlreadyPaused);
        for phase in [
            Phase::Legacy,
            Phase::Shadow,
            Phase::Promoted,
            Phase::RolledBack,
        ] {
            assert_eq!(plan_pause(phase), PausePlan::Refuse, "{phase}");
        }
    }

    #[test]
    fn resume_plans() {
        let canary = w(95.0, 5.0, 0.0);
        assert_eq!(
            plan_resume(Phase::Paused, &canary, 1.0),
            ResumePlan::Unpause(Phase::Canary)
        );
        for phase in [Phase::Legacy, Phase::Shadow, Phase::RolledBack] {
            assert_eq!(
                plan_resume(phase, &Weights::default(), 1.0),
                ResumePlan::Start(1.0),
                "{phase}"
            );
        }
        assert_eq!(
            plan_resume(Phase::Canary, &canary, 1.0),
            ResumePlan::Nothing
        );
        assert_eq!(
            plan_resume(Phase::Promoted, &w(0.0, 100.0, 0.0), 1.0),
            ResumePlan::Nothing
        );
    }

    #[test]
    fn starting_keeps_the_shadow() {
        let change = write::Change::Resume {
            step: 1.0,
            reason: "r".into(),
        };
        assert_eq!(change.target(20.0).unwrap(), w(99.0, 1.0, 20.0));
        let all = write::Change::Resume {
            step: 100.0,
            reason: "r".into(),
        };
        assert_eq!(all.target(0.0).unwrap().implied_phase(), Phase::Promoted);
    }

    #[test]
    fn only_the_gate_of_the_current_weights_blocks_a_resume() {
        let record = |gate| RollbackRecord {
            at: "2026-12-06T14:00:00.000Z".into(),
            rule: "divergence".into(),
            reason: "shadow phase: divergence rate 50.0% > 1.0% (n=400) for 5s".into(),
            by: "proxy-a".into(),
            evidence: None,
            gate,
        };
        let status = |rev, gate| {
            Decoded::Valid(Status {
                phase: Phase::RolledBack,
                weights_revision: rev,
                rollback: Some(record(gate)),
            })
        };
        let gated = status(7, Some(Phase::Shadow));
        let breach = gate_breach(&gated, 7).expect("blocks");
        let msg = blocked_by_gate("orders", breach, &w(100.0, 0.0, 100.0));
        assert!(
            msg.starts_with(
                "cannot resume orders: the shadow-phase gate rolled it back (divergence"
            ),
            "{msg}"
        );
        assert!(msg.contains("divergence rate 50.0%"), "{msg}");
        assert!(msg.contains("--shadow 100"), "{msg}");
        assert!(!msg.contains("  "), "one space between words: {msg}");
        // An operator wrote the weights since: lifted.
        assert!(gate_breach(&gated, 8).is_none());
        // A rollback of live traffic does not block: resume starts the ramp again.
        assert!(gate_breach(&status(7, None), 7).is_none());
    }

    #[test]
    fn messages() {
        let msg = cannot_pause("orders", Phase::RolledBack, 1.0);
        assert_eq!(
            msg,
            "cannot pause orders: its phase is rolled_back, and only a ramp in progress (phase \
             canary) can be paused; nothing written — no ramp is running; start it with \
             `cutover ctl resume orders` (new at 1%)"
        );
        assert!(cannot_pause("orders", Phase::Promoted, 1.0).contains("cutover ctl abort orders"));
        assert!(nothing_to_resume("orders", Phase::Canary).starts_with("nothing to resume: canary"));
        assert!(
            nothing_to_resume("orders", Phase::Promoted).starts_with("nothing to resume: promoted")
        );
    }

    #[test]
    fn next_step_lines() {
        let ramp = Ramp {
            steps: vec![1.0, 5.0, 25.0, 100.0],
            hold: Duration::from_secs(300),
            auto: true,
        };
        assert_eq!(
            next_steps(&ramp, 1.0),
            "\nnext steps: 5%, 25%, 100%, each held 5m"
        );
        assert_eq!(next_steps(&ramp, 100.0), "");
        let manual = Ramp {
            auto: false,
            ..ramp
        };
        assert!(next_steps(&manual, 5.0).contains("ramp.auto is false"));
    }
}
