//! HTTP/1.1 of our own, for both sides of the proxy (issue 14; `docs/architecture.md`, "An
//! HTTP/1 engine of our own"): [`server`] reads the clients' requests and writes their answers,
//! [`client`] sends requests over the worker's pooled backend connections and reads the
//! answers. HTTP/2 (and gRPC) stay on hyper.
//!
//! What this module holds is what both sides share: heads parsed by `httparse` straight from the
//! connection's buffer (header values are slices of it, never copies), each header name's case
//! as it came ([`Case`], so a case-sensitive legacy backend or client sees what the other side
//! sent), and the body decoder — `Content-Length`, chunked (strict: RELIABILITY 6–9), or until
//! the connection closes — with trailers.

pub mod client;
pub mod server;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use hyper::body::{Frame, SizeHint};
use tokio::io::AsyncRead;

/// Room made in a connection's buffer before a read: a head and a small body fit (a larger
/// body's reads get more room, up to [`MAX_READ_SIZE`]; an answer's first read as much as the
/// last answer took). Each connection, client side and backend side, holds one such buffer
/// while idle: with 4 KiB instead of 8 (and the answer buffer grown only as needed) 1,000
/// connections peaked at 38.9–39.4 MiB in `make bench` instead of 43.0; with 2 KiB at 32.7–33.0
/// MiB instead of 37.7–38.2 (the crowd alone, after a 64 and a 256 KiB phase, two runs each),
/// CPU per request unchanged at 1 and 64 KiB (interleaved A/B: 12.43 vs 12.39 µs, 22.84 vs
/// 22.87) and still one read per head and per 1 KiB answer (perf stat: 2 recvfrom a request).
pub(crate) const READ_SIZE: usize = 2 * 1024;

/// The most room made for one read of a body whose length says more is coming: fewer reads
/// and fewer, larger frames for large bodies (a buffer this size lives only while they pass).
pub(crate) const MAX_READ_SIZE: usize = 64 * 1024;

/// Headers a head may have when no limit is configured (answers from backends).
pub(crate) const MAX_HEADERS: usize = 128;

/// The largest chunk line (size and extensions) accepted: RELIABILITY 8's huge extensions.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// The largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// The names of a message's headers as they came on the wire, for those that are not all
/// lowercase (`http`'s names are): a slice of the head they were read from, kept as an
/// extension of the request or answer and used when the message is written on.
#[derive(Debug, Clone, Default)]
pub struct Case {
    head: Bytes,
    /// Where each such name is in `head`.
    names: Vec<(u32, u16)>,
}

impl Case {
    /// Note `name` (a slice of `head`) if it has an uppercase letter.
    fn note(&mut self, head: &Bytes, name: &[u8]) {
        if !name.iter().any(u8::is_ascii_uppercase) {
            return;
        }
        if self.head.is_empty() {
            self.head = head.clone();
        }
        let offset = name.as_ptr() as usize - head.as_ptr() as usize;
        if let (Ok(at), Ok(len)) = (u32::try_from(offset), u16::try_from(name.len())) {
            self.names.push((at, len));
        }
    }

    fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// How `name` was written, if it came with uppercase letters.
    fn of(&self, name: &HeaderName) -> Option<&[u8]> {
        let lower = name.as_str().as_bytes();
        self.names.iter().find_map(|&(at, len)| {
            let original = self.head.get(at as usize..at as usize + len as usize)?;
            original.eq_ignore_ascii_case(lower).then_some(original)
        })
    }
}

/// Write `headers` as header lines into `dst`, each name as `case` says it came.
pub(crate) fn write_headers(dst: &mut BytesMut, headers: &HeaderMap, case: Option<&Case>) {
    for (name, value) in headers {
        let written = case.and_then(|c| c.of(name));
        dst.put_slice(written.unwrap_or(name.as_str().as_bytes()));
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
}

/// Which of the headers that frame a message or steer its connection a head has, noted while
/// its headers are read: a message without one is not looked up for it (each lookup hashes).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen {
    pub content_length: bool,
    pub transfer_encoding: bool,
    pub connection: bool,
    pub expect: bool,
    pub upgrade: bool,
}

