//! The shadow-cost scenario: how much proxy CPU a request costs when it is also shadowed and
//! the two answers are compared as JSON, against the same request without shadowing.
//!
//! It starts a `legacy` and a `new` backend (the test harness's fakes, answering one identical
//! JSON document of about 1 KiB on every path) and two instances of the real `cutover` binary
//! over them, all on loopback: **A** with `weights = {legacy = 100, new = 0, shadow = 0}`, **B**
//! with `shadow = 100` and `compare = { body = "json" }`. After an unmeasured warm-up of each,
//! it runs the same closed-loop load (`connections` connections, `requests` requests) against
//! A, then B, for `rounds` rounds, and reads the proxy process's CPU time (utime + stime from
//! `/proc/<pid>/stat`, in clock ticks) before and after each run. For B the "after" is taken
//! once every copy of the run has reached `new` and been compared (bounded wait), so the
//! asynchronous shadow work is inside the measurement. The result is CPU µs per request for A
//! and B per round, their medians, and the ratio B/A (target ≤ 2).
//!
//! ```no_run
//! # async fn demo() {
//! use cutover_bench::shadow_cost::{run, ShadowCostOptions};
//! let report = run(&ShadowCostOptions { requests: 300, ..Default::default() }).await;
//! println!("{}", report.to_markdown("example"));
//! # }
//! ```
//!
//! Linux only (it reads `/proc`). The binary is the test harness's: `$CUTOVER_BIN`, else
//! `<target dir>/debug/cutover` (built when missing) — measure a release build by pointing
//! `CUTOVER_BIN` at `target/release/cutover`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cutover_tests::{cutover_bin, Backend, Proxy, ProxyConfig, Route, RunningBackend};

use crate::suite::{median, quiesce, QUIET_INTERVAL};
use crate::{run_closed_loop, ClosedLoop};

/// The route both proxies serve.
pub const ROUTE: &str = "bench";
/// The path every request goes to.
const PATH: &str = "/bench/items";
/// Bound for the copies of one B run to arrive and be compared after its last answer.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// B's settle wait stops when no copy arrived for this long.
const STALL_TIMEOUT: Duration = Duration::from_millis(500);
/// A process is quiet when it used at most one clock tick over this long.
/// Bound for the proxies to go quiet around a run.
const QUIET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long each proxy's idle CPU burn is measured before the rounds.
const IDLE_PROBE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct ShadowCostOptions {
    /// Requests per run (each round runs A and B once).
    pub requests: u64,
    /// Concurrent connections of the closed loop.
    pub connections: usize,
    /// Rounds of A then B.
    pub rounds: usize,
    /// Upper bound for one run; a run that hits it reports fewer requests.
    pub run_timeout: Duration,
    /// Size of the JSON document the backends answer.
    pub body_bytes: usize,
}

impl Default for ShadowCostOptions {
    fn default() -> Self {
        ShadowCostOptions {
            requests: 20_000,
            connections: 8,
            rounds: 3,
            run_timeout: Duration::from_secs(120),
            body_bytes: 1024,
        }
    }
}

/// Which proxy a run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `shadow = 0`.
    A,
    /// `shadow = 100`, `compare.body = "json"`.
    B,
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Variant::A => "A (shadow 0)",
            Variant::B => "B (shadow 100, compare json)",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Run {
    /// 1-based.
    pub round: usize,
    pub variant: Variant,
    /// Answers below 500.
    pub ok: u64,
    /// 5xx answers and requests without an answer.
    pub errors: u64,
    /// Wall time of the load (not of the settle wait).
    pub elapsed: Duration,
    /// utime + stime of the proxy process over the run, in clock ticks.
    pub cpu_ticks: u64,
    /// Shadow copies `new` received during the run (B only; 0 for A).
    pub copies: usize,
    /// Growth of `cutover_comparisons_total` during the run.
    pub comparisons: f64,
    /// TCP connections `new` accepted during the run (B only): shows whether the shadow
    /// client reuses connections.
    pub new_connections: usize,
}

