//! What the floor binaries share (`hyper-floor`, `own-floor`: the report's measures of what a
//! proxy costs before cutover does anything): the addresses they take, and the runtime,
//! listener and HTTP server they set up the way `cutover serve` sets up its data plane.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// `--listen ADDR --upstream ADDR`, and `-v` (as nginx and HAProxy take it: the report prints
/// each target's version).
#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// Print the version.
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version)]
    pub version: (),
    /// Where clients connect.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The one upstream every request goes to (plain HTTP, pooled keep-alive connections).
    #[arg(long)]
    pub upstream: SocketAddr,
}

/// `serve` on one current-thread runtime, as a cutover worker runs.
pub fn run(serve: impl Future<Output = std::io::Result<()>>) -> std::io::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve)
}

/// A listener on `addr` with cutover's backlog.
pub fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The next client connection, with `TCP_NODELAY`.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            // EMFILE and the like: wait a moment rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// hyper's server for HTTP/1.1 and h2c on one listener, header case kept.
pub fn server() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().preserve_header_case(true);
    builder
}
