//! A real etcd for tests: Debian's `etcd` on free client and peer ports in a temp dir, stopped
//! by pid when dropped. Never skipped: a missing binary is a clear failure (`make test` installs
//! `etcd-server`). Also leases that a test lets expire ([`Etcd::grant_lease`]) and a fake etcd
//! that refuses every call and times them ([`RefusingEtcd`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, Permission, PutOptions, TlsOptions,
};
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::{eventually, free_port};

/// A running single-node etcd.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    frozen: bool,
    /// Extra command-line flags (kept across restarts).
    flags: Vec<String>,
    /// TLS with client certificates, and RBAC once [`Etcd::enable_auth`] ran.
    secure: Option<Secure>,
    /// The root password, once authentication is on.
    root_password: Option<String>,
}

/// The files of an etcd that speaks only TLS and asks for client certificates
/// (`--client-cert-auth`): its CA, its server certificate, and the harness's own client
/// certificate.
#[derive(Debug, Clone)]
pub struct Secure {
    pub ca: PathBuf,
    pub server: crate::certs::Pair,
    pub client: crate::certs::Pair,
}

/// The etcd binary: `$ETCD_BIN`, else `etcd` on PATH.
pub fn etcd_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("ETCD_BIN") {
        return PathBuf::from(bin);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("etcd"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "etcd not found on PATH (and $ETCD_BIN unset): run `make test`, which installs \
                 Debian's etcd-server, or `apt-get install etcd-server`"
            )
        })
}

/// A temp dir for etcd's data, in memory (`/dev/shm`) where the machine has it: etcd
/// preallocates 64 MiB WAL segments (about 120 MiB per instance on disk), and tests start many.
/// tmpfs also makes its fsyncs free. Falls back to the system temp dir.
fn data_dir() -> tempfile::TempDir {
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("cutover-etcd-");
        b
    };
    builder()
        .tempdir_in("/dev/shm")
        .or_else(|_| builder().tempdir())
        .expect("temp dir for etcd")
}

impl Etcd {
    /// Start etcd and wait until it answers (bounded).
    pub async fn start() -> Etcd {
        Etcd::start_with(&[]).await
    }

    /// [`Etcd::start`] with extra command-line `flags` (e.g. `--backend-batch-interval=10ms`).
    pub async fn start_with(flags: &[String]) -> Etcd {
        Etcd::launch(flags, None).await
    }

    /// An etcd on `https://` only, asking every client for a certificate signed by
    /// `secure.ca` (SPEC §9 tests). [`Etcd::enable_auth`] turns RBAC on.
    pub async fn start_secure(secure: Secure) -> Etcd {
        let flags = vec![
            "--client-cert-auth".to_string(),
            format!("--trusted-ca-file={}", secure.ca.display()),
            format!("--cert-file={}", secure.server.cert.display()),
            format!("--key-file={}", secure.server.key.display()),
        ];
        Etcd::launch(&flags, Some(secure)).await
    }

