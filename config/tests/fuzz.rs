//! Property-based fuzzing of the parsers that read what comes from outside: the config file
//! (TOML), the etcd values (route spec and weights JSON), whatever `cutover validate` is given,
//! the `ignore_json_paths` expressions, and the admin API's action bodies.
//!
//! Inputs are arbitrary text and the golden examples (`config/examples/`, the invalid ones
//! included) mutated byte by byte, token by token, line by line and value by value, so that
//! most cases get past the syntax into validation. Properties: nothing panics; a rejection is
//! at least one `path: reason`, each a non-empty path and reason on one printable line; what is
//! accepted is valid and serialises back to itself.
//!
//! `PROPTEST_CASES` sets the cases per property: proptest's 256 by default (`make test`), 50,000
//! in `make fuzz` (a release build).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cutover_config::operator::{parse_action, Action, ACTIONS, MAX_REASON};
use cutover_config::{
    parse_config_toml, parse_document, parse_route_spec_json, parse_weights_json, Config,
    ConfigErrors, Document, JsonPath, RouteId, RouteSpec, Weights,
};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseError;
use serde_json::Value;

// ---- configuration -------------------------------------------------------------------------

/// proptest's configuration (`PROPTEST_CASES` honoured), with a `divisor`-th of the cases for
/// the costlier properties. A failure is shrunk and reported, not written to a file: the
/// shrunk inputs live on below as plain tests.
fn cases(divisor: u32) -> ProptestConfig {
    let config = ProptestConfig::default();
    ProptestConfig {
        cases: (config.cases / divisor).max(1),
        failure_persistence: None,
        ..config
    }
}

// ---- the golden examples -------------------------------------------------------------------

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every golden example (valid and invalid) whose name ends in `.ext`.
fn read_seeds(ext: &str) -> Vec<String> {
    let mut files = Vec::new();
    for dir in [examples_dir(), examples_dir().join("invalid")] {
        for entry in fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == ext) {
                files.push(path);
            }
        }
    }
    files.sort();
    let seeds: Vec<String> = files
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "no golden *.{ext} examples");
    seeds
}

fn toml_seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| read_seeds("toml"))
}

fn json_seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| read_seeds("json"))
}

/// Bodies of the admin API's actions, as operators and the dashboard send them.
const ACTION_SEEDS: &[&str] = &[
    r#"{"legacy": 50, "new": 50, "shadow": 10, "reason": "canary looks fine"}"#,
    r#"{"legacy": 99.5, "new": 0.5}"#,
    r#"{"reason": "bad p99"}"#,
    "{}",
    "",
];

// ---- what mutations draw from --------------------------------------------------------------

/// Values that sit on the edges of what the documents accept, written as they appear in TOML
/// or JSON (quoted where they are strings).
const TOKENS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "0.5",
    "-0.0",
    "1e-320",
    "5e-324",
    "1.7976931348623157e308",
    "8.98846567431158e307",
    "1e309",
    "-1e309",
    "100",
    "100.00000000000001",
    "101",
    "600",
    "601",
    "256",
    "257",
    "4294967296",
    "9007199254740993",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "nan",
    "inf",
    "-inf",
    "+inf",
    "0x10",
    "1_000",
    "07",
    "1e2",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "[1]",
    "[\"\"]",
    "{a = 1}",
    "{\"a\": 1}",
    "1979-05-27T07:32:00Z",
    "'''x'''",
    "\"\"",
    "\" \"",
    "\"x\"",
    "\"0s\"",
    "\"0ns\"",
    "\"1ns\"",
    "\"99ms\"",
    "\"1s\"",
    "\"18446744073709551615s\"",
    "\"18446744073709551616s\"",
    "\"584942417355y\"",
    "\"1h 30m\"",
    "\"-1s\"",
    "\"127.0.0.1:0\"",
    "\"0.0.0.0:9090\"",
    "\"[::1]:8080\"",
    "\"[::ffff:1.2.3.4]:1\"",
    "\"[::1]\"",
    "\"a:65535\"",
    "\"a:65536\"",
    "\"A.B:1\"",
    "\"http://a:1\"",
    "\"https://a:1\"",
    "\"http://\"",
    "\"*\"",
    "\"*.x\"",
    "\"x.*\"",
    "\"-a.b\"",
    "\"a..b\"",
    "\"$\"",
    "\"$..\"",
    "\"$.a[*]\"",
    "\"$..a\"",
    "\"$['a b']\"",
    "\"$[18446744073709551616]\"",
    "\"/\"",
    "\"/a b\"",
    "\"/x*\"",
    "\"/x/*\"",
    "\"GET\"",
    "\"get\"",
    "\"CONNECT\"",
    "\"json\"",
    "\"grpc\"",
    "\"bytes\"",
    "\"none\"",
    "\"h2\"",
    "\"h2c\"",
    "\"auto\"",
    "\"http1\"",
    "\"reject\"",
    "\"allow\"",
    "\"legacy\"",
    "\"new\"",
    "\"x-user-id\"",
    "\"X_Y\"",
    "\"a\\u0000b\"",
    "\"a\\nb\"",
    "\"\\ud800\"",
    "\"é\"",
    "\"websocket\"",
];

