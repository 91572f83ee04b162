//! Shadow traffic: a sampled share of eligible requests is copied to the backend that did not
//! serve them, and the two answers are compared once both are complete.
//!
//! The copy never touches the primary's path: the request body is teed (bounded) while it
//! streams to the primary, the copy is sent from a detached task on cutover's own connection
//! pool once the body is complete, bounded per route by `shadow.max_in_flight` (over that, it
//! is dropped and counted — never queued) and by `shadow.timeout`. The primary's answer reaches
//! the task through a one-shot channel when the primary finishes; a primary that fails or a
//! client that goes away simply closes the channel.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cutover_config::ShadowPolicy;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tracing::debug;

use crate::compare::{self, Answer, BodySampler, DivergenceRecord};
use crate::grpc;
use crate::hygiene::SHADOW_MARKER;
use crate::routing::Route;
use crate::stats::{BackendKind, Role};
use crate::telemetry::{DropReason, Outcome};
use crate::upstream::{Pool, Terms};

/// Comparisons of at most this many body bytes (all answers together) run in the shadow task
/// itself: a few microseconds, cheaper than handing them over (`make bench`, 1 KiB answers:
/// the same CPU per request either way, but 39 % of the queued ones were dropped when the
/// workers were saturated). Larger ones go to the comparison queue.
const INLINE_COMPARE_BYTES: usize = 16 * 1024;

/// Longest a shadow task waits for the primary's answer after its own arrived.
const PRIMARY_WAIT: Duration = Duration::from_secs(60);

/// A worker's means of sending shadow copies: its own connection pool (never the primary's:
/// [`crate::upstream`]), and the queue the comparisons run from (off the workers:
/// [`compare::ComparisonQueue`], one for the process).
#[derive(Debug, Clone)]
pub struct ShadowClient {
    pool: Arc<Pool<Full<Bytes>>>,
    comparisons: compare::ComparisonQueue,
}

impl ShadowClient {
    pub fn new(pool: Arc<Pool<Full<Bytes>>>, comparisons: compare::ComparisonQueue) -> Self {
        ShadowClient { pool, comparisons }
    }

    /// The pool, for the worker's eviction of idle connections.
    pub fn pool(&self) -> &Pool<Full<Bytes>> {
        &self.pool
    }
}

/// Is `method` with these headers eligible for shadowing under `policy`? `content_length` is
/// the declared body size, if any.
pub fn eligibility(
    policy: &ShadowPolicy,
    method: &Method,
    headers: &HeaderMap,
    content_length: Option<u64>,
) -> Result<(), DropReason> {
    if *method == Method::CONNECT
        || headers.contains_key(http::header::UPGRADE)
        || !policy.methods.iter().any(|m| m == method.as_str())
    {
        return Err(DropReason::Method);
    }
    if content_length.is_some_and(|len| len > policy.max_body_bytes) {
        return Err(DropReason::BodyTooLarge);
    }
    Ok(())
}

/// The headers the copy carries: the primary's forwarded headers, minus `strip` (the route's
/// `shadow.strip_headers`), plus the marker. (`traceparent` and everything else pass through.)
pub fn copy_headers(forwarded: &HeaderMap, strip: &[HeaderName]) -> HeaderMap {
    let mut headers = forwarded.clone();
    for name in strip {
        headers.remove(name);
    }
    const MARKED: HeaderValue = HeaderValue::from_static("1");
    headers.insert(SHADOW_MARKER, MARKED);
    headers
}

