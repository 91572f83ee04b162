//! Weights (SPEC §3 `<prefix>/routes/<id>/weights`) and the phase they imply.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::check;
use crate::error::{ConfigErrors, FieldPath, Report};
use crate::raw::RawWeights;
use crate::ser;

/// How live traffic is split between `legacy` and `new`, and how much of it
/// is shadowed to the other backend.
///
/// Validated: all finite, `legacy >= 0`, `new >= 0`, `legacy + new > 0`,
/// `shadow` in `0..=100`. Serializes as `{"legacy": 75, "new": 25, "shadow": 100}`
/// (whole numbers without `.0`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Weights {
    /// Relative weight of the legacy backend.
    #[serde(serialize_with = "ser::number")]
    pub legacy: f64,
    /// Relative weight of the new backend.
    #[serde(serialize_with = "ser::number")]
    pub new: f64,
    /// Percent (0–100) of eligible requests also sent to the backend that did not serve them.
    #[serde(serialize_with = "ser::number")]
    pub shadow: f64,
}

impl Default for Weights {
    /// All traffic on legacy, no shadowing: what a missing weights key means.
    fn default() -> Self {
        Self {
            legacy: 100.0,
            new: 0.0,
            shadow: 0.0,
        }
    }
}

impl Weights {
    /// Validated weights; the errors name the offending field (`legacy`, `new`, `shadow`).
    pub fn new(legacy: f64, new: f64, shadow: f64) -> Result<Self, ConfigErrors> {
        let raw = RawWeights {
            legacy,
            new,
            shadow: Some(shadow),
        };
        let mut report = Report::default();
        let weights = validate(&mut report, &FieldPath::root(), raw);
        report.finish(weights)
    }

    /// Share of live traffic served by `new`, in `0.0..=1.0`.
    pub fn new_share(&self) -> f64 {
        let (mut legacy, mut new) = (self.legacy, self.new);
        if (legacy + new).is_infinite() {
            // Each is finite but the sum overflows (both near f64::MAX): halving is exact there
            // and keeps the ratio.
            (legacy, new) = (legacy / 2.0, new / 2.0);
        }
        let total = legacy + new;
        if total > 0.0 {
            (new / total).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// The phase these weights imply (SPEC §3): `legacy` (new 0, shadow 0),
    /// `shadow` (new 0, shadow > 0), `canary` (new serves between 0 and 100 %),
    /// `promoted` (new serves 100 %).
    pub fn implied_phase(&self) -> Phase {
        if self.new <= 0.0 {
            if self.shadow > 0.0 {
                Phase::Shadow
            } else {
                Phase::Legacy
            }
        } else if self.legacy <= 0.0 {
            Phase::Promoted
        } else {
            Phase::Canary
        }
    }

    /// What an automatic rollback writes (SPEC §4): all traffic on legacy,
    /// shadow unchanged.
    pub fn rolled_back(&self) -> Weights {
        Weights {
            legacy: 100.0,
            new: 0.0,
            shadow: self.shadow,
        }
    }

    /// The SPEC JSON form, e.g. `{"legacy":75,"new":25,"shadow":100}`.
    pub fn to_json(&self) -> serde_json::Value {
        ser::to_value(self)
    }
}

impl<'de> Deserialize<'de> for Weights {
    /// Accepts the SPEC JSON form and validates it like [`crate::parse_weights_json`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawWeights::deserialize(deserializer)?;
        let mut report = Report::default();
        let weights = validate(&mut report, &FieldPath::root(), raw);
        report.finish(weights).map_err(ser::custom_error)
    }
}

/// Validates raw weights found at `at`.
pub(crate) fn validate(report: &mut Report, at: &FieldPath, raw: RawWeights) -> Option<Weights> {
    let legacy = check::non_negative(report, &at.key("legacy"), raw.legacy);
    let new = check::non_negative(report, &at.key("new"), raw.new);
    let shadow = check::number_in_range(
        report,
        &at.key("shadow"),
        raw.shadow.unwrap_or(0.0),
        (0.0, 100.0),
    );
    let (legacy, new, shadow) = (legacy?, new?, shadow?);
    if legacy + new <= 0.0 {
        report.error(at, "legacy + new must be > 0");
        return None;
    }
    Some(Weights {
        legacy,
        new,
        shadow,
    })
}

/// Where a route stands in its cutover (SPEC §3 `status.phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `legacy`: new weight 0, shadow 0.
    Legacy,
    /// `shadow`: new weight 0, shadow > 0.
    Shadow,
    /// `canary`: new serves between 0 and 100 % of live traffic.
    Canary,
    /// `promoted`: new serves 100 % of live traffic.
    Promoted,
    /// `rolled_back`: set by a rollback; stays until the next operator write of weights.
    RolledBack,
    /// `paused`: a ramp paused by an operator.
    Paused,
}