/// Every key the documents know, so that an added member is often one the schema accepts.
const KEYS: &[&str] = &[
    "proxy",
    "admin",
    "stats",
    "etcd",
    "notify",
    "routes",
    "listen",
    "tls_listen",
    "tls_cert",
    "tls_key",
    "threads",
    "max_connections",
    "connect_timeout",
    "upstream_timeout",
    "body_read_timeout",
    "header_read_timeout",
    "idle_timeout",
    "write_timeout",
    "max_header_bytes",
    "max_headers",
    "max_uri_bytes",
    "max_body_bytes",
    "grace_period",
    "underscore_headers",
    "upgrade_socket",
    "upgrades",
    "tunnel_idle_timeout",
    "token_file",
    "allow_unauthenticated",
    "window",
    "slices",
    "endpoints",
    "prefix",
    "last_known_good",
    "dial_timeout",
    "ca_file",
    "cert_file",
    "key_file",
    "username",
    "password_file",
    "webhook",
    "id",
    "match",
    "host",
    "path_prefix",
    "legacy",
    "new",
    "tls",
    "sni",
    "protocol",
    "sticky",
    "pin",
    "header",
    "cookie",
    "shadow",
    "methods",
    "max_in_flight",
    "timeout",
    "strip_headers",
    "grpc_methods",
    "compare",
    "status",
    "headers",
    "body",
    "ignore_json_paths",
    "ignore_headers",
    "learn_noise_percent",
    "noise_ttl",
    "descriptor_set",
    "rollback",
    "error_rate",
    "latency_p99",
    "divergence",
    "max",
    "for",
    "min_requests",
    "max_ratio",
    "min_samples",
    "ramp",
    "steps",
    "hold",
    "auto",
    "weights",
    "reason",
];

/// Bytes that matter to TOML and JSON syntax, and a few that do not.
const SYNTAX: &[u8] = b"{}[]\",:=.\n\r\t\\ #'0123456789-+eE_ntfaul$*/\x00\x7f";

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![any::<u8>(), select(SYNTAX)]
}

// ---- byte-level mutation -------------------------------------------------------------------

