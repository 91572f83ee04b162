//! The client side of our HTTP/1 engine: one task per connection reads each request head
//! straight from the connection's buffer (`httparse`; values sliced, names' case kept), hands
//! the request to the pipeline, and writes its answer — framed by its length, chunked, or
//! until close — before it reads the next head. A request's body is read by whoever polls it
//! ([`Reader`]: the upstream exchange, from the request's own task), and the connection's
//! reading side comes back when the body ended; a body left unread ends the connection
//! (RELIABILITY 12). A connection that opens with HTTP/2's preface is handed to hyper's HTTP/2
//! server, the bytes read so far first ([`Rewind`]).
//!
//! The deadlines are the connection's [`crate::listen`] `ConnIo`'s.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf};
use tokio::sync::{oneshot, watch, Notify};

use super::{content_length, Case, Decoder, Framing, ReadSide};
use crate::body::{Body, Inbound};

/// The largest number of header lines a head is parsed with, whatever the limit says.
const HEADER_SLOTS: usize = 256;

/// Answer bytes gathered before a write.
const WRITE_BATCH: usize = 64 * 1024;

/// Body frames smaller than this are copied into the gathered bytes; larger ones are written
/// from their own buffer (with what was gathered, in one vectored write).
const COPY_BELOW: usize = 16 * 1024;

/// What the server needs of its connection.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The limits a head is read with.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_headers: usize,
    /// The most a head may take in the buffer (431 past it).
    pub max_head_bytes: usize,
    /// While draining, how long a connection may stay idle before it is closed: a client's
    /// next request on it is answered (with `Connection: close`) rather than raced by a close.
    pub drain_idle: std::time::Duration,
}

/// A connection upgraded by a `101` answer: its stream, and what was read past the head.
pub struct Upgraded {
    pub io: Box<dyn Io>,
    pub read_ahead: Bytes,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("read_ahead", &self.read_ahead.len())
            .finish_non_exhaustive()
    }
}

