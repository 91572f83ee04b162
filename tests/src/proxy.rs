//! Runs the real `cutover` binary: [`ProxyConfig`]/[`Route`] render the TOML config,
//! [`Proxy::start`] writes it to a temp dir, spawns `cutover serve --config FILE`, waits for
//! `/readyz`, and kills the process on drop. Admin API helpers live here too.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{Client, Response};
use crate::{free_addr, metrics};

/// How long [`Proxy::start`] waits for `/readyz` before giving up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long helpers wait for a config change to show up in the admin API.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// The `cutover` binary under test: `$CUTOVER_BIN` if set; otherwise
/// `<target dir>/debug/cutover`, where the target dir is `$CARGO_TARGET_DIR` (relative to the
/// workspace root) or `<workspace root>/target`. When that file is missing it is built once
/// with `cargo build -p cutover-proxy --bin cutover` (same environment, so same target dir).
pub fn cutover_bin() -> PathBuf {
    BIN.get_or_init(locate_or_build)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn locate_or_build() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("CUTOVER_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "CUTOVER_BIN={} does not exist; unset it or point it at a built `cutover` binary",
                bin.display()
            ))
        };
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_relative() { root.join(d) } else { d })
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("cutover");
    if bin.is_file() {
        return Ok(bin);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "-p", "cutover-proxy", "--bin", "cutover"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("could not run `cargo build -p cutover-proxy --bin cutover`: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build -p cutover-proxy --bin cutover` failed ({status}); fix the build or set CUTOVER_BIN"
        ));
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "`cargo build` succeeded but {} is missing; set CUTOVER_BIN to the binary",
            bin.display()
        ))
    }
}

