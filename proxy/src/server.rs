//! `cutover serve`: wires the config source, the data plane and the admin API into one pingora
//! server, and drains on SIGTERM/SIGINT.
//!
//! Shutdown: on SIGTERM or SIGINT the listeners stop accepting (pingora's graceful terminate),
//! `/readyz` turns 503, keep-alive connections close after their current request, and the
//! process exits as soon as no request has been in flight for [`DRAIN_QUIET`] — or when
//! `[proxy] grace_period` runs out, whichever comes first. SIGQUIT is pingora's graceful
//! upgrade (listening sockets handed to a new process).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cutover_config::Config;
use cutover_control::controller::{ControlView, Controller};
use cutover_control::{ConfigSource, EtcdSource, FileSource};
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::sync::watch;
use tracing::{error, info};

use crate::admin::Admin;
use crate::connections::ConnectionCap;
use crate::service::Cutover;
use crate::state::Shared;
use crate::telemetry::RuntimeKind;

/// How long no request may be in flight before a draining process exits.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// Why `serve` could not run; the binary maps these to exit codes 1 and 2.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(cutover_config::ConfigErrors),
    #[error("{0}")]
    Runtime(String),
}

/// Parse `path` and run until SIGTERM/SIGINT.
pub fn serve(path: &Path) -> Result<(), ServeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServeError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let config = cutover_config::parse_config_toml(&text).map_err(ServeError::Invalid)?;
    let source: Box<dyn ConfigSource> = match &config.etcd {
        Some(etcd) => Box::new(EtcdSource::new(
            etcd.clone(),
            config.routes.clone(),
            cutover_control::model::instance_id(),
        )),
        None => Box::new(FileSource::new(path, text, config.clone())),
    };
    run(config, source)
}

/// Read buffer of each client connection: none. pingora's default is a 64 KiB buffer per
/// connection, zero-filled when the connection is accepted, so every byte of it is resident:
/// with 1,000 keep-alive clients that was most of the RSS (16 KiB: still +16 MiB). Without it
/// reads go straight into the HTTP session's own header and body buffers: the same syscalls
/// per request (strace over 20,000 closed-loop requests), and `max_header_bytes` is enforced
/// as before.
const DOWNSTREAM_READ_BUFFER: usize = 0;

/// The HTTP server options of the client listeners: h2c offered besides HTTP/1.1.
pub fn http_server_options() -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    options
}

/// Socket buffers of each client connection: no separate read buffer (see
/// `DOWNSTREAM_READ_BUFFER`).
pub fn client_buffers() -> L4BufferSettings {
    L4BufferSettings::new(DOWNSTREAM_READ_BUFFER, DEFAULT_L4_WRITE_BUFFER_SIZE)
}

/// Run the data plane for `config`, taking routes from `source`.
pub fn run(config: Config, source: Box<dyn ConfigSource>) -> Result<(), ServeError> {
    let initial = source.initial_state();
    let shared = Arc::new(Shared::new(&config, &initial));

    let conf = ServerConf {
        threads: config.proxy.threads,
        grace_period_seconds: Some(config.proxy.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut app = pingora::proxy::http_proxy(&server.configuration, Cutover::new(shared.clone()));
    app.server_options = Some(http_server_options());
    let metrics = &shared.telemetry.metrics;
    let app = ConnectionCap::new(
        app,
        config.proxy.max_connections,
        metrics.downstream_connections.clone(),
        metrics.downstream_rejected.clone(),
    );
    let mut proxy = Service::new("cutover proxy".to_string(), app);
    let buffers = client_buffers();
    for addr in &config.proxy.listen {
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
    }
    if let Some(tls) = &config.proxy.tls {
        // Mozilla's intermediate settings, and h2 offered by ALPN (SPEC §2), HTTP/1.1 otherwise.
        let mut settings =
            TlsSettings::intermediate(&tls.cert.to_string_lossy(), &tls.key.to_string_lossy())
                .map_err(|e| ServeError::Runtime(format!("[proxy] tls_cert/tls_key: {e}")))?;
        settings.enable_h2();
        proxy.add_listener(
            ListenerConfig::tcp(tls.listen.to_string())
                .tls(settings)
                .l4_buffer(buffers),
        );
    }

    // What the controller shows on the admin API (`/api/v1/control`).
    let view = Arc::new(ControlView::default());
    let control_json = {
        let view = view.clone();
        Arc::new(move || serde_json::json!(view.snapshot())) as crate::admin::ControlJson
    };
    let mut admin = Service::new(
        "cutover admin".to_string(),
        Admin::new(shared.clone(), control_json),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);

    let mut probe_addrs = config.proxy.listen.clone();
    probe_addrs.extend(config.proxy.tls.as_ref().map(|t| t.listen));
    probe_addrs.push(config.admin.listen);
    let control = background_service(
        "cutover control",
        Control {
            shared: shared.clone(),
            view,
            source: Mutex::new(Some(source)),
            initial: Arc::new(initial),
            probe_addrs,
            etcd: config.etcd.clone(),
            webhook: config.notify.webhook.clone(),
        },
    );

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(control);
    info!(
        listen = ?config.proxy.listen,
        admin = %config.admin.listen,
        threads = config.proxy.threads,
        "cutover starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            shared,
            grace: config.proxy.grace_period,
        }),
    });
    Ok(())
}

