//! The propagation scenario: how long after a `weights` write to etcd the proxy serves the next
//! request from the backend the write chose.
//!
//! It starts its own etcd, a `legacy` and a `new` backend (the test harness's fakes, which tag
//! each response with `x-backend`) and the real `cutover` binary with `[etcd]` (weights 100/0),
//! all on loopback. Each change flips the weights between `{100, 0}` and `{0, 100}`: `t0` is
//! taken just before the etcd put, then requests go back-to-back over one keep-alive connection
//! until one is served by the expected backend; its arrival is `t1`, and `t1 - t0` is the
//! propagation latency. A change not seen within the timeout (5 s) is a failure and the run
//! goes on.
//!
//! ```no_run
//! # async fn demo() {
//! use cutover_bench::propagation::{run, PropagationOptions};
//! let report = run(&PropagationOptions { changes: 10, ..Default::default() }).await;
//! println!("{}", report.to_markdown("example"));
//! # }
//! ```
//!
//! The binary is the test harness's: `$CUTOVER_BIN`, else `<target dir>/debug/cutover` (built
//! when missing).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cutover_tests::{cutover_bin, status_kib, Backend, Etcd, Proxy, ProxyConfig, RunningBackend};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The key prefix the scenario writes under.
pub const PREFIX: &str = "/cutover-bench";
/// The route the scenario flips.
pub const ROUTE: &str = "bench";
/// The path requests go to.
const PATH: &str = "/propagation";
/// Most failures listed in the report.
const MAX_LISTED_FAILURES: usize = 20;
/// Bound for the proxy to serve the initial weights (100/0) before timing starts.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct PropagationOptions {
    /// Weight changes to time.
    pub changes: usize,
    /// A change not served within this long is a failure.
    pub timeout: Duration,
    /// Routes in etcd, the measured one included: the others (`idle<i>.test`, no traffic)
    /// show what a write costs, and what idle routes weigh, with a large table.
    pub routes: usize,
    /// etcd's `--backend-batch-interval` (etcd's default, 100 ms, when `None`): how long etcd
    /// gathers writes before it commits them to its database. A put that arrives while a
    /// commit runs waits for it, and with 10,000 routes in etcd a commit takes milliseconds.
    pub etcd_batch_interval: Option<Duration>,
}

impl Default for PropagationOptions {
    fn default() -> Self {
        PropagationOptions {
            changes: 200,
            timeout: Duration::from_secs(5),
            routes: 1,
            etcd_batch_interval: None,
        }
    }
}

/// One timed weight change.
#[derive(Debug, Clone)]
pub struct Change {
    /// 0-based.
    pub index: usize,
    /// The backend the write sends all traffic to.
    pub to: &'static str,
    /// The etcd revision of the write (0 if the write failed).
    pub revision: i64,
    /// `t1 - t0`, `None` when the change was not seen in time (see the failures).
    pub latency: Option<Duration>,
    /// Requests sent until the expected backend answered.
    pub requests: u64,
    /// How long etcd took to answer the put itself (part of `latency`).
    pub put: Option<Duration>,
}

/// What happened.
#[derive(Debug)]
pub struct PropagationReport {
    /// The `cutover` binary measured.
    pub binary: PathBuf,
    pub options: PropagationOptions,
    /// One entry per change, in order.
    pub changes: Vec<Change>,
    /// One line per failed change (or setup problem).
    pub failures: Vec<String>,
    /// Requests sent through the proxy in total.
    pub requests: u64,
    /// Answers other than 200, and requests without an answer.
    pub bad_answers: u64,
    /// How often the keep-alive connection had to be re-established.
    pub reconnects: u64,
    /// Wall time of the timed part.
    pub elapsed: Duration,
    /// The proxy's resident memory once it served the initial weights, and its peak over the
    /// run, in KiB (`None` where `/proc` is unreadable).
    pub ready_rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    /// 3 s after the last change.
    pub end_rss_kib: Option<u64>,
    /// From the proxy's start to its first answer with every route loaded.
    pub ready_after: Duration,
    /// With idle routes: how long the leader took to write every route's status (the timing
    /// starts after it).
    pub settled_after: Option<Duration>,
}

