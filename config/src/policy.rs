//! The optional blocks of a route spec: `shadow`, `compare`, `rollback`, `ramp`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check;
use crate::error::{FieldPath, Report};
use crate::jsonpath::JsonPath;
use crate::raw::{
    RawCompare, RawDivergence, RawErrorRate, RawLatency, RawRamp, RawRollback, RawShadow,
};
use crate::ser;

/// Which requests are copied to the backend that did not serve them, and the
/// bounds on that copying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowPolicy {
    /// HTTP methods eligible for shadowing (uppercase; never `CONNECT`).
    pub methods: Vec<String>,
    /// Requests with larger bodies are not shadowed.
    pub max_body_bytes: u64,
    /// Shadow requests in flight at once; more are dropped and counted.
    pub max_in_flight: usize,
    /// Time limit for a shadow request.
    #[serde(serialize_with = "ser::duration")]
    pub timeout: Duration,
    /// Request headers removed from shadow copies (lowercase).
    pub strip_headers: Vec<String>,
    /// gRPC methods shadowed (SPEC §8): full method names (`/shop.Orders/Get`), a trailing
    /// `*` matching any rest (`/shop.Orders/Get*`). Empty: no gRPC call is shadowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grpc_methods: Vec<String>,
}

impl ShadowPolicy {
    /// Does `method` (a request's path, `/package.Service/Method`) match `grpc_methods`?
    pub fn shadows_grpc_method(&self, method: &str) -> bool {
        self.grpc_methods
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => method.starts_with(prefix),
                None => method == pattern,
            })
    }
}

impl Default for ShadowPolicy {
    /// GET/HEAD/OPTIONS, 1 MiB bodies, 1024 in flight, 5s, nothing stripped.
    fn default() -> Self {
        Self {
            methods: ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec(),
            max_body_bytes: 1_048_576,
            max_in_flight: 1024,
            timeout: Duration::from_secs(5),
            strip_headers: Vec::new(),
            grpc_methods: Vec::new(),
        }
    }
}

/// How the answers of the two backends are compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparePolicy {
    /// Compare status codes.
    pub status: bool,
    /// Response headers to compare (lowercase).
    pub headers: Vec<String>,
    /// How bodies are compared.
    pub body: BodyCompare,
    /// JSON paths whose values are never compared.
    pub ignore_json_paths: Vec<JsonPath>,
    /// Response headers never compared (lowercase).
    pub ignore_headers: Vec<String>,
    /// Percent (0–100) of shadowed requests sent to legacy a second time to
    /// learn which JSON paths differ between two legacy answers.
    #[serde(serialize_with = "ser::number")]
    pub learn_noise_percent: f64,
    /// How long a learned volatile JSON path stays excluded from divergence
    /// when it is not seen to vary again.
    #[serde(serialize_with = "ser::duration")]
    pub noise_ttl: Duration,
    /// `body = "grpc"` with a schema: a file path (config file) or a name under
    /// `<prefix>/descriptors/` (etcd), as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub descriptor_set: Option<String>,
    /// That set, decoded: attached by the config source, `None` until it is.
    #[serde(skip)]
    pub descriptors: Option<crate::DescriptorSet>,
}

impl Default for ComparePolicy {
    /// Status, `content-type`, JSON bodies; ignoring date/server/set-cookie;
    /// learned noise kept for 10 minutes.
    fn default() -> Self {
        Self {
            status: true,
            headers: vec!["content-type".to_owned()],
            body: BodyCompare::Json,
            ignore_json_paths: Vec::new(),
            ignore_headers: ["date", "server", "set-cookie"].map(String::from).to_vec(),
            learn_noise_percent: 0.0,
            noise_ttl: ComparePolicy::DEFAULT_NOISE_TTL,
            descriptor_set: None,
            descriptors: None,
        }
    }
}

impl ComparePolicy {
    /// Default time a learned volatile JSON path is kept without being seen
    /// again: 10 minutes.
    pub const DEFAULT_NOISE_TTL: Duration = Duration::from_secs(600);
}