/// The headers of a parsed head, their values sliced from `head` (no copy), their case, and
/// which framing headers are among them.
pub(crate) fn headers_from(
    head: &Bytes,
    parsed: &[httparse::Header<'_>],
) -> Result<(HeaderMap, Case, Seen), Malformed> {
    use http::header;
    // Room for the headers the proxy adds (X-Forwarded-*, Via, Date): growing the map re-hashes
    // it and allocates twice.
    let mut headers = HeaderMap::with_capacity(parsed.len() + 4);
    let mut case = Case::default();
    let mut seen = Seen::default();
    for h in parsed {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value))
            .map_err(|_| Malformed("header value"))?;
        case.note(head, h.name.as_bytes());
        if name == header::CONTENT_LENGTH {
            seen.content_length = true;
        } else if name == header::TRANSFER_ENCODING {
            seen.transfer_encoding = true;
        } else if name == header::CONNECTION {
            seen.connection = true;
        } else if name == header::EXPECT {
            seen.expect = true;
        } else if name == header::UPGRADE {
            seen.upgrade = true;
        }
        headers.append(name, value);
    }
    Ok((headers, case, seen))
}

/// A message that is not HTTP/1.1 as the proxy takes it; the text says what part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// `Content-Length`'s value: digits only (RELIABILITY 3), one value.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Malformed> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Malformed("content-length (more than one)"));
    }
    let digits = first.as_bytes();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Malformed("content-length"));
    }
    digits
        .iter()
        .try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .map(Some)
        .ok_or(Malformed("content-length"))
}

/// Whether the `Transfer-Encoding` header is there, and if so whether its last coding is
/// `chunked` with no other `chunked` before it (RELIABILITY 4, 5).
pub(crate) fn chunked(headers: &HeaderMap) -> Result<Option<bool>, Malformed> {
    let mut codings = Vec::new();
    let mut any = false;
    for value in headers.get_all(http::header::TRANSFER_ENCODING) {
        any = true;
        for coding in value.as_bytes().split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                return Err(Malformed("transfer-encoding"));
            }
            codings.push(coding.eq_ignore_ascii_case(b"chunked"));
        }
    }
    if !any {
        return Ok(None);
    }
    match codings.split_last() {
        Some((&last, rest)) if !rest.contains(&true) => Ok(Some(last)),
        _ => Err(Malformed("transfer-encoding")),
    }
}

/// A connection's reading side: its stream and the bytes read past the last message.
#[derive(Debug)]
pub struct ReadSide<R> {
    pub io: R,
    pub buf: BytesMut,
}

