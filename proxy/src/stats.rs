//! Sliding-window statistics per route × backend × role: request count, error count and an HDR
//! latency histogram (µs, 2 significant digits), rotated in slices so old samples expire.
//! Every sample carries the evaluation window it belongs to (a number that a weights write
//! moves on), so a read of one window never counts a sample of another, whatever the slice
//! size (SPEC §11).
//!
//! Recording takes one of several shard locks picked per thread, and the window's ring lock
//! only once per slice; reading merges the shards and the slices inside the window.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cutover_config::window::{latency_histogram, RoleStats, MAX_MICROS, SIGFIG};
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

/// The samples of one slice of time (`epoch` counts slices since the origin) of one evaluation
/// window (`window`).
#[derive(Debug)]
struct Slice {
    window: u64,
    epoch: u64,
    count: u64,
    errors: u64,
    hist: Option<Histogram<u32>>,
}

/// `Slice::epoch` of a slice that holds nothing yet.
const EMPTY: u64 = u64::MAX;

impl Slice {
    fn empty() -> Self {
        Slice {
            window: 0,
            epoch: EMPTY,
            count: 0,
            errors: 0,
            hist: None,
        }
    }

    /// Which slice this is: ordered by window, then time.
    fn key(&self) -> (u64, u64) {
        (self.window, self.epoch)
    }

    /// Start over as the slice `key` (keeping the histogram's memory).
    fn restart(&mut self, (window, epoch): (u64, u64)) {
        self.window = window;
        self.epoch = epoch;
        self.count = 0;
        self.errors = 0;
        if let Some(h) = self.hist.as_mut() {
            h.reset();
        }
    }

    fn record(&mut self, sample: Sample) {
        self.count += 1;
        self.errors += u64::from(sample.error);
        let micros = (sample.latency.as_micros() as u64).clamp(1, MAX_MICROS);
        self.hist
            .get_or_insert_with(slice_histogram)
            .saturating_record(micros);
    }

    /// Add `other`'s samples (of the same slice) to these.
    fn add(&mut self, other: &Slice) {
        self.count += other.count;
        self.errors += other.errors;
        if let Some(h) = &other.hist {
            // Same bounds: cannot fail.
            let _ = self.hist.get_or_insert_with(slice_histogram).add(h);
        }
    }
}

fn slice_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_MICROS, SIGFIG).expect("static histogram bounds")
}

