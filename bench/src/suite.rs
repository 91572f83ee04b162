//! The standard benchmark: every target (see [`crate::targets`]) under the same load, in
//! interleaved rounds (A B C … A B C …), with the proxy's CPU per request, peak memory, new
//! upstream connections and errors measured for each run, and the machine's noise (hypervisor
//! steal, other processes, the load generator itself) recorded so a disturbed round is
//! repeated or flagged.
//!
//! Phases, in order:
//! 1. warm-up of every target (unmeasured);
//! 2. closed loop, 1 KiB answers ([`Phase::Closed1k`]) — max throughput, CPU per request;
//! 3. closed loop, 64 KiB and 256 KiB answers ([`Phase::Closed64k`], [`Phase::Closed256k`]:
//!    how the cost grows with the body, comparisons most of all);
//! 4. open loop, 1 KiB, at a fixed rate: half of nginx's median closed-loop throughput (or of
//!    cutover's when nginx is not installed), latency from the intended send time
//!    ([`Phase::Open1k`]);
//! 5. 1,000 concurrent connections against every proxy, for peak RSS ([`Phase::Crowd`]);
//! 6. control-plane scenarios: [`crate::propagation`] when etcd is installed,
//!    [`crate::rollback_time`] (fault → no more live traffic to `new`) and a short
//!    [`crate::judgement`] (false and missed rollbacks: each rule's detection, an A/A run).
//!
//! Pinning: the load generator (this process) runs on one CPU, the backend and every proxy
//! (each single-threaded) on another, so the generator never competes with what it measures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use crate::backend::{BackendCounts, BackendOptions, BackendProcess};
use crate::backend::{BODY_1K_PATH, BODY_256K_PATH, BODY_64K_PATH};
use crate::judgement::{self, JudgementOptions, JudgementReport};
use crate::load::{histogram, run_closed_loop, run_open_loop, ClosedLoop, OpenLoop, Report};
use crate::profile::{self, Profile, ProfileOptions};
use crate::propagation::{self, PropagationOptions, PropagationReport};
use crate::protocols::{ProtocolOptions, ProtocolReport};
use crate::rollback_time::{self, RollbackTimeOptions, RollbackTimeReport};
use crate::sys::{self, CpuTimes, Machine};
use crate::targets::{RunningTarget, TargetKind};
use crate::ui::Progress;

/// A process is quiet when it used at most one clock tick over this long (the standard run's
/// [`SuiteOptions::quiet`], and the shadow-cost scenario's).
pub const QUIET_INTERVAL: Duration = Duration::from_millis(200);
/// The standard run's quiet interval.
const SUITE_QUIET_INTERVAL: Duration = Duration::from_millis(100);
/// Bound for the processes to go quiet around a run.
const QUIET_TIMEOUT: Duration = Duration::from_secs(3);
/// Time given to `perf record` to attach to a target's threads before the profiled load.
const PERF_ATTACH: Duration = Duration::from_millis(300);
/// Bound for the copies of a run to reach backend b after its last answer.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The settle wait ends early when no copy arrived for this long.
const STALL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the settle wait asks the backend for its counts.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// Closed-loop load of one phase.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    pub connections: usize,
    pub duration: Duration,
    pub max_requests: u64,
}

/// Open-loop load of the open phase.
#[derive(Debug, Clone, Copy)]
pub struct OpenShape {
    pub connections: usize,
    pub duration: Duration,
    /// The rate as a share of nginx's (else cutover's) median closed-loop 1 KiB throughput.
    pub fraction: f64,
}

/// Which CPUs the generator and the servers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinning {
    pub generator_cpu: usize,
    pub servers_cpu: usize,
}

/// Above these a run counts as disturbed (its round is repeated) or flagged.
#[derive(Debug, Clone, Copy)]
pub struct NoiseLimits {
    /// Hypervisor steal, as a share of all CPU time of the window.
    pub steal: f64,
    /// CPU used by processes other than the generator, backend and proxies, in cores.
    pub others_cores: f64,
    /// Generator CPU in a closed loop, in cores (flag only: the client may be the bottleneck).
    pub generator_cores: f64,
    /// Open loop: 99th percentile of how late the generator sent, in µs.
    pub send_lag_p99_us: u64,
}

