//! The etcd calls of `cutover ctl`, each bounded by `--timeout`, every failure turned into a
//! message that names the endpoints and how to fix it.

use std::future::Future;
use std::time::Duration;

use etcd_client::{GetOptions, GetResponse, KvClient, Txn, TxnResponse};

use crate::connect::{ConnectError, EtcdConnect};
use tokio::net::TcpStream;

use super::{CtlError, Result};

/// A connected etcd client plus what error messages need.
#[derive(Clone)]
pub(super) struct Store {
    kv: KvClient,
    endpoints: String,
    timeout: Duration,
}

pub(super) use crate::writer::RawKv;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to `endpoints`. A quick TCP probe first, so a dead endpoint fails in
    /// milliseconds with the operating system's reason instead of at the timeout.
    pub(super) async fn connect(etcd: &EtcdConnect, timeout: Duration) -> Result<Store> {
        let joined = etcd.endpoints.join(",");
        let mut authorities = Vec::with_capacity(etcd.endpoints.len());
        for endpoint in &etcd.endpoints {
            authorities.push(authority(endpoint).map_err(CtlError::Usage)?);
        }
        probe(&authorities, timeout)
            .await
            .map_err(|reason| unreachable(&joined, &reason))?;
        // No per-request timeout in the client: `call` bounds every request, so the message
        // is always the same "no answer within" one.
        let client = match tokio::time::timeout(timeout, etcd.connect()).await {
            Ok(Ok(client)) => client,
            Ok(Err(ConnectError::File(why))) => return Err(CtlError::Usage(flag_names(&why))),
            Ok(Err(ConnectError::Etcd(why))) => {
                return Err(CtlError::Runtime(format!(
                    "etcd at {joined}: connect failed: {}",
                    flag_names(&why)
                )))
            }
            Ok(Err(ConnectError::Timeout(_))) | Err(_) => {
                return Err(no_answer(&joined, "connect", timeout))
            }
        };
        Ok(Store {
            kv: client.kv_client(),
            endpoints: joined,
            timeout,
        })
    }

    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() as i32 == DEADLINE_EXCEEDED => {
                Err(no_answer(&self.endpoints, what, self.timeout))
            }
            Ok(Err(e)) => Err(etcd_error(&self.endpoints, what, e)),
            Err(_) => Err(no_answer(&self.endpoints, what, self.timeout)),
        }
    }

    pub(super) async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: GetOptions,
    ) -> Result<GetResponse> {
        let mut kv = self.kv.clone();
        self.call("read", kv.get(key, Some(options))).await
    }

    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut kv = self.kv.clone();
        self.call("transaction", kv.txn(txn)).await
    }

    /// `key`'s value and mod_revision, `None` when absent.
    pub(super) async fn get_one(&self, key: &str) -> Result<Option<RawKv>> {
        let resp = self.get(key, GetOptions::new()).await?;
        Ok(resp.kvs().first().map(RawKv::from))
    }
}

/// The header revision of a response (0 when etcd sent no header).
pub(super) fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

/// `host:port` of an endpoint URL (`http://h:p`, `https://h:p`, or a bare `h:p`).
pub(super) fn authority(endpoint: &str) -> Result<String, String> {
    let rest = if let Some(rest) = endpoint.strip_prefix("http://") {
        rest
    } else if let Some(rest) = endpoint.strip_prefix("https://") {
        rest
    } else if endpoint.contains("://") {
        return Err(format!(
            "--etcd {endpoint}: unknown scheme; use http://HOST:PORT, e.g. http://127.0.0.1:2379"
        ));
    } else {
        endpoint
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let port_ok = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!(
            "--etcd {endpoint}: expected http://HOST:PORT, e.g. http://127.0.0.1:2379"
        ));
    }
    Ok(authority.to_string())
}

