//! `cutover ctl apply FILE`: the `[[routes]]` of a config file, written in one etcd transaction
//! that compares every key it read, so a concurrent writer makes it fail instead of being
//! overwritten. The plan (what changes, which ops, whether it fits) is a pure value.

use cutover_config::{RouteConfig, RouteSpec, Weights};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::{json, Value};
use std::collections::HashSet;

use super::store::revision_of;
use super::view::{self, Decoded, RouteRead};
use super::write::{self, conflict_message, key_segment, unchanged, Conflict};
use super::{compact, ApplyArgs, CtlError, Ctx, Result};
use crate::keys::Keys;
use crate::model::{unix_millis_now, Event, EventKind, Status};

/// What happens to a route's spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SpecChange {
    New,
    Changed,
    Unchanged,
}

/// What happens to a route's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WeightsChange {
    Written,
    Unchanged,
    /// `--specs-only`, or the file does not state the route's weights: not compared, not
    /// written.
    Kept,
}

/// One route of the plan.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RoutePlan {
    pub(super) id: String,
    pub(super) spec: RouteSpec,
    pub(super) spec_change: SpecChange,
    pub(super) spec_read_revision: i64,
    pub(super) old_spec: Option<Value>,
    pub(super) weights: Weights,
    pub(super) weights_change: WeightsChange,
    pub(super) weights_read_revision: i64,
    pub(super) old_weights: Option<Value>,
}

impl RoutePlan {
    fn new(route: &RouteConfig, read: &RouteRead, keep_weights: bool) -> RoutePlan {
        let spec_change = match &read.spec.value {
            Decoded::Missing => SpecChange::New,
            Decoded::Valid(current) if *current == *route.spec => SpecChange::Unchanged,
            _ => SpecChange::Changed,
        };
        let weights_change = if keep_weights {
            WeightsChange::Kept
        } else {
            match &read.weights.value {
                Decoded::Valid(current) if *current == route.weights => WeightsChange::Unchanged,
                // No key means all-legacy: the same unless the route is new (then write it).
                Decoded::Missing
                    if spec_change != SpecChange::New && route.weights == Weights::default() =>
                {
                    WeightsChange::Unchanged
                }
                _ => WeightsChange::Written,
            }
        };
        let old_spec = match &read.spec.value {
            Decoded::Valid(s) => Some(s.to_json()),
            other => other.invalid_json(),
        };
        RoutePlan {
            id: route.id.to_string(),
            spec: (*route.spec).clone(),
            spec_change,
            spec_read_revision: read.spec.mod_revision,
            old_spec,
            weights: route.weights,
            weights_change,
            weights_read_revision: read.weights.mod_revision,
            old_weights: read.weights_json(),
        }
    }

    fn spec_written(&self) -> bool {
        self.spec_change != SpecChange::Unchanged
    }

    fn weights_written(&self) -> bool {
        self.weights_change == WeightsChange::Written
    }

    fn events(&self) -> usize {
        usize::from(self.spec_written()) + usize::from(self.weights_written())
    }

    /// Compares: the spec key, the weights key unless kept, and each event key is free.
    fn compares(&self) -> usize {
        1 + usize::from(self.weights_change != WeightsChange::Kept) + self.events()
    }

    /// Writes: each changed key and its event.
    fn writes(&self) -> usize {
        2 * self.events()
    }

    /// The text line for this route.
    pub(super) fn line(&self) -> String {
        let weights = compact(&self.weights.to_json());
        let mut parts = Vec::new();
        match self.spec_change {
            SpecChange::New => parts.push("new route: spec written".to_string()),
            SpecChange::Changed => parts.push("spec changed".to_string()),
            SpecChange::Unchanged => {}
        }
        match self.weights_change {
            WeightsChange::Written => match &self.old_weights {
                Some(old) => parts.push(format!("weights changed {} -> {weights}", compact(old))),
                None => parts.push(format!("weights {weights} written")),
            },
            WeightsChange::Kept if self.spec_change == SpecChange::New => {
                parts.push("weights left unset (all legacy)".to_string());
            }
            WeightsChange::Kept | WeightsChange::Unchanged => {}
        }
        if parts.is_empty() {
            parts.push("unchanged".to_string());
        }
        format!("{}: {}", self.id, parts.join("; "))
    }

