//! The structural hash of a JSON document read by a scanner of our own: the same 128-bit hash
//! the serde pass in [`super::json`] computes (the same helpers, in the same order), without
//! serde's per-token machinery — one UTF-8 check of the whole body, then one byte-level pass.
//!
//! The scanner only answers for documents it can read exactly as `serde_json` reads them and
//! returns `None` for everything else, and the serde pass decides those:
//! - a string with an escape (`\`), which needs unescaping;
//! - a number `serde_json` reads as `f64` in a way that may round differently from a single
//!   exact operation: more than 15 significant digits in total (a significand ≥ 2^53), a
//!   decimal exponent beyond ±22, an integer above `u64` (or below `i64`);
//! - nesting deeper than [`MAX_DEPTH`] (`serde_json` stops at 128);
//! - anything that is not JSON (invalid UTF-8, a control character in a string, a bad token,
//!   trailing data): `serde_json` rejects those too, and the serde pass says so.
//!
//! So for any body, `hash(body)` is `None` or the serde pass's hash — a property test holds
//! the two together. Numbers: `serde_json` builds an `f64` from a significand below 2^53 and an
//! exponent within ±22 with one multiplication or division by an exact power of ten, and so
//! does the scanner; the result is the correctly rounded value either way.

use super::json::{float, integer, pair, scalar, string, Pass, ARRAY, ARRAY_END, ENTRY, NULL};
use super::json::{fraction, Child, BOOL, OBJECT, UNSIGNED};
use super::rules::Slot;

/// Deeper documents are left to the serde pass (which fails them beyond 128 levels).
pub(super) const MAX_DEPTH: usize = 100;

/// The powers of ten that are exact `f64`s.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// 2^53: significands below it are exact in an `f64`.
const EXACT_SIGNIFICAND: u64 = 1 << 53;

/// The structural hash of `body` (see [`super::json`]) with what `pass.rules` ignore left out,
/// or `None` when the serde pass must decide. `pass.repeated_name` is set when an object
/// repeats a member name (and the answer is not `None`).
pub(super) fn hash(body: &[u8], pass: &mut Pass<'_>) -> Option<u128> {
    std::str::from_utf8(body).ok()?;
    let mark = pass.names.len();
    pass.rules.start(&mut pass.states);
    let to = pass.states.len();
    let mut scanner = Scanner {
        body,
        at: 0,
        pass,
        repeated_name: false,
    };
    let value = scanner.value(0, 0, to);
    let result = value.and_then(|v| {
        scanner.skip_space();
        (scanner.at == body.len()).then_some(v)
    });
    let repeated_name = scanner.repeated_name;
    pass.names.truncate(mark);
    if result.is_some() {
        pass.repeated_name |= repeated_name;
    }
    result
}

/// Reads `body` from `at`, with `pass` for the member names and the ignore rules; a value is
/// read with the range of `pass.states` active at it (`from..to`, empty without rules).
struct Scanner<'a, 'p, 'r> {
    body: &'a [u8],
    at: usize,
    pass: &'p mut Pass<'r>,
    repeated_name: bool,
}

impl<'a> Scanner<'a, '_, '_> {
    fn peek(&self) -> Option<u8> {
        self.body.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// One value, with the whitespace before it.
    fn value(&mut self, depth: usize, from: usize, to: usize) -> Option<u128> {
        self.skip_space();
        match self.peek()? {
            b'{' => self.object(depth + 1, from, to),
            b'[' => self.array(depth + 1, from, to),
            b'"' => self.string_hash(),
            b't' => self.literal(b"true", scalar(BOOL, 1)),
            b'f' => self.literal(b"false", scalar(BOOL, 0)),
            b'n' => self.literal(b"null", scalar(NULL, 0)),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], hash: u128) -> Option<u128> {
        let end = self.at + word.len();
        (self.body.get(self.at..end)? == word).then(|| {
            self.at = end;
            hash
        })
    }

    /// [`string`] of a string without escapes. A short one is read as one 16-byte word from
    /// the body where 16 bytes are left, masked to its length (what `string` packs).
    fn string_hash(&mut self) -> Option<u128> {
        let start = self.at + 1;
        let bytes = self.string()?;
        let len = bytes.len();
        if len >= 16 {
            return Some(string(bytes));
        }
        match self.body.get(start..start + 16) {
            Some(word) => {
                let mut packed = [0; 16];
                packed.copy_from_slice(word);
                let word = u128::from_le_bytes(packed) & ((1u128 << (8 * len)) - 1);
                Some(word | (len as u128) << 120)
            }
            None => Some(string(bytes)),
        }
    }

    /// A string without escapes, as its bytes (valid UTF-8: the whole body was checked).
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.at + 1;
        let body: &'a [u8] = self.body;
        let rest = body.get(start..)?;
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 1;
        Some(&rest[..len])
    }

