//! Zero-downtime binary upgrade (RELIABILITY 56): the running process hands its listening
//! sockets to a new one over a Unix socket (`SCM_RIGHTS`, as HAProxy's `expose-fd listeners`
//! and pingora do), then drains and exits. The sockets are never closed, so no connection is
//! refused and none queued in a listener's backlog is lost.
//!
//! With `[proxy] upgrade_socket = PATH`, `cutover serve` offers its sockets on PATH. The new
//! binary, started as `cutover serve --config FILE --upgrade`:
//! 1. connects to PATH and receives every listening socket (each worker's `SO_REUSEPORT`
//!    socket of every address, and the admin listener) with one message naming them;
//! 2. serves on them (binding afresh only what the old process did not have), and once it is
//!    ready says `READY`;
//! 3. the old process removes PATH, answers `BYE` and drains as on SIGTERM; the new process
//!    then offers its own sockets on PATH for the next upgrade.
//!
//! A new process that fails before `READY` changes nothing: the old one keeps serving and
//! offering.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Most sockets one hand-over carries (the kernel's `SCM_MAX_FD` is 253).
const MAX_SOCKETS: usize = 250;
/// Longest the old process waits for the new one to be ready.
const READY_WAIT: Duration = Duration::from_secs(60);

/// What a handed-over socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A plain client listener (`[proxy] listen`).
    Listen,
    /// The TLS client listener (`[proxy] tls_listen`).
    Tls,
    /// The admin API (`[admin] listen`).
    Admin,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    role: Role,
    addr: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    pid: u32,
    sockets: Vec<Entry>,
}

/// Sockets received from the old process.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<(Role, SocketAddr, TcpListener)>,
}

impl Inherited {
    /// Take the received sockets for `role` at `addr` (all of them: every worker's).
    pub fn take(&mut self, role: Role, addr: SocketAddr) -> Vec<TcpListener> {
        let mut taken = Vec::new();
        let mut rest = Vec::new();
        for (r, a, l) in self.sockets.drain(..) {
            if r == role && a == addr {
                taken.push(l);
            } else {
                rest.push((r, a, l));
            }
        }
        self.sockets = rest;
        taken
    }

    /// What the new configuration no longer listens on (closed when dropped).
    pub fn leftover(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(_, a, _)| *a).collect()
    }
}

/// Whether a running cutover answers on `path` (a stale socket file, or none, is no one).
pub fn someone_offers(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// The new process's side: connect to `path` and receive the old process's sockets. The
/// returned stream is kept to say `READY` ([`Upgrade::ready`]).
pub fn fetch(path: &Path) -> io::Result<(Inherited, Upgrade)> {
    let stream = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "--upgrade: cannot reach the running cutover at {}: {e} (is it running with this upgrade_socket?)",
                path.display()
            ),
        )
    })?;
    stream.set_read_timeout(Some(READY_WAIT))?;
    let mut bytes = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let manifest: Manifest = serde_json::from_slice(&bytes[..received.bytes]).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("--upgrade: the running cutover sent no valid socket list: {e}"),
        )
    })?;
    if manifest.sockets.len() != fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "--upgrade: {} sockets named but {} received",
                manifest.sockets.len(),
                fds.len()
            ),
        ));
    }
    let mut inherited = Inherited::default();
    for (entry, fd) in manifest.sockets.into_iter().zip(fds) {
        let listener = TcpListener::from(fd);
        listener.set_nonblocking(true)?;
        inherited.sockets.push((entry.role, entry.addr, listener));
    }
    info!(
        from_pid = manifest.pid,
        sockets = inherited.sockets.len(),
        "upgrade: listening sockets received"
    );
    Ok((
        inherited,
        Upgrade {
            stream,
            path: path.to_path_buf(),
        },
    ))
}

/// The new process's connection to the old one, until the hand-over completes.
#[derive(Debug)]
pub struct Upgrade {
    stream: UnixStream,
    path: PathBuf,
}

impl Upgrade {
    /// Tell the old process this one serves; wait for its `BYE` (it has removed the socket
    /// path and drains). Returns the path, free for this process to offer on.
    pub fn ready(mut self) -> io::Result<PathBuf> {
        self.stream.write_all(b"READY\n")?;
        let mut line = String::new();
        BufReader::new(&self.stream).read_line(&mut line)?;
        if line.trim() != "BYE" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("upgrade: expected BYE from the old process, got {line:?}"),
            ));
        }
        Ok(self.path)
    }
}

/// Duplicates of the listening sockets, kept for a hand-over; emptied (closing them) when the
/// process drains without one, so its listeners really close.
type Offered = Arc<Mutex<Vec<(Role, SocketAddr, TcpListener)>>>;

/// The old process's side: the sockets it offers, and the path it offers them on.
#[derive(Debug)]
pub struct Offer {
    listener: UnixListener,
    path: PathBuf,
    sockets: Offered,
}