/// The control loop: runs the config source and applies what it publishes; marks the process
/// ready once every listener accepts connections.
struct Control {
    shared: Arc<Shared>,
    view: Arc<ControlView>,
    source: Mutex<Option<Box<dyn ConfigSource>>>,
    initial: Arc<cutover_control::ConfigState>,
    probe_addrs: Vec<SocketAddr>,
    etcd: Option<cutover_config::EtcdSettings>,
    webhook: Option<String>,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(source) = self.source.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        self.shared
            .telemetry
            .metrics
            .note_runtime(RuntimeKind::Control);
        let (tx, mut rx) = watch::channel(self.initial.clone());
        let source_task = tokio::spawn(source.run(tx, shutdown.clone()));

        let (dp, view) = (self.shared.clone(), self.view.clone());
        let instance = cutover_control::model::instance_id();
        let webhook = self.webhook.clone();
        let controller = match &self.etcd {
            Some(etcd) => Controller::etcd(dp, view, etcd, instance, webhook),
            None => Controller::local(dp, view, instance, webhook),
        };
        let controller_task = controller.spawn(shutdown.clone());

        let shared = self.shared.clone();
        let addrs = self.probe_addrs.clone();
        tokio::spawn(async move {
            wait_listening(&addrs).await;
            shared.ready.store(true, Ordering::Relaxed);
            info!("ready: config loaded and listeners bound");
        });

        loop {
            let state = rx.borrow_and_update().clone();
            self.shared.apply(&state);
            if rx.changed().await.is_err() {
                break;
            }
        }
        if let Err(e) = source_task.await {
            error!(error = %e, "config source task failed");
        }
        if let Err(e) = controller_task.await {
            error!(error = %e, "controller task failed");
        }
    }
}

/// Wait until a TCP connect to each address succeeds (the listener is bound and accepting).
///
/// An address with port 0 is skipped: the kernel picks the port when pingora binds it, and
/// pingora does not report which, so there is nothing to connect to (probing port 0 would
/// retry forever and the process would never turn ready).
async fn wait_listening(addrs: &[SocketAddr]) {
    for addr in addrs.iter().filter(|addr| addr.port() != 0) {
        let probe = if addr.ip().is_unspecified() {
            SocketAddr::new(
                if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                },
                addr.port(),
            )
        } else {
            *addr
        };
        while tokio::net::TcpStream::connect(probe).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// SIGTERM and SIGINT drain; SIGQUIT hands the sockets to a new process (pingora upgrade).
struct Signals {
    shared: Arc<Shared>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            error!("cannot install signal handlers; SIGTERM will not drain");
            return std::future::pending().await;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
        };
        info!(
            grace = ?self.grace,
            inflight = self.shared.inflight(),
            "{name}: draining (no new connections; in-flight requests finish)"
        );
        self.shared.draining.store(true, Ordering::Relaxed);
        let shared = self.shared.clone();
        std::thread::spawn(move || exit_when_drained(&shared));
        ShutdownSignal::GracefulTerminate
    }
}

/// Exit 0 once no request has been in flight for [`DRAIN_QUIET`]; pingora's grace period is the
/// upper bound if requests never finish.
fn exit_when_drained(shared: &Shared) {
    let mut idle_since: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(10));
        if shared.inflight() > 0 {
            idle_since = None;
            continue;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= DRAIN_QUIET {
            info!("drained: no request in flight; exiting");
            std::process::exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_listening_returns_once_every_listener_accepts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bound = listener.local_addr().unwrap();
        let unspecified = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), bound.port());
        tokio::time::timeout(
            Duration::from_secs(5),
            wait_listening(&[bound, unspecified]),
        )
        .await
        .expect("both addresses reach the bound listener");
    }

    #[tokio::test]
    async fn wait_listening_skips_port_zero() {
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        tokio::time::timeout(Duration::from_secs(5), wait_listening(&[any_port]))
            .await
            .expect("a port-0 listener cannot be probed and does not hold readiness back");
    }
}
