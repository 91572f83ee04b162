//! Prometheus metrics (names and labels exactly as SPEC §6) and the per-route window
//! statistics, kept per route id across snapshots so a weight change never resets them.
//!
//! Label lookups happen when a route is first seen; the hot path only touches pre-resolved
//! counters and histograms.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::runtime::Handle;

use crate::compare::Difference;
use crate::stats::{BackendKind, Role, RouteWindows, Sample, WindowShape, WindowedStats};
use cutover_config::window::{BackendStats, WindowStats};
use cutover_config::Weights;

/// Request duration buckets: 100 µs to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Status classes of `cutover_requests_total{code}`; `error` is "no response".
const CODES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// The process's tokio runtimes, by `cutover_runtime_tasks`' `runtime` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// The data plane's workers (summed): client connections, requests, upstream connections,
    /// shadow copies.
    Proxy = 0,
    /// The config source, the controller, the fleet and the admin API.
    Control = 1,
}

impl RuntimeKind {
    const ALL: [RuntimeKind; 2] = [RuntimeKind::Proxy, RuntimeKind::Control];

    fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Proxy => "proxy",
            RuntimeKind::Control => "control",
        }
    }
}

/// The outcome of one proxied request, for counting.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// The backend answered with this status.
    Status(u16),
    /// No answer from the backend (refused, reset, timed out).
    NoResponse,
    /// A gRPC call's answer: its HTTP status and its `grpc-status`.
    Grpc { status: u16, code: u8 },
}

impl Outcome {
    fn code_index(self) -> usize {
        match self {
            Outcome::Status(s) | Outcome::Grpc { status: s, .. } => {
                (usize::from(s / 100)).clamp(1, 5) - 1
            }
            Outcome::NoResponse => 5,
        }
    }

    /// Errors are 5xx answers, requests that got no answer, and gRPC calls that ended with a
    /// server-error code (SPEC §8: UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE,
    /// DATA_LOSS).
    pub fn is_error(self) -> bool {
        match self {
            Outcome::Status(s) => s >= 500,
            Outcome::NoResponse => true,
            Outcome::Grpc { status, code } => status >= 500 || crate::grpc::is_server_error(code),
        }
    }
}

