//! The judgement scenario: does automatic rollback fire when it should (a fault in `new`), and
//! only then (an A/A run, where `new` behaves exactly like `legacy`)? False and missed
//! rollbacks.
//!
//! Every lane has its own `legacy` and `new` backends (lean in-process hyper servers whose
//! behaviour switches at run time: a share of 500s, a latency factor, a share of answers with a
//! different `total`), its own `cutover` on the embedded file source and a closed-loop load of
//! `connections` clients. The route is 50/50 with `shadow` 100, `compare = { body = "json",
//! learn_noise_percent = 10 }` and the default rules written out with `for` = `hold`. Both
//! backends answer 1 % of requests with 500 throughout (the baseline); every answer carries a
//! random `request_id` and a `generated_at` timestamp (volatile fields that noise learning must
//! absorb) besides its stable fields, and `x-backend: <name>`. All lanes run at the same time.
//!
//! - **Detection** — one lane per rule, `runs` runs each. A run arms (fresh weights, which end
//!   the previous run's rollback; faults cleared; one whole window of healthy traffic; a random
//!   part of the controller's evaluation tick, so the fault lands at any phase of it), injects
//!   the rule's fault in `new` — 6 % errors (`error_rate`), latency × 3 (`latency_p99`), 20 % of
//!   answers with another `total` (`divergence`) — and waits for phase `rolled_back`. Measured
//!   as in [`crate::rollback_time`]: fault → send time of the last request `new` answered. No
//!   rollback within [`JudgementOptions::bound`] is a missed detection. The rule that fired
//!   (`/api/v1/routes` → `rollback.rule`) is recorded: another rule than the injected one still
//!   counts as detected, and the report says which. A rollback while arming (before the fault)
//!   is a false rollback too: it is recorded and the run re-armed (at most [`ARM_ATTEMPTS`]).
//! - **A/A** — one lane, `aa` long, no fault. Every 500 ms it reads `GET /api/v1/control`
//!   (each rule's local verdict) and `/api/v1/routes` (the phase); a rollback is recorded with
//!   its rule and reason, and the route re-armed with fresh weights. Then each rule's fault is
//!   injected once into the same lane, as a detection run (RELIABILITY 65: after the noise, a
//!   regression still rolls back within `for` + 1 s).
//!
//! Targets: detection p99 ≤ `for` + 1 s with none missed; no rollback in the A/A run. For
//! comparison the report quotes (does not measure) Flagger's documented settings.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::rollback_time::{lane_config, nearest_rank, Load};
use bytes::Bytes;
use cutover_tests::proxy::toml_duration;
use cutover_tests::{Client, Proxy, ProxyConfig, Route};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The route every lane's proxy serves.
pub const ROUTE: &str = "judged";
/// The path the load requests (one endpoint group, `GET /orders/{n}`).
const PATH: &str = "/orders/42";
/// Errors both backends answer in every run, per mille.
pub const BASELINE_ERRORS_PER_MILLE: u32 = 10;
/// `new`'s errors during the `error_rate` fault, per mille.
pub const FAULT_ERRORS_PER_MILLE: u32 = 60;
/// `new`'s answers with another `total` during the `divergence` fault, per mille.
pub const FAULT_DIVERGENCE_PER_MILLE: u32 = 200;
/// Every answer waits this long…
const BASE_LATENCY_US: u64 = 2000;
/// …plus a uniform jitter below this, all times the latency factor.
const JITTER_US: u64 = 2000;
/// The controller's evaluation period (`cutover_control::controller::TICK`).
pub const EVAL_TICK: Duration = Duration::from_millis(100);
/// How often the A/A lane reads the verdicts and the phase.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How often a detection run looks for the rollback after the fault.
const DETECT_POLL: Duration = Duration::from_millis(10);
/// How often arming looks for a rollback during the healthy window.
const ARM_POLL: Duration = Duration::from_millis(100);
/// Upper bound for fresh weights to show in the admin API.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts to arm a detection run when rollbacks keep happening before the fault.
pub const ARM_ATTEMPTS: usize = 3;
/// Time after the rollback for answers of requests sent before it to arrive.
const SETTLE: Duration = Duration::from_millis(300);
/// Timeout of one admin API request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Flagger's documented behaviour, quoted for comparison (not measured).
pub const FLAGGER_REFERENCE: &str = "Flagger: a rollback needs `threshold` failed checks, one \
     per `interval` (interval defaults to 1 min; its documented examples use threshold 5), so \
     ≥ 5 min from fault to rollback at those settings; a single failed check never rolls back.";

/// A rollback rule, and the fault that should make it fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    ErrorRate,
    LatencyP99,
    Divergence,
}

impl Rule {
    pub const ALL: [Rule; 3] = [Rule::ErrorRate, Rule::LatencyP99, Rule::Divergence];