impl<R: AsyncRead + Unpin> ReadSide<R> {
    /// Read more into the buffer: `Ok(0)` at the end of the stream.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.poll_fill_for(cx, READ_SIZE as u64)
    }

    /// Read more, with room for `want` bytes (within [`READ_SIZE`]..[`MAX_READ_SIZE`]).
    pub(crate) fn poll_fill_for(
        &mut self,
        cx: &mut Context<'_>,
        want: u64,
    ) -> Poll<io::Result<usize>> {
        let room = usize::try_from(want)
            .unwrap_or(MAX_READ_SIZE)
            .clamp(READ_SIZE, MAX_READ_SIZE);
        self.poll_fill_room(cx, room)
    }

    /// Read more into `room` bytes. A read of at most [`READ_SIZE`] takes the buffer's spare
    /// room when it has half of that (no new allocation per small message); a larger one is
    /// known to be needed whole (the rest of a body, an answer as large as the last one), and
    /// gets it all, so the message comes in one read.
    pub(crate) fn poll_fill_room(
        &mut self,
        cx: &mut Context<'_>,
        room: usize,
    ) -> Poll<io::Result<usize>> {
        let enough = if room > READ_SIZE {
            room
        } else {
            room.min(1024).max(room / 2)
        };
        if self.buf.capacity() - self.buf.len() < enough {
            self.buf.reserve(room);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// How a body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (or it ended).
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (an answer with neither length nor chunks).
    Close,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk size's digits (`digits` so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// In a chunk extension, after `;` (`len` bytes of its line so far).
    Extension {
        len: usize,
    },
    /// A CR was read after the size line: an LF must follow.
    SizeLf,
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: the trailer section (its bytes are gathered in the buffer).
    Trailers,
    Done,
}

/// A body's decoder: yields its data as slices of the connection's buffer, then its trailers.
#[derive(Debug)]
pub struct Decoder {
    framing: Framing,
    chunk: Chunk,
    /// Trailers decoded, to be yielded as the last frame.
    trailers: Option<HeaderMap>,
    /// The size of the chunk whose line is being read.
    size: Option<u64>,
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyFault {
    /// The connection ended (or failed) before the body did.
    Io(io::Error),
    /// The chunked framing is wrong.
    Framing(Malformed),
}

impl fmt::Display for BodyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyFault::Io(e) => write!(f, "body cut off: {e}"),
            BodyFault::Framing(m) => write!(f, "body framing: {m}"),
        }
    }
}

impl std::error::Error for BodyFault {}

