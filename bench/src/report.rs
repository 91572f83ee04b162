//! The suite's report: the goals with met / missed computed from the run, Markdown tables
//! (medians over undisturbed rounds, ratios taken within a round), per-run details with the
//! noise columns, SVG charts, the control-plane scenarios and the criterion micro-benchmarks.
//! `make bench` writes it to `BENCHMARKS.md` and `bench/reports/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::charts;
use crate::judgement::{JudgementOptions, JudgementReport, Rule};
use crate::suite::{ControlPlane, Phase, Run, SuiteReport};
use crate::sys;
use crate::targets::TargetKind;

/// CPU per request of cutover against nginx's (closed loop, 1 KiB; issue 14).
pub const GOAL_CPU_VS_NGINX: f64 = 1.15;
/// Open-loop p99 of cutover against nginx's at the same rate.
pub const GOAL_P99_VS_NGINX: f64 = 1.0;
/// CPU per request with 100 % shadow + JSON compare against without (issue 14: no regression
/// from the 1.75–1.80× measured on pingora).
pub const GOAL_SHADOW_CPU: f64 = 1.8;
/// The same at 1 KiB and at 64 KiB (issue 15).
pub const GOAL_SHADOW_CPU_1K: f64 = 1.5;
pub const GOAL_SHADOW_CPU_64K: f64 = 2.0;
/// Peak RSS with 100 % shadow against without, 1,000 connections (issue 15).
pub const GOAL_SHADOW_RSS: f64 = 1.3;
/// Peak RSS of cutover with 1,000 connections, MiB (issue 14).
pub const GOAL_RSS_MIB: f64 = 40.0;
/// Propagation p99, ms (README).
pub const GOAL_PROPAGATION_P99_MS: f64 = 50.0;
/// gRPC unary CPU per call against nginx's `grpc_pass` (issue 17).
pub const GOAL_GRPC_CPU: f64 = 1.0;
/// gRPC unary with 100 % shadow and `compare.body = "grpc"` against without (issue 17).
pub const GOAL_GRPC_SHADOW_CPU: f64 = 2.0;

/// Whether a goal was met.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Met,
    Missed,
    /// Not measurable in this run, and why.
    NotEvaluated(String),
}

impl Verdict {
    fn cell(&self) -> String {
        match self {
            Verdict::Met => "**met**".into(),
            Verdict::Missed => "**missed**".into(),
            Verdict::NotEvaluated(why) => format!("not evaluated: {why}"),
        }
    }

    fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }
}

/// One target of the issue, with what the run measured.
#[derive(Debug, Clone)]
pub struct Goal {
    pub name: &'static str,
    pub wanted: String,
    pub measured: String,
    pub verdict: Verdict,
}

/// The peak RSS of `kind`'s crowd run (the run's own), MiB.
fn crowd_peak_mib(r: &SuiteReport, kind: TargetKind) -> Option<f64> {
    crowd_mib(r, kind, |run| run.peak_rss_kib)
}

/// The RSS of `kind`'s crowd run as its load started, MiB.
fn start_mib(r: &SuiteReport, kind: TargetKind) -> Option<f64> {
    crowd_mib(r, kind, |run| run.rss_start_kib)
}

/// The peak RSS over the whole life of `kind`'s processes, read at its crowd run, MiB.
fn life_peak_mib(r: &SuiteReport, kind: TargetKind) -> Option<f64> {
    crowd_mib(r, kind, |run| run.life_peak_rss_kib)
}

/// `kib` of `kind`'s crowd run, in MiB.
fn crowd_mib(r: &SuiteReport, kind: TargetKind, kib: fn(&Run) -> Option<u64>) -> Option<f64> {
    r.crowd
        .iter()
        .find(|run| run.target == kind)
        .and_then(kib)
        .map(|kib| kib as f64 / 1024.0)
}

/// What the shadow target's used runs of `phase` say beside its CPU (`; only … arrived`,
/// `; only … compared`), and whether every copy arrived and was compared.
fn shadow_runs(r: &SuiteReport, phase: Phase) -> (String, bool) {
    let s = TargetKind::CutoverShadow;
    let least = |f: &dyn Fn(&Run) -> Option<f64>| {
        r.used_rounds(phase)
            .filter_map(|round| f(round.run(s)?))
            .fold(f64::MAX, f64::min)
    };
    let copies = least(&Run::copy_ratio);
    let compared = least(&Run::compared_ratio);
    let mut notes = String::new();
    if copies < 0.999 {
        let _ = write!(notes, "; only {:.1} % of copies arrived", copies * 100.0);
    }
    if compared < 0.999 {
        let _ = write!(
            notes,
            "; only {:.1} % of copies compared (the rest: overload)",
            compared * 100.0
        );
    }
    (notes, copies >= 0.999 && compared >= 0.999)
}

