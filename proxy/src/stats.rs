//! Sliding-window statistics per route × backend × role: request count, error count and an HDR
//! latency histogram (µs, 2 significant digits), rotated in slices so old samples expire.
//!
//! Recording takes one of several shard locks picked per thread, never a global lock; reading
//! merges the shards and the slices inside the window.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cutover_control::window::{latency_histogram, RoleStats, MAX_MICROS, SIGFIG};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Which backend served (or was sent) a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Legacy,
    New,
}

impl BackendKind {
    pub const ALL: [BackendKind; 2] = [BackendKind::Legacy, BackendKind::New];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Legacy => "legacy",
            BackendKind::New => "new",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Whether the request was the live one (its answer went to the client) or a shadow copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Shadow,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Primary, Role::Shadow];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Shadow => "shadow",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One sample: how long the request took and whether it counts as an error (5xx or no answer).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub latency: Duration,
    pub error: bool,
}

/// The window's length and how finely it is sliced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowShape {
    pub window: Duration,
    pub slices: u32,
}

impl WindowShape {
    fn slice_len(&self) -> Duration {
        self.window / self.slices
    }
}

#[derive(Debug)]
struct Slice {
    epoch: u64,
    count: u64,
    errors: u64,
    hist: Option<Histogram<u32>>,
}

impl Slice {
    fn empty() -> Self {
        Slice {
            epoch: u64::MAX,
            count: 0,
            errors: 0,
            hist: None,
        }
    }
}

#[derive(Debug)]
struct Ring {
    slices: Vec<Slice>,
}

/// Statistics of one route × backend × role over a sliding window.
#[derive(Debug)]
pub struct WindowedStats {
    shape: WindowShape,
    origin: Instant,
    shards: Box<[Mutex<Ring>]>,
}

fn shard_count() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 16)
    })
}

fn shard_index(n: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|m| {
        if m.get() == usize::MAX {
            m.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        m.get() % n
    })
}

impl WindowedStats {
    /// Empty statistics with `shape`; slices are timed from `origin`.
    pub fn new(shape: WindowShape, origin: Instant) -> Self {
        let ring = || {
            Mutex::new(Ring {
                // One slice more than the window so the one being filled never evicts the oldest
                // slice still inside the window.
                slices: (0..=shape.slices).map(|_| Slice::empty()).collect(),
            })
        };
        WindowedStats {
            shape,
            origin,
            shards: (0..shard_count()).map(|_| ring()).collect(),
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / self.shape.slice_len().as_nanos().max(1)) as u64
    }

    /// Record one sample taken at `now`.
    pub fn record(&self, now: Instant, sample: Sample) {
        let epoch = self.epoch(now);
        let shard = &self.shards[shard_index(self.shards.len())];
        let mut ring = shard.lock().unwrap_or_else(|p| p.into_inner());
        let n = ring.slices.len() as u64;
        let slice = &mut ring.slices[(epoch % n) as usize];
        if slice.epoch != epoch {
            slice.epoch = epoch;
            slice.count = 0;
            slice.errors = 0;
            if let Some(h) = slice.hist.as_mut() {
                h.reset();
            }
        }
        slice.count += 1;
        slice.errors += u64::from(sample.error);
        let micros = (sample.latency.as_micros() as u64).clamp(1, MAX_MICROS);
        let hist = slice.hist.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, MAX_MICROS, SIGFIG).expect("static histogram bounds")
        });
        hist.saturating_record(micros);
    }

    /// Merge the slices inside the window ending at `now`.
    pub fn read(&self, now: Instant) -> WindowSummary {
        let (count, errors, merged) = self.merge(now, None);
        WindowSummary::new(count, errors, merged.as_ref())
    }

    /// The window ending at `now`, starting no earlier than the slice holding `since`, as the
    /// rule engine reads it.
    pub fn role_stats(&self, now: Instant, since: Instant) -> RoleStats {
        let (count, errors, merged) = self.merge(now, Some(since));
        let mut latency = latency_histogram();
        if let Some(h) = merged {
            for v in h.iter_recorded() {
                // Same bounds: cannot fail.
                let _ = latency.record_n(v.value_iterated_to(), u64::from(v.count_at_value()));
            }
        }
        RoleStats {
            count,
            errors,
            latency,
        }
    }

    fn merge(&self, now: Instant, since: Option<Instant>) -> (u64, u64, Option<Histogram<u32>>) {
        let epoch = self.epoch(now);
        let mut oldest = epoch.saturating_sub(u64::from(self.shape.slices) - 1);
        if let Some(since) = since {
            oldest = oldest.max(self.epoch(since));
        }
        let mut merged: Option<Histogram<u32>> = None;
        let (mut count, mut errors) = (0, 0);
        for shard in self.shards.iter() {
            let ring = shard.lock().unwrap_or_else(|p| p.into_inner());
            for s in ring
                .slices
                .iter()
                .filter(|s| s.epoch >= oldest && s.epoch <= epoch)
            {
                count += s.count;
                errors += s.errors;
                if let Some(h) = &s.hist {
                    match merged.as_mut() {
                        Some(m) => m.add(h).expect("same histogram bounds"),
                        None => merged = Some(h.clone()),
                    }
                }
            }
        }
        (count, errors, merged)
    }
}

