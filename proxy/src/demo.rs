//! `cutover demo`: two in-process demo backends, the real `cutover serve` (this binary, as a
//! child process) on the embedded file source, and load from 8 concurrent clients. The story:
//! shadow (every request mirrored to new and compared) until the shadow-phase gate marks the
//! diverging new `rolled_back` (weights kept, no ramp may start); the operator fixes new and
//! writes a canary at 1 % that the proxy's own controller ramps 1 → 5 → 25 %; then a fault in
//! new (20 % of answers fail) and the automatic rollback, with the rule, the reason and the
//! time from fault to rollback.
//!
//! Needs no etcd and binds only 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// Options of `cutover demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long load runs at each weight step.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// Concurrent client connections driving load.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Keep the proxy running after the walk (dashboard stays up) until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
}

type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// Run the demo to the end.
pub fn run(args: DemoArgs) -> Result<(), DemoError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(walk(args))
}

/// The ramp the controller walks after the shadow step (percent of live traffic on new).
const RAMP: [u32; 3] = [1, 5, 25];
/// Share of `new`'s answers that fail once the demo injects its fault.
const FAULT_PERCENT: u64 = 20;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn walk(args: DemoArgs) -> Result<(), DemoError> {
    let fault = Arc::new(AtomicBool::new(false));
    let wrong_total = Arc::new(AtomicBool::new(true));
    let legacy = start_backend("legacy", Duration::from_millis(2), None, None).await?;
    let new = start_backend(
        "new",
        Duration::from_millis(1),
        Some(fault.clone()),
        Some(wrong_total.clone()),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("cutover.toml");
    let (listen, admin) = (free_port()?, free_port()?);
    let render = |new_weight: u32, shadow: u32| {
        render_config(listen, admin, legacy, new, new_weight, shadow, args.step)
    };
    write_atomic(&config_path, &render(0, 0))?;

    let log_path = dir.path().join("cutover.log");
    let mut proxy = ProxyChild::spawn(&config_path, &log_path)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    wait_until(Duration::from_secs(20), || async {
        get(&client, &format!("http://{admin}/readyz"))
            .await
            .is_ok_and(|(s, _, _)| s == 200)
    })
    .await
    .map_err(|_| {
        format!(
            "the proxy did not become ready; its log: {}",
            log_path.display()
        )
    })?;

    println!("cutover demo");
    println!("  legacy backend  http://{legacy}   (answers in ~2 ms)");
    println!("  new backend     http://{new}   (answers in ~1 ms; its /orders/{{n}} disagrees on \"total\" until fixed)");
    println!("  proxy           http://{listen}");
    println!("  dashboard       http://{admin}/   (metrics: http://{admin}/metrics)");
    println!(
        "  config file     {}   (edit the weights to steer traffic)",
        config_path.display()
    );
    println!();
    print_header();

    // 1. Shadow: new serves nothing live, every request is mirrored to it and compared. The
    //    shadow-phase gate judges the comparisons: a diverging new is marked rolled_back.
    write_atomic(&config_path, &render(0, 100))?;
    wait_for_weights(&client, admin, 0.0, 100.0).await?;
    let load = Load::start(&client, listen, args.connections);
    let shadow_started = Instant::now();
    let gate = wait_for_phase(&client, admin, "rolled_back", Duration::from_secs(30))
        .await
        .map_err(|_| "the shadow-phase gate did not mark the diverging new within 30s")?;
    tokio::time::sleep(args.step.saturating_sub(shadow_started.elapsed())).await;
    print_row(0, 100, &load.take().await, shadow_started.elapsed());
    println!();
    println!("{}", shadow_summary(&client, admin).await);
    let breach = &gate["rollback"];
    println!(
        "SHADOW GATE after {:.1}s: rule {} — {}",
        shadow_started.elapsed().as_secs_f64(),
        breach["rule"].as_str().unwrap_or("?"),
        breach["reason"].as_str().unwrap_or("?")
    );
    println!(
        "  phase rolled_back, weights kept (new {} live, shadow {} %): no ramp starts until the \
         operator writes the weights",
        gate["weights"]["new"], gate["weights"]["shadow"]
    );

    // 2. The operator fixes new and writes a canary at the ramp's first step (shadow stays on,
    //    so the divergence rule keeps its data); the controller walks the rest, holding each
    //    step and advancing only while every rule has enough samples and passes.
    println!();
    println!(
        "operator: new fixed (its totals agree now); canary at {}% with shadow on",
        RAMP[0]
    );
    print_header();
    wrong_total.store(false, Ordering::Relaxed);
    write_atomic(&config_path, &render(RAMP[0], 100))?;
    wait_for_weights(&client, admin, f64::from(RAMP[0]), 100.0).await?;
    let _ = load.take().await;
    let mut current = RAMP[0];
    let mut step_started = Instant::now();
    let last = RAMP[RAMP.len() - 1];
    // Bound: every step's hold plus time to gather samples, generously.
    let ramp_deadline =
        Instant::now() + args.step * 4 * RAMP.len() as u32 + Duration::from_secs(30);
    loop {
        if Instant::now() > ramp_deadline {
            return Err(format!(
                "the ramp did not reach {last}% (stuck at {current}%); see {}",
                log_path.display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(route) = route_json(&client, admin).await else {
            continue;
        };
        let weight = route["weights"]["new"].as_f64().unwrap_or(0.0).round() as u32;
        let at_last_long_enough = current == last && step_started.elapsed() >= args.step;
        if weight != current || at_last_long_enough {
            print_row(current, 100, &load.take().await, step_started.elapsed());
            if at_last_long_enough {
                break;
            }
            current = weight;
            step_started = Instant::now();
        }
    }

    // 3. The fault: new starts failing; the error_rate rule fires and the weights snap back.
    println!();
    println!("fault: new now answers {FAULT_PERCENT}% of requests with 500");
    fault.store(true, Ordering::Relaxed);
    let fault_at = Instant::now();
    let rolled_back = wait_for_phase(&client, admin, "rolled_back", Duration::from_secs(30))
        .await
        .map_err(|_| "no rollback within 30s of the fault")?;
    let took = fault_at.elapsed();
    let during = load.take().await;
    fault.store(false, Ordering::Relaxed);
    let rollback = &rolled_back["rollback"];
    println!(
        "ROLLBACK after {:.1}s: rule {} — {}",
        took.as_secs_f64(),
        rollback["rule"].as_str().unwrap_or("?"),
        rollback["reason"].as_str().unwrap_or("?")
    );
    println!(
        "  weights snapped to legacy {} / new {} (decided by {}; {} requests failed on new meanwhile)",
        rolled_back["weights"]["legacy"],
        rolled_back["weights"]["new"],
        rollback["by"].as_str().unwrap_or("?"),
        during.errors
    );
    println!();
    print_header();
    tokio::time::sleep(args.step).await;
    print_row(0, 100, &load.take().await, args.step);
    load.stop().await;
    println!();
    println!(
        "The demo rewrote the config file twice (shadow, then the operator's canary); the gate, \
         the ramp and the rollback were the proxy's own decisions (without etcd they apply \
         in-process; with etcd they are written for the fleet)."
    );
    if args.keep_running {
        // A steady trickle keeps the dashboard's charts, divergences and markers moving.
        let trickle = trickle(&client, listen);
        println!(
            "Proxy still running at http://{listen}, with {TRICKLE_PER_SECOND} requests/s of \
             load.\nOpen the dashboard: http://{admin}/ — the route's phase, the charts with \
             the rollback marker, the diverging `total` side by side. new's fault is off now: \
             set 90/10 or promote from the page and watch it take traffic. Ctrl-C to stop."
        );
        tokio::signal::ctrl_c().await?;
        trickle.abort();
    }
    let code = proxy.terminate()?;
    println!("proxy drained and exited ({code})");
    Ok(())
}

/// Requests per second of [`trickle`].
const TRICKLE_PER_SECOND: u32 = 20;

/// Paced load on both demo endpoints until aborted (answers are not looked at).
fn trickle(client: &HttpClient, listen: SocketAddr) -> tokio::task::JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / TRICKLE_PER_SECOND);
        for n in 0u64.. {
            tick.tick().await;
            let resource = if n.is_multiple_of(2) {
                "orders"
            } else {
                "users"
            };
            let url = format!("http://{listen}/{resource}/{}", 9_000_000 + n);
            let client = client.clone();
            tokio::spawn(async move {
                let _ = get(&client, &url).await;
            });
        }
    })
}

