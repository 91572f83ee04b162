//! etcd over TLS with client certificates and etcd users (SPEC §9), against a real etcd
//! started with `--client-cert-auth`, `https://` URLs and RBAC on, with certificates made in
//! the test: the proxy serves and follows changes and `cutover ctl` writes (as a user with
//! read-write on the prefix only); RELIABILITY 66 (every wrong credential → not connected, a
//! log line saying what to fix, the last good state serving, `/readyz` as for an unreachable
//! etcd) and 67 (certificates rotated on disk → picked up at the next reconnect).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_tests::certs::{Ca, Pair};
use cutover_tests::{
    eventually, Backend, Ctl, Etcd, Proxy, ProxyConfig, Route, RunningBackend, Secure,
};
use serde_json::json;

/// Bound for a change written to etcd to show in traffic.
const APPLIED: Duration = Duration::from_secs(10);
/// Bound for a reconnect after the credentials were fixed (jittered backoff, capped at 5 s).
const RECONNECTED: Duration = Duration::from_secs(20);
const PREFIX: &str = "/secure";
const ROOT_PASSWORD: &str = "r00t-pw-5d2e";
const USER_PASSWORD: &str = "cut0ver-pw-8f3a";

/// A secured etcd, its CA, the `cutover` user (read-write on [`PREFIX`]), and two backends.
struct Site {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    etcd: Etcd,
    legacy: RunningBackend,
    new: RunningBackend,
}

impl Site {
    async fn start() -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("cutover test CA");
        let ca_file = ca.write(dir.path(), "ca.pem");
        let secure = Secure {
            ca: ca_file.clone(),
            server: ca.server(dir.path(), "etcd-server"),
            client: ca.client(dir.path(), "harness", "harness", false),
        };
        let mut etcd = Etcd::start_secure(secure).await;
        etcd.enable_auth(ROOT_PASSWORD).await;
        etcd.add_user("cutover", USER_PASSWORD, &format!("{PREFIX}/"))
            .await;
        etcd.add_user("stranger", USER_PASSWORD, "/elsewhere/")
            .await;
        Site {
            dir,
            ca,
            ca_file,
            etcd,
            legacy: Backend::new("legacy").run().await,
            new: Backend::new("new").run().await,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A file holding `text` and a newline.
    fn secret(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, format!("{text}\n")).expect("write secret");
        path
    }

    fn key(&self, what: &str) -> String {
        format!("{PREFIX}/routes/orders/{what}")
    }

    async fn put_route(&self, legacy: u32, new: u32) {
        let spec = json!({
            "match": {"path_prefix": "/"},
            "legacy": {"endpoints": [self.legacy.addr().to_string()]},
            "new": {"endpoints": [self.new.addr().to_string()]},
        });
        self.etcd.put(&self.key("spec"), spec.to_string()).await;
        self.put_weights(legacy, new).await;
    }

    async fn put_weights(&self, legacy: u32, new: u32) {
        let weights = json!({"legacy": legacy, "new": new, "shadow": 0});
        self.etcd
            .put(&self.key("weights"), weights.to_string())
            .await;
    }

    /// `[etcd]` with `ca_file`, the client certificate `client` and `user`/`password_file`;
    /// `[[routes]]` all-new as the cold-start fallback (so "last good state" is visible).
    fn config(
        &self,
        ca_file: &Path,
        client: &Pair,
        user: &str,
        password_file: &Path,
    ) -> ProxyConfig {
        let line = |key: &str, value: &Path| format!("{key} = {:?}", value.display().to_string());
        ProxyConfig::new()
            .etcd(&self.etcd.endpoint(), PREFIX)
            .etcd_line("dial_timeout = \"1s\"")
            .etcd_line(&line("ca_file", ca_file))
            .etcd_line(&line("cert_file", &client.cert))
            .etcd_line(&line("key_file", &client.key))
            .etcd_line(&format!("username = {user:?}"))
            .etcd_line(&line("password_file", password_file))
            .route(
                Route::new("orders")
                    .legacy_endpoints([self.legacy.addr()])
                    .new_endpoints([self.new.addr()])
                    .weights(0, 100),
            )
    }

