//! One route's statistics over an evaluation window, as the rule engine sees them (the
//! contract between the data plane, which produces them, and the controller): per backend
//! and role a request count, an error count and an HDR latency histogram (µs), plus the
//! comparison and divergence counts. The data plane produces them from its sliding windows;
//! each fleet instance publishes them to etcd ([`Published`]) and the leader merges them
//! ([`WindowStats::merge`] — HDR histograms merge exactly, so the merged p99 is the p99 of
//! the union of the samples, not an average of p99s).

use std::io::Cursor;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency the histograms hold: 1 hour in µs (larger values are clamped).
pub const MAX_MICROS: u64 = 3_600_000_000;
/// Significant digits of every latency histogram: quantiles within 1 %. Each window slice of
/// every route × backend × role holds one histogram, so its size is the stats' memory: 3,328
/// `u32` counters (13 KiB) at 2 digits, 23,552 (92 KiB) at 3 (docs/architecture.md,
/// Statistics).
pub const SIGFIG: u8 = 2;

/// An empty latency histogram with the bounds every window uses.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, SIGFIG).expect("static histogram bounds")
}

/// Requests of one backend in one role (primary or shadow).
#[derive(Debug, Clone, PartialEq)]
pub struct RoleStats {
    /// Requests (or, for comparisons, compared pairs).
    pub count: u64,
    /// 5xx answers and requests that got no answer.
    pub errors: u64,
    /// Latency of every sample, in µs.
    pub latency: Histogram<u64>,
}

impl Default for RoleStats {
    fn default() -> Self {
        RoleStats {
            count: 0,
            errors: 0,
            latency: latency_histogram(),
        }
    }
}

impl RoleStats {
    /// `errors / count`, `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.count > 0).then(|| self.errors as f64 / self.count as f64)
    }

    /// The `q` quantile (0–1) of the latency in µs, `None` without samples.
    pub fn quantile_micros(&self, q: f64) -> Option<u64> {
        (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(q))
    }

    /// How many latency samples are above `micros`.
    pub fn count_above(&self, micros: u64) -> u64 {
        if self.latency.is_empty() || micros >= self.latency.max() {
            return 0;
        }
        let at_or_below = self.latency.count_between(0, micros);
        self.latency.len().saturating_sub(at_or_below)
    }

    fn merge(&mut self, other: &RoleStats) {
        self.count += other.count;
        self.errors += other.errors;
        // Same bounds on both sides: cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

/// One backend's primary and shadow requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendStats {
    /// Requests it served live.
    pub primary: RoleStats,
    /// Shadow copies it was sent.
    pub shadow: RoleStats,
}

/// One route over one evaluation window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowStats {
    /// The legacy backend's requests.
    pub legacy: BackendStats,
    /// The new backend's requests.
    pub new: BackendStats,
    /// Compared primary/shadow pairs.
    pub comparisons: u64,
    /// Compared pairs that differed (after ignore rules and learned noise).
    pub divergences: u64,
    /// Pairs of legacy answers (the noise-learning copies) compared like a legacy/new pair:
    /// how often legacy disagrees with itself.
    pub baseline_comparisons: u64,
    /// Of those, the pairs that differed.
    pub baseline_divergences: u64,
    /// Legacy is being compared with itself on this route (noise learning is on): the
    /// `divergence` rule waits for that baseline rather than judge without it.
    pub baseline_expected: bool,
}

impl WindowStats {
    /// No request, copy or comparison recorded.
    pub fn is_empty(&self) -> bool {
        [
            &self.legacy.primary,
            &self.legacy.shadow,
            &self.new.primary,
            &self.new.shadow,
        ]
        .iter()
        .all(|r| r.count == 0)
            && self.comparisons == 0
            && self.baseline_comparisons == 0
    }

    /// Add `other`'s samples to these.
    pub fn merge(&mut self, other: &WindowStats) {
        self.legacy.primary.merge(&other.legacy.primary);
        self.legacy.shadow.merge(&other.legacy.shadow);
        self.new.primary.merge(&other.new.primary);
        self.new.shadow.merge(&other.new.shadow);
        self.comparisons += other.comparisons;
        self.divergences += other.divergences;
        self.baseline_comparisons += other.baseline_comparisons;
        self.baseline_divergences += other.baseline_divergences;
        self.baseline_expected |= other.baseline_expected;
    }

    /// The JSON form published under `stats/<route>/<instance>`.
    pub fn to_wire(&self) -> WireWindow {
        WireWindow {
            legacy: WireBackend::from(&self.legacy),
            new: WireBackend::from(&self.new),
            comparisons: self.comparisons,
            divergences: self.divergences,
            baseline_comparisons: self.baseline_comparisons,
            baseline_divergences: self.baseline_divergences,
            baseline_expected: self.baseline_expected,
        }
    }
}

/// What an instance publishes every second under `<prefix>/stats/<route>/<instance>` (bound
/// to its lease, so a dead instance's numbers disappear with it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// The instance that published it.
    pub instance: String,
    /// When it was taken, in Unix milliseconds.
    pub at_ms: u64,
    /// The mod_revision of the weights the window was collected under: the leader merges only
    /// windows of the weights it evaluates.
    pub weights_revision: i64,
    /// The window itself.
    pub stats: WireWindow,
}