/// One edit of a document's bytes; positions are taken modulo the length at the time.
#[derive(Debug, Clone)]
enum Edit {
    /// Remove up to this many bytes at a position.
    Delete(Index, u8),
    /// Insert bytes at a position.
    Insert(Index, Vec<u8>),
    /// Overwrite one byte.
    Replace(Index, u8),
    /// Copy up to this many bytes from one position to another.
    Duplicate(Index, u16, Index),
    /// Copy up to this many bytes of another seed (picked by the first index) to a position.
    Splice(Index, Index, u16, Index),
    /// Replace the bare token (a run up to a delimiter) around a position.
    Token(Index, &'static str),
    /// Replace the quoted string around a position.
    Quoted(Index, &'static str),
    /// Remove the line at a position.
    DeleteLine(Index),
    /// Write the line at a position twice.
    DuplicateLine(Index),
    /// Swap the line at a position with the next one.
    SwapLines(Index),
    /// Cut the document at a position.
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => (any::<Index>(), 1u8..32).prop_map(|(at, n)| Edit::Delete(at, n)),
        2 => (any::<Index>(), prop::collection::vec(interesting_byte(), 1..8))
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
        1 => (any::<Index>(), 1u16..256, any::<Index>())
            .prop_map(|(from, n, to)| Edit::Duplicate(from, n, to)),
        1 => (any::<Index>(), any::<Index>(), 1u16..512, any::<Index>())
            .prop_map(|(seed, from, n, to)| Edit::Splice(seed, from, n, to)),
        4 => (any::<Index>(), select(TOKENS)).prop_map(|(at, t)| Edit::Token(at, t)),
        3 => (any::<Index>(), select(TOKENS)).prop_map(|(at, t)| Edit::Quoted(at, t)),
        1 => any::<Index>().prop_map(Edit::DeleteLine),
        1 => any::<Index>().prop_map(Edit::DuplicateLine),
        1 => any::<Index>().prop_map(Edit::SwapLines),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

/// A position in `0..=len` (an insertion point).
fn point(at: &Index, len: usize) -> usize {
    at.index(len + 1)
}

/// The line around `at`: `start..end`, `end` past its `\n` (or at the end).
fn line_at(doc: &[u8], at: usize) -> (usize, usize) {
    let at = at.min(doc.len());
    let start = doc[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let end = doc[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(doc.len(), |i| at + i + 1);
    (start, end)
}

fn is_delimiter(b: u8) -> bool {
    b" \t\r\n,=[]{}:\"'#".contains(&b)
}

fn apply(doc: &mut Vec<u8>, edit: &Edit, others: &[String]) {
    let len = doc.len();
    match edit {
        Edit::Delete(at, n) => {
            let from = point(at, len);
            let to = (from + usize::from(*n)).min(len);
            doc.drain(from..to);
        }
        Edit::Insert(at, bytes) => {
            let at = point(at, len);
            doc.splice(at..at, bytes.iter().copied());
        }
        Edit::Replace(at, b) => {
            if len > 0 {
                doc[at.index(len)] = *b;
            }
        }
        Edit::Duplicate(from, n, to) => {
            let from = point(from, len);
            let piece = doc[from..(from + usize::from(*n)).min(len)].to_vec();
            let to = point(to, len);
            doc.splice(to..to, piece);
        }
        Edit::Splice(seed, from, n, to) => {
            let other = others[seed.index(others.len())].as_bytes();
            let from = point(from, other.len());
            let piece = &other[from..(from + usize::from(*n)).min(other.len())];
            let to = point(to, len);
            doc.splice(to..to, piece.iter().copied());
        }
        Edit::Token(at, token) => {
            let at = point(at, len);
            let mut start = at;
            while start > 0 && !is_delimiter(doc[start - 1]) {
                start -= 1;
            }
            let mut end = at;
            while end < len && !is_delimiter(doc[end]) {
                end += 1;
            }
            doc.splice(start..end, token.bytes());
        }
        Edit::Quoted(at, token) => {
            let at = point(at, len);
            let open = doc[..at].iter().rposition(|&b| b == b'"');
            let close = doc[at..].iter().position(|&b| b == b'"').map(|i| at + i);
            if let (Some(open), Some(close)) = (open, close) {
                doc.splice(open..=close, token.bytes());
            }
        }
        Edit::DeleteLine(at) => {
            let (start, end) = line_at(doc, point(at, len));
            doc.drain(start..end);
        }
        Edit::DuplicateLine(at) => {
            let (start, end) = line_at(doc, point(at, len));
            let mut line = doc[start..end].to_vec();
            if line.last() != Some(&b'\n') {
                line.insert(0, b'\n');
            }
            doc.splice(end..end, line);
        }
        Edit::SwapLines(at) => {
            let (start, middle) = line_at(doc, point(at, len));
            if middle < len {
                let (_, end) = line_at(doc, middle);
                let first = doc[start..middle].to_vec();
                let second = doc[middle..end].to_vec();
                doc.splice(start..end, second.into_iter().chain(first));
            }
        }
        Edit::Truncate(at) => doc.truncate(point(at, len)),
    }
}

/// A seed with byte edits applied.
fn byte_mutated(seeds: &'static [String]) -> impl Strategy<Value = Vec<u8>> {
    (select(seeds.to_vec()), prop::collection::vec(edit(), 1..6)).prop_map(move |(seed, edits)| {
        let mut doc = seed.into_bytes();
        for edit in &edits {
            apply(&mut doc, edit, seeds);
        }
        doc
    })
}

// ---- value-level mutation ------------------------------------------------------------------

fn interesting_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-2i64..300).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has finite numbers only", |f| f.is_finite())
            .prop_map(Value::from),
        (-1.0f64..101.0).prop_map(Value::from),
        select(
            &[
                0.0,
                -0.0,
                5e-324,
                1e-320,
                0.1,
                0.3,
                1.0,
                99.99,
                100.0,
                f64::MAX
            ][..]
        )
        .prop_map(Value::from),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(KEYS).prop_map(str::to_owned),
        1 => "\\PC{0,6}",
        1 => "[a-z\n\t\"\\\\\u{0}]{0,4}",
    ]
}

/// A replacement value: an edge token's value, a number, a string, a small array or object.
fn interesting_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => select(TOKENS).prop_map(|t| serde_json::from_str(t).unwrap_or_else(|_| Value::from(t))),
        3 => interesting_number(),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => "\\PC{0,16}".prop_map(Value::String),
        1 => Just(Value::Null),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One edit of a parsed document; a path is a list of choices down from the root.
#[derive(Debug, Clone)]
enum ValueEdit {
    /// Replace the node the path leads to.
    Replace(Vec<Index>, Value),
    /// Remove the member or element the path leads to.
    Remove(Vec<Index>),
    /// Add a member to the object the path leads to (or the nearest one above it).
    Add(Vec<Index>, String, Value),
    /// Copy the node at the first path over the node at the second.
    Copy(Vec<Index>, Vec<Index>),
}

fn path() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..6)
}

fn value_edit() -> impl Strategy<Value = ValueEdit> {
    prop_oneof![
        4 => (path(), interesting_value()).prop_map(|(p, v)| ValueEdit::Replace(p, v)),
        2 => path().prop_map(ValueEdit::Remove),
        2 => (path(), key(), interesting_value()).prop_map(|(p, k, v)| ValueEdit::Add(p, k, v)),
        1 => (path(), path()).prop_map(|(a, b)| ValueEdit::Copy(a, b)),
    ]
}