/// See [`Decoder::settled`].
pub(crate) enum Settled {
    Reading,
    Ended,
    Failed,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let framing = match framing {
            Framing::Length(0) => Framing::Empty,
            f => f,
        };
        Decoder {
            framing,
            chunk: Chunk::Size { size: 0, digits: 0 },
            trailers: None,
            size: None,
        }
    }

    /// The body ended (its last frame was yielded).
    pub fn is_done(&self) -> bool {
        self.framing == Framing::Empty && self.trailers.is_none()
    }

    /// Where a body's reader stands after `polled`, this decoder's last [`Decoder::poll_frame`]:
    /// its connection is handed on once the body ended cleanly, and dropped when it failed.
    pub(crate) fn settled<T>(&self, polled: &Poll<Option<Result<T, BodyFault>>>) -> Settled {
        match polled {
            Poll::Ready(Some(Err(_))) => Settled::Failed,
            Poll::Ready(None) => Settled::Ended,
            Poll::Ready(Some(Ok(_))) if self.is_done() => Settled::Ended,
            _ => Settled::Reading,
        }
    }

    /// What is left, when it is known.
    pub fn remaining(&self) -> Option<u64> {
        match self.framing {
            Framing::Empty => Some(0),
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }

    /// The next frame, reading from `side` as needed; `None` once the body ended.
    pub fn poll_frame<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        side: &mut ReadSide<R>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        loop {
            match self.framing {
                Framing::Empty => {
                    return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
                }
                Framing::Length(left) => {
                    if side.buf.is_empty() {
                        if let Err(fault) = ready!(self.poll_more(cx, side, left)) {
                            return Poll::Ready(Some(Err(fault)));
                        }
                    }
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(side.buf.len());
                    let data = side.buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.framing = if left == 0 {
                        Framing::Empty
                    } else {
                        Framing::Length(left)
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {
                    if side.buf.is_empty() {
                        match ready!(side.poll_fill(cx)) {
                            // The end of the stream is the end of such a body.
                            Ok(0) => {
                                self.framing = Framing::Empty;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(self.cut(e)))),
                        }
                    }
                    let data = side.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked => {
                    match self.decode_chunked(&mut side.buf) {
                        Err(m) => {
                            self.framing = Framing::Empty;
                            return Poll::Ready(Some(Err(BodyFault::Framing(m))));
                        }
                        Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(None) if self.chunk == Chunk::Done => {
                            self.framing = Framing::Empty;
                            continue;
                        }
                        Ok(None) => {}
                    }
                    if let Err(fault) = ready!(self.poll_more(cx, side, READ_SIZE as u64)) {
                        return Poll::Ready(Some(Err(fault)));
                    }
                }
            }
        }
    }

    /// Read more of the body into `side`'s buffer (room for `want` bytes); the end of the
    /// stream before the body's end is a fault.
    fn poll_more<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        side: &mut ReadSide<R>,
        want: u64,
    ) -> Poll<Result<(), BodyFault>> {
        Poll::Ready(match ready!(side.poll_fill_for(cx, want)) {
            Ok(0) => Err(self.cut(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => Ok(()),
            Err(e) => Err(self.cut(e)),
        })
    }

    /// The body ends here, cut off by `e`.
    fn cut(&mut self, e: io::Error) -> BodyFault {
        self.framing = Framing::Empty;
        BodyFault::Io(e)
    }

    /// What is left, as a body's size hint.
    pub fn size_hint(&self) -> SizeHint {
        match self.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }

    /// Decode what `buf` holds: a chunk's data (as a slice of it), or `None` when more bytes
    /// are needed (or the body ended: `self.chunk` is `Done`).
    fn decode_chunked(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Malformed> {
        loop {
            if self.chunk == Chunk::Trailers {
                return self.decode_trailers(buf).map(|()| None);
            }
            if self.chunk == Chunk::Done {
                return Ok(None);
            }
            if let Chunk::Data { left } = self.chunk {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(take).freeze();
                let left = left - take as u64;
                self.chunk = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data { left }
                };
                return Ok(Some(data));
            }
            let Some(&b) = buf.first() else {
                return Ok(None);
            };
            buf.advance(1);
            self.chunk = match (self.chunk, b) {
                (Chunk::Size { size, digits }, _) if b.is_ascii_hexdigit() => {
                    if digits >= 16 {
                        return Err(Malformed("chunk size (too large)"));
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    Chunk::Size {
                        size: (size << 4) | u64::from(d),
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { digits: 0, .. }, _) => return Err(Malformed("chunk size")),
                (Chunk::Size { size, .. }, b'\r') => {
                    self.pending_size(size);
                    Chunk::SizeLf
                }
                (Chunk::Size { size, .. }, b';') => {
                    self.pending_size(size);
                    Chunk::Extension { len: 0 }
                }
                (Chunk::Size { .. }, _) => return Err(Malformed("chunk size")),
                (Chunk::Extension { .. }, b'\r') => Chunk::SizeLf,
                (Chunk::Extension { .. }, b'\n') => return Err(Malformed("chunk extension")),
                (Chunk::Extension { len }, _) => {
                    if len >= MAX_CHUNK_LINE || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(Malformed("chunk extension"));
                    }
                    Chunk::Extension { len: len + 1 }
                }
                (Chunk::SizeLf, b'\n') => match self.size.take() {
                    Some(0) | None => Chunk::Trailers,
                    Some(n) => Chunk::Data { left: n },
                },
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
                _ => return Err(Malformed("chunk line ending")),
            };
        }
    }

    fn pending_size(&mut self, size: u64) {
        self.size = Some(size);
    }

    /// The trailer section, whole in `buf`: `Ok(())` with `self.chunk` `Done` once read (its
    /// headers kept for the last frame), or still `Trailers` when more bytes are needed.
    fn decode_trailers(&mut self, buf: &mut BytesMut) -> Result<(), Malformed> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.chunk = Chunk::Done;
            return Ok(());
        }
        let Some(end) = find_head_end(buf) else {
            if buf.len() > MAX_TRAILERS {
                return Err(Malformed("trailers (too large)"));
            }
            if buf.first() == Some(&b'\n') {
                return Err(Malformed("trailer line ending"));
            }
            return Ok(());
        };
        let section = buf.split_to(end).freeze();
        if has_bare_line_ending(&section) {
            return Err(Malformed("trailer line ending"));
        }
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(&section, &mut parsed) {
            Ok(httparse::Status::Complete((_, parsed))) => {
                let (trailers, _, _) = headers_from(&section, parsed)?;
                if !trailers.is_empty() {
                    self.trailers = Some(trailers);
                }
                self.chunk = Chunk::Done;
                Ok(())
            }
            _ => Err(Malformed("trailers")),
        }
    }
}

/// Where a head (or trailer section) ends: just past its empty line.
pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    // Built once: `memmem::find` builds its searcher on every call (a third of its cost here).
    static END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    END.find(buf).map(|at| at + 4)
}