    fn to_json(&self) -> Value {
        json!({
            "route": self.id,
            "spec": match self.spec_change {
                SpecChange::New => "new",
                SpecChange::Changed => "changed",
                SpecChange::Unchanged => "unchanged",
            },
            "weights": match self.weights_change {
                WeightsChange::Written => "written",
                WeightsChange::Unchanged => "unchanged",
                WeightsChange::Kept => "kept",
            },
            "from": self.old_weights,
            "to": self.weights.to_json(),
        })
    }
}

/// Every route of a file against what etcd holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    pub(super) routes: Vec<RoutePlan>,
}

impl Plan {
    /// `reads[i]` must be the read of `routes[i]`.
    /// `with_weights` are the ids of routes whose file entry states `weights`; the others keep
    /// their weights in etcd (a file without weights must never reset a running ramp).
    pub(super) fn new(
        routes: &[RouteConfig],
        reads: &[RouteRead],
        specs_only: bool,
        with_weights: &HashSet<String>,
    ) -> Plan {
        Plan {
            routes: routes
                .iter()
                .zip(reads)
                .map(|(route, read)| {
                    let keep = specs_only || !with_weights.contains(route.id.as_str());
                    RoutePlan::new(route, read, keep)
                })
                .collect(),
        }
    }

    pub(super) fn changes(&self) -> usize {
        self.routes.iter().filter(|r| r.events() > 0).count()
    }

    pub(super) fn compares(&self) -> usize {
        self.routes.iter().map(RoutePlan::compares).sum()
    }

    pub(super) fn writes(&self) -> usize {
        self.routes.iter().map(RoutePlan::writes).sum()
    }

    /// Fails when the transaction would exceed etcd's `--max-txn-ops` (compares and writes are
    /// limited separately), saying how many of the routes, in file order, would fit.
    pub(super) fn check_size(&self, max_ops: usize) -> Result<(), String> {
        let (compares, writes) = (self.compares(), self.writes());
        if compares <= max_ops && writes <= max_ops {
            return Ok(());
        }
        let (mut c, mut w, mut fit) = (0, 0, 0);
        for route in &self.routes {
            c += route.compares();
            w += route.writes();
            if c > max_ops || w > max_ops {
                break;
            }
            fit += 1;
        }
        Err(format!(
            "this apply needs {compares} compares and {writes} writes in one etcd transaction, \
             but etcd allows {max_ops} of each (its --max-txn-ops); only the first {fit} of the \
             {} routes fit (a new route takes 4 of each, so at most {} new routes per file): \
             split the file, or pass --max-txn-ops N if your etcd allows more; nothing written",
            self.routes.len(),
            max_ops / 4,
        ))
    }

    /// The transaction: compares for every key read, puts of what changed, one event per
    /// change. Event keys use `millis` (spec) and `millis + 1` (weights).
    pub(super) fn txn(&self, keys: &Keys, by: &str, reason: &str, millis: u64) -> Txn {
        let who = key_segment(by);
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for r in &self.routes {
            compares.push(unchanged(&keys.spec(&r.id), r.spec_read_revision));
            if r.weights_change != WeightsChange::Kept {
                compares.push(unchanged(&keys.weights(&r.id), r.weights_read_revision));
            }
            if r.spec_written() {
                let spec = r.spec.to_json();
                let mut event = Event::now(EventKind::Spec, reason, by);
                event.from = r.old_spec.clone();
                event.to = Some(spec.clone());
                let key = keys.event(&r.id, millis, &who);
                compares.push(Compare::version(key.as_str(), CompareOp::Equal, 0));
                ops.push(TxnOp::put(keys.spec(&r.id), compact(&spec), None));
                ops.push(TxnOp::put(key, event_json(&event), None));
            }
            if r.weights_written() {
                let mut event = Event::now(EventKind::Weights, reason, by);
                event.from = r.old_weights.clone();
                event.to = Some(r.weights.to_json());
                let key = keys.event(&r.id, millis + 1, &who);
                compares.push(Compare::version(key.as_str(), CompareOp::Equal, 0));
                ops.push(TxnOp::put(
                    keys.weights(&r.id),
                    compact(&r.weights.to_json()),
                    None,
                ));
                ops.push(TxnOp::put(key, event_json(&event), None));
            }
        }
        Txn::new().when(compares).and_then(ops)
    }
}

fn event_json(event: &Event) -> String {
    serde_json::to_string(event).expect("events serialise")
}

