//! The structural hash of a JSON document read by a scanner of our own: the same 128-bit hash
//! the serde pass in [`super::json`] computes (the same helpers, in the same order), without
//! serde's per-token machinery — one UTF-8 check of the whole body, then one byte-level pass:
//! one loop that keeps the open arrays and objects on a stack of its own (no recursion, so the
//! position stays in a register), finding a string's end eight bytes at a time.
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
//! does the scanner; the result is the correctly rounded value either way. A fraction's trailing
//! zeros are dropped first (`1.50` → 15 / 10, `2.00` → 2): the same rational, so the same
//! correctly rounded `f64`, and an integral one is then an integer without a division.

use super::json::{array as array_hash, object as object_hash, pair, Pass, ARRAY};
use super::json::{float, fraction, integer, scalar, string as string_of, Child, BOOL, UNSIGNED};
use super::json::{ENTRY, NULL};
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
    let mut repeated_name = false;
    // Without rules at the top there are none below it: that reading drops their bookkeeping.
    let result = if to == 0 {
        document::<false>(body, pass, to, &mut repeated_name)
    } else {
        document::<true>(body, pass, to, &mut repeated_name)
    };
    pass.names.truncate(mark);
    if result.is_some() {
        pass.repeated_name |= repeated_name;
    }
    result
}

/// An array or object being read, with what its elements or members have added so far. What
/// the rules need is apart, in [`Frame`], so that without rules the containers' stack moves
/// only this.
#[derive(Default, Clone, Copy)]
struct Open {
    object: bool,
    /// An array's chain of element hashes, or the sum of an object's entry hashes.
    acc: u128,
    /// The elements or entries counted (ignored ones are not).
    len: u64,
    /// The object's member names are `pass.names[mark..]`.
    mark: usize,
    /// One bit of 64 per member name, and whether two names shared one: names are compared
    /// only then.
    bits: u64,
    shared_bit: bool,
    /// The member being read: its name's hash.
    name: u128,
}

/// The rules' state of an array or object being read (documents with rules only).
#[derive(Default, Clone, Copy)]
struct Frame {
    /// The rules active at the container: `pass.states[from..to]`.
    from: usize,
    to: usize,
    /// The next element's index (arrays).
    index: usize,
    /// Whether the member or element being read counts, and where the rules entered for it
    /// start in `pass.states`.
    kept: bool,
    child_from: usize,
}

impl Open {
    /// Enters the next member (past its name and `:`) or element at `at`: where its value
    /// starts, and the rules active at it (`frame` is the container's, with rules).
    #[inline(always)]
    fn next<const RULES: bool>(
        &mut self,
        frame: &mut Frame,
        body: &[u8],
        at: usize,
        pass: &mut Pass<'_>,
    ) -> Option<(usize, Child)> {
        let (slot, at) = if self.object {
            let at = skip_space(body, at);
            if *body.get(at)? != b'"' {
                return None;
            }
            let (name, name_end) = string_hash(body, at)?;
            let colon = skip_space(body, name_end);
            if *body.get(colon)? != b':' {
                return None;
            }
            let bit = name_bit(name);
            self.shared_bit |= self.bits & bit != 0;
            self.bits |= bit;
            self.name = name;
            pass.names.push(name);
            (Some(at + 1..name_end - 1), colon + 1)
        } else {
            if RULES {
                frame.index += 1;
            }
            (None, at)
        };
        if !RULES || frame.from >= frame.to {
            // Without rules the name is not read as text (it is valid UTF-8: the whole body
            // was checked), nor are rules asked.
            frame.kept = true;
            return Some((
                at,
                Child {
                    kept: true,
                    from: frame.from,
                    to: frame.to,
                },
            ));
        }
        let child = match slot {
            Some(name) => {
                let text = std::str::from_utf8(&body[name]).ok()?;
                pass.enter(Slot::Member(text), frame.from, frame.to)
            }
            None => pass.enter(Slot::Element(frame.index - 1), frame.from, frame.to),
        };
        frame.kept = child.kept;
        frame.child_from = child.from;
        Some((at, child))
    }

    /// Adds the value just read (its hash) to the container.
    #[inline(always)]
    fn add<const RULES: bool>(&mut self, frame: &Frame, value: u128, pass: &mut Pass<'_>) {
        if RULES && frame.from < frame.to {
            pass.states.truncate(frame.child_from);
        }
        if !RULES || frame.kept {
            self.acc = if self.object {
                self.acc.wrapping_add(pair(self.name, value, ENTRY))
            } else {
                pair(self.acc, value, ARRAY)
            };
            self.len += 1;
        }
    }

