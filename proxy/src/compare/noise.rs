//! Noise learning: JSON Pointers that differ between two answers of `legacy` to the same
//! request are volatile (timestamps, request ids, random order…) and stop counting as
//! divergence for their endpoint group once seen varying often enough.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::OTHER_GROUP;

/// Learned volatile pointer patterns of one endpoint group, e.g. `/items/*/ts`: `*` stands for
/// any array index (and any all-digit object member). Cheap to clone.
/// `NoiseSet::default()` holds nothing.
#[derive(Debug, Clone, Default)]
pub struct NoiseSet {
    inner: Option<Arc<NoiseInner>>,
}

#[derive(Debug)]
struct NoiseInner {
    patterns: Vec<String>,
    /// Each valid pattern split into tokens; `""` (the root) is an empty list.
    parsed: Vec<Vec<PatternToken>>,
}

/// One reference token of a noise pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PatternToken {
    /// `*`: any array element, or an object member named `*` or all digits.
    Star,
    /// An unescaped token; `index` when it also reads as an array index.
    Token { text: String, index: Option<usize> },
}

impl NoiseSet {
    /// A set of JSON Pointer patterns (`""`, or `/`-separated tokens with `~0`/`~1` escapes,
    /// `*` for any index). A pattern that does not start with `/` is kept in
    /// [`patterns`](Self::patterns) but matches nothing.
    pub fn from_patterns(patterns: Vec<String>) -> Self {
        if patterns.is_empty() {
            return Self::default();
        }
        let parsed = patterns.iter().filter_map(|p| parse_pattern(p)).collect();
        Self {
            inner: Some(Arc::new(NoiseInner { patterns, parsed })),
        }
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        self.inner.as_ref().map_or(&[], |inner| &inner.patterns)
    }

    /// Whether the set holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns().is_empty()
    }

    pub(super) fn parsed(&self) -> &[Vec<PatternToken>] {
        self.inner.as_ref().map_or(&[], |inner| &inner.parsed)
    }
}

fn parse_pattern(pattern: &str) -> Option<Vec<PatternToken>> {
    if pattern.is_empty() {
        return Some(Vec::new());
    }
    let tokens = pattern.strip_prefix('/')?;
    Some(
        tokens
            .split('/')
            .map(|token| {
                if token == "*" {
                    return PatternToken::Star;
                }
                let text = token.replace("~1", "/").replace("~0", "~");
                let index = array_index(&text);
                PatternToken::Token { text, index }
            })
            .collect(),
    )
}

/// A JSON Pointer array index: `0` or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0"
        || (!token.is_empty()
            && !token.starts_with('0')
            && token.bytes().all(|b| b.is_ascii_digit()));
    canonical.then(|| token.parse().ok()).flatten()
}

/// The pattern a pointer generalises to: every all-digit token (an array index, or a numeric
/// object key) becomes `*`. `"/items/3/ts"` → `"/items/*/ts"`.
pub fn generalise_pointer(pointer: &str) -> String {
    if pointer.is_empty() {
        return String::new();
    }
    let mut out = String::with_capacity(pointer.len());
    for (i, token) in pointer.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
            out.push('*');
        } else {
            out.push_str(token);
        }
    }
    out
}

/// Learned noise per endpoint group.
///
/// A pattern becomes volatile once seen differing `min_seen` times (each within `ttl` of the
/// previous sighting); it expires when not seen again for `ttl`. Bounded: at most
/// `max_groups` groups and `max_patterns` patterns per group; sightings beyond that are
/// dropped (after expired entries are swept). Time is passed in, so tests need no clock.
///
/// The pointers observed must come from a diff WITHOUT the learned noise removed
/// ([`super::noise_pointers`]), or a learned pattern would never be seen again and would expire
/// while still volatile.
#[derive(Debug)]
pub struct NoiseLearner {
    ttl: Duration,
    min_seen: u32,
    max_groups: usize,
    max_patterns: usize,
    groups: Mutex<HashMap<String, GroupNoise>>,
}

#[derive(Debug, Default)]
struct GroupNoise {
    /// Pairs of legacy answers compared so far.
    pairs: u32,
    sightings: HashMap<String, Sighting>,
    /// The active set last built, valid until the instant given (`None`: forever).
    cached: Option<(NoiseSet, Option<Instant>)>,
}

#[derive(Debug, Clone, Copy)]
struct Sighting {
    count: u32,
    last: Instant,
}