/// The metric families of the process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    comparisons: IntCounterVec,
    calibrating: IntCounterVec,
    divergences: IntCounterVec,
    shadow_dropped: IntCounterVec,
    weight: prometheus::GaugeVec,
    rollbacks: IntCounterVec,
    pub config_revision: IntGauge,
    pub config_errors: IntCounter,
    pub etcd_connected: IntGauge,
    /// Client connections open (`[proxy] max_connections` caps them).
    pub downstream_connections: IntGauge,
    /// Client connections closed unread because `max_connections` were open.
    pub downstream_rejected: IntCounter,
    runtime_tasks: IntGaugeVec,
    tunnels: IntGaugeVec,
    grpc_responses: IntCounterVec,
    /// Each runtime's handles (one per worker for the data plane), noted when it starts; read
    /// at scrape time.
    runtimes: [Mutex<Vec<Handle>>; 2],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and static");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        Metrics {
            requests: counter_vec(
                "cutover_requests_total",
                "Requests sent to a backend, by role and status class (error = no response).",
                &["route", "backend", "role", "code"],
            ),
            duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "cutover_request_duration_seconds",
                        "Time from request start to the end of the backend's response.",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["route", "backend", "role"],
                )
                .expect("valid metric"),
            ),
            comparisons: counter_vec(
                "cutover_comparisons_total",
                "Primary/shadow response pairs compared.",
                &["route"],
            ),
            calibrating: counter_vec(
                "cutover_comparisons_calibrating_total",
                "Primary/shadow pairs not counted: noise learning had not yet compared enough \
                 legacy pairs of their endpoint (learn_noise_percent).",
                &["route"],
            ),
            divergences: counter_vec(
                "cutover_divergences_total",
                "Compared pairs that differed, by aspect.",
                &["route", "kind"],
            ),
            shadow_dropped: counter_vec(
                "cutover_shadow_dropped_total",
                "Requests that were not shadowed, by reason.",
                &["route", "reason"],
            ),
            weight: register(
                &r,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "cutover_weight",
                        "Share of live traffic each backend serves, in percent.",
                    ),
                    &["route", "backend"],
                )
                .expect("valid metric"),
            ),
            rollbacks: counter_vec(
                "cutover_rollbacks_total",
                "Automatic rollbacks, by rule.",
                &["route", "rule"],
            ),
            config_revision: register(
                &r,
                IntGauge::new(
                    "cutover_config_revision",
                    "Revision of the routing config in use.",
                )
                .expect("valid metric"),
            ),
            config_errors: register(
                &r,
                IntCounter::new(
                    "cutover_config_errors_total",
                    "Config inputs rejected as invalid (the last good state stayed live).",
                )
                .expect("valid metric"),
            ),
            etcd_connected: register(
                &r,
                IntGauge::new(
                    "cutover_etcd_connected",
                    "1 while the etcd watch is connected, else 0 (0 without [etcd]).",
                )
                .expect("valid metric"),
            ),
            downstream_connections: register(
                &r,
                IntGauge::new(
                    "cutover_downstream_connections",
                    "Client connections open, idle keep-alive ones included.",
                )
                .expect("valid metric"),
            ),
            downstream_rejected: register(
                &r,
                IntCounter::new(
                    "cutover_downstream_connections_rejected_total",
                    "Client connections closed unread because [proxy] max_connections were open.",
                )
                .expect("valid metric"),
            ),
            runtime_tasks: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "cutover_runtime_tasks",
                        "Tasks alive on each tokio runtime of the process (proxy: one per client \
                         connection, shadow copy in flight and pooled upstream connection). Flat \
                         under steady load.",
                    ),
                    &["runtime"],
                )
                .expect("valid metric"),
            ),
            grpc_responses: counter_vec(
                "cutover_grpc_responses_total",
                "gRPC calls answered, by grpc-status code name (SPEC §8).",
                &["route", "backend", "role", "grpc_code"],
            ),
            tunnels: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "cutover_tunnels_open",
                        "Upgraded connections (WebSocket, ...) being relayed (SPEC §8).",
                    ),
                    &["route", "backend"],
                )
                .expect("valid metric"),
            ),
            runtimes: Default::default(),
            registry: r,
        }
    }

    /// Count the tasks of the runtime the caller runs on as `kind` (call once, when the runtime
    /// starts; a call outside a runtime does nothing).
    pub fn note_runtime(&self, kind: RuntimeKind) {
        if let Ok(handle) = Handle::try_current() {
            self.runtimes[kind as usize]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(handle);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        for kind in RuntimeKind::ALL {
            let handles = self.runtimes[kind as usize]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if handles.is_empty() {
                continue;
            }
            let tasks: usize = handles.iter().map(|h| h.metrics().num_alive_tasks()).sum();
            self.runtime_tasks
                .with_label_values(&[kind.as_str()])
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }

    fn route_metrics(&self, route: &str) -> RouteMetrics {
        let cell = |b: BackendKind, r: Role| RoleMetrics {
            requests: CODES.map(|c| {
                self.requests
                    .with_label_values(&[route, b.as_str(), r.as_str(), c])
            }),
            duration: self
                .duration
                .with_label_values(&[route, b.as_str(), r.as_str()]),
            grpc_errors: std::sync::atomic::AtomicU64::new(0),
        };
        let per_backend = |b| [cell(b, Role::Primary), cell(b, Role::Shadow)];
        RouteMetrics {
            cells: [
                per_backend(BackendKind::Legacy),
                per_backend(BackendKind::New),
            ],
            comparisons: self.comparisons.with_label_values(&[route]),
            calibrating: self.calibrating.with_label_values(&[route]),
            divergences: DIVERGENCE_KINDS.map(|k| self.divergences.with_label_values(&[route, k])),
            shadow_dropped: DROP_REASONS
                .map(|r| self.shadow_dropped.with_label_values(&[route, r.as_str()])),
        }
    }

    /// Count a rollback of `route` by `rule`.
    pub fn rollback(&self, route: &str, rule: &str) {
        self.rollbacks.with_label_values(&[route, rule]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts one open tunnel in `cutover_tunnels_open` until dropped.
#[derive(Debug)]
pub struct TunnelGauge(IntGauge);

impl Drop for TunnelGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct RoleMetrics {
    requests: [IntCounter; 6],
    duration: Histogram,
    /// gRPC calls answered with HTTP 2xx and a server-error `grpc-status` (errors the status
    /// classes do not show).
    grpc_errors: std::sync::atomic::AtomicU64,
}

/// Why a sampled request was not shadowed (`cutover_shadow_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Overload,
    BodyTooLarge,
    Method,
    Timeout,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Overload => "overload",
            DropReason::BodyTooLarge => "body_too_large",
            DropReason::Method => "method",
            DropReason::Timeout => "timeout",
        }
    }
}

const DIVERGENCE_KINDS: [&str; 3] = ["status", "headers", "body"];
const DROP_REASONS: [DropReason; 4] = [
    DropReason::Overload,
    DropReason::BodyTooLarge,
    DropReason::Method,
    DropReason::Timeout,
];

struct RouteMetrics {
    cells: [[RoleMetrics; 2]; 2],
    comparisons: IntCounter,
    calibrating: IntCounter,
    divergences: [IntCounter; 3],
    shadow_dropped: [IntCounter; 4],
}

/// What one route records into and keeps across snapshots: window statistics and metric
/// handles. (Its shadow and comparison state is apart: `RouteState`, in `routing`.)
///
/// The window statistics and the per-request metric series are made when the route first
/// records something ([`RouteTelemetry::traffic`]): a route that never sees traffic costs a
/// few hundred bytes, not tens of KiB (10,000 idle routes in etcd are common).
pub struct RouteTelemetry {
    id: String,
    shape: WindowShape,
    origin: Instant,
    metrics: Arc<Metrics>,
    traffic: OnceLock<Box<Traffic>>,
    /// `cutover_weight` of legacy and new (set for every route, traffic or not).
    weight: [prometheus::Gauge; 2],
    /// The evaluation window in force.
    window: Mutex<EvalWindow>,
}

/// What a route records into once it has traffic.
pub struct Traffic {
    pub windows: RouteWindows,
    /// Comparisons over the window: `count` = compared pairs, `errors` = diverging pairs.
    pub comparisons: WindowedStats,
    /// Legacy compared with itself (the noise-learning copies), counted like `comparisons`:
    /// how often legacy disagrees with itself, the divergence rule's baseline.
    pub baseline: WindowedStats,
    metrics: RouteMetrics,
    /// Diverging pairs since the start (`cutover_divergences_total` counts kinds, several per
    /// pair).
    diverged: std::sync::atomic::AtomicU64,
}

/// One route × backend × role's counters since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CellTotals {
    pub requests: u64,
    /// 5xx answers and requests without an answer.
    pub errors: u64,
    /// Requests at or below each of [`DURATION_BUCKETS`] (cumulative, as Prometheus has them).
    pub buckets: [u64; DURATION_BUCKETS.len()],
}

