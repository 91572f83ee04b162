//! The backend side of our HTTP/1 engine: one exchange over a connection taken from the
//! worker's pool by the request's own task — no connection task, no channel. The request head
//! is written at once (with the client's header case), its body streamed after it; the
//! answer's head is parsed in place from the connection's buffer while the body is still being
//! written (an early answer stops the writing); 1xx answers are skipped, at most
//! [`MAX_INFORMATIONAL`] of them (RELIABILITY 37). The answer's body is read by whoever polls
//! it ([`Reader`]), and the connection goes back to the pool when it ended cleanly.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{content_length, Case, Decoder, Framing, Malformed, ReadSide, MAX_HEADERS};
use crate::tls;
use crate::upstream::Home;

/// 1xx answers skipped before the real one; more and the answer is refused (RELIABILITY 37;
/// the time they take is bounded by `upstream_timeout` whatever their number).
pub const MAX_INFORMATIONAL: usize = 1024;

/// Body bytes gathered before a write (larger frames are written as they come).
const WRITE_BATCH: usize = 64 * 1024;

/// An HTTP/1.1 connection to a backend, idle or in an exchange.
#[derive(Debug)]
pub struct Conn {
    side: ReadSide<tls::Stream>,
    /// The request heads are written from here (one allocation per connection).
    out: BytesMut,
    /// Room made for the first read of the next answer: as large as the last answer with a
    /// length (head included, within [`ANSWER_ROOM`]), so that an answer of a size the
    /// backend keeps sending comes in one read.
    answer_room: usize,
}

/// The most room made for an answer's first read: a 64 KiB body and its head (2 KiB).
const ANSWER_ROOM: usize = super::MAX_READ_SIZE + super::READ_SIZE;

/// Why an exchange failed.
#[derive(Debug)]
pub enum Fault {
    /// Reading or writing the connection failed, or it closed before the answer's head.
    Io(io::Error),
    /// The answer is not HTTP/1.1 as the proxy takes it.
    Malformed(Malformed),
    /// The request's body failed (the client's fault: too large, too slow, broken).
    Body(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Io(e) => write!(f, "connection failed: {e}"),
            Fault::Malformed(m) => write!(f, "the answer is {m}"),
            Fault::Body(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for Fault {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Fault::Body(e) => Some(&**e),
            Fault::Io(e) => Some(e),
            Fault::Malformed(m) => Some(m),
        }
    }
}

/// An exchange that failed, with the request back when none of it reached the backend and
/// the connection was a pooled one the backend had closed: it may go on a fresh connection.
pub struct Failed<B> {
    pub fault: Fault,
    pub unsent: Option<Request<B>>,
}

impl Conn {
    pub fn new(stream: tls::Stream) -> Self {
        Conn {
            side: ReadSide {
                io: stream,
                buf: BytesMut::new(),
            },
            out: BytesMut::new(),
            answer_room: super::READ_SIZE,
        }
    }

    /// Lets go of the read buffer of a connection that waits in the pool with nothing in it.
    /// The buffer still holds the allocation the last answer was read into (up to
    /// [`ANSWER_ROOM`], shared with the chunks split off it): kept, a busy connection reads its
    /// next answer into the same memory; let go, a connection left idle after a burst of large
    /// answers does not keep them. The pool calls this for connections idle a while.
    pub fn release_buffer(&mut self) {
        if self.side.buf.is_empty() {
            self.side.buf = BytesMut::new();
        }
    }

    /// The read buffer's room (tests).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.side.buf.capacity()
    }

    /// Gives the read buffer `room` (tests: as an answer's read would).
    #[cfg(test)]
    pub(crate) fn reserve_buffer(&mut self, room: usize) {
        self.side.buf.reserve(room);
    }