/// The goals, computed from the run.
pub fn goals(r: &SuiteReport) -> Vec<Goal> {
    let clk = r.clk_tck;
    let cpu = move |run: &Run| run.cpu_us_per_request(clk);
    let p99 = |run: &Run| run.percentile_ms(99.0);
    let ran = |k| r.targets.contains(&k);
    let missing = |k: TargetKind| {
        r.skipped.iter().find(|(s, _)| *s == k).map_or_else(
            || format!("{} did not run", k.name()),
            |(_, why)| why.clone(),
        )
    };
    let mut goals = Vec::new();

    let (c, n) = (TargetKind::Cutover, TargetKind::Nginx);
    let (name, wanted) = (
        "CPU per request vs nginx",
        format!("cutover ≤ {GOAL_CPU_VS_NGINX}× nginx (closed loop, 1 KiB)"),
    );
    goals.push(if ran(c) && ran(n) {
        match r.median_ratio(Phase::Closed1k, c, n, cpu) {
            Some(ratio) => Goal {
                name,
                wanted,
                measured: format!(
                    "{ratio:.2}× (cutover {} µs, nginx {} µs)",
                    f1(r.median(Phase::Closed1k, c, cpu)),
                    f1(r.median(Phase::Closed1k, n, cpu))
                ),
                verdict: Verdict::of(ratio <= GOAL_CPU_VS_NGINX),
            },
            None => not_evaluated(name, wanted, "no CPU measured"),
        }
    } else {
        not_evaluated(name, wanted, &missing(n))
    });

    let basis_is_nginx = r
        .open_rate
        .as_ref()
        .is_some_and(|(_, basis)| basis.contains("nginx"));
    let (name, wanted) = (
        "Open-loop p99 vs nginx",
        "cutover's p99 ≤ nginx's at 50 % of nginx's max closed-loop rate".to_string(),
    );
    goals.push(if ran(c) && ran(n) && basis_is_nginx {
        let rate = r.open_rate.as_ref().map_or(0.0, |(rate, _)| *rate);
        match r.median_ratio(Phase::Open1k, c, n, p99) {
            Some(ratio) => Goal {
                name,
                wanted,
                measured: format!(
                    "{ratio:.2}× at {rate:.0} req/s (cutover {} ms, nginx {} ms)",
                    f3(r.median(Phase::Open1k, c, p99)),
                    f3(r.median(Phase::Open1k, n, p99))
                ),
                verdict: Verdict::of(ratio <= GOAL_P99_VS_NGINX),
            },
            None => not_evaluated(name, wanted, "no open-loop samples"),
        }
    } else {
        let why = if ran(n) {
            "the open loop did not run at nginx's rate".to_string()
        } else {
            missing(n)
        };
        not_evaluated(name, wanted, &why)
    });

    let s = TargetKind::CutoverShadow;
    for (name, phase, limit, size) in [
        ("Shadow cost", Phase::Closed1k, GOAL_SHADOW_CPU, "1 KiB"),
        (
            "Shadow cost, 1 KiB (issue 15)",
            Phase::Closed1k,
            GOAL_SHADOW_CPU_1K,
            "1 KiB",
        ),
        (
            "Shadow cost, 64 KiB (issue 15)",
            Phase::Closed64k,
            GOAL_SHADOW_CPU_64K,
            "64 KiB",
        ),
    ] {
        let wanted = format!(
            "100 % shadow + JSON compare ≤ {limit}× cutover's CPU/request ({size}), every copy \
             compared"
        );
        goals.push(if ran(c) && ran(s) {
            match r.median_ratio(phase, s, c, cpu) {
                Some(ratio) => {
                    let (mut measured, whole) = shadow_runs(r, phase);
                    measured = format!(
                        "{ratio:.2}× (shadow {} µs, no shadow {} µs){measured}",
                        f1(r.median(phase, s, cpu)),
                        f1(r.median(phase, c, cpu))
                    );
                    Goal {
                        name,
                        wanted,
                        measured,
                        verdict: Verdict::of(ratio <= limit && whole),
                    }
                }
                None => not_evaluated(name, wanted, "no CPU measured"),
            }
        } else {
            not_evaluated(name, wanted, &missing(s))
        });
    }

    let m = TargetKind::NginxMirror;
    let (name, wanted) = (
        "Shadow vs nginx mirror (issue 15)",
        "cutover-shadow's CPU/request below nginx-mirror's at 1 KiB and 64 KiB, every copy \
         compared"
            .to_string(),
    );
    goals.push(if ran(s) && ran(m) {
        let sizes: Vec<(Phase, &str)> =
            vec![(Phase::Closed1k, "1 KiB"), (Phase::Closed64k, "64 KiB")];
        let ratios: Vec<Option<f64>> = sizes
            .iter()
            .map(|&(phase, _)| r.median_ratio(phase, s, m, cpu))
            .collect();
        if ratios.iter().all(Option::is_some) {
            let mut met = true;
            let parts: Vec<String> = sizes
                .iter()
                .zip(&ratios)
                .map(|(&(phase, size), ratio)| {
                    let ratio = ratio.unwrap_or(f64::MAX);
                    let (notes, whole) = shadow_runs(r, phase);
                    met &= ratio < 1.0 && whole;
                    format!(
                        "{size}: {ratio:.2}× (shadow {} µs, mirror {} µs{notes})",
                        f1(r.median(phase, s, cpu)),
                        f1(r.median(phase, m, cpu))
                    )
                })
                .collect();
            Goal {
                name,
                wanted,
                measured: parts.join("; "),
                verdict: Verdict::of(met),
            }
        } else {
            not_evaluated(name, wanted, "no CPU measured")
        }
    } else {
        not_evaluated(name, wanted, &missing(if ran(s) { m } else { s }))
    });

    let peak = |k| crowd_peak_mib(r, k);
    let (name, wanted) = (
        "Shadow memory (issue 15)",
        format!(
            "cutover-shadow's peak RSS ≤ {GOAL_SHADOW_RSS}× cutover's during the run with \
             1,000 connections"
        ),
    );
    goals.push(match (peak(s), peak(c)) {
        (Some(shadow), Some(plain)) => {
            let ratio = shadow / plain;
            let mut measured = format!("{ratio:.2}× ({shadow:.1} MiB against {plain:.1} MiB)");
            if let (Some(ss), Some(sp)) = (start_mib(r, s), start_mib(r, c)) {
                measured += &format!(
                    ", of which held as the run started (left by earlier phases): {ss:.1} \
                     against {sp:.1} MiB"
                );
            }
            if let (Some(ls), Some(lp)) = (life_peak_mib(r, s), life_peak_mib(r, c)) {
                measured += &format!(
                    "; over each process's whole life, every earlier phase included: {:.2}× \
                     ({ls:.1} against {lp:.1} MiB)",
                    ls / lp
                );
            }
            Goal {
                name,
                wanted,
                measured,
                verdict: Verdict::of(ratio <= GOAL_SHADOW_RSS),
            }
        }
        _ => not_evaluated(name, wanted, "no crowd run of both"),
    });

    let crowd = r.crowd.iter().find(|run| run.target == c);
    let connections = r.options.crowd.map_or(0, |s| s.connections);
    let (name, wanted) = (
        "Memory with 1,000 connections",
        format!("cutover's RSS ≤ {GOAL_RSS_MIB} MiB with 1,000 concurrent connections"),
    );
    goals.push(match crowd.and_then(|run| run.peak_rss_kib) {
        Some(kib) => {
            let mib = kib as f64 / 1024.0;
            let crowd = crowd.expect("peak RSS comes from a crowd run");
            let mut measured = format!(
                "{mib:.1} MiB peak (VmHWM) during the run with {connections} connections, {} \
                 req/s, {} errors",
                crowd.requests_per_second().round(),
                crowd.errors
            );
            if connections < 1000 {
                measured += " (fewer than 1,000 connections: smoke run)";
            }
            Goal {
                name,
                wanted,
                measured,
                verdict: Verdict::of(mib <= GOAL_RSS_MIB && crowd.errors == 0),
            }
        }
        None => not_evaluated(name, wanted, "no crowd run of cutover"),
    });

    if let (Some(t), Some(options)) = (r.rollback_time(), &r.options.rollback_time) {
        let (name, wanted) = (
            "Rollback time",
            format!(
                "fault → no live traffic to new, p99 ≤ window + 1 s = {:.0} s",
                options.target().as_secs_f64()
            ),
        );
        goals.push(match t {
            Ok(t) => match t.quantile(0.99) {
                Some(p99) => Goal {
                    name,
                    wanted,
                    measured: format!(
                        "p50 {:.2} s, p99 {:.2} s over {} runs ({} missed)",
                        t.quantile(0.5).unwrap_or_default().as_secs_f64(),
                        p99.as_secs_f64(),
                        t.times.len(),
                        t.missed
                    ),
                    verdict: Verdict::of(t.target_met()),
                },
                None => not_evaluated(name, wanted, "no run rolled back"),
            },
            Err(why) => not_evaluated(name, wanted, why),
        });
    }
    if let (Some(j), Some(options)) = (r.judgement(), &r.options.judgement) {
        judgement_goals(&mut goals, j, options);
    }
    if let Some(p) = &r.protocols {
        protocol_goals(&mut goals, p);
    }
    if let Some(p) = r.propagation() {
        let (name, wanted) = (
            "Propagation",
            format!("etcd put → traffic follows, p99 < {GOAL_PROPAGATION_P99_MS} ms"),
        );
        goals.push(match p {
            Ok(p) => match p.percentile_ms(99.0) {
                Some(p99) => Goal {
                    name,
                    wanted,
                    measured: format!(
                        "p99 {p99:.1} ms over {}/{} changes",
                        p.propagated(),
                        p.options.changes
                    ),
                    verdict: Verdict::of(
                        p99 < GOAL_PROPAGATION_P99_MS && p.propagated() == p.options.changes,
                    ),
                },
                None => not_evaluated(name, wanted, "no change propagated"),
            },
            Err(why) => not_evaluated(name, wanted, why),
        });
    }
    goals
}