/// A route's counters since the process started ([`RouteTelemetry::totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// By backend (legacy, new), then role (primary, shadow).
    pub cells: [[CellTotals; 2]; 2],
    /// Compared pairs.
    pub compared: u64,
    /// Diverging pairs.
    pub diverged: u64,
}

/// An evaluation window (SPEC §11): the requests that started under one write of the weights.
/// A new one starts whenever the weights in effect or their source revision change (an
/// operator's write, equal values included; a ramp step; a rollback's override).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalWindow {
    /// Numbers the route's windows from 1; every sample carries the one it started under.
    pub id: u64,
    /// The weights in effect, their source revision and in-process operator write.
    weights: Option<(Weights, (i64, u64))>,
    /// When it started, on the monotonic clock and on the wall clock.
    pub started: Instant,
    pub started_at: SystemTime,
}

impl std::fmt::Debug for RouteTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTelemetry")
            .field("id", &self.id)
            .field("traffic", &self.traffic.get().is_some())
            .finish_non_exhaustive()
    }
}

impl RouteTelemetry {
    /// The route's statistics and metric series, made at the first call.
    pub fn traffic(&self) -> &Traffic {
        self.traffic.get_or_init(|| {
            Box::new(Traffic {
                windows: RouteWindows::new(self.shape, self.origin),
                comparisons: WindowedStats::new(self.shape, self.origin),
                baseline: WindowedStats::new(self.shape, self.origin),
                metrics: self.metrics.route_metrics(&self.id),
                diverged: std::sync::atomic::AtomicU64::new(0),
            })
        })
    }