impl Run {
    pub fn requests(&self) -> u64 {
        self.ok + self.errors
    }

    pub fn requests_per_second(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Proxy CPU time of the run in ms.
    pub fn cpu_ms(&self, clk_tck: u64) -> f64 {
        self.cpu_ticks as f64 * 1000.0 / clk_tck.max(1) as f64
    }

    /// Proxy CPU µs per request; `None` without requests.
    pub fn cpu_us_per_request(&self, clk_tck: u64) -> Option<f64> {
        (self.requests() > 0).then(|| self.cpu_ms(clk_tck) * 1000.0 / self.requests() as f64)
    }
}

/// What happened.
#[derive(Debug)]
pub struct ShadowCostReport {
    /// The `cutover` binary measured.
    pub binary: PathBuf,
    pub options: ShadowCostOptions,
    /// Clock ticks per second used to convert `/proc/<pid>/stat` times.
    pub clk_tck: u64,
    /// Where `clk_tck` came from: `getconf CLK_TCK` or an assumption.
    pub clk_tck_source: String,
    /// Measured runs in order: round 1 A, round 1 B, round 2 A, …
    pub runs: Vec<Run>,
    /// CPU ms per second each proxy (A, B) used while idle, measured over a short probe
    /// before the rounds: background work that every run includes in proportion to its
    /// duration (reported, not subtracted).
    pub idle_cpu_ms_per_s: [Option<f64>; 2],
    /// Problems that make the numbers doubtful (a run that did not settle, a failed read).
    pub problems: Vec<String>,
}

impl ShadowCostReport {
    pub fn runs_of(&self, variant: Variant) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(move |r| r.variant == variant)
    }

    /// Every planned run was measured.
    pub fn completed(&self) -> bool {
        let per_variant = |v| self.runs_of(v).count();
        per_variant(Variant::A) == self.options.rounds
            && per_variant(Variant::B) == self.options.rounds
            && self
                .runs
                .iter()
                .all(|r| r.requests() == self.options.requests)
    }

