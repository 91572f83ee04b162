//! `pingora-floor --listen ADDR --upstream ADDR`: pingora's own minimal reverse proxy — one
//! `ProxyHttp` whose only hook picks the upstream — set up the way `cutover serve` sets up its
//! data plane (one thread, the same listener buffers, h2c offered, mimalloc). The CPU per
//! request it needs is the floor under cutover: what cutover costs beyond it is cutover's own
//! work (routing, split, stats, hygiene, telemetry). `make pingora-floor` measures the two side
//! by side; not part of `make bench` or `make test` (feature `pingora-floor`).

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use cutover_proxy::server::{client_buffers, http_server_options};
use pingora::listeners::ListenerConfig;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

/// The same allocator as the `cutover` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// pingora's minimal reverse proxy, set up like cutover's data plane.
#[derive(Debug, Parser)]
#[command(
    name = "pingora-floor",
    version = concat!(env!("CARGO_PKG_VERSION"), " (pingora 0.9; Cargo.lock has the exact version)"),
    disable_version_flag = true
)]
struct Args {
    /// Print the version (`-v`, as nginx and HAProxy take it).
    #[arg(short = 'v', long = "version", action = clap::ArgAction::Version)]
    version: (),
    /// Where clients connect.
    #[arg(long)]
    listen: SocketAddr,
    /// The one upstream every request goes to (plain HTTP, pooled keep-alive connections).
    #[arg(long)]
    upstream: SocketAddr,
}

struct Floor {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Floor {
            upstream: args.upstream,
        },
        "pingora floor",
    );
    // cutover's own listener settings, from the same functions `cutover serve` calls.
    if let Some(app) = proxy.app_logic_mut() {
        app.server_options = Some(http_server_options());
    }
    proxy.add_listener(ListenerConfig::tcp(args.listen.to_string()).l4_buffer(client_buffers()));
    server.add_service(proxy);
    server.run_forever();
}
