//! The etcd key layout of SPEC §3, under a prefix (default `/cutover`).
//!
//! ```text
//! <prefix>/routes/<id>/spec                         what the route is
//! <prefix>/routes/<id>/weights                      the knob operators turn
//! <prefix>/routes/<id>/status                       written by proxies and ctl
//! <prefix>/routes/<id>/events/<unix-millis>-<who>   audit trail
//! <prefix>/instances/<instance-id>                  fleet membership (lease-bound)
//! <prefix>/stats/<id>/<instance-id>                 window statistics (lease-bound)
//! <prefix>/leader                                   election
//! <prefix>/descriptors/<name>                       base64 FileDescriptorSet (SPEC §8)
//! ```

/// Which key of a route an etcd key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKeyKind {
    Spec,
    Weights,
    Status,
    /// An event; the string is the last path segment (`<unix-millis>-<who>`).
    Event(String),
}

/// A parsed `<prefix>/routes/<id>/...` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteKey {
    /// The route id as written in the key (not yet validated as a [`cutover_config::RouteId`]).
    pub route: String,
    pub kind: RouteKeyKind,
}

/// Builds and parses the keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/routes/`: every route key starts with it (watch and read this).
    pub fn routes(&self) -> String {
        format!("{}/routes/", self.prefix)
    }

    pub fn spec(&self, route: &str) -> String {
        format!("{}/routes/{route}/spec", self.prefix)
    }

    pub fn weights(&self, route: &str) -> String {
        format!("{}/routes/{route}/weights", self.prefix)
    }

    pub fn status(&self, route: &str) -> String {
        format!("{}/routes/{route}/status", self.prefix)
    }

    /// `<prefix>/routes/<id>/events/`: the prefix of the route's events.
    pub fn events(&self, route: &str) -> String {
        format!("{}/routes/{route}/events/", self.prefix)
    }

    /// One event key. Millis are zero-padded to 13 digits so keys sort by time.
    pub fn event(&self, route: &str, unix_millis: u64, who: &str) -> String {
        format!(
            "{}/routes/{route}/events/{unix_millis:013}-{who}",
            self.prefix
        )
    }

    pub fn instances(&self) -> String {
        format!("{}/instances/", self.prefix)
    }

    pub fn instance(&self, instance: &str) -> String {
        format!("{}/instances/{instance}", self.prefix)
    }

    pub fn stats(&self, route: &str, instance: &str) -> String {
        format!("{}/stats/{route}/{instance}", self.prefix)
    }

    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// `<prefix>/descriptors/`: the descriptor sets routes name in `compare.descriptor_set`.
    pub fn descriptors(&self) -> String {
        format!("{}/descriptors/", self.prefix)
    }

    pub fn descriptor(&self, name: &str) -> String {
        format!("{}/descriptors/{name}", self.prefix)
    }

    /// What the config source reads and watches: from [`Keys::descriptors`] to the end of
    /// [`Keys::routes`] (one range, one watch; the `instances/` and `leader` keys between are
    /// skipped as they come). Returns (start, end).
    pub fn source_range(&self) -> (String, String) {
        (self.descriptors(), format!("{}/routes0", self.prefix))
    }

    /// The name of a `<prefix>/descriptors/<name>` key.
    pub fn parse_descriptor_key(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        let name = key.strip_prefix(&self.descriptors())?;
        (!name.is_empty() && !name.contains('/')).then(|| name.to_string())
    }

    /// Parse a key under [`Keys::routes`]; `None` for anything else (including keys deeper than
    /// the layout, which are ignored rather than misread).
    pub fn parse_route_key(&self, key: &[u8]) -> Option<RouteKey> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.routes())?;
        let (route, what) = rest.split_once('/')?;
        if route.is_empty() {
            return None;
        }
        let kind = match what {
            "spec" => RouteKeyKind::Spec,
            "weights" => RouteKeyKind::Weights,
            "status" => RouteKeyKind::Status,
            _ => {
                let name = what.strip_prefix("events/")?;
                if name.is_empty() || name.contains('/') {
                    return None;
                }
                RouteKeyKind::Event(name.to_string())
            }
        };
        Some(RouteKey {
            route: route.to_string(),
            kind,
        })
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new("/cutover")
    }
}

/// The compare of a guarded write: `key` is as it was read — same mod_revision, or still
/// absent when read as absent (`mod_revision` 0).
pub fn unchanged(key: &str, mod_revision: i64) -> etcd_client::Compare {
    use etcd_client::{Compare, CompareOp};
    if mod_revision > 0 {
        Compare::mod_revision(key, CompareOp::Equal, mod_revision)
    } else {
        Compare::version(key, CompareOp::Equal, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_keys_and_the_source_range() {
        let keys = Keys::new("/cutover/");
        assert_eq!(keys.descriptor("echo-v1"), "/cutover/descriptors/echo-v1");
        assert_eq!(
            keys.parse_descriptor_key(b"/cutover/descriptors/echo-v1")
                .as_deref(),
            Some("echo-v1")
        );
        assert_eq!(keys.parse_descriptor_key(b"/cutover/descriptors/"), None);
        assert_eq!(keys.parse_descriptor_key(b"/cutover/descriptors/a/b"), None);
        assert_eq!(keys.parse_descriptor_key(b"/cutover/routes/a/spec"), None);
        let (start, end) = keys.source_range();
        let inside = |k: &str| k >= start.as_str() && k < end.as_str();
        assert!(inside("/cutover/descriptors/echo-v1"));
        assert!(inside("/cutover/routes/orders/spec"));
        assert!(inside("/cutover/routes/~/weights"));
        assert!(!inside("/cutover/stats/orders/vm"));
        assert!(!inside("/cutover/routesx"));
    }

    #[test]
    fn layout() {
        let k = Keys::new("/cutover/");
        assert_eq!(k.spec("orders"), "/cutover/routes/orders/spec");
        assert_eq!(k.weights("orders"), "/cutover/routes/orders/weights");
        assert_eq!(k.status("orders"), "/cutover/routes/orders/status");
        assert_eq!(
            k.event("orders", 1_700_000_000_123, "a"),
            "/cutover/routes/orders/events/1700000000123-a"
        );
        assert_eq!(
            k.event("orders", 5, "a"),
            "/cutover/routes/orders/events/0000000000005-a"
        );
        assert_eq!(k.stats("orders", "i1"), "/cutover/stats/orders/i1");
        assert_eq!(k.instance("i1"), "/cutover/instances/i1");
        assert_eq!(k.leader(), "/cutover/leader");
    }

    #[test]
    fn parse() {
        let k = Keys::default();
        let p = |s: &str| k.parse_route_key(s.as_bytes());
        assert_eq!(
            p("/cutover/routes/orders/spec").unwrap().kind,
            RouteKeyKind::Spec
        );
        assert_eq!(p("/cutover/routes/orders/weights").unwrap().route, "orders");
        assert_eq!(
            p("/cutover/routes/orders/events/0000000000005-a")
                .unwrap()
                .kind,
            RouteKeyKind::Event("0000000000005-a".into())
        );
        assert_eq!(p("/cutover/routes/orders/other"), None);
        assert_eq!(p("/cutover/routes//spec"), None);
        assert_eq!(p("/cutover/routes/orders/spec/x"), None);
        assert_eq!(p("/cutover/stats/orders/i1"), None);
        assert_eq!(p("/other/routes/orders/spec"), None);
    }
}