impl Default for NoiseLimits {
    fn default() -> Self {
        NoiseLimits {
            steal: 0.05,
            others_cores: 0.10,
            generator_cores: 0.95,
            send_lag_p99_us: 1000,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// The `cutover-bench` binary, started as `cutover-bench backend`.
    pub bench_bin: PathBuf,
    /// Targets to run; nginx / HAProxy ones are skipped (and said so) when not installed.
    pub targets: Vec<TargetKind>,
    /// Rounds wanted per phase.
    pub rounds: usize,
    /// Extra rounds per phase allowed to replace disturbed ones.
    pub max_repeats: usize,
    /// Unmeasured closed loop per target before each phase.
    pub warmup: Duration,
    /// Before and after each run, every process must have used at most one clock tick over
    /// this long (bounded wait), so no run pays for another's trailing work.
    pub quiet: Duration,
    pub closed: LoadShape,
    /// The closed loops with 64 KiB and 256 KiB answers.
    pub large: Option<LoadShape>,
    pub open: Option<OpenShape>,
    /// The many-connections run (peak RSS).
    pub crowd: Option<LoadShape>,
    pub pin: Option<Pinning>,
    pub limits: NoiseLimits,
    pub backend: BackendOptions,
    /// Run the etcd propagation scenario (needs etcd on PATH).
    pub propagation: Option<PropagationOptions>,
    /// Run the fault → rollback scenario.
    pub rollback_time: Option<RollbackTimeOptions>,
    /// Run the judgement scenario (false and missed rollbacks).
    pub judgement: Option<JudgementOptions>,
    /// Run the HTTP/2 and gRPC scenario ([`crate::protocols`]).
    pub protocols: Option<ProtocolOptions>,
    /// Profile these runs with perf ([`crate::profile`]), after the measured ones.
    pub profile: Option<ProfileOptions>,
}

/// The suite's short judgement scenario: 3 detection runs per rule and a 2-minute A/A run, all
/// lanes at once (about 2 minutes; `make judgement` runs the full one).
pub fn standard_judgement() -> JudgementOptions {
    JudgementOptions {
        runs: 3,
        aa: Duration::from_secs(120),
        ..JudgementOptions::default()
    }
}

impl SuiteOptions {
    /// The standard report (`make bench`): 3 rounds, a few seconds per run.
    pub fn standard(bench_bin: PathBuf) -> SuiteOptions {
        SuiteOptions {
            bench_bin,
            targets: TargetKind::DEFAULT.to_vec(),
            rounds: 3,
            max_repeats: 1,
            warmup: Duration::from_millis(300),
            quiet: SUITE_QUIET_INTERVAL,
            // 1.25 s is 8k to 36k requests per proxy run here, and 125 CPU ticks of a busy
            // proxy (CLK_TCK 100): under 1 % resolution on CPU per request. Runs are this
            // short to keep a fresh clone's `make bench` under 10 minutes.
            closed: LoadShape {
                connections: 32,
                duration: Duration::from_millis(1250),
                max_requests: 5_000_000,
            },
            large: Some(LoadShape {
                connections: 32,
                duration: Duration::from_secs(1),
                max_requests: 5_000_000,
            }),
            // 3 s, not 1.25: the p99 of a 1.25 s run is the slowest 1 % of ~12 ms of traffic,
            // which one stall of the VM sets (rounds of 1.25 s put the p99 of nginx and of
            // cutover each anywhere in 0.15-1.7 ms at 881949b). It did not make them steady:
            // at 2898a2f the 3 s rounds put both anywhere in 0.28-2.5 ms (README, Benchmarks).
            open: Some(OpenShape {
                connections: 32,
                duration: Duration::from_secs(3),
                fraction: 0.5,
            }),
            crowd: Some(LoadShape {
                connections: 1000,
                duration: Duration::from_millis(1500),
                max_requests: 5_000_000,
            }),
            pin: Some(Pinning {
                generator_cpu: 0,
                servers_cpu: 1,
            }),
            limits: NoiseLimits::default(),
            backend: BackendOptions::default(),
            propagation: Some(PropagationOptions::default()),
            rollback_time: Some(RollbackTimeOptions::default()),
            judgement: Some(standard_judgement()),
            protocols: Some(ProtocolOptions::default()),
            profile: Some(ProfileOptions::standard()),
        }
    }

    /// A few hundred requests per target and phase, one round, no pinning, no etcd, one short
    /// fault → rollback run: checks that the harness works, not how fast anything is.
    pub fn smoke(bench_bin: PathBuf) -> SuiteOptions {
        let shape = |connections| LoadShape {
            connections,
            duration: Duration::from_secs(5),
            max_requests: 200,
        };
        SuiteOptions {
            rounds: 1,
            max_repeats: 0,
            warmup: Duration::from_millis(50),
            quiet: Duration::from_millis(30),
            closed: shape(4),
            large: Some(shape(4)),
            open: Some(OpenShape {
                connections: 4,
                duration: Duration::from_millis(200),
                fraction: 0.2,
            }),
            crowd: Some(shape(50)),
            pin: None,
            propagation: None,
            // One short fault → rollback run, so the scenario is exercised too.
            rollback_time: Some(RollbackTimeOptions {
                runs: 1,
                window: Duration::from_secs(1),
                hold: Duration::from_millis(200),
                fault_percent: 50.0,
                connections: 4,
                lanes: 1,
            }),
            // Minutes of waiting by design; bench/tests/judgement.rs runs a short one.
            judgement: None,
            protocols: Some(ProtocolOptions {
                calls: 300,
                rounds: 1,
                ..ProtocolOptions::default()
            }),
            // One short profile, so the path is exercised (perf may be missing: then the
            // report says so).
            profile: Some(ProfileOptions {
                plans: vec![(Phase::Closed1k, TargetKind::Cutover)],
                frequency: 999,
                duration: Duration::from_millis(300),
                top: 5,
            }),
            ..SuiteOptions::standard(bench_bin)
        }
    }
}

/// A measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Closed1k,
    Closed64k,
    Closed256k,
    Open1k,
    Crowd,
}

impl Phase {
    /// The closed-loop phases, by body size.
    pub const CLOSED: [Phase; 3] = [Phase::Closed1k, Phase::Closed64k, Phase::Closed256k];
    /// The phases measured in rounds (the crowd is one run per proxy).
    pub const ROUNDS: [Phase; 4] = [
        Phase::Closed1k,
        Phase::Closed64k,
        Phase::Closed256k,
        Phase::Open1k,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Closed1k => "closed-1k",
            Phase::Closed64k => "closed-64k",
            Phase::Closed256k => "closed-256k",
            Phase::Open1k => "open-1k",
            Phase::Crowd => "crowd",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Phase::Closed64k => BODY_64K_PATH,
            Phase::Closed256k => BODY_256K_PATH,
            _ => BODY_1K_PATH,
        }
    }
}

/// Pairs a cutover target with shadow has compared so far (one scrape of its metrics); `None`
/// for other targets.
async fn compared(t: &RunningTarget) -> Option<u64> {
    if !t.kind.copies() {
        return None;
    }
    let text = t.proxy()?.metrics().await;
    let route = [("route", crate::targets::ROUTE)];
    let done = [
        "cutover_comparisons_total",
        "cutover_comparisons_calibrating_total",
    ]
    .iter()
    .filter_map(|name| cutover_tests::metrics::metric_value(&text, name, &route))
    .sum::<f64>();
    Some(done as u64)
}

