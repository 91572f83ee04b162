//! The rollback rule engine (SPEC §3 `rollback`, §4): pure functions from a route's window
//! statistics to a verdict per rule, and [`RuleEngine`], which remembers since when each rule
//! has been failing so a rule *breaches* only after failing continuously for its `for`.
//!
//! Verdicts, per rule and evaluation:
//! - **no data** — fewer samples than the rule's minimum (on `new`, and on the `legacy`
//!   baseline where the rule compares with it). Never breaches, never passes.
//! - **pass** — the observed value is within the threshold.
//! - **inconclusive** — the value is over the threshold but not significantly so (see below),
//!   or `new` is not significantly worse than `legacy`. Not a breach, not a pass.
//! - **fail** — over the threshold, and significantly so.
//!
//! Significance (one-sided tests at 99 %, z > [`Z_99`]), so that noise on small samples or a
//! fault that hits both backends alike never rolls back:
//! - `error_rate`: new's error rate `p` over `n` requests must exceed `max` by a one-sample
//!   binomial z-test (`z = (p − max) / √(max(1 − max)/n)`); and, when `legacy` has at least
//!   `min_requests` samples in the same window (live, else shadow), new must also be worse than
//!   legacy by a two-proportion z-test (pooled variance). Equal error rates never roll back.
//! - `latency_p99`: new's p99 above `max_ratio × legacy's p99` means more than 1 % of new's
//!   samples lie above that threshold `T`; the share `f` of new's samples above `T` must exceed
//!   1 % by a one-sample binomial z-test. Legacy's p99 comes from its live requests, or from
//!   its shadow copies when it serves nothing live; both need `min_requests` samples.
//! - `divergence`: the divergence rate must exceed `max` by the one-sample binomial z-test;
//!   and, when legacy was compared with itself at least `min_samples` times in the window (the
//!   noise-learning copies, `learn_noise_percent`), exceed that baseline's divergence rate by
//!   the two-proportion z-test. Legacy disagreeing with itself as often is noise.
//!
//! What is judged depends on the phase ([`Judged`]): while `new` serves live traffic, every
//! active rule on its live requests; while it is only shadowed (phase `shadow`, SPEC §11), the
//! shadow-phase gate: `divergence`, and `latency_p99` on new's shadow copies against legacy's
//! live requests.

use std::time::Duration;

use cutover_config::RollbackPolicy;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::window::{RoleStats, WindowStats};

/// The one-sided 99 % quantile of the standard normal distribution.
pub const Z_99: f64 = 2.326_347_874;

/// Which rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    ErrorRate,
    LatencyP99,
    Divergence,
}

impl RuleKind {
    pub const ALL: [RuleKind; 3] = [
        RuleKind::ErrorRate,
        RuleKind::LatencyP99,
        RuleKind::Divergence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::ErrorRate => "error_rate",
            RuleKind::LatencyP99 => "latency_p99",
            RuleKind::Divergence => "divergence",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What `new` is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Judged {
    /// `new` serves live traffic (phase `canary` or `promoted`): every active rule, on its
    /// live requests.
    Live,
    /// `new` serves nothing live but receives shadow copies (phase `shadow`): `divergence`, and
    /// `latency_p99` on its shadow copies against legacy's live requests; `error_rate` is not
    /// judged (a copy's error reaches no client).
    Shadow,
}

impl Judged {
    /// Whether `rule` is judged.
    pub fn judges(self, rule: RuleKind) -> bool {
        self == Judged::Live || rule != RuleKind::ErrorRate
    }

    /// New's requests that are judged, and how summaries name them.
    fn new_requests(self, stats: &WindowStats) -> (&RoleStats, &'static str) {
        match self {
            Judged::Live => (&stats.new.primary, "new"),
            Judged::Shadow => (&stats.new.shadow, "new shadow"),
        }
    }
}

/// The outcome of one rule over one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    NoData,
    Pass,
    Inconclusive,
    Fail,
}

/// One rule's verdict with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub rule: RuleKind,
    pub outcome: Outcome,
    /// What was measured on `new` (a rate in 0–1, or a p99 in ms).
    pub value: Option<f64>,
    /// The threshold it is held against (rate, or `max_ratio ×` legacy p99 in ms).
    pub threshold: Option<f64>,
    /// Samples on `new` (requests or comparisons).
    pub samples: u64,
    /// Legacy's value where the rule compares with it.
    pub baseline: Option<f64>,
    /// The test statistic of the significance test that decided.
    pub z: Option<f64>,
    /// Human summary, e.g. `new error rate 7.9% > 5.0% (n=1843)`.
    pub summary: String,
}

