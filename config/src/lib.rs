//! The cutover model: config file, route specs and weights, parsed and validated into typed values.
//! See `config/examples/` for every document this crate accepts (SPEC §2 and §3).
#![warn(missing_docs)]

mod check;
mod config;
pub mod dataplane;
mod descriptors;
mod error;
mod jsonpath;
pub mod operator;
mod policy;
mod raw;
mod route;
mod ser;
mod state;
mod weights;
pub mod window;

pub use config::{
    AdminSettings, ClientCert, Config, EtcdAuth, EtcdSettings, EtcdUser, NotifySettings,
    ProxySettings, RouteConfig, StatsSettings, TlsSettings, UnderscoreHeaders,
};
pub use descriptors::DescriptorSet;
pub use error::{ConfigError, ConfigErrors};
pub use jsonpath::{JsonPath, JsonPathSegment};
pub use policy::{
    BodyCompare, ComparePolicy, DivergenceRule, ErrorRateRule, LatencyRule, Ramp, RollbackPolicy,
    ShadowPolicy,
};
pub use route::{Backend, BackendProtocol, Endpoint, HostMatch, Match, RouteId, RouteSpec, Sticky};
pub use state::{ConfigState, Delta, RouteList, WeightsRevisions};
pub use weights::{Phase, Weights};

use error::{FieldPath, Report};
use raw::{RawConfig, RawRouteSpec, RawWeights};

/// Parses and validates a config file (SPEC §2).
///
/// # Errors
/// Every problem found, with paths such as `routes[0].legacy.endpoints`
/// (syntax and schema errors stop at the first one).
pub fn parse_config_toml(text: &str) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = error::from_toml(text)?;
    config::validate(raw)
}

/// Parses and validates a route spec, the JSON value of
/// `<prefix>/routes/<id>/spec` (SPEC §3).
///
/// # Errors
/// Every problem found, with paths such as `legacy.endpoints`.
pub fn parse_route_spec_json(text: &str) -> Result<RouteSpec, ConfigErrors> {
    let raw: RawRouteSpec = error::from_json(text)?;
    let mut report = Report::default();
    let spec = route::validate_spec(&mut report, &FieldPath::root(), raw);
    report.finish(spec)
}

/// Parses and validates weights, the JSON value of
/// `<prefix>/routes/<id>/weights` (SPEC §3).
///
/// # Errors
/// Every problem found, with paths such as `legacy`, or `(root)` for
/// `legacy + new must be > 0`.
pub fn parse_weights_json(text: &str) -> Result<Weights, ConfigErrors> {
    let raw: RawWeights = error::from_json(text)?;
    let mut report = Report::default();
    let weights = weights::validate(&mut report, &FieldPath::root(), raw);
    report.finish(weights)
}

/// Any document `cutover validate` accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// A config file.
    Config(Config),
    /// A route spec.
    RouteSpec(RouteSpec),
    /// Weights.
    Weights(Weights),
}

/// Parses the document behind `cutover validate FILE`.
///
/// `.toml` => config file; `.json` => a route spec if the object has a
/// `"match"` key, else weights. Any other extension: try a TOML config, then
/// JSON; when both fail, the errors of the likelier format are returned
/// (JSON when the text starts with `{`).
///
/// # Errors
/// As for the parser of the recognised document kind.
pub fn parse_document(file_name: &str, text: &str) -> Result<Document, ConfigErrors> {
    match extension(file_name).as_deref() {
        Some("toml") => parse_config_toml(text).map(Document::Config),
        Some("json") => parse_json_document(text),
        _ => parse_config_toml(text)
            .map(Document::Config)
            .or_else(|toml_errors| {
                parse_json_document(text).map_err(|json_errors| {
                    if text.trim_start().starts_with('{') {
                        json_errors
                    } else {
                        toml_errors
                    }
                })
            }),
    }
}

fn extension(file_name: &str) -> Option<String> {
    std::path::Path::new(file_name)
        .extension()
        .map(|ext| ext.to_string_lossy().to_ascii_lowercase())
}

/// A route spec when the object has a `"match"` key, weights otherwise.
fn parse_json_document(text: &str) -> Result<Document, ConfigErrors> {
    let value: serde_json::Value = error::from_json(text)?;
    match value.as_object() {
        Some(object) if object.contains_key("match") => {
            parse_route_spec_json(text).map(Document::RouteSpec)
        }
        Some(_) => parse_weights_json(text).map(Document::Weights),
        None => Err(ConfigError::new(
            error::ROOT,
            "expected a JSON object: a route spec (with \"match\") or weights",
        )
        .into()),
    }
}

#[cfg(test)]
mod tests;
