//! `compare.body = "grpc"` (SPEC §8): gRPC answers compared message by message, each decoded
//! from the protobuf wire format without a schema and compared field by field, field order
//! ignored. A length-delimited field counts as a nested message when it decodes completely as
//! one, else as bytes. Differences are paths of field numbers (`/2/1`); a field that occurs
//! more than once on either side gets the occurrence's index (`/2/0/1`), and answers of more
//! than one message (server streaming) get the message's index first (`/1/2`).
//!
//! `ignore_json_paths` name fields by number: `$.2[*].5` ignores field 5 in every occurrence
//! of field 2 (`[*]`/`[n]` may be left out where a field occurs once), `$..7` field 7 at any
//! depth.
//!
//! With `compare.descriptor_set` ([`differences_typed`]), the answer type of the call's method
//! decodes the messages: paths name fields (`/items/0/price`), packed and unpacked repeated
//! fields compare equal, maps compare as maps (`/prices/EUR`), a field left out equals its
//! default, and ignore paths name fields (`$.items[*].updated_at`). Unknown fields are not
//! compared. prost bounds the nesting it decodes (100 levels).
//!
//! Bounded on hostile input: decoding is iterative per level and nests at most
//! 32 messages deep (`MAX_DEPTH`) (deeper bytes compare as bytes); a frame that is cut short, a
//! bad varint or an unknown wire type is an error whose text becomes the divergence's reason.

use std::collections::BTreeMap;

use cutover_config::{JsonPath, JsonPathSegment};
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value as Typed};

/// How deep nested messages are decoded; below, length-delimited fields compare as bytes.
const MAX_DEPTH: usize = 32;

/// Most difference paths reported for one pair.
const MAX_PATHS: usize = 32;

/// One decoded field value.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Message(Fields<'a>),
}

/// A message's fields by number, each with its occurrences in order.
type Fields<'a> = BTreeMap<u64, Vec<Value<'a>>>;

/// The messages of a gRPC body: 5-byte prefix (compressed flag, big-endian length) each.
pub fn grpc_messages(mut body: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err(format!(
                "gRPC frame cut short: {} of the 5 prefix bytes",
                body.len()
            ));
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        match body[0] {
            0 => {}
            1 => return Err("compressed gRPC message (grpc-encoding): compared as bytes".into()),
            flag => return Err(format!("gRPC frame with flag {flag} (0 or 1 expected)")),
        }
        let rest = &body[5..];
        if rest.len() < len {
            return Err(format!(
                "gRPC message cut short: {} of {len} bytes",
                rest.len()
            ));
        }
        out.push(&rest[..len]);
        body = &rest[len..];
    }
    Ok(out)
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = bytes.get(*at) else {
            return Err("protobuf varint cut short".into());
        };
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("protobuf varint longer than 10 bytes".into())
}

fn fixed<const N: usize>(bytes: &[u8], at: &mut usize) -> Result<[u8; N], String> {
    let end = *at + N;
    let slice = bytes
        .get(*at..end)
        .ok_or_else(|| format!("protobuf fixed{} value cut short", N * 8))?;
    *at = end;
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    Ok(out)
}

/// Decode `bytes` as one message; `depth` levels may still nest below it.
fn decode(bytes: &[u8], depth: usize) -> Result<Fields<'_>, String> {
    let mut fields = Fields::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let number = key >> 3;
        if number == 0 {
            return Err("protobuf field number 0".into());
        }
        let value = match key & 7 {
            0 => Value::Varint(varint(bytes, &mut at)?),
            1 => Value::Fixed64(u64::from_le_bytes(fixed::<8>(bytes, &mut at)?)),
            5 => Value::Fixed32(u32::from_le_bytes(fixed::<4>(bytes, &mut at)?)),
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).unwrap_or(usize::MAX);
                let end = at
                    .checked_add(len)
                    .filter(|&end| end <= bytes.len())
                    .ok_or_else(|| {
                        format!("protobuf field {number}: length {len} past the message's end")
                    })?;
                let inner = &bytes[at..end];
                at = end;
                match (depth > 0).then(|| decode(inner, depth - 1)) {
                    Some(Ok(message)) if !inner.is_empty() => Value::Message(message),
                    _ => Value::Bytes(inner),
                }
            }
            wire => {
                return Err(format!(
                    "protobuf field {number}: wire type {wire} not supported"
                ))
            }
        };
        fields.entry(number).or_default().push(value);
    }
    Ok(fields)
}

