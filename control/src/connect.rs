//! How every part of cutover reaches etcd — the config source, the controller's writes, the
//! fleet and `cutover ctl` — from one builder (SPEC §9): endpoints, TLS with `ca_file` (the
//! platform's roots without it), a client certificate, an etcd user with `password_file`,
//! the dial timeout, keep-alive pings and a per-request timeout where the caller wants one.
//!
//! The files are read at every [`EtcdConnect::connect`], that is at every reconnect, so
//! certificates and passwords rotated on disk are picked up without a restart. Nothing read
//! from them is ever put in a message: errors name the `[etcd]` key and the path, and what etcd
//! answered, with a hint of what to fix.

use std::path::Path;
use std::time::Duration;

use cutover_config::{EtcdAuth, EtcdSettings};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// Everything needed to open a connection to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConnect {
    /// `http://host:port`, `https://host:port` or `host:port`.
    pub endpoints: Vec<String>,
    pub auth: EtcdAuth,
    pub dial_timeout: Duration,
    /// A deadline on every request of the channel; `None` when the caller bounds its calls
    /// (a watch or a campaign must not be cut short).
    pub request_timeout: Option<Duration>,
    /// HTTP/2 keep-alive pings (interval, timeout), so a dead peer is noticed on an idle
    /// watch.
    pub keep_alive: Option<(Duration, Duration)>,
}

/// Why no connection was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// A file named in `[etcd]` (or by a `ctl` flag) could not be read or used.
    #[error("{0}")]
    File(String),
    /// etcd could not be reached, refused the handshake or the login.
    #[error("{0}")]
    Etcd(String),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
}

impl EtcdConnect {
    /// What `[etcd]` says, without a request timeout or keep-alive.
    pub fn from_settings(settings: &EtcdSettings) -> Self {
        EtcdConnect {
            endpoints: settings.endpoints.clone(),
            auth: settings.auth.clone(),
            dial_timeout: settings.dial_timeout,
            request_timeout: None,
            keep_alive: None,
        }
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    pub fn with_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive = Some((interval, timeout));
        self
    }

    /// Reads the files and connects (and logs in, with a user), within the dial timeout plus
    /// one more for the login.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let options = self.options()?;
        let endpoints = self.endpoints.clone();
        let limit = self.dial_timeout * 2;
        match tokio::time::timeout(limit, Client::connect(endpoints, Some(options))).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(ConnectError::Etcd(describe(&e.to_string()))),
            Err(_) => Err(ConnectError::Timeout(limit)),
        }
    }

    /// The client options, with the files read now.
    fn options(&self) -> Result<ConnectOptions, ConnectError> {
        let mut options = ConnectOptions::new().with_connect_timeout(self.dial_timeout);
        if let Some(timeout) = self.request_timeout {
            options = options.with_timeout(timeout);
        }
        if let Some((interval, timeout)) = self.keep_alive {
            options = options
                .with_keep_alive(interval, timeout)
                .with_keep_alive_while_idle(true);
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            options = options.with_tls(self.tls()?);
        }
        if let Some(user) = &self.auth.user {
            let password = read_password(&user.password_file)?;
            options = options.with_user(user.username.clone(), password);
        }
        Ok(options)
    }

    fn tls(&self) -> Result<TlsOptions, ConnectError> {
        let mut tls = TlsOptions::new();
        tls = match &self.auth.ca_file {
            Some(path) => tls.ca_certificate(Certificate::from_pem(read_pem(
                "ca_file",
                path,
                "CERTIFICATE",
            )?)),
            None => tls.with_native_roots(),
        };
        if let Some(cert) = &self.auth.client_cert {
            let pem = read_pem("cert_file", &cert.cert_file, "CERTIFICATE")?;
            let key = read_pem("key_file", &cert.key_file, "PRIVATE KEY")?;
            tls = tls.identity(Identity::from_pem(pem, key));
        }
        Ok(tls)
    }
}

/// Exponential backoff with jitter between reconnects and retries (the config source's
/// sessions, the fleet's, the controller's writes): each wait is the current step times a
/// random factor in [0.5, 1.5), never above the cap; the step doubles up to the cap and
/// starts over on [`Backoff::reset`]. The jitter keeps a fleet that lost etcd together from
/// coming back in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    cap: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(start: Duration, cap: Duration) -> Self {
        Backoff {
            start,
            cap,
            step: start,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        use rand::Rng;
        let jitter = rand::rng().random_range(0.5..1.5);
        let wait = self.step.mul_f64(jitter).min(self.cap);
        self.step = (self.step * 2).min(self.cap);
        wait
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.step = self.start;
    }
}