    fn good_config(&self) -> ProxyConfig {
        let client = self
            .ca
            .client(self.path(), "cutover-client", "cutover", false);
        let password = self.secret("password", USER_PASSWORD);
        self.config(&self.ca_file, &client, "cutover", &password)
    }
}

async fn backend_of(proxy: &Proxy) -> Option<String> {
    let res = proxy.client().get(&proxy.url("/orders/1")).await.ok()?;
    (res.status == 200).then(|| res.backend()).flatten()
}

async fn connected(proxy: &Proxy) -> Option<f64> {
    proxy.metric("cutover_etcd_connected", &[]).await
}

/// etcd with TLS, client certificates and RBAC: the proxy (as `cutover`, read-write on its
/// prefix only) serves what etcd says and follows a change; `cutover ctl` with the same
/// credentials as flags reads and writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxy_and_ctl_work_against_etcd_with_tls_client_certificates_and_users() {
    let site = Site::start().await;
    site.put_route(100, 0).await;
    let proxy = Proxy::start(site.good_config()).await;
    eventually!(
        APPLIED,
        async { backend_of(&proxy).await.as_deref() == Some("legacy") },
        "etcd's 100/0 serves (not the all-new fallback); log:\n{}",
        proxy.log()
    );
    assert_eq!(connected(&proxy).await, Some(1.0));
    site.put_weights(0, 100).await;
    eventually!(
        APPLIED,
        async { backend_of(&proxy).await.as_deref() == Some("new") },
        "the 0/100 write is followed"
    );

    let client = site.ca.client(site.path(), "ctl-client", "ctl", false);
    let password = site.secret("ctl-password", USER_PASSWORD);
    let arg = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let flags = [
        "--etcd-ca".to_string(),
        arg(&site.ca_file),
        "--etcd-cert".to_string(),
        arg(&client.cert),
        "--etcd-key".to_string(),
        arg(&client.key),
        "--etcd-user".to_string(),
        "cutover".to_string(),
        "--etcd-password-file".to_string(),
        arg(&password),
    ];
    let ctl = Ctl::new(&site.etcd, PREFIX);
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| a.to_string())
            .chain(flags.iter().cloned())
            .collect()
    };
    let run = |args: Vec<String>| {
        let ctl = &ctl;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl.run(&args).await
        }
    };
    let set = run(with(&["set", "orders", "--legacy", "100", "--new", "0"])).await;
    assert_eq!(set.code, 0, "{set:?}");
    eventually!(
        APPLIED,
        async { backend_of(&proxy).await.as_deref() == Some("legacy") },
        "ctl's write is followed"
    );
    let status = run(with(&["status", "orders"])).await;
    assert_eq!(status.code, 0, "{status:?}");
    // Without the user, etcd refuses and ctl says what to set.
    let anonymous = ctl
        .run(&[
            "status",
            "--etcd-ca",
            &arg(&site.ca_file),
            "--etcd-cert",
            &arg(&client.cert),
            "--etcd-key",
            &arg(&client.key),
        ])
        .await;
    assert_ne!(anonymous.code, 0, "{anonymous:?}");
    assert!(anonymous.stderr.contains("--etcd-user"), "{anonymous:?}");
    for secret in [USER_PASSWORD, ROOT_PASSWORD] {
        assert!(
            !proxy.log().contains(secret),
            "a password is in the proxy's log"
        );
        assert!(
            !proxy.metrics().await.contains(secret),
            "a password is in /metrics"
        );
    }
}