    /// The rule's name in the config and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Rule::ErrorRate => "error_rate",
            Rule::LatencyP99 => "latency_p99",
            Rule::Divergence => "divergence",
        }
    }

    /// The fault injected in `new` to make this rule fire, with options `o`.
    pub fn fault(self, o: &JudgementOptions) -> String {
        match self {
            Rule::ErrorRate => format!(
                "new {} % errors (legacy {} %)",
                f64::from(FAULT_ERRORS_PER_MILLE) / 10.0,
                f64::from(BASELINE_ERRORS_PER_MILLE) / 10.0
            ),
            Rule::LatencyP99 => format!("new's latency × {}", o.latency_factor),
            Rule::Divergence => format!(
                "{} % of new's answers with another `total`",
                f64::from(FAULT_DIVERGENCE_PER_MILLE) / 10.0
            ),
        }
    }

    /// The suite report's goal name for this rule's detection.
    pub fn goal_name(self) -> &'static str {
        match self {
            Rule::ErrorRate => "Detection: error_rate",
            Rule::LatencyP99 => "Detection: latency_p99",
            Rule::Divergence => "Detection: divergence",
        }
    }

    fn inject(self, new: &LeanBackend, o: &JudgementOptions) {
        match self {
            Rule::ErrorRate => new.behaviour.set_errors(FAULT_ERRORS_PER_MILLE),
            Rule::LatencyP99 => new.behaviour.set_latency_factor(o.latency_factor),
            Rule::Divergence => new.behaviour.set_divergence(FAULT_DIVERGENCE_PER_MILLE),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct JudgementOptions {
    /// Detection runs per rule.
    pub runs: usize,
    /// Every rule's `for`.
    pub hold: Duration,
    /// `[stats] window`, in 100 ms slices.
    pub window: Duration,
    /// Length of the A/A run.
    pub aa: Duration,
    /// Closed-loop connections per lane.
    pub connections: usize,
    /// `new`'s latency factor during the `latency_p99` fault (3; the debug-built smoke run
    /// needs more, as its proxy's own latency is on both sides).
    pub latency_factor: u32,
}

impl Default for JudgementOptions {
    fn default() -> Self {
        JudgementOptions {
            runs: 10,
            hold: Duration::from_secs(5),
            window: Duration::from_secs(5),
            aa: Duration::from_secs(120),
            connections: 4,
            latency_factor: 3,
        }
    }
}

impl JudgementOptions {
    /// The bound a detection's p99 must meet: `for` + 1 s.
    pub fn target(&self) -> Duration {
        self.hold + Duration::from_secs(1)
    }

    /// A run without a rollback this long after the fault is a missed detection.
    pub fn bound(&self) -> Duration {
        self.window * 4 + self.hold + Duration::from_secs(20)
    }

    /// The rules as written in the route, `for` = the hold.
    pub fn rules_toml(&self) -> String {
        let hold = toml_duration(self.hold);
        format!(
            "rollback = {{ error_rate = {{ max = 0.05, for = {hold}, min_requests = 100 }}, \
             latency_p99 = {{ max_ratio = 2.0, for = {hold}, min_requests = 100 }}, \
             divergence = {{ max = 0.01, for = {hold}, min_samples = 100 }} }}"
        )
    }
}

/// A rollback that should not have happened: in the A/A run, or before a detection run's
/// fault.
#[derive(Debug, Clone)]
pub struct FalseRollback {
    /// Since the start of the A/A run, or of the detection lane.
    pub at: Duration,
    pub rule: String,
    pub reason: String,
}

/// One rule's detection runs.
#[derive(Debug, Clone)]
pub struct Detection {
    pub rule: Rule,
    /// Fault → last live request answered by `new`, per detected run.
    pub times: Vec<Duration>,
    /// Runs with no rollback within the bound.
    pub missed: usize,
    /// Runs never armed: a rollback before the fault at every attempt.
    pub unarmed: usize,
    /// Rule that fired → detected runs.
    pub fired: BTreeMap<String, usize>,
    /// Rule that fired → the last reason it wrote.
    pub reasons: BTreeMap<String, String>,
    /// Rollbacks while arming, before any fault.
    pub before_fault: Vec<FalseRollback>,
    /// For each missed run, what the rules said at the bound (`rule outcome: summary; …`).
    pub missed_verdicts: Vec<String>,
    /// For each run rolled back by another rule than the injected one, the injected rule's
    /// last verdict before the rollback (`rule outcome: summary`).
    pub injected_verdicts: Vec<String>,
}

impl Detection {
    fn new(rule: Rule) -> Self {
        Detection {
            rule,
            times: Vec::new(),
            missed: 0,
            unarmed: 0,
            fired: BTreeMap::new(),
            reasons: BTreeMap::new(),
            before_fault: Vec::new(),
            missed_verdicts: Vec::new(),
            injected_verdicts: Vec::new(),
        }
    }

    /// Runs made (detected, missed, never armed).
    pub fn runs(&self) -> usize {
        self.times.len() + self.missed + self.unarmed
    }

    /// The `q` quantile (0–1) of the detection times, by nearest rank.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        nearest_rank(&self.times, q)
    }

    /// Every run detected and armed, p99 within `target`.
    pub fn target_met(&self, target: Duration) -> bool {
        self.missed == 0
            && self.unarmed == 0
            && self.quantile(0.99).is_some_and(|p99| p99 <= target)
    }

    /// `error_rate ×3, divergence ×1`, or `-`.
    pub fn fired_summary(&self) -> String {
        if self.fired.is_empty() {
            return "-".into();
        }
        self.fired
            .iter()
            .map(|(rule, n)| format!("{rule} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How often one rule came out each way over the A/A run's polls.
#[derive(Debug, Clone, Default)]
pub struct OutcomeCounts {
    pub no_data: u64,
    pub pass: u64,
    pub inconclusive: u64,
    pub fail: u64,
    /// The longest run of consecutive polls with `fail`.
    pub longest_fail_streak: u64,
    streak: u64,
}

impl OutcomeCounts {
    /// Polls with a verdict of this rule.
    pub fn total(&self) -> u64 {
        self.no_data + self.pass + self.inconclusive + self.fail
    }

    fn record(&mut self, outcome: &str) {
        match outcome {
            "no_data" => self.no_data += 1,
            "pass" => self.pass += 1,
            "inconclusive" => self.inconclusive += 1,
            "fail" => self.fail += 1,
            _ => {}
        }
        if outcome == "fail" {
            self.streak += 1;
            self.longest_fail_streak = self.longest_fail_streak.max(self.streak);
        } else {
            self.streak = 0;
        }
    }

    fn share(&self, n: u64) -> f64 {
        n as f64 / self.total().max(1) as f64
    }

    /// Share of this rule's verdicts that were `fail`.
    pub fn fail_share(&self) -> f64 {
        self.share(self.fail)
    }

    /// Share of this rule's verdicts that were `inconclusive`.
    pub fn inconclusive_share(&self) -> f64 {
        self.share(self.inconclusive)
    }
}

/// The A/A run.
#[derive(Debug, Clone, Default)]
pub struct AaReport {
    /// How long it ran.
    pub elapsed: Duration,
    /// Requests the load made, and how many of them `new` answered.
    pub requests: u64,
    pub new_requests: u64,
    /// Answers that were not 2xx, or no answer.
    pub errors: u64,
    pub rollbacks: Vec<FalseRollback>,
    /// `GET /api/v1/control` reads, and those that showed a local evaluation of the route.
    pub polls: u64,
    pub evaluated: u64,
    /// Rule name → its outcomes over the polls.
    pub outcomes: BTreeMap<String, OutcomeCounts>,
    /// After the run, each rule's fault injected into the same lane once (RELIABILITY 65), in
    /// [`Rule::ALL`] order.
    pub after: Vec<Detection>,
}

impl AaReport {
    /// Polls in which at least one rule had data (a verdict other than `no_data`).
    pub fn polls_with_data(&self) -> u64 {
        self.outcomes
            .values()
            .map(|c| c.total() - c.no_data)
            .max()
            .unwrap_or(0)
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct JudgementReport {
    pub options: JudgementOptions,
    /// One per rule, in [`Rule::ALL`] order (empty when `runs` is 0).
    pub detection: Vec<Detection>,
    /// `None` when `aa` is zero.
    pub aa: Option<AaReport>,
    pub elapsed: Duration,
}

impl JudgementReport {
    pub fn detection(&self, rule: Rule) -> Option<&Detection> {
        self.detection.iter().find(|d| d.rule == rule)
    }

    /// Every rule's detection met its target.
    pub fn detection_met(&self) -> bool {
        let target = self.options.target();
        self.detection.iter().all(|d| d.target_met(target))
    }

    /// No rollback in the A/A run (and it ran).
    pub fn aa_met(&self) -> bool {
        self.aa.as_ref().is_some_and(|aa| aa.rollbacks.is_empty())
    }

    /// Every target met: each rule detected within `for` + 1 s at p99, none missed, no false
    /// rollback in the A/A run.
    pub fn targets_met(&self) -> bool {
        self.detection_met() && self.aa_met()
    }

    pub fn to_markdown(&self) -> String {
        let o = &self.options;
        let secs = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        let pct = |v: f64| format!("{:.2} %", v * 100.0);
        let yes = |ok: bool| if ok { "yes" } else { "**no**" };
        let mut w = String::new();
        let _ = writeln!(
            w,
            "False and missed rollbacks. `[stats] window = {}`; the default rules with `for = {}`: \
             `{}`. Route 50/50, `shadow` 100, `compare = {{ body = \"json\", learn_noise_percent \
             = 10 }}`. Both backends answer {} % of requests with 500 throughout, after 2 ms + \
             U[0, 2 ms) (same distribution on both), JSON with a random `request_id` and a \
             `generated_at` timestamp besides stable fields. {} lane(s) at once ({}), each with \
             its own backends and proxy and {} closed-loop connections; took {:.0} s.\n",
            humantime::format_duration(o.window),
            humantime::format_duration(o.hold),
            o.rules_toml(),
            f64::from(BASELINE_ERRORS_PER_MILLE) / 10.0,
            self.detection.len() + usize::from(self.aa.is_some()),
            match (self.detection.is_empty(), self.aa.is_some()) {
                (false, true) => "one per rule, one A/A",
                (false, false) => "one per rule",
                (true, _) => "A/A",
            },
            o.connections,
            self.elapsed.as_secs_f64(),
        );
        if !self.detection.is_empty() {
            let _ = writeln!(
                w,
                "**Detection**: fault → no live traffic to `new` (send time of the last request \
                 it answered). Missed: no rollback within {:.0} s (4 × window + for + 20 s).\n",
                o.bound().as_secs_f64()
            );
            let _ = writeln!(
                w,
                "| rule | fault | runs | missed | p50 | p99 | max | target (for + 1 s) | met | \
                 rules that fired |\n|:--|:--|--:|--:|--:|--:|--:|--:|:--|:--|"
            );
            for d in &self.detection {
                let missed = if d.unarmed > 0 {
                    format!("{} (+{} never armed)", d.missed, d.unarmed)
                } else {
                    d.missed.to_string()
                };
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.1} s | {} | {} |",
                    d.rule.name(),
                    d.rule.fault(o),
                    d.runs(),
                    missed,
                    secs(d.quantile(0.5)),
                    secs(d.quantile(0.99)),
                    secs(d.quantile(1.0)),
                    o.target().as_secs_f64(),
                    yes(d.target_met(o.target())),
                    d.fired_summary(),
                );
            }
            let _ = writeln!(
                w,
                "\nReasons written (the last of each rule that fired), the injected rule's \
                 verdict when another rule fired, and what the rules said when a run was \
                 missed:\n"
            );
            for d in &self.detection {
                for (rule, reason) in &d.reasons {
                    let _ = writeln!(w, "- {} fault, {rule}: `{reason}`", d.rule.name());
                }
            }
            for d in &self.detection {
                for v in &d.injected_verdicts {
                    let _ = writeln!(
                        w,
                        "- {} fault, rolled back by another rule; {}'s last verdict before: `{v}`",
                        d.rule.name(),
                        d.rule.name()
                    );
                }
                for v in &d.missed_verdicts {
                    let _ = writeln!(
                        w,
                        "- {} fault, **missed**; the verdicts at the bound: `{v}`",
                        d.rule.name()
                    );
                }
            }
            let early: Vec<(Rule, &FalseRollback)> = self
                .detection
                .iter()
                .flat_map(|d| d.before_fault.iter().map(move |r| (d.rule, r)))
                .collect();
            if early.is_empty() {
                let _ = writeln!(w, "\nNo rollback while arming (before a fault).\n");
            } else {
                let _ = writeln!(
                    w,
                    "\n**{} rollback(s) while arming, before any fault** (false rollbacks; the \
                     run was re-armed):\n",
                    early.len()
                );
                for (lane, r) in early {
                    let _ = writeln!(
                        w,
                        "- {} lane at {:.1} s, {}: `{}`",
                        lane.name(),
                        r.at.as_secs_f64(),
                        r.rule,
                        r.reason
                    );
                }
                let _ = writeln!(w);
            }
        }
        if let Some(aa) = &self.aa {
            let _ = writeln!(
                w,
                "**False rollbacks (A/A)**: no fault; `GET /api/v1/control` read every {} ms. \
                 Target: 0 rollbacks.\n",
                POLL_INTERVAL.as_millis()
            );
            let _ = writeln!(
                w,
                "| duration | requests | answered by new | errors | rollbacks | polls | polls \
                 with an evaluation | met |\n|--:|--:|--:|--:|--:|--:|--:|:--|"
            );
            let _ = writeln!(
                w,
                "| {:.0} s | {} | {} | {} | {} | {} | {} | {} |\n",
                aa.elapsed.as_secs_f64(),
                aa.requests,
                aa.new_requests,
                aa.errors,
                aa.rollbacks.len(),
                aa.polls,
                aa.evaluated,
                yes(self.aa_met()),
            );
            if aa.rollbacks.is_empty() {
                let _ = writeln!(w, "No rollback.\n");
            } else {
                let _ = writeln!(w, "Rollbacks (each re-armed with fresh weights):\n");
                for r in &aa.rollbacks {
                    let _ = writeln!(
                        w,
                        "- at {:.1} s, {}: `{}`",
                        r.at.as_secs_f64(),
                        r.rule,
                        r.reason
                    );
                }
                let _ = writeln!(w);
            }
            let _ = writeln!(
                w,
                "One evaluation's verdict per rule, as a share of the polls that showed the \
                 rule (a `fail` breaches only when it holds for `for`):\n"
            );
            let _ = writeln!(
                w,
                "| rule | polls | fail | inconclusive | pass | no data | longest fail streak \
                 |\n|:--|--:|--:|--:|--:|--:|--:|"
            );
            for (rule, c) in &aa.outcomes {
                let _ = writeln!(
                    w,
                    "| {rule} | {} | {} | {} | {} | {} | {:.1} s |",
                    c.total(),
                    pct(c.fail_share()),
                    pct(c.inconclusive_share()),
                    pct(c.share(c.pass)),
                    pct(c.share(c.no_data)),
                    c.longest_fail_streak as f64 * POLL_INTERVAL.as_secs_f64(),
                );
            }
            let _ = writeln!(w);
            if !aa.after.is_empty() {
                let _ = writeln!(
                    w,
                    "**After the A/A run** (RELIABILITY 65): each rule's fault injected once into \
                     the same lane, measured as the detection runs are.\n\n| fault | fault → no \
                     live traffic to `new` | rule that fired | within for + 1 s |\n|:--|--:|:--|:--|"
                );
                for d in &aa.after {
                    let (took, fired) = match (d.quantile(1.0), d.fired.keys().next()) {
                        (Some(t), Some(rule)) => (secs(Some(t)), rule.clone()),
                        _ if d.unarmed > 0 => ("never armed".to_string(), "-".to_string()),
                        _ => ("**missed**".to_string(), "-".to_string()),
                    };
                    let _ = writeln!(
                        w,
                        "| {} | {took} | {fired} | {} |",
                        d.rule.fault(o),
                        yes(d.target_met(o.target())),
                    );
                }
                let _ = writeln!(w);
            }
        }
        let _ = writeln!(w, "For reference, not measured: {FLAGGER_REFERENCE}");
        w
    }
}

/// Run the scenario: a lane per rule (when `runs` > 0) and the A/A lane (when `aa` > 0), all at
/// once. `progress` gets a line as each run ends and every minute of the A/A run.
pub async fn run(o: &JudgementOptions, mut progress: impl FnMut(&str)) -> JudgementReport {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let mut detections: Vec<JoinHandle<Detection>> = Vec::new();
    if o.runs > 0 {
        for rule in Rule::ALL {
            let (o, tx) = (o.clone(), tx.clone());
            detections.push(tokio::spawn(
                async move { detection_lane(&o, rule, tx).await },
            ));
        }
    }
    let aa = (!o.aa.is_zero()).then(|| {
        let (o, tx) = (o.clone(), tx.clone());
        tokio::spawn(async move { aa_lane(&o, tx).await })
    });
    drop(tx);
    while let Some(line) = rx.recv().await {
        progress(&line);
    }
    let mut detection = Vec::new();
    for task in detections {
        detection.push(joined(task.await));
    }
    let aa = match aa {
        Some(task) => Some(joined(task.await)),
        None => None,
    };
    JudgementReport {
        options: o.clone(),
        detection,
        aa,
        elapsed: started.elapsed(),
    }
}

/// A lane's result; a lane that panicked (a set-up that could not start) passes its panic on.
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("a judgement lane was cancelled: {e}"),
        },
    }
}

/// One lane's backends, proxy and load.
struct Lane {
    legacy: LeanBackend,
    new: LeanBackend,
    proxy: Proxy,
    admin: Admin,
    load: Load,
    /// The next weights write alternates 50/50 and 49/51: a changed value is what makes the file
    /// source apply it (and end a rollback).
    flip: bool,
}

impl Lane {
    async fn start(o: &JudgementOptions) -> Lane {
        let legacy = LeanBackend::start("legacy").await;
        let new = LeanBackend::start("new").await;
        let proxy = Proxy::start(config(o, legacy.addr, new.addr, 50.0)).await;
        let admin = Admin::new(&proxy);
        let load = Load::start(proxy.url(PATH), o.connections);
        Lane {
            legacy,
            new,
            proxy,
            admin,
            load,
            flip: false,
        }
    }

    /// Both backends back to the baseline.
    fn clear_faults(&self) {
        self.legacy.behaviour.baseline();
        self.new.behaviour.baseline();
    }

    /// Write fresh weights and wait (bounded) until they are in effect and the route is not
    /// rolled back.
    async fn rearm(&mut self, o: &JudgementOptions) {
        self.flip = !self.flip;
        let weight = if self.flip { 51.0 } else { 50.0 };
        let cfg = config(o, self.legacy.addr, self.new.addr, weight);
        self.proxy.apply(&cfg);
        let asked = Instant::now();
        while asked.elapsed() < APPLY_TIMEOUT {
            if let Some(route) = self.admin.route().await {
                if route["weights"]["new"].as_f64() == Some(weight)
                    && route["phase"].as_str() != Some("rolled_back")
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The route's local verdicts now, `rule outcome: summary` per rule (empty when the
    /// controller shows no evaluation: rolled back, or the admin API did not answer).
    async fn verdicts(&self) -> Vec<(String, String)> {
        let control = self.admin.json("/api/v1/control").await;
        let Some(verdicts) = control
            .as_ref()
            .and_then(|c| c["routes"][ROUTE]["local"]["verdicts"].as_array())
        else {
            return Vec::new();
        };
        verdicts
            .iter()
            .map(|v| {
                let v = &v["verdict"];
                let rule = v["rule"].as_str().unwrap_or("?").to_string();
                let text = format!(
                    "{rule} {}: {}",
                    v["outcome"].as_str().unwrap_or("?"),
                    v["summary"].as_str().unwrap_or("")
                );
                (rule, text)
            })
            .collect()
    }

    /// The rollback record when the route is rolled back: (rule, reason).
    async fn rolled_back(&self) -> Option<(String, String)> {
        let route = self.admin.route().await?;
        (route["phase"].as_str() == Some("rolled_back")).then(|| {
            let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
            (
                text(&route["rollback"]["rule"]),
                text(&route["rollback"]["reason"]),
            )
        })
    }
}

/// One rule's detection runs, one after the other.
async fn detection_lane(
    o: &JudgementOptions,
    rule: Rule,
    progress: mpsc::UnboundedSender<String>,
) -> Detection {
    let mut lane = Lane::start(o).await;
    let started = Instant::now();
    let mut d = Detection::new(rule);
    for run in 1..=o.runs {
        detect_once(&mut lane, o, run, &mut d, started, &progress).await;
    }
    lane.load.stop().await;
    d
}

/// One detection run of `d.rule` in `lane`: arm (fresh weights, faults cleared, one whole
/// healthy window), inject its fault at a random phase of the controller's tick, and record in
/// `d` how long until `new` got no more live traffic, or that it was missed.
async fn detect_once(
    lane: &mut Lane,
    o: &JudgementOptions,
    run: usize,
    d: &mut Detection,
    started: Instant,
    progress: &mpsc::UnboundedSender<String>,
) {
    let rule = d.rule;
    let mut armed = false;
    for _ in 0..ARM_ATTEMPTS {
        lane.clear_faults();
        lane.rearm(o).await;
        // One whole window of healthy traffic, watching for a rollback before the fault.
        let healthy = Instant::now();
        let mut early = None;
        while healthy.elapsed() < o.window {
            tokio::time::sleep(ARM_POLL.min(o.window.saturating_sub(healthy.elapsed()))).await;
            if let Some(r) = lane.rolled_back().await {
                early = Some(r);
                break;
            }
        }
        match early {
            None => {
                armed = true;
                break;
            }
            Some((fired, reason)) => {
                let _ = progress.send(format!(
                    "{} run {run}: rollback before the fault ({fired}: {reason})",
                    rule.name()
                ));
                d.before_fault.push(FalseRollback {
                    at: started.elapsed(),
                    rule: fired,
                    reason,
                });
            }
        }
    }
    if !armed {
        d.unarmed += 1;
        let _ = progress.send(format!("{} run {run}: never armed", rule.name()));
        return;
    }
    // A run armed right after the last one's rollback would inject at the same phase of the
    // controller's evaluation tick every time: a random delay makes the times a fair sample of
    // when a fault can happen.
    let phase = EVAL_TICK.mul_f64(rand::rng().random::<f64>());
    tokio::time::sleep(phase).await;
    rule.inject(&lane.new, o);
    let fault = Instant::now();
    let mut fired = None;
    // The injected rule's verdict, read every POLL_INTERVAL while waiting.
    let mut injected = None;
    let mut read = fault;
    while fault.elapsed() < o.bound() {
        if let Some(r) = lane.rolled_back().await {
            fired = Some(r);
            break;
        }
        if read.elapsed() >= POLL_INTERVAL {
            read = Instant::now();
            injected = lane
                .verdicts()
                .await
                .into_iter()
                .find(|(r, _)| r == rule.name())
                .map(|(_, text)| text)
                .or(injected);
        }
        tokio::time::sleep(DETECT_POLL).await;
    }
    let Some((fired, reason)) = fired else {
        d.missed += 1;
        let verdicts: Vec<String> = lane.verdicts().await.into_iter().map(|v| v.1).collect();
        d.missed_verdicts.push(if verdicts.is_empty() {
            "no evaluation shown".into()
        } else {
            verdicts.join("; ")
        });
        let _ = progress.send(format!(
            "{} run {run}: missed (no rollback within {:.0} s)",
            rule.name(),
            o.bound().as_secs_f64()
        ));
        return;
    };
    tokio::time::sleep(SETTLE).await;
    let took = lane
        .load
        .last_new_send()
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(fault));
    let _ = progress.send(format!(
        "{} run {run}: {:.2} s ({fired})",
        rule.name(),
        took.as_secs_f64()
    ));
    d.times.push(took);
    if fired != rule.name() {
        d.injected_verdicts
            .push(injected.unwrap_or_else(|| format!("{} not read", rule.name())));
    }
    *d.fired.entry(fired.clone()).or_default() += 1;
    d.reasons.insert(fired, reason);
}

/// The A/A run: no fault, verdicts read every [`POLL_INTERVAL`], rollbacks recorded and
/// re-armed.
async fn aa_lane(o: &JudgementOptions, progress: mpsc::UnboundedSender<String>) -> AaReport {
    let mut lane = Lane::start(o).await;
    lane.clear_faults();
    let mut aa = AaReport::default();
    let started = Instant::now();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_note = Duration::from_secs(60);
    loop {
        tick.tick().await;
        let at = started.elapsed();
        if at >= o.aa {
            break;
        }
        if at >= next_note {
            next_note += Duration::from_secs(60);
            let _ = progress.send(format!(
                "A/A {:.0} s: {} requests, {} rollbacks",
                at.as_secs_f64(),
                lane.load.requests(),
                aa.rollbacks.len()
            ));
        }
        aa.polls += 1;
        let control = lane.admin.json("/api/v1/control").await;
        let verdicts = control
            .as_ref()
            .and_then(|c| c["routes"][ROUTE]["local"]["verdicts"].as_array());
        match verdicts {
            Some(verdicts) => {
                aa.evaluated += 1;
                for v in verdicts {
                    let (Some(rule), Some(outcome)) = (
                        v["verdict"]["rule"].as_str(),
                        v["verdict"]["outcome"].as_str(),
                    ) else {
                        continue;
                    };
                    aa.outcomes
                        .entry(rule.to_string())
                        .or_default()
                        .record(outcome);
                }
            }
            None => {
                // No evaluation (rolled back, or the admin API did not answer): streaks end.
                for c in aa.outcomes.values_mut() {
                    c.streak = 0;
                }
            }
        }
        if let Some((rule, reason)) = lane.rolled_back().await {
            let _ = progress.send(format!(
                "A/A at {:.1} s: rollback ({rule}: {reason})",
                at.as_secs_f64()
            ));
            aa.rollbacks.push(FalseRollback { at, rule, reason });
            lane.rearm(o).await;
        }
    }
    aa.elapsed = started.elapsed();
    aa.requests = lane.load.requests();
    aa.new_requests = lane.load.new_requests();
    aa.errors = lane.load.errors();
    // RELIABILITY 65: after the noise, a regression of each kind in the same lane still rolls
    // back (one run each; the counts above stop here).
    for rule in Rule::ALL {
        let mut d = Detection::new(rule);
        detect_once(&mut lane, o, 1, &mut d, started, &progress).await;
        aa.after.push(d);
    }
    lane.load.stop().await;
    aa
}

/// The lane's proxy config with `new_weight` % to `new`.
fn config(
    o: &JudgementOptions,
    legacy: SocketAddr,
    new: SocketAddr,
    new_weight: f64,
) -> ProxyConfig {
    lane_config(
        o.window,
        Route::new(ROUTE)
            .legacy_endpoints([legacy])
            .new_endpoints([new])
            .weights(100.0 - new_weight, new_weight)
            .shadow(100)
            .compare_block("body = \"json\", learn_noise_percent = 10")
            .line(&o.rules_toml()),
    )
}

/// The admin API, read with a pooled client that tolerates a failed request (an hour-long run
/// must not end on one).
struct Admin {
    client: Client,
    base: String,
}

impl Admin {
    fn new(proxy: &Proxy) -> Admin {
        Admin {
            client: Client::new().with_timeout(ADMIN_TIMEOUT),
            base: proxy.admin_url(""),
        }
    }

    async fn json(&self, path: &str) -> Option<Value> {
        let res = self
            .client
            .get(&format!("{}{path}", self.base))
            .await
            .ok()?;
        (res.status == 200)
            .then(|| serde_json::from_slice(&res.body).ok())
            .flatten()
    }

    /// The route's `/api/v1/routes` entry.
    async fn route(&self) -> Option<Value> {
        let routes = self.json("/api/v1/routes").await?;
        routes
            .as_array()?
            .iter()
            .find(|r| r["id"] == ROUTE)
            .cloned()
    }
}

/// How a [`LeanBackend`] answers; switched at run time.
#[derive(Debug)]
struct Behaviour {
    /// Answers with 500, per mille.
    errors: AtomicU32,
    /// Every answer's latency is multiplied by this.
    latency_factor: AtomicU32,
    /// Answers whose `total` differs, per mille.
    divergence: AtomicU32,
}

impl Behaviour {
    fn new() -> Self {
        Behaviour {
            errors: AtomicU32::new(BASELINE_ERRORS_PER_MILLE),
            latency_factor: AtomicU32::new(1),
            divergence: AtomicU32::new(0),
        }
    }

    fn baseline(&self) {
        self.set_errors(BASELINE_ERRORS_PER_MILLE);
        self.set_latency_factor(1);
        self.set_divergence(0);
    }

    fn set_errors(&self, per_mille: u32) {
        self.errors.store(per_mille, Ordering::Relaxed);
    }

    fn set_latency_factor(&self, factor: u32) {
        self.latency_factor.store(factor.max(1), Ordering::Relaxed);
    }

    fn set_divergence(&self, per_mille: u32) {
        self.divergence.store(per_mille, Ordering::Relaxed);
    }
}

/// A lean in-process HTTP/1.1 backend (hyper) on 127.0.0.1, port 0: JSON answers with volatile
/// and stable fields, behaviour in atomics, nothing recorded per request (it may run for an
/// hour). Stops accepting when dropped; its connections end when the proxy closes them.
struct LeanBackend {
    addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    accept: JoinHandle<()>,
}

impl LeanBackend {
    async fn start(name: &'static str) -> LeanBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind a {name} backend on 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("address of the {name} backend: {e}"));
        let behaviour = Arc::new(Behaviour::new());
        let b = behaviour.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let b = b.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(name, req, b.clone()));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        LeanBackend {
            addr,
            behaviour,
            accept,
        }
    }
}

impl Drop for LeanBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(
    name: &'static str,
    _req: Request<Incoming>,
    b: Arc<Behaviour>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Draw everything before the first await: the thread-local generator is not `Send`.
    let (delay, error, diverge, request_id) = {
        let mut rng = rand::rng();
        let factor = u64::from(b.latency_factor.load(Ordering::Relaxed).max(1));
        let micros = (BASE_LATENCY_US + rng.random_range(0..JITTER_US)) * factor;
        (
            Duration::from_micros(micros),
            rng.random_range(0..1000) < b.errors.load(Ordering::Relaxed),
            rng.random_range(0..1000) < b.divergence.load(Ordering::Relaxed),
            rng.random::<u64>(),
        )
    };
    tokio::time::sleep(delay).await;
    let (status, body) = if error {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(b"{\"error\":\"injected\"}"),
        )
    } else {
        let generated_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let total = if diverge { "43.5" } else { "42.5" };
        (
            StatusCode::OK,
            Bytes::from(format!(
                "{{\"order\":42,\"items\":3,\"total\":{total},\"request_id\":\"{request_id:016x}\",\
                 \"generated_at\":{generated_at}}}"
            )),
        )
    };
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut()
        .insert("x-backend", HeaderValue::from_static(name));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_targets() {
        let mut d = Detection::new(Rule::ErrorRate);
        assert_eq!(d.quantile(0.99), None);
        assert!(!d.target_met(Duration::from_secs(6)), "no run, no verdict");
        d.times = [5.2, 5.9, 5.5].map(Duration::from_secs_f64).to_vec();
        assert_eq!(d.quantile(0.5), Some(Duration::from_secs_f64(5.5)));
        assert_eq!(d.quantile(0.99), Some(Duration::from_secs_f64(5.9)));
        assert!(d.target_met(Duration::from_secs(6)));
        d.missed = 1;
        assert!(!d.target_met(Duration::from_secs(6)));
        assert_eq!(d.runs(), 4);
    }

    #[test]
    fn fail_streaks_and_shares() {
        let mut c = OutcomeCounts::default();
        for o in ["fail", "fail", "pass", "fail", "inconclusive", "no_data"] {
            c.record(o);
        }
        assert_eq!(c.total(), 6);
        assert_eq!(c.longest_fail_streak, 2);
        assert!((c.fail_share() - 0.5).abs() < 1e-9);
        assert!((c.inconclusive_share() - 1.0 / 6.0).abs() < 1e-9);
    }

    #[test]
    fn rules_are_written_out_with_the_hold() {
        let o = JudgementOptions::default();
        let toml = o.rules_toml();
        assert_eq!(toml.matches("for = \"5s\"").count(), 3, "{toml}");
        assert_eq!(o.target(), Duration::from_secs(6));
        assert_eq!(o.bound(), Duration::from_secs(45));
    }
}
