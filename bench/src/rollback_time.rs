//! The rollback-time scenario: how long after `new` starts failing does it stop receiving live
//! traffic?
//!
//! A `legacy` and a `new` backend (the test harness's fakes) and the real `cutover` binary on
//! the embedded file source, all on loopback. The route is 50/50 with
//! `[stats] window = WINDOW` (in 100 ms slices) and the rule
//! `error_rate = { max = 0.05, for = FOR, min_requests = 100 }`. Closed-loop load runs
//! throughout (`connections` clients). Each run: arm (write fresh 50/50 weights, which also
//! ends the previous run's rollback, and let one whole window of healthy traffic pass), then
//! switch `new` to answer `fault_percent` % of requests with 500 and note the time; the run ends
//! when the admin API shows the route `rolled_back`. The measured time is from the fault to
//! the *send time* of the last request that `new` answered (its answers carry
//! `x-backend: new`), i.e. fault → no more live traffic to `new`, as the clients see it.
//!
//! The runs are shared out over `lanes` independent set-ups (backends, proxy, load) that run at
//! the same time: a run mostly waits (a whole window of healthy traffic, then the rule's `for`),
//! so 20 runs in 10 lanes take two runs' time, on a machine that is busier than with one lane
//! (a harsher condition for the measurement, not a kinder one; docs/rollback.md has both).
//!
//! Target (issue 6): p99 ≤ window + 1 s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cutover_tests::{Backend, Client, Proxy, ProxyConfig, Route, RunningBackend};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What to run.
#[derive(Debug, Clone)]
pub struct RollbackTimeOptions {
    pub runs: usize,
    /// `[stats] window`: the evaluation window.
    pub window: Duration,
    /// The rule's `for`.
    pub hold: Duration,
    /// Share of `new`'s answers that fail during the fault.
    pub fault_percent: f64,
    /// Closed-loop connections per lane.
    pub connections: usize,
    /// Set-ups that run at the same time, each with its own backends and proxy.
    pub lanes: usize,
}

impl RollbackTimeOptions {
    /// Lanes actually used: at least one, at most one per run.
    pub fn lanes_used(&self) -> usize {
        self.lanes.clamp(1, self.runs.max(1))
    }

    /// The bound a run's rollback must meet: the window plus one controller tick (1 s).
    pub fn target(&self) -> Duration {
        self.window + Duration::from_secs(1)
    }
}