/// One step of a difference path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(u64),
    Index(usize),
    /// A field by name (with a schema).
    Name(String),
    /// A map entry by key (with a schema).
    Key(String),
}

/// The paths at which two gRPC bodies differ (empty: equal), `ignore` removed; `Err` with a
/// reason when either body is not well-formed gRPC/protobuf (then they count as different).
pub fn differences(a: &[u8], b: &[u8], ignore: &[JsonPath]) -> Result<Vec<String>, String> {
    let (ma, mb) = (grpc_messages(a)?, grpc_messages(b)?);
    let da = decode_all(&ma)?;
    let db = decode_all(&mb)?;
    Ok(per_message(&da, &db, ignore, diff_fields))
}

/// The paths of two answers' messages, message by message (`/i` first when either answer has
/// more than one; a message on one side only differs as a whole), sorted, at most
/// [`MAX_PATHS`].
fn per_message<T>(
    da: &[T],
    db: &[T],
    ignore: &[JsonPath],
    diff: impl Fn(&T, &T, &mut Vec<Step>, &[JsonPath], &mut Vec<String>),
) -> Vec<String> {
    let mut out = Vec::new();
    let many = da.len() > 1 || db.len() > 1;
    for i in 0..da.len().max(db.len()) {
        let mut path = Vec::new();
        if many {
            path.push(Step::Index(i));
        }
        match (da.get(i), db.get(i)) {
            (Some(x), Some(y)) => diff(x, y, &mut path, ignore, &mut out),
            _ => report(&path, ignore, &mut out),
        }
    }
    out.sort();
    out.dedup();
    out.truncate(MAX_PATHS);
    out
}

fn decode_all<'a>(messages: &[&'a [u8]]) -> Result<Vec<Fields<'a>>, String> {
    messages.iter().map(|m| decode(m, MAX_DEPTH)).collect()
}

fn diff_fields(
    a: &Fields<'_>,
    b: &Fields<'_>,
    path: &mut Vec<Step>,
    ignore: &[JsonPath],
    out: &mut Vec<String>,
) {
    let numbers: std::collections::BTreeSet<u64> = a.keys().chain(b.keys()).copied().collect();
    let none = Vec::new();
    for n in numbers {
        if out.len() >= MAX_PATHS {
            return;
        }
        let (xs, ys) = (a.get(&n).unwrap_or(&none), b.get(&n).unwrap_or(&none));
        path.push(Step::Field(n));
        let repeated = xs.len() > 1 || ys.len() > 1;
        for i in 0..xs.len().max(ys.len()) {
            if repeated {
                path.push(Step::Index(i));
            }
            match (xs.get(i), ys.get(i)) {
                (Some(Value::Message(x)), Some(Value::Message(y))) => {
                    diff_fields(x, y, path, ignore, out);
                }
                (Some(x), Some(y)) if x == y => {}
                _ => report(path, ignore, out),
            }
            if repeated {
                path.pop();
            }
        }
        path.pop();
    }
}

fn report(path: &[Step], ignore: &[JsonPath], out: &mut Vec<String>) {
    if ignore.iter().any(|p| ignored(&p.segments, path)) {
        return;
    }
    let mut text = String::new();
    for step in path {
        match step {
            Step::Field(n) => text.push_str(&format!("/{n}")),
            Step::Index(i) => text.push_str(&format!("/{i}")),
            Step::Name(name) | Step::Key(name) => {
                text.push('/');
                // JSON Pointer escaping, as the JSON comparison's paths.
                text.push_str(&name.replace('~', "~0").replace('/', "~1"));
            }
        }
    }
    if text.is_empty() {
        text.push('/');
    }
    out.push(text);
}

