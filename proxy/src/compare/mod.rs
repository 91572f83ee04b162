//! Comparison of the legacy and the new answer to one shadowed request (SPEC §3 `compare`).
//!
//! Pure code, no I/O: the shadow dispatch feeds each side's streamed body through a
//! [`BodySampler`], calls [`compare`] once both [`Answer`]s are complete, and records what
//! diverged ([`Difference::kinds`] for `cutover_divergences_total{kind}`, a
//! [`DivergenceRecord`] in the route's [`DivergenceLog`]).
//!
//! - Status: compared when `compare.status`.
//! - Headers: every name of `compare.headers` not in `compare.ignore_headers`, all values in
//!   order, byte for byte.
//! - Body by `compare.body`: `json` parses both sides, removes `ignore_json_paths` and the
//!   learned noise from both documents, canonicalises numbers (`1` = `1.0` = `1e0`) and reports
//!   the differing places as JSON Pointers computed by [`json_patch::diff`]; a side that is not
//!   JSON falls back to `bytes`. `bytes` compares length and xxh3 hash (and the bytes when both
//!   are held). `none` skips bodies. A body larger than the sampler's limit is compared by
//!   length + hash only, whatever the mode.
//! - Per endpoint: [`endpoint_group`] folds ids out of paths, [`Groups`] bounds how many.
//! - Noise learning: a second legacy answer is diffed against the first with
//!   [`noise_pointers`]; [`NoiseLearner::observe`] counts the generalised pointers and
//!   [`NoiseLearner::noise`] hands back those seen varying often enough, until they expire.

mod endpoint;
mod json;
mod noise;
pub mod protobuf;
mod queue;
mod record;
mod rules;
mod scan;

#[cfg(test)]
mod proptests;

use bytes::Bytes;
use cutover_config::{BodyCompare, ComparePolicy};
use http::HeaderMap;
use xxhash_rust::xxh3::Xxh3Default;

pub use endpoint::{endpoint_group, Groups, MAX_GROUP_PATH_BYTES, OTHER_GROUP};
pub use json::{json_differences, MAX_POINTERS};
pub use noise::{generalise_pointer, NoiseLearner, NoiseSet};
pub use queue::{ComparisonQueue, MAX_QUEUED, MAX_QUEUED_BYTES};
pub use record::{DivergenceLog, DivergenceRecord, RECORD_BODY_BYTES};

/// Chunks at least this large are held as they came (a reference to the buffer they were read
/// into), not copied; smaller ones are copied together (held, each would keep a whole read
/// buffer alive).
const SHARE_CHUNK: usize = 16 * 1024;

/// A streamed body, sampled for comparison: the first `limit` bytes, the total length, and,
/// when the body is longer than `limit`, an xxh3-64 hash of all of it.
#[derive(Clone)]
pub struct BodySampler {
    limit: usize,
    /// The first chunk, held as it came while nothing else is held.
    shared: Option<Bytes>,
    /// The bytes held otherwise, copied.
    prefix: Vec<u8>,
    /// The announced length (at most `limit`), reserved when the first byte is copied.
    expected: usize,
    len: u64,
    /// Started when the body outgrows `limit`: a body held whole is compared by its bytes, and
    /// hashing it too cost a pass over it per side (64 KiB: several µs of a shadowed request).
    hasher: Option<Box<Xxh3Default>>,
}