impl Verdict {
    fn no_data(rule: RuleKind, samples: u64, summary: String) -> Self {
        Verdict {
            rule,
            outcome: Outcome::NoData,
            value: None,
            threshold: None,
            samples,
            baseline: None,
            z: None,
            summary,
        }
    }

    /// The numbers as JSON (the `evidence` of a rollback record).
    pub fn evidence(&self, held: Duration) -> serde_json::Value {
        json!({
            "rule": self.rule.as_str(),
            "value": self.value,
            "threshold": self.threshold,
            "samples": self.samples,
            "baseline": self.baseline,
            "z": self.z,
            "held_seconds": held.as_secs_f64(),
            "summary": self.summary,
        })
    }
}

/// `z` of a one-sample binomial test that the true rate of `observed` over `n` exceeds `p0`.
fn z_one_sample(observed: f64, p0: f64, n: u64) -> f64 {
    let var = p0 * (1.0 - p0) / n as f64;
    if var <= 0.0 {
        // p0 of 0 (or 1): any excess is certain evidence.
        return if observed > p0 { f64::INFINITY } else { 0.0 };
    }
    (observed - p0) / var.sqrt()
}

/// `z` of a two-proportion test that rate 1 exceeds rate 2 (pooled variance).
fn z_two_proportions(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1 + n2) as f64;
    let var = pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64);
    if var <= 0.0 {
        return if p1 > p2 { f64::INFINITY } else { 0.0 };
    }
    (p1 - p2) / var.sqrt()
}