    /// The container's hash once it is closed, with its names popped.
    fn close(&self, pass: &mut Pass<'_>, repeated_name: &mut bool) -> u128 {
        let len = u128::from(self.len);
        if !self.object {
            return array_hash(self.acc, len);
        }
        // Nested objects have popped their names: this object's are `names[mark..]`.
        if self.shared_bit {
            *repeated_name |= repeats(&mut pass.names[self.mark..]);
        }
        pass.names.truncate(self.mark);
        object_hash(self.acc, len)
    }
}

/// The hash of the one value `body` holds, with nothing but whitespace after it. One loop with
/// the open containers on a stack of its own (no recursion), so the position in `body` stays
/// a local.
fn document<const RULES: bool>(
    body: &[u8],
    pass: &mut Pass<'_>,
    to: usize,
    repeated_name: &mut bool,
) -> Option<u128> {
    let mut at = 0;
    // The containers that hold `open`: as many as are open, `open` itself included (at the
    // top, `open` is a placeholder and the stack empty); with rules, their frames alike.
    let mut stack: Vec<Open> = Vec::new();
    let mut open = Open::default();
    let mut frames: Vec<Frame> = Vec::new();
    let mut frame = Frame::default();
    // The rules active at the value about to be read.
    let mut rules = Child {
        kept: true,
        from: 0,
        to,
    };
    'value: loop {
        at = skip_space(body, at);
        let (mut hash, end) = match *body.get(at)? {
            first @ (b'{' | b'[') => {
                let object = first == b'{';
                if stack.len() == MAX_DEPTH {
                    return None;
                }
                at = skip_space(body, at + 1);
                let close = if object { b'}' } else { b']' };
                if *body.get(at)? == close {
                    let empty = if object {
                        object_hash(0, 0)
                    } else {
                        array_hash(0, 0)
                    };
                    (empty, at + 1)
                } else {
                    stack.push(open);
                    open = Open {
                        object,
                        mark: pass.names.len(),
                        ..Open::default()
                    };
                    if RULES {
                        frames.push(frame);
                        frame = Frame {
                            from: rules.from,
                            to: rules.to,
                            ..Frame::default()
                        };
                    }
                    (at, rules) = open.next::<RULES>(&mut frame, body, at, pass)?;
                    continue 'value;
                }
            }
            b'"' => string_hash(body, at)?,
            b't' => literal(body, at, b"true", scalar(BOOL, 1))?,
            b'f' => literal(body, at, b"false", scalar(BOOL, 0))?,
            b'n' => literal(body, at, b"null", scalar(NULL, 0))?,
            b'-' | b'0'..=b'9' => number(body, at)?,
            _ => return None,
        };
        at = end;
        // A whole value: add it to its container, and close what it ends.
        loop {
            if stack.is_empty() {
                return (skip_space(body, at) == body.len()).then_some(hash);
            }
            open.add::<RULES>(&frame, hash, pass);
            at = skip_space(body, at);
            let next = *body.get(at)?;
            if next == b',' {
                (at, rules) = open.next::<RULES>(&mut frame, body, at + 1, pass)?;
                continue 'value;
            }
            if next != if open.object { b'}' } else { b']' } {
                return None;
            }
            at += 1;
            hash = open.close(pass, repeated_name);
            open = stack.pop()?;
            if RULES {
                frame = frames.pop()?;
            }
        }
    }
}

fn skip_space(body: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = body.get(at) {
        at += 1;
    }
    at
}

/// `hash` when `word` is at `at`, and where it ends.
fn literal(body: &[u8], at: usize, word: &[u8], hash: u128) -> Option<(u128, usize)> {
    let end = at + word.len();
    (body.get(at..end)? == word).then_some((hash, end))
}

/// [`string`] of the string without escapes that opens at `at`, and where it ends. Where 16
/// bytes of the body follow the quote, they are read as two words and the string's end is
/// found in them at once; a short string is then those bytes masked to its length (what
/// `string` packs).
#[inline(always)]
fn string_hash(body: &[u8], at: usize) -> Option<(u128, usize)> {
    let start = at + 1;
    if let Some(word) = body.get(start..start + 16) {
        let (low, high) = words(word);
        let (low_end, high_end) = (specials(low), specials(high));
        let short = if low_end != 0 {
            let len = (low_end.trailing_zeros() / 8) as usize;
            Some((len, u128::from(low & ((1 << (8 * len)) - 1))))
        } else if high_end != 0 {
            let len = 8 + (high_end.trailing_zeros() / 8) as usize;
            let high = high & ((1 << (8 * (len - 8))) - 1);
            Some((len, u128::from(low) | u128::from(high) << 64))
        } else {
            None
        };
        if let Some((len, packed)) = short {
            if body[start + len] != b'"' {
                return None;
            }
            return Some((packed | (len as u128) << 120, start + len + 1));
        }
    }
    let (bytes, end) = string(body, at)?;
    Some((string_of(bytes), end))
}