/// How bodies are compared: `"json"`, `"bytes"`, `"grpc"` or `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyCompare {
    /// Semantic JSON comparison (key order and whitespace ignored); non-JSON
    /// bodies fall back to bytes.
    Json,
    /// Byte-for-byte comparison.
    Bytes,
    /// gRPC (SPEC §8): `grpc-status`/`grpc-message` compared like the status, the messages
    /// decoded from the protobuf wire format and compared field by field, order ignored.
    Grpc,
    /// Bodies are not compared.
    None,
}

/// The automatic rollback rules of a route; `None` means the rule is off.
///
/// A spec without a `rollback` block gets [`RollbackPolicy::default`] (all three
/// rules); a given block enables only the rules it names, and `{}` turns
/// automatic rollback off ([`RollbackPolicy::disabled`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackPolicy {
    /// Roll back when new's error rate stays too high.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorRateRule>,
    /// Roll back when new's p99 latency stays too high relative to legacy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99: Option<LatencyRule>,
    /// Roll back when too many compared answers differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub divergence: Option<DivergenceRule>,
}

impl Default for RollbackPolicy {
    /// The three SPEC rules with their default thresholds.
    fn default() -> Self {
        Self {
            error_rate: Some(ErrorRateRule::default()),
            latency_p99: Some(LatencyRule::default()),
            divergence: Some(DivergenceRule::default()),
        }
    }
}

impl RollbackPolicy {
    /// No rules: automatic rollback off (`"rollback": {}`).
    pub fn disabled() -> Self {
        Self {
            error_rate: None,
            latency_p99: None,
            divergence: None,
        }
    }

    /// Whether any rule is active.
    pub fn is_enabled(&self) -> bool {
        self.error_rate.is_some() || self.latency_p99.is_some() || self.divergence.is_some()
    }
}

/// Roll back when new's error rate exceeds `max` for `window` with at least
/// `min_requests` requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorRateRule {
    /// Highest tolerated error rate, in `0..=1`.
    #[serde(serialize_with = "ser::number")]
    pub max: f64,
    /// How long the breach must last (JSON key `for`).
    #[serde(rename = "for", serialize_with = "ser::duration")]
    pub window: Duration,
    /// Minimum requests to new in the window before the rule can fire.
    pub min_requests: u64,
}

impl Default for ErrorRateRule {
    /// `{"max": 0.05, "for": "60s", "min_requests": 100}`.
    fn default() -> Self {
        Self {
            max: 0.05,
            window: Duration::from_secs(60),
            min_requests: 100,
        }
    }
}

/// Roll back when new's p99 latency exceeds `max_ratio` times legacy's for
/// `window` with at least `min_requests` requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyRule {
    /// Highest tolerated ratio new p99 / legacy p99; positive.
    #[serde(serialize_with = "ser::number")]
    pub max_ratio: f64,
    /// How long the breach must last (JSON key `for`).
    #[serde(rename = "for", serialize_with = "ser::duration")]
    pub window: Duration,
    /// Minimum requests to new in the window before the rule can fire.
    pub min_requests: u64,
}

impl Default for LatencyRule {
    /// `{"max_ratio": 2.0, "for": "300s", "min_requests": 100}`.
    fn default() -> Self {
        Self {
            max_ratio: 2.0,
            window: Duration::from_secs(300),
            min_requests: 100,
        }
    }
}

/// Roll back when the share of diverging comparisons exceeds `max` for
/// `window` with at least `min_samples` comparisons.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DivergenceRule {
    /// Highest tolerated divergence rate, in `0..=1`.
    #[serde(serialize_with = "ser::number")]
    pub max: f64,
    /// How long the breach must last (JSON key `for`).
    #[serde(rename = "for", serialize_with = "ser::duration")]
    pub window: Duration,
    /// Minimum comparisons in the window before the rule can fire.
    pub min_samples: u64,
}

impl Default for DivergenceRule {
    /// `{"max": 0.01, "for": "60s", "min_samples": 100}`.
    fn default() -> Self {
        Self {
            max: 0.01,
            window: Duration::from_secs(60),
            min_samples: 100,
        }
    }
}