/// Conflict messages for every key of `plan` that `now` shows changed since it was read.
pub(super) fn conflicts(plan: &Plan, now: &[RouteRead]) -> Vec<(String, &'static str, i64, i64)> {
    let mut out = Vec::new();
    for (r, read) in plan.routes.iter().zip(now) {
        if read.spec.mod_revision != r.spec_read_revision {
            out.push((
                r.id.clone(),
                "spec",
                r.spec_read_revision,
                read.spec.mod_revision,
            ));
        }
        if r.weights_change != WeightsChange::Kept
            && read.weights.mod_revision != r.weights_read_revision
        {
            out.push((
                r.id.clone(),
                "weights",
                r.weights_read_revision,
                read.weights.mod_revision,
            ));
        }
    }
    out
}

const EVENT_KEY_ATTEMPTS: u64 = 3;

/// The ids of the `[[routes]]` entries that state `weights` in the file (`RouteConfig` fills in
/// the all-legacy default when they don't, which apply must not write over a live ramp).
/// `text` has already been validated, so anything unexpected just means "not stated".
fn routes_stating_weights(text: &str) -> HashSet<String> {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return HashSet::new();
    };
    doc.get("routes")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_table())
        .filter(|r| r.contains_key("weights"))
        .filter_map(|r| r.get("id").and_then(|id| id.as_str()).map(str::to_string))
        .collect()
}

pub(super) async fn run(ctx: &Ctx, args: &ApplyArgs) -> Result<String> {
    let file = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| CtlError::Usage(format!("{file}: cannot read: {e}")))?;
    let config = cutover_config::parse_config_toml(&text).map_err(|errors| {
        let mut msg: String = errors.iter().map(|e| format!("{e}\n")).collect();
        msg.push_str(&format!(
            "{file}: {} problem(s); nothing written (check it with `cutover validate {file}`)",
            errors.len()
        ));
        CtlError::Usage(msg)
    })?;
    if config.routes.is_empty() {
        return Err(CtlError::Usage(format!(
            "{file} has no [[routes]]; nothing to apply"
        )));
    }
    if let Some(etcd) = &config.etcd {
        if etcd.prefix.trim_end_matches('/') != ctx.keys.prefix() {
            eprintln!(
                "note: {file} says [etcd].prefix = {:?} but this writes under {:?} \
                 (pass --prefix {} to write where the proxies read)",
                etcd.prefix,
                ctx.keys.prefix(),
                etcd.prefix
            );
        }
    }
    let store = ctx.store().await?;
    let reads = read_all(&store, &ctx.keys, &config.routes, true).await?;
    let plan = Plan::new(
        &config.routes,
        &reads,
        args.specs_only,
        &routes_stating_weights(&text),
    );
    plan.check_size(args.max_txn_ops as usize)
        .map_err(CtlError::Usage)?;
    if args.dry_run || plan.changes() == 0 {
        let summary = if args.dry_run {
            "dry run: nothing written".to_string()
        } else {
            format!(
                "nothing to apply: all {} route(s) unchanged",
                plan.routes.len()
            )
        };
        return Ok(report(ctx, &file, &plan, None, &summary, args.dry_run));
    }
    let reason = format!("apply {file}");
    let revision = commit(ctx, &store, &config.routes, &plan, &reason).await?;
    let mut stale = Vec::new();
    for r in plan.routes.iter().filter(|r| r.weights_written()) {
        let status = Status {
            phase: r.weights.implied_phase(),
            weights_revision: revision,
            rollback: None,
        };
        if !write::write_status(&store, &ctx.keys, &r.id, &status).await? {
            stale.push(r.id.clone());
        }
    }
    let mut summary = format!(
        "applied {} changed route(s) of {} from {file} at revision {revision}",
        plan.changes(),
        plan.routes.len()
    );
    if !stale.is_empty() {
        summary.push_str(&format!(
            "\nnote: weights of {} changed again right after; their status was left to that writer",
            stale.join(", ")
        ));
    }
    Ok(report(ctx, &file, &plan, Some(revision), &summary, false))
}

/// Reads every route; `pin` reads them all at the first read's revision.
async fn read_all(
    store: &super::store::Store,
    keys: &Keys,
    routes: &[RouteConfig],
    pin: bool,
) -> Result<Vec<RouteRead>> {
    let mut reads: Vec<RouteRead> = Vec::with_capacity(routes.len());
    for route in routes {
        let at = if pin {
            reads.first().map(|r| r.revision)
        } else {
            None
        };
        reads.push(view::read_route(store, keys, &route.id, at).await?);
    }
    Ok(reads)
}