    /// Errors over all runs.
    pub fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.errors).sum()
    }

    /// Median CPU µs per request of `variant`'s runs.
    pub fn median_cpu_us_per_request(&self, variant: Variant) -> Option<f64> {
        median(
            self.runs_of(variant)
                .filter_map(|r| r.cpu_us_per_request(self.clk_tck))
                .collect(),
        )
    }

    /// Median req/s of `variant`'s runs.
    pub fn median_requests_per_second(&self, variant: Variant) -> Option<f64> {
        median(
            self.runs_of(variant)
                .map(Run::requests_per_second)
                .collect(),
        )
    }

    /// Median CPU per request of B over that of A (infinite when A used no measurable CPU).
    pub fn ratio(&self) -> Option<f64> {
        let a = self.median_cpu_us_per_request(Variant::A)?;
        let b = self.median_cpu_us_per_request(Variant::B)?;
        Some(b / a)
    }

    /// The report as Markdown: command line, per-run table, medians and ratio, setup, problems.
    pub fn to_markdown(&self, command_line: &str) -> String {
        let f1 = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let mut out = String::new();
        out.push_str(
            "## cutover shadow cost: proxy CPU per request, shadow 0 (A) vs shadow 100 + JSON compare (B)\n\n",
        );
        out.push_str(&format!("Command: `{command_line}`\n\n"));
        out.push_str("| round | proxy | requests | errors | req/s | proxy CPU ms | CPU µs/req | copies at new | conns at new | comparisons |\n");
        out.push_str("|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.runs {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} |\n",
                r.round,
                r.variant.label(),
                r.requests(),
                r.errors,
                r.requests_per_second(),
                r.cpu_ms(self.clk_tck),
                f1(r.cpu_us_per_request(self.clk_tck)),
                r.copies,
                r.new_connections,
                r.comparisons
            ));
        }
        let ratio = self.ratio();
        let verdict = match ratio {
            Some(r) if r.is_finite() && r <= 2.0 => "within the target (≤ 2×)",
            Some(r) if r.is_finite() => "ABOVE the target (≤ 2×)",
            _ => "not measurable",
        };
        out.push_str("\n| median | cpu_per_req_A µs | cpu_per_req_B µs | ratio B/A | req/s A | req/s B | errors |\n");
        out.push_str("|:---|---:|---:|---:|---:|---:|---:|\n");
        out.push_str(&format!(
            "| {} rounds | {} | {} | {} | {} | {} | {} |\n\n",
            self.runs_of(Variant::A).count(),
            f1(self.median_cpu_us_per_request(Variant::A)),
            f1(self.median_cpu_us_per_request(Variant::B)),
            ratio.map_or("-".to_string(), |r| format!("{r:.2}")),
            f1(self.median_requests_per_second(Variant::A)),
            f1(self.median_requests_per_second(Variant::B)),
            self.errors()
        ));
        out.push_str(&format!("Ratio B/A: {verdict}.\n\n"));
        let resolution_us = 1e6 / self.clk_tck.max(1) as f64 / self.options.requests.max(1) as f64;
        out.push_str(&format!(
            "Setup: binary `{}`; two proxy processes (A, B) over one legacy and one new backend \
             answering a {}-byte JSON document, all on 127.0.0.1; closed loop, {} connections, \
             {} requests per run, {} rounds of A then B after an unmeasured warm-up of each. \
             CPU = utime + stime of the proxy process from /proc/<pid>/stat, CLK_TCK {} ({}), \
             so a run's CPU is known to ±1 tick = ±{:.1} µs/req; each run's window ends when \
             the proxy is quiet again (≤ 1 tick per {:?}) and, for B, after its copies \
             reached new (bounded by {:?}), so trailing and shadow work is inside it. Backend and load-generator \
             CPU is not counted. Idle proxy CPU (background work, included in every run in \
             proportion to its duration, not subtracted): A {} ms/s, B {} ms/s.\n",
            self.binary.display(),
            self.options.body_bytes,
            self.options.connections,
            self.options.requests,
            self.options.rounds,
            self.clk_tck,
            self.clk_tck_source,
            resolution_us,
            QUIET_INTERVAL,
            SETTLE_TIMEOUT,
            f1(self.idle_cpu_ms_per_s[0]),
            f1(self.idle_cpu_ms_per_s[1]),
        ));
        if !self.problems.is_empty() {
            out.push_str(&format!("\nProblems ({}):\n\n", self.problems.len()));
            for p in &self.problems {
                out.push_str(&format!("- {p}\n"));
            }
        }
        out
    }
}

pub use crate::sys::{clk_tck, cpu_ticks, parse_cpu_ticks};

/// One proxy under measurement.
struct Target {
    variant: Variant,
    proxy: Proxy,
    pid: u32,
}

