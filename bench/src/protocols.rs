//! The HTTP/2 and gRPC scenario (SPEC §8, issue 17): proxy CPU per call and latency of
//!
//! - **h2c**: a 1 KiB GET from h2c clients (prior knowledge) to an HTTP/1.1 backend, nginx
//!   (`listen … http2` + `proxy_pass` with upstream keep-alive) against cutover;
//! - **gRPC unary**: a 1 KiB unary call from h2c clients to an h2c gRPC backend, nginx
//!   (`grpc_pass` with upstream keep-alive) against cutover (`protocol = "h2c"`);
//! - **gRPC shadow**: the same call through cutover with `shadow = 100` of the method and
//!   `compare.body = "grpc"` (schema-less), the copies' comparisons inside the measurement.
//!
//! Each case is a closed loop of `calls` calls over `connections` HTTP/2 connections with
//! `streams` calls in flight on each; the cases run in interleaved rounds and the report takes
//! medians. nginx runs `worker_processes 1` and cutover `threads = 1`, so CPU per call compares
//! one core's work. The backends (the test harness's, in this process) and the load generator
//! share this process; the proxy's CPU is read from `/proc` (utime + stime of its process
//! tree), so only the proxy is measured. With two CPUs or more, this process runs on CPU 0 and
//! every proxy on CPU 1 (as the suite pins its generator and servers), so a proxy never
//! competes with the load for its core. Linux only. Without nginx the nginx cases are skipped
//! and said so.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cutover_tests::grpc::{frame, GrpcBackend};
use cutover_tests::{cutover_bin, free_addr, Backend, Proxy, ProxyConfig, Route, RunningBackend};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::suite::{median, quiesce, QUIET_INTERVAL};
use crate::sys;

/// The gRPC method every call goes to.
const METHOD: &str = "/test.Echo/Unary";
/// The h2c case's path.
const H2C_PATH: &str = "/bench/items";
/// Bound for a proxy to go quiet around a run.
const QUIET_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for the copies of a shadow run to be compared after its last answer.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What to run.
#[derive(Debug, Clone)]
pub struct ProtocolOptions {
    /// Calls per run.
    pub calls: u64,
    /// HTTP/2 connections of the load.
    pub connections: usize,
    /// Calls in flight on each connection.
    pub streams: usize,
    pub rounds: usize,
    /// Bytes of each request message (gRPC) and of each answer (h2c).
    pub body_bytes: usize,
    pub run_timeout: Duration,
}

impl Default for ProtocolOptions {
    fn default() -> Self {
        ProtocolOptions {
            calls: 20_000,
            connections: 4,
            streams: 8,
            rounds: 3,
            body_bytes: 1024,
            run_timeout: Duration::from_secs(120),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    H2cNginx,
    H2cCutover,
    GrpcNginx,
    GrpcCutover,
    GrpcShadow,
}

impl Case {
    pub const ALL: [Case; 5] = [
        Case::H2cNginx,
        Case::H2cCutover,
        Case::GrpcNginx,
        Case::GrpcCutover,
        Case::GrpcShadow,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Case::H2cNginx => "h2c → HTTP/1.1: nginx",
            Case::H2cCutover => "h2c → HTTP/1.1: cutover",
            Case::GrpcNginx => "gRPC unary: nginx grpc_pass",
            Case::GrpcCutover => "gRPC unary: cutover",
            Case::GrpcShadow => "gRPC unary: cutover, 100 % shadow + compare grpc",
        }
    }

    fn grpc(self) -> bool {
        !matches!(self, Case::H2cNginx | Case::H2cCutover)
    }
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Run {
    pub round: usize,
    pub case: Case,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub cpu_ticks: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Comparisons made during the run (the shadow case).
    pub comparisons: f64,
}

impl Run {
    fn cpu_us_per_call(&self, clk_tck: u64) -> Option<f64> {
        let calls = self.ok + self.errors;
        (calls > 0).then(|| sys::ticks_to_ms(self.cpu_ticks, clk_tck) * 1000.0 / calls as f64)
    }
}

/// What happened.
#[derive(Debug)]
pub struct ProtocolReport {
    pub options: ProtocolOptions,
    pub binary: PathBuf,
    pub clk_tck: u64,
    /// nginx's version line, or why the nginx cases did not run.
    pub nginx: Result<String, String>,
    /// How the processes were pinned, or why they were not.
    pub pinning: Result<String, String>,
    pub runs: Vec<Run>,
    pub problems: Vec<String>,
}

impl ProtocolReport {
    pub fn median_cpu_us(&self, case: Case) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter(|r| r.case == case)
                .filter_map(|r| r.cpu_us_per_call(self.clk_tck))
                .collect(),
        )
    }