/// The numbers of one role of one backend over the window, as `/api/v1/routes/<id>/stats`
/// shows them (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowSummary {
    pub count: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
}

impl WindowSummary {
    fn new(count: u64, errors: u64, hist: Option<&Histogram<u32>>) -> Self {
        let q = |q: f64| {
            hist.filter(|h| !h.is_empty())
                .map(|h| round3(h.value_at_quantile(q) as f64 / 1000.0))
        };
        WindowSummary {
            count,
            errors,
            error_rate: if count == 0 {
                0.0
            } else {
                errors as f64 / count as f64
            },
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
        }
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The window statistics of one route: backend × role.
#[derive(Debug)]
pub struct RouteWindows {
    pub shape: WindowShape,
    cells: [[WindowedStats; 2]; 2],
}

impl RouteWindows {
    pub fn new(shape: WindowShape, origin: Instant) -> Self {
        let cell = || WindowedStats::new(shape, origin);
        RouteWindows {
            shape,
            cells: [[cell(), cell()], [cell(), cell()]],
        }
    }

    pub fn get(&self, backend: BackendKind, role: Role) -> &WindowedStats {
        &self.cells[backend.index()][role.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> WindowShape {
        WindowShape {
            window: Duration::from_secs(60),
            slices: 12,
        }
    }

    fn ok(ms: u64) -> Sample {
        Sample {
            latency: Duration::from_millis(ms),
            error: false,
        }
    }

    #[test]
    fn empty_window_has_null_percentiles() {
        let t0 = Instant::now();
        let s = WindowedStats::new(shape(), t0).read(t0);
        assert_eq!(s.count, 0);
        assert_eq!(s.error_rate, 0.0);
        assert_eq!(s.p50_ms, None);
        assert_eq!(s.p999_ms, None);
    }

    #[test]
    fn role_stats_start_at_since() {
        let t0 = Instant::now();
        let w = WindowedStats::new(shape(), t0);
        w.record(t0, ok(1));
        w.record(t0 + Duration::from_secs(20), ok(300));
        w.record(
            t0 + Duration::from_secs(21),
            Sample {
                latency: Duration::from_millis(2),
                error: true,
            },
        );
        let now = t0 + Duration::from_secs(22);
        let all = w.role_stats(now, t0);
        assert_eq!((all.count, all.errors, all.latency.len()), (3, 1, 3));
        // From the slice holding t0 + 20s on: the first sample is not in it.
        let fresh = w.role_stats(now, t0 + Duration::from_secs(20));
        assert_eq!((fresh.count, fresh.errors), (2, 1));
        assert_eq!(fresh.count_above(250_000), 1);
    }

    #[test]
    fn percentiles_and_errors() {
        let t0 = Instant::now();
        let w = WindowedStats::new(shape(), t0);
        for ms in 1..=100 {
            w.record(t0, ok(ms));
        }
        w.record(
            t0,
            Sample {
                latency: Duration::from_millis(5),
                error: true,
            },
        );
        let s = w.read(t0);
        assert_eq!(s.count, 101);
        assert_eq!(s.errors, 1);
        let p50 = s.p50_ms.unwrap();
        assert!((49.0..=51.0).contains(&p50), "p50 {p50}");
        let p99 = s.p99_ms.unwrap();
        assert!((98.0..=100.1).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn old_samples_expire_slice_by_slice() {
        let t0 = Instant::now();
        let w = WindowedStats::new(shape(), t0);
        w.record(t0, ok(1));
        w.record(t0 + Duration::from_secs(30), ok(1));
        assert_eq!(w.read(t0 + Duration::from_secs(59)).count, 2);
        // The first sample's 5 s slice leaves the 60 s window; the second stays.
        assert_eq!(w.read(t0 + Duration::from_secs(61)).count, 1);
        assert_eq!(w.read(t0 + Duration::from_secs(95)).count, 0);
        // 65 s lands in the ring slot that held the 0 s sample: it must start from zero, so the
        // window holds the 30 s and 65 s samples only (3 would mean a stale slot was summed).
        w.record(t0 + Duration::from_secs(65), ok(1));
        assert_eq!(w.read(t0 + Duration::from_secs(65)).count, 2);
    }

    #[test]
    fn records_from_many_threads() {
        let t0 = Instant::now();
        let w = std::sync::Arc::new(WindowedStats::new(shape(), t0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        w.record(t0, ok(2));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(w.read(t0).count, 4000);
    }
}