fn print_header() {
    println!(
        "{:>6} | {:>8} | {:>8} {:>8} | {:>9} {:>9} | {:>9} {:>9} | {:>6} | {:>7}",
        "new %",
        "shadow %",
        "legacy",
        "new",
        "leg p50",
        "leg p99",
        "new p50",
        "new p99",
        "errors",
        "req/s"
    );
    println!("{}", "-".repeat(107));
}

fn print_row(new_weight: u32, shadow: u32, r: &StepResult, elapsed: Duration) {
    let total = (r.legacy.len() + r.new.len()).max(1) as f64;
    println!(
        "{:>6} | {:>8} | {:>7.1}% {:>7.1}% | {:>9} {:>9} | {:>9} {:>9} | {:>6} | {:>7.0}",
        new_weight,
        shadow,
        r.legacy.len() as f64 * 100.0 / total,
        r.new.len() as f64 * 100.0 / total,
        ms(&r.legacy, 0.5),
        ms(&r.legacy, 0.99),
        ms(&r.new, 0.5),
        ms(&r.new, 0.99),
        r.errors,
        total / elapsed.as_secs_f64().max(1e-3),
    );
}

async fn wait_for_weights(
    client: &HttpClient,
    admin: SocketAddr,
    new: f64,
    shadow: f64,
) -> Result<(), DemoError> {
    wait_until(Duration::from_secs(10), || async {
        route_json(client, admin).await.is_ok_and(|r| {
            r["weights"]["new"].as_f64() == Some(new)
                && r["weights"]["shadow"].as_f64() == Some(shadow)
        })
    })
    .await
    .map_err(|_| format!("weights new={new} shadow={shadow} were not applied within 10s").into())
}