/// Issue 17's goals: gRPC unary CPU per call against nginx, and with 100 % shadow + compare.
fn protocol_goals(goals: &mut Vec<Goal>, p: &Result<crate::protocols::ProtocolReport, String>) {
    use crate::protocols::Case;
    let rows = [
        (
            "gRPC unary CPU",
            format!("≤ {GOAL_GRPC_CPU:.1}× nginx grpc_pass per call"),
            Case::GrpcCutover,
            Case::GrpcNginx,
            GOAL_GRPC_CPU,
        ),
        (
            "gRPC shadow CPU",
            format!("100 % shadow + compare grpc ≤ {GOAL_GRPC_SHADOW_CPU:.1}× no shadow"),
            Case::GrpcShadow,
            Case::GrpcCutover,
            GOAL_GRPC_SHADOW_CPU,
        ),
    ];
    for (name, wanted, case, base, goal) in rows {
        goals.push(match p {
            Err(why) => not_evaluated(name, wanted, why),
            Ok(p) => match (
                p.ratio(case, base),
                p.median_cpu_us(case),
                p.median_cpu_us(base),
            ) {
                (Some(ratio), Some(cpu), Some(base_cpu)) => Goal {
                    name,
                    wanted,
                    measured: format!(
                        "{ratio:.2}× ({cpu:.1} vs {base_cpu:.1} µs per call; {} errors)",
                        p.errors()
                    ),
                    verdict: Verdict::of(ratio <= goal && p.errors() == 0),
                },
                _ => not_evaluated(name, wanted, "a case did not run (nginx missing?)"),
            },
        });
    }
}

/// One detection goal per rule and the A/A goal of the judgement scenario.
fn judgement_goals(
    goals: &mut Vec<Goal>,
    j: &Result<JudgementReport, String>,
    options: &JudgementOptions,
) {
    let secs = |d: Option<std::time::Duration>| {
        d.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
    };
    if options.runs > 0 {
        for rule in Rule::ALL {
            let (name, wanted) = (
                rule.goal_name(),
                format!(
                    "{} → no live traffic to new, p99 ≤ for + 1 s = {:.0} s, none missed",
                    rule.fault(options),
                    options.target().as_secs_f64()
                ),
            );
            goals.push(match j.as_ref().map(|j| j.detection(rule)) {
                Ok(Some(d)) => Goal {
                    name,
                    wanted,
                    measured: format!(
                        "p50 {}, p99 {} over {} runs ({} missed{}); fired: {}",
                        secs(d.quantile(0.5)),
                        secs(d.quantile(0.99)),
                        d.runs(),
                        d.missed,
                        if d.unarmed > 0 {
                            format!(", {} never armed", d.unarmed)
                        } else {
                            String::new()
                        },
                        d.fired_summary()
                    ),
                    verdict: Verdict::of(d.target_met(options.target())),
                },
                Ok(None) => not_evaluated(name, wanted, "no detection run"),
                Err(why) => not_evaluated(name, wanted, why),
            });
        }
    }
    let (name, wanted) = (
        "False rollbacks",
        format!(
            "0 rollbacks in an A/A run of {} (default rules, for = {})",
            humantime::format_duration(options.aa),
            humantime::format_duration(options.hold)
        ),
    );
    goals.push(match j.as_ref().map(|j| j.aa.as_ref()) {
        Ok(Some(aa)) => {
            let mut measured = format!(
                "{} rollback(s) in {:.0} s, {} requests",
                aa.rollbacks.len(),
                aa.elapsed.as_secs_f64(),
                aa.requests
            );
            let mut by_rule: std::collections::BTreeMap<&str, usize> = Default::default();
            for r in &aa.rollbacks {
                *by_rule.entry(r.rule.as_str()).or_default() += 1;
            }
            if !by_rule.is_empty() {
                let rules: Vec<String> = by_rule.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
                let _ = write!(measured, " ({})", rules.join(", "));
            }
            let fails: Vec<String> = aa
                .outcomes
                .iter()
                .map(|(rule, c)| format!("{rule} {:.1} %", c.fail_share() * 100.0))
                .collect();
            if !fails.is_empty() {
                let _ = write!(measured, "; single evaluations fail: {}", fails.join(", "));
            }
            Goal {
                name,
                wanted,
                measured,
                verdict: Verdict::of(aa.rollbacks.is_empty()),
            }
        }
        Ok(None) => not_evaluated(name, wanted, "no A/A run"),
        Err(why) => not_evaluated(name, wanted, why),
    });
}

fn not_evaluated(name: &'static str, wanted: String, why: &str) -> Goal {
    Goal {
        name,
        wanted,
        measured: "-".into(),
        verdict: Verdict::NotEvaluated(why.to_string()),
    }
}

fn f1(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn f3(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}"))
}

fn x2(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}×"))
}

/// One criterion result.
#[derive(Debug, Clone)]
pub struct MicroBench {
    /// `group/function`.
    pub id: String,
    /// Mean time per iteration, ns, with its 95 % confidence interval.
    pub mean_ns: f64,
    pub low_ns: f64,
    pub high_ns: f64,
}

/// Reads criterion's `*/new/estimates.json` under `dir` (`target/criterion`).
pub fn read_criterion(dir: &Path) -> Vec<MicroBench> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    if let Some(m) = read_estimate(&p) {
                        found.push(m);
                    }
                } else if p.file_name().is_none_or(|n| n != "report") {
                    stack.push(p);
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

fn read_estimate(new_dir: &Path) -> Option<MicroBench> {
    let json = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(new_dir.join(name)).ok()?).ok()
    };
    let bench = json("benchmark.json")?;
    let est = json("estimates.json")?;
    let mean = &est["mean"];
    Some(MicroBench {
        id: bench["full_id"].as_str()?.to_string(),
        mean_ns: mean["point_estimate"].as_f64()?,
        low_ns: mean["confidence_interval"]["lower_bound"].as_f64()?,
        high_ns: mean["confidence_interval"]["upper_bound"].as_f64()?,
    })
}

/// Where and how the report is written.
#[derive(Debug, Clone)]
pub struct Output {
    /// The Markdown file (`BENCHMARKS.md`).
    pub markdown: PathBuf,
    /// Directory of the charts (`bench/reports`).
    pub charts_dir: PathBuf,
    /// The command that produced the run, as shown in the report.
    pub command: String,
    /// The commands to reproduce it (shown verbatim).
    pub reproduce: Vec<String>,
    /// Criterion results to include.
    pub micro: Vec<MicroBench>,
    /// Where they came from.
    pub micro_dir: Option<PathBuf>,
}

/// A chart file written for the report.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub path: PathBuf,
}