/// In a request's extensions when it asks to upgrade: the connection, once a `101` was written
/// (extensions are `Clone`: the first to take it has it).
#[derive(Debug, Clone)]
pub struct OnUpgrade(Arc<std::sync::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    /// The upgraded connection, once the `101` is written (`None`: taken already).
    pub fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// HTTP/2's connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Read until the first bytes tell HTTP/2's preface from an HTTP/1 request (on the first byte
/// that differs, not after 24 bytes). `None`: the connection closed (or failed) first.
pub async fn opening<T: Io>(io: &mut T, buf: &mut BytesMut) -> Option<bool> {
    loop {
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Some(false);
        }
        if n == PREFACE.len() {
            return Some(true);
        }
        buf.reserve(super::READ_SIZE);
        match tokio::io::AsyncReadExt::read_buf(io, buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The reading side of a served connection.
type Side = ReadSide<ReadHalf<Box<dyn Io>>>;

/// Serve HTTP/1 requests on `io` (`buf`: what was read of it already) until it closes, a
/// request or answer ends it, or — `shutdown` set — it is idle.
pub async fn serve<S, F>(
    io: Box<dyn Io>,
    buf: BytesMut,
    limits: HeadLimits,
    shutdown: watch::Receiver<bool>,
    mut service: S,
) where
    S: FnMut(Request<Inbound>) -> F,
    F: Future<Output = Response<Body>>,
{
    let (rd, mut wr) = tokio::io::split(io);
    let mut side = Some(ReadSide { io: rd, buf });
    // The answers' heads (and small bodies) are gathered here, one buffer per connection, as
    // large as they needed.
    let mut out = BytesMut::new();
    // Registered with the drain signal once per connection: a registration per request (a
    // `changed()` each time) was a lock on a channel every worker shares.
    let mut drain_begun = Box::pin(drain_begun(shutdown));
    let mut draining = false;
    loop {
        let Some(mut s) = side.take() else {
            return;
        };
        // Idle for `drain_idle` once the drain began: closed (a head begun is read and
        // answered, with `Connection: close`). A head read cut short by the drain's start
        // keeps its bytes in the buffer.
        let mut head = None;
        if s.buf.is_empty() && !draining {
            tokio::select! {
                biased;
                read = read_head(&mut s, limits) => head = Some(read),
                () = &mut drain_begun => draining = true,
            }
        }
        let head = match head {
            Some(read) => read,
            None if draining && s.buf.is_empty() => tokio::select! {
                biased;
                read = read_head(&mut s, limits) => read,
                () = tokio::time::sleep(limits.drain_idle) => return,
            },
            None => read_head(&mut s, limits).await,
        };
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err((status, reason)) => {
                let resp = crate::pipeline::refuse(Version::HTTP_11, status, reason);
                let _ = write_answer(&mut wr, &mut out, resp, &Written::refusal()).await;
                let _ = wr.shutdown().await;
                return;
            }
        };
        let Parsed {
            request,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
        } = head;
        let written = Written {
            head_only: request.method() == Method::HEAD,
            version: request.version(),
            keep_alive,
            trailers: takes_trailers(request.headers()),
        };
        let continue_wanted = expect_continue.then(|| Arc::new(Notify::new()));
        let (parts, ()) = request.into_parts();
        let mut back_rx = None;
        let body = if framing == Framing::Empty {
            side = Some(s);
            Inbound::Empty
        } else {
            let (back_tx, rx) = oneshot::channel();
            back_rx = Some(rx);
            Inbound::Request(Box::new(Reader {
                side: Some(s),
                decoder: Decoder::new(framing),
                back: Some(back_tx),
                continue_wanted: continue_wanted.clone(),
            }))
        };
        let mut request = Request::from_parts(parts, body);
        let upgraded = upgrade.then(|| {
            let (tx, rx) = oneshot::channel();
            request
                .extensions_mut()
                .insert(OnUpgrade(Arc::new(std::sync::Mutex::new(Some(rx)))));
            tx
        });
        // Pinned where it is built: the pipeline's future is large, and moved whole (into a
        // box, as it was) it cost a copy and an allocation per request (callgrind: memcpy).
        let mut answer = std::pin::pin!(service(request));
        let resp = loop {
            let Some(wanted) = continue_wanted.as_ref() else {
                break answer.await;
            };
            tokio::select! {
                resp = &mut answer => break resp,
                () = wanted.notified() => {
                    if wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            }
        };
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let keep = match write_answer(&mut wr, &mut out, resp, &written).await {
            Ok(keep) => keep,
            Err(_) => return,
        };
        if let Some(back) = back_rx {
            // The body's reader gives the reading side back when the body ended.
            side = back.await.ok();
        }
        if switching {
            if let (Some(tx), Some(s)) = (upgraded, side.take()) {
                let ReadSide { io: rd, buf } = s;
                let _ = tx.send(Upgraded {
                    io: rd.unsplit(wr),
                    read_ahead: buf.freeze(),
                });
            }
            return;
        }
        if !keep {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

/// Resolves once the drain began (`shutdown` set); never if its sender is gone.
async fn drain_begun(mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A request head and what it says of its connection.
struct Parsed {
    request: Request<()>,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
}

/// The refusal a head gets: status and reason.
type Refusal = (u16, &'static str);

/// Read the next head (`None`: the connection closed between requests, or failed).
async fn read_head(s: &mut Side, limits: HeadLimits) -> Result<Option<Parsed>, Refusal> {
    loop {
        if !s.buf.is_empty() {
            if let Some(parsed) = parse_request(&mut s.buf, limits)? {
                return Ok(Some(parsed));
            }
            if s.buf.len() > limits.max_head_bytes {
                return Err(if s.buf.windows(2).any(|w| w == b"\r\n") {
                    (431, "request header fields too large")
                } else {
                    (414, "request target too long")
                });
            }
        }
        match poll_fn(|cx| s.poll_fill(cx)).await {
            Ok(0) if s.buf.is_empty() => return Ok(None),
            Ok(0) => return Err((400, "the connection ended inside a request head")),
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Parse a request head from the front of `buf`, taking it out, if it is all there.
fn parse_request(buf: &mut BytesMut, limits: HeadLimits) -> Result<Option<Parsed>, Refusal> {
    const BAD: Refusal = (400, "malformed request");
    const BARE: Refusal = (400, "bare CR or LF in the request head");
    // Empty lines before a request line are skipped (RFC 9112 §2.2).
    while buf.starts_with(b"\r\n") {
        let _ = buf.split_to(2);
    }
    let head = match super::take_head(buf) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(None),
        Err(_) => return Err(BARE),
    };
    if super::has_bare_line_ending(&head) {
        return Err(BARE);
    }
    let mut slots = super::header_slots::<HEADER_SLOTS>();
    let slots = &mut slots[..limits.max_headers.clamp(1, HEADER_SLOTS)];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(&head, slots) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(BAD),
        Err(httparse::Error::TooManyHeaders) => return Err((431, "too many header fields")),
        Err(httparse::Error::Version) => return Err((505, "HTTP version not supported")),
        Err(_) => return Err(BAD),
    }
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes()).map_err(|_| BAD)?;
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err((505, "HTTP version not supported")),
    };
    let target = req.path.unwrap_or_default().as_bytes();
    let uri = http::Uri::from_maybe_shared(head.slice_ref(target))
        .map_err(|_| (400, "malformed request target"))?;
    let (headers, case, seen) = super::headers_from(&head, req.headers).map_err(|_| BAD)?;
    let te = if seen.transfer_encoding {
        super::chunked(&headers)
    } else {
        Ok(None)
    };
    let framing = match te {
        Err(_) | Ok(Some(false)) => return Err((400, "bad transfer-encoding")),
        Ok(Some(true)) if version == Version::HTTP_10 => {
            return Err((400, "transfer-encoding on HTTP/1.0"))
        }
        Ok(Some(true)) => Framing::Chunked,
        Ok(None) if !seen.content_length => Framing::Empty,
        Ok(None) => match content_length(&headers) {
            Err(_) => return Err((400, "bad content-length")),
            Ok(Some(n)) => Framing::Length(n),
            Ok(None) => Framing::Empty,
        },
    };
    let tokens = if seen.connection {
        connection_tokens(&headers)
    } else {
        ConnectionTokens::default()
    };
    let keep_alive = match version {
        Version::HTTP_10 => tokens.keep_alive,
        _ => !tokens.close,
    };
    let expect_continue = version == Version::HTTP_11
        && framing != Framing::Empty
        && seen.expect
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let upgrade = version == Version::HTTP_11 && tokens.upgrade && seen.upgrade;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    if !case.is_empty() {
        request.extensions_mut().insert(case);
    }
    Ok(Some(Parsed {
        request,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    }))
}

/// What the `Connection` header says.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
}

fn connection_tokens(headers: &http::HeaderMap) -> ConnectionTokens {
    let mut tokens = ConnectionTokens::default();
    for value in headers.get_all(header::CONNECTION) {
        for t in value.as_bytes().split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") {
                tokens.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                tokens.keep_alive = true;
            } else if t.eq_ignore_ascii_case(b"upgrade") {
                tokens.upgrade = true;
            }
        }
    }
    tokens
}

/// `TE: trailers`: the client takes trailers in a chunked answer.
fn takes_trailers(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

/// What the answer is written for.
struct Written {
    head_only: bool,
    version: Version,
    keep_alive: bool,
    trailers: bool,
}

impl Written {
    /// The proxy's refusal of a head it could not read: the connection ends after it.
    fn refusal() -> Self {
        Written {
            head_only: false,
            version: Version::HTTP_11,
            keep_alive: false,
            trailers: false,
        }
    }
}

/// Write `resp`: its head, then its body framed by its length, chunked (HTTP/1.1) or until
/// the connection closes (HTTP/1.0). `Ok(true)`: the connection may carry another request.
async fn write_answer<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    resp: Response<Body>,
    to: &Written,
) -> io::Result<bool> {
    out.clear();
    let (mut parts, mut body) = resp.into_parts();
    let status = parts.status;
    let headers = &mut parts.headers;
    let mut keep = to.keep_alive && !super::client::connection_close(headers);
    let no_body = to.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    headers.remove(header::TRANSFER_ENCODING);
    let framing = if no_body {
        Framing::Empty
    } else if let Ok(Some(n)) = content_length(headers) {
        Framing::Length(n)
    } else {
        headers.remove(header::CONTENT_LENGTH);
        if body.is_end_stream() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            Framing::Empty
        } else if let Some(n) = body.size_hint().exact() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            Framing::Length(n)
        } else if to.version == Version::HTTP_11 {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Framing::Chunked
        } else {
            keep = false;
            Framing::Close
        }
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        keep = false;
    } else if !keep && to.version == Version::HTTP_11 && !headers.contains_key(header::CONNECTION) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if keep && to.version == Version::HTTP_10 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, date());
    }
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    super::write_headers(out, headers, parts.extensions.get::<Case>());
    out.put_slice(b"\r\n");
    if framing == Framing::Empty {
        wr.write_all(out).await?;
        wr.flush().await?;
        return Ok(keep);
    }
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    loop {
        // Take what the body has ready; write when it has nothing more at once.
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(Next::Write),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Next::Frame(frame)),
        })
        .await;
        let frame = match next {
            Next::Write => {
                wr.write_all(out).await?;
                wr.flush().await?;
                out.clear();
                continue;
            }
            Next::Frame(frame) => frame,
        };
        match frame {
            None => {
                if framing == Framing::Chunked {
                    super::encode_last_chunk(out, None);
                }
                if left.is_some_and(|n| n > 0) {
                    // Shorter than its length: the client must see it cut.
                    wr.write_all(out).await?;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "answer cut short",
                    ));
                }
                break;
            }
            Some(Err(_)) => {
                // The backend broke off: the answer is cut, never completed.
                wr.write_all(out).await?;
                let _ = wr.flush().await;
                return Err(io::Error::other("answer broken off"));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let data = match left.as_mut() {
                        Some(n) => {
                            let take = usize::try_from(*n).unwrap_or(usize::MAX).min(data.len());
                            *n -= take as u64;
                            data.slice(..take)
                        }
                        None => data,
                    };
                    if data.len() < COPY_BELOW {
                        if framing == Framing::Chunked {
                            super::encode_chunk(out, &data);
                        } else {
                            out.put_slice(&data);
                        }
                    } else {
                        // Large: written from where it is, after what is gathered.
                        if framing == Framing::Chunked {
                            out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        }
                        write_two(wr, out, &data).await?;
                        out.clear();
                        if framing == Framing::Chunked {
                            out.put_slice(b"\r\n");
                        }
                    }
                }
                Err(frame) => {
                    if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), framing) {
                        super::encode_last_chunk(out, to.trailers.then_some(&trailers));
                        wr.write_all(out).await?;
                        wr.flush().await?;
                        return Ok(keep);
                    }
                }
            },
        }
        if out.len() >= WRITE_BATCH {
            wr.write_all(out).await?;
            out.clear();
        }
    }
    wr.write_all(out).await?;
    wr.flush().await?;
    Ok(keep)
}