    fn digits(&mut self) -> &[u8] {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        &self.body[start..self.at]
    }

    fn number(&mut self) -> Option<u128> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let whole = self.digits();
        if whole.is_empty() || (whole.len() > 1 && whole[0] == b'0') {
            return None;
        }
        let mut significand = accumulate(0, whole)?;
        let mut exponent: i32 = 0;
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            let fraction = self.digits();
            if fraction.is_empty() {
                return None;
            }
            significand = accumulate(significand, fraction)?;
            exponent = -i32::try_from(fraction.len()).ok()?;
            is_float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            let negative_exponent = match self.peek() {
                Some(b'-') => {
                    self.at += 1;
                    true
                }
                Some(b'+') => {
                    self.at += 1;
                    false
                }
                _ => false,
            };
            let written = self.digits();
            if written.is_empty() || written.len() > 4 {
                return None;
            }
            let written = written
                .iter()
                .fold(0i32, |n, d| n * 10 + i32::from(d - b'0'));
            exponent += if negative_exponent { -written } else { written };
            is_float = true;
        }
        if !is_float {
            return match (negative, significand) {
                (false, n) => Some(scalar(UNSIGNED, n)),
                // `-0` is the `f64` -0.0 to serde_json, which hashes as 0.
                (true, 0) => Some(float(-0.0)),
                (true, n) if n <= 1 << 63 => Some(integer((n as i64).wrapping_neg())),
                (true, _) => None,
            };
        }
        if significand >= EXACT_SIGNIFICAND {
            return None;
        }
        let power = POW10.get(exponent.unsigned_abs() as usize)?;
        if exponent < 0 && significand % 10 != 0 {
            // s / 10^m with 10 ∤ s is no integer, and its distance to the nearest one (at least
            // 10^-m) is more than half an ulp of it (at most s · 10^-m · 2^-53 < 10^-m): its
            // f64 is no integer either, so `float`'s check can be skipped.
            let magnitude = significand as f64 / power;
            return Some(fraction(if negative { -magnitude } else { magnitude }));
        }
        let magnitude = if exponent >= 0 {
            significand as f64 * power
        } else {
            significand as f64 / power
        };
        Some(float(if negative { -magnitude } else { magnitude }))
    }

    fn array(&mut self, depth: usize, from: usize, to: usize) -> Option<u128> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        let (mut chain, mut len) = (0u128, 0u128);
        self.skip_space();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(pair(chain, len, ARRAY_END));
        }
        for index in 0.. {
            let element = if from < to {
                let child = self.pass.enter(Slot::Element(index), from, to);
                self.child(depth, child)?
            } else {
                Some(self.value(depth, from, to)?)
            };
            if let Some(element) = element {
                chain = pair(chain, element, ARRAY);
                len += 1;
            }
            if self.closed(b']')? {
                break;
            }
        }
        Some(pair(chain, len, ARRAY_END))
    }

    /// The value of a member or element as [`Pass::enter`] found it: `Some(None)` when it is
    /// ignored (read all the same: the document must be JSON).
    fn child(&mut self, depth: usize, child: Child) -> Option<Option<u128>> {
        let value = self.value(depth, child.from, child.to);
        self.pass.states.truncate(child.from);
        Some(child.kept.then_some(value?))
    }

    /// After a member or element: `Some(false)` past a `,`, `Some(true)` past `close`, `None`
    /// at anything else.
    fn closed(&mut self, close: u8) -> Option<bool> {
        self.skip_space();
        let next = self.peek()?;
        if next != b',' && next != close {
            return None;
        }
        self.at += 1;
        Some(next == close)
    }

    fn object(&mut self, depth: usize, from: usize, to: usize) -> Option<u128> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        let mark = self.pass.names.len();
        let (mut sum, mut len) = (0u128, 0u128);
        self.skip_space();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(pair(sum, len, OBJECT));
        }
        // One bit of 64 per name: names are compared only when two share a bit.
        let (mut bits, mut shared_bit) = (0u64, false);
        loop {
            self.skip_space();
            if self.peek()? != b'"' {
                return None;
            }
            let start = self.at + 1;
            let name = self.string_hash()?;
            let name_end = self.at - 1;
            self.skip_space();
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            let bit = name_bit(name);
            shared_bit |= bits & bit != 0;
            bits |= bit;
            self.pass.names.push(name);
            let value = if from < to {
                // Without rules the name is not read as text (it is valid UTF-8: the whole
                // body was checked), nor are rules asked.
                let text = std::str::from_utf8(&self.body[start..name_end]).ok()?;
                let child = self.pass.enter(Slot::Member(text), from, to);
                self.child(depth, child)?
            } else {
                Some(self.value(depth, from, to)?)
            };
            if let Some(value) = value {
                sum = sum.wrapping_add(pair(name, value, ENTRY));
                len += 1;
            }
            if self.closed(b'}')? {
                break;
            }
        }
        // Nested objects have popped their names: this object's are `names[mark..]`.
        if shared_bit {
            self.repeated_name |= repeats(&mut self.pass.names[mark..]);
        }
        self.pass.names.truncate(mark);
        Some(pair(sum, len, OBJECT))
    }
}