/// The bytes of the string without escapes that opens at `at` (valid UTF-8: the whole body was
/// checked), and where it ends.
fn string(body: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = body.get(at + 1..)?;
    let mut len = 0;
    let len = loop {
        match rest.get(len..len + 8) {
            Some(word) => {
                let end = specials(u64::from_le_bytes(word.try_into().ok()?));
                if end != 0 {
                    break len + (end.trailing_zeros() / 8) as usize;
                }
                len += 8;
            }
            None => {
                break len
                    + rest[len..]
                        .iter()
                        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?
            }
        }
    };
    if rest[len] != b'"' {
        return None;
    }
    Some((&rest[..len], at + len + 2))
}

/// The digits at `at`, accumulated after `significand`: the new significand (`None` past
/// `u64`: serde_json reads those as `f64`), how many, and where they end.
#[inline(always)]
fn digits(body: &[u8], mut at: usize, mut significand: u64) -> Option<(u64, usize, usize)> {
    let start = at;
    while let Some(&digit @ b'0'..=b'9') = body.get(at) {
        significand = significand
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
        at += 1;
    }
    Some((significand, at - start, at))
}

/// The number at `at`, and where it ends.
#[inline(always)]
fn number(body: &[u8], mut at: usize) -> Option<(u128, usize)> {
    let negative = body[at] == b'-';
    if negative {
        at += 1;
    }
    let leading_zero = body.get(at) == Some(&b'0');
    let (mut significand, count, end) = digits(body, at, 0)?;
    if count == 0 || (count > 1 && leading_zero) {
        return None;
    }
    at = end;
    let mut exponent: i32 = 0;
    let mut is_float = false;
    if body.get(at) == Some(&b'.') {
        let (both, count, end) = digits(body, at + 1, significand)?;
        if count == 0 {
            return None;
        }
        significand = both;
        exponent = -i32::try_from(count).ok()?;
        is_float = true;
        at = end;
    }
    if let Some(b'e' | b'E') = body.get(at) {
        at += 1;
        let negative_exponent = match body.get(at) {
            Some(b'-') => {
                at += 1;
                true
            }
            Some(b'+') => {
                at += 1;
                false
            }
            _ => false,
        };
        let (written, count, end) = digits(body, at, 0)?;
        if count == 0 || count > 4 {
            return None;
        }
        at = end;
        // Four digits at most: below 10^4.
        let written = written as i32;
        exponent += if negative_exponent { -written } else { written };
        is_float = true;
    }
    if !is_float {
        let hash = match (negative, significand) {
            (false, n) => scalar(UNSIGNED, n),
            // `-0` is the `f64` -0.0 to serde_json, which hashes as 0.
            (true, 0) => float(-0.0),
            (true, n) if n <= 1 << 63 => integer((n as i64).wrapping_neg()),
            (true, _) => return None,
        };
        return Some((hash, at));
    }
    if significand >= EXACT_SIGNIFICAND {
        return None;
    }
    // A fraction's trailing zeros: the same rational with fewer digits, whose correctly
    // rounded f64 is the same (`1.50` is 15 / 10, `2.00` is the integer 2).
    while exponent < 0 && significand % 10 == 0 && significand != 0 {
        significand /= 10;
        exponent += 1;
    }
    if exponent == 0 && significand != 0 {
        let hash = if negative {
            integer(-(significand as i64))
        } else {
            scalar(UNSIGNED, significand)
        };
        return Some((hash, at));
    }
    let power = POW10.get(exponent.unsigned_abs() as usize)?;
    if exponent < 0 && significand % 10 != 0 {
        // s / 10^m with 10 ∤ s is no integer, and its distance to the nearest one (at least
        // 10^-m) is more than half an ulp of it (at most s · 10^-m · 2^-53 < 10^-m): its
        // f64 is no integer either, so `float`'s check can be skipped.
        let magnitude = significand as f64 / power;
        return Some((fraction(if negative { -magnitude } else { magnitude }), at));
    }
    let magnitude = if exponent >= 0 {
        significand as f64 * power
    } else {
        significand as f64 / power
    };
    Some((float(if negative { -magnitude } else { magnitude }), at))
}