/// A stepwise increase of new's share of traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ramp {
    /// Percent of traffic on new at each step; strictly increasing, each in `(0, 100]`.
    #[serde(serialize_with = "ser::numbers")]
    pub steps: Vec<f64>,
    /// How long each step is held before the next.
    #[serde(serialize_with = "ser::duration")]
    pub hold: Duration,
    /// Advance steps automatically (otherwise an operator advances them).
    pub auto: bool,
}

impl Ramp {
    /// Default time each step is held: 5 minutes.
    pub const DEFAULT_HOLD: Duration = Duration::from_secs(300);
}

const METHOD_HINT: &str = "use an HTTP method such as GET";

pub(crate) fn shadow(report: &mut Report, at: &FieldPath, raw: RawShadow) -> Option<ShadowPolicy> {
    let default = ShadowPolicy::default();
    let methods = match raw.methods {
        Some(methods) => methods_list(report, &at.key("methods"), &methods),
        None => Some(default.methods),
    };
    let max_in_flight = check::size(
        report,
        &at.key("max_in_flight"),
        raw.max_in_flight,
        default.max_in_flight,
        (1, u64::MAX),
    );
    let timeout =
        check::positive_duration(report, &at.key("timeout"), raw.timeout, default.timeout);
    let strip_headers =
        check::header_list(report, &at.key("strip_headers"), raw.strip_headers, &[]);
    let grpc_methods = grpc_methods(report, &at.key("grpc_methods"), raw.grpc_methods);
    Some(ShadowPolicy {
        methods: methods?,
        max_body_bytes: raw.max_body_bytes.unwrap_or(default.max_body_bytes),
        max_in_flight: max_in_flight?,
        timeout: timeout?,
        strip_headers: strip_headers?,
        grpc_methods: grpc_methods?,
    })
}

/// `grpc_methods`: `/package.Service/Method` names, `*` only as the last character.
fn grpc_methods(
    report: &mut Report,
    at: &FieldPath,
    raw: Option<Vec<String>>,
) -> Option<Vec<String>> {
    let raw = raw.unwrap_or_default();
    let mut ok = true;
    for (i, pattern) in raw.iter().enumerate() {
        let body = pattern.strip_suffix('*').unwrap_or(pattern);
        let problem = if !pattern.starts_with('/') {
            Some(format!(
                "{pattern:?} must start with '/' (a full method: \"/package.Service/Method\")"
            ))
        } else if body.contains('*') {
            Some(format!(
                "{pattern:?}: '*' may only end a pattern (\"/shop.Orders/Get*\")"
            ))
        } else {
            body.chars()
                .find(|c| c.is_whitespace() || c.is_control())
                .map(|c| format!("{pattern:?} must not contain {c:?}"))
        };
        if let Some(problem) = problem {
            ok = false;
            report.error(&at.index(i), problem);
        }
    }
    ok.then_some(raw)
}

fn methods_list(report: &mut Report, at: &FieldPath, raw: &[String]) -> Option<Vec<String>> {
    let mut methods: Vec<String> = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (i, text) in raw.iter().enumerate() {
        let method = text.to_ascii_uppercase();
        let problem = if !check::is_token(&method) {
            Some(format!("invalid method {text:?}: {METHOD_HINT}"))
        } else if method == "CONNECT" {
            Some("CONNECT cannot be shadowed".to_owned())
        } else if methods.contains(&method) {
            Some(format!("duplicate method {method:?}"))
        } else {
            None
        };
        match problem {
            Some(reason) => {
                report.error(&at.index(i), reason);
                ok = false;
            }
            None => methods.push(method),
        }
    }
    ok.then_some(methods)
}