impl Phase {
    /// Every phase, in cutover order.
    pub const ALL: [Phase; 6] = [
        Phase::Legacy,
        Phase::Shadow,
        Phase::Canary,
        Phase::Promoted,
        Phase::RolledBack,
        Phase::Paused,
    ];

    /// The SPEC name: `"legacy"`, `"shadow"`, `"canary"`, `"promoted"`,
    /// `"rolled_back"` or `"paused"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Legacy => "legacy",
            Phase::Shadow => "shadow",
            Phase::Canary => "canary",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Paused => "paused",
        }
    }

    /// The phase as a JSON string.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::from(self.as_str())
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|phase| phase.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown phase {text:?}, expected one of \"legacy\", \"shadow\", \
                     \"canary\", \"promoted\", \"rolled_back\", \"paused\""
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(legacy: f64, new: f64, shadow: f64) -> Weights {
        Weights {
            legacy,
            new,
            shadow,
        }
    }

    fn errors_of(legacy: f64, new: f64, shadow: f64) -> Vec<String> {
        match Weights::new(legacy, new, shadow) {
            Ok(weights) => panic!("accepted {weights:?}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn default_is_all_legacy() {
        assert_eq!(Weights::default(), w(100.0, 0.0, 0.0));
        assert_eq!(Weights::default().implied_phase(), Phase::Legacy);
    }

    #[test]
    fn valid_weights() {
        assert_eq!(Weights::new(90.0, 10.0, 0.0), Ok(w(90.0, 10.0, 0.0)));
        assert_eq!(Weights::new(0.0, 1.0, 100.0), Ok(w(0.0, 1.0, 100.0)));
        assert_eq!(Weights::new(0.5, 0.25, 12.5), Ok(w(0.5, 0.25, 12.5)));
    }

    #[test]
    fn every_bad_field_is_reported() {
        assert_eq!(
            errors_of(-1.0, -2.0, 101.0),
            vec![
                "legacy: must be >= 0 (got -1)",
                "new: must be >= 0 (got -2)",
                "shadow: must be between 0 and 100 (got 101)",
            ]
        );
    }

    #[test]
    fn sum_must_be_positive() {
        assert_eq!(
            errors_of(0.0, 0.0, 0.0),
            vec!["(root): legacy + new must be > 0"]
        );
    }

    #[test]
    fn non_finite_is_rejected() {
        assert_eq!(
            errors_of(f64::INFINITY, 1.0, 0.0),
            vec!["legacy: must be a finite number (got inf)"]
        );
        assert_eq!(
            errors_of(1.0, 1.0, f64::NAN),
            vec!["shadow: must be a finite number (got NaN)"]
        );
    }

    #[test]
    fn new_share_is_new_over_total() {
        assert_eq!(w(75.0, 25.0, 0.0).new_share(), 0.25);
        assert_eq!(w(1.0, 0.0, 0.0).new_share(), 0.0);
        assert_eq!(w(0.0, 3.0, 0.0).new_share(), 1.0);
        assert_eq!(w(0.0, 0.0, 0.0).new_share(), 0.0);
    }

    #[test]
    fn implied_phases() {
        assert_eq!(w(100.0, 0.0, 0.0).implied_phase(), Phase::Legacy);
        assert_eq!(w(100.0, 0.0, 5.0).implied_phase(), Phase::Shadow);
        assert_eq!(w(99.99, 0.01, 0.0).implied_phase(), Phase::Canary);
        assert_eq!(w(75.0, 25.0, 100.0).implied_phase(), Phase::Canary);
        assert_eq!(w(0.0, 100.0, 0.0).implied_phase(), Phase::Promoted);
        assert_eq!(w(0.0, 100.0, 50.0).implied_phase(), Phase::Promoted);
    }

    #[test]
    fn rolled_back_keeps_shadow() {
        assert_eq!(w(10.0, 90.0, 30.0).rolled_back(), w(100.0, 0.0, 30.0));
    }

    #[test]
    fn serializes_whole_numbers_without_fraction() {
        assert_eq!(
            serde_json::to_string(&w(75.0, 25.0, 100.0)).unwrap(),
            r#"{"legacy":75,"new":25,"shadow":100}"#
        );
        assert_eq!(
            w(99.5, 0.5, 0.0).to_json(),
            serde_json::json!({"legacy": 99.5, "new": 0.5, "shadow": 0})
        );
    }

    #[test]
    fn deserialize_validates() {
        let ok: Weights = serde_json::from_str(r#"{"legacy": 1, "new": 1}"#).unwrap();
        assert_eq!(ok, w(1.0, 1.0, 0.0));
        let err = serde_json::from_str::<Weights>(r#"{"legacy": 0, "new": 0}"#).unwrap_err();
        assert!(
            err.to_string().contains("legacy + new must be > 0"),
            "{err}"
        );
    }

    #[test]
    fn phase_names() {
        for phase in Phase::ALL {
            let json = serde_json::to_string(&phase).unwrap();
            assert_eq!(json, format!("\"{}\"", phase.as_str()));
            assert_eq!(phase.as_str().parse::<Phase>(), Ok(phase));
            assert_eq!(phase.to_json(), serde_json::json!(phase.as_str()));
        }
        assert_eq!(Phase::RolledBack.to_string(), "rolled_back");
        assert!("rolledback".parse::<Phase>().is_err());
    }
}

#[cfg(test)]
mod document_tests {
    //! The rules above, seen through whole documents.
    use crate::tests::errors;
    use crate::*;

    #[test]
    fn weights_json_forms() {
        assert_eq!(
            parse_weights_json(r#"{"legacy": 99.99, "new": 0.01}"#),
            Ok(Weights {
                legacy: 99.99,
                new: 0.01,
                shadow: 0.0
            })
        );
        assert_eq!(
            errors(parse_weights_json(
                r#"{"legacy": -1, "new": 0, "shadow": 0}"#
            )),
            vec!["legacy: must be >= 0 (got -1)"]
        );
        assert_eq!(
            errors(parse_weights_json(r#"{"legacy": 0, "new": 0}"#)),
            vec!["(root): legacy + new must be > 0"]
        );
        let unknown = errors(parse_weights_json(
            r#"{"legacy": 1, "new": 0, "shadows": 1}"#,
        ));
        assert!(
            unknown[0].starts_with("(root): unknown field \"shadows\""),
            "{unknown:?}"
        );
        let missing = errors(parse_weights_json(r#"{"legacy": 1}"#));
        assert!(
            missing[0].starts_with("(root): missing field \"new\""),
            "{missing:?}"
        );
        let typed = errors(parse_weights_json(r#"{"legacy": "1", "new": 0}"#));
        assert!(
            typed[0].starts_with("legacy: invalid type: string \"1\""),
            "{typed:?}"
        );
    }
}
