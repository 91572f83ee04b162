//! `cutover demo`: two in-process demo backends, the real `cutover serve` (this binary, as a
//! child process) on the embedded file source, load from 8 concurrent clients, and the weights
//! walked 0 → 10 → 50 → 100 by rewriting the config file, with a table per step.
//!
//! Needs no etcd and binds only 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// The walk: `(new weight, shadow %)`. First shadow mode (new serves nothing, every request is
/// mirrored to it and compared), then the canary steps.
const STEPS: [(u32, u32); 4] = [(0, 100), (10, 0), (50, 0), (100, 0)];

async fn walk(args: DemoArgs) -> Result<(), DemoError> {
    let legacy = start_backend("legacy", Duration::from_millis(2)).await?;
    let new = start_backend("new", Duration::from_millis(1)).await?;
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("cutover.toml");
    let (listen, admin) = (free_port()?, free_port()?);
    let render = |(new_weight, shadow): (u32, u32)| {
        render_config(listen, admin, legacy, new, new_weight, shadow)
    };
    write_atomic(&config_path, &render((0, 0)))?;

    let log_path = dir.path().join("cutover.log");
    let mut proxy = ProxyChild::spawn(&config_path, &log_path)?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
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
    println!("  new backend     http://{new}   (answers in ~1 ms; its /orders/{{n}} disagrees on \"total\")");
    println!("  proxy           http://{listen}");
    println!("  dashboard       http://{admin}/   (metrics: http://{admin}/metrics)");
    println!(
        "  config file     {}   (edit the weights to steer traffic)",
        config_path.display()
    );
    println!();
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
    let mut shadow_report = None;
    for step in STEPS {
        let (new_weight, shadow) = step;
        write_atomic(&config_path, &render(step))?;
        wait_until(Duration::from_secs(10), || async {
            weights_applied(&client, admin, f64::from(new_weight), f64::from(shadow)).await
        })
        .await
        .map_err(|_| format!("weights {step:?} were not applied within 10s"))?;
        let r = drive(&client, listen, args.step, args.connections).await;
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
            total / args.step.as_secs_f64(),
        );
        if shadow > 0 {
            shadow_report = Some(shadow_summary(&client, admin).await);
        }
    }
    if let Some(report) = shadow_report {
        println!();
        println!("{report}");
    }
    println!();
    println!(
        "Each step rewrote the config file; the proxy hot-swapped the weights with no restart."
    );
    if args.keep_running {
        println!(
            "Proxy still running at http://{listen} (dashboard http://{admin}/). Ctrl-C to stop."
        );
        tokio::signal::ctrl_c().await?;
    }
    let code = proxy.terminate()?;
    println!("proxy drained and exited ({code})");
    Ok(())
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

async fn drive(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    listen: SocketAddr,
    duration: Duration,
    connections: usize,
) -> StepResult {
    let result = Arc::new(Mutex::new(StepResult {
        legacy: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
        new: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
        errors: 0,
    }));
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let client = client.clone();
            let result = result.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    // Two endpoints: /orders/{n} (new disagrees on one field) and /users/{n}.
                    let resource = if n.is_multiple_of(2) {
                        "orders"
                    } else {
                        "users"
                    };
                    let url = format!("http://{listen}/{resource}/{}", i as u64 * 1_000_000 + n);
                    let t = Instant::now();
                    let outcome = get(&client, &url).await;
                    let micros = t.elapsed().as_micros() as u64;
                    let mut r = result.lock().await;
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
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(result)
        .map(Mutex::into_inner)
        .unwrap_or_else(|_| unreachable!("all load tasks joined"))
}

/// GET `url`: status, the `x-backend` header, body.
async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
) -> Result<(u16, Option<String>, Bytes), DemoError> {
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

async fn weights_applied(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    admin: SocketAddr,
    new: f64,
    shadow: f64,
) -> bool {
    let Ok(routes) = get_json(client, &format!("http://{admin}/api/v1/routes")).await else {
        return false;
    };
    routes[0]["weights"]["new"].as_f64() == Some(new)
        && routes[0]["weights"]["shadow"].as_f64() == Some(shadow)
}

async fn get_json(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    url: &str,
) -> Result<serde_json::Value, DemoError> {
    let (status, _, body) = get(client, url).await?;
    if status != 200 {
        return Err(format!("{url}: status {status}").into());
    }
    Ok(serde_json::from_slice(&body)?)
}

/// What shadow mode found: the divergence rate and one sample diff.
async fn shadow_summary(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    admin: SocketAddr,
) -> String {
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
/// `x-backend: <name>`. Both backends answer alike, except that `new` gets `total` wrong on
/// `/orders/{n}`.
async fn start_backend(name: &'static str, delay: Duration) -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        let path = req.uri().path();
                        let total = if name == "new" && path.starts_with("/orders/") {
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
                    },
                );
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
) -> String {
    format!(
        r#"# Written by `cutover demo`; edit the weights to steer traffic.
[proxy]
listen = "{listen}"
threads = 1

[admin]
listen = "{admin}"

[stats]
window = "10s"
slices = 10

[[routes]]
id = "orders"
match = {{ path_prefix = "/" }}
legacy = {{ endpoints = ["{legacy}"] }}
new = {{ endpoints = ["{new}"] }}
weights = {{ legacy = {}, new = {new_weight}, shadow = {shadow} }}
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
