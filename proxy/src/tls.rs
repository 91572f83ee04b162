//! TLS for both sides of the proxy, on rustls (ring): the client listener's acceptor (h2 and
//! HTTP/1.1 offered by ALPN, SPEC §2) and the connectors for `tls = true` backends (ALPN
//! offering what the backend's `protocol` speaks, SPEC §8), live and shadow alike, trusting the platform's CA certificates (`SSL_CERT_FILE` honoured).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// rustls' process-wide crypto provider: ring. Installing it twice is harmless.
fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The listener's TLS: the certificate chain and key from PEM files, TLS 1.2 and 1.3, h2 then
/// HTTP/1.1 by ALPN. An error names the file that is wrong.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    install_provider();
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
    };
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key_der = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key in it", key.display()))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What a backend connection offers by ALPN: what its `protocol` speaks (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1 = 0,
    H2 = 1,
    /// `auto`: h2 first, the backend chooses.
    H2OrHttp1 = 2,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::H2OrHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// The connector for TLS backends offering `alpn`, built at the first TLS connection (loading
/// the platform's CA certificates reads files; a proxy without TLS backends never does) and
/// shared by every worker and the shadow client. A failed load is not kept: the next
/// connection tries again.
pub fn connector(alpn: Alpn) -> Result<TlsConnector, String> {
    static CONNECTORS: [OnceLock<TlsConnector>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = &CONNECTORS[alpn as usize];
    if let Some(c) = slot.get() {
        return Ok(c.clone());
    }
    install_provider();
    let mut roots = RootCertStore::empty();
    let certs = rustls_native_certs::load_native_certs()
        .map_err(|e| format!("loading the platform's CA certificates: {e}"))?;
    for cert in certs {
        // A malformed certificate in the platform's bundle is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.protocols();
    Ok(slot
        .get_or_init(|| TlsConnector::from(Arc::new(config)))
        .clone())
}

/// The name a backend's certificate is checked against: its `sni`, with underscores in the
/// leftmost label of a name of three labels or more turned into hyphens (what pingora's
/// connector did, kept so the same backends verify).
pub fn server_name(sni: &str) -> Result<ServerName<'static>, String> {
    let name = leftmost_underscores_to_hyphens(sni).unwrap_or_else(|| sni.to_string());
    ServerName::try_from(name).map_err(|e| format!("invalid TLS server name {sni:?}: {e}"))
}

fn leftmost_underscores_to_hyphens(name: &str) -> Option<String> {
    let (leftmost, rest) = name.split_once('.')?;
    if !rest.contains('.') || !leftmost.contains('_') {
        return None;
    }
    Some(format!("{}.{rest}", leftmost.replace('_', "-")))
}

/// A connection, to a backend or from a client: plain TCP or TLS over it (boxed: rustls'
/// state is ~1 KiB).
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// TCP to `addr`, then TLS checked against `sni` when it is `Some`, offering `alpn`.
    pub async fn connect(
        addr: std::net::SocketAddr,
        sni: Option<&str>,
        alpn: Alpn,
    ) -> io::Result<Stream> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let Some(sni) = sni else {
            return Ok(Stream::Plain(tcp));
        };
        let name = server_name(sni).map_err(io::Error::other)?;
        let connector = connector(alpn).map_err(io::Error::other)?;
        let tls = connector.connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }
}

impl Stream {
    /// The protocol TLS's ALPN chose, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscores_in_the_leftmost_label_become_hyphens() {
        assert_eq!(
            leftmost_underscores_to_hyphens("my_svc.example.com").as_deref(),
            Some("my-svc.example.com")
        );
        assert_eq!(leftmost_underscores_to_hyphens("my_svc.com"), None);
        assert_eq!(leftmost_underscores_to_hyphens("svc.example.com"), None);
    }
}