/// The head at the front of `buf`, taken out whole once its empty line is there: its header
/// values are then slices of it. `Err` for a head begun with a bare LF in it (it would never
/// end with CRLF CRLF; RELIABILITY 7).
pub(crate) fn take_head(buf: &mut BytesMut) -> Result<Option<Bytes>, Malformed> {
    match find_head_end(buf) {
        Some(end) => Ok(Some(buf.split_to(end).freeze())),
        None if memchr::memchr_iter(b'\n', buf).any(|i| i == 0 || buf[i - 1] != b'\r') => {
            Err(Malformed("head (bare LF)"))
        }
        None => Ok(None),
    }
}

/// Header slots for a parse, left uninitialised (httparse fills what it uses).
pub(crate) fn header_slots<const N: usize>() -> [std::mem::MaybeUninit<httparse::Header<'static>>; N]
{
    [const { std::mem::MaybeUninit::uninit() }; N]
}

/// A CR not followed by LF, or an LF not after a CR.
pub(crate) fn has_bare_line_ending(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && prev != b'\r' {
            return true;
        }
        if b == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
            return true;
        }
        prev = b;
    }
    false
}

/// Encode one frame of a body sent chunked into `dst` (data as a chunk; trailers, or the end,
/// as the last chunk).
pub(crate) fn encode_chunk(dst: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    dst.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
    dst.put_slice(data);
    dst.put_slice(b"\r\n");
}

