//! `cutover ctl diffs ROUTE --admin URL [--admin-token-file FILE]`: recent diverging shadow
//! pairs, from a proxy's admin API (`GET /api/v1/routes/<id>/divergences`, SPEC §5), with its
//! bearer token when it asks for one (SPEC §9).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::table::{self, truncate};
use super::{route_id, CtlError, Ctx, Result};

pub(super) async fn run(
    ctx: &Ctx,
    route: &str,
    admin: &str,
    token_file: Option<&std::path::Path>,
) -> Result<String> {
    let id = route_id(route)?;
    let url = divergences_url(admin, &id).map_err(CtlError::Usage)?;
    let token = token_file.map(read_token).transpose()?;
    let (status, body) = fetch(&url, token.as_deref(), ctx.timeout).await?;
    let text = String::from_utf8_lossy(&body);
    if status == 401 {
        let hint = if token.is_some() {
            "the token in --admin-token-file is not the one in its [admin] token_file"
        } else {
            "it asks for a token: pass --admin-token-file (or CUTOVER_ADMIN_TOKEN_FILE)"
        };
        return Err(CtlError::Runtime(format!(
            "admin API at {url} answered 401: {hint}"
        )));
    }
    if status != 200 {
        return Err(CtlError::Runtime(format!(
            "admin API at {url} answered {status}: {} (is {id} a route of that proxy? list them \
             at {}/api/v1/routes)",
            truncate(text.trim(), 500),
            admin.trim_end_matches('/')
        )));
    }
    let items = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(items)) => items,
        _ => {
            return Err(CtlError::Runtime(format!(
                "admin API at {url} answered 200 but not with a JSON array: {} (is --admin the \
                 admin listener of `cutover serve`?)",
                truncate(text.trim(), 200)
            )))
        }
    };
    if ctx.json {
        return Ok(text.trim().to_string());
    }
    if items.is_empty() {
        return Ok(format!("no divergences recorded for {id}"));
    }
    Ok(render(&items))
}

/// `<admin>/api/v1/routes/<id>/divergences` (an `http://` prefix is added when missing).
pub(super) fn divergences_url(admin: &str, id: &str) -> Result<Uri, String> {
    let base = admin.trim().trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    if !base.starts_with("http://") {
        return Err(format!(
            "--admin {admin}: only http:// admin URLs are supported, e.g. http://127.0.0.1:9090"
        ));
    }
    format!("{base}/api/v1/routes/{id}/divergences")
        .parse::<Uri>()
        .map_err(|e| format!("--admin {admin}: {e}; expected e.g. http://127.0.0.1:9090"))
}

/// The first line of `path`: the admin token (its content is never put in a message).
fn read_token(path: &std::path::Path) -> Result<String> {
    crate::connect::read_secret(path)
        .map_err(|why| CtlError::Usage(format!("--admin-token-file {}: {why}", path.display())))
}

async fn fetch(
    url: &Uri,
    token: Option<&str>,
    timeout: std::time::Duration,
) -> Result<(u16, Bytes)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let unreachable = |reason: String| {
        CtlError::Runtime(format!(
            "cannot reach the admin API at {url}: {reason} (is `cutover serve` running? pass \
             --admin URL of its [admin].listen)"
        ))
    };
    let call = async {
        let mut req = hyper::Request::get(url.clone());
        if let Some(token) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?
            .to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(unreachable(format!(
            "no answer within {} (raise --timeout)",
            humantime::format_duration(timeout)
        ))),
    }
}

/// An error and its sources, `a: b: c` (hyper's top-level messages alone say little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(&format!(": {e}"));
        source = e.source();
    }
    out
}

/// The first of `names` present in `item`; `a.b` looks into nested objects.
fn field<'a>(item: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names.iter().find_map(|name| {
        name.split('.')
            .try_fold(item, |v, part| v.get(part))
            .filter(|v| !v.is_null())
    })
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "-".to_string(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// The table: method, path, legacy status, new status, differing headers, differing JSON paths.
pub(super) fn render(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            vec![
                cell(field(item, &["method"])),
                truncate(&cell(field(item, &["path", "uri"])), 60),
                cell(field(
                    item,
                    &["legacy_status", "legacy.status", "status.legacy"],
                )),
                cell(field(item, &["new_status", "new.status", "status.new"])),
                truncate(
                    &cell(field(
                        item,
                        &["headers", "differing_headers", "header_names"],
                    )),
                    60,
                ),
                truncate(
                    &cell(field(
                        item,
                        &["json_paths", "differing_json_paths", "paths"],
                    )),
                    80,
                ),
            ]
        })
        .collect();
    table::render(
        &["METHOD", "PATH", "LEGACY", "NEW", "HEADERS", "JSON PATHS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls() {
        assert_eq!(
            divergences_url("http://127.0.0.1:9090/", "orders")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9090/api/v1/routes/orders/divergences"
        );
        assert_eq!(
            divergences_url("localhost:9", "a").unwrap().to_string(),
            "http://localhost:9/api/v1/routes/a/divergences"
        );
        assert!(divergences_url("https://x", "a")
            .unwrap_err()
            .contains("only http://"));
        assert!(divergences_url("http://bad host", "a").is_err());
    }

    #[test]
    fn table_from_either_field_shape() {
        let items = [
            json!({"method": "GET", "path": "/orders/1", "legacy_status": 200, "new_status": 500,
                   "headers": ["content-type"], "json_paths": ["$.total", "$.items[0]"]}),
            json!({"method": "POST", "uri": "/x", "legacy": {"status": 200}, "new": {"status": 200},
                   "differing_headers": [], "differing_json_paths": ["$.a"]}),
            json!({"unexpected": true}),
        ];
        let out = render(&items);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "METHOD  PATH       LEGACY  NEW  HEADERS       JSON PATHS"
        );
        assert_eq!(
            lines[1],
            "GET     /orders/1  200     500  content-type  $.total,$.items[0]"
        );
        assert_eq!(
            lines[2],
            "POST    /x         200     200  -             $.a"
        );
        assert_eq!(lines[3], "-       -          -       -    -             -");
    }
}