/// Does the ignore path `pattern` cover `path` (or a field above it)? Index steps of the
/// pattern may be skipped where the path has none (a field that occurs once).
fn ignored(pattern: &[JsonPathSegment], path: &[Step]) -> bool {
    let Some((first, rest)) = pattern.split_first() else {
        return true;
    };
    let number = |name: &str| name.parse::<u64>().ok();
    let names = |step: &Step, name: &str| match step {
        Step::Field(n) => number(name) == Some(*n),
        Step::Name(s) | Step::Key(s) => s == name,
        Step::Index(_) => false,
    };
    match first {
        JsonPathSegment::Key(name) => match path.first() {
            Some(step) if names(step, name) => ignored(rest, &path[1..]),
            // The message index of a streamed answer is not named by paths.
            Some(Step::Index(_)) => ignored(pattern, &path[1..]),
            _ => false,
        },
        JsonPathSegment::Index(i) => match path.first() {
            Some(Step::Index(j)) => i == j && ignored(rest, &path[1..]),
            _ => ignored(rest, path),
        },
        JsonPathSegment::AnyChild => match path.first() {
            Some(_) => ignored(rest, &path[1..]) || ignored(rest, path),
            None => false,
        },
        JsonPathSegment::Descendant(name) => {
            (0..path.len()).any(|k| names(&path[k], name) && ignored(rest, &path[k + 1..]))
        }
    }
}

/// [`differences`] with a schema: every message of both bodies decoded as `output` (the
/// method's answer type).
pub fn differences_typed(
    a: &[u8],
    b: &[u8],
    ignore: &[JsonPath],
    output: &MessageDescriptor,
) -> Result<Vec<String>, String> {
    let decode_all = |body: &[u8]| -> Result<Vec<DynamicMessage>, String> {
        grpc_messages(body)?
            .into_iter()
            .map(|m| {
                DynamicMessage::decode(output.clone(), m)
                    .map_err(|e| format!("not a {}: {e}", output.full_name()))
            })
            .collect()
    };
    let (da, db) = (decode_all(a)?, decode_all(b)?);
    Ok(per_message(&da, &db, ignore, diff_message))
}

fn diff_message(
    a: &DynamicMessage,
    b: &DynamicMessage,
    path: &mut Vec<Step>,
    ignore: &[JsonPath],
    out: &mut Vec<String>,
) {
    for field in a.descriptor().fields() {
        if out.len() >= MAX_PATHS {
            return;
        }
        path.push(Step::Name(field.name().to_owned()));
        diff_typed(
            &a.get_field(&field),
            &b.get_field(&field),
            path,
            ignore,
            out,
        );
        path.pop();
    }
}

fn diff_typed(
    x: &Typed,
    y: &Typed,
    path: &mut Vec<Step>,
    ignore: &[JsonPath],
    out: &mut Vec<String>,
) {
    match (x, y) {
        (Typed::Message(m), Typed::Message(n)) => diff_message(m, n, path, ignore, out),
        (Typed::List(xs), Typed::List(ys)) => {
            for i in 0..xs.len().max(ys.len()) {
                path.push(Step::Index(i));
                match (xs.get(i), ys.get(i)) {
                    (Some(p), Some(q)) => diff_typed(p, q, path, ignore, out),
                    _ => report(path, ignore, out),
                }
                path.pop();
            }
        }
        (Typed::Map(xm), Typed::Map(ym)) => {
            let keys: std::collections::BTreeSet<_> = xm.keys().chain(ym.keys()).collect();
            for key in keys {
                path.push(Step::Key(map_key(key)));
                match (xm.get(key), ym.get(key)) {
                    (Some(p), Some(q)) => diff_typed(p, q, path, ignore, out),
                    _ => report(path, ignore, out),
                }
                path.pop();
            }
        }
        // 0.0 and -0.0 are equal, and a NaN equals the same NaN.
        (Typed::F32(p), Typed::F32(q)) if p == q || p.to_bits() == q.to_bits() => {}
        (Typed::F64(p), Typed::F64(q)) if p == q || p.to_bits() == q.to_bits() => {}
        _ if x == y => {}
        _ => report(path, ignore, out),
    }
}

fn map_key(key: &prost_reflect::MapKey) -> String {
    use prost_reflect::MapKey;
    match key {
        MapKey::Bool(v) => v.to_string(),
        MapKey::I32(v) => v.to_string(),
        MapKey::I64(v) => v.to_string(),
        MapKey::U32(v) => v.to_string(),
        MapKey::U64(v) => v.to_string(),
        MapKey::String(v) => v.clone(),
    }
}

