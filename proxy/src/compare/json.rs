//! JSON bodies: parse, remove ignored paths and learned noise, canonicalise numbers, and list
//! the JSON Pointers where two documents differ (via [`json_patch::diff`]).
//!
//! Cost per pair: two parses, one number pass over each document (in place, no allocation),
//! one pruning walk that only descends where an ignore rule can still match (the whole
//! document under a `$..name` or `[*]` rule), one equality check and, only when the documents
//! differ, the diff. Nothing clones a whole document, except that `json_patch::diff` copies
//! the new-side value of each `add`/`replace` it emits (so a document whose root type changed
//! is copied once). Its array diff is index by index (O(n), no LCS): an element inserted at the
//! front of an array reports every later index.
//!
//! Fast path: each document is first read once, streaming, into an order-independent 128-bit
//! hash ([`equal_by_hash`]) that leaves out what the ignore rules and the learned noise name
//! (the same automaton, [`Rules`], that prunes the trees); equal hashes mean no difference and
//! no tree is built. Only documents whose hashes differ are parsed again into trees, pruned
//! and diffed, so a pair that differs pays one extra allocation-free pass.

use std::fmt;

use cutover_config::JsonPath;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};
use xxhash_rust::xxh3::{xxh3_128, xxh3_128_with_seed};

use super::noise::NoiseSet;
use super::rules::{Rules, Slot, State};

/// At most this many pointers are reported per comparison (the first ones, sorted).
pub const MAX_POINTERS: usize = 256;

/// The JSON Pointers at which two JSON documents differ after removing `ignore` paths and
/// `noise` patterns from both; `None` when either side is not JSON.
///
/// Numbers compare by value: `1`, `1.0`, `1e0` and `-0` vs `0` are equal; integers compare
/// exactly (`9007199254740993` ≠ `9007199254740992`). Pointers are sorted, deduplicated and at
/// most [`MAX_POINTERS`].
///
/// Two documents whose structural hashes are equal (with the ignored places left out of the
/// hash) are reported equal without building trees; the price is the chance of a hash
/// collision, about 2^-128 per pair (`equal_by_hash` in this module says more).
pub fn json_differences(
    a: &[u8],
    b: &[u8],
    ignore: &[JsonPath],
    noise: &NoiseSet,
) -> Option<Vec<String>> {
    let rules = Rules::new(ignore, noise);
    if equal_by_hash(a, b, &rules)? {
        return Some(Vec::new());
    }
    let mut left: Value = serde_json::from_slice(a).ok()?;
    let mut right: Value = serde_json::from_slice(b).ok()?;
    rules.prune(&mut left);
    rules.prune(&mut right);
    canonical_numbers(&mut left);
    canonical_numbers(&mut right);
    Some(pointers(&left, &right))
}

/// The sorted, deduplicated pointers of `json_patch::diff(left, right)`.
pub(super) fn pointers(left: &Value, right: &Value) -> Vec<String> {
    if left == right {
        return Vec::new();
    }
    let patch = json_patch::diff(left, right);
    let mut pointers: Vec<String> = patch
        .0
        .iter()
        .map(|operation| operation.path().as_str().to_owned())
        .collect();
    // The array diff emits the same index for consecutive removals.
    pointers.sort_unstable();
    pointers.dedup();
    pointers.truncate(MAX_POINTERS);
    pointers
}

// ---- numbers -------------------------------------------------------------------------------

/// 2^64: every integral `f64` below it (and ≥ -2^63) converts to an integer exactly.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
const MINUS_TWO_POW_63: f64 = -9_223_372_036_854_775_808.0;

