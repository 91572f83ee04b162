//! `own-floor --listen ADDR --upstream ADDR`: what a proxy costs whose HTTP/1.1 *upstream*
//! client is its own instead of hyper's — hyper's server for the clients, as `hyper-floor`,
//! and for the backend a connection per request taken from a pool, the request head written
//! with one `write`, the answer's head parsed with `httparse` from a buffer the connection
//! keeps, and its body streamed from the request's own task (no connection task, no channel).
//! It is the measurement behind issue 14's next step, not a proxy: answers with a
//! `Content-Length` only (anything else is a 502), no timeouts, no header case, no upgrades.
//! Target `own-floor` of `cutover-bench report`; `make bench` builds it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use cutover_bench::floor::{self, FloorArgs};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The same allocator as the `cutover` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Room made in a connection's buffer before each read.
const READ_SIZE: usize = 16 * 1024;
/// Headers an answer may have.
const MAX_HEADERS: usize = 64;

/// A proxy with an HTTP/1.1 upstream client of its own (see the module's documentation).
#[derive(Debug, Parser)]
#[command(
    name = "own-floor",
    version = concat!(env!("CARGO_PKG_VERSION"), " (hyper 1 server, httparse client)"),
    disable_version_flag = true
)]
struct Args {
    #[command(flatten)]
    at: FloorArgs,
}

/// An idle upstream connection and the bytes it has read past the last answer.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

type Pool = Arc<Mutex<Vec<Conn>>>;
type Answer = Either<Streamed, Empty<Bytes>>;

fn main() -> std::io::Result<()> {
    floor::run(serve(Args::parse().at))
}

async fn serve(at: FloorArgs) -> std::io::Result<()> {
    let listener = floor::listener(at.listen)?;
    let pool: Pool = Arc::new(Mutex::new(Vec::new()));
    let builder = Arc::new(floor::server());
    loop {
        let stream = floor::accept(&listener).await;
        let (builder, pool, upstream) = (builder.clone(), pool.clone(), at.upstream);
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(req, pool.clone(), upstream));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn bad_gateway() -> Response<Answer> {
    let mut bad = Response::new(Either::Right(Empty::new()));
    *bad.status_mut() = StatusCode::BAD_GATEWAY;
    bad
}

async fn forward(
    req: Request<Incoming>,
    pool: Pool,
    upstream: SocketAddr,
) -> Result<Response<Answer>, Infallible> {
    Ok(exchange(req, pool, upstream)
        .await
        .unwrap_or_else(bad_gateway))
}

/// The request (head only: the benchmark sends GETs) over a pooled or new connection, and the
/// answer's head; its body streams from the connection as the client reads it.
async fn exchange(
    req: Request<Incoming>,
    pool: Pool,
    upstream: SocketAddr,
) -> Option<Response<Answer>> {
    let pooled = pool.lock().ok()?.pop();
    let mut conn = match pooled {
        Some(conn) => conn,
        None => {
            let stream = TcpStream::connect(upstream).await.ok()?;
            stream.set_nodelay(true).ok()?;
            Conn {
                stream,
                buf: BytesMut::with_capacity(READ_SIZE),
            }
        }
    };
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    conn.stream.write_all(&head).await.ok()?;
    conn.buf.clear();
    let (status, headers, length, used) = loop {
        conn.buf.reserve(READ_SIZE);
        if conn.stream.read_buf(&mut conn.buf).await.ok()? == 0 {
            return None;
        }
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut answer = httparse::Response::new(&mut parsed);
        let used = match answer.parse(&conn.buf).ok()? {
            httparse::Status::Complete(used) => used,
            httparse::Status::Partial => continue,
        };
        let mut headers = HeaderMap::with_capacity(answer.headers.len());
        let mut length = None;
        for h in answer.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
            if name == CONTENT_LENGTH {
                length = std::str::from_utf8(h.value).ok()?.parse::<usize>().ok();
            }
            headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
        }
        break (answer.code?, headers, length?, used);
    };
    let _ = conn.buf.split_to(used);
    let mut response = Response::new(Either::Left(Streamed {
        conn: Some(conn),
        remaining: length,
        pool,
    }));
    *response.status_mut() = StatusCode::from_u16(status).ok()?;
    *response.headers_mut() = headers;
    Some(response)
}

/// An answer's body read from its connection by the client's task; the connection goes back
/// to the pool when the last byte has been read.
struct Streamed {
    conn: Option<Conn>,
    remaining: usize,
    pool: Pool,
}

impl Streamed {
    fn release(&mut self) {
        if let (Some(conn), Ok(mut pool)) = (self.conn.take(), self.pool.lock()) {
            pool.push(conn);
        }
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            this.release();
            return Poll::Ready(None);
        }
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if conn.buf.is_empty() {
            conn.buf.reserve(READ_SIZE);
            let stream = Pin::new(&mut conn.stream);
            match tokio_util::io::poll_read_buf(stream, cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(std::io::ErrorKind::UnexpectedEof.into())));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
        let take = conn.buf.len().min(this.remaining);
        let chunk = conn.buf.split_to(take).freeze();
        this.remaining -= take;
        if this.remaining == 0 {
            this.release();
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining as u64)
    }
}

impl Drop for Streamed {
    /// hyper stops reading a body whose length is reached: the connection is reusable then.
    fn drop(&mut self) {
        if self.remaining == 0 {
            self.release();
        }
    }
}