/// The child the choice picks: `Some((key or index, child))` unless `value` is a leaf or empty.
fn child_slot(value: &Value, choice: &Index) -> Option<Result<String, usize>> {
    match value {
        Value::Object(map) if !map.is_empty() => {
            Some(Ok(map.keys().nth(choice.index(map.len()))?.clone()))
        }
        Value::Array(items) if !items.is_empty() => Some(Err(choice.index(items.len()))),
        _ => None,
    }
}

fn walk<'v>(mut at: &'v mut Value, path: &[Index]) -> &'v mut Value {
    for choice in path {
        let Some(slot) = child_slot(at, choice) else {
            break;
        };
        at = match (slot, at) {
            (Ok(key), Value::Object(map)) => map.get_mut(&key).expect("picked from the map"),
            (Err(i), Value::Array(items)) => &mut items[i],
            _ => unreachable!("the slot was picked from this node"),
        };
    }
    at
}

fn apply_value(doc: &mut Value, edit: &ValueEdit) {
    match edit {
        ValueEdit::Replace(path, value) => *walk(doc, path) = value.clone(),
        ValueEdit::Remove(path) => {
            let (last, parent) = match path.split_last() {
                Some((last, parent)) => (last, parent),
                None => return,
            };
            let parent = walk(doc, parent);
            match (child_slot(parent, last), parent) {
                (Some(Ok(key)), Value::Object(map)) => {
                    map.remove(&key);
                }
                (Some(Err(i)), Value::Array(items)) => {
                    items.remove(i);
                }
                _ => {}
            }
        }
        ValueEdit::Add(path, key, value) => {
            // The deepest object on the path.
            let mut object_depth = 0;
            let mut at = &*doc;
            for (depth, choice) in path.iter().enumerate() {
                if at.is_object() {
                    object_depth = depth;
                }
                match child_slot(at, choice) {
                    Some(Ok(key)) => at = &at[key.as_str()],
                    Some(Err(i)) => at = &at[i],
                    None => break,
                }
            }
            if let Value::Object(map) = walk(doc, &path[..object_depth]) {
                map.insert(key.clone(), value.clone());
            }
        }
        ValueEdit::Copy(from, to) => {
            let node = walk(doc, from).clone();
            *walk(doc, to) = node;
        }
    }
}

/// A JSON seed with value edits, then a few byte edits, written compactly or pretty.
fn json_value_mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        select(json_seeds().to_vec()),
        prop::collection::vec(value_edit(), 1..5),
        any::<bool>(),
        prop::collection::vec(edit(), 0..2),
    )
        .prop_map(|(seed, edits, pretty, byte_edits)| {
            let mut doc: Value = serde_json::from_str(&seed).expect("golden JSON");
            for edit in &edits {
                apply_value(&mut doc, edit);
            }
            let text = if pretty {
                serde_json::to_string_pretty(&doc)
            } else {
                serde_json::to_string(&doc)
            };
            let mut bytes = text.expect("a Value serialises").into_bytes();
            for edit in &byte_edits {
                apply(&mut bytes, edit, json_seeds());
            }
            bytes
        })
}

/// TOML has no null: a null becomes an empty string.
fn without_nulls(value: &mut Value) {
    match value {
        Value::Null => *value = Value::String(String::new()),
        Value::Array(items) => items.iter_mut().for_each(without_nulls),
        Value::Object(map) => map.values_mut().for_each(without_nulls),
        _ => {}
    }
}

/// A TOML seed with value edits (through its JSON image), written back as TOML, then a few
/// byte edits. A document TOML cannot hold (a root that is no table) stays the seed.
fn toml_value_mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        select(toml_seeds().to_vec()),
        prop::collection::vec(value_edit(), 1..5),
        prop::collection::vec(edit(), 0..2),
    )
        .prop_map(|(seed, edits, byte_edits)| {
            let table: toml::Table = toml::from_str(&seed).expect("golden TOML");
            let mut doc = serde_json::to_value(table).expect("TOML as JSON");
            for edit in &edits {
                apply_value(&mut doc, edit);
            }
            without_nulls(&mut doc);
            let text = toml::to_string(&doc).unwrap_or(seed);
            let mut bytes = text.into_bytes();
            for edit in &byte_edits {
                apply(&mut bytes, edit, toml_seeds());
            }
            bytes
        })
}

// ---- inputs --------------------------------------------------------------------------------

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Config-file text: arbitrary, TOML-shaped, or a golden example mutated.
fn toml_input() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => "[a-z_\\[\\]{}=\"'.,#0-9 \n\t-]{0,200}",
        4 => byte_mutated(toml_seeds()).prop_map(lossy),
        4 => toml_value_mutated().prop_map(lossy),
    ]
}