    fn median_of(&self, case: Case, f: impl Fn(&Run) -> f64) -> Option<f64> {
        median(self.runs.iter().filter(|r| r.case == case).map(f).collect())
    }

    /// Median over rounds of `case`'s CPU per call over `base`'s in the same round.
    pub fn ratio(&self, case: Case, base: Case) -> Option<f64> {
        median(
            (1..=self.options.rounds)
                .filter_map(|round| {
                    let of = |c| {
                        self.runs
                            .iter()
                            .find(|r| r.round == round && r.case == c)?
                            .cpu_us_per_call(self.clk_tck)
                    };
                    let (x, b) = (of(case)?, of(base)?);
                    (b > 0.0).then(|| x / b)
                })
                .collect(),
        )
    }

    pub fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.errors).sum()
    }

    /// The report's section (a `##` heading).
    pub fn to_markdown(&self) -> String {
        let o = &self.options;
        let mut w = String::new();
        let _ = writeln!(w, "## HTTP/2 and gRPC (SPEC §8)\n");
        let _ = writeln!(
            w,
            "Closed loop, {} calls per run over {} h2c connections × {} streams, {} round(s) \
             interleaved; {} B request messages (gRPC) and answers (h2c). nginx \
             `worker_processes 1`, cutover `threads = 1`; backends in the load generator's \
             process (not measured); {}. Binary: `{}`. nginx: {}.\n",
            o.calls,
            o.connections,
            o.streams,
            o.rounds,
            o.body_bytes,
            match &self.pinning {
                Ok(how) => how.clone(),
                Err(why) => format!("not pinned ({why})"),
            },
            self.binary.display(),
            match &self.nginx {
                Ok(v) => v.clone(),
                Err(why) => format!("not run ({why})"),
            }
        );
        let _ = writeln!(
            w,
            "| case | CPU µs/call (median) | ratio | calls/s | p50 ms | p99 ms | errors |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|");
        for case in Case::ALL {
            let Some(cpu) = self.median_cpu_us(case) else {
                continue;
            };
            let ratio = match case {
                Case::H2cCutover => self
                    .ratio(case, Case::H2cNginx)
                    .map(|r| format!("{r:.2}× nginx")),
                Case::GrpcCutover => self
                    .ratio(case, Case::GrpcNginx)
                    .map(|r| format!("{r:.2}× nginx")),
                Case::GrpcShadow => self
                    .ratio(case, Case::GrpcCutover)
                    .map(|r| format!("{r:.2}× no shadow")),
                _ => Some("1.00".into()),
            };
            let rate = self.median_of(case, |r| {
                (r.ok + r.errors) as f64 / r.elapsed.as_secs_f64().max(1e-9)
            });
            let ms = |us: Option<f64>| us.map_or("-".into(), |v| format!("{:.2}", v / 1000.0));
            let _ = writeln!(
                w,
                "| {} | {cpu:.1} | {} | {} | {} | {} | {} |",
                case.label(),
                ratio.unwrap_or_else(|| "-".into()),
                rate.map_or("-".into(), |v| format!("{v:.0}")),
                ms(self.median_of(case, |r| r.p50_us as f64)),
                ms(self.median_of(case, |r| r.p99_us as f64)),
                self.runs
                    .iter()
                    .filter(|r| r.case == case)
                    .map(|r| r.errors)
                    .sum::<u64>()
            );
        }
        let shadow_compared = self
            .runs
            .iter()
            .filter(|r| r.case == Case::GrpcShadow)
            .map(|r| r.comparisons)
            .sum::<f64>();
        let shadow_calls: u64 = self
            .runs
            .iter()
            .filter(|r| r.case == Case::GrpcShadow)
            .map(|r| r.ok + r.errors)
            .sum();
        let _ = writeln!(
            w,
            "\nShadow case: {shadow_compared:.0} of {shadow_calls} calls compared.\n"
        );
        for p in &self.problems {
            let _ = writeln!(w, "- problem: {p}");
        }
        w
    }
}

