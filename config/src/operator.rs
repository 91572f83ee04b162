//! Operator actions on the admin API (SPEC §10): what an operator asks for ([`Action`]), the
//! request bodies it arrives in (parsed and validated here, errors as `path: reason`), and the
//! contract between the admin API, which takes them, and the control plane, which writes them
//! ([`Operator`]): as `cutover ctl` writes to etcd, or in-process without etcd.

use std::future::Future;
use std::pin::Pin;

use serde::Deserialize;

use crate::error::{from_json, ConfigError, ConfigErrors, ROOT};
use crate::{RouteId, Weights};

/// What an operator asks a route for: the `cutover ctl` command of the same name.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `ctl set`: these weights; `shadow` unchanged when `None`.
    Set {
        /// Weight of legacy.
        legacy: f64,
        /// Weight of new.
        new: f64,
        /// Percent shadowed; unchanged when `None`.
        shadow: Option<f64>,
    },
    /// `ctl promote`: legacy 0, new 100, shadow unchanged.
    Promote,
    /// `ctl rollback`: legacy 100, new 0, shadow unchanged, phase `rolled_back`.
    Rollback,
    /// `ctl pause`: hold the ramp at its step (status `paused`, weights untouched).
    Pause,
    /// `ctl resume`: continue a paused ramp, or start it at its first step.
    Resume,
}

impl Action {
    /// The command's name, as in the admin API's path (`weights` for [`Action::Set`]).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Set { .. } => "weights",
            Action::Promote => "promote",
            Action::Rollback => "rollback",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

/// The actions' names in the admin API's paths (`PUT .../weights`, `POST .../<name>`).
pub const ACTIONS: [&str; 5] = ["weights", "promote", "rollback", "pause", "resume"];

/// One operator action, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRequest {
    /// The route acted on.
    pub route: RouteId,
    /// What is asked.
    pub action: Action,
    /// Why, recorded in the event; the command's default reason when `None`.
    pub reason: Option<String>,
    /// Who, recorded in the event and status (`by`).
    pub by: String,
}

