//! `cutover ctl` run as a process against a test etcd.

use std::process::Stdio;

use serde_json::Value;

use crate::{cutover_bin, Etcd};

/// What one `cutover ctl` run did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// `cutover ctl --etcd E --prefix P ...`, isolated from the caller's CUTOVER_* environment.
pub struct Ctl {
    endpoint: String,
    prefix: String,
}

impl Ctl {
    pub fn new(etcd: &Etcd, prefix: &str) -> Ctl {
        Ctl {
            endpoint: etcd.endpoint(),
            prefix: prefix.to_string(),
        }
    }

    pub async fn run(&self, args: &[&str]) -> Out {
        let out = tokio::process::Command::new(cutover_bin())
            .arg("ctl")
            .args(["--etcd", &self.endpoint, "--prefix", &self.prefix])
            .args(args)
            .env_remove("CUTOVER_ETCD")
            .env_remove("CUTOVER_PREFIX")
            .env_remove("CUTOVER_ADMIN")
            .env_remove("CUTOVER_ADMIN_TOKEN_FILE")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run cutover ctl");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and asserts exit 0.
    pub async fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args).await;
        assert_eq!(out.code, 0, "cutover ctl {args:?} failed: {out:?}");
        out
    }

    pub fn key(&self, route: &str, what: &str) -> String {
        format!("{}/routes/{route}/{what}", self.prefix)
    }
}