/// Percentile `q` (0–100) of `durations` in ms; `None` without any.
fn percentile_ms(durations: impl Iterator<Item = Duration>, q: f64) -> Option<f64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
    for d in durations {
        h.saturating_record(d.as_micros().try_into().unwrap_or(u64::MAX));
    }
    (!h.is_empty()).then(|| h.value_at_percentile(q) as f64 / 1000.0)
}

impl PropagationReport {
    /// Changes served by the expected backend in time.
    pub fn propagated(&self) -> usize {
        self.changes.iter().filter(|c| c.latency.is_some()).count()
    }

    /// Latencies of the propagated changes, in µs.
    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
        for latency in self.changes.iter().filter_map(|c| c.latency) {
            h.saturating_record(latency.as_micros().try_into().unwrap_or(u64::MAX));
        }
        h
    }

    /// Percentile `q` (0–100) of the propagated changes in ms; `None` without any.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        let h = self.histogram();
        (!h.is_empty()).then(|| h.value_at_percentile(q) as f64 / 1000.0)
    }

    /// Percentile `q` (0–100) of etcd's answer to the puts, in ms; `None` without any.
    pub fn put_percentile_ms(&self, q: f64) -> Option<f64> {
        percentile_ms(self.changes.iter().filter_map(|c| c.put), q)
    }

    /// Percentile `q` (0–100) of the propagated changes' time after etcd answered the put
    /// (watch, the proxy's apply, the first request), in ms; `None` without any.
    pub fn after_put_percentile_ms(&self, q: f64) -> Option<f64> {
        percentile_ms(
            self.changes
                .iter()
                .filter_map(|c| Some(c.latency?.saturating_sub(c.put?))),
            q,
        )
    }

    /// The slowest propagated change in ms (exact, not bucketed).
    pub fn max_ms(&self) -> Option<f64> {
        self.changes
            .iter()
            .filter_map(|c| c.latency)
            .max()
            .map(|d| d.as_secs_f64() * 1000.0)
    }

    /// The report as Markdown: the command line, a table of count/p50/p90/p99/max, the setup,
    /// and the failures.
    pub fn to_markdown(&self, command_line: &str) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        // Changes not timed (a setup failure stops the run before any) count as failed.
        let failed = self.options.changes.max(self.changes.len()) - self.propagated();
        let mut out = String::new();
        out.push_str("## cutover propagation: etcd weights write → first request served by the chosen backend\n\n");
        out.push_str(&format!("Command: `{command_line}`\n\n"));
        out.push_str("| changes | propagated | failed | p50 ms | p90 ms | p99 ms | max ms |\n");
        out.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n\n",
            self.options.changes.max(self.changes.len()),
            self.propagated(),
            failed,
            ms(self.percentile_ms(50.0)),
            ms(self.percentile_ms(90.0)),
            ms(self.percentile_ms(99.0)),
            ms(self.max_ms()),
        ));
        out.push_str(&format!(
            "Setup: binary `{}`, one etcd ({}), one legacy and one new backend, all on 127.0.0.1; \
             weights flipped between 100/0 and 0/100; latency = put start → first response from \
             the chosen backend over one keep-alive connection; timeout {:?} per change. Of that, \
             etcd's answer to the put itself: p50 {} ms, p99 {} ms; the rest (etcd's watch, the \
             proxy applying the write, the first request): p50 {} ms, p99 {} ms.\n\n",
            self.binary.display(),
            self.options.etcd_batch_interval.map_or_else(
                || "its default batch interval, 100 ms".to_string(),
                |d| format!("`--backend-batch-interval={}ms`", d.as_millis().max(1))
            ),
            self.options.timeout,
            ms(self.put_percentile_ms(50.0)),
            ms(self.put_percentile_ms(99.0)),
            ms(self.after_put_percentile_ms(50.0)),
            ms(self.after_put_percentile_ms(99.0)),
        ));
        let mib =
            |k: Option<u64>| k.map_or("-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
        out.push_str(&format!(
            "Routes in etcd: {} ({} idle: own host, no traffic). Proxy ready (every route loaded, \
             first answer) {:.2} s after its start; RSS then {} MiB, 3 s after the last change {} \
             MiB, peak over the run {} MiB.\n\n",
            self.options.routes,
            self.options.routes.saturating_sub(1),
            self.ready_after.as_secs_f64(),
            mib(self.ready_rss_kib),
            mib(self.end_rss_kib),
            mib(self.peak_rss_kib),
        ));
        if let Some(settled) = self.settled_after {
            out.push_str(&format!(
                "The fleet's leader wrote every route's status in {:.1} s after that (at most 32 \
                 writes in flight); the changes were timed afterwards.\n\n",
                settled.as_secs_f64()
            ));
        }
        out.push_str(&format!(
            "Requests: {} (non-200 or unanswered: {}, reconnects: {}); timed part took {:.2} s.\n",
            self.requests,
            self.bad_answers,
            self.reconnects,
            self.elapsed.as_secs_f64()
        ));
        if !self.failures.is_empty() {
            out.push_str(&format!("\nFailures ({}):\n\n", self.failures.len()));
            for f in self.failures.iter().take(MAX_LISTED_FAILURES) {
                out.push_str(&format!("- {f}\n"));
            }
            if self.failures.len() > MAX_LISTED_FAILURES {
                out.push_str(&format!(
                    "- … and {} more\n",
                    self.failures.len() - MAX_LISTED_FAILURES
                ));
            }
        }
        out
    }
}