    /// An idle connection is still usable: the backend neither closed it nor sent anything
    /// (a pooled connection is checked when it is taken). The check reads into one byte on the
    /// stack, not into the buffer: a byte or the end makes the connection unusable (it is
    /// dropped with what was read), and the buffer gets its room when the answer's size is
    /// known, not [`super::READ_SIZE`] ahead of it.
    pub fn is_usable(&mut self) -> bool {
        if !self.side.buf.is_empty() {
            return false;
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.side.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Send `req` and read the answer's head; its body is read from the connection by the
    /// [`Reader`] of the answer, which gives the connection to `home` when it ends cleanly.
    /// `reused`: the connection came from the pool (a failure before any byte of the answer
    /// then hands an idempotent request back when its body was not started).
    pub async fn exchange<B>(
        mut self,
        req: Request<B>,
        reused: bool,
        home: Option<Home>,
    ) -> Result<Response<Reader>, Failed<B>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (mut parts, mut body) = req.into_parts();
        parts.headers.remove(header::TE);
        let head_only = parts.method == Method::HEAD;
        let framing = request_framing(&mut parts.headers, &parts.method, &body);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.reserve(512);
        out.put_slice(parts.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        out.put_slice(b" HTTP/1.1\r\n");
        super::write_headers(&mut out, &parts.headers, parts.extensions.get::<Case>());
        out.put_slice(b"\r\n");

        let mut writing = Writing {
            out,
            framing,
            body_done: framing == Framing::Empty,
            started: false,
            flushed: false,
        };
        let mut informational = 0;
        let head = poll_fn(|cx| {
            if !writing.flushed {
                if let Err(e) = writing.poll_send(cx, &mut self.side.io, &mut body) {
                    return Poll::Ready(Err(e));
                }
            }
            loop {
                match parse_answer(&mut self.side.buf) {
                    Err(m) => return Poll::Ready(Err(Fault::Malformed(m))),
                    Ok(Some(head))
                        if head.status.is_informational()
                            && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        informational += 1;
                        if informational > MAX_INFORMATIONAL {
                            return Poll::Ready(Err(Fault::Malformed(Malformed(
                                "answer (too many 1xx answers)",
                            ))));
                        }
                        continue;
                    }
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) => {}
                }
                match ready!(self.side.poll_fill_room(cx, self.answer_room)) {
                    Ok(0) => {
                        return Poll::Ready(Err(Fault::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the backend closed the connection before answering",
                        ))))
                    }
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(Fault::Io(e))),
                }
            }
        })
        .await;
        let head = match head {
            Ok(head) => head,
            Err(fault) => {
                // A pooled connection the backend closed as the request went out: safe to send
                // again on a new one only when no byte of the body was taken and sending twice
                // is harmless (the backend may have read the head before it closed).
                let retry = reused
                    && !writing.started
                    && matches!(fault, Fault::Io(_))
                    && self.side.buf.is_empty()
                    && crate::hygiene::is_idempotent(&parts.method);
                let unsent = retry.then(|| Request::from_parts(parts, body));
                return Err(Failed { fault, unsent });
            }
        };
        // An answer before the request's end: the rest of it is never sent, so the connection
        // cannot carry another request.
        let request_done = writing.flushed;
        self.out = writing.out;
        let Answer {
            len,
            status,
            version,
            headers,
            case,
            seen,
        } = head;
        let no_body = head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let malformed = |m| Failed {
            fault: Fault::Malformed(m),
            unsent: None,
        };
        let chunked = if seen.transfer_encoding {
            super::chunked(&headers).map_err(malformed)?
        } else {
            None
        };
        let length = if seen.content_length {
            content_length(&headers).map_err(malformed)?
        } else {
            None
        };
        let framing = if no_body {
            Framing::Empty
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked,
                (Some(false), _) => Framing::Close,
                (None, Some(n)) => Framing::Length(n),
                (None, None) => Framing::Close,
            }
        };
        self.answer_room = match framing {
            Framing::Length(n) => usize::try_from(n)
                .map_or(ANSWER_ROOM, |n| n.saturating_add(len))
                .clamp(super::READ_SIZE, ANSWER_ROOM),
            _ => super::READ_SIZE,
        };
        let keep_alive = request_done
            && framing != Framing::Close
            && version == Version::HTTP_11
            && !(seen.connection && connection_close(&headers));
        let mut resp = Response::new(Reader {
            conn: Some(self),
            decoder: Decoder::new(framing),
            home: if keep_alive { home } else { None },
        });
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        if !case.is_empty() {
            resp.extensions_mut().insert(case);
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The backend switched protocols (a tunnel's: `Reader::into_upgraded`; refused
            // for any other request): what follows is not HTTP, so the connection never
            // goes back.
            resp.body_mut().home = None;
        }
        Ok(resp)
    }
}

/// Whether `Connection: close` is among the headers.
pub(crate) fn connection_close(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// How the request's body goes: its `Content-Length` if it has one, none when the body is
/// known empty, else chunked (the header added).
fn request_framing<B: Body>(headers: &mut http::HeaderMap, method: &Method, body: &B) -> Framing {
    headers.remove(header::TRANSFER_ENCODING);
    if let Ok(Some(n)) = content_length(headers) {
        return Framing::Length(n);
    }
    headers.remove(header::CONTENT_LENGTH);
    if body.is_end_stream() {
        if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        return Framing::Empty;
    }
    if let Some(n) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        return Framing::Length(n);
    }
    headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    Framing::Chunked
}

/// The request on its way out: what is still to write, and the body's progress.
struct Writing {
    out: BytesMut,
    framing: Framing,
    body_done: bool,
    /// A frame of the body was taken from it (the request can no longer be handed back).
    started: bool,
    /// All of it is written.
    flushed: bool,
}