/// Every file `auth` names can be read and holds what it should (the checks of
/// [`EtcdConnect::connect`], for `cutover validate`). Each problem names the key and the path.
pub fn check_files(auth: &EtcdAuth) -> Vec<String> {
    let mut results = Vec::new();
    if let Some(ca) = &auth.ca_file {
        results.push(read_pem("ca_file", ca, "CERTIFICATE").map(drop));
    }
    if let Some(c) = &auth.client_cert {
        results.push(read_pem("cert_file", &c.cert_file, "CERTIFICATE").map(drop));
        results.push(read_pem("key_file", &c.key_file, "PRIVATE KEY").map(drop));
    }
    if let Some(u) = &auth.user {
        results.push(read_password(&u.password_file).map(drop));
    }
    results
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect()
}

/// A PEM file of `[etcd] <key>` holding a `marker` block, as connecting reads it.
fn read_pem(key: &str, path: &Path, marker: &str) -> Result<Vec<u8>, ConnectError> {
    let pem = read(key, path)?;
    check_pem(key, path, &pem, marker)?;
    Ok(pem)
}

/// `[etcd] password_file`, as connecting reads it.
fn read_password(path: &Path) -> Result<String, ConnectError> {
    read_secret(path).map_err(|why| file_error("password_file", path, why))
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|e| file_error(key, path, e.to_string()))
}

fn file_error(key: &str, path: &Path, why: impl std::fmt::Display) -> ConnectError {
    ConnectError::File(format!("[etcd] {key} {}: {why}", path.display()))
}

/// A PEM file holds at least one block whose label ends with `marker` (`CERTIFICATE`,
/// `PRIVATE KEY` for PKCS#8, RSA and EC keys alike).
fn check_pem(key: &str, path: &Path, pem: &[u8], marker: &str) -> Result<(), ConnectError> {
    let text = String::from_utf8_lossy(pem);
    let found = text.lines().any(|line| {
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(marker))
    });
    if found {
        Ok(())
    } else {
        Err(file_error(
            key,
            path,
            format!("no PEM {marker} block in it"),
        ))
    }
}

/// The first line of a secret file (a password, a token), without its line end; never empty.
/// The error is the reason only — never the content — for the caller to put after the key and
/// the path. The one reader of cutover's secret files: the etcd password, the admin token
/// (`serve`, `validate`) and `ctl diffs --admin-token-file`.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    first_line(bytes).map_err(str::to_string)
}

fn first_line(bytes: Vec<u8>) -> Result<String, &'static str> {
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text")?;
    let line = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r');
    if line.is_empty() {
        return Err("the first line is empty (it holds the secret)");
    }
    Ok(line.to_string())
}

/// etcd's error, with what to fix when it is recognisable.
pub fn describe(error: &str) -> String {
    match hint(error) {
        Some(hint) => format!("{error} ({hint})"),
        None => error.to_string(),
    }
}