/// The headers of an answer that its comparison reads: `names` (the route's compared headers)
/// and, for a gRPC call, its status. A shadowed answer keeps only these while it waits: its
/// whole header map was cloned (the primary's) or held (the copy's) for one or two of them.
fn compared(headers: &HeaderMap, names: &[HeaderName], grpc: bool) -> HeaderMap {
    let grpc_names: &[HeaderName] = if grpc {
        &[grpc::STATUS_HEADER, grpc::MESSAGE_HEADER]
    } else {
        &[]
    };
    let mut kept = HeaderMap::with_capacity(names.len() + grpc_names.len());
    // A gRPC name the route compares anyway is kept once.
    let grpc_names = grpc_names.iter().filter(|n| !names.contains(n));
    for name in names.iter().chain(grpc_names) {
        for value in headers.get_all(name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// A request being shadowed: what the copy needs, collected while the primary runs.
#[derive(Debug)]
pub struct ShadowRequest {
    /// The backend the copy goes to (the one that did not serve).
    pub target: BackendKind,
    pub method: Method,
    pub path_and_query: String,
    headers: Option<HeaderMap>,
    body: BytesMut,
    body_done: bool,
    limit: u64,
    /// Also send legacy a second copy, to learn noise.
    pub noise_copy: bool,
    /// A gRPC call (SPEC §8): copied only when its request stream holds exactly one message,
    /// over HTTP/2, its answer's trailers kept for the comparison.
    pub grpc: bool,
    sent: bool,
    primary: Option<PrimaryTap>,
}

/// The primary's answer, teed as it streams to the client.
#[derive(Debug)]
struct PrimaryTap {
    tx: oneshot::Sender<Answer>,
    status: Option<u16>,
    headers: HeaderMap,
    body: Option<BodySampler>,
}

impl ShadowRequest {
    pub fn new(
        target: BackendKind,
        method: Method,
        path_and_query: String,
        limit: u64,
        noise_copy: bool,
        grpc: bool,
    ) -> Self {
        ShadowRequest {
            target,
            method,
            path_and_query,
            headers: None,
            body: BytesMut::new(),
            body_done: false,
            limit,
            noise_copy,
            grpc,
            sent: false,
            primary: None,
        }
    }

    /// Tee a request body chunk; `Err` when the body outgrew the shadow limit (the copy is
    /// abandoned; the primary is untouched).
    pub fn tee_request(&mut self, chunk: &[u8]) -> Result<(), DropReason> {
        if self.body.len() as u64 + chunk.len() as u64 > self.limit {
            self.body = BytesMut::new();
            return Err(DropReason::BodyTooLarge);
        }
        self.body.extend_from_slice(chunk);
        Ok(())
    }

    /// The headers the copy carries (the primary's forwarded headers, see [`copy_headers`]).
    pub fn set_headers(&mut self, headers: HeaderMap) {
        self.headers = Some(headers);
    }

    /// The request body is complete.
    pub fn finish_body(&mut self) {
        self.body_done = true;
    }

    /// Headers known and body complete, not sent yet.
    pub fn is_ready(&self) -> bool {
        !self.sent && self.body_done && self.headers.is_some()
    }

    /// Record the primary's response head (before hop-by-hop stripping): its status and the
    /// headers `compared` names (the route's).
    pub fn primary_head(&mut self, status: u16, headers: &HeaderMap, compared: &[HeaderName]) {
        let grpc = self.grpc;
        if let Some(tap) = self.primary.as_mut() {
            tap.status = Some(status);
            tap.headers = self::compared(headers, compared, grpc);
            if let Some(body) = tap.body.as_mut() {
                body.expect_from(headers);
            }
        }
    }

    /// The primary's trailers: a gRPC answer's `grpc-status` and `grpc-message` join its
    /// headers for the comparison.
    pub fn primary_trailers(&mut self, trailers: &HeaderMap) {
        if let Some(tap) = self.primary.as_mut() {
            keep_grpc_status(&mut tap.headers, trailers);
        }
    }

    /// Tee a primary response body chunk.
    pub fn primary_body(&mut self, chunk: &Bytes) {
        if let Some(body) = self.primary.as_mut().and_then(|t| t.body.as_mut()) {
            body.push(chunk);
        }
    }

    /// The primary finished: hand its answer to the shadow task (`ok == false`: it failed, so
    /// there is nothing to compare).
    pub fn primary_done(&mut self, ok: bool) {
        let Some(tap) = self.primary.take() else {
            return;
        };
        if let (true, Some(status), Some(body)) = (ok, tap.status, tap.body) {
            let _ = tap.tx.send(Answer {
                status,
                headers: tap.headers,
                body: body.finish(),
            });
        }
    }

    /// Send the copy from a detached task, once [`ShadowRequest::is_ready`].
    pub fn dispatch(&mut self, route: &Arc<Route>, client: &ShadowClient, now: Instant) {
        if !self.is_ready() {
            return;
        }
        self.sent = true;
        let Some(headers) = self.headers.take() else {
            return;
        };
        if self.grpc && !one_grpc_message(&self.body) {
            // Client streaming (or an empty stream): its copy could not be judged alone.
            route.telemetry.shadow_dropped(DropReason::Method);
            return;
        }
        let max = route.spec.shadow.max_in_flight;
        let in_flight = &route.state.shadow_in_flight;
        if in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            route.telemetry.shadow_dropped(DropReason::Overload);
            return;
        }
        let (tx, rx) = oneshot::channel();
        let limit = usize::try_from(route.spec.shadow.max_body_bytes).unwrap_or(usize::MAX);
        self.primary = Some(PrimaryTap {
            tx,
            status: None,
            headers: HeaderMap::new(),
            body: Some(BodySampler::new(limit)),
        });
        // Boxed: the task's future holds the job by pointer, so spawning it (and tokio's moves
        // of the task's stage) copies a few hundred bytes less.
        let job = Box::new(Job {
            route: route.clone(),
            client: client.clone(),
            target: self.target,
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            headers,
            body: std::mem::take(&mut self.body).freeze(),
            noise_copy: self.noise_copy,
            grpc: self.grpc,
            started: now,
        });
        tokio::spawn(job.run(rx));
    }
}

/// One detached shadow exchange.
struct Job {
    route: Arc<Route>,
    client: ShadowClient,
    target: BackendKind,
    method: Method,
    path_and_query: String,
    headers: HeaderMap,
    body: Bytes,
    noise_copy: bool,
    grpc: bool,
    started: Instant,
}

/// Does `body` hold exactly one gRPC message (5-byte prefix and its length, nothing after)?
fn one_grpc_message(body: &[u8]) -> bool {
    body.len() >= 5
        && u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize == body.len() - 5
}

/// Copy `grpc-status` and `grpc-message` from `trailers` into `headers`.
fn keep_grpc_status(headers: &mut HeaderMap, trailers: &HeaderMap) {
    for name in [grpc::STATUS_HEADER, grpc::MESSAGE_HEADER] {
        if let Some(v) = trailers.get(&name) {
            headers.insert(name, v.clone());
        }
    }
}

/// Releases the route's in-flight slot however the job ends.
struct Slot(Arc<Route>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.state.shadow_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Job {
    async fn run(mut self: Box<Self>, mut primary: oneshot::Receiver<Answer>) {
        let _slot = Slot(self.route.clone());
        // The headers go into the copy's request (a second copy of them only for the noise
        // copy): cloned per request, they were one more header map held per copy in flight.
        let headers = std::mem::take(&mut self.headers);
        // Boxed, both exchanges in one box that lives only while they run: inline, they made
        // this task's future 13.5 KB, copied whole when it was spawned (callgrind: 109k of
        // memcpy per shadowed request). Now the task's future is 648 bytes, the box 3.7 KB.
        let Some((answer, second_legacy)) = Box::pin(self.copies(headers)).await else {
            return;
        };
        // The primary has usually finished before its copy: then no timer is set.
        let primary = match primary.try_recv() {
            Ok(answer) => Some(answer),
            Err(oneshot::error::TryRecvError::Closed) => None,
            Err(oneshot::error::TryRecvError::Empty) => tokio::time::timeout(PRIMARY_WAIT, primary)
                .await
                .ok()
                .and_then(Result::ok),
        };
        let Some(primary) = primary else {
            debug!(route = %self.route.id, "primary did not complete; nothing to compare");
            return;
        };
        let (legacy, new) = match self.target {
            BackendKind::New => (primary, answer),
            BackendKind::Legacy => (answer, primary),
        };
        let bytes = [Some(&legacy), Some(&new), second_legacy.as_ref()]
            .into_iter()
            .flatten()
            .map(|a| a.body.prefix.len())
            .sum();
        if bytes <= INLINE_COMPARE_BYTES {
            self.compare(&legacy, &new, second_legacy.as_ref());
            return;
        }
        // A large comparison runs on a comparison thread; over the queue's bounds the copy is
        // dropped and counted, never waited for.
        let (route, queue) = (self.route.clone(), self.client.comparisons.clone());
        let submitted = queue.submit(bytes, move || {
            self.compare(&legacy, &new, second_legacy.as_ref());
        });
        if !submitted {
            route.telemetry.shadow_dropped(DropReason::Overload);
        }
    }

    /// The copy (and the noise copy, if any) within `shadow.timeout`: the copy's answer and the
    /// second legacy answer; `None` when the copy got no answer (counted).
    async fn copies(&self, headers: HeaderMap) -> Option<(Answer, Option<Answer>)> {
        let limit = usize::try_from(self.route.spec.shadow.max_body_bytes).unwrap_or(usize::MAX);
        let noise_headers = self.noise_copy.then(|| headers.clone());
        // Built where they are awaited: futures bound to locals first would keep room for
        // themselves twice in this one (6.5 KB instead of 3.7).
        let both = async {
            tokio::join!(self.send(self.target, limit, headers), async {
                match noise_headers {
                    // Boxed: most copies have no noise copy, and need no room for one.
                    Some(h) => Box::pin(self.send(BackendKind::Legacy, limit, h)).await,
                    None => None,
                }
            })
        };
        match tokio::time::timeout(self.route.spec.shadow.timeout, both).await {
            Ok((answer, second_legacy)) => Some((answer?, second_legacy)),
            Err(_) => {
                let now = Instant::now();
                self.route.record(
                    self.target,
                    Role::Shadow,
                    Outcome::NoResponse,
                    self.started,
                    now,
                );
                self.route.telemetry.shadow_dropped(DropReason::Timeout);
                None
            }
        }
    }

    /// Send one copy to `to`; records its statistics. `None` when it got no complete answer.
    async fn send(&self, to: BackendKind, limit: usize, headers: HeaderMap) -> Option<Answer> {
        let start = Instant::now();
        let outcome = self.exchange(to, limit, headers).await;
        let now = Instant::now();
        match outcome {
            Ok(answer) => {
                let outcome = if self.grpc {
                    Outcome::Grpc {
                        status: answer.status,
                        code: grpc::status(&answer.headers).unwrap_or(grpc::INTERNAL),
                    }
                } else {
                    Outcome::Status(answer.status)
                };
                self.route.record(to, Role::Shadow, outcome, start, now);
                Some(answer)
            }
            Err(e) => {
                debug!(route = %self.route.id, backend = to.as_str(), error = %e, "shadow copy got no answer");
                self.route
                    .record(to, Role::Shadow, Outcome::NoResponse, start, now);
                None
            }
        }
    }

    /// One copy over the worker's shadow pool, to the first endpoint of `to` that resolves
    /// (from the same start as the primary's choice); its connection goes back to the pool once
    /// the answer was read to its end.
    async fn exchange(
        &self,
        to: BackendKind,
        limit: usize,
        headers: HeaderMap,
    ) -> Result<Answer, String> {
        let upstream = self.route.upstream(to);
        let mut req = http::Request::builder()
            .method(self.method.clone())
            .uri(self.path_and_query.as_str())
            .body(Full::new(self.body.clone()))
            .map_err(|e| e.to_string())?;
        *req.headers_mut() = headers;
        if !self.body.is_empty() || req.headers().contains_key(http::header::CONTENT_LENGTH) {
            req.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(self.body.len()),
            );
        }
        // The body is whole: the wait for the answer starts now (`shadow.timeout` bounds all).
        let sent = oneshot::channel().1;
        let (resp, lease) = self
            .client
            .pool
            .send(
                upstream,
                upstream.start_index(),
                Terms {
                    http2: self.grpc,
                    ..Terms::default()
                },
                req,
                sent,
            )
            .await
            .map_err(|e| e.to_string())?;
        let (head, mut body) = resp.into_parts();
        let status = head.status.as_u16();
        let mut sampler = BodySampler::new(limit);
        sampler.expect_from(&head.headers);
        let mut headers = compared(&head.headers, &self.route.compared_headers, self.grpc);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Some(data) = frame.data_ref() {
                sampler.push(data);
            } else if let Some(trailers) = frame.trailers_ref() {
                keep_grpc_status(&mut headers, trailers);
            }
        }
        drop(lease);
        Ok(Answer {
            status,
            headers,
            body: sampler.finish(),
        })
    }

    fn compare(&self, legacy: &Answer, new: &Answer, second_legacy: Option<&Answer>) {
        let state = &self.route.state;
        let policy = &self.route.spec.compare;
        let path = self.path_and_query.split('?').next().unwrap_or_default();
        let group = state
            .groups
            .intern(compare::endpoint_group(&self.method, path));
        let now = Instant::now();
        if let Some(second) = second_legacy {
            // Learn from the raw legacy-vs-legacy difference (ignore rules applied, learned
            // noise not removed), so a volatile path keeps being seen and does not expire.
            let pointers = compare::noise_pointers(policy, legacy, second);
            state.noise.observe(&group, &pointers, now);
        }
        if policy.learn_noise_percent > 0.0 && !state.noise.calibrated(&group) {
            // What is noise on this endpoint is not known yet: its differences can be told
            // from divergences only once enough legacy pairs were compared.
            self.route.telemetry.comparison_calibrating();
            return;
        }
        let noise = state.noise.noise(&group, now);
        if let Some(second) = second_legacy {
            // Legacy against itself, compared like new: the divergence rule's baseline.
            let baseline = compare::compare_call(policy, path, legacy, second, &noise);
            self.route.record_baseline(baseline.diverged(), now);
        }
        let diff = compare::compare_call(policy, path, legacy, new, &noise);
        self.route.record_comparison(&diff, now);
        if diff.diverged() {
            state.divergences.push(DivergenceRecord::new(
                cutover_config::dataplane::rfc3339_now(),
                self.method.as_str(),
                &self.path_and_query,
                &group,
                legacy,
                new,
                &diff,
                &noise,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ShadowPolicy {
        ShadowPolicy {
            strip_headers: vec!["authorization".into(), "cookie".into()],
            ..ShadowPolicy::default()
        }
    }

    #[test]
    fn eligibility_rules() {
        let p = policy();
        let h = HeaderMap::new();
        assert_eq!(eligibility(&p, &Method::GET, &h, None), Ok(()));
        assert_eq!(
            eligibility(&p, &Method::POST, &h, None),
            Err(DropReason::Method)
        );
        assert_eq!(
            eligibility(&p, &Method::CONNECT, &h, None),
            Err(DropReason::Method)
        );
        let mut up = HeaderMap::new();
        up.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(
            eligibility(&p, &Method::GET, &up, None),
            Err(DropReason::Method)
        );
        assert_eq!(
            eligibility(&p, &Method::GET, &h, Some(p.max_body_bytes + 1)),
            Err(DropReason::BodyTooLarge)
        );
    }

    #[test]
    fn copy_headers_strip_and_mark() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("secret"));
        h.insert("cookie", HeaderValue::from_static("a=1"));
        h.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        h.insert(SHADOW_MARKER, HeaderValue::from_static("spoofed"));
        let strip = crate::routing::header_names(&policy().strip_headers);
        let c = copy_headers(&h, &strip);
        assert!(!c.contains_key("authorization") && !c.contains_key("cookie"));
        assert_eq!(c.get("traceparent").unwrap(), "00-abc-def-01");
        assert_eq!(c.get_all(&SHADOW_MARKER).iter().collect::<Vec<_>>(), ["1"]);
    }

    /// A shadowed answer keeps the compared headers, every value of each, and gRPC's status
    /// only for a gRPC call; nothing else.
    #[test]
    fn answers_keep_only_what_their_comparison_reads() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.insert(
            "date",
            HeaderValue::from_static("Tue, 08 Dec 2026 01:00:00 GMT"),
        );
        h.insert("grpc-status", HeaderValue::from_static("5"));
        let names = crate::routing::header_names(&["content-type".into(), "x-multi".into()]);
        let kept = compared(&h, &names, false);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept.get("content-type").unwrap(), "application/json");
        assert_eq!(
            kept.get_all("x-multi").iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(!kept.contains_key("date") && !kept.contains_key("grpc-status"));
        let kept = compared(&h, &names, true);
        assert_eq!(kept.get("grpc-status").unwrap(), "5");
        assert_eq!(kept.len(), 4);
        let names = crate::routing::header_names(&["grpc-status".into()]);
        let kept = compared(&h, &names, true);
        assert_eq!(
            kept.get_all("grpc-status").iter().collect::<Vec<_>>(),
            ["5"]
        );
    }

    #[test]
    fn request_tee_is_bounded() {
        let mut r =
            ShadowRequest::new(BackendKind::New, Method::POST, "/x".into(), 4, false, false);
        assert!(r.tee_request(b"ab").is_ok());
        assert_eq!(r.tee_request(b"cde"), Err(DropReason::BodyTooLarge));
    }
}