/// One measured run: one target, one phase, one round.
#[derive(Debug, Clone)]
pub struct Run {
    pub phase: Phase,
    /// 1-based attempt number within the phase.
    pub round: usize,
    pub target: TargetKind,
    /// The load generator's view.
    pub ok: u64,
    pub errors: u64,
    /// The part of `errors` with no answer at all (connect failed, reset, timed out).
    pub unanswered: u64,
    /// Duration of the load itself.
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    /// Open loop: the generator's send lag, 99th percentile, µs.
    pub send_lag_p99_us: Option<u64>,
    /// Open loop: scheduled requests not sent because the target fell too far behind (their
    /// waiting time so far is in `latency`).
    pub unsent: u64,
    /// The measurement window: load, settle wait for copies, quiet wait.
    pub window: Duration,
    /// CPU ticks of the proxy's processes over the window (`None` for `direct`).
    pub proxy_ticks: Option<u64>,
    pub backend_ticks: u64,
    pub generator_ticks: u64,
    /// The machine's CPU time over the window.
    pub machine: CpuTimes,
    /// Busy ticks of everything but the generator, backend and proxies.
    pub others_ticks: u64,
    /// `ActiveOpens` growth over the window (`None` when unreadable).
    pub active_opens: Option<u64>,
    /// Connections the generator opened.
    pub client_connects: u64,
    /// Connections the harness opened to the backend's control port inside the window.
    pub control_connects: u64,
    /// What the backend saw over the window.
    pub backend: BackendCounts,
    /// Peak and current RSS of the proxy's processes at the end of the run, KiB. The crowd
    /// run's peak is its own: the processes' peaks are reset to their RSS as it starts
    /// ([`sys::reset_peak_rss`]; memory they kept from earlier phases still counts). Other
    /// runs' peaks cover the processes' whole life.
    pub peak_rss_kib: Option<u64>,
    /// The peak over the processes' whole life (every earlier phase), KiB.
    pub life_peak_rss_kib: Option<u64>,
    /// RSS as the load started (after the crowd run's peak reset): what earlier phases left.
    pub rss_start_kib: Option<u64>,
    pub rss_kib: Option<u64>,
    /// Reasons the run counts as disturbed (its round is repeated when allowed).
    pub noise: Vec<String>,
    /// Other flags (errors, missing copies, a saturated generator).
    pub notes: Vec<String>,
    /// cutover with shadow: pairs it compared over the window (`cutover_comparisons_total`
    /// and `cutover_comparisons_calibrating_total` growth). A copy whose comparison found the
    /// comparison queue full is dropped (`overload`) and not counted here.
    pub compared: Option<u64>,
}

impl Run {
    pub fn requests(&self) -> u64 {
        self.ok + self.errors
    }

    pub fn requests_per_second(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Proxy CPU µs per request (`None` for `direct` or without requests).
    pub fn cpu_us_per_request(&self, clk_tck: u64) -> Option<f64> {
        let ticks = self.proxy_ticks?;
        (self.requests() > 0)
            .then(|| sys::ticks_to_ms(ticks, clk_tck) * 1000.0 / self.requests() as f64)
    }

    /// Backend CPU µs per request.
    pub fn backend_us_per_request(&self, clk_tck: u64) -> Option<f64> {
        (self.requests() > 0).then(|| {
            sys::ticks_to_ms(self.backend_ticks, clk_tck) * 1000.0 / self.requests() as f64
        })
    }

    /// Latency percentile in ms.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_percentile(q) as f64 / 1000.0)
    }

    /// New TCP connections opened on this machine during the window that were not the
    /// generator's nor the harness's: the proxy's connections to its upstreams (plus any
    /// other process's, which the noise columns show).
    pub fn upstream_opens(&self) -> Option<u64> {
        self.active_opens
            .map(|a| a.saturating_sub(self.client_connects + self.control_connects))
    }

    /// New upstream connections per request.
    pub fn upstream_opens_per_request(&self) -> Option<f64> {
        let opens = self.upstream_opens()?;
        (self.requests() > 0).then(|| opens as f64 / self.requests() as f64)
    }

    /// Pairs compared per answered request (cutover with shadow).
    pub fn compared_ratio(&self) -> Option<f64> {
        let compared = self.compared?;
        (self.ok > 0).then(|| compared as f64 / self.ok as f64)
    }

    /// Copies that reached backend b per answered request (mirroring targets).
    pub fn copy_ratio(&self) -> Option<f64> {
        (self.target.copies() && self.ok > 0)
            .then(|| self.backend.b.requests as f64 / self.ok as f64)
    }

    pub fn steal_share(&self) -> f64 {
        self.machine.steal as f64 / self.machine.total().max(1) as f64
    }

    pub fn others_cores(&self, clk_tck: u64) -> f64 {
        sys::cores(self.others_ticks, clk_tck, self.window)
    }

    pub fn generator_cores(&self, clk_tck: u64) -> f64 {
        sys::cores(self.generator_ticks, clk_tck, self.window)
    }
}

/// One round of a phase: every target once.
#[derive(Debug, Clone)]
pub struct Round {
    pub phase: Phase,
    pub round: usize,
    pub runs: Vec<Run>,
    /// Counted in the medians (false for a disturbed round that was replaced).
    pub used: bool,
}

impl Round {
    pub fn disturbed(&self) -> bool {
        self.runs.iter().any(|r| !r.noise.is_empty())
    }

    pub fn run(&self, target: TargetKind) -> Option<&Run> {
        self.runs.iter().find(|r| r.target == target)
    }
}

/// Control-plane scenarios of the report.
#[derive(Debug)]
pub enum ControlPlane {
    /// etcd put → first request served by the newly weighted backend.
    Propagation(Result<PropagationReport, String>),
    /// Injected backend fault → no more live traffic to `new` ([`crate::rollback_time`]).
    FaultRollback(Result<RollbackTimeReport, String>),
    /// False and missed rollbacks ([`crate::judgement`]).
    Judgement(Result<JudgementReport, String>),
}

/// Everything a suite run measured.
#[derive(Debug)]
pub struct SuiteReport {
    pub options: SuiteOptions,
    pub machine: Machine,
    pub clk_tck: u64,
    pub clk_tck_source: String,
    pub cutover_bin: PathBuf,
    /// `program: version line` of nginx / HAProxy found.
    pub versions: BTreeMap<String, String>,
    /// Targets that ran, in report order.
    pub targets: Vec<TargetKind>,
    /// Targets asked for but not run, and why.
    pub skipped: Vec<(TargetKind, String)>,
    pub rounds: Vec<Round>,
    /// The open-loop rate and where it came from.
    pub open_rate: Option<(f64, String)>,
    pub crowd: Vec<Run>,
    pub control_plane: Vec<ControlPlane>,
    /// The HTTP/2 and gRPC scenario, when it was asked for.
    pub protocols: Option<Result<ProtocolReport, String>>,
    /// The perf profiles asked for (of targets that ran), or why each could not be made.
    pub profiles: Vec<(Phase, TargetKind, Result<Profile, String>)>,
    /// Why the runs were not pinned, when they were not.
    pub pinning: Result<Pinning, String>,
    /// Problems that make numbers doubtful or missing.
    pub problems: Vec<String>,
    pub started: SystemTime,
    pub elapsed: Duration,
}