/// Draws the charts into `out.charts_dir`; problems (an empty phase) are returned as text.
pub fn write_charts(r: &SuiteReport, out: &Output) -> (Vec<Chart>, Vec<String>) {
    let mut charts = Vec::new();
    let mut problems = Vec::new();
    if let Err(e) = std::fs::create_dir_all(&out.charts_dir) {
        problems.push(format!("create {}: {e}", out.charts_dir.display()));
        return (charts, problems);
    }
    let phases: Vec<(Phase, &str, &str)> = vec![
        (
            Phase::Closed1k,
            "latency-closed-1k.svg",
            "Latency, closed loop, 1 KiB answers",
        ),
        (
            Phase::Closed64k,
            "latency-closed-64k.svg",
            "Latency, closed loop, 64 KiB answers",
        ),
        (
            Phase::Closed256k,
            "latency-closed-256k.svg",
            "Latency, closed loop, 256 KiB answers",
        ),
        (
            Phase::Open1k,
            "latency-open-1k.svg",
            "Latency from intended send time, open loop, 1 KiB",
        ),
    ];
    for (phase, file, title) in phases {
        if r.used_rounds(phase).next().is_none() {
            continue;
        }
        let hists: Vec<(String, hdrhistogram::Histogram<u64>)> = r
            .targets
            .iter()
            .map(|&k| (k.name().to_string(), r.merged_latency(phase, k)))
            .collect();
        let series: Vec<(String, &hdrhistogram::Histogram<u64>)> =
            hists.iter().map(|(n, h)| (n.clone(), h)).collect();
        let title = match (phase, &r.open_rate) {
            (Phase::Open1k, Some((rate, _))) => format!("{title} at {rate:.0} req/s"),
            _ => title.to_string(),
        };
        let path = out.charts_dir.join(file);
        match charts::latency_percentiles(&path, &title, &series) {
            Ok(()) => charts.push(Chart { title, path }),
            Err(e) => problems.push(format!("chart {file}: {e}")),
        }
    }

    let proxies: Vec<TargetKind> = r.targets.iter().copied().filter(|k| k.is_proxy()).collect();
    let clk = r.clk_tck;
    let names: Vec<String> = proxies.iter().map(|k| k.name().to_string()).collect();
    let cpu_series: Vec<(String, Vec<Option<f64>>)> = Phase::ROUNDS
        .into_iter()
        .filter(|&p| r.used_rounds(p).next().is_some())
        .map(|p| {
            let values = proxies
                .iter()
                .map(|&k| r.median(p, k, |run| run.cpu_us_per_request(clk)))
                .collect();
            (p.name().to_string(), values)
        })
        .collect();
    let path = out.charts_dir.join("cpu-per-request.svg");
    let title = "Proxy CPU per request (µs, median of rounds)".to_string();
    match charts::grouped_bars(&path, &title, "CPU µs / request", &names, &cpu_series, 1) {
        Ok(()) => charts.push(Chart { title, path }),
        Err(e) => problems.push(format!("chart cpu-per-request.svg: {e}")),
    }

    let all: Vec<String> = r.targets.iter().map(|k| k.name().to_string()).collect();
    let rps: Vec<(String, Vec<Option<f64>>)> = Phase::CLOSED
        .into_iter()
        .filter(|&p| r.used_rounds(p).next().is_some())
        .map(|p| {
            let values = r
                .targets
                .iter()
                .map(|&k| r.median(p, k, |run| Some(run.requests_per_second())))
                .collect();
            (p.name().to_string(), values)
        })
        .collect();
    let path = out.charts_dir.join("throughput.svg");
    let title = "Closed-loop throughput (req/s, median of rounds)".to_string();
    match charts::grouped_bars(&path, &title, "requests / s", &all, &rps, 0) {
        Ok(()) => charts.push(Chart { title, path }),
        Err(e) => problems.push(format!("chart throughput.svg: {e}")),
    }
    (charts, problems)
}

/// `file` as a link from the directory of `markdown` (relative when below it).
fn link(markdown: &Path, file: &Path) -> String {
    let base = markdown.parent().unwrap_or(Path::new(""));
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        }
    };
    let (base, file) = (abs(base), abs(file));
    file.strip_prefix(&base)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| file.display().to_string())
}

/// When the minimal hyper proxy ran (`hyper-floor`, a default target): what cutover costs beyond
/// it, as medians of ratios taken within each round, and the memory of both with 1,000
/// connections.
fn floor_summary(w: &mut String, r: &SuiteReport) {
    let (c, p) = (TargetKind::Cutover, TargetKind::HyperFloor);
    if !(r.targets.contains(&c) && r.targets.contains(&p)) {
        return;
    }
    let clk = r.clk_tck;
    let cpu = move |run: &Run| run.cpu_us_per_request(clk);
    let _ = writeln!(w, "### cutover over its floor (a minimal hyper proxy)\n");
    for (phase, what) in [
        (Phase::Closed1k, "closed loop, 1 KiB"),
        (Phase::Closed64k, "closed loop, 64 KiB"),
        (Phase::Closed256k, "closed loop, 256 KiB"),
    ] {
        if let Some(ratio) = r.median_ratio(phase, c, p, cpu) {
            let _ = writeln!(
                w,
                "- CPU per request, {what}: cutover {:.2}× hyper-floor (cutover {} µs, \
                 hyper-floor {} µs).",
                ratio,
                f1(r.median(phase, c, cpu)),
                f1(r.median(phase, p, cpu))
            );
        }
    }
    let own = TargetKind::OwnFloor;
    if r.targets.contains(&own) {
        for (phase, what) in [
            (Phase::Closed1k, "closed loop, 1 KiB"),
            (Phase::Closed64k, "closed loop, 64 KiB"),
        ] {
            let nginx = r
                .median_ratio(phase, own, TargetKind::Nginx, cpu)
                .map(|x| format!(", {x:.2}× nginx"))
                .unwrap_or_default();
            if let Some(ratio) = r.median_ratio(phase, own, p, cpu) {
                let _ = writeln!(
                    w,
                    "- With an upstream client of its own (`own-floor`), {what}: {ratio:.2}× \
                     hyper-floor{nginx} ({} µs).",
                    f1(r.median(phase, own, cpu))
                );
            }
        }
    }
    let rss = |k| crowd_peak_mib(r, k);
    if let Some(or) = rss(own) {
        let connections = r.options.crowd.map_or(0, |s| s.connections);
        let _ = writeln!(
            w,
            "- Peak RSS with {connections} connections, own-floor: {or:.1} MiB."
        );
    }
    if let (Some(cr), Some(pr)) = (rss(c), rss(p)) {
        let connections = r.options.crowd.map_or(0, |s| s.connections);
        let _ = writeln!(
            w,
            "- Peak RSS with {connections} connections: cutover {cr:.1} MiB, hyper-floor \
             {pr:.1} MiB."
        );
    }
    let _ = writeln!(w);
}