fn pct(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Legacy's samples to compare with: live when it serves live traffic, else its shadow copies.
fn legacy_baseline(stats: &WindowStats) -> (&RoleStats, &'static str) {
    if stats.legacy.primary.count > 0 {
        (&stats.legacy.primary, "live")
    } else {
        (&stats.legacy.shadow, "shadow")
    }
}

/// The rate `x / n` labelled `label` against `max`: pass when within, else fail with the
/// one-sample test's z ([`require_significance`] decides whether the failure stands).
fn rate_verdict(rule: RuleKind, label: &str, x: u64, n: u64, max: f64) -> Verdict {
    let p = x.min(n) as f64 / n as f64;
    let over = p > max;
    Verdict {
        rule,
        outcome: if over { Outcome::Fail } else { Outcome::Pass },
        value: Some(p),
        threshold: Some(max),
        samples: n,
        baseline: None,
        z: over.then(|| z_one_sample(p, max, n)),
        summary: format!(
            "{label} {} {} {} (n={n})",
            pct(p),
            if over { ">" } else { "<=" },
            pct(max)
        ),
    }
}

/// A failing verdict whose test statistic is not significant at 99 % is only inconclusive.
fn require_significance(mut v: Verdict) -> Verdict {
    if v.outcome == Outcome::Fail && v.z.is_none_or(|z| z <= Z_99) {
        v.outcome = Outcome::Inconclusive;
        v.summary.push_str(" — not significant at 99%");
    }
    v
}

/// `error_rate`: new's error rate as primary above `max`.
pub fn error_rate(max: f64, min_requests: u64, stats: &WindowStats) -> Verdict {
    let rule = RuleKind::ErrorRate;
    let new = &stats.new.primary;
    let n = new.count;
    if n < min_requests.max(1) {
        return Verdict::no_data(rule, n, format!("{n} of {min_requests} requests on new"));
    }
    let (legacy, how) = legacy_baseline(stats);
    against_baseline(
        rate_verdict(rule, "new error rate", new.errors, n, max),
        (new.errors, n),
        (legacy.errors, legacy.count),
        min_requests,
        &format!("legacy {how}"),
        "new is not significantly worse than legacy",
    )
}

/// `v`, the verdict on a rate of `measured` (`x` of `n`), held against a `baseline` rate that
/// has at least `min` samples (else against its threshold alone): a failure stands only when
/// the rate is also significantly above the baseline's (two-proportion test; the weaker of the
/// two tests decides). `label` names the baseline in the summary, `not_worse` says why a
/// failure did not stand.
fn against_baseline(
    mut v: Verdict,
    measured: (u64, u64),
    baseline: (u64, u64),
    min: u64,
    label: &str,
    not_worse: &str,
) -> Verdict {
    let (bx, bn) = baseline;
    if bn >= min.max(1) {
        let rate = bx as f64 / bn as f64;
        v.baseline = Some(rate);
        if v.outcome == Outcome::Pass {
            return v;
        }
        v.summary.push_str(&format!(", {label} {}", pct(rate)));
        let z = z_two_proportions(measured.0, measured.1, bx, bn);
        if z <= Z_99 {
            v.z = Some(z);
            v.outcome = Outcome::Inconclusive;
            v.summary.push_str(&format!(" — {not_worse}"));
            return v;
        }
        v.z = v.z.map(|z1| z1.min(z));
    }
    require_significance(v)
}

/// `latency_p99`: new's p99 (of its live requests, or of its shadow copies while `judged` is
/// [`Judged::Shadow`]) above `max_ratio` × legacy's p99.
pub fn latency_p99(
    max_ratio: f64,
    min_requests: u64,
    stats: &WindowStats,
    judged: Judged,
) -> Verdict {
    let rule = RuleKind::LatencyP99;
    let (new, name) = judged.new_requests(stats);
    let n = new.count;
    let (legacy, how) = legacy_baseline(stats);
    let min = min_requests.max(1);
    if n < min || legacy.latency.len() < min {
        return Verdict::no_data(
            rule,
            n,
            format!(
                "{n} of {min_requests} requests on {name}, {} of {min_requests} on legacy ({how})",
                legacy.latency.len()
            ),
        );
    }
    let (Some(new_p99), Some(legacy_p99)) =
        (new.quantile_micros(0.99), legacy.quantile_micros(0.99))
    else {
        return Verdict::no_data(rule, n, "no latency samples".to_string());
    };
    let threshold = (legacy_p99 as f64 * max_ratio).round() as u64;
    let mut v = Verdict {
        rule,
        outcome: Outcome::Pass,
        value: Some(ms(new_p99)),
        threshold: Some(ms(threshold)),
        samples: n,
        baseline: Some(ms(legacy_p99)),
        z: None,
        summary: format!(
            "{name} p99 {:.1}ms <= {max_ratio}x legacy {how} p99 {:.1}ms (n={n})",
            ms(new_p99),
            ms(legacy_p99)
        ),
    };
    if new_p99 <= threshold {
        return v;
    }
    let above = new.count_above(threshold);
    let share = above as f64 / new.latency.len().max(1) as f64;
    v.outcome = Outcome::Fail;
    v.z = Some(z_one_sample(share, 0.01, new.latency.len()));
    v.summary = format!(
        "{name} p99 {:.1}ms > {max_ratio}x legacy {how} p99 {:.1}ms (n={n}, {} above {:.1}ms)",
        ms(new_p99),
        ms(legacy_p99),
        pct(share),
        ms(threshold)
    );
    require_significance(v)
}

/// Comparisons of legacy with itself the `divergence` rule waits for while noise learning is on
/// (or `min_samples`, when smaller). Fewer make the two-proportion test so wide that it could
/// not tell 20 % from 2 %; more would keep a low-traffic route without a verdict for long.
pub const BASELINE_MIN: u64 = 30;

/// `divergence`: the share of compared pairs that differ above `max` — and, when legacy was
/// compared with itself in the window (noise learning's copies), significantly above the share
/// of those pairs that differ: differences legacy has with itself as often (independent errors
/// on both backends, a volatile field not learnt yet) are noise. While noise learning is on
/// ([`WindowStats::baseline_expected`]) the rule has no data until that baseline has
/// [`BASELINE_MIN`] pairs.
pub fn divergence(max: f64, min_samples: u64, stats: &WindowStats) -> Verdict {
    let rule = RuleKind::Divergence;
    let n = stats.comparisons;
    if n < min_samples.max(1) {
        return Verdict::no_data(rule, n, format!("{n} of {min_samples} comparisons"));
    }
    let baseline_min = BASELINE_MIN.min(min_samples).max(1);
    if stats.baseline_expected && stats.baseline_comparisons < baseline_min {
        return Verdict::no_data(
            rule,
            n,
            format!(
                "{} of {baseline_min} comparisons of legacy with itself (noise learning)",
                stats.baseline_comparisons
            ),
        );
    }
    against_baseline(
        rate_verdict(rule, "divergence rate", stats.divergences, n, max),
        (stats.divergences, n),
        (stats.baseline_divergences, stats.baseline_comparisons),
        baseline_min,
        "legacy vs itself",
        "new differs from legacy no more than legacy from itself",
    )
}

/// Every active rule of `policy` that `judged` judges, over `stats`, in [`RuleKind::ALL`]
/// order.
pub fn verdicts(
    policy: &RollbackPolicy,
    stats: &WindowStats,
    judged: Judged,
) -> Vec<(Verdict, Duration)> {
    let mut out = Vec::with_capacity(3);
    if let Some(r) = policy
        .error_rate
        .as_ref()
        .filter(|_| judged.judges(RuleKind::ErrorRate))
    {
        out.push((error_rate(r.max, r.min_requests, stats), r.window));
    }
    if let Some(r) = &policy.latency_p99 {
        out.push((
            latency_p99(r.max_ratio, r.min_requests, stats, judged),
            r.window,
        ));
    }
    if let Some(r) = &policy.divergence {
        out.push((divergence(r.max, r.min_samples, stats), r.window));
    }
    out
}

/// A rule that failed continuously for its whole `for`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    pub verdict: Verdict,
    /// How long it has been failing.
    pub held: Duration,
    /// The rule's `for`.
    pub required: Duration,
}