impl SuiteReport {
    /// The rounds of `phase` counted in the medians.
    pub fn used_rounds(&self, phase: Phase) -> impl Iterator<Item = &Round> {
        self.rounds
            .iter()
            .filter(move |r| r.phase == phase && r.used)
    }

    /// Whether every round of `phase` was disturbed (so the medians include disturbed ones).
    pub fn all_disturbed(&self, phase: Phase) -> bool {
        let mut rounds = self.rounds.iter().filter(|r| r.phase == phase).peekable();
        rounds.peek().is_some() && rounds.all(Round::disturbed)
    }

    /// Median over the used rounds of `f(run of target)`.
    pub fn median(
        &self,
        phase: Phase,
        target: TargetKind,
        f: impl Fn(&Run) -> Option<f64>,
    ) -> Option<f64> {
        median(
            self.used_rounds(phase)
                .filter_map(|r| r.run(target).and_then(&f))
                .collect(),
        )
    }

    /// Median over the used rounds of `f(target) / f(base)`, each ratio taken within a round.
    pub fn median_ratio(
        &self,
        phase: Phase,
        target: TargetKind,
        base: TargetKind,
        f: impl Fn(&Run) -> Option<f64>,
    ) -> Option<f64> {
        median(
            self.used_rounds(phase)
                .filter_map(|r| {
                    let (t, b) = (f(r.run(target)?)?, f(r.run(base)?)?);
                    (b > 0.0).then(|| t / b)
                })
                .collect(),
        )
    }

    /// The latency of every used run of `target` in `phase`, merged.
    pub fn merged_latency(&self, phase: Phase, target: TargetKind) -> Histogram<u64> {
        let mut h = histogram();
        for run in self.used_rounds(phase).filter_map(|r| r.run(target)) {
            let _ = h.add(&run.latency);
        }
        h
    }

    /// All runs (rounds and crowd).
    pub fn runs(&self) -> impl Iterator<Item = &Run> {
        self.rounds
            .iter()
            .flat_map(|r| r.runs.iter())
            .chain(self.crowd.iter())
    }

    pub fn propagation(&self) -> Option<&Result<PropagationReport, String>> {
        self.control_plane.iter().find_map(|c| match c {
            ControlPlane::Propagation(p) => Some(p),
            _ => None,
        })
    }

    pub fn rollback_time(&self) -> Option<&Result<RollbackTimeReport, String>> {
        self.control_plane.iter().find_map(|c| match c {
            ControlPlane::FaultRollback(r) => Some(r),
            _ => None,
        })
    }

    pub fn judgement(&self) -> Option<&Result<JudgementReport, String>> {
        self.control_plane.iter().find_map(|c| match c {
            ControlPlane::Judgement(r) => Some(r),
            _ => None,
        })
    }
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// What one run's load is.
#[derive(Debug, Clone, Copy)]
enum Load {
    Closed(LoadShape),
    Open { rate: f64, shape: OpenShape },
}

/// The running system: backend, targets, and how to measure.
struct Bench<'a> {
    opts: &'a SuiteOptions,
    ui: &'a Progress,
    clk_tck: u64,
    backend: BackendProcess,
    targets: Vec<RunningTarget>,
}

/// Counters read at the edges of a measurement window.
struct Snapshot {
    at: Instant,
    machine: CpuTimes,
    generator: u64,
    backend: u64,
    target: u64,
    ours: u64,
    active_opens: Option<u64>,
    control_connects: u64,
    counts: BackendCounts,
}