/// `{"legacy": L, "new": N, "shadow": 0}`.
fn weights(legacy: u32, new: u32) -> String {
    format!("{{\"legacy\":{legacy},\"new\":{new},\"shadow\":0}}")
}

/// Runs the scenario. Panics (with the harness's message) only when etcd, the backends or the
/// proxy cannot be started at all; everything after that is reported.
pub async fn run(opts: &PropagationOptions) -> PropagationReport {
    let flags: Vec<String> = opts
        .etcd_batch_interval
        .iter()
        .map(|d| format!("--backend-batch-interval={}ms", d.as_millis().max(1)))
        .collect();
    let etcd = Etcd::start_with(&flags).await;
    let legacy = Backend::new("legacy").run().await;
    let new = Backend::new("new").run().await;
    let spec = format!(
        "{{\"match\":{{\"path_prefix\":\"/\"}},\"legacy\":{{\"endpoints\":[\"{}\"]}},\"new\":{{\"endpoints\":[\"{}\"]}}}}",
        legacy.addr(),
        new.addr()
    );
    let weights_key = format!("{PREFIX}/routes/{ROUTE}/weights");
    etcd.put(&format!("{PREFIX}/routes/{ROUTE}/spec"), spec)
        .await;
    etcd.put(&weights_key, weights(100, 0)).await;
    let mut setup_failure = None;
    if opts.routes > 1 {
        if let Err(e) = put_idle_routes(&etcd, opts.routes - 1, &legacy, &new).await {
            setup_failure = Some(format!("setup: writing the idle routes failed: {e}"));
        }
    }
    let launched = Instant::now();
    let proxy = Proxy::start(
        ProxyConfig::new()
            .etcd(&etcd.endpoint(), PREFIX)
            .etcd_dial_timeout(Duration::from_secs(1)),
    )
    .await;

    let mut report = PropagationReport {
        binary: cutover_bin(),
        options: opts.clone(),
        changes: Vec::with_capacity(opts.changes),
        failures: Vec::new(),
        requests: 0,
        bad_answers: 0,
        reconnects: 0,
        elapsed: Duration::ZERO,
        ready_rss_kib: None,
        peak_rss_kib: None,
        end_rss_kib: None,
        ready_after: Duration::ZERO,
        settled_after: None,
    };
    if let Some(failure) = setup_failure {
        report.failures.push(failure);
        return report;
    }
    let mut conn = OneConnection::new(proxy.addr());
    let mut kv = etcd.client().await;

    // The starting point: legacy serves.
    if let Err(e) = conn
        .until_served_by("legacy", Instant::now() + SETUP_TIMEOUT)
        .await
    {
        report.failures.push(format!(
            "setup: the initial weights 100/0 were never served by legacy: {e}"
        ));
        conn.account(&mut report);
        return report;
    }
    report.ready_after = launched.elapsed();
    let pid = proxy.pid();
    report.ready_rss_kib = pid.and_then(|p| status_kib(p, "VmRSS"));
    if opts.routes > 1 {
        // The fleet's leader writes every route's `status` when it starts (a few dozen at a
        // time): a one-off burst of etcd writes. Time the steady state after it.
        let settle = Instant::now();
        let want = 3 * opts.routes as i64;
        loop {
            let keys = kv
                .get(
                    format!("{PREFIX}/routes/"),
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await
                .map(|r| r.count())
                .unwrap_or(0);
            if keys >= want || settle.elapsed() > Duration::from_secs(120) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        report.settled_after = Some(settle.elapsed());
    }
    conn.reset_counts();

    let started = Instant::now();
    for index in 0..opts.changes {
        let (l, n, to, from) = if index % 2 == 0 {
            (0, 100, "new", "legacy")
        } else {
            (100, 0, "legacy", "new")
        };
        let mut change = Change {
            index,
            to,
            revision: 0,
            latency: None,
            requests: 0,
            put: None,
        };
        // A measurement only means something from the previous state: wait (bounded) until it
        // is what is served. With a healthy proxy this is a single request.
        let synced = conn
            .until_served_by(from, Instant::now() + opts.timeout)
            .await;
        let t0 = Instant::now();
        match kv.put(weights_key.as_str(), weights(l, n), None).await {
            Ok(put) => {
                change.put = Some(t0.elapsed());
                change.revision = put.header().map_or(0, |h| h.revision());
            }
            Err(e) => {
                report
                    .failures
                    .push(format!("change {index} (→ {to}): etcd put failed: {e}"));
                report.changes.push(change);
                continue;
            }
        }
        if let Err(e) = synced {
            report.failures.push(format!(
                "change {index} (→ {to}, revision {}): not timed, the previous state ({from}) was not served within {:?}: {e}",
                change.revision, opts.timeout
            ));
            report.changes.push(change);
            continue;
        }
        let sent_before = conn.requests;
        match conn.until_served_by(to, t0 + opts.timeout).await {
            Ok(t1) => change.latency = Some(t1 - t0),
            Err(e) => report.failures.push(format!(
                "change {index} (→ {to}, revision {}): not served by {to} within {:?}: {e}",
                change.revision, opts.timeout
            )),
        }
        change.requests = conn.requests - sent_before;
        report.changes.push(change);
    }
    report.elapsed = started.elapsed();
    report.peak_rss_kib = pid.and_then(|p| status_kib(p, "VmHWM"));
    // What stays once the writes stop (the allocator keeps some of what churn freed).
    tokio::time::sleep(Duration::from_secs(3)).await;
    report.end_rss_kib = pid.and_then(|p| status_kib(p, "VmRSS"));
    conn.account(&mut report);
    drop(proxy);
    report
}

/// `n` routes that take no traffic, each on a host of its own (`idle<i>.test`), written in
/// transactions of 64 keys (etcd's default limit is 128 operations per transaction).
async fn put_idle_routes(
    etcd: &Etcd,
    n: usize,
    legacy: &RunningBackend,
    new: &RunningBackend,
) -> Result<(), String> {
    use etcd_client::{Txn, TxnOp};
    let mut client = etcd.client().await;
    let mut ops = Vec::new();
    for i in 0..n {
        let spec = format!(
            "{{\"match\":{{\"host\":\"idle{i}.test\",\"path_prefix\":\"/\"}},\"legacy\":{{\"endpoints\":[\"{}\"]}},\"new\":{{\"endpoints\":[\"{}\"]}}}}",
            legacy.addr(),
            new.addr()
        );
        ops.push(TxnOp::put(
            format!("{PREFIX}/routes/idle{i}/spec"),
            spec,
            None,
        ));
        ops.push(TxnOp::put(
            format!("{PREFIX}/routes/idle{i}/weights"),
            weights(90, 10),
            None,
        ));
        if ops.len() >= 64 || i + 1 == n {
            client
                .txn(Txn::new().and_then(std::mem::take(&mut ops)))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// One HTTP/1.1 keep-alive connection to the proxy (re-established only if it breaks).
struct OneConnection {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
    ever_connected: bool,
    requests: u64,
    bad_answers: u64,
    reconnects: u64,
}

impl OneConnection {
    fn new(addr: SocketAddr) -> Self {
        OneConnection {
            addr,
            sender: None,
            ever_connected: false,
            requests: 0,
            bad_answers: 0,
            reconnects: 0,
        }
    }

    fn reset_counts(&mut self) {
        self.requests = 0;
        self.bad_answers = 0;
        self.reconnects = 0;
    }

    fn account(&self, report: &mut PropagationReport) {
        report.requests += self.requests;
        report.bad_answers += self.bad_answers;
        report.reconnects += self.reconnects;
    }

    async fn connect(&mut self) -> Result<(), String> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect to the proxy at {}: {e}", self.addr))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake with {}: {e}", self.addr))?;
        tokio::spawn(connection);
        if self.ever_connected {
            self.reconnects += 1;
        }
        self.ever_connected = true;
        self.sender = Some(sender);
        Ok(())
    }

    /// One GET: status and `x-backend` once the whole response arrived.
    async fn get(&mut self) -> Result<(u16, Option<String>), String> {
        let outcome = self.exchange().await;
        self.requests += 1;
        match &outcome {
            Ok((200, _)) => {}
            Ok(_) => self.bad_answers += 1,
            Err(_) => {
                self.bad_answers += 1;
                self.sender = None;
            }
        }
        outcome
    }

    async fn exchange(&mut self) -> Result<(u16, Option<String>), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.connect().await?;
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let request = hyper::Request::get(PATH)
            .header(hyper::header::HOST, "cutover.bench")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        let backend = response
            .headers()
            .get("x-backend")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok((status, backend))
    }

    /// Requests back-to-back until one is answered 200 by `backend`; the instant it arrived.
    async fn until_served_by(
        &mut self,
        backend: &str,
        deadline: Instant,
    ) -> Result<Instant, String> {
        let mut last = String::from("no request sent");
        loop {
            if Instant::now() >= deadline {
                return Err(format!("last answer: {last}"));
            }
            let answer = tokio::time::timeout_at(deadline.into(), self.get()).await;
            match answer {
                Ok(Ok((200, Some(b)))) if b == backend => return Ok(Instant::now()),
                Ok(Ok((status, b))) => last = format!("{status} from {b:?}"),
                Ok(Err(e)) => {
                    last = e;
                    // Do not spin on a proxy that refuses connections.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    self.sender = None;
                    return Err(format!(
                        "request still pending at the deadline; last answer: {last}"
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_durations() {
        let ms = |v: u64| Duration::from_millis(v);
        let p = |q| percentile_ms([ms(1), ms(2), ms(10)].into_iter(), q).unwrap();
        assert!((p(50.0) - 2.0).abs() < 0.01, "{}", p(50.0));
        assert!((p(99.0) - 10.0).abs() < 0.02, "{}", p(99.0));
        assert_eq!(percentile_ms(std::iter::empty(), 50.0), None);
    }
}