    /// The route's statistics, if it ever recorded anything.
    pub fn traffic_if_any(&self) -> Option<&Traffic> {
        self.traffic.get().map(|t| &**t)
    }

    /// Record one finished request that started under evaluation window `window` (hot path:
    /// one window shard's lock, and once per slice the window's ring lock).
    pub fn record(
        &self,
        window: u64,
        backend: BackendKind,
        role: Role,
        outcome: Outcome,
        started: Instant,
        now: Instant,
    ) {
        let latency = now.saturating_duration_since(started);
        let traffic = self.traffic();
        let cell = &traffic.metrics.cells[backend.index()][role.index()];
        cell.requests[outcome.code_index()].inc();
        cell.duration.observe(latency.as_secs_f64());
        if let Outcome::Grpc { code, status } = outcome {
            if status < 500 && outcome.is_error() {
                cell.grpc_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.metrics
                .grpc_responses
                .with_label_values(&[
                    self.id.as_str(),
                    backend.as_str(),
                    role.as_str(),
                    crate::grpc::code_name(code),
                ])
                .inc();
        }
        traffic.windows.get(backend, role).record(
            now,
            window,
            Sample {
                latency,
                error: outcome.is_error(),
            },
        );
    }

    /// Note the weights a new snapshot applies (and their source revision, and which
    /// in-process operator write put them in effect); a change starts a new evaluation window.
    /// Returns the window in force, which the snapshot's route carries.
    pub fn note_weights(&self, weights: Weights, revision: (i64, u64), now: Instant) -> u64 {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.weights != Some((weights, revision)) {
            *w = EvalWindow {
                id: w.id + 1,
                weights: Some((weights, revision)),
                started: now,
                started_at: SystemTime::now(),
            };
        }
        w.id
    }

    /// The evaluation window in force.
    pub fn window(&self) -> EvalWindow {
        *self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The route's statistics of evaluation window `window`, within the time window ending
    /// `now`; `baseline_expected` when the route compares legacy with itself (noise learning).
    pub fn window_stats(&self, now: Instant, window: u64, baseline_expected: bool) -> WindowStats {
        let Some(traffic) = self.traffic_if_any() else {
            return WindowStats {
                baseline_expected,
                ..WindowStats::default()
            };
        };
        let role = |b, r| traffic.windows.get(b, r).role_stats(now, window);
        let comparisons = traffic.comparisons.role_stats(now, window);
        let baseline = traffic.baseline.role_stats(now, window);
        WindowStats {
            legacy: BackendStats {
                primary: role(BackendKind::Legacy, Role::Primary),
                shadow: role(BackendKind::Legacy, Role::Shadow),
            },
            new: BackendStats {
                primary: role(BackendKind::New, Role::Primary),
                shadow: role(BackendKind::New, Role::Shadow),
            },
            comparisons: comparisons.count,
            divergences: comparisons.errors,
            baseline_comparisons: baseline.count,
            baseline_divergences: baseline.errors,
            baseline_expected,
        }
    }

    /// One more open tunnel to `backend`, until the guard is dropped.
    pub fn tunnel_opened(&self, backend: BackendKind) -> TunnelGauge {
        let gauge = self
            .metrics
            .tunnels
            .with_label_values(&[self.id.as_str(), backend.as_str()]);
        gauge.inc();
        TunnelGauge(gauge)
    }

    /// Count a sampled request that was not shadowed.
    pub fn shadow_dropped(&self, reason: DropReason) {
        let i = DROP_REASONS
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.traffic().metrics.shadow_dropped[i].inc();
    }

    /// Count one compared pair (and its divergences by kind) of a request that started under
    /// evaluation window `window`.
    pub fn record_comparison(&self, window: u64, diff: &Difference, now: Instant) {
        let traffic = self.traffic();
        traffic.metrics.comparisons.inc();
        if diff.diverged() {
            traffic
                .diverged
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for kind in diff.kinds() {
            if let Some(i) = DIVERGENCE_KINDS.iter().position(|k| *k == kind) {
                traffic.metrics.divergences[i].inc();
            }
        }
        traffic.comparisons.record(
            now,
            window,
            Sample {
                latency: Duration::ZERO,
                error: diff.diverged(),
            },
        );
    }

    /// The route's counters since the process started (the Prometheus series the request path
    /// already updates), for the dashboard's time series; `None` before its first request.
    pub fn totals(&self) -> Option<Totals> {
        use prometheus::core::Metric;
        let traffic = self.traffic_if_any()?;
        let m = &traffic.metrics;
        let cell = |b: BackendKind, r: Role| {
            let cell = &m.cells[b.index()][r.index()];
            let requests = cell.duration.get_sample_count();
            let mut totals = CellTotals {
                requests,
                errors: cell.requests[4].get()
                    + cell.requests[5].get()
                    + cell.grpc_errors.load(std::sync::atomic::Ordering::Relaxed),
                buckets: [0; DURATION_BUCKETS.len()],
            };
            if requests > 0 {
                let metric = cell.duration.metric();
                for (slot, bucket) in totals
                    .buckets
                    .iter_mut()
                    .zip(metric.get_histogram().get_bucket())
                {
                    *slot = bucket.cumulative_count();
                }
            }
            totals
        };
        let per_backend = |b| [cell(b, Role::Primary), cell(b, Role::Shadow)];
        Some(Totals {
            cells: [
                per_backend(BackendKind::Legacy),
                per_backend(BackendKind::New),
            ],
            compared: m.comparisons.get(),
            diverged: traffic.diverged.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Count a pair of legacy answers, compared like a legacy/new pair, of a request that
    /// started under evaluation window `window` (the divergence rule's baseline).
    pub fn record_baseline(&self, window: u64, diverged: bool, now: Instant) {
        self.traffic().baseline.record(
            now,
            window,
            Sample {
                latency: Duration::ZERO,
                error: diverged,
            },
        );
    }

    /// Count a compared pair left uncounted while its endpoint's noise is being learned.
    pub fn comparison_calibrating(&self) {
        self.traffic().metrics.calibrating.inc();
    }

    /// Publish the live share (percent) each backend serves.
    pub fn set_weight_percent(&self, legacy: f64, new: f64) {
        self.weight[BackendKind::Legacy.index()].set(legacy);
        self.weight[BackendKind::New.index()].set(new);
    }
}

/// The metrics plus every route's telemetry, by route id.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    shape: WindowShape,
    origin: Instant,
    routes: Mutex<HashMap<String, Arc<RouteTelemetry>>>,
}

impl Telemetry {
    pub fn new(shape: WindowShape) -> Self {
        Telemetry {
            metrics: Arc::new(Metrics::new()),
            shape,
            origin: Instant::now(),
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// The telemetry of route `id`, created the first time the route is seen (snapshot build,
    /// not the hot path).
    pub fn route(&self, id: &str) -> Arc<RouteTelemetry> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(RouteTelemetry {
                    id: id.to_string(),
                    shape: self.shape,
                    origin: self.origin,
                    metrics: self.metrics.clone(),
                    traffic: OnceLock::new(),
                    weight: BackendKind::ALL
                        .map(|b| self.metrics.weight.with_label_values(&[id, b.as_str()])),
                    window: Mutex::new(EvalWindow {
                        id: 0,
                        weights: None,
                        started: Instant::now(),
                        started_at: SystemTime::now(),
                    }),
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn runtime_tasks_are_read_at_scrape_time() {
        let m = Metrics::new();
        m.note_runtime(RuntimeKind::Proxy); // outside a runtime: nothing to note
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(!text.contains("cutover_runtime_tasks{"), "{text}");

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.block_on(async {
            m.note_runtime(RuntimeKind::Proxy);
            tokio::spawn(async move {
                let _ = rx.await;
            });
        });
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            text.contains(r#"cutover_runtime_tasks{runtime="proxy"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"runtime="admin""#), "{text}");
        tx.send(()).unwrap();
        rt.block_on(tokio::task::yield_now());
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            text.contains(r#"cutover_runtime_tasks{runtime="proxy"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn a_route_without_traffic_holds_no_statistics() {
        let t = Telemetry::new(WindowShape {
            window: Duration::from_secs(60),
            slices: 12,
        });
        let r = t.route("idle");
        r.set_weight_percent(90.0, 10.0);
        let now = Instant::now();
        assert!(r.traffic_if_any().is_none());
        assert_eq!(r.window_stats(now, 0, false), WindowStats::default());
        let text = String::from_utf8(t.metrics.encode()).unwrap();
        assert!(text.contains(r#"cutover_weight{backend="new",route="idle"} 10"#));
        assert!(!text.contains(
            r#"cutover_requests_total{backend="legacy",code="2xx",role="primary",route="idle"}"#
        ));
        r.record(
            0,
            BackendKind::Legacy,
            Role::Primary,
            Outcome::Status(200),
            now,
            now,
        );
        assert!(r.traffic_if_any().is_some());
        assert_eq!(r.window_stats(now, 0, false).legacy.primary.count, 1);
    }

    #[test]
    fn outcome_classes() {
        assert_eq!(Outcome::Status(204).code_index(), 1);
        assert_eq!(Outcome::Status(503).code_index(), 4);
        assert_eq!(Outcome::Status(99).code_index(), 0);
        assert_eq!(Outcome::NoResponse.code_index(), 5);
        assert!(Outcome::Status(500).is_error());
        assert!(!Outcome::Status(404).is_error());
        assert!(Outcome::NoResponse.is_error());
    }

    #[test]
    fn recording_shows_in_exposition_and_window() {
        let t = Telemetry::new(WindowShape {
            window: Duration::from_secs(60),
            slices: 12,
        });
        let r = t.route("orders");
        assert!(Arc::ptr_eq(&r, &t.route("orders")), "kept per id");
        let now = Instant::now();
        r.record(
            0,
            BackendKind::New,
            Role::Primary,
            Outcome::Status(200),
            now - Duration::from_millis(3),
            now,
        );
        r.record(
            0,
            BackendKind::New,
            Role::Primary,
            Outcome::NoResponse,
            now,
            now,
        );
        r.set_weight_percent(75.0, 25.0);
        let text = String::from_utf8(t.metrics.encode()).unwrap();
        assert!(text.contains(
            r#"cutover_requests_total{backend="new",code="2xx",role="primary",route="orders"} 1"#
        ));
        assert!(text.contains(
            r#"cutover_requests_total{backend="new",code="error",role="primary",route="orders"} 1"#
        ));
        assert!(text.contains(r#"cutover_weight{backend="new",route="orders"} 25"#));
        assert!(text.contains("cutover_request_duration_seconds_bucket"));
        let w = r
            .traffic()
            .windows
            .get(BackendKind::New, Role::Primary)
            .read(now, 0);
        assert_eq!((w.count, w.errors), (2, 1));
    }
}
