//! What the load generator is pointed at: the backend directly, cutover without and with
//! shadowing, `hyper-floor` (a minimal hyper proxy, the floor under cutover) and — when
//! installed — nginx (with and without `mirror`) and HAProxy, each a single-threaded reverse
//! proxy in front of the benchmark backend's listener **a**.
//!
//! cutover is started through the test harness ([`cutover_tests::Proxy`], the real binary,
//! `[proxy] threads = 1`); nginx and HAProxy get a generated config in a temp dir, hyper-floor
//! its arguments, and all three are stopped (SIGTERM, then SIGKILL for the whole process tree)
//! when dropped.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cutover_tests::{free_addr, Client, Proxy, ProxyConfig, Route};

use crate::backend::{BackendProcess, BODY_1K_PATH};
use crate::sys;

/// The route id cutover serves the benchmark on.
pub const ROUTE: &str = "bench";
/// How long an external proxy may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an external proxy gets to exit after SIGTERM before the tree is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle upstream connections nginx keeps per worker.
const NGINX_KEEPALIVE: usize = 1024;

/// One benchmark target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKind {
    /// The client talks to the backend itself: the floor every proxy is compared with.
    Direct,
    /// cutover, all traffic to legacy, no shadowing.
    Cutover,
    /// cutover, all traffic to legacy, every request shadowed to new and compared as JSON.
    CutoverShadow,
    /// nginx `proxy_pass` with upstream keep-alive.
    Nginx,
    /// nginx as above plus `mirror` of every request to the second backend.
    NginxMirror,
    /// HAProxy in HTTP mode with `http-reuse always`.
    Haproxy,
    /// A minimal hyper proxy (`hyper-floor`, a binary of this crate): cutover's data plane
    /// without cutover.
    HyperFloor,
    /// `hyper-floor` with an HTTP/1.1 upstream client of its own (`own-floor`, a binary of this
    /// crate): what replacing hyper's client would leave.
    OwnFloor,
}

impl TargetKind {
    /// All targets, in report order.
    pub const ALL: [TargetKind; 8] = [
        TargetKind::Direct,
        TargetKind::Cutover,
        TargetKind::CutoverShadow,
        TargetKind::HyperFloor,
        TargetKind::OwnFloor,
        TargetKind::Nginx,
        TargetKind::NginxMirror,
        TargetKind::Haproxy,
    ];

    /// What `make bench` runs: all of them (nginx and HAProxy when installed).
    pub const DEFAULT: [TargetKind; 8] = [
        TargetKind::Direct,
        TargetKind::Cutover,
        TargetKind::CutoverShadow,
        TargetKind::HyperFloor,
        TargetKind::OwnFloor,
        TargetKind::Nginx,
        TargetKind::NginxMirror,
        TargetKind::Haproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Cutover => "cutover",
            TargetKind::CutoverShadow => "cutover-shadow",
            TargetKind::Nginx => "nginx",
            TargetKind::NginxMirror => "nginx-mirror",
            TargetKind::Haproxy => "haproxy",
            TargetKind::HyperFloor => "hyper-floor",
            TargetKind::OwnFloor => "own-floor",
        }
    }

    pub fn parse(name: &str) -> Option<TargetKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The external program this target needs, if any.
    pub fn program(self) -> Option<&'static str> {
        match self {
            TargetKind::Nginx | TargetKind::NginxMirror => Some("nginx"),
            TargetKind::Haproxy => Some("haproxy"),
            TargetKind::HyperFloor => Some("hyper-floor"),
            TargetKind::OwnFloor => Some("own-floor"),
            _ => None,
        }
    }

    /// How to get this target's program when it is missing.
    pub fn how_to_install(self) -> &'static str {
        match self {
            TargetKind::HyperFloor | TargetKind::OwnFloor => {
                "it is a binary of cutover-bench: `make bench` builds it next to cutover-bench"
            }
            _ => "scripts/bench-prereqs.sh installs it",
        }
    }

    /// Whether every request is also sent to backend b (shadow copy or mirror).
    pub fn copies(self) -> bool {
        matches!(self, TargetKind::CutoverShadow | TargetKind::NginxMirror)
    }

    /// Whether there is a proxy process to measure.
    pub fn is_proxy(self) -> bool {
        self != TargetKind::Direct
    }

    /// One line on how the target is set up.
    pub fn setup(self) -> &'static str {
        match self {
            TargetKind::Direct => "client → backend a, no proxy",
            TargetKind::Cutover => {
                "cutover, `[proxy] threads = 1`, default timeouts, \
                 weights {legacy = 100, new = 0, shadow = 0}"
            }
            TargetKind::CutoverShadow => {
                "cutover, `threads = 1`, weights {legacy = 100, new = 0, shadow = 100}, \
                 `compare = { body = \"json\" }`; copies go to backend b"
            }
            TargetKind::Nginx => {
                "nginx, `worker_processes 1`, `proxy_pass` to an upstream with `keepalive 1024`, \
                 HTTP/1.1, access log off"
            }
            TargetKind::NginxMirror => {
                "nginx as above plus `mirror` of every request to backend b (keep-alive upstream)"
            }
            TargetKind::Haproxy => {
                "HAProxy, `nbthread 1`, `mode http`, `option http-keep-alive`, `http-reuse always`"
            }
            TargetKind::HyperFloor => {
                "`hyper-floor`: a minimal hyper 1 proxy (every request streamed to backend a over \
                 pooled keep-alive connections), set up as cutover's data plane (one \
                 current-thread runtime, HTTP/1.1 and h2c, header case kept, mimalloc)"
            }
            TargetKind::OwnFloor => {
                "`own-floor`: hyper-floor with an HTTP/1.1 upstream client of its own (the \
                 request head written at once, the answer's head parsed by httparse from the \
                 connection's buffer, the body read by the client's task: no connection task, \
                 no channel); Content-Length answers only, no timeouts — a measurement, not a proxy"
            }
        }
    }
}