impl Default for RollbackTimeOptions {
    fn default() -> Self {
        RollbackTimeOptions {
            runs: 20,
            window: Duration::from_secs(5),
            hold: Duration::from_secs(1),
            fault_percent: 40.0,
            connections: 4,
            lanes: 10,
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub struct RollbackTimeReport {
    pub options: RollbackTimeOptions,
    /// Fault → last live request to `new`, per completed run.
    pub times: Vec<Duration>,
    /// Runs whose rollback did not happen within the bound.
    pub missed: usize,
    /// The reason the proxy wrote for the last rollback.
    pub last_reason: String,
}

impl RollbackTimeReport {
    /// The `q` quantile (0–1) by nearest rank.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        nearest_rank(&self.times, q)
    }

    pub fn target(&self) -> Duration {
        self.options.target()
    }

    pub fn target_met(&self) -> bool {
        self.missed == 0 && self.quantile(0.99).is_some_and(|p99| p99 <= self.target())
    }

    pub fn to_markdown(&self) -> String {
        let o = &self.options;
        let fmt = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        format!(
            "Fault → no live traffic to `new`: {} runs, `[stats] window = {}`, `error_rate = {{ max = 0.05, for = {}, min_requests = 100 }}`, fault {} % of new's answers, {} lanes at once of {} connections each.\n\n\
             | runs | missed | p50 | p99 | max | target (window + 1 s) | met |\n|---|---|---|---|---|---|---|\n\
             | {} | {} | {} | {} | {} | {:.1} s | {} |\n\n\
             Last reason written: `{}`\n",
            self.times.len() + self.missed,
            humantime::format_duration(o.window),
            humantime::format_duration(o.hold),
            o.fault_percent,
            o.lanes_used(),
            o.connections,
            self.times.len() + self.missed,
            self.missed,
            fmt(self.quantile(0.5)),
            fmt(self.quantile(0.99)),
            fmt(self.quantile(1.0)),
            self.target().as_secs_f64(),
            if self.target_met() { "yes" } else { "no" },
            self.last_reason,
        )
    }
}

fn config(
    o: &RollbackTimeOptions,
    legacy: &RunningBackend,
    new: &RunningBackend,
    new_weight: f64,
) -> ProxyConfig {
    lane_config(
        o.window,
        Route::new("bench")
            .legacy_endpoints([legacy.addr()])
            .new_endpoints([new.addr()])
            .weights(100.0 - new_weight, new_weight)
            .line(&format!(
                "rollback = {{ error_rate = {{ max = 0.05, for = {}, min_requests = 100 }} }}",
                cutover_tests::proxy::toml_duration(o.hold)
            )),
    )
}

/// A one-thread proxy serving `route`, `[stats] window = window` in 100 ms slices: the set-up
/// of every lane of the rollback scenarios.
pub(crate) fn lane_config(window: Duration, route: Route) -> ProxyConfig {
    let slices = (window.as_millis() / 100).clamp(1, 600) as u32;
    ProxyConfig::new()
        .set("threads", "1")
        .stats_window(window)
        .stats_slices(slices)
        .route(route)
}

/// Closed-loop load: counts requests and errors, and records the send time of the last
/// request `new` answered.
pub(crate) struct Load {
    shared: Arc<LoadShared>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct LoadShared {
    stop: AtomicBool,
    requests: AtomicU64,
    new_requests: AtomicU64,
    errors: AtomicU64,
    last_new_send: Mutex<Option<Instant>>,
}

impl Load {
    pub(crate) fn start(url: String, connections: usize) -> Load {
        let shared = Arc::new(LoadShared::default());
        let tasks = (0..connections.max(1))
            .map(|_| {
                let (url, shared) = (url.clone(), shared.clone());
                tokio::spawn(async move {
                    let client = Client::new().with_timeout(Duration::from_secs(5));
                    while !shared.stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        shared.requests.fetch_add(1, Ordering::Relaxed);
                        let Ok(r) = client.get(&url).await else {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        if !r.status.is_success() {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        if r.backend().as_deref() == Some("new") {
                            shared.new_requests.fetch_add(1, Ordering::Relaxed);
                            let mut l = shared
                                .last_new_send
                                .lock()
                                .unwrap_or_else(|p| p.into_inner());
                            *l = Some(l.map_or(sent, |t: Instant| t.max(sent)));
                        }
                    }
                })
            })
            .collect();
        Load { shared, tasks }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn new_requests(&self) -> u64 {
        self.shared.new_requests.load(Ordering::Relaxed)
    }

    pub(crate) fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    pub(crate) fn last_new_send(&self) -> Option<Instant> {
        *self
            .shared
            .last_new_send
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The `q` quantile (0–1) of `times` by nearest rank; `None` when empty.
pub(crate) fn nearest_rank(times: &[Duration], q: f64) -> Option<Duration> {
    let mut t = times.to_vec();
    t.sort();
    let i = ((q * t.len() as f64).ceil() as usize).clamp(1, t.len().max(1)) - 1;
    t.get(i).copied()
}

async fn phase(proxy: &Proxy) -> Option<String> {
    let route = proxy.route_info("bench").await?;
    route["phase"].as_str().map(str::to_string)
}

/// What one run measured: the time, or `None` when no rollback happened within the bound; and
/// the reason the proxy wrote.
type RunOutcome = (Option<Duration>, Option<String>);

/// Run the scenario: `o.runs` runs shared out over `o.lanes` lanes running at once.
/// `progress(n, took)` is called as each run ends, `n` counting completed runs from 0.
pub async fn run(
    o: &RollbackTimeOptions,
    mut progress: impl FnMut(usize, Option<Duration>),
) -> RollbackTimeReport {
    let lanes = o.lanes_used();
    let (tx, mut rx) = mpsc::unbounded_channel::<RunOutcome>();
    let mut tasks = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        // Lane `lane` takes runs lane, lane + lanes, …
        let runs = (lane..o.runs).step_by(lanes).count();
        let (o, tx) = (o.clone(), tx.clone());
        tasks.push(tokio::spawn(async move { run_lane(&o, runs, tx).await }));
    }
    drop(tx);
    let mut report = RollbackTimeReport {
        options: o.clone(),
        times: Vec::new(),
        missed: 0,
        last_reason: String::new(),
    };
    let mut done = 0;
    while let Some((took, reason)) = rx.recv().await {
        match took {
            Some(t) => report.times.push(t),
            None => report.missed += 1,
        }
        if let Some(reason) = reason {
            report.last_reason = reason;
        }
        progress(done, took);
        done += 1;
    }
    for task in tasks {
        if let Err(e) = task.await {
            // A lane that panicked (a set-up that could not start): pass the panic on, as the
            // one-lane scenario did.
            if let Ok(panic) = e.try_into_panic() {
                std::panic::resume_unwind(panic);
            }
        }
    }
    report
}

/// One lane: its own backends, proxy and load; `runs` runs one after the other.
async fn run_lane(o: &RollbackTimeOptions, runs: usize, out: mpsc::UnboundedSender<RunOutcome>) {
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let mut proxy = Proxy::start(config(o, &legacy, &new, 50.0)).await;
    let load = Load::start(proxy.url("/bench/items"), o.connections);
    // Alternate 50/50 and 49/51: a new weights value, so the file source applies it and the
    // previous run's rollback ends.
    let mut flip = false;
    for _ in 0..runs {
        flip = !flip;
        let weight = if flip { 51.0 } else { 50.0 };
        new.set_errors(0.0);
        proxy.apply(&config(o, &legacy, &new, weight));
        let armed = Instant::now();
        while phase(&proxy).await.as_deref() == Some("rolled_back") {
            if armed.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One whole window of healthy traffic on new.
        tokio::time::sleep(o.window).await;
        new.set_errors(o.fault_percent / 100.0);
        let fault = Instant::now();
        let bound = o.window * 4 + o.hold + Duration::from_secs(10);
        let mut rolled_back = false;
        while fault.elapsed() < bound {
            if phase(&proxy).await.as_deref() == Some("rolled_back") {
                rolled_back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !rolled_back {
            let _ = out.send((None, None));
            continue;
        }
        // Answers to requests sent before the rollback may still be arriving.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let took = load
            .last_new_send()
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(fault));
        let reason = proxy
            .route_info("bench")
            .await
            .and_then(|route| route["rollback"]["reason"].as_str().map(str::to_string));
        let _ = out.send((Some(took), reason));
    }
    load.stop().await;
}