/// The two little-endian words of 16 bytes.
fn words(bytes: &[u8]) -> (u64, u64) {
    let mut low = [0; 8];
    let mut high = [0; 8];
    low.copy_from_slice(&bytes[..8]);
    high.copy_from_slice(&bytes[8..16]);
    (u64::from_le_bytes(low), u64::from_le_bytes(high))
}

/// The top bit of each byte of `word` that ends a string without escapes — `"`, `\` or a
/// control character — is set in the answer, exactly for the lowest such byte; bytes above it
/// may be marked too (a borrow carried up), so only the lowest mark counts. A byte of 0x80 or
/// more is never marked: none of the three has its top bit, and none borrows.
fn specials(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = 0x8080_8080_8080_8080;
    let below = |word: u64, limit: u8| word.wrapping_sub(ONES * u64::from(limit)) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    (below(quote, 1) | below(backslash, 1) | below(word, 0x20)) & TOPS
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

    /// A container's hash is its chain or sum plus a count term, not mixed once more: empty
    /// ones, nested ones and their lengths still hash apart from each other and from scalars.
    #[test]
    fn containers_hash_apart_from_each_other_and_from_scalars() {
        let bodies = [
            "[]",
            "{}",
            "[[]]",
            "[{}]",
            "{\"a\":[]}",
            "{\"a\":{}}",
            "[[],[]]",
            "[[[]]]",
            "[0]",
            "[0,0]",
            "[null]",
            "{\"\":0}",
            "{\"\":[]}",
            "\"\"",
            "0",
            "null",
            "false",
            "[\"\"]",
            "{\"a\":1,\"b\":2}",
            "{\"a\":2,\"b\":1}",
            "[1,2]",
            "[2,1]",
            "[[1],2]",
            "[1,[2]]",
        ];
        let hashes: Vec<u128> = bodies.iter().map(|body| scanned(body)).collect();
        for (i, a) in hashes.iter().enumerate() {
            for (j, b) in hashes.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "{} and {}", bodies[i], bodies[j]);
            }
        }
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
    fn fractions_with_trailing_zeros_hash_as_their_shorter_forms() {
        for n in [0u64, 1, 5, 10, 100, 120, 1_234_567, 9_007_199] {
            for zeros in 1..=6 {
                let fraction = "0".repeat(zeros);
                assert_eq!(scanned(&format!("{n}.{fraction}")), scanned(&n.to_string()));
                assert_eq!(
                    scanned(&format!("-{n}.{fraction}")),
                    scanned(&format!("-{n}"))
                );
                // 12.50 is 12.5, 0.0120 is 0.012.
                assert_eq!(
                    scanned(&format!("{n}.5{fraction}")),
                    scanned(&format!("{n}.5"))
                );
                assert_eq!(
                    scanned(&format!("-0.0{n}{fraction}")),
                    scanned(&format!("-0.0{n}"))
                );
            }
        }
    }

    /// Every byte at every place of a word, below and above other bytes: the lowest mark is the
    /// first `"`, `\` or control character, and nothing else is marked below it.
    #[test]
    fn the_lowest_mark_is_the_first_byte_that_ends_a_string() {
        let ends = |byte: u8| byte == b'"' || byte == b'\\' || byte < 0x20;
        for place in 0..8 {
            for byte in 0..=255u8 {
                for above in [b'x', b'"', 0x00, 0x1f, 0xff, 0x80] {
                    let mut word = [b'a'; 8];
                    word[place] = byte;
                    word[place + 1..].fill(above);
                    let marks = super::specials(u64::from_le_bytes(word));
                    let first = word.iter().position(|&b| ends(b));
                    let lowest = (marks != 0).then(|| marks.trailing_zeros() as usize / 8);
                    assert_eq!(lowest, first, "{word:?}");
                    assert_eq!(marks & !0x8080_8080_8080_8080, 0);
                }
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
        // MAX_DEPTH levels are the scanner's, one more is serde's.
        scanned(&format!("{}{}", "[".repeat(100), "]".repeat(100)));
        scanned(&format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100)));
        left(&format!("{}{}", "[".repeat(101), "]".repeat(101)), true);
        left(
            &format!("{}1{}", r#"{"a":"#.repeat(101), "}".repeat(101)),
            true,
        );
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