impl Bench<'_> {
    /// Every process the harness started (backend, every target's tree).
    fn all_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.backend.pid()];
        for t in &self.targets {
            pids.extend(t.pids());
        }
        pids
    }

    async fn snapshot(&self, target_pids: &[u32], all: &[u32], end: bool) -> Snapshot {
        // The control connection is made outside the window: first at the start, last at the end.
        let counts = if end {
            None
        } else {
            self.backend.counts().await.ok()
        };
        let snap = Snapshot {
            at: Instant::now(),
            machine: CpuTimes::now().unwrap_or_default(),
            generator: sys::cpu_ticks(std::process::id()).unwrap_or(0),
            backend: sys::cpu_ticks(self.backend.pid()).unwrap_or(0),
            target: sys::cpu_ticks_of(target_pids),
            ours: sys::cpu_ticks_of(all),
            active_opens: sys::tcp_active_opens().ok(),
            control_connects: self.backend.control_connects(),
            counts: counts.unwrap_or_default(),
        };
        if end {
            Snapshot {
                counts: self.backend.counts().await.unwrap_or_default(),
                ..snap
            }
        } else {
            snap
        }
    }

    async fn measure(&self, t: &RunningTarget, phase: Phase, round: usize, load: Load) -> Run {
        let all = self.all_pids();
        let target_pids = t.pids();
        let mut notes = Vec::new();
        // Read before the quiet wait, so the scrape's own CPU is outside the window.
        let compared_before = compared(t).await;
        if !quiesce(&all, self.opts.quiet, QUIET_TIMEOUT).await {
            notes.push(format!(
                "processes not quiet within {QUIET_TIMEOUT:?} before the run"
            ));
        }
        // The crowd's peak RSS is its own (what earlier phases peaked at is kept aside).
        let life_peak_before = sys::peak_rss_kib(&target_pids);
        if phase == Phase::Crowd && !sys::reset_peak_rss(&target_pids) {
            notes.push("peak RSS not reset before the run: it covers every earlier phase".into());
        }
        let rss_start = sys::rss_kib(&target_pids);
        let before = self.snapshot(&target_pids, &all, false).await;
        let url: hyper::Uri = t.url(phase.path()).parse().expect("harness URL");
        let report: Report = match load {
            Load::Closed(shape) => {
                run_closed_loop(&ClosedLoop {
                    url,
                    connections: shape.connections,
                    duration: shape.duration,
                    max_requests: shape.max_requests,
                })
                .await
            }
            Load::Open { rate, shape } => {
                run_open_loop(&OpenLoop {
                    url,
                    rate,
                    connections: shape.connections,
                    duration: shape.duration,
                    max_requests: (rate * shape.duration.as_secs_f64()).ceil() as u64 + 1,
                })
                .await
            }
        };
        if t.kind.copies() {
            self.settle(before.counts.b.requests + report.ok).await;
        }
        let mut quiet_pids = target_pids.clone();
        quiet_pids.push(self.backend.pid());
        if !quiesce(&quiet_pids, self.opts.quiet, QUIET_TIMEOUT).await {
            notes.push(format!(
                "processes not quiet within {QUIET_TIMEOUT:?} after the run"
            ));
        }
        let after = self.snapshot(&target_pids, &all, true).await;
        let compared = compared(t)
            .await
            .zip(compared_before)
            .map(|(a, b)| a.saturating_sub(b));
        // The kernel does not keep VmHWM current (it raises it at certain points, such as an
        // unmapping), so it can end below the RSS read as the load started (seen in the smoke
        // run: 38.2 against 38.4 MiB); that RSS was resident during the run.
        let peak_rss = sys::peak_rss_kib(&target_pids).max(rss_start);
        let ours = after.ours.saturating_sub(before.ours);
        let generator = after.generator.saturating_sub(before.generator);
        let machine = after.machine.since(&before.machine);
        let window = after.at - before.at;
        let mut run = Run {
            phase,
            round,
            target: t.kind,
            ok: report.ok,
            errors: report.errors,
            unanswered: report.unanswered,
            elapsed: report.elapsed,
            send_lag_p99_us: matches!(load, Load::Open { .. })
                .then(|| report.send_lag.value_at_percentile(99.0)),
            latency: report.latency,
            unsent: report.unsent,
            window,
            proxy_ticks: t
                .kind
                .is_proxy()
                .then(|| after.target.saturating_sub(before.target)),
            backend_ticks: after.backend.saturating_sub(before.backend),
            generator_ticks: generator,
            machine,
            others_ticks: machine.busy.saturating_sub(ours + generator),
            active_opens: before
                .active_opens
                .zip(after.active_opens)
                .map(|(b, a)| a.saturating_sub(b)),
            client_connects: report.connects,
            control_connects: after.control_connects - before.control_connects,
            backend: after.counts.since(&before.counts),
            peak_rss_kib: peak_rss,
            life_peak_rss_kib: peak_rss.max(life_peak_before),
            rss_start_kib: rss_start,
            rss_kib: sys::rss_kib(&target_pids),
            noise: Vec::new(),
            notes,
            compared,
        };
        if let Some(ratio) = run.compared_ratio().filter(|r| *r < 0.999) {
            run.notes.push(format!(
                "only {:.1} % of the copies were compared (the rest found the comparison queue \
                 full: overload)",
                ratio * 100.0
            ));
        }
        self.judge(&mut run, matches!(load, Load::Closed(_)));
        run
    }

    /// One more closed-loop run of `phase` on `t`, recorded by `perf record` (the `cpu-clock`
    /// event at `o.frequency`, every thread of the target's processes), read by `perf report`.
    async fn profile(
        &self,
        t: &RunningTarget,
        phase: Phase,
        o: &ProfileOptions,
    ) -> Result<Profile, String> {
        let perf = sys::find_program("perf")
            .ok_or("perf is not installed (Debian: apt-get install linux-perf)")?;
        let dir = tempfile::tempdir().map_err(|e| format!("a directory for perf.data: {e}"))?;
        let data = dir.path().join("perf.data");
        let pids = t
            .pids()
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        quiesce(&self.all_pids(), self.opts.quiet, QUIET_TIMEOUT).await;
        // perf records for as long as `sleep` runs: the load plus its start and a margin.
        let recording = o.duration + PERF_ATTACH + Duration::from_millis(200);
        let record = tokio::process::Command::new(&perf)
            .args(["record", "-q", "-e", "cpu-clock", "-F"])
            .arg(o.frequency.to_string())
            .arg("-p")
            .arg(&pids)
            .arg("-o")
            .arg(&data)
            .args(["--", "sleep"])
            .arg(format!("{:.3}", recording.as_secs_f64()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", perf.display()))?;
        tokio::time::sleep(PERF_ATTACH).await;
        let shape = match phase {
            Phase::Closed1k => self.opts.closed,
            _ => self.opts.large.unwrap_or(self.opts.closed),
        };
        let load = run_closed_loop(&ClosedLoop {
            url: t.url(phase.path()).parse().expect("harness URL"),
            connections: shape.connections,
            duration: o.duration,
            max_requests: shape.max_requests,
        })
        .await;
        let recorded = record
            .wait_with_output()
            .await
            .map_err(|e| format!("perf record: {e}"))?;
        if !recorded.status.success() {
            let why = String::from_utf8_lossy(&recorded.stderr);
            return Err(format!(
                "perf record failed ({}): {}",
                recorded.status,
                why.lines().next().unwrap_or("no message")
            ));
        }
        let report = tokio::process::Command::new(&perf)
            .args(profile::REPORT_ARGS)
            .arg("-i")
            .arg(&data)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("perf report: {e}"))?;
        let functions = profile::parse_report(&String::from_utf8_lossy(&report.stdout));
        if functions.is_empty() {
            return Err(format!(
                "perf report found no samples ({}): {}",
                report.status,
                String::from_utf8_lossy(&report.stderr)
                    .lines()
                    .next()
                    .unwrap_or("no message")
            ));
        }
        Ok(Profile {
            phase,
            target: t.kind,
            requests: load.ok,
            errors: load.errors,
            functions,
        })
    }

    /// Sets the run's noise and notes from its numbers.
    fn judge(&self, run: &mut Run, closed: bool) {
        let limits = &self.opts.limits;
        let clk = self.clk_tck;
        if run.steal_share() > limits.steal {
            run.noise.push(format!(
                "hypervisor steal {:.1} %",
                run.steal_share() * 100.0
            ));
        }
        if run.others_cores(clk) > limits.others_cores {
            run.noise.push(format!(
                "other processes used {:.2} cores",
                run.others_cores(clk)
            ));
        }
        if let Some(lag) = run.send_lag_p99_us.filter(|&l| l > limits.send_lag_p99_us) {
            run.noise
                .push(format!("generator sent late: send lag p99 {lag} µs"));
        }
        let generator = sys::cores(run.generator_ticks, clk, run.elapsed);
        if closed && generator > limits.generator_cores {
            run.notes.push(format!(
                "generator {:.0} % busy: the client may be the bottleneck",
                generator * 100.0
            ));
        }
        if run.unsent > 0 {
            run.notes.push(format!(
                "could not keep up with the rate: {} requests still unsent at the end (counted \
                 in the latency with their waiting time so far)",
                run.unsent
            ));
        }
        if run.errors > 0 {
            run.notes.push(format!(
                "{} of {} requests failed ({} 5xx, {} without an answer)",
                run.errors,
                run.requests(),
                run.errors - run.unanswered,
                run.unanswered
            ));
        }
        if let Some(ratio) = run.copy_ratio().filter(|&r| r < 0.999) {
            run.notes.push(format!(
                "only {} copies reached backend b for {} answers ({:.1} %)",
                run.backend.b.requests,
                run.ok,
                ratio * 100.0
            ));
        }
    }

    /// Waits until backend b has received `requests` in total (bounded; ends early when the
    /// copies stop coming).
    async fn settle(&self, requests: u64) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let (mut seen, mut progress_at) = (0, Instant::now());
        while Instant::now() < deadline {
            let b = self
                .backend
                .counts()
                .await
                .map(|c| c.b.requests)
                .unwrap_or(0);
            if b >= requests {
                return;
            }
            if b != seen {
                (seen, progress_at) = (b, Instant::now());
            } else if progress_at.elapsed() > STALL_TIMEOUT {
                return;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Rounds of `phase` until `rounds` undisturbed ones (or the repeat budget is spent).
    async fn phase(&self, phase: Phase, load: Load) -> Vec<Round> {
        let (want, budget) = (self.opts.rounds, self.opts.rounds + self.opts.max_repeats);
        let mut rounds: Vec<Round> = Vec::new();
        let mut clean = 0;
        while clean < want && rounds.len() < budget {
            let round = rounds.len() + 1;
            if round > want {
                self.ui.add_runs(self.targets.len() as u64);
                self.ui.note(&format!(
                    "{}: repeating a disturbed round ({} of at most {budget})",
                    phase.name(),
                    round
                ));
            }
            let mut runs = Vec::with_capacity(self.targets.len());
            for t in &self.targets {
                self.ui.start(&format!(
                    "{} round {round}/{want}: {}",
                    phase.name(),
                    t.kind.name()
                ));
                runs.push(self.measure(t, phase, round, load).await);
                self.ui.done();
            }
            let r = Round {
                phase,
                round,
                runs,
                used: true,
            };
            if r.disturbed() {
                let why: Vec<String> = r
                    .runs
                    .iter()
                    .filter(|x| !x.noise.is_empty())
                    .map(|x| format!("{}: {}", x.target.name(), x.noise.join(", ")))
                    .collect();
                self.ui.note(&format!(
                    "{} round {round} disturbed ({})",
                    phase.name(),
                    why.join("; ")
                ));
            } else {
                clean += 1;
            }
            rounds.push(r);
        }
        if clean > 0 {
            for r in &mut rounds {
                r.used = !r.disturbed();
            }
        }
        flag_slow_machine(&mut rounds);
        rounds
    }

    /// Unmeasured load against every target; copies are let arrive before measuring.
    async fn warm_up(&self, path: &str) {
        for t in &self.targets {
            self.ui.start(&format!("warm-up: {}", t.kind.name()));
            let before = self.backend.counts().await.unwrap_or_default();
            let r = run_closed_loop(&ClosedLoop {
                url: t.url(path).parse().expect("harness URL"),
                connections: self.opts.closed.connections,
                duration: self.opts.warmup,
                max_requests: self.opts.closed.max_requests,
            })
            .await;
            if t.kind.copies() {
                self.settle(before.b.requests + r.ok).await;
            }
        }
    }
}

/// Waits (≤ `timeout`) until every process in `pids` used at most one clock tick over
/// `interval`; false if that never happened.
pub async fn quiesce(pids: &[u32], interval: Duration, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let read = || {
        pids.iter()
            .map(|&p| sys::cpu_ticks(p).unwrap_or(0))
            .collect::<Vec<_>>()
    };
    let mut before = read();
    loop {
        tokio::time::sleep(interval).await;
        let after = read();
        if before
            .iter()
            .zip(&after)
            .all(|(b, a)| a.saturating_sub(*b) <= 1)
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        before = after;
    }
}

/// A run is flagged when the backend spent this much more CPU per request than in the same
/// target's best run of the phase.
pub(crate) const SLOW_MACHINE_RATIO: f64 = 1.3;

/// Flag runs made while the machine itself was slower: the backend does the same work per
/// request for a given target in every round, so when its CPU per request rises well above
/// that target's best of the phase, something outside the processes measured (a busy
/// neighbour on the host, which hypervisor steal does not always show) slowed the core, and
/// the proxy's numbers of that run are inflated too. Flagged in the report, not repeated.
fn flag_slow_machine(rounds: &mut [Round]) {
    let per_request =
        |r: &Run| (r.requests() > 0).then(|| r.backend_ticks as f64 / r.requests() as f64);
    let targets: Vec<TargetKind> = rounds
        .first()
        .map(|r| r.runs.iter().map(|x| x.target).collect())
        .unwrap_or_default();
    for target in targets {
        let best = rounds
            .iter()
            .flat_map(|r| &r.runs)
            .filter(|x| x.target == target)
            .filter_map(per_request)
            .filter(|&v| v > 0.0)
            .fold(f64::INFINITY, f64::min);
        if !best.is_finite() {
            continue;
        }
        for run in rounds
            .iter_mut()
            .flat_map(|r| r.runs.iter_mut())
            .filter(|x| x.target == target)
        {
            if let Some(ratio) = per_request(run).map(|v| v / best) {
                if ratio > SLOW_MACHINE_RATIO {
                    run.notes.push(format!(
                        "machine slower: the backend needed {ratio:.2}× its best CPU per \
                         request of this phase"
                    ));
                }
            }
        }
    }
}

/// Runs the suite. Errors only when the backend cannot start; a target that cannot start is
/// skipped and reported (cutover's harness panics instead, with its log).
pub async fn run(opts: &SuiteOptions, ui: &Progress) -> Result<SuiteReport, String> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let machine = Machine::probe();
    let (clk_tck, clk_tck_source) = sys::clk_tck();
    let mut problems = Vec::new();
    let mut skipped = Vec::new();
    let mut versions = BTreeMap::new();
    let mut programs = BTreeMap::new();
    for kind in &opts.targets {
        if let Some(name) = kind.program() {
            match sys::find_program(name) {
                Some(path) => {
                    if let Some(v) = sys::first_line_of(&path, &["-v"]) {
                        versions.insert(name.to_string(), v);
                    }
                    programs.insert(name, path);
                }
                None => skipped.push((
                    *kind,
                    format!("{name} is not installed ({})", kind.how_to_install()),
                )),
            }
        }
    }

    let pinning = match opts.pin {
        None => Err("pinning off (smoke run or --no-pin)".to_string()),
        Some(_) if machine.cpus < 2 => Err(format!(
            "{} CPU: generator and servers share it",
            machine.cpus
        )),
        Some(p) if p.generator_cpu.max(p.servers_cpu) >= machine.cpus => Err(format!(
            "CPUs {} and {} asked for, {} present",
            p.generator_cpu, p.servers_cpu, machine.cpus
        )),
        Some(p) => sys::pin_processes(&[std::process::id()], p.generator_cpu).map(|()| p),
    };
    if let (Some(_), Err(e)) = (opts.pin, &pinning) {
        problems.push(format!("not pinned: {e}"));
    }
    let pin_servers = |pids: &[u32], problems: &mut Vec<String>| {
        if let Ok(p) = &pinning {
            if let Err(e) = sys::pin_processes(pids, p.servers_cpu) {
                problems.push(format!("pinning: {e}"));
            }
        }
    };

    ui.start("starting the backend");
    let backend = BackendProcess::spawn(&opts.bench_bin, &opts.backend).await?;
    pin_servers(&[backend.pid()], &mut problems);
    let mut targets = Vec::new();
    for &kind in &opts.targets {
        if skipped.iter().any(|(k, _)| *k == kind) {
            continue;
        }
        ui.start(&format!("starting {}", kind.name()));
        let program = kind.program().and_then(|p| programs.get(p)).cloned();
        match RunningTarget::start(kind, &backend, program.as_deref()).await {
            Ok(t) => {
                pin_servers(&t.pids(), &mut problems);
                targets.push(t);
            }
            Err(e) => {
                ui.note(&format!("{} skipped: {e}", kind.name()));
                skipped.push((kind, format!("did not start: {e}")));
            }
        }
    }
    let kinds: Vec<TargetKind> = targets.iter().map(|t| t.kind).collect();
    let bench = Bench {
        opts,
        ui,
        clk_tck,
        backend,
        targets,
    };

    bench.warm_up(BODY_1K_PATH).await;
    let mut rounds = bench
        .phase(Phase::Closed1k, Load::Closed(opts.closed))
        .await;
    if let Some(shape) = opts.large {
        for phase in [Phase::Closed64k, Phase::Closed256k] {
            bench.warm_up(phase.path()).await;
            rounds.extend(bench.phase(phase, Load::Closed(shape)).await);
        }
    }
    let mut open_rate = None;
    if let Some(shape) = opts.open {
        let rps_of = |kind| {
            median(
                rounds
                    .iter()
                    .filter(|r| r.phase == Phase::Closed1k && r.used)
                    .filter_map(|r| r.run(kind).map(Run::requests_per_second))
                    .collect(),
            )
        };
        let basis = [TargetKind::Nginx, TargetKind::Cutover, TargetKind::Direct]
            .into_iter()
            .find_map(|k| rps_of(k).map(|rps| (k, rps)));
        match basis {
            Some((kind, rps)) => {
                let rate = (rps * shape.fraction).max(1.0);
                open_rate = Some((
                    rate,
                    format!(
                        "{:.0} % of {}'s median closed-loop 1 KiB throughput ({rps:.0} req/s)",
                        shape.fraction * 100.0,
                        kind.name()
                    ),
                ));
                bench.warm_up(BODY_1K_PATH).await;
                rounds.extend(bench.phase(Phase::Open1k, Load::Open { rate, shape }).await);
            }
            None => problems
                .push("open loop skipped: no closed-loop throughput to base its rate on".into()),
        }
    }
    let mut crowd = Vec::new();
    if let Some(shape) = opts.crowd {
        for t in bench.targets.iter().filter(|t| t.kind.is_proxy()) {
            ui.start(&format!(
                "{} connections: {}",
                shape.connections,
                t.kind.name()
            ));
            crowd.push(bench.measure(t, Phase::Crowd, 1, Load::Closed(shape)).await);
            ui.done();
        }
    }
    let mut profiles = Vec::new();
    if let Some(p) = &opts.profile {
        for &(phase, kind) in &p.plans {
            let Some(t) = bench.targets.iter().find(|t| t.kind == kind) else {
                continue;
            };
            ui.add_runs(1);
            ui.start(&format!("perf profile: {} {}", kind.name(), phase.name()));
            profiles.push((phase, kind, bench.profile(t, phase, p).await));
            ui.done();
        }
    }
    drop(bench);
    // The control-plane scenarios start their own processes, which should not all share the
    // generator's CPU.
    if pinning.is_ok() {
        if let Err(e) = sys::unpin_processes(&[std::process::id()], machine.cpus) {
            problems.push(format!("unpinning: {e}"));
        }
    }

    let mut control_plane = Vec::new();
    if let Some(p) = &opts.propagation {
        if sys::find_program("etcd").is_some() || std::env::var_os("ETCD_BIN").is_some() {
            ui.start(&format!(
                "propagation: {} weight changes through etcd",
                p.changes
            ));
            let p = p.clone();
            // The scenario's harness panics when etcd or the proxy cannot start.
            let outcome = tokio::spawn(async move { propagation::run(&p).await }).await;
            control_plane.push(ControlPlane::Propagation(
                outcome.map_err(|e| format!("the scenario could not run: {e}")),
            ));
        } else {
            control_plane.push(ControlPlane::Propagation(Err(
                "etcd is not installed (`make bench` and `make test` install etcd-server with apt-get when they can)".into(),
            )));
        }
    }
    if let Some(o) = &opts.rollback_time {
        ui.start(&format!(
            "fault -> rollback: {} runs at a {} window",
            o.runs,
            humantime::format_duration(o.window)
        ));
        let o = o.clone();
        let outcome = tokio::spawn(async move { rollback_time::run(&o, |_, _| {}).await }).await;
        control_plane.push(ControlPlane::FaultRollback(
            outcome.map_err(|e| format!("the scenario could not run: {e}")),
        ));
        ui.done();
    }
    if let Some(o) = &opts.judgement {
        ui.start(&format!(
            "judgement: {} detection runs per rule, {} A/A",
            o.runs,
            humantime::format_duration(o.aa)
        ));
        let o = o.clone();
        let outcome = tokio::spawn(async move { judgement::run(&o, |_| {}).await }).await;
        control_plane.push(ControlPlane::Judgement(
            outcome.map_err(|e| format!("the scenario could not run: {e}")),
        ));
        ui.done();
    }
    let protocols = match &opts.protocols {
        Some(o) => {
            ui.start(&format!(
                "HTTP/2 and gRPC: {} calls x {} cases x {} rounds",
                o.calls,
                crate::protocols::Case::ALL.len(),
                o.rounds
            ));
            let o = o.clone();
            let outcome = tokio::spawn(async move { crate::protocols::run(&o).await }).await;
            ui.done();
            Some(
                outcome
                    .map_err(|e| format!("the scenario could not run: {e}"))
                    .and_then(|r| r),
            )
        }
        None => None,
    };
    ui.finish();

    Ok(SuiteReport {
        options: opts.clone(),
        machine,
        clk_tck,
        clk_tck_source,
        cutover_bin: cutover_tests::cutover_bin(),
        versions,
        targets: kinds,
        skipped,
        rounds,
        open_rate,
        crowd,
        control_plane,
        protocols,
        profiles,
        pinning,
        problems,
        started,
        elapsed: t0.elapsed(),
    })
}

/// Runs planned for `opts` with `targets` targets (for the progress bar).
pub fn planned_runs(opts: &SuiteOptions, targets: usize) -> u64 {
    let phases = 1 + 2 * usize::from(opts.large.is_some()) + usize::from(opts.open.is_some());
    let crowd = if opts.crowd.is_some() {
        targets.saturating_sub(1)
    } else {
        0
    };
    (phases * opts.rounds * targets + crowd) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    fn run(round: usize, target: TargetKind, requests: u64, backend_ticks: u64) -> Run {
        Run {
            phase: Phase::Closed1k,
            round,
            target,
            ok: requests,
            errors: 0,
            unanswered: 0,
            elapsed: Duration::from_secs(2),
            latency: histogram(),
            send_lag_p99_us: None,
            unsent: 0,
            window: Duration::from_secs(2),
            proxy_ticks: Some(100),
            backend_ticks,
            generator_ticks: 0,
            machine: CpuTimes::default(),
            others_ticks: 0,
            active_opens: None,
            client_connects: 0,
            control_connects: 0,
            backend: BackendCounts::default(),
            peak_rss_kib: None,
            life_peak_rss_kib: None,
            rss_start_kib: None,
            rss_kib: None,
            noise: Vec::new(),
            notes: Vec::new(),
            compared: None,
        }
    }

    #[test]
    fn runs_on_a_slower_machine_are_flagged_per_target() {
        let round = |n, cutover_ticks, nginx_ticks| Round {
            phase: Phase::Closed1k,
            round: n,
            runs: vec![
                run(n, TargetKind::Cutover, 10_000, cutover_ticks),
                run(n, TargetKind::Nginx, 20_000, nginx_ticks),
            ],
            used: true,
        };
        // Cutover's backend: 100, 125 (1.25×, within), 140 ticks (1.4×) for the same requests;
        // nginx's: 50, 50, 50 (its own best is what it is compared with, not cutover's).
        let mut rounds = vec![round(1, 100, 50), round(2, 125, 50), round(3, 140, 50)];
        flag_slow_machine(&mut rounds);
        let flagged: Vec<(usize, TargetKind)> = rounds
            .iter()
            .flat_map(|r| &r.runs)
            .filter(|x| x.notes.iter().any(|n| n.starts_with("machine slower")))
            .map(|x| (x.round, x.target))
            .collect();
        assert_eq!(flagged, vec![(3, TargetKind::Cutover)]);
        assert!(
            rounds[2].runs[0].notes[0].contains("1.40×"),
            "{:?}",
            rounds[2].runs[0].notes
        );
        // Flag only: nothing counts as disturbed.
        assert!(rounds.iter().all(|r| !r.disturbed()));
    }

    #[test]
    fn planned_runs_count_every_phase() {
        let opts = SuiteOptions::standard("x".into());
        // Four phases (1 KiB, 64 KiB, 256 KiB, open loop) × 3 rounds × 6 targets, plus the crowd.
        assert_eq!(planned_runs(&opts, 6), 4 * 3 * 6 + 5);
        let smoke = SuiteOptions::smoke("x".into());
        assert_eq!(planned_runs(&smoke, 3), 4 * 3 + 2);
    }
}