/// etcd-value text: arbitrary, JSON-shaped, or a golden example mutated.
fn json_input() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => "[a-z_\\[\\]{}:\"',.0-9 \n\t+eE-]{0,200}",
        4 => byte_mutated(json_seeds()).prop_map(lossy),
        4 => json_value_mutated().prop_map(lossy),
    ]
}

/// An admin API body: arbitrary bytes (not even UTF-8), or a sent body mutated.
fn action_body() -> impl Strategy<Value = Vec<u8>> {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    let seeds = SEEDS.get_or_init(|| ACTION_SEEDS.iter().map(|s| (*s).to_owned()).collect());
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..64),
        4 => byte_mutated(seeds),
        4 => (
            select(&ACTION_SEEDS[..3]),
            prop::collection::vec(value_edit(), 1..4),
        )
            .prop_map(|(seed, edits)| {
                let mut doc: Value = serde_json::from_str(seed).unwrap();
                for edit in &edits {
                    apply_value(&mut doc, edit);
                }
                doc.to_string().into_bytes()
            }),
    ]
}

// ---- what must hold ------------------------------------------------------------------------

/// A rejection is at least one error, each a non-empty path and reason on one printable line
/// (`cutover validate` prints one `path: reason` line per problem).
fn well_formed(errors: &ConfigErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty(), "an Err without errors");
    for error in errors {
        prop_assert!(!error.path.trim().is_empty(), "empty path: {error:?}");
        prop_assert!(!error.reason.trim().is_empty(), "empty reason: {error:?}");
        let printable = |text: &str| !text.chars().any(char::is_control);
        prop_assert!(
            printable(&error.path) && printable(&error.reason),
            "not one printable line: {error:?}"
        );
    }
    Ok(())
}

/// `new / (legacy + new)`, computed another way (no sum to overflow).
fn expected_share(weights: &Weights) -> f64 {
    if weights.new == 0.0 {
        0.0
    } else {
        1.0 / (1.0 + weights.legacy / weights.new)
    }
}

// Floats read exactly: serde_json without its `float_roundtrip` feature read some numbers of
// 16-17 significant digits a few ULPs off (`971.0903971143717` as `971.0903971143716`), so
// weights and route specs did not come back exactly from the JSON etcd holds, which
// `RouteSpec::to_json` promises. Found here; fixed by the workspace's serde_json feature (the
// `*_round_trip_exactly` properties and `*_read_back_exactly` tests below).

/// `text` parses back to exactly what `written` serialises as.
fn reads_back<T: serde::Serialize + std::fmt::Debug>(
    parsed: Result<T, ConfigErrors>,
    written: &T,
    text: &str,
) -> Result<(), TestCaseError> {
    match parsed {
        Ok(again) => {
            let (again, written) = (
                serde_json::to_value(&again).unwrap(),
                serde_json::to_value(written).unwrap(),
            );
            prop_assert!(again == written, "{} reads back as {}", written, again);
            Ok(())
        }
        Err(errors) => Err(TestCaseError::fail(format!(
            "{text} does not read back: {errors}"
        ))),
    }
}

/// Accepted weights are valid, serialise back to themselves, and split as they say.
fn valid_weights(weights: &Weights) -> Result<(), TestCaseError> {
    let Weights {
        legacy,
        new,
        shadow,
    } = *weights;
    prop_assert!(legacy.is_finite() && new.is_finite() && shadow.is_finite());
    prop_assert!(
        legacy >= 0.0 && new >= 0.0 && legacy + new > 0.0,
        "{weights:?}"
    );
    prop_assert!((0.0..=100.0).contains(&shadow), "{weights:?}");
    prop_assert_eq!(Weights::new(legacy, new, shadow), Ok(*weights));
    let text = weights.to_json().to_string();
    reads_back(parse_weights_json(&text), weights, &text)?;
    let text = serde_json::to_string(weights).unwrap();
    reads_back(parse_weights_json(&text), weights, &text)?;
    let share = weights.new_share();
    prop_assert!((0.0..=1.0).contains(&share), "{weights:?}: share {share}");
    let expected = expected_share(weights);
    prop_assert!(
        (share - expected).abs() <= 1e-12,
        "{weights:?}: new_share {share}, new / (legacy + new) is {expected}"
    );
    Ok(())
}

/// An accepted route spec is valid and serialises back to itself (`to_json` promises it).
fn valid_spec(spec: &RouteSpec) -> Result<(), TestCaseError> {
    prop_assert!(spec.matcher.path_prefix.starts_with('/'));
    for backend in [&spec.legacy, &spec.new] {
        prop_assert!(!backend.endpoints.is_empty());
        prop_assert!(backend.endpoints.iter().all(|e| e.port != 0));
    }
    prop_assert!((0.0..=100.0).contains(&spec.compare.learn_noise_percent));
    prop_assert!(!spec.compare.noise_ttl.is_zero() && !spec.shadow.timeout.is_zero());
    if let Some(ramp) = &spec.ramp {
        prop_assert!(!ramp.steps.is_empty());
        prop_assert!(ramp.steps.iter().all(|s| *s > 0.0 && *s <= 100.0));
        prop_assert!(ramp.steps.windows(2).all(|w| w[0] < w[1]));
    }
    let text = spec.to_json().to_string();
    reads_back(parse_route_spec_json(&text), spec, &text)?;
    let text = serde_json::to_string(spec).unwrap();
    reads_back(parse_route_spec_json(&text), spec, &text)?;
    Ok(())
}