/// Run the scenario.
pub async fn run(opts: &ProtocolOptions) -> Result<ProtocolReport, String> {
    let (clk_tck, _) = sys::clk_tck();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let me = [std::process::id()];
    let mut pinning = if cpus < 2 {
        Err(format!("{cpus} CPU"))
    } else {
        sys::pin_processes(&me, 0)
            .map(|()| "load generator and backends on CPU 0, each proxy on CPU 1".to_string())
    };
    let body = opts.body_bytes;
    let h1 = Backend::new("legacy").json_body_bytes(body).run().await;
    let grpc_a = GrpcBackend::start("svc").await;
    let grpc_b = GrpcBackend::start("svc").await;
    let cutover = |route: Route| {
        Proxy::start(
            ProxyConfig::new()
                .set("threads", "1")
                .route(route.weights(100, 0).rollback_off()),
        )
    };
    let h2c_proxy = cutover(
        Route::new("h2c")
            .legacy_endpoints([h1.addr()])
            .new_endpoints([h1.addr()]),
    )
    .await;
    let grpc_route = |id: &str| {
        Route::new(id)
            .legacy_endpoints([grpc_a.addr()])
            .new_endpoints([grpc_b.addr()])
            .legacy_protocol("h2c")
            .new_protocol("h2c")
    };
    let grpc_proxy = cutover(grpc_route("grpc")).await;
    let shadow_proxy = cutover(
        grpc_route("grpc")
            .shadow(100)
            .shadow_block(&format!(
                "grpc_methods = [\"{METHOD}\"], max_in_flight = 100000"
            ))
            .compare_block("body = \"grpc\""),
    )
    .await;
    let nginx = match sys::find_program("nginx") {
        None => Err(
            "nginx is not installed (`make bench` installs it with apt-get when it can)"
                .to_string(),
        ),
        Some(program) => Nginx::start(&program, &h1, grpc_a.addr()).await,
    };
    if pinning.is_ok() {
        let mut servers = Vec::new();
        for proxy in [&h2c_proxy, &grpc_proxy, &shadow_proxy] {
            servers.extend(proxy_pids(proxy));
        }
        if let Ok(n) = &nginx {
            servers.extend(n.pids());
        }
        if let Err(e) = sys::pin_processes(&servers, 1) {
            pinning = Err(e);
        }
    }
    let mut report = ProtocolReport {
        options: opts.clone(),
        binary: cutover_bin(),
        clk_tck,
        pinning,
        nginx: nginx
            .as_ref()
            .map(|n| n.version.clone())
            .map_err(Clone::clone),
        runs: Vec::new(),
        problems: Vec::new(),
    };
    let target = |case: Case| -> Option<(SocketAddr, Vec<u32>, Option<&Proxy>)> {
        match case {
            Case::H2cNginx => nginx.as_ref().ok().map(|n| (n.h2c, n.pids(), None)),
            Case::GrpcNginx => nginx.as_ref().ok().map(|n| (n.grpc, n.pids(), None)),
            Case::H2cCutover => Some((h2c_proxy.addr(), proxy_pids(&h2c_proxy), Some(&h2c_proxy))),
            Case::GrpcCutover => Some((
                grpc_proxy.addr(),
                proxy_pids(&grpc_proxy),
                Some(&grpc_proxy),
            )),
            Case::GrpcShadow => Some((
                shadow_proxy.addr(),
                proxy_pids(&shadow_proxy),
                Some(&shadow_proxy),
            )),
        }
    };
    // Warm-up: every target, unmeasured.
    for case in Case::ALL {
        if let Some((addr, _, _)) = target(case) {
            let warm = ProtocolOptions {
                calls: (opts.calls / 10).max(100),
                ..opts.clone()
            };
            load(addr, case, &warm).await;
        }
    }
    for round in 1..=opts.rounds {
        for case in Case::ALL {
            let Some((addr, pids, proxy)) = target(case) else {
                continue;
            };
            if !quiesce(&pids, QUIET_INTERVAL, QUIET_TIMEOUT).await {
                report.problems.push(format!(
                    "round {round}, {}: the proxy was not quiet before the run",
                    case.label()
                ));
            }
            let comparisons = || async {
                match proxy {
                    Some(p) if case == Case::GrpcShadow => {
                        p.counter("cutover_comparisons_total", &[("route", "grpc")])
                            .await
                    }
                    _ => 0.0,
                }
            };
            let compared_before = comparisons().await;
            let before = sys::cpu_ticks_of(&pids);
            let outcome = load(addr, case, opts).await;
            if case == Case::GrpcShadow {
                let deadline = Instant::now() + SETTLE_TIMEOUT;
                while comparisons().await - compared_before < outcome.ok as f64
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let cpu_ticks = sys::cpu_ticks_of(&pids).saturating_sub(before);
            let compared = comparisons().await - compared_before;
            report.runs.push(Run {
                round,
                case,
                ok: outcome.ok,
                errors: outcome.errors,
                elapsed: outcome.elapsed,
                cpu_ticks,
                p50_us: outcome.latency.value_at_quantile(0.5),
                p99_us: outcome.latency.value_at_quantile(0.99),
                comparisons: compared,
            });
        }
    }
    if report.errors() > 0 {
        report
            .problems
            .push(format!("{} calls failed", report.errors()));
    }
    drop((h1, grpc_a, grpc_b));
    if report.pinning.is_ok() {
        if let Err(e) = sys::unpin_processes(&me, cpus) {
            report.problems.push(format!("unpinning: {e}"));
        }
    }
    Ok(report)
}

fn proxy_pids(proxy: &Proxy) -> Vec<u32> {
    proxy.pid().map(sys::process_tree).unwrap_or_default()
}

struct Outcome {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

/// The closed loop of one run.
async fn load(addr: SocketAddr, case: Case, opts: &ProtocolOptions) -> Outcome {
    let tickets = Arc::new(AtomicI64::new(
        i64::try_from(opts.calls).unwrap_or(i64::MAX),
    ));
    let message = frame(&vec![b'x'; opts.body_bytes]);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.connections {
        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Ok((sender, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        for _ in 0..opts.streams {
            let (mut sender, tickets, message) = (sender.clone(), tickets.clone(), message.clone());
            tasks.spawn(async move {
                let mut latency = Histogram::<u64>::new(3).expect("histogram");
                let (mut ok, mut errors) = (0u64, 0u64);
                while tickets.fetch_sub(1, Ordering::AcqRel) > 0 {
                    let t = Instant::now();
                    let good = call(&mut sender, addr, case, &message).await;
                    let _ = latency.record(t.elapsed().as_micros() as u64);
                    if good {
                        ok += 1;
                    } else {
                        errors += 1;
                    }
                }
                (ok, errors, latency)
            });
        }
    }
    let mut outcome = Outcome {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new(3).expect("histogram"),
    };
    let deadline = tokio::time::sleep(opts.run_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok((ok, errors, latency))) => {
                    outcome.ok += ok;
                    outcome.errors += errors;
                    let _ = outcome.latency.add(latency);
                }
                Some(Err(_)) => outcome.errors += 1,
                None => break,
            },
            () = &mut deadline => {
                tasks.abort_all();
                break;
            }
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

/// One call; `true` when it succeeded (200, and `grpc-status: 0` for gRPC).
async fn call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    case: Case,
    message: &Bytes,
) -> bool {
    let req = if case.grpc() {
        http::Request::post(format!("http://{addr}{METHOD}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(message.clone()))
    } else {
        http::Request::get(format!("http://{addr}{H2C_PATH}")).body(Full::new(Bytes::new()))
    };
    let Ok(req) = req else {
        return false;
    };
    if sender.ready().await.is_err() {
        return false;
    }
    let Ok(resp) = sender.send_request(req).await else {
        return false;
    };
    if resp.status() != 200 {
        return false;
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let Ok(collected) = resp.into_body().collect().await else {
        return false;
    };
    if !case.grpc() {
        return true;
    }
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head_status);
    status.is_some_and(|s| s == "0")
}

/// nginx with two HTTP/2 (h2c) servers: `proxy_pass` to the HTTP/1.1 backend and `grpc_pass`
/// to the gRPC backend, each upstream kept alive. Stopped when dropped.
struct Nginx {
    child: Child,
    h2c: SocketAddr,
    grpc: SocketAddr,
    version: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(program: &Path, h1: &RunningBackend, grpc: SocketAddr) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let (h2c_addr, grpc_addr) = (free_addr(), free_addr());
        let d = dir.path().display();
        let mut c = String::new();
        let _ = writeln!(c, "worker_processes 1;\ndaemon off;\nmaster_process on;");
        let _ = writeln!(c, "pid {d}/nginx.pid;\nerror_log {d}/error.log warn;");
        let _ = writeln!(
            c,
            "events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;"
        );
        for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            let _ = writeln!(c, "  {t}_temp_path {d}/{t}_temp;");
        }
        let _ = writeln!(
            c,
            "  keepalive_requests 1000000;\n  http2_max_requests 1000000;\n  \
             proxy_http_version 1.1;\n  proxy_set_header Connection \"\";"
        );
        let _ = writeln!(
            c,
            "  upstream h1 {{ server {}; keepalive 64; keepalive_requests 1000000; }}",
            h1.addr()
        );
        let _ = writeln!(
            c,
            "  upstream grpc {{ server {grpc}; keepalive 64; keepalive_requests 1000000; }}"
        );
        let _ = writeln!(
            c,
            "  server {{ listen {h2c_addr} http2; location / {{ proxy_pass http://h1; }} }}"
        );
        let _ = writeln!(
            c,
            "  server {{ listen {grpc_addr} http2; location / {{ grpc_pass grpc://grpc; }} }}\n}}"
        );
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, c).map_err(|e| format!("write nginx.conf: {e}"))?;
        let child = Command::new(program)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn nginx: {e}"))?;
        let version = sys::first_line_of(program, &["-v"]).unwrap_or_else(|| "nginx".into());
        let nginx = Nginx {
            child,
            h2c: h2c_addr,
            grpc: grpc_addr,
            version,
            _dir: dir,
        };
        // Ready when both ports answer a call.
        let deadline = Instant::now() + Duration::from_secs(10);
        let probe = ProtocolOptions {
            calls: 1,
            connections: 1,
            streams: 1,
            run_timeout: Duration::from_secs(2),
            ..ProtocolOptions::default()
        };
        loop {
            let h2c_ok = load(nginx.h2c, Case::H2cNginx, &probe).await.ok == 1;
            let grpc_ok = load(nginx.grpc, Case::GrpcNginx, &probe).await.ok == 1;
            if h2c_ok && grpc_ok {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(nginx._dir.path().join("error.log"))
                    .unwrap_or_default();
                return Err(format!(
                    "nginx did not serve h2c and gRPC within 10 s: {log}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pids(&self) -> Vec<u32> {
        sys::process_tree(self.child.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        for p in self.pids().into_iter().rev() {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
