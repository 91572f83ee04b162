//! The dashboard's time series: per route, one point per second for the last 15 minutes
//! (request rate, error rate and p50/p99 per backend × role, comparisons and divergence rate,
//! live share and weight of `new`), and markers where the route changed (weights, rollback,
//! pause, a rejected config).
//!
//! The admin API samples every route once a second (on the control runtime) from the counters
//! the request path already updates
//! ([`RouteTelemetry::totals`](crate::telemetry::RouteTelemetry::totals): the Prometheus
//! series), so the series cost the request path nothing. A second's p50/p99 are
//! estimated from that second's counts in the duration histogram's buckets, interpolated
//! within the bucket as Prometheus' `histogram_quantile` does: exact to the bucket (100 µs to
//! 10 s, 16 buckets), not to the microsecond as the rules' windows are.
//!
//! Memory: [`POINTS`] points of [`size_of::<Point>()`](Point) bytes (88: 79 KiB) and at most
//! [`MARKERS`] markers per route with traffic; a route without requests for 15 minutes keeps
//! only its counters (about 600 bytes), and one gone from the config is forgotten.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use cutover_config::{Phase, Weights};
use serde_json::{json, Map, Value};

use crate::routing::{Route, Snapshot};
use crate::stats::{BackendKind, Role};
use crate::telemetry::{CellTotals, Totals, DURATION_BUCKETS};

/// Points kept per route: 15 minutes of seconds.
pub const POINTS: usize = 900;
/// Markers kept per route.
pub const MARKERS: usize = 100;

/// One backend × role in one second.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CellPoint {
    requests: u32,
    errors: u32,
    /// Milliseconds; NaN without requests.
    p50: f32,
    p99: f32,
}

/// One second of one route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Unix milliseconds at the end of the second.
    t: u64,
    /// By backend, then role.
    cells: [[CellPoint; 2]; 2],
    compared: u32,
    diverged: u32,
    /// `new`'s configured share of live traffic, percent.
    new_weight: f32,
}

/// Where the route changed, drawn as a vertical line.
#[derive(Debug, Clone, PartialEq)]
struct Marker {
    t: u64,
    kind: &'static str,
    text: String,
}

/// What a marker is decided on: the route as the last sample saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    weights: Weights,
    revision: (i64, u64),
    phase: Phase,
    error: Option<Arc<str>>,
}

impl Seen {
    fn of(route: &Route, snapshot: &Snapshot) -> Seen {
        let overridden = route.overridden.as_ref();
        Seen {
            weights: route.weights,
            revision: (route.weights_revision, overridden.map_or(0, |o| o.write)),
            phase: overridden.map_or(route.weights.implied_phase(), |o| o.phase),
            error: snapshot.error_for(route.id.as_str()).cloned(),
        }
    }
}

#[derive(Debug)]
struct Series {
    points: VecDeque<Point>,
    markers: VecDeque<Marker>,
    last: Totals,
    seen: Seen,
    /// Seconds in a row without a request.
    idle: usize,
}

/// Every route's series ([`Timelines::sample`] once a second).
#[derive(Debug, Default)]
pub struct Timelines {
    routes: Mutex<HashMap<String, Series>>,
}

