//! `cutover ctl status [ROUTE]`: weights, live share, phase and last rollback per route.

use cutover_config::{Phase, Weights};
use serde_json::{json, Value};

use super::table::{self, num, percent};
use super::view::{self, Decoded, RouteRead};
use super::{no_route, route_id, Ctx, Result};
use crate::model::RollbackRecord;

pub(super) async fn run(ctx: &Ctx, route: Option<&str>) -> Result<String> {
    let id = route.map(route_id).transpose()?;
    let store = ctx.store().await?;
    let reads = match &id {
        Some(id) => {
            let read = view::read_route(&store, &ctx.keys, id, None).await?;
            if !read.exists() {
                return Err(no_route(ctx, id));
            }
            vec![read]
        }
        None => {
            let (ids, revision) = view::route_ids(&store, &ctx.keys).await?;
            let mut reads = Vec::with_capacity(ids.len());
            for id in ids {
                let read = view::read_route(&store, &ctx.keys, &id, Some(revision)).await?;
                if read.exists() {
                    reads.push(read);
                }
            }
            reads
        }
    };
    let rows: Vec<RouteStatus> = reads.iter().map(RouteStatus::from_read).collect();
    if ctx.json {
        let array: Vec<Value> = rows.iter().map(RouteStatus::to_json).collect();
        return Ok(super::compact(&Value::Array(array)));
    }
    if rows.is_empty() {
        return Ok(format!(
            "no routes under {}; write some with `cutover ctl apply FILE`",
            ctx.prefix()
        ));
    }
    Ok(render(&rows))
}

/// What `status` shows about one route.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RouteStatus {
    pub(super) route: String,
    /// The weights proxies serve; `None` when the key is invalid.
    pub(super) weights: Option<Weights>,
    /// `key`, `default` (no key: all legacy) or `invalid`.
    pub(super) weights_source: &'static str,
    pub(super) weights_mod_revision: Option<i64>,
    pub(super) phase: Option<Phase>,
    /// True when there is no (valid) status key and the phase is implied by the weights.
    pub(super) phase_implied: bool,
    pub(super) status_weights_revision: Option<i64>,
    pub(super) rollback: Option<RollbackRecord>,
    /// `valid`, `invalid` or `missing`.
    pub(super) spec: &'static str,
    /// Everything wrong or noteworthy, one sentence each.
    pub(super) problems: Vec<String>,
}

impl RouteStatus {
    pub(super) fn from_read(read: &RouteRead) -> RouteStatus {
        let mut problems = Vec::new();
        let spec = match &read.spec.value {
            Decoded::Valid(_) => "valid",
            Decoded::Missing => {
                problems.push(
                    "no spec key: proxies do not serve this route; write it with `cutover ctl apply`"
                        .to_string(),
                );
                "missing"
            }
            Decoded::Invalid { error, .. } => {
                problems.push(format!(
                    "spec key invalid ({error}); proxies keep their last valid spec"
                ));
                "invalid"
            }
        };
        let (weights, weights_source) = match &read.weights.value {
            Decoded::Valid(w) => (Some(*w), "key"),
            Decoded::Missing => (Some(Weights::default()), "default"),
            Decoded::Invalid { error, .. } => {
                problems.push(format!(
                    "weights key invalid ({error}); proxies keep their last valid weights; \
                     fix it with `cutover ctl set {}`",
                    read.id
                ));
                (None, "invalid")
            }
        };
        let weights_mod_revision =
            (read.weights.mod_revision > 0).then_some(read.weights.mod_revision);
        let (phase, phase_implied, status_weights_revision, rollback) = match &read.status.value {
            Decoded::Valid(s) => {
                if let Some(wrev) = weights_mod_revision {
                    if s.weights_revision != wrev {
                        problems.push(format!(
                            "status describes weights revision {} but the weights key is at {wrev} \
                             (no proxy has caught up yet)",
                            s.weights_revision
                        ));
                    }
                }
                (
                    Some(s.phase),
                    false,
                    Some(s.weights_revision),
                    s.rollback.clone(),
                )
            }
            Decoded::Missing => (weights.map(|w| w.implied_phase()), true, None, None),
            Decoded::Invalid { error, .. } => {
                problems.push(format!("status key undecodable ({error})"));
                (weights.map(|w| w.implied_phase()), true, None, None)
            }
        };
        if phase == Some(Phase::Paused) && !phase_implied {
            problems.push(format!(
                "ramp paused by an operator: it stays at this step until `cutover ctl resume {}`",
                read.id
            ));
        }
        RouteStatus {
            route: read.id.clone(),
            weights,
            weights_source,
            weights_mod_revision,
            phase,
            phase_implied,
            status_weights_revision,
            rollback,
            spec,
            problems,
        }
    }

