//! `cutover serve`: wires the config source, the data plane workers and the admin API
//! together, and drains on SIGTERM/SIGINT. This module and `main.rs` are the only ones that
//! import `cutover-control`; the request path imports only `cutover-config`.
//!
//! Shutdown: on SIGTERM or SIGINT the listeners close, `/readyz` turns 503, kept-alive
//! connections close after their current request (HTTP/2: GOAWAY), and the process exits as
//! soon as no request has been in flight for [`DRAIN_QUIET`] — or when `[proxy] grace_period`
//! runs out, whichever comes first.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_config::Config;
use cutover_control::controller::{ControlView, Controller};
use cutover_control::{ConfigSource, EtcdSource, FileSource};
use tokio::sync::watch;
use tracing::{error, info};

use crate::admin::Admin;
use crate::handover::{self, Inherited, Offer, Role};
use crate::listen::{Address, Cap, ConnLimits};
use crate::state::Shared;
use crate::telemetry::RuntimeKind;

/// How long no request may be in flight before a draining process exits.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// How long the workers may take to close their listeners once told to.
const LISTENERS_CLOSE: Duration = Duration::from_secs(1);

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
    /// A file the config names (admin token, etcd certificates or password) is missing or
    /// unusable: each problem names the key and the path.
    #[error("{}", .0.join("\n"))]
    Files(Vec<String>),
    #[error("{0}")]
    Runtime(String),
}

/// The admin token from `[admin] token_file`; an error names the key and the path, never the
/// content.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    cutover_control::connect::read_secret(path)
        .map_err(|why| format!("[admin] token_file {}: {why}", path.display()))
}

/// Parse `path` and run until SIGTERM/SIGINT — or until a new binary took the sockets over.
/// `upgrade`: take the listening sockets of the cutover running with the same
/// `[proxy] upgrade_socket` (see [`crate::handover`]).
pub fn serve(path: &Path, upgrade: bool) -> Result<(), ServeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServeError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut config = cutover_config::parse_config_toml(&text).map_err(ServeError::Invalid)?;
    // Routes of the file (live, or etcd's cold-start fallback) decode gRPC with the descriptor
    // sets they name, read here (SPEC §8).
    cutover_control::attach_descriptor_files(&mut config, path).map_err(ServeError::Invalid)?;
    let source: Box<dyn ConfigSource> = match &config.etcd {
        Some(etcd) => Box::new(EtcdSource::new(
            etcd.clone(),
            config.routes.clone(),
            cutover_control::model::instance_id(),
        )),
        None => Box::new(FileSource::new(path, text, config.clone())),
    };
    run(config, source, upgrade)
}