/// Rewrites every integral float as an integer, so that `1.0`, `1e0` and `1` are one value.
///
/// serde_json (without `arbitrary_precision`) reads integers that fit `u64`/`i64` exactly and
/// everything else as `f64`; integers therefore stay exact (2^53 + 1 stays distinct from 2^53)
/// and an integral float maps onto the same integer. Limits inherited from the parser: a
/// non-integral number, or an integer beyond ±2^63..2^64, is as precise as the nearest `f64`,
/// so `9007199254740993.0` (a float literal) reads as 2^53.
pub(super) fn canonical_numbers(value: &mut Value) {
    match value {
        Value::Number(number) => {
            if let Some(canonical) = canonical_number(number) {
                *number = canonical;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonical_numbers),
        Value::Object(map) => map.values_mut().for_each(canonical_numbers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

fn canonical_number(number: &Number) -> Option<Number> {
    if !number.is_f64() {
        return None;
    }
    Some(match integral(number.as_f64()?)? {
        Integral::Unsigned(n) => Number::from(n),
        Integral::Negative(n) => Number::from(n),
    })
}

/// The integer an integral `f64` is, when it is one in `[-2^63, 2^64)`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Integral {
    /// `[0, 2^64)`; -0.0 is 0.
    Unsigned(u64),
    /// `[-2^63, 0)`.
    Negative(i64),
}

/// The one decision [`canonical_number`] (trees) and [`float`] (hashes) share. Below 2^63 in
/// magnitude a value is integral exactly when the round trip through `i64` keeps it (no `trunc`
/// call); above, every finite `f64` is integral. The conversions are exact.
fn integral(value: f64) -> Option<Integral> {
    let whole = if value.abs() < -MINUS_TWO_POW_63 {
        (value as i64) as f64 == value
    } else {
        value.is_finite()
    };
    if !whole {
        None
    } else if (0.0..TWO_POW_64).contains(&value) {
        Some(Integral::Unsigned(value as u64))
    } else if (MINUS_TWO_POW_63..0.0).contains(&value) {
        Some(Integral::Negative(value as i64))
    } else {
        None
    }
}

// ---- fast path: an order-independent structural hash ---------------------------------------

/// Whether `a` and `b` hash alike with what `rules` ignore left out: `Some(true)` means equal
/// under [`json_differences`]' rules, `Some(false)` that they may differ (the trees decide),
/// `None` that either is not JSON (exactly when `serde_json::from_slice` fails, trailing data
/// included). An ignored member or element is still read (the document must be JSON) but
/// counts in no hash and no length; an array's remaining elements chain in their order, as in
/// the pruned tree.
///
/// Each document is read once, by the scanner of [`super::scan`] when it can read it exactly
/// as serde_json does (no escapes, numbers that convert exactly, nesting up to 100), else by a
/// serde [`Visitor`] over `serde_json::Deserializer`, with the same hash either way: no
/// `Value`, no allocation per node; the only allocations are one stack of member-name hashes
/// and, in the scanner, one of the open arrays and objects.
/// The 128-bit hash of a node:
/// - null, a boolean or a number: a tag and 8 bytes, as they are (no collision). A number is
///   first made canonical as [`canonical_numbers`] does (`1.0` → `1`, `-0` → `0`, else the
///   `f64` bits), so it hashes alike exactly when the trees compare equal;
/// - a string: its unescaped UTF-8 (so `"\u00e9"` and `"é"` are alike), as it is with its
///   length up to 15 bytes (no collision), xxh3-128 of it when longer;
/// - an array: xxh3-128 chained over its elements' hashes in order, plus its length (and one)
///   times a constant of arrays ([`array`]);
/// - an object: the wrapping sum of xxh3-128 of each (name hash, value hash) entry, so member
///   order does not count, plus its member count (and one) times a constant of objects
///   ([`object`]).
///
/// Sums are modulo 2^128. The chain and the entries are xxh3 outputs already, so a container
/// is not mixed once more when it closes: the parent's xxh3 step (or the comparison of the two
/// documents' hashes) takes it as it is.
///
/// A repeated member name makes the answer `Some(false)`: serde_json keeps the last value,
/// and a sum over entries cannot tell `{"a":1,"a":2}` (= `{"a":2}`) from `{"a":2,"a":1}`.
/// Repeats are found by sorting each object's name hashes (names that only collide there cost
/// the slow path, nothing else).
///
/// Collisions: two documents that differ hash alike with probability about 2^-128 (treating
/// xxh3-128 as random; the sum of entry hashes keeps that bound as long as no entry repeats,
/// which the name check ensures: two objects whose entries differ have sums whose difference
/// holds at least one entry hash of its own, so it is uniform, whatever the counts add; the
/// same holds for two arrays' chains. An empty container is its constant alone, whose top byte
/// is above every scalar's tag and every short string's length). xxh3 is not cryptographic: a backend that crafted colliding
/// answers on purpose could hide a divergence; the backends under comparison are trusted.
pub(super) fn equal_by_hash(a: &[u8], b: &[u8], rules: &Rules<'_>) -> Option<bool> {
    let mut pass = Pass::new(rules);
    let left = structural_hash(a, &mut pass)?;
    let right = structural_hash(b, &mut pass)?;
    Some(rules.whole_document || (left == right && !pass.repeated_name))
}

/// The structural hash of `body`, or `None` when it is not one JSON document: by the scanner
/// ([`super::scan`]) when it can tell, else by serde_json with the same hash.
fn structural_hash(body: &[u8], pass: &mut Pass<'_>) -> Option<u128> {
    if let Some(hash) = super::scan::hash(body, pass) {
        return Some(hash);
    }
    serde_hash(body, pass)
}

/// [`structural_hash`] by serde_json alone.
fn serde_hash(body: &[u8], pass: &mut Pass<'_>) -> Option<u128> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    pass.rules.start(&mut pass.states);
    let to = pass.states.len();
    let hash = Node { pass, from: 0, to }
        .deserialize(&mut deserializer)
        .ok()?;
    deserializer.end().ok()?;
    Some(hash)
}

/// xxh3-128 seeds of the container steps.
pub(super) const ARRAY: u64 = 1;
pub(super) const ENTRY: u64 = 3;

/// What a closed container adds per element or member (and one more): two odd constants
/// whose top bytes are above every tag.
const ARRAY_COUNT: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835;
const OBJECT_COUNT: u128 = 0xbb67_ae85_84ca_a73b_3c6e_f372_fe94_f82b;

/// An array's hash from the chain of its (kept) elements' hashes and their count.
pub(super) fn array(chain: u128, len: u128) -> u128 {
    chain.wrapping_add(len.wrapping_add(1).wrapping_mul(ARRAY_COUNT))
}

/// An object's hash from the sum of its (kept) entries' hashes and their count.
pub(super) fn object(sum: u128, len: u128) -> u128 {
    sum.wrapping_add(len.wrapping_add(1).wrapping_mul(OBJECT_COUNT))
}

/// Tags of the scalars, in the top byte. A short string has its length (< 16) there.
pub(super) const NULL: u8 = 16;
pub(super) const BOOL: u8 = 17;
pub(super) const UNSIGNED: u8 = 18;
const NEGATIVE: u8 = 19;
const FLOAT: u8 = 20;

pub(super) fn scalar(tag: u8, payload: u64) -> u128 {
    (u128::from(tag) << 120) | u128::from(payload)
}

/// A string, by its UTF-8 bytes.
pub(super) fn string(bytes: &[u8]) -> u128 {
    if bytes.len() < 16 {
        let mut packed = [0; 16];
        packed[..bytes.len()].copy_from_slice(bytes);
        packed[15] = bytes.len() as u8;
        u128::from_le_bytes(packed)
    } else {
        xxh3_128(bytes)
    }
}

pub(super) fn pair(first: u128, second: u128, seed: u64) -> u128 {
    let mut bytes = [0; 32];
    bytes[..16].copy_from_slice(&first.to_le_bytes());
    bytes[16..].copy_from_slice(&second.to_le_bytes());
    xxh3_128_with_seed(&bytes, seed)
}

/// An integer as `Number` holds it: non-negative ones are unsigned.
pub(super) fn integer(value: i64) -> u128 {
    match u64::try_from(value) {
        Ok(unsigned) => scalar(UNSIGNED, unsigned),
        Err(_) => scalar(NEGATIVE, value as u64),
    }
}

/// A finite `f64`: the integer `canonical_number` makes of an integral one (-0.0 included),
/// else its bits (serde_json yields no non-finite number).
pub(super) fn float(value: f64) -> u128 {
    match integral(value) {
        Some(Integral::Unsigned(n)) => scalar(UNSIGNED, n),
        Some(Integral::Negative(n)) => integer(n),
        None => fraction(value),
    }
}

/// A finite `f64` known not to be integral: its bits.
pub(super) fn fraction(value: f64) -> u128 {
    scalar(FLOAT, value.to_bits())
}

/// Both structural hashes of `body` with `rules` — the scanner's and serde_json's — and whether
/// each saw a repeated member name, for the tests that hold them together.
#[cfg(test)]
pub(super) fn both_hashes(
    body: &[u8],
    rules: &Rules<'_>,
) -> ((Option<u128>, bool), (Option<u128>, bool)) {
    let mut pass = Pass::new(rules);
    let scanned = (super::scan::hash(body, &mut pass), pass.repeated_name);
    pass.repeated_name = false;
    let parsed = serde_hash(body, &mut pass);
    (scanned, (parsed, pass.repeated_name))
}

/// Scratch state of one hashing pass, shared by the scanner and the serde pass.
pub(super) struct Pass<'r> {
    /// The member-name hashes of the objects being read, innermost last.
    pub(super) names: Vec<u128>,
    /// Some object repeats a member name.
    pub(super) repeated_name: bool,
    /// What to leave out of the hash.
    pub(super) rules: &'r Rules<'r>,
    /// The rules active along the path being read (see [`Rules::enter`]).
    pub(super) states: Vec<State>,
}

impl<'r> Pass<'r> {
    fn new(rules: &'r Rules<'r>) -> Self {
        Pass {
            names: Vec::new(),
            repeated_name: false,
            rules,
            states: Vec::new(),
        }
    }

    /// Enters the child at `slot` of a node with the rules `from..to`: whether it is kept, and
    /// the range of the rules active inside it (empty, at the top, when it is ignored). Pop
    /// them with `states.truncate(child.from)` after the child.
    pub(super) fn enter(&mut self, slot: Slot<'_>, from: usize, to: usize) -> Child {
        let mark = self.states.len();
        let kept = from >= to || self.rules.enter(slot, true, &mut self.states, from, to);
        Child {
            kept,
            from: mark,
            to: self.states.len(),
        }
    }
}

/// A member or element as [`Pass::enter`] found it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Child {
    /// It counts in the hash (no rule ends at it).
    pub(super) kept: bool,
    /// The rules active inside it: `states[from..to]`.
    pub(super) from: usize,
    pub(super) to: usize,
}

/// Hashes one JSON value of any kind, with the rules `from..to` of `pass.states` active at it.
struct Node<'p, 'r> {
    pass: &'p mut Pass<'r>,
    from: usize,
    to: usize,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = u128;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u128, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = u128;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<u128, E> {
        Ok(scalar(NULL, 0))
    }

    fn visit_bool<E>(self, value: bool) -> Result<u128, E> {
        Ok(scalar(BOOL, u64::from(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<u128, E> {
        Ok(scalar(UNSIGNED, value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<u128, E> {
        Ok(integer(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<u128, E> {
        Ok(float(value))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<u128, E> {
        Ok(string(value.as_bytes()))
    }

    /// An escaped string, unescaped in serde_json's scratch buffer.
    fn visit_str<E>(self, value: &str) -> Result<u128, E> {
        Ok(string(value.as_bytes()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u128, A::Error> {
        let Node { pass, from, to } = self;
        let (mut chain, mut len) = (0u128, 0u128);
        for index in 0.. {
            let child = pass.enter(Slot::Element(index), from, to);
            let element = seq.next_element_seed(Node {
                pass: &mut *pass,
                from: child.from,
                to: child.to,
            })?;
            pass.states.truncate(child.from);
            let Some(element) = element else { break };
            if child.kept {
                chain = pair(chain, element, ARRAY);
                len += 1;
            }
        }
        Ok(array(chain, len))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u128, A::Error> {
        let Node { pass, from, to } = self;
        let mark = pass.names.len();
        let (mut sum, mut len) = (0u128, 0u128);
        while let Some((name, child)) = map.next_key_seed(Name {
            pass: &mut *pass,
            from,
            to,
        })? {
            pass.names.push(name);
            let value = map.next_value_seed(Node {
                pass: &mut *pass,
                from: child.from,
                to: child.to,
            })?;
            pass.states.truncate(child.from);
            if child.kept {
                sum = sum.wrapping_add(pair(name, value, ENTRY));
                len += 1;
            }
        }
        // Nested objects have popped their names: this object's are `names[mark..]`.
        let names = &mut pass.names[mark..];
        if names.len() > 1 {
            names.sort_unstable();
            pass.repeated_name |= names.windows(2).any(|w| w[0] == w[1]);
        }
        pass.names.truncate(mark);
        Ok(object(sum, len))
    }
}

/// Hashes a member name (as a string) and enters its member: the name's hash, and
/// [`Pass::enter`]'s answer for it.
struct Name<'p, 'r> {
    pass: &'p mut Pass<'r>,
    from: usize,
    to: usize,
}

impl Name<'_, '_> {
    fn read<E>(self, name: &str) -> Result<(u128, Child), E> {
        let child = self.pass.enter(Slot::Member(name), self.from, self.to);
        Ok((string(name.as_bytes()), child))
    }
}

impl<'de> DeserializeSeed<'de> for Name<'_, '_> {
    type Value = (u128, Child);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name<'_, '_> {
    type Value = (u128, Child);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        self.read(value)
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        self.read(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`integral`] (which `float` and `canonical_number` share) decides as the definition
    /// does: integral (`fract() == 0`) and in `[0, 2^64)` or `[-2^63, 0)`.
    #[test]
    fn integral_decides_as_the_definition() {
        let edges = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            -0.5,
            1e15,
            1e16 + 2.0,
            4503599627370495.5,
            9007199254740993.0,
            9.223372036854775e18,
            -9.223372036854776e18,
            -9.223372036854778e18,
            1.844674407370955e19,
            1.8446744073709552e19,
            1e300,
            -1e300,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            123.456,
            -7.0,
        ];
        let mut bits = 0x9E37_79B9_7F4A_7C15u64;
        let random = std::iter::repeat_with(move || {
            // xorshift64: a spread of bit patterns, every exponent included.
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            f64::from_bits(bits)
        });
        let whole = (0..2_000).map(|i| (i as f64 - 1_000.0) * 1.5);
        for value in edges.into_iter().chain(random.take(100_000)).chain(whole) {
            if !value.is_finite() {
                continue;
            }
            let expected = if value.fract() != 0.0 {
                None
            } else if (0.0..TWO_POW_64).contains(&value) {
                Some(Integral::Unsigned(value as u64))
            } else if (MINUS_TWO_POW_63..0.0).contains(&value) {
                Some(Integral::Negative(value as i64))
            } else {
                None
            };
            assert_eq!(integral(value), expected, "{value}");
        }
    }

    fn paths(sources: &[&str]) -> Vec<JsonPath> {
        sources
            .iter()
            .map(|s| JsonPath::parse(s).unwrap())
            .collect()
    }

    fn differences(a: &str, b: &str, ignore: &[&str]) -> Option<Vec<String>> {
        json_differences(
            a.as_bytes(),
            b.as_bytes(),
            &paths(ignore),
            &NoiseSet::default(),
        )
    }

    /// `value` with `ignore` removed (and numbers canonical).
    fn pruned(value: &str, ignore: &[&str], noise: &[&str]) -> Value {
        let ignore = paths(ignore);
        let noise = NoiseSet::from_patterns(noise.iter().map(|s| s.to_string()).collect());
        let rules = Rules::new(&ignore, &noise);
        let mut value: Value = serde_json::from_str(value).unwrap();
        rules.prune(&mut value);
        canonical_numbers(&mut value);
        value
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn not_json_is_none() {
        assert_eq!(differences("{", "{}", &[]), None);
        assert_eq!(differences("{}", "<html>", &[]), None);
        assert_eq!(differences("", "", &[]), None);
        assert_eq!(differences("{} {}", "{}", &[]), None);
        assert_eq!(differences(" {} \n", "{}", &[]), Some(vec![]));
    }

    #[test]
    fn pointers_come_from_the_diff() {
        assert_eq!(
            differences(
                r#"{"a": {"b": 1, "c": [1, 2, 3]}, "gone": 1, "x/y": 1, "t~": 1}"#,
                r#"{"a": {"b": 2, "c": [1, 2]}, "added": 1, "x/y": 2, "t~": 2}"#,
                &[]
            )
            .unwrap(),
            ["/a/b", "/a/c/2", "/added", "/gone", "/t~0", "/x~1y"]
        );
        // Consecutive array removals are reported once.
        assert_eq!(differences("[1,2,3,4]", "[1]", &[]).unwrap(), ["/1"]);
        assert_eq!(differences("1", "2", &[]).unwrap(), [""]);
        assert_eq!(differences(r#"{"a":1}"#, "[1]", &[]).unwrap(), [""]);
    }

    #[test]
    fn numbers_compare_by_value() {
        for (a, b) in [
            ("1", "1.0"),
            ("1", "1e0"),
            ("100", "1E2"),
            ("0", "-0.0"),
            ("-5", "-5.000"),
            ("1.5", "15e-1"),
            ("100000000000000000", "1e17"),
            ("18446744073709551615", "18446744073709551615"),
            ("-9223372036854775808", "-9.223372036854775808e18"),
            ("1e300", "1.0e300"),
            ("[1, {\"a\": 2.0}]", "[1.0, {\"a\": 2}]"),
        ] {
            assert_eq!(differences(a, b, &[]), Some(vec![]), "{a} vs {b}");
        }
        for (a, b) in [
            ("1", "1.5"),
            ("9007199254740993", "9007199254740992"),
            ("18446744073709551615", "18446744073709551614"),
            ("1", "\"1\""),
            ("0", "false"),
            ("0", "null"),
        ] {
            assert_eq!(
                differences(a, b, &[]),
                Some(vec![String::new()]),
                "{a} vs {b}"
            );
        }
    }

    #[test]
    fn ignore_dotted_members() {
        assert_eq!(
            pruned(r#"{"a": {"b": 1, "c": 2}, "b": 3}"#, &["$.a.b"], &[]),
            json(r#"{"a": {"c": 2}, "b": 3}"#)
        );
        // Absent, or not an object: nothing happens.
        assert_eq!(pruned(r#"{"a": 1}"#, &["$.a.b"], &[]), json(r#"{"a": 1}"#));
        assert_eq!(
            pruned(r#"[{"a": 1}]"#, &["$.a"], &[]),
            json(r#"[{"a": 1}]"#)
        );
        assert_eq!(
            differences(r#"{"a": {"b": 1}}"#, r#"{"a": {"b": 2}}"#, &["$.a.b"]),
            Some(vec![])
        );
    }

    #[test]
    fn ignore_every_element() {
        assert_eq!(
            pruned(
                r#"{"a": [{"b": 1, "c": 1}, {"b": 2}, 7, {"c": 3}]}"#,
                &["$.a[*].b"],
                &[]
            ),
            json(r#"{"a": [{"c": 1}, {}, 7, {"c": 3}]}"#)
        );
        // `.*` / `[*]` also walks object members.
        assert_eq!(
            pruned(
                r#"{"x": {"id": 1, "v": 1}, "y": {"id": 2}}"#,
                &["$.*.id"],
                &[]
            ),
            json(r#"{"x": {"v": 1}, "y": {}}"#)
        );
        assert_eq!(
            pruned(r#"{"a": [1, 2, 3]}"#, &["$.a[*]"], &[]),
            json(r#"{"a": []}"#)
        );
    }

    #[test]
    fn ignore_an_index() {
        assert_eq!(
            pruned(r#"{"a": [0, 1, 2, 3, 4]}"#, &["$.a[3]"], &[]),
            json(r#"{"a": [0, 1, 2, 4]}"#)
        );
        // Several indexes of one array refer to the original positions.
        assert_eq!(
            pruned(r#"{"a": [0, 1, 2, 3, 4]}"#, &["$.a[1]", "$.a[3]"], &[]),
            json(r#"{"a": [0, 2, 4]}"#)
        );
        assert_eq!(
            pruned(r#"{"a": [0]}"#, &["$.a[3]"], &[]),
            json(r#"{"a": [0]}"#)
        );
        assert_eq!(
            pruned("[[0, 1], [2, 3]]", &["$[1][0]"], &[]),
            json("[[0, 1], [3]]")
        );
        // An element that is only on one side is ignored too.
        assert_eq!(
            differences(r#"{"a": [0, 1, 2]}"#, r#"{"a": [0, 1, 2, 3]}"#, &["$.a[3]"]),
            Some(vec![])
        );
    }

    #[test]
    fn ignore_descendants_at_any_depth() {
        assert_eq!(
            pruned(
                r#"{"name": 1, "a": {"name": 2, "b": [{"name": 3, "x": {"name": 4}}, 5]}, "k": "name"}"#,
                &["$..name"],
                &[]
            ),
            json(r#"{"a": {"b": [{"x": {}}, 5]}, "k": "name"}"#)
        );
        // `$.a..b.c`: `b` anywhere below `a`, then its member `c`.
        assert_eq!(
            pruned(
                r#"{"b": {"c": 0}, "a": {"b": {"c": 1, "d": 1}, "x": [{"b": {"c": 2}}]}}"#,
                &["$.a..b.c"],
                &[]
            ),
            json(r#"{"b": {"c": 0}, "a": {"b": {"d": 1}, "x": [{"b": {}}]}}"#)
        );
        // Nested `..` over a deep chain stays correct.
        let deep = r#"{"a": {"a": {"a": {"b": 1, "a": {"b": 2}}}}, "b": 3}"#;
        assert_eq!(
            pruned(deep, &["$..a..b"], &[]),
            json(r#"{"a": {"a": {"a": {"a": {}}}}, "b": 3}"#)
        );
    }

    #[test]
    fn noise_patterns_prune_too() {
        assert_eq!(
            pruned(
                r#"{"items": [{"ts": 1, "id": 1}, {"ts": 2, "id": 2}], "by_id": {"7": {"ts": 1}, "x": {"ts": 2}}}"#,
                &[],
                &["/items/*/ts", "/by_id/*/ts"]
            ),
            json(r#"{"items": [{"id": 1}, {"id": 2}], "by_id": {"7": {}, "x": {"ts": 2}}}"#)
        );
        // Plain pointers: tokens address members, and array elements by index.
        assert_eq!(
            pruned(
                r#"{"a/b": 1, "m~": 2, "l": [0, 1, 2], "o": {"1": 1, "2": 2}}"#,
                &[],
                &["/a~1b", "/m~0", "/l/1", "/o/1"]
            ),
            json(r#"{"l": [0, 2], "o": {"2": 2}}"#)
        );
        // The root pattern ignores the whole document.
        let noise = NoiseSet::from_patterns(vec![String::new()]);
        assert_eq!(
            json_differences(b"1", b"2", &[], &noise),
            Some(Vec::<String>::new())
        );
        assert_eq!(json_differences(b"1", b"x", &[], &noise), None);
    }

    /// The fast path's verdict, checked against the full comparison.
    fn hashed(a: &str, b: &str) -> Option<bool> {
        let fast = equal_by_hash(a.as_bytes(), b.as_bytes(), &Rules::none());
        let slow = differences(a, b, &[]).map(|found| found.is_empty());
        assert_eq!(fast.is_some(), slow.is_some(), "{a} vs {b}");
        if fast == Some(true) {
            assert_eq!(slow, Some(true), "{a} vs {b}");
        }
        fast
    }

    /// The fast path's verdict with `ignore` and `noise`, by the scanner and by serde's pass.
    fn hashed_ignoring(a: &str, b: &str, ignore: &[&str], noise: &[&str]) -> Option<bool> {
        let ignore = paths(ignore);
        let noise = NoiseSet::from_patterns(noise.iter().map(|s| s.to_string()).collect());
        let rules = Rules::new(&ignore, &noise);
        for body in [a, b] {
            let ((scanned, _), (parsed, _)) = both_hashes(body.as_bytes(), &rules);
            assert!(scanned.is_none() || scanned == parsed, "{body}");
        }
        equal_by_hash(a.as_bytes(), b.as_bytes(), &rules)
    }

    /// Ignored places count in no hash: documents that differ only there are equal without a
    /// tree, and a difference elsewhere is still seen.
    #[test]
    fn ignored_places_are_left_out_of_the_hash() {
        let a =
            r#"{"id": 1, "ts": "10:00", "items": [{"n": 1, "req": "a"}, {"n": 2, "req": "b"}]}"#;
        let b =
            r#"{"items": [{"req": "x", "n": 1}, {"n": 2, "req": "y"}], "ts": "11:00", "id": 1}"#;
        assert_eq!(hashed_ignoring(a, b, &[], &[]), Some(false));
        assert_eq!(hashed_ignoring(a, b, &["$.ts", "$..req"], &[]), Some(true));
        assert_eq!(
            hashed_ignoring(a, b, &["$.ts", "$.items[*].req"], &[]),
            Some(true)
        );
        assert_eq!(
            hashed_ignoring(a, b, &["$.ts"], &["/items/*/req"]),
            Some(true)
        );
        assert_eq!(hashed_ignoring(a, b, &["$.ts"], &[]), Some(false));
        assert_eq!(
            hashed_ignoring(a, b, &["$.ts", "$.items[0].req"], &[]),
            Some(false)
        );
        // An ignored element leaves the others in order, at their indexes as sent.
        let (x, y) = (r#"[0, "now", 2, 3]"#, r#"[0, "then", 2, 3]"#);
        assert_eq!(hashed_ignoring(x, y, &["$[1]"], &[]), Some(true));
        assert_eq!(hashed_ignoring(x, "[0, 2, 3]", &["$[1]"], &[]), Some(false));
        assert_eq!(
            hashed_ignoring(x, r#"[0, 1, 3, 2]"#, &["$[1]"], &[]),
            Some(false)
        );
        // An escaped member name is matched unescaped (by serde's pass).
        assert_eq!(
            hashed_ignoring(
                r#"{"t\u0073": 1, "a": 1}"#,
                r#"{"ts": 2, "a": 1}"#,
                &["$.ts"],
                &[]
            ),
            Some(true)
        );
        // Ignored or not, a place must be JSON; the root pattern ignores everything else.
        assert_eq!(
            hashed_ignoring(r#"{"ts": 1}"#, r#"{"ts": 2}"#, &[], &[""]),
            Some(true)
        );
        assert_eq!(
            equal_by_hash(br#"{"ts": 1}"#, br#"{"ts": x}"#, &Rules::none()),
            None
        );
    }

    #[test]
    fn equal_hashes_for_equal_documents() {
        for (a, b) in [
            (
                r#"{"a": 1, "b": [true, null], "c": {"x": "y", "z": 2}}"#,
                r#"{"c": {"z": 2, "x": "y"}, "b": [true, null], "a": 1}"#,
            ),
            ("{\"a\":[1,2]}", " {\n\t\"a\" : [ 1 , 2 ] }\r\n"),
            ("1", "1.0"),
            ("1", "1e0"),
            ("[1, 1.0, 1e0, 100]", "[1e0, 1, 1.000, 1E2]"),
            ("0", "-0"),
            ("0", "-0.0"),
            ("-5", "-5.0"),
            ("1.5", "15e-1"),
            // Read exactly (serde_json's `float_roundtrip`): without it this `n.0` read as
            // 4061634494308974.5 and differed from the integer.
            ("4061634494308974", "4061634494308974.0"),
            ("18446744073709549568", "18446744073709549568.0"),
            ("-9223372036854775808", "-9.223372036854775808e18"),
            ("1e300", "1.0e300"),
            (r#""\u00e9\/\n\"""#, "\"é/\\n\\\"\""),
            (r#"{"\u0061": "\ud83d\ude00"}"#, r#"{"a": "😀"}"#),
            ("[]", "[ ]"),
            ("{}", "{ }"),
            (r#"{"a": {}, "b": []}"#, r#"{"b": [], "a": {}}"#),
        ] {
            assert_eq!(hashed(a, b), Some(true), "{a} vs {b}");
        }
    }

    #[test]
    fn different_hashes_for_different_documents() {
        for (a, b) in [
            ("9007199254740993", "9007199254740992"),
            ("18446744073709551615", "18446744073709551614"),
            // 2^64 - 1 stays an integer; as a float it rounds to 2^64, out of integer range.
            ("18446744073709551615", "18446744073709551615.0"),
            ("1", "1.5"),
            ("1", "-1"),
            ("1", "\"1\""),
            ("0", "false"),
            ("0", "null"),
            ("false", "null"),
            ("true", "false"),
            ("[]", "{}"),
            ("[]", "[null]"),
            ("\"\"", "null"),
            ("[1, 2]", "[2, 1]"),
            ("[[1, 2], [3]]", "[[1], [2, 3]]"),
            ("[[1], [2]]", "[[2], [1]]"),
            (r#"{"a": 1}"#, r#"{"b": 1}"#),
            // An entry hashes its name and value together, not each on its own.
            (r#"{"a": "b"}"#, r#"{"b": "a"}"#),
            (r#"{"a": 1, "b": 2}"#, r#"{"a": 2, "b": 1}"#),
            (r#"{"a": [1], "b": [2]}"#, r#"{"a": [2], "b": [1]}"#),
            (r#"{"a": 1}"#, r#"{"a": 1, "b": 1}"#),
            (r#"{"a": {"b": 1}}"#, r#"{"a": {"b": 1}, "b": {}}"#),
            (r#"{"a": "b"}"#, r#"["a", "b"]"#),
            // Short strings are their bytes and length; longer ones are hashed.
            (r#""a""#, r#""a\u0000""#),
            (r#""""#, r#""\u0000""#),
            (r#""\u0001""#, "1"),
            (r#""\u0000""#, "null"),
            (r#""abcdefghijklmno""#, r#""abcdefghijklmnop""#),
            (r#""abcdefghijklmnop""#, r#""abcdefghijklmnoq""#),
            (r#"{"abcdefghijklmnop": 1}"#, r#"{"abcdefghijklmnoq": 1}"#),
            (r#"{"a": [1, {"b": 2}]}"#, r#"{"a": [1, {"b": 3}]}"#),
        ] {
            assert_eq!(hashed(a, b), Some(false), "{a} vs {b}");
            assert_eq!(hashed(b, a), Some(false), "{b} vs {a}");
        }
    }

    #[test]
    fn the_fast_path_rejects_what_serde_json_rejects() {
        for (a, b) in [
            ("{", "{}"),
            ("{}", "<html>"),
            ("", ""),
            ("{} {}", "{}"),
            ("{}", "{}x"),
            ("[1,]", "[1]"),
            ("01", "1"),
            ("1e400", "1"),
            (r#""\ud800""#, r#""""#),
            ("nul", "null"),
        ] {
            assert_eq!(
                equal_by_hash(a.as_bytes(), b.as_bytes(), &Rules::none()),
                None,
                "{a}"
            );
            assert_eq!(
                equal_by_hash(b.as_bytes(), a.as_bytes(), &Rules::none()),
                None,
                "{a}"
            );
            assert_eq!(differences(a, b, &[]), None, "{a}");
        }
        assert_eq!(equal_by_hash(b" {} \n", b"{}", &Rules::none()), Some(true));
        assert_eq!(
            equal_by_hash(&[b'"', 0xff, b'"'], b"\"\"", &Rules::none()),
            None
        );
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(differences(&deep, &deep, &[]), None);
    }

    #[test]
    fn repeated_member_names_go_the_slow_way() {
        // serde_json keeps the last value: {"a":2} vs {"a":1}, though the entries are alike.
        assert_eq!(hashed(r#"{"a":1,"a":2}"#, r#"{"a":2,"a":1}"#), Some(false));
        assert_eq!(
            differences(r#"{"a":1,"a":2}"#, r#"{"a":2,"a":1}"#, &[]).unwrap(),
            ["/a"]
        );
        assert_eq!(hashed(r#"{"a":1,"a":2}"#, r#"{"a":2}"#), Some(false));
        assert_eq!(
            differences(r#"{"a":1,"a":2}"#, r#"{"a":2}"#, &[]),
            Some(vec![])
        );
        // Also deeper down, and when the repeat is spelled with an escape.
        assert_eq!(
            hashed(r#"[{"x":{"b":1,"\u0062":2}}]"#, r#"[{"x":{"b":2}}]"#),
            Some(false)
        );
        // The same name in nested objects is not a repeat.
        assert_eq!(
            hashed(
                r#"{"a":{"a":{"a":1}},"b":1}"#,
                r#"{"b":1,"a":{"a":{"a":1.0}}}"#
            ),
            Some(true)
        );
    }

    #[test]
    fn rules_or_noise_skip_the_fast_path() {
        // With a rule the trees are pruned; the answer is the same as without the fast path.
        assert_eq!(
            differences(r#"{"a": 1, "t": 1}"#, r#"{"t": 2, "a": 1}"#, &["$.t"]),
            Some(vec![])
        );
        let noise = NoiseSet::from_patterns(vec!["/t".into()]);
        assert_eq!(
            json_differences(br#"{"a":1,"t":1}"#, br#"{"t":2,"a":1.0}"#, &[], &noise),
            Some(vec![])
        );
        assert_eq!(
            json_differences(br#"{"a":1,"t":1}"#, br#"{"t":1,"a":2}"#, &[], &noise).unwrap(),
            ["/a"]
        );
    }

    #[test]
    fn pointers_are_bounded() {
        let a: Vec<u32> = (0..1000).collect();
        let b: Vec<u32> = (1..1001).collect();
        let found = json_differences(
            serde_json::to_string(&a).unwrap().as_bytes(),
            serde_json::to_string(&b).unwrap().as_bytes(),
            &[],
            &NoiseSet::default(),
        )
        .unwrap();
        assert_eq!(found.len(), MAX_POINTERS);
    }

    #[test]
    fn deep_documents_are_not_json_rather_than_a_crash() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(differences(&deep, &deep, &["$..a"]), None);
        let fine = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(differences(&fine, &fine, &["$..a"]), Some(vec![]));
    }
}
