//! The legacy/new choice: a point in [0, 100) per request — random, or a stable hash of the
//! sticky key — goes to `new` iff it lies below new's share. The resolution is 1 in 10⁶
//! (0.0001 %), so weights are honoured to better than the 0.01 % the contract asks.
//!
//! Because a sticky key's point never changes, a key served by `new` at share `s` is served by
//! `new` at every share above `s` (monotone cohorts).

use cutover_config::Weights;
use rand::Rng;

use crate::stats::BackendKind;

/// Points per 100 %.
const SCALE: u64 = 1_000_000;

/// The split of one route at one weight setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Points in [0, SCALE) below which a request goes to `new`.
    new_below: u64,
}

impl Split {
    pub fn new(weights: &Weights) -> Self {
        let share = weights.new_share().clamp(0.0, 1.0);
        Split {
            new_below: (share * SCALE as f64).round() as u64,
        }
    }

    /// All live traffic to legacy (what a local rollback installs).
    pub fn all_legacy() -> Self {
        Split { new_below: 0 }
    }

    /// New's share of live traffic in percent.
    pub fn new_percent(&self) -> f64 {
        self.new_below as f64 * 100.0 / SCALE as f64
    }

    /// Choose for a request with sticky key `key` (if the route is sticky and the request has
    /// one), else at random.
    pub fn choose(&self, key: Option<&[u8]>) -> BackendKind {
        if self.new_below == 0 {
            return BackendKind::Legacy;
        }
        if self.new_below >= SCALE {
            return BackendKind::New;
        }
        let point = match key {
            Some(key) => sticky_point(key),
            None => rand::rng().random_range(0..SCALE),
        };
        self.pick(point)
    }

    fn pick(&self, point: u64) -> BackendKind {
        if point < self.new_below {
            BackendKind::New
        } else {
            BackendKind::Legacy
        }
    }
}

/// The stable point of a sticky key: xxh3 (a fixed, versioned algorithm, so every instance and
/// every build of cutover agrees on it).
pub fn sticky_point(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key) % SCALE
}

/// The value of cookie `name` in a `Cookie` header value (`a=1; b=2`).
pub fn cookie_value<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(legacy: f64, new: f64) -> Weights {
        Weights {
            legacy,
            new,
            shadow: 0.0,
        }
    }

    #[test]
    fn extremes_never_roll_dice() {
        for _ in 0..1000 {
            assert_eq!(Split::new(&w(100.0, 0.0)).choose(None), BackendKind::Legacy);
            assert_eq!(Split::new(&w(0.0, 5.0)).choose(None), BackendKind::New);
        }
    }

    #[test]
    fn resolution_is_finer_than_a_hundredth_of_a_percent() {
        assert_eq!(Split::new(&w(9999.0, 1.0)).new_percent(), 0.01);
        assert_eq!(Split::new(&w(99999.0, 1.0)).new_percent(), 0.001);
        assert!(Split::new(&w(99999.0, 1.0)).new_below > 0);
    }

    #[test]
    fn random_share_matches_weight() {
        let split = Split::new(&w(75.0, 25.0));
        let n = 200_000;
        let new = (0..n)
            .filter(|_| split.choose(None) == BackendKind::New)
            .count();
        let share = new as f64 / n as f64;
        assert!((share - 0.25).abs() < 0.01, "share {share}");
    }

    #[test]
    fn sticky_is_stable_and_monotone() {
        let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let mut previous_new = 0;
        let mut on_new_before: Vec<bool> = vec![false; keys.len()];
        for pct in [0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 100.0] {
            let split = Split::new(&w(100.0 - pct, pct));
            let mut count = 0;
            for (i, k) in keys.iter().enumerate() {
                let a = split.choose(Some(k.as_bytes()));
                assert_eq!(a, split.choose(Some(k.as_bytes())), "stable at {pct}%");
                let on_new = a == BackendKind::New;
                assert!(!on_new_before[i] || on_new, "{k} left new at {pct}%");
                on_new_before[i] = on_new;
                count += usize::from(on_new);
            }
            assert!(count >= previous_new);
            let share = count as f64 / keys.len() as f64 * 100.0;
            assert!((share - pct).abs() < 4.0, "{share}% of keys at {pct}%");
            previous_new = count;
        }
    }

    #[test]
    fn cookie_lookup() {
        assert_eq!(cookie_value(b"a=1; uid=42 ;b=3", "uid"), Some(&b"42"[..]));
        assert_eq!(cookie_value(b"uidx=1", "uid"), None);
        assert_eq!(cookie_value(b"", "uid"), None);
    }
}