enum TargetProcess {
    Cutover(Box<Proxy>),
    External(ExternalProcess),
}

/// A started target.
pub struct RunningTarget {
    pub kind: TargetKind,
    /// Where the load goes.
    pub addr: SocketAddr,
    process: Option<TargetProcess>,
}

impl RunningTarget {
    /// Starts `kind` in front of `backend` (`program` is the nginx/HAProxy binary for those).
    /// cutover is the test harness's binary (`$CUTOVER_BIN`, else the debug build); the harness
    /// panics when it cannot start.
    pub async fn start(
        kind: TargetKind,
        backend: &BackendProcess,
        program: Option<&Path>,
    ) -> Result<RunningTarget, String> {
        let external = |p: Option<&Path>| {
            p.map(Path::to_path_buf)
                .ok_or_else(|| format!("{}: no program given", kind.name()))
        };
        let (addr, process) = match kind {
            TargetKind::Direct => (backend.a, None),
            TargetKind::Cutover | TargetKind::CutoverShadow => {
                let proxy = Proxy::start(cutover_config(kind, backend)).await;
                (proxy.addr(), Some(TargetProcess::Cutover(Box::new(proxy))))
            }
            TargetKind::Nginx
            | TargetKind::NginxMirror
            | TargetKind::Haproxy
            | TargetKind::HyperFloor
            | TargetKind::OwnFloor => {
                let ext = ExternalProcess::start(kind, &external(program)?, backend).await?;
                (ext.addr, Some(TargetProcess::External(ext)))
            }
        };
        Ok(RunningTarget {
            kind,
            addr,
            process,
        })
    }

    /// The URL the load generator requests.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The process that was started (nginx: the master), if any.
    pub fn root_pid(&self) -> Option<u32> {
        match self.process.as_ref()? {
            TargetProcess::Cutover(p) => p.pid(),
            TargetProcess::External(e) => Some(e.child.id()),
        }
    }

    /// Every process of the target (nginx: master and worker); empty for `direct`.
    pub fn pids(&self) -> Vec<u32> {
        self.root_pid().map(sys::process_tree).unwrap_or_default()
    }

    /// cutover's admin-API view, for the shadow target's comparison counter.
    pub fn proxy(&self) -> Option<&Proxy> {
        match self.process.as_ref()? {
            TargetProcess::Cutover(p) => Some(p),
            TargetProcess::External(_) => None,
        }
    }