/// RELIABILITY 66: each wrong credential → not connected, a log line that says what to fix,
/// the last good state (here the `[[routes]]` fallback, all to new) keeps serving, and the
/// proxy is ready as with an unreachable etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_credentials_keep_the_last_good_state_and_say_what_to_fix() {
    let site = Site::start().await;
    site.put_route(100, 0).await;
    let other_ca = Ca::new("another CA");
    let other_ca_file = other_ca.write(site.path(), "other-ca.pem");
    let good = site.ca.client(site.path(), "good", "cutover", false);
    let expired = site.ca.client(site.path(), "expired", "cutover", true);
    let foreign = other_ca.client(site.path(), "foreign", "cutover", false);
    let password = site.secret("password", USER_PASSWORD);
    let wrong_password = site.secret("wrong-password", "not-the-password");
    let cases = [
        (
            "wrong CA",
            site.config(&other_ca_file, &good, "cutover", &password),
            "ca_file",
        ),
        (
            "expired client certificate",
            site.config(&site.ca_file, &expired, "cutover", &password),
            "cert_file/key_file",
        ),
        (
            "client certificate of another CA",
            site.config(&site.ca_file, &foreign, "cutover", &password),
            "cert_file/key_file",
        ),
        (
            "wrong password",
            site.config(&site.ca_file, &good, "cutover", &wrong_password),
            "username and password_file",
        ),
        (
            "no permission on the prefix",
            site.config(&site.ca_file, &good, "stranger", &password),
            "readwrite on the prefix",
        ),
    ];
    for (what, config, fix) in cases {
        let proxy = Proxy::start(config).await;
        eventually!(
            RECONNECTED,
            async { proxy.log().contains(fix) },
            "{what}: a log line naming {fix:?}; log:\n{}",
            proxy.log()
        );
        assert_eq!(connected(&proxy).await, Some(0.0), "{what}");
        assert_eq!(
            backend_of(&proxy).await.as_deref(),
            Some("new"),
            "{what}: the fallback serves"
        );
        let ready = proxy.admin_get("/readyz").await;
        assert_eq!(
            ready.status, 200,
            "{what}: ready on the fallback, as with etcd unreachable"
        );
        let log = proxy.log();
        for secret in [USER_PASSWORD, "not-the-password"] {
            assert!(!log.contains(secret), "{what}: a password is in the log");
        }
    }
}

/// RELIABILITY 67: the client certificate on disk is replaced (expired → valid) while the
/// proxy runs; the next reconnect reads the new files and connects, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_certificates_are_picked_up_at_the_next_reconnect() {
    let site = Site::start().await;
    site.put_route(100, 0).await;
    let client = site.ca.client(site.path(), "rotating", "cutover", true);
    let password = site.secret("password", USER_PASSWORD);
    let proxy = Proxy::start(site.config(&site.ca_file, &client, "cutover", &password)).await;
    eventually!(
        RECONNECTED,
        async { proxy.log().contains("cert_file/key_file") },
        "the expired certificate is refused; log:\n{}",
        proxy.log()
    );
    assert_eq!(
        backend_of(&proxy).await.as_deref(),
        Some("new"),
        "the fallback serves"
    );
    // Rotate: same paths, a fresh certificate and key.
    let fresh = site.ca.client(site.path(), "fresh", "cutover", false);
    std::fs::copy(&fresh.key, &client.key).expect("rotate key");
    std::fs::copy(&fresh.cert, &client.cert).expect("rotate certificate");
    eventually!(
        RECONNECTED,
        async { connected(&proxy).await == Some(1.0) },
        "connected with the rotated certificate; log:\n{}",
        proxy.log()
    );
    eventually!(
        APPLIED,
        async { backend_of(&proxy).await.as_deref() == Some("legacy") },
        "etcd's 100/0 serves once connected"
    );
}

/// `cutover validate` (and `serve`) check the files `[etcd]` names: each missing one is an
/// error with its key and path (exit 1); nothing of a file's content is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_each_missing_or_bad_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "s3cret-not-a-certificate\n").expect("write");
    let config = dir.path().join("cutover.toml");
    let missing = dir.path().join("missing-password");
    let text = format!(
        "[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\nca_file = {:?}\n\
         username = \"cutover\"\npassword_file = {:?}\n\n[[routes]]\nid = \"orders\"\n\
         match = {{ path_prefix = \"/\" }}\nlegacy = {{ endpoints = [\"127.0.0.1:9001\"] }}\n\
         new = {{ endpoints = [\"127.0.0.1:9002\"] }}\n",
        not_pem.display().to_string(),
        missing.display().to_string()
    );
    std::fs::write(&config, text).expect("write config");
    for args in [vec!["validate"], vec!["serve", "--config"]] {
        let out = std::process::Command::new(cutover_tests::cutover_bin())
            .args(&args)
            .arg(&config)
            .output()
            .expect("run cutover");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "[etcd] ca_file {}: no PEM CERTIFICATE",
                not_pem.display()
            )),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("[etcd] password_file {}", missing.display())),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{args:?}: {stderr}");
    }
}