/// `PUT .../weights`: `{"legacy": N, "new": N, "shadow": N, "reason": "..."}` (shadow and reason
/// optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsBody {
    legacy: f64,
    new: f64,
    #[serde(default)]
    shadow: Option<f64>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST .../promote|rollback|pause|resume`: `{"reason": "..."}`, or an empty body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The longest reason kept (it goes into etcd events and status).
pub const MAX_REASON: usize = 1024;

/// Parses and validates an action's request body for `action` (one of [`ACTIONS`]): the
/// action and its reason, or every problem as `path: reason`. `None` for an unknown action
/// name.
pub fn parse_action(
    action: &str,
    body: &[u8],
) -> Option<Result<(Action, Option<String>), ConfigErrors>> {
    let parsed = match action {
        "weights" => parse_body::<WeightsBody>(body).and_then(|b| {
            let b = b.ok_or_else(|| ConfigError::new(ROOT, "a JSON object is required"))?;
            Weights::new(b.legacy, b.new, b.shadow.unwrap_or(0.0))?;
            Ok((
                Action::Set {
                    legacy: b.legacy,
                    new: b.new,
                    shadow: b.shadow,
                },
                b.reason,
            ))
        }),
        "promote" | "rollback" | "pause" | "resume" => parse_body::<ReasonBody>(body).map(|b| {
            let b = b.unwrap_or_default();
            let action = match action {
                "promote" => Action::Promote,
                "rollback" => Action::Rollback,
                "pause" => Action::Pause,
                _ => Action::Resume,
            };
            (action, b.reason)
        }),
        _ => return None,
    };
    Some(parsed.and_then(|(action, reason)| Ok((action, check_reason(reason)?))))
}

/// The body as `T`; `None` when it is empty.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Option<T>, ConfigErrors> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ConfigError::new(ROOT, "the body is not UTF-8 JSON"))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    from_json(text).map(Some)
}

/// A reason is one line of printable text, at most [`MAX_REASON`] bytes; blank means none.
fn check_reason(reason: Option<String>) -> Result<Option<String>, ConfigErrors> {
    let Some(reason) = reason.map(|r| r.trim().to_string()) else {
        return Ok(None);
    };
    if reason.is_empty() {
        return Ok(None);
    }
    if reason.len() > MAX_REASON {
        return Err(ConfigError::new(
            "reason",
            format!("at most {MAX_REASON} bytes (got {})", reason.len()),
        )
        .into());
    }
    if reason.chars().any(char::is_control) {
        return Err(ConfigError::new("reason", "one line of printable text").into());
    }
    Ok(Some(reason))
}

/// Checks who an action is recorded as (`X-Cutover-User`): 1 to 128 bytes, no control
/// characters and no `/` (it ends an etcd event key).
pub fn check_user(user: &str) -> Result<String, ConfigError> {
    let user = user.trim();
    if user.is_empty() || user.len() > 128 {
        return Err(ConfigError::new(
            "X-Cutover-User",
            "1 to 128 bytes naming who acts, e.g. alice@ops",
        ));
    }
    if user.chars().any(|c| c.is_control() || c == '/') {
        return Err(ConfigError::new(
            "X-Cutover-User",
            "no control characters and no '/'",
        ));
    }
    Ok(user.to_string())
}

/// Why an action was not carried out (the admin API's status code in brackets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// The route does not exist (404).
    #[error("{0}")]
    NoRoute(String),
    /// The route's state refuses it: pause outside a canary, resume blocked by the
    /// shadow-phase gate, no ramp (409).
    #[error("{0}")]
    Refused(String),
    /// Another write came first; the message names it and who wrote it (409).
    #[error("{0}")]
    Conflict(String),
    /// The store could not be read or written (503).
    #[error("{0}")]
    Unavailable(String),
}

/// A boxed future, for the object-safe [`Operator`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where operator actions are written: etcd as `cutover ctl` writes (guarded transaction,
/// event, status), or in-process without etcd. The binary's wiring picks one.
pub trait Operator: Send + Sync {
    /// Carry out `request`; what was written, as `cutover ctl --json` prints it.
    fn act(&self, request: ActionRequest) -> BoxFuture<'_, Result<serde_json::Value, ActionError>>;

    /// The route's events, newest first, at most `limit`.
    fn history(
        &self,
        route: RouteId,
        limit: u32,
    ) -> BoxFuture<'_, Result<serde_json::Value, ActionError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(action: &str, body: &str) -> String {
        parse_action(action, body.as_bytes())
            .unwrap()
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn weights_bodies() {
        let (action, reason) = parse_action(
            "weights",
            br#"{"legacy": 50, "new": 50, "reason": " why "}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            action,
            Action::Set {
                legacy: 50.0,
                new: 50.0,
                shadow: None
            }
        );
        assert_eq!(reason.as_deref(), Some("why"));
        assert_eq!(
            errors("weights", r#"{"legacy": -1, "new": 5}"#),
            "legacy: must be >= 0 (got -1)"
        );
        assert!(
            errors("weights", r#"{"legacy": 1, "new": 1, "shadow": 101}"#).starts_with("shadow: ")
        );
        assert!(errors("weights", r#"{"legacy": 1, "new": 1, "extra": 1}"#).contains("extra"));
        assert!(errors("weights", r#"{"legacy": 1}"#).contains("new"));
        assert!(errors("weights", "").starts_with("(root): a JSON object"));
        let truncated = errors("weights", "{");
        assert!(truncated.contains("EOF"), "{truncated}");
        assert!(
            errors("weights", r#"{"legacy": 1, "new": 1, "shadow": null}"#)
                .starts_with("shadow: null")
        );
    }

    #[test]
    fn reason_bodies() {
        for (name, want) in [
            ("promote", Action::Promote),
            ("rollback", Action::Rollback),
            ("pause", Action::Pause),
            ("resume", Action::Resume),
        ] {
            let (action, reason) = parse_action(name, b"").unwrap().unwrap();
            assert_eq!((action.name(), reason), (name, None));
            assert_eq!(action, want);
            let (_, reason) = parse_action(name, br#"{"reason":"bad p99"}"#)
                .unwrap()
                .unwrap();
            assert_eq!(reason.as_deref(), Some("bad p99"));
        }
        assert!(parse_action("explode", b"").is_none());
        for name in ACTIONS {
            assert!(parse_action(name, b"").is_some(), "{name}");
        }
        assert!(errors("rollback", r#"{"reason": "a\nb"}"#).starts_with("reason: "));
        let long = format!(r#"{{"reason": "{}"}}"#, "x".repeat(MAX_REASON + 1));
        assert!(errors("rollback", &long).starts_with("reason: at most"));
        assert!(errors("rollback", r#"{"why": "x"}"#).contains("why"));
    }

    #[test]
    fn users() {
        assert_eq!(check_user(" alice@ops ").unwrap(), "alice@ops");
        assert!(check_user("").is_err());
        assert!(check_user("a/b").is_err());
        assert!(check_user("a\tb").is_err());
        assert!(check_user(&"x".repeat(129)).is_err());
    }
}