    /// The last lines the target's process printed (for error messages).
    pub fn log_tail(&self) -> String {
        let log = match self.process.as_ref() {
            Some(TargetProcess::Cutover(p)) => p.log(),
            Some(TargetProcess::External(e)) => std::fs::read_to_string(&e.log).unwrap_or_default(),
            None => String::new(),
        };
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The cutover config of a cutover target.
pub fn cutover_config(kind: TargetKind, backend: &BackendProcess) -> ProxyConfig {
    let route = Route::new(ROUTE)
        .legacy_endpoints([backend.a])
        .new_endpoints([backend.b])
        .weights(100, 0)
        .rollback_off();
    let route = if kind == TargetKind::CutoverShadow {
        route.shadow(100).compare_block(r#"body = "json""#)
    } else {
        route.shadow(0)
    };
    // cutover's own timeouts (connect 2 s, upstream 30 s), not the tests' short ones: nginx and
    // HAProxy run with theirs, and a crowd on a slow machine must not fail on a test's 500 ms.
    ProxyConfig::new()
        .unset("connect_timeout")
        .unset("upstream_timeout")
        .set("threads", "1")
        .route(route)
}

/// nginx, HAProxy or hyper-floor, started with a generated config (hyper-floor: arguments);
/// stopped (whole tree) on drop.
struct ExternalProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ExternalProcess {
    async fn start(
        kind: TargetKind,
        program: &Path,
        backend: &BackendProcess,
    ) -> Result<ExternalProcess, String> {
        let mut last_error = String::new();
        // A port picked by binding port 0 can be taken before the program binds it: retry.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("cutover-bench-{}-", kind.name()))
                .tempdir()
                .map_err(|e| format!("temp dir: {e}"))?;
            let addr = free_addr();
            let log = dir.path().join("output.log");
            let (config_name, config) = match kind {
                TargetKind::Haproxy => ("haproxy.cfg", haproxy_config(addr, backend.a)),
                TargetKind::HyperFloor | TargetKind::OwnFloor => {
                    ("arguments", format!("{addr} -> {}\n", backend.a))
                }
                _ => (
                    "nginx.conf",
                    nginx_config(
                        dir.path(),
                        addr,
                        backend.a,
                        (kind == TargetKind::NginxMirror).then_some(backend.b),
                    ),
                ),
            };
            let config_path = dir.path().join(config_name);
            std::fs::write(&config_path, config).map_err(|e| format!("write config: {e}"))?;
            let out = File::create(&log).map_err(|e| format!("create log: {e}"))?;
            let mut cmd = Command::new(program);
            match kind {
                TargetKind::Haproxy => cmd.arg("-db").arg("-f").arg(&config_path),
                TargetKind::HyperFloor | TargetKind::OwnFloor => cmd
                    .arg("--listen")
                    .arg(addr.to_string())
                    .arg("--upstream")
                    .arg(backend.a.to_string()),
                _ => cmd
                    .arg("-p")
                    .arg(dir.path())
                    .arg("-e")
                    .arg(dir.path().join("error.log"))
                    .arg("-c")
                    .arg(&config_path),
            };
            let child = cmd
                .stdin(Stdio::null())
                .stdout(out.try_clone().map_err(|e| e.to_string())?)
                .stderr(out)
                .spawn()
                .map_err(|e| format!("spawn {}: {e}", program.display()))?;
            let mut process = ExternalProcess {
                child,
                addr,
                log,
                _dir: dir,
            };
            match process.wait_ready(kind).await {
                Ok(()) => return Ok(process),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    async fn wait_ready(&mut self, kind: TargetKind) -> Result<(), String> {
        let client = Client::new().with_timeout(Duration::from_millis(500));
        let url = format!("http://{}{}", self.addr, BODY_1K_PATH);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut log = std::fs::read_to_string(&self.log).unwrap_or_default();
                if let Some(dir) = self.log.parent() {
                    log += &std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                }
                return Err(format!("{} exited with {status}:\n{log}", kind.name()));
            }
            if client.get(&url).await.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "{} did not answer 200 on {url} within {START_TIMEOUT:?}",
                    kind.name()
                ));
            }
            tokio::time::sleep(cutover_tests::POLL_INTERVAL).await;
        }
    }
}