impl Breach {
    /// The human reason written to `status`, e.g.
    /// `new error rate 7.9% > 5.0% (n=1843), legacy live 0.1% for 60s`.
    pub fn reason(&self) -> String {
        format!(
            "{} for {}",
            self.verdict.summary,
            // The rule's own `for` (a sub-second one too); how long it really held is in
            // the evidence (`held_seconds`).
            humantime::format_duration(self.required)
        )
    }
}

/// One evaluation: every active rule's verdict and how long it has been failing, and the
/// first breach if any.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// What was judged: `live` (new serves live traffic) or `shadow` (the shadow-phase gate).
    pub judged: Judged,
    pub verdicts: Vec<RuleState>,
    pub breach: Option<Breach>,
}

impl Evaluation {
    /// Every active rule has enough samples and passes (vacuously true without rules).
    pub fn all_pass(&self) -> bool {
        self.verdicts
            .iter()
            .all(|r| r.verdict.outcome == Outcome::Pass)
    }

    /// Some rule is failing (not necessarily for long enough to breach).
    pub fn any_fail(&self) -> bool {
        self.verdicts
            .iter()
            .any(|r| r.verdict.outcome == Outcome::Fail)
    }
}

/// A rule's verdict now and since when it has been failing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleState {
    pub verdict: Verdict,
    /// Seconds the rule has failed without interruption (0 unless failing).
    pub failing_seconds: f64,
    /// The rule's `for`, in seconds.
    pub for_seconds: f64,
}

