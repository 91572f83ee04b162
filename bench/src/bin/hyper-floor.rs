//! `hyper-floor --listen ADDR --upstream ADDR`: the least a hyper reverse proxy costs — every
//! request forwarded as it comes to one upstream, bodies streamed both ways, nothing else — set
//! up the way `cutover serve` sets up its data plane (one current-thread runtime, HTTP/1.1 and
//! h2c on the listener, header case kept, pooled keep-alive upstream connections with
//! `TCP_NODELAY`, mimalloc). The CPU per request it needs is the floor under cutover: what
//! cutover costs beyond it is cutover's own work (routing, split, stats, hygiene, telemetry).
//! Target `hyper-floor` of `cutover-bench report`; `make bench` builds it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use cutover_bench::floor::{self, FloorArgs};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// The same allocator as the `cutover` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Upstream = Client<HttpConnector, Incoming>;
type Body = Either<Incoming, Empty<Bytes>>;

/// A minimal hyper reverse proxy, set up like cutover's data plane.
#[derive(Debug, Parser)]
#[command(
    name = "hyper-floor",
    version = concat!(env!("CARGO_PKG_VERSION"), " (hyper 1; Cargo.lock has the exact version)"),
    disable_version_flag = true
)]
struct Args {
    #[command(flatten)]
    at: FloorArgs,
}

fn main() -> std::io::Result<()> {
    floor::run(serve(Args::parse().at))
}

async fn serve(at: FloorArgs) -> std::io::Result<()> {
    let listener = floor::listener(at.listen)?;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .http1_preserve_header_case(true)
        .build(connector);
    let builder = Arc::new(floor::server());
    let authority = Authority::try_from(at.upstream.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;

    loop {
        let stream = floor::accept(&listener).await;
        let (builder, client, authority) = (builder.clone(), client.clone(), authority.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(req, client.clone(), authority.clone()));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `req` to the upstream as it came (Host kept; h2's `:authority` becomes Host), its answer
/// back as it comes; 502 when the upstream cannot be reached or fails.
async fn forward(
    mut req: Request<Incoming>,
    client: Upstream,
    upstream: Authority,
) -> Result<Response<Body>, Infallible> {
    if !req.headers().contains_key(HOST) {
        if let Some(host) = req.uri().authority() {
            if let Ok(host) = HeaderValue::from_str(host.as_str()) {
                req.headers_mut().insert(HOST, host);
            }
        }
    }
    // The client needs the upstream in the URI to pick its pool; it writes the request line in
    // origin form (path and query only) and leaves the Host header as it is.
    let mut parts = hyper::http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream);
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    let answer = match Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            // h2c in, HTTP/1.1 to the upstream.
            *req.version_mut() = Version::HTTP_11;
            client.request(req).await.ok()
        }
        Err(_) => None,
    };
    Ok(answer.map_or_else(
        || {
            let mut bad = Response::new(Either::Right(Empty::new()));
            *bad.status_mut() = StatusCode::BAD_GATEWAY;
            bad
        },
        |res| res.map(Either::Left),
    ))
}