impl NoiseLearner {
    /// Default bound on endpoint groups with learned noise.
    pub const MAX_GROUPS: usize = 1024;
    /// Default bound on patterns per endpoint group.
    pub const MAX_PATTERNS: usize = 128;
    /// Default number of sightings before a pattern is volatile.
    pub const DEFAULT_MIN_SEEN: u32 = 2;
    /// Pairs of legacy answers of an endpoint group compared before its comparisons with `new`
    /// count ([`NoiseLearner::calibrated`]): enough to see a field that varies in every answer
    /// (2 sightings) at once, and one that varies in half of them with 99 % probability.
    pub const CALIBRATION_PAIRS: u32 = 10;

    /// A learner with the default bounds; `min_seen` 0 counts as 1.
    pub fn new(ttl: Duration, min_seen: u32) -> Self {
        Self::with_limits(ttl, min_seen, Self::MAX_GROUPS, Self::MAX_PATTERNS)
    }

    /// A learner with explicit bounds.
    pub fn with_limits(
        ttl: Duration,
        min_seen: u32,
        max_groups: usize,
        max_patterns: usize,
    ) -> Self {
        Self {
            ttl,
            min_seen: min_seen.max(1),
            max_groups,
            max_patterns,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// Records one pair of legacy answers of `group` compared at `now`, and that `pointers`
    /// differed between them (none: the pair agreed, which still counts towards
    /// [`NoiseLearner::calibrated`]). Pointers that generalise to the same pattern count once.
    /// Nothing is learned for [`OTHER_GROUP`]: it mixes unrelated endpoints, and noise learned
    /// on one would hide real divergences on the others.
    pub fn observe(&self, group: &str, pointers: &[String], now: Instant) {
        if group == OTHER_GROUP {
            return;
        }
        let mut patterns: Vec<String> = pointers.iter().map(|p| generalise_pointer(p)).collect();
        patterns.sort_unstable();
        patterns.dedup();

        let mut groups = self.lock();
        if !groups.contains_key(group) {
            if groups.len() >= self.max_groups {
                groups.retain(|_, noise| {
                    noise.sweep(now, self.ttl);
                    !noise.sightings.is_empty()
                });
            }
            if groups.len() >= self.max_groups {
                return;
            }
            groups.insert(group.to_owned(), GroupNoise::default());
        }
        let Some(noise) = groups.get_mut(group) else {
            return;
        };
        noise.pairs = noise.pairs.saturating_add(1);
        for pattern in patterns {
            let count = match noise.sightings.get_mut(&pattern) {
                Some(sighting) => {
                    if expired(sighting.last, now, self.ttl) {
                        sighting.count = 0;
                    }
                    sighting.count = sighting.count.saturating_add(1);
                    sighting.last = sighting.last.max(now);
                    sighting.count
                }
                None => {
                    if noise.sightings.len() >= self.max_patterns {
                        noise.sweep(now, self.ttl);
                        if noise.sightings.len() >= self.max_patterns {
                            continue;
                        }
                    }
                    noise.sightings.insert(
                        pattern,
                        Sighting {
                            count: 1,
                            last: now,
                        },
                    );
                    1
                }
            };
            if count == self.min_seen {
                // Newly volatile. (Refreshing an active pattern only moves its expiry later,
                // and the cache already expires at the earliest one.)
                noise.cached = None;
            }
        }
    }

    /// The volatile patterns of `group` at `now`. Cheap when nothing changed (a lookup and an
    /// `Arc` clone).
    pub fn noise(&self, group: &str, now: Instant) -> NoiseSet {
        let mut groups = self.lock();
        let Some(noise) = groups.get_mut(group) else {
            return NoiseSet::default();
        };
        if let Some((set, until)) = &noise.cached {
            if until.is_none_or(|until| now <= until) {
                return set.clone();
            }
        }
        noise.sweep(now, self.ttl);
        let (patterns, until) = noise.active(self.min_seen, now, self.ttl);
        let set = NoiseSet::from_patterns(patterns);
        noise.cached = Some((set.clone(), until));
        set
    }

    /// Group → learned volatile patterns (sorted), for the stats JSON and the divergences
    /// endpoint. Groups without any are left out.
    pub fn learned(&self, now: Instant) -> BTreeMap<String, Vec<String>> {
        let groups = self.lock();
        groups
            .iter()
            .filter_map(|(group, noise)| {
                let (patterns, _) = noise.active(self.min_seen, now, self.ttl);
                (!patterns.is_empty()).then(|| (group.clone(), patterns))
            })
            .collect()
    }

    /// Whether `group` has had [`Self::CALIBRATION_PAIRS`] pairs of legacy answers compared:
    /// before that, what is noise and what is divergence cannot be told apart, so its
    /// comparisons with `new` do not count. [`OTHER_GROUP`], where nothing is learned, always
    /// is.
    pub fn calibrated(&self, group: &str) -> bool {
        group == OTHER_GROUP
            || self
                .lock()
                .get(group)
                .is_some_and(|noise| noise.pairs >= Self::CALIBRATION_PAIRS)
    }

    /// Forgets everything learned (e.g. when the route's compare rules change).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, GroupNoise>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl GroupNoise {
    /// Drops expired sightings.
    fn sweep(&mut self, now: Instant, ttl: Duration) {
        let before = self.sightings.len();
        self.sightings
            .retain(|_, sighting| !expired(sighting.last, now, ttl));
        if self.sightings.len() != before {
            self.cached = None;
        }
    }

    /// The active patterns (sorted) and the instant the earliest of them expires (`None`
    /// when none can: no pattern, or a ttl too long to represent).
    fn active(&self, min_seen: u32, now: Instant, ttl: Duration) -> (Vec<String>, Option<Instant>) {
        let mut until: Option<Instant> = None;
        let mut patterns: Vec<String> = self
            .sightings
            .iter()
            .filter(|(_, s)| s.count >= min_seen && !expired(s.last, now, ttl))
            .map(|(pattern, s)| {
                if let Some(end) = s.last.checked_add(ttl) {
                    until = Some(until.map_or(end, |u| u.min(end)));
                }
                pattern.clone()
            })
            .collect();
        patterns.sort_unstable();
        (patterns, until)
    }
}

/// Not seen for longer than `ttl` at `now`.
fn expired(last: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(last) > ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    fn p(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn generalises_indices() {
        assert_eq!(generalise_pointer("/items/3/ts"), "/items/*/ts");
        assert_eq!(generalise_pointer("/0/1/x2"), "/*/*/x2");
        assert_eq!(generalise_pointer(""), "");
        assert_eq!(generalise_pointer("/"), "/");
        assert_eq!(generalise_pointer("/a~1b/10"), "/a~1b/*");
        assert_eq!(generalise_pointer(&generalise_pointer("/a/1")), "/a/*");
    }

    #[test]
    fn patterns_parse() {
        let set = NoiseSet::from_patterns(p(&["/a~1b/*/c~0", "", "bad", "/7", "/07"]));
        assert_eq!(set.patterns(), ["/a~1b/*/c~0", "", "bad", "/7", "/07"]);
        let token = |text: &str, index| PatternToken::Token {
            text: text.into(),
            index,
        };
        assert_eq!(
            set.parsed(),
            [
                vec![token("a/b", None), PatternToken::Star, token("c~", None)],
                vec![],
                vec![token("7", Some(7))],
                vec![token("07", None)],
            ]
        );
        assert!(NoiseSet::default().patterns().is_empty());
        assert!(NoiseSet::from_patterns(vec![]).is_empty());
    }

    #[test]
    fn volatile_after_min_seen_sightings() {
        let learner = NoiseLearner::new(TTL, 2);
        let t0 = Instant::now();
        learner.observe("GET /a", &p(&["/items/3/ts", "/items/4/ts", "/id"]), t0);
        // One sighting (two pointers of one pattern count once): nothing learned yet.
        assert!(learner.noise("GET /a", t0).is_empty());
        assert!(learner.learned(t0).is_empty());
        learner.observe("GET /a", &p(&["/items/0/ts"]), t0 + Duration::from_secs(1));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(learner.noise("GET /a", t1).patterns(), ["/items/*/ts"]);
        assert!(learner.noise("GET /b", t1).is_empty());
        learner.observe("GET /a", &p(&["/id"]), t1);
        assert_eq!(
            learner.noise("GET /a", t1).patterns(),
            ["/id", "/items/*/ts"]
        );
        assert_eq!(
            learner.learned(t1),
            BTreeMap::from([("GET /a".to_owned(), p(&["/id", "/items/*/ts"]))])
        );
    }

    #[test]
    fn patterns_expire_unless_seen_again() {
        let learner = NoiseLearner::new(TTL, 2);
        let t0 = Instant::now();
        learner.observe("g", &p(&["/a", "/b"]), t0);
        learner.observe("g", &p(&["/a", "/b"]), t0);
        assert_eq!(learner.noise("g", t0).patterns(), ["/a", "/b"]);
        // `/b` keeps varying, `/a` does not.
        let t1 = t0 + Duration::from_secs(500);
        learner.observe("g", &p(&["/b"]), t1);
        assert_eq!(learner.noise("g", t0 + TTL).patterns(), ["/a", "/b"]);
        let t2 = t0 + TTL + Duration::from_secs(1);
        assert_eq!(learner.noise("g", t2).patterns(), ["/b"]);
        assert_eq!(learner.learned(t2)["g"], ["/b"]);
        let t3 = t1 + TTL + Duration::from_secs(1);
        assert!(learner.noise("g", t3).is_empty());
        assert!(learner.learned(t3).is_empty());
        // After expiry, a single sighting is not enough again.
        learner.observe("g", &p(&["/b"]), t3);
        assert!(learner.noise("g", t3).is_empty());
        // Sightings further apart than the ttl never add up.
        let t4 = t3 + TTL + Duration::from_secs(1);
        learner.observe("g", &p(&["/b"]), t4);
        assert!(learner.noise("g", t4).is_empty());
        learner.observe("g", &p(&["/b"]), t4);
        assert_eq!(learner.noise("g", t4).patterns(), ["/b"]);
    }

    #[test]
    fn min_seen_one_learns_at_once() {
        let learner = NoiseLearner::new(TTL, 0);
        let t0 = Instant::now();
        learner.observe("g", &p(&["/x"]), t0);
        assert_eq!(learner.noise("g", t0).patterns(), ["/x"]);
        learner.observe("g", &[], t0);
        assert_eq!(learner.learned(t0).len(), 1);
        learner.clear();
        assert!(learner.learned(t0).is_empty());
        learner.observe(OTHER_GROUP, &p(&["/x"]), t0);
        assert!(learner.noise(OTHER_GROUP, t0).is_empty());
    }

    #[test]
    fn a_group_is_calibrated_after_enough_legacy_pairs_agreeing_or_not() {
        let learner = NoiseLearner::new(TTL, 2);
        let t0 = Instant::now();
        assert!(!learner.calibrated("g"));
        for i in 1..NoiseLearner::CALIBRATION_PAIRS {
            let pointers = if i % 2 == 0 { p(&["/ts"]) } else { Vec::new() };
            learner.observe("g", &pointers, t0);
        }
        assert!(!learner.calibrated("g"), "one pair short");
        learner.observe("g", &[], t0);
        assert!(learner.calibrated("g"));
        assert!(!learner.calibrated("other endpoint"));
        assert!(learner.calibrated(OTHER_GROUP), "nothing is learned there");
    }

    #[test]
    fn bounded_groups_and_patterns() {
        let learner = NoiseLearner::with_limits(TTL, 1, 2, 3);
        let t0 = Instant::now();
        for g in ["a", "b", "c"] {
            learner.observe(g, &p(&["/x"]), t0);
        }
        let learned = learner.learned(t0);
        assert_eq!(learned.keys().collect::<Vec<_>>(), ["a", "b"]);
        learner.observe("a", &p(&["/1x", "/2x", "/3x", "/4x"]), t0);
        assert_eq!(learner.noise("a", t0).patterns(), ["/1x", "/2x", "/x"]);
        // Once the old entries expired, there is room again.
        let later = t0 + TTL + Duration::from_secs(1);
        learner.observe("c", &p(&["/y"]), later);
        learner.observe("a", &p(&["/z"]), later);
        assert_eq!(learner.noise("c", later).patterns(), ["/y"]);
        assert_eq!(learner.noise("a", later).patterns(), ["/z"]);
    }

    #[test]
    fn out_of_order_instants_are_tolerated() {
        let learner = NoiseLearner::new(TTL, 2);
        let t1 = Instant::now() + Duration::from_secs(10);
        learner.observe("g", &p(&["/a"]), t1);
        learner.observe("g", &p(&["/a"]), t1 - Duration::from_secs(5));
        assert_eq!(
            learner.noise("g", t1 - Duration::from_secs(9)).patterns(),
            ["/a"]
        );
    }
}