/// Remembers since when each rule of one route has been failing.
#[derive(Debug, Clone, Default)]
pub struct RuleEngine {
    failing_since: [Option<Instant>; 3],
}

impl RuleEngine {
    /// Forget all history (after an operator's weights write: fresh evaluation windows).
    pub fn reset(&mut self) {
        self.failing_since = [None; 3];
    }

    /// Evaluate every active rule of `policy` that `judged` judges over `stats` at `now`. A
    /// rule breaches when it has failed at every evaluation since at least its `for` ago; any
    /// other outcome (no data, pass, inconclusive) restarts its clock.
    pub fn evaluate(
        &mut self,
        policy: &RollbackPolicy,
        stats: &WindowStats,
        judged: Judged,
        now: Instant,
    ) -> Evaluation {
        let mut active = [false; 3];
        let mut states = Vec::with_capacity(3);
        let mut breach: Option<Breach> = None;
        for (verdict, required) in verdicts(policy, stats, judged) {
            let i = verdict.rule.index();
            active[i] = true;
            let held = if verdict.outcome == Outcome::Fail {
                let since = *self.failing_since[i].get_or_insert(now);
                now.saturating_duration_since(since)
            } else {
                self.failing_since[i] = None;
                Duration::ZERO
            };
            if verdict.outcome == Outcome::Fail && held >= required && breach.is_none() {
                breach = Some(Breach {
                    verdict: verdict.clone(),
                    held,
                    required,
                });
            }
            states.push(RuleState {
                verdict,
                failing_seconds: held.as_secs_f64(),
                for_seconds: required.as_secs_f64(),
            });
        }
        for (i, on) in active.iter().enumerate() {
            if !on {
                self.failing_since[i] = None;
            }
        }
        Evaluation {
            judged,
            verdicts: states,
            breach,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_config::{DivergenceRule, ErrorRateRule, LatencyRule};

    fn window(new: (u64, u64), legacy: (u64, u64)) -> WindowStats {
        let mut w = WindowStats::default();
        w.new.primary.count = new.0;
        w.new.primary.errors = new.1;
        w.legacy.primary.count = legacy.0;
        w.legacy.primary.errors = legacy.1;
        w
    }

    fn latencies(r: &mut RoleStats, micros: u64, n: u64) {
        r.latency.record_n(micros, n).unwrap();
        r.count += n;
    }

    fn errors_only(max: f64, window: Duration, min_requests: u64) -> RollbackPolicy {
        RollbackPolicy {
            error_rate: Some(ErrorRateRule {
                max,
                window,
                min_requests,
            }),
            latency_p99: None,
            divergence: None,
        }
    }

    #[test]
    fn error_rate_outcomes() {
        // Too few samples: no data, whatever the rate.
        assert_eq!(
            error_rate(0.05, 100, &window((99, 99), (1000, 0))).outcome,
            Outcome::NoData
        );
        // Within the threshold.
        assert_eq!(
            error_rate(0.05, 100, &window((1000, 50), (1000, 0))).outcome,
            Outcome::Pass
        );
        // 40 % against 0 %: fail.
        let v = error_rate(0.05, 100, &window((1000, 400), (1000, 0)));
        assert_eq!(v.outcome, Outcome::Fail);
        assert!(
            v.summary
                .starts_with("new error rate 40.0% > 5.0% (n=1000)"),
            "{}",
            v.summary
        );
        // 6 % on 100 requests is above 5 % but well within noise.
        assert_eq!(
            error_rate(0.05, 100, &window((100, 6), (0, 0))).outcome,
            Outcome::Inconclusive
        );
        // The SPEC's example, 7.9 % on 1843, is significant.
        assert_eq!(
            error_rate(0.05, 100, &window((1843, 146), (0, 0))).outcome,
            Outcome::Fail
        );
    }

    #[test]
    fn equal_error_rates_never_fail() {
        // Both backends at 10 % with a 5 % limit: the fault is not new's.
        for n in [100, 1_000, 100_000, 10_000_000] {
            let v = error_rate(0.05, 100, &window((n, n / 10), (n, n / 10)));
            assert_eq!(v.outcome, Outcome::Inconclusive, "n={n}: {}", v.summary);
        }
        // Legacy's shadow copies serve as the baseline when it has no live traffic.
        let mut w = window((10_000, 1_000), (0, 0));
        w.legacy.shadow.count = 10_000;
        w.legacy.shadow.errors = 1_000;
        assert_eq!(error_rate(0.05, 100, &w).outcome, Outcome::Inconclusive);
        w.legacy.shadow.errors = 0;
        assert_eq!(error_rate(0.05, 100, &w).outcome, Outcome::Fail);
    }

    #[test]
    fn latency_outcomes() {
        let mut w = WindowStats::default();
        latencies(&mut w.legacy.primary, 1_000, 1_000);
        latencies(&mut w.new.primary, 1_500, 990);
        latencies(&mut w.new.primary, 1_900, 10);
        assert_eq!(
            latency_p99(2.0, 100, &w, Judged::Live).outcome,
            Outcome::Pass
        );
        // 5 % of new's requests take 50 ms: p99 is 50x legacy's.
        latencies(&mut w.new.primary, 50_000, 50);
        let v = latency_p99(2.0, 100, &w, Judged::Live);
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary);
        assert!(v.summary.contains("legacy live p99 1.0ms"), "{}", v.summary);
        // Not enough legacy samples: no data.
        let mut thin = w.clone();
        thin.legacy.primary = RoleStats::default();
        latencies(&mut thin.legacy.primary, 1_000, 10);
        assert_eq!(
            latency_p99(2.0, 100, &thin, Judged::Live).outcome,
            Outcome::NoData
        );
        // Legacy's shadow latencies when it serves nothing live.
        let mut shadow = w.clone();
        shadow.legacy.shadow = std::mem::take(&mut shadow.legacy.primary);
        assert_eq!(
            latency_p99(2.0, 100, &shadow, Judged::Live).outcome,
            Outcome::Fail
        );
    }

    #[test]
    fn latency_needs_significance() {
        // p99 just over the threshold because 2 of 150 samples are slow: 1.3 % above, noise.
        let mut w = WindowStats::default();
        latencies(&mut w.legacy.primary, 1_000, 1_000);
        latencies(&mut w.new.primary, 1_000, 148);
        latencies(&mut w.new.primary, 10_000, 2);
        let v = latency_p99(2.0, 100, &w, Judged::Live);
        assert_eq!(v.outcome, Outcome::Inconclusive, "{}", v.summary);
    }

    #[test]
    fn divergence_outcomes() {
        let mut w = WindowStats {
            comparisons: 50,
            divergences: 40,
            ..WindowStats::default()
        };
        assert_eq!(divergence(0.01, 100, &w).outcome, Outcome::NoData);
        w.comparisons = 1_000;
        w.divergences = 5;
        assert_eq!(divergence(0.01, 100, &w).outcome, Outcome::Pass);
        w.divergences = 800;
        assert_eq!(divergence(0.01, 100, &w).outcome, Outcome::Fail);
        w.comparisons = 100;
        w.divergences = 2;
        assert_eq!(divergence(0.01, 100, &w).outcome, Outcome::Inconclusive);
    }

    #[test]
    fn divergence_as_often_as_legacy_with_itself_is_noise() {
        // Both backends fail 1 % of requests at random: 2 % of pairs differ in status, and so
        // do 2 % of legacy's pairs with itself.
        let mut w = WindowStats {
            comparisons: 100_000,
            divergences: 2_000,
            baseline_comparisons: 10_000,
            baseline_divergences: 200,
            ..WindowStats::default()
        };
        let v = divergence(0.01, 100, &w);
        assert_eq!(v.outcome, Outcome::Inconclusive, "{}", v.summary);
        assert!(v.summary.contains("legacy vs itself 2.0%"), "{}", v.summary);
        assert_eq!(v.baseline, Some(0.02));
        // New diverging 20 % stands out against the same baseline.
        w.divergences = 20_000;
        assert_eq!(divergence(0.01, 100, &w).outcome, Outcome::Fail);
        // No baseline (noise learning off): the threshold alone decides.
        w.divergences = 2_000;
        w.baseline_comparisons = 0;
        w.baseline_divergences = 0;
        let v = divergence(0.01, 100, &w);
        assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary);
        assert_eq!(v.baseline, None);
        // Noise learning on, but its baseline still too thin: no data, never a failure.
        w.baseline_expected = true;
        w.baseline_comparisons = BASELINE_MIN - 1;
        let v = divergence(0.01, 100, &w);
        assert_eq!(v.outcome, Outcome::NoData, "{}", v.summary);
        // A 30-pair baseline is thin: 2 % cannot be told from legacy's own 0 of 30, 20 % can.
        w.baseline_comparisons = BASELINE_MIN;
        assert_eq!(divergence(0.01, 100, &w).outcome, Outcome::Inconclusive);
        w.divergences = 20_000;
        assert_eq!(divergence(0.01, 100, &w).outcome, Outcome::Fail);
    }

