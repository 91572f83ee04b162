//! A gRPC test backend and client on hyper (h2c), with just enough of the wire format: the
//! 5-byte message framing and a few protobuf fields. The backend serves `test.Echo`:
//!
//! - `Unary`: one message `{1: name, 2: payload}`;
//! - `ServerStream`: as many messages `{1: name, 3: i}` as the request payload has bytes, 20 ms
//!   apart;
//! - `ClientStream`: after the client's stream ends, one message `{1: name, 3: count}`;
//! - `Bidi`: each message echoed as `{1: name, 2: payload}` as soon as it arrives;
//! - `Fail`: trailers-only, `grpc-status` from the request's `x-grpc-status` (default 14);
//! - `Slow`: answers after 2 s;
//! - `Reset`: one message, then the stream is reset.
//!
//! Every call is recorded (method, headers, messages).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// A message in gRPC's framing: uncompressed flag, big-endian length, bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(message.len()).expect("message under 4 GiB"));
    b.put_slice(message);
    b.freeze()
}

/// The messages of a gRPC body (a trailing partial frame is ignored).
pub fn messages(mut body: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + len {
            break;
        }
        out.push(Bytes::copy_from_slice(&body[5..5 + len]));
        body = &body[5 + len..];
    }
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Protobuf: field `n` as a length-delimited value (string, bytes, message).
pub fn pb_bytes(out: &mut Vec<u8>, n: u32, value: &[u8]) {
    varint(out, u64::from(n) << 3 | 2);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Protobuf: field `n` as a varint.
pub fn pb_varint(out: &mut Vec<u8>, n: u32, value: u64) {
    varint(out, u64::from(n) << 3);
    varint(out, value);
}

/// One call as the backend saw it.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    pub method: String,
    pub headers: HeaderMap,
    pub messages: Vec<Bytes>,
}

#[derive(Default)]
struct GrpcState {
    calls: Mutex<Vec<GrpcCall>>,
    served: AtomicUsize,
}

/// The `test.Echo` backend; `name` goes into every answer.
pub struct GrpcBackend {
    addr: SocketAddr,
    state: Arc<GrpcState>,
    task: JoinHandle<()>,
}

/// Options of a [`GrpcBackend`].
#[derive(Debug, Clone, Default)]
pub struct GrpcOptions {
    /// Answer this share of `Unary` calls (evenly spread) with trailers-only UNAVAILABLE.
    pub unavailable: f64,
    /// Put this in every answer's field 4 (a value that differs between backends).
    pub extra: Option<String>,
    /// `Unary` answers a message that is not protobuf (a group's wire type).
    pub malformed: bool,
}

impl GrpcBackend {
    pub async fn start(name: &'static str) -> GrpcBackend {
        GrpcBackend::with(name, GrpcOptions::default()).await
    }

    pub async fn with(name: &'static str, options: GrpcOptions) -> GrpcBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(GrpcState::default());
        let s = state.clone();
        let options = Arc::new(options);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let _ = tcp.set_nodelay(true);
                        let (s, options) = (s.clone(), options.clone());
                        conns.spawn(async move {
                            let service = service_fn(move |req| {
                                serve(name, req, s.clone(), options.clone())
                            });
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tcp), service)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        GrpcBackend { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn calls(&self) -> Vec<GrpcCall> {
        self.state.calls.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.state.calls.lock().expect("lock").len()
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response body fed from a channel of frames (an `Err` resets the stream); `None`: empty,
/// and it says so, so that a trailers-only answer ends its stream with its HEADERS frame.
pub struct ChannelBody(Option<mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match &mut self.get_mut().0 {
            Some(rx) => rx.poll_recv(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// A channel body and its sender.
pub fn channel_body() -> (
    mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    ChannelBody,
) {
    let (tx, rx) = mpsc::channel(64);
    (tx, ChannelBody(Some(rx)))
}

fn answer(name: &str, options: &GrpcOptions, f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut m = Vec::new();
    pb_bytes(&mut m, 1, name.as_bytes());
    f(&mut m);
    if let Some(extra) = &options.extra {
        pb_bytes(&mut m, 4, extra.as_bytes());
    }
    frame(&m)
}

fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t
}

async fn serve(
    name: &'static str,
    req: Request<Incoming>,
    state: Arc<GrpcState>,
    options: Arc<GrpcOptions>,
) -> Result<Response<ChannelBody>, std::io::Error> {
    let method = req.uri().path().to_string();
    let headers = req.headers().clone();
    let (tx, body) = channel_body();
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    let mut incoming = req.into_body();
    let record = {
        let state = state.clone();
        let (method, headers) = (method.clone(), headers.clone());
        move |messages: Vec<Bytes>| {
            state.calls.lock().expect("lock").push(GrpcCall {
                method,
                headers,
                messages,
            });
        }
    };
    if method.ends_with("/Bidi") {
        {
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let mut seen = Vec::new();
                while let Some(Ok(f)) = incoming.frame().await {
                    let Ok(data) = f.into_data() else { continue };
                    buf.extend_from_slice(&data);
                    for m in messages(&buf) {
                        let reply = answer(name, &options, |b| pb_bytes(b, 2, &m));
                        let _ = tx.send(Ok(Frame::data(reply))).await;
                        seen.push(m);
                    }
                    let rest = remainder(&buf);
                    buf = buf.split_off(buf.len() - rest);
                }
                record(seen);
                let _ = tx.send(Ok(Frame::trailers(ok_trailers()))).await;
            });
            return Ok(resp);
        }
    }
    let body = incoming
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let got = messages(&body);
    record(got.clone());
    let payload = got.first().cloned().unwrap_or_default();
    let served = state.served.fetch_add(1, Ordering::SeqCst);
    match method.rsplit('/').next().unwrap_or("") {
        "Unary" => {
            let n = served as f64;
            let f = options.unavailable;
            if ((n + 1.0) * f).floor() > (n * f).floor() {
                return Ok(trailers_only(resp, "14"));
            }
            let reply = if options.malformed {
                frame(&[0x0b])
            } else {
                answer(name, &options, |b| pb_bytes(b, 2, &payload))
            };
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(reply))).await;
                let _ = tx.send(Ok(Frame::trailers(ok_trailers()))).await;
            });
        }
        "ServerStream" => {
            let count = payload.len();
            tokio::spawn(async move {
                for i in 0..count {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let reply = answer(name, &options, |b| pb_varint(b, 3, i as u64));
                    let _ = tx.send(Ok(Frame::data(reply))).await;
                }
                let _ = tx.send(Ok(Frame::trailers(ok_trailers()))).await;
            });
        }
        "ClientStream" => {
            let reply = answer(name, &options, |b| pb_varint(b, 3, got.len() as u64));
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(reply))).await;
                let _ = tx.send(Ok(Frame::trailers(ok_trailers()))).await;
            });
        }
        "Fail" => {
            let code = headers
                .get("x-grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("14")
                .to_string();
            return Ok(trailers_only(resp, &code));
        }
        "Slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let reply = answer(name, &options, |b| pb_bytes(b, 2, &payload));
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(reply))).await;
                let _ = tx.send(Ok(Frame::trailers(ok_trailers()))).await;
            });
        }
        "Reset" => {
            let reply = answer(name, &options, |b| pb_bytes(b, 2, &payload));
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(reply))).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(Err(std::io::Error::other("reset by design"))).await;
            });
        }
        _ => return Ok(trailers_only(resp, "12")),
    }
    Ok(resp)
}

