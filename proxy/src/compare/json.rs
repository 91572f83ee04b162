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

use cutover_config::{JsonPath, JsonPathSegment};
use serde_json::{Number, Value};

use super::noise::{NoiseSet, PatternToken};

/// At most this many pointers are reported per comparison (the first ones, sorted).
pub const MAX_POINTERS: usize = 256;

/// The JSON Pointers at which two JSON documents differ after removing `ignore` paths and
/// `noise` patterns from both; `None` when either side is not JSON.
///
/// Numbers compare by value: `1`, `1.0`, `1e0` and `-0` vs `0` are equal; integers compare
/// exactly (`9007199254740993` ≠ `9007199254740992`). Pointers are sorted, deduplicated and at
/// most [`MAX_POINTERS`].
pub fn json_differences(
    a: &[u8],
    b: &[u8],
    ignore: &[JsonPath],
    noise: &NoiseSet,
) -> Option<Vec<String>> {
    let mut left: Value = serde_json::from_slice(a).ok()?;
    let mut right: Value = serde_json::from_slice(b).ok()?;
    let rules = Rules::new(ignore, noise);
    if rules.whole_document {
        return Some(Vec::new());
    }
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
fn canonical_numbers(value: &mut Value) {
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
    let float = number.as_f64()?;
    if float.fract() != 0.0 {
        return None;
    }
    if (0.0..TWO_POW_64).contains(&float) {
        // Integral and in range: the conversion is exact (-0.0 becomes 0).
        Some(Number::from(float as u64))
    } else if (MINUS_TWO_POW_63..0.0).contains(&float) {
        Some(Number::from(float as i64))
    } else {
        None
    }
}

// ---- ignore rules ---------------------------------------------------------------------------

/// One step of an ignore rule, borrowed from a [`JsonPath`] or a noise pattern.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    /// JSONPath `.name`: an object member.
    Key(&'a str),
    /// JSONPath `[3]`: an array element.
    Index(usize),
    /// JSONPath `[*]` / `.*`: every member or element.
    Any,
    /// JSONPath `..name`: the member `name` at any depth below.
    Descendant(&'a str),
    /// JSON Pointer reference token: an object member, or the array element at its index.
    Token(&'a str, Option<usize>),
    /// Noise `*` (a generalised array index): every array element, and every object member
    /// whose name is `*` or all digits.
    Star,
}

/// Where a child sits in its parent.
#[derive(Clone, Copy)]
enum Slot<'a> {
    Member(&'a str),
    Element(usize),
}

impl Step<'_> {
    fn matches(self, slot: Slot<'_>) -> bool {
        match (self, slot) {
            (Step::Key(key) | Step::Descendant(key), Slot::Member(name)) => key == name,
            (Step::Index(index), Slot::Element(at)) => index == at,
            (Step::Any | Step::Star, Slot::Element(_)) | (Step::Any, Slot::Member(_)) => true,
            (Step::Token(token, _), Slot::Member(name)) => token == name,
            (Step::Token(_, index), Slot::Element(at)) => index == Some(at),
            (Step::Star, Slot::Member(name)) => {
                name == "*" || (!name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
            }
            (Step::Key(_) | Step::Descendant(_), Slot::Element(_))
            | (Step::Index(_), Slot::Member(_)) => false,
        }
    }
}

/// A rule in progress: the next step to match is `steps[at]`, the rule ends at `steps[end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    at: u32,
    end: u32,
}

/// All ignore rules of one comparison, flattened.
struct Rules<'a> {
    steps: Vec<Step<'a>>,
    starts: Vec<State>,
    /// A rule with no step (the noise pattern `""`, the root) ignores everything.
    whole_document: bool,
}

impl<'a> Rules<'a> {
    fn new(ignore: &'a [JsonPath], noise: &'a NoiseSet) -> Self {
        let mut rules = Rules {
            steps: Vec::new(),
            starts: Vec::new(),
            whole_document: false,
        };
        for path in ignore {
            rules.add(path.segments.iter().map(|segment| match segment {
                JsonPathSegment::Key(key) => Step::Key(key),
                JsonPathSegment::Index(index) => Step::Index(*index),
                JsonPathSegment::AnyChild => Step::Any,
                JsonPathSegment::Descendant(key) => Step::Descendant(key),
            }));
        }
        for pattern in noise.parsed() {
            rules.add(pattern.iter().map(|token| match token {
                PatternToken::Star => Step::Star,
                PatternToken::Token { text, index } => Step::Token(text, *index),
            }));
        }
        rules
    }

    fn add(&mut self, steps: impl Iterator<Item = Step<'a>>) {
        let start = self.steps.len();
        self.steps.extend(steps);
        if self.steps.len() == start {
            self.whole_document = true;
        } else {
            self.starts.push(State {
                at: start as u32,
                end: self.steps.len() as u32,
            });
        }
    }

    /// Removes every member and element an ignore rule names.
    fn prune(&self, value: &mut Value) {
        if self.starts.is_empty() {
            return;
        }
        let mut states = self.starts.clone();
        let end = states.len();
        self.walk(value, &mut states, 0, end);
    }

    /// Prunes the children of `value`, with `states[from..to]` the rules active at `value`.
    /// `states` is one stack shared by the whole walk: each child's states are pushed above
    /// its parent's and popped after it.
    fn walk(&self, value: &mut Value, states: &mut Vec<State>, from: usize, to: usize) {
        match value {
            Value::Object(map) => {
                map.retain(|name, child| self.visit(Slot::Member(name), child, states, from, to));
            }
            Value::Array(items) => {
                let mut index = 0;
                items.retain_mut(|child| {
                    let keep = self.visit(Slot::Element(index), child, states, from, to);
                    index += 1;
                    keep
                });
            }
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
        }
    }

    /// Whether `child` (at `slot`) stays; prunes inside it if some rule continues there.
    fn visit(
        &self,
        slot: Slot<'_>,
        child: &mut Value,
        states: &mut Vec<State>,
        from: usize,
        to: usize,
    ) -> bool {
        let container = matches!(child, Value::Object(_) | Value::Array(_));
        let mark = states.len();
        for i in from..to {
            let state = states[i];
            let step = self.steps[state.at as usize];
            if container && matches!(step, Step::Descendant(_)) {
                // `..name` keeps looking below, whatever this child is called.
                push_unique(states, mark, state);
            }
            if step.matches(slot) {
                let next = State {
                    at: state.at + 1,
                    end: state.end,
                };
                if next.at == next.end {
                    states.truncate(mark);
                    return false;
                }
                if container {
                    push_unique(states, mark, next);
                }
            }
        }
        let top = states.len();
        if top > mark {
            self.walk(child, states, mark, top);
        }
        states.truncate(mark);
        true
    }
}

/// Pushes `state` unless `states[mark..]` already holds it (keeps nested `..` rules linear).
fn push_unique(states: &mut Vec<State>, mark: usize, state: State) {
    if !states[mark..].contains(&state) {
        states.push(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