impl Drop for ExternalProcess {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let root = self.child.id();
        let tree = sys::process_tree(root);
        let pid = |p: u32| Pid::from_raw(p as i32);
        let _ = kill(pid(root), Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Workers of a master that did not stop them (or that was killed) are killed by pid.
        for &p in tree.iter().rev() {
            if p == root || Path::new(&format!("/proc/{p}")).exists() {
                let _ = kill(pid(p), Signal::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// nginx: one worker, upstream keep-alive, optional `mirror` to `mirror_to`.
pub fn nginx_config(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    mirror_to: Option<SocketAddr>,
) -> String {
    let d = dir.display();
    let mut c = String::new();
    let _ = writeln!(c, "worker_processes 1;\ndaemon off;\nmaster_process on;");
    let _ = writeln!(c, "pid {d}/nginx.pid;\nerror_log {d}/error.log warn;");
    let _ = writeln!(c, "worker_rlimit_nofile 16384;");
    let _ = writeln!(c, "events {{ worker_connections 8192; }}");
    let _ = writeln!(c, "http {{");
    let _ = writeln!(c, "  access_log off;");
    for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(c, "  {t}_temp_path {d}/{t}_temp;");
    }
    let _ = writeln!(c, "  keepalive_requests 1000000;\n  keepalive_timeout 60s;");
    let _ = writeln!(
        c,
        "  proxy_http_version 1.1;\n  proxy_set_header Connection \"\";\n  \
         proxy_buffer_size 16k;\n  proxy_buffers 8 16k;\n  proxy_max_temp_file_size 0;"
    );
    let upstream_block = |name: &str, addr: SocketAddr| {
        format!(
            "  upstream {name} {{ server {addr}; keepalive {NGINX_KEEPALIVE}; \
             keepalive_requests 1000000; keepalive_timeout 60s; }}\n"
        )
    };
    c.push_str(&upstream_block("primary", upstream));
    if let Some(m) = mirror_to {
        c.push_str(&upstream_block("mirror_target", m));
    }
    let _ = writeln!(c, "  server {{\n    listen {listen} backlog=4096;");
    let _ = writeln!(c, "    location / {{");
    if mirror_to.is_some() {
        let _ = writeln!(c, "      mirror /__mirror;");
    }
    let _ = writeln!(c, "      proxy_pass http://primary;\n    }}");
    if mirror_to.is_some() {
        let _ = writeln!(
            c,
            "    location = /__mirror {{\n      internal;\n      \
             proxy_pass http://mirror_target$request_uri;\n    }}"
        );
    }
    let _ = writeln!(c, "  }}\n}}");
    c
}

/// HAProxy: one thread, HTTP mode, keep-alive both sides, connection reuse.
pub fn haproxy_config(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 4096\n\n\
         defaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n  \
         timeout connect 2s\n  timeout client 60s\n  timeout server 30s\n  \
         timeout http-keep-alive 60s\n\n\
         frontend bench\n  bind {listen}\n  default_backend primary\n\n\
         backend primary\n  server a {upstream}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in TargetKind::ALL {
            assert_eq!(TargetKind::parse(k.name()), Some(k));
        }
        assert_eq!(TargetKind::parse("envoy"), None);
    }

    #[test]
    fn hyper_floor_runs_by_default() {
        assert!(TargetKind::DEFAULT.contains(&TargetKind::HyperFloor));
        assert!(TargetKind::ALL
            .iter()
            .all(|k| TargetKind::DEFAULT.contains(k)));
        assert_eq!(TargetKind::HyperFloor.program(), Some("hyper-floor"));
        assert!(TargetKind::HyperFloor.is_proxy() && !TargetKind::HyperFloor.copies());
        assert!(TargetKind::HyperFloor
            .how_to_install()
            .contains("make bench"));
    }

    #[test]
    fn nginx_config_mirrors_only_when_asked() {
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let l: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let plain = nginx_config(Path::new("/tmp/x"), l, a, None);
        assert!(
            plain.contains("server 127.0.0.1:9001; keepalive 1024;"),
            "{plain}"
        );
        assert!(!plain.contains("mirror"), "{plain}");
        let mirrored = nginx_config(Path::new("/tmp/x"), l, a, Some(b));
        assert!(mirrored.contains("mirror /__mirror;"), "{mirrored}");
        assert!(mirrored.contains("server 127.0.0.1:9002;"), "{mirrored}");
        assert_eq!(mirrored.matches('{').count(), mirrored.matches('}').count());
        let h = haproxy_config(l, a);
        assert!(h.contains("bind 127.0.0.1:8080") && h.contains("server a 127.0.0.1:9001"));
    }
}