/// The test schema `shop` (its unit tests here, and the property tests of `proxy/tests/fuzz.rs`,
/// which include the file by path).
#[cfg(test)]
#[path = "shop_schema.rs"]
mod shop_schema;

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_bytes(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn field_bytes(out: &mut Vec<u8>, n: u64, value: &[u8]) {
        varint_bytes(out, n << 3 | 2);
        varint_bytes(out, value.len() as u64);
        out.extend_from_slice(value);
    }

    fn field_varint(out: &mut Vec<u8>, n: u64, value: u64) {
        varint_bytes(out, n << 3);
        varint_bytes(out, value);
    }

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// `{1: "a", 2: {1: price, 5: stamp}, 2: {1: 7, 5: stamp}}` in the given field order.
    fn order(price: u64, stamp: u64, reversed: bool) -> Vec<u8> {
        let item = |p: u64| {
            let mut i = Vec::new();
            if reversed {
                field_varint(&mut i, 5, stamp);
                field_varint(&mut i, 1, p);
            } else {
                field_varint(&mut i, 1, p);
                field_varint(&mut i, 5, stamp);
            }
            i
        };
        let mut m = Vec::new();
        if reversed {
            field_bytes(&mut m, 2, &item(price));
            field_bytes(&mut m, 2, &item(7));
            field_bytes(&mut m, 1, b"a");
        } else {
            field_bytes(&mut m, 1, b"a");
            field_bytes(&mut m, 2, &item(price));
            field_bytes(&mut m, 2, &item(7));
        }
        frame(&m)
    }

    fn paths(list: &[&str]) -> Vec<JsonPath> {
        list.iter().map(|p| JsonPath::parse(p).unwrap()).collect()
    }

    #[test]
    fn field_order_is_ignored_and_differences_are_paths_of_numbers() {
        let a = order(10, 1, false);
        assert_eq!(differences(&a, &order(10, 1, true), &[]), Ok(vec![]));
        assert_eq!(
            differences(&a, &order(11, 2, true), &[]),
            Ok(vec![
                "/2/0/1".to_owned(),
                "/2/0/5".to_owned(),
                "/2/1/5".to_owned()
            ])
        );
        assert_eq!(
            differences(&a, &order(11, 2, true), &paths(&["$.2[*].5"])),
            Ok(vec!["/2/0/1".to_owned()])
        );
        assert_eq!(
            differences(&a, &order(10, 2, false), &paths(&["$..5"])),
            Ok(vec![])
        );
    }

    #[test]
    fn a_field_that_occurs_once_has_no_index_and_streams_index_their_messages() {
        let one = |v: u64| {
            let mut inner = Vec::new();
            field_varint(&mut inner, 1, v);
            let mut m = Vec::new();
            field_bytes(&mut m, 2, &inner);
            frame(&m)
        };
        assert_eq!(
            differences(&one(1), &one(2), &[]),
            Ok(vec!["/2/1".to_owned()])
        );
        assert_eq!(
            differences(&one(1), &one(2), &paths(&["$.2[*].1"])),
            Ok(vec![])
        );
        let stream = |last: u64| [one(1), one(last)].concat();
        assert_eq!(
            differences(&stream(1), &stream(3), &[]),
            Ok(vec!["/1/2/1".to_owned()])
        );
        assert_eq!(
            differences(&stream(1), &one(1), &[]),
            Ok(vec!["/1".to_owned()])
        );
    }

    #[test]
    fn malformed_bodies_are_errors_with_a_reason() {
        let good = order(1, 1, false);
        assert!(differences(&good[..3], &good, &[])
            .unwrap_err()
            .contains("prefix"));
        assert!(differences(&good[..good.len() - 1], &good, &[])
            .unwrap_err()
            .contains("cut short"));
        let bad_varint = frame(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]);
        assert!(differences(&bad_varint, &good, &[])
            .unwrap_err()
            .contains("varint"));
        let wire = frame(&[0x0b]); // field 1, wire type 3 (group)
        assert!(differences(&good, &wire, &[])
            .unwrap_err()
            .contains("wire type 3"));
        let past = frame(&[0x0a, 0x7f, 0x01]);
        assert!(differences(&past, &good, &[])
            .unwrap_err()
            .contains("past the message"));
    }

    use super::shop_schema::shop_descriptors;

    /// A `shop.Reply`: items `(price, updated_at)`, prices, codes packed or not, fields in
    /// order or reversed.
    fn reply(
        items: &[(u64, &str)],
        prices: &[(&str, u64)],
        packed: bool,
        reversed: bool,
    ) -> Vec<u8> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut name = Vec::new();
        field_bytes(&mut name, 1, b"shop");
        parts.push(name);
        for (price, at) in items {
            let mut item = Vec::new();
            field_varint(&mut item, 1, *price);
            field_bytes(&mut item, 5, at.as_bytes());
            let mut f = Vec::new();
            field_bytes(&mut f, 2, &item);
            parts.push(f);
        }
        for (key, value) in prices {
            let mut entry = Vec::new();
            field_bytes(&mut entry, 1, key.as_bytes());
            field_varint(&mut entry, 2, *value);
            let mut f = Vec::new();
            field_bytes(&mut f, 3, &entry);
            parts.push(f);
        }
        let mut codes = Vec::new();
        if packed {
            let mut packed = Vec::new();
            for c in [3u64, 4, 5] {
                varint_bytes(&mut packed, c);
            }
            field_bytes(&mut codes, 4, &packed);
        } else {
            for c in [3u64, 4, 5] {
                field_varint(&mut codes, 4, c);
            }
        }
        parts.push(codes);
        if reversed {
            // Every field moved, each repeated field's own order kept (a list's order counts).
            parts.rotate_left(1);
        }
        frame(&parts.concat())
    }

    #[test]
    fn with_a_schema_paths_name_fields_and_packing_order_and_maps_do_not_matter() {
        let set = shop_descriptors();
        let output = set
            .output_of("/shop.Orders/Get")
            .expect("the method's answer type");
        assert!(set.output_of("/shop.Orders/Put").is_none());
        let a = reply(
            &[(10, "t1"), (7, "t1")],
            &[("EUR", 5), ("USD", 6)],
            true,
            false,
        );
        let same = reply(
            &[(10, "t1"), (7, "t1")],
            &[("USD", 6), ("EUR", 5)],
            false,
            true,
        );
        assert_eq!(differences_typed(&a, &same, &[], &output), Ok(vec![]));
        // Schema-less, packing and map entry order are differences.
        assert!(!differences(&a, &same, &[]).unwrap().is_empty());

        let b = reply(
            &[(11, "t2"), (7, "t1")],
            &[("EUR", 9), ("USD", 6)],
            true,
            false,
        );
        assert_eq!(
            differences_typed(&a, &b, &[], &output),
            Ok(vec![
                "/items/0/price".to_owned(),
                "/items/0/updated_at".to_owned(),
                "/prices/EUR".to_owned(),
            ])
        );
        assert_eq!(
            differences_typed(
                &a,
                &b,
                &paths(&["$.items[*].updated_at", "$.prices.EUR"]),
                &output
            ),
            Ok(vec!["/items/0/price".to_owned()])
        );
        // A body that is not a shop.Reply: a reason, not paths.
        let wrong = frame(&[0x08, 0x01]); // field 1 (a string) as a varint
        let reason = differences_typed(&a, &wrong, &[], &output).unwrap_err();
        assert!(reason.contains("not a shop.Reply"), "{reason}");
    }

    #[test]
    fn a_descriptor_set_that_does_not_parse_is_an_error() {
        let e = cutover_config::DescriptorSet::decode("x.pb", b"not protobuf").unwrap_err();
        assert!(e.contains("not a FileDescriptorSet"), "{e}");
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the comparator (RELIABILITY 63): a list or a reason.
        #[test]
        fn arbitrary_bodies_are_paths_or_reasons(a in proptest::collection::vec(proptest::num::u8::ANY, 0..256), b in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = differences(&a, &b, &[]);
            let framed = |x: &[u8]| frame(x);
            let _ = differences(&framed(&a), &framed(&b), &paths(&["$..1"]));
            let output = shop_descriptors().output_of("/shop.Orders/Get").unwrap();
            let _ = differences_typed(&framed(&a), &framed(&b), &[], &output);
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        // 100,000 levels of {1: {1: ...}}: decoded MAX_DEPTH deep, the rest compared as bytes.
        let mut m = Vec::new();
        field_varint(&mut m, 1, 1);
        for _ in 0..100_000 {
            let mut outer = Vec::new();
            field_bytes(&mut outer, 1, &m);
            m = outer;
        }
        let a = frame(&m);
        assert_eq!(differences(&a, &a.clone(), &[]), Ok(vec![]));
    }
}