impl std::fmt::Debug for BodySampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodySampler")
            .field("limit", &self.limit)
            .field("held", &self.held())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl BodySampler {
    /// A sampler keeping at most `limit` bytes (memory grows with the body, not with `limit`).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            shared: None,
            prefix: Vec::new(),
            expected: 0,
            len: 0,
            hasher: None,
        }
    }

    /// Makes room at once, when bytes are first copied, for a body announced as `expected`
    /// bytes (its Content-Length), up to the limit: one allocation of the right size instead
    /// of doublings (a 256 KiB body grown chunk by chunk ends in a 512 KiB buffer, copied
    /// several times on the way).
    pub fn expect(&mut self, expected: u64) {
        self.expected = usize::try_from(expected)
            .unwrap_or(usize::MAX)
            .min(self.limit);
    }

    /// [`BodySampler::expect`] with the Content-Length of `headers`, if they have one.
    pub fn expect_from(&mut self, headers: &HeaderMap) {
        let length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(length) = length {
            self.expect(length);
        }
    }

    /// Bytes held.
    fn held(&self) -> usize {
        self.shared.as_ref().map_or(0, Bytes::len) + self.prefix.len()
    }

    /// Takes the next chunk of the body.
    pub fn push(&mut self, chunk: &Bytes) {
        self.len += chunk.len() as u64;
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(chunk);
            return;
        }
        let held = self.held();
        let room = self.limit - held;
        if chunk.len() > room {
            // Outgrown: from here on the sample is a prefix and a hash of the whole.
            let mut hasher = Box::new(Xxh3Default::new());
            hasher.update(self.shared.as_deref().unwrap_or_default());
            hasher.update(&self.prefix);
            hasher.update(chunk);
            self.hasher = Some(hasher);
        }
        let take = chunk.len().min(room);
        if take == 0 {
            return;
        }
        if held == 0 && take >= SHARE_CHUNK {
            self.shared = Some(chunk.slice(..take));
            return;
        }
        let first = self.shared.take();
        let first = first.as_deref().unwrap_or_default();
        if self.prefix.capacity() < self.expected {
            self.prefix
                .reserve_exact(self.expected.max(first.len() + take) - self.prefix.len());
        }
        self.prefix.extend_from_slice(first);
        self.prefix.extend_from_slice(&chunk[..take]);
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no byte was seen yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sample of everything pushed.
    pub fn finish(self) -> BodySample {
        BodySample {
            prefix: self.shared.unwrap_or_else(|| Bytes::from(self.prefix)),
            len: self.len,
            hash: self.hasher.map(|h| h.digest()),
        }
    }
}

/// A sampled body: its first bytes, its length and, when those are not all of it, the xxh3-64
/// hash of all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySample {
    /// The first bytes of the body, at most the sampler's limit.
    pub prefix: Bytes,
    /// The length of the whole body.
    pub len: u64,
    /// xxh3-64 of the whole body when `prefix` is not all of it (`None`: it is).
    pub hash: Option<u64>,
}

impl BodySample {
    /// Whether `prefix` holds the whole body (it was not over the limit).
    pub fn complete(&self) -> bool {
        self.prefix.len() as u64 == self.len
    }

    /// The sample a [`BodySampler`] with `limit` would make of `body`.
    pub fn from_bytes(body: &[u8], limit: usize) -> Self {
        Self {
            prefix: Bytes::copy_from_slice(&body[..body.len().min(limit)]),
            len: body.len() as u64,
            hash: (body.len() > limit).then(|| xxhash_rust::xxh3::xxh3_64(body)),
        }
    }

    /// The sample of an empty body.
    pub fn empty() -> Self {
        Self::from_bytes(&[], 0)
    }

    /// Same bytes: the same held bytes when both are complete, else the same length and hash.
    fn same_bytes(&self, other: &BodySample) -> bool {
        if self.complete() && other.complete() {
            return self.prefix == other.prefix;
        }
        self.len == other.len && self.hash.is_some() && self.hash == other.hash
    }
}

/// One side's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The sampled body.
    pub body: BodySample,
}

/// Where two answers differ (after ignore rules and learned noise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Difference {
    /// The status codes differ (and `compare.status` is on).
    pub status: bool,
    /// Names of the compared headers whose values differ, in `compare.headers` order.
    pub headers: Vec<String>,
    /// The bodies differ under `compare.body`.
    pub body: bool,
    /// The JSON Pointers at which JSON bodies differ, sorted, at most [`MAX_POINTERS`]; empty
    /// when the bodies were compared as bytes. gRPC bodies: paths of field numbers (`/2/1`).
    pub json_pointers: Vec<String>,
    /// Why the bodies count as different without paths (a gRPC body that is not well-formed).
    pub body_reason: Option<String>,
}

impl Difference {
    /// Whether any compared aspect differs.
    pub fn diverged(&self) -> bool {
        self.status || !self.headers.is_empty() || self.body
    }

    /// The `cutover_divergences_total{kind}` labels that apply: `status`, `headers`, `body`.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::with_capacity(3);
        if self.status {
            kinds.push("status");
        }
        if !self.headers.is_empty() {
            kinds.push("headers");
        }
        if self.body {
            kinds.push("body");
        }
        kinds
    }
}