enum Next {
    Write,
    Frame(Option<Result<Frame<Bytes>, crate::body::Broken>>),
}

/// Write `first` then `second` with as few calls as the stream allows.
async fn write_two<W: AsyncWrite + Unpin>(
    wr: &mut W,
    first: &mut BytesMut,
    second: &Bytes,
) -> io::Result<()> {
    let mut second = second.clone();
    while !first.is_empty() {
        let n = {
            let slices = [io::IoSlice::new(first), io::IoSlice::new(&second)];
            wr.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_first = n.min(first.len());
        let _ = first.split_to(from_first);
        let _ = second.split_to((n - from_first).min(second.len()));
    }
    wr.write_all(&second).await
}

/// The `Date` header's value, made once a second per thread.
fn date() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_none() {
            let text = httpdate::fmt_http_date(now);
            c.1 = HeaderValue::from_str(&text).ok();
            c.0 = secs;
        }
        c.1.clone()
            .unwrap_or_else(|| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
    })
}

/// A request's body, read from its client connection by the task that polls it; the reading
/// side goes back to the connection when the body ended.
pub struct Reader {
    side: Option<Side>,
    decoder: Decoder,
    back: Option<oneshot::Sender<Side>>,
    /// `Expect: 100-continue`: the connection writes `100 Continue` when the body is first
    /// wanted.
    continue_wanted: Option<Arc<Notify>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl Reader {
    fn give_back(&mut self) {
        if let (Some(side), Some(back)) = (self.side.take(), self.back.take()) {
            let _ = back.send(side);
        }
    }
}

impl hyper::body::Body for Reader {
    type Data = Bytes;
    type Error = super::BodyFault;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::BodyFault>>> {
        let this = &mut *self;
        let Some(side) = this.side.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(wanted) = this.continue_wanted.take() {
            if side.buf.is_empty() {
                wanted.notify_one();
            }
        }
        let polled = this.decoder.poll_frame(cx, side);
        match this.decoder.settled(&polled) {
            super::Settled::Failed => {
                this.side = None;
                this.back = None;
            }
            super::Settled::Ended => this.give_back(),
            super::Settled::Reading => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.side.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.decoder.is_done() {
            self.give_back();
        }
    }
}

/// A stream that yields `prefix` before what it reads itself: bytes read to decide a
/// connection's protocol, or past an upgrade's head.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_headers: 4,
        max_head_bytes: 1024,
        drain_idle: std::time::Duration::from_secs(1),
    };