/// Stops offering: closes the duplicates and removes the path (on SIGTERM: the listeners must
/// close, and no new binary may take sockets from a draining process).
#[derive(Debug, Clone)]
pub struct Withdraw {
    path: PathBuf,
    sockets: Offered,
}

impl Withdraw {
    pub fn withdraw(&self) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if !sockets.is_empty() {
            sockets.clear();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Offer {
    /// Bind `path` (a stale socket file nobody answers on is replaced; one a running process
    /// answers on is an error) to offer duplicates of `sockets`.
    pub fn bind(path: &Path, sockets: Vec<(Role, SocketAddr, TcpListener)>) -> io::Result<Offer> {
        if sockets.len() > MAX_SOCKETS {
            return Err(io::Error::other(format!(
                "upgrade_socket: {} listening sockets (threads × addresses + admin) are more than one hand-over carries ({MAX_SOCKETS})",
                sockets.len()
            )));
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "upgrade_socket {}: another cutover answers on it (start this one with --upgrade to take over)",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path).map_err(|e| {
            io::Error::new(e.kind(), format!("upgrade_socket {}: {e}", path.display()))
        })?;
        Ok(Offer {
            listener,
            path: path.to_path_buf(),
            sockets: Arc::new(Mutex::new(sockets)),
        })
    }

    /// A handle to stop offering.
    pub fn withdrawer(&self) -> Withdraw {
        Withdraw {
            path: self.path.clone(),
            sockets: self.sockets.clone(),
        }
    }

    /// Serve hand-over requests until one completes (blocking: run it on its own thread).
    /// A new process that fails before `READY` is logged, and the next one is served.
    pub fn serve(self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "upgrade socket: accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            match self.hand_over(&stream) {
                Ok(()) => {
                    info!("upgrade: the new process serves; draining");
                    return;
                }
                // A peer that left at once only checked that someone offers (`--upgrade` at a
                // first start, or a second `serve` refusing to take the path).
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    tracing::debug!(error = %e, "upgrade socket: a probe")
                }
                Err(e) => warn!(error = %e, "upgrade: hand-over failed; still serving"),
            }
        }
    }

    fn hand_over(&self, stream: &UnixStream) -> io::Result<()> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if sockets.is_empty() {
            return Err(io::Error::other(
                "this process drains: nothing to hand over",
            ));
        }
        let manifest = Manifest {
            pid: std::process::id(),
            sockets: sockets
                .iter()
                .map(|(role, addr, _)| Entry {
                    role: *role,
                    addr: *addr,
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let fds: Vec<_> = sockets.iter().map(|(_, _, l)| l.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("too many sockets for one message"));
        }
        rustix::net::sendmsg(
            stream,
            &[IoSlice::new(&bytes)],
            &mut control,
            SendFlags::empty(),
        )?;
        stream.set_read_timeout(Some(READY_WAIT))?;
        let mut line = String::new();
        if BufReader::new(stream).read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer went away before READY",
            ));
        }
        if line.trim() != "READY" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the new process did not say READY (got {line:?})"),
            ));
        }
        // The path is the new process's from now on, and so are the sockets (our duplicates
        // close; the emptied list also tells `Withdraw` the path is no longer ours).
        let _ = std::fs::remove_file(&self.path);
        drop(fds);
        sockets.clear();
        let mut stream = stream;
        stream.write_all(b"BYE\n")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_offers_on_a_missing_or_stale_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        assert!(!someone_offers(&path));
        // A socket file left behind by a process that is gone.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(!someone_offers(&path));
        // It is replaced by the next offer.
        let offer = Offer::bind(&path, Vec::new()).unwrap();
        assert!(someone_offers(&path));
        drop(offer);
    }

    #[test]
    fn sockets_cross_to_the_new_side_and_keep_accepting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = a.local_addr().unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let offer = Offer::bind(
            &path,
            vec![
                (Role::Listen, addr, a.try_clone().unwrap()),
                (Role::Admin, admin_addr, admin.try_clone().unwrap()),
            ],
        )
        .unwrap();
        // A second offer on a live path is refused.
        assert_eq!(
            Offer::bind(&path, Vec::new()).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        let old = std::thread::spawn(move || offer.serve());
        let (mut inherited, upgrade) = fetch(&path).unwrap();
        let mut got = inherited.take(Role::Listen, addr);
        assert_eq!(got.len(), 1);
        assert_eq!(inherited.take(Role::Admin, admin_addr).len(), 1);
        assert!(inherited.leftover().is_empty());
        // The old side closes its own copies: the socket lives on in the new one.
        drop((a, admin));
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let listener = got.pop().unwrap();
        listener.set_nonblocking(false).unwrap();
        listener.accept().unwrap();
        let freed = upgrade.ready().unwrap();
        old.join().unwrap();
        assert_eq!(freed, path);
        assert!(!path.exists(), "the old side removed the path");
    }
}