/// Runs the plan's transaction; on failure says which keys changed and who changed them.
async fn commit(
    ctx: &Ctx,
    store: &super::store::Store,
    routes: &[RouteConfig],
    plan: &Plan,
    reason: &str,
) -> Result<i64> {
    let millis = unix_millis_now();
    for attempt in 0..EVENT_KEY_ATTEMPTS {
        let txn = plan.txn(&ctx.keys, &ctx.by, reason, millis + 2 * attempt);
        let resp = store.txn(txn).await?;
        if resp.succeeded() {
            return Ok(revision_of(resp.header()));
        }
        let now = read_all(store, &ctx.keys, routes, false).await?;
        let changed = conflicts(plan, &now);
        if changed.is_empty() {
            continue; // only an event key was taken: same writer, same millisecond
        }
        let mut lines = Vec::new();
        for (route, what, read_rev, _) in &changed {
            let key = if *what == "spec" {
                ctx.keys.spec(route)
            } else {
                ctx.keys.weights(route)
            };
            let current = store.get_one(&key).await?;
            let now_rev = current.as_ref().map_or(0, |kv| kv.mod_revision);
            let writer = view::writer_at(store, &ctx.keys, route, now_rev).await?;
            lines.push(conflict_message(&Conflict {
                what,
                route,
                read_revision: *read_rev,
                now: current.as_ref(),
                writer: writer.as_ref(),
            }));
        }
        return Err(CtlError::Runtime(lines.join("\n")));
    }
    Err(CtlError::Runtime(
        "could not find free event keys after 3 attempts; nothing written — re-run".into(),
    ))
}