    /// The `--json` form of one route.
    pub(super) fn to_json(&self) -> Value {
        json!({
            "route": self.route,
            "weights": self.weights.map(|w| w.to_json()),
            "weights_source": self.weights_source,
            "new_share_percent": self.weights.map(|w| (w.new_share() * 10_000.0).round() / 100.0),
            "phase": self.phase.map(|p| p.as_str()),
            "phase_source": if self.phase_implied { "implied" } else { "status" },
            "rollback": self.rollback,
            "weights_mod_revision": self.weights_mod_revision,
            "status_weights_revision": self.status_weights_revision,
            "spec": self.spec,
            "problems": self.problems,
        })
    }

    /// The phase as shown in the table.
    pub(super) fn phase_text(&self) -> String {
        match (self.phase, self.phase_implied) {
            (Some(p), false) => p.to_string(),
            (Some(p), true) => format!("{p} (implied)"),
            (None, _) => "unknown".to_string(),
        }
    }
}

/// `at rule by who: reason`, or `-`.
pub(super) fn rollback_text(rollback: Option<&RollbackRecord>) -> String {
    match rollback {
        Some(r) => format!("{} {} by {}: {}", r.at, r.rule, r.by, r.reason),
        None => "-".to_string(),
    }
}

/// The text table plus one line per problem.
pub(super) fn render(rows: &[RouteStatus]) -> String {
    let headers = [
        "ROUTE",
        "LEGACY",
        "NEW",
        "SHADOW",
        "NEW SHARE",
        "PHASE",
        "WEIGHTS REV",
        "SPEC",
        "LAST ROLLBACK",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let (legacy, new, shadow, share) = match r.weights {
                Some(w) => {
                    let mut legacy = num(w.legacy);
                    if r.weights_source == "default" {
                        legacy.push_str(" (no key)");
                    }
                    (
                        legacy,
                        num(w.new),
                        format!("{}%", num(w.shadow)),
                        percent(w.new_share()),
                    )
                }
                None => ("invalid".into(), "-".into(), "-".into(), "-".into()),
            };
            vec![
                r.route.clone(),
                legacy,
                new,
                shadow,
                share,
                r.phase_text(),
                r.weights_mod_revision
                    .map_or("-".to_string(), |v| v.to_string()),
                r.spec.to_string(),
                rollback_text(r.rollback.as_ref()),
            ]
        })
        .collect();
    let mut out = table::render(&headers, &cells);
    for r in rows {
        for problem in &r.problems {
            out.push_str(&format!("{}: {problem}\n", r.route));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::store::RawKv;
    use super::*;
    use crate::keys::Keys;
    use crate::model::Status;

    const SPEC: &str = r#"{"match":{"path_prefix":"/"},"legacy":{"endpoints":["127.0.0.1:1"]},"new":{"endpoints":["127.0.0.1:2"]}}"#;

    fn read(id: &str, weights: Option<&str>, status: Option<Status>) -> RouteRead {
        let keys = Keys::new("/p");
        let mut kvs = vec![RawKv {
            key: keys.spec(id),
            value: SPEC.into(),
            mod_revision: 2,
        }];
        if let Some(w) = weights {
            kvs.push(RawKv {
                key: keys.weights(id),
                value: w.into(),
                mod_revision: 41,
            });
        }
        if let Some(s) = status {
            kvs.push(RawKv {
                key: keys.status(id),
                value: serde_json::to_vec(&s).unwrap(),
                mod_revision: 42,
            });
        }
        RouteRead::from_kvs(&keys, id, &kvs, 50)
    }

    #[test]
    fn phase_from_status_or_implied() {
        let implied =
            RouteStatus::from_read(&read("orders", Some(r#"{"legacy":90,"new":10}"#), None));
        assert_eq!(implied.phase, Some(Phase::Canary));
        assert!(implied.phase_implied);
        assert_eq!(implied.phase_text(), "canary (implied)");
        let rolled = RouteStatus::from_read(&read(
            "orders",
            Some(r#"{"legacy":100,"new":0}"#),
            Some(Status {
                phase: Phase::RolledBack,
                weights_revision: 41,
                rollback: Some(RollbackRecord {
                    at: "2026-01-01T00:00:00.000Z".into(),
                    rule: "operator".into(),
                    reason: "bad deploy".into(),
                    by: "alice@h".into(),
                    evidence: None,
                    gate: None,
                }),
            }),
        ));
        assert_eq!(rolled.phase_text(), "rolled_back");
        assert!(rolled.problems.is_empty(), "{:?}", rolled.problems);
        assert_eq!(
            rollback_text(rolled.rollback.as_ref()),
            "2026-01-01T00:00:00.000Z operator by alice@h: bad deploy"
        );
    }

    #[test]
    fn paused_routes_say_how_to_resume() {
        let s = RouteStatus::from_read(&read(
            "orders",
            Some(r#"{"legacy":95,"new":5}"#),
            Some(Status {
                phase: Phase::Paused,
                weights_revision: 41,
                rollback: None,
            }),
        ));
        assert_eq!(s.phase_text(), "paused");
        assert_eq!(
            s.problems,
            ["ramp paused by an operator: it stays at this step until `cutover ctl resume orders`"]
        );
        let out = render(&[s]);
        assert!(out.lines().nth(1).unwrap().contains(" paused "), "{out}");
    }

    #[test]
    fn stale_status_is_noted() {
        let s = RouteStatus::from_read(&read(
            "orders",
            Some(r#"{"legacy":1,"new":1}"#),
            Some(Status {
                phase: Phase::Legacy,
                weights_revision: 7,
                rollback: None,
            }),
        ));
        assert_eq!(s.phase, Some(Phase::Legacy));
        assert!(
            s.problems[0].contains("revision 7 but the weights key is at 41"),
            "{:?}",
            s.problems
        );
    }

    #[test]
    fn table_and_problems() {
        let rows = [
            RouteStatus::from_read(&read(
                "orders",
                Some(r#"{"legacy":75,"new":25,"shadow":100}"#),
                None,
            )),
            RouteStatus::from_read(&read("users", None, None)),
            RouteStatus::from_read(&read("broken", Some(r#"{"legacy":0,"new":0}"#), None)),
        ];
        let out = render(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "ROUTE   LEGACY        NEW  SHADOW  NEW SHARE  PHASE             WEIGHTS REV  SPEC   LAST ROLLBACK"
        );
        assert_eq!(
            lines[1],
            "orders  75            25   100%    25%        canary (implied)  41           valid  -"
        );
        assert_eq!(
            lines[2],
            "users   100 (no key)  0    0%      0%         legacy (implied)  -            valid  -"
        );
        assert!(
            lines[3]
                .starts_with("broken  invalid       -    -       -          unknown           41"),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].starts_with("broken: weights key invalid ((root): legacy + new must be > 0)"),
            "{}",
            lines[4]
        );
    }

    #[test]
    fn json_shape() {
        let v = RouteStatus::from_read(&read("orders", Some(r#"{"legacy":2,"new":1}"#), None))
            .to_json();
        assert_eq!(v["route"], "orders");
        assert_eq!(v["weights"], json!({"legacy": 2, "new": 1, "shadow": 0}));
        assert_eq!(v["new_share_percent"], 33.33);
        assert_eq!(v["phase"], "canary");
        assert_eq!(v["phase_source"], "implied");
        assert_eq!(v["weights_mod_revision"], 41);
        assert_eq!(v["rollback"], Value::Null);
        assert_eq!(v["spec"], "valid");
    }
}