/// The whole report as Markdown.
pub fn markdown(r: &SuiteReport, out: &Output, charts: &[Chart]) -> String {
    let clk = r.clk_tck;
    let mut md = String::new();
    let w = &mut md;
    let date = humantime::format_rfc3339_seconds(r.started);
    let _ = writeln!(w, "# cutover benchmarks\n");
    let _ = writeln!(
        w,
        "<!-- Generated by `{0}` on {date}. Do not edit by hand: run `{0}` again. -->\n",
        out.command
    );
    let _ = writeln!(
        w,
        "Generated by `{}` on {date} in {:.0} s. Every number below comes from that run; \
         nothing is typed in. How to read them: [What the numbers mean](#what-the-numbers-mean).\n",
        out.command,
        r.elapsed.as_secs_f64()
    );

    // Goals.
    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(
        w,
        "| target | wanted | measured | verdict |\n|:--|:--|:--|:--|"
    );
    for g in goals(r) {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            g.name,
            g.wanted,
            g.measured,
            g.verdict.cell()
        );
    }
    let _ = writeln!(w);
    if goals(r).iter().any(|g| g.verdict == Verdict::Missed) && !r.profiles.is_empty() {
        let _ = writeln!(
            w,
            "Where the proxies' CPU goes in the runs the CPU targets are about: \
             [Where the CPU goes (perf)](#where-the-cpu-goes-perf); what stands in the way of \
             each missed target, measured: the README's [Benchmarks](README.md#benchmarks).\n"
        );
    }
    floor_summary(w, r);
    noise_summary(w, r);

    // Machine and commands.
    let m = &r.machine;
    let _ = writeln!(w, "## Machine and commands\n");
    let _ = writeln!(
        w,
        "- Machine: {} CPUs ({}), kernel {}, {:.1} GiB memory; CLK_TCK {} ({}).",
        m.cpus, m.cpu_model, m.kernel, m.memory_gib, r.clk_tck, r.clk_tck_source
    );
    match &r.pinning {
        Ok(p) => {
            let _ = writeln!(
                w,
                "- Pinning: load generator on CPU {}, backend and every proxy on CPU {} \
                 (`sched_setaffinity` on every thread).",
                p.generator_cpu, p.servers_cpu
            );
        }
        Err(why) => {
            let _ = writeln!(w, "- Pinning: none ({why}).");
        }
    }
    let _ = writeln!(w, "- cutover binary: `{}`.", r.cutover_bin.display());
    if let Some(head) = git_head() {
        let changed = uncommitted_changes(&[&out.markdown, &out.charts_dir]);
        let _ = match changed.as_slice() {
            [] => writeln!(w, "- Commit: `{head}`."),
            files => writeln!(
                w,
                "- Commit: `{head}` **with uncommitted changes** to {} file(s): {}.",
                files.len(),
                files
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
    }
    for (program, version) in &r.versions {
        let _ = writeln!(w, "- {program}: {version}.");
    }
    for (kind, why) in &r.skipped {
        let _ = writeln!(w, "- **{} not run**: {why}.", kind.name());
    }
    let _ = writeln!(w, "\nCommands, in order:\n\n```sh");
    for c in &out.reproduce {
        let _ = writeln!(w, "{c}");
    }
    let _ = writeln!(w, "```\n");
    setup(w, r);

    // Tables.
    closed_table(w, r, Phase::Closed1k, "Closed loop, 1 KiB JSON answers");
    for (phase, title) in [
        (Phase::Closed64k, "Closed loop, 64 KiB JSON answers"),
        (Phase::Closed256k, "Closed loop, 256 KiB JSON answers"),
    ] {
        if r.used_rounds(phase).next().is_some() {
            closed_table(w, r, phase, title);
        }
    }
    open_table(w, r);
    crowd_table(w, r);
    profiles(w, r);

    if !charts.is_empty() {
        let _ = writeln!(w, "## Charts\n");
        for c in charts {
            let l = link(&out.markdown, &c.path);
            let _ = writeln!(w, "### {}\n\n![{}]({l})\n", c.title, c.title);
        }
    }

    match &r.protocols {
        Some(Ok(p)) => {
            let _ = writeln!(w, "{}", p.to_markdown());
        }
        Some(Err(why)) => {
            let _ = writeln!(w, "## HTTP/2 and gRPC (SPEC §8)\n\nNot run: {why}.\n");
        }
        None => {}
    }
    control_plane(w, r);
    micro(w, out);
    details(w, r, clk);
    meaning(w, r);
    if !r.problems.is_empty() {
        let _ = writeln!(w, "## Problems\n");
        for p in &r.problems {
            let _ = writeln!(w, "- {p}");
        }
        let _ = writeln!(w);
    }
    md
}

fn noise_summary(w: &mut String, r: &SuiteReport) {
    let _ = writeln!(w, "### Noise\n");
    let phases = Phase::ROUNDS;
    let mut lines = Vec::new();
    for p in phases {
        let all: Vec<_> = r.rounds.iter().filter(|x| x.phase == p).collect();
        if all.is_empty() {
            continue;
        }
        let disturbed = all.iter().filter(|x| x.disturbed()).count();
        let used = all.iter().filter(|x| x.used).count();
        let mut line = format!(
            "- {}: {} round(s) run, {disturbed} disturbed, {used} used for the medians",
            p.name(),
            all.len()
        );
        if r.all_disturbed(p) {
            line += " — **every round was disturbed: these numbers are noisy, re-run on a quiet machine**";
        }
        lines.push(line);
    }
    let crowd_noisy = r.crowd.iter().filter(|x| !x.noise.is_empty()).count();
    if !r.crowd.is_empty() {
        lines.push(format!(
            "- crowd: {} run(s), {crowd_noisy} disturbed",
            r.crowd.len()
        ));
    }
    let max_steal = r.runs().map(Run::steal_share).fold(0.0, f64::max);
    let max_others = r
        .runs()
        .map(|x| x.others_cores(r.clk_tck))
        .fold(0.0, f64::max);
    let saturated = r
        .runs()
        .filter(|x| x.notes.iter().any(|n| n.contains("generator")))
        .count();
    lines.push(format!(
        "- Worst run: hypervisor steal {:.1} % (limit {:.0} %), other processes {:.2} cores \
         (limit {:.2}); runs with the generator near saturation (flag only): {saturated}.",
        max_steal * 100.0,
        r.options.limits.steal * 100.0,
        max_others,
        r.options.limits.others_cores
    ));
    let slower = r
        .runs()
        .filter(|x| x.notes.iter().any(|n| n.starts_with("machine slower")))
        .count();
    lines.push(format!(
        "- Runs made while the machine itself was slower (flag only: the backend needed more \
         than {}× the CPU per request of the same target's best run in the phase; a busy \
         neighbour on the host that steal does not show): {slower}. The `×nginx` ratios are \
         taken within a round, so they are less affected than the absolute numbers.",
        crate::suite::SLOW_MACHINE_RATIO
    ));
    for l in lines {
        let _ = writeln!(w, "{l}");
    }
    let _ = writeln!(w);
}

fn setup(w: &mut String, r: &SuiteReport) {
    let o = &r.options;
    let _ = writeln!(w, "### Setup\n");
    let _ = writeln!(
        w,
        "- Backend: `cutover-bench backend`, one process, one thread, hyper HTTP/1.1; listener \
         **a** answers fixed JSON documents of exactly 1,024, 65,536 and 262,144 bytes; listener **b** \
         (shadow / mirror target) answers the same documents with their keys in another order \
         (same length, other bytes), so every JSON comparison parses both bodies and finds no \
         divergence."
    );
    for k in &r.targets {
        let _ = writeln!(w, "- `{}`: {}.", k.name(), k.setup());
    }
    let _ = writeln!(
        w,
        "- Load: HTTP/1.1 keep-alive GETs from `cutover-bench` itself (hyper client, one request \
         in flight per connection). Closed loop: {} connections, {:?} per run (64 and 256 KiB: {}). \
         Open loop: {}. Crowd: {}.",
        o.closed.connections,
        o.closed.duration,
        o.large
            .map_or("not run".into(), |s| format!("{:?} per run", s.duration)),
        match (&o.open, &r.open_rate) {
            (Some(s), Some((rate, basis))) => format!(
                "{rate:.0} req/s ({basis}) spread over {} connections, {:?} per run",
                s.connections, s.duration
            ),
            _ => "not run".into(),
        },
        o.crowd.map_or("not run".into(), |s| format!(
            "{} connections, {:?}, against every proxy",
            s.connections, s.duration
        )),
    );
    let _ = writeln!(
        w,
        "- Rounds: {} per phase, targets interleaved in the order above within each round; a \
         disturbed round is repeated (at most {} extra per phase) and left out of the medians \
         when undisturbed ones exist. An unmeasured warm-up precedes each phase.\n",
        o.rounds, o.max_repeats
    );
}

fn closed_table(w: &mut String, r: &SuiteReport, phase: Phase, title: &str) {
    let clk = r.clk_tck;
    let cpu = move |x: &Run| x.cpu_us_per_request(clk);
    let rps = |x: &Run| Some(x.requests_per_second());
    let _ = writeln!(w, "## {title}\n");
    let _ = writeln!(
        w,
        "Medians over {} used rounds; `×direct` and `×nginx` are medians of ratios taken within \
         each round.\n",
        r.used_rounds(phase).count()
    );
    let _ = writeln!(
        w,
        "| target | req/s | ×direct | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/req | ×nginx CPU \
         | backend CPU µs/req | new upstream conns/req | peak RSS MiB | errors |"
    );
    let _ = writeln!(w, "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for &k in &r.targets {
        let errors: u64 = r
            .used_rounds(phase)
            .filter_map(|x| x.run(k))
            .map(|x| x.errors)
            .sum();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.name(),
            r.median(phase, k, rps)
                .map_or("-".into(), |v| format!("{v:.0}")),
            x2(r.median_ratio(phase, k, TargetKind::Direct, rps)),
            f3(r.median(phase, k, |x| x.percentile_ms(50.0))),
            f3(r.median(phase, k, |x| x.percentile_ms(99.0))),
            f3(r.median(phase, k, |x| x.percentile_ms(99.9))),
            f1(r.median(phase, k, cpu)),
            x2(r.median_ratio(phase, k, TargetKind::Nginx, cpu)),
            f1(r.median(phase, k, |x| x.backend_us_per_request(clk))),
            f3(r.median(phase, k, Run::upstream_opens_per_request)),
            f1(r.median(phase, k, |x| x.peak_rss_kib.map(|v| v as f64 / 1024.0))),
            errors
        );
    }
    let _ = writeln!(w);
}