impl Timelines {
    /// Take one point of every route with traffic in `snapshot`, at unix milliseconds `t`.
    pub fn sample(&self, snapshot: &Snapshot, t: u64) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.retain(|id, _| snapshot.route(id).is_some());
        for route in &snapshot.routes {
            let Some(totals) = route.telemetry.totals() else {
                continue;
            };
            let seen = Seen::of(route, snapshot);
            // A route seen for the first time had its first requests since the last sample.
            let series = routes
                .entry(route.id.to_string())
                .or_insert_with(|| Series {
                    points: VecDeque::new(),
                    markers: VecDeque::new(),
                    last: Totals::default(),
                    seen: seen.clone(),
                    idle: 0,
                });
            let point = point(&series.last, &totals, t, route);
            series.last = totals;
            let quiet = point.cells.iter().flatten().all(|c| c.requests == 0);
            series.idle = if quiet { series.idle + 1 } else { 0 };
            if series.idle >= POINTS {
                // Quiet for 15 minutes: the points go (their memory too), the totals stay.
                series.points = VecDeque::new();
                series.markers = VecDeque::new();
            } else {
                if series.points.len() == POINTS {
                    series.points.pop_front();
                }
                series.points.push_back(point);
            }
            if let Some(marker) = marker(&series.seen, &seen, route, t) {
                if series.markers.len() == MARKERS {
                    series.markers.pop_front();
                }
                series.markers.push_back(marker);
            }
            series.seen = seen;
        }
    }

    /// `GET /api/v1/routes/<id>/series`: the points (and markers) after unix milliseconds
    /// `since`, as columns (empty ones for a route that has had no traffic yet).
    pub fn json(&self, route: &str, since: u64) -> Value {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let series = routes.get(route);
        let points: Vec<&Point> = series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.t > since)
            .collect();
        let markers: Vec<Value> = series
            .iter()
            .flat_map(|s| s.markers.iter())
            .filter(|m| m.t > since)
            .map(|m| json!({"t": m.t, "kind": m.kind, "text": m.text}))
            .collect();
        json!({
            "route": route,
            "step_ms": 1000,
            "t": points.iter().map(|p| p.t).collect::<Vec<_>>(),
            "series": columns(&points),
            "markers": markers,
        })
    }
}