/// Run the data plane for `config`, taking routes from `source`: `[proxy] threads` workers
/// (see [`crate::listen`]); the admin API, the config source, the controller and the signals
/// on a control runtime of their own.
pub fn run(config: Config, source: Box<dyn ConfigSource>, upgrade: bool) -> Result<(), ServeError> {
    let p = &config.proxy;
    let token = match &config.admin.token_file {
        Some(path) => Some(crate::admin::Token::new(
            read_token(path).map_err(|e| ServeError::Files(vec![e]))?,
        )),
        None => None,
    };
    // etcd's TLS and password files must be there at start (they are read again at every
    // reconnect, so a rotation later is picked up).
    if let Some(etcd) = &config.etcd {
        let problems = cutover_control::connect::check_files(&etcd.auth);
        if !problems.is_empty() {
            return Err(ServeError::Files(problems));
        }
    }
    let (mut inherited, upgrading) = match (upgrade, &p.upgrade_socket) {
        (false, _) => (Inherited::default(), None),
        (true, None) => {
            return Err(ServeError::Runtime(
                "--upgrade needs [proxy] upgrade_socket: the path the running cutover offers its sockets on".into(),
            ))
        }
        (true, Some(path)) if !handover::someone_offers(path) => {
            // Nothing to take over (the first start of a systemd template unit, say): start
            // fresh, and offer the sockets for the next upgrade.
            info!(path = %path.display(), "--upgrade: no cutover offers its sockets here; starting fresh");
            (Inherited::default(), None)
        }
        (true, Some(path)) => {
            let (inherited, upgrade) =
                handover::fetch(path).map_err(|e| ServeError::Runtime(e.to_string()))?;
            (inherited, Some(upgrade))
        }
    };
    let initial = source.initial_state();
    let shared = Arc::new(Shared::new(&config, &initial));

    let mut addresses: Vec<Address> = p
        .listen
        .iter()
        .map(|&addr| Address { addr, tls: None })
        .collect();
    if let Some(tls) = &p.tls {
        let acceptor = crate::tls::acceptor(&tls.cert, &tls.key)
            .map_err(|e| ServeError::Runtime(format!("[proxy] tls_cert/tls_key: {e}")))?;
        addresses.push(Address {
            addr: tls.listen,
            tls: Some(acceptor),
        });
    }
    let threads = p.threads.max(1);
    let runtime_error = |e: std::io::Error| ServeError::Runtime(e.to_string());
    let crate::listen::Bound {
        per_worker,
        addrs: bound,
        mut sockets,
    } = crate::listen::bind(&addresses, threads, &mut inherited).map_err(runtime_error)?;
    let admin_listener = match inherited.take(Role::Admin, config.admin.listen).pop() {
        Some(listener) => listener,
        None => std::net::TcpListener::bind(config.admin.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                ServeError::Runtime(format!("[admin] listen {}: {e}", config.admin.listen))
            })?,
    };
    let admin_addr = admin_listener.local_addr().map_err(runtime_error)?;
    sockets.push((
        Role::Admin,
        admin_addr,
        admin_listener.try_clone().map_err(runtime_error)?,
    ));
    let leftover = inherited.leftover();
    if !leftover.is_empty() {
        info!(addresses = ?leftover, "upgrade: closing the old process's sockets this config no longer listens on");
    }
    drop(inherited);
    // A fresh process offers its sockets at once; an upgrading one once the old one let go.
    let offer_path = p.upgrade_socket.clone();
    let (offer, mut pending_sockets) = match (&upgrading, &offer_path) {
        (None, Some(path)) => (
            Some(Offer::bind(path, sockets).map_err(runtime_error)?),
            None,
        ),
        (Some(_), Some(_)) => (None, Some(sockets)),
        _ => {
            // No hand-over: the duplicates close now, so a drain closes the listeners.
            drop(sockets);
            (None, None)
        }
    };
    let withdraw = Arc::new(std::sync::Mutex::new(offer.as_ref().map(Offer::withdrawer)));

    let metrics = &shared.telemetry.metrics;
    let cap = Arc::new(Cap::new(
        p.max_connections,
        metrics.downstream_connections.clone(),
        metrics.downstream_rejected.clone(),
    ));
    let limits = ConnLimits {
        header_read_timeout: p.header_read_timeout,
        idle_timeout: p.idle_timeout,
        write_timeout: p.write_timeout,
        max_header_bytes: p.max_header_bytes,
        max_headers: p.max_headers,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (close_listeners, accepting) = crate::listen::accepting();
    for (index, listeners) in per_worker.into_iter().enumerate() {
        crate::listen::spawn_worker(
            index,
            listeners,
            shared.clone(),
            cap.clone(),
            limits,
            accepting.clone(),
            shutdown_rx.clone(),
        )
        .map_err(|e| ServeError::Runtime(format!("cannot start worker {index}: {e}")))?;
    }
    drop(accepting);

    let control_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cutover-control")
        .enable_all()
        .build()
        .map_err(|e| ServeError::Runtime(format!("cannot start the control runtime: {e}")))?;
    info!(
        listen = ?bound,
        admin = %admin_addr,
        threads,
        "cutover starting"
    );
    let view = Arc::new(ControlView::default());
    let control_json = crate::admin::ControlJson {
        view: {
            let view = view.clone();
            Arc::new(move || serde_json::json!(view.snapshot()))
        },
        statuses: {
            let view = view.clone();
            Arc::new(move || serde_json::json!(view.statuses()))
        },
    };
    // Operator actions (SPEC §10): into etcd as `cutover ctl` writes, or in-process.
    let operator: Arc<dyn cutover_config::operator::Operator> = match &config.etcd {
        Some(etcd) => Arc::new(cutover_control::ctl::EtcdOperator::new(etcd)),
        None => Arc::new(cutover_control::controller::LocalOperator::new(
            shared.clone(),
            view.clone(),
        )),
    };
    let admin = Admin::new(shared.clone(), control_json, token, operator);
    let mut probe_addrs = bound;
    probe_addrs.push(admin_addr);
    let grace = p.grace_period;
    // Set when a new binary took the sockets over: drain as on SIGTERM.
    let (handed_over_tx, handed_over) = tokio::sync::oneshot::channel::<()>();
    let mut handed_over_tx = Some(handed_over_tx);
    if let Some(offer) = offer {
        spawn_offer(offer, handed_over_tx.take()).map_err(runtime_error)?;
    }
    control_rt.block_on(async move {
        match tokio::net::TcpListener::from_std(admin_listener) {
            Ok(listener) => {
                tokio::spawn(admin.serve(listener, shutdown_rx.clone()));
            }
            Err(e) => error!(error = %e, "cannot serve the admin API"),
        }
        tokio::spawn(control_loop(
            shared.clone(),
            view,
            source,
            Arc::new(initial),
            probe_addrs,
            config.etcd.clone(),
            config.notify.webhook.clone(),
            shutdown_rx,
        ));
        if let Some(upgrade) = upgrading {
            // Serve first, then tell the old process (which then drains), then offer.
            let ready = tokio::time::timeout(Duration::from_secs(60), async {
                while !shared.is_ready() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            if ready.is_err() {
                error!("upgrade: not ready within 60 s; the old process keeps serving");
            }
            let freed = tokio::task::spawn_blocking(move || upgrade.ready()).await;
            match freed {
                Ok(Ok(path)) => {
                    info!("upgrade: the old process let go; this one serves");
                    let sockets = pending_sockets.take().unwrap_or_default();
                    let offered = Offer::bind(&path, sockets).and_then(|o| {
                        *withdraw.lock().unwrap_or_else(|p| p.into_inner()) = Some(o.withdrawer());
                        spawn_offer(o, handed_over_tx.take())
                    });
                    if let Err(e) = offered {
                        error!(error = %e, "upgrade socket: cannot offer for the next upgrade");
                    }
                }
                Ok(Err(e)) => error!(error = %e, "upgrade: the old process did not confirm"),
                Err(e) => error!(error = %e, "upgrade: confirmation task failed"),
            }
        }
        let name = tokio::select! {
            name = wait_for_signal() => name,
            Ok(()) = handed_over => "upgrade",
        };
        // Draining: the listeners must close (a hand-over already gave them away), and be
        // closed before any answer says `Connection: close` (see `CloseListeners`).
        if let Some(w) = withdraw.lock().unwrap_or_else(|p| p.into_inner()).take() {
            w.withdraw();
        }
        if !close_listeners.close(LISTENERS_CLOSE).await {
            error!(within = ?LISTENERS_CLOSE, "a worker did not close its listener in time; draining anyway");
        }
        info!(
            grace = ?grace,
            inflight = shared.inflight(),
            "{name}: draining (no new connections; in-flight requests finish)"
        );
        shared.draining.store(true, Ordering::Relaxed);
        let _ = shutdown_tx.send(true);
        let deadline = Instant::now() + grace;
        let drained = tokio::task::spawn_blocking({
            let shared = shared.clone();
            move || wait_drained(&shared, &cap, deadline)
        })
        .await
        .unwrap_or(false);
        if drained {
            info!("drained: no request in flight; exiting");
        } else {
            info!(
                inflight = shared.inflight(),
                "grace period over; exiting with requests in flight"
            );
        }
    });
    std::process::exit(0);
}

/// Offer the sockets on a thread of their own; `done` fires once a new binary took them over.
fn spawn_offer(
    offer: Offer,
    done: Option<tokio::sync::oneshot::Sender<()>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cutover-upgrade".into())
        .spawn(move || {
            offer.serve();
            if let Some(done) = done {
                let _ = done.send(());
            }
        })
}

/// SIGTERM or SIGINT (the name of the one that came).
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; SIGTERM will not drain");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Wait until no request has been in flight and no client connection open for
/// [`DRAIN_QUIET`] (true) or `deadline` passes (false).
fn wait_drained(shared: &Shared, cap: &Cap, deadline: Instant) -> bool {
    let mut idle_since: Option<Instant> = None;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        if shared.inflight() > 0 || cap.open() > 0 {
            idle_since = None;
            continue;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= DRAIN_QUIET {
            return true;
        }
    }
    false
}

/// The control loop: runs the config source and the controller, applies what the source
/// publishes, and marks the process ready once every listener accepts connections.
#[allow(clippy::too_many_arguments)]
async fn control_loop(
    shared: Arc<Shared>,
    view: Arc<ControlView>,
    source: Box<dyn ConfigSource>,
    initial: Arc<cutover_control::ConfigState>,
    probe_addrs: Vec<SocketAddr>,
    etcd: Option<cutover_config::EtcdSettings>,
    webhook: Option<String>,
    shutdown: watch::Receiver<bool>,
) {
    shared.telemetry.metrics.note_runtime(RuntimeKind::Control);
    let (tx, mut rx) = watch::channel(initial);
    let source_task = tokio::spawn(source.run(tx, shutdown.clone()));

    let instance = cutover_control::model::instance_id();
    let controller = match &etcd {
        Some(etcd) => Controller::etcd(shared.clone(), view, etcd, instance, webhook),
        None => Controller::local(shared.clone(), view, instance, webhook),
    };
    let controller_task = controller.spawn(shutdown.clone());

    {
        let shared = shared.clone();
        tokio::spawn(async move {
            wait_listening(&probe_addrs).await;
            shared.ready.store(true, Ordering::Relaxed);
            info!("ready: config loaded and listeners bound");
        });
    }

    tokio::spawn(shared.resolver.clone().run());
    loop {
        let state = rx.borrow_and_update().clone();
        // Names are looked up here, never while the snapshot is built.
        shared.resolver.prepare(&state).await;
        shared.apply(&state);
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

/// Wait until a TCP connect to each address succeeds (the listener is bound and accepting).
///
/// An address with port 0 is skipped (probing port 0 would retry forever); `serve` probes the
/// addresses `listen::bind` reports, where the kernel's choice is already filled in.
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