/// Statistics of one route × backend × role over a sliding window.
///
/// Each recording thread fills the slice of the current epoch in its own shard; when it moves
/// on to a later epoch it folds the finished slice into `ring`, the slices merged across
/// threads (`slices + 1` of them, slot `epoch % len`, so the one being filled never evicts the
/// oldest still inside the window). A reader takes every shard and then the ring, so no slice
/// is missed or counted twice while it moves. Memory: (threads + slices + 1) histograms, not
/// threads × (slices + 1) (docs/architecture.md, Statistics).
#[derive(Debug)]
pub struct WindowedStats {
    shape: WindowShape,
    origin: Instant,
    /// The slice each recording thread is filling. Lock order: shards by index, then `ring`.
    shards: Box<[Mutex<Slice>]>,
    ring: Mutex<Vec<Slice>>,
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

/// The ring's slot for slice `key` (window, epoch). A slot still holding an older slice starts
/// over; a slot already holding a later one (a later window, or a whole ring later in time)
/// means `key` can never be read again: `None`.
fn ring_slot(ring: &mut [Slice], key: (u64, u64)) -> Option<&mut Slice> {
    let n = ring.len() as u64;
    let slot = &mut ring[(key.1 % n) as usize];
    if slot.key() != key {
        if slot.epoch != EMPTY && slot.key() > key {
            return None;
        }
        slot.restart(key);
    }
    Some(slot)
}

/// Add a finished `slice` to the ring.
fn fold(ring: &mut [Slice], slice: &Slice) {
    if slice.epoch == EMPTY || slice.count == 0 {
        return;
    }
    if let Some(slot) = ring_slot(ring, slice.key()) {
        slot.add(slice);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WindowedStats {
    /// Empty statistics with `shape`; slices are timed from `origin`.
    pub fn new(shape: WindowShape, origin: Instant) -> Self {
        WindowedStats {
            shape,
            origin,
            shards: (0..shard_count())
                .map(|_| Mutex::new(Slice::empty()))
                .collect(),
            ring: Mutex::new((0..=shape.slices).map(|_| Slice::empty()).collect()),
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / self.shape.slice_len().as_nanos().max(1)) as u64
    }

    /// Record one sample taken at `now` of a request that started under evaluation window
    /// `window`.
    pub fn record(&self, now: Instant, window: u64, sample: Sample) {
        let key = (window, self.epoch(now));
        let mut shard = lock(&self.shards[shard_index(self.shards.len())]);
        if shard.key() != key {
            if shard.epoch != EMPTY && key < shard.key() {
                // Late: a sample of a slice this shard has already left (its `now` was taken
                // before the last one's, by another thread on the same shard, or its request
                // started under the window before). It goes straight into the ring.
                if let Some(slot) = ring_slot(&mut lock(&self.ring), key) {
                    slot.record(sample);
                }
                return;
            }
            fold(&mut lock(&self.ring), &shard);
            shard.restart(key);
        }
        shard.record(sample);
    }

    /// How many histograms this holds (each 13 KiB): what its memory grows with.
    #[cfg(test)]
    fn histograms(&self) -> usize {
        let shards = self
            .shards
            .iter()
            .filter(|s| lock(s).hist.is_some())
            .count();
        shards + lock(&self.ring).iter().filter(|s| s.hist.is_some()).count()
    }

    /// The samples of evaluation window `window` in the time window ending at `now`, as
    /// `/api/v1/routes/<id>/stats` shows them.
    pub fn read(&self, now: Instant, window: u64) -> WindowSummary {
        let (count, errors, merged) = self.merge(now, window);
        WindowSummary::new(count, errors, merged.as_ref())
    }

    /// The samples of evaluation window `window` in the time window ending at `now`, as the
    /// rule engine reads them.
    pub fn role_stats(&self, now: Instant, window: u64) -> RoleStats {
        let (count, errors, merged) = self.merge(now, window);
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

    fn merge(&self, now: Instant, window: u64) -> (u64, u64, Option<Histogram<u32>>) {
        let epoch = self.epoch(now);
        let oldest = epoch.saturating_sub(u64::from(self.shape.slices) - 1);
        // Every shard, then the ring (the lock order of `record`): a slice being folded is in
        // exactly one of them.
        let shards: Vec<_> = self.shards.iter().map(lock).collect();
        let ring = lock(&self.ring);
        let mut merged = Slice::empty();
        for s in ring.iter().chain(shards.iter().map(|s| &**s)).filter(|s| {
            s.epoch != EMPTY && s.window == window && s.epoch >= oldest && s.epoch <= epoch
        }) {
            merged.add(s);
        }
        (merged.count, merged.errors, merged.hist)
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
        let s = WindowedStats::new(shape(), t0).read(t0, 0);
        assert_eq!(s.count, 0);
        assert_eq!(s.error_rate, 0.0);
        assert_eq!(s.p50_ms, None);
        assert_eq!(s.p999_ms, None);
    }

    fn err(ms: u64) -> Sample {
        Sample {
            latency: Duration::from_millis(ms),
            error: true,
        }
    }

    #[test]
    fn a_window_holds_only_its_own_samples() {
        let t0 = Instant::now();
        let w = WindowedStats::new(shape(), t0);
        w.record(t0, 0, ok(1));
        w.record(t0 + Duration::from_secs(20), 0, ok(300));
        // A weights write at 20.5 s starts window 1 inside the same 5 s slice.
        w.record(t0 + Duration::from_millis(20_600), 1, err(2));
        w.record(t0 + Duration::from_secs(21), 1, ok(3));
        let now = t0 + Duration::from_secs(22);
        let before = w.role_stats(now, 0);
        assert_eq!((before.count, before.errors), (2, 0));
        let fresh = w.role_stats(now, 1);
        assert_eq!((fresh.count, fresh.errors, fresh.latency.len()), (2, 1, 2));
        assert_eq!(
            fresh.count_above(250_000),
            0,
            "the 300 ms sample is window 0's"
        );
        assert_eq!(w.read(now, 1).count, 2);
    }

    #[test]
    fn a_sample_of_an_earlier_window_recorded_late_is_never_counted_in_a_later_one() {
        let t0 = Instant::now();
        let w = WindowedStats::new(shape(), t0);
        // The same thread records window 1, then a request that started under window 0
        // finishes (in the same slice, and in later slices).
        w.record(t0 + Duration::from_secs(1), 1, ok(1));
        w.record(t0 + Duration::from_secs(2), 0, err(1));
        w.record(t0 + Duration::from_secs(7), 0, err(1));
        w.record(t0 + Duration::from_secs(8), 1, ok(1));
        w.record(t0 + Duration::from_secs(9), 0, err(1));
        let now = t0 + Duration::from_secs(10);
        let fresh = w.role_stats(now, 1);
        assert_eq!((fresh.count, fresh.errors), (2, 0));
        // Window 2 starts: nothing of 0 or 1 is in it, at any slice size.
        assert_eq!(w.read(now, 2).count, 0);
    }

    #[test]
    fn windows_stay_exact_at_every_slice_size() {
        for (window, slices) in [(1, 1), (1, 100), (5, 12), (60, 12), (3600, 60)] {
            let shape = WindowShape {
                window: Duration::from_secs(window),
                slices,
            };
            let t0 = Instant::now();
            let w = WindowedStats::new(shape, t0);
            // 400 samples under window 0, then 1,000 under window 1, interleaved in time.
            for i in 0..1400u64 {
                let at = t0 + Duration::from_micros(100 * i);
                if i < 400 {
                    w.record(at, 0, ok(1));
                } else {
                    w.record(at, 1, if i % 5 == 0 { err(1) } else { ok(1) });
                }
            }
            let now = t0 + Duration::from_millis(140);
            let fresh = w.role_stats(now, 1);
            assert_eq!((fresh.count, fresh.errors), (1000, 200), "{shape:?}");
        }
    }

    #[test]
    fn percentiles_and_errors() {
        let t0 = Instant::now();
        let w = WindowedStats::new(shape(), t0);
        for ms in 1..=100 {
            w.record(t0, 0, ok(ms));
        }
        w.record(t0, 0, err(5));
        let s = w.read(t0, 0);
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
        w.record(t0, 0, ok(1));
        w.record(t0 + Duration::from_secs(30), 0, ok(1));
        assert_eq!(w.read(t0 + Duration::from_secs(59), 0).count, 2);
        // The first sample's 5 s slice leaves the 60 s window; the second stays.
        assert_eq!(w.read(t0 + Duration::from_secs(61), 0).count, 1);
        assert_eq!(w.read(t0 + Duration::from_secs(95), 0).count, 0);
        // 65 s is a whole ring (13 slices) after 0 s: the window holds the 30 s and 65 s samples
        // only (3 would mean the 0 s one was still counted).
        w.record(t0 + Duration::from_secs(65), 0, ok(1));
        assert_eq!(w.read(t0 + Duration::from_secs(65), 0).count, 2);
    }

    /// Four threads at once each record a 2 ms sample at every one of `times`.
    fn record_on_four_threads(w: &WindowedStats, times: &[Instant]) {
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for &t in times {
                        w.record(t, 0, ok(2));
                    }
                });
            }
        });
    }

    #[test]
    fn memory_grows_with_threads_plus_slices_not_their_product() {
        let t0 = Instant::now();
        let w = WindowedStats::new(shape(), t0);
        // 4 threads record through 30 slices (twice the ring): every thread fills every slice.
        let times: Vec<Instant> = (0..30)
            .map(|slice| t0 + Duration::from_secs(5 * slice))
            .collect();
        record_on_four_threads(&w, &times);
        let (threads, ring) = (4.min(shard_count()), shape().slices as usize + 1);
        assert!(
            w.histograms() <= threads + ring,
            "{} histograms for {threads} shards and {ring} ring slots",
            w.histograms()
        );
        // The window (the last 12 slices) holds each thread's 12 samples, none lost or doubled.
        let now = t0 + Duration::from_secs(5 * 29);
        assert_eq!(w.read(now, 0).count, 4 * 12);
    }

    #[test]
    fn a_late_sample_counts_in_its_own_slice() {
        let t0 = Instant::now();
        let w = WindowedStats::new(shape(), t0);
        w.record(t0 + Duration::from_secs(20), 0, ok(1));
        // Taken at 3 s, recorded after the 20 s one: it belongs to the first slice.
        w.record(t0 + Duration::from_secs(3), 0, ok(1));
        let now = t0 + Duration::from_secs(21);
        assert_eq!(w.read(now, 0).count, 2);
        // 61 s: the 3 s slice has left the window, the 20 s one has not.
        assert_eq!(w.read(t0 + Duration::from_secs(61), 0).count, 1);
    }

    #[test]
    fn records_from_many_threads() {
        let t0 = Instant::now();
        let w = WindowedStats::new(shape(), t0);
        record_on_four_threads(&w, &[t0; 1000]);
        assert_eq!(w.read(t0, 0).count, 4000);
    }
}
