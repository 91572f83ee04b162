//! Property tests of the comparator, the ignore-path removal, the sampler and endpoint groups.

use std::fmt::Write as _;

use cutover_config::{ComparePolicy, JsonPath, JsonPathSegment};
use http::{HeaderMap, Method};
use proptest::prelude::*;
use serde_json::{Map, Value};

use super::rules::Rules;
use super::*;

// ---- strategies ----------------------------------------------------------------------------

fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        (-1000.0f64..1000.0).prop_map(Value::from),
    ]
}

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        "[a-z0-9 \"\\\\/~é]{0,8}".prop_map(Value::String),
    ]
}

fn arb_key() -> impl Strategy<Value = String> {
    "[a-z~/ 0-9]{0,4}"
}

fn arb_json() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(arb_key(), inner, 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// A non-empty object at the root, so that a path into it exists.
fn arb_document() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(arb_key(), arb_json(), 1..6)
        .prop_map(|members| Value::Object(members.into_iter().collect()))
}

// ---- helpers -------------------------------------------------------------------------------

/// How to write a document back out differently without changing what it means.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// Rotate the members of every object by this much.
    rotate: usize,
    /// Whitespace between tokens.
    spaced: bool,
    /// Write integers up to 2^53 (exact in an `f64`) as `1.0` / `1e0`. (Before serde_json's
    /// `float_roundtrip` it had to stop at 2^53 / 10: `n.0` was read as `n0 / 10`, so
    /// `4061634494308974.0` read as `4061634494308974.5`.)
    floats: bool,
    /// Write every character of strings and member names as a `\uXXXX` escape.
    escaped: bool,
}

fn arb_style() -> impl Strategy<Value = Style> {
    (0usize..8, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(rotate, spaced, floats, escaped)| Style {
            rotate,
            spaced,
            floats,
            escaped,
        },
    )
}

fn write_string(text: &str, style: Style, out: &mut String) {
    if style.escaped {
        out.push('"');
        for unit in text.encode_utf16() {
            let _ = write!(out, "\\u{unit:04x}");
        }
        out.push('"');
    } else {
        out.push_str(&Value::String(text.to_owned()).to_string());
    }
}

fn write(value: &Value, style: Style, out: &mut String) {
    let gap = if style.spaced { " \n\t" } else { "" };
    match value {
        Value::Number(number) => match (number.as_i64(), style.floats) {
            (Some(n), true) if n.unsigned_abs() <= 1 << 53 => {
                if n % 2 == 0 {
                    let _ = write!(out, "{n}.0");
                } else {
                    let _ = write!(out, "{n}e0");
                }
            }
            _ => out.push_str(&number.to_string()),
        },
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(gap);
                write(item, style, out);
            }
            out.push_str(gap);
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            if !members.is_empty() {
                let by = style.rotate % members.len();
                members.rotate_left(by);
                members.reverse();
            }
            for (i, (key, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(gap);
                write_string(key, style, out);
                out.push_str(gap);
                out.push(':');
                out.push_str(gap);
                write(member, style, out);
            }
            out.push_str(gap);
            out.push('}');
        }
        Value::String(text) => write_string(text, style, out),
        other => out.push_str(&other.to_string()),
    }
}

fn text(value: &Value, style: Style) -> String {
    let mut out = String::new();
    write(value, style, &mut out);
    out
}

fn answer(body: &[u8]) -> Answer {
    Answer {
        status: 200,
        headers: HeaderMap::new(),
        body: BodySample::from_bytes(body, 1 << 20),
    }
}

/// Follows `choices` down from the root; the segments of the path taken (at least one, as the
/// root is a non-empty object) and the JSON Pointer of the place it names.
fn pick_path(root: &Value, choices: &[usize]) -> (Vec<JsonPathSegment>, String) {
    let mut segments = Vec::new();
    let mut pointer = String::new();
    let mut at = root;
    for &choice in choices {
        match at {
            Value::Object(map) if !map.is_empty() => {
                let (key, next) = map.iter().nth(choice % map.len()).unwrap();
                segments.push(JsonPathSegment::Key(key.clone()));
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                at = next;
            }
            Value::Array(items) if !items.is_empty() => {
                let index = choice % items.len();
                segments.push(JsonPathSegment::Index(index));
                let _ = write!(pointer, "/{index}");
                at = &items[index];
            }
            _ => break,
        }
    }
    (segments, pointer)
}