pub(crate) fn compare(
    report: &mut Report,
    at: &FieldPath,
    raw: RawCompare,
) -> Option<ComparePolicy> {
    let default = ComparePolicy::default();
    let headers = check::header_list(report, &at.key("headers"), raw.headers, &["content-type"]);
    let ignore_json_paths = json_paths(report, &at.key("ignore_json_paths"), raw.ignore_json_paths);
    let ignore_headers = check::header_list(
        report,
        &at.key("ignore_headers"),
        raw.ignore_headers,
        &["date", "server", "set-cookie"],
    );
    let learn_noise_percent = check::number_in_range(
        report,
        &at.key("learn_noise_percent"),
        raw.learn_noise_percent
            .unwrap_or(default.learn_noise_percent),
        (0.0, 100.0),
    );
    let noise_ttl = check::positive_duration(
        report,
        &at.key("noise_ttl"),
        raw.noise_ttl,
        default.noise_ttl,
    );
    let body = raw.body.unwrap_or(default.body);
    let descriptor_set = match raw.descriptor_set {
        Some(name) if body != BodyCompare::Grpc => {
            report.error(
                &at.key("descriptor_set"),
                format!("{name:?} is a gRPC schema: it needs body = \"grpc\""),
            );
            None
        }
        Some(name) if name.trim().is_empty() => {
            report.error(
                &at.key("descriptor_set"),
                "must name a FileDescriptorSet (a file path, or a name under <prefix>/descriptors/)",
            );
            None
        }
        Some(name) => Some(Some(name)),
        None => Some(None),
    };
    Some(ComparePolicy {
        status: raw.status.unwrap_or(default.status),
        headers: headers?,
        body,
        ignore_json_paths: ignore_json_paths?,
        ignore_headers: ignore_headers?,
        learn_noise_percent: learn_noise_percent?,
        noise_ttl: noise_ttl?,
        descriptor_set: descriptor_set?,
        descriptors: None,
    })
}

fn json_paths(
    report: &mut Report,
    at: &FieldPath,
    raw: Option<Vec<String>>,
) -> Option<Vec<JsonPath>> {
    let mut paths = Vec::new();
    let mut ok = true;
    for (i, text) in raw.unwrap_or_default().iter().enumerate() {
        match JsonPath::parse(text) {
            Ok(path) => paths.push(path),
            Err(reason) => {
                report.error(&at.index(i), reason);
                ok = false;
            }
        }
    }
    ok.then_some(paths)
}

pub(crate) fn rollback(
    report: &mut Report,
    at: &FieldPath,
    raw: Option<RawRollback>,
) -> Option<RollbackPolicy> {
    let Some(raw) = raw else {
        return Some(RollbackPolicy::default());
    };
    let error_rate = raw
        .error_rate
        .map(|rule| error_rate(report, &at.key("error_rate"), rule));
    let latency_p99 = raw
        .latency_p99
        .map(|rule| latency(report, &at.key("latency_p99"), rule));
    let divergence = raw
        .divergence
        .map(|rule| divergence(report, &at.key("divergence"), rule));
    Some(RollbackPolicy {
        error_rate: check::optional(error_rate)?,
        latency_p99: check::optional(latency_p99)?,
        divergence: check::optional(divergence)?,
    })
}

fn error_rate(report: &mut Report, at: &FieldPath, raw: RawErrorRate) -> Option<ErrorRateRule> {
    let default = ErrorRateRule::default();
    let max = check::number_in_range(
        report,
        &at.key("max"),
        raw.max.unwrap_or(default.max),
        (0.0, 1.0),
    );
    let window = check::positive_duration(report, &at.key("for"), raw.window, default.window);
    let min_requests = check::int_in_range(
        report,
        &at.key("min_requests"),
        raw.min_requests,
        default.min_requests,
        (1, u64::MAX),
    );
    Some(ErrorRateRule {
        max: max?,
        window: window?,
        min_requests: min_requests?,
    })
}

fn latency(report: &mut Report, at: &FieldPath, raw: RawLatency) -> Option<LatencyRule> {
    let default = LatencyRule::default();
    let max_ratio = check::positive(
        report,
        &at.key("max_ratio"),
        raw.max_ratio.unwrap_or(default.max_ratio),
    );
    let window = check::positive_duration(report, &at.key("for"), raw.window, default.window);
    let min_requests = check::int_in_range(
        report,
        &at.key("min_requests"),
        raw.min_requests,
        default.min_requests,
        (1, u64::MAX),
    );
    Some(LatencyRule {
        max_ratio: max_ratio?,
        window: window?,
        min_requests: min_requests?,
    })
}