    async fn launch(flags: &[String], secure: Option<Secure>) -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: data_dir(),
            client_port: free_port(),
            peer_port: free_port(),
            frozen: false,
            flags: flags.to_vec(),
            secure,
            root_password: None,
        };
        etcd.spawn();
        etcd.wait_ready().await;
        etcd
    }

    /// RBAC on: a `root` user with `password`, which the harness's clients use from now on.
    pub async fn enable_auth(&mut self, password: &str) {
        let mut c = self.client().await;
        c.user_add("root", password, None).await.expect("add root");
        c.user_grant_role("root", "root").await.expect("root role");
        c.auth_enable().await.expect("enable auth");
        self.root_password = Some(password.to_string());
    }

    /// A user with `password` that may read and write every key under `prefix` (and nothing
    /// else), through a role of its own.
    pub async fn add_user(&self, name: &str, password: &str, prefix: &str) {
        let mut c = self.client().await;
        let role = format!("{name}-rw");
        c.user_add(name, password, None).await.expect("add user");
        c.role_add(&role).await.expect("add role");
        c.role_grant_permission(&role, Permission::read_write(prefix).with_prefix())
            .await
            .expect("grant readwrite");
        c.user_grant_role(name, &role).await.expect("grant role");
    }

    fn spawn(&mut self) {
        let scheme = if self.secure.is_some() {
            "https"
        } else {
            "http"
        };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new(etcd_bin())
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--log-level", "warn", "--logger", "zap"])
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", etcd_bin().display()));
        self.child = Some(child);
    }

    async fn wait_ready(&self) {
        let endpoint = self.endpoint();
        let log = self.dir.path().join("etcd.log");
        let options = self.options();
        eventually(
            Duration::from_secs(30),
            &format!("etcd at {endpoint} answers (log: {})", log.display()),
            || {
                let (endpoint, options) = (endpoint.clone(), options.clone());
                async move {
                    let Ok(mut c) = Client::connect([endpoint], Some(options)).await else {
                        return false;
                    };
                    c.get("/", None).await.is_ok()
                }
            },
        )
        .await;
    }

    /// `http://127.0.0.1:<client port>` (`https://` for [`Etcd::start_secure`]).
    pub fn endpoint(&self) -> String {
        let scheme = if self.secure.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// A fresh client (connect timeout 2 s), as root once authentication is on.
    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], Some(self.options()))
            .await
            .unwrap_or_else(|e| panic!("connect to etcd at {}: {e}", self.endpoint()))
    }

    /// The harness's client options: TLS with its client certificate, root when auth is on.
    fn options(&self) -> ConnectOptions {
        let mut options = quick();
        if let Some(secure) = &self.secure {
            let read = |p: &PathBuf| std::fs::read(p).expect("read test certificate");
            let tls = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(&secure.ca)))
                .identity(Identity::from_pem(
                    read(&secure.client.cert),
                    read(&secure.client.key),
                ));
            options = options.with_tls(tls);
        }
        if let Some(password) = &self.root_password {
            options = options.with_user("root", password.clone());
        }
        options
    }

    /// The pid of the running etcd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits"));
            kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to etcd {pid}: {e}"));
        }
    }

    /// SIGSTOP: etcd keeps its sockets but answers nothing (a frozen server).
    pub fn freeze(&mut self) {
        self.signal(Signal::SIGSTOP);
        self.frozen = true;
    }

    /// SIGCONT after [`Etcd::freeze`].
    pub fn thaw(&mut self) {
        self.signal(Signal::SIGCONT);
        self.frozen = false;
    }

    /// Kill etcd (SIGKILL) and reap it; data stays for [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.frozen {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
                self.frozen = false;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready().await;
    }

    /// Put `value` at `key`; returns the revision of the write.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> i64 {
        let resp = self
            .client()
            .await
            .put(key, value, None)
            .await
            .expect("etcd put");
        resp.header().map_or(0, |h| h.revision())
    }

    /// Delete `key`; returns the revision of the delete.
    pub async fn delete(&self, key: &str) -> i64 {
        let resp = self
            .client()
            .await
            .delete(key, None)
            .await
            .expect("etcd delete");
        resp.header().map_or(0, |h| h.revision())
    }

    /// The value at `key`, if any.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let resp = self.client().await.get(key, None).await.expect("etcd get");
        resp.kvs().first().map(|kv| kv.value().to_vec())
    }

    /// Every key and value under `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let resp = self
            .client()
            .await
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .expect("etcd get prefix");
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect()
    }

    /// The store's current revision.
    pub async fn revision(&self) -> i64 {
        let resp = self.client().await.get("/", None).await.expect("etcd get");
        resp.header().map_or(0, |h| h.revision())
    }

    /// A sample of etcd's own `/metrics` (e.g. `etcd_debugging_mvcc_slow_watcher_total`: the
    /// watchers etcd could not send to, that a compaction will cancel); plain `http://` only.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        assert!(self.secure.is_none(), "Etcd::metric reads http:// only");
        let url = format!("{}/metrics", self.endpoint());
        let res = crate::Client::new()
            .get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        crate::metrics::metric_value(&res.text(), name, &[])
    }

    /// Compact history up to `revision` (physically), so watches from before it fail.
    pub async fn compact(&self, revision: i64) {
        self.client()
            .await
            .compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .expect("etcd compact");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A lease granted by [`Etcd::grant_lease`]: a task refreshes it (every third of its TTL) until
/// [`Lease::let_expire`] or drop; etcd then deletes the keys put with it once its TTL passes.
pub struct Lease {
    id: i64,
    ttl: Duration,
    refresh: JoinHandle<()>,
}

impl Lease {
    /// etcd's id of the lease.
    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Stops refreshing: the lease, and every key put with it, expires within its TTL.
    pub fn let_expire(self) {
        self.refresh.abort();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresh.abort();
    }
}

impl Etcd {
    /// A lease of `ttl` (whole seconds, at least 2: etcd's minimum), kept alive until
    /// [`Lease::let_expire`].
    pub async fn grant_lease(&self, ttl: Duration) -> Lease {
        let mut client = self.client().await;
        let seconds = i64::try_from(ttl.as_secs()).expect("a TTL in seconds");
        let granted = client
            .lease_grant(seconds, None)
            .await
            .expect("etcd lease grant");
        let id = granted.id();
        let (mut keeper, mut answers) = client
            .lease_keep_alive(id)
            .await
            .expect("etcd lease keep-alive");
        let refresh = tokio::spawn(async move {
            let mut every = tokio::time::interval(ttl / 3);
            loop {
                every.tick().await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                if !matches!(answers.message().await, Ok(Some(_))) {
                    return;
                }
            }
        });
        Lease { id, ttl, refresh }
    }

    /// Put `value` at `key` bound to `lease`; returns the revision of the write.
    pub async fn put_leased(&self, key: &str, value: impl Into<Vec<u8>>, lease: &Lease) -> i64 {
        let resp = self
            .client()
            .await
            .put(key, value, Some(PutOptions::new().with_lease(lease.id)))
            .await
            .expect("etcd put with a lease");
        resp.header().map_or(0, |h| h.revision())
    }
}

/// One call a [`RefusingEtcd`] received.
#[derive(Debug, Clone)]
pub struct EtcdCall {
    /// When its head arrived.
    pub at: Instant,
    /// The gRPC method, e.g. `/etcdserverpb.KV/Range`.
    pub method: String,
    /// The request's body (gRPC framing included): the protobuf holds keys as raw bytes.
    pub body: Bytes,
}

impl EtcdCall {
    /// Whether the request's body holds `bytes` (a key, a prefix).
    pub fn mentions(&self, bytes: &str) -> bool {
        let needle = bytes.as_bytes();
        self.body.windows(needle.len()).any(|w| w == needle)
    }
}

/// A fake etcd on 127.0.0.1 port 0 that refuses every call: it speaks HTTP/2 and answers each
/// gRPC call `UNAVAILABLE` (trailers only), recording when it came, its method and its request.
/// The times of a client's calls are the times of its attempts (RELIABILITY 47's backoff).
pub struct RefusingEtcd {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<EtcdCall>>>,
    task: JoinHandle<()>,
}

impl RefusingEtcd {
    pub async fn start() -> RefusingEtcd {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake etcd on 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake etcd address");
        let calls: Arc<Mutex<Vec<EtcdCall>>> = Arc::default();
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let recorded = recorded.clone();
                        connections.spawn(async move {
                            let service = service_fn(move |req| refuse(req, recorded.clone()));
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tcp), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        RefusingEtcd { addr, calls, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<EtcdCall> {
        self.calls.lock().expect("calls lock").clone()
    }
}

impl Drop for RefusingEtcd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn refuse(
    req: Request<Incoming>,
    calls: Arc<Mutex<Vec<EtcdCall>>>,
) -> Result<Response<Empty<Bytes>>, std::convert::Infallible> {
    let at = Instant::now();
    let method = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    calls
        .lock()
        .expect("calls lock")
        .push(EtcdCall { at, method, body });
    let mut resp = Response::new(Empty::new());
    let headers = resp.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static("14"));
    headers.insert(
        "grpc-message",
        HeaderValue::from_static("refused by the test's fake etcd"),
    );
    Ok(resp)
}

fn quick() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness itself: start, write, read, freeze/thaw, restart with data kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_starts_stores_and_restarts() {
        let mut etcd = Etcd::start().await;
        let rev = etcd.put("/t/a", "1").await;
        assert!(rev > 0);
        assert_eq!(etcd.get("/t/a").await.as_deref(), Some(&b"1"[..]));
        etcd.freeze();
        etcd.thaw();
        etcd.restart().await;
        assert_eq!(
            etcd.get("/t/a").await.as_deref(),
            Some(&b"1"[..]),
            "data kept across restart"
        );
        assert_eq!(etcd.get_prefix("/t/").await.len(), 1);
        let pid = etcd.pid().unwrap();
        drop(etcd);
        assert!(
            kill(Pid::from_raw(pid as i32), None).is_err(),
            "etcd process {pid} must be gone after drop"
        );
    }
}