/// Formats a duration the way the config expects (`"500ms"`, `"2s"`).
pub fn toml_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 && d.as_secs() > 0 {
        format!("\"{}s\"", d.as_secs())
    } else {
        format!("\"{}ms\"", d.as_millis())
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

fn toml_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// One `[[routes]]` entry.
#[derive(Clone, Debug)]
pub struct Route {
    id: String,
    host: Option<String>,
    path_prefix: String,
    legacy: Vec<SocketAddr>,
    new: Vec<SocketAddr>,
    /// `tls = true, sni = ..` of legacy and new, when set.
    legacy_tls: Option<String>,
    new_tls: Option<String>,
    /// `protocol = ..` of legacy and new, when set (SPEC §8).
    legacy_protocol: Option<String>,
    new_protocol: Option<String>,
    weights: Option<(f64, f64, f64)>,
    sticky: Option<(&'static str, String)>,
    /// Inside of the `shadow = { .. }` inline table.
    shadow_block: Option<String>,
    /// Inside of the `compare = { .. }` inline table.
    compare_block: Option<String>,
    extra: Vec<String>,
}

impl Route {
    /// A route matching every path (`path_prefix = "/"`), no weights key until set.
    pub fn new(id: &str) -> Self {
        Route {
            id: id.to_string(),
            host: None,
            path_prefix: "/".to_string(),
            legacy: Vec::new(),
            new: Vec::new(),
            legacy_tls: None,
            new_tls: None,
            legacy_protocol: None,
            new_protocol: None,
            weights: None,
            sticky: None,
            shadow_block: None,
            compare_block: None,
            extra: Vec::new(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `match.host` (exact, or `*.example.com`).
    pub fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_string());
        self
    }

    pub fn path_prefix(mut self, prefix: &str) -> Self {
        self.path_prefix = prefix.to_string();
        self
    }

    pub fn legacy_endpoints(mut self, endpoints: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.legacy = endpoints.into_iter().collect();
        self
    }

    pub fn new_endpoints(mut self, endpoints: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.new = endpoints.into_iter().collect();
        self
    }

    /// Legacy speaks TLS: `tls = true, sni = <sni>` on its backend table.
    pub fn legacy_tls(mut self, sni: &str) -> Self {
        self.legacy_tls = Some(sni.to_string());
        self
    }

    /// New speaks TLS: `tls = true, sni = <sni>` on its backend table.
    pub fn new_tls(mut self, sni: &str) -> Self {
        self.new_tls = Some(sni.to_string());
        self
    }

    /// Legacy's `protocol` (`"http1"`, `"h2c"`, `"h2"`, `"auto"`).
    pub fn legacy_protocol(mut self, protocol: &str) -> Self {
        self.legacy_protocol = Some(protocol.to_string());
        self
    }

    /// New's `protocol` (`"http1"`, `"h2c"`, `"h2"`, `"auto"`).
    pub fn new_protocol(mut self, protocol: &str) -> Self {
        self.new_protocol = Some(protocol.to_string());
        self
    }

    /// `weights = { legacy, new, shadow }` (shadow keeps its previous value, default 0).
    pub fn weights(mut self, legacy: impl Into<f64>, new: impl Into<f64>) -> Self {
        let shadow = self.weights.map_or(0.0, |w| w.2);
        self.weights = Some((legacy.into(), new.into(), shadow));
        self
    }

    pub fn shadow(mut self, percent: impl Into<f64>) -> Self {
        let (l, n) = self.weights.map_or((100.0, 0.0), |w| (w.0, w.1));
        self.weights = Some((l, n, percent.into()));
        self
    }

    /// `sticky = { header = NAME }`.
    pub fn sticky_header(mut self, name: &str) -> Self {
        self.sticky = Some(("header", name.to_string()));
        self
    }

    /// `sticky = { cookie = NAME }`.
    pub fn sticky_cookie(mut self, name: &str) -> Self {
        self.sticky = Some(("cookie", name.to_string()));
        self
    }

    /// `shadow = { <inner> }` (SPEC §3), `inner` being raw TOML inline-table content, e.g.
    /// `methods = ["POST"], max_body_bytes = 1024`. Replaces an earlier shadow block.
    pub fn shadow_block(mut self, inner: &str) -> Self {
        self.shadow_block = Some(inner.to_string());
        self
    }

    /// `compare = { <inner> }` (SPEC §3), e.g. `body = "json", ignore_json_paths = ["$.ts"]`.
    /// Replaces an earlier compare block.
    pub fn compare_block(mut self, inner: &str) -> Self {
        self.compare_block = Some(inner.to_string());
        self
    }

    /// `rollback = {}`: automatic rollback off, so a test's deliberate divergence or errors
    /// cannot move traffic behind its back.
    pub fn rollback_off(self) -> Self {
        self.line("rollback = {}")
    }

    /// A raw `key = value` TOML line added to this route's table.
    pub fn line(mut self, toml: &str) -> Self {
        self.extra.push(toml.to_string());
        self
    }

    fn render(&self, out: &mut String) {
        let backend = |addrs: &[SocketAddr], tls: &Option<String>, protocol: &Option<String>| {
            let endpoints = addrs
                .iter()
                .map(|a| toml_string(&a.to_string()))
                .collect::<Vec<_>>()
                .join(", ");
            let mut table = format!("{{ endpoints = [{endpoints}]");
            if let Some(sni) = tls {
                let _ = write!(table, ", tls = true, sni = {}", toml_string(sni));
            }
            if let Some(protocol) = protocol {
                let _ = write!(table, ", protocol = {}", toml_string(protocol));
            }
            table + " }"
        };
        let _ = writeln!(out, "[[routes]]");
        let _ = writeln!(out, "id = {}", toml_string(&self.id));
        let mut matcher = format!("path_prefix = {}", toml_string(&self.path_prefix));
        if let Some(host) = &self.host {
            let _ = write!(matcher, ", host = {}", toml_string(host));
        }
        let _ = writeln!(out, "match = {{ {matcher} }}");
        let _ = writeln!(
            out,
            "legacy = {}",
            backend(&self.legacy, &self.legacy_tls, &self.legacy_protocol)
        );
        let _ = writeln!(
            out,
            "new = {}",
            backend(&self.new, &self.new_tls, &self.new_protocol)
        );
        if let Some((l, n, s)) = self.weights {
            let _ = writeln!(
                out,
                "weights = {{ legacy = {}, new = {}, shadow = {} }}",
                toml_number(l),
                toml_number(n),
                toml_number(s)
            );
        }
        if let Some((kind, name)) = &self.sticky {
            let _ = writeln!(out, "sticky = {{ {kind} = {} }}", toml_string(name));
        }
        if let Some(inner) = &self.shadow_block {
            let _ = writeln!(out, "shadow = {{ {inner} }}");
        }
        if let Some(inner) = &self.compare_block {
            let _ = writeln!(out, "compare = {{ {inner} }}");
        }
        for line in &self.extra {
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
    }
}

/// The whole config file minus the listen addresses, which [`Proxy`] picks.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    proxy: Vec<(String, String)>,
    stats_window: Option<Duration>,
    stats_slices: Option<u32>,
    webhook: Option<String>,
    instance: Option<String>,
    /// Environment variables of the `cutover serve` process.
    env: Vec<(String, String)>,
    etcd: Option<EtcdTable>,
    /// Extra `[admin]` lines (`token_file = "..."`).
    admin: Vec<String>,
    routes: Vec<Route>,
}

/// The `[etcd]` table: endpoints, prefix and raw extra lines.
#[derive(Clone, Debug)]
struct EtcdTable {
    endpoints: Vec<String>,
    prefix: String,
    extra: Vec<(String, String)>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyConfig {
    /// `[proxy]` with `connect_timeout = "500ms"`, `upstream_timeout = "2s"`, `threads = 2`;
    /// `[stats] window = "60s"`; no routes.
    pub fn new() -> Self {
        ProxyConfig {
            proxy: Vec::new(),
            stats_window: Some(Duration::from_secs(60)),
            stats_slices: None,
            webhook: None,
            instance: None,
            env: Vec::new(),
            etcd: None,
            admin: Vec::new(),
            routes: Vec::new(),
        }
        .set_duration("connect_timeout", Duration::from_millis(500))
        .set_duration("upstream_timeout", Duration::from_secs(2))
        .set("threads", "2")
    }

    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Runs `cutover serve` with the environment variable `name` set to `value`.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets `[admin] token_file = path` (SPEC §9).
    pub fn admin_token_file(mut self, path: &std::path::Path) -> Self {
        let line = format!("token_file = {}", toml_string(&path.to_string_lossy()));
        self.admin.push(line);
        self
    }

    /// Sets `[proxy] key = value`, `value` being TOML (`"\"2s\""`, `"100"`).
    pub fn set(self, key: &str, toml_value: &str) -> Self {
        let mut this = self.unset(key);
        this.proxy.push((key.to_string(), toml_value.to_string()));
        this
    }

    /// Removes `[proxy] key`, so cutover's own default applies.
    pub fn unset(mut self, key: &str) -> Self {
        self.proxy.retain(|(k, _)| k != key);
        self
    }

    /// Sets a `[proxy]` string key.
    pub fn set_str(self, key: &str, value: &str) -> Self {
        self.set(key, &toml_string(value))
    }

    /// Sets a `[proxy]` duration key.
    pub fn set_duration(self, key: &str, d: Duration) -> Self {
        self.set(key, &toml_duration(d))
    }

    /// Adds `[etcd] endpoints = [endpoint], prefix = prefix`: routes and weights then come from
    /// etcd, and the `[[routes]]` of the file are only the cold-start fallback (SPEC §2).
    /// Calling it again replaces endpoints and prefix and keeps lines added by
    /// [`ProxyConfig::etcd_line`].
    pub fn etcd(mut self, endpoint: &str, prefix: &str) -> Self {
        let extra = self.etcd.take().map(|t| t.extra).unwrap_or_default();
        self.etcd = Some(EtcdTable {
            endpoints: vec![endpoint.to_string()],
            prefix: prefix.to_string(),
            extra,
        });
        self
    }

    /// A raw `key = value` TOML line in `[etcd]` (e.g. `dial_timeout = "1s"`); a later line with
    /// the same key replaces an earlier one. Panics unless [`ProxyConfig::etcd`] came first.
    pub fn etcd_line(mut self, toml: &str) -> Self {
        let table = self
            .etcd
            .as_mut()
            .expect("ProxyConfig::etcd_line needs ProxyConfig::etcd first");
        let key = toml.split('=').next().unwrap_or("").trim().to_string();
        table.extra.retain(|(k, _)| *k != key);
        table.extra.push((key, toml.to_string()));
        self
    }

    /// `[etcd] last_known_good = "<path>"`.
    pub fn etcd_last_known_good(self, path: &Path) -> Self {
        let line = format!(
            "last_known_good = {}",
            toml_string(&path.display().to_string())
        );
        self.etcd_line(&line)
    }

    /// `[etcd] dial_timeout = "<d>"`.
    pub fn etcd_dial_timeout(self, d: Duration) -> Self {
        let line = format!("dial_timeout = {}", toml_duration(d));
        self.etcd_line(&line)
    }

    pub fn stats_window(mut self, window: Duration) -> Self {
        self.stats_window = Some(window);
        self
    }

    /// `[stats] slices = n` (with [`ProxyConfig::stats_window`]).
    pub fn stats_slices(mut self, slices: u32) -> Self {
        self.stats_slices = Some(slices);
        self
    }

    /// `[notify] webhook = url`.
    pub fn webhook(mut self, url: &str) -> Self {
        self.webhook = Some(url.to_string());
        self
    }

    /// `$CUTOVER_INSTANCE` of the process: its name in the fleet keys and in events.
    pub fn instance(mut self, id: &str) -> Self {
        self.instance = Some(id.to_string());
        self
    }

    /// A copy with route `id`'s weights replaced.
    pub fn with_weights(&self, id: &str, legacy: impl Into<f64>, new: impl Into<f64>) -> Self {
        let (legacy, new) = (legacy.into(), new.into());
        self.with_route(id, |r| r.weights(legacy, new))
    }

    /// A copy with route `id`'s shadow percentage replaced (legacy/new weights kept).
    pub fn with_shadow(&self, id: &str, percent: impl Into<f64>) -> Self {
        let percent = percent.into();
        self.with_route(id, |r| r.shadow(percent))
    }

    /// A copy with route `id` changed by `change`.
    fn with_route(&self, id: &str, change: impl FnOnce(Route) -> Route) -> Self {
        let mut next = self.clone();
        let route = next
            .routes
            .iter_mut()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no route {id:?} in the test config"));
        *route = change(route.clone());
        next
    }

    /// The TOML file for these listen addresses.
    pub fn render(&self, listen: SocketAddr, admin: SocketAddr) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "[proxy]");
        let _ = writeln!(out, "listen = {}", toml_string(&listen.to_string()));
        for (k, v) in &self.proxy {
            let _ = writeln!(out, "{k} = {v}");
        }
        let _ = writeln!(out, "\n[admin]");
        let _ = writeln!(out, "listen = {}", toml_string(&admin.to_string()));
        for line in &self.admin {
            let _ = writeln!(out, "{line}");
        }
        if let Some(window) = self.stats_window {
            let _ = writeln!(out, "\n[stats]");
            let _ = writeln!(out, "window = {}", toml_duration(window));
            if let Some(slices) = self.stats_slices {
                let _ = writeln!(out, "slices = {slices}");
            }
        }
        if let Some(url) = &self.webhook {
            let _ = writeln!(out, "\n[notify]\nwebhook = {}", toml_string(url));
        }
        if let Some(etcd) = &self.etcd {
            let endpoints = etcd
                .endpoints
                .iter()
                .map(|e| toml_string(e))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(out, "\n[etcd]");
            let _ = writeln!(out, "endpoints = [{endpoints}]");
            let _ = writeln!(out, "prefix = {}", toml_string(&etcd.prefix));
            for (_, line) in &etcd.extra {
                let _ = writeln!(out, "{line}");
            }
        }
        out.push('\n');
        for route in &self.routes {
            route.render(&mut out);
        }
        out
    }
}

/// A running `cutover serve` process. Killed (SIGKILL + wait) on drop; its combined
/// stdout/stderr is printed when the test panics.
pub struct Proxy {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    config: ProxyConfig,
    client: Client,
}

/// What [`Proxy::start_until`] waits for.
#[derive(Clone, Copy, Debug)]
enum Readiness {
    /// `/readyz` 200.
    Ready,
    /// `/livez` 200 (the admin API is up; routes may not be loaded).
    Live,
}

impl Readiness {
    fn as_str(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Live => "live",
        }
    }
}

impl Proxy {
    /// Starts the binary on fresh ports and waits (≤ 20 s) until `/readyz` answers 200.
    /// If the process dies because a port was taken meanwhile, retries with new ports
    /// (3 attempts).
    pub async fn start(config: ProxyConfig) -> Proxy {
        Self::start_until(config, Readiness::Ready).await
    }

    /// Like [`Proxy::start`], but only waits (≤ 20 s) until the admin API answers `/livez`:
    /// for tests of a proxy that must stay not-ready (e.g. etcd unreachable at start and nothing
    /// to fall back on).
    pub async fn launch(config: ProxyConfig) -> Proxy {
        Self::start_until(config, Readiness::Live).await
    }

    async fn start_until(config: ProxyConfig, until: Readiness) -> Proxy {
        let bin = cutover_bin();
        let client = Client::new().with_timeout(Duration::from_millis(500));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut proxy = Self::spawn(&bin, &config);
            match proxy.wait_for(&client, until).await {
                Ok(()) => return proxy,
                Err(exit) => {
                    let log = proxy.log();
                    let port_taken = {
                        let l = log.to_ascii_lowercase();
                        l.contains("in use")
                            || l.contains("os error 98")
                            || l.contains("eaddrinuse")
                    };
                    if port_taken && attempt < 3 {
                        continue;
                    }
                    let config_text =
                        std::fs::read_to_string(&proxy.config_path).unwrap_or_default();
                    // Avoid printing the log twice (Drop prints it when panicking).
                    proxy.kill();
                    proxy.child = None;
                    std::fs::write(&proxy.log_path, b"").ok();
                    panic!(
                        "cutover did not become {} ({exit}); binary {}\n--- config ---\n{config_text}--- output ---\n{log}",
                        until.as_str(),
                        bin.display()
                    );
                }
            }
        }
    }

    /// Writes the config on fresh ports and spawns `cutover serve`.
    fn spawn(bin: &Path, config: &ProxyConfig) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir for the proxy");
        let config_path = dir.path().join("cutover.toml");
        let log_path = dir.path().join("cutover.log");
        let addr = free_addr();
        let mut admin_addr = free_addr();
        while admin_addr == addr {
            admin_addr = free_addr();
        }
        std::fs::write(&config_path, config.render(addr, admin_addr)).expect("write config");
        let log = File::create(&log_path).expect("create log file");
        let mut command = Command::new(bin);
        if let Some(id) = &config.instance {
            command.env("CUTOVER_INSTANCE", id);
        }
        command.envs(config.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Proxy {
            child: Some(child),
            dir,
            config_path,
            log_path,
            addr,
            admin_addr,
            config: config.clone(),
            client: Client::new(),
        }
    }

    async fn wait_for(&mut self, client: &Client, until: Readiness) -> Result<(), String> {
        let path = match until {
            Readiness::Ready => "/readyz",
            Readiness::Live => "/livez",
        };
        let start = Instant::now();
        let url = self.admin_url(path);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("process exited with {status}"));
                }
            }
            if let Ok(res) = client.get(&url).await {
                if res.status == 200 {
                    return Ok(());
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!("{path} not 200 after {READY_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The data-plane listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `http://<listen><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://<admin listen><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// A pooled client (clones share the pool).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The temp dir holding config and log (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config last written through [`Proxy::start`] or [`Proxy::apply`].
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// Renders `config` with this proxy's listen addresses.
    pub fn render(&self, config: &ProxyConfig) -> String {
        config.render(self.addr, self.admin_addr)
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Atomically replaces the config file: write a temp file beside it, then rename.
    pub fn rewrite_config(&self, toml: &str) {
        let tmp = self.dir.path().join(".cutover.toml.tmp");
        std::fs::write(&tmp, toml).expect("write temp config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config into place");
    }

    /// Rewrites the config file from `config` (same listen addresses).
    pub fn apply(&mut self, config: &ProxyConfig) {
        self.rewrite_config(&self.render(config));
        self.config = config.clone();
    }

    /// Starts a second `cutover serve --upgrade` on this proxy's config file (its
    /// `[proxy] upgrade_socket` must be set) and waits (≤ 20 s) until it serves; this proxy's
    /// process then drains and exits (see [`Proxy::wait_exit`]).
    pub async fn upgrade(&self) -> Proxy {
        let bin = cutover_bin();
        let dir = tempfile::tempdir().expect("temp dir for the upgraded proxy");
        let config_path = dir.path().join("cutover.toml");
        std::fs::copy(&self.config_path, &config_path).expect("copy the config");
        let log_path = dir.path().join("cutover.log");
        let log = File::create(&log_path).expect("create log file");
        let mut command = Command::new(&bin);
        if let Some(id) = &self.config.instance {
            command.env("CUTOVER_INSTANCE", id);
        }
        command.envs(self.config.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--upgrade")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut proxy = Proxy {
            child: Some(child),
            dir,
            config_path,
            log_path,
            addr: self.addr,
            admin_addr: self.admin_addr,
            config: self.config.clone(),
            client: Client::new(),
        };
        let client = Client::new().with_timeout(Duration::from_millis(500));
        if let Err(exit) = proxy.wait_for(&client, Readiness::Ready).await {
            panic!("the upgraded cutover did not become ready ({exit})");
        }
        proxy
    }

    /// Sends SIGTERM (via `kill -TERM`, keeping the crate free of `unsafe`).
    pub fn sigterm(&self) {
        let pid = self.pid().expect("proxy process still owned");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .unwrap_or_else(|e| panic!("SIGTERM to {pid} failed: {e}"));
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    // ---- admin API ----

    /// GET on the admin listener; panics on transport errors.
    pub async fn admin_get(&self, path: &str) -> Response {
        self.client
            .get(&self.admin_url(path))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "admin GET {path}: {e}\n--- proxy output ---\n{}",
                    self.log()
                )
            })
    }

    async fn admin_json(&self, path: &str) -> Value {
        let res = self.admin_get(path).await;
        assert_eq!(res.status, 200, "admin GET {path}: {}", res.text());
        res.json()
    }

    /// `/api/v1/routes/<id>/stats`.
    pub async fn stats(&self, route: &str) -> Value {
        self.admin_json(&format!("/api/v1/routes/{route}/stats"))
            .await
    }

    /// `/api/v1/routes`.
    pub async fn routes(&self) -> Value {
        self.admin_json("/api/v1/routes").await
    }

    /// The `/api/v1/routes` entry with this id.
    pub async fn route_info(&self, id: &str) -> Option<Value> {
        self.routes()
            .await
            .as_array()
            .and_then(|a| a.iter().find(|r| r["id"] == id).cloned())
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        let res = self.admin_get("/metrics").await;
        assert_eq!(res.status, 200, "/metrics: {}", res.text());
        res.text()
    }

    /// Sum of the samples of `name` whose labels include `labels`; `None` if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metrics::metric_value(&self.metrics().await, name, labels)
    }

    /// Like [`Proxy::metric`], 0 when absent (a counter never incremented).
    pub async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metric(name, labels).await.unwrap_or(0.0)
    }

    /// `/api/v1/routes/<id>/divergences` (a JSON array, newest last).
    pub async fn divergences(&self, route: &str) -> Value {
        self.admin_json(&format!("/api/v1/routes/{route}/divergences"))
            .await
    }

    /// Number of file descriptors the proxy process has open (`/proc/<pid>/fd`); `None` when
    /// that cannot be read (not Linux, process gone).
    pub fn open_fds(&self) -> Option<usize> {
        let pid = self.pid()?;
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .ok()
            .map(|d| d.count())
    }

    /// Waits until `/api/v1/routes` shows `weights.shadow == percent` for route `id`.
    pub async fn wait_for_shadow(&self, id: &str, percent: f64) {
        let what = format!("route {id} to show weights.shadow={percent}");
        crate::eventually(APPLY_TIMEOUT, &what, || async {
            self.route_info(id)
                .await
                .is_some_and(|r| r["weights"]["shadow"].as_f64() == Some(percent))
        })
        .await;
    }

    /// Waits until `/api/v1/routes` shows these weights for route `id`.
    pub async fn wait_for_weights(&self, id: &str, legacy: f64, new: f64) {
        let what = format!("route {id} to show weights legacy={legacy} new={new}");
        crate::eventually(APPLY_TIMEOUT, &what, || async {
            self.route_info(id).await.is_some_and(|r| {
                r["weights"]["legacy"].as_f64() == Some(legacy)
                    && r["weights"]["new"].as_f64() == Some(new)
            })
        })
        .await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            if !log.is_empty() {
                eprintln!(
                    "--- cutover output (listen {}, admin {}) ---\n{log}--- end of cutover output ---",
                    self.addr, self.admin_addr
                );
            }
        }
    }
}
