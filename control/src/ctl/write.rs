//! `set`, `promote`, `rollback` (and `abort`, and `resume` when it starts a ramp): one weights
//! write, compare-and-swap on the weights key's mod_revision, with its event in the same
//! transaction; then `status` in a second transaction that only lands while the weights are
//! still the ones just written. [`write_guarded`] is that transaction for any keys (`pause`
//! uses it for the status key).

use cutover_config::{ConfigErrors, Phase, Weights};
use serde_json::json;

use super::store::{RawKv, Store};
use super::view::{self, Decoded, RouteRead, Writer};
use super::{compact, no_route, route_id, CtlError, Ctx, Result};
use crate::keys::Keys;
use crate::model::{Event, EventKind, RollbackRecord, Status};
use crate::writer::{self, Outcome, Write, EVENT_KEY_ATTEMPTS};

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Change {
    Set {
        legacy: f64,
        new: f64,
        shadow: Option<f64>,
        reason: String,
    },
    Promote {
        reason: String,
    },
    Rollback {
        reason: String,
    },
    /// Start a route's ramp at its first step: new at `step` percent, legacy the rest.
    Resume {
        step: f64,
        reason: String,
    },
}

impl Change {
    /// Checks what can be checked before reading etcd (the shadow may still be "unchanged").
    pub(super) fn precheck(&self) -> Result<(), ConfigErrors> {
        match self {
            Change::Set {
                legacy,
                new,
                shadow,
                ..
            } => Weights::new(*legacy, *new, shadow.unwrap_or(0.0)).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The weights to write, given the current shadow.
    pub(super) fn target(&self, current_shadow: f64) -> Result<Weights, ConfigErrors> {
        match self {
            Change::Set {
                legacy,
                new,
                shadow,
                ..
            } => Weights::new(*legacy, *new, shadow.unwrap_or(current_shadow)),
            Change::Promote { .. } => Weights::new(0.0, 100.0, current_shadow),
            Change::Rollback { .. } => Weights::new(100.0, 0.0, current_shadow),
            Change::Resume { step, .. } => Weights::new(100.0 - step, *step, current_shadow),
        }
    }

    fn kind(&self) -> EventKind {
        match self {
            Change::Rollback { .. } => EventKind::Rollback,
            Change::Resume { .. } => EventKind::Resume,
            _ => EventKind::Weights,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Change::Set { reason, .. }
            | Change::Promote { reason }
            | Change::Rollback { reason }
            | Change::Resume { reason, .. } => reason,
        }
    }

    /// The status written after the weights: the implied phase, or `rolled_back` with the
    /// operator's record.
    fn status(&self, target: &Weights, weights_revision: i64, event: &Event) -> Status {
        match self {
            Change::Rollback { reason } => Status {
                phase: Phase::RolledBack,
                weights_revision,
                rollback: Some(RollbackRecord {
                    at: event.at.clone(),
                    rule: "operator".to_string(),
                    reason: reason.clone(),
                    by: event.by.clone(),
                    evidence: None,
                    gate: None,
                }),
            },
            _ => Status {
                phase: target.implied_phase(),
                weights_revision,
                rollback: None,
            },
        }
    }
}

/// `weights: reason` lines for invalid weights, and a hint.
pub(super) fn invalid_weights(route: &str, errors: &ConfigErrors) -> CtlError {
    let mut msg = String::new();
    for e in errors {
        if e.path == "(root)" {
            msg.push_str(&format!("weights: {}\n", e.reason));
        } else {
            msg.push_str(&format!("weights.{}: {}\n", e.path, e.reason));
        }
    }
    msg.push_str(&format!(
        "nothing written to {route}: weights are numbers >= 0 with legacy + new > 0, and shadow \
         is a percent from 0 to 100"
    ));
    CtlError::Usage(msg)
}

pub(super) async fn run(ctx: &Ctx, route: &str, change: Change) -> Result<String> {
    let id = route_id(route)?;
    change.precheck().map_err(|e| invalid_weights(&id, &e))?;
    let store = ctx.store().await?;
    let read = view::read_route(&store, &ctx.keys, &id, None).await?;
    if read.spec.value.is_missing() {
        return Err(no_route(ctx, &id));
    }
    if let Decoded::Invalid { error, .. } = &read.spec.value {
        eprintln!(
            "warning: the spec of {id} is invalid ({error}); proxies ignore it until it is \
             fixed with `cutover ctl apply`"
        );
    }
    apply(ctx, &store, &read, change).await
}

/// Writes `change` on top of `read` (a route whose spec exists): weights and event, then status.
pub(super) async fn apply(
    ctx: &Ctx,
    store: &Store,
    read: &RouteRead,
    change: Change,
) -> Result<String> {
    let id = &read.id;
    let current_shadow = match &read.weights.value {
        Decoded::Valid(w) => w.shadow,
        Decoded::Missing => 0.0,
        Decoded::Invalid { error, .. } => {
            eprintln!("note: the current weights of {id} are invalid ({error}); replacing them");
            0.0
        }
    };
    let target = change
        .target(current_shadow)
        .map_err(|e| invalid_weights(id, &e))?;
    let written = write_weights(ctx, store, read, &change, &target).await?;
    let status = change.status(&target, written.revision, &written.event);
    let status_written = write_status(store, &ctx.keys, id, &status).await?;
    Ok(report(
        ctx,
        read,
        &target,
        &written,
        &status,
        status_written,
    ))
}

/// A guarded write that landed.
pub(super) struct Written {
    /// The store revision of the transaction (the mod_revision of every key it put).
    pub(super) revision: i64,
    pub(super) event: Event,
    pub(super) event_key: String,
}

async fn write_weights(
    ctx: &Ctx,
    store: &Store,
    read: &RouteRead,
    change: &Change,
    target: &Weights,
) -> Result<Written> {
    let mut event = Event::now(change.kind(), change.reason(), ctx.by.as_str());
    event.from = read.weights_json();
    event.to = Some(target.to_json());
    let weights_key = ctx.keys.weights(&read.id);
    let guard = Guard::weights(weights_key.clone(), read.weights.mod_revision);
    let put = (weights_key, target.to_json().to_string());
    write_guarded(ctx, store, &read.id, &[guard], &[put], event).await
}

/// Puts `puts`, and `event` under a new event key, in one transaction that lands only while
/// every guard is as it was read and the route's spec exists ([`crate::writer`], the writer
/// the controller uses too). When a guard changed, nothing is written and the error names what
/// changed and who wrote it (exit 2); only a taken event key (same writer, same millisecond)
/// is retried.
pub(super) async fn write_guarded(
    ctx: &Ctx,
    store: &Store,
    id: &str,
    guards: &[Guard],
    puts: &[(String, String)],
    event: Event,
) -> Result<Written> {
    let write = Write {
        route: id,
        guards,
        puts,
        event: Some((&event, ctx.by.as_str())),
        need_spec: true,
    };
    match writer::write(&ctx.keys, &write, |txn| store.txn(txn)).await? {
        Outcome::Landed {
            revision,
            event_key,
        } => Ok(Written {
            revision,
            event_key: event_key.unwrap_or_default(),
            event,
        }),
        Outcome::Changed { guard, now } => {
            let guard = &guards[guard];
            let now_rev = now.as_ref().map_or(0, |kv| kv.mod_revision);
            let writer = view::writer_at(store, &ctx.keys, id, now_rev).await?;
            Err(CtlError::Conflict(conflict_message(&Conflict {
                what: guard.what,
                route: id,
                read_revision: guard.read_revision,
                now: now.as_ref(),
                writer: writer.as_ref(),
            })))
        }
        Outcome::SpecGone => Err(CtlError::Conflict(format!(
            "the spec of {id} was deleted since it was read; nothing written — write the \
             spec again with `cutover ctl apply FILE`, then re-run"
        ))),
        Outcome::NoEventKey => Err(CtlError::Runtime(format!(
            "could not find a free event key for {id} after {EVENT_KEY_ATTEMPTS} attempts; \
             nothing written — re-run"
        ))),
    }
}

/// `status` in a transaction that only lands while the weights key is still at
/// `status.weights_revision`; false (and nothing written) when something newer came meanwhile.
pub(super) async fn write_status(
    store: &Store,
    keys: &Keys,
    id: &str,
    status: &Status,
) -> Result<bool> {
    let write = Write {
        route: id,
        guards: &[Guard::weights(keys.weights(id), status.weights_revision)],
        puts: &[(
            keys.status(id),
            serde_json::to_string(status).expect("status serialises"),
        )],
        event: None,
        need_spec: false,
    };
    let outcome = writer::write(keys, &write, |txn| store.txn(txn)).await?;
    Ok(matches!(outcome, Outcome::Landed { .. }))
}

pub(super) use crate::keys::unchanged;

pub(super) use crate::writer::{key_segment, Guard};

/// A compare-and-swap that lost: what was read, and what is there now.
#[derive(Debug)]
pub(super) struct Conflict<'a> {
    /// `weights`, `spec` or `status`.
    pub(super) what: &'a str,
    pub(super) route: &'a str,
    /// mod_revision when read; 0 = absent.
    pub(super) read_revision: i64,
    pub(super) now: Option<&'a RawKv>,
    pub(super) writer: Option<&'a Writer>,
}

fn revision_text(rev: i64, zero: &str) -> String {
    if rev > 0 {
        rev.to_string()
    } else {
        zero.to_string()
    }
}

/// `weights of orders changed since they were read (mod_revision 41 -> 57) by alice@host at
/// 2026-…: now {"legacy":50,…}; nothing written — re-run to apply on top`.
pub(super) fn conflict_message(c: &Conflict<'_>) -> String {
    let now_rev = c.now.map_or(0, |kv| kv.mod_revision);
    let mut msg = format!(
        "{} of {} changed since {} read (mod_revision {} -> {})",
        c.what,
        c.route,
        if c.what == "weights" {
            "they were"
        } else {
            "it was"
        },
        revision_text(c.read_revision, "absent"),
        revision_text(now_rev, "deleted"),
    );
    match c.writer {
        Some(w) => msg.push_str(&format!(" by {} at {}", w.by, w.at)),
        None if now_rev > 0 => msg.push_str(" by a writer that left no event"),
        None => {}
    }
    match c.now {
        Some(kv) => msg.push_str(&format!(": now {}", String::from_utf8_lossy(&kv.value))),
        None if c.what == "weights" => msg.push_str(": now absent (all traffic on legacy)"),
        None => msg.push_str(": now absent"),
    }
    msg.push_str("; nothing written — re-run to apply on top");
    msg
}

fn report(
    ctx: &Ctx,
    read: &RouteRead,
    target: &Weights,
    written: &Written,
    status: &Status,
    status_written: bool,
) -> String {
    let from = read.weights_json();
    if ctx.json {
        return compact(&json!({
            "route": read.id,
            "from": from,
            "to": target.to_json(),
            "weights_revision": written.revision,
            "phase": status.phase.as_str(),
            "status_written": status_written,
            "event_key": written.event_key,
            "event": written.event,
        }));
    }
    let from = from.map_or("(no key: all legacy)".to_string(), |v| compact(&v));
    let mut out = format!(
        "{}: weights {from} -> {} (revision {}), phase {}",
        read.id,
        compact(&target.to_json()),
        written.revision,
        status.phase
    );
    if !status_written {
        out.push_str(&format!(
            "\nnote: the weights of {} changed again right after this write; its status was left \
             to that writer",
            read.id
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(legacy: f64, new: f64, shadow: Option<f64>) -> Change {
        Change::Set {
            legacy,
            new,
            shadow,
            reason: "set by ctl".into(),
        }
    }

    #[test]
    fn set_keeps_shadow_unless_given() {
        assert_eq!(
            set(90.0, 10.0, None).target(30.0).unwrap(),
            Weights::new(90.0, 10.0, 30.0).unwrap()
        );
        assert_eq!(
            set(90.0, 10.0, Some(0.0)).target(30.0).unwrap(),
            Weights::new(90.0, 10.0, 0.0).unwrap()
        );
        let promote = Change::Promote {
            reason: "promote".into(),
        };
        assert_eq!(
            promote.target(5.0).unwrap(),
            Weights::new(0.0, 100.0, 5.0).unwrap()
        );
        let rollback = Change::Rollback { reason: "x".into() };
        assert_eq!(
            rollback.target(5.0).unwrap(),
            Weights::new(100.0, 0.0, 5.0).unwrap()
        );
    }

    #[test]
    fn invalid_set_is_rejected_before_etcd() {
        let err = set(-1.0, 5.0, None).precheck().unwrap_err();
        let CtlError::Usage(msg) = invalid_weights("orders", &err) else {
            panic!()
        };
        assert!(
            msg.starts_with("weights.legacy: must be >= 0 (got -1)\n"),
            "{msg}"
        );
        let err = set(0.0, 0.0, None).precheck().unwrap_err();
        let CtlError::Usage(msg) = invalid_weights("orders", &err) else {
            panic!()
        };
        assert!(
            msg.starts_with("weights: legacy + new must be > 0\n"),
            "{msg}"
        );
        assert!(msg.contains("nothing written to orders"));
        assert!(set(1.0, 1.0, Some(101.0)).precheck().is_err());
        assert!(set(f64::NAN, 1.0, None).precheck().is_err());
        assert!(Change::Promote {
            reason: String::new()
        }
        .precheck()
        .is_ok());
    }

    #[test]
    fn statuses() {
        let e = Event::now(EventKind::Rollback, "bad", "alice@h");
        let w = Weights::new(100.0, 0.0, 0.0).unwrap();
        let s = Change::Rollback {
            reason: "bad".into(),
        }
        .status(&w, 57, &e);
        assert_eq!(s.phase, Phase::RolledBack);
        assert_eq!(s.weights_revision, 57);
        let r = s.rollback.unwrap();
        assert_eq!(
            (r.rule.as_str(), r.reason.as_str(), r.by.as_str()),
            ("operator", "bad", "alice@h")
        );
        assert_eq!(r.at, e.at);
        let w = Weights::new(50.0, 50.0, 0.0).unwrap();
        let s = set(50.0, 50.0, None).status(&w, 9, &e);
        assert_eq!((s.phase, s.rollback), (Phase::Canary, None));
    }

    #[test]
    fn conflict_messages() {
        let now = RawKv {
            key: "/c/routes/orders/weights".into(),
            value: br#"{"legacy":50,"new":50,"shadow":0}"#.to_vec(),
            mod_revision: 57,
        };
        let writer = Writer {
            by: "alice@host".into(),
            at: "2026-11-21T14:03:07.120Z".into(),
        };
        let msg = conflict_message(&Conflict {
            what: "weights",
            route: "orders",
            read_revision: 41,
            now: Some(&now),
            writer: Some(&writer),
        });
        assert_eq!(
            msg,
            r#"weights of orders changed since they were read (mod_revision 41 -> 57) by alice@host at 2026-11-21T14:03:07.120Z: now {"legacy":50,"new":50,"shadow":0}; nothing written — re-run to apply on top"#
        );
        let msg = conflict_message(&Conflict {
            what: "weights",
            route: "orders",
            read_revision: 0,
            now: Some(&now),
            writer: None,
        });
        assert!(
            msg.contains("(mod_revision absent -> 57) by a writer that left no event: now"),
            "{msg}"
        );
        let msg = conflict_message(&Conflict {
            what: "spec",
            route: "orders",
            read_revision: 3,
            now: None,
            writer: None,
        });
        assert_eq!(
            msg,
            "spec of orders changed since it was read (mod_revision 3 -> deleted): now absent; \
             nothing written — re-run to apply on top"
        );
    }

    #[test]
    fn a_conflict_names_what_changed() {
        let now = RawKv {
            key: "/c/routes/orders/status".into(),
            value: b"{}".to_vec(),
            mod_revision: 60,
        };
        let msg = conflict_message(&Conflict {
            what: "status",
            route: "orders",
            read_revision: 0,
            now: Some(&now),
            writer: None,
        });
        assert!(
            msg.starts_with(
                "status of orders changed since it was read (mod_revision absent -> 60)"
            ),
            "{msg}"
        );
    }

    #[test]
    fn compares() {
        // Absent keys compare on version 0, present ones on their mod_revision.
        let absent = format!("{:?}", unchanged("k", 0));
        assert!(absent.contains("Version"), "{absent}");
        let present = format!("{:?}", unchanged("k", 41));
        assert!(
            present.contains("Mod") && present.contains("41"),
            "{present}"
        );
    }
}