/// An accepted config is valid: each route's spec and weights, unique ids, sane settings.
fn valid_config(config: &Config) -> Result<(), TestCaseError> {
    prop_assert!(!config.proxy.listen.is_empty());
    prop_assert!((1..=256).contains(&config.proxy.threads));
    prop_assert!(config.stats.window >= Duration::from_secs(1));
    prop_assert!(config.stats.window / config.stats.slices >= Duration::from_millis(100));
    for (i, route) in config.routes.iter().enumerate() {
        prop_assert_eq!(RouteId::parse(route.id.as_str()), Ok(route.id.clone()));
        prop_assert!(
            config.routes[..i].iter().all(|other| other.id != route.id),
            "duplicate id {}",
            route.id
        );
        valid_spec(&route.spec)?;
        valid_weights(&route.weights)?;
    }
    Ok(())
}

fn outcome<T>(
    result: &Result<T, ConfigErrors>,
    valid: impl FnOnce(&T) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match result {
        Ok(value) => valid(value),
        Err(errors) => well_formed(errors),
    }
}

fn valid_document(document: &Document) -> Result<(), TestCaseError> {
    match document {
        Document::Config(config) => valid_config(config),
        Document::RouteSpec(spec) => valid_spec(spec),
        Document::Weights(weights) => valid_weights(weights),
    }
}

/// What `parse_action` promises for `name` and `body`.
fn action_outcome(name: &str, body: &[u8]) -> Result<(), TestCaseError> {
    let parsed = parse_action(name, body);
    prop_assert_eq!(parsed.is_some(), ACTIONS.contains(&name));
    let Some(parsed) = parsed else {
        return Ok(());
    };
    let (action, reason) = match parsed {
        Ok(ok) => ok,
        Err(errors) => return well_formed(&errors),
    };
    prop_assert_eq!(action.name(), name);
    if let Action::Set {
        legacy,
        new,
        shadow,
    } = action
    {
        let weights = Weights::new(legacy, new, shadow.unwrap_or(0.0));
        prop_assert!(weights.is_ok(), "{:?}", weights);
        valid_weights(&weights.unwrap())?;
    }
    if let Some(reason) = reason {
        prop_assert!(!reason.is_empty() && reason.len() <= MAX_REASON);
        prop_assert_eq!(reason.trim(), reason.as_str());
        prop_assert!(!reason.chars().any(char::is_control), "{:?}", reason);
    }
    Ok(())
}

// ---- properties ----------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(1))]

    #[test]
    fn config_files_are_valid_or_refused_with_reasons(text in toml_input()) {
        outcome(&parse_config_toml(&text), valid_config)?;
    }

    #[test]
    fn route_specs_are_valid_or_refused_with_reasons(text in json_input()) {
        outcome(&parse_route_spec_json(&text), valid_spec)?;
    }

    #[test]
    fn weights_are_valid_or_refused_with_reasons(text in json_input()) {
        outcome(&parse_weights_json(&text), valid_weights)?;
    }

    #[test]
    fn any_document_is_valid_or_refused_with_reasons(
        name in select(&["x.toml", "x.json", "X.JSON", "x", "x.txt", ".toml", "x.toml.json"][..]),
        text in prop_oneof![toml_input(), json_input()],
    ) {
        outcome(&parse_document(name, &text), valid_document)?;
    }

    #[test]
    fn any_weights_round_trip_or_are_refused(
        legacy in prop_oneof![any::<f64>(), 0.0f64..1000.0, Just(f64::MAX)],
        new in prop_oneof![any::<f64>(), 0.0f64..1000.0, Just(f64::MAX)],
        shadow in prop_oneof![any::<f64>(), 0.0f64..=100.0],
    ) {
        outcome(&Weights::new(legacy, new, shadow), valid_weights)?;
        // The same numbers as a document (JSON has no NaN or infinity: those are refused).
        let text = format!(r#"{{"legacy": {legacy:?}, "new": {new:?}, "shadow": {shadow:?}}}"#);
        outcome(&parse_weights_json(&text), valid_weights)?;
    }

    #[test]
    fn action_bodies_are_valid_or_refused_with_reasons(
        name in prop_oneof![4 => select(&ACTIONS[..]).prop_map(str::to_owned), 1 => "\\PC{0,8}"],
        body in action_body(),
    ) {
        action_outcome(&name, &body)?;
    }

    #[test]
    fn json_paths_parse_back_to_themselves(
        text in prop_oneof![
            any::<String>(),
            "\\$[.\\[\\]'*a-z0-9 \\\\\"~/-]{0,16}",
            (select(&["$.a", "$.a[*].b", "$..name", "$['k y']", "$.a[3]", "$.*"][..]),
             prop::collection::vec(edit(), 1..3))
                .prop_map(|(seed, edits)| {
                    let mut bytes = seed.as_bytes().to_vec();
                    for edit in &edits {
                        apply(&mut bytes, edit, json_seeds());
                    }
                    lossy(bytes)
                }),
        ],
    ) {
        match JsonPath::parse(&text) {
            Ok(path) => {
                prop_assert_eq!(&path.source, &text);
                prop_assert_eq!(path.to_string(), text.clone());
                prop_assert_eq!(JsonPath::parse(&path.source), Ok(path.clone()));
                let json = serde_json::to_string(&path).unwrap();
                prop_assert_eq!(serde_json::from_str::<JsonPath>(&json).ok(), Some(path));
            }
            Err(reason) => {
                prop_assert!(!reason.trim().is_empty());
                prop_assert!(!reason.chars().any(char::is_control), "{:?}", reason);
            }
        }
    }
}