fn at_mut<'v>(root: &'v mut Value, segments: &[JsonPathSegment]) -> &'v mut Value {
    let mut at = root;
    for segment in segments {
        at = match (segment, at) {
            (JsonPathSegment::Key(key), Value::Object(map)) => map.get_mut(key).unwrap(),
            (JsonPathSegment::Index(index), Value::Array(items)) => &mut items[*index],
            _ => unreachable!("pick_path only walks existing members"),
        };
    }
    at
}

fn set_at(root: &mut Value, segments: &[JsonPathSegment], value: Value) {
    *at_mut(root, segments) = value;
}

/// Changes `at`, or not: `how` picks a replacement by `other`, swapping the first and last
/// array elements, renaming an object member, or rewriting a number as a float (equal for
/// integers up to 2^53, rounded beyond); what does not apply falls back to the replacement.
fn mutate(at: &mut Value, how: u8, other: Value) {
    match (how % 4, &mut *at) {
        (1, Value::Array(items)) if items.len() > 1 => {
            let last = items.len() - 1;
            items.swap(0, last);
        }
        (2, Value::Object(map)) if !map.is_empty() => {
            let key = map.keys().next().unwrap().clone();
            let member = map.remove(&key).unwrap();
            map.insert(format!("{key}!"), member);
        }
        (3, Value::Number(number)) => {
            if let Some(float) = number.as_f64() {
                *at = Value::from(float);
            }
        }
        _ => *at = other,
    }
}

/// The trees' verdict: whether `pointers` finds nothing between the canonical documents.
fn equal_trees(a: &[u8], b: &[u8]) -> bool {
    let mut left: Value = serde_json::from_slice(a).unwrap();
    let mut right: Value = serde_json::from_slice(b).unwrap();
    json::canonical_numbers(&mut left);
    json::canonical_numbers(&mut right);
    json::pointers(&left, &right).is_empty()
}

/// The trees' verdict with `rules` applied: both documents pruned, then compared.
fn equal_pruned_trees(a: &[u8], b: &[u8], rules: &Rules<'_>) -> bool {
    let mut left: Value = serde_json::from_slice(a).unwrap();
    let mut right: Value = serde_json::from_slice(b).unwrap();
    for tree in [&mut left, &mut right] {
        rules.prune(tree);
        json::canonical_numbers(tree);
    }
    json::pointers(&left, &right).is_empty()
}

/// Ignore rules and noise for the place `choices` names in `root`, by `kind`: the exact path,
/// the path with one step widened to `[*]`, `$..name` of its last member, the place's pointer
/// generalised as learned noise, or all of them.
fn rules_for(root: &Value, choices: &[usize], kind: u8) -> (Vec<JsonPath>, NoiseSet) {
    let (segments, pointer) = pick_path(root, choices);
    let mut wider = segments.clone();
    let at = usize::from(kind) % wider.len();
    wider[at] = JsonPathSegment::AnyChild;
    let descendant = match segments.last() {
        Some(JsonPathSegment::Key(name)) => {
            Some(path(vec![JsonPathSegment::Descendant(name.clone())]))
        }
        _ => None,
    };
    let noise = NoiseSet::from_patterns(vec![generalise_pointer(&pointer)]);
    match kind % 5 {
        0 => (vec![path(segments)], NoiseSet::default()),
        1 => (vec![path(wider)], NoiseSet::default()),
        2 => (descendant.into_iter().collect(), NoiseSet::default()),
        3 => (Vec::new(), noise),
        _ => {
            let mut all = vec![path(segments), path(wider)];
            all.extend(descendant);
            (all, noise)
        }
    }
}

fn path(segments: Vec<JsonPathSegment>) -> JsonPath {
    JsonPath {
        source: String::new(),
        segments,
    }
}

fn no_differences(a: &Value, b: &Value, ignore: &[JsonPath], noise: &NoiseSet) -> bool {
    let a = serde_json::to_vec(a).unwrap();
    let b = serde_json::to_vec(b).unwrap();
    json_differences(&a, &b, ignore, noise) == Some(Vec::new())
}