/// Ok when at least one endpoint accepts a TCP connection; else every endpoint's reason.
async fn probe(authorities: &[String], timeout: Duration) -> Result<(), String> {
    let mut reasons = Vec::new();
    for authority in authorities {
        let reason = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no TCP connection within {}",
                humantime::format_duration(timeout)
            ),
        };
        if authorities.len() == 1 {
            return Err(reason);
        }
        reasons.push(format!("{authority}: {reason}"));
    }
    Err(reasons.join("; "))
}

fn unreachable(endpoints: &str, reason: &str) -> CtlError {
    CtlError::Runtime(format!(
        "cannot reach etcd at {endpoints}: {reason} (is etcd running? pass --etcd URL)"
    ))
}

fn no_answer(endpoints: &str, what: &str, timeout: Duration) -> CtlError {
    unreachable(
        endpoints,
        &format!(
            "no answer to {what} within {} (raise --timeout if etcd is just slow)",
            humantime::format_duration(timeout)
        ),
    )
}

/// gRPC codes (tonic's `Code` discriminants) that mean "not reachable right now".
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const DEADLINE_EXCEEDED: i32 = 4;
const UNAVAILABLE: i32 = 14;

/// A file problem of the connect layer, named by `ctl`'s flags instead of `[etcd]` keys.
fn flag_names(why: &str) -> String {
    [
        ("[etcd] cert_file/key_file", "--etcd-cert/--etcd-key"),
        (
            "[etcd] username and password_file",
            "--etcd-user and --etcd-password-file",
        ),
        ("[etcd] username", "--etcd-user"),
        ("[etcd] ca_file", "--etcd-ca"),
        ("[etcd] cert_file", "--etcd-cert"),
        ("[etcd] key_file", "--etcd-key"),
        ("[etcd] password_file", "--etcd-password-file"),
    ]
    .iter()
    .fold(why.to_string(), |text, (key, flag)| text.replace(key, flag))
}

fn etcd_error(endpoints: &str, what: &str, error: etcd_client::Error) -> CtlError {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let code = status.code() as i32;
            if [CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, UNAVAILABLE].contains(&code) {
                unreachable(endpoints, &format!("{what} failed: {}", status.message()))
            } else {
                CtlError::Runtime(format!(
                    "etcd at {endpoints} refused the {what}: {} ({:?}); nothing was written \
                     by this command unless it says so",
                    flag_names(&crate::connect::describe(status.message())),
                    status.code()
                ))
            }
        }
        etcd_client::Error::InvalidArgs(e) => CtlError::Usage(format!("--etcd {endpoints}: {e}")),
        etcd_client::Error::InvalidUri(e) => CtlError::Usage(format!(
            "--etcd {endpoints}: {e}; expected http://HOST:PORT"
        )),
        other => unreachable(endpoints, &format!("{what} failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(
            authority("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert_eq!(authority("http://etcd:2379/").unwrap(), "etcd:2379");
        assert_eq!(authority("localhost:1").unwrap(), "localhost:1");
        assert_eq!(authority("https://etcd:2379").unwrap(), "etcd:2379");
        assert!(authority("grpc://etcd:2379")
            .unwrap_err()
            .contains("scheme"));
        assert!(authority("http://etcd").unwrap_err().contains("HOST:PORT"));
        assert!(authority("http://:99").is_err());
        assert!(authority("http://h:99999").is_err());
    }

    #[tokio::test]
    async fn dead_endpoint_fails_fast_with_the_reason() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        let start = std::time::Instant::now();
        let etcd = EtcdConnect {
            endpoints: vec![endpoint.clone()],
            auth: Default::default(),
            dial_timeout: Duration::from_secs(5),
            request_timeout: None,
            keep_alive: None,
        };
        let err = Store::connect(&etcd, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        let CtlError::Runtime(msg) = err else {
            panic!("{err:?}")
        };
        assert!(
            msg.starts_with(&format!("cannot reach etcd at {endpoint}: ")),
            "{msg}"
        );
        assert!(msg.ends_with("(is etcd running? pass --etcd URL)"), "{msg}");
    }
}