/// Compares `legacy` with `new` under `policy`, ignoring `noise` (the learned volatile
/// pointers of this endpoint group).
///
/// JSON bodies are compared semantically: key order, whitespace and number formatting are
/// ignored; `ignore_json_paths` and `noise` are removed from both documents before the diff.
/// A body over the sampler's limit on either side is compared by (length, hash) only; a body
/// that is not JSON on either side is compared as bytes.
pub fn compare(
    policy: &ComparePolicy,
    legacy: &Answer,
    new: &Answer,
    noise: &NoiseSet,
) -> Difference {
    compare_call(policy, "", legacy, new, noise)
}

/// [`compare`] of the answers to a request for `path`: with `compare.descriptor_set`, a gRPC
/// method's answer type decodes its messages (SPEC §8); a method the set does not describe is
/// compared without schema.
pub fn compare_call(
    policy: &ComparePolicy,
    path: &str,
    legacy: &Answer,
    new: &Answer,
    noise: &NoiseSet,
) -> Difference {
    let mut difference = Difference {
        status: policy.status
            && (legacy.status != new.status
                || (policy.body == BodyCompare::Grpc && grpc_status_differs(legacy, new))),
        headers: header_differences(policy, &legacy.headers, &new.headers),
        ..Difference::default()
    };
    let (a, b) = (&legacy.body, &new.body);
    match policy.body {
        BodyCompare::None => {}
        BodyCompare::Bytes => difference.body = !a.same_bytes(b),
        BodyCompare::Grpc if a.same_bytes(b) => {}
        BodyCompare::Grpc if a.complete() && b.complete() => {
            let output = policy.descriptors.as_ref().and_then(|d| d.output_of(path));
            let paths = match &output {
                Some(output) => protobuf::differences_typed(
                    &a.prefix,
                    &b.prefix,
                    &policy.ignore_json_paths,
                    output,
                ),
                None => protobuf::differences(&a.prefix, &b.prefix, &policy.ignore_json_paths),
            };
            match paths {
                Ok(paths) => {
                    difference.body = !paths.is_empty();
                    difference.json_pointers = paths;
                }
                Err(reason) => {
                    difference.body = true;
                    difference.body_reason = Some(reason);
                }
            }
        }
        BodyCompare::Grpc => difference.body = true,
        // Identical bytes stay identical whatever is removed from them: no parse needed.
        BodyCompare::Json if a.same_bytes(b) => {}
        BodyCompare::Json if a.complete() && b.complete() => {
            match json_differences(&a.prefix, &b.prefix, &policy.ignore_json_paths, noise) {
                Some(pointers) => {
                    difference.body = !pointers.is_empty();
                    difference.json_pointers = pointers;
                }
                None => difference.body = true,
            }
        }
        BodyCompare::Json => difference.body = true,
    }
    difference
}

/// gRPC answers: `grpc-status` and `grpc-message` (from the head of a trailers-only answer, or
/// from the trailers, which the taps add to the answer's headers) compare like the status.
fn grpc_status_differs(legacy: &Answer, new: &Answer) -> bool {
    [crate::grpc::STATUS_HEADER, crate::grpc::MESSAGE_HEADER]
        .iter()
        .any(|name| legacy.headers.get(name) != new.headers.get(name))
}

/// The JSON Pointers at which two answers of the SAME backend (a legacy answer and its repeat)
/// differ, for [`NoiseLearner::observe`]: `ignore_json_paths` removed, learned noise NOT removed
/// (so that a learned pattern is seen again and stays learned). Empty unless both bodies are
/// complete JSON, `compare.body` is `json`, and both answers have the same status: an error
/// answer next to a normal one differs in every field, and none of them is noise.
pub fn noise_pointers(policy: &ComparePolicy, first: &Answer, second: &Answer) -> Vec<String> {
    let (a, b) = (&first.body, &second.body);
    if policy.body != BodyCompare::Json
        || first.status != second.status
        || a.same_bytes(b)
        || !(a.complete() && b.complete())
    {
        return Vec::new();
    }
    json_differences(
        &a.prefix,
        &b.prefix,
        &policy.ignore_json_paths,
        &NoiseSet::default(),
    )
    .unwrap_or_default()
}

/// The headers a comparison under `policy` reads: `headers` without `ignore_headers`.
pub fn compared_header_names(policy: &ComparePolicy) -> impl Iterator<Item = &String> {
    policy
        .headers
        .iter()
        .filter(|name| !policy.ignore_headers.contains(name))
}

