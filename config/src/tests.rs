//! Whole-document tests: the golden examples, error paths as users see
//! them, the JSON round trip and a no-panic mutation test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::*;

const FULL_TOML: &str = include_str!("../examples/full.toml");
const MINIMAL_TOML: &str = include_str!("../examples/minimal.toml");
const DEMO_TOML: &str = include_str!("../examples/demo.toml");
const ETCD_TOML: &str = include_str!("../examples/etcd.toml");
const SPEC_JSON: &str = include_str!("../examples/route-spec.json");
const WEIGHTS_JSON: &str = include_str!("../examples/weights.json");

pub(crate) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(crate) fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

pub(crate) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

pub(crate) fn endpoints(items: &[&str]) -> Vec<Endpoint> {
    items.iter().map(|s| Endpoint::parse(s).unwrap()).collect()
}

/// Every error of a failed parse as `path: reason`.
pub(crate) fn errors<T: std::fmt::Debug>(result: Result<T, ConfigErrors>) -> Vec<String> {
    match result {
        Ok(value) => panic!("expected errors, parsed {value:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

pub(crate) fn config(text: &str) -> Config {
    parse_config_toml(text).unwrap_or_else(|errors| panic!("{errors}"))
}

pub(crate) fn spec(text: &str) -> RouteSpec {
    parse_route_spec_json(text).unwrap_or_else(|errors| panic!("{errors}"))
}

/// A config with one valid route plus `extra` lines inside it.
pub(crate) fn route_toml(extra: &str) -> String {
    format!(
        "[[routes]]\nid = \"orders\"\nmatch = {{ path_prefix = \"/\" }}\n\
         legacy = {{ endpoints = [\"127.0.0.1:9001\"] }}\n\
         new = {{ endpoints = [\"127.0.0.1:9002\"] }}\n{extra}\n"
    )
}

/// A route spec JSON document with `extra` members added.
pub(crate) fn spec_json(extra: serde_json::Value) -> String {
    let mut value = json!({
        "match": {"path_prefix": "/"},
        "legacy": {"endpoints": ["10.0.0.1:8080"]},
        "new": {"endpoints": ["10.0.1.1:8080"]},
    });
    if let (Some(object), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        object.extend(extra.clone());
    }
    value.to_string()
}

/// The SPEC §3 example, built by hand.
fn spec_example() -> RouteSpec {
    RouteSpec {
        matcher: Match {
            host: Some(HostMatch::Exact("api.example.com".into())),
            path_prefix: "/".into(),
        },
        legacy: Backend {
            endpoints: endpoints(&["10.0.0.1:8080", "10.0.0.2:8080"]),
            tls: false,
            sni: None,
            protocol: BackendProtocol::Http1,
        },
        new: Backend {
            endpoints: endpoints(&["10.0.1.1:8080"]),
            tls: false,
            sni: Some("new.internal".into()),
            protocol: BackendProtocol::Http1,
        },
        sticky: Some(Sticky::Header("x-user-id".into())),
        pin: None,
        shadow: ShadowPolicy {
            methods: strings(&["GET", "HEAD"]),
            max_body_bytes: 1_048_576,
            max_in_flight: 1024,
            timeout: secs(5),
            strip_headers: strings(&["authorization", "cookie"]),
            grpc_methods: Vec::new(),
        },
        compare: ComparePolicy {
            status: true,
            headers: strings(&["content-type"]),
            body: BodyCompare::Json,
            ignore_json_paths: vec![
                JsonPath::parse("$.timestamp").unwrap(),
                JsonPath::parse("$.meta.request_id").unwrap(),
            ],
            ignore_headers: strings(&["date", "server", "set-cookie"]),
            learn_noise_percent: 1.0,
            noise_ttl: secs(600),
            descriptor_set: None,
            descriptors: None,
        },
        rollback: RollbackPolicy::default(),
        ramp: Some(Ramp {
            steps: vec![1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 100.0],
            hold: secs(300),
            auto: false,
        }),
    }
}

// ---- golden examples -------------------------------------------------------

#[test]
fn spec_example_parses_to_the_expected_model() {
    assert_eq!(spec(SPEC_JSON), spec_example());
}

#[test]
fn weights_example() {
    let weights = parse_weights_json(WEIGHTS_JSON).unwrap();
    assert_eq!(
        weights,
        Weights {
            legacy: 75.0,
            new: 25.0,
            shadow: 100.0
        }
    );
    assert_eq!(weights.implied_phase(), Phase::Canary);
}

#[test]
fn minimal_config_is_all_defaults() {
    let config = config(MINIMAL_TOML);
    assert_eq!(config.proxy, ProxySettings::default());
    assert_eq!(config.proxy.listen, vec![addr("127.0.0.1:8080")]);
    assert_eq!(config.admin.listen, addr("127.0.0.1:9090"));
    assert_eq!(
        config.stats,
        StatsSettings {
            window: secs(60),
            slices: 12
        }
    );
    assert_eq!(config.etcd, None);
    let [route] = config.routes.as_slice() else {
        panic!("expected one route");
    };
    assert_eq!(route.id.as_str(), "orders");
    assert_eq!(route.weights, Weights::default());
    assert_eq!(
        route.spec.matcher,
        Match {
            host: None,
            path_prefix: "/".into()
        }
    );
    assert_eq!(route.spec.sticky, None);
    assert_eq!(route.spec.shadow, ShadowPolicy::default());
    assert_eq!(route.spec.compare, ComparePolicy::default());
    assert_eq!(route.spec.rollback, RollbackPolicy::default());
    assert_eq!(route.spec.ramp, None);
    assert!(!route.spec.legacy.tls);
}

#[test]
fn full_config_sets_every_key() {
    let config = config(FULL_TOML);
    let p = &config.proxy;
    assert_eq!(p.listen, vec![addr("127.0.0.1:8080"), addr("[::1]:8080")]);
    assert_eq!(
        p.tls,
        Some(TlsSettings {
            listen: addr("0.0.0.0:8443"),
            cert: PathBuf::from("/etc/cutover/tls/cert.pem"),
            key: PathBuf::from("/etc/cutover/tls/key.pem"),
        })
    );
    assert_eq!(p.threads, 4);
    assert_eq!(p.underscore_headers, UnderscoreHeaders::Reject);
    assert_eq!(
        config.notify.webhook.as_deref(),
        Some("http://127.0.0.1:9300/hooks/cutover")
    );
    assert_eq!(p.upgrades, vec!["websocket".to_owned()]);
    assert_eq!(p.tunnel_idle_timeout, secs(3600));
    assert_eq!(config.routes.len(), 3);
    let grpc = &config.routes[2].spec;
    assert_eq!(grpc.legacy.protocol, BackendProtocol::H2c);
    assert_eq!(grpc.new.protocol, BackendProtocol::H2);
    assert_eq!(grpc.compare.body, BodyCompare::Grpc);
    assert!(grpc.shadow.shadows_grpc_method("/shop.Orders/GetOrder"));
}

#[test]
fn full_config_first_route_is_the_spec_example() {
    let config = config(FULL_TOML);
    assert_eq!(*config.routes[0].spec, spec_example());
    assert_eq!(
        config.routes[0].weights,
        Weights {
            legacy: 90.0,
            new: 10.0,
            shadow: 100.0
        }
    );
}

#[test]
fn full_config_second_route_has_wildcard_host_and_cookie() {
    let config = config(FULL_TOML);
    let route = &config.routes[1];
    assert_eq!(route.id.as_str(), "shop");
    assert_eq!(
        route.spec.matcher.host,
        Some(HostMatch::Wildcard(".shop.example.com".into()))
    );
    assert_eq!(route.spec.sticky, Some(Sticky::Cookie("uid".into())));
    assert_eq!(route.spec.new.endpoints[0].host, "fd00::10");
    assert_eq!(route.weights.shadow, 0.0);
    assert_eq!(
        route.spec.rollback,
        RollbackPolicy {
            error_rate: Some(ErrorRateRule {
                max: 0.02,
                ..ErrorRateRule::default()
            }),
            latency_p99: None,
            divergence: None,
        }
    );
}

#[test]
fn demo_config() {
    let config = config(DEMO_TOML);
    assert_eq!(config.proxy.listen, vec![addr("127.0.0.1:8080")]);
    assert_eq!(config.admin.listen, addr("127.0.0.1:9090"));
    let route = &config.routes[0];
    assert_eq!(route.id.as_str(), "orders");
    assert_eq!(route.spec.legacy.endpoints, endpoints(&["127.0.0.1:9001"]));
    assert_eq!(route.spec.new.endpoints, endpoints(&["127.0.0.1:9002"]));
    assert_eq!(route.weights, Weights::default());
}

#[test]
fn etcd_config() {
    let config = config(ETCD_TOML);
    let etcd = config.etcd.unwrap();
    assert_eq!(etcd.endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!(etcd.prefix, "/cutover");
    assert_eq!(
        etcd.last_known_good,
        Some(PathBuf::from("/tmp/cutover-last-known-good.json"))
    );
    assert_eq!(etcd.dial_timeout, secs(2));
    assert_eq!(config.routes.len(), 2);
}

#[test]
fn etcd_endpoint_forms() {
    let config = config(
        r#"
        [etcd]
        endpoints = ["http://10.0.2.1:2379", "etcd-3.internal:2379"]
        "#,
    );
    let etcd = config.etcd.unwrap();
    assert_eq!(etcd.endpoints.len(), 2);
    assert_eq!(etcd.endpoints[0], "http://10.0.2.1:2379");
    assert_eq!(etcd.prefix, "/cutover", "default prefix");
    // TLS for all or for none (SPEC §9).
    let tls = self::config(
        "[etcd]\nendpoints = [\"https://etcd-2.internal:2379\", \"https://[::1]:2379\"]\n",
    );
    assert_eq!(tls.etcd.unwrap().endpoints.len(), 2);
}

// ---- serialization -----------------------------------------------------------

#[test]
fn spec_round_trips_through_json() {
    let spec = spec(SPEC_JSON);
    let text = serde_json::to_string(&spec.to_json()).unwrap();
    assert_eq!(parse_route_spec_json(&text), Ok(spec.clone()));
    let direct = serde_json::to_string(&spec).unwrap();
    assert_eq!(parse_route_spec_json(&direct), Ok(spec));
}

#[test]
fn every_config_route_round_trips() {
    for text in [FULL_TOML, MINIMAL_TOML, DEMO_TOML, ETCD_TOML] {
        for route in config(text).routes {
            let json = route.spec.to_json().to_string();
            assert_eq!(parse_route_spec_json(&json), Ok((*route.spec).clone()));
            let weights = route.weights.to_json().to_string();
            assert_eq!(parse_weights_json(&weights), Ok(route.weights));
        }
    }
}

#[test]
fn spec_serializes_to_the_spec_shape() {
    let expected = json!({
        "match": {"host": "api.example.com", "path_prefix": "/"},
        "legacy": {"endpoints": ["10.0.0.1:8080", "10.0.0.2:8080"], "tls": false},
        "new": {"endpoints": ["10.0.1.1:8080"], "tls": false, "sni": "new.internal"},
        "sticky": {"header": "x-user-id"},
        "shadow": {"methods": ["GET", "HEAD"], "max_body_bytes": 1048576, "max_in_flight": 1024,
                   "timeout": "5s", "strip_headers": ["authorization", "cookie"]},
        "compare": {"status": true, "headers": ["content-type"], "body": "json",
                    "ignore_json_paths": ["$.timestamp", "$.meta.request_id"],
                    "ignore_headers": ["date", "server", "set-cookie"],
                    "learn_noise_percent": 1, "noise_ttl": "10m"},
        "rollback": {"error_rate": {"max": 0.05, "for": "1m", "min_requests": 100},
                     "latency_p99": {"max_ratio": 2, "for": "5m", "min_requests": 100},
                     "divergence": {"max": 0.01, "for": "1m", "min_samples": 100}},
        "ramp": {"steps": [1, 5, 10, 25, 50, 75, 90, 100], "hold": "5m", "auto": false}
    });
    assert_eq!(spec_example().to_json(), expected);
}

#[test]
fn serialization_keeps_spec_field_order() {
    let text = serde_json::to_string(&spec_example()).unwrap();
    let order = [
        "\"match\"",
        "\"legacy\"",
        "\"new\"",
        "\"sticky\"",
        "\"shadow\"",
        "\"compare\"",
        "\"rollback\"",
        "\"ramp\"",
    ];
    let positions: Vec<usize> = order.iter().map(|key| text.find(key).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
}

#[test]
fn optional_parts_are_left_out_and_disabled_rollback_is_empty() {
    let spec = spec(&spec_json(json!({"rollback": {}})));
    assert_eq!(spec.rollback, RollbackPolicy::disabled());
    let value = spec.to_json();
    assert_eq!(value["rollback"], json!({}));
    assert!(value.get("sticky").is_none());
    assert!(value.get("ramp").is_none());
    assert!(value["match"].get("host").is_none());
    assert!(value["new"].get("sni").is_none());
    assert_eq!(parse_route_spec_json(&value.to_string()), Ok(spec));
}

#[test]
fn wildcard_host_and_cookie_serialize_as_written() {
    let spec = spec(&spec_json(json!({
        "match": {"host": "*.example.com"}, "sticky": {"cookie": "uid"}
    })));
    let value = spec.to_json();
    assert_eq!(
        value["match"],
        json!({"host": "*.example.com", "path_prefix": "/"})
    );
    assert_eq!(value["sticky"], json!({"cookie": "uid"}));
    assert_eq!(spec.matcher.to_json(), value["match"]);
}

#[test]
fn deserialize_impls_validate() {
    let spec: RouteSpec = serde_json::from_str(SPEC_JSON).unwrap();
    assert_eq!(spec, spec_example());
    let bad = spec_json(json!({"legacy": {"endpoints": []}}));
    let err = serde_json::from_str::<RouteSpec>(&bad).unwrap_err();
    assert!(
        err.to_string()
            .contains("legacy.endpoints: must not be empty"),
        "{err}"
    );
}

// ---- syntax and schema errors (serde) ------------------------------------------

#[test]
fn toml_unknown_field_names_the_table_and_the_line() {
    let text = route_toml("").replace("legacy = { endpoints", "legacy = { endpoint");
    let errors = errors(parse_config_toml(&text));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(
            "routes[0].legacy: unknown field \"endpoint\", expected one of \"endpoints\", \
             \"tls\", \"sni\", \"protocol\" at line 4 column"
        ),
        "{errors:?}"
    );
}

#[test]
fn toml_unknown_top_level_key() {
    let errors = errors(parse_config_toml("[proxi]\nlisten = \"127.0.0.1:1\"\n"));
    assert!(
        errors[0].starts_with("(root): unknown field \"proxi\", expected one of"),
        "{errors:?}"
    );
}

#[test]
fn toml_wrong_type_and_missing_field() {
    let errors_ = errors(parse_config_toml(&route_toml("shadow = { timeout = 5 }")));
    assert!(
        errors_[0].starts_with(
            "routes[0].shadow.timeout: invalid type: integer `5`, expected a duration string"
        ),
        "{errors_:?}"
    );
    let text = "[[routes]]\nid = \"a\"\nmatch = {}\nlegacy = { endpoints = [\"a:1\"] }\n";
    let errors_ = errors(parse_config_toml(text));
    assert!(
        errors_[0].starts_with("routes[0]: missing field \"new\""),
        "{errors_:?}"
    );
}

#[test]
fn toml_syntax_error_is_at_the_root_with_position() {
    let errors = errors(parse_config_toml("[proxy]\nlisten = \n"));
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("(root): "), "{errors:?}");
    assert!(errors[0].contains("at line 2 column"), "{errors:?}");
}

#[test]
fn json_unknown_field_names_the_object() {
    let text = spec_json(json!({"legacy": {"endpoint": ["10.0.0.1:8080"]}}));
    let errors = errors(parse_route_spec_json(&text));
    assert!(
        errors[0].starts_with(
            "legacy: unknown field \"endpoint\", expected one of \"endpoints\", \"tls\", \"sni\", \
             \"protocol\" at line 1 column"
        ),
        "{errors:?}"
    );
}

#[test]
fn json_unknown_variant_and_wrong_types() {
    let text = spec_json(json!({"compare": {"body": "xml"}}));
    let errors_ = errors(parse_route_spec_json(&text));
    assert!(
        errors_[0].starts_with(
            "compare.body: unknown variant \"xml\", expected one of \"json\", \"bytes\", \"grpc\", \"none\""
        ),
        "{errors_:?}"
    );
    let errors_ = errors(parse_route_spec_json(&spec_json(
        json!({"ramp": {"steps": "1"}}),
    )));
    assert!(
        errors_[0].starts_with("ramp.steps: invalid type"),
        "{errors_:?}"
    );
    let errors_ = errors(parse_route_spec_json("1"));
    assert!(
        errors_[0].starts_with("(root): invalid type: integer `1`, expected a route spec object"),
        "{errors_:?}"
    );
}

#[test]
fn positional_array_forms_are_rejected() {
    let toml = errors(parse_config_toml(&route_toml("weights = [90, 10]")));
    assert!(
        toml[0].starts_with("routes[0].weights: invalid type: sequence, expected a weights object"),
        "{toml:?}"
    );
    let json = errors(parse_weights_json("[75, 25]"));
    assert!(
        json[0].starts_with("(root): invalid type: sequence"),
        "{json:?}"
    );
    let spec = errors(parse_route_spec_json(&spec_json(
        json!({"legacy": [["a:1"]]}),
    )));
    assert!(
        spec[0].starts_with("legacy: invalid type: sequence"),
        "{spec:?}"
    );
}

#[test]
fn every_error_is_one_line() {
    for text in ["[proxy]\nlisten = \n", "[proxy]\n[proxy]\n", "a = [", "\"x"] {
        for error in errors(parse_config_toml(text)) {
            assert!(!error.contains('\n'), "{error:?}");
        }
    }
}

#[test]
fn number_type_errors_say_number() {
    let errors = errors(parse_config_toml(&route_toml(
        "weights = { legacy = \"90\", new = 10 }",
    )));
    assert!(
        errors[0].starts_with(
            "routes[0].weights.legacy: invalid type: string \"90\", expected a number at line 6"
        ),
        "{errors:?}"
    );
}

#[test]
fn json_null_does_not_mean_default() {
    assert_eq!(
        errors(parse_route_spec_json(&spec_json(json!({"rollback": null})))),
        vec!["rollback: null is not allowed; leave the key out to get its default"]
    );
    assert_eq!(
        errors(parse_weights_json(
            r#"{"legacy": 1, "new": 0, "shadow": null}"#
        )),
        vec!["shadow: null is not allowed; leave the key out to get its default"]
    );
}

#[test]
fn json_spec_requires_match_legacy_new() {
    let errors = errors(parse_route_spec_json(
        r#"{"legacy": {"endpoints": ["a:1"]}}"#,
    ));
    assert!(
        errors[0].starts_with("(root): missing field \"match\""),
        "{errors:?}"
    );
}

// ---- parse_document ----------------------------------------------------------------

#[test]
fn documents_are_recognised_by_extension_and_content() {
    assert!(matches!(
        parse_document("a.toml", MINIMAL_TOML),
        Ok(Document::Config(_))
    ));
    assert!(matches!(
        parse_document("A.TOML", MINIMAL_TOML),
        Ok(Document::Config(_))
    ));
    assert!(matches!(
        parse_document("s.json", SPEC_JSON),
        Ok(Document::RouteSpec(_))
    ));
    assert!(matches!(
        parse_document("w.json", WEIGHTS_JSON),
        Ok(Document::Weights(_))
    ));
    assert!(matches!(
        parse_document("config", MINIMAL_TOML),
        Ok(Document::Config(_))
    ));
    assert!(matches!(
        parse_document("spec.txt", SPEC_JSON),
        Ok(Document::RouteSpec(_))
    ));
    assert!(matches!(
        parse_document("-", WEIGHTS_JSON),
        Ok(Document::Weights(_))
    ));
}

#[test]
fn document_errors_come_from_the_likely_format() {
    let json = errors(parse_document("x.json", "[1]"));
    assert_eq!(
        json,
        vec!["(root): expected a JSON object: a route spec (with \"match\") or weights"]
    );
    let toml_as_json = errors(parse_document("x.json", MINIMAL_TOML));
    assert!(
        toml_as_json[0].starts_with("(root): expected value at line 1"),
        "{toml_as_json:?}"
    );
    let other = errors(parse_document("x.conf", "[proxy]\nthreads = 0\n"));
    assert_eq!(
        other,
        vec!["proxy.threads: must be between 1 and 256 (got 0)"]
    );
    let other = errors(parse_document("x.conf", r#"{"legacy": 0, "new": 0}"#));
    assert_eq!(other, vec!["(root): legacy + new must be > 0"]);
    let spec = errors(parse_document("x.json", r#"{"match": {}, "legacy": 1}"#));
    assert!(spec[0].starts_with("legacy: invalid type"), "{spec:?}");
}

// ---- robustness ------------------------------------------------------------------

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
}

/// Applies one to four random edits (delete, insert, replace, duplicate,
/// truncate) to `text`, on character boundaries.
fn mutate(rng: &mut Rng, text: &str) -> String {
    const ALPHABET: &[char] = &[
        '{', '}', '[', ']', '"', '\'', ',', ':', '=', '.', '$', '*', '-', '0', '9', 'e', 'x', ' ',
        '\n', '#', '\\', 'é', '\u{0}', '/', '_',
    ];
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(chars.len() + 1);
        let c = ALPHABET[rng.below(ALPHABET.len())];
        match rng.below(5) {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            1 => chars.insert(at, c),
            2 if at < chars.len() => chars[at] = c,
            3 => {
                let end = (at + rng.below(40)).min(chars.len());
                let copy: Vec<char> = chars[at..end].to_vec();
                chars.splice(at..at, copy);
            }
            _ => chars.truncate(at),
        }
    }
    chars.into_iter().collect()
}

#[test]
fn random_mutations_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for base in [FULL_TOML, ETCD_TOML, SPEC_JSON, WEIGHTS_JSON] {
        for _ in 0..300 {
            let text = mutate(&mut rng, base);
            let results = [
                parse_config_toml(&text).map(drop),
                parse_route_spec_json(&text).map(drop),
                parse_weights_json(&text).map(drop),
                parse_document("x.toml", &text).map(drop),
                parse_document("x.json", &text).map(drop),
                parse_document("x", &text).map(drop),
            ];
            for result in results {
                match result {
                    Ok(()) => accepted += 1,
                    Err(errors) => assert!(!errors.is_empty()),
                }
            }
        }
    }
    // Some mutations (e.g. inside comments or strings) stay valid.
    assert!(accepted > 0);
}

#[test]
fn parsed_values_always_round_trip() {
    // Every spec the mutation test accepts must serialize back to itself.
    let mut rng = Rng(42);
    for _ in 0..300 {
        let text = mutate(&mut rng, SPEC_JSON);
        if let Ok(spec) = parse_route_spec_json(&text) {
            assert_eq!(parse_route_spec_json(&spec.to_json().to_string()), Ok(spec));
        }
    }
}