impl Writing {
    fn poll_send<B>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut tls::Stream,
        body: &mut B,
    ) -> Result<(), Fault>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        loop {
            while !self.out.is_empty() {
                match Pin::new(&mut *io).poll_write(cx, &self.out) {
                    Poll::Ready(Ok(0)) => return Err(Fault::Io(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => self.out.advance(n),
                    Poll::Ready(Err(e)) => return Err(Fault::Io(e)),
                    Poll::Pending => return Ok(()),
                }
            }
            if self.body_done {
                match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.flushed = true,
                    Poll::Ready(Err(e)) => return Err(Fault::Io(e)),
                    Poll::Pending => {}
                }
                return Ok(());
            }
            // Gather what the body has ready, up to a batch.
            while self.out.len() < WRITE_BATCH && !self.body_done {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        self.body_done = true;
                        if self.framing == Framing::Chunked {
                            super::encode_last_chunk(&mut self.out, None);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Err(Fault::Body(e.into())),
                    Poll::Ready(Some(Ok(frame))) => {
                        self.started = true;
                        match frame.into_data() {
                            Ok(data) if self.framing == Framing::Chunked => {
                                super::encode_chunk(&mut self.out, &data);
                            }
                            Ok(data) => self.out.put_slice(&data),
                            Err(frame) => {
                                if let (Ok(trailers), Framing::Chunked) =
                                    (frame.into_trailers(), self.framing)
                                {
                                    super::encode_last_chunk(&mut self.out, Some(&trailers));
                                    self.body_done = true;
                                    self.framing = Framing::Empty;
                                }
                            }
                        }
                    }
                }
            }
            if self.out.is_empty() && !self.body_done {
                return Ok(());
            }
        }
    }
}

/// An answer's head.
struct Answer {
    /// Its length on the wire.
    len: usize,
    status: StatusCode,
    version: Version,
    headers: http::HeaderMap,
    case: Case,
    seen: super::Seen,
}

/// Parse an answer's head from the front of `buf` (taking it out), if it is all there.
fn parse_answer(buf: &mut BytesMut) -> Result<Option<Answer>, Malformed> {
    let head = match super::take_head(buf)? {
        Some(head) => head,
        None if buf.len() > 64 * 1024 => return Err(Malformed("answer head (too large)")),
        None => return Ok(None),
    };
    if super::has_bare_line_ending(&head) {
        return Err(Malformed("answer head (bare line ending)"));
    }
    let mut slots = super::header_slots::<MAX_HEADERS>();
    let mut answer = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut answer,
        &head,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Malformed("answer head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Malformed("answer head (too many headers)"))
        }
        Err(_) => return Err(Malformed("answer head")),
    }
    let version = match answer.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let status = answer
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Malformed("status"))?;
    let (headers, case, seen) = super::headers_from(&head, answer.headers)?;
    Ok(Some(Answer {
        len: head.len(),
        status,
        version,
        headers,
        case,
        seen,
    }))
}

/// An answer's body, read from its connection by the task that polls it.
#[derive(Debug)]
pub struct Reader {
    conn: Option<Conn>,
    decoder: Decoder,
    /// Where the connection goes when the body ended cleanly (`None`: closed then).
    home: Option<Home>,
}

impl Reader {
    /// After a `101`: the connection, and what the backend sent after its head.
    pub fn into_upgraded(mut self) -> Option<(tls::Stream, Bytes)> {
        let conn = self.conn.take()?;
        Some((conn.side.io, conn.side.buf.freeze()))
    }

    fn release(&mut self) {
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            home.put(conn);
        }
    }
}

impl Body for Reader {
    type Data = Bytes;
    type Error = super::BodyFault;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::BodyFault>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = this.decoder.poll_frame(cx, &mut conn.side);
        match this.decoder.settled(&polled) {
            super::Settled::Failed => this.conn = None,
            super::Settled::Ended => this.release(),
            super::Settled::Reading => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}

impl Drop for Reader {
    /// A body read to its end whose last frame was taken without another poll.
    fn drop(&mut self) {
        if self.decoder.is_done() {
            self.release();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::Conn;
    use crate::tls;

    /// A connection to a fresh listener, and the backend's end of it.
    pub(crate) async fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (backend, _) = listener.accept().await.expect("accept");
        (Conn::new(tls::Stream::Plain(client)), backend)
    }

    /// Polls `conn.is_usable()` until it says `false`, for at most 5 s (what the backend did
    /// must first reach the socket).
    async fn turns_unusable(conn: &mut Conn) -> bool {
        for _ in 0..500 {
            if !conn.is_usable() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn an_idle_connection_is_usable_and_its_check_reserves_no_buffer() {
        let (mut conn, _backend) = pair().await;
        assert!(conn.is_usable());
        assert!(conn.is_usable(), "checking twice changes nothing");
        assert_eq!(
            conn.side.buf.capacity(),
            0,
            "the check reads into the stack, not into the connection's buffer"
        );
    }

    #[tokio::test]
    async fn an_empty_buffer_is_let_go_and_one_with_bytes_is_kept() {
        let (mut conn, _backend) = pair().await;
        conn.reserve_buffer(64 * 1024);
        conn.release_buffer();
        assert_eq!(conn.buffer_capacity(), 0);
        conn.side.buf.extend_from_slice(b"HTTP/1.1");
        conn.release_buffer();
        assert_eq!(&conn.side.buf[..], b"HTTP/1.1", "bytes not read yet stay");
    }

    #[tokio::test]
    async fn a_connection_the_backend_wrote_to_or_closed_is_not_usable() {
        let (mut conn, mut backend) = pair().await;
        backend
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("write");
        assert!(turns_unusable(&mut conn).await, "unsolicited bytes");

        let (mut conn, backend) = pair().await;
        drop(backend);
        assert!(turns_unusable(&mut conn).await, "closed by the backend");
    }
}