/// The last chunk, with `trailers` if any.
pub(crate) fn encode_last_chunk(dst: &mut BytesMut, trailers: Option<&HeaderMap>) {
    dst.put_slice(b"0\r\n");
    if let Some(t) = trailers {
        write_headers(dst, t, None);
    }
    dst.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its pieces one read at a time.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                // A piece larger than the room is handed out over several reads.
                if piece.len() > buf.remaining() {
                    let rest = piece.split_off(buf.remaining());
                    self.0.push_front(rest);
                }
                buf.put_slice(&piece);
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Decode a whole body given in `pieces`: its data, its trailers, or the first fault.
    pub(super) fn decode(
        framing: Framing,
        pieces: &[&[u8]],
    ) -> Result<(Vec<u8>, Option<HeaderMap>), String> {
        let mut side = ReadSide {
            io: Pieces(pieces.iter().map(|p| p.to_vec()).collect()),
            buf: BytesMut::new(),
        };
        let mut decoder = Decoder::new(framing);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match decoder.poll_frame(&mut cx, &mut side) {
                Poll::Ready(None) => return Ok((data, trailers)),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(e))) => return Err(e.to_string()),
                Poll::Pending => return Err("pending".into()),
            }
        }
    }

    /// Every byte its own read: the decoder keeps its place across reads.
    fn bytewise(framing: Framing, body: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), String> {
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        decode(framing, &pieces)
    }

    #[test]
    fn decodes_chunked_bodies_read_in_any_pieces() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Sum: 12\r\n\r\n";
        for result in [
            decode(Framing::Chunked, &[body]),
            bytewise(Framing::Chunked, body),
        ] {
            let (data, trailers) = result.expect("a valid chunked body");
            assert_eq!(data, b"hello, world");
            let trailers = trailers.expect("its trailer");
            assert_eq!(trailers.get("x-sum").unwrap(), "12");
        }
        let (data, trailers) = decode(Framing::Chunked, &[b"3\r\nabc\r\n0\r\n\r\n"]).unwrap();
        assert_eq!((data.as_slice(), trailers.is_none()), (&b"abc"[..], true));
    }

    /// RELIABILITY 6–9: what a lenient parser would take is refused.
    #[test]
    fn refuses_loose_chunk_framing() {
        let bad: [&[u8]; 13] = [
            b"\r\nabc\r\n0\r\n\r\n",        // empty size
            b"0x3\r\nabc\r\n0\r\n\r\n",     // 0x
            b"+3\r\nabc\r\n0\r\n\r\n",      // sign
            b" 3\r\nabc\r\n0\r\n\r\n",      // leading space
            b"3 \r\nabc\r\n0\r\n\r\n",      // trailing space
            b"10000000000000000\r\n",       // overflows u64
            b"3\nabc\r\n0\r\n\r\n",         // bare LF after the size
            b"3\r\nabc\n0\r\n\r\n",         // bare LF after the data
            b"3\r\nabcX\r\n0\r\n\r\n",      // data longer than its size
            b"3;a\rb\r\nabc\r\n0\r\n\r\n",  // CR in an extension
            b"3\r\nabc\r\n\r\n0\r\n\r\n",   // extra CRLF before the last chunk
            b"0\r\nX-A: 1\nX-B: 2\r\n\r\n", // bare LF in the trailers
            b"3;a\x01\r\nabc\r\n0\r\n\r\n", // control byte in an extension
        ];
        for body in bad {
            assert!(
                decode(Framing::Chunked, &[body]).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(body)
            );
            assert!(bytewise(Framing::Chunked, body).is_err());
        }
        let huge = format!("3;{}\r\nabc\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE + 1));
        assert!(decode(Framing::Chunked, &[huge.as_bytes()]).is_err());
    }

    #[test]
    fn a_body_cut_short_is_a_fault_and_a_close_delimited_one_ends_with_the_stream() {
        assert!(decode(Framing::Length(10), &[b"short"]).is_err());
        assert!(decode(Framing::Chunked, &[b"5\r\nhel"]).is_err());
        let (data, _) = decode(Framing::Close, &[b"all ", b"of it"]).unwrap();
        assert_eq!(data, b"all of it");
        let (data, _) = decode(Framing::Length(3), &[b"abcdef"]).unwrap();
        assert_eq!(data, b"abc", "a length's body stops at its length");
    }

    #[test]
    fn content_length_is_digits_once() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(http::header::CONTENT_LENGTH, v.parse().unwrap());
            }
            content_length(&h)
        };
        assert_eq!(with(&[]), Ok(None));
        assert_eq!(with(&["42"]), Ok(Some(42)));
        for bad in [
            &["+1"][..],
            &["0x5"],
            &["1_0"],
            &["-1"],
            &[" 5"],
            &["99999999999999999999"],
            &["5", "5"],
            &["5, 5"],
        ] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transfer_encoding_must_end_in_one_chunked() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(http::header::TRANSFER_ENCODING, v.parse().unwrap());
            }
            chunked(&h)
        };
        assert_eq!(with(&[]), Ok(None));
        assert_eq!(with(&["chunked"]), Ok(Some(true)));
        assert_eq!(with(&["gzip, chunked"]), Ok(Some(true)));
        assert_eq!(with(&["gzip"]), Ok(Some(false)));
        for bad in [
            &["chunked, chunked"][..],
            &["chunked", "chunked"],
            &[", chunked"],
            &["chunked,"],
        ] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_names_are_written_in_the_case_they_came() {
        let head = Bytes::from_static(b"X-Legacy-Answer: 1\r\nETag: v\r\ncontent-type: a\r\n\r\n");
        let mut parsed = [httparse::EMPTY_HEADER; 8];
        let (_, parsed) = match httparse::parse_headers(&head, &mut parsed) {
            Ok(httparse::Status::Complete(p)) => p,
            other => panic!("{other:?}"),
        };
        let (headers, case, _) = headers_from(&head, parsed).unwrap();
        let mut out = BytesMut::new();
        write_headers(&mut out, &headers, Some(&case));
        assert_eq!(
            &out[..],
            b"X-Legacy-Answer: 1\r\nETag: v\r\ncontent-type: a\r\n",
            "each name as it came"
        );
    }

    #[test]
    fn a_head_is_taken_whole_and_a_bare_lf_refused_before_its_end() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next"[..]);
        let head = take_head(&mut buf).unwrap().expect("a whole head");
        assert_eq!(&head[..], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(&buf[..], b"GET /next", "what follows stays");
        assert_eq!(take_head(&mut buf), Ok(None));
        let mut bare = BytesMut::from(&b"GET / HTTP/1.1\nHost: a\n"[..]);
        assert!(take_head(&mut bare).is_err());
        assert!(has_bare_line_ending(b"a\rb\r\n"));
        assert!(!has_bare_line_ending(b"a\r\nb\r\n"));
    }
}