    fn parse(bytes: &[u8]) -> (Result<Option<Parsed>, Refusal>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let parsed = parse_request(&mut buf, LIMITS);
        (parsed, buf)
    }

    #[test]
    fn reads_pipelined_heads_one_at_a_time() {
        let (first, rest) =
            parse(b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
        let first = first.unwrap().expect("the first head");
        assert_eq!(first.request.uri(), "/a");
        assert_eq!(first.framing, Framing::Empty);
        assert!(first.keep_alive);
        let (second, body) = parse(&rest);
        let second = second.unwrap().expect("the second head");
        assert_eq!(second.request.method(), Method::POST);
        assert_eq!(second.framing, Framing::Length(2));
        assert_eq!(&body[..], b"hi", "the body stays for its reader");
    }

    #[test]
    fn refuses_what_a_strict_parser_refuses() {
        let cases: [(&[u8], u16); 7] = [
            (b"GET / HTTP/1.1\nHost: x\n\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\rY: 1\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
                431,
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        ];
        for (bytes, status) in cases {
            match parse(bytes).0 {
                Err((got, _)) => assert_eq!(got, status, "{:?}", String::from_utf8_lossy(bytes)),
                Ok(_) => panic!("accepted {:?}", String::from_utf8_lossy(bytes)),
            }
        }
    }

    #[test]
    fn keep_alive_expect_and_upgrade_come_from_the_head() {
        let (old, _) = parse(b"GET / HTTP/1.0\r\n\r\n");
        assert!(
            !old.unwrap().unwrap().keep_alive,
            "HTTP/1.0 closes by default"
        );
        let (old, _) = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(old.unwrap().unwrap().keep_alive);
        let (close, _) = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!close.unwrap().unwrap().keep_alive);
        let (expect, _) =
            parse(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        assert!(expect.unwrap().unwrap().expect_continue);
        let (ws, _) = parse(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(ws.unwrap().unwrap().upgrade);
    }

    /// The answer is framed by its length, chunked when it has none, and a HEAD's carries no
    /// body; header names keep the case they came in.
    #[tokio::test]
    async fn writes_answers_framed_as_the_client_can_read_them() {
        let written = |head_only, version| Written {
            head_only,
            version,
            keep_alive: true,
            trailers: false,
        };
        let mut out = BytesMut::new();
        let mut wire = Vec::new();
        let resp = Response::new(Body::full(Bytes::from_static(b"hello")));
        let keep = write_answer(&mut wire, &mut out, resp, &written(false, Version::HTTP_11))
            .await
            .unwrap();
        let text = String::from_utf8(wire).unwrap();
        assert!(keep);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.contains("content-length: 5\r\n") && text.ends_with("\r\n\r\nhello"),
            "{text}"
        );

        let mut wire = Vec::new();
        let resp = Response::new(Body::full(Bytes::from_static(b"hello")));
        write_answer(&mut wire, &mut out, resp, &written(true, Version::HTTP_11))
            .await
            .unwrap();
        assert!(
            String::from_utf8(wire).unwrap().ends_with("\r\n\r\n"),
            "no body to a HEAD"
        );

        let mut wire = Vec::new();
        let resp = Response::new(Body::full(Bytes::from_static(b"old")));
        let keep = write_answer(&mut wire, &mut out, resp, &written(false, Version::HTTP_10))
            .await
            .unwrap();
        let text = String::from_utf8(wire).unwrap();
        assert!(
            keep && text.contains("connection: keep-alive\r\n"),
            "{text}"
        );
    }
}

/// Property-based fuzzing of the engine's request heads, end to end through [`serve`]:
/// pipelined requests cut into reads anywhere. Cases per property: `PROPTEST_CASES` (256 by
/// default, 50,000 in `make fuzz`).
#[cfg(test)]
mod fuzz {
    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use proptest::sample::select;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::fuzzing::cases;
    use crate::h1::fuzz::pieces;

    const LIMITS: HeadLimits = HeadLimits {
        max_headers: 16,
        max_head_bytes: 4096,
        drain_idle: std::time::Duration::from_secs(1),
    };

    /// A valid request: its head, its body (by length or chunked), and what its answer says.
    #[derive(Debug, Clone)]
    struct Sent {
        head: Vec<u8>,
        body: Vec<u8>,
        answer: String,
    }

    fn request() -> impl Strategy<Value = Sent> {
        let header = (
            select(vec!["X-A", "x-b", "Accept", "USER-agent", "x-Trace"]),
            "[a-zA-Z0-9 ;=,/]{0,12}",
        );
        (
            0u32..1000,
            select(vec!["GET", "POST", "PUT"]),
            prop::collection::vec(header, 0..4),
            prop::collection::vec(any::<u8>(), 0..64),
            any::<bool>(),
        )
            .prop_map(|(n, method, headers, data, chunked)| {
                let mut head = format!("{method} /r{n} HTTP/1.1\r\n");
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                let data = if method == "GET" { Vec::new() } else { data };
                let mut body = Vec::new();
                if method != "GET" && chunked {
                    head.push_str("Transfer-Encoding: chunked\r\n");
                    if !data.is_empty() {
                        body.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                        body.extend_from_slice(&data);
                        body.extend_from_slice(b"\r\n");
                    }
                    body.extend_from_slice(b"0\r\n\r\n");
                } else if method != "GET" {
                    head.push_str(&format!("Content-Length: {}\r\n", data.len()));
                    body = data.clone();
                }
                head.push_str("\r\n");
                Sent {
                    head: head.into_bytes(),
                    body,
                    answer: format!("<r{n}={}>", data.len()),
                }
            })
    }

    /// Serve `wire`, cut into reads at `cuts`, then the client's end of stream; what the
    /// engine wrote back.
    fn serve_cut(wire: &[u8], cuts: &[prop::sample::Index]) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (_keep, shutdown) = watch::channel(false);
            let answer = |req: Request<Inbound>| async move {
                let path = req.uri().path().trim_start_matches('/').to_owned();
                let text = match req.into_body().collect().await {
                    Ok(body) => format!("<{path}={}>", body.to_bytes().len()),
                    Err(_) => format!("<{path}=broken>"),
                };
                Response::new(Body::full(Bytes::from(text)))
            };
            let served = serve(Box::new(server), BytesMut::new(), LIMITS, shutdown, answer);
            let (mut rd, mut wr) = tokio::io::split(client);
            let write = async {
                for piece in pieces(wire, cuts) {
                    if wr.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = wr.shutdown().await;
            };
            let read = async {
                let mut out = Vec::new();
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    rd.read_to_end(&mut out),
                )
                .await;
                out
            };
            let ((), (), out) = tokio::join!(served, write, read);
            String::from_utf8_lossy(&out).into_owned()
        })
    }

    /// The answers' bodies, in order (`<path=length>`).
    fn answers(out: &str) -> Vec<&str> {
        out.match_indices('<')
            .filter_map(|(at, _)| out[at..].find('>').map(|end| &out[at..=at + end]))
            .collect()
    }

    proptest! {
        #![proptest_config(cases())]

        /// Valid pipelined requests, with bodies by length or chunked, are each answered in
        /// order, with all of their body, however their bytes are cut into reads.
        #[test]
        fn valid_pipelined_requests_are_answered_in_order_however_they_are_read(
            sent in prop::collection::vec(request(), 1..5),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let wire: Vec<u8> = sent.iter().flat_map(|s| [s.head.clone(), s.body.clone()].concat()).collect();
            let out = serve_cut(&wire, &cuts);
            let want: Vec<&str> = sent.iter().map(|s| s.answer.as_str()).collect();
            prop_assert_eq!(answers(&out), want, "{}", out);
        }

        /// A bare CR or LF in place of one CRLF of a head's line (RELIABILITY 7) is refused
        /// (400) however the bytes are cut, after the requests before it were answered, and
        /// nothing after it is read.
        #[test]
        fn a_bare_line_ending_is_refused_however_the_head_is_read(
            sent in prop::collection::vec(request(), 1..4),
            which in any::<prop::sample::Index>(),
            line in any::<prop::sample::Index>(),
            lf in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let k = which.index(sent.len());
            let mut wire = Vec::new();
            for (i, s) in sent.iter().enumerate() {
                let mut head = s.head.clone();
                if i == k {
                    // One of the line endings before the empty line.
                    let ends: Vec<usize> = head
                        .windows(2)
                        .enumerate()
                        .filter(|(_, w)| w == b"\r\n")
                        .map(|(at, _)| at)
                        .collect();
                    let at = ends[line.index(ends.len() - 1)];
                    head.remove(if lf { at } else { at + 1 });
                }
                wire.extend_from_slice(&head);
                wire.extend_from_slice(&s.body);
            }
            let out = serve_cut(&wire, &cuts);
            let want: Vec<&str> = sent[..k].iter().map(|s| s.answer.as_str()).collect();
            prop_assert_eq!(answers(&out), want, "{}", out);
            prop_assert_eq!(out.matches("HTTP/1.1 400 ").count(), 1, "{}", out);
        }
    }
}