fn open_table(w: &mut String, r: &SuiteReport) {
    let phase = Phase::Open1k;
    if r.used_rounds(phase).next().is_none() {
        return;
    }
    let clk = r.clk_tck;
    let p = |q: f64| move |x: &Run| x.percentile_ms(q);
    let _ = writeln!(w, "## Open loop, 1 KiB, fixed rate\n");
    if let Some((rate, basis)) = &r.open_rate {
        let _ = writeln!(
            w,
            "{rate:.0} req/s ({basis}). Latency is measured from each request's *intended* send \
             time, so a stall is charged to every request that queued behind it. A target that \
             cannot keep up stops being sent to shortly after the schedule ends: the requests \
             still waiting are `unsent`, counted in the latency with their waiting time so far \
             (a lower bound). Medians over {} used rounds.\n",
            r.used_rounds(phase).count()
        );
    }
    let _ = writeln!(
        w,
        "| target | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p99 ×nginx | proxy CPU \
         µs/req | ×nginx CPU | new upstream conns/req | send lag p99 µs | unsent | errors |"
    );
    let _ = writeln!(
        w,
        "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for &k in &r.targets {
        let errors: u64 = r
            .used_rounds(phase)
            .filter_map(|x| x.run(k))
            .map(|x| x.errors)
            .sum();
        let unsent: u64 = r
            .used_rounds(phase)
            .filter_map(|x| x.run(k))
            .map(|x| x.unsent)
            .sum();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.name(),
            r.median(phase, k, |x| Some(x.requests_per_second()))
                .map_or("-".into(), |v| format!("{v:.0}")),
            f3(r.median(phase, k, p(50.0))),
            f3(r.median(phase, k, p(90.0))),
            f3(r.median(phase, k, p(99.0))),
            f3(r.median(phase, k, p(99.9))),
            f3(r.median(phase, k, p(100.0))),
            x2(r.median_ratio(phase, k, TargetKind::Nginx, p(99.0))),
            f1(r.median(phase, k, |x| x.cpu_us_per_request(clk))),
            x2(r.median_ratio(phase, k, TargetKind::Nginx, |x| x.cpu_us_per_request(clk))),
            f3(r.median(phase, k, Run::upstream_opens_per_request)),
            r.median(phase, k, |x| x.send_lag_p99_us.map(|v| v as f64))
                .map_or("-".into(), |v| format!("{v:.0}")),
            unsent,
            errors
        );
    }
    let _ = writeln!(w);
}

fn crowd_table(w: &mut String, r: &SuiteReport) {
    if r.crowd.is_empty() {
        return;
    }
    let connections = r.options.crowd.map_or(0, |s| s.connections);
    let _ = writeln!(w, "## {connections} concurrent connections (memory)\n");
    let _ = writeln!(
        w,
        "One closed-loop run per proxy with {connections} connections (1 KiB). Peak RSS is the \
         processes' high-water mark (`VmHWM`, summed over nginx's master and worker) during the \
         run: it is reset to the current RSS as the run starts (`clear_refs`), so memory kept \
         from earlier phases counts, their own peaks do not; RSS at start is that memory, read \
         as the load starts. Peak over life is the high-water mark since the process started \
         (every earlier phase, 256 KiB answers included).\n"
    );
    let _ = writeln!(
        w,
        "| target | req/s | p99 ms | proxy CPU µs/req | RSS at start MiB | peak RSS MiB | peak over life MiB | RSS after MiB | new upstream conns | errors |"
    );
    let _ = writeln!(w, "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for x in &r.crowd {
        let _ = writeln!(
            w,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            x.target.name(),
            x.requests_per_second(),
            f3(x.percentile_ms(99.0)),
            f1(x.cpu_us_per_request(r.clk_tck)),
            f1(x.rss_start_kib.map(|v| v as f64 / 1024.0)),
            f1(x.peak_rss_kib.map(|v| v as f64 / 1024.0)),
            f1(x.life_peak_rss_kib.map(|v| v as f64 / 1024.0)),
            f1(x.rss_kib.map(|v| v as f64 / 1024.0)),
            x.upstream_opens().map_or("-".into(), |v| v.to_string()),
            x.errors
        );
    }
    let _ = writeln!(w);
}

