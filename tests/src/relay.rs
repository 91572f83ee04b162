//! A TCP relay on 127.0.0.1 port 0 in front of one target, that a test can cut and restore:
//! put it between the proxy and etcd, and the test's own etcd client (connected to etcd
//! directly) can keep writing and compacting while the proxy sees etcd as gone.
//!
//! ```no_run
//! # async fn demo(etcd_addr: std::net::SocketAddr) {
//! let relay = cutover_tests::TcpRelay::start(etcd_addr).await;
//! // point the proxy at relay.endpoint() …
//! relay.cut(); // every relayed connection closed, new ones closed at once
//! relay.restore(); // new connections relayed again
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running relay; stops (and closes every connection) when dropped.
pub struct TcpRelay {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpRelay {
    /// Listens on 127.0.0.1:0 and relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay on 127.0.0.1:0");
        let addr = listener.local_addr().expect("relay address");
        let (open, open_rx) = watch::channel(true);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if !*open_rx.borrow() {
                    drop(client); // cut: closed at once
                    continue;
                }
                let mut open_rx = open_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = open_rx.wait_for(|open| !*open) => {}
                    }
                    // Dropping both streams closes them.
                });
            }
        });
        TcpRelay {
            addr,
            open,
            accepted,
            task,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` (an etcd endpoint).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every relayed connection and closes new ones as soon as they are accepted.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }

    /// Connections accepted so far (relayed or cut).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.open.send_replace(false);
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_cuts_and_restores() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let relay = TcpRelay::start(echo_addr).await;
        let mut c = TcpStream::connect(relay.addr()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        relay.cut();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), c.read_to_end(&mut rest))
            .await
            .expect("cut closes the relayed connection")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let mut d = TcpStream::connect(relay.addr()).await.unwrap();
        let _ = d.write_all(b"x").await;
        let closed = tokio::time::timeout(std::time::Duration::from_secs(2), d.read(&mut buf))
            .await
            .expect("a new connection is closed while cut");
        assert!(matches!(closed, Ok(0) | Err(_)));

        relay.restore();
        let mut e = TcpStream::connect(relay.addr()).await.unwrap();
        e.write_all(b"pong").await.unwrap();
        e.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(relay.accepted(), 3);
    }
}