impl Target {
    async fn start(variant: Variant, legacy: &RunningBackend, new: &RunningBackend) -> Target {
        let route = Route::new(ROUTE)
            .legacy_endpoints([legacy.addr()])
            .new_endpoints([new.addr()])
            .weights(100, 0)
            .rollback_off();
        let route = match variant {
            Variant::A => route.shadow(0),
            Variant::B => route.shadow(100).compare_block(r#"body = "json""#),
        };
        let proxy = Proxy::start(ProxyConfig::new().route(route)).await;
        let pid = proxy.pid().expect("the harness owns the proxy process");
        Target {
            variant,
            proxy,
            pid,
        }
    }

    fn load(&self, requests: u64, opts: &ShadowCostOptions) -> ClosedLoop {
        ClosedLoop {
            url: self
                .proxy
                .url(PATH)
                .parse()
                .expect("the harness builds valid URLs"),
            connections: opts.connections,
            duration: opts.run_timeout,
            max_requests: requests,
        }
    }

    async fn comparisons(&self) -> f64 {
        self.proxy
            .counter("cutover_comparisons_total", &[("route", ROUTE)])
            .await
    }
}

/// Runs the scenario. Panics (with the harness's message) only when the backends or the
/// proxies cannot be started at all; everything after that is reported.
pub async fn run(opts: &ShadowCostOptions) -> ShadowCostReport {
    let (clk_tck, clk_tck_source) = clk_tck();
    let legacy = Backend::new("legacy")
        .json_body_bytes(opts.body_bytes)
        .run()
        .await;
    let new = Backend::new("new")
        .json_body_bytes(opts.body_bytes)
        .run()
        .await;
    let targets = [
        Target::start(Variant::A, &legacy, &new).await,
        Target::start(Variant::B, &legacy, &new).await,
    ];
    let mut report = ShadowCostReport {
        binary: cutover_bin(),
        options: opts.clone(),
        clk_tck,
        clk_tck_source,
        runs: Vec::with_capacity(2 * opts.rounds),
        idle_cpu_ms_per_s: [None, None],
        problems: Vec::new(),
    };

    // Idle burn of both proxies, measured at the same time.
    let idle_before = targets.each_ref().map(|t| cpu_ticks(t.pid).ok());
    let probe_start = Instant::now();
    tokio::time::sleep(IDLE_PROBE).await;
    let probe = probe_start.elapsed().as_secs_f64();
    for (i, t) in targets.iter().enumerate() {
        report.idle_cpu_ms_per_s[i] = match (idle_before[i], cpu_ticks(t.pid).ok()) {
            (Some(a), Some(b)) => {
                Some(b.saturating_sub(a) as f64 * 1000.0 / clk_tck as f64 / probe)
            }
            _ => None,
        };
    }

    // Warm-up: connection pools, lazily built state, page cache. B's copies of it are let
    // finish before the first measurement.
    let warmup = (opts.requests / 10).clamp(1, 1000);
    let copies_before = new.count();
    let mut warm_ok = 0;
    for t in &targets {
        let r = run_closed_loop(&t.load(warmup, opts)).await;
        if t.variant == Variant::B {
            warm_ok = r.ok;
        }
        if r.errors > 0 {
            report.problems.push(format!(
                "warm-up of {}: {} of {} requests failed",
                t.variant.label(),
                r.errors,
                r.ok + r.errors
            ));
        }
    }
    settle(&new, copies_before + warm_ok as usize).await;

    let pids = targets.each_ref().map(|t| t.pid);
    for round in 1..=opts.rounds {
        for t in &targets {
            match measure(t, round, &new, &pids, opts).await {
                Ok((run, problems)) => {
                    report.problems.extend(problems);
                    report.runs.push(run);
                }
                Err(e) => report
                    .problems
                    .push(format!("round {round} {}: {e}", t.variant.label())),
            }
        }
    }
    drop(targets);
    report
}

/// One measured run against `t`. Both proxies are let go quiet first (so the other one's
/// trailing work does not compete with this run), and `t` again after the run (so this run's
/// trailing work — closing connections, late shadow copies and comparisons — is counted).
async fn measure(
    t: &Target,
    round: usize,
    new: &RunningBackend,
    pids: &[u32],
    opts: &ShadowCostOptions,
) -> Result<(Run, Vec<String>), String> {
    let mut problems = Vec::new();
    if !quiesce(pids, QUIET_INTERVAL, QUIET_TIMEOUT).await {
        problems.push(format!(
            "round {round} {}: the proxies did not go quiet within {QUIET_TIMEOUT:?} before the run",
            t.variant.label()
        ));
    }
    let copies_before = new.count();
    let connections_before = new.connections();
    let comparisons_before = t.comparisons().await;
    let ticks_before = cpu_ticks(t.pid)?;
    let load = run_closed_loop(&t.load(opts.requests, opts)).await;
    if t.variant == Variant::B {
        settle(new, copies_before + load.ok as usize).await;
    }
    if !quiesce(&[t.pid], QUIET_INTERVAL, QUIET_TIMEOUT).await {
        problems.push(format!(
            "round {round} {}: the proxy did not go quiet within {QUIET_TIMEOUT:?} after the run",
            t.variant.label()
        ));
    }
    let ticks_after = cpu_ticks(t.pid)?;
    // Read after the measurement window, so neither variant pays for scrapes inside it.
    let copies = new.count() - copies_before;
    let comparisons = t.comparisons().await - comparisons_before;
    if t.variant == Variant::B && ((copies as u64) < load.ok || comparisons < load.ok as f64) {
        problems.push(format!(
            "round {round} B: {copies} copies at new and {comparisons} comparisons for {} answered requests; B's CPU misses shadow work (is shadowing enabled in this binary?)",
            load.ok
        ));
    }
    Ok((
        Run {
            round,
            variant: t.variant,
            ok: load.ok,
            errors: load.errors,
            elapsed: load.elapsed,
            cpu_ticks: ticks_after.saturating_sub(ticks_before),
            copies: if t.variant == Variant::A { 0 } else { copies },
            comparisons,
            new_connections: if t.variant == Variant::A {
                0
            } else {
                new.connections() - connections_before
            },
        },
        problems,
    ))
}

/// Waits (≤ [`SETTLE_TIMEOUT`]) until `new` has received `copies` requests in total, or no
/// copy arrived for [`STALL_TIMEOUT`] (shadowing off or broken: an idle proxy still burns a
/// little CPU, which would otherwise be charged to B). Polls only the in-process backend, so
/// the wait costs the proxy nothing; the comparisons that follow the copies' answers are
/// caught by the quiet wait after it.
async fn settle(new: &RunningBackend, copies: usize) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let (mut seen, mut progress_at) = (new.count(), Instant::now());
    while new.count() < copies && Instant::now() < deadline {
        if new.count() != seen {
            (seen, progress_at) = (new.count(), Instant::now());
        } else if progress_at.elapsed() > STALL_TIMEOUT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_of_medians() {
        let run = |round, variant, cpu_ticks| Run {
            round,
            variant,
            ok: 1000,
            errors: 0,
            elapsed: Duration::from_secs(1),
            cpu_ticks,
            copies: 0,
            comparisons: 0.0,
            new_connections: 0,
        };
        let report = ShadowCostReport {
            binary: PathBuf::from("cutover"),
            options: ShadowCostOptions {
                requests: 1000,
                rounds: 3,
                ..Default::default()
            },
            clk_tck: 100,
            clk_tck_source: "test".into(),
            runs: vec![
                run(1, Variant::A, 10),
                run(1, Variant::B, 15),
                run(2, Variant::A, 12),
                run(2, Variant::B, 30),
                run(3, Variant::A, 11),
                run(3, Variant::B, 16),
            ],
            idle_cpu_ms_per_s: [Some(2.0), None],
            problems: vec![],
        };
        assert!(report.completed());
        // 11 ticks = 110 ms over 1000 requests = 110 µs/req; B's median 16 ticks = 160.
        assert_eq!(report.median_cpu_us_per_request(Variant::A), Some(110.0));
        assert_eq!(report.median_cpu_us_per_request(Variant::B), Some(160.0));
        let ratio = report.ratio().unwrap();
        assert!((ratio - 160.0 / 110.0).abs() < 1e-9);
        let md = report.to_markdown("cutover-bench shadow-cost");
        assert!(md.contains("within the target"), "{md}");
        assert!(md.contains("`cutover-bench shadow-cost`"), "{md}");
    }
}