/// Polls the route until its phase is `phase` (every 20 ms, up to `limit`); the route's JSON.
async fn wait_for_phase(
    client: &HttpClient,
    admin: SocketAddr,
    phase: &str,
    limit: Duration,
) -> Result<serde_json::Value, ()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(route) = route_json(client, admin).await {
            if route["phase"] == phase {
                return Ok(route);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(())
}

async fn route_json(
    client: &HttpClient,
    admin: SocketAddr,
) -> Result<serde_json::Value, DemoError> {
    let routes = get_json(client, &format!("http://{admin}/api/v1/routes")).await?;
    Ok(routes[0].clone())
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        "-".into()
    } else {
        format!("{:.2}ms", h.value_at_quantile(q) as f64 / 1000.0)
    }
}

struct StepResult {
    legacy: Histogram<u64>,
    new: Histogram<u64>,
    errors: u64,
}

fn empty_result() -> StepResult {
    StepResult {
        legacy: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
        new: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
        errors: 0,
    }
}

/// Load from `connections` clients until stopped; [`Load::take`] hands over what was measured
/// since the last take. A request counts in the window it was *sent* in: `take` waits for the
/// window's requests still in flight, so an answer that arrives after a weight change is not
/// shown under the new weights.
struct Load {
    windows: Arc<Mutex<Windows>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The open window and the closed ones still waiting for answers.
struct Windows {
    current: u64,
    /// Per window: what was measured and how many of its requests are still in flight.
    open: std::collections::BTreeMap<u64, (StepResult, usize)>,
}

impl Load {
    fn start(client: &HttpClient, listen: SocketAddr, connections: usize) -> Load {
        let windows = Arc::new(Mutex::new(Windows {
            current: 0,
            open: std::collections::BTreeMap::from([(0, (empty_result(), 0))]),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..connections)
            .map(|i| {
                let (client, windows, stop) = (client.clone(), windows.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        // Two endpoints: /orders/{n} (new disagrees on one field) and /users/{n}.
                        let resource = if n.is_multiple_of(2) {
                            "orders"
                        } else {
                            "users"
                        };
                        let url =
                            format!("http://{listen}/{resource}/{}", i as u64 * 1_000_000 + n);
                        let window = {
                            let mut w = windows.lock().await;
                            let current = w.current;
                            if let Some((_, in_flight)) = w.open.get_mut(&current) {
                                *in_flight += 1;
                            }
                            current
                        };
                        let t = Instant::now();
                        let outcome = get(&client, &url).await;
                        let micros = t.elapsed().as_micros() as u64;
                        let mut w = windows.lock().await;
                        let Some((r, in_flight)) = w.open.get_mut(&window) else {
                            continue;
                        };
                        *in_flight -= 1;
                        match outcome {
                            Ok((200, Some(backend), _)) if backend == "new" => {
                                r.new.saturating_record(micros)
                            }
                            Ok((200, Some(_), _)) => r.legacy.saturating_record(micros),
                            _ => r.errors += 1,
                        }
                    }
                })
            })
            .collect();
        Load {
            windows,
            stop,
            tasks,
        }
    }