/// Properties of the body decoder over generated bodies (`make fuzz` runs more cases).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::tests::decode;
    use super::Framing;

    use crate::fuzzing::cases;

    /// A chunked body of `chunks`, with an extension on some, and trailers.
    fn encode(chunks: &[(Vec<u8>, bool)], trailer: bool) -> Vec<u8> {
        let mut body = Vec::new();
        for (data, ext) in chunks.iter().filter(|(d, _)| !d.is_empty()) {
            body.extend_from_slice(format!("{:x}", data.len()).as_bytes());
            if *ext {
                body.extend_from_slice(b";name=value");
            }
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n");
        if trailer {
            body.extend_from_slice(b"X-Check: 1\r\n");
        }
        body.extend_from_slice(b"\r\n");
        body
    }

    pub(super) fn pieces<'b>(body: &'b [u8], cuts: &[prop::sample::Index]) -> Vec<&'b [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        at.push(0);
        at.push(body.len());
        at.sort_unstable();
        at.dedup();
        at.windows(2).map(|w| &body[w[0]..w[1]]).collect()
    }

    proptest! {
        #![proptest_config(cases())]

        /// A valid body decodes to its chunks' bytes however its bytes are cut into reads.
        #[test]
        fn a_valid_body_decodes_to_its_data_however_it_is_read(
            chunks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..40), any::<bool>()), 0..6),
            trailer in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let body = encode(&chunks, trailer);
            let want: Vec<u8> = chunks.iter().flat_map(|(d, _)| d.clone()).collect();
            let (data, trailers) = decode(Framing::Chunked, &pieces(&body, &cuts)).unwrap();
            prop_assert_eq!(data, want);
            prop_assert_eq!(trailers.is_some(), trailer);
        }

        /// Any body, a valid one with a byte changed or put in included: the same verdict
        /// (data or refusal) whole and cut into reads — never a panic.
        #[test]
        fn one_verdict_however_a_body_is_read(
            chunks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..20), any::<bool>()), 0..4),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(vec![b'\r', b'\n', b' ', b';', b'0', b'f', b'x', 0u8, 0x7f]),
            insert in any::<bool>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut body = encode(&chunks, false);
            let i = at.index(body.len());
            if insert { body.insert(i, byte) } else { body[i] = byte }
            let whole = decode(Framing::Chunked, &[&body]);
            let cut = decode(Framing::Chunked, &pieces(&body, &cuts));
            prop_assert_eq!(whole.map(|(d, _)| d).ok(), cut.map(|(d, _)| d).ok());
        }
    }
}