/// The names of `policy.headers` (minus `ignore_headers`) whose values differ.
fn header_differences(policy: &ComparePolicy, legacy: &HeaderMap, new: &HeaderMap) -> Vec<String> {
    compared_header_names(policy)
        .filter(|name| {
            let name = name.as_str();
            !legacy.get_all(name).iter().eq(new.get_all(name).iter())
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_config::JsonPath;
    use http::HeaderValue;

    pub(super) fn answer(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: &str,
    ) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        Answer {
            status,
            headers: map,
            body: BodySample::from_bytes(body.as_bytes(), 1 << 20),
        }
    }

    fn policy() -> ComparePolicy {
        ComparePolicy::default()
    }

    fn with_ignore(paths: &[&str]) -> ComparePolicy {
        ComparePolicy {
            ignore_json_paths: paths.iter().map(|p| JsonPath::parse(p).unwrap()).collect(),
            ..ComparePolicy::default()
        }
    }

    fn diff(policy: &ComparePolicy, a: &Answer, b: &Answer) -> Difference {
        compare(policy, a, b, &NoiseSet::default())
    }

    // ---- hostile bodies (issue 15): a verdict, never a crash ----------------------------------

    /// A JSON-compared pair of bodies of any bytes, up to 16 MiB each.
    fn json_pair(a: &[u8], b: &[u8]) -> Difference {
        let answer = |body: &[u8]| Answer {
            status: 200,
            headers: HeaderMap::new(),
            body: BodySample::from_bytes(body, 16 << 20),
        };
        diff(&policy(), &answer(a), &answer(b))
    }

    /// `hostile` diverges from a valid document as a whole body (no pointers), and is equal to
    /// itself (same bytes).
    fn diverges_as_bytes(hostile: &[u8]) {
        let d = json_pair(br#"{"ok":true}"#, hostile);
        assert!(d.body && d.json_pointers.is_empty(), "{d:?}");
        let d = json_pair(hostile, br#"{"ok":true}"#);
        assert!(d.body && d.json_pointers.is_empty(), "{d:?}");
        assert!(!json_pair(hostile, hostile).diverged());
    }

    #[test]
    fn invalid_json_diverges_as_a_body() {
        diverges_as_bytes(br#"{"ok":tru}"#);
        diverges_as_bytes(b"<html>502 Bad Gateway</html>");
        diverges_as_bytes(b"");
    }

    #[test]
    fn nesting_100_000_deep_diverges_without_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        diverges_as_bytes(deep.as_bytes());
        let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
        diverges_as_bytes(deep_objects.as_bytes());
    }

    #[test]
    fn a_10_mb_number_diverges_as_a_body() {
        let huge = "9".repeat(10 << 20);
        diverges_as_bytes(huge.as_bytes());
        let wrapped = format!(r#"{{"n":{huge}}}"#);
        diverges_as_bytes(wrapped.as_bytes());
        // A number that is valid JSON compares by value as an `f64`, however long: 0.999…9
        // with 10 million nines is 1.0.
        let long_fraction = format!(r#"{{"n":0.{huge}}}"#);
        assert!(!json_pair(long_fraction.as_bytes(), br#"{"n":1}"#).diverged());
        let d = json_pair(long_fraction.as_bytes(), br#"{"n":2}"#);
        assert_eq!(d.json_pointers, vec!["/n".to_string()]);
    }

    #[test]
    fn duplicate_keys_compare_as_serde_json_reads_them_last_one_wins() {
        assert!(!json_pair(br#"{"a":1,"a":2}"#, br#"{"a":2}"#).diverged());
        let d = json_pair(br#"{"a":1,"a":2}"#, br#"{"a":1}"#);
        assert_eq!(d.json_pointers, vec!["/a".to_string()]);
        assert!(!json_pair(br#"{"a":2,"a":1}"#, br#"{"a":1}"#).diverged());
    }

    #[test]
    fn invalid_utf8_diverges_as_a_body() {
        diverges_as_bytes(b"{\"name\":\"\xff\xfe\"}");
        diverges_as_bytes(b"\xc3\x28");
    }

    #[test]
    fn a_body_that_ends_mid_token_diverges_as_a_body() {
        let whole = br#"{"items":[{"id":1,"name":"item-1","price":12.50}]}"#;
        for cut in 1..whole.len() {
            diverges_as_bytes(&whole[..cut]);
        }
    }

    #[test]
    fn sampler_keeps_the_prefix_and_hashes_everything() {
        let mut sampler = BodySampler::new(5);
        assert!(sampler.is_empty());
        sampler.push(&Bytes::from_static(b"hel"));
        sampler.push(&Bytes::from_static(b"lo wor"));
        sampler.push(&Bytes::from_static(b""));
        sampler.push(&Bytes::from_static(b"ld"));
        assert_eq!(sampler.len(), 11);
        let sample = sampler.finish();
        assert_eq!(&sample.prefix[..], b"hello");
        assert_eq!(sample.len, 11);
        assert_eq!(
            sample.hash,
            Some(xxhash_rust::xxh3::xxh3_64(b"hello world"))
        );
        assert!(!sample.complete());
        assert_eq!(sample, BodySample::from_bytes(b"hello world", 5));
        // Outgrown in the first chunk, or exactly at the limit (whole: no hash).
        let mut sampler = BodySampler::new(5);
        sampler.push(&Bytes::from_static(b"hello world"));
        assert_eq!(sampler.finish(), BodySample::from_bytes(b"hello world", 5));
        let mut sampler = BodySampler::new(5);
        sampler.push(&Bytes::from_static(b"hel"));
        sampler.push(&Bytes::from_static(b"lo"));
        let sample = sampler.finish();
        assert!(sample.complete() && sample.hash.is_none());
        assert_eq!(sample, BodySample::from_bytes(b"hello", 5));
    }

    /// An announced length is one allocation of that size (capped by the limit); the sample
    /// is the same as without it.
    #[test]
    fn an_announced_length_is_allocated_once() {
        let body: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, "300".parse().unwrap());
        let mut sampler = BodySampler::new(1000);
        sampler.expect_from(&headers);
        let mut chunks = body.chunks(7).map(Bytes::copy_from_slice);
        sampler.push(&chunks.next().unwrap());
        let reserved = sampler.prefix.capacity();
        assert!((300..600).contains(&reserved), "{reserved}");
        for chunk in chunks {
            sampler.push(&chunk);
        }
        assert_eq!(sampler.prefix.capacity(), reserved, "no reallocation");
        assert_eq!(sampler.finish(), BodySample::from_bytes(&body, 1000));
        // Capped by the limit; a lying or absent length changes nothing but the first size.
        let mut capped = BodySampler::new(64);
        capped.expect(1 << 40);
        capped.push(&Bytes::from_static(b"x"));
        assert!(capped.prefix.capacity() < 128);
        let mut liar = BodySampler::new(1000);
        liar.expect(10);
        liar.push(&Bytes::copy_from_slice(&body));
        assert_eq!(liar.finish(), BodySample::from_bytes(&body, 1000));
    }

    /// A large chunk is held as it came while it is all there is; what follows it, or a
    /// limit it outgrows, makes the same sample as bytes copied.
    #[test]
    fn a_large_chunk_is_held_without_a_copy() {
        let body = Bytes::from((0..60_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let mut sampler = BodySampler::new(100_000);
        sampler.push(&body.slice(..40_000));
        let sample = sampler.clone().finish();
        assert_eq!(sample.prefix.as_ptr(), body.as_ptr(), "not copied");
        sampler.push(&body.slice(40_000..));
        assert_eq!(sampler.finish(), BodySample::from_bytes(&body, 100_000));
        for limit in [0, 100, 20_000, 40_000, 50_000] {
            let mut sampler = BodySampler::new(limit);
            sampler.expect(body.len() as u64);
            sampler.push(&body.slice(..40_000));
            sampler.push(&body.slice(40_000..));
            assert_eq!(
                sampler.finish(),
                BodySample::from_bytes(&body, limit),
                "{limit}"
            );
        }
    }

    #[test]
    fn sample_at_exactly_the_limit_is_complete() {
        let mut sampler = BodySampler::new(5);
        sampler.push(&Bytes::from_static(b"hello"));
        let sample = sampler.finish();
        assert!(sample.complete());
        assert!(BodySample::from_bytes(b"", 0).complete());
        assert!(BodySample::empty().complete());
        assert!(!BodySample::from_bytes(b"x", 0).complete());
        let mut zero = BodySampler::new(0);
        zero.push(&Bytes::from_static(b"abc"));
        let sample = zero.finish();
        assert!(sample.prefix.is_empty());
        assert_eq!(sample.len, 3);
    }

    #[test]
    fn identical_answers_do_not_diverge() {
        let a = answer(200, &[("content-type", "application/json")], r#"{"a":1}"#);
        let d = diff(&policy(), &a, &a.clone());
        assert_eq!(d, Difference::default());
        assert!(!d.diverged());
        assert!(d.kinds().is_empty());
    }

    #[test]
    fn status_difference_and_the_status_switch() {
        let a = answer(200, &[], "");
        let b = answer(500, &[], "");
        let d = diff(&policy(), &a, &b);
        assert!(d.status && d.diverged());
        assert_eq!(d.kinds(), ["status"]);
        let off = ComparePolicy {
            status: false,
            ..policy()
        };
        assert!(!diff(&off, &a, &b).diverged());
    }

    #[test]
    fn compared_headers_minus_ignored_ones() {
        let p = ComparePolicy {
            headers: vec![
                "content-type".into(),
                "x-a".into(),
                "date".into(),
                "x-multi".into(),
            ],
            ..policy()
        };
        let a = answer(
            200,
            &[
                ("content-type", "application/json"),
                ("x-a", "1"),
                ("date", "Mon"),
                ("x-multi", "1"),
                ("x-multi", "2"),
                ("x-other", "a"),
            ],
            "",
        );
        let b = answer(
            200,
            &[
                ("content-type", "text/html"),
                ("x-a", "1"),
                ("date", "Tue"),
                ("x-multi", "1"),
                ("x-other", "b"),
            ],
            "",
        );
        let d = diff(&p, &a, &b);
        // date is ignored (default ignore_headers), x-other is not compared.
        assert_eq!(d.headers, ["content-type", "x-multi"]);
        assert_eq!(d.kinds(), ["headers"]);
        // A header missing on one side differs.
        let c = answer(200, &[("x-a", "1")], "");
        let e = answer(200, &[], "");
        assert_eq!(diff(&p, &c, &e).headers, ["x-a"]);
    }

    #[test]
    fn json_bodies_compare_semantically() {
        let a = answer(
            200,
            &[],
            r#"{"a": 1, "b": [1.0, 2e0, -0.0], "c": {"x": "y"}}"#,
        );
        let b = answer(
            200,
            &[],
            "{\"c\":{\"x\":\"y\"},\n \"b\":[1,2,0],\"a\":1.00}",
        );
        assert!(!diff(&policy(), &a, &b).diverged());
        let c = answer(200, &[], r#"{"a": 2, "b": [1, 2, 0], "c": {"x": "z"}}"#);
        let d = diff(&policy(), &a, &c);
        assert!(d.body);
        assert_eq!(d.json_pointers, ["/a", "/c/x"]);
        assert_eq!(d.kinds(), ["body"]);
    }

    #[test]
    fn json_falls_back_to_bytes_when_either_side_is_not_json() {
        let json = answer(200, &[], r#"{"a":1}"#);
        let html = answer(200, &[], "<html>");
        let d = diff(&policy(), &json, &html);
        assert!(d.body);
        assert!(d.json_pointers.is_empty());
        assert!(!diff(&policy(), &html, &html.clone()).diverged());
        let other = answer(200, &[], "<html >");
        assert!(diff(&policy(), &html, &other).body);
        let empty = answer(204, &[], "");
        assert!(!diff(&policy(), &empty, &empty.clone()).diverged());
    }

    #[test]
    fn bytes_mode_is_exact_and_none_mode_skips_bodies() {
        let a = answer(200, &[], r#"{"a":1}"#);
        let b = answer(200, &[], r#"{"a": 1}"#);
        let bytes = ComparePolicy {
            body: BodyCompare::Bytes,
            ..policy()
        };
        let d = diff(&bytes, &a, &b);
        assert!(d.body && d.json_pointers.is_empty());
        assert!(!diff(&bytes, &a, &a.clone()).diverged());
        let none = ComparePolicy {
            body: BodyCompare::None,
            ..policy()
        };
        assert!(!diff(&none, &a, &answer(200, &[], "entirely different")).diverged());
    }

    #[test]
    fn bodies_over_the_limit_compare_by_length_and_hash() {
        let big = |body: &str| Answer {
            status: 200,
            headers: HeaderMap::new(),
            body: BodySample::from_bytes(body.as_bytes(), 4),
        };
        let a = big(r#"{"a": 1, "b": 2}"#);
        // Same first 4 bytes, same length, different content: the hash tells.
        let b = big(r#"{"a": 1, "b": 3}"#);
        assert!(!a.body.complete());
        let d = diff(&policy(), &a, &b);
        assert!(d.body && d.json_pointers.is_empty());
        assert!(!diff(&policy(), &a, &big(r#"{"a": 1, "b": 2}"#)).diverged());
        // Semantically equal but reformatted: over the limit, bytes decide.
        assert!(diff(&policy(), &a, &big(r#"{"b": 2, "a": 1}"#)).body);
        // One side complete, the other not.
        let small = answer(200, &[], r#"{"a":1}"#);
        assert!(diff(&policy(), &small, &a).body);
    }

    #[test]
    fn ignore_paths_apply_to_both_documents() {
        let p = with_ignore(&["$.timestamp", "$.meta.request_id"]);
        let a = answer(
            200,
            &[],
            r#"{"timestamp": 1, "meta": {"request_id": "a", "v": 1}}"#,
        );
        let b = answer(
            200,
            &[],
            r#"{"timestamp": 2, "meta": {"request_id": "b", "v": 1}}"#,
        );
        assert!(!diff(&p, &a, &b).diverged());
        // Present on one side only: still ignored.
        let c = answer(200, &[], r#"{"meta": {"v": 1}}"#);
        assert!(!diff(&p, &a, &c).diverged());
        let d = answer(
            200,
            &[],
            r#"{"timestamp": 2, "meta": {"request_id": "b", "v": 2}}"#,
        );
        assert_eq!(diff(&p, &a, &d).json_pointers, ["/meta/v"]);
    }

    #[test]
    fn learned_noise_is_excluded() {
        let a = answer(
            200,
            &[],
            r#"{"items": [{"id": 1, "ts": 5}, {"id": 2, "ts": 6}]}"#,
        );
        let b = answer(
            200,
            &[],
            r#"{"items": [{"id": 1, "ts": 7}, {"id": 2, "ts": 8}]}"#,
        );
        assert_eq!(
            diff(&policy(), &a, &b).json_pointers,
            ["/items/0/ts", "/items/1/ts"]
        );
        let noise = NoiseSet::from_patterns(vec!["/items/*/ts".into()]);
        assert!(!compare(&policy(), &a, &b, &noise).diverged());
        let c = answer(
            200,
            &[],
            r#"{"items": [{"id": 1, "ts": 7}, {"id": 3, "ts": 8}]}"#,
        );
        assert_eq!(
            compare(&policy(), &a, &c, &noise).json_pointers,
            ["/items/1/id"]
        );
    }

    #[test]
    fn noise_pointers_ignore_configured_paths_but_not_learned_noise() {
        let p = with_ignore(&["$.rid"]);
        let a = answer(200, &[], r#"{"rid": 1, "ts": 1, "v": 1}"#);
        let b = answer(200, &[], r#"{"rid": 2, "ts": 2, "v": 1}"#);
        assert_eq!(noise_pointers(&p, &a, &b), ["/ts"]);
        assert!(noise_pointers(&p, &a, &a.clone()).is_empty());
        let bytes = ComparePolicy {
            body: BodyCompare::Bytes,
            ..p.clone()
        };
        assert!(noise_pointers(&bytes, &a, &b).is_empty());
        assert!(noise_pointers(&p, &a, &answer(200, &[], "<html>")).is_empty());
        // A legacy error next to a normal answer teaches nothing: its fields are not noise.
        let error = answer(500, &[], r#"{"error": "boom"}"#);
        assert!(noise_pointers(&p, &a, &error).is_empty());
    }

    #[test]
    fn every_kind_at_once() {
        let a = answer(200, &[("content-type", "a")], r#"{"a":1}"#);
        let b = answer(404, &[("content-type", "b")], r#"{"a":2}"#);
        let d = diff(&policy(), &a, &b);
        assert_eq!(d.kinds(), ["status", "headers", "body"]);
        assert_eq!(d.headers, ["content-type"]);
        assert_eq!(d.json_pointers, ["/a"]);
    }
}