/// One bit of 64 for a member name: equal names have the same bit.
fn name_bit(name: u128) -> u64 {
    1 << (((name as u64) ^ ((name >> 64) as u64)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58)
}

/// Whether `names` has a repeat: pairwise for a few (no sort), sorted for more.
fn repeats(names: &mut [u128]) -> bool {
    if names.len() <= 8 {
        return names
            .iter()
            .enumerate()
            .any(|(i, a)| names[i + 1..].contains(a));
    }
    names.sort_unstable();
    names.windows(2).any(|w| w[0] == w[1])
}

/// `significand` followed by `digits`, or `None` past `u64` (serde_json reads those as `f64`).
fn accumulate(significand: u64, digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(significand, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::super::json::both_hashes;
    use super::super::rules::Rules;

    /// The scanner answers, and answers as serde_json does.
    fn scanned(body: &str) -> u128 {
        let ((scanned, _), (parsed, _)) = both_hashes(body.as_bytes(), &Rules::none());
        assert!(scanned.is_some(), "the scanner left {body:?} to serde");
        assert_eq!(scanned, parsed, "{body:?}");
        scanned.unwrap_or_default()
    }

    /// The scanner leaves it to serde_json, which says `parsed`.
    fn left(body: &str, parsed: bool) {
        let ((scanned, _), (serde, _)) = both_hashes(body.as_bytes(), &Rules::none());
        assert_eq!(scanned, None, "{body:?}");
        assert_eq!(serde.is_some(), parsed, "{body:?}");
    }

    #[test]
    fn common_documents_are_read_by_the_scanner() {
        let a = scanned(
            r#"{"id": 7, "name": "item-7", "price": 12.50, "in_stock": true,
            "tags": ["a", "b"], "owner": null, "delta": -3, "ratio": 1.5e-3, "big": 1E3}"#,
        );
        let b = scanned(
            r#"{"big":1000,"ratio":0.0015,"delta":-3,"owner":null,"tags":["a","b"],
            "in_stock":true,"price":12.5,"name":"item-7","id":7.0}"#,
        );
        assert_eq!(a, b);
        assert_eq!(scanned("0"), scanned("-0"));
        assert_eq!(scanned("-0.0"), scanned("0e5"));
        assert_eq!(
            scanned("18446744073709551615"),
            scanned("18446744073709551615")
        );
        scanned("-9223372036854775808");
        assert_eq!(scanned("-5"), scanned("-5.0"));
        assert_ne!(scanned("[1,2]"), scanned("[2,1]"));
        assert_ne!(scanned(r#"{"a":[]}"#), scanned(r#"{"a":{}}"#));
        assert_eq!(scanned(" [ ] "), scanned("[]"));
        scanned("\"é ✓\"");
    }

    #[test]
    fn strings_end_where_serde_says_at_every_length() {
        // Lengths across the 16-byte words, multi-byte characters across their edges, the
        // string last in the body (no full word left) or followed by more.
        for len in 0..40 {
            let text: String = (0..len)
                .map(|i| if i % 3 == 0 { 'é' } else { 'x' })
                .collect();
            scanned(&format!("\"{text}\""));
            scanned(&format!("[\"{text}\", \"{text}\", 1]"));
            scanned(&format!("{{\"{text}\":\"{text}\",\"k\":[]}}"));
            left(&format!("[\"{text}\\n\"]"), true);
            left(&format!("[\"{text}\u{1}\"]"), false);
            left(&format!("\"{text}"), false);
        }
    }

    #[test]
    fn numbers_around_the_exact_digit_count_are_read_exactly() {
        for body in [
            "9999999999999999999",
            "18446744073709551615",
            "-9223372036854775808",
            "0.0000000000000000001",
            "12345678.90123",
            "1e0022",
        ] {
            scanned(body);
        }
        left("18446744073709551616", true);
        left("99999999999999999999.5", true);
        left("1e00022", true);
    }

    #[test]
    fn decimals_hash_as_serde_reads_them() {
        // Significands up to 2^53 (near it too, where an f64's spacing is widest) over 1 to 22
        // fraction digits, with and without trailing zeros and an exponent.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..4_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let significand = match i % 3 {
                0 => x % (1 << 53),
                1 => (1 << 53) - 1 - x % 1_000,
                _ => x % 100_000,
            };
            let digits = significand.to_string();
            let m = (i % 22 + 1) as usize;
            let (whole, fraction) = if digits.len() > m {
                digits.split_at(digits.len() - m)
            } else {
                ("0", digits.as_str())
            };
            let fraction = format!("{}{fraction}", "0".repeat(m.saturating_sub(fraction.len())));
            let sign = if i % 2 == 0 { "" } else { "-" };
            scanned(&format!("{sign}{whole}.{fraction}"));
            // One digit more may take the significand past 2^53: serde's then.
            for body in [
                format!("{sign}{whole}.{fraction}0"),
                format!("[{sign}{whole}.{fraction}e-1]"),
            ] {
                let ((scanned, _), (parsed, _)) = both_hashes(body.as_bytes(), &Rules::none());
                assert!(scanned.is_none() || scanned == parsed, "{body:?}");
            }
        }
    }

    #[test]
    fn what_needs_serde_is_left_to_it() {
        left(r#"{"a":"line\nbreak"}"#, true);
        left("123456789012345678901", true);
        left("-9223372036854775809", true);
        left("0.1234567890123456789", true);
        left("1e23", true);
        left("1e400", false);
        left(&format!("{}{}", "[".repeat(101), "]".repeat(101)), true);
        left(
            &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            false,
        );
    }

    #[test]
    fn what_is_not_json_is_not_answered() {
        for body in [
            "",
            " ",
            "01",
            "-",
            "1.",
            "1e",
            ".5",
            "+1",
            "[1,]",
            "{\"a\"}",
            "{\"a\":1,}",
            "[1 2]",
            "tru",
            "nulls",
            "\"open",
            "\"tab\there\"",
            "{1:2}",
            "[]]",
            "\u{feff}[]",
            "1 1",
        ] {
            left(body, false);
        }
        let ((scanned, _), (serde, _)) = both_hashes(b"\"\xff\"", &Rules::none());
        assert_eq!((scanned, serde), (None, None));
    }

    #[test]
    fn a_repeat_among_many_names_is_reported_wherever_it_is() {
        for n in 1..70 {
            let names: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            let distinct = format!("{{{}}}", names.join(","));
            let ((hash, repeats), _) = both_hashes(distinct.as_bytes(), &Rules::none());
            assert!(hash.is_some() && !repeats, "{distinct}");
            for at in [0, n / 2, n - 1] {
                let body = format!("{{{},\"k{at}\":0}}", names.join(","));
                let ((hash, repeats), (_, serde_repeats)) =
                    both_hashes(body.as_bytes(), &Rules::none());
                assert!(hash.is_some() && repeats && serde_repeats, "{body}");
            }
        }
    }

    #[test]
    fn a_repeated_member_name_is_reported() {
        let ((scanned, scan_repeats), (_, serde_repeats)) =
            both_hashes(br#"{"a":{"b":1,"b":2}}"#, &Rules::none());
        assert!(scanned.is_some());
        assert!(scan_repeats && serde_repeats);
    }
}