/// What to fix for an error of etcd or of the TLS handshake with it.
fn hint(error: &str) -> Option<&'static str> {
    // rustls names alerts in CamelCase (`BadCertificate`), etcd in words: compare without
    // spaces.
    let e = error.to_ascii_lowercase().replace([' ', '_'], "");
    let any = |needles: &[&str]| needles.iter().any(|n| e.contains(n));
    if any(&["unknownissuer", "invalidpeercertificate"]) {
        Some("etcd's certificate is not signed by [etcd] ca_file (or the platform's roots): point ca_file at the CA that signed etcd's server certificate")
    } else if any(&["notvalidforname"]) {
        Some("etcd's certificate does not name the host of the endpoint: use the name in its certificate in [etcd] endpoints")
    } else if any(&[
        "certificaterequired",
        "badcertificate",
        "expired",
        "unknownca",
        "handshake",
    ]) {
        Some("etcd refused the client certificate: check [etcd] cert_file/key_file (expired, or not signed by etcd's --trusted-ca-file)")
    } else if any(&["invaliduseridorpassword", "authenticationfailed"]) {
        Some("etcd refused the login: check [etcd] username and password_file")
    } else if any(&["permissiondenied"]) {
        Some("the etcd user has no read-write permission on the key prefix (without a username, etcd takes the client certificate's common name as the user): grant its role readwrite on the prefix, or set [etcd] username and password_file")
    } else if any(&["usernameisempty", "invalidauthtoken"]) {
        Some("etcd has authentication on: set [etcd] username and password_file")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_config::{ClientCert, EtcdUser};

    fn settings(auth: EtcdAuth) -> EtcdConnect {
        EtcdConnect {
            endpoints: vec!["https://127.0.0.1:1".into()],
            auth,
            dial_timeout: Duration::from_millis(200),
            request_timeout: None,
            keep_alive: None,
        }
    }

    #[test]
    fn file_problems_name_the_key_and_the_path_and_never_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "\nhunter2\n").unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hunter2 is not a certificate").unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        let auth = EtcdAuth {
            ca_file: Some(not_pem.clone()),
            client_cert: Some(ClientCert {
                cert_file: dir.path().join("missing.pem"),
                key_file: key,
            }),
            user: Some(EtcdUser {
                username: "cutover".into(),
                password_file: secret.clone(),
            }),
        };
        let problems = check_files(&auth);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with(&format!(
            "[etcd] ca_file {}: no PEM CERTIFICATE",
            not_pem.display()
        )));
        assert!(
            problems[1].starts_with("[etcd] cert_file ") && problems[1].contains("missing.pem")
        );
        assert!(
            problems[2].starts_with("[etcd] password_file ")
                && problems[2].contains("first line is empty")
        );
        assert!(
            problems.iter().all(|p| !p.contains("hunter2")),
            "{problems:?}"
        );
        // connect() stops at the first one, before any network.
        let e = block_on(settings(auth).connect()).err();
        assert!(
            matches!(&e, Some(ConnectError::File(m)) if m.starts_with("[etcd] ca_file")),
            "{e:?}"
        );
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_secret_is_the_first_line_and_never_in_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let crlf = file("crlf", "s3cret-token\r\nignored second line\n");
        assert_eq!(read_secret(&crlf).unwrap(), "s3cret-token");
        assert_eq!(read_secret(&file("bare", "tok")).unwrap(), "tok");
        let empty = read_secret(&file("empty", "\ns3cret\n")).unwrap_err();
        assert!(
            empty.contains("first line is empty") && !empty.contains("s3cret"),
            "{empty}"
        );
        let missing = read_secret(&dir.path().join("missing")).unwrap_err();
        assert!(missing.contains("No such file"), "{missing}");
    }

    #[test]
    fn backoff_doubles_with_jitter_under_its_cap() {
        let (start, cap) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut backoff = Backoff::new(start, cap);
        let mut step = start;
        for _ in 0..12 {
            let wait = backoff.next_wait();
            assert!(
                wait >= step / 2 && wait <= (step * 3 / 2).min(cap),
                "{wait:?} at {step:?}"
            );
            step = (step * 2).min(cap);
        }
        // At the cap, the jitter still spreads the waits below it.
        let waits: Vec<Duration> = (0..50).map(|_| backoff.next_wait()).collect();
        assert!(waits.iter().all(|w| *w <= cap && *w >= cap / 2));
        assert!(
            waits.iter().any(|w| *w < cap),
            "jittered at the cap: {waits:?}"
        );
        backoff.reset();
        assert!(backoff.next_wait() <= start * 3 / 2);
    }

    #[test]
    fn hints_say_what_to_fix() {
        for (error, expect) in [
            (
                "transport error: invalid peer certificate: UnknownIssuer",
                "ca_file",
            ),
            (
                "received fatal alert: CertificateRequired",
                "cert_file/key_file",
            ),
            ("received fatal alert: BadCertificate", "cert_file/key_file"),
            (
                "etcdserver: authentication failed, invalid user ID or password",
                "password_file",
            ),
            ("etcdserver: permission denied", "readwrite on the prefix"),
            ("etcdserver: user name is empty", "set [etcd] username"),
        ] {
            let described = describe(error);
            assert!(
                described.starts_with(error) && described.contains(expect),
                "{described}"
            );
        }
        assert_eq!(describe("connection refused"), "connection refused");
    }
}
