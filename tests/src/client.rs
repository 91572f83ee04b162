//! HTTP/1.1 test client: hyper-util's pooled (keep-alive) client with a per-request timeout,
//! returning status, headers and the whole body.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Upper bound for one request, so a wedged proxy fails a test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// A complete response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The `x-backend` header every fake backend sets.
    pub fn backend(&self) -> Option<String> {
        self.header("x-backend")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// Transport failure or timeout (an HTTP error status is a [`Response`], not an error).
#[derive(Debug)]
pub struct ClientError(pub String);

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build(connector);
        Client {
            inner,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// Same pool, different per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Client {
            inner: self.inner.clone(),
            timeout,
        }
    }

    pub async fn get(&self, url: &str) -> Result<Response, ClientError> {
        self.request(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn get_with_headers(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, ClientError> {
        self.request(Method::GET, url, headers, Bytes::new()).await
    }

    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Result<Response, ClientError> {
        self.request(Method::POST, url, &[], body.into()).await
    }

    /// Any request. A `host` header in `headers` replaces the one derived from the URL.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, ClientError> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| ClientError(format!("building request to {url}: {e}")))?;
        let exchange = async {
            let res = self
                .inner
                .request(req)
                .await
                .map_err(|e| ClientError(format!("request to {url} failed: {e:?}")))?;
            let (parts, body) = res.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ClientError(format!("reading body from {url}: {e}")))?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                ClientError(format!(
                    "request to {url} timed out after {:?}",
                    self.timeout
                ))
            })?
    }
}