fn report(
    ctx: &Ctx,
    file: &str,
    plan: &Plan,
    revision: Option<i64>,
    summary: &str,
    dry_run: bool,
) -> String {
    if ctx.json {
        let routes: Vec<Value> = plan.routes.iter().map(RoutePlan::to_json).collect();
        return compact(&json!({
            "file": file,
            "dry_run": dry_run,
            "revision": revision,
            "routes": routes,
        }));
    }
    let mut out: String = plan
        .routes
        .iter()
        .map(|r| format!("{}\n", r.line()))
        .collect();
    out.push_str(summary);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::store::RawKv;

    fn config(routes: &[(&str, u32, u32)]) -> Vec<RouteConfig> {
        let text: String = routes
            .iter()
            .map(|(id, legacy, new)| {
                format!(
                    "[[routes]]\nid = \"{id}\"\nmatch = {{ path_prefix = \"/{id}\" }}\n\
                     legacy = {{ endpoints = [\"127.0.0.1:9001\"] }}\n\
                     new = {{ endpoints = [\"127.0.0.1:9002\"] }}\n\
                     weights = {{ legacy = {legacy}, new = {new} }}\n"
                )
            })
            .collect();
        cutover_config::parse_config_toml(&text).unwrap().routes
    }

    fn stored(route: &RouteConfig, weights: Option<&str>) -> RouteRead {
        let keys = Keys::new("/p");
        let mut kvs = vec![RawKv {
            key: keys.spec(&route.id),
            value: compact(&route.spec.to_json()).into_bytes(),
            mod_revision: 5,
        }];
        if let Some(w) = weights {
            kvs.push(RawKv {
                key: keys.weights(&route.id),
                value: w.as_bytes().to_vec(),
                mod_revision: 6,
            });
        }
        RouteRead::from_kvs(&keys, &route.id, &kvs, 9)
    }

    /// Every route of `routes` states its weights in the file.
    fn stating(routes: &[RouteConfig]) -> HashSet<String> {
        routes.iter().map(|r| r.id.to_string()).collect()
    }

    fn empty(id: &str) -> RouteRead {
        RouteRead::from_kvs(&Keys::new("/p"), id, &[], 9)
    }

    #[test]
    fn plan_classifies_routes() {
        let routes = config(&[("a", 90, 10), ("b", 90, 10), ("c", 100, 0), ("d", 50, 50)]);
        let mut changed_spec = stored(&routes[3], Some(r#"{"legacy":50,"new":50}"#));
        changed_spec.spec.value = Decoded::Invalid {
            raw: "{".into(),
            error: "x".into(),
        };
        let reads = [
            empty("a"),
            stored(&routes[1], Some(r#"{"legacy":100,"new":0}"#)),
            stored(&routes[2], None),
            changed_spec,
        ];
        let plan = Plan::new(&routes, &reads, false, &stating(&routes));
        let lines: Vec<String> = plan.routes.iter().map(RoutePlan::line).collect();
        assert_eq!(
            lines,
            [
                r#"a: new route: spec written; weights {"legacy":90,"new":10,"shadow":0} written"#,
                r#"b: weights changed {"legacy":100,"new":0,"shadow":0} -> {"legacy":90,"new":10,"shadow":0}"#,
                "c: unchanged",
                "d: spec changed",
            ]
        );
        assert_eq!(plan.changes(), 3);
        // a: 2 key compares + 2 events; b: 2 + 1; c: 2; d: 2 + 1.
        assert_eq!(plan.compares(), 4 + 3 + 2 + 3);
        assert_eq!(plan.writes(), 4 + 2 + 2, "c is unchanged: no writes");
        assert_eq!(plan.routes[0].spec_read_revision, 0);
        assert_eq!(plan.routes[1].weights_read_revision, 6);
    }

    #[test]
    fn specs_only_keeps_weights() {
        let routes = config(&[("a", 90, 10), ("b", 90, 10)]);
        let reads = [
            empty("a"),
            stored(&routes[1], Some(r#"{"legacy":1,"new":0}"#)),
        ];
        let plan = Plan::new(&routes, &reads, true, &stating(&routes));
        assert_eq!(
            plan.routes[0].line(),
            "a: new route: spec written; weights left unset (all legacy)"
        );
        assert_eq!(plan.routes[1].line(), "b: unchanged");
        assert_eq!(plan.compares(), 2 + 1);
        assert_eq!(plan.writes(), 2);
    }

    #[test]
    fn routes_without_weights_in_the_file_keep_theirs() {
        let routes = config(&[("a", 90, 10), ("b", 90, 10)]);
        let reads = [
            stored(&routes[0], Some(r#"{"legacy":20,"new":80}"#)),
            stored(&routes[1], Some(r#"{"legacy":20,"new":80}"#)),
        ];
        let only_b: HashSet<String> = ["b".to_string()].into();
        let plan = Plan::new(&routes, &reads, false, &only_b);
        assert_eq!(
            plan.routes[0].line(),
            "a: unchanged",
            "a running ramp is left alone"
        );
        assert_eq!(plan.routes[1].weights_change, WeightsChange::Written);
    }

    #[test]
    fn which_routes_state_weights() {
        let text = r#"
            [[routes]]
            id = "with"
            weights = { legacy = 1, new = 1 }
            [[routes]]
            id = "without"
        "#;
        assert_eq!(
            routes_stating_weights(text),
            HashSet::from(["with".to_string()])
        );
        assert!(routes_stating_weights("not toml [").is_empty());
    }

    #[test]
    fn too_many_routes_fail_before_writing() {
        let ids: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
        let spec: Vec<(&str, u32, u32)> = ids.iter().map(|id| (id.as_str(), 90, 10)).collect();
        let routes = config(&spec);
        let reads: Vec<RouteRead> = ids.iter().map(|id| empty(id)).collect();
        let plan = Plan::new(&routes, &reads, false, &stating(&routes));
        assert_eq!(plan.writes(), 160);
        let err = plan.check_size(128).unwrap_err();
        assert!(
            err.contains("only the first 32 of the 40 routes fit"),
            "{err}"
        );
        assert!(err.contains("nothing written"), "{err}");
        assert!(plan.check_size(160).is_ok());
        // Unchanged routes only cost their compares.
        let reads: Vec<RouteRead> = routes
            .iter()
            .map(|r| stored(r, Some(r#"{"legacy":90,"new":10}"#)))
            .collect();
        let plan = Plan::new(&routes, &reads, false, &stating(&routes));
        assert_eq!((plan.compares(), plan.writes()), (80, 0));
        assert!(plan.check_size(128).is_ok());
    }

    #[test]
    fn conflicts_name_changed_keys() {
        let routes = config(&[("a", 90, 10), ("b", 90, 10)]);
        let reads = [
            stored(&routes[0], None),
            stored(&routes[1], Some(r#"{"legacy":1,"new":0}"#)),
        ];
        let plan = Plan::new(&routes, &reads, false, &stating(&routes));
        let mut now = reads.clone();
        now[1].weights.mod_revision = 77;
        assert_eq!(
            conflicts(&plan, &now),
            vec![("b".to_string(), "weights", 6, 77)]
        );
        assert!(conflicts(&plan, &reads).is_empty());
    }
}
