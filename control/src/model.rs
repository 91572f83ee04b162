//! The JSON the control plane writes besides specs and weights: `status` and `events`
//! (SPEC §3), and who wrote them.

use std::time::SystemTime;

pub use cutover_config::dataplane::{rfc3339_now, RollbackRecord};
use cutover_config::{Phase, Weights};
use serde::{Deserialize, Serialize};

/// `<prefix>/routes/<id>/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub phase: Phase,
    /// The etcd mod_revision of the `weights` key this status describes.
    pub weights_revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackRecord>,
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Rollback,
    Weights,
    RampStep,
    /// An operator paused an automatic ramp (`cutover ctl pause`).
    Pause,
    /// An operator resumed (or started) an automatic ramp (`cutover ctl resume`).
    Resume,
    Rejected,
    /// A route spec written by `cutover ctl apply`.
    Spec,
}

/// `<prefix>/routes/<id>/events/<unix-millis>-<who>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub at: String,
    pub kind: EventKind,
    #[serde(default)]
    pub from: Option<serde_json::Value>,
    #[serde(default)]
    pub to: Option<serde_json::Value>,
    pub reason: String,
    pub by: String,
}

impl Event {
    /// An event happening now.
    pub fn now(kind: EventKind, reason: impl Into<String>, by: impl Into<String>) -> Self {
        Event {
            at: rfc3339_now(),
            kind,
            from: None,
            to: None,
            reason: reason.into(),
            by: by.into(),
        }
    }

    /// A weights change `from` → `to`.
    #[must_use]
    pub fn weights(mut self, from: Option<&Weights>, to: &Weights) -> Self {
        self.from = from.map(Weights::to_json);
        self.to = Some(to.to_json());
        self
    }
}

/// Milliseconds since the Unix epoch (event keys).
pub fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This machine's host name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`, else `localhost`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Who a proxy instance is in keys and events: `$CUTOVER_INSTANCE`, else the host name (the
/// pod name on Kubernetes).
pub fn instance_id() -> String {
    std::env::var("CUTOVER_INSTANCE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(hostname)
}

/// Who an operator is in events: `$USER@host`.
pub fn operator_id() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_string());
    format!("{user}@{}", hostname())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_matches_the_spec() {
        let json = r#"{"phase": "rolled_back", "weights_revision": 1234,
            "rollback": {"at": "2026-11-21T14:03:07.120Z", "rule": "error_rate",
                         "reason": "new error rate 7.9% > 5.0% for 60s (n=1843)", "by": "instance-a"}}"#;
        let s: Status = serde_json::from_str(json).unwrap();
        assert_eq!(s.phase, Phase::RolledBack);
        assert_eq!(s.rollback.as_ref().unwrap().rule, "error_rate");
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let plain = serde_json::to_value(Status {
            phase: Phase::Canary,
            weights_revision: 7,
            rollback: None,
        })
        .unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"phase": "canary", "weights_revision": 7})
        );
    }

    #[test]
    fn event_json() {
        let w = Weights {
            legacy: 90.0,
            new: 10.0,
            shadow: 0.0,
        };
        let e = Event::now(EventKind::Weights, "ramp", "me@host").weights(None, &w);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "weights");
        assert_eq!(v["to"]["new"], 10.0);
        assert!(v["at"].as_str().unwrap().ends_with('Z'));
        assert!(
            serde_json::from_str::<Event>(r#"{"at":"x","kind":"bogus","reason":"","by":""}"#)
                .is_err()
        );
    }
}