// ---- hostile shapes, once each -------------------------------------------------------------

/// `depth` levels of `open`, then `leaf` and the closing `close`s.
fn nested(open: &str, leaf: &str, close: &str, depth: usize) -> String {
    format!("{}{leaf}{}", open.repeat(depth), close.repeat(depth))
}

fn refused_with_reasons<T: std::fmt::Debug>(result: Result<T, ConfigErrors>) {
    match result {
        Ok(value) => panic!("accepted {value:?}"),
        Err(errors) => well_formed(&errors).unwrap(),
    }
}

#[test]
fn deep_nesting_is_refused_without_a_stack_overflow() {
    const DEPTH: usize = 100_000;
    for text in [
        format!("a = {}", nested("[", "1", "]", DEPTH)),
        format!("a = {}", nested("{a = ", "1", "}", DEPTH)),
        format!("{}a = 1", "a.".repeat(DEPTH)),
        format!("[{}a]\nb = 1", "a.".repeat(DEPTH)),
        format!("[[{}a]]\nb = 1", "a.".repeat(DEPTH)),
        format!("[[routes]]\nid = {}", nested("[", "\"x\"", "]", DEPTH)),
    ] {
        refused_with_reasons(parse_config_toml(&text));
        refused_with_reasons(parse_document("x", &text));
    }
    for text in [
        nested("[", "1", "]", DEPTH),
        nested("{\"a\":", "1", "}", DEPTH),
        format!("{{\"match\": {}}}", nested("[", "", "]", DEPTH)),
    ] {
        refused_with_reasons(parse_route_spec_json(&text));
        refused_with_reasons(parse_weights_json(&text));
        refused_with_reasons(parse_document("x.json", &text));
        refused_with_reasons(parse_action("weights", text.as_bytes()).unwrap());
    }
}

#[test]
fn huge_numbers_are_refused_with_reasons() {
    let digits = "9".repeat(1 << 20);
    for number in [
        digits.clone(),
        format!("0.{digits}e999999"),
        format!("1e{digits}"),
    ] {
        let text = format!(r#"{{"legacy": {number}, "new": 1}}"#);
        outcome(&parse_weights_json(&text), valid_weights).unwrap();
        let toml = format!("[stats]\nslices = {number}");
        refused_with_reasons(parse_config_toml(&toml));
    }
}

// ---- floats, exactly ----------------------------------------------------------

proptest! {
    #![proptest_config(cases(1))]

    /// Weights come back exactly from their JSON (serde_json's `float_roundtrip`).
    #[test]
    fn weights_round_trip_exactly(
        legacy in 0.0f64..1000.0,
        new in 0.0f64..1000.0,
        shadow in 0.0f64..=100.0,
    ) {
        prop_assume!(legacy + new > 0.0);
        let weights = Weights::new(legacy, new, shadow).unwrap();
        prop_assert_eq!(parse_weights_json(&weights.to_json().to_string()), Ok(weights));
    }

    /// A spec comes back exactly from its JSON, as `RouteSpec::to_json` promises.
    #[test]
    fn route_specs_round_trip_exactly(text in json_input()) {
        if let Ok(spec) = parse_route_spec_json(&text) {
            prop_assert_eq!(parse_route_spec_json(&spec.to_json().to_string()), Ok(spec));
        }
    }
}

/// Shrunk by `any_weights_round_trip_or_are_refused`: `971.0903971143717` reads back as
/// `971.0903971143716`, `1.0203291509304455e-109` as `1.0203291509304457e-109`.
#[test]
fn weights_with_17_digits_read_back_exactly() {
    for legacy in [971.090_397_114_371_7, 1.020_329_150_930_445_5e-109] {
        let weights = Weights::new(legacy, 0.0, 0.0).unwrap();
        let text = weights.to_json().to_string();
        assert_eq!(parse_weights_json(&text), Ok(weights), "{text}");
    }
}

/// The same through a route spec (found by `route_specs_round_trip_exactly`): a ramp step of
/// `91.22217316509271` reads back as `91.22217316509273`.
#[test]
fn route_spec_floats_read_back_exactly() {
    let text = r#"{"match": {}, "legacy": {"endpoints": ["a:1"]}, "new": {"endpoints": ["b:1"]},
                   "ramp": {"steps": [91.22217316509271]}}"#;
    let spec = parse_route_spec_json(text).unwrap();
    assert_eq!(spec.ramp.as_ref().unwrap().steps, [91.222_173_165_092_71]);
    assert_eq!(parse_route_spec_json(&spec.to_json().to_string()), Ok(spec));
}