    /// Close the current window and return it once its in-flight requests have answered
    /// (each is bounded by `get`'s 5 s timeout).
    async fn take(&self) -> StepResult {
        let closed = {
            let mut w = self.windows.lock().await;
            let closed = w.current;
            w.current += 1;
            let next = w.current;
            w.open.insert(next, (empty_result(), 0));
            closed
        };
        loop {
            {
                let mut w = self.windows.lock().await;
                if w.open
                    .get(&closed)
                    .is_none_or(|(_, in_flight)| *in_flight == 0)
                {
                    return w.open.remove(&closed).map_or_else(empty_result, |(r, _)| r);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// GET `url`: status, the `x-backend` header, body.
async fn get(client: &HttpClient, url: &str) -> Result<(u16, Option<String>, Bytes), DemoError> {
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse()?)).await??;
    let status = resp.status().as_u16();
    let backend = resp
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, backend, body))
}

async fn get_json(client: &HttpClient, url: &str) -> Result<serde_json::Value, DemoError> {
    let (status, _, body) = get(client, url).await?;
    if status != 200 {
        return Err(format!("{url}: status {status}").into());
    }
    Ok(serde_json::from_slice(&body)?)
}

/// What shadow mode found: the divergence rate and one sample diff.
async fn shadow_summary(client: &HttpClient, admin: SocketAddr) -> String {
    let base = format!("http://{admin}/api/v1/routes/orders");
    // The last comparisons finish just after the load stops.
    let _ = wait_until(Duration::from_secs(2), || async {
        get_json(client, &format!("{base}/divergences"))
            .await
            .is_ok_and(|d| d.as_array().is_some_and(|a| !a.is_empty()))
    })
    .await;
    let (Ok(stats), Ok(divergences)) = (
        get_json(client, &format!("{base}/stats")).await,
        get_json(client, &format!("{base}/divergences")).await,
    ) else {
        return "shadow mode: the admin API did not answer".to_string();
    };
    let mut out = format!(
        "shadow mode: {} comparisons, {} diverged ({:.1} %) — new disagrees with legacy",
        stats["comparisons"],
        stats["divergences"],
        stats["divergence_rate"].as_f64().unwrap_or(0.0) * 100.0
    );
    if let Some(d) = divergences.as_array().and_then(|a| a.last()) {
        out.push_str(&format!(
            "\n  sample: {} {} (endpoint {}) differs at {}\n    legacy: {}\n    new:    {}",
            d["method"].as_str().unwrap_or("?"),
            d["path"].as_str().unwrap_or("?"),
            d["endpoint"].as_str().unwrap_or("?"),
            d["json_paths"],
            d["legacy_body"].as_str().unwrap_or(""),
            d["new_body"].as_str().unwrap_or(""),
        ));
    }
    out
}

async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> Result<(), ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(())
}

/// A demo backend: answers every path with a small JSON body after `delay`, tagged
/// `x-backend: <name>`. Both backends answer alike, except that while `wrong_total` is set the
/// backend gets `total` wrong on `/orders/{n}`. While `fault` is set, [`FAULT_PERCENT`] % of
/// answers are 500s.
async fn start_backend(
    name: &'static str,
    delay: Duration,
    fault: Option<Arc<AtomicBool>>,
    wrong_total: Option<Arc<AtomicBool>>,
) -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (fault, wrong_total, served) = (fault.clone(), wrong_total.clone(), served.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (fault, wrong_total, served) =
                        (fault.clone(), wrong_total.clone(), served.clone());
                    async move {
                        tokio::time::sleep(delay).await;
                        let n = served.fetch_add(1, Ordering::Relaxed);
                        let failing = fault.as_ref().is_some_and(|f| f.load(Ordering::Relaxed));
                        if failing && n % 100 < FAULT_PERCENT {
                            return Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(500)
                                    .header("x-backend", name)
                                    .body(Full::new(Bytes::from_static(
                                        b"{\"error\":\"injected\"}",
                                    )))
                                    .expect("static response"),
                            );
                        }
                        let path = req.uri().path();
                        let wrong = wrong_total
                            .as_ref()
                            .is_some_and(|w| w.load(Ordering::Relaxed));
                        let total = if wrong && path.starts_with("/orders/") {
                            "42.49"
                        } else {
                            "42.5"
                        };
                        let body = format!(
                            r#"{{"path":"{path}","items":3,"total":{total},"currency":"EUR"}}"#
                        );
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .header("x-backend", name)
                                .body(Full::new(Bytes::from(body)))
                                .expect("static response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn render_config(
    listen: SocketAddr,
    admin: SocketAddr,
    legacy: SocketAddr,
    new: SocketAddr,
    new_weight: u32,
    shadow: u32,
    hold: Duration,
) -> String {
    let steps = RAMP.map(|s| s.to_string()).join(", ");
    let hold = humantime::format_duration(hold);
    format!(
        r#"# Written by `cutover demo`; edit the weights to steer traffic.
[proxy]
listen = "{listen}"
threads = 1

[admin]
listen = "{admin}"

[stats]
window = "5s"
slices = 50

[[routes]]
id = "orders"
match = {{ path_prefix = "/" }}
legacy = {{ endpoints = ["{legacy}"] }}
new = {{ endpoints = ["{new}"] }}
weights = {{ legacy = {}, new = {new_weight}, shadow = {shadow} }}
# The controller walks these steps on its own, holding each and advancing only while every
# rule passes; a breach rolls back at once.
ramp = {{ steps = [{steps}], hold = "{hold}", auto = true }}
# Judged while new serves live traffic, and (divergence, latency) in shadow as a gate.
rollback = {{ error_rate = {{ max = 0.05, for = "1s", min_requests = 20 }}, latency_p99 = {{ max_ratio = 3.0, for = "2s", min_requests = 20 }}, divergence = {{ max = 0.01, for = "3s", min_samples = 20 }} }}
"#,
        100 - new_weight
    )
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The proxy child process; killed if the demo fails half-way.
struct ProxyChild {
    child: Option<Child>,
}

impl ProxyChild {
    fn spawn(config: &Path, log: &Path) -> Result<Self, DemoError> {
        let exe: PathBuf = std::env::current_exe()?;
        let log = std::fs::File::create(log)?;
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(ProxyChild { child: Some(child) })
    }

    /// SIGTERM, then wait for the drain.
    fn terminate(&mut self) -> Result<std::process::ExitStatus, DemoError> {
        let mut child = self.child.take().ok_or("proxy already stopped")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        Ok(child.wait()?)
    }
}

impl Drop for ProxyChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