/// How many bytes at the end of `buf` are an incomplete frame.
fn remainder(mut buf: &[u8]) -> usize {
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf = &buf[5 + len..];
    }
    buf.len()
}

fn trailers_only(mut resp: Response<ChannelBody>, code: &str) -> Response<ChannelBody> {
    resp.headers_mut().insert(
        "grpc-status",
        HeaderValue::from_str(code).expect("a status code"),
    );
    *resp.body_mut() = ChannelBody(None);
    resp
}

/// What a gRPC client got for one call.
#[derive(Debug)]
pub struct GrpcReply {
    pub http_status: u16,
    pub headers: HeaderMap,
    pub messages: Vec<Bytes>,
    pub trailers: HeaderMap,
    /// `grpc-status` from the trailers, or from the head of a trailers-only answer.
    pub grpc_status: Option<String>,
    pub grpc_message: Option<String>,
    /// When each message arrived, from the call's start.
    pub arrivals: Vec<Duration>,
    /// The stream was reset instead of ending.
    pub reset: bool,
}

/// An h2c connection to `addr` (the proxy), for gRPC calls.
pub struct GrpcClient {
    sender: hyper::client::conn::http2::SendRequest<ChannelBody>,
    authority: String,
}

impl GrpcClient {
    pub async fn connect(addr: SocketAddr) -> GrpcClient {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        tokio::spawn(conn);
        GrpcClient {
            sender,
            authority: addr.to_string(),
        }
    }

    /// A call with these messages, sent at once, the stream then ended.
    pub async fn call(
        &mut self,
        method: &str,
        messages: &[&[u8]],
        headers: &[(&str, &str)],
    ) -> GrpcReply {
        let (tx, body) = channel_body();
        for m in messages {
            tx.send(Ok(Frame::data(frame(m)))).await.expect("queue");
        }
        drop(tx);
        self.call_streaming(method, body, headers).await
    }

    /// A call whose request stream is `body` (see [`channel_body`]).
    pub async fn call_streaming(
        &mut self,
        method: &str,
        body: ChannelBody,
        headers: &[(&str, &str)],
    ) -> GrpcReply {
        let mut req = Request::post(format!("http://{}{method}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .expect("request");
        for (n, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let start = std::time::Instant::now();
        self.sender.ready().await.expect("connection ready");
        let resp = self
            .sender
            .send_request(req)
            .await
            .expect("an answer's head");
        let (parts, mut body) = resp.into_parts();
        let mut reply = GrpcReply {
            http_status: parts.status.as_u16(),
            headers: parts.headers.clone(),
            messages: Vec::new(),
            trailers: HeaderMap::new(),
            grpc_status: None,
            grpc_message: None,
            arrivals: Vec::new(),
            reset: false,
        };
        let mut buf = BytesMut::new();
        loop {
            match body.frame().await {
                None => break,
                Some(Err(_)) => {
                    reply.reset = true;
                    break;
                }
                Some(Ok(f)) => {
                    if let Some(t) = f.trailers_ref() {
                        reply.trailers = t.clone();
                    } else if let Ok(data) = f.into_data() {
                        buf.extend_from_slice(&data);
                        let complete = messages(&buf);
                        let n = complete.len();
                        for m in complete {
                            reply.messages.push(m);
                            reply.arrivals.push(start.elapsed());
                        }
                        let used: usize = reply.messages[reply.messages.len() - n..]
                            .iter()
                            .map(|m| m.len() + 5)
                            .sum();
                        buf.advance(used);
                    }
                }
            }
        }
        let pick = |name: &str| {
            reply
                .trailers
                .get(name)
                .or_else(|| reply.headers.get(name))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        reply.grpc_status = pick("grpc-status");
        reply.grpc_message = pick("grpc-message");
        reply
    }
}