/// The points as one array per measure, `null` where a second had no samples.
fn columns(points: &[&Point]) -> Map<String, Value> {
    let column = |f: &dyn Fn(&Point) -> Option<f64>| -> Value {
        points.iter().map(|p| f(p).map(round3)).collect()
    };
    let mut columns = Map::new();
    for b in BackendKind::ALL {
        for r in Role::ALL {
            let cell = move |p: &Point| p.cells[b.index()][r.index()];
            let name = |what: &str| format!("{}.{}.{what}", b.as_str(), r.as_str());
            columns.insert(name("rps"), column(&|p| Some(f64::from(cell(p).requests))));
            columns.insert(
                name("error_rate"),
                column(&|p| rate(cell(p).errors, cell(p).requests)),
            );
            columns.insert(name("p50_ms"), column(&|p| finite(cell(p).p50)));
            columns.insert(name("p99_ms"), column(&|p| finite(cell(p).p99)));
        }
    }
    columns.insert(
        "comparisons".into(),
        column(&|p| Some(f64::from(p.compared))),
    );
    columns.insert(
        "divergence_rate".into(),
        column(&|p| rate(p.diverged, p.compared)),
    );
    columns.insert(
        "new_share".into(),
        column(&|p| {
            let new = p.cells[BackendKind::New.index()][Role::Primary.index()].requests;
            let legacy = p.cells[BackendKind::Legacy.index()][Role::Primary.index()].requests;
            rate(new, new + legacy)
        }),
    );
    columns.insert(
        "new_weight".into(),
        column(&|p| Some(f64::from(p.new_weight))),
    );
    columns
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn finite(v: f32) -> Option<f64> {
    v.is_finite().then_some(f64::from(v))
}

fn rate(part: u32, whole: u32) -> Option<f64> {
    (whole > 0).then(|| f64::from(part) / f64::from(whole))
}

/// The second between two readings of the counters.
fn point(before: &Totals, now: &Totals, t: u64, route: &Route) -> Point {
    let cell = |b: usize, r: usize| cell_point(&before.cells[b][r], &now.cells[b][r]);
    let delta = |a: u64, b: u64| u32::try_from(b.saturating_sub(a)).unwrap_or(u32::MAX);
    Point {
        t,
        cells: [[cell(0, 0), cell(0, 1)], [cell(1, 0), cell(1, 1)]],
        compared: delta(before.compared, now.compared),
        diverged: delta(before.diverged, now.diverged),
        new_weight: route.weights.new_share() as f32 * 100.0,
    }
}

fn cell_point(before: &CellTotals, now: &CellTotals) -> CellPoint {
    let requests = now.requests.saturating_sub(before.requests);
    let mut counts = [0u64; DURATION_BUCKETS.len()];
    for (i, c) in counts.iter_mut().enumerate() {
        *c = now.buckets[i].saturating_sub(before.buckets[i]);
    }
    CellPoint {
        requests: u32::try_from(requests).unwrap_or(u32::MAX),
        errors: u32::try_from(now.errors.saturating_sub(before.errors)).unwrap_or(u32::MAX),
        p50: quantile(0.5, &counts, requests) as f32,
        p99: quantile(0.99, &counts, requests) as f32,
    }
}

/// The `q` quantile in milliseconds of `total` requests whose cumulative counts at or below
/// each of [`DURATION_BUCKETS`] are `cumulative`, interpolated linearly within its bucket; the
/// top bucket's bound for requests above it; NaN without requests.
fn quantile(q: f64, cumulative: &[u64; DURATION_BUCKETS.len()], total: u64) -> f64 {
    if total == 0 {
        return f64::NAN;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (&upper, &count) in DURATION_BUCKETS.iter().zip(cumulative) {
        if count as f64 >= rank && count > below {
            let within = (rank - below as f64) / (count - below) as f64;
            return (lower + (upper - lower) * within) * 1000.0;
        }
        below = count;
        lower = upper;
    }
    lower * 1000.0
}

/// What changed between two samples of a route, as a marker.
fn marker(before: &Seen, now: &Seen, route: &Route, t: u64) -> Option<Marker> {
    let weights_text = |w: &Weights| {
        format!(
            "legacy {} / new {} / shadow {} (revision {})",
            w.legacy, w.new, w.shadow, route.weights_revision
        )
    };
    let (kind, text) = if now.phase == Phase::RolledBack && before.phase != Phase::RolledBack {
        let why = route
            .overridden
            .as_ref()
            .and_then(|o| o.rollback.as_ref())
            .map_or_else(String::new, |r| {
                format!(" by {} ({}): {}", r.by, r.rule, r.reason)
            });
        ("rollback", format!("rolled back{why}"))
    } else if now.weights != before.weights || now.revision != before.revision {
        ("weights", format!("weights {}", weights_text(&now.weights)))
    } else if now.phase != before.phase {
        match now.phase {
            Phase::Paused => ("paused", "ramp paused".to_string()),
            phase => ("weights", format!("phase {phase}")),
        }
    } else if now.error != before.error {
        let error = now.error.as_ref()?;
        ("rejected", format!("config rejected: {error}"))
    } else {
        return None;
    };
    Some(Marker {
        t,
        kind,
        text: clip(text),
    })
}

/// The longest marker text kept, in bytes.
const MARKER_TEXT: usize = 256;

fn clip(mut text: String) -> String {
    if text.len() > MARKER_TEXT {
        let mut end = MARKER_TEXT - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cumulative(per_bucket: &[(usize, u64)]) -> [u64; DURATION_BUCKETS.len()] {
        let mut counts = [0u64; DURATION_BUCKETS.len()];
        for &(i, n) in per_bucket {
            counts[i] += n;
        }
        let mut sum = 0;
        for c in &mut counts {
            sum += *c;
            *c = sum;
        }
        counts
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // 100 requests in the 1–2.5 ms bucket (index 4): p50 halfway, p99 near the top.
        let c = cumulative(&[(4, 100)]);
        assert!((quantile(0.5, &c, 100) - 1.75).abs() < 1e-9);
        assert!((quantile(0.99, &c, 100) - 2.485).abs() < 1e-9);
        // 90 fast (≤ 0.1 ms) and 10 in 25–50 ms: p50 is fast, p99 in the slow bucket.
        let c = cumulative(&[(0, 90), (8, 10)]);
        assert!(quantile(0.5, &c, 100) <= 0.1);
        let p99 = quantile(0.99, &c, 100);
        assert!((25.0..=50.0).contains(&p99), "{p99}");
        // Above the top bucket: its bound.
        let c = cumulative(&[]);
        assert_eq!(quantile(0.5, &c, 3), 10_000.0);
        assert!(quantile(0.5, &c, 0).is_nan());
    }

    #[test]
    fn a_route_s_series_stays_within_a_mebibyte() {
        let bytes = std::mem::size_of::<Point>() * POINTS
            + MARKERS * (std::mem::size_of::<Marker>() + MARKER_TEXT);
        assert!(bytes <= 1 << 20, "{bytes}");
        assert_eq!(std::mem::size_of::<Point>(), 88);
        let long = clip("é".repeat(300));
        assert!(long.len() <= MARKER_TEXT && long.ends_with("..."), "{long}");
    }
}