/// The perf profiles of [`crate::profile`], or why each is missing.
fn profiles(w: &mut String, r: &SuiteReport) {
    let Some(o) = &r.options.profile else {
        return;
    };
    if r.profiles.is_empty() {
        return;
    }
    let _ = writeln!(w, "## Where the CPU goes (perf)\n");
    let _ = writeln!(
        w,
        "One more closed-loop run per profile after the measured ones ({} ms, the phase's \
         connections), recorded by `perf record -e cpu-clock -F {} -p <the target's \
         processes> -- sleep <the run>` and read by `perf {}`. Shares are of the target's \
         samples; kernel functions are marked `[k]` by perf. {}\n",
        o.duration.as_millis(),
        o.frequency,
        crate::profile::REPORT_ARGS.join(" "),
        paranoia()
    );
    for (phase, kind, profile) in &r.profiles {
        match profile {
            Ok(p) => {
                let _ = write!(w, "{}", p.to_markdown(o.top));
            }
            Err(why) => {
                let _ = writeln!(
                    w,
                    "### {}, {}\n\nNot profiled: {why}.\n",
                    kind.name(),
                    phase.name()
                );
            }
        }
    }
}

/// Whether perf could see the kernel's functions: root, or `perf_event_paranoid` at most 1.
fn paranoia() -> String {
    let level = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok());
    // The effective user id, the second of /proc/self/status's `Uid:` line.
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let ids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            Some(ids.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false);
    match level {
        Some(l) if l > 1 && !root => format!(
            "**Kernel samples are missing**: `perf_event_paranoid` is {l} and the harness is \
             not root, so the shares are of user-space time only."
        ),
        Some(l) => format!(
            "`perf_event_paranoid` {l}{}.",
            if root { ", run as root" } else { "" }
        ),
        None => "`perf_event_paranoid` unreadable.".into(),
    }
}

fn control_plane(w: &mut String, r: &SuiteReport) {
    let _ = writeln!(w, "## Control plane\n");
    for c in &r.control_plane {
        match c {
            ControlPlane::Propagation(Ok(p)) => {
                // The scenario's own report, one heading level down.
                let text = p.to_markdown("cutover-bench report (propagation scenario)");
                let _ = writeln!(w, "#{text}");
            }
            ControlPlane::Propagation(Err(why)) => {
                let _ = writeln!(
                    w,
                    "### Propagation (etcd put → traffic follows)\n\nNot run: {why}.\n"
                );
            }
            ControlPlane::FaultRollback(Ok(t)) => {
                let _ = writeln!(w, "### Fault → automatic rollback\n\n{}", t.to_markdown());
            }
            ControlPlane::FaultRollback(Err(why)) => {
                let _ = writeln!(w, "### Fault → automatic rollback\n\nNot run: {why}.\n");
            }
            ControlPlane::Judgement(Ok(j)) => {
                let _ = writeln!(
                    w,
                    "### Judgement: false and missed rollbacks\n\n{}",
                    j.to_markdown()
                );
            }
            ControlPlane::Judgement(Err(why)) => {
                let _ = writeln!(
                    w,
                    "### Judgement: false and missed rollbacks\n\nNot run: {why}.\n"
                );
            }
        }
    }
}

fn micro(w: &mut String, out: &Output) {
    let _ = writeln!(w, "## Micro-benchmarks (criterion)\n");
    if out.micro.is_empty() {
        let _ = writeln!(
            w,
            "Not part of `make bench` (their optimised build with criterion takes minutes of the \
             10-minute budget). Run them with `cargo bench -p cutover-bench --bench routing \
             --bench split --bench compare --bench window` (route lookup, split choice, JSON \
             comparison, window statistics); \
             `cutover-bench report --criterion-dir target/criterion` then includes the \
             results.\n"
        );
        return;
    }
    if let Some(d) = &out.micro_dir {
        let _ = writeln!(
            w,
            "Mean time per call with its 95 % confidence interval, read from `{}` (written by \
             `cargo bench -p cutover-bench`; check that it ran just before this report).\n",
            d.display()
        );
    }
    let _ = writeln!(w, "| benchmark | mean | 95 % CI |\n|:--|--:|--:|");
    for m in &out.micro {
        let _ = writeln!(
            w,
            "| {} | {} | {} – {} |",
            m.id,
            ns(m.mean_ns),
            ns(m.low_ns),
            ns(m.high_ns)
        );
    }
    let _ = writeln!(w);
}

fn ns(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.2} ms", v / 1_000_000.0)
    } else if v >= 1000.0 {
        format!("{:.2} µs", v / 1000.0)
    } else {
        format!("{v:.1} ns")
    }
}

fn details(w: &mut String, r: &SuiteReport, clk: u64) {
    let _ = writeln!(w, "## Every run\n");
    let _ = writeln!(
        w,
        "<details><summary>{} runs with their noise columns</summary>\n",
        r.runs().count()
    );
    let _ = writeln!(
        w,
        "`steal` = hypervisor steal over the run's window; `others` = CPU of every process but the \
         generator, backend and proxies (cores); `gen` = the generator's CPU (cores); `opens` = \
         `/proc/net/snmp` ActiveOpens growth minus the generator's and harness's own connections; \
         `accepts a/b` = connections the backend's listeners accepted (exact); `b reqs` = requests \
         at backend b (shadow copies, mirrors).\n"
    );
    let _ = writeln!(
        w,
        "| phase | round | used | target | requests | errors | req/s | p99 ms | proxy µs/req | steal % | others | gen | opens | accepts a/b | b reqs | flags |"
    );
    let _ = writeln!(
        w,
        "|:--|--:|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|:--|"
    );
    let rows = r
        .rounds
        .iter()
        .flat_map(|round| round.runs.iter().map(move |x| (Some(round.used), x)))
        .chain(r.crowd.iter().map(|x| (None, x)));
    for (used, x) in rows {
        let flags: Vec<String> = x.noise.iter().chain(x.notes.iter()).cloned().collect();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.1} | {:.2} | {:.2} | {} | {}/{} | {} | {} |",
            x.phase.name(),
            x.round,
            match used {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            x.target.name(),
            x.requests(),
            x.errors,
            x.requests_per_second(),
            f3(x.percentile_ms(99.0)),
            f1(x.cpu_us_per_request(clk)),
            x.steal_share() * 100.0,
            x.others_cores(clk),
            x.generator_cores(clk),
            x.upstream_opens().map_or("-".into(), |v| v.to_string()),
            x.backend.a.accepted,
            x.backend.b.accepted,
            x.backend.b.requests,
            flags.join("; ")
        );
    }
    let _ = writeln!(w, "\n</details>\n");
}

