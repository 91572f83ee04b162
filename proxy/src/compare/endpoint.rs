//! Endpoint groups: method + path with the ids folded out, so that comparisons and learned
//! noise can be kept per endpoint (`GET /users/{n}/orders`) without one entry per user.

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock};

use http::Method;

/// The group of every endpoint past a [`Groups`] bound.
pub const OTHER_GROUP: &str = "{other}";

/// The path part of a group is cut to this many bytes (then marked with `…`).
pub const MAX_GROUP_PATH_BYTES: usize = 256;

/// `GET /users/42/orders?x=1` → `"GET /users/{n}/orders"`.
///
/// Each path segment that is all digits becomes `{n}`, a UUID `{uuid}`, and a long id
/// (≥ 16 characters of `[A-Za-z0-9_=-]` with digits that looks random: hex, or mixed case, or
/// at least half digits, or letters and digits only with at least 4 digits) `{id}`. The query
/// string and fragment are dropped; a path longer than [`MAX_GROUP_PATH_BYTES`] is cut.
/// Applying it to a group's path gives the group back.
pub fn endpoint_group(method: &Method, path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = if path.is_empty() { "/" } else { path };
    let mut out = String::with_capacity(method.as_str().len() + 1 + path.len());
    out.push_str(method.as_str());
    out.push(' ');
    let start = out.len();
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(fold(segment));
        if out.len() - start > MAX_GROUP_PATH_BYTES {
            let mut cut = start + MAX_GROUP_PATH_BYTES;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push('…');
            break;
        }
    }
    out
}

fn fold(segment: &str) -> &str {
    if segment.is_empty() {
        segment
    } else if segment.bytes().all(|b| b.is_ascii_digit()) {
        "{n}"
    } else if is_uuid(segment) {
        "{uuid}"
    } else if is_id(segment) {
        "{id}"
    } else {
        segment
    }
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A long id that looks machine-made rather than a word or a slug.
fn is_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.len() < 16
        || !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
    {
        return false;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return false;
    }
    let hex = bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-');
    let mixed_case =
        bytes.iter().any(u8::is_ascii_uppercase) && bytes.iter().any(u8::is_ascii_lowercase);
    let alphanumeric = bytes.iter().all(u8::is_ascii_alphanumeric);
    hex || mixed_case || digits * 2 >= bytes.len() || (alphanumeric && digits >= 4)
}

/// Bounded interning of endpoint groups: at most `max` distinct groups (per route, one
/// `Groups` each); later ones become [`OTHER_GROUP`]. The hot path (a known group) takes a
/// read lock and one hash lookup.
#[derive(Debug)]
pub struct Groups {
    max: usize,
    known: RwLock<HashSet<String>>,
}

impl Groups {
    /// Default bound on groups per route.
    pub const DEFAULT_MAX: usize = 1000;

    /// Room for `max` groups.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            known: RwLock::new(HashSet::new()),
        }
    }

    /// `group` itself when known or when there is room for it, otherwise [`OTHER_GROUP`].
    pub fn intern(&self, group: String) -> String {
        {
            let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
            if known.contains(&group) {
                return group;
            }
            if known.len() >= self.max {
                return OTHER_GROUP.to_owned();
            }
        }
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        if known.contains(&group) {
            return group;
        }
        if known.len() >= self.max {
            return OTHER_GROUP.to_owned();
        }
        known.insert(group.clone());
        group
    }

    /// How many groups are known.
    pub fn len(&self) -> usize {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no group is known yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Groups {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> String {
        endpoint_group(&Method::GET, path)
    }

    #[test]
    fn folds_numbers_uuids_and_ids() {
        assert_eq!(get("/users/42/orders"), "GET /users/{n}/orders");
        assert_eq!(
            endpoint_group(&Method::POST, "/users/42/orders/7?page=2#top"),
            "POST /users/{n}/orders/{n}"
        );
        assert_eq!(
            get("/o/123e4567-E89B-12d3-a456-426614174000/items"),
            "GET /o/{uuid}/items"
        );
        assert_eq!(get("/blob/507f1f77bcf86cd799439011"), "GET /blob/{id}");
        assert_eq!(get("/s/aGVsbG8gd29ybGQ9Mg=="), "GET /s/{id}");
        assert_eq!(get("/t/ckl2x9v0h0000abcd1234"), "GET /t/{id}");
        assert_eq!(get("/orders/ORD-2024-0001234"), "GET /orders/{id}");
    }

    #[test]
    fn keeps_words_slugs_and_versions() {
        assert_eq!(get("/api/v1/products"), "GET /api/v1/products");
        assert_eq!(
            get("/blog/my-product-name-2024"),
            "GET /blog/my-product-name-2024"
        );
        assert_eq!(
            get("/cb/oauth2callbackhandler"),
            "GET /cb/oauth2callbackhandler"
        );
        assert_eq!(get("/report2024final.pdf"), "GET /report2024final.pdf");
        assert_eq!(get("/deadbeefdeadbeef"), "GET /deadbeefdeadbeef");
    }

    #[test]
    fn odd_paths() {
        assert_eq!(get(""), "GET /");
        assert_eq!(get("?x=1"), "GET /");
        assert_eq!(get("/"), "GET /");
        assert_eq!(get("//a//1/"), "GET //a//{n}/");
        assert_eq!(endpoint_group(&Method::OPTIONS, "*"), "OPTIONS *");
        let long = format!("/{}", "a".repeat(1000));
        let group = get(&long);
        assert_eq!(
            group.len(),
            "GET ".len() + MAX_GROUP_PATH_BYTES + '…'.len_utf8()
        );
        assert_eq!(get(&group["GET ".len()..]), group);
        let multibyte = format!("/{}", "é".repeat(300));
        assert!(get(&multibyte).ends_with('…'));
    }

    #[test]
    fn group_of_a_group_is_itself() {
        for path in [
            "/users/42/orders",
            "/o/123e4567-e89b-12d3-a456-426614174000",
        ] {
            let group = get(path);
            assert_eq!(get(&group["GET ".len()..]), group);
        }
    }

    #[test]
    fn groups_are_bounded() {
        let groups = Groups::new(2);
        assert!(groups.is_empty());
        assert_eq!(groups.intern("GET /a".into()), "GET /a");
        assert_eq!(groups.intern("GET /b".into()), "GET /b");
        assert_eq!(groups.intern("GET /c".into()), OTHER_GROUP);
        assert_eq!(groups.intern("GET /a".into()), "GET /a");
        assert_eq!(groups.len(), 2);
        assert_eq!(Groups::new(0).intern("GET /a".into()), OTHER_GROUP);
    }

    #[test]
    fn groups_are_shared_between_threads() {
        let groups = std::sync::Arc::new(Groups::new(50));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let groups = groups.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let _ = groups.intern(format!("GET /{}", (i + t) % 80));
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(groups.len(), 50);
    }
}