// ---- shrunk inputs of bugs the properties found (fixed) ------------------------------------

fn only_error(result: Result<impl std::fmt::Debug, ConfigErrors>) -> (String, String) {
    let errors = result.unwrap_err();
    well_formed(&errors).unwrap();
    assert_eq!(errors.len(), 1, "{errors}");
    let error = errors.into_iter().next().unwrap();
    (error.path, error.reason)
}

/// serde quotes an unknown field's name as written: a tab, a NUL or a newline in it made a
/// reason that was not one printable line (`cutover validate` prints one line per problem).
#[test]
fn control_characters_in_unknown_fields_are_escaped() {
    let (path, reason) = only_error(parse_weights_json("{\"\\t\":0}"));
    assert_eq!(path, "(root)");
    assert!(
        reason.starts_with(r#"unknown field "\t", expected one of"#),
        "{reason}"
    );
    let (_, reason) = only_error(parse_route_spec_json("{\"\\u0000\":0}"));
    assert!(
        reason.starts_with(r#"unknown field "\0", expected one of"#),
        "{reason}"
    );
    let (_, reason) = only_error(parse_weights_json("{\"x\\ny\":0}"));
    assert!(
        reason.starts_with(r#"unknown field "x\ny", expected one of"#),
        "{reason}"
    );
    let (_, reason) = only_error(parse_config_toml("\"\\u0000\" = 0\n[proxy]\n"));
    assert!(
        reason.starts_with(r#"unknown field "\0", expected one of"#),
        "{reason}"
    );
    let body = parse_action("weights", b"{\"\\t\":0}").unwrap();
    let (_, reason) = only_error(body);
    assert!(
        reason.starts_with(r#"unknown field "\t", expected one of"#),
        "{reason}"
    );
}

/// A `null` (or a syntax error) under a key of the document's own was reported at a path made
/// of that key as written: blank for `{" ": null}`, with a raw tab or NUL for others.
#[test]
fn document_keys_in_paths_are_quoted() {
    let (path, reason) = only_error(parse_route_spec_json("{\" \":null}"));
    assert_eq!(path, r#"[" "]"#);
    assert!(reason.starts_with("null is not allowed"), "{reason}");
    let (path, _) = only_error(parse_route_spec_json("{\"\":null}"));
    assert_eq!(path, r#"[""]"#);
    let text = r#"{"legacy": {"endpoints": []}, "match": {"path_prefix": "/"},
                   "new": {"endpoints": ["10.0.1.1:8080"]}, "proxy": {"\u0000": null}}"#;
    let (path, _) = only_error(parse_route_spec_json(text));
    assert_eq!(path, r#"proxy["\u0000"]"#);
    let (path, _) = only_error(parse_weights_json(
        r#"{"legacy": 1, "new": 1, "shadow": {"\u0085": null}}"#,
    ));
    assert_eq!(path, r#"shadow["\u{85}"]"#);
    let (path, reason) = only_error(parse_document("x.json", "{\"\\t\":{\" \":\"a\u{0}b\"}}"));
    assert_eq!(path, r#"["\t"][" "]"#);
    assert!(reason.starts_with("control character"), "{reason}");
    // Plain names are written as before.
    let (path, _) = only_error(parse_weights_json(
        r#"{"legacy": 1, "new": 1, "shadow": {"a": null}}"#,
    ));
    assert_eq!(path, "shadow.a");
}

/// `legacy + new` overflowed for weights near f64::MAX: `new_share` was 0 for 1:1 weights
/// (all traffic on legacy, the phase saying canary).
#[test]
fn huge_weights_split_by_their_ratio() {
    let weights = Weights::new(f64::MAX, f64::MAX, 0.0).unwrap();
    assert_eq!(weights.new_share(), 0.5);
    let weights = Weights::new(f64::MAX, f64::MAX / 3.0, 0.0).unwrap();
    assert!((weights.new_share() - 0.25).abs() < 1e-15);
    valid_weights(&weights).unwrap();
}