fn divergence(report: &mut Report, at: &FieldPath, raw: RawDivergence) -> Option<DivergenceRule> {
    let default = DivergenceRule::default();
    let max = check::number_in_range(
        report,
        &at.key("max"),
        raw.max.unwrap_or(default.max),
        (0.0, 1.0),
    );
    let window = check::positive_duration(report, &at.key("for"), raw.window, default.window);
    let min_samples = check::int_in_range(
        report,
        &at.key("min_samples"),
        raw.min_samples,
        default.min_samples,
        (1, u64::MAX),
    );
    Some(DivergenceRule {
        max: max?,
        window: window?,
        min_samples: min_samples?,
    })
}

pub(crate) fn ramp(report: &mut Report, at: &FieldPath, raw: RawRamp) -> Option<Ramp> {
    let steps = ramp_steps(report, &at.key("steps"), raw.steps);
    let hold = check::positive_duration(report, &at.key("hold"), raw.hold, Ramp::DEFAULT_HOLD);
    Some(Ramp {
        steps: steps?,
        hold: hold?,
        auto: raw.auto.unwrap_or(false),
    })
}

fn ramp_steps(report: &mut Report, at: &FieldPath, steps: Vec<f64>) -> Option<Vec<f64>> {
    if steps.is_empty() {
        report.error(at, "must not be empty");
        return None;
    }
    let mut ok = true;
    for (i, &step) in steps.iter().enumerate() {
        let problem = if !step.is_finite() || step <= 0.0 || step > 100.0 {
            Some(format!("must be > 0 and <= 100 (got {step})"))
        } else if i > 0 && step <= steps[i - 1] {
            Some(format!(
                "steps must be strictly increasing ({step} follows {})",
                steps[i - 1]
            ))
        } else {
            None
        };
        if let Some(reason) = problem {
            report.error(&at.index(i), reason);
            ok = false;
        }
    }
    ok.then_some(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T>(f: impl FnOnce(&mut Report) -> Option<T>) -> T {
        let mut report = Report::default();
        let value = f(&mut report);
        match report.finish(value) {
            Ok(value) => value,
            Err(errors) => panic!("{errors}"),
        }
    }

    fn errors<T: std::fmt::Debug>(f: impl FnOnce(&mut Report) -> Option<T>) -> Vec<String> {
        let mut report = Report::default();
        let value = f(&mut report);
        report
            .finish(value)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn at() -> FieldPath {
        FieldPath::root().key("p")
    }

    fn dur(text: &str) -> Option<crate::raw::RawDuration> {
        Some(crate::raw::RawDuration(text.to_owned()))
    }

    #[test]
    fn shadow_defaults() {
        let policy = ok(|r| shadow(r, &at(), RawShadow::default()));
        assert_eq!(policy, ShadowPolicy::default());
        assert_eq!(policy.methods, ["GET", "HEAD", "OPTIONS"]);
        assert_eq!(policy.max_body_bytes, 1_048_576);
        assert_eq!(policy.max_in_flight, 1024);
        assert_eq!(policy.timeout, Duration::from_secs(5));
        assert!(policy.strip_headers.is_empty());
    }

    #[test]
    fn shadow_normalises_methods_and_headers() {
        let raw = RawShadow {
            methods: Some(vec!["get".into(), "Post".into()]),
            strip_headers: Some(vec!["Authorization".into()]),
            ..RawShadow::default()
        };
        let policy = ok(|r| shadow(r, &at(), raw));
        assert_eq!(policy.methods, ["GET", "POST"]);
        assert_eq!(policy.strip_headers, ["authorization"]);
    }

    #[test]
    fn shadow_errors() {
        let raw = RawShadow {
            methods: Some(vec![
                "GET".into(),
                "connect".into(),
                "G T".into(),
                "get".into(),
            ]),
            max_in_flight: Some(0),
            timeout: dur("0ms"),
            strip_headers: Some(vec!["a:b".into()]),
            ..RawShadow::default()
        };
        assert_eq!(
            errors(|r| shadow(r, &at(), raw)),
            vec![
                "p.methods[1]: CONNECT cannot be shadowed",
                "p.methods[2]: invalid method \"G T\": use an HTTP method such as GET",
                "p.methods[3]: duplicate method \"GET\"",
                "p.max_in_flight: must be >= 1 (got 0)",
                "p.timeout: must be greater than 0",
                "p.strip_headers[0]: invalid header name \"a:b\": use letters, digits and \
                 !#$%&'*+-.^_`|~",
            ]
        );
    }

    #[test]
    fn shadow_bad_duration_message() {
        let raw = RawShadow {
            timeout: dur("5x"),
            ..RawShadow::default()
        };
        assert_eq!(
            errors(|r| shadow(r, &at(), raw)),
            vec!["p.timeout: invalid duration \"5x\": expected e.g. \"250ms\", \"5s\", \"1m\""]
        );
    }

    #[test]
    fn compare_defaults() {
        let policy = ok(|r| compare(r, &at(), RawCompare::default()));
        assert_eq!(policy, ComparePolicy::default());
        assert!(policy.status);
        assert_eq!(policy.headers, ["content-type"]);
        assert_eq!(policy.body, BodyCompare::Json);
        assert!(policy.ignore_json_paths.is_empty());
        assert_eq!(policy.ignore_headers, ["date", "server", "set-cookie"]);
        assert_eq!(policy.learn_noise_percent, 0.0);
        assert_eq!(policy.noise_ttl, Duration::from_secs(600));
    }

    #[test]
    fn compare_given_values_replace_defaults() {
        let raw = RawCompare {
            status: Some(false),
            headers: Some(vec![]),
            body: Some(BodyCompare::Bytes),
            ignore_json_paths: Some(vec!["$.a".into()]),
            ignore_headers: Some(vec!["X-Trace".into()]),
            learn_noise_percent: Some(2.5),
            noise_ttl: dur("30s"),
            descriptor_set: None,
        };
        let policy = ok(|r| compare(r, &at(), raw));
        assert!(!policy.status);
        assert!(policy.headers.is_empty());
        assert_eq!(policy.body, BodyCompare::Bytes);
        assert_eq!(policy.ignore_json_paths[0].source, "$.a");
        assert_eq!(policy.ignore_headers, ["x-trace"]);
        assert_eq!(policy.learn_noise_percent, 2.5);
        assert_eq!(policy.noise_ttl, Duration::from_secs(30));
    }

    #[test]
    fn compare_errors() {
        let raw = RawCompare {
            ignore_json_paths: Some(vec!["$.ok".into(), "timestamp".into()]),
            learn_noise_percent: Some(101.0),
            noise_ttl: dur("0s"),
            ..RawCompare::default()
        };
        assert_eq!(
            errors(|r| compare(r, &at(), raw)),
            vec![
                "p.ignore_json_paths[1]: invalid JSON path \"timestamp\": must start with \"$\"",
                "p.learn_noise_percent: must be between 0 and 100 (got 101)",
                "p.noise_ttl: must be greater than 0",
            ]
        );
        let raw = RawCompare {
            noise_ttl: dur("10 minutes-ish"),
            ..RawCompare::default()
        };
        assert_eq!(
            errors(|r| compare(r, &at(), raw)),
            vec![
                "p.noise_ttl: invalid duration \"10 minutes-ish\": expected e.g. \"250ms\", \"5s\", \
                 \"1m\""
            ]
        );
    }

    #[test]
    fn rollback_absent_means_all_default_rules() {
        let policy = ok(|r| rollback(r, &at(), None));
        assert_eq!(policy, RollbackPolicy::default());
        assert_eq!(policy.error_rate, Some(ErrorRateRule::default()));
        assert_eq!(policy.latency_p99, Some(LatencyRule::default()));
        assert_eq!(policy.divergence, Some(DivergenceRule::default()));
        assert!(policy.is_enabled());
    }

    #[test]
    fn rollback_empty_block_disables() {
        let policy = ok(|r| rollback(r, &at(), Some(RawRollback::default())));
        assert_eq!(policy, RollbackPolicy::disabled());
        assert!(!policy.is_enabled());
    }

    #[test]
    fn rollback_block_enables_only_named_rules_with_rule_defaults() {
        let raw = RawRollback {
            latency_p99: Some(RawLatency {
                max_ratio: Some(3.0),
                ..RawLatency::default()
            }),
            ..RawRollback::default()
        };
        let policy = ok(|r| rollback(r, &at(), Some(raw)));
        assert_eq!(policy.error_rate, None);
        assert_eq!(policy.divergence, None);
        assert_eq!(
            policy.latency_p99,
            Some(LatencyRule {
                max_ratio: 3.0,
                window: Duration::from_secs(300),
                min_requests: 100,
            })
        );
    }

    #[test]
    fn rollback_rule_defaults_match_the_spec() {
        assert_eq!(
            ErrorRateRule::default(),
            ErrorRateRule {
                max: 0.05,
                window: Duration::from_secs(60),
                min_requests: 100
            }
        );
        assert_eq!(
            LatencyRule::default(),
            LatencyRule {
                max_ratio: 2.0,
                window: Duration::from_secs(300),
                min_requests: 100
            }
        );
        assert_eq!(
            DivergenceRule::default(),
            DivergenceRule {
                max: 0.01,
                window: Duration::from_secs(60),
                min_samples: 100
            }
        );
    }

    #[test]
    fn rollback_errors() {
        let raw = RawRollback {
            error_rate: Some(RawErrorRate {
                max: Some(1.5),
                window: dur("0s"),
                min_requests: Some(0),
            }),
            latency_p99: Some(RawLatency {
                max_ratio: Some(0.0),
                ..RawLatency::default()
            }),
            divergence: Some(RawDivergence {
                max: Some(-0.1),
                window: dur("soon"),
                min_samples: Some(0),
            }),
        };
        assert_eq!(
            errors(|r| rollback(r, &at(), Some(raw))),
            vec![
                "p.error_rate.max: must be between 0 and 1 (got 1.5)",
                "p.error_rate.for: must be greater than 0",
                "p.error_rate.min_requests: must be >= 1 (got 0)",
                "p.latency_p99.max_ratio: must be greater than 0",
                "p.divergence.max: must be between 0 and 1 (got -0.1)",
                "p.divergence.for: invalid duration \"soon\": expected e.g. \"250ms\", \"5s\", \
                 \"1m\"",
                "p.divergence.min_samples: must be >= 1 (got 0)",
            ]
        );
    }

    #[test]
    fn ramp_defaults() {
        let raw = RawRamp {
            steps: vec![10.0, 100.0],
            hold: None,
            auto: None,
        };
        let ramp = ok(|r| ramp(r, &at(), raw));
        assert_eq!(ramp.hold, Duration::from_secs(300));
        assert!(!ramp.auto);
    }

    #[test]
    fn ramp_errors() {
        let raw = RawRamp {
            steps: vec![0.0, 5.0, 5.0, 150.0, f64::NAN],
            hold: dur("0s"),
            auto: Some(true),
        };
        assert_eq!(
            errors(|r| ramp(r, &at(), raw)),
            vec![
                "p.steps[0]: must be > 0 and <= 100 (got 0)",
                "p.steps[2]: steps must be strictly increasing (5 follows 5)",
                "p.steps[3]: must be > 0 and <= 100 (got 150)",
                "p.steps[4]: must be > 0 and <= 100 (got NaN)",
                "p.hold: must be greater than 0",
            ]
        );
        let empty = RawRamp {
            steps: vec![],
            hold: None,
            auto: None,
        };
        assert_eq!(
            errors(|r| ramp(r, &at(), empty)),
            vec!["p.steps: must not be empty"]
        );
    }
}