    #[tokio::test(start_paused = true)]
    async fn breach_needs_the_whole_for() {
        let policy = errors_only(0.05, Duration::from_secs(5), 100);
        let bad = window((1_000, 400), (1_000, 0));
        let mut engine = RuleEngine::default();
        let e = engine.evaluate(&policy, &bad, Judged::Live, Instant::now());
        assert!(e.breach.is_none() && e.any_fail());
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(engine
                .evaluate(&policy, &bad, Judged::Live, Instant::now())
                .breach
                .is_none());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let e = engine.evaluate(&policy, &bad, Judged::Live, Instant::now());
        let breach = e.breach.expect("failing for 5s breaches");
        assert_eq!(breach.verdict.rule, RuleKind::ErrorRate);
        assert_eq!(breach.held, Duration::from_secs(5));
        assert_eq!(
            breach.reason(),
            "new error rate 40.0% > 5.0% (n=1000), legacy live 0.0% for 5s"
        );
        // The reason names the rule's `for`, also below a second and when held longer.
        let longer = Breach {
            held: Duration::from_millis(700),
            required: Duration::from_millis(200),
            ..breach
        };
        assert!(
            longer.reason().ends_with(" for 200ms"),
            "{}",
            longer.reason()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_interruption_restarts_the_clock() {
        let policy = errors_only(0.05, Duration::from_secs(5), 100);
        let bad = window((1_000, 400), (1_000, 0));
        let good = window((1_000, 10), (1_000, 0));
        let thin = window((10, 10), (1_000, 0));
        let mut engine = RuleEngine::default();
        for interruption in [&good, &thin] {
            engine.evaluate(&policy, &bad, Judged::Live, Instant::now());
            tokio::time::advance(Duration::from_secs(4)).await;
            engine.evaluate(&policy, &bad, Judged::Live, Instant::now());
            tokio::time::advance(Duration::from_millis(500)).await;
            let e = engine.evaluate(&policy, interruption, Judged::Live, Instant::now());
            assert!(e.breach.is_none());
            tokio::time::advance(Duration::from_millis(500)).await;
            // 5 s after the first failure, but it was interrupted: no breach.
            assert!(engine
                .evaluate(&policy, &bad, Judged::Live, Instant::now())
                .breach
                .is_none());
            tokio::time::advance(Duration::from_secs(5)).await;
            assert!(engine
                .evaluate(&policy, &bad, Judged::Live, Instant::now())
                .breach
                .is_some());
            engine.reset();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_data_never_breaches_and_never_passes() {
        let policy = errors_only(0.05, Duration::from_secs(1), 100);
        let thin = window((99, 99), (0, 0));
        let mut engine = RuleEngine::default();
        for _ in 0..30 {
            let e = engine.evaluate(&policy, &thin, Judged::Live, Instant::now());
            assert!(e.breach.is_none());
            assert!(!e.all_pass());
            assert_eq!(e.verdicts[0].verdict.outcome, Outcome::NoData);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn equal_errors_for_a_long_stretch_never_breach() {
        // Both at 1 % with a 0.5 % limit: over the threshold, but so is legacy.
        let policy = errors_only(0.005, Duration::from_secs(1), 100);
        let mut engine = RuleEngine::default();
        for minute in 1..=60u64 {
            let n = minute * 6_000;
            let e = engine.evaluate(
                &policy,
                &window((n, n / 100), (n, n / 100)),
                Judged::Live,
                Instant::now(),
            );
            assert!(e.breach.is_none(), "minute {minute}");
            tokio::time::advance(Duration::from_secs(60)).await;
        }
    }

    #[test]
    fn all_rules_and_pass() {
        let policy = RollbackPolicy::default();
        let mut w = window((1_000, 1), (1_000, 1));
        latencies(&mut w.new.primary, 1_000, 0);
        w.new.primary.latency.record_n(1_000, 1_000).unwrap();
        w.legacy.primary.latency.record_n(1_000, 1_000).unwrap();
        w.comparisons = 1_000;
        let mut engine = RuleEngine::default();
        let e = engine.evaluate(&policy, &w, Judged::Live, Instant::now());
        assert_eq!(e.verdicts.len(), 3);
        assert!(e.all_pass(), "{e:?}");
        assert!(RuleEngine::default()
            .evaluate(
                &RollbackPolicy::disabled(),
                &w,
                Judged::Live,
                Instant::now()
            )
            .all_pass());
    }

    #[test]
    fn the_shadow_gate_judges_divergence_and_new_shadow_latency() {
        let policy = RollbackPolicy::default();
        // New only receives copies: slow ones (5 % at 50 ms against legacy's live 1 ms), and
        // 50 % of the compared pairs differ. New's live requests (none) are not judged, nor are
        // its copies' errors.
        let mut w = WindowStats::default();
        latencies(&mut w.legacy.primary, 1_000, 1_000);
        latencies(&mut w.new.shadow, 1_000, 950);
        latencies(&mut w.new.shadow, 50_000, 50);
        w.new.shadow.errors = 500;
        w.comparisons = 1_000;
        w.divergences = 500;
        let v = verdicts(&policy, &w, Judged::Shadow);
        let rules: Vec<_> = v.iter().map(|(v, _)| v.rule).collect();
        assert_eq!(rules, [RuleKind::LatencyP99, RuleKind::Divergence]);
        assert_eq!(v[0].0.outcome, Outcome::Fail, "{}", v[0].0.summary);
        let summary = &v[0].0.summary;
        assert!(
            summary.starts_with("new shadow p99 ")
                && summary.contains("> 2x legacy live p99 1.0ms"),
            "{summary}"
        );
        assert_eq!(v[1].0.outcome, Outcome::Fail);
        // Judged live, the same window has no data on new.
        let live = verdicts(&policy, &w, Judged::Live);
        assert_eq!(live[1].0.outcome, Outcome::NoData, "{}", live[1].0.summary);
        assert!(Judged::Shadow.judges(RuleKind::Divergence));
        assert!(!Judged::Shadow.judges(RuleKind::ErrorRate));
    }

    #[test]
    fn policies_with_some_rules() {
        let policy = RollbackPolicy {
            error_rate: None,
            latency_p99: Some(LatencyRule::default()),
            divergence: Some(DivergenceRule::default()),
        };
        let v = verdicts(&policy, &WindowStats::default(), Judged::Live);
        let rules: Vec<_> = v.iter().map(|(v, _)| v.rule).collect();
        assert_eq!(rules, [RuleKind::LatencyP99, RuleKind::Divergence]);
        assert_eq!(v[0].1, Duration::from_secs(300));
    }
}
