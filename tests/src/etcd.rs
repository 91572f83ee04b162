//! A real etcd for tests: Debian's `etcd` on free client and peer ports in a temp dir, stopped
//! by pid when dropped. Never skipped: a missing binary is a clear failure (`make test` installs
//! `etcd-server`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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
        let mut etcd = Etcd {
            child: None,
            dir: data_dir(),
            client_port: free_port(),
            peer_port: free_port(),
            frozen: false,
            flags: flags.to_vec(),
        };
        etcd.spawn();
        etcd.wait_ready().await;
        etcd
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
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
        eventually(
            Duration::from_secs(30),
            &format!("etcd at {endpoint} answers (log: {})", log.display()),
            || {
                let endpoint = endpoint.clone();
                async move {
                    let Ok(mut c) = Client::connect([endpoint], Some(quick())).await else {
                        return false;
                    };
                    c.get("/", None).await.is_ok()
                }
            },
        )
        .await;
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A fresh client (connect timeout 2 s).
    pub async fn client(&self) -> Client {
        Client::connect([self.endpoint()], Some(quick()))
            .await
            .unwrap_or_else(|e| panic!("connect to etcd at {}: {e}", self.endpoint()))
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