/// [`WindowStats`] as JSON: counters plus each histogram as base64 of HdrHistogram's
/// compressed V2 encoding (readable by every HdrHistogram implementation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireWindow {
    /// [`WindowStats::legacy`].
    pub legacy: WireBackend,
    /// [`WindowStats::new`].
    pub new: WireBackend,
    /// [`WindowStats::comparisons`].
    pub comparisons: u64,
    /// [`WindowStats::divergences`].
    pub divergences: u64,
    /// Absent in windows published by older instances: no baseline.
    #[serde(default)]
    pub baseline_comparisons: u64,
    /// [`WindowStats::baseline_divergences`].
    #[serde(default)]
    pub baseline_divergences: u64,
    /// [`WindowStats::baseline_expected`].
    #[serde(default)]
    pub baseline_expected: bool,
}

/// [`BackendStats`] as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireBackend {
    /// [`BackendStats::primary`].
    pub primary: WireRole,
    /// [`BackendStats::shadow`].
    pub shadow: WireRole,
}

/// [`RoleStats`] as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRole {
    /// [`RoleStats::count`].
    pub count: u64,
    /// [`RoleStats::errors`].
    pub errors: u64,
    /// base64(HdrHistogram V2 deflate), µs.
    pub latency: String,
}

impl From<&BackendStats> for WireBackend {
    fn from(b: &BackendStats) -> Self {
        WireBackend {
            primary: WireRole::from(&b.primary),
            shadow: WireRole::from(&b.shadow),
        }
    }
}

impl From<&RoleStats> for WireRole {
    fn from(r: &RoleStats) -> Self {
        let mut bytes = Vec::new();
        // Serializing into a Vec only fails on histograms too large to encode; fall back to an
        // empty string, which decodes as "no latency samples".
        let latency = match V2DeflateSerializer::new().serialize(&r.latency, &mut bytes) {
            Ok(_) => base64::engine::general_purpose::STANDARD.encode(&bytes),
            Err(_) => String::new(),
        };
        WireRole {
            count: r.count,
            errors: r.errors,
            latency,
        }
    }
}

/// A published window that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("stats: {0}")]
pub struct WireError(String);

impl WireWindow {
    /// Back to [`WindowStats`]; an error when a histogram is not base64 of an HdrHistogram.
    pub fn decode(&self) -> Result<WindowStats, WireError> {
        Ok(WindowStats {
            legacy: self.legacy.decode()?,
            new: self.new.decode()?,
            comparisons: self.comparisons,
            divergences: self.divergences,
            baseline_comparisons: self.baseline_comparisons,
            baseline_divergences: self.baseline_divergences,
            baseline_expected: self.baseline_expected,
        })
    }
}

impl WireBackend {
    fn decode(&self) -> Result<BackendStats, WireError> {
        Ok(BackendStats {
            primary: self.primary.decode()?,
            shadow: self.shadow.decode()?,
        })
    }
}

impl WireRole {
    fn decode(&self) -> Result<RoleStats, WireError> {
        let mut latency = latency_histogram();
        if !self.latency.is_empty() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&self.latency)
                .map_err(|e| WireError(format!("latency is not base64: {e}")))?;
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut Cursor::new(bytes))
                .map_err(|e| WireError(format!("latency is not an HdrHistogram: {e:?}")))?;
            latency
                .add(&h)
                .map_err(|e| WireError(format!("latency histogram out of range: {e:?}")))?;
        }
        Ok(RoleStats {
            count: self.count,
            errors: self.errors,
            latency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(samples: &[u64], errors: u64) -> RoleStats {
        let mut r = RoleStats::default();
        for &s in samples {
            r.latency.record(s).unwrap();
        }
        r.count = samples.len() as u64;
        r.errors = errors;
        r
    }

    #[test]
    fn latency_histograms_are_small_and_within_one_percent() {
        let h = latency_histogram();
        // The memory of the statistics is this, times slices, threads, roles and backends.
        assert!(
            h.distinct_values() <= 4096,
            "{} counters",
            h.distinct_values()
        );
        for micros in [1, 7, 999, 1_234, 56_789, 2_345_678, MAX_MICROS] {
            let mut h = latency_histogram();
            h.record(micros).unwrap();
            let got = h.value_at_quantile(0.99) as f64;
            let error = (got - micros as f64).abs() / micros as f64;
            assert!(error <= 0.01, "{micros} µs reads back as {got}");
        }
    }

    #[test]
    fn wire_round_trip_is_exact() {
        let mut w = WindowStats::default();
        w.new.primary = role(&[100, 200, 300, 40_000], 1);
        w.legacy.shadow = role(&[5, 6], 0);
        w.comparisons = 7;
        w.divergences = 2;
        w.baseline_comparisons = 3;
        w.baseline_divergences = 1;
        w.baseline_expected = true;
        let json = serde_json::to_string(&w.to_wire()).unwrap();
        let back: WireWindow = serde_json::from_str(&json).unwrap();
        assert_eq!(back.decode().unwrap(), w);
    }

    #[test]
    fn merge_is_the_union_of_samples() {
        let mut a = WindowStats::default();
        a.new.primary = role(&(1..=99).map(|_| 1_000).collect::<Vec<_>>(), 0);
        let mut b = WindowStats::default();
        b.new.primary = role(&[1_000_000], 1);
        a.merge(&b);
        assert_eq!(a.new.primary.count, 100);
        assert_eq!(a.new.primary.errors, 1);
        assert_eq!(a.new.primary.count_above(10_000), 1);
        let p999 = a.new.primary.quantile_micros(0.999).unwrap();
        assert!(p999 > 900_000, "{p999}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut wire = WindowStats::default().to_wire();
        wire.new.primary.latency = "not base64!".into();
        assert!(wire.decode().is_err());
        wire.new.primary.latency = base64::engine::general_purpose::STANDARD.encode(b"nope");
        assert!(wire.decode().is_err());
    }
}