// ---- properties ----------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn an_answer_never_diverges_from_itself(value in arb_json(), style in arb_style()) {
        let body = text(&value, style);
        let a = answer(body.as_bytes());
        let policy = ComparePolicy::default();
        prop_assert!(!compare(&policy, &a, &a.clone(), &NoiseSet::default()).diverged());
        // Also through the parse (no byte shortcut): the same document twice.
        let twice = json_differences(body.as_bytes(), body.as_bytes(), &[], &NoiseSet::default());
        prop_assert_eq!(twice, Some(Vec::new()));
    }

    #[test]
    fn key_order_whitespace_and_number_format_never_diverge(
        value in arb_json(),
        one in arb_style(),
        other in arb_style(),
    ) {
        let a = answer(text(&value, one).as_bytes());
        let b = answer(text(&value, other).as_bytes());
        let difference = compare(&ComparePolicy::default(), &a, &b, &NoiseSet::default());
        prop_assert!(!difference.diverged(), "{:?}", difference);
    }

    #[test]
    fn a_change_at_an_ignored_path_never_diverges(
        root in arb_document(),
        choices in prop::collection::vec(any::<usize>(), 1..6),
        left in arb_json(),
        right in arb_json(),
        widen in any::<usize>(),
    ) {
        let (segments, pointer) = pick_path(&root, &choices);
        let mut a = root.clone();
        let mut b = root;
        set_at(&mut a, &segments, left);
        set_at(&mut b, &segments, right);

        let exact = path(segments.clone());
        prop_assert!(no_differences(&a, &b, std::slice::from_ref(&exact), &NoiseSet::default()));

        // Through `compare` as well, with the path in the policy.
        let policy = ComparePolicy {
            ignore_json_paths: vec![exact],
            ..ComparePolicy::default()
        };
        let (x, y) = (serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&b).unwrap());
        prop_assert!(!compare(&policy, &answer(&x), &answer(&y), &NoiseSet::default()).diverged());

        // A wildcard in place of any one step ignores more, so still nothing differs.
        let mut wider = segments.clone();
        let at = widen % wider.len();
        wider[at] = JsonPathSegment::AnyChild;
        prop_assert!(no_differences(&a, &b, &[path(wider)], &NoiseSet::default()));

        // `$..name` for a final member `name`.
        if let Some(JsonPathSegment::Key(name)) = segments.last() {
            let descendant = path(vec![JsonPathSegment::Descendant(name.clone())]);
            prop_assert!(no_differences(&a, &b, &[descendant], &NoiseSet::default()));
        }

        // The pointer of the place, generalised, as learned noise.
        let noise = NoiseSet::from_patterns(vec![generalise_pointer(&pointer)]);
        prop_assert!(no_differences(&a, &b, &[], &noise));
        let exact_pointer = NoiseSet::from_patterns(vec![pointer]);
        prop_assert!(no_differences(&a, &b, &[], &exact_pointer));
    }

    #[test]
    fn a_change_elsewhere_is_reported(
        root in arb_document(),
        choices in prop::collection::vec(any::<usize>(), 1..6),
    ) {
        // Replacing a value by a fresh marker is reported at (or above) its pointer.
        let (segments, pointer) = pick_path(&root, &choices);
        let mut b = root.clone();
        set_at(&mut b, &segments, Value::String("\u{1}marker".into()));
        let x = serde_json::to_vec(&root).unwrap();
        let y = serde_json::to_vec(&b).unwrap();
        let found = json_differences(&x, &y, &[], &NoiseSet::default()).unwrap();
        prop_assert!(!found.is_empty());
        prop_assert!(found.iter().all(|p| pointer.starts_with(p.as_str())), "{:?} vs {}", found, pointer);
    }

    #[test]
    fn differences_are_symmetric_in_emptiness(a in arb_json(), b in arb_json()) {
        let x = serde_json::to_vec(&a).unwrap();
        let y = serde_json::to_vec(&b).unwrap();
        let forward = json_differences(&x, &y, &[], &NoiseSet::default()).unwrap();
        let backward = json_differences(&y, &x, &[], &NoiseSet::default()).unwrap();
        prop_assert_eq!(forward.is_empty(), backward.is_empty());
        prop_assert!(forward.len() <= MAX_POINTERS);
    }

    #[test]
    fn the_hash_agrees_with_the_trees(
        root in arb_document(),
        one in arb_style(),
        other in arb_style(),
        choices in prop::collection::vec(any::<usize>(), 1..6),
        how in any::<u8>(),
        replacement in arb_json(),
    ) {
        // The same value, written out differently (member order, spacing, numbers, escapes).
        let a = text(&root, one);
        let b = text(&root, other);
        prop_assert_eq!(json::equal_by_hash(a.as_bytes(), b.as_bytes(), &Rules::none()), Some(true));
        prop_assert!(equal_trees(a.as_bytes(), b.as_bytes()));

        // A mutated copy (sometimes still equal): the hash says what the trees say.
        let (segments, _) = pick_path(&root, &choices);
        let mut mutated = root.clone();
        mutate(at_mut(&mut mutated, &segments), how, replacement);
        let c = text(&mutated, other);
        let trees = equal_trees(a.as_bytes(), c.as_bytes());
        prop_assert_eq!(json::equal_by_hash(a.as_bytes(), c.as_bytes(), &Rules::none()), Some(trees), "{} vs {}", a, c);
        prop_assert_eq!(json::equal_by_hash(c.as_bytes(), a.as_bytes(), &Rules::none()), Some(trees));
        let found = json_differences(a.as_bytes(), c.as_bytes(), &[], &NoiseSet::default());
        prop_assert_eq!(found.map(|p| p.is_empty()), Some(trees));
    }

    #[test]
    fn the_hash_agrees_with_the_trees_on_unrelated_values(
        a in arb_json(),
        b in arb_json(),
        style in arb_style(),
    ) {
        let (x, y) = (text(&a, style), text(&b, style));
        let trees = equal_trees(x.as_bytes(), y.as_bytes());
        prop_assert_eq!(json::equal_by_hash(x.as_bytes(), y.as_bytes(), &Rules::none()), Some(trees));
    }

    #[test]
    fn the_scanner_hashes_as_serde_does(
        root in arb_document(),
        style in arb_style(),
        replacement in arb_json(),
    ) {
        for body in [text(&root, style), text(&replacement, style)] {
            let ((scanned, scan_repeats), (parsed, serde_repeats)) = json::both_hashes(body.as_bytes(), &Rules::none());
            prop_assert!(parsed.is_some());
            if scanned.is_some() {
                prop_assert_eq!(scanned, parsed, "{}", body);
                prop_assert_eq!(scan_repeats, serde_repeats);
            }
        }
    }

    #[test]
    fn the_pruned_hash_agrees_with_the_pruned_trees(
        root in arb_document(),
        one in arb_style(),
        other in arb_style(),
        ignored in prop::collection::vec(any::<usize>(), 1..6),
        changed in prop::collection::vec(any::<usize>(), 1..6),
        same_place in any::<bool>(),
        kind in any::<u8>(),
        how in any::<u8>(),
        replacement in arb_json(),
    ) {
        // A place ignored, and a change at it, below it, or elsewhere.
        let (ignore, noise) = rules_for(&root, &ignored, kind);
        let rules = Rules::new(&ignore, &noise);
        let changed = if same_place { &ignored } else { &changed };
        let (segments, _) = pick_path(&root, changed);
        let mut mutated = root.clone();
        mutate(at_mut(&mut mutated, &segments), how, replacement);
        let (a, c) = (text(&root, one), text(&mutated, other));
        for body in [&a, &c] {
            // The scanner, where it answers, leaves out what serde's pass leaves out.
            let ((scanned, _), (parsed, _)) = json::both_hashes(body.as_bytes(), &rules);
            prop_assert!(parsed.is_some());
            if scanned.is_some() {
                prop_assert_eq!(scanned, parsed, "{}", body);
            }
        }
        let trees = equal_pruned_trees(a.as_bytes(), c.as_bytes(), &rules);
        prop_assert_eq!(json::equal_by_hash(a.as_bytes(), c.as_bytes(), &rules), Some(trees), "{} vs {}", a, c);
        prop_assert_eq!(json::equal_by_hash(c.as_bytes(), a.as_bytes(), &rules), Some(trees));
        let found = json_differences(a.as_bytes(), c.as_bytes(), &ignore, &noise);
        prop_assert_eq!(found.map(|p| p.is_empty()), Some(trees));
    }

    #[test]
    fn the_scanner_never_answers_for_what_serde_rejects(
        a in prop::collection::vec(any::<u8>(), 0..128),
        b in "[\\[\\]{}:,\"0-9a-z.eE+\\- \\\\]{0,64}",
        c in "[\\[\\]{}:,\"0-9eE+.\\-]{0,24}",
    ) {
        for body in [a.as_slice(), b.as_bytes(), c.as_bytes()] {
            let ((scanned, _), (parsed, _)) = json::both_hashes(body, &Rules::none());
            if scanned.is_some() {
                prop_assert_eq!(scanned, parsed, "{:?}", String::from_utf8_lossy(body));
            }
        }
    }

    #[test]
    fn json_differences_never_panics_on_bytes(
        a in prop::collection::vec(any::<u8>(), 0..128),
        b in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let ignore = ["$..a", "$.a[*].b", "$[0]", "$.*"].map(|p| JsonPath::parse(p).unwrap());
        let noise = NoiseSet::from_patterns(vec!["/*/a".into(), "/b/1".into(), "x".into()]);
        let _ = json_differences(&a, &b, &ignore, &noise);
        let _ = json_differences(&a, &a, &[], &NoiseSet::default());
    }

    #[test]
    fn json_differences_never_panics_on_json_like_text(
        a in "[\\[\\]{}:,\"0-9a-z.eE+\\- ]{0,64}",
        b in "[\\[\\]{}:,\"0-9a-z.eE+\\- ]{0,64}",
    ) {
        let ignore = ["$..a", "$.a[*].b", "$[1]"].map(|p| JsonPath::parse(p).unwrap());
        let noise = NoiseSet::from_patterns(vec!["/*".into(), "/a/*/b".into()]);
        let _ = json_differences(a.as_bytes(), b.as_bytes(), &ignore, &noise);
    }

    #[test]
    fn sampling_does_not_depend_on_chunking(
        body in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        limit in 0usize..3000,
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut sampler = BodySampler::new(limit);
        let mut from = 0;
        for cut in cuts.into_iter().chain([body.len()]) {
            sampler.push(&Bytes::copy_from_slice(&body[from..cut]));
            from = cut;
        }
        let sample = sampler.finish();
        prop_assert_eq!(sample.complete(), body.len() <= limit);
        prop_assert_eq!(sample, BodySample::from_bytes(&body, limit));
    }

    #[test]
    fn endpoint_group_of_a_group_is_itself(path in any::<String>()) {
        let group = endpoint_group(&Method::GET, &path);
        let again = endpoint_group(&Method::GET, &group["GET ".len()..]);
        prop_assert_eq!(again, group);
    }

    #[test]
    fn endpoint_group_folds_numeric_segments(
        words in prop::collection::vec("[a-z]{1,6}", 1..5),
        ids in prop::collection::vec(any::<u32>(), 1..5),
    ) {
        let path: String = words.iter().zip(&ids).map(|(w, id)| format!("/{w}/{id}")).collect();
        let expected: String = words.iter().zip(&ids).map(|(w, _)| format!("/{w}/{{n}}")).collect();
        prop_assert_eq!(endpoint_group(&Method::GET, &path), format!("GET {expected}"));
    }
}

#[test]
fn the_style_writer_writes_what_it_claims() {
    let value: Value = serde_json::from_str(r#"{"a": [1, 2, {"b": null}], "c": "x"}"#).unwrap();
    let style = Style {
        rotate: 1,
        spaced: false,
        floats: true,
        escaped: false,
    };
    assert_eq!(text(&value, style), r#"{"a":[1e0,2.0,{"b":null}],"c":"x"}"#);
    let escaped = Style {
        escaped: true,
        ..style
    };
    assert_eq!(
        text(&serde_json::json!({"é": "a😀"}), escaped),
        r#"{"\u00e9":"\u0061\ud83d\ude00"}"#
    );
    let round: Value = serde_json::from_str(&text(&value, style)).unwrap();
    assert_eq!(round.as_object().map(Map::len), Some(2));
}