fn meaning(w: &mut String, r: &SuiteReport) {
    let resolution = r
        .used_rounds(Phase::Closed1k)
        .flat_map(|x| x.runs.iter())
        .map(Run::requests)
        .min()
        .filter(|&n| n > 0)
        .map(|n| 1e6 / r.clk_tck.max(1) as f64 / n as f64);
    let _ = writeln!(w, "## What the numbers mean\n");
    let _ = writeln!(
        w,
        "- **Proxy CPU µs/req**: utime + stime of the proxy's processes (nginx: master + \
         worker) from `/proc/<pid>/stat` over the run's window, divided by the requests of the \
         run. The window starts when every process is quiet and ends when the proxy is quiet \
         again and, for shadowing / mirroring targets, when the copies have reached backend b, \
         so asynchronous work is inside it. Resolution: one clock tick ({} ms){}. The backend \
         and the generator are not counted.",
        1000 / r.clk_tck.max(1),
        resolution.map_or(String::new(), |v| format!(
            ", i.e. ±{v:.2} µs/req on the smallest closed-loop run"
        ))
    );
    let _ = writeln!(
        w,
        "- **Closed loop** measures the most the single proxy thread can do while sharing one \
         CPU with the backend: req/s and CPU/request are its cost; its latency is mostly \
         queueing. **Open loop** sends at a fixed rate, as real clients do, and is the latency \
         to compare: measured from the intended send time (no coordinated omission)."
    );
    let _ = writeln!(
        w,
        "- **Ratios** (`×direct`, `×nginx`) are taken within a round (targets of one round ran \
         seconds apart) and their median reported, so drift of the machine between rounds \
         cancels out."
    );
    let _ = writeln!(
        w,
        "- **New upstream conns/req**: TCP connections the machine opened during the run \
         (`/proc/net/snmp` ActiveOpens) minus the generator's and the harness's own: the \
         proxy's new connections to backends. ~0 means pooled keep-alive connections are \
         reused; ~1 means a new connection per request (nginx's `mirror` subrequests). Other \
         processes opening connections show here too; the backend's exact accept counts are \
         in [Every run](#every-run)."
    );
    let _ = writeln!(
        w,
        "- **Noise**: a run is *disturbed* when hypervisor steal exceeds {:.0} % of the \
         window's CPU time, other processes use more than {:.2} cores, or (open loop) the \
         generator sent late (p99 > {} µs); its round is repeated. A closed-loop generator \
         above {:.0} % of its CPU is flagged (the client may be the bottleneck there, typically \
         for `direct`), not repeated.",
        r.options.limits.steal * 100.0,
        r.options.limits.others_cores,
        r.options.limits.send_lag_p99_us,
        r.options.limits.generator_cores * 100.0
    );
    let _ = writeln!(
        w,
        "- **Peak RSS** is `VmHWM` of `/proc/<pid>/status`: the high-water mark since the \
         process started, except in the crowd run, where it is reset to the current RSS as the \
         run starts (`5` to `/proc/<pid>/clear_refs`) and so is the run's own.\n"
    );
}

/// Writes the charts and the Markdown file; returns the problems met (the file is written
/// anyway).
pub fn write(r: &SuiteReport, out: &Output) -> Result<Vec<String>, String> {
    let (charts, problems) = write_charts(r, out);
    let md = markdown(r, out, &charts);
    if let Some(dir) = out.markdown.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    std::fs::write(&out.markdown, md)
        .map_err(|e| format!("write {}: {e}", out.markdown.display()))?;
    Ok(problems)
}

/// One line per goal, for the terminal.
pub fn summary(r: &SuiteReport) -> String {
    let mut s = String::new();
    for g in goals(r) {
        let verdict = match &g.verdict {
            Verdict::Met => "met".to_string(),
            Verdict::Missed => "MISSED".to_string(),
            Verdict::NotEvaluated(why) => format!("not evaluated ({why})"),
        };
        let _ = writeln!(s, "{}: {} — {verdict}", g.name, g.measured);
    }
    let noisy: Vec<&str> = Phase::ROUNDS
        .into_iter()
        .filter(|&p| r.all_disturbed(p))
        .map(Phase::name)
        .collect();
    if !noisy.is_empty() {
        let _ = writeln!(
            s,
            "every round disturbed in: {} (numbers are noisy)",
            noisy.join(", ")
        );
    }
    s
}

/// The first line of `git rev-parse --short HEAD` in the current directory, if any.
pub fn git_head() -> Option<String> {
    sys::first_line_of(Path::new("git"), &["rev-parse", "--short", "HEAD"])
        .filter(|s| !s.is_empty() && !s.contains(' '))
}

/// Tracked files that differ from `HEAD` (`git status`), relative to the repository's root,
/// leaving out the report's own outputs (`outputs`: files or directories), which the run
/// rewrites. Empty when there are none, or outside a git checkout.
fn uncommitted_changes(outputs: &[&Path]) -> Vec<String> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (Some(root), Some(status)) = (
        git(&["rev-parse", "--show-toplevel"]),
        git(&[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "-z",
            "--untracked-files=no",
        ]),
    ) else {
        return Vec::new();
    };
    let root = Path::new(root.trim());
    let cwd = std::env::current_dir().unwrap_or_default();
    let outputs: Vec<PathBuf> = outputs.iter().map(|p| cwd.join(p)).collect();
    changed_files(&status)
        .into_iter()
        .filter(|file| !outputs.iter().any(|o| root.join(file).starts_with(o)))
        .collect()
}

/// The paths of `git status --porcelain -z` output (`XY path` entries ending in NUL, paths
/// unquoted; a rename or copy is followed by its old path, which is skipped).
fn changed_files(porcelain: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut entries = porcelain.split('\0').filter(|e| !e.is_empty());
    while let Some(entry) = entries.next() {
        let (status, path) = (entry.get(..2).unwrap_or_default(), entry.get(3..));
        files.extend(path.map(str::to_string));
        if status.contains('R') || status.contains('C') {
            entries.next();
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(ns(12.34), "12.3 ns");
        assert_eq!(ns(12_340.0), "12.34 µs");
        assert_eq!(ns(2_500_000.0), "2.50 ms");
        assert_eq!(x2(Some(0.8)), "0.80×");
        assert_eq!(f1(None), "-");
    }

    #[test]
    fn changed_files_from_git_status() {
        let porcelain = " M Makefile\0M  bench/a b.rs\0R  new.rs\0old.rs\0 M x -> y.md\0";
        assert_eq!(
            changed_files(porcelain),
            vec!["Makefile", "bench/a b.rs", "new.rs", "x -> y.md"]
        );
        assert!(changed_files("").is_empty());
    }

    #[test]
    fn links_are_relative_below_the_markdown() {
        assert_eq!(
            link(Path::new("BENCHMARKS.md"), Path::new("bench/reports/a.svg")),
            "bench/reports/a.svg"
        );
        assert_eq!(
            link(Path::new("/tmp/x/R.md"), Path::new("/tmp/x/reports/a.svg")),
            "reports/a.svg"
        );
        assert_eq!(
            link(Path::new("/tmp/x/R.md"), Path::new("/elsewhere/a.svg")),
            "/elsewhere/a.svg"
        );
    }

    #[test]
    fn reads_criterion_estimates() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("split/weighted_random/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"full_id":"split/weighted_random"}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":12.5,"confidence_interval":{"lower_bound":12.0,"upper_bound":13.0}}}"#,
        )
        .unwrap();
        let found = read_criterion(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, "split/weighted_random");
        assert_eq!(found[0].mean_ns, 12.5);
    }
}
